"""The Laplace class: composes the subset, likelihood, backend and structure.

It knows no structure's class: the backend returns a structure, the structure answers the
algebra (evidence, solves, samples, J Π⁻¹ Jᵀ from a Jacobian source) and the likelihood turns
moments into the predictive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed, persistence, tuning
from .checks import check_bytes, check_generator
from .curvature import (
    FISHER_TYPES,
    HESSIAN_STRUCTURES,
    CurvatureResult,
    FitContext,
    batch_memory_check,
    canonical_structure,
    check_fisher_type,
    get_backend,
)
from .curvature.options import check_backend_options
from .curvature.per_output import check_per_output, fit_per_output
from .datapass import BatchAdapter, InputSpec, loader_size, require_reiterable
from .evidence import Evidence
from .hyperparameters import Hyperparameters, HyperValues
from .likelihoods import Likelihood, get_likelihood
from .params import ParameterSubset
from .positions import OutputLayout, PositionwiseLikelihood
from .posterior import PosteriorViews
from .prediction import Prediction
from .prior import Prior
from .state import FittedState
from .structures import DEFAULT_MEMORY_BUDGET, Structure

__all__ = ["HESSIAN_STRUCTURES", "Laplace", "NotFittedError"]


class NotFittedError(RuntimeError):
    """Raised when a Laplace approximation is used before ``fit`` (or ``load_state_dict``)."""


class Laplace(Hyperparameters, Evidence, PosteriorViews, Prediction):
    """Laplace approximation p(θ | D) ≈ N(θ*, Π⁻¹), Π = s·G + P₀, around trained weights θ*.

    Every argument after ``hessian_structure`` is keyword-only: laplace-torch's classes take
    ``sigma_noise`` fifth, so a positional call could mean two things.

    Args:
        model: the trained network, outputs ``[B, C]``.
        likelihood: ``"classification"``, ``"regression"`` or ``"binary"``.
        subset_of_weights: ``"last_layer"``, ``"all"`` or ``"subnetwork"``.
        hessian_structure: a backend of :data:`HESSIAN_STRUCTURES` (``"full"``, ``"diag"``,
            ``"kfac"`` (alias ``"kron"``), ``"ekfac"``, ``"block_full"``, ``"hutchinson"``,
            ``"lanczos"`` (alias ``"lowrank"``), ``"operator"``). Default: ``"full"`` for the
            last layer and subnetworks, ``"kfac"`` for all weights.
        prior_precision: δ, a scalar, one per parameter tensor (laplace-torch's "layerwise")
            or one per parameter.
        prior_mean: μ₀, a scalar or ``[P]``.
        sigma_noise: σ of the Gaussian likelihood (regression only).
        temperature: T; the likelihood is tempered as p(D | θ)^{1/T}.
        last_layer_name, subnetwork: see :class:`~laplacetorch.params.ParameterSubset`.
        fisher_type: ``"exact"`` (GGN; type-2 for KFAC), ``"empirical"``, or ``"mc"`` (KFAC).
        backend_options: further options of the curvature backend, e.g. for ``"kfac"``
            ``{"approximation": "reduce", "joint_bias": False, "mc_samples": 4, "seed": 1}``.
        memory_budget: bytes a chunk of Jacobian rows may take (fit and predict; for
            ``"operator"``, also what sizes its predictive's CG runs).
        batch_size_fn: counts the examples of non-tensor inputs.
        dict_key_y: the label's key in mapping (HF-style) batches; the other entries are the
            model's keyword inputs, ``model(**inputs)``, at fit and at prediction.
        memory_limit: bytes a fit may hold at its peak, checked before anything is allocated
            (default: 80% of the memory available; see :mod:`laplacetorch.memory`).
        outputs, ignore_index: ``"sequence"`` for outputs ``[B, T, C]`` with targets
            ``[B, T]``, ``"channels_first"`` for ``[B, C, H, W]`` with ``[B, H, W]``: each
            position is a likelihood term, targets ``ignore_index`` are left out, and the
            predictive is per position (see :mod:`laplacetorch.positions`).
        enable_backprop: keep the autograd graph of the predictive to the inputs (and the
            model), for gradients of the predictive mean and variance with respect to x
            (Bayesian optimisation); the glm predictive then uses dense Jacobian rows.
        process_group: the torch.distributed group the data passes reduce over (default:
            the default group when torch.distributed is initialised; ``False``: none). Each
            rank fits on its shard and ends with the fit of all the data.
        feature_reduction: last layer on sequence features ``[B, T, D]``: ``"pick_first"``,
            ``"pick_last"`` or ``"average"`` reduces them to ``[B, D]`` before the head, so
            f(x) = head(reduce(φ(x))) (laplace-torch's ``feature_reduction``).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood,
        subset_of_weights: str = "last_layer",
        hessian_structure: str | None = None,
        *,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        last_layer_name: str | None = None,
        subnetwork: Any = None,
        fisher_type: str = "exact",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        batch_size_fn: Callable[[Any], int] | None = None,
        backend_options: dict[str, Any] | None = None,
        dict_key_y: str = "labels",
        memory_limit: int | None = None,
        outputs: str | None = None,
        ignore_index: int = -100,
        enable_backprop: bool = False,
        feature_reduction: str | None = None,
        process_group: Any = None,
    ) -> None:
        self.likelihood = get_likelihood(likelihood)
        if not isinstance(enable_backprop, bool):
            raise TypeError(f"enable_backprop must be a bool; got {type(enable_backprop).__name__}")
        self.enable_backprop = enable_backprop
        self.process_group = process_group
        self.subset = ParameterSubset(
            model,
            subset_of_weights,
            last_layer_name=last_layer_name,
            subnetwork=subnetwork,
            feature_reduction=feature_reduction,
        )
        if outputs is not None and feature_reduction is not None:
            raise ValueError("feature_reduction gives one output per example; drop outputs=")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(
                f"ignore_index must be an int (the target value of positions that are not "
                f"likelihood terms); got {type(ignore_index).__name__} {ignore_index!r}"
            )
        if outputs is not None:  # each position a likelihood term
            self.subset.output_layout = OutputLayout(outputs)
            self.likelihood = PositionwiseLikelihood(
                self.likelihood, self.subset.output_layout, ignore_index
            )
        self.model = model
        self.hessian_structure = canonical_structure(hessian_structure, subset_of_weights)
        backend = get_backend(self.hessian_structure)
        check_fisher_type(backend.name, fisher_type)
        self.fisher_type = fisher_type
        check_backend_options(
            backend, {} if backend_options is None else backend_options, fisher_type
        )
        self.backend_options = dict(backend_options or {})
        self.memory_budget = check_bytes("memory_budget", memory_budget)
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise TypeError(
                f"batch_size_fn must be a callable (batch inputs -> int) or None; got "
                f"{type(batch_size_fn).__name__}"
            )
        self.batch_size_fn = batch_size_fn
        if not isinstance(dict_key_y, str):
            raise TypeError(f"dict_key_y must be a str; got {type(dict_key_y).__name__}")
        self.dict_key_y = dict_key_y
        self.memory_limit = check_bytes("memory_limit", memory_limit, optional=True)
        self._hyper = self._checked_hyperparameters(
            prior_precision, prior_mean, sigma_noise, temperature
        )
        self._state: FittedState | None = None  # what a fit produced, replaced whole

    def scale(self, sigma_noise: Tensor | float | None = None) -> Tensor | float:
        """The likelihood scale s multiplying the unit-scale curvature."""
        if sigma_noise is not None:
            self._sigma_for_fit(sigma_noise)
        sigma = self.sigma_noise if sigma_noise is None else sigma_noise
        return self.likelihood.curvature_scale(sigma, self.temperature, self._fitted().kind)

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        train_loader: Iterable,
        override: bool = True,
        progress_bar: bool | None = None,
        *,
        progress: bool | None = None,
    ) -> Laplace:
        """Run the curvature backend over the data once (laplace-torch's signature).

        Args:
            train_loader: ``(X, y)`` batches, or mappings with the label under ``dict_key_y``.
            override: ``True`` replaces an earlier fit; ``False`` adds this data to it, which
                is exact where the curvature is a sum over examples (``full``, ``diag``,
                ``block_full``, ``kfac``'s factors with the global N) and refused where it is
                not (``ekfac``, ``hutchinson``, ``lanczos``, ``operator``), or when the
                weights have changed since the first fit.
            progress_bar: a tqdm bar per data pass (alias ``progress``); default: shown on a
                terminal, not in logs (``False``: never).

        Raises:
            MemoryBudgetError: when the fit would exceed ``memory_limit``: the structure
                before any pass, a batch's output columns (K = C per example for the exact
                GGN) on the first batch, before any is formed.
            TypeError, ValueError: a fit that cannot be added to. Nothing is changed.
        """
        progress = progress_bar if progress is None else progress  # None: on a terminal
        backend = get_backend(self.hessian_structure)
        old = None if override else self._state
        if old is not None and not backend.mergeable:
            raise TypeError(
                f"hessian_structure={backend.name!r} cannot take more data exactly (its basis or "
                "estimate depends on all the data at once); fit again on all of it "
                "(override=True)"
            )
        if not backend.half_precision and self.subset.dtype != self.subset.weight_dtype:
            raise TypeError(
                f"hessian_structure={backend.name!r} needs products more accurate than the "
                f"model's {self.subset.weight_dtype} (its CG solves stall on half precision's "
                "round-off); take 'lanczos', 'kfac', 'ekfac' or 'diag', or fit a float32 copy "
                "of the model"
            )
        if old is not None and not self.subset.weights_equal(old.mean):
            raise ValueError(
                "fit(override=False) adds data at the same weights θ*, but the model's weights "
                "have changed since the first fit; use override=True"
            )
        n, limit = loader_size(train_loader, self.dict_key_y), self.memory_limit
        per_output = self.sigma_noise.numel() > 1
        check = batch_memory_check(
            backend.name,
            self.subset,
            self.backend_options,
            self.fisher_type,
            limit,
            n,
            self.sigma_noise.numel(),
        )
        if per_output:
            check_per_output(backend, self.fisher_type)
        check(None, None)  # the structure now; a batch's output columns on the first batch
        if not backend.one_pass or per_output:
            what = f"hessian_structure={backend.name!r}"
            require_reiterable(train_loader, "a noise per output" if backend.one_pass else what)
        identity = distributed.FitIdentity(
            self.subset,
            self.likelihood,
            backend.name,
            FISHER_TYPES[self.fisher_type],
            self.sigma_noise.numel(),
            self.backend_options,
        )
        check = identity.noting_outputs(check)  # C, compared over the ranks
        context = FitContext(
            self.fisher_type, progress, self.memory_budget, self.batch_size_fn, limit, check
        )
        recorder = BatchAdapter(train_loader, self.dict_key_y)
        with distributed.over(self.process_group, identity), self.subset.fitting():
            if not backend.reducible and distributed.active_group() is not None:
                raise ValueError(
                    f"hessian_structure={backend.name!r} does not reduce over a process group; "
                    "fit it on one process (process_group=False), or take a structure that does"
                )
            if per_output:  # one pass per output: G_c of each output's term
                new = fit_per_output(
                    backend,
                    self.subset,
                    recorder,
                    context,
                    self.sigma_noise.numel(),
                    self.backend_options,
                )
            else:
                new = backend.fit(
                    self.subset, self.likelihood, recorder, context, **self.backend_options
                )
        if old is None:
            self._state = FittedState(new, self.subset.map_vector(), recorder.spec)
        else:
            self._state = old.merged(new)
        return self

    def _fitted(self) -> CurvatureResult:
        if self._state is None:
            raise NotFittedError("this Laplace approximation is not fitted; call fit() first")
        return self._state.curvature

    @property
    def fitted_state(self) -> FittedState | None:
        """What the fit produced (``None`` before ``fit`` or ``load_state_dict``)."""
        return self._state

    @property
    def curvature(self) -> CurvatureResult | None:
        """The backend's result of the fit (``None`` before it)."""
        return None if self._state is None else self._state.curvature

    @property
    def mean(self) -> Tensor | None:
        """θ*, the weights the curvature belongs to (laplace-torch's ``mean``)."""
        return None if self._state is None else self._state.mean

    @property
    def inputs(self) -> InputSpec:
        """What the training inputs looked like (shape past the batch, keyword, dtype kind)."""
        return InputSpec(self.dict_key_y) if self._state is None else self._state.inputs

    @property
    def n_data(self) -> int:
        """N, the number of training examples seen by ``fit``."""
        return self._fitted().n_data

    @property
    def structure(self) -> Structure:
        """The fitted posterior-precision structure."""
        return self._fitted().structure

    def optimize_prior_precision(
        self,
        *,
        method: str = "marglik",
        pred_type: str = "glm",
        n_steps: int | None = None,
        lr: float | None = None,
        init_prior_prec: Tensor | float = 1.0,
        prior_structure: str | None = None,
        val_loader: Iterable | None = None,
        loss: Callable[..., Tensor | float] | None = None,
        log_prior_prec_min: float = -4.0,
        log_prior_prec_max: float = 4.0,
        grid_size: int = 100,
        log_prior_prec_base: float = 10.0,
        link_approx: str = "probit",
        n_samples: int = 100,
        verbose: bool = False,
        progress_bar: bool | None = None,
        tune_sigma: bool = False,
        optimizer: str | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        grid: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> tuning.TuningResult:
        """Tune δ (and, with ``tune_sigma=True``, σ) and leave the object tuned.

        laplace-torch's arguments mean what they mean there; all are keyword-only.

        Args:
            method: ``"marglik"`` (evidence ascent on log δ: Adam for ``n_steps`` steps at
                ``lr`` when ``lr`` is given, else L-BFGS to convergence), ``"mackay"`` (fixed
                point) or ``"gridsearch"`` (validation loss, or the evidence without
                ``val_loader``).
            pred_type: the predictive the grid search validates, ``"glm"`` or ``"nn"``.
            n_steps, lr, optimizer, tol: the ascent (``optimizer``: ``"adam"`` or
                ``"lbfgs"``); ``max_iter``, ``tol`` for MacKay.
            init_prior_prec: δ to start from (default 1, as in laplace-torch); a vector keeps
                its structure.
            prior_structure: ``"scalar"`` (default), ``"layerwise"`` (one δ per parameter
                tensor) or ``"diag"`` (one per weight; alias ``"diagonal"``).
            val_loader, loss: validation data and a loss (``loss(probs, y)``, or
                ``loss(mean, var, y)`` / ``loss(mean, y)`` for regression; lower is better;
                default the predictive NLL).
            log_prior_prec_min, log_prior_prec_max, grid_size, log_prior_prec_base: the grid
                base^linspace(min, max, grid_size), unless ``grid`` gives the values.
            link_approx, n_samples, generator: the validated predictive.
            verbose: print the tuned δ. progress_bar (alias ``progress``): a tqdm bar over
                the steps (default: shown on a terminal, not in logs; ``False``: never).
            tune_sigma: also tune σ (regression; ``marglik`` and ``mackay``).
        """
        self._fitted()
        result = tuning.optimize(
            self,
            method,
            pred_type=pred_type,
            prior_structure=prior_structure,
            val_loader=val_loader,
            init_prior_prec=init_prior_prec,
            tune_sigma=tune_sigma,
            n_steps=n_steps,
            lr=lr,
            optimizer=optimizer,
            tol=tol,
            max_iter=max_iter,
            grid=grid,
            log_prior_prec_min=log_prior_prec_min,
            log_prior_prec_max=log_prior_prec_max,
            grid_size=grid_size,
            log_prior_prec_base=log_prior_prec_base,
            loss=loss,
            link_approx=link_approx,
            n_samples=n_samples,
            generator=generator,
            progress=progress_bar if progress is None else progress,
        )
        if verbose:
            print(f"Optimized prior precision is {self.prior_precision}.")
        return result

    # ----------------------------------------------------------------- weights
    def sample(
        self,
        n_samples: int = 100,
        generator: torch.Generator | None = None,
        *,
        prior_precision: Tensor | float | Prior | None = None,
    ) -> Tensor:
        """``[n_samples, P]`` weight draws θ* + ε, ε ~ N(0, Π⁻¹) (at another δ when given)."""
        check_generator(generator)
        prior = self.prior_at(prior_precision)
        return self.mean + self.structure.sample(n_samples, prior, self.scale(), generator)

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict without refitting (see :mod:`laplacetorch.persistence`)."""
        return persistence.laplace_state(self)

    def load_state_dict(self, state: dict[str, Any], *, restore_weights: bool = False) -> None:
        """Restore a fitted state, all or nothing; refuses a state of another model, subset,
        likelihood or format, and a corrupt or truncated one.

        Args:
            restore_weights: write the state's θ* into the model (a freshly built model);
                otherwise predicting is refused while the model's weights differ from θ*.
        """
        persistence.load_laplace_state(self, state, restore_weights)

    def _install(self, fitted: FittedState, hyper: HyperValues) -> None:
        """A checked fitted state and hyperparameters, installed together (persistence)."""
        self._state, self._hyper = fitted, hyper

    def restore_weights(self) -> None:
        """Write θ* of the fit back into the model's Bayesian weights."""
        self._fitted()
        self.subset.assign(self.mean)
