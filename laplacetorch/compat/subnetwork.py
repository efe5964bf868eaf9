"""laplace-torch's subnetwork classes: ``subnetwork_indices`` third, onto the native
subnetwork Laplace."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .classes import DiagLaplace, FullLaplace, ParametricLaplace

__all__ = ["DiagSubnetLaplace", "FullSubnetLaplace", "SubnetLaplace"]


class SubnetLaplace(ParametricLaplace):
    """laplace-torch's subnetwork Laplace: ``subnetwork_indices`` (ascending integer indices
    into ``parameters_to_vector(model.parameters())``) come third."""

    _subset = "subnetwork"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        subnetwork_indices: Tensor,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **native: Any,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise ValueError("Subnetwork Laplace does not support asdl_fisher_kwargs.")
        if not isinstance(subnetwork_indices, Tensor) or subnetwork_indices.dtype != torch.long:
            raise ValueError("Subnetwork indices must be non-empty 1-dimensional torch.LongTensor.")
        self.subnetwork_indices = subnetwork_indices  # over all parameters, as given
        super().__init__(
            model,
            likelihood,
            sigma_noise,
            prior_precision,
            prior_mean,
            temperature,
            backend=backend,
            backend_kwargs=backend_kwargs,
            subnetwork=subnetwork_indices,
            **native,
        )

    @property
    def n_params_subnet(self) -> int:
        """The number of Bayesian weights."""
        return self.n_params


class FullSubnetLaplace(SubnetLaplace):
    """Subnetwork, dense."""

    _structure = "full"
    posterior_precision = FullLaplace.posterior_precision
    posterior_covariance = FullLaplace.posterior_covariance
    posterior_scale = FullLaplace.posterior_scale
    H = FullLaplace.H


class DiagSubnetLaplace(SubnetLaplace):
    """Subnetwork, diagonal."""

    _structure = "diag"
    posterior_precision = DiagLaplace.posterior_precision
    posterior_scale = DiagLaplace.posterior_scale
    H = DiagLaplace.H
