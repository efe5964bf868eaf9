"""Choosing a subnetwork: which weights are Bayesian, as laplace-torch's ``SubnetMask``s.

Every selector returns ascending indices into ``parameters_to_vector(model.parameters())``
(``select(train_loader)``), which ``Laplace(..., "subnetwork", subnetwork=indices)`` takes.
The score-based ones keep the ``n_params_subnet`` weights of largest score: a random score
(seeded), the magnitude |θ|, the marginal variance under a diagonal Laplace, or that of
diagonal SWAG (Maddox et al. 2019); the name-based ones keep whole parameter tensors or
modules, or the last layer.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_count
from .datapass import BatchAdapter, prepare_inputs
from .model_call import call_model, model_output
from .params import find_last_linear

__all__ = [
    "LargestMagnitudeSubnetMask",
    "LargestVarianceDiagLaplaceSubnetMask",
    "LargestVarianceSWAGSubnetMask",
    "LastLayerSubnetMask",
    "ModuleNameSubnetMask",
    "ParamNameSubnetMask",
    "RandomSubnetMask",
    "ScoreBasedSubnetMask",
    "SubnetMask",
    "fit_diagonal_swag_var",
]


class SubnetMask(ABC):
    """A choice of Bayesian weights over ``parameters_to_vector(model.parameters())``."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.parameter_vector = nn.utils.parameters_to_vector(model.parameters()).detach()
        self._n_params = self.parameter_vector.numel()
        self._indices: Tensor | None = None

    @property
    def indices(self) -> Tensor:
        """The selected indices (after :meth:`select`)."""
        if self._indices is None:
            raise AttributeError("Subnetwork mask not selected. Run select() first.")
        return self._indices

    @property
    def n_params_subnet(self) -> int:
        """The number of selected weights."""
        return int(self.indices.numel())

    def select(self, train_loader: Iterable | None = None) -> Tensor:
        """Choose the subnetwork; ascending ``LongTensor`` indices."""
        if self._indices is not None:
            raise ValueError("Subnetwork mask already selected.")
        mask = self.get_subnet_mask(train_loader)
        if mask.dtype != torch.bool or mask.shape != (self._n_params,) or not mask.any():
            raise ValueError("a subnetwork mask must be a non-empty boolean [P] vector")
        self._indices = mask.nonzero().squeeze(-1).cpu()
        return self._indices

    @abstractmethod
    def get_subnet_mask(self, train_loader: Iterable | None) -> Tensor:
        """A boolean ``[P]`` mask of the chosen weights."""


class ScoreBasedSubnetMask(SubnetMask):
    """The ``n_params_subnet`` weights of largest :meth:`compute_param_scores`."""

    def __init__(self, model: nn.Module, n_params_subnet: int) -> None:
        super().__init__(model)
        if (
            isinstance(n_params_subnet, bool)
            or not isinstance(n_params_subnet, int)
            or not (0 < n_params_subnet <= self._n_params)
        ):
            raise ValueError(
                f"n_params_subnet must be an integer in [1, {self._n_params}]; got "
                f"{n_params_subnet!r}"
            )
        self._n_select = n_params_subnet

    @abstractmethod
    def compute_param_scores(self, train_loader: Iterable | None) -> Tensor:
        """One score per weight, ``[P]``."""

    def get_subnet_mask(self, train_loader: Iterable | None) -> Tensor:
        scores = self.compute_param_scores(train_loader)
        if scores.shape != (self._n_params,) or not torch.isfinite(scores).all():
            raise ValueError(f"parameter scores must be finite with shape [{self._n_params}]")
        top = torch.topk(scores, self._n_select).indices
        mask = torch.zeros(self._n_params, dtype=torch.bool, device=scores.device)
        mask[top] = True
        return mask


