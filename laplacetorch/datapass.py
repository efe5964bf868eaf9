"""The one pass over the data.

Every backend that reads data does it through :func:`accumulate`: it validates and moves each
batch, shows the progress bar, sums what the per-batch step returns and hands the sums to the
reduction. A distributed run only replaces the reduction (:func:`set_reduction`), e.g. with an
``all_reduce`` of each tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .distributed import PeerWatch, gather_rows, reduce_sums
from .linalg.gram import add_gram_, gram
from .model_call import KeywordInputs, WithKeywords, taking_turns

__all__ = [
    "BatchAdapter",
    "Gram",
    "InputSpec",
    "accumulate",
    "as_pair",
    "batch_size",
    "collect",
    "prepare_inputs",
    "reduce_local",
    "require_reiterable",
    "set_reduction",
]

Reduction = Callable[[dict[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class Gram:
    """A step's term Σᵢ xᵢᵀxᵢ for row blocks xᵢ ``[Mᵢ, D]``, summed into its accumulator in
    place.

    ``x`` is one block, or a function returning the blocks one at a time (so that rows made
    in chunks under a memory budget are never all held). :func:`accumulate` adds each block
    with one GEMM into the running ``[D, D]`` sum (β = 1) instead of forming a fresh product
    and adding it: for a wide layer (D = 9217, a batch of 128) the fresh product costs a new
    D² allocation and a second pass over D² entries, about 1.6× the GEMM alone.
    """

    x: Tensor | Callable[[], Iterable[Tensor]]

    def _blocks(self) -> Iterable[Tensor]:
        return (self.x,) if isinstance(self.x, Tensor) else self.x()

    def value(self) -> Tensor:
        """Σᵢ xᵢᵀxᵢ, ``[D, D]``."""
        blocks = iter(self._blocks())
        total = gram(next(blocks))
        for x in blocks:
            add_gram_(total, x)
        return total

    def add_to(self, total: Tensor) -> None:
        """total += Σᵢ xᵢᵀxᵢ, in place (the blocks on and below the diagonal, mirrored)."""
        for x in self._blocks():
            add_gram_(total, x)


def _identity(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    return sums


_reduction: Reduction = _identity


def set_reduction(fn: Reduction | None) -> None:
    """Replace the reduction applied to the accumulated sums (``None`` restores the identity).

    The function receives a dict of summed tensors (including ``"n_data"``) and returns it
    reduced across processes.
    """
    global _reduction
    _reduction = _identity if fn is None else fn


def batch_size(x: Any, batch_size_fn: Callable[[Any], int] | None = None) -> int:
    """Number of examples in inputs ``x``: a tensor's first dimension, or for a dict the
    first dimension of its first tensor unless ``batch_size_fn`` says otherwise."""
    if batch_size_fn is not None:
        n = batch_size_fn(x)
        if isinstance(n, Tensor) and n.numel() == 1 and not n.is_floating_point():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"batch_size_fn must return the batch's number of examples, an int >= 0; it "
                f"returned {n!r} ({type(n).__name__})"
            )
        return n
    if isinstance(x, WithKeywords):
        return batch_size(x.inputs)
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError("inputs X must have a batch dimension; got a 0-d tensor")
        return x.shape[0]
    if isinstance(x, Mapping):
        for v in x.values():
            if isinstance(v, Tensor) and v.dim() > 0:
                return v.shape[0]
    raise TypeError(
        f"inputs X must be a tensor or a dict of tensors; got {type(x).__name__} "
        "(pass batch_size_fn for other input types)"
    )


def prepare_inputs(x: Any, device: torch.device, dtype: torch.dtype, name: str = "X") -> Any:
    """Move inputs to the model's device and check them: finite, and floating inputs of the
    model's dtype (a mismatch is refused, not silently cast)."""
    if isinstance(x, WithKeywords):
        return WithKeywords(prepare_inputs(x.inputs, device, dtype, name), x.constants)
    if isinstance(x, Mapping):
        kind = KeywordInputs if isinstance(x, KeywordInputs) else dict
        return kind((k, prepare_inputs(v, device, dtype, f"{name}[{k!r}]")) for k, v in x.items())
    if isinstance(x, Tensor):
        if x.is_floating_point():
            if x.dtype != dtype:
                raise TypeError(
                    f"inputs {name} have dtype {x.dtype} but the model has dtype {dtype}; "
                    "convert the data (or the model) first"
                )
            if not torch.isfinite(x).all():
                raise ValueError(f"inputs {name} contain NaN or Inf values")
        return x.to(device)
    return x


def as_pair(batch: Any, dict_key_y: str = "labels") -> tuple[Any, Any]:
    """``(X, y)`` of a batch: a pair as it is, or a mapping (dict, ``UserDict``, an HF
    ``BatchEncoding``) whose label ``dict_key_y`` is the target and whose other entries are
    the model's keyword inputs (:class:`~laplacetorch.model_call.KeywordInputs`).

    Raises:
        ValueError: for another kind of batch, or a mapping without the label.
    """
    if isinstance(batch, Mapping) or (hasattr(batch, "keys") and hasattr(batch, "__getitem__")):
        if dict_key_y not in batch.keys():
            raise ValueError(
                f"a mapping batch must hold its targets under dict_key_y={dict_key_y!r}; got "
                f"keys {sorted(batch.keys())}"
            )
        return KeywordInputs((k, batch[k]) for k in batch.keys() if k != dict_key_y), batch[
            dict_key_y
        ]
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"each batch must be a pair (X, y) or a mapping with the targets under {dict_key_y!r}; "
        f"got {type(batch).__name__}"
    )


