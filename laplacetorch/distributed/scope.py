"""Which process group a data pass reduces over (scoped per fit by
:func:`~laplacetorch.distributed.over`; the default group when torch.distributed is
initialised; or none), and each rank's Monte-Carlo seed."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from .agreement import FitIdentity


@dataclass(frozen=True)
class _Scope:
    group: Any
    fit: FitIdentity | None


_SCOPE: ContextVar[_Scope | None] = ContextVar("laplacetorch_process_group", default=None)


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
