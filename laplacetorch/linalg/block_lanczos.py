"""Block Lanczos with full reorthogonalisation: top-k eigenpairs, b matvecs per operator call.

One call of the operator on a block of b vectors costs one pass over the data for a GGN
(one forward, b jvps and b vjps), so a Krylov basis of m vectors costs ⌈m/b⌉ passes instead
of m.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..checks import check_count
from .hutchinson import MatVec, _apply, _draw
from .lanczos import _DGKS, basis_bounds

__all__ = ["block_lanczos"]


def _orthogonalise(w: Tensor, basis: Tensor, recent: int = 0) -> Tensor:
    """Rows of ``w`` ``[b, n]`` minus their projection on the rows of ``basis`` ``[m, n]``.

    Classical Gram–Schmidt: the projection on the last ``recent`` rows first (the block
    three-term recurrence, where nearly all of A Qⱼ lies), then one pass over the whole
    basis, and a second only when the first shrank some row below 1/√2 of its norm
    (Daniel–Gragg–Kaufman–Stewart: "twice is enough"). Each full pass reads the whole basis.
    """
    if recent:
        local = basis[-recent:]
        w = w - (w @ local.T) @ local
    for _ in range(2):
        before = w.norm(dim=1)
        w = w - (w @ basis.T) @ basis
        if not bool((w.norm(dim=1) < _DGKS * before).any()):
            break
    return w


def _orthonormal_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(Q [b, n], R [b, b])`` with ``w`` = Rᵀ Q, the rows of Q orthonormal (QR of wᵀ)."""
    q, r = torch.linalg.qr(w.T)
    return q.T, r


