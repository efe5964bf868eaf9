"""Saving and restoring a fitted Laplace approximation without refitting.

A state is plain tensors, numbers, strings and lists (``torch.load(weights_only=True)``
reads it). Loading validates every entry before it changes anything, so a corrupt, foreign
or truncated state leaves the object as it was. The state carries θ* and a fingerprint of
it; the object refuses to predict while the model's Bayesian weights differ from θ* (see
:func:`check_weights_at_mean`), since the curvature belongs to θ* alone.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .curvature import CurvatureResult
from .datapass import InputSpec
from .structures import structure_from_state_dict

if TYPE_CHECKING:
    from .laplace import Laplace

__all__ = [
    "STATE_FORMAT",
    "WeightsChangedError",
    "check_weights_at_mean",
    "fingerprint",
    "laplace_state",
    "load_laplace_state",
]

#: the layout of a saved state; 2: structures as blocks (BlockDiagonal, layer layouts);
#: 3: prior groups are parameter tensors (laplace-torch's "layerwise"), not modules;
#: 4: θ*'s fingerprint; 5: the fit's prior factor c (P₀ = c·diag(δ)) beside the structure
STATE_FORMAT = 5

_KINDS = ("ggn", "ef", "hessian")


class WeightsChangedError(ValueError):
    """The model's Bayesian weights are not θ*, the weights the curvature was fitted at."""


def fingerprint(theta: Tensor) -> str:
    """SHA-256 of θ's bytes (dtype included): equal exactly when θ is bit-identical."""
    t = theta.detach().contiguous().cpu()
    h = hashlib.sha256(str(t.dtype).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_weights_at_mean(la: Laplace) -> None:
    """Refuse to go on when the model's Bayesian weights differ from θ* of the fit.

    Raises:
        WeightsChangedError: the model was trained on after ``fit``, or a state was loaded
            into a model with other weights; ``la.restore_weights()`` writes θ* back.
    """
    if la.subset.weights_equal(la.mean):
        return
    live = la.subset.map_vector()
    gap = float((live - la.mean.to(live)).abs().max()) if live.shape == la.mean.shape else None
    seen = f"max |θ − θ*| = {gap:.3g}" if gap is not None else f"{live.numel()} weights"
    raise WeightsChangedError(
        f"the model's Bayesian weights are not θ* of the fit ({seen}): the curvature belongs "
        "to θ*. The model was trained on after fit(), or a state was loaded into a model with "
        "other weights. Call la.restore_weights() to write θ* back into the model, or fit again"
    )


def laplace_state(la: Laplace) -> dict[str, Any]:
    """The state of a fitted :class:`~laplacetorch.Laplace`: identity of the model, subset,
    likelihood and structure, the decomposed curvature, θ* and its fingerprint, the
    hyperparameters."""
    c = la._fitted()
    mean = la.mean.detach().cpu()
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
        "prior_factor": c.prior_factor,
        "mean": mean,
        "mean_fingerprint": fingerprint(mean),
        "prior_precision": la.prior_precision.cpu(),
        "prior_mean": la.prior_mean.cpu(),
        "sigma_noise": la.sigma_noise.cpu(),
        "temperature": la.temperature,
        "input_shape": la.inputs.shape,
        "keyword_inputs": la.inputs.keyword,
        "input_floating": la.inputs.floating,
    }


_REQUIRED = (
    "likelihood",
    "hessian_structure",
    "subset",
    "structure",
    "n_data",
    "n_outputs",
    "loss_sum",
    "kind",
    "prior_factor",
    "mean",
    "mean_fingerprint",
    "prior_precision",
    "prior_mean",
    "sigma_noise",
    "temperature",
    "input_shape",
    "keyword_inputs",
    "input_floating",
)

#: the attributes a load replaces, restored together when any entry is refused
_ATTRIBUTES = (
    "curvature",
    "mean",
    "_prior_precision",
    "_prior_mean",
    "_sigma_noise",
    "_temperature",
    "inputs",
)


def _positive_int(state: dict[str, Any], key: str) -> int:
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"state entry {key!r} must be a positive integer; got {v!r}")
    return v


def _positive_float(state: dict[str, Any], key: str) -> float:
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
        raise ValueError(f"state entry {key!r} must be a positive finite number; got {v!r}")
    return float(v)


