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
from .gp import fit_gp
from .hutchinson import fit_hutchinson
from .kfac import fit_kfac
from .lanczos import fit_lanczos
from .nystrom import fit_nystrom
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
    "gp": fit_gp,
    "nystrom": fit_nystrom,
}


#: canonical structure names; laplace-torch's aliases map onto them
HESSIAN_STRUCTURES = tuple(BACKENDS)  # one registry: a new backend is one entry there
ALIASES = {"kron": "kfac", "lowrank": "lanczos", "diag_hutchinson": "hutchinson"}


def canonical_structure(name: str | None, subset: str) -> str:
    """The backend name for a ``hessian_structure`` (aliases resolved, defaults chosen)."""
    if name is None:
        # Best that exists: exact dense curvature where P is small by construction, KFAC (with
        # exact eigenbasis algebra) for whole networks.
        return "full" if subset in ("last_layer", "subnetwork") else "kfac"
    canon = ALIASES.get(name, name)
    if canon not in HESSIAN_STRUCTURES:
        raise ValueError(
            f"unknown hessian_structure {name!r}; expected one of {list(HESSIAN_STRUCTURES)} "
            f"or an alias {sorted(ALIASES)}"
        )
    return canon


def get_backend(name: str) -> Callable[..., CurvatureResult]:
    """The backend function registered under ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown curvature backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


__all__ = [
    "ALIASES",
    "BACKENDS",
    "FISHER_TYPES",
    "HESSIAN_STRUCTURES",
    "CurvatureResult",
    "canonical_structure",
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
