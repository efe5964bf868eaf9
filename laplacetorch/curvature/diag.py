"""``diag``: the exact GGN diagonal Σₙ Σₖ (Jₙᵀ sₙₖ)² (or the empirical Fisher's Σₙ gₙ²)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal
from .base import CurvatureResult, curvature_pass, resolve_fisher_type, zeros_like_theta
from .last_layer import last_layer_curvature
from .per_example import DEFAULT_MEMORY_BUDGET, per_example_factors

__all__ = ["fit_diag"]


def fit_diag(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    fisher_type: str = "exact",
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> CurvatureResult:
    """Exact diagonal of the unit-scale curvature in a :class:`Diagonal` structure.

    The K vector-Jacobian products Jₙᵀ sₙₖ of each example (vmap'd, one forward and K
    backward passes: about (1 + 2C)/3 gradient epochs) are squared and summed in chunks of at
    most ``memory_budget`` bytes; Jₙ as a ``[C, P]`` matrix of the whole batch never exists.
    For the last layer the closed form Σₙ Λₙ[c, c] φ̃ₙᵢ² is used.

    Args:
        fisher_type: ``"exact"`` (GGN) or ``"empirical"``.
        memory_budget: bytes a chunk of per-example rows may take.
    """
    kind = resolve_fisher_type(fisher_type, "diag")
    if subset.kind == "last_layer":
        g, n_data, n_out, loss = last_layer_curvature(
            subset,
            likelihood,
            loader,
            kind=kind,
            diagonal=True,
            progress=progress,
            memory_budget=memory_budget,
            batch_size_fn=batch_size_fn,
        )
        return CurvatureResult(Diagonal(g, subset.group_index), n_data, n_out, loss, kind, "diag")

    theta = subset.map_vector()

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        g = zeros_like_theta(subset, subset.n_params)
        loss = zeros_like_theta(subset)
        for rows, nll in per_example_factors(
            subset,
            likelihood,
            x,
            y,
            theta,
            kind=kind,
            n_outputs=n_out,
            n_examples=y.shape[0],
            memory_budget=memory_budget,
        ):
            g += rows.square().sum((0, 1))
            if nll is not None:
                loss += nll.sum()
        return {"G": g, "loss": loss}

    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        progress=progress,
        desc="diag curvature",
        batch_size_fn=batch_size_fn,
    )
    return CurvatureResult(
        Diagonal(sums["G"], subset.group_index), n_data, n_out, sums["loss"], kind, "diag"
    )