def _parse(la: Laplace, state: dict[str, Any]) -> dict[str, Any]:
    """Every entry of ``state`` checked and converted; raises before anything is changed."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format", "1 (no format entry)") if isinstance(state, dict) else None
        raise ValueError(
            f"state has format {got}; this laplacetorch reads format {STATE_FORMAT} (structures "
            "as blocks, one prior group per parameter tensor, θ*'s fingerprint, the fit's prior "
            "factor): fit again and save a new state"
        )
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"state lacks entries {missing}; it is truncated or not a Laplace state")
    for key, mine in (
        ("likelihood", la.likelihood.name),
        ("hessian_structure", la.hessian_structure),
        ("subset", la.subset.signature()),
    ):
        if state[key] != mine:
            raise ValueError(
                f"state does not match this Laplace object: {key} is {state[key]!r}, "
                f"expected {mine!r}"
            )
    dev, dt, p = la.subset.device, la.subset.dtype, la.n_params
    for key in ("mean", "loss_sum", "prior_precision", "prior_mean", "sigma_noise"):
        if not isinstance(state[key], Tensor):
            raise TypeError(
                f"state entry {key!r} must be a tensor; got {type(state[key]).__name__}"
            )
    mean = state["mean"]
    if mean.shape != (p,) or not mean.is_floating_point() or not torch.isfinite(mean).all():
        raise ValueError(
            f"state entry 'mean' must be {p} finite weights; got {mean.dtype} "
            f"of shape {list(mean.shape)}"
        )
    if fingerprint(mean) != state["mean_fingerprint"]:
        raise ValueError("state entry 'mean' does not match its fingerprint: the state is corrupt")
    loss_sum = state["loss_sum"]
    if loss_sum.numel() != 1 or not torch.isfinite(loss_sum).all():
        raise ValueError(f"state entry 'loss_sum' must be one finite number; got {loss_sum}")
    if state["kind"] not in _KINDS:
        raise ValueError(f"state entry 'kind' must be one of {_KINDS}; got {state['kind']!r}")
    shape = state["input_shape"]
    if shape is not None and (
        not isinstance(shape, tuple | list) or not all(isinstance(s, int) for s in shape)
    ):
        raise ValueError(f"state entry 'input_shape' must be a tuple of ints; got {shape!r}")
    structure = structure_from_state_dict(state["structure"], device=dev, dtype=dt)
    if structure.n_params != p:
        raise ValueError(f"state's structure has {structure.n_params} parameters; expected {p}")
    return {
        "curvature": CurvatureResult(
            structure,
            _positive_int(state, "n_data"),
            _positive_int(state, "n_outputs"),
            loss_sum.reshape(()).to(dev, dt),
            state["kind"],
            _positive_float(state, "prior_factor"),
        ),
        "mean": mean.to(dev, dt),
        "inputs": InputSpec(
            la.dict_key_y,
            None if shape is None else tuple(shape),
            bool(state["keyword_inputs"]),
            None if state["input_floating"] is None else bool(state["input_floating"]),
        ),
    }


def load_laplace_state(la: Laplace, state: dict[str, Any], restore_weights: bool = False) -> None:
    """Install ``state`` into ``la``; all or nothing.

    Args:
        restore_weights: also write θ* of the state into the model's Bayesian weights (a
            state loaded into a freshly built model); without it, predicting with weights
            that differ from θ* is refused.

    Raises:
        ValueError, TypeError: a state of another likelihood, structure or model/subset, of
            another format, truncated, or with an entry out of its domain. Nothing is changed.
    """
    parsed = _parse(la, state)
    old = {k: la.__dict__.get(k) for k in _ATTRIBUTES}
    try:  # the hyperparameters' own setters validate them
        la.prior_precision = state["prior_precision"]
        la.prior_mean = state["prior_mean"]
        la.sigma_noise = state["sigma_noise"]
        la.temperature = state["temperature"]
    except (TypeError, ValueError):
        la.__dict__.update(old)
        raise
    la.curvature, la.mean, la.inputs = parsed["curvature"], parsed["mean"], parsed["inputs"]
    if restore_weights:
        la.restore_weights()
