"""Curvature backends. Each takes (subset, likelihood, loader, **options) and returns a
:class:`CurvatureResult`; a new backend is one module plus its entry in the registry
(:mod:`.registry`), which declares everything the rest of the library asks of it."""

from __future__ import annotations

from .base import FISHER_TYPES, CurvatureResult
from .block_full import fit_block_full
from .diag import fit_diag
from .ekfac import fit_ekfac
from .full import fit_full
from .gp import fit_gp
from .hutchinson import fit_hutchinson
from .kfac import fit_kfac
from .lanczos import fit_lanczos
from .nystrom import fit_nystrom
from .operator import fit_operator
from .registry import (
    ALIASES,
    BACKENDS,
    HESSIAN_STRUCTURES,
    Backend,
    canonical_structure,
    check_fisher_type,
    get_backend,
)

__all__ = [
    "ALIASES",
    "BACKENDS",
    "FISHER_TYPES",
    "HESSIAN_STRUCTURES",
    "Backend",
    "CurvatureResult",
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
