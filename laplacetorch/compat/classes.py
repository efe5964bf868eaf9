"""laplace-torch's Laplace classes, each a thin mapping onto :class:`laplacetorch.Laplace`.

A class fixes ``subset_of_weights`` and ``hessian_structure`` and takes laplace-torch's
constructor arguments in laplace-torch's order; every method is the native one, with
laplace-torch's signature where the native one differs (``optimize_prior_precision`` takes
``pred_type`` first and means Adam for ``n_steps`` steps at ``lr``) and laplace-torch's
return types where they differ (``posterior_precision`` of a ``FullLaplace`` is a dense
tensor, of a ``DiagLaplace`` a vector). Batches that are mappings are passed to the model
whole, ``model(batch)``, as laplace-torch does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..laplace import Laplace as NativeLaplace
from ..likelihoods import Likelihood, get_likelihood
from ..posterior import PosteriorMatrix, PosteriorViews
from .curvature import CurvatureInterface, CurvlinopsGGN, fisher_type_of
from .enums import plain

__all__ = [
    "BaseLaplace",
    "DiagLaplace",
    "FullLaplace",
    "KronLaplace",
    "KronPosterior",
    "LowRankLaplace",
    "ParametricLaplace",
    "WholeMappings",
    "kron_options",
]


class WholeMappings:
    """A loader whose mapping batches become ``(batch, batch[dict_key_y])`` pairs: the model
    then gets the whole mapping as one argument, laplace-torch's convention."""

    def __init__(self, loader: Iterable, dict_key_y: str) -> None:
        self.loader, self.dict_key_y = loader, dict_key_y
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            if isinstance(batch, Mapping):
                if self.dict_key_y not in batch:
                    raise ValueError(
                        f"a mapping batch must hold its targets under dict_key_y="
                        f"{self.dict_key_y!r}; got keys {sorted(batch)}"
                    )
                yield dict(batch), batch[self.dict_key_y]
            else:
                yield batch


