"""Independent Bernoulli outputs with a sigmoid link (``"binary"``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..links import probit
from ..metrics import binary_nll
from .base import Likelihood, _check_finite, _per_output_targets

__all__ = ["BinaryLikelihood"]


class BinaryLikelihood(Likelihood):
    """Independent Bernoulli likelihoods with a sigmoid link; targets in {0, 1}."""

    name = "binary"
    links = ("probit", "mc")

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        y = _per_output_targets(y, f_shape, "binary")
        _check_finite(y)
        if f_shape[0] and not ((y == 0) | (y == 1)).all():
            raise ValueError("binary targets y must be 0 or 1")
        return y

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        y = y.to(f.dtype)
        return F.binary_cross_entropy_with_logits(f, y, reduction="none").sum(-1)

    def inverse_link(self, f: Tensor) -> Tensor:
        return torch.sigmoid(f)

    def entropy(self, p: Tensor) -> Tensor:
        """−p log p − (1 − p) log(1 − p) of each output (each its own Bernoulli)."""
        return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))

    def _probit(self, mean: Tensor, var: Tensor) -> Tensor:
        return probit(mean, var, binary=True)

    def check_link(self, link_approx: str) -> None:
        if link_approx in ("bridge", "bridge_norm"):
            raise ValueError(
                "the Laplace bridge needs a softmax (classification) likelihood; use 'probit' "
                "or 'mc' for binary outputs"
            )
        super().check_link(link_approx)

    def predictive_nll(self, pred: Tensor, y: Tensor, sigma_noise: Tensor | float = 1.0) -> Tensor:
        return binary_nll(pred, y, "sum")

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        p = torch.sigmoid(f)
        return torch.diag_embed(p * (1 - p))

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        p = torch.sigmoid(f)
        return torch.diag_embed((p * (1 - p)).sqrt())

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        p = torch.sigmoid(f.detach()).unsqueeze(0).expand(n_samples, *f.shape)
        return torch.bernoulli(p, generator=generator)
