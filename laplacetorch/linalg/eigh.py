"""Symmetric eigendecomposition that survives what float32 LAPACK does not.

``torch.linalg.eigh`` can fail to converge on a finite float32 matrix with eigenvalues
spread over many orders of magnitude (a saturated net's GGN); the same matrix decomposes in
float64. The retry is announced, never silent.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["all_finite", "symmetric_eigh"]


def all_finite(a: Tensor) -> bool:
    """Whether every entry of ``a`` is finite: one sum (NaN and ±Inf carry into it), and the
    entrywise test only when the sum is not finite (a NaN, an Inf, or an overflowing sum)."""
    return bool(torch.isfinite(a.sum())) or bool(torch.isfinite(a).all())


def _eigvalsh(a: Tensor) -> tuple[Tensor, None]:
    return torch.linalg.eigvalsh(a), None


def symmetric_eigh(
    a: Tensor, what: str = "the curvature", vectors: bool = True, checked: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Eigenvalues (ascending) and eigenvectors of ½(A + Aᵀ), in A's dtype.

    Tried in A's dtype; when that fails to converge, in float64 (with a warning); when that
    fails too, in float64 with a jitter of 1e-12·‖A‖ on the diagonal (with a warning).
    ``vectors=False``: the eigenvalues only (``None`` for the vectors), about a quarter of the
    work. ``checked``: the caller has already checked that A is finite.

    Raises:
        ValueError: A is not finite, or no attempt converged.
    """
    if not checked and not all_finite(a):
        raise ValueError(f"{what} contains NaN or Inf; its eigendecomposition is undefined")
    eigh = torch.linalg.eigh if vectors else _eigvalsh
    sym = (a + a.mT).mul_(0.5)  # in place: one copy of A at a time, not two
    try:
        return eigh(sym)
    except torch.linalg.LinAlgError:
        if sym.dtype == torch.float64:
            return _with_jitter(sym, what, eigh)
    warnings.warn(
        f"the eigendecomposition of {what} failed to converge in {sym.dtype}; it was "
        "computed in float64 instead",
        RuntimeWarning,
        stacklevel=3,
    )
    try:
        evals, evecs = eigh(sym.double())
    except torch.linalg.LinAlgError:
        evals, evecs = _with_jitter(sym.double(), what, eigh)
    return evals.to(sym.dtype), None if evecs is None else evecs.to(sym.dtype)


def _with_jitter(sym: Tensor, what: str, eigh=torch.linalg.eigh) -> tuple[Tensor, Tensor | None]:
    jitter = 1e-12 * float(sym.abs().max().clamp_min(torch.finfo(sym.dtype).tiny))
    warnings.warn(
        f"the eigendecomposition of {what} failed to converge in float64; it was computed "
        f"with a jitter {jitter:.3g} added to the diagonal (eigenvalues shifted by it)",
        RuntimeWarning,
        stacklevel=4,
    )
    eye = torch.eye(sym.shape[-1], dtype=sym.dtype, device=sym.device)
    try:
        evals, evecs = eigh(sym + jitter * eye)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"the eigendecomposition of {what} failed to converge: {err}") from err
    return evals - jitter, evecs