class BaseLaplace(NativeLaplace):
    """laplace-torch's ``BaseLaplace`` arguments on the native class.

    Args:
        model, likelihood, sigma_noise, prior_precision, prior_mean, temperature: as in
            laplace-torch (positional in this order).
        enable_backprop: gradients of the predictive with respect to the inputs.
        dict_key_x: accepted for laplace-torch's signature (mapping batches go to the model
            whole). dict_key_y: the label's key in mapping batches.
        backend, backend_kwargs: a class of :mod:`laplacetorch.compat.curvature` (GGN, EF;
            ``{"stochastic": True}`` for the Monte-Carlo GGN).
        asdl_fisher_kwargs: accepted when ``None`` (ASDL is not used).
    """

    _subset = "all"
    _structure = "full"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        sigma_noise: Tensor | float = 1.0,
        prior_precision: Tensor | float = 1.0,
        prior_mean: Tensor | float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
        **native: Any,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise ValueError("asdl_fisher_kwargs: laplacetorch does not use ASDL; pass None")
        fisher_type, options = fisher_type_of(backend, backend_kwargs or {})
        options.update(native.pop("backend_options", None) or {})
        self.dict_key_x = dict_key_x
        self.backend_class = backend
        super().__init__(
            model,
            plain(likelihood),
            native.pop("subset_of_weights", self._subset),
            self._structure,
            sigma_noise=sigma_noise,
            prior_precision=prior_precision,
            prior_mean=prior_mean,
            temperature=temperature,
            fisher_type=fisher_type,
            backend_options=options,
            dict_key_y=dict_key_y,
            enable_backprop=enable_backprop,
            **native,
        )

    @property
    def prior_precision(self) -> Tensor:
        """δ, always 1-D as in laplace-torch (``[1]`` for a scalar)."""
        return self.hyperparameters.prior_precision.reshape(-1)

    @prior_precision.setter
    def prior_precision(self, value: Tensor | float) -> None:
        NativeLaplace.prior_precision.fset(self, value)

    def _checked_sigma_noise(self, value: Tensor | float, fitted: Any = None) -> Tensor:
        # laplace-torch's σ is one number (a [1] tensor too); one per output is native only
        _real_or_tensor("sigma_noise", value)
        if isinstance(value, Tensor) and value.numel() > 1:
            raise ValueError(
                f"sigma_noise must be one number here, as in laplace-torch (homoscedastic); got "
                f"{value.numel()} values. A noise per output is laplacetorch.Laplace's"
            )
        return super()._checked_sigma_noise(value, fitted)

    def _checked_prior_precision(self, value: Tensor | float) -> Tensor:
        _real_or_tensor("prior_precision", value)
        return super()._checked_prior_precision(value)

    def _checked_prior_mean(self, value: Tensor | float) -> Tensor:
        _real_or_tensor("prior_mean", value)
        return super()._checked_prior_mean(value)

    @property
    def prior_mean(self) -> Tensor:
        """μ₀, always 1-D as in laplace-torch (``[1]`` for a scalar)."""
        return self.hyperparameters.prior_mean.reshape(-1)

    @prior_mean.setter
    def prior_mean(self, value: Tensor | float) -> None:
        NativeLaplace.prior_mean.fset(self, value)

    @property
    def backend(self) -> CurvatureInterface:
        """laplace-torch's ``la.backend``: an instance of the backend class (its Jacobian
        methods), on the model wrapped for its last layer's features where the subset is the
        last layer, with the subnetwork's indices where it is a subnetwork."""
        from .utils.feature_extractor import FeatureExtractor  # compat.utils imports this

        cls = self.backend_class or CurvlinopsGGN
        last = self.subset.kind == "last_layer"
        model = FeatureExtractor(self.model, self.subset.last_layer_name) if last else self.model
        return cls(
            model,
            self.likelihood.name,
            last_layer=last,
            subnetwork_indices=getattr(self, "subnetwork_indices", None),
            dict_key_x=self.dict_key_x,
            dict_key_y=self.dict_key_y,
        )

    @property
    def n_layers(self) -> int:
        """The number of Bayesian parameter tensors."""
        return self.subset.n_groups

    @property
    def n_outputs(self) -> int:
        """C."""
        return self._fitted().n_outputs

    @property
    def loss(self) -> Tensor:
        """The summed unit-scale loss over the training data (a 0-d tensor, as laplace-torch)."""
        return self._fitted().loss_sum.detach().clone()

    @property
    def likelihood(self) -> Likelihood:
        """The likelihood; laplace-torch lets it be reassigned by name (``la.likelihood =
        "regression"``), which takes effect from the next fit."""
        return self._likelihood

    @likelihood.setter
    def likelihood(self, value: Any) -> None:
        self._likelihood = get_likelihood(plain(value))

    def fit(self, train_loader: Iterable, override: bool = True, progress_bar: bool = False):
        """laplace-torch's ``fit``; mapping batches are passed to the model whole."""
        super().fit(WholeMappings(train_loader, self.dict_key_y), override, progress_bar)

    def optimize_prior_precision(
        self,
        pred_type: str = "glm",
        method: str = "marglik",
        n_steps: int = 100,
        lr: float = 1e-1,
        init_prior_prec: Tensor | float = 1.0,
        prior_structure: str = "scalar",
        val_loader: Iterable | None = None,
        loss: Callable[..., Tensor | float] | None = None,
        log_prior_prec_min: float = -4,
        log_prior_prec_max: float = 4,
        grid_size: int = 100,
        link_approx: str = "probit",
        n_samples: int = 100,
        verbose: bool = False,
        progress_bar: bool = False,
        log_prior_prec_base: float = 10.0,
    ) -> None:
        """laplace-torch's signature and defaults: marglik is Adam on log δ for ``n_steps``
        steps at ``lr`` from ``init_prior_prec``; gridsearch needs ``val_loader`` and, for
        regression, scores the MSE of the mean unless ``loss`` is given."""
        method, pred_type = plain(method), plain(pred_type)
        if method == "gridsearch":
            if val_loader is None:
                raise ValueError("gridsearch requires a validation set DataLoader")
            val_loader = WholeMappings(val_loader, self.dict_key_y)
            if loss is None and self.likelihood.has_noise:
                loss = _mse
        elif method != "marglik":
            raise ValueError("For now only marglik and gridsearch is implemented.")
        NativeLaplace.optimize_prior_precision(
            self,
            method=method,
            pred_type=pred_type,
            n_steps=n_steps,
            lr=lr,
            optimizer="adam",
            init_prior_prec=init_prior_prec,
            prior_structure=plain(prior_structure),
            val_loader=val_loader,
            loss=loss,
            log_prior_prec_min=log_prior_prec_min,
            log_prior_prec_max=log_prior_prec_max,
            grid_size=grid_size,
            log_prior_prec_base=log_prior_prec_base,
            link_approx=plain(link_approx),
            n_samples=n_samples,
            verbose=verbose,
            progress_bar=progress_bar,
        )

    def __call__(self, x: Any, pred_type: str = "glm", *args: Any, **kwargs: Any):
        """The native predictive with enum arguments accepted."""
        if "link_approx" in kwargs:
            kwargs["link_approx"] = plain(kwargs["link_approx"])
        return super().__call__(x, plain(pred_type), *args, **kwargs)


def _real_or_tensor(name: str, value: Any) -> None:
    """laplace-torch's rule for a hyperparameter: a real number or a tensor of at most one
    dimension, anything else a ``ValueError`` (its error type, not a TypeError)."""
    if isinstance(value, Tensor):
        if value.dim() > 1:
            raise ValueError(
                f"{name} must be a scalar or 1-D tensor; got shape {list(value.shape)}"
            )
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a real number or a tensor; got {type(value).__name__}")


def kron_options(damping: bool, options: dict[str, Any] | None) -> dict[str, Any]:
    if damping:
        raise ValueError(
            "damping=True approximates log det by damped Kronecker factors; laplacetorch "
            "computes the exact KFAC log-determinant (use damping=False)"
        )
    return {"joint_bias": False, **(options or {})}  # laplace-torch's separate W and b blocks


