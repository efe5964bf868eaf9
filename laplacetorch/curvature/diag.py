"""``diag``: the exact GGN diagonal Σₙ Σₖ (Jₙᵀ sₙₖ)² (or the empirical Fisher's Σₙ gₙ²)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal, LayerBlock, Structure
from .base import CurvatureResult, curvature_pass, resolve_fisher_type
from .context import DEFAULT_CONTEXT, FitContext
from .hessian import hessian_rows
from .kfac import mc_columns, output_columns
from .last_layer import last_layer_curvature
from .layer_blocks import block_diagonal, layer_blocks, layer_parts
from .layer_fit import fit_layer_blocks, square_sum
from .per_example import per_example_diagonal

__all__ = ["fit_diag", "per_layer_diagonal"]


def fit_diag(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    mc_samples: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> CurvatureResult:
    """Exact diagonal of the unit-scale curvature, one :class:`Diagonal` block per layer.

    - Linear / Conv layers (the layer blocks of :func:`~.layer_fit.blocked_layers`): one forward
      recording layer inputs ã, one batched backward of the K columns of Sₙ giving output
      gradients g, then diag = Σₙ Σₖ (Σₛ gₙₖₛ ãₙₛᵀ)² (:func:`~.layer_fit.square_sum`; without
      weight sharing (Σₖ gₙₖ²)ᵀ (ãₙ²)): about (1 + 2C)/3 gradient epochs.
    - Every other Bayesian parameter (norms, embeddings, tied or reused layers) and masked
      subnetworks: the K vector-Jacobian products Jₙᵀ sₙₖ per example, vmap'd and squared in
      chunks of at most ``memory_budget`` bytes.
    - The last layer: the closed form Σₙ Λₙ[c, c] φ̃ₙᵢ² from the features.

    Args:
        fisher_type: ``"exact"`` (GGN), ``"mc"`` (the Monte-Carlo Fisher, ``mc_samples``
            sampled targets per example; ``generator`` or ``seed``), ``"empirical"`` or
            ``"hessian"`` (the exact diagonal
            of the Hessian of the loss: P Hessian-vector products per batch, as costly as
            ``full``; negative entries are kept).
        memory_budget: bytes a chunk of per-example rows may take.
    """
    kind = resolve_fisher_type(context.fisher_type, "diag")
    mc = mc_columns(likelihood, context.fisher_type, mc_samples, generator, seed)
    if kind == "hessian" and subset.closed_form_head:
        kind = "ggn"  # a linear head: its Hessian is its GGN
    if kind == "hessian":
        return _hessian_fit(subset, likelihood, loader, context)
    if subset.closed_form_head and mc is None:
        g, n_data, n_out, loss = last_layer_curvature(
            subset,
            likelihood,
            loader,
            kind=kind,
            diagonal=True,
            context=context,
        )
        return CurvatureResult(per_layer_diagonal(subset, g), n_data, n_out, loss, kind)

    # a mask splits layers (and a sampled head has no closed form): per example
    per_example = subset.index is not None or (mc is not None and subset.closed_form_head)
    fit = _per_example_fit if per_example else _layer_fit
    return fit(subset, likelihood, loader, kind, context, mc, mc_samples)


def _layer_fit(subset, likelihood, loader, kind, context, mc, n_mc):
    """Layer blocks from one forward and one batched backward of the output columns (MC
    targets ``mc`` where sampled), the rest per example."""

    def squares(name: str, a: Tensor, g: Tensor) -> dict[str, Tensor]:
        return {name: square_sum(g, a, context.memory_budget)}

    def diagonal(name: str, sums: dict[str, Tensor], gi: Tensor, layout: LayerBlock):
        return Diagonal(sums[name].reshape(-1), gi, layout=layout)

    ggn_type = "exact" if kind == "ggn" else "empirical"
    if mc is not None:
        layer_columns = mc
    else:
        layer_columns = lambda f, y: output_columns(likelihood, ggn_type, f, y, 1, None)  # noqa: E731
    return fit_layer_blocks(
        "diag",
        subset,
        likelihood,
        loader,
        joint_bias=True,
        kind=kind,
        columns=layer_columns,
        block_sums=squares,
        make_block=diagonal,
        context=context,
        announce=False,
        rest_columns=mc,
        rest_n_columns=n_mc,
    )


def _hessian_fit(subset, likelihood, loader, context):
    """The exact diagonal of the loss Hessian (P Hessian-vector products a batch)."""
    theta = subset.map_vector()

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        budget = context.memory_budget
        h, loss = hessian_rows(subset, likelihood, x, y, theta, budget, diagonal_only=True)
        return {"G": h, "loss": loss}

    return _diagonal_pass(subset, likelihood, loader, step, "hessian", context)


def _per_example_fit(subset, likelihood, loader, kind, context, mc=None, n_mc=None):
    """The diagonal from per-example vector-Jacobian products (masks, sampled heads)."""

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        g, loss = per_example_diagonal(
            subset,
            likelihood,
            x,
            y,
            kind=kind,
            n_outputs=n_out,
            memory_budget=context.memory_budget,
            columns=mc,
            n_columns=n_mc,
        )
        return {"G": g, "loss": loss}

    return _diagonal_pass(subset, likelihood, loader, step, kind, context)


def _diagonal_pass(subset, likelihood, loader, step, kind, context):
    """Sum ``step``'s diagonal ``"G"`` (and loss) over the data, as one :class:`Diagonal`
    with the layers' parts (indefinite for ``kind="hessian"``)."""
    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        context,
        desc="diag Hessian" if kind == "hessian" else "diag curvature",
    )
    psd = kind != "hessian"
    structure = Diagonal(sums["G"], subset.group_index, psd=psd, layer_parts=layer_parts(subset))
    return CurvatureResult(structure, n_data, n_out, sums["loss"], kind)


def per_layer_diagonal(subset: ParameterSubset, g: Tensor) -> Structure:
    """The exact diagonal ``g`` ``[P]`` as one :class:`Diagonal` block per layer (with its
    layout, so the predictive needs no Jacobian there) and per other parameter tensor; one
    block for a subnetwork given by a mask."""
    if subset.index is not None:
        return Diagonal(g, subset.group_index)
    layers, rest = layer_blocks(subset)
    gi = subset.group_index

    def layer_block(name: str, index: Tensor, layout: LayerBlock) -> Diagonal:
        return Diagonal(g[index], gi[index], layout=layout)

    return block_diagonal(subset, layers, rest, layer_block, lambda n, i: Diagonal(g[i], gi[i]))
