"""The hyperparameters of a Laplace approximation, validated when they are set.

δ (prior precision: a scalar, one per layer or one per parameter), μ₀ (prior mean) and σ
(observation noise, regression only) are stored detached, on the model's device and dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .structures import expand_prior

__all__ = ["Hyperparameters", "check_sigma", "check_temperature"]


class Hyperparameters:
    """δ, μ₀ and σ of :class:`~laplacetorch.Laplace` (needs ``subset`` and ``likelihood``)."""

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

    @property
    def prior_precision(self) -> Tensor:
        """δ: a 0-d tensor, ``[n_layers]`` or ``[P]``."""
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value: Tensor | float) -> None:
        self._expand_prior(value)  # validates
        self._prior_precision = self._tensor(value)

    @property
    def prior_mean(self) -> Tensor:
        """μ₀: a 0-d tensor or ``[P]``."""
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value: Tensor | float) -> None:
        t = self._tensor(value)
        if t.numel() != 1 and t.shape != (self.n_params,):
            raise ValueError(
                f"prior_mean must be a scalar or have shape [{self.n_params}]; got {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ValueError("prior_mean must be finite")
        self._prior_mean = t

    @property
    def sigma_noise(self) -> Tensor:
        """σ of the Gaussian likelihood (fixed to 1 for other likelihoods)."""
        return self._sigma_noise

    @sigma_noise.setter
    def sigma_noise(self, value: Tensor | float) -> None:
        t = self._tensor(value)
        if t.numel() != 1 or not torch.isfinite(t).all() or (t <= 0).any():
            raise ValueError(f"sigma_noise must be one positive finite number; got {t.tolist()}")
        self.likelihood.check_sigma_noise(t)
        self._sigma_noise = t

    @property
    def temperature(self) -> float:
        """T; the likelihood is tempered as p(D | θ)^{1/T}."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)


def check_temperature(value: Any) -> float:
    """T as a float, refusing anything but one positive finite number."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"temperature must be a positive finite number; got {value!r}")
    return float(value)


def check_sigma(value: Tensor | float) -> None:
    """Refuse a σ (a method argument, possibly with a graph) that is not positive and finite."""
    if isinstance(value, bool) or not isinstance(value, Tensor | int | float):
        raise TypeError(f"sigma_noise must be a number or a tensor; got {type(value).__name__}")
    t = torch.as_tensor(value).detach()
    if t.numel() != 1 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"sigma_noise must be one positive finite number; got {t.tolist()}")
