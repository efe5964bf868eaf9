"""What a subset is given besides names: laplace-torch's integer subnetwork indices, and the
reduction of last-layer sequence features (``feature_reduction``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FEATURE_REDUCTIONS", "FeaturesReached", "indices_to_mask", "reduce_features"]

FEATURE_REDUCTIONS = ("pick_first", "pick_last", "average")


class FeaturesReached(Exception):
    """Stops a forward pass at the last layer's input (feature reduction)."""


def reduce_features(phi: Tensor, how: str) -> Tensor:
    """``[B, T, D]`` sequence features to ``[B, D]``: the first or last position, or the
    mean over positions."""
    if phi.dim() != 3:
        raise ValueError(
            f"feature_reduction={how!r} needs last-layer inputs [B, T, D]; got {list(phi.shape)}"
        )
    if how == "pick_first":
        return phi[:, 0]
    if how == "pick_last":
        return phi[:, -1]
    return phi.mean(1)


def indices_to_mask(indices: Tensor, total: int) -> Tensor:
    """A boolean mask over the flat parameter vector from laplace-torch's integer
    ``subnetwork_indices`` (non-empty, 1-D, unique, ascending: θ keeps the flat order)."""
    if indices.dim() != 1 or indices.numel() == 0:
        raise ValueError(
            f"subnetwork indices must be a non-empty 1-D integer tensor; got shape "
            f"{list(indices.shape)}"
        )
    idx = indices.to(torch.long).cpu()
    if bool((idx < 0).any()) or bool((idx >= total).any()):
        raise ValueError(
            f"subnetwork indices must lie in [0, {total}); got {idx.min()}…{idx.max()}"
        )
    if idx.unique().numel() != idx.numel():
        raise ValueError("subnetwork indices must not contain duplicates")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(
            "subnetwork indices must be ascending: θ follows the flat parameter order "
            "(pass indices.sort().values)"
        )
    mask = torch.zeros(total, dtype=torch.bool)
    mask[idx] = True
    return mask
