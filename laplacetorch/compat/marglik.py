"""laplace-torch's ``marglik_training``, onto :func:`laplacetorch.marglik_training`."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..marglik_training import marglik_training as native_marglik_training
from .classes import BaseLaplace, WholeMappings
from .curvature import AsdlGGN
from .enums import plain
from .factory import Laplace

__all__ = ["marglik_training"]


def marglik_training(
    model: nn.Module,
    train_loader: Iterable,
    likelihood: Any = "classification",
    hessian_structure: Any = "kron",
    backend: Any = AsdlGGN,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler_cls: type | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    n_epochs: int = 300,
    lr_hyp: float = 1e-1,
    prior_structure: Any = "layerwise",
    n_epochs_burnin: int = 0,
    n_hypersteps: int = 10,
    marglik_frequency: int = 1,
    prior_prec_init: float = 1.0,
    sigma_noise_init: float = 1.0,
    temperature: float = 1.0,
    fix_sigma_noise: bool = False,
    progress_bar: bool = False,
    enable_backprop: bool = False,
    dict_key_x: str = "input_ids",
    dict_key_y: str = "labels",
) -> tuple[BaseLaplace, nn.Module, list[float], list[float]]:
    """laplace-torch's signature; each Laplace is the compat class for
    ``hessian_structure`` with ``backend`` (mapping batches go to the model whole)."""
    if optimizer_kwargs is not None and "weight_decay" in optimizer_kwargs:
        warnings.warn("Weight decay is handled and optimized. Will be set to 0.", stacklevel=2)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "weight_decay"}

    make = functools.partial(Laplace, backend=backend, dict_key_x=dict_key_x, dict_key_y=dict_key_y)
    return native_marglik_training(
        model,
        WholeMappings(train_loader, dict_key_y),
        plain(likelihood),
        plain(hessian_structure),
        optimizer_cls,
        optimizer_kwargs,
        scheduler_cls,
        scheduler_kwargs,
        n_epochs,
        lr_hyp,
        plain(prior_structure),
        n_epochs_burnin,
        n_hypersteps,
        marglik_frequency,
        prior_prec_init,
        sigma_noise_init,
        temperature,
        fix_sigma_noise,
        progress_bar,
        enable_backprop,
        dict_key_y,
        make_laplace=make,
    )
