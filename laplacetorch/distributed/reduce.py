"""The data pass's sums and rows over the active group (as they are without one)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .exchange import _exchange, _losses_told
from .scope import active_group


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
