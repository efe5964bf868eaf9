"""``ekfac``: KFAC eigenbases with eigenvalues refit from per-example gradients.

A first pass fits KFAC (B ⊗ A per block, eigendecomposed). A second pass rotates the
per-example gradients of each block into the eigenbasis and sums their squares:

    E[i, j] = Σₙ Σₖ ((Q_Bᵀ Gₙₖ Q_A)[i, j])²,    Gₙₖ = Σₛ gₙₛₖ ãₙₛᵀ,

the diagonal of the exact block curvature in that basis (George et al., 2018). Without weight
sharing (S = 1) this is one matrix product, (Σₖ (Q_Bᵀgₙₖ)²)ᵀ over n times (Q_Aᵀãₙ)², and no
per-example gradient is formed; with S > 1 each layer takes the cheaper of two exact forms,
the rotated per-example gradients or the Gramian form over position pairs (see
``layer_fit.square_sum``), in chunks of examples under the memory budget.

The second pass recomputes what the first one saw: each block's inputs ãₙ and output
gradients gₙₖ. When they fit in ``cache_budget`` bytes (an MLP on a few thousand examples:
tens of MB) the KFAC pass keeps them and the refit is GEMMs over the kept batches with no
second data pass; the eigenvalues are the same numbers (for ``fisher_type="mc"`` they then
use the KFAC pass's samples instead of fresh ones).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..datapass import reduce_local, require_reiterable
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import BlockDiagonal, EKron, Kron
from .base import CurvatureResult, curvature_pass
from .context import DEFAULT_CONTEXT, FitContext
from .kfac import check_kfac_options, kfac_pass, output_columns
from .layer_fit import layer_passes, square_sum

__all__ = ["DEFAULT_CACHE_BUDGET", "fit_ekfac"]

#: bytes of per-example block statistics EKFAC keeps from its KFAC pass by default
DEFAULT_CACHE_BUDGET = 128 * 2**20


class _Cache:
    """Each block's ``(a, g)`` of every batch, until they would pass ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used, self.overflow = budget, 0, False
        self.items: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def keep(self, name: str, a: Tensor, g: Tensor) -> None:
        if self.overflow:
            return
        a, g = a.contiguous(), g.contiguous()  # not views that pin the whole batch's tensors
        self.used += a.numel() * a.element_size() + g.numel() * g.element_size()
        if self.used > self.budget:
            self.overflow = True
            self.items.clear()
            return
        self.items.setdefault(name, []).append((a, g))

    def overflow_flag(self, subset: ParameterSubset) -> Tensor:
        return torch.tensor(float(self.overflow), dtype=subset.dtype, device=subset.device)


def fit_ekfac(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    approximation: str = "expand",
    joint_bias: bool = True,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    seed: int = 0,
    cache_budget: int = DEFAULT_CACHE_BUDGET,
) -> CurvatureResult:
    """EKFAC curvature: the KFAC BlockDiagonal with each Kron block replaced by an
    :class:`~laplacetorch.structures.EKron` block (one data pass, or two).

    Options as for :func:`~laplacetorch.curvature.kfac.fit_kfac`; ``approximation`` only
    affects the eigenbases (the refit uses the exact per-example gradients).
    ``cache_budget``: bytes the blocks' inputs and output gradients over the whole data may
    take to be kept from the KFAC pass for the refit (0: always a second pass).
    """
    kind, generator = check_kfac_options(
        subset, "ekfac", context.fisher_type, approximation, mc_samples, generator, seed
    )
    _check_cache_budget(cache_budget)
    require_reiterable(loader, "ekfac (KFAC, then the eigenvalue refit)")
    cache, plan = _Cache(cache_budget), {}
    kfac = kfac_pass(
        subset,
        likelihood,
        loader,
        kind=kind,
        approximation=approximation,
        joint_bias=joint_bias,
        mc_samples=mc_samples,
        generator=generator,
        context=context,
        keep=cache.keep,
        plan=plan,
    )
    krons, layers = _refittable(kfac, plan)
    if not layers:
        return kfac  # no Kronecker block to refit: every block is an exact diagonal
    refit = functools.partial(_refit, krons, context.memory_budget)
    sums = _cached_sums(cache, krons, refit, subset)
    if sums is None:
        sums = _second_pass(
            subset, likelihood, loader, layers, refit, mc_samples, generator, context
        )
    return _with_eigenvalues(subset, kfac, krons, sums)


