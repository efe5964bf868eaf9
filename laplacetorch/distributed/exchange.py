"""The ranks' exchange before any reduction: what each computed and whether it failed (any
``BaseException``, posted in the group's store and read between batches by :class:`PeerWatch`),
each rank's arrival marked in the store so that a rank that died is named, and the agreement
on what a fit is (:func:`agree`)."""

from __future__ import annotations

import pickle
import re
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .agreement import FitIdentity, _check_facts, _ranks
from .scope import _SCOPE, active_group


def agree(group: Any, fit: FitIdentity) -> None:
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
