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
import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_count
from .datapass import BatchAdapter, batch_size, prepare_inputs, progress_range
from .laplace import Laplace
from .likelihoods import get_likelihood
from .model_call import call_model, model_output
from .params import ParameterSubset

__all__ = ["marglik_training"]


def _criterion(likelihood: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-example training loss: laplace-torch's for its four likelihoods, and for any
    other the likelihood's own negative log-likelihood, its mean over the batch (the
    weight decay's scale, ``T``, is then classification's)."""
    lik = get_likelihood(likelihood)  # refuses an unknown name, listing the known ones
    if likelihood == "reward_modeling":
        return nn.functional.cross_entropy
    # the targets checked as a fit checks them (labels in range, shapes, finite values)
    if likelihood == "classification":
        return lambda f, y: nn.functional.cross_entropy(f, lik.check_targets(y, tuple(f.shape)))
    if likelihood == "regression":
        return lambda f, y: nn.functional.mse_loss(f, lik.check_targets(y, tuple(f.shape)))
    if likelihood == "binary":
        return lambda f, y: nn.functional.binary_cross_entropy_with_logits(
            f, lik.check_targets(y, tuple(f.shape)).to(f.dtype)
        )
    return lambda f, y: lik.nll_unit(f, lik.check_targets(y, tuple(f.shape))).mean()


def _initial_log_prior(
    subset: ParameterSubset, init: float, prior_structure: str, temperature: float
) -> Tensor:
    """log(T·δ₀) in the prior structure's shape (one, one per parameter tensor, one per
    weight)."""
    n = {"scalar": 1, "layerwise": subset.n_groups, "diag": subset.n_params}.get(prior_structure)
    if n is None:
        raise ValueError(
            f"unknown prior_structure {prior_structure!r}; expected 'scalar', 'layerwise' or 'diag'"
        )
    if not init > 0:
        raise ValueError(f"prior_prec_init must be positive; got {init!r}")
    value = math.log(temperature * init)
    return torch.full((n,), value, dtype=subset.dtype, device=subset.device)


class _Hyperparameters:
    """log δ (and log σ, when tuned) under training, with their Adam optimiser: their current
    values, the MAP objective's weight decay they give, and their steps."""

    def __init__(
        self,
        subset: ParameterSubset,
        log_prior: Tensor,
        sigma_noise_init: float,
        likelihood: str,
        fix_sigma_noise: bool,
        temperature: float,
        lr: float,
    ) -> None:
        device, dtype = subset.device, subset.dtype
        self.log_prior = log_prior.requires_grad_(True)
        self.log_sigma = torch.full((), math.log(sigma_noise_init), dtype=dtype, device=device)
        self.regression = likelihood == "regression"
        self.tune_sigma = self.regression and not fix_sigma_noise
        if self.tune_sigma:
            self.log_sigma.requires_grad_(True)
        tensors = [self.log_prior, self.log_sigma] if self.tune_sigma else [self.log_prior]
        self.optimizer = torch.optim.Adam(tensors, lr=lr)
        self.group_index = subset.group_index.to(device)
        self.device, self.dtype, self.temperature = device, dtype, temperature

    def current(self) -> tuple[Tensor, Tensor]:
        """(δ, σ) now: δ a scalar for the scalar prior."""
        delta = self.log_prior.exp()
        return (delta[0] if delta.numel() == 1 else delta), self.log_sigma.exp()

    def weight_decay(self, n_data: int) -> Callable[[Tensor], Tensor]:
        """θ ↦ ½ θᵀ diag(δ) θ / (N·c) at the current δ and σ (held fixed through an epoch);
        c = T/(2σ²) for regression, T otherwise."""
        delta, sigma = (t.detach() for t in self.current())
        d_full = delta if delta.dim() == 0 else delta[self.group_index]
        c = self.temperature / (2 * sigma**2) if self.regression else self.temperature
        return lambda theta: 0.5 * (d_full * theta) @ theta / n_data / c

    def steps(self, la: Laplace, n_hypersteps: int) -> tuple[list[float], Tensor, Tensor]:
        """Adam steps on log δ (and log σ) of ``la``'s evidence: the negative log evidence of
        each, and the (δ, σ) at which the last one was evaluated."""
        margliks = []
        for _ in range(n_hypersteps):
            self.optimizer.zero_grad()
            delta, sigma = self.current()
            neg = -la.log_marginal_likelihood(delta, sigma if self.tune_sigma else None)
            neg.backward()
            self.optimizer.step()
            margliks.append(float(neg.detach()))
        return margliks, delta.detach(), sigma.detach()


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
        likelihood: ``"classification"``, ``"regression"``, ``"binary"``,
            ``"reward_modeling"`` or any other registered likelihood's name (trained on its
            own negative log-likelihood).
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
    _check_arguments(optimizer_kwargs, n_epochs, n_hypersteps, marglik_frequency)
    likelihood = getattr(likelihood, "value", likelihood)
    criterion = _criterion(likelihood)
    subset = ParameterSubset(model, "all")
    log_prior = _initial_log_prior(subset, prior_prec_init, prior_structure, temperature)
    hyper = _Hyperparameters(
        subset, log_prior, sigma_noise_init, likelihood, fix_sigma_noise, temperature, lr_hyp
    )
    optimizer = optimizer_cls(model.parameters(), **(optimizer_kwargs or {}))
    scheduler = scheduler_cls(optimizer, **(scheduler_kwargs or {})) if scheduler_cls else None
    make = make_laplace or Laplace
    build = functools.partial(
        _laplace_at, make, model, likelihood, hessian_structure, temperature, laplace_kwargs
    )
    batches = BatchAdapter(train_loader, dict_key_y)
    n_data = _count(train_loader, dict_key_y)
    best = (math.inf, None, None, None)
    margliks: list[float] = []
    losses: list[float] = []
    start: float | None = None
    for epoch in progress_range(n_epochs, progress_bar, "marglik training"):
        decay = hyper.weight_decay(n_data)
        mean, first = _train_epoch(model, batches, criterion, decay, optimizer, scheduler, hyper)
        losses.append(mean)
        start = first if start is None else start  # the objective before any step
        if (epoch + 1) % marglik_frequency != 0 or epoch + 1 < n_epochs_burnin:
            continue
        la = build(*hyper.current())
        la.fit(train_loader)
        steps, delta, sigma = hyper.steps(la, n_hypersteps)
        margliks += steps
        if margliks[-1] < best[0]:
            best = (margliks[-1], copy.deepcopy(model.state_dict()), delta, sigma)
    if start is not None and start > 0 and losses[-1] > 10 * start:  # (a custom NLL may be < 0)
        lr = optimizer.param_groups[0].get("lr")
        warnings.warn(
            f"the training objective rose from {start:.3g} (before the first step) to "
            f"{losses[-1]:.3g} (the last epoch's mean): the network's optimiser diverged "
            f"(lr={lr}), whatever the prior; lower its learning rate",
            RuntimeWarning,
            stacklevel=2,
        )
    delta, sigma = _restore_best(model, best, hyper)
    la = build(delta, sigma, enable_backprop=enable_backprop)
    la.fit(train_loader)
    return la, model, margliks, losses


