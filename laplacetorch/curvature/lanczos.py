"""``lanczos``: the top-k eigenpairs of the GGN, a low-rank (plus diagonal) curvature."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from ..likelihoods import Likelihood
from ..linalg.block_lanczos import block_lanczos
from ..params import ParameterSubset
from ..structures import LowRank
from .base import CurvatureResult
from .context import DEFAULT_CONTEXT, FitContext
from .diag import fit_diag
from .ggn_operator import GGNOperator
from .hutchinson import probe_generator
from .layer_blocks import layer_parts

__all__ = ["fit_lanczos"]


def fit_lanczos(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    mc_samples: int = 1,
    rank: int = 20,
    oversample: int = 10,
    block_size: int = 8,
    max_iter: int | None = None,
    tol: float = 1e-6,
    diag_correction: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    vector_loop: bool | None = None,
) -> CurvatureResult:
    """G ≈ U diag(λ) Uᵀ (+ diag(d)) from block Lanczos with full reorthogonalisation.

    At least ``rank + oversample`` GGN-vector products, ``block_size`` of them per data pass
    (one forward, b jvps and b vjps a batch), continuing up to ``max_iter`` products
    (default min(P, max(3, b)·(rank + oversample))) until the top ``rank`` pairs converge;
    only converged Ritz pairs (relative residual ≤ ``tol``) are kept, so the rank may come
    out below ``rank`` (with a warning) on a spectrum without a gap. With
    ``diag_correction`` the exact GGN diagonal (one more pass) supplies
    d = diag G − diag(U diag(λ) Uᵀ) ≥ 0, so the diagonal of the curvature is exact too.
    ``fisher_type="hessian"``: the top eigenpairs of the Hessian of the loss
    (Hessian-vector products); negative ones among them are announced and kept at 0 (the
    low rank is a PSD approximation).
    """
    max_iter = _checked_max_iter(rank, oversample, block_size, max_iter, tol, subset.n_params)
    op = GGNOperator.for_fit(subset, likelihood, loader, context, mc_samples, seed, vector_loop)
    generator = probe_generator(generator, subset, seed)
    evals, evecs, _ = block_lanczos(
        op.matvec,
        subset.n_params,
        rank,
        block_size=block_size,
        oversample=oversample,
        max_iter=max_iter,
        tol=tol,
        generator=generator,
        dtype=subset.dtype,
        device=subset.device,
    )
    _check_spectrum(evals, rank, tol, subset.dtype, op.kind, diag_correction)
    d = None
    if diag_correction:  # d = diag G − diag(U diag(λ) Uᵀ)
        exact = fit_diag(subset, likelihood, loader, context)
        d = exact.structure.diagonal() - (evecs.square() * evals).sum(1)
    structure = LowRank(evecs, evals, d, subset.group_index, layer_parts(subset))
    return CurvatureResult(structure, op.n_data, op.n_outputs, op.loss_sum, op.kind)


def _checked_max_iter(
    rank: int, oversample: int, block_size: int, max_iter: int | None, tol: float, n_params: int
) -> int:
    """Refuse a rank outside [1, P] and a tol ≤ 0; the most products, by default
    min(P, max(3, b)·(rank + oversample))."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= n_params:
        raise ValueError(f"rank must be an integer in [1, P = {n_params}]; got {rank!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol!r}")
    if max_iter is None:  # a block basis needs more vectors, in fewer passes
        max_iter = min(n_params, max(3, block_size) * (rank + oversample))
    return max_iter


def _check_spectrum(
    evals: torch.Tensor,
    rank: int,
    tol: float,
    dtype: torch.dtype,
    kind: str,
    diag_correction: bool,
) -> None:
    """Refuse a diagonal correction of a Hessian; announce its negative eigenvalues among the
    top ones, and a rank below the one asked for (the caller's caller is warned)."""
    if kind == "hessian":
        if diag_correction:
            raise ValueError(
                "diag_correction is for PSD curvatures; not with fisher_type='hessian'"
            )
        if bool((evals < 0).any()):
            warnings.warn(
                f"the Hessian's top {evals.numel()} eigenvalues include negative ones (the "
                f"smallest {float(evals.min()):.3g}); the low-rank curvature keeps their "
                "positive part",
                stacklevel=4,
            )
    if 0 < evals.numel() < rank:
        warnings.warn(
            f"lanczos: rank {evals.numel()} instead of {rank}: the other eigenvalues of the "
            f"curvature are below tol·λ₁ = {max(tol, 100 * torch.finfo(dtype).eps):.1e}"
            f"·{float(evals[0]):.3g} or did not converge (see any warning above); raise "
            "max_iter, or fit in float64 for a smaller tol",
            UserWarning,
            stacklevel=4,
        )
