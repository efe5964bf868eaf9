"""What every curvature backend shares: the result type, Fisher types and the data pass."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..datapass import accumulate
from ..likelihoods import Likelihood
from ..params import ParameterSubset, check_model_mode
from ..structures import Structure
from .context import DEFAULT_CONTEXT, FitContext
from .first_batch import check_first_batch

__all__ = ["FISHER_TYPES", "CurvatureResult", "curvature_pass", "resolve_fisher_type"]

#: accepted curvature types -> the curvature they give ("ggn": Σ JᵀΛJ, "ef": Σ g gᵀ, "hessian":
#: ∇²θ Σ ℓ, for the backends that take it)
FISHER_TYPES = {
    "exact": "ggn",
    "ggn": "ggn",
    "mc": "ggn",  # the Monte-Carlo Fisher estimates the GGN (and scales like it)
    "empirical": "ef",
    "ef": "ef",
    "hessian": "hessian",
}


def resolve_fisher_type(fisher_type: str, backend: str) -> str:
    """Map a curvature type name to ``"ggn"``, ``"ef"`` or ``"hessian"``, refusing unknown
    names and those the registry entry of ``backend`` does not list (a name outside the
    registry, such as the internal GGN operator, takes every type)."""
    from .registry import BACKENDS, check_fisher_type  # the registry imports every backend

    if backend in BACKENDS:
        check_fisher_type(backend, fisher_type)
    elif fisher_type not in FISHER_TYPES:
        raise ValueError(
            f"unknown fisher_type {fisher_type!r} for {backend!r}; expected one of "
            f"{sorted(FISHER_TYPES)}"
        )
    return FISHER_TYPES[fisher_type]


@dataclass
class CurvatureResult:
    """A fitted curvature: the structure plus what the marginal likelihood needs.

    Attributes:
        structure: holds the unit-scale curvature G of the summed NLL (no prior).
        n_data: N, the number of training examples.
        n_outputs: C.
        loss_sum: Σₙ unit-scale NLL at θ* (see ``Likelihood.log_likelihood_from_loss``).
        kind: ``"ggn"`` or ``"ef"``; decides how G scales with σ and T.
        prior_factor: c in the prior P₀ = c·diag(δ) this fit's posterior and evidence use
            (laplace-torch's subset-of-data GP: N/M; 1 otherwise; see :class:`~.prior.Prior`).
    """

    structure: Structure
    n_data: int
    n_outputs: int
    loss_sum: Tensor
    kind: str
    prior_factor: float = 1.0


def curvature_pass(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    step: Callable[[Any, Tensor, int], dict[str, Tensor]],
    context: FitContext = DEFAULT_CONTEXT,
    *,
    desc: str = "curvature",
) -> tuple[dict[str, Tensor], int, int]:
    """Check the model, run ``step(x, y, C)`` over the data and return ``(sums, N, C)``,
    with ``context``'s progress bar and example count.

    Targets are validated against the output shape before ``step`` sees them, and the
    fit's peak with the batch's size is checked (``context.memory_check``) before ``step``
    forms any output column: on the first batch, and on any larger one.
    """
    check_model_mode(subset.model)
    subset.check_weights()
    state: dict[str, int] = {}

    def checked_step(x: Any, y: Tensor) -> dict[str, Tensor]:
        b = y.shape[0]
        if "C" not in state:
            state["C"] = check_first_batch(subset, likelihood, x, b, y)
        if context.memory_check is not None and b > state.get("checked", 0):
            context.memory_check(b, state["C"])
            state["checked"] = b
        y = likelihood.check_targets(y, (b, state["C"]))
        out = step(x, y, state["C"])
        # C·b summed: C on every rank, also one whose shard is empty
        out["_outputs_times_n"] = torch.tensor(float(state["C"] * b), device=subset.device)
        out["_terms"] = torch.tensor(float(likelihood.n_terms(y)), device=subset.device)
        return out

    sums = accumulate(
        loader,
        checked_step,
        device=subset.device,
        dtype=subset.input_dtype,
        progress=context.progress,
        desc=desc,
        batch_size_fn=context.batch_size_fn,
    )
    n_data = int(sums.pop("n_data"))
    n_out = round(float(sums.pop("_outputs_times_n")) / n_data)
    if float(sums.pop("_terms")) == 0:
        warnings.warn(
            f"{desc}: no likelihood term in the data: every target is ignore_index, so the "
            "curvature is zero and the posterior is the prior; check the targets' padding",
            UserWarning,
            stacklevel=3,
        )
    return sums, n_data, state.get("C", n_out)


def zeros_like_theta(subset: ParameterSubset, *shape: int) -> Tensor:
    """A zero accumulator on the model's device and dtype."""
    return torch.zeros(shape, dtype=subset.dtype, device=subset.device)
