"""Heteroscedastic Gaussian regression in natural parameters (``"heteroscedastic_regression"``).

The network outputs two numbers per target, ``f = [f₁ | f₂]`` ``[B, 2D]`` (the first D
outputs, then the last D): the natural parameters of N(μ, σ²) are η₁ = μ/σ² = f₁ and
η₂ = −1/(2σ²) = −½ e^{f₂}, so f₂ = log(1/σ²) is the log precision and every f is valid
(Immer, Palumbo, Marx, Vogt, NeurIPS 2023, with an exponential link for η₂). Per target

    −log p(y | f) = −η₁ y − η₂ y² + A(η) + ½ log 2π,   A(η) = −η₁²/(4η₂) − ½ log(−2η₂),

whose Hessian in f depends on y and can be indefinite (|y| < |μ|); its expectation over y,
the Fisher, is the exact output curvature of the GGN here: with L = ∂η/∂f = diag(1, η₂),
Λ = Lᵀ ∇²A(η) L = [[σ², −μ], [−μ, μ²/σ² + ½]] (positive definite, det σ²/2), with the
closed-form square root S = [[σ, 0], [−μ/σ, 1/√2]]. The noise lives in the network: there
is no σ to tune (``sigma_noise`` stays 1), and the temperature scales the curvature as for
every likelihood.

The predictive of y under f ~ N(m, Σ) (the GLM's linearised f, or ``nn`` samples) has exact
moments: μ = f₁ e^{−f₂} and σ² = e^{−f₂} are products of a Gaussian and a log-normal, so
E[μ], E[σ²] (the aleatoric part) and Cov[μ] (the epistemic part) follow from the Gaussian's
moment generating function — no linearisation of μ(f).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..metrics import gaussian_nll
from .base import _check_outputs, _real_targets
from .own_noise import OwnNoiseLikelihood

__all__ = ["HeteroscedasticRegressionLikelihood"]


class HeteroscedasticRegressionLikelihood(OwnNoiseLikelihood):
    """N(y | μ(f), σ²(f)) per target, the network giving ``[B, 2D]`` natural parameters
    (η₁ = f₁, η₂ = −½ e^{f₂}); targets ``[B, D]`` (``[B]`` when D = 1)."""

    name = "heteroscedastic_regression"

    def check_outputs(self, f: Tensor) -> None:
        _check_pairs(f.shape[-1])

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        _check_outputs(f_shape)
        _check_pairs(f_shape[1])
        return _real_targets(y, (f_shape[0], f_shape[1] // 2), "heteroscedastic regression")

    # ----------------------------------------------------------------- parameters
    def pointwise(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """μ = f₁ e^{−f₂} and σ² = e^{−f₂}, ``[..., D]`` each, from ``f`` ``[..., 2D]``."""
        f1, f2 = f.chunk(2, dim=-1)
        var = torch.exp(-f2)
        return f1 * var, var

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        f1, f2 = f.chunk(2, dim=-1)
        # −η₁y − η₂y² + A(η) + ½ log 2π with η₁ = f₁, η₂ = −½e^{f₂}
        nll = -f1 * y + 0.5 * torch.exp(f2) * y.square() + 0.5 * f1.square() * torch.exp(-f2)
        return (nll - 0.5 * f2 + 0.5 * math.log(2 * math.pi)).sum(-1)

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        s = self.hessian_sqrt(f)
        return s @ s.mT

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        mu, var = self.pointwise(f)
        sd = var.sqrt()
        d = mu.shape[-1]
        out = f.new_zeros(*f.shape, f.shape[-1])
        idx = torch.arange(d, device=f.device)
        out[..., idx, idx] = sd
        out[..., idx + d, idx] = -mu / sd
        out[..., idx + d, idx + d] = math.sqrt(0.5)
        return out

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        mu, var = self.pointwise(f.detach())
        noise = torch.randn(
            (n_samples, *mu.shape), generator=generator, dtype=f.dtype, device=f.device
        )
        return mu + var.sqrt() * noise

    # ----------------------------------------------------------------- predictive
    def y_moments(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For f ~ N(``mean`` ``[B, 2D]``, ``cov`` ``[B, 2D, 2D]``): E[μ] ``[B, D]``, the
        aleatoric variance E[σ²] ``[B, D]`` and the epistemic covariance Cov[μ]
        ``[B, D, D]``, exactly: with Z = −f₂ Gaussian, E[f₁ e^{Z}] = e^{m_Z + v_Z/2}(m₁ +
        c(f₁, Z)) and E[f₁ₐ f₁ᵦ e^{Zₐ + Zᵦ}] likewise (moment generating function)."""
        d = mean.shape[-1] // 2
        m1, m2 = mean[..., :d], mean[..., d:]
        c11, c12, c22 = cov[..., :d, :d], cov[..., :d, d:], cov[..., d:, d:]
        v2 = c22.diagonal(dim1=-2, dim2=-1)
        aleatoric = torch.exp(-m2 + 0.5 * v2)
        # E[μ_a] = A_a u_a, A_a = E[σ²_a] and u_a = m1_a − c12[a, a] (Cov(f₁ₐ, −f₂ₐ))
        u = m1 - c12.diagonal(dim1=-2, dim2=-1)
        e_mu = aleatoric * u
        # E[μ_a μ_b] = A_a A_b e^{c22[a, b]} ((u_a − c12[a, b]) (u_b − c12[b, a]) + c11[a, b]);
        # Cov[μ] subtracts A_a A_b u_a u_b. Written with expm1 and the differences only, so that
        # nothing of the size of E[μ]² cancels (float32 at small spreads)
        ua, ub = u.unsqueeze(-1), u.unsqueeze(-2)
        c12t = c12.mT
        tilted = (ua - c12) * (ub - c12t) + c11
        small = torch.expm1(c22) * tilted + c11 - ua * c12t - ub * c12 + c12 * c12t
        epistemic = aleatoric.unsqueeze(-1) * aleatoric.unsqueeze(-2) * small
        return e_mu, aleatoric, epistemic

    def predictive_nll(
        self, pred: tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        mean, var = pred
        cov = var if var.dim() == mean.dim() + 1 else torch.diag_embed(var)
        return gaussian_nll(mean, cov, y, "sum")


def _check_pairs(n_outputs: int) -> None:
    if n_outputs % 2:
        raise ValueError(
            "heteroscedastic regression needs two outputs per target, [η₁ | log precision] "
            f"([B, 2D]); the model gives {n_outputs} outputs"
        )
