"""Curvature backends. Each takes (subset, likelihood, loader, **options) and returns a
:class:`CurvatureResult`; a new backend is one module plus its entry in the registry
(:mod:`.registry`), which declares everything the rest of the library asks of it."""

from __future__ import annotations

from .base import FISHER_TYPES, CurvatureResult
from .context import DEFAULT_CONTEXT, FitContext
from .registry import (
    ALIASES,
    BACKENDS,
    HESSIAN_STRUCTURES,
    Backend,
    batch_memory_check,
    canonical_structure,
    check_fisher_type,
    get_backend,
)

# each backend by its registry entry: callable with the FitContext's fields as keywords
fit_block_full, fit_diag, fit_ekfac, fit_full, fit_gp = (
    BACKENDS[n] for n in ("block_full", "diag", "ekfac", "full", "gp")
)
fit_hutchinson, fit_kfac, fit_lanczos, fit_nystrom, fit_operator = (
    BACKENDS[n] for n in ("hutchinson", "kfac", "lanczos", "nystrom", "operator")
)

__all__ = [
    "ALIASES",
    "BACKENDS",
    "DEFAULT_CONTEXT",
    "FISHER_TYPES",
    "HESSIAN_STRUCTURES",
    "Backend",
    "CurvatureResult",
    "FitContext",
    "batch_memory_check",
    "canonical_structure",
    "check_fisher_type",
    "fit_block_full",
    "fit_diag",
    "fit_ekfac",
    "fit_full",
    "fit_gp",
    "fit_hutchinson",
    "fit_kfac",
    "fit_lanczos",
    "fit_nystrom",
    "fit_operator",
    "get_backend",
]
