"""``block_full``: a dense GGN block per layer, exact within layers, no cross-layer terms.

For a layer block (a Linear / Conv layer's [W | b], one per conv group, see
:func:`~laplacetorch.curvature.layer_blocks.layer_blocks`) the rows of the per-example
Jacobian pulled back through the K columns of Sₙ are

    Mₙₖ[(i, j)] = Σₛ gₙₖₛ[i] ãₙₛ[j],    G_b = Σₙ Σₖ vec(Mₙₖ) vec(Mₙₖ)ᵀ,

from the same forward and batched backward as KFAC (layer inputs ã, output gradients g).
So G_b is the exact diagonal block of the GGN (or of the empirical Fisher), held as a
:class:`~laplacetorch.structures.Dense` block with the layer's layout; every other Bayesian
parameter tensor gets an exact diagonal block. Memory Σ_b P_b² instead of P²; the algebra is
exact for every prior.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from ..datapass import Gram
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Dense, LayerBlock
from .base import CurvatureResult, resolve_fisher_type
from .context import DEFAULT_CONTEXT, FitContext
from .kfac import output_columns
from .layer_fit import fit_layer_blocks

__all__ = ["fit_block_full"]


def fit_block_full(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    joint_bias: bool = True,
) -> CurvatureResult:
    """Dense per-layer blocks of the unit-scale curvature in a BlockDiagonal.

    Args:
        fisher_type: ``"exact"`` (GGN) or ``"empirical"``.
        joint_bias: one block for [W | b] (default) or separate W and b blocks.
        memory_budget: bytes a chunk of per-example rows may take.
    """
    kind = resolve_fisher_type(context.fisher_type, "block_full")
    if subset.index is not None:
        raise ValueError("block_full needs whole layers; a subnetwork given by a mask is not")
    ggn_type = "exact" if kind == "ggn" else "empirical"

    def gram(name: str, a: Tensor, g: Tensor) -> dict[str, Gram]:
        return {name: Gram(lambda: _block_rows(a, g, context.memory_budget))}

    def dense(name: str, sums: dict[str, Tensor], group_index: Tensor, layout: LayerBlock):
        return Dense(sums[name], group_index, layout)

    return fit_layer_blocks(
        "block_full",
        subset,
        likelihood,
        loader,
        joint_bias=joint_bias,
        kind=kind,
        columns=lambda f, y: output_columns(likelihood, ggn_type, f, y, 1, None),
        block_sums=gram,
        make_block=dense,
        context=context,
    )


def _block_rows(a: Tensor, g: Tensor, memory_budget: int) -> Iterator[Tensor]:
    """The rows vec(Mₙₖ), Mₙₖ = Σₛ gₙₖₛ ãₙₛᵀ, for ``a`` ``[B, S, in']`` and ``g``
    ``[K, B, S, out]``, in chunks of examples under ``memory_budget``; their Gram is the
    block's term of the batch, Σₙₖ vec(Mₙₖ) vec(Mₙₖ)ᵀ."""
    k, b, _, n_out = g.shape
    numel = n_out * a.shape[-1]
    chunk = max(1, memory_budget // max(k * numel * a.element_size(), 1))
    for s in range(0, b, chunk):
        m = torch.einsum("kbso,bsi->kboi", g[:, s : s + chunk], a[s : s + chunk])
        yield m.reshape(-1, numel)
