"""The Linear / Conv layers among the Bayesian parameters and their blocks in θ.

A layer z = W ã (+ b) gets one block per conv group: the rows of that group's output
channels, its input columns and, for a joint bias, the bias column, in row-major order of
W̃ = [W | b] (see :class:`~laplacetorch.structures.LayerBlock`); a separate bias is a block of
its own. :func:`layer_positions` turns a layer's recorded input and output gradients into the
``[B, S, in]`` / ``[K, B, S, out]`` form the blocks select from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..params import ParameterSubset
from ..structures import BlockDiagonal, LayerBlock, Structure
from .example_axis import CONV_MODULES, ExampleAxis, positions_of

__all__ = [
    "KRON_MODULES",
    "LayerBlocks",
    "block_diagonal",
    "layer_blocks",
    "layer_parts",
    "layer_positions",
    "param_offsets",
    "rest_positions",
]

KRON_MODULES = (nn.Linear, *CONV_MODULES)


@dataclass
class LayerBlocks:
    """A module, its blocks ``(name, θ index, layout)``, the parameter tensors they cover and
    where its input holds the examples (learnt on the first batch of a fit)."""

    name: str
    module: nn.Module
    blocks: list[tuple[str, Tensor, LayerBlock]]
    params: list[str]
    axis: ExampleAxis = field(default_factory=ExampleAxis)


def param_offsets(subset: ParameterSubset) -> dict[str, int]:
    """Start of each parameter tensor in θ (a subset without a mask)."""
    offs, pos = {}, 0
    for n, k in zip(subset.names, subset.numels, strict=True):
        offs[n] = pos
        pos += k
    return offs


def _owner_counts(model: nn.Module) -> dict[int, int]:
    owners: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return owners


def layer_blocks(
    subset: ParameterSubset,
    *,
    joint_bias: bool = True,
    modules: tuple[type[nn.Module], ...] = KRON_MODULES,
) -> tuple[list[LayerBlocks], list[str]]:
    """The supported layers whose weight is Bayesian, and the names of the other parameters.

    Args:
        joint_bias: one block for [W | b] or separate W and b blocks.
        modules: the layer types that get blocks.

    Raises:
        ValueError: for a masked subnetwork.
    """
    if subset.index is not None:
        raise ValueError("layer blocks need whole layers; a subnetwork given by a mask is not")
    offs, chosen = param_offsets(subset), set(subset.names)
    owners = _owner_counts(subset.model)
    # a last layer tied to an embedding is Bayesian in its own use only: its own layer
    untied = subset.last_layer if subset.head_tied else None
    layers, covered = [], set()
    for name, m in subset.model.named_modules():
        prefix = name + "." if name else ""
        if not isinstance(m, modules) or prefix + "weight" not in chosen:
            continue
        has_bias = m.bias is not None and prefix + "bias" in chosen
        tied = owners[id(m.weight)] != 1 or (has_bias and owners[id(m.bias)] != 1)
        if tied and m is not untied:
            continue  # tied to another module: left to the rest
        groups = getattr(m, "groups", 1)
        og, in_cols = m.weight.shape[0] // groups, m.weight[0].numel()  # in/groups · kernel
        joint = has_bias and joint_bias
        blocks = []
        for gi in range(groups):
            rows = torch.arange(gi * og, (gi + 1) * og)
            idx = offs[prefix + "weight"] + rows.unsqueeze(1) * in_cols + torch.arange(in_cols)
            if joint:
                idx = torch.cat([idx, (offs[prefix + "bias"] + rows).unsqueeze(1)], dim=1)
            tag = f"[group {gi}]" if groups > 1 else ""
            layout = LayerBlock(
                name, (gi * og, (gi + 1) * og), (gi * in_cols, (gi + 1) * in_cols), joint
            )
            blocks.append(
                (name + tag + ("" if joint or not has_bias else ".weight"), idx.reshape(-1), layout)
            )
            if has_bias and not joint:
                bias_layout = LayerBlock(name, layout.rows, None, True)
                blocks.append((prefix + "bias" + tag, offs[prefix + "bias"] + rows, bias_layout))
        params = [prefix + "weight"] + ([prefix + "bias"] if has_bias else [])
        layers.append(LayerBlocks(name, m, blocks, params))
        covered.update(params)
    return layers, [n for n in subset.names if n not in covered]


def layer_parts(subset: ParameterSubset) -> list[tuple[LayerBlock, Tensor]]:
    """``(layout, θ index)`` of every layer block, for a structure over all of θ that can
    use the layers' factors in its predictive (none for a subnetwork given by a mask)."""
    if subset.index is not None:
        return []
    layers, _ = layer_blocks(subset)
    return [(layout, index) for layer in layers for _, index, layout in layer.blocks]


def layer_positions(
    module: nn.Module, a: Tensor, g: Tensor, axis: ExampleAxis | None = None, n: int | None = None
) -> tuple[Tensor, Tensor]:
    """A layer's inputs ``[B, S, in]`` and output gradients ``[K, B, S, out]`` over its
    weight-sharing positions S, from its recorded input ``a`` and gradients ``g``
    ``[K, *output shape]``; ``axis`` says where the input holds the ``n`` examples (default:
    dim 0, one example a row; see :mod:`.example_axis`)."""
    return positions_of(module, a, g, axis, n)


def rest_positions(subset: ParameterSubset, names: list[str]) -> list[tuple[str, Tensor]]:
    """``(name, θ positions)`` of whole parameter tensors."""
    offs, numel = param_offsets(subset), dict(zip(subset.names, subset.numels, strict=True))
    return [(n, torch.arange(offs[n], offs[n] + numel[n])) for n in names]


def block_diagonal(
    subset: ParameterSubset,
    layers: list[LayerBlocks],
    rest_names: list[str],
    layer_block: Callable[[str, Tensor, LayerBlock], Structure],
    rest_block: Callable[[str, Tensor], Structure],
) -> BlockDiagonal:
    """A BlockDiagonal of ``layer_block(name, index, layout)`` for each layer block and
    ``rest_block(name, index)`` for each other parameter tensor."""
    blocks = [
        (name, index, layer_block(name, index, layout))
        for layer in layers
        for name, index, layout in layer.blocks
    ]
    blocks += [
        (name, index, rest_block(name, index)) for name, index in rest_positions(subset, rest_names)
    ]
    return BlockDiagonal(blocks, subset.n_params, subset.group_index)
