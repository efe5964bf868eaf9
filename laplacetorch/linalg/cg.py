"""Preconditioned conjugate gradients for a batch of right-hand sides."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_count
from .hutchinson import MatVec, _apply

__all__ = ["CGInfo", "CGNotConvergedError", "CGNotConvergedWarning", "cg"]

_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class CGNotConvergedWarning(UserWarning):
    """CG stopped at ``max_iter`` with a relative residual above ``tol``."""


class CGNotConvergedError(RuntimeError):
    """CG stopped at ``max_iter`` with a relative residual above ``tol`` (``on_fail="raise"``).

    Attributes:
        info: the :class:`CGInfo` of the failed solve.
    """

    def __init__(self, message: str, info: CGInfo) -> None:
        super().__init__(message)
        self.info = info


@dataclass
class CGInfo:
    """What a :func:`cg` solve did.

    Attributes:
        iterations: CG steps taken (matvecs, not counting residual refreshes).
        residual: ``[m]`` final relative residual ‖bᵢ − A xᵢ‖ / ‖bᵢ‖ per row, recomputed from
            the returned x (0 for a zero row).
        converged: every row reached ``residual ≤ tol``.
    """

    iterations: int
    residual: Tensor
    converged: bool


def _run(matvec, precond, X, R, denom, tol, budget):
    """Plain PCG from (X, R = B − AX) for at most ``budget`` steps; rows freeze once converged."""
    Z = _apply(precond, R, "precond") if precond is not None else R
    rz = (R * Z).sum(1)
    D = Z.clone()
    active = R.norm(dim=1) / denom > tol
    for it in range(budget):
        AD = _apply(matvec, D)
        dad = (D * AD).sum(1)
        if (active & ~(dad > 0)).any():
            raise ValueError(
                f"matvec is not positive definite: found pᵀAp = {dad[active].min().item():.3e} "
                "<= 0 (or NaN)"
            )
        if (active & ~(rz > 0)).any():
            raise ValueError("precond is not positive definite: found rᵀM⁻¹r <= 0 (or NaN)")
        alpha = torch.where(active, rz / torch.where(active, dad, 1), 0)
        X = X + alpha[:, None] * D
        R = R - alpha[:, None] * AD
        active = active & (R.norm(dim=1) / denom > tol)
        if not active.any():
            return X, it + 1
        Z = _apply(precond, R, "precond") if precond is not None else R
        rz_new = (R * Z).sum(1)
        beta = torch.where(active, rz_new / torch.where(active, rz, 1), 0)
        D = Z + beta[:, None] * D
        rz = rz_new
    return X, budget


def cg(
    matvec: MatVec,
    B: Tensor,
    *,
    precond: MatVec | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    x0: Tensor | None = None,
    on_fail: str = "warn",
) -> tuple[Tensor, CGInfo]:
    """Solve A X = B row by row with preconditioned conjugate gradients.

    Each row bᵢ of B gets its own Krylov iteration (own step sizes αᵢ, βᵢ), all rows sharing
    one batched ``matvec`` per step; converged rows are frozen. The stopping rule is the
    relative residual ‖bᵢ − A xᵢ‖ / ‖bᵢ‖ ≤ tol in the plain 2-norm. When the recursively
    updated residual says "converged" the true residual is recomputed (one matvec) and CG is
    restarted from the current x if it is not, so the reported residual is never optimistic.
    In exact arithmetic CG needs ≤ P steps; in practice about √κ(M⁻¹A)·log(1/tol).

    Args:
        matvec: V ``[m, P]`` ↦ V Aᵀ ``[m, P]`` for symmetric positive definite A.
        B: ``[m, P]`` right-hand sides (a vector ``[P]`` is treated as one row and the solution
            returned as a vector). Rows that are exactly zero get the solution zero.
        precond: like ``matvec`` but applying M⁻¹ ≈ A⁻¹ (SPD), e.g. Jacobi ``V / diag(A)``.
        tol: relative residual target; default 1e-10 in float64, 1e-5 in float32 and
            10·eps otherwise. Must be > 0.
        max_iter: most CG steps in all (≥ 1); default 10·P.
        x0: ``[m, P]`` starting guess (zeros by default).
        on_fail: when some row misses ``tol`` after ``max_iter``: ``"warn"`` issues a
            :class:`CGNotConvergedWarning`, ``"raise"`` raises :class:`CGNotConvergedError`,
            ``"ignore"`` returns silently; ``info`` tells in every case.

    Returns:
        ``(X, info)``: X ``[m, P]`` in B's dtype and a :class:`CGInfo`.

    Raises:
        ValueError: bad shapes or arguments, NaN/Inf, or an operator or preconditioner found
            not positive definite (pᵀAp ≤ 0) during the iteration.
    """
    if not isinstance(B, Tensor) or not B.is_floating_point() or B.dim() not in (1, 2):
        seen = f"{list(B.shape)} {B.dtype}" if isinstance(B, Tensor) else type(B).__name__
        raise ValueError(f"B must be a floating-point tensor [m, P] (or [P]); got {seen}")
    vector = B.dim() == 1
    if vector:
        B = B[None]
        x0 = x0[None] if isinstance(x0, Tensor) and x0.dim() == 1 else x0
    m, n = B.shape
    if n < 1:
        raise ValueError(f"B must have P >= 1 columns; got shape {list(B.shape)}")
    tol, max_iter = _checked_options(B, tol, max_iter, on_fail, x0)

    bnorm = B.norm(dim=1)
    nonzero = bnorm > 0
    denom = torch.where(nonzero, bnorm, 1)
    if x0 is None:
        X, R = torch.zeros_like(B), B.clone()
    else:
        X = x0.to(B.dtype) * nonzero[:, None]
        R = B - _apply(matvec, X)
    iterations = 0
    while True:
        rel = R.norm(dim=1) / denom
        if not torch.isfinite(rel).all():
            raise ValueError("non-finite residual: matvec or precond returned NaN or Inf")
        if (rel <= tol).all() or iterations >= max_iter:
            break
        X, used = _run(matvec, precond, X, R, denom, tol, max_iter - iterations)
        iterations += used
        R = B - _apply(matvec, X)  # the true residual, against drift of the recursive one
    info = CGInfo(iterations, rel, bool((rel <= tol).all()))
    if not info.converged and on_fail != "ignore":
        msg = (
            f"CG did not converge in {iterations} iterations: max relative residual "
            f"{rel.max().item():.3e} > tol {tol:.1e} ({int((rel > tol).sum())} of {m} rows)"
        )
        if on_fail == "raise":
            raise CGNotConvergedError(msg, info)
        warnings.warn(msg, CGNotConvergedWarning, stacklevel=2)
    return (X[0] if vector else X), info


def _checked_options(
    B: Tensor, tol: float | None, max_iter: int | None, on_fail: str, x0: Tensor | None
) -> tuple[float, int]:
    """Refuse a bad tol, max_iter, on_fail or x0 and a non-finite B; tol and max_iter with
    their defaults (B ``[m, P]``)."""
    if tol is None:
        tol = _DEFAULT_TOL.get(B.dtype, 10 * torch.finfo(B.dtype).eps)
    elif not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol!r}")
    max_iter = 10 * B.shape[1] if max_iter is None else check_count("max_iter", max_iter)
    if on_fail not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_fail must be 'warn', 'raise' or 'ignore'; got {on_fail!r}")
    if x0 is not None and (not isinstance(x0, Tensor) or x0.shape != B.shape):
        seen = list(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must have B's shape {list(B.shape)}; got {seen}")
    if not torch.isfinite(B).all():
        raise ValueError("B contains NaN or Inf")
    return tol, max_iter