def _next_block(
    w: Tensor, basis: Tensor, scale: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``(Q, R)``: rows ``w`` = Rᵀ Q + (a part in the span of ``basis``' rows), the rows of
    Q orthonormal and orthogonal to ``basis``. Directions of ``w`` at round-off level (an
    invariant subspace) are deflated: their rows of Q are fresh random directions."""
    n = w.shape[1]
    q, r = _orthonormal_rows(w)  # b ≤ n - (basis rows): room for b new directions
    tiny = r.diagonal().abs() <= n * torch.finfo(torch.float64).eps * max(scale, 1e-300)
    if bool(tiny.any()):
        q = q.clone()
        q[tiny] = _draw((int(tiny.sum()), n), "gaussian", generator, torch.float64, w.device)
        q, _ = _orthonormal_rows(_orthogonalise(_orthogonalise(q, basis), basis))
        r = q @ w.T  # the exact coupling in the new basis (≈ 0 on the fresh directions)
    return q, r


def block_lanczos(
    matvec: MatVec,
    n: int,
    k: int,
    *,
    block_size: int = 8,
    oversample: int = 10,
    max_iter: int | None = None,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> tuple[Tensor, Tensor, int]:
    """The top-k eigenpairs of a symmetric PSD operator A by block Lanczos.

    From a seeded Gaussian block Q₁ ``[n, b]`` (orthonormalised), each step applies A to the
    newest block, W = A Qⱼ, takes the diagonal block Aⱼ = Qⱼᵀ W, orthogonalises W against
    the whole basis (:func:`_orthogonalise`) and factors it, W = Qⱼ₊₁ Bⱼ (QR). After j steps the
    basis Q ``[n, jb]`` spans the block Krylov space of A and Q₁, and T = QᵀAQ is block
    tridiagonal with diagonal blocks Aᵢ and off-diagonal blocks Bᵢ. A Ritz pair (θ, Q s) of
    T s = θ s has residual ‖A Q s − θ Q s‖ = ‖Wᵀ s_last‖ = ‖Bⱼ s_last‖ (W orthogonalised,
    s_last: the rows of s in the last block); it is *converged* when that is ≤ ε·|θ₁| with
    ε = max(tol, 100·eps(dtype)), and Ritz values ≤ ε·|θ₁| are treated as zero and never
    returned (as in :func:`lanczos`). The recurrence and T's eigenproblem are in float64.

    Runs until the basis holds at least min(n, k + oversample) vectors, then on up to
    ``max_iter`` vectors (default that minimum) until the top k are converged. Directions
    that vanish in the QR (A has an invariant subspace inside the basis: e.g. rank A < n)
    are replaced by fresh random ones, so the run goes on to the full n if needed.
    Memory: Q holds n·(steps·b) float64 numbers (up to twice that while it grows).

    Args:
        matvec: V ``[b, n]`` ↦ V Aᵀ ``[b, n]`` for symmetric PSD A, called once per step.
        n: the dimension of A. k: wanted eigenpairs, 1 ≤ k ≤ n.
        block_size: b, vectors per call (≥ 1; capped at n).
        oversample: extra basis vectors beyond k (≥ 0). max_iter: most basis vectors (≥ k,
            capped at n).
        tol: relative residual bound for a pair to count as converged (> 0).
        generator: the start block's only source of randomness.
        dtype, device: of the vectors handed to ``matvec`` and of the returned eigenvectors.

    Returns:
        ``(eigvals [r], eigvecs [n, r], calls)``: r ≤ k eigenvalues descending, orthonormal
        eigenvectors as columns, and the number of ``matvec`` calls made.
    """
    tol, m_min, m_max = basis_bounds(n, k, oversample, max_iter, tol, dtype)
    b = min(check_count("block_size", block_size), n)
    max_steps = math.ceil(m_max / b)

    rows = min(n, max_steps * b)
    # Q's rows, filled as built; grown by doubling, so memory follows the rows used
    basis = torch.empty(min(rows, m_min + 2 * b), n, dtype=torch.float64, device=device)
    basis[:b] = _orthonormal_rows(_draw((b, n), "gaussian", generator, torch.float64, device))[0]
    diag: list[Tensor] = []
    off: list[Tensor] = []  # off[j] = B_j couples block j and block j + 1
    scale, calls, m, width = 0.0, 0, b, b
    while True:
        qj = basis[m - width : m]
        w = _apply(matvec, qj.to(dtype)).to(torch.float64)  # [b, n] = (A Qⱼ)ᵀ
        calls += 1
        if not bool(torch.isfinite(w).all()):
            raise ValueError("matvec returned NaN or Inf")
        a = w @ qj.T
        diag.append((a + a.T) / 2)
        w = _orthogonalise(w, basis[:m], recent=min(m, width + b))
        scale = max(scale, float(a.abs().max()), float(w.abs().max()))
        room = min(b, rows - m)  # the next block's width
        q_next, r = _following_block(w, basis[:m], room, scale, generator)
        off.append(r)
        if m >= m_min or q_next is None:  # Ritz pairs only once the basis may suffice
            theta, s, top, conv = _ritz_pairs(diag, off[:-1], w, width, tol, k)
            if bool(conv.all()) or q_next is None:
                break
        if m + room > basis.shape[0]:  # grown by doubling, up to its rows
            grown = basis.new_empty(min(rows, 2 * basis.shape[0]), n)
            grown[:m] = basis[:m]
            basis = grown
        basis[m : m + room] = q_next
        m, width = m + room, room
    if not conv.all():
        warnings.warn(
            f"block_lanczos: only {int(conv.sum())} of the top {top.numel()} Ritz pairs "
            f"converged to tol={tol:.1e} with {m} basis vectors; raise max_iter for more",
            UserWarning,
            stacklevel=2,
        )
    sel = top[conv]
    vecs = basis[:m].T @ s[:, sel]
    return theta[sel].to(dtype), vecs.to(dtype), calls


def _following_block(
    w: Tensor, basis: Tensor, room: int, scale: float, generator: torch.Generator | None
) -> tuple[Tensor | None, Tensor]:
    """The next block Qⱼ₊₁ ``[room, n]`` and its coupling Bⱼ from the orthogonalised W:
    its QR when the basis has room for a whole block, fresh directions of the basis'
    complement (which holds W) for a last, narrower one, and ``None`` once the basis is full."""
    if room == w.shape[0]:
        return _next_block(w, basis, scale, generator)
    if room > 0:  # the last block: part of the basis' complement, which holds w
        fresh = _draw((room, w.shape[1]), "gaussian", generator, torch.float64, w.device)
        q_next = _orthonormal_rows(_orthogonalise(fresh, basis))[0]
        return q_next, q_next @ w.T
    return None, w.new_zeros(0, w.shape[0])


def _ritz_pairs(
    diag: list[Tensor], off: list[Tensor], w: Tensor, width: int, tol: float, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """T's eigenpairs (θ, s), descending; the indices of the top k above ε·|θ₁|, and which
    of them converged (residual ‖Wᵀ s_last‖ ≤ ε·|θ₁|; ``width``: the last block's)."""
    theta, s = torch.linalg.eigh(_block_tridiagonal(diag, off))
    theta, s = theta.flip(0), s.flip(1)
    bound = (s[s.shape[0] - width :].T @ w).norm(dim=1)  # also right at the basis' cap
    thr = tol * max(theta.abs().max().item(), torch.finfo(torch.float64).tiny)
    top = (theta > thr).nonzero().flatten()[:k]
    return theta, s, top, bound[top] <= thr


def _block_tridiagonal(diag: list[Tensor], off: list[Tensor]) -> Tensor:
    """T with diagonal blocks ``diag[j]`` and blocks ``off[j]`` below (and ``off[j]ᵀ`` above)
    the diagonal."""
    sizes = [d.shape[0] for d in diag]
    m = sum(sizes)
    t = diag[0].new_zeros(m, m)
    start = 0
    for j, d in enumerate(diag):
        end = start + sizes[j]
        t[start:end, start:end] = d
        if j < len(off):
            nxt = end + sizes[j + 1]
            t[end:nxt, start:end] = off[j]
            t[start:end, end:nxt] = off[j].T
        start = end
    return t