def _mse(mean: Tensor, y: Tensor) -> float:
    """laplace-torch's default grid-search loss for regression: the MSE of the mean."""
    return float((mean - y.reshape(mean.shape)).square().mean())


class ParametricLaplace(BaseLaplace):
    """laplace-torch's ``ParametricLaplace`` (a weight-space posterior)."""


class FullLaplace(ParametricLaplace):
    """All weights, a dense posterior precision."""

    _structure = "full"

    @property
    def posterior_precision(self) -> Tensor:
        """Π as a dense ``[P, P]`` tensor (laplace-torch's type)."""
        return PosteriorViews.posterior_precision.fget(self).to_dense()

    @property
    def posterior_covariance(self) -> Tensor:
        """Σ as a dense ``[P, P]`` tensor."""
        return PosteriorViews.posterior_covariance.fget(self).to_dense()

    @property
    def posterior_scale(self) -> Tensor:
        """A square root L (L Lᵀ = Σ) as a dense ``[P, P]`` tensor."""
        return PosteriorViews.posterior_scale.fget(self).to_dense()

    @property
    def H(self) -> Tensor:
        """G as a dense ``[P, P]`` tensor."""
        return PosteriorViews.H.fget(self).to_dense()


class DiagLaplace(ParametricLaplace):
    """All weights, a diagonal posterior precision."""

    _structure = "diag"

    @property
    def posterior_precision(self) -> Tensor:
        """diag Π, ``[P]`` (laplace-torch's type)."""
        return PosteriorViews.posterior_precision.fget(self).diagonal()

    @property
    def posterior_scale(self) -> Tensor:
        """√diag Σ, ``[P]``."""
        return self.posterior_variance.sqrt()

    @property
    def H(self) -> Tensor:
        """diag G, ``[P]``."""
        return self.structure.diagonal()


class KronPosterior(PosteriorMatrix):
    """A Kronecker-factored matrix with laplace-torch's ``KronDecomposed`` method names."""

    def to_matrix(self, exponent: float = 1) -> Tensor:
        """The dense ``[P, P]`` matrix, raised to ``exponent`` (laplace-torch's: −1 the
        inverse; through the dense matrix's eigendecomposition, small P only)."""
        dense = self.to_dense()
        if exponent == 1:
            return dense
        lam, q = torch.linalg.eigh(dense)
        return (q * lam.pow(exponent)) @ q.T

    def diag(self) -> Tensor:
        """The diagonal ``[P]``."""
        return self.diagonal()

    @property
    def eigenvalues(self) -> list[list[Tensor]]:
        """Per Kronecker block, the eigenvalues of its factors ``[λ_B, λ_A]`` (laplace-torch's
        layout; a diagonal block, ``[diag]``)."""
        return [p[1] for p in self._eigen()]

    @property
    def eigenvectors(self) -> list[list[Tensor]]:
        """Per Kronecker block, the factors' eigenvectors ``[Q_B, Q_A]``."""
        return [p[0] for p in self._eigen()]

    def _eigen(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        blocks = getattr(self.structure, "blocks", None) or [(None, None, self.structure)]
        out = []
        for _, _, blk in blocks:
            if hasattr(blk, "qb"):
                out.append(([blk.qb, blk.qa], [blk.lb, blk.la]))
            else:
                out.append(([], [blk.diagonal()]))
        return out


class KronLaplace(ParametricLaplace):
    """All weights, KFAC, with laplace-torch's layout (separate weight and bias blocks).

    ``damping=True`` (laplace-torch's damped-factor approximation of the log-determinant)
    is refused: the log-determinant here is the exact one of the KFAC matrix.
    """

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
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
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
            dict_key_x,
            dict_key_y,
            backend,
            backend_kwargs,
            asdl_fisher_kwargs,
            backend_options=kron_options(damping, native.pop("backend_options", None)),
            **native,
        )

    def _checked_prior_precision(self, value: Tensor | float) -> Tensor:
        t = super()._checked_prior_precision(value)
        if t.numel() == self.n_params and t.numel() != self.subset.n_groups:
            # laplace-torch's KFAC takes a scalar or one δ per layer (here: exact for either)
            raise ValueError(
                f"KronLaplace takes a scalar or one prior precision per parameter tensor "
                f"({self.subset.n_groups}), as laplace-torch; got one per weight ({t.numel()}). "
                "laplacetorch.Laplace(..., 'kfac') takes it, with the eigenbasis approximation"
            )
        return t

    @property
    def posterior_precision(self) -> KronPosterior:
        """Π as a Kronecker-factored matrix (the structure's blocks)."""
        return KronPosterior(self.structure, "precision", self.prior, self.scale())

    @property
    def H(self) -> KronPosterior:
        """G as a Kronecker-factored matrix."""
        return KronPosterior(self.structure, "curvature", self.prior, 1.0)


class LowRankLaplace(ParametricLaplace):
    """All weights, a low-rank plus diagonal posterior precision (laplacetorch's Lanczos)."""

    _structure = "lanczos"
