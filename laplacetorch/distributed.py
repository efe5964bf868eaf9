"""The data pass's reduction over a torch.distributed process group.

When torch.distributed is initialised, every accumulated quantity of a data pass (curvature
sums, factor numerators, losses, counts, GGN-vector products) is summed over the ranks, so
each rank ends with the result of one process on all the data. The group is chosen per call:
``Laplace(..., process_group=...)`` scopes it around its own passes (:func:`over`); the
default is the default group when torch.distributed is initialised, and no communication
otherwise.

Ranks must agree before they sum. A fit's scope first compares what identifies the fit on
every rank (:class:`FitIdentity`: θ*'s fingerprint, the parameter subset, the likelihood, the
structure; the output width C at each exchange), so ranks fitting different things stop
together before any pass. Before any tensor is reduced the ranks exchange what they computed
and whether they failed, so a rank whose data fails validation, or which is interrupted,
stops every rank with its error instead of leaving the others waiting in a collective; a
failing rank also posts its error in the process group's store, which the others read
between batches (:class:`PeerWatch`), so they stop within seconds rather than at the end of
their pass. Each rank announces its arrival at an exchange in the store, so a rank that died
is named by the survivors. A rank with an empty shard joins with zeros.
"""

from __future__ import annotations

import pickle
import re
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "FitIdentity",
    "PeerWatch",
    "active_group",
    "gather_rows",
    "over",
    "rank_seed",
    "reduce_sums",
    "weights_fingerprint",
]


@dataclass(frozen=True)
class _Scope:
    group: Any
    fit: FitIdentity | None


_SCOPE: ContextVar[_Scope | None] = ContextVar("laplacetorch_process_group", default=None)


@contextmanager
def over(group: Any, fit: FitIdentity | None = None) -> Iterator[None]:
    """Reduce the data passes inside over ``group`` (``None``: the default group when
    torch.distributed is initialised; ``False``: no communication).

    With ``fit``, the ranks first compare what identifies it (one small exchange): they must
    fit the same weights θ*, parameter subset, likelihood and structure, and see the same
    output width C at every exchange inside.

    Raises:
        ValueError: on every rank, naming what differs and on which ranks.
    """
    token = _SCOPE.set(_Scope(group, fit))
    try:
        if fit is not None and (active := active_group()) is not None:
            _agree(active, fit)
        yield
    finally:
        _SCOPE.reset(token)


def active_group() -> Any:
    """The process group the current data pass reduces over, or ``None``."""
    scope = _SCOPE.get()
    group = None if scope is None else scope.group
    if group is False:
        return None
    if group is None:
        if dist.is_available() and dist.is_initialized():
            return dist.group.WORLD
        return None
    return group


#: rank r's Monte-Carlo stream is seeded seed + r·RANK_SEED_STRIDE
RANK_SEED_STRIDE = 1_000_000_007


def rank_seed(seed: int) -> int:
    """The seed of this rank's Monte-Carlo targets: ``seed`` on rank 0 (and without a
    group), ``seed + rank·RANK_SEED_STRIDE`` on the others, so that the ranks' shards get
    independent draws instead of one stream repeated on every rank."""
    group = active_group()
    return seed if group is None else seed + dist.get_rank(group) * RANK_SEED_STRIDE


# ----------------------------------------------------------------- what identifies a fit
_CHUNK = 1 << 20  # words per step of the fingerprint: bounds its int64 temporaries (8 MiB)
_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int32}


def weights_fingerprint(theta: Tensor) -> tuple[str, int, int, int, float]:
    """A cheap fingerprint of θ: ``(dtype, P, Σ w, Σ w·(position weight), ‖θ‖)`` over the
    integer words w of θ's bytes, on θ's device in chunks (no copy to the host).

    Integer sums are exact in any order, so equal weights give equal fingerprints on every
    rank whatever its threads or kernels (float sums need not); any change of one weight
    changes Σ w, a swap of two changes the weighted sum. ``‖θ‖`` is for messages only.
    """
    t = theta.detach().reshape(-1).contiguous()
    words = t.view(_WORD[t.element_size()])
    parts, position = [], None
    for chunk in words.split(_CHUNK):
        w = chunk.to(torch.int64)
        if position is None or position.numel() != w.numel():
            position = torch.arange(w.numel(), device=w.device) % 251 + 1
        # |w| < 2³¹, weights ≤ 251, 2²⁰ words: no int64 overflow within a chunk
        parts.append(torch.stack([w.sum(), (w * position).sum()]))
    sums = torch.stack(parts).tolist() if parts else []  # one copy to the host
    plain = sum(s for s, _ in sums)
    weighted = sum(ws + k * s for k, (s, ws) in enumerate(sums))  # Python ints: exact
    norm = float(torch.linalg.vector_norm(t)) if t.numel() else 0.0
    return str(t.dtype).removeprefix("torch."), t.numel(), plain, weighted, norm