def _check_arguments(
    optimizer_kwargs: dict[str, Any] | None,
    n_epochs: int,
    n_hypersteps: int,
    marglik_frequency: int,
) -> None:
    """Refuse a ``weight_decay`` (it is the prior's) and counts that are not positive integers."""
    if optimizer_kwargs and "weight_decay" in optimizer_kwargs:
        raise ValueError("weight_decay is the prior's here (it is tuned); drop it")
    for name, value in (
        ("n_epochs", n_epochs),
        ("n_hypersteps", n_hypersteps),
        ("marglik_frequency", marglik_frequency),
    ):
        check_count(name, value)


def _laplace_at(
    build: Callable[..., Laplace],
    model: nn.Module,
    likelihood: str,
    hessian_structure: str,
    temperature: float,
    laplace_kwargs: dict[str, Any],
    delta: Tensor,
    sigma: Tensor,
    **extra: Any,
) -> Laplace:
    """An all-weights Laplace (not yet fitted) at prior precision δ (and σ, for regression)."""
    kw = {"sigma_noise": sigma.detach()} if likelihood == "regression" else {}
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


def _train_epoch(
    model: nn.Module,
    batches: BatchAdapter,
    criterion: Callable[[Tensor, Tensor], Tensor],
    decay: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    hyper: _Hyperparameters,
) -> tuple[float, float]:
    """One epoch of optimiser steps on ``criterion + decay(θ)``; the objective's mean, and
    its value on the first batch before its step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total, seen, first = 0.0, 0, None
    for x, y in batches:
        x = prepare_inputs(x, hyper.device, hyper.dtype)
        y = y.to(hyper.device)
        optimizer.zero_grad()
        theta = nn.utils.parameters_to_vector(params)
        f = model_output(call_model(model, x))
        loss = criterion(f, y) + decay(theta)
        if not bool(torch.isfinite(loss)):  # before the step: the weights stay finite
            lr = optimizer.param_groups[0].get("lr")
            raise FloatingPointError(
                f"the training objective became {float(loss)} (the network's outputs: "
                f"{'finite' if bool(torch.isfinite(f).all()) else 'not finite'}): the "
                f"optimiser diverged; lower its learning rate (lr={lr}) or check the data"
            )
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * y.shape[0]
        seen += y.shape[0]
        first = float(loss.detach()) if first is None else first
    return total / seen, first


def _restore_best(model: nn.Module, best: tuple, hyper: _Hyperparameters) -> tuple[Tensor, Tensor]:
    """Load the best epoch's weights into ``model`` and return its (δ, σ); without a best
    epoch (no hyperparameter step taken), the current (δ, σ)."""
    if best[1] is not None:
        model.load_state_dict(best[1])
        return best[2], best[3]
    delta, sigma = hyper.current()
    return delta.detach(), sigma.detach()


def _count(loader: Iterable, dict_key_y: str) -> int:
    """N, the number of training examples (the dataset's length, or one pass counting)."""
    try:
        n = len(loader.dataset)
    except (AttributeError, TypeError):
        n = sum(batch_size(x) for x, _ in BatchAdapter(loader, dict_key_y))
    if n == 0:
        raise ValueError("the loader yielded no data (empty loader)")
    return n
