"""Evaluation metrics for predictive distributions.

Classification metrics take probabilities ``[B, C]`` and integer labels ``[B]``; the
regression NLL takes a mean ``[B, C]``, a covariance ``[B, C, C]`` and targets ``[B, C]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["accuracy", "brier", "ece", "gaussian_nll", "nll"]

_TINY = 1e-12


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of examples whose most probable class is the label."""
    return float((probs.argmax(-1) == y).to(torch.float64).mean())


def nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """−log p(yₙ), clamped at 1e-12 to stay finite, averaged (or summed) over the batch."""
    lp = probs.gather(-1, y.long().unsqueeze(-1)).squeeze(-1).clamp_min(_TINY).log()
    return -(lp.mean() if reduction == "mean" else lp.sum())


def binary_nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Bernoulli −log p(y) of ``[B, C]`` probabilities, summed over outputs."""
    y = y.reshape(probs.shape).to(probs.dtype)
    lp = (y * probs.clamp_min(_TINY).log() + (1 - y) * (1 - probs).clamp_min(_TINY).log()).sum(-1)
    return -(lp.mean() if reduction == "mean" else lp.sum())


def brier(probs: Tensor, y: Tensor) -> float:
    """Mean over examples of Σ_c (p_c − [y = c])²."""
    onehot = torch.nn.functional.one_hot(y.long(), probs.shape[-1]).to(probs.dtype)
    return float((probs - onehot).square().sum(-1).mean())


def ece(probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins."""
    conf, pred = probs.max(-1)
    correct = (pred == y).to(probs.dtype)
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    # Σ_b |Σ_{n ∈ b} (conf − correct)| / N  =  Σ_b (n_b / N) |conf_b − acc_b|
    gap = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device)
    gap.index_add_(0, bins, conf - correct)
    return float(gap.abs().sum() / len(conf))


def gaussian_nll(mean: Tensor, cov: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """−log N(y | mean, cov) per example, for ``[B, C]`` means and ``[B, C, C]`` covariances."""
    y = y.reshape(mean.shape).to(mean.dtype)
    chol = torch.linalg.cholesky(cov)
    r = torch.linalg.solve_triangular(chol, (y - mean).unsqueeze(-1), upper=False).squeeze(-1)
    c = mean.shape[-1]
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    out = 0.5 * (r.square().sum(-1) + logdet + c * math.log(2 * math.pi))
    return out.mean() if reduction == "mean" else out.sum()
