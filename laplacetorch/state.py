"""What a fit produced, declared and typed: the one thing persistence saves and restores.

:class:`FittedState` holds the backend's result (the structure with the unit-scale curvature
G, N, C, the summed loss at θ*, the curvature kind and the prior's factor), θ* itself and
what the training inputs looked like. It is replaced whole by ``fit`` and by
``load_state_dict``; nothing else about a fit lives on the Laplace object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import check_count
from .curvature import CurvatureResult
from .datapass import InputSpec
from .structures import structure_from_state_dict

__all__ = ["KINDS", "FittedState", "fingerprint"]

#: the curvature kinds a state may hold
KINDS = ("ggn", "ef", "hessian")


def fingerprint(theta: Tensor) -> str:
    """SHA-256 of θ's bytes (dtype included): equal exactly when θ is bit-identical."""
    t = theta.detach().contiguous().cpu()
    h = hashlib.sha256(str(t.dtype).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class FittedState:
    """A fitted Laplace approximation without its hyperparameters.

    Attributes:
        curvature: what the backend returned (structure, N, C, loss, kind, prior factor).
        mean: θ* ``[P]``, the weights the curvature belongs to.
        inputs: the training inputs' per-example shape, keyword-ness and dtype kind.
    """

    curvature: CurvatureResult
    mean: Tensor
    inputs: InputSpec

    def merged(self, new: CurvatureResult) -> FittedState:
        """The state after adding the data of ``new`` (fitted at the same θ*).

        Raises:
            ValueError: another number of outputs or another curvature kind.
            TypeError: a structure that cannot take more data exactly.
        """
        old = self.curvature
        if new.n_outputs != old.n_outputs or new.kind != old.kind:
            raise ValueError(
                f"the new data gives {new.n_outputs} outputs ({new.kind}); the first fit "
                f"had {old.n_outputs} ({old.kind})"
            )
        curvature = CurvatureResult(
            old.structure.merged(new.structure, old.n_data, new.n_data),
            old.n_data + new.n_data,
            old.n_outputs,
            old.loss_sum + new.loss_sum,
            old.kind,
            old.prior_factor,
        )
        return FittedState(curvature, self.mean, self.inputs)

    def state_dict(self) -> dict[str, Any]:
        """The state as plain tensors, numbers and strings."""
        c, mean = self.curvature, self.mean.detach().cpu()
        return {
            "structure": c.structure.state_dict(),
            "n_data": c.n_data,
            "n_outputs": c.n_outputs,
            "loss_sum": c.loss_sum.detach().cpu(),
            "kind": c.kind,
            "prior_factor": c.prior_factor,
            "mean": mean,
            "mean_fingerprint": fingerprint(mean),
            "input_shape": self.inputs.shape,
            "keyword_inputs": self.inputs.keyword,
            "input_floating": self.inputs.floating,
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        n_params: int,
        device: torch.device,
        dtype: torch.dtype,
        dict_key_y: str = "labels",
    ) -> FittedState:
        """Every entry of ``state`` checked and converted; raises before anything is built.

        Raises:
            TypeError, ValueError: an entry missing, of another type or out of its domain.
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"state lacks entries {missing}; it is truncated or not a Laplace state"
            )
        for key in ("mean", "loss_sum"):
            if not isinstance(state[key], Tensor):
                raise TypeError(
                    f"state entry {key!r} must be a tensor; got {type(state[key]).__name__}"
                )
        mean = _checked_mean(state, n_params)
        loss_sum = state["loss_sum"]
        n_out = state["n_outputs"]
        per_output = loss_sum.dim() == 1 and loss_sum.numel() == n_out and n_out > 1
        if (loss_sum.numel() != 1 and not per_output) or not torch.isfinite(loss_sum).all():
            raise ValueError(
                "state entry 'loss_sum' must be one finite number (or one per output, for a "
                f"fit with a noise per output); got {loss_sum}"
            )
        if state["kind"] not in KINDS:
            raise ValueError(f"state entry 'kind' must be one of {KINDS}; got {state['kind']!r}")
        structure = structure_from_state_dict(state["structure"], device=device, dtype=dtype)
        if structure.n_params != n_params:
            raise ValueError(
                f"state's structure has {structure.n_params} parameters; expected {n_params}"
            )
        if structure.output_scales > 1 and structure.output_scales != loss_sum.numel():
            raise ValueError(
                f"state's structure keeps {structure.output_scales} per-output curvatures but "
                f"its loss_sum has {loss_sum.numel()} entries"
            )
        curvature = CurvatureResult(
            structure,
            check_count("state entry 'n_data'", state["n_data"]),
            check_count("state entry 'n_outputs'", state["n_outputs"]),
            loss_sum.reshape(() if loss_sum.numel() == 1 else (-1,)).to(device, dtype, copy=True),
            state["kind"],
            _positive_float(state, "prior_factor"),
        )
        # copies: the state owns its tensors (editing the dict afterwards changes nothing)
        return cls(curvature, mean.to(device, dtype, copy=True), _inputs(state, dict_key_y))


#: the entries :meth:`FittedState.state_dict` writes
STATE_KEYS = (
    "structure",
    "n_data",
    "n_outputs",
    "loss_sum",
    "kind",
    "prior_factor",
    "mean",
    "mean_fingerprint",
    "input_shape",
    "keyword_inputs",
    "input_floating",
)


def _checked_mean(state: dict[str, Any], n_params: int) -> Tensor:
    mean = state["mean"]
    if mean.shape != (n_params,) or not mean.is_floating_point() or not torch.isfinite(mean).all():
        raise ValueError(
            f"state entry 'mean' must be {n_params} finite weights; got {mean.dtype} "
            f"of shape {list(mean.shape)}"
        )
    if fingerprint(mean) != state["mean_fingerprint"]:
        raise ValueError("state entry 'mean' does not match its fingerprint: the state is corrupt")
    return mean


def _inputs(state: dict[str, Any], dict_key_y: str) -> InputSpec:
    shape = state["input_shape"]
    if shape is not None and (
        not isinstance(shape, tuple | list) or not all(isinstance(s, int) for s in shape)
    ):
        raise ValueError(f"state entry 'input_shape' must be a tuple of ints; got {shape!r}")
    floating = state["input_floating"]
    return InputSpec(
        dict_key_y,
        None if shape is None else tuple(shape),
        bool(state["keyword_inputs"]),
        None if floating is None else bool(floating),
    )


def _positive_float(state: dict[str, Any], key: str) -> float:
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf"):
        raise ValueError(f"state entry {key!r} must be a positive finite number; got {v!r}")
    return float(v)
