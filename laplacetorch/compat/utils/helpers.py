"""laplace-torch's helper functions: ``validate``, ``get_nll``, prior-precision shapes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..classes import WholeMappings
from ..enums import plain

__all__ = [
    "expand_prior_precision",
    "fix_prior_prec_structure",
    "get_nll",
    "parameters_per_layer",
    "validate",
]


def get_nll(out_dist: Tensor, targets: Tensor) -> Tensor:
    """Mean −log p(yₙ) of predicted class probabilities ``out_dist`` ``[B, C]``."""
    return nn.functional.nll_loss(out_dist.log(), targets)


@torch.no_grad()
def validate(
    laplace: Any,
    val_loader: Iterable,
    loss: Any,
    pred_type: Any = "glm",
    link_approx: Any = "probit",
    n_samples: int = 100,
    dict_key_y: str = "labels",
) -> float:
    """``loss`` of ``laplace``'s predictive on ``val_loader``: a callable on all predictions
    (``loss(probs, y)``, or ``loss(mean, var, y)`` for a Gaussian), or an object with
    ``update`` / ``compute`` (a running metric)."""
    online = hasattr(loss, "update") and hasattr(loss, "compute")
    outs, ys = [], []
    for x, y in WholeMappings(val_loader, dict_key_y):  # mappings go to the model whole
        out = laplace(
            x,
            pred_type=plain(pred_type),
            link_approx=plain(link_approx),
            n_samples=n_samples,
            fitting=True,
        )
        y = y.to(laplace.subset.device)
        if online:
            loss.update(*(out if isinstance(out, tuple) else (out,)), y)
        else:
            outs.append(out)
            ys.append(y)
    if online:
        return float(torch.as_tensor(loss.compute()).sum())
    y = torch.cat(ys)
    if isinstance(outs[0], tuple):
        return float(loss(*(torch.cat(p) for p in zip(*outs, strict=True)), y))
    return float(loss(torch.cat(outs), y))


def parameters_per_layer(model: nn.Module) -> list[int]:
    """The size of every parameter tensor of ``model``."""
    return [p.numel() for p in model.parameters()]


def expand_prior_precision(prior_prec: Tensor, model: nn.Module) -> Tensor:
    """A 1-D δ (one value, one per trainable tensor, or one per weight) as ``[P]``."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    if prior_prec.dim() != 1 or prior_prec.numel() not in (1, len(params), n):
        raise ValueError(
            f"prior_prec must be 1-D with 1, {len(params)} or {n} entries; got "
            f"{list(prior_prec.shape)}"
        )
    if prior_prec.numel() == n:
        return prior_prec
    if prior_prec.numel() == 1:
        return prior_prec.expand(n).clone()
    return torch.cat(
        [
            d * torch.ones(p.numel(), dtype=p.dtype, device=p.device)
            for d, p in zip(prior_prec, params, strict=True)
        ]
    )


def fix_prior_prec_structure(
    prior_prec_init: float,
    prior_structure: Any,
    n_layers: int,
    n_params: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``prior_prec_init`` repeated for ``"scalar"`` (1), ``"layerwise"`` (``n_layers``) or
    ``"diag"`` (``n_params``)."""
    n = {"scalar": 1, "layerwise": n_layers, "diag": n_params}.get(plain(prior_structure))
    if n is None:
        raise ValueError(f"Invalid prior structure {prior_structure}.")
    return torch.full((n,), float(prior_prec_init), device=device, dtype=dtype)
