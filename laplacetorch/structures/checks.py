"""Checks the structures share: the likelihood scale, an indefinite curvature announced, and
a posterior precision that must be positive."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["check_scale", "log_sum", "report_indefinite", "require_positive"]


def check_scale(scale: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The likelihood scale s as a positive finite 0-d tensor."""
    s = torch.as_tensor(scale, dtype=dtype, device=device)
    if s.numel() > 1:
        raise ValueError(
            f"this fit holds the curvature summed over outputs: it takes one likelihood scale, "
            f"not {s.numel()} (a noise per output needs sigma_noise of shape [C] set before "
            "fit(), which keeps one curvature per output)"
        )
    if s.numel() != 1 or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"likelihood scale must be one positive finite number; got {s.tolist()}")
    return s.reshape(())


def report_indefinite(eigenvalues: Tensor, what: str) -> None:
    """Announce negative eigenvalues of an indefinite curvature (beyond round-off)."""
    lam = eigenvalues.detach()
    tol = 1e-10 * float(lam.abs().max()) if lam.numel() else 0.0
    n_neg = int((lam < -tol).sum())
    if n_neg:
        warnings.warn(
            f"{what} has {n_neg} negative eigenvalue(s), the smallest {float(lam.min()):.3g}: "
            "the Laplace approximation needs a prior δ > −s·λ_min",
            stacklevel=4,
        )


def require_positive(prec: Tensor, s: Tensor, d: Tensor) -> Tensor:
    """``prec`` (the eigenvalues s·λ + δ of Π), refusing any that is not positive."""
    pmin = prec.detach().min()
    if bool(pmin <= 0):
        dmin = float(d.detach().min())
        raise ValueError(
            "the posterior precision s·H + δ is not positive definite for this prior (the "
            f"curvature is indefinite: s·λ_min = {float(pmin) - dmin:.3g}); take a prior "
            f"precision δ > {dmin - float(pmin):.3g}, or a positive semi-definite curvature "
            "(the GGN)"
        )
    return prec


def log_sum(x: Tensor) -> Tensor:
    """Σ log x, the logs taken and summed in float64 and returned in x's dtype: a log
    determinant of a half-precision model's float32 statistics sums millions of terms."""
    return x.to(torch.promote_types(x.dtype, torch.float64)).log().sum().to(x.dtype)
