"""The Gaussian likelihood with noise σ (``"regression"``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..metrics import gaussian_nll
from .base import Likelihood, _real_targets

__all__ = ["RegressionLikelihood"]


class RegressionLikelihood(Likelihood):
    """Gaussian likelihood N(y | f, σ² I); targets ``[B]`` (when C = 1) or ``[B, C]``."""

    name = "regression"
    has_noise = True  # every link is accepted and unused: y is Gaussian
    per_output_noise = True  # σ may be one value per output, [C]
    gaussian_predictive = True

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        return _real_targets(y, f_shape, "regression")

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (y - f).square().sum(-1)

    def inverse_link(self, f: Tensor) -> Tensor:
        return f

    def predictive_nll(
        self, pred: tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        mean, var = pred
        cov = var if var.dim() == mean.dim() + 1 else torch.diag_embed(var)
        return gaussian_nll(mean, cov + self._noise_cov(sigma_noise, mean), y, "sum")

    def _noise_cov(self, sigma_noise: Tensor | float, mean: Tensor) -> Tensor:
        var = torch.as_tensor(sigma_noise, dtype=mean.dtype, device=mean.device).square()
        return torch.diag_embed(var.expand(mean.shape[-1]))  # one σ, or one per output

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return eye.expand(f.shape[0], -1, -1)

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return self.output_hessian(f)

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        noise = torch.randn(
            (n_samples, *f.shape), generator=generator, dtype=f.dtype, device=f.device
        )
        return f.detach().unsqueeze(0) + noise

    def _noise_var(self, sigma_noise: Tensor | float) -> Tensor | float:
        return sigma_noise * sigma_noise

    def _log_normaliser(
        self, n_data: int, n_outputs: int, noise_var: Tensor | float
    ) -> Tensor | float:
        log_2pi_var = torch.log(2 * math.pi * torch.as_tensor(noise_var))
        if log_2pi_var.numel() > 1:  # one σ per output
            return 0.5 * n_data * log_2pi_var.sum()
        return 0.5 * n_data * n_outputs * log_2pi_var

    def _loss_sum(self, f: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (y - f).square().sum(0)  # per output: σ may be one per output
