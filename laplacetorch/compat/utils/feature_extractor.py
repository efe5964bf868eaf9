"""laplace-torch's ``FeatureExtractor``: a model's output together with its last layer's
(reduced) input features."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...model_call import call_model, model_output
from ...params import find_last_linear
from ...subset_inputs import FEATURE_REDUCTIONS, reduce_features
from ..enums import FeatureReduction, plain

__all__ = ["FeatureExtractor", "FeatureReduction"]


class FeatureExtractor(nn.Module):
    """Wraps ``model``; :meth:`forward_with_features` also returns the features φ(x) fed to
    the last ``nn.Linear`` (or ``last_layer_name``), reduced over positions by
    ``feature_reduction`` (then the output is the last layer applied to the reduced φ).

    Args:
        model: the network. last_layer_name: its last layer (default: the last Linear).
        enable_backprop: keep the graph of the features (else they are detached).
        feature_reduction: ``"pick_first"``, ``"pick_last"``, ``"average"`` or ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        last_layer_name: str | None = None,
        enable_backprop: bool = False,
        feature_reduction: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        self._last_layer_name, self.last_layer = find_last_linear(model, last_layer_name)
        self.enable_backprop = enable_backprop
        reduction = plain(feature_reduction)
        if reduction is not None and reduction not in FEATURE_REDUCTIONS:
            raise ValueError(f"feature_reduction must be one of {FEATURE_REDUCTIONS} or None")
        self.feature_reduction = reduction

    def forward(self, x: Any) -> Tensor:
        """The model's output."""
        return model_output(call_model(self.model, x))

    def forward_with_features(self, x: Any) -> tuple[Tensor, Tensor]:
        """``(out, features)``: the output and the last layer's (reduced) inputs."""
        seen: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen.setdefault("phi", inputs[0])  # returns None: the output is left alone

        handle = self.last_layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(self.enable_backprop or torch.is_grad_enabled()):
                out = self.forward(x)
        finally:
            handle.remove()
        if "phi" not in seen:
            raise ValueError(f"last layer {self._last_layer_name!r} was not called by the model")
        phi = seen["phi"]
        if self.feature_reduction is not None:
            phi = reduce_features(phi, self.feature_reduction)
            out = self.last_layer(phi)
        if not self.enable_backprop:
            phi, out = phi.detach(), out.detach()
        return out, phi