class RandomSubnetMask(ScoreBasedSubnetMask):
    """Uniformly random weights (``generator``; the global RNG is not touched)."""

    def __init__(
        self, model: nn.Module, n_params_subnet: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(model, n_params_subnet)
        self.generator = generator or torch.Generator().manual_seed(0)

    def compute_param_scores(self, train_loader: Iterable | None) -> Tensor:
        v = self.parameter_vector
        return torch.rand(v.shape, generator=self.generator, dtype=v.dtype).to(v.device)


class LargestMagnitudeSubnetMask(ScoreBasedSubnetMask):
    """The weights of largest |θ|."""

    def compute_param_scores(self, train_loader: Iterable | None) -> Tensor:
        return self.parameter_vector.abs()


class LargestVarianceDiagLaplaceSubnetMask(ScoreBasedSubnetMask):
    """The weights of largest marginal variance under a diagonal Laplace over all weights
    (fitted on ``train_loader`` here unless it is fitted already)."""

    def __init__(self, model: nn.Module, n_params_subnet: int, diag_laplace_model: Any) -> None:
        super().__init__(model, n_params_subnet)
        if getattr(diag_laplace_model, "hessian_structure", None) != "diag" or (
            getattr(getattr(diag_laplace_model, "subset", None), "kind", None) != "all"
        ):
            raise ValueError("diag_laplace_model must be a diagonal Laplace over all weights")
        self.diag_laplace_model = diag_laplace_model

    def compute_param_scores(self, train_loader: Iterable | None) -> Tensor:
        la = self.diag_laplace_model
        if la.curvature is None:
            if train_loader is None:
                raise ValueError("the diagonal Laplace needs train_loader to be fitted")
            la.fit(train_loader)
        if la.n_params != self._n_params:
            raise ValueError("the diagonal Laplace must cover every parameter of the model")
        return la.posterior_variance


class LargestVarianceSWAGSubnetMask(ScoreBasedSubnetMask):
    """The weights of largest diagonal-SWAG variance (:func:`fit_diagonal_swag_var`)."""

    def __init__(
        self,
        model: nn.Module,
        n_params_subnet: int,
        likelihood: str = "classification",
        swag_n_snapshots: int = 40,
        swag_snapshot_freq: int = 1,
        swag_lr: float = 0.01,
    ) -> None:
        super().__init__(model, n_params_subnet)
        likelihood = getattr(likelihood, "value", likelihood)
        if likelihood not in ("classification", "regression"):
            raise ValueError(
                f"likelihood must be 'classification' or 'regression'; got {likelihood!r}"
            )
        self.likelihood = likelihood
        self.swag_n_snapshots, self.swag_snapshot_freq = swag_n_snapshots, swag_snapshot_freq
        self.swag_lr = swag_lr

    def compute_param_scores(self, train_loader: Iterable | None) -> Tensor:
        if train_loader is None:
            raise ValueError("SWAG needs train_loader")
        criterion = nn.CrossEntropyLoss() if self.likelihood == "classification" else nn.MSELoss()
        return fit_diagonal_swag_var(
            self.model,
            train_loader,
            criterion,
            self.swag_n_snapshots,
            self.swag_snapshot_freq,
            self.swag_lr,
        )


def fit_diagonal_swag_var(
    model: nn.Module,
    train_loader: Iterable,
    criterion: nn.Module,
    n_snapshots_total: int = 40,
    snapshot_freq: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    min_var: float = 1e-30,
    dict_key_y: str = "labels",
) -> Tensor:
    """Diagonal SWAG: the variance E[θ²] − E[θ]² of SGD iterates at a large learning rate,
    one snapshot every ``snapshot_freq`` epochs, on a copy of the model (``[P]``, clamped
    below at ``min_var``)."""
    for name, value in (("n_snapshots_total", n_snapshots_total), ("snapshot_freq", snapshot_freq)):
        check_count(name, value)
    copy_ = copy.deepcopy(model).train()
    p0 = next(copy_.parameters())
    opt = torch.optim.SGD(copy_.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    mean = torch.zeros_like(nn.utils.parameters_to_vector(copy_.parameters()).detach())
    sq_mean = torch.zeros_like(mean)
    n = 0
    for epoch in range(snapshot_freq * n_snapshots_total):
        for x, y in BatchAdapter(train_loader, dict_key_y):
            x = prepare_inputs(x, p0.device, p0.dtype)
            opt.zero_grad()
            criterion(model_output(call_model(copy_, x)), y.to(p0.device)).backward()
            opt.step()
        if epoch % snapshot_freq == 0:
            theta = nn.utils.parameters_to_vector(copy_.parameters()).detach()
            mean = mean * (n / (n + 1)) + theta / (n + 1)
            sq_mean = sq_mean * (n / (n + 1)) + theta.square() / (n + 1)
            n += 1
    return (sq_mean - mean.square()).clamp_min(min_var)


class ParamNameSubnetMask(SubnetMask):
    """Whole parameter tensors by name."""

    def __init__(self, model: nn.Module, parameter_names: list[str]) -> None:
        super().__init__(model)
        names = dict(model.named_parameters())
        unknown = [n for n in parameter_names if n not in names]
        if not parameter_names or unknown:
            raise ValueError(
                f"parameter_names must name parameters of the model; unknown: {unknown}, "
                f"known: {list(names)[:8]}"
            )
        self._names = list(parameter_names)

    def get_subnet_mask(self, train_loader: Iterable | None) -> Tensor:
        chunks = [
            torch.full((p.numel(),), n in self._names, dtype=torch.bool)
            for n, p in self.model.named_parameters()
        ]
        return torch.cat(chunks)


class ModuleNameSubnetMask(SubnetMask):
    """Every parameter of the named modules."""

    def __init__(self, model: nn.Module, module_names: list[str]) -> None:
        super().__init__(model)
        modules = dict(model.named_modules())
        unknown = [n for n in module_names if n not in modules]
        if not module_names or unknown:
            raise ValueError(f"module_names must name modules of the model; unknown: {unknown}")
        self._module_names = list(module_names)

    def get_subnet_mask(self, train_loader: Iterable | None) -> Tensor:
        modules = dict(self.model.named_modules())
        wanted = {id(p) for m in self._module_names for p in modules[m].parameters()}
        return torch.cat(
            [
                torch.full((p.numel(),), id(p) in wanted, dtype=torch.bool)
                for p in self.model.parameters()
            ]
        )


class LastLayerSubnetMask(ModuleNameSubnetMask):
    """The last ``nn.Linear`` (or ``last_layer_name``)."""

    def __init__(self, model: nn.Module, last_layer_name: str | None = None) -> None:
        name, _ = find_last_linear(model, last_layer_name)
        super().__init__(model, [name])
