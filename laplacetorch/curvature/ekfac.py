"""``ekfac``: KFAC eigenbases with eigenvalues refit from per-example gradients.

A first pass fits KFAC (B ⊗ A per block, eigendecomposed). A second pass rotates the
per-example gradients of each block into the eigenbasis and sums their squares:

    E[i, j] = Σₙ Σₖ ((Q_Bᵀ Gₙₖ Q_A)[i, j])²,    Gₙₖ = Σₛ gₙₛₖ ãₙₛᵀ,

the diagonal of the exact block curvature in that basis (George et al., 2018). Without weight
sharing (S = 1) this is one matrix product, (Σₖ (Q_Bᵀgₙₖ)²)ᵀ over n times (Q_Aᵀãₙ)², and no
per-example gradient is formed; with S > 1 each layer takes the cheaper of two exact forms,
the rotated per-example gradients or the Gramian form over position pairs (see
``layer_fit.square_sum``), in chunks of examples under the memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..datapass import require_reiterable
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import BlockDiagonal, EKron, Kron
from .base import CurvatureResult, curvature_pass
from .kfac import check_kfac_options, fit_kfac, output_columns
from .layer_fit import blocked_layers, layer_passes, square_sum
from .per_example import DEFAULT_MEMORY_BUDGET

__all__ = ["fit_ekfac"]


def fit_ekfac(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    fisher_type: str = "exact",
    approximation: str = "expand",
    joint_bias: bool = True,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> CurvatureResult:
    """EKFAC curvature: the KFAC BlockDiagonal with each Kron block replaced by an
    :class:`~laplacetorch.structures.EKron` block (two passes over the data).

    Options as for :func:`~laplacetorch.curvature.kfac.fit_kfac`; ``approximation`` only
    affects the eigenbases (the refit uses the exact per-example gradients).
    """
    _, generator = check_kfac_options(
        subset, fisher_type, approximation, mc_samples, generator, seed
    )
    require_reiterable(loader, "ekfac (KFAC, then the eigenvalue refit)")
    kfac = fit_kfac(
        subset,
        likelihood,
        loader,
        fisher_type=fisher_type,
        approximation=approximation,
        joint_bias=joint_bias,
        mc_samples=mc_samples,
        generator=generator,
        progress=progress,
        memory_budget=memory_budget,
        batch_size_fn=batch_size_fn,
    )
    krons = {name: blk for name, _, blk in kfac.structure.blocks if isinstance(blk, Kron)}
    layers = [
        la
        for la in blocked_layers(subset, joint_bias)[0]
        if all(name in krons for name, _, _ in la.blocks)
    ]
    if not layers:
        return kfac  # no Kronecker block to refit: every block is an exact diagonal

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        cols = lambda f: output_columns(likelihood, fisher_type, f, y, mc_samples, generator)  # noqa: E731
        _, per_layer = layer_passes(subset, layers, x, cols)
        out = {}
        with torch.no_grad():
            for layer, a, g in per_layer:
                for name, _, layout in layer.blocks:
                    ab, gb = layout.select(a, g)
                    kron = krons[name]
                    out[name] = square_sum(gb @ kron.qb, ab @ kron.qa, memory_budget)
        return out

    sums, _, _ = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        progress=progress,
        desc="ekfac eigenvalues",
        batch_size_fn=batch_size_fn,
    )
    blocks = [
        (name, index, EKron(sums[name], blk.qb, blk.qa, blk.group_index, blk.layout))
        if name in krons
        else (name, index, blk)
        for name, index, blk in kfac.structure.blocks
    ]
    structure = BlockDiagonal(blocks, subset.n_params, subset.group_index)
    return CurvatureResult(structure, kfac.n_data, kfac.n_outputs, kfac.loss_sum, kfac.kind)
