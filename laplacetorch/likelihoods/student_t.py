"""Student-t regression with the Fisher GGN (``"student_t"``).

y = f + σ t, t ~ Student-t with ν degrees of freedom, per output; ν and σ are fixed by the
likelihood (``StudentTLikelihood(nu=4.0, scale=1.0)``; the name ``"student_t"`` gives
those). Per output, with r = (y − f)/σ,

    −log p(y | f) = (ν + 1)/2 · log(1 + r²/ν) + log σ + ½ log(νπ) + log Γ(ν/2) − log Γ((ν+1)/2).

Its Hessian in f, (ν + 1)(ν − r²) / (σ² (ν + r²)²), is negative for |r| > √ν (the
outliers the likelihood is chosen for), so the GGN uses the Fisher, its expectation over
y: Λ = (ν + 1) / ((ν + 3) σ²) · I, exact and y-free. The predictive of y under
f ~ N(m, Σ): E[y] = m, Cov[y] = Σ + σ² ν/(ν − 2) I (ν > 2; the aleatoric part is infinite
otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import _real_targets
from .own_noise import OwnNoiseLikelihood

__all__ = ["StudentTLikelihood"]


class StudentTLikelihood(OwnNoiseLikelihood):
    """Student-t noise of ``nu`` degrees of freedom and scale ``scale`` around outputs
    ``[B, C]``; targets ``[B, C]`` (``[B]`` when C = 1).

    Raises:
        ValueError: ``nu`` or ``scale`` not a positive finite number.
    """

    name = "student_t"

    def __init__(self, nu: float = 4.0, scale: float = 1.0) -> None:
        for what, v in (("nu", nu), ("scale", scale)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"{what} must be a positive finite number; got {v!r}")
        self.nu, self.scale = float(nu), float(scale)

    @property
    def identity(self) -> str:
        return f"{self.name}(nu={self.nu!r}, scale={self.scale!r})"

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        return _real_targets(y, f_shape, "student_t")

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        nu, s = self.nu, self.scale
        r2 = ((y - f) / s).square()
        const = (
            math.log(s) + 0.5 * math.log(nu * math.pi)
            + math.lgamma(nu / 2) - math.lgamma((nu + 1) / 2)
        )  # fmt: skip
        return (0.5 * (nu + 1) * torch.log1p(r2 / nu) + const).sum(-1)

    def fisher(self) -> float:
        """(ν + 1) / ((ν + 3) σ²): the Fisher information of the location, per output."""
        return (self.nu + 1) / ((self.nu + 3) * self.scale**2)

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return (self.fisher() * eye).expand(*f.shape[:-1], -1, -1)

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        return (math.sqrt(self.fisher()) * eye).expand(*f.shape[:-1], -1, -1)

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        shape = (n_samples, *f.shape)
        z = torch.randn(shape, generator=generator, dtype=f.dtype, device=f.device)
        # t = z / √(χ²_ν / ν), χ²_ν = 2 Gamma(ν/2): Gamma by the standard gamma sampler
        conc = torch.full(shape, self.nu / 2, dtype=f.dtype, device=f.device)
        chi2 = 2 * torch._standard_gamma(conc, generator=generator)
        return f.detach() + self.scale * z / torch.sqrt(chi2 / self.nu)

    def pointwise(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """f and σ²ν/(ν − 2): the mean and variance of y given f."""
        return f, torch.full_like(f, self.noise_variance())

    # ----------------------------------------------------------------- predictive
    def noise_variance(self) -> float:
        """σ² ν / (ν − 2), the variance of σ t (infinite for ν ≤ 2)."""
        return self.scale**2 * self.nu / (self.nu - 2) if self.nu > 2 else math.inf

    def y_moments(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """m, σ²ν/(ν − 2) and Σ: y = f + σt with t independent of f."""
        return mean, torch.full_like(mean, self.noise_variance()), cov

    def predictive_nll(
        self, pred: tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        """Σ −log p(y) under the Student-t of ν degrees of freedom, centred at the predictive
        mean, whose variance is the predictive's (scale² = σ² + v (ν − 2)/ν): exact as the
        variance v of f vanishes.

        Raises:
            ValueError: for ν ≤ 2, where y's variance is infinite and the predictive carries
                no finite variance to match (tune δ by ``method="marglik"`` instead).
        """
        if self.nu <= 2:
            raise ValueError(
                f"the student_t predictive with nu = {self.nu} has an infinite variance: its "
                "NLL cannot be matched from (mean, variance); tune the prior by the evidence "
                "(method='marglik') or give gridsearch a loss"
            )
        mean, var = pred
        var = var.diagonal(dim1=-2, dim2=-1) if var.dim() == mean.dim() + 1 else var
        y = self.check_targets(y, tuple(mean.shape))
        f_var = (var - self.noise_variance()).clamp_min(0)
        scale = torch.sqrt(self.scale**2 + f_var * (self.nu - 2) / self.nu)
        return -torch.distributions.StudentT(self.nu, mean, scale).log_prob(y).sum()