def _check_cache_budget(cache_budget: Any) -> None:
    """Refuse a cache budget that is not a non-negative integer of bytes."""
    if isinstance(cache_budget, bool) or not isinstance(cache_budget, int) or cache_budget < 0:
        raise ValueError(
            f"cache_budget must be a non-negative integer (bytes); got {cache_budget!r}"
        )


def _refittable(kfac: CurvatureResult, plan: dict) -> tuple[dict[str, Kron], list]:
    """KFAC's Kron blocks by name, and the layers (with the example axes the KFAC pass learnt)
    whose blocks are all Kron."""
    krons = {name: blk for name, _, blk in kfac.structure.blocks if isinstance(blk, Kron)}
    layers = [la for la in plan["layers"] if all(name in krons for name, _, _ in la.blocks)]
    return krons, layers


def _refit(krons: dict[str, Kron], memory_budget: int, name: str, a: Tensor, g: Tensor) -> Tensor:
    """Block ``name``'s eigenvalues in its Kron eigenbasis from inputs ``a`` and output
    gradients ``g``: Σₙ ((g Q_B) ⊗ (a Q_A))²."""
    kron = krons[name]
    return square_sum(g @ kron.qb, a @ kron.qa, memory_budget)


def _cached_sums(
    cache: _Cache, krons: dict[str, Kron], refit: Callable, subset: ParameterSubset
) -> dict[str, Tensor] | None:
    """The refit eigenvalues from the statistics the KFAC pass kept, summed over the ranks;
    ``None`` when the cache overflowed on any rank. The cache is emptied either way."""
    # every rank takes the same branch: a collective follows either way
    overflow = reduce_local({"ekfac.cache_overflow": cache.overflow_flag(subset)}, subset.device)
    if float(overflow["ekfac.cache_overflow"]) != 0:
        cache.items.clear()
        return None
    sums: dict[str, Tensor] = {}
    for name, kept in cache.items.items():
        if name in krons:
            for a, g in kept:
                e = refit(name, a, g)
                sums[name] = sums[name] + e if name in sums else e
    cache.items.clear()
    return reduce_local(sums, subset.device)


def _second_pass(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    layers: list,
    refit: Callable,
    mc_samples: int,
    generator: torch.Generator,
    context: FitContext,
) -> dict[str, Tensor]:
    """The refit eigenvalues of every block of ``layers`` from a second pass over the data
    (per-example inputs and output gradients, projected on the KFAC eigenbases)."""

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        cols = lambda f: output_columns(  # noqa: E731
            likelihood, context.fisher_type, f, y, mc_samples, generator
        )
        _, per_layer = layer_passes(subset, layers, x, cols, y.shape[0])
        out = {}
        with torch.no_grad():
            for layer, a, g in per_layer:
                for name, _, layout in layer.blocks:
                    out[name] = refit(name, *layout.select(a, g))
        return out

    sums, _, _ = curvature_pass(subset, likelihood, loader, step, context, desc="ekfac eigenvalues")
    return sums


def _with_eigenvalues(
    subset: ParameterSubset,
    kfac: CurvatureResult,
    krons: dict[str, Kron],
    sums: dict[str, Tensor],
) -> CurvatureResult:
    """The KFAC result with each Kron block replaced by its EKron with eigenvalues ``sums``."""
    blocks = [
        (name, index, EKron(sums[name], blk.qb, blk.qa, blk.group_index, blk.layout))
        if name in krons
        else (name, index, blk)
        for name, index, blk in kfac.structure.blocks
    ]
    structure = BlockDiagonal(blocks, subset.n_params, subset.group_index)
    return CurvatureResult(structure, kfac.n_data, kfac.n_outputs, kfac.loss_sum, kfac.kind)
