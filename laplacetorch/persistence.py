"""Saving and restoring a fitted Laplace approximation without refitting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .curvature import CurvatureResult
from .datapass import InputSpec
from .structures import structure_from_state_dict

if TYPE_CHECKING:
    from .laplace import Laplace

__all__ = ["STATE_FORMAT", "laplace_state", "load_laplace_state"]

#: the layout of a saved state; 2: structures as blocks (BlockDiagonal, layer layouts);
#: 3: prior groups are parameter tensors (laplace-torch's "layerwise"), not modules
STATE_FORMAT = 3


def laplace_state(la: Laplace) -> dict[str, Any]:
    """The state of a fitted :class:`~laplacetorch.Laplace`: identity of the model, subset,
    likelihood and structure, the decomposed curvature, θ*, the hyperparameters."""
    c = la._fitted()
    return {
        "format": STATE_FORMAT,
        "likelihood": la.likelihood.name,
        "hessian_structure": la.hessian_structure,
        "subset": la.subset.signature(),
        "structure": c.structure.state_dict(),
        "n_data": c.n_data,
        "n_outputs": c.n_outputs,
        "loss_sum": c.loss_sum.detach().cpu(),
        "kind": c.kind,
        "mean": la.mean.cpu(),
        "prior_precision": la.prior_precision.cpu(),
        "prior_mean": la.prior_mean.cpu(),
        "sigma_noise": la.sigma_noise.cpu(),
        "temperature": la.temperature,
        "input_shape": la.inputs.shape,
        "keyword_inputs": la.inputs.keyword,
    }


def load_laplace_state(la: Laplace, state: dict[str, Any]) -> None:
    """Install ``state`` into ``la``.

    Raises:
        ValueError: when the state belongs to another likelihood, structure or model/subset,
            or was saved in another format (then nothing is changed).
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format", "1 (no format entry)") if isinstance(state, dict) else None
        raise ValueError(
            f"state has format {got}; this laplacetorch reads format {STATE_FORMAT} (structures "
            "as blocks, one prior group per parameter tensor): fit again and save a new state"
        )
    for key, mine in (
        ("likelihood", la.likelihood.name),
        ("hessian_structure", la.hessian_structure),
        ("subset", la.subset.signature()),
    ):
        if state.get(key) != mine:
            raise ValueError(
                f"state does not match this Laplace object: {key} is {state.get(key)!r}, "
                f"expected {mine!r}"
            )
    dev, dt = la.subset.device, la.subset.dtype
    structure = structure_from_state_dict(state["structure"], device=dev, dtype=dt)
    la.curvature = CurvatureResult(
        structure,
        state["n_data"],
        state["n_outputs"],
        state["loss_sum"].to(dev, dt),
        state["kind"],
    )
    la.mean = state["mean"].to(dev, dt)
    la.prior_precision = state["prior_precision"]
    la.prior_mean = state["prior_mean"]
    la.sigma_noise = state["sigma_noise"]
    la.temperature = state["temperature"]
    la.inputs = InputSpec(
        la.dict_key_y, state["input_shape"], bool(state.get("keyword_inputs", False))
    )
