"""Poisson counts with a log link (``"poisson"``).

Each output is a log rate, λ = e^f; per output −log p(y | f) = e^f − y f + log y!. f is the
natural parameter, so the Hessian e^f does not depend on y: the GGN's output curvature
Λ = diag(e^f) is the exact Hessian and the Fisher at once (square root diag(e^{f/2})).

The predictive of y under f ~ N(m, Σ): the rate is log-normal, so E[λ] = e^{m + v/2},
Cov[λₐ, λᵦ] = E[λₐ] E[λᵦ] (e^{Σₐᵦ} − 1) exactly, and y's moments follow: E[y] = E[λ] and
Cov[y] = diag E[λ] (the Poisson's own variance: aleatoric) + Cov[λ] (epistemic).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import _check_finite, _per_output_targets
from .own_noise import OwnNoiseLikelihood

__all__ = ["PoissonLikelihood"]


class PoissonLikelihood(OwnNoiseLikelihood):
    """Independent Poisson counts, log rates as outputs ``[B, C]``; targets ``[B, C]``
    (``[B]`` when C = 1), non-negative integers (any dtype)."""

    name = "poisson"

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        y = _per_output_targets(y, f_shape, "poisson")
        _check_finite(y)
        if f_shape[0] and (bool((y < 0).any()) or bool((y != y.round()).any())):
            raise ValueError("poisson targets y must be counts: non-negative integers")
        return y

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        y = y.to(f.dtype)
        return (torch.exp(f) - y * f + torch.lgamma(y + 1)).sum(-1)

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return torch.diag_embed(torch.exp(f))

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return torch.diag_embed(torch.exp(0.5 * f))

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        rate = torch.exp(f.detach()).expand(n_samples, *f.shape)
        return torch.poisson(rate, generator=generator)

    def pointwise(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """The rate λ = e^f, both the mean and the variance of y given f."""
        rate = torch.exp(f)
        return rate, rate

    # ----------------------------------------------------------------- predictive
    def y_moments(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """E[λ] = e^{m + v/2} (also the aleatoric part) and Cov[λₐ, λᵦ] = E[λₐ] E[λᵦ]
        (e^{Σₐᵦ} − 1) of λ = e^f, f ~ N(mean, cov), exactly."""
        v = cov.diagonal(dim1=-2, dim2=-1)
        e_rate = torch.exp(mean + 0.5 * v)
        cov_rate = e_rate.unsqueeze(-1) * e_rate.unsqueeze(-2) * torch.expm1(cov)
        return e_rate, e_rate, cov_rate

    def predictive_nll(
        self, pred: tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        """Σ −log p(y) under the negative binomial with the predictive's mean m and variance
        v ≥ m (the Poisson–gamma mixture matching the Poisson–log-normal's two moments:
        r = m² / (v − m)); the Poisson itself where v = m."""
        mean, var = pred
        var = var.diagonal(dim1=-2, dim2=-1) if var.dim() == mean.dim() + 1 else var
        y = self.check_targets(y, tuple(mean.shape))
        # in float64, with r·log(r/(r + m)) as −r·log1p(m/r): the terms cancel for small spread
        wide = torch.promote_types(mean.dtype, torch.float64)
        m, v, y = mean.to(wide), var.to(wide), y.to(wide)
        r = m.square() / (v - m).clamp_min(torch.finfo(wide).tiny)
        log_nb = (
            torch.lgamma(y + r) - torch.lgamma(r) - torch.lgamma(y + 1)
            - r * torch.log1p(m / r) + y * torch.log(m / (r + m))
        )  # fmt: skip
        # r → ∞ is the Poisson, where lgamma(y + r) − lgamma(r) loses its digits
        log_poisson = y * torch.log(m) - m - torch.lgamma(y + 1)
        return -torch.where(r > 1e8, log_poisson, log_nb).sum().to(mean.dtype)
