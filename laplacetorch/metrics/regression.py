"""Regression metrics: RMSE, Gaussian NLL and central-interval coverage."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from ._checks import _check_reduction, _check_target, _finite, _reduce, _tensor

__all__ = ["gaussian_nll", "interval_coverage", "rmse"]


# --------------------------------------------------------------------------- regression


def rmse(mean: Tensor, y: Tensor) -> float:
    """Root mean squared error √((1/(B·C)) Σₙ꜀ (yₙ꜀ − μₙ꜀)²).

    Args:
        mean: predictive means ``[B, C]`` (or ``[B]``).
        y: targets of the mean's shape (or ``[B]`` when C = 1).
    """
    mean, y = _check_target(mean, y)
    return math.sqrt(float((y - mean).detach().to(torch.float64).square().mean()))


def _diag_var(var, mean: Tensor, name: str) -> Tensor:
    """Per-output variances ``[B, C]`` from variances ``[B, C]`` or covariances ``[B, C, C]``."""
    var = _tensor(var, name)
    m = mean if mean.dim() == 2 else mean.unsqueeze(-1)
    b, c = m.shape
    if var.shape == (b, c, c):
        var = var.diagonal(dim1=-2, dim2=-1)
    elif var.shape != (b, c) and not (mean.dim() == 1 and var.shape == (b,)):
        raise ValueError(
            f"{name}: expected variances [B, C] = ({b}, {c}) or covariances [B, C, C] = "
            f"({b}, {c}, {c}), got {tuple(var.shape)}"
        )
    _finite(var, name)
    if float(var.min()) < 0:
        raise ValueError(f"{name}: expected non-negative variances, got min {float(var.min())}")
    return var.reshape(mean.shape).to(device=mean.device, dtype=mean.dtype)


def gaussian_nll(mean: Tensor, cov: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Gaussian negative log-likelihood −log N(yₙ | μₙ, Σₙ) per example.

    −log N(y | μ, Σ) = ½[(y − μ)ᵀ Σ⁻¹ (y − μ) + log det Σ + C log 2π], via a Cholesky factor.

    Args:
        mean: predictive means ``[B, C]``.
        cov: covariances ``[B, C, C]`` (positive definite), or variances ``[B, C]`` (diagonal).
        y: targets ``[B, C]`` (or ``[B]`` when C = 1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``mean`` and ``cov``).
    """
    _check_reduction(reduction)
    mean = _tensor(mean, "mean")
    if mean.dim() != 2:
        raise ValueError(f"mean: expected shape [B, C], got {tuple(mean.shape)}")
    mean, y = _check_target(mean, y)
    cov = _tensor(cov, "cov")
    b, c = mean.shape
    if cov.shape == (b, c):
        cov = torch.diag_embed(_diag_var(cov, mean, "cov"))
    elif cov.shape != (b, c, c):
        raise ValueError(
            f"cov: expected covariances [B, C, C] = ({b}, {c}, {c}) or variances [B, C], "
            f"got {tuple(cov.shape)}"
        )
    _finite(cov, "cov")
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        bad = int(torch.nonzero(info)[0, 0])
        raise ValueError(f"cov: expected positive-definite covariances, example {bad} is not")
    r = torch.linalg.solve_triangular(chol, (y - mean).unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    out = 0.5 * (r.square().sum(-1) + logdet + c * math.log(2 * math.pi))
    return _reduce(out, reduction)


def interval_coverage(
    mean: Tensor, var: Tensor, y: Tensor, levels: tuple[float, ...] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Empirical coverage of central Gaussian predictive intervals, per output.

    For level α the interval of output c is μₙ꜀ ± z σₙ꜀ with z = Φ⁻¹((1 + α)/2) and
    σₙ꜀² the marginal variance; coverage(α) = (1/(B·C)) Σₙ꜀ 1[|yₙ꜀ − μₙ꜀| ≤ z σₙ꜀]. A calibrated
    predictive has coverage(α) ≈ α.

    Args:
        mean: predictive means ``[B, C]`` (or ``[B]``).
        var: variances ``[B, C]`` or covariances ``[B, C, C]`` (only the diagonal is used).
        y: targets of the mean's shape (or ``[B]`` when C = 1).
        levels: nominal levels α in (0, 1).

    Returns:
        ``{α: coverage}`` for each level, floats.
    """
    mean, y = _check_target(mean, y)
    sd = _diag_var(var, mean, "var").detach().to(torch.float64).sqrt()
    err = (y - mean).detach().to(torch.float64).abs()
    out = {}
    for a in levels:
        if not 0 < a < 1:
            raise ValueError(f"levels: expected levels in (0, 1), got {a!r}")
        z = NormalDist().inv_cdf((1 + a) / 2)
        out[a] = float((err <= z * sd).to(torch.float64).mean())
    return out
