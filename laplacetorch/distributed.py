"""The data pass's reduction over a torch.distributed process group.

When torch.distributed is initialised, every accumulated quantity of a data pass (curvature
sums, factor numerators, losses, counts, GGN-vector products) is summed over the ranks, so
each rank ends with the result of one process on all the data. The group is chosen per call:
``Laplace(..., process_group=...)`` scopes it around its own passes (:func:`over`); the
default is the default group when torch.distributed is initialised, and no communication
otherwise. Before any tensor is reduced the ranks exchange what they computed and whether
they failed, so a rank whose data fails validation stops every rank with its error instead of
leaving the others waiting in a collective; a rank with an empty shard joins with zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["active_group", "gather_rows", "over", "rank_seed", "reduce_sums"]

_GROUP: ContextVar[Any] = ContextVar("laplacetorch_process_group", default=None)


@contextmanager
def over(group: Any) -> Iterator[None]:
    """Reduce the data passes inside over ``group`` (``None``: the default group when
    torch.distributed is initialised; ``False``: no communication)."""
    token = _GROUP.set(group)
    try:
        yield
    finally:
        _GROUP.reset(token)


def active_group() -> Any:
    """The process group the current data pass reduces over, or ``None``."""
    group = _GROUP.get()
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


def reduce_sums(
    sums: dict[str, Tensor], n_data: int, error: BaseException | None, device: torch.device
) -> tuple[dict[str, Tensor], int]:
    """``(sums, N)`` summed over the active group (as they are without one).

    Raises:
        the local error, or a ``ValueError`` naming another rank's, on every rank;
        ``ValueError`` when the ranks computed different statistics.
    """
    group = active_group()
    if group is None:
        if error is not None:
            raise error
        return sums, n_data
    gathered = _exchange(group, error, sums, n_data)
    specs = [s[1] for s in gathered if s[1]]
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
    for k in sorted(sums):
        dist.all_reduce(sums[k], group=group)
    return sums, sum(s[2] for s in gathered)


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
    gathered = _exchange(group, error, parts)
    specs = [s[1] for s in gathered]
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
        dist.all_gather(bufs, pad, group=group)
        out[k] = torch.cat([b[: sh[0]] for b, sh in zip(bufs, shapes, strict=True)])
    return out


def _exchange(group: Any, error: BaseException | None, tensors: dict[str, Tensor], *extra: Any):
    """Every rank's status (its error message or ``None``, the shapes and dtypes of
    ``tensors``, then ``extra``), gathered on every rank; raises this rank's error, or the
    first failed rank's, when any rank failed, so that no rank waits in a collective."""
    spec = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()}
    status = (None if error is None else f"{type(error).__name__}: {error}", spec, *extra)
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, status, group=group)
    failed = [(r, s[0]) for r, s in enumerate(gathered) if s[0] is not None]
    if failed:
        if error is not None:
            raise error
        rank, message = failed[0]
        raise ValueError(f"rank {rank} of the data-parallel pass failed: {message}")
    return gathered
