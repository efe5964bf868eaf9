"""What ``Laplace`` hands every curvature backend besides the backend's own options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..structures import DEFAULT_MEMORY_BUDGET

__all__ = ["DEFAULT_CONTEXT", "FitContext"]


@dataclass(frozen=True)
class FitContext:
    """The settings of one fit that every backend takes.

    Attributes:
        fisher_type: the curvature to sum: ``"exact"`` (the GGN), ``"mc"``, ``"empirical"``
            or ``"hessian"``, as the backend's registry entry allows.
        progress: a tqdm bar per data pass (``None``: on a terminal).
        memory_budget: bytes a chunk of Jacobian rows (or vectors) may take.
        batch_size_fn: counts the examples of non-tensor inputs.
        memory_limit: bytes the fit may hold at its peak (``None``: 80 % of what is free);
            backends that learn their size in a first pass check it again then.
        memory_check: ``check(B, C)``, called by the data pass on its first batch (and on a
            larger one) before any output column is formed: refuses a fit whose peak with
            that batch exceeds the limit (``MemoryBudgetError``; ``None``: no check).
    """

    fisher_type: str = "exact"
    progress: bool | None = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_size_fn: Callable[[Any], int] | None = None
    memory_limit: int | None = None
    memory_check: Callable[[int, int], None] | None = None


DEFAULT_CONTEXT = FitContext()
