"""Likelihoods whose predictive of y carries their own noise (``OwnNoiseLikelihood``).

Heteroscedastic regression, Poisson counts and Student-t regression have no σ to tune: the
noise of y given f is the likelihood's (σ²(f), the rate, σ²ν/(ν−2)). Their predictive is
the mean and covariance of y itself, noise included, and splits exactly into an aleatoric
part E[Var(y | f)] and an epistemic part Cov[E(y | f)] over the linearised f ~ N(m, Σ)
(:meth:`OwnNoiseLikelihood.y_moments`, in closed form for each) or over function samples
(:meth:`OwnNoiseLikelihood.pointwise`, the conditional mean and variance of each sample).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from .base import Likelihood

__all__ = ["OwnNoiseLikelihood"]


class OwnNoiseLikelihood(Likelihood):
    """A likelihood whose predictive is ``(E[y], Cov[y])`` with its own noise included."""

    gaussian_predictive = True  # the predictive is (mean, covariance) of y

    @abstractmethod
    def pointwise(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """E[y | f] and Var[y | f] per target, ``[..., D]`` each, from outputs ``[..., C]``."""

    @abstractmethod
    def y_moments(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For f ~ N(``mean`` ``[B, C]``, ``cov`` ``[B, C, C]``): E[y] ``[B, D]``, the
        aleatoric E[Var(y | f)] ``[B, D]`` and the epistemic Cov[E(y | f)] ``[B, D, D]``."""

    def inverse_link(self, f: Tensor) -> Tensor:
        return self.pointwise(f)[0]

    def glm_predictive(
        self,
        mean: Tensor,
        var: Tensor,
        sigma_noise: Tensor | float = 1.0,
        link_approx: str = "probit",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
        diagonal_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``(E[y] [B, D], Cov[y] [B, D, D])`` = (E[y], Cov[E(y | f)] + diag E[Var(y | f)]):
        the noise included (it is the likelihood's: there is no σ to add); the diagonal
        ``[B, D]`` with ``diagonal_output``."""
        self.check_link(link_approx)
        e_y, aleatoric, epistemic = self.y_moments(mean, var)
        total = epistemic + torch.diag_embed(aleatoric)
        return e_y, total.diagonal(dim1=-2, dim2=-1) if diagonal_output else total

    def uncertainty_parts(
        self, mean: Tensor, var: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        e_y, aleatoric, epistemic = self.y_moments(mean, var)
        return e_y, aleatoric, epistemic.diagonal(dim1=-2, dim2=-1)

    def nn_predictive(self, fs: Tensor, sigma_noise: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
        """From function samples ``[S, B, C]``: E[y] and Var[E(y | f)] + E[Var(y | f)]
        ``[B, D]`` (denominator S − 1 for the first)."""
        mean, aleatoric, epistemic = self.nn_uncertainty_parts(fs)
        return mean, epistemic + aleatoric

    def nn_uncertainty_parts(
        self, fs: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """E[y], E[Var(y | f)] and Var[E(y | f)] ``[B, D]`` from samples ``fs``."""
        if fs.shape[0] < 2:
            raise ValueError(
                f"the nn {self.name} predictive estimates a variance: n_samples must be at "
                f"least 2; got {fs.shape[0]}"
            )
        mu, var = self.pointwise(fs)
        return mu.mean(0), var.mean(0), mu.var(0)
