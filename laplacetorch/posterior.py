"""Views of the fitted posterior N(θ*, Σ), Σ = Π⁻¹, Π = s·G + diag(δ).

Each matrix is answered by the fitted structure (eigenbases, Kronecker factors, low-rank
bases, matrix-free operators): a product, a diagonal or a log-determinant costs what the
structure's algebra costs, and a dense ``[P, P]`` is formed only by :meth:`to_dense`.
:class:`PosteriorViews` puts laplace-torch's names for them on :class:`~laplacetorch.Laplace`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .prior import Prior
from .structures import Structure, expand_prior

__all__ = ["KINDS", "PosteriorMatrix", "PosteriorViews"]

#: curvature G (unit scale), precision Π, covariance Σ = Π⁻¹, scale L with L Lᵀ = Σ
KINDS = ("curvature", "precision", "covariance", "scale")


class PosteriorMatrix:
    """One ``[P, P]`` matrix of a fitted posterior at fixed δ and s, through its structure.

    ``M @ v`` takes ``v`` of shape ``[P]`` or ``[P, k]`` (the matrix product), ``diagonal()``
    gives ``[P]``, ``logdet()`` the log-determinant (precision, covariance), ``to_dense()``
    the explicit matrix (P² memory). ``structure`` is the structure itself (for KFAC, a
    ``BlockDiagonal`` of Kronecker blocks with their factors).

    Args:
        structure: the fitted structure. kind: one of :data:`KINDS`.
        prior_precision: δ, or the :class:`~laplacetorch.prior.Prior` with its factor.
            scale: the likelihood scale s.
    """

    def __init__(
        self,
        structure: Structure,
        kind: str,
        prior_precision: Tensor | float | Prior,
        scale: Tensor | float,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.structure, self.kind = structure, kind
        self.prior_precision, self.scale = prior_precision, scale

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return self.structure.n_params, self.structure.n_params

    def _rows(self, v: Tensor) -> Tensor:
        """The matrix applied to each row of ``v`` ``[..., P]``."""
        st, d, s = self.structure, self.prior_precision, self.scale
        if self.kind == "curvature":
            return st.curvature_matvec(v)
        if self.kind == "precision":
            return st.matvec(v, d, s)
        if self.kind == "covariance":
            return st.solve(v, d, s)
        return st.covariance_sqrt(v, d, s)

    def __matmul__(self, v: Tensor) -> Tensor:
        if not isinstance(v, Tensor) or v.dim() not in (1, 2) or v.shape[0] != self.shape[0]:
            got = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"v must have shape [{self.shape[0]}] or [{self.shape[0]}, k]; got {got}"
            )
        return self._rows(v) if v.dim() == 1 else self._rows(v.T).T

    def diagonal(self) -> Tensor:
        """The diagonal ``[P]`` (for ``"scale"`` through the dense matrix)."""
        st, d, s = self.structure, self.prior_precision, self.scale
        if self.kind == "curvature":
            return st.diagonal()
        if self.kind == "precision":  # of s·G + diag(δ)
            delta, _ = expand_prior(
                d, st.n_params, st.group_index, dtype=st.dtype, device=st.device
            )
            return st.scaled_diagonal(s) + delta
        if self.kind == "covariance":
            return st.inverse_diagonal(d, s)
        return self.to_dense().diagonal()

    def logdet(self) -> Tensor:
        """log det of the precision (or of the covariance: its negative)."""
        if self.kind not in ("precision", "covariance"):
            raise ValueError(
                f"logdet is defined for the precision and covariance, not {self.kind!r}"
            )
        ld = self.structure.logdet(self.prior_precision, self.scale)
        return ld if self.kind == "precision" else -ld

    def to_dense(self) -> Tensor:
        """The explicit ``[P, P]`` matrix."""
        st = self.structure
        eye = torch.eye(st.n_params, dtype=st.dtype, device=st.device)
        return self._rows(eye).T

    def __repr__(self) -> str:
        name = type(self.structure).__name__
        return f"PosteriorMatrix({self.kind}, P={self.shape[0]}, structure={name})"


class PosteriorViews:
    """laplace-torch's posterior attributes on :class:`~laplacetorch.Laplace`. The host gives
    ``structure``, ``prior`` (the :class:`~laplacetorch.prior.Prior`: δ's form and factor),
    ``scale()``, ``mean``, ``prior_mean`` and ``n_params``; nothing else is read."""

    @property
    def posterior_precision(self) -> PosteriorMatrix:
        """Π = s·G + diag(δ), through the structure."""
        return PosteriorMatrix(self.structure, "precision", self.prior, self.scale())

    @property
    def posterior_covariance(self) -> PosteriorMatrix:
        """Σ = Π⁻¹, through the structure."""
        return PosteriorMatrix(self.structure, "covariance", self.prior, self.scale())

    @property
    def posterior_scale(self) -> PosteriorMatrix:
        """L with L Lᵀ = Σ (the square root :meth:`sample` draws with)."""
        return PosteriorMatrix(self.structure, "scale", self.prior, self.scale())

    @property
    def posterior_variance(self) -> Tensor:
        """diag Σ, ``[P]``."""
        return self.structure.inverse_diagonal(self.prior, self.scale())

    @property
    def H(self) -> PosteriorMatrix:
        """G, the unit-scale curvature of the summed negative log-likelihood (no 1/σ², 1/T)."""
        return PosteriorMatrix(self.structure, "curvature", self.prior, 1.0)

    @property
    def prior_precision_diag(self) -> Tensor:
        """δ expanded to ``[P]``."""
        return self.prior.diagonal()

    @property
    def scatter(self) -> Tensor:
        """(θ* − μ₀)ᵀ P₀ (θ* − μ₀)."""
        return self.prior.quadratic(self.mean - self.prior_mean)

    @property
    def log_det_prior_precision(self) -> Tensor:
        """log det P₀."""
        return self.prior.logdet()

    @property
    def log_det_posterior_precision(self) -> Tensor:
        """log det Π (exact where :meth:`Structure.is_exact` says so)."""
        return self.structure.logdet(self.prior, self.scale())

    @property
    def log_det_ratio(self) -> Tensor:
        """log det Π − log det P₀."""
        return self.log_det_posterior_precision - self.log_det_prior_precision

    def square_norm(self, value: Tensor) -> Tensor:
        """(θ − θ*)ᵀ Π (θ − θ*) for ``value`` ``[..., P]``."""
        diff = self._weights(value) - self.mean
        return (diff * self.structure.matvec(diff, self.prior, self.scale())).sum(-1)

    def log_prob(self, value: Tensor, normalized: bool = True) -> Tensor:
        """log N(θ | θ*, Σ) for ``value`` ``[..., P]``; without the normalising constant
        (−½ of :meth:`square_norm`) when ``normalized=False``."""
        quad = -0.5 * self.square_norm(value)
        if not normalized:
            return quad
        const = 0.5 * (self.log_det_posterior_precision - self.n_params * math.log(2 * math.pi))
        return quad + const

    def functional_variance(self, Js: Tensor) -> Tensor:
        """J Σ Jᵀ ``[B, C, C]`` for Jacobians ``Js`` ``[B, C, P]``."""
        return self.structure.functional_variance(Js, self.prior, self.scale())

    def functional_covariance(self, Js: Tensor) -> Tensor:
        """The joint J Σ Jᵀ ``[B·C, B·C]`` for Jacobians ``Js`` ``[B·C, P]`` (or ``[B, C, P]``)."""
        if isinstance(Js, Tensor) and Js.dim() == 3:
            Js = Js.reshape(-1, Js.shape[-1])
        if not isinstance(Js, Tensor) or Js.dim() != 2 or Js.shape[-1] != self.n_params:
            got = list(Js.shape) if isinstance(Js, Tensor) else type(Js).__name__
            raise ValueError(f"Js must have shape [B·C, {self.n_params}]; got {got}")
        return self.functional_variance(Js.unsqueeze(0))[0]

    def _weights(self, value: Tensor) -> Tensor:
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[-1] != self.n_params:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"value must have shape [..., {self.n_params}]; got {got}")
        if not torch.isfinite(value).all():
            raise ValueError("value contains NaN or Inf")
        return value.to(self.mean.dtype)
