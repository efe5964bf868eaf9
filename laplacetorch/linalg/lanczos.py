"""Lanczos with full reorthogonalisation: top-k eigenpairs of a symmetric PSD operator."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import check_count
from .hutchinson import MatVec, _apply, _check_dtype, _draw

__all__ = ["lanczos"]


# a Gram–Schmidt pass that keeps more than this fraction of the norm needs no repeat
_DGKS = 2**-0.5


def _lanczos_batch(
    matvec: MatVec,
    q0: Tensor,
    n_steps: int,
    dtype: torch.dtype,
    stop: Callable[[Tensor, Tensor], bool] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run Lanczos from each unit row of ``q0`` ``[s, n]`` (float64) at once, one matvec a step.

    Every new vector is orthogonalised against all earlier ones, so Q stays orthonormal to
    round-off and T = QᵀAQ has no ghost eigenvalues: after the three-term recurrence
    w = Aqⱼ − αⱼqⱼ − βⱼ₋₁qⱼ₋₁, one classical Gram–Schmidt pass over the basis, and a second
    only when the first shrank some row's w below 1/√2 of its norm (the Daniel–Gragg–
    Kaufman–Stewart test: "twice is enough"). Each pass reads the whole basis, which on a
    large n costs as much as the products. A run whose residual βⱼ falls to n·eps·‖T‖ has
    found an invariant subspace: it stops there (its later vectors are zero) and ``length``
    records where.

    Returns:
        ``(alpha [s, j], beta [s, j], Q [s, j, n], length [s])`` with j ≤ ``n_steps`` steps
        done; ``beta[:, i]`` couples qᵢ and qᵢ₊₁ (0 after a breakdown), so ``beta[:, j-1]`` is
        the norm of the last residual.
    """
    s, n = q0.shape
    eps = torch.finfo(torch.float64).eps
    Q = q0.new_zeros(s, n_steps, n)
    Q[:, 0] = q0
    alpha, beta = q0.new_zeros(s, n_steps), q0.new_zeros(s, n_steps)
    length = torch.full((s,), n_steps, dtype=torch.long, device=q0.device)
    active = torch.ones(s, dtype=torch.bool, device=q0.device)
    norm_t = q0.new_zeros(s)
    steps = 0
    for j in range(n_steps):
        q = Q[:, j]
        # a copy: w is updated in place, and a matvec may return its input or its own buffer
        w = _apply(matvec, q.to(dtype)).to(torch.float64, copy=True)
        a = (q * w).sum(1)
        w.sub_(a[:, None] * q)
        if j > 0:
            w.sub_(beta[:, j - 1, None] * Q[:, j - 1])
        basis = Q[:, : j + 1]
        for _ in range(2):
            before = w.norm(dim=1)
            w.unsqueeze(2).baddbmm_(basis.mT, basis @ w.unsqueeze(2), alpha=-1)
            b = w.norm(dim=1)
            if not (b < _DGKS * before).any():
                break
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError("matvec returned NaN or Inf")
        steps = j + 1
        norm_t = torch.maximum(norm_t, torch.maximum(a.abs(), b))
        broke = active & (b <= n * eps * norm_t)
        length = torch.where(broke, steps, length)
        active = active & ~broke
        alpha[:, j] = a
        beta[:, j] = torch.where(active, b, 0)
        if j + 1 < n_steps:
            Q[:, j + 1] = torch.where(active, 1 / torch.where(active, b, 1), 0)[:, None] * w
        if not active.any() or (stop is not None and stop(alpha[:, :steps], beta[:, :steps])):
            break
    return alpha[:, :steps], beta[:, :steps], Q[:, :steps], length.clamp(max=steps)


def _tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    """T ``[..., j, j]`` with diagonal ``alpha`` and off-diagonal ``beta[..., :-1]``."""
    off = beta[..., :-1]
    return torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def _ritz(alpha: Tensor, beta: Tensor, k: int, tol: float):
    """Ritz values (descending), vectors in the Krylov basis, the top-k candidates, converged."""
    theta, S = torch.linalg.eigh(_tridiagonal(alpha, beta))
    theta, S = theta.flip(0), S.flip(1)
    bound = (beta[-1] * S[-1]).abs()  # ‖A y − θ y‖ = |β_m s_{m,i}|
    thr = tol * max(theta.abs().max().item(), torch.finfo(torch.float64).tiny)
    top = (theta > thr).nonzero().flatten()[:k]
    return theta, S, top, bound[top] <= thr


