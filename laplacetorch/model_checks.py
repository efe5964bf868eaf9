"""Checks of the user's model that come before any curvature: its mode and its weights.

The behaviour of the model on data (deterministic, batch-independent, outputs the
likelihood can take) is checked on the first batch of a fit, in
:mod:`laplacetorch.curvature.first_batch`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_dtypes_and_devices", "check_model_mode"]

_WEIGHT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_STOCHASTIC_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def check_model_mode(model: nn.Module) -> None:
    """Refuse a model whose output depends on training mode while it is in training mode.

    Raises:
        ValueError: if a Dropout or BatchNorm module is in training mode.
    """
    offenders = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, _STOCHASTIC_IN_TRAINING)
    ]
    if offenders:
        raise ValueError(
            "model is in training mode with Dropout/BatchNorm modules "
            f"({', '.join(offenders[:5])}); the curvature would be random or use batch "
            "statistics. Call model.eval() first."
        )


def check_dtypes_and_devices(params: dict[str, nn.Parameter]) -> None:
    """Bayesian weights in one floating dtype (float64, float32, or bfloat16 / float16, whose
    statistics are kept in float32), on one real device."""
    dtypes = {p.dtype for p in params.values()}
    devices = {p.device for p in params.values()}
    if len(dtypes) > 1 or len(devices) > 1:
        seen = sorted({f"{p.dtype} on {p.device}" for p in params.values()})
        raise ValueError(
            f"the Bayesian weights must share one dtype and one device; got {seen}: move the "
            "model with model.to(device, dtype) first"
        )
    (dtype,), (device,) = dtypes, devices
    if dtype not in _WEIGHT_DTYPES:
        raise TypeError(
            f"the Bayesian weights have dtype {dtype}; expected one of "
            f"{[str(d) for d in _WEIGHT_DTYPES]}"
        )
    if device.type == "meta":
        raise ValueError("the model's weights are on the meta device: load its weights first")


def check_not_meta(model: nn.Module) -> None:
    """Refuse a model with any parameter or buffer on the meta device (built without its
    weights): the Bayesian weights may be real while the body is not, and every forward
    would then fail deep inside torch."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.device.type == "meta":
                raise ValueError(
                    f"the model's {kind} {name!r} is on the meta device (shape "
                    f"{list(t.shape)}, no values): load the model's weights first "
                    "(model.to_empty(device=...) then load_state_dict)"
                )
