"""Saving and restoring a fitted Laplace approximation without refitting.

A state is plain tensors, numbers, strings and lists (``torch.load(weights_only=True)``
reads it). Loading validates every entry before it changes anything, so a corrupt, foreign
or truncated state leaves the object as it was. The state carries θ* and a fingerprint of
it; the object refuses to predict while the model's Bayesian weights differ from θ* (see
:func:`check_weights_at_mean`), since the curvature belongs to θ* alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .state import FittedState, fingerprint

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
#: 4: θ*'s fingerprint; 5: the fit's prior factor c (P₀ = c·diag(δ)) beside the structure;
#: 6: the subset's signature names its subnetwork mask (a hash) and the modules' types (a
#: format-5 state loads, but a subnetwork's: its mask cannot be checked)
STATE_FORMAT = 6


class WeightsChangedError(ValueError):
    """The model's Bayesian weights are not θ*, the weights the curvature was fitted at."""


def check_weights_at_mean(la: Laplace) -> None:
    """Refuse to go on when the model's Bayesian weights differ from θ* of the fit.

    Raises:
        WeightsChangedError: the model was trained on after ``fit``, or a state was loaded
            into a model with other weights; ``la.restore_weights()`` writes θ* back.
    """
    sub, mean = la.subset, la.mean
    if mean.dtype != sub.dtype or mean.device != sub.device:  # model.double(), model.to(...)
        raise TypeError(
            f"the model's Bayesian weights are now {sub.weight_dtype} on {sub.device}, but the "
            f"fit was of weights in {mean.dtype} on {mean.device}: move the model back "
            f"(model.to({mean.dtype})) or fit again"
        )
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
    likelihood and structure, its :class:`~laplacetorch.state.FittedState` and the
    hyperparameters."""
    la._fitted()
    h = la.hyperparameters
    return {
        "format": STATE_FORMAT,
        "likelihood": la.likelihood.identity,
        "hessian_structure": la.hessian_structure,
        "subset": la.subset.signature(),
        **la.fitted_state.state_dict(),
        "prior_precision": h.prior_precision.cpu(),
        "prior_mean": h.prior_mean.cpu(),
        "sigma_noise": h.sigma_noise.cpu(),
        "temperature": h.temperature,
    }


_IDENTITY = ("likelihood", "hessian_structure", "subset")
_HYPERPARAMETERS = ("prior_precision", "prior_mean", "sigma_noise", "temperature")


def _upgraded(la: Laplace, state: Any) -> Any:
    """A format-5 state as format 6 (a shallow copy): its subset signature lacks only the
    module types and the subnetwork mask, taken from this object where no mask is involved;
    a subnetwork state of format 5 has no mask to check and is left to be refused."""
    if not isinstance(state, dict) or state.get("format") != 5:
        return state
    sig = state.get("subset")
    if not isinstance(sig, dict) or sig.get("kind") == "subnetwork":
        return state
    mine = la.subset.signature()
    return {**state, "format": STATE_FORMAT, "subset": {**sig, "modules": mine["modules"],
                                                         "mask": None}}  # fmt: skip


def _check_identity(la: Laplace, state: Any) -> None:
    """Refuse a state of another format, likelihood, structure or model/subset."""
    if not isinstance(state, dict):
        hint = " (a path: pass torch.load(path))" if isinstance(state, str | Path) else ""
        raise TypeError(
            f"state must be the dict of la.state_dict(); got {type(state).__name__}{hint}"
        )
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format", "1 (no format entry)") if isinstance(state, dict) else None
        raise ValueError(
            f"state has format {got}; this laplacetorch reads format {STATE_FORMAT} (structures "
            "as blocks, one prior group per parameter tensor, θ*'s fingerprint, the fit's prior "
            "factor, the subnetwork mask's hash): fit again and save a new state"
        )
    missing = [k for k in (*_IDENTITY, *_HYPERPARAMETERS) if k not in state]
    if missing:
        raise ValueError(f"state lacks entries {missing}; it is truncated or not a Laplace state")
    for key, mine in zip(
        _IDENTITY,
        (la.likelihood.identity, la.hessian_structure, la.subset.signature()),
        strict=True,
    ):
        if state[key] != mine:
            theirs = state[key]
            if isinstance(theirs, dict) and isinstance(mine, dict):  # say which entry differs
                diff = [k for k in {**mine, **theirs} if theirs.get(k) != mine.get(k)]
                raise ValueError(
                    f"state does not match this Laplace object: its {key} differs in {diff}: "
                    + "; ".join(f"{k} {theirs.get(k)!r}, expected {mine.get(k)!r}" for k in diff)
                    + (" (another subnetwork of the same size)" if diff == ["mask"] else "")
                )
            raise ValueError(
                f"state does not match this Laplace object: {key} is {theirs!r}, expected {mine!r}"
            )
    for key in _HYPERPARAMETERS[:3]:
        if not isinstance(state[key], Tensor):
            raise TypeError(
                f"state entry {key!r} must be a tensor; got {type(state[key]).__name__}"
            )


def load_laplace_state(la: Laplace, state: dict[str, Any], restore_weights: bool = False) -> None:
    """Install ``state`` into ``la``; all or nothing: the fitted state and the
    hyperparameters are checked whole, then installed together.

    Args:
        restore_weights: also write θ* of the state into the model's Bayesian weights (a
            state loaded into a freshly built model); without it, predicting with weights
            that differ from θ* is refused.

    Raises:
        ValueError, TypeError: a state of another likelihood, structure or model/subset, of
            another format, truncated, or with an entry out of its domain. Nothing is changed.
    """
    state = _upgraded(la, state)
    _check_identity(la, state)
    sub = la.subset
    fitted = FittedState.from_state_dict(state, sub.n_params, sub.device, sub.dtype, la.dict_key_y)
    hyper = la._checked_hyperparameters(*(state[k] for k in _HYPERPARAMETERS), fitted)
    la._install(fitted, hyper)
    if restore_weights:
        la.restore_weights()