class FitIdentity:
    """What every rank of one data-parallel fit must share: θ*, the parameter subset (its
    signature), the likelihood (its ``identity``), the structure and how its passes sum (the
    curvature type, one curvature per output or one, the backend's options), and the output
    width C
    (noted on the first batch by the fit's memory check, :meth:`noting_outputs`).

    Args:
        subset: the :class:`~laplacetorch.params.ParameterSubset` fitted.
        likelihood: the :class:`~laplacetorch.likelihoods.Likelihood` fitted.
        structure: the backend's name.
        curvature: ``"ggn"``, ``"ef"`` or ``"hessian"``. output_scales: C for one curvature
            per output, else 1. options: the backend's options.
    """

    def __init__(
        self,
        subset: Any,
        likelihood: Any,
        structure: str,
        curvature: str = "ggn",
        output_scales: int = 1,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.subset, self.likelihood, self.structure = subset, likelihood, structure
        # what each pass adds up: the curvature type, one curvature per output or one for
        # all, and the backend's options (e.g. mc_samples)
        self.how = {
            "curvature": curvature,
            "output_scales": output_scales,
            "options": sorted((k, _plain(v)) for k, v in (options or {}).items()),
        }
        #: C on this rank's first batch (``None``: not seen yet, or positions in the outputs)
        self.outputs: int | None = None

    def noting_outputs(
        self, check: Callable[[int | None, int | None], None]
    ) -> Callable[[int | None, int | None], None]:
        """``check(B, C)`` (the fit's memory check, which the data pass calls with the first
        batch's C before any output column is formed) that also notes C."""

        def noted(n_batch: int | None, n_outputs: int | None) -> None:
            # with positions C counts them too, and shards may differ in length
            if n_outputs is not None and getattr(self.subset, "output_layout", None) is None:
                self.outputs = n_outputs
            check(n_batch, n_outputs)

        return noted

    def facts(self) -> dict[str, Any]:
        """What the ranks compare when the fit's scope opens (θ* by its fingerprint)."""
        return {
            "structure": self.structure,
            "how": self.how,
            "likelihood": self.likelihood.identity,
            "subset": self.subset.signature(),
            "weights": weights_fingerprint(self.subset.map_vector()),
        }


def _plain(value: Any) -> str:
    """An option as the ranks compare it: plain values by value, others (a generator, a
    callable) by type only (their repr names an address)."""
    if isinstance(value, bool | int | float | str | tuple | list | type(None)):
        return repr(value)
    return type(value).__name__


_ADVICE = {
    "structure": "pass the same hessian_structure on every rank",
    "how": "pass the same fisher_type, sigma_noise shape and backend_options on every rank",
    "likelihood": "pass the same likelihood on every rank",
    "subset": "build the same model and subset_of_weights on every rank",
    "weights": "load the same weights on every rank",
    "outputs": "the model's outputs must not depend on the rank",
}


def _fact(name: str, value: Any) -> str:
    if name == "weights":
        dtype, n, *_, norm = value
        return f"{n} {dtype} weights, ‖θ*‖ = {norm:.6g}"
    if name == "subset":
        return f"{value['kind']}, {value['n_params']} weights in {len(value['shapes'])} tensors"
    return repr(value)


def _check_facts(per_rank: list[dict[str, Any]]) -> None:
    """Refuse, on every rank alike, ranks whose facts differ (the first fact that does)."""
    for name, what in (
        ("structure", "fit different structures"),
        ("how", "sum different curvatures (curvature type, one per output, or options)"),
        ("likelihood", "fit different likelihoods"),
        ("subset", "fit different parameter subsets"),
        ("weights", "fit different weights θ*"),
        ("outputs", "see different output widths C"),
    ):
        seen = [(r, f[name]) for r, f in enumerate(per_rank) if f.get(name) is not None]
        if not seen:
            continue
        ref, value = seen[0]
        others = [r for r, v in seen if v != value]
        if others:
            other = next(v for _, v in seen if v != value)
            shown = f"rank {ref}: {_fact(name, value)}; {_ranks(others)}: {_fact(name, other)}"
            if name == "subset" and _fact(name, value) == _fact(name, other):
                diff = next(k for k in value if value[k] != other.get(k))
                shown += f"; their {diff!r} differ"
            raise ValueError(
                f"{_ranks([ref, *others])} {what} ({shown}): each rank would end with "
                f"another 'fit of all the data'; {_ADVICE[name]}"
            )


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"


def _agree(group: Any, fit: FitIdentity) -> None:
    error, facts = None, {}
    try:
        facts = fit.facts()
    except BaseException as err:  # told to every rank, like a data pass's
        error = err
    _exchange(group, error, {}, facts=facts)


# ----------------------------------------------------------------- the exchange
#: the exchanges each group has held: their number names their keys in the group's store
_EXCHANGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PREFIX = "laplacetorch/exchange"
#: how long a rank whose collective broke waits for the others to reach the exchange, so
#: that every survivor names the same missing ranks
_GRACE_S = 2.0
#: how often a data pass reads the store for another rank's failure
POLL_S = 0.2


class PeerStopped(Exception):
    """This rank stopped its pass because another rank failed (read from the store)."""


def _store(group: Any) -> Any:
    try:
        return dist.distributed_c10d._get_process_group_store(group)
    except (KeyError, AttributeError, RuntimeError):
        return None


def _key(n: int, what: str, rank: int | None = None) -> str:
    return f"{_PREFIX}/{n}/{what}" + ("" if rank is None else f"/{rank}")


class PeerWatch:
    """Read between the batches of a data pass: raises :class:`PeerStopped` once another
    rank of the active group has posted a failure for the coming exchange (at most one
    store round trip every :data:`POLL_S` seconds; nothing without a group)."""

    def __init__(self) -> None:
        self.group = active_group()
        self.store = None if self.group is None else _store(self.group)
        self.due = time.monotonic() + POLL_S

    def check(self) -> None:
        """Raise :class:`PeerStopped` if another rank has failed."""
        if self.store is None or time.monotonic() < self.due:
            return
        self.due = time.monotonic() + POLL_S
        n = _EXCHANGES.get(self.group, 0)
        try:
            failures = self.store.add(_key(n, "failures"), 0)
        except RuntimeError:  # the store is gone: the exchange will say why
            self.store = None
            return
        if failures:
            raise PeerStopped("another rank of the data-parallel pass failed")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _exchange(
    group: Any,
    error: BaseException | None,
    tensors: dict[str, Tensor],
    *extra: Any,
    facts: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Every rank's ``(spec, *extra)`` (the shapes and dtypes of ``tensors``, then ``extra``),
    gathered on every rank, once they all agree.

    Raises:
        this rank's own error, or on the others a ``ValueError`` naming the first failed
        rank's, when any rank failed, so that no rank waits in a collective; a
        ``ValueError`` when the ranks' facts differ (:func:`over`); a ``RuntimeError``
        naming the rank that left (died) when the collective breaks.
    """
    if facts is None:
        scope = _SCOPE.get()
        noted = None if scope is None or scope.fit is None else scope.fit.outputs
        facts = {} if noted is None else {"outputs": noted}
    own = None if error is None or isinstance(error, PeerStopped) else error
    spec = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}
    message = None if error is None else _describe(error)
    status = (message, isinstance(error, PeerStopped), facts, spec, *extra)
    n, rank, store = _EXCHANGES.get(group, 0), dist.get_rank(group), _store(group)
    try:
        _forget(store, n - 2, rank)
        _post(store, _key(n, "arrived", rank), "1")
        if own is not None:  # the others read it between their batches
            _post(store, _key(n, "failed", rank), message)
            _post(store, _key(n, "failures"), None)
        gathered = _gather_objects(group, status, store, n)
    except (RuntimeError, _Lost) as err:  # a rank left: its connection closed, or timeout
        if own is not None:
            raise own from err
        raise _lost(group, n, store) from err
    finally:
        _EXCHANGES[group] = n + 1
    failed = [(r, s[0]) for r, s in enumerate(gathered) if s[0] is not None and not s[1]]
    failed = failed or [(r, s[0]) for r, s in enumerate(gathered) if s[0] is not None]
    if failed:
        if own is not None:
            raise own
        rank, message = failed[0]
        raise ValueError(f"rank {rank} of the data-parallel pass failed: {message}")
    _check_facts([s[2] for s in gathered])
    return [s[3:] for s in gathered]


class _Lost(Exception):
    """Another survivor has posted exchange ``n``'s verdict on a rank that left."""


def _gather_objects(group: Any, obj: Any, store: Any, n: int) -> list[Any]:
    """``all_gather_object`` whose waits also read the store: a rank still waiting for a
    peer that another rank has found gone leaves with that rank's verdict (gloo may not
    break its wait until the other survivors' processes exit)."""
    try:
        device = dist.distributed_c10d._get_object_coll_device(group)
    except (AttributeError, RuntimeError):
        device = "cpu"
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    mine = torch.tensor([data.numel()], dtype=torch.long, device=device)
    _wait(dist.all_gather(sizes, mine, group=group, async_op=True), store, n)
    longest = max(int(size) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    bufs = [torch.empty_like(padded) for _ in range(world)]
    _wait(dist.all_gather(bufs, padded, group=group, async_op=True), store, n)
    return [
        pickle.loads(b[: int(size)].cpu().numpy().tobytes())  # what all_gather_object does
        for b, size in zip(bufs, sizes, strict=True)
    ]


def _wait(work: Any, store: Any, n: int) -> None:
    """Wait for ``work``; raise :class:`_Lost` once exchange ``n`` has a verdict."""
    delay = 1e-4
    while not work.is_completed():
        if store is not None and store.check([_key(n, "verdict")]):
            raise _Lost
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    work.wait()  # raises the collective's error


def _post(store: Any, key: str, value: str | None) -> None:
    """Set ``key`` (``None``: add one to it) in the store, if it can be reached."""
    if store is None:
        return
    try:
        if value is None:
            store.add(key, 1)
        else:
            store.set(key, value)
    except RuntimeError:  # best effort: the collective still tells
        pass


def _forget(store: Any, n: int, rank: int) -> None:
    """Drop exchange ``n``'s keys: no rank reads them once this rank is two exchanges on
    (the last exchange's collective completed on every rank, so each has left ``n``)."""
    if store is None or n < 0:
        return
    keys = [_key(n, "arrived", rank), _key(n, "failed", rank)]
    if rank == 0:
        keys += [_key(n, "failures"), _key(n, "verdict"), _key(n, "read")]
    try:
        for key in keys:
            store.delete_key(key)
    except (RuntimeError, NotImplementedError):  # a store without deletion keeps them
        pass


@contextmanager
def _losses_told(group: Any) -> Iterator[None]:
    """A collective after an exchange whose connections break raises :func:`_lost`'s error
    (every rank had arrived, so which one left cannot be told) instead of gloo's."""
    try:
        yield
    except RuntimeError as err:
        raise _lost(group, _EXCHANGES.get(group, 1) - 1, _store(group)) from err


def _lost(group: Any, n: int, store: Any) -> Exception:
    """The error every survivor raises when exchange ``n``'s collective broke: the ranks
    that never arrived (read from the store, after waiting :data:`_GRACE_S` for the others
    to arrive), or a failure a rank posted before it left. The first survivor's verdict is
    kept in the store and read by the others, so that they all raise the same error, and
    each waits (:data:`_GRACE_S`) until the others have read it: rank 0 hosts the store."""
    world = dist.get_world_size(group)
    advice = (
        "every other rank stops here. A rank that hangs instead of dying is noticed only "
        "after the process group's timeout: set it, e.g. "
        "init_process_group(..., timeout=timedelta(minutes=5))"
    )
    unreachable = RuntimeError(
        "a rank left the data-parallel pass (its connection closed or the timeout passed) "
        "and the process group's store cannot be reached to tell which: rank 0, which hosts "
        "it under tcp:// or env:// initialisation, died (or had already stopped on this "
        f"failure); {advice}"
    )
    if store is None:
        return RuntimeError(
            "a rank left the data-parallel pass (its connection closed or the timeout passed) "
            f"and the process group has no store to tell which; {advice}"
        )
    deadline = time.monotonic() + _GRACE_S
    try:
        while True:
            failed = [r for r in range(world) if store.check([_key(n, "failed", r)])]
            missing = [r for r in range(world) if not store.check([_key(n, "arrived", r)])]
            decided = store.check([_key(n, "verdict")])
            if decided or failed or not missing or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if failed:
            message = store.get(_key(n, "failed", failed[0])).decode()
            mine = f"rank {failed[0]} of the data-parallel pass failed: {message}"
        elif missing:
            who = "it" if len(missing) == 1 else "they"
            mine = (
                f"{_ranks(missing)} never reached the data-parallel pass's exchange and the "
                f"group's connections broke: {who} died or was killed (or the process group's "
                f"timeout passed); {advice}"
            )
        else:
            mine = (
                "a rank left the data-parallel pass during its exchange, after every rank had "
                f"arrived, so which one could not be told; {advice}"
            )
        verdict = store.compare_set(_key(n, "verdict"), "", mine).decode()
    except RuntimeError:  # the store's host is gone
        return unreachable
    try:
        store.add(_key(n, "failures"), 1)  # ranks still in their pass stop too
        store.add(_key(n, "read"), 1)
        survivors = world - len(missing)
        deadline = time.monotonic() + _GRACE_S
        while store.add(_key(n, "read"), 0) < survivors and time.monotonic() < deadline:
            time.sleep(0.05)
    except RuntimeError:  # the store's host left once all had read: nothing more to tell
        pass
    reported = re.match(r"rank \d+ of the data-parallel pass failed: ", verdict)
    return (ValueError if reported else RuntimeError)(verdict)


# ----------------------------------------------------------------- the reductions
def reduce_sums(
    sums: dict[str, Tensor], n_data: int, error: BaseException | None, device: torch.device
) -> tuple[dict[str, Tensor], int]:
    """``(sums, N)`` summed over the active group (as they are without one).

    Raises:
        the local error, or a ``ValueError`` naming another rank's, on every rank;
        ``ValueError`` when the ranks computed different statistics, or their fit differs
        (:func:`over`); ``RuntimeError`` naming a rank that left (died).
    """
    group = active_group()
    if group is None:
        if error is not None:
            raise error
        return sums, n_data
    gathered = _exchange(group, error, sums, n_data)
    specs = [s[0] for s in gathered if s[0]]
    if not specs:
        return sums, 0
    if any(s != specs[0] for s in specs):
        raise ValueError(
            "the ranks computed different statistics in one data pass (a rank-dependent model "
            f"or options?): {specs[0]} vs {next(s for s in specs if s != specs[0])}"
        )
    if not sums:  # an empty shard: zeros of the shapes the others computed
        sums = {
            k: torch.zeros(shape, dtype=getattr(torch, dt), device=device)
            for k, (shape, dt) in specs[0].items()
        }
    with _losses_told(group):
        for k in sorted(sums):
            dist.all_reduce(sums[k], group=group)
    return sums, sum(s[1] for s in gathered)


def gather_rows(
    parts: dict[str, Tensor], error: BaseException | None, device: torch.device
) -> dict[str, Tensor]:
    """Every rank's rows of ``parts`` (predictions, labels) concatenated in rank order, on
    every rank (as they are without a group); errors as in :func:`reduce_sums`."""
    group = active_group()
    if group is None:
        if error is not None:
            raise error
        return parts
    specs = [s[0] for s in _exchange(group, error, parts)]
    ref = next((s for s in specs if s), None)
    if ref is None:
        return parts
    out = {}
    for k in sorted(ref):
        shapes = [s[k][0] if s else (0, *ref[k][0][1:]) for s in specs]
        longest = max(sh[0] for sh in shapes)
        dtype = getattr(torch, ref[k][1])
        mine = parts.get(k, torch.zeros((0, *ref[k][0][1:]), dtype=dtype, device=device))
        pad = torch.zeros((longest, *ref[k][0][1:]), dtype=dtype, device=device)
        pad[: mine.shape[0]] = mine
        bufs = [torch.empty_like(pad) for _ in specs]
        with _losses_told(group):
            dist.all_gather(bufs, pad, group=group)
        out[k] = torch.cat([b[: sh[0]] for b, sh in zip(bufs, shapes, strict=True)])
    return out
