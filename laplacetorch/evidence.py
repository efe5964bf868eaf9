"""The Laplace evidence and the prior it is taken under, on :class:`~laplacetorch.Laplace`.

log p(D) ≈ log p(D | θ*) − ½[(θ* − μ₀)ᵀP₀(θ* − μ₀) + log det Π − log det P₀], Π = s·G + P₀,
with P₀ = c·diag(δ) from the :class:`~laplacetorch.prior.Prior` of the fit; differentiable in
δ and σ (docs/math.md §9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .prior import Prior

if TYPE_CHECKING:
    from .likelihoods import Likelihood
    from .params import ParameterSubset

__all__ = ["Evidence"]


class Evidence:
    """``log_likelihood``, ``log_marginal_likelihood``, ``evidence``, ``prior_at``. The host
    gives the attributes declared here and ``_fitted()``, ``sigma_noise``, ``prior_precision``,
    ``prior_mean``, ``temperature``, ``mean``, ``scale``, ``_checked_prior_precision``,
    ``_checked_sigma_noise``, ``_sigma_for_fit`` and ``_set`` (from
    :class:`~laplacetorch.hyperparameters.Hyperparameters`)."""

    subset: ParameterSubset
    likelihood: Likelihood

    @property
    def log_likelihood(self) -> Tensor:
        """log p(D | θ*) of the tempered likelihood at the current σ (laplace-torch's
        property; :meth:`log_likelihood_at` takes another σ)."""
        return self.log_likelihood_at()

    def log_likelihood_at(self, sigma_noise: Tensor | float | None = None) -> Tensor:
        """log p(D | θ*) of the tempered likelihood, differentiable in σ."""
        c = self._fitted()
        if sigma_noise is not None:
            self._sigma_for_fit(sigma_noise)
        sigma = self.sigma_noise if sigma_noise is None else sigma_noise
        return self.likelihood.log_likelihood_from_loss(
            c.loss_sum, c.n_data, c.n_outputs, sigma, self.temperature
        )

    def log_marginal_likelihood(
        self,
        prior_precision: Tensor | float | None = None,
        sigma_noise: Tensor | float | None = None,
    ) -> Tensor:
        """Laplace evidence log p(D | θ*) − ½[(θ*−μ₀)ᵀP₀(θ*−μ₀) + log det Π − log det P₀].

        As in laplace-torch, δ and σ passed here are stored on the object (detached); the
        returned evidence keeps their autograd graph, so a loop of optimiser steps on
        ``log_marginal_likelihood(log_d.exp(), log_s.exp())`` leaves the object tuned.
        Log-determinants from the structure (exact where :meth:`Structure.is_exact` says so).
        """
        self._fitted()
        if sigma_noise is not None and not self.likelihood.has_noise:
            raise ValueError("sigma_noise is a regression-only option")
        kept = {}  # checked before anything is kept: a failed call changes nothing
        if prior_precision is not None:
            kept["prior_precision"] = self._checked_prior_precision(prior_precision)
        if sigma_noise is not None:
            kept["sigma_noise"] = self._checked_sigma_noise(sigma_noise)
        value = self.evidence(prior_precision, sigma_noise)
        self._set(**kept)
        return value

    def evidence(
        self,
        prior_precision: Tensor | float | None = None,
        sigma_noise: Tensor | float | None = None,
    ) -> Tensor:
        """The evidence of :meth:`log_marginal_likelihood` at δ, σ (default: the object's),
        differentiable in both, without storing them."""
        c = self._fitted()
        if sigma_noise is not None and not self.likelihood.has_noise:
            raise ValueError("sigma_noise is a regression-only option")
        if sigma_noise is not None:
            self._sigma_for_fit(sigma_noise)
        sigma = self.sigma_noise if sigma_noise is None else sigma_noise
        delta = self.prior_precision if prior_precision is None else prior_precision
        prior = self.prior_at(delta)
        scatter = prior.quadratic(self.mean - self.prior_mean)
        # δ in its own form: a per-layer δ stays constant on each layer's blocks (exact)
        logdet_post = c.structure.logdet(prior, self.scale(sigma))
        return self.log_likelihood_at(sigma) - 0.5 * (scatter + logdet_post - prior.logdet())

    def prior_at(self, prior_precision: Tensor | float | None = None) -> Prior:
        """The fitted posterior's prior P₀ = c·diag(δ) at δ (default: the object's), with the
        factor c of the fit (see :class:`~laplacetorch.prior.Prior`)."""
        c = self._fitted()
        delta = self.prior_precision if prior_precision is None else prior_precision
        sub = self.subset
        return Prior.of(
            delta, sub.group_index, dtype=sub.dtype, device=sub.device, factor=c.prior_factor
        )

    @property
    def prior(self) -> Prior:
        """The prior at the current δ (:meth:`prior_at`)."""
        return self.prior_at()
