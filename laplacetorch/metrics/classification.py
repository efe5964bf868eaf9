"""Accuracy, negative log-likelihoods and the Brier score of predicted probabilities."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    _TINY,
    _check_classification,
    _check_probs,
    _check_reduction,
    _finite,
    _reduce,
    _tensor,
)

__all__ = ["accuracy", "binary_nll", "brier", "nll"]


# --------------------------------------------------------------------------- classification


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of examples whose most probable class is the label.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.

    Returns:
        (1/B) Σₙ 1[argmax_c pₙ꜀ = yₙ].
    """
    probs, y = _check_classification(probs, y)
    return float((probs.argmax(-1) == y).to(torch.float64).mean())


def nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Categorical negative log-likelihood −log pₙ(yₙ), with pₙ(yₙ) clamped at 1e-12.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``probs``): (1/B) Σₙ −log pₙ(yₙ) for ``"mean"``.
    """
    _check_reduction(reduction)
    probs, y = _check_classification(probs, y)
    lp = probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).clamp_min(_TINY).log()
    return -_reduce(lp, reduction)


def binary_nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Bernoulli negative log-likelihood of independent outputs, summed over outputs.

    −log p(yₙ) = −Σ_c [yₙ꜀ log pₙ꜀ + (1 − yₙ꜀) log(1 − pₙ꜀)], logs clamped at 1e-12.

    Args:
        probs: probabilities of the positive class ``[B, C]`` (rows need not sum to 1).
        y: targets in [0, 1], ``[B, C]`` (or ``[B]`` when C = 1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``probs``).
    """
    _check_reduction(reduction)
    probs = _check_probs(probs, simplex=False)
    y = _tensor(y, "y")
    if y.dim() == 0 or y.numel() != probs.numel() or y.shape[0] != probs.shape[0]:
        raise ValueError(
            f"y: expected targets of shape {tuple(probs.shape)} matching probs, "
            f"got {tuple(y.shape)}"
        )
    _finite(y, "y")
    y = y.reshape(probs.shape).to(device=probs.device, dtype=probs.dtype)
    lo, hi = float(y.min()), float(y.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"y: expected binary targets in [0, 1], got values in [{lo}, {hi}]")
    lp = (y * probs.clamp_min(_TINY).log() + (1 - y) * (1 - probs).clamp_min(_TINY).log()).sum(-1)
    return -_reduce(lp, reduction)


def brier(probs: Tensor, y: Tensor) -> float:
    """Multi-class Brier score (1/B) Σₙ Σ_c (pₙ꜀ − 1[yₙ = c])².

    For two classes this is twice scikit-learn's binary ``brier_score_loss`` of p(class 1).

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
    """
    probs, y = _check_classification(probs, y)
    onehot = torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs.dtype)
    return float((probs - onehot).square().sum(-1).to(torch.float64).mean())
