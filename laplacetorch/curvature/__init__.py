"""Curvature backends. Each takes (subset, likelihood, loader, **options) and returns a
:class:`CurvatureResult`; a new backend is one module, imported here with its ``BACKENDS``
entry."""

from __future__ import annotations

from collections.abc import Callable

from .base import FISHER_TYPES, CurvatureResult
from .block_full import fit_block_full
from .diag import fit_diag
from .ekfac import fit_ekfac
from .full import fit_full
from .hutchinson import fit_hutchinson
from .kfac import fit_kfac
from .lanczos import fit_lanczos
from .operator import fit_operator

BACKENDS: dict[str, Callable[..., CurvatureResult]] = {
    "full": fit_full,
    "diag": fit_diag,
    "kfac": fit_kfac,
    "ekfac": fit_ekfac,
    "block_full": fit_block_full,
    "hutchinson": fit_hutchinson,
    "lanczos": fit_lanczos,
    "operator": fit_operator,
}


def get_backend(name: str) -> Callable[..., CurvatureResult]:
    """The backend function registered under ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown curvature backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


__all__ = [
    "BACKENDS",
    "FISHER_TYPES",
    "CurvatureResult",
    "fit_block_full",
    "fit_diag",
    "fit_ekfac",
    "fit_full",
    "fit_hutchinson",
    "fit_kfac",
    "fit_lanczos",
    "fit_operator",
    "get_backend",
]
