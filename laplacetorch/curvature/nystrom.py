"""``nystrom``: Nyström features of the network's kernel (ELLA-like, Deng et al. 2022).

On a seeded subsample of M points, the kernel of the Jacobians K_M = J_M J_Mᵀ ``[M·C, M·C]``
(no Λ: the neural tangent kernel) gives its top-k eigenpairs V, λ, and with them k orthonormal
directions of weight space, U = J_Mᵀ V diag(λ^-½) ``[P, k]``: the Nyström features of x are
φ(x) = Uᵀ J(x)ᵀ = diag(λ^-½) Vᵀ K_M(·, x), so K ≈ ΦΦᵀ. The curvature of *all* N points is
then taken in that subspace,

    G_k = U A Uᵀ,   A = Σₙ (Jₙ U)ᵀ Λₙ (Jₙ U)   ``[k, k]``  (k Jacobian-vector products a batch),

and Π = s·G_k + δ is a :class:`~laplacetorch.structures.LowRank` structure: exact algebra for
that matrix, a predictive that keeps the full prior variance outside the subspace. With the
subsample all N points and k the kernel's rank, U spans the row space of J, G_k = G, and this
is the ``full`` Laplace exactly; the error falls as k grows (the evidence monotonically:
Cauchy interlacing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from ..checks import check_count
from ..datapass import require_reiterable
from ..likelihoods import Likelihood
from ..memory import Sizes, check_fit_memory
from ..model_call import jvp
from ..params import ParameterSubset
from ..structures import LowRank
from .base import CurvatureResult, curvature_pass, resolve_fisher_type
from .context import DEFAULT_CONTEXT, FitContext
from .gp import chunk_spans, kernel_matrices, row_chunks, subset_points, top_eigen
from .layer_blocks import layer_parts

__all__ = ["fit_nystrom"]


def fit_nystrom(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    n_eigenvalues: int = 20,
    subsample_size: int | None = None,
    seed: int = 0,
) -> CurvatureResult:
    """Nyström features of ``n_eigenvalues`` = k kernel eigenpairs on ``subsample_size`` = M
    seeded points (default all N), the curvature of all N points in their span (see the
    module docstring). Passes: the subsample (one or two), then one over all the data with k
    JVPs a batch. Memory: U ``[P, k]`` and one chunk of Jacobian rows.

    Args:
        fisher_type: ``"exact"`` (the GGN's Λ).
        n_eigenvalues: k, at most M·C (fewer when the kernel's rank is lower).
        subsample_size: M, the points of the kernel (``None``: all N).
        seed: the subsample's draw.
    """
    kind = resolve_fisher_type(context.fisher_type, "nystrom")
    if kind != "ggn":
        raise ValueError("nystrom takes the GGN (fisher_type='exact')")
    check_count("n_eigenvalues", n_eigenvalues)
    require_reiterable(loader, "hessian_structure='nystrom' (the subsample, then all points)")
    theta = subset.map_vector()
    xs, ys, n_data, n_out, loss_sum = subset_points(
        subset,
        likelihood,
        loader,
        subsample_size,
        seed,
        None,
        context,
        what="subsample_size",
    )
    sized = {"subsample_size": ys.shape[0], "n_eigenvalues": n_eigenvalues}
    check_fit_memory("nystrom", subset, sized, context.memory_limit, Sizes(n_data, n_out))
    u = _features(subset, likelihood, xs, ys, theta, n_out, n_eigenvalues, context.memory_budget)
    gram, n_seen = _projected_gram(subset, likelihood, loader, theta, u, context)
    if n_seen != n_data:
        raise ValueError(f"the loader gave {n_seen} examples, {n_data} before")
    a, q = torch.linalg.eigh(0.5 * (gram + gram.T).double())
    structure = LowRank(
        (u.double() @ q).to(u.dtype),
        a.clamp_min(0).to(u.dtype),
        None,
        subset.group_index,
        layer_parts(subset),
    )
    return CurvatureResult(structure, n_data, n_out, loss_sum, kind)


def _projected_gram(subset, likelihood, loader, theta, u, context):
    """Σₙ (Jₙ U)ᵀ Λₙ (Jₙ U) ``[k, k]`` over all the data (k JVPs a batch), and N seen."""

    def step(x: Any, y: Tensor, c: int) -> dict[str, Tensor]:
        f = lambda th: subset.forward(th, x)  # noqa: E731
        ju = vmap(lambda t: jvp(f, (theta,), (t,))[1])(u.T)  # [k, B, C]
        with torch.no_grad():
            out = subset.forward(theta, x)
        lam = likelihood.output_hessian(out, y)  # [B, C, C]
        return {"A": torch.einsum("kbc,bcd,jbd->kj", ju, lam, ju).detach()}

    sums, n_seen, _ = curvature_pass(
        subset, likelihood, loader, step, context, desc="nystrom: curvature"
    )
    return sums["A"], n_seen


def _features(subset, likelihood, xs, ys, theta, n_out, k, memory_budget) -> Tensor:
    """U = J_Mᵀ V diag(λ^-½) for the top-k eigenpairs of K_M = J_M J_Mᵀ (rows in chunks)."""
    m = ys.shape[0]

    def eye(f: Tensor, y: Tensor) -> Tensor:  # the C unit columns: the rows of J itself
        return torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)[:, None].expand(
            -1, f.shape[0], -1
        )

    spans = chunk_spans(m, n_out, subset, memory_budget)
    rows = row_chunks(subset, likelihood, xs, ys, theta, "ggn", n_out, memory_budget, eye)
    (kern,) = kernel_matrices(spans, rows, n_out, [slice(None)], theta.device)
    lam, v = top_eigen(kern, theta.dtype)
    lam, v = lam[:k], v[:, :k]
    u = torch.zeros(subset.n_params, lam.numel(), dtype=torch.float64, device=theta.device)
    for li, hi in spans:
        u += rows(li, hi).double().T @ v[li * n_out : hi * n_out]
    return (u / lam.sqrt()).to(theta.dtype)
