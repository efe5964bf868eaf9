"""laplace-torch's small linear-algebra helpers of ``laplace.utils``: a scalar added to a
diagonal, the inverse square root of a precision, a clamped symmetric eigendecomposition and
Gaussian samples from a mean and a (diagonal or full) covariance."""

from __future__ import annotations

import torch
from torch import Tensor

from ...links import gaussian_samples

__all__ = ["diagonal_add_scalar", "invsqrt_precision", "normal_samples", "symeig"]


def diagonal_add_scalar(x: Tensor, value: float) -> Tensor:
    """X + value·I for a square ``x`` (a new tensor)."""
    return x + value * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)


def invsqrt_precision(m: Tensor) -> Tensor:
    """A lower-triangular L with L Lᵀ = M⁻¹ for a positive-definite precision M: with the
    reversal J (J M J = C Cᵀ, C lower), M⁻¹ = (J C⁻ᵀ J)(J C⁻ᵀ J)ᵀ and J C⁻ᵀ J is lower."""
    flip = (-2, -1)
    c = torch.linalg.cholesky(torch.flip(m, flip))
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    c_inv = torch.linalg.solve_triangular(c, eye, upper=False)
    return torch.flip(c_inv.mT, flip)


def symeig(m: Tensor) -> tuple[Tensor, Tensor]:
    """``(eigenvalues, eigenvectors)`` of a symmetric PSD ``m`` (its upper triangle read), the
    eigenvalues clamped at 0 (round-off of a low-rank matrix)."""
    evals, evecs = torch.linalg.eigh(m, UPLO="U")
    return evals.clamp_min(0.0), evecs


def normal_samples(
    mean: Tensor, var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``[S, B, C]`` draws of N(mean ``[B, C]``, var ``[B, C]`` (diagonal) or ``[B, C, C]``)."""
    if var.dim() == mean.dim():
        eps = torch.randn(
            (n_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
        )
        return mean + var.sqrt() * eps
    return gaussian_samples(mean, var, n_samples, generator)
