"""laplace-torch's last-layer classes: ``feature_reduction`` and ``last_layer_name`` in its
argument order, onto the native last-layer Laplace."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .classes import DiagLaplace, FullLaplace, KronLaplace, ParametricLaplace, kron_options
from .enums import plain

__all__ = ["DiagLLLaplace", "FullLLLaplace", "KronLLLaplace", "LLLaplace"]


class LLLaplace(ParametricLaplace):
    """laplace-torch's last-layer Laplace: ``feature_reduction`` and ``last_layer_name``
    come after ``enable_backprop``."""

    _subset = "last_layer"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: Any = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        last_layer_name: str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **native: Any,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise ValueError("Last-layer Laplace does not support asdl_fisher_kwargs.")
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
            last_layer_name=last_layer_name,
            feature_reduction=plain(feature_reduction),
            **native,
        )


class FullLLLaplace(LLLaplace):
    """Last layer, dense."""

    _structure = "full"
    posterior_precision = FullLaplace.posterior_precision
    posterior_covariance = FullLaplace.posterior_covariance
    posterior_scale = FullLaplace.posterior_scale
    H = FullLaplace.H


class KronLLLaplace(LLLaplace):
    """Last layer, KFAC (laplace-torch's layout: separate weight and bias blocks)."""

    _structure = "kfac"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: Any = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        last_layer_name: str | None = None,
        damping: bool = False,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **native: Any,
    ) -> None:
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            enable_backprop,
            feature_reduction,
            dict_key_x,
            dict_key_y,
            backend,
            last_layer_name,
            backend_kwargs,
            asdl_fisher_kwargs,
            backend_options=kron_options(damping, native.pop("backend_options", None)),
            **native,
        )

    posterior_precision = KronLaplace.posterior_precision
    H = KronLaplace.H


class DiagLLLaplace(LLLaplace):
    """Last layer, diagonal."""

    _structure = "diag"
    posterior_precision = DiagLaplace.posterior_precision
    posterior_scale = DiagLaplace.posterior_scale
    H = DiagLaplace.H
