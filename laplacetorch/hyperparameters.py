"""The hyperparameters of a Laplace approximation, validated when they are set.

δ (prior precision: a scalar, one per layer or one per parameter), μ₀ (prior mean) and σ
(observation noise, regression only) are stored detached, on the model's device and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .prior import expand_prior

if TYPE_CHECKING:
    from .likelihoods import Likelihood
    from .params import ParameterSubset

__all__ = ["HyperValues", "Hyperparameters", "check_sigma", "check_temperature"]


@dataclass(frozen=True)
class HyperValues:
    """δ, μ₀, σ and T as stored: checked, detached, on the model's device and dtype."""

    prior_precision: Tensor
    prior_mean: Tensor
    sigma_noise: Tensor
    temperature: float


class Hyperparameters:
    """δ, μ₀, σ and T of :class:`~laplacetorch.Laplace`: each checked by one function that
    returns the stored form (``_checked_*``) before anything is set, so a refused value
    changes nothing."""

    #: what this part of the Laplace object reads
    subset: ParameterSubset
    likelihood: Likelihood
    _hyper: HyperValues

    @property
    def n_params(self) -> int:
        """P, the number of Bayesian weights."""
        return self.subset.n_params

    def _tensor(self, value: Tensor | float) -> Tensor:
        t = torch.as_tensor(value, dtype=self.subset.dtype, device=self.subset.device)
        return t.detach().clone().reshape(() if t.numel() == 1 else (-1,))

    def _expand_prior(self, value: Tensor | float) -> tuple[Tensor, bool]:
        sub = self.subset
        return expand_prior(
            value, sub.n_params, sub.group_index, dtype=sub.dtype, device=sub.device
        )

    def _checked_prior_precision(self, value: Tensor | float) -> Tensor:
        self._expand_prior(value)  # validates
        return self._tensor(value)

    def _checked_prior_mean(self, value: Tensor | float) -> Tensor:
        t = self._tensor(value)
        if t.numel() != 1 and t.shape != (self.n_params,):
            raise ValueError(
                f"prior_mean must be a scalar or have shape [{self.n_params}]; got {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ValueError("prior_mean must be finite")
        return t

    def _checked_sigma_noise(self, value: Tensor | float, fitted: Any = None) -> Tensor:
        """σ as stored: one positive finite number, or one per output ``[C]`` for a
        likelihood with a noise per output (see :meth:`_sigma_for_fit`)."""
        self._sigma_for_fit(value, fitted)
        t = self._tensor(value)
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):  # under- or overflow
            seen = value.tolist() if isinstance(value, Tensor) else value
            raise ValueError(
                f"sigma_noise {seen} is not representable in the model's {t.dtype}: it "
                f"becomes {t.tolist()}"
            )
        self.likelihood.check_sigma_noise(t)
        return t

    def _sigma_for_fit(self, value: Tensor | float, fitted: Any = None) -> None:
        """Refuse a σ (a method argument, possibly with a graph) that is not positive and
        finite, or one per output where the fit (``fitted``: a state being installed; default
        the object's own) does not keep one curvature per output of that many outputs."""
        check_sigma(value)
        n = torch.as_tensor(value).numel()
        fitted = getattr(self, "_state", None) if fitted is None else fitted
        if n > 1 and fitted is not None:
            held = fitted.curvature.structure.output_scales
            if held != n:
                raise ValueError(
                    f"sigma_noise has {n} values (one noise per output), but this fit "
                    + (
                        f"keeps one curvature per output for {held} outputs"
                        if held > 1
                        else "holds the curvature summed over outputs; set sigma_noise of shape "
                        "[C] before fit() to keep one curvature per output"
                    )
                )

    def _checked_hyperparameters(
        self,
        prior_precision: Tensor | float,
        prior_mean: Tensor | float,
        sigma_noise: Tensor | float,
        temperature: Any,
        fitted: Any = None,
    ) -> HyperValues:
        """All four checked together (σ against ``fitted``, default the object's fit);
        nothing is set."""
        return HyperValues(
            self._checked_prior_precision(prior_precision),
            self._checked_prior_mean(prior_mean),
            self._checked_sigma_noise(sigma_noise, fitted),
            check_temperature(temperature),
        )

    @property
    def hyperparameters(self) -> HyperValues:
        """δ, μ₀, σ and T, as stored."""
        return self._hyper

    def _set(self, **values: Any) -> None:
        # one assignment of a new frozen value: a reader sees the old set or the new one
        self._hyper = replace(self._hyper, **values)

    @property
    def prior_precision(self) -> Tensor:
        """δ: a 0-d tensor, ``[n_layers]`` or ``[P]``."""
        return self._hyper.prior_precision

    @prior_precision.setter
    def prior_precision(self, value: Tensor | float) -> None:
        self._set(prior_precision=self._checked_prior_precision(value))

    @property
    def prior_mean(self) -> Tensor:
        """μ₀: a 0-d tensor or ``[P]``."""
        return self._hyper.prior_mean

    @prior_mean.setter
    def prior_mean(self, value: Tensor | float) -> None:
        self._set(prior_mean=self._checked_prior_mean(value))

    @property
    def sigma_noise(self) -> Tensor:
        """σ of the Gaussian likelihood (fixed to 1 for other likelihoods)."""
        return self._hyper.sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: Tensor | float) -> None:
        self._set(sigma_noise=self._checked_sigma_noise(value))

    @property
    def temperature(self) -> float:
        """T; the likelihood is tempered as p(D | θ)^{1/T}."""
        return self._hyper.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._set(temperature=check_temperature(value))


def check_temperature(value: Any) -> float:
    """T as a float, refusing anything but one positive finite number."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"temperature must be a positive finite number; got {value!r}")
    return float(value)


def check_sigma(value: Tensor | float) -> None:
    """Refuse a σ (a method argument, possibly with a graph) that is not positive and finite:
    one number, or a vector of one per output (whose length the fit checks)."""
    if isinstance(value, bool) or not isinstance(value, Tensor | int | float):
        raise TypeError(f"sigma_noise must be a number or a tensor; got {type(value).__name__}")
    t = value.detach() if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
    if not t.is_floating_point() and t.numel():
        t = t.double()
    one = t.numel() == 1 or t.dim() == 1
    if not one or t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(
            "sigma_noise must be one positive finite number, or one per output (a vector "
            f"[C]); got {t.tolist()}"
        )
