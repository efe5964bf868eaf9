"""``full``: the dense GGN Σₙ Jₙᵀ Λₙ Jₙ (or the empirical Fisher Σₙ gₙ gₙᵀ)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..datapass import Gram
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import BlockDiagonal, Dense, LayerBlock
from .base import CurvatureResult, curvature_pass, resolve_fisher_type, zeros_like_theta
from .context import DEFAULT_CONTEXT, FitContext
from .hessian import hessian_rows
from .kfac import mc_columns
from .last_layer import last_layer_curvature
from .layer_blocks import layer_blocks
from .per_example import per_example_factors

__all__ = ["fit_full"]


def fit_full(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    mc_samples: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> CurvatureResult:
    """Dense unit-scale curvature of the summed NLL in a :class:`Dense` structure.

    Per batch, the rows Mₙ = Sₙᵀ Jₙ come from vmap'd vector-Jacobian products in chunks of at
    most ``memory_budget`` bytes and G += Mᵀ M; for the last layer the closed form from the
    features is used instead. Memory: the ``[P, P]`` result plus one chunk.

    Args:
        fisher_type: ``"exact"`` (GGN), ``"mc"`` (the Monte-Carlo Fisher: ``mc_samples``
            targets drawn per example from the model, with ``generator`` or ``seed``),
            ``"empirical"`` or ``"hessian"`` (the Hessian of the loss from P
            Hessian-vector products per batch; indefinite in general).
        memory_budget: bytes a chunk of Jacobian rows may take.
    """
    kind = resolve_fisher_type(context.fisher_type, "full")
    columns = mc_columns(likelihood, context.fisher_type, mc_samples, generator, seed)
    if subset.closed_form_head and columns is None:  # a linear head: its Hessian is its GGN
        return _fit_head(subset, likelihood, loader, kind, context)

    theta = subset.map_vector()
    p = subset.n_params

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor | Gram]:
        loss = zeros_like_theta(subset)

        def rows() -> Iterator[Tensor]:
            for r, nll in per_example_factors(
                subset,
                likelihood,
                x,
                y,
                theta,
                kind=kind,
                n_outputs=n_out,
                n_examples=y.shape[0],
                memory_budget=context.memory_budget,
                columns=columns,
                n_columns=mc_samples,
            ):
                if nll is not None:
                    loss.add_(nll.sum())
                yield r.reshape(-1, p)

        # G first: summing its rows into the running G (in place, symmetric blocks) is what
        # fills this batch's loss, which is read after it
        return {"G": Gram(rows), "loss": loss}

    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        _hessian_step(subset, likelihood, theta, context.memory_budget)
        if kind == "hessian"
        else step,
        context,
        desc="full curvature",
    )
    dense = Dense(sums["G"], subset.group_index, psd=kind != "hessian")
    return CurvatureResult(dense, n_data, n_out, sums["loss"], kind)


def _hessian_step(
    subset: ParameterSubset, likelihood: Likelihood, theta: Tensor, memory_budget: int
) -> Callable[[Any, Tensor, int], dict[str, Tensor]]:
    """The pass's step for ``fisher_type="hessian"``: each batch's loss Hessian and loss."""

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        h, loss = hessian_rows(subset, likelihood, x, y, theta, memory_budget)
        return {"G": h, "loss": loss}

    return step


def _fit_head(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    kind: str,
    context: FitContext,
) -> CurvatureResult:
    """The dense curvature of a linear head in closed form from its features (its Hessian is
    its GGN), as one block laid out like [W | b] where the head is one."""
    kind = "ggn" if kind == "hessian" else kind
    head = _head_block(subset)
    g, n_data, n_out, loss = last_layer_curvature(
        subset,
        likelihood,
        loader,
        kind=kind,
        diagonal=False,
        context=context,
        order=None if head is None else head[1],
    )
    if head is None:
        return CurvatureResult(Dense(g, subset.group_index), n_data, n_out, loss, kind)
    name, index, layout = head
    block = Dense(g, subset.group_index[index], layout)
    structure = BlockDiagonal([(name, index, block)], subset.n_params, subset.group_index)
    return CurvatureResult(structure, n_data, n_out, loss, kind)


def _head_block(subset: ParameterSubset) -> tuple[str, Tensor, LayerBlock] | None:
    """``(name, θ positions, layout)`` of the head as one block laid out like its [W | b], so
    that the predictive uses the features instead of a Jacobian; ``None`` when the head is
    not one such block."""
    layers, rest = layer_blocks(subset)
    if rest or len(layers) != 1 or len(layers[0].blocks) != 1:
        return None
    return layers[0].blocks[0]
