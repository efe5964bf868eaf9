"""Prior (and noise) tuning: marginal-likelihood ascent, MacKay's fixed point, grid search.

Each method works on log δ (and log σ), calls only O(P) structure operations for the
structures whose logdet is closed form in δ, and leaves the Laplace object tuned.

The package: ``common.py`` (the result, the prior's structures and the helpers the methods
share), one module per method (``marglik.py``, ``mackay.py``, ``gridsearch.py``), and
:func:`optimize` here, which checks the arguments and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..checks import check_count, check_generator, check_tolerance
from .common import PRIOR_STRUCTURES, TuningResult, _structure_of, initial_prior
from .gridsearch import _gridsearch
from .mackay import _mackay
from .marglik import _marglik

if TYPE_CHECKING:
    from ..laplace import Laplace

__all__ = ["METHODS", "PRIOR_STRUCTURES", "TuningResult", "optimize"]

METHODS = ("marglik", "mackay", "gridsearch")


def optimize(
    la: Laplace,
    method: str = "marglik",
    *,
    pred_type: str = "glm",
    prior_structure: str | None = None,
    val_loader: Iterable | None = None,
    init_prior_prec: Tensor | float = 1.0,
    tune_sigma: bool = False,
    n_steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    grid: Tensor | None = None,
    log_prior_prec_min: float = -4.0,
    log_prior_prec_max: float = 4.0,
    grid_size: int = 100,
    log_prior_prec_base: float = 10.0,
    loss: Callable[..., Tensor | float] | None = None,
    link_approx: str = "probit",
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> TuningResult:
    """Tune δ (and σ when ``tune_sigma``) as :meth:`Laplace.optimize_prior_precision` says."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if pred_type not in ("glm", "nn"):
        raise ValueError(f"unknown pred_type {pred_type!r}; expected 'glm' or 'nn'")
    if tune_sigma and not la.likelihood.has_noise:
        raise ValueError("tune_sigma is a regression-only option")
    tol = check_tolerance("tol", tol)
    check_generator(generator)
    delta0 = initial_prior(la, init_prior_prec, prior_structure)
    ps = _structure_of(la, delta0) if delta0.numel() > 1 else "scalar"
    if method == "gridsearch":
        if tune_sigma:
            raise ValueError("gridsearch tunes the prior precision only; use tune_sigma=False")
        if ps != "scalar":
            raise ValueError("gridsearch tunes a scalar prior precision only")
        if grid is None:
            check_count("grid_size", grid_size)
            grid = torch.logspace(
                log_prior_prec_min, log_prior_prec_max, grid_size, base=log_prior_prec_base
            )
        return _gridsearch(
            la, val_loader, grid, pred_type, loss, link_approx, n_samples, generator, progress
        )
    if val_loader is not None:
        raise ValueError(f"val_loader is only used by method='gridsearch', not {method!r}")
    if method == "marglik":
        if optimizer is None:  # laplace-torch's lr means Adam's; without one, L-BFGS converges
            optimizer = "adam" if lr is not None else "lbfgs"
        if n_steps is None:
            n_steps = 100 if optimizer == "adam" else 500
        return _marglik(la, delta0, tune_sigma, n_steps, optimizer, lr, tol or 1e-9, progress)
    return _mackay(la, delta0, ps, tune_sigma, max_iter, tol, progress)
