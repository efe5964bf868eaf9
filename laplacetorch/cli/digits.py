"""scikit-learn's digits as the demo and ``evaluate --dataset digits`` split them."""

from __future__ import annotations

import torch

#: digits: the first 1200 shuffled examples train, the next 300 validate, the last 297 test
_DIGITS_TRAIN, _DIGITS_VAL_END = 1200, 1500


def _digits_shuffled(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's digits (shipped with scikit-learn), shuffled by ``seed``: raw ``x``, ``y`` and
    the per-pixel mean and standard deviation of the training part (clamped at 1e-3)."""
    from .. import datasets

    x, y = datasets.load_digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    pool = x[:_DIGITS_TRAIN]
    return x, y, pool.mean(0), pool.std(0).clamp_min(1e-3)
