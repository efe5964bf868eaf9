"""The one data pass of the layer-block backends (KFAC, EKFAC's refit, block_full).

Per batch: one forward recording each layer's input and output, one batched backward of the
K output columns (the Fisher type's vectors), each block's statistics from the layer inputs
and output gradients it selects, and the exact per-example diagonal of the other parameters.
After the pass: one structure per layer block and an exact diagonal block per other tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal, LayerBlock, Structure
from .base import CurvatureResult, curvature_pass
from .layer_blocks import LayerBlocks, block_diagonal, layer_blocks, layer_positions, rest_positions
from .layer_capture import backward_columns, capture_once
from .per_example import per_example_diagonal

__all__ = ["fit_layer_blocks", "kfac_layers", "layer_passes"]


def kfac_layers(subset: ParameterSubset, joint_bias: bool) -> tuple[list[LayerBlocks], list[str]]:
    """The Kronecker layers of the subset and the names of the other Bayesian parameters.

    Raises:
        ValueError: for a masked subnetwork, a shared weight, or no supported layer.
    """
    if subset.index is not None:
        raise ValueError("kfac needs whole layers; a subnetwork given by a mask is not supported")
    layers, rest = layer_blocks(subset, joint_bias=joint_bias)
    if not layers:
        raise ValueError(
            "kfac found no supported layer (nn.Linear, nn.Conv1d/2d/3d) among the Bayesian "
            "parameters"
        )
    return layers, rest


def layer_passes(
    subset: ParameterSubset, layers: list[LayerBlocks], x: Any, cols_fn: Callable[[Tensor], Tensor]
):
    """One forward and one batched backward of the columns ``cols_fn(f)`` ``[K, B, C]``.

    Returns ``(f, [(layer, a [B, S, in], g [K, B, S, out])])`` with a layer's inputs and
    output gradients over its weight-sharing positions.
    """
    f, record = capture_once(subset.model, layers, x)
    cols = cols_fn(f.detach())
    grads = backward_columns(f, record, [layer.name for layer in layers], cols)
    with torch.no_grad():
        per_layer = [
            (layer, *layer_positions(layer.module, record["inputs"][layer.name], g))
            for layer, g in zip(layers, grads, strict=True)
        ]
    return f.detach(), per_layer


def announce_rest(backend: str, rest_names: list[str]) -> None:
    """Say once which parameters get an exact diagonal block instead of a layer block."""
    if rest_names:
        warnings.warn(
            f"{backend}: parameters outside Linear/Conv layers get an exact diagonal block: "
            f"{rest_names}",
            stacklevel=4,
        )


def fit_layer_blocks(
    backend: str,
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    layers: list[LayerBlocks],
    rest_names: list[str],
    *,
    kind: str,
    columns: Callable[[Tensor, Tensor], Tensor],
    block_sums: Callable[[str, Tensor, Tensor], dict[str, Tensor]],
    make_block: Callable[[str, dict[str, Tensor], Tensor, LayerBlock], Structure],
    progress: bool,
    memory_budget: int,
    batch_size_fn: Callable[[Any], int] | None,
) -> CurvatureResult:
    """Fit one block per layer block and an exact diagonal block per other parameter tensor.

    Args:
        columns: ``(f, y) -> [K, B, C]`` vectors pulled back through the network.
        block_sums: ``(name, a [B, S, in'], g [K, B, S, out]) -> {key: tensor}`` statistics
            of a block for one batch, summed over batches.
        make_block: ``(name, sums, group_index, layout) -> block`` after the pass.
    """
    announce_rest(backend, rest_names)
    rest = (
        ParameterSubset(subset.model, "subnetwork", subnetwork=rest_names) if rest_names else None
    )

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        f, per_layer = layer_passes(subset, layers, x, lambda f: columns(f, y))
        out = {"loss": likelihood.nll_unit(f, y).sum()}
        with torch.no_grad():
            for layer, a, g in per_layer:
                for name, _, layout in layer.blocks:
                    out.update(block_sums(name, *layout.select(a, g)))
        if rest is not None:
            out["rest"], _ = per_example_diagonal(
                rest, likelihood, x, y, kind=kind, n_outputs=n_out, memory_budget=memory_budget
            )
        return out

    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        progress=progress,
        desc=f"{backend} curvature",
        batch_size_fn=batch_size_fn,
    )
    rest_diag = torch.zeros(subset.n_params, dtype=subset.dtype, device=subset.device)
    if rest_names:
        rest_diag[torch.cat([i for _, i in rest_positions(subset, rest_names)])] = sums["rest"]
    gi = subset.group_index

    def layer_block(name: str, index: Tensor, layout: LayerBlock) -> Structure:
        return make_block(name, sums, gi[index], layout)

    def diagonal(name: str, index: Tensor) -> Diagonal:
        return Diagonal(rest_diag[index], gi[index])

    structure = block_diagonal(subset, layers, rest_names, layer_block, diagonal)
    return CurvatureResult(structure, n_data, n_out, sums["loss"], kind)
