"""Diagonal posterior precision."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Structure

__all__ = ["Diagonal"]


class Diagonal(Structure):
    """Π(δ, s) = s·diag(g) + diag(δ) for a diagonal curvature g ≥ 0 of length P.

    Every prior shape (scalar, per layer, per parameter) is exact and costs O(P):
    log det Π = Σᵢ log(s gᵢ + δᵢ), Π⁻¹v = v / (s g + δ).

    Args:
        diagonal: ``[P]`` unit-scale curvature diagonal; negative round-off is clamped to 0.
        group_index: ``[P]`` group of each parameter (for a per-layer prior).
        variance: optional ``[P]`` estimator variance (for stochastic diagonals).
    """

    def __init__(
        self, diagonal: Tensor, group_index: Tensor | None = None, variance: Tensor | None = None
    ) -> None:
        if diagonal.dim() != 1:
            raise ValueError(f"diagonal must be a vector [P]; got {list(diagonal.shape)}")
        if not torch.isfinite(diagonal).all():
            raise ValueError("curvature diagonal contains NaN or Inf")
        super().__init__(diagonal.shape[0], group_index, diagonal.dtype, diagonal.device)
        self._set_tensors({"diagonal": diagonal.clamp_min(0)})
        self.variance = variance

    _tensor_keys = ("diagonal",)

    def _tensors(self) -> dict[str, Tensor]:
        return {"diagonal": self.g}

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.g = tensors["diagonal"]

    def diagonal(self) -> Tensor:
        return self.g

    def curvature_dense(self) -> Tensor:
        return torch.diag(self.g)

    def precision_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """The diagonal of Π(δ, s), ``[P]``."""
        delta, _ = self._prior(prior_precision)
        return self._scale(scale) * self.g + delta

    def logdet(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        return self.precision_diagonal(prior_precision, scale).log().sum()

    def solve(
        self, v: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_v(v)
        return v / self.precision_diagonal(prior_precision, scale)

    def trace_inverse(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        return self.precision_diagonal(prior_precision, scale).reciprocal().sum()

    def inverse_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        return self.precision_diagonal(prior_precision, scale).reciprocal()

    def sample(
        self,
        n_samples: int,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        z = self._normal((n_samples, self.n_params), generator)
        return z * self.precision_diagonal(prior_precision, scale).rsqrt()

    def functional_variance(
        self, jac: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_jacobian(jac)
        var = self.precision_diagonal(prior_precision, scale).reciprocal()
        return torch.einsum("bcp,p,bdp->bcd", jac, var, jac)

    def functional_variance_head(
        self,
        phi_aug: Tensor,
        index: Tensor,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
    ) -> Tensor:
        # Outputs are uncorrelated: Var f_c = Σⱼ φ̃ⱼ² / π[index[c, j]].
        var = self.precision_diagonal(prior_precision, scale).reciprocal()[index]  # [C, D̃]
        return torch.diag_embed(phi_aug.square() @ var.T)
