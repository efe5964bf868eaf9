"""What a subset is given besides names: laplace-torch's integer subnetwork indices, and the
reduction of last-layer sequence features (``feature_reduction``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FEATURE_REDUCTIONS",
    "FeaturesReached",
    "attention_mask_of",
    "indices_to_mask",
    "input_of",
    "reduce_features",
]

FEATURE_REDUCTIONS = ("pick_first", "pick_last", "average")


class FeaturesReached(Exception):
    """Stops a forward pass at the last layer's input (feature reduction)."""


def input_of(module: nn.Module, run: Callable[[], object]) -> Tensor | None:
    """The first positional input ``module`` receives while ``run()`` executes, the run
    stopped there (the layers after it never computed); ``None`` when it is not called.
    The hook acts in the calling thread only: the same model serving another thread (a
    plain forward, another prediction) passes through it untouched."""
    seen: list[Tensor] = []
    me = threading.get_ident()

    def stop(mod: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if inputs and threading.get_ident() == me:
            seen.append(inputs[0])
            raise FeaturesReached

    handle = module.register_forward_pre_hook(stop)
    try:
        run()
    except FeaturesReached:
        pass
    finally:
        handle.remove()
    return seen[0] if seen else None


def reduce_features(phi: Tensor, how: str, mask: Tensor | None = None) -> Tensor:
    """``[B, T, D]`` sequence features to ``[B, D]``: the first or last position, or the
    mean over positions; with an attention ``mask`` ``[B, T]`` (1: a token, 0: padding) the
    first or last token and the mean over tokens, under left or right padding alike (the
    token a model reading its last token reads, not a pad).

    Features ``[B, D]`` (no positions) are returned as they are: the reduction is for
    sequence features (laplace-torch's meaning, so one setting serves both kinds of model).

    Raises:
        ValueError: features of another rank; a mask of another shape, or one with an
            example without any token.
    """
    if phi.dim() == 2:
        return phi
    if phi.dim() != 3:
        raise ValueError(
            f"feature_reduction={how!r} needs last-layer inputs [B, T, D] (or [B, D], left as "
            f"they are); got {list(phi.shape)}"
        )
    if mask is None:
        if how == "pick_first":
            return phi[:, 0]
        return phi[:, -1] if how == "pick_last" else phi.mean(1)
    if mask.shape != phi.shape[:2]:
        raise ValueError(
            f"the attention mask has shape {list(mask.shape)}, the features {list(phi.shape)}: "
            "expected one entry per example and position"
        )
    keep = mask.to(phi.dtype)
    if bool((keep.sum(1) == 0).any()):
        raise ValueError("an example's attention mask has no token: nothing to reduce")
    if how == "average":
        return (phi * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    positions = torch.arange(phi.shape[1], device=phi.device)
    scored = torch.where(keep > 0, positions if how == "pick_last" else -positions, -phi.shape[1])
    index = scored.argmax(1)
    return phi[torch.arange(phi.shape[0], device=phi.device), index]


def attention_mask_of(x: Any) -> Tensor | None:
    """The ``attention_mask`` of mapping inputs (HF batches), ``None`` for other inputs."""
    inner = getattr(x, "inputs", x)  # WithKeywords: the per-example inputs
    if isinstance(inner, Mapping):
        mask = inner.get("attention_mask")
        return mask if isinstance(mask, Tensor) else None
    return None


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
