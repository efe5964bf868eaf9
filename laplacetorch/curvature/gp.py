"""``gp``: the linearised Laplace as a Gaussian process on a subset of M training points.

The GGN of M points is G = Wᵀ W with W = Λ^½ J ``[M·K, P]`` (the rows Sₘᵀ Jₘ of each point),
and the GP's kernel matrix on them is K = W Wᵀ = Λ^½ J Jᵀ Λ^½ ``[M·K, M·K]``. One eigh of K,
K = V diag(λ) Vᵀ, gives G's nonzero eigenpairs exactly: G = U diag(λ) Uᵀ with
U = Wᵀ V diag(λ^-½). So the function-space posterior is the weight-space posterior with that
low-rank curvature (a :class:`~laplacetorch.structures.LowRank`, exact: no truncation), and
by Sylvester's identity and Woodbury

    log det Π − P log δ = log det(I + (s/δ) K),
    J* Π⁻¹ J*ᵀ = (J* J*ᵀ − J* Wᵀ (δ/s I + K)⁻¹ W J*ᵀ) / δ,

the GP's evidence and predictive, at the cost of an (M·K)³ eigendecomposition instead of a P³
one. With M = N it is the ``full`` Laplace exactly. The data-fit term stays the one of all N
points at θ*.

Options (laplace-torch's ``FunctionalLaplace`` conventions, for ``compat``): ``diagonal_hessian``
replaces each softmax Hessian by its diagonal, ``subset_scaling`` multiplies the subset's
curvature by N/M.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from ..datapass import require_reiterable
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import LowRank
from .base import CurvatureResult, curvature_pass, resolve_fisher_type
from .per_example import DEFAULT_MEMORY_BUDGET, per_example_factors

__all__ = ["fit_gp", "subset_indices"]


def subset_indices(n_data: int, n_subset: int | None, seed: int) -> Tensor:
    """M of the N example indices, ascending, drawn without replacement from ``seed`` (all of
    them when ``n_subset`` is None or N).

    Raises:
        ValueError: for M < 1 or M > N.
    """
    if n_subset is None:
        return torch.arange(n_data)
    if isinstance(n_subset, bool) or not isinstance(n_subset, int) or not 1 <= n_subset <= n_data:
        raise ValueError(
            f"n_subset must be an integer in [1, N = {n_data}] (the GP's training points); "
            f"got {n_subset!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_data, generator=gen)[:n_subset].sort().values


def fit_gp(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    fisher_type: str = "exact",
    n_subset: int | None = None,
    seed: int = 0,
    diagonal_hessian: bool = False,
    subset_scaling: bool = False,
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> CurvatureResult:
    """The GP on ``n_subset`` seeded training points (default all N) as an exact low-rank
    curvature (see the module docstring). Two data passes when M < N (N first, then the
    subset's rows), one when M = N; memory M·K·P for the rows plus (M·K)² for the kernel.

    Args:
        fisher_type: ``"exact"`` (the GGN's Λ) or ``"empirical"``.
        n_subset: M, the GP's training points (``None``: all).
        seed: the subset's draw.
        diagonal_hessian: each softmax Hessian replaced by its diagonal (laplace-torch's).
        subset_scaling: the subset's curvature times N/M (laplace-torch's).
    """
    kind = resolve_fisher_type(fisher_type, "gp")
    columns = _diagonal_columns(likelihood) if diagonal_hessian else None
    if diagonal_hessian and kind != "ggn":
        raise ValueError("diagonal_hessian approximates the GGN's Λ; use fisher_type='exact'")
    state: dict[str, Any] = {}

    def count(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        with torch.no_grad():
            f = subset.forward(state["theta"], x)
        return {"loss": likelihood.nll_unit(f, y).sum()}

    state["theta"] = subset.map_vector()
    if n_subset is not None:
        require_reiterable(loader, "hessian_structure='gp' on a subset (N, then the subset)")
        sums, n_data, n_out = curvature_pass(
            subset,
            likelihood,
            loader,
            count,
            progress=progress,
            desc="gp: N",
            batch_size_fn=batch_size_fn,
        )
        chosen = subset_indices(n_data, n_subset, seed)
    else:
        chosen = None
    rows: list[Tensor] = []
    offset = {"n": 0}

    def collect(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        b = y.shape[0]
        lo = offset["n"]
        offset["n"] += b
        if chosen is None:
            local = None
        else:
            local = chosen[(chosen >= lo) & (chosen < lo + b)] - lo
        xs = x if local is None else tree_map(lambda t: t[local] if isinstance(t, Tensor) else t, x)
        ys = y if local is None else y[local]
        loss = torch.zeros((), dtype=subset.dtype, device=subset.device)
        if ys.shape[0]:
            for r, nll in per_example_factors(
                subset,
                likelihood,
                xs,
                ys,
                state["theta"],
                kind=kind,
                n_outputs=n_out,
                n_examples=ys.shape[0],
                memory_budget=memory_budget,
                columns=columns,
                n_columns=n_out,
            ):
                rows.append(r.reshape(-1, subset.n_params))
                if nll is not None:
                    loss = loss + nll.sum()
        return {"subset_loss": loss}

    got, n_seen, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        collect,
        progress=progress,
        desc="gp: kernel rows",
        batch_size_fn=batch_size_fn,
    )
    if chosen is None:
        n_data, loss_sum = n_seen, got["subset_loss"]
    else:
        if n_seen != n_data:
            raise ValueError(
                f"the loader gave {n_seen} examples on its second pass, {n_data} on its first"
            )
        loss_sum = sums["loss"]
    w = torch.cat(rows)  # [M·K, P]
    m = n_data if chosen is None else chosen.numel()
    if subset_scaling:
        w = w * math.sqrt(n_data / m)
    structure = _low_rank(w, subset.group_index)
    return CurvatureResult(structure, n_data, n_out, loss_sum, kind)


def _low_rank(w: Tensor, group_index: Tensor) -> LowRank:
    """G = Wᵀ W as U diag(λ) Uᵀ from the kernel K = W Wᵀ (eigh in float64)."""
    k = w.double() @ w.double().T
    lam, v = torch.linalg.eigh(0.5 * (k + k.T))
    keep = lam > lam.max().clamp_min(0) * w.shape[0] * torch.finfo(w.dtype).eps
    lam, v = lam[keep], v[:, keep]
    u = (w.double().T @ v) / lam.sqrt()
    return LowRank(u.to(w.dtype), lam.to(w.dtype), None, group_index)


def _diagonal_columns(likelihood: Likelihood) -> Callable[[Tensor, Tensor], Tensor]:
    """The columns of diag(Λ)^½ ``[C, B, C]`` (laplace-torch's diagonal softmax Hessian)."""

    def columns(f: Tensor, y: Tensor) -> Tensor:
        diag = likelihood.output_hessian(f, y).diagonal(dim1=-2, dim2=-1).clamp_min(0)
        return torch.diag_embed(diag.sqrt()).permute(2, 0, 1)

    return columns
