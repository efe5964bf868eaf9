"""Input checks shared by the metrics."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

_TINY = 1e-12
PROB_ATOL = 1e-3
"""Tolerance for probabilities outside [0, 1] and for rows of ``probs`` summing to 1."""

Variant = Literal["top_label", "classwise"]


# --------------------------------------------------------------------------- input checks


def _tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}") from e
    return x


def _finite(x: Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
        n_bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries")


def _nonempty(x: Tensor, name: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")


def _check_probs(probs, name: str = "probs", simplex: bool = True) -> Tensor:
    """Checks ``[B, C]`` probabilities (rows summing to 1 when ``simplex``)."""
    probs = _tensor(probs, name)
    if probs.dim() != 2:
        raise ValueError(f"{name}: expected shape [B, C], got {tuple(probs.shape)}")
    _nonempty(probs, name)
    if not probs.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {probs.dtype}")
    _finite(probs, name)
    p = probs.detach()
    lo, hi = float(p.min()), float(p.max())
    if lo < -PROB_ATOL or hi > 1 + PROB_ATOL:
        raise ValueError(f"{name}: expected probabilities in [0, 1], got values in [{lo}, {hi}]")
    if simplex:
        dev = float((p.to(torch.float64).sum(-1) - 1).abs().max())
        if dev > PROB_ATOL:
            raise ValueError(
                f"{name}: expected rows summing to 1 (tolerance {PROB_ATOL}), "
                f"got a row sum off by {dev:.3g}"
            )
    return probs


def _check_labels(y, probs: Tensor, name: str = "y") -> Tensor:
    """Checks integer labels ``[B]`` in [0, C) matching ``probs`` ``[B, C]``; returns longs."""
    y = _tensor(y, name)
    b, c = probs.shape
    if y.dim() != 1:
        raise ValueError(f"{name}: expected labels of shape [B] = ({b},), got {tuple(y.shape)}")
    if y.shape[0] != b:
        raise ValueError(
            f"{name}: expected {b} labels to match probs {tuple(probs.shape)}, got {y.shape[0]}"
        )
    if y.is_floating_point():
        _finite(y, name)
        if not bool((y == y.round()).all()):
            raise ValueError(f"{name}: expected integer class labels, got non-integer values")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise ValueError(f"{name}: expected labels in [0, {c - 1}], got values in [{lo}, {hi}]")
    return y.to(probs.device)


def _check_classification(probs, y) -> tuple[Tensor, Tensor]:
    probs = _check_probs(probs)
    return probs, _check_labels(y, probs)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")


def _check_variant(variant: str) -> None:
    if variant not in ("top_label", "classwise"):
        raise ValueError(f"variant: expected 'top_label' or 'classwise', got {variant!r}")


def _check_target(mean, y, name_mean: str = "mean", name_y: str = "y") -> tuple[Tensor, Tensor]:
    """Checks a regression mean ``[B]``/``[B, C]`` and a target reshaped to its shape."""
    mean, y = _tensor(mean, name_mean), _tensor(y, name_y)
    if mean.dim() not in (1, 2):
        raise ValueError(f"{name_mean}: expected shape [B] or [B, C], got {tuple(mean.shape)}")
    _nonempty(mean, name_mean)
    if not mean.is_floating_point():
        raise ValueError(f"{name_mean}: expected a floating-point tensor, got dtype {mean.dtype}")
    ok = y.shape == mean.shape or (
        y.dim() == 1 and mean.dim() == 2 and mean.shape[1] == 1 and y.shape[0] == mean.shape[0]
    )
    if not ok:
        raise ValueError(
            f"{name_y}: expected shape {tuple(mean.shape)} matching {name_mean}"
            f"{' (or [B] for C = 1)' if mean.dim() == 2 else ''}, got {tuple(y.shape)}"
        )
    _finite(mean, name_mean)
    _finite(y, name_y)
    return mean, y.reshape(mean.shape).to(device=mean.device, dtype=mean.dtype)
