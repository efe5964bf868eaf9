"""The one data pass of the layer-block backends (KFAC, EKFAC's refit, block_full).

Per batch: one forward recording each layer's input and output, one batched backward of the
K output columns (the Fisher type's vectors), each block's statistics from the layer inputs
and output gradients it selects, and the exact per-example diagonal of the other parameters.
After the pass: one structure per layer block and an exact diagonal block per other tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal, LayerBlock, Structure
from .base import CurvatureResult, curvature_pass
from .context import FitContext
from .example_axis import learn_example_axes
from .layer_blocks import LayerBlocks, block_diagonal, layer_blocks, layer_positions, rest_positions
from .layer_capture import backward_columns, capture_layers, capture_once
from .per_example import per_example_diagonal

__all__ = ["blocked_layers", "fit_layer_blocks", "layer_passes", "square_sum", "with_axes"]


def blocked_layers(
    subset: ParameterSubset, joint_bias: bool, x: Any = None, n: int | None = None
) -> tuple[list[LayerBlocks], list[str]]:
    """The layers that get layer blocks, and the names of the other Bayesian parameters.

    A Linear / Conv layer gets blocks when its weight is its own (not tied to another module)
    and, given a batch of inputs ``x`` (the first of the fit), when a forward pass on it calls
    the layer exactly once (a layer applied twice, or whose weight a fused kernel reads
    directly, is not B ⊗ A); every other parameter tensor is left to an exact diagonal block.
    Given ``n ≥ 2``, the batch's number of examples, each layer's example axis is learnt
    (:mod:`.example_axis`: one more forward); a layer whose input follows none is left to the
    others too, announced once.

    Raises:
        ValueError: for a subnetwork given by a mask (it splits layers).
    """
    if subset.index is not None:
        raise ValueError("layer blocks need whole layers; a subnetwork given by a mask splits them")
    layers, _ = layer_blocks(subset, joint_bias=joint_bias)
    if x is not None and layers:
        with torch.no_grad(), capture_layers(layers) as record:
            subset.call(x)
        layers = [la for la in layers if record["calls"].get(la.name) == 1]
        if n is not None and n > 1 and layers:
            layers = with_axes(subset, layers, x, n, record["inputs"])
    covered = {p for la in layers for p in la.params}
    return layers, [name for name in subset.names if name not in covered]


def with_axes(
    subset: ParameterSubset,
    layers: list[LayerBlocks],
    x: Any,
    n: int,
    inputs: dict[str, Tensor] | None = None,
    strict: bool = False,
) -> list[LayerBlocks]:
    """``layers`` with their example axes learnt on the batch ``x`` of ``n ≥ 2`` examples
    (``inputs``: the layers' recorded inputs on ``x``, else one forward records them); the
    layers with none are dropped and announced, or with ``strict`` refused.

    Raises:
        ValueError: with ``strict``, for a layer whose input follows no example axis.
    """
    if inputs is None:
        with torch.no_grad(), capture_layers(layers) as record:
            subset.call(x)
        inputs = record["inputs"]
    axes = learn_example_axes(subset.call, layers, x, n, inputs)
    unknown = [la.name for la in layers if axes[la.name] is None]
    if unknown:
        what = (
            f"the inputs of layers {unknown} do not move with their examples when the batch "
            "is reordered (no axis of the layer's input holds the examples)"
        )
        if strict:
            raise ValueError(
                f"{what}; this was seen after a first batch of one example, where every layer "
                "was given blocks: start the fit with a batch of two or more examples"
            )
        warnings.warn(
            f"{what}: their parameters take the exact per-example path instead of layer "
            "blocks (exact diagonal blocks)",
            stacklevel=6,
        )
    return [replace(la, axis=axes[la.name]) for la in layers if axes[la.name] is not None]


def _plan_from_sums(
    subset: ParameterSubset, joint_bias: bool, sums: dict[str, Tensor]
) -> tuple[list[LayerBlocks], list[str]]:
    """The layers whose blocks have statistics in ``sums`` (no batch to probe with)."""

    def has(name: str) -> bool:
        return any(k == name or k.startswith(name + ".") for k in sums)

    layers, _ = blocked_layers(subset, joint_bias, None)
    layers = [la for la in layers if all(has(name) for name, _, _ in la.blocks)]
    covered = {n for la in layers for n in la.params}
    return layers, [n for n in subset.names if n not in covered]


def layer_passes(
    subset: ParameterSubset,
    layers: list[LayerBlocks],
    x: Any,
    cols_fn: Callable[[Tensor], Tensor],
    n: int | None = None,
):
    """One forward and one batched backward of the columns ``cols_fn(f)`` ``[K, B, C]``.

    Returns ``(f, [(layer, a [B, S, in], g [K, B, S, out])])`` with a layer's inputs and
    output gradients over each example's weight-sharing positions (its rows along the
    layer's example axis, for ``n`` = B examples; default: f's rows).
    """
    if not layers:
        with torch.no_grad():
            return subset.call(x), []
    f, record = capture_once(subset, layers, x)
    cols = cols_fn(f.detach())
    grads = backward_columns(f, record, [layer.name for layer in layers], cols)
    n = f.shape[0] if n is None else n
    with torch.no_grad():
        per_layer = [
            (layer, *layer_positions(layer.module, record["inputs"][layer.name], g, layer.axis, n))
            for layer, g in zip(layers, grads, strict=True)
        ]
    return f.detach(), per_layer


def announce_rest(backend: str, rest_names: list[str]) -> None:
    """Say once which parameters get an exact diagonal block instead of a layer block."""
    if rest_names:
        warnings.warn(
            f"{backend}: parameters outside Linear/Conv layers (or in tied or reused layers) "
            f"get an exact diagonal block: {rest_names}",
            stacklevel=5,
        )


def _update_plan(
    plan: dict[str, Any],
    backend: str | None,
    subset: ParameterSubset,
    joint_bias: bool,
    x: Any,
    n: int,
) -> None:
    """Fill ``plan`` on the first batch: the layers with blocks and their example axes, the
    rest (announced for ``backend``); after a first batch of one example, whose rows are all
    its own whatever the axis, the axes are learnt on the next batch of two or more."""
    if not plan:
        plan["layers"], plan["rest"] = blocked_layers(subset, joint_bias, x, n)
        if backend is not None:
            announce_rest(backend, plan["rest"])
        plan["sub"] = subset.restricted(plan["rest"]) if plan["rest"] else None
        plan["axes_pending"] = n == 1 and bool(plan["layers"])
    elif plan["axes_pending"] and n > 1:
        plan["layers"] = with_axes(subset, plan["layers"], x, n, strict=True)
        plan["axes_pending"] = False


def fit_layer_blocks(
    backend: str,
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    joint_bias: bool,
    kind: str,
    columns: Callable[[Tensor, Tensor], Tensor],
    block_sums: Callable[[str, Tensor, Tensor], dict[str, Tensor]],
    make_block: Callable[[str, dict[str, Tensor], Tensor, LayerBlock], Structure],
    context: FitContext,
    announce: bool = True,
    rest_columns: Callable[[Tensor, Tensor], Tensor] | None = None,
    rest_n_columns: int | None = None,
    keep: Callable[[str, Tensor, Tensor], None] | None = None,
    plan: dict[str, Any] | None = None,
) -> CurvatureResult:
    """Fit one block per layer block and an exact diagonal block per other parameter tensor.

    Args:
        columns: ``(f, y) -> [K, B, C]`` vectors pulled back through the network.
        block_sums: ``(name, a [B, S, in'], g [K, B, S, out]) -> {key: tensor}`` statistics
            of a block for one batch, summed over batches.
        make_block: ``(name, sums, group_index, layout) -> block`` after the pass.
        announce: warn once which tensors get diagonal blocks (not for ``diag`` itself).
        rest_columns, rest_n_columns: output vectors for the other tensors' exact diagonal
            (default the columns of Sₙ, or the observed gradient for the empirical Fisher).
        keep: called as ``keep(name, a, g)`` with each block's inputs and output gradients
            of every batch (EKFAC keeps them for its eigenvalue refit).
        plan: filled with the fit's ``"layers"`` (with their example axes) and ``"rest"``.
    """
    plan = {} if plan is None else plan

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        n = y.shape[0]
        _update_plan(plan, backend if announce else None, subset, joint_bias, x, n)
        layers, rest = plan["layers"], plan["sub"]
        f, per_layer = layer_passes(subset, layers, x, lambda f: columns(f, y), n)
        out = {"loss": likelihood.nll_unit(f, y).sum()}
        out.update(_block_statistics(per_layer, block_sums, keep))
        if rest is not None:
            out["rest"], _ = per_example_diagonal(
                rest,
                likelihood,
                x,
                y,
                kind=kind,
                n_outputs=n_out,
                memory_budget=context.memory_budget,
                columns=rest_columns,
                n_columns=rest_n_columns,
            )
        return out

    sums, n_data, n_out = curvature_pass(
        subset, likelihood, loader, step, context, desc=f"{backend} curvature"
    )
    structure = _structure(subset, joint_bias, plan, sums, make_block)
    return CurvatureResult(structure, n_data, n_out, sums["loss"], kind)


def _block_statistics(
    per_layer: list,
    block_sums: Callable[[str, Tensor, Tensor], dict[str, Tensor]],
    keep: Callable[[str, Tensor, Tensor], None] | None,
) -> dict[str, Tensor]:
    """One batch's statistics of every layer block (each block's inputs and output gradients
    also handed to ``keep``)."""
    out = {}
    with torch.no_grad():
        for layer, a, g in per_layer:
            for name, _, layout in layer.blocks:
                ab, gb = layout.select(a, g)
                out.update(block_sums(name, ab, gb))
                if keep is not None:
                    keep(name, ab, gb)
    return out


def _structure(
    subset: ParameterSubset,
    joint_bias: bool,
    plan: dict[str, Any],
    sums: dict[str, Tensor],
    make_block: Callable[[str, dict[str, Tensor], Tensor, LayerBlock], Structure],
) -> Structure:
    """The block diagonal after the pass: ``make_block`` per layer block, an exact diagonal
    block per other parameter tensor."""
    if not plan:  # an empty shard of a data-parallel fit: the others' sums say which layers
        plan["layers"], plan["rest"] = _plan_from_sums(subset, joint_bias, sums)
    layers, rest_names = plan["layers"], plan["rest"]
    rest_diag = torch.zeros(subset.n_params, dtype=subset.dtype, device=subset.device)
    if rest_names:
        rest_diag[torch.cat([i for _, i in rest_positions(subset, rest_names)])] = sums["rest"]
    gi = subset.group_index

    def layer_block(name: str, index: Tensor, layout: LayerBlock) -> Structure:
        return make_block(name, sums, gi[index], layout)

    def diagonal(name: str, index: Tensor) -> Diagonal:
        return Diagonal(rest_diag[index], gi[index])

    structure = block_diagonal(subset, layers, rest_names, layer_block, diagonal)
    return structure


def square_sum(u: Tensor, v: Tensor, memory_budget: int, form: str = "auto") -> Tensor:
    """Σₙ Σₖ ((Σₛ uₙₛₖ vₙₛᵀ)[i, j])² for u ``[K, B, S, out]``, v ``[B, S, in']``.

    Two exact forms, chosen per layer by their cost (``form="auto"``):

    - per-example gradients: form Mₙₖ = Σₛ uₙₛₖ vₙₛᵀ and square, ≈ K·S·out·in' per example;
    - Gramian: Σₛₜ (Σₖ uₙₛₖ[i] uₙₜₖ[i]) vₙₛ[j] vₙₜ[j], summing over k before the contraction,
      ≈ S²·(out·in' + K·out) per example — cheaper when S < K (few positions, many columns).
    """
    k, b, n_pos, n_out = u.shape
    n_in = v.shape[-1]
    if n_pos == 1:  # no weight sharing: squares factorise
        return u[:, :, 0].square().sum(0).T @ v[:, 0].square()
    if form == "auto":
        per_example_cost = k * n_pos * n_out * n_in
        gramian_cost = n_pos * n_pos * (n_out * n_in + k * n_out)
        form = "gramian" if gramian_cost < per_example_cost else "per_example"
    if form not in ("per_example", "gramian"):
        raise ValueError(f"unknown form {form!r}; expected 'auto', 'per_example' or 'gramian'")
    if form == "per_example":
        row = k * n_out * n_in
    else:
        row = n_pos * n_pos * (n_out + n_in)
    chunk = max(1, memory_budget // max(row * u.element_size(), 1))
    total = u.new_zeros(n_out, n_in)
    for s in range(0, b, chunk):
        uc, vc = u[:, s : s + chunk], v[s : s + chunk]
        if form == "per_example":
            total += torch.einsum("kbso,bsi->kboi", uc, vc).square().sum((0, 1))
        else:
            gu = torch.einsum("kbso,kbto->bsto", uc, uc).reshape(-1, n_out)  # Σₖ over columns
            gv = torch.einsum("bsi,bti->bsti", vc, vc).reshape(-1, n_in)
            total += gu.T @ gv
    return total