@dataclass
class InputSpec:
    """What the training inputs looked like: the per-example shape of tensor inputs, and
    whether batches were mappings (the model then takes keyword inputs, at prediction too)."""

    dict_key_y: str = "labels"
    shape: tuple[int, ...] | None = None
    keyword: bool = False
    #: whether tensor inputs were floating point (None: not seen, or not tensors)
    floating: bool | None = None

    def prepare(
        self,
        x: Any,
        device: torch.device,
        dtype: torch.dtype,
        batch_size_fn: Callable[[Any], int] | None = None,
        shape: tuple[int, ...] | str | None = "training",
    ) -> tuple[Any, int]:
        """Prediction inputs like the training inputs, checked and moved; ``(x, B)``.
        ``shape``: the per-example shape expected (default: the training inputs')."""
        if isinstance(x, WithKeywords):  # constant keyword arguments ride along
            inner, n = self.prepare(x.inputs, device, dtype, batch_size_fn, shape)
            return WithKeywords(inner, x.constants), n
        if self.keyword and isinstance(x, Mapping) and not isinstance(x, KeywordInputs):
            x = KeywordInputs((k, v) for k, v in x.items() if k != self.dict_key_y)
        if self.shape is not None and isinstance(x, Mapping):  # tensors at fit, not mappings
            raise TypeError(
                f"x is a mapping (keys {sorted(map(str, x.keys()))}) but the fit's inputs were "
                f"tensors of shape [B, {', '.join(map(str, self.shape))}]; pass such a tensor"
            )
        x = prepare_inputs(x, device, dtype, "x")
        if isinstance(x, Tensor) and self.floating and not x.is_floating_point():
            raise TypeError(
                f"x has dtype {x.dtype} but the training inputs were floating point; pass "
                f"x.to({dtype})"
            )
        shape = self.shape if shape == "training" else shape
        if isinstance(x, Tensor) and shape is not None and tuple(x.shape[1:]) != tuple(shape):
            what = "like the training inputs" if shape == self.shape else "(single items)"
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, shape))}] {what}; got {list(x.shape)}"
            )
        return x, batch_size(x, batch_size_fn)


class BatchAdapter:
    """Wraps a loader: yields ``(X, y)`` pairs (mapping batches converted with ``dict_key_y``)
    and records their :class:`InputSpec`."""

    def __init__(self, loader: Iterable, dict_key_y: str = "labels") -> None:
        self.loader, self.spec = loader, InputSpec(dict_key_y)

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for generators: the bar then has no total

    def __iter__(self) -> Iterator:
        if isinstance(self.loader, Tensor) or not isinstance(self.loader, Iterable):
            raise TypeError(
                f"the loader must be a DataLoader or an iterable of (X, y) batches; "
                f"got {type(self.loader).__name__}"
            )
        spec = self.spec
        for batch in self.loader:
            x, y = as_pair(batch, spec.dict_key_y)
            spec.keyword = spec.keyword or isinstance(x, KeywordInputs)
            if spec.shape is None and isinstance(x, Tensor):
                spec.shape, spec.floating = tuple(x.shape[1:]), x.is_floating_point()
            yield x, y


def loader_size(loader: Any, dict_key_y: str = "labels") -> int | None:
    """N without a pass, where the loader tells it (a DataLoader's sampler, or a list of
    in-memory batches); ``None`` otherwise."""
    try:
        if isinstance(loader, DataLoader):
            n, bs = len(loader.sampler), loader.batch_size
            return n - n % bs if loader.drop_last and bs else n
        if isinstance(loader, list | tuple):
            return sum(int(as_pair(b, dict_key_y)[1].shape[0]) for b in loader)
    except (TypeError, ValueError, AttributeError, IndexError):
        pass
    return None


def require_reiterable(loader: Iterable, what: str) -> None:
    """Refuse a one-shot iterator (a generator, ``iter(loader)``) for ``what``, which passes
    over the data more than once.

    Raises:
        ValueError: naming ``what`` and what to pass instead.
    """
    inner = loader.loader if isinstance(loader, BatchAdapter) else loader
    if isinstance(inner, Iterator):
        raise ValueError(
            f"{what} passes over the data more than once; got a one-shot iterator "
            f"({type(inner).__name__}). Pass a DataLoader or a list of batches"
        )


