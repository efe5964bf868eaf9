"""Prior precisions: validation, and their restriction to the blocks of a structure."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_scale", "expand_prior", "parse_prior", "prior_on_block", "single_group"]


def parse_prior(
    prior_precision: Tensor | float,
    n_params: int,
    n_groups: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, str]:
    """Validate a prior precision and say what it is.

    Returns:
        ``(delta, kind)``: a 0-d tensor and ``"scalar"``, ``[n_groups]`` and ``"group"`` or
        ``[P]`` and ``"param"``.

    Raises:
        TypeError: not a number or tensor.
        ValueError: wrong number of entries, or a value that is not positive and finite.
    """
    if isinstance(prior_precision, bool) or not isinstance(prior_precision, Tensor | float | int):
        raise TypeError(
            f"prior_precision must be a float or a tensor; got {type(prior_precision).__name__}"
        )
    delta = torch.as_tensor(prior_precision, dtype=dtype, device=device)
    if not torch.isfinite(delta).all() or (delta <= 0).any():
        raise ValueError(
            f"prior_precision must be positive and finite; got {delta.detach().cpu().tolist()}"
        )
    if delta.numel() == 1:
        return delta.reshape(()), "scalar"
    if delta.dim() != 1 or delta.numel() not in (n_groups, n_params):
        raise ValueError(
            f"prior_precision must have 1, {n_groups} (one per layer) or {n_params} (one per "
            f"parameter) entries; got shape {list(delta.shape)}"
        )
    return delta, "param" if delta.numel() == n_params else "group"


def expand_prior(
    prior_precision: Tensor | float,
    n_params: int,
    group_index: Tensor,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, bool]:
    """A validated prior precision as a 0-d tensor (``True``: scalar) or ``[P]`` (``False``)."""
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    delta, kind = parse_prior(prior_precision, n_params, n_groups, dtype=dtype, device=device)
    if kind == "group":
        return delta[group_index.to(device)], False
    return delta, kind == "scalar"


def prior_on_block(
    delta: Tensor, kind: str, group_index: Tensor, positions: Tensor | None, group: int | None
) -> Tensor:
    """δ on the block at ``positions`` of θ (``None``: all of θ), as a 0-d tensor when it is
    constant there, else a vector of the block's length.

    ``group`` is the block's single parameter group (``None`` if it spans several). A
    per-parameter δ that requires a gradient stays a vector, so that each entry gets its own
    gradient even where the values happen to coincide.
    """
    if kind == "scalar":
        return delta
    if kind == "group":
        if group is not None:
            return delta[group]
        return delta[group_index if positions is None else group_index[positions]]
    d = delta if positions is None else delta[positions]
    if not d.requires_grad and d.numel() and bool((d == d[0]).all()):
        return d[0]
    return d


def single_group(group_index: Tensor) -> int | None:
    """The one group of a block, or ``None`` when it spans several (or is empty)."""
    if group_index.numel() == 0:
        return None
    g0 = group_index[0]
    return int(g0) if bool((group_index == g0).all()) else None


def check_scale(scale: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The likelihood scale s as a positive finite 0-d tensor."""
    s = torch.as_tensor(scale, dtype=dtype, device=device)
    if s.numel() != 1 or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"likelihood scale must be one positive finite number; got {s.tolist()}")
    return s.reshape(())
