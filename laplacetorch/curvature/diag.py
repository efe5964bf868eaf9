"""``diag``: the exact GGN diagonal Σₙ Σₖ (Jₙᵀ sₙₖ)² (or the empirical Fisher's Σₙ gₙ²)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal, LayerBlock, Structure
from .base import CurvatureResult, curvature_pass, resolve_fisher_type
from .last_layer import last_layer_curvature
from .layer_blocks import block_diagonal, layer_blocks
from .layer_capture import LinearLayer, backward_columns, linear_layers, linear_output_grads
from .per_example import DEFAULT_MEMORY_BUDGET, per_example_diagonal

__all__ = ["fit_diag", "per_layer_diagonal"]


def fit_diag(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    fisher_type: str = "exact",
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> CurvatureResult:
    """Exact diagonal of the unit-scale curvature, one :class:`Diagonal` block per layer.

    - ``nn.Linear`` layers on ``[B, in]`` inputs: one forward recording layer inputs aₙ, one
      batched backward of the K columns of Sₙ giving output gradients gₙₖ, then
      diag W = Σₙ (Σₖ gₙₖ²) (aₙ²)ᵀ and diag b = Σₙ Σₖ gₙₖ²: about (1 + 2C)/3 gradient epochs.
    - Every other Bayesian parameter (convolutions, norms, masked subnetworks, shared weights):
      the K vector-Jacobian products Jₙᵀ sₙₖ per example, vmap'd and squared in chunks of at
      most ``memory_budget`` bytes.
    - The last layer: the closed form Σₙ Λₙ[c, c] φ̃ₙᵢ² from the features.

    Args:
        fisher_type: ``"exact"`` (GGN) or ``"empirical"``.
        memory_budget: bytes a chunk of per-example rows may take.
    """
    kind = resolve_fisher_type(fisher_type, "diag")
    if subset.kind == "last_layer":
        g, n_data, n_out, loss = last_layer_curvature(
            subset,
            likelihood,
            loader,
            kind=kind,
            diagonal=True,
            progress=progress,
            memory_budget=memory_budget,
            batch_size_fn=batch_size_fn,
        )
        return CurvatureResult(per_layer_diagonal(subset, g), n_data, n_out, loss, kind)

    layers = linear_layers(subset)
    covered = {n for layer in layers for n in (layer.weight, layer.bias) if n}
    rest_names = [n for n in subset.names if n not in covered]
    rest = (
        ParameterSubset(subset.model, "subnetwork", subnetwork=rest_names)
        if layers and rest_names
        else None
    )

    def per_example(sub: ParameterSubset, x: Any, y: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        return per_example_diagonal(
            sub, likelihood, x, y, kind=kind, n_outputs=n_out, memory_budget=memory_budget
        )

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        fast = _linear_diag(subset, likelihood, layers, x, y, kind) if layers else None
        if fast is None:
            g, loss = per_example(subset, x, y, n_out)
            return {"G": g, "loss": loss}
        named, loss = fast
        if rest is not None:
            g_rest, _ = per_example(rest, x, y, n_out)
            named.update(rest.to_named(g_rest))
        return {"G": subset.from_named(named), "loss": loss}

    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        progress=progress,
        desc="diag curvature",
        batch_size_fn=batch_size_fn,
    )
    return CurvatureResult(per_layer_diagonal(subset, sums["G"]), n_data, n_out, sums["loss"], kind)


def per_layer_diagonal(subset: ParameterSubset, g: Tensor) -> Structure:
    """The exact diagonal ``g`` ``[P]`` as one :class:`Diagonal` block per layer (with its
    layout, so the predictive needs no Jacobian there) and per other parameter tensor; one
    block for a subnetwork given by a mask."""
    if subset.index is not None:
        return Diagonal(g, subset.group_index)
    layers, rest = layer_blocks(subset, shared="skip")
    gi = subset.group_index

    def layer_block(name: str, index: Tensor, layout: LayerBlock) -> Diagonal:
        return Diagonal(g[index], gi[index], layout=layout)

    return block_diagonal(subset, layers, rest, layer_block, lambda n, i: Diagonal(g[i], gi[i]))


def _linear_diag(
    subset: ParameterSubset,
    likelihood: Likelihood,
    layers: list[LinearLayer],
    x: Any,
    y: Tensor,
    kind: str,
) -> tuple[dict[str, Tensor], Tensor] | None:
    """Diagonal blocks of the Linear layers from layer inputs and output gradients, or
    ``None`` when the forward pass does not fit that path (then the batch goes per example)."""
    captured = linear_output_grads(subset, layers, x)
    if captured is None:
        return None
    f, record = captured
    fd = f.detach()
    if kind == "ggn":
        cols = likelihood.hessian_sqrt(fd).permute(2, 0, 1)  # [K, B, C]
    else:
        cols = likelihood.output_grad(fd, y).unsqueeze(0)  # [1, B, C]
    grads = backward_columns(f, record, [layer.name for layer in layers], cols.contiguous())
    named: dict[str, Tensor] = {}
    with torch.no_grad():
        for layer, g in zip(layers, grads, strict=True):
            g2 = g.square().sum(0)  # Σₖ gₙₖ², [B, out]
            named[layer.weight] = g2.T @ record["inputs"][layer.name].square()
            if layer.bias is not None:
                named[layer.bias] = g2.sum(0)
    return named, likelihood.nll_unit(fd, y).sum()