def _batches(
    loader: Iterable,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
    desc: str,
    batch_size_fn: Callable[[Any], int] | None,
) -> Iterator[tuple[Any, Tensor, int]]:
    """Validated, moved ``(X, y, batch size)`` of every non-empty batch, under the bar."""
    if isinstance(loader, Tensor) or not isinstance(loader, Iterable):
        raise TypeError(
            f"the loader must be a DataLoader or an iterable of (X, y) batches; "
            f"got {type(loader).__name__}"
        )
    try:
        total = len(loader)
    except TypeError:
        total = None
    # one iterator: tqdm.auto would call iter() on the loader twice (DataLoader workers twice)
    batches = iter(loader)
    bar = tqdm(batches, total=total, disable=bar_disabled(progress), desc=desc, leave=False)
    for batch in bar:
        x, y = as_pair(batch)
        b = batch_size(x, batch_size_fn)
        if b == 0:
            continue
        x = prepare_inputs(x, device, dtype)
        if not isinstance(y, Tensor):
            raise TypeError(f"targets y must be a torch.Tensor; got {type(y).__name__}")
        if y.shape[:1] != (b,):
            raise ValueError(
                f"targets y must have batch dimension {b} like X; got shape {list(y.shape)}"
            )
        yield x, y.to(device), b


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` setting: ``None`` (the default everywhere) shows
    the bar only on a terminal, so CI logs and redirected output stay clean."""
    return None if progress is None else not progress


def progress_range(n: int, progress: bool | None, desc: str) -> Iterable[int]:
    """``range(n)`` under the project's tqdm bar (tuning steps, training epochs)."""
    return tqdm(range(n), disable=bar_disabled(progress), desc=desc, leave=False)


def progress_bar(total: int | None, progress: bool | None, desc: str) -> tqdm:
    """A tqdm bar updated by hand (iterations that may stop early: MacKay, L-BFGS)."""
    return tqdm(total=total, disable=bar_disabled(progress), desc=desc, leave=False)


def collect(
    loader: Iterable,
    step: Callable[[Any, Tensor], dict[str, Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
    desc: str = "data pass",
    batch_size_fn: Callable[[Any], int] | None = None,
) -> dict[str, Tensor]:
    """Run ``step(X, y)`` on every batch and concatenate what it returns along dimension 0
    (predictions, labels), with the same checks and bar as :func:`accumulate`; under
    torch.distributed every rank gets the rows of all ranks, in rank order.

    Raises:
        ValueError: for an empty loader, NaN/Inf inputs or malformed batches.
    """
    parts: dict[str, list[Tensor]] = {}
    error, peers = None, PeerWatch()
    try:
        for x, y, _ in _batches(loader, device, dtype, progress, desc, batch_size_fn):
            peers.check()
            with taking_turns():  # the step's transforms; not the loader's next batch
                for k, v in step(x, y).items():
                    parts.setdefault(k, []).append(v)
    except BaseException as err:  # interrupts too: told to every rank, then raised here
        error = err
    rows = gather_rows({k: torch.cat(v) for k, v in parts.items()}, error, device)
    if not rows:
        raise ValueError("the loader yielded no data (empty loader)")
    return rows


def accumulate(
    loader: Iterable,
    step: Callable[[Any, Tensor], dict[str, Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
    desc: str = "data pass",
    batch_size_fn: Callable[[Any], int] | None = None,
) -> dict[str, Tensor]:
    """Run ``step(X, y)`` on every batch and return the reduced sums of what it returns.

    Args:
        loader: a DataLoader or any iterable of ``(X, y)`` batches.
        step: per-batch function returning a dict of *fresh* tensors to be summed over
            batches (the first batch's tensors become the accumulators), or of
            :class:`Gram` terms (summed in place as products).
        device, dtype: where the model lives; batches are moved there, dtypes are checked.
        progress: show a tqdm progress bar.
        desc: label of the progress bar.
        batch_size_fn: how to count examples in non-tensor inputs.

    Returns:
        The sums, plus ``"n_data"`` (a 0-d long tensor, the number of examples N).

    Raises:
        ValueError: for an empty loader, NaN/Inf inputs or malformed batches.
    """
    sums: dict[str, Tensor] = {}
    n_data = 0
    error, peers = None, PeerWatch()
    try:
        for x, y, b in _batches(loader, device, dtype, progress, desc, batch_size_fn):
            peers.check()
            with taking_turns():  # the step's transforms (a Gram's rows run here too)
                for k, v in step(x, y).items():
                    if isinstance(v, Gram):
                        if k in sums:
                            v.add_to(sums[k])
                        else:
                            sums[k] = v.value()
                    elif k in sums:
                        sums[k] += v  # in place: steps return fresh tensors
                    else:
                        sums[k] = v
            n_data += b
    except BaseException as err:  # interrupts too: told to every rank, then raised here
        error = err
    sums, n_data = reduce_sums(sums, n_data, error, device)
    if n_data == 0:
        raise ValueError("the loader yielded no data (empty loader)")
    sums["n_data"] = torch.tensor(n_data, device=device)
    return _reduction(sums)


def reduce_local(sums: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Sums computed on this process without a data pass (e.g. from statistics kept from an
    earlier pass), reduced as a data pass's are: over the active process group, then the
    installed reduction. Every rank must call it with the same keys (an empty dict on a rank
    with no data)."""
    sums, _ = reduce_sums(sums, 0, None, device)
    return _reduction(sums)