def basis_bounds(
    n: int, k: int, oversample: int, max_iter: int | None, tol: float, dtype: torch.dtype
) -> tuple[float, int, int]:
    """Checks the arguments of a top-k eigensolver; returns ``(tol, fewest, most)`` basis
    vectors: tol raised to 100·eps(dtype), at least min(n, k + oversample) vectors, at most
    ``max_iter`` (default that minimum), both capped at n.

    Raises:
        ValueError: naming the argument out of its domain.
    """
    check_count("n", n)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, n = {n}]; got {k!r}")
    check_count("oversample", oversample, minimum=0)
    _check_dtype(dtype)
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol!r}")
    m_min = min(n, k + oversample)
    m_max = m_min if max_iter is None else min(n, check_count("max_iter", max_iter, minimum=k))
    return max(tol, 100 * torch.finfo(dtype).eps), min(m_min, m_max), m_max


def lanczos(
    matvec: MatVec,
    n: int,
    k: int,
    *,
    oversample: int = 10,
    max_iter: int | None = None,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> tuple[Tensor, Tensor]:
    """The top-k (largest algebraic) eigenpairs of a symmetric PSD operator, by Lanczos.

    From a seeded Gaussian start q₁, builds an orthonormal Krylov basis Q ``[n, m]`` and the
    tridiagonal T = QᵀAQ (the recurrence and T's eigenproblem in float64, with full
    reorthogonalisation), and takes the Ritz pairs (θᵢ, Q sᵢ) of T sᵢ = θᵢ sᵢ. A pair is
    *converged* when its residual ‖A yᵢ − θᵢ yᵢ‖ = |β_m s_{m,i}| ≤ ε·|θ₁| (θ₁ the largest
    Ritz value, ε = max(tol, 100·eps(dtype)), so 1.2e-5 at least for float32 matvecs); then
    θᵢ ± ε·|θ₁| holds an eigenvalue of A. Ritz values θ ≤ ε·|θ₁| are treated as zero and
    never returned: at that accuracy they cannot be told from 0 (or from the round-off of a
    float32 matvec), and they add nothing to a low-rank approximation U diag(λ) Uᵀ.

    Runs at least m = min(n, k + oversample) steps, then keeps going up to ``max_iter``
    (default m) until the top k are converged, and stops early at an invariant subspace
    (e.g. A of rank < k: then the pairs found are exact up to round-off). Returns only
    converged pairs, so r < k can happen; a :class:`UserWarning` says so unless the cause was
    exhausting a low-rank operator. Memory: Q holds n·steps float64 numbers.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]`` for symmetric PSD A.
        n: the dimension of A. k: wanted eigenpairs, 1 ≤ k ≤ n.
        oversample: extra steps beyond k (≥ 0). max_iter: most steps (≥ k, capped at n).
        tol: relative residual bound for a pair to count as converged (> 0).
        generator: the start vector's only source of randomness.
        dtype, device: of the vectors handed to ``matvec`` and of the returned eigenvectors.

    Returns:
        ``(eigvals [r], eigvecs [n, r])``, r ≤ k, eigenvalues descending (float64 → ``dtype``),
        orthonormal eigenvectors as columns.
    """
    tol, m_min, m_max = basis_bounds(n, k, oversample, max_iter, tol, dtype)

    def stop(alpha: Tensor, beta: Tensor) -> bool:
        return alpha.shape[1] >= m_min and bool(_ritz(alpha[0], beta[0], k, tol)[3].all())

    q0 = _draw((1, n), "gaussian", generator, torch.float64, device)
    alpha, beta, Q, _ = _lanczos_batch(matvec, q0 / q0.norm(), m_max, dtype, stop)
    theta, S, top, conv = _ritz(alpha[0], beta[0], k, tol)
    if not conv.all():
        warnings.warn(
            f"lanczos: only {int(conv.sum())} of the top {top.numel()} Ritz pairs converged "
            f"to tol={tol:.1e} in {alpha.shape[1]} steps; raise max_iter for more",
            UserWarning,
            stacklevel=2,
        )
    sel = top[conv]
    vecs = Q[0].T @ S[:, sel]
    return theta[sel].to(dtype), vecs.to(dtype)
