"""Diagonal posterior precision."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Structure, require_positive
from .checks import log_sum
from .layer_parts import PartFactors
from .layer_variance import layer_variance, weighted_gram
from .layout import LayerBlock

__all__ = ["Diagonal"]


class Diagonal(Structure):
    """Π(δ, s) = s·diag(g) + diag(δ) for a diagonal curvature g ≥ 0 of length P.

    Every prior shape (scalar, per layer, per parameter) is exact and costs O(P):
    log det Π = Σᵢ log(s gᵢ + δᵢ), Π⁻¹v = v / (s g + δ). With a layer layout, J Π⁻¹ Jᵀ comes
    from the layer's inputs and output gradients (:func:`layer_variance`), without J.

    Args:
        diagonal: ``[P]`` unit-scale curvature diagonal; negative round-off is clamped to 0
            unless ``psd=False`` (the Hessian's diagonal: kept, and a prior leaving some
            s·gᵢ + δᵢ ≤ 0 refused).
        group_index: ``[P]`` group of each parameter (for a per-layer prior).
        variance: optional ``[P]`` estimator variance (for stochastic diagonals).
        layout: the layer block the coordinates belong to, if any.
        layer_parts: for a diagonal over several layers, ``(layout, index)`` of each layer
            block's coordinates (see :mod:`~laplacetorch.structures.layer_parts`).
    """

    _tensor_keys = ("diagonal", "psd")
    _nonnegative = ("diagonal",)

    def __init__(
        self,
        diagonal: Tensor,
        group_index: Tensor | None = None,
        variance: Tensor | None = None,
        layout: LayerBlock | None = None,
        psd: bool = True,
        layer_parts: list[tuple[LayerBlock, Tensor]] | None = None,
    ) -> None:
        if diagonal.dim() != 1:
            raise ValueError(f"diagonal must be a vector [P]; got {list(diagonal.shape)}")
        if not torch.isfinite(diagonal).all():
            raise ValueError("curvature diagonal contains NaN or Inf")
        super().__init__(diagonal.shape[0], group_index, diagonal.dtype, diagonal.device, layout)
        g = diagonal.clamp_min(0) if psd else diagonal
        self._set_tensors({"diagonal": g, "psd": torch.tensor(psd)})
        self.variance = variance
        self._set_layer_parts(layer_parts)

    def _tensors(self) -> dict[str, Tensor]:
        return {"diagonal": self.g, "psd": torch.tensor(self.psd)}

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        if tensors["diagonal"].shape != (self.n_params,):
            raise ValueError(
                f"state entry 'diagonal' has shape {list(tensors['diagonal'].shape)}; "
                f"expected [{self.n_params}]"
            )

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.g = tensors["diagonal"]
        self.psd = bool(tensors["psd"])
        self.variance = None

    def diagonal(self) -> Tensor:
        return self.g

    def curvature_dense(self) -> Tensor:
        return torch.diag(self.g)

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        if self.variance is not None or other.variance is not None:
            return super()._merged(other, n_self, n_other)  # a Hutchinson estimate
        parts = None if self.layer_parts is None else self.layer_parts.parts
        if other.layouts() != self.layouts():
            raise TypeError("cannot add a diagonal with other layer parts")
        return Diagonal(
            self.g + other.g, self.group_index, layout=self.layout, psd=self.psd, layer_parts=parts
        )

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        return v * self.g

    @classmethod
    def _weighted(cls, parts: list[Structure], weights: Tensor) -> Structure:
        ref = parts[0]
        if any(p.variance is not None for p in parts):  # an estimate: its variance would not
            raise TypeError("a stochastic diagonal has no form for one curvature per output")
        g = sum(w * p.g for w, p in zip(weights, parts, strict=True))
        layer = None if ref.layer_parts is None else ref.layer_parts.parts
        return Diagonal(g, ref.group_index, layout=ref.layout, psd=ref.psd, layer_parts=layer)

    def _trace_solve(self, other: Structure, d: Tensor, s: Tensor) -> Tensor:
        return (other.g / self._prec(d, s)).sum()

    def precision_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """The diagonal of Π(δ, s), ``[P]``."""
        return self._prec(self._block_prior(prior_precision), self._scale(scale))

    def _prec(self, d: Tensor, s: Tensor) -> Tensor:
        prec = (s * self.g + d).expand(self.n_params)
        return prec if self.psd else require_positive(prec, s, d)

    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        return log_sum(self._prec(d, s))

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return v / self._prec(d, s)

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        return self._prec(d, s).reciprocal()

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return z * self._prec(d, s).rsqrt()

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return weighted_gram(jac, self._prec(d, s).reciprocal())

    def _fvar_factors(
        self, a: Tensor, g: Tensor, d: Tensor, s: Tensor, memory_budget: int
    ) -> Tensor:
        w = self._prec(d, s).reciprocal().view(self.layout.shape)
        return layer_variance(g, a, w, memory_budget)

    def _fvar_parts(self, split: PartFactors, d: Tensor, s: Tensor, memory_budget: int) -> Tensor:
        w = self._prec(d, s).reciprocal()
        var = sum(
            layer_variance(g, a, w[index].view(layout.shape), memory_budget)
            for layout, index, a, g in split.parts
        )
        if split.cols is not None:
            var = var + weighted_gram(split.cols, w[split.rest])
        return var
