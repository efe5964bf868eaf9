"""Marginal-likelihood training (Immer et al. 2021, Algorithm 1): the network and its prior
(and noise) trained together.

Each epoch takes optimiser steps on the MAP objective with a weight decay that follows the
current prior, mean-loss + ½ θᵀ diag(δ) θ / (N·c) (c = T for classification and binary, T/(2σ²)
for regression, so that it is the negative log joint per example up to scale). Every
``marglik_frequency`` epochs after ``n_epochs_burnin`` it fits an all-weights Laplace at the
current weights and takes ``n_hypersteps`` Adam steps on log δ (and log σ) of its evidence.
The weights and hyperparameters of the epoch with the best evidence are restored and a last
Laplace is fitted there.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .datapass import BatchAdapter, batch_size, prepare_inputs, progress_range
from .laplace import Laplace
from .model_call import call_model, model_output
from .params import ParameterSubset

__all__ = ["marglik_training"]


def _criterion(likelihood: str) -> Callable[[Tensor, Tensor], Tensor]:
    if likelihood in ("classification", "reward_modeling"):
        return nn.functional.cross_entropy
    if likelihood == "regression":
        return lambda f, y: nn.functional.mse_loss(f, y.reshape(f.shape))
    if likelihood == "binary":
        return lambda f, y: nn.functional.binary_cross_entropy_with_logits(f, y.reshape(f.shape))
    raise ValueError(
        "marglik_training trains 'classification', 'regression', 'binary' or "
        f"'reward_modeling'; got {likelihood!r}"
    )


def _initial_log_prior(
    subset: ParameterSubset, init: float, prior_structure: str, temperature: float
) -> Tensor:
    n = {"scalar": 1, "layerwise": subset.n_groups, "diag": subset.n_params}.get(prior_structure)
    if n is None:
        raise ValueError(
            f"unknown prior_structure {prior_structure!r}; expected 'scalar', 'layerwise' or 'diag'"
        )
    if not init > 0:
        raise ValueError(f"prior_prec_init must be positive; got {init!r}")
    value = math.log(temperature * init)
    return torch.full((n,), value, dtype=subset.dtype, device=subset.device)


def marglik_training(
    model: nn.Module,
    train_loader: Iterable,
    likelihood: str = "classification",
    hessian_structure: str = "kron",
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
    optimizer_kwargs: dict[str, Any] | None = None,
    scheduler_cls: type | None = None,
    scheduler_kwargs: dict[str, Any] | None = None,
    n_epochs: int = 300,
    lr_hyp: float = 1e-1,
    prior_structure: str = "layerwise",
    n_epochs_burnin: int = 0,
    n_hypersteps: int = 10,
    marglik_frequency: int = 1,
    prior_prec_init: float = 1.0,
    sigma_noise_init: float = 1.0,
    temperature: float = 1.0,
    fix_sigma_noise: bool = False,
    progress_bar: bool = False,
    enable_backprop: bool = False,
    dict_key_y: str = "labels",
    *,
    make_laplace: Callable[..., Laplace] | None = None,
    **laplace_kwargs: Any,
) -> tuple[Laplace, nn.Module, list[float], list[float]]:
    """Train ``model`` and its prior precision (and σ) by the Laplace evidence.

    laplace-torch's signature and meaning; ``hessian_structure`` is any of laplacetorch's
    (``"kron"``/``"kfac"``, ``"full"``, ``"diag"``, ``"ekfac"``, ``"block_full"``, ...).

    Args:
        model: the network to train (trained in place; left in eval mode).
        train_loader: ``(X, y)`` batches or mappings (labels under ``dict_key_y``).
        likelihood: ``"classification"``, ``"regression"`` or ``"binary"``.
        hessian_structure: the structure of every all-weights Laplace fit.
        optimizer_cls, optimizer_kwargs: the network's optimiser (its weight decay is the
            prior's; a ``weight_decay`` given is refused).
        scheduler_cls, scheduler_kwargs: a learning-rate scheduler, stepped every batch.
        n_epochs: training epochs. lr_hyp: Adam's learning rate on log δ, log σ.
        prior_structure: ``"scalar"``, ``"layerwise"`` (one δ per parameter tensor) or
            ``"diag"``.
        n_epochs_burnin, n_hypersteps, marglik_frequency: when and how much the
            hyperparameters are updated.
        prior_prec_init, sigma_noise_init: initial δ (times T) and σ.
        temperature: T. fix_sigma_noise: keep σ at its initial value.
        progress_bar: a tqdm bar over epochs. enable_backprop: of the returned Laplace.
        make_laplace: builds each Laplace (default :class:`~laplacetorch.Laplace`); called
            as ``make_laplace(model, likelihood, "all", hessian_structure, sigma_noise=...,
            prior_precision=..., temperature=..., **laplace_kwargs)``.
        **laplace_kwargs: further keyword arguments of each Laplace (e.g. ``backend_options``).

    Returns:
        ``(la, model, margliks, losses)``: the Laplace fitted at the best epoch, the model
        with that epoch's weights, the negative log evidence after every hyperparameter step,
        and the mean training objective of every epoch.
    """
    if optimizer_kwargs and "weight_decay" in optimizer_kwargs:
        raise ValueError("weight_decay is the prior's here (it is tuned); drop it")
    for name, value in (("n_epochs", n_epochs), ("n_hypersteps", n_hypersteps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if (
        isinstance(marglik_frequency, bool)
        or not isinstance(marglik_frequency, int)
        or (marglik_frequency < 1)
    ):
        raise ValueError(f"marglik_frequency must be a positive integer; got {marglik_frequency!r}")
    likelihood = getattr(likelihood, "value", likelihood)
    criterion = _criterion(likelihood)
    regression = likelihood == "regression"
    build = make_laplace or Laplace
    subset = ParameterSubset(model, "all")
    device, dtype = subset.device, subset.dtype
    log_prior = _initial_log_prior(subset, prior_prec_init, prior_structure, temperature)
    log_prior.requires_grad_(True)
    hyper = [log_prior]
    log_sigma = torch.full((), math.log(sigma_noise_init), dtype=dtype, device=device)
    if regression and not fix_sigma_noise:
        log_sigma.requires_grad_(True)
        hyper.append(log_sigma)
    optimizer = optimizer_cls(model.parameters(), **(optimizer_kwargs or {}))
    scheduler = scheduler_cls(optimizer, **(scheduler_kwargs or {})) if scheduler_cls else None
    hyper_optimizer = torch.optim.Adam(hyper, lr=lr_hyp)
    params = [p for p in model.parameters() if p.requires_grad]
    gi = subset.group_index

    def current() -> tuple[Tensor, Tensor | float]:
        delta = log_prior.exp()
        return (delta[0] if delta.numel() == 1 else delta), log_sigma.exp()

    def laplace(delta: Tensor, sigma: Tensor, **extra: Any) -> Laplace:
        kw = {"sigma_noise": sigma.detach()} if regression else {}
        model.eval()
        return build(
            model,
            likelihood,
            "all",
            hessian_structure,
            prior_precision=delta.detach(),
            temperature=temperature,
            **kw,
            **laplace_kwargs,
            **extra,
        )

    n_data = _count(train_loader, dict_key_y)
    best = (math.inf, None, None, None)
    margliks: list[float] = []
    losses: list[float] = []
    for epoch in progress_range(n_epochs, progress_bar, "marglik training"):
        epoch += 1
        model.train()
        delta, sigma = current()
        d_full = delta.detach() if delta.dim() == 0 else delta.detach()[gi.to(device)]
        c = temperature / (2 * sigma.detach() ** 2) if regression else temperature
        total, seen = 0.0, 0
        for x, y in BatchAdapter(train_loader, dict_key_y):
            x = prepare_inputs(x, device, dtype)
            y = y.to(device)
            optimizer.zero_grad()
            theta = nn.utils.parameters_to_vector(params)
            f = model_output(call_model(model, x))
            loss = criterion(f, y) + 0.5 * (d_full * theta) @ theta / n_data / c
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * y.shape[0]
            seen += y.shape[0]
        losses.append(total / seen)
        if epoch % marglik_frequency != 0 or epoch < n_epochs_burnin:
            continue
        delta, sigma = current()
        la = laplace(delta, sigma)
        la.fit(train_loader)
        for _ in range(n_hypersteps):
            hyper_optimizer.zero_grad()
            delta, sigma = current()
            neg = -la.log_marginal_likelihood(
                delta, sigma if regression and not fix_sigma_noise else None
            )
            neg.backward()
            hyper_optimizer.step()
            margliks.append(float(neg.detach()))
        if margliks[-1] < best[0]:
            best = (margliks[-1], copy.deepcopy(model.state_dict()), delta.detach(), sigma.detach())
    if best[1] is not None:
        model.load_state_dict(best[1])
        delta, sigma = best[2], best[3]
    else:
        delta, sigma = (t.detach() for t in current())
    la = laplace(delta, sigma, enable_backprop=enable_backprop)
    la.fit(train_loader)
    return la, model, margliks, losses


def _count(loader: Iterable, dict_key_y: str) -> int:
    """N, the number of training examples (the dataset's length, or one pass counting)."""
    try:
        n = len(loader.dataset)
    except (AttributeError, TypeError):
        n = sum(batch_size(x) for x, _ in BatchAdapter(loader, dict_key_y))
    if n == 0:
        raise ValueError("the loader yielded no data (empty loader)")
    return n
