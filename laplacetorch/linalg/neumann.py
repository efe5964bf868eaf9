"""Truncated Neumann series for A⁻¹B, and power iteration for the step size."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_count
from .hutchinson import MatVec, _apply, _check_dtype, _draw

__all__ = ["largest_eigenvalue", "neumann"]


def largest_eigenvalue(
    matvec: MatVec,
    n: int,
    *,
    n_iter: int = 50,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """λ_max of a symmetric PSD operator by power iteration from a seeded Gaussian start.

    Returns the Rayleigh quotient θ = vᵀAv of the last unit iterate. For any v, θ ≤ λ_max: the
    estimate never over-estimates. θ is a mean of the eigenvalues weighted by cᵢ²λᵢ^{2t}
    (cᵢ the start's components), so after t steps eigenvalues below λ_max/2 carry relative
    weight < 4⁻ᵗ: θ > λ_max/2 in all but pathological starts, which is what
    :func:`neumann` needs (α = 1/θ gives αλ ≤ αλ_max < 2).

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]``. n: the dimension of A.
        n_iter: power steps (= matvecs), ≥ 1.
        dtype, device: of the vectors handed to ``matvec`` (iterates kept in float64).
        generator: the start vector's only source of randomness.

    Returns:
        θ, a scalar in ``dtype``.
    """
    check_count("n", n)
    check_count("n_iter", n_iter)
    _check_dtype(dtype)
    v = _draw((1, n), "gaussian", generator, torch.float64, device)
    v = v / v.norm()
    theta = v.new_zeros(())
    for _ in range(n_iter):
        w = _apply(matvec, v.to(dtype)).to(torch.float64)
        theta = (v * w).sum()
        norm = w.norm()
        if not torch.isfinite(norm):
            raise ValueError("matvec returned NaN or Inf")
        if norm == 0:  # v in the null space (or A = 0): θ = 0 is exact for this v
            break
        v = w / norm
    return theta.to(dtype)


def neumann(
    matvec: MatVec,
    B: Tensor,
    *,
    n_terms: int = 50,
    scale: float | None = None,
    lambda_max: float | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A⁻¹B by the truncated Neumann series α Σ_{k=0}^{K−1} (I − αA)^k B.

    For SPD A the full series converges to A⁻¹B iff every eigenvalue satisfies 0 < αλ < 2.
    The truncation error is exactly A⁻¹(I − αA)^K B, so per row
    ‖x − A⁻¹b‖ ≤ ‖(I − αA)^K‖ ‖A⁻¹b‖ = maxᵢ |1 − αλᵢ|^K ‖A⁻¹b‖. With α = 1/λ_max this is
    (1 − 1/κ)^K: K ≈ κ·log(1/ε) terms for accuracy ε, so use :func:`cg` for ill-conditioned A.
    The series is linear in B and uses only matvecs (K − 1 of them), so it is cheap to
    differentiate through and has fixed cost, unlike CG.

    Args:
        matvec: V ``[m, P]`` ↦ V Aᵀ ``[m, P]`` for symmetric positive definite A.
        B: ``[m, P]`` right-hand sides (a vector ``[P]`` is treated as one row).
        n_terms: K ≥ 1.
        scale: α > 0. Default 1/λ_max.
        lambda_max: λ_max > 0 when known; by default :func:`largest_eigenvalue` (50 power
            steps, seeded by ``generator``). Give at most one of ``scale`` and ``lambda_max``.
        generator: randomness of the power iteration only.

    Returns:
        ``[m, P]`` (or ``[P]``) approximation of A⁻¹B, in B's dtype.
    """
    if not isinstance(B, Tensor) or not B.is_floating_point() or B.dim() not in (1, 2):
        seen = f"{list(B.shape)} {B.dtype}" if isinstance(B, Tensor) else type(B).__name__
        raise ValueError(f"B must be a floating-point tensor [m, P] (or [P]); got {seen}")
    check_count("n_terms", n_terms)
    if scale is not None and lambda_max is not None:
        raise ValueError("give at most one of scale and lambda_max")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale!r}")
    if lambda_max is not None and not lambda_max > 0:
        raise ValueError(f"lambda_max must be > 0; got {lambda_max!r}")
    rows = B if B.dim() == 2 else B[None]
    if scale is None:
        if lambda_max is None:
            lambda_max = largest_eigenvalue(
                matvec, rows.shape[1], dtype=B.dtype, device=B.device, generator=generator
            )
            if not lambda_max > 0:
                raise ValueError(
                    f"power iteration found λ_max = {float(lambda_max):.3e} <= 0: "
                    "matvec is not positive definite"
                )
        scale = 1.0 / float(lambda_max)
    term = scale * rows
    out = term.clone()
    for _ in range(n_terms - 1):
        term = term - scale * _apply(matvec, term)
        out = out + term
    if not torch.isfinite(out).all():
        raise ValueError("Neumann series produced NaN or Inf (is 0 < αλ < 2 for all λ?)")
    return out if B.dim() == 2 else out[0]
