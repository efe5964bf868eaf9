"""laplace-torch's ``FunctionalLaplace`` / ``FunctionalLLLaplace``: the native ``gp``
structure with laplace-torch's conventions (each softmax Hessian by its diagonal, the
subset's prior covariance scaled by M/N, its numpy subset-of-data draw)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .classes import BaseLaplace
from .enums import plain

__all__ = ["FunctionalLLLaplace", "FunctionalLaplace"]


def _options(independent_outputs: bool, prior_precision: Any) -> dict[str, Any]:
    if isinstance(prior_precision, Tensor) and prior_precision.numel() != 1:
        raise ValueError("Only isotropic priors supported in FunctionalLaplace")
    return {
        "diagonal_hessian": True,
        "prior_subset_scaling": True,
        "independent_outputs": bool(independent_outputs),
    }


class _Functional(BaseLaplace):
    _structure = "gp"

    def fit(self, train_loader: Iterable, override: bool = True, progress_bar: bool = False):
        """laplace-torch's subset-of-data draw (numpy, ``seed``), then the native fit."""
        try:
            n = len(train_loader.dataset)
        except (AttributeError, TypeError):
            raise ValueError(
                "FunctionalLaplace needs a DataLoader over a sized dataset (N for the subset)"
            ) from None
        if not 1 <= self.n_subset <= n:
            raise ValueError(f"n_subset must be in [1, N = {n}]; got {self.n_subset}")
        rng = np.random.default_rng(self.seed)
        idx = np.sort(rng.choice(np.arange(n), self.n_subset, replace=False))
        before = dict(self.backend_options)
        self.backend_options["subset_indices"] = torch.as_tensor(idx)
        try:
            super().fit(train_loader, override, progress_bar)
        except Exception:
            self.backend_options = before  # a failed call changes nothing
            raise


class FunctionalLaplace(_Functional):
    """All weights, the GP on ``n_subset`` points (laplace-torch's argument order)."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        n_subset: int,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        independent_outputs: bool = False,
        seed: int = 0,
    ) -> None:
        options = _options(independent_outputs, prior_precision)
        self.n_subset, self.seed = int(n_subset), seed
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            backend_options=options,
        )


class FunctionalLLLaplace(_Functional):
    """The last layer, the GP on ``n_subset`` points (laplace-torch's argument order)."""

    _subset = "last_layer"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        n_subset: int,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: Any = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        last_layer_name: str | None = None,
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        independent_outputs: bool = False,
        seed: int = 0,
    ) -> None:
        options = _options(independent_outputs, prior_precision)
        self.n_subset, self.seed = int(n_subset), seed
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            backend_options=options,
            last_layer_name=last_layer_name,
            feature_reduction=plain(feature_reduction),
        )
