"""Layer inputs and output gradients of ``nn.Linear`` layers, for layer-wise curvature.

For a Linear layer z = W a + b inside the network and a vector sₙₖ on the network output,
Jₙᵀ sₙₖ restricted to W is gₙₖ aₙᵀ with gₙₖ = (∂fₙ/∂zₙ)ᵀ sₙₖ. Forward hooks record a and z in
one forward pass; one batched backward (``is_grads_batched``) of the K columns of S gives all
gₙₖ. Nothing per-example of size P is ever formed.

Only layers applied once per forward to ``[B, in]`` inputs, whose weight is not shared with
another module, take this path; everything else goes through the exact per-example path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..model_call import module_calls
from ..params import ParameterSubset

__all__ = [
    "LinearLayer",
    "backward_columns",
    "capture_layers",
    "capture_once",
    "linear_layers",
    "linear_output_grads",
]


@dataclass
class LinearLayer:
    """A Linear layer whose weight (and maybe bias) are Bayesian parameters."""

    name: str
    module: nn.Linear
    weight: str
    bias: str | None


def linear_layers(subset: ParameterSubset) -> list[LinearLayer]:
    """Linear layers whose weight is wholly in θ and used by this module only."""
    if subset.index is not None:
        return []
    chosen = set(subset.names)
    owners: dict[int, int] = {}
    for _, m in subset.model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers = []
    for name, m in subset.model.named_modules():
        if type(m) is not nn.Linear:
            continue
        prefix = name + "." if name else ""
        if prefix + "weight" not in chosen or owners[id(m.weight)] != 1:
            continue
        bias = prefix + "bias" if m.bias is not None and prefix + "bias" in chosen else None
        if bias is not None and owners[id(m.bias)] != 1:
            bias = None
        layers.append(LinearLayer(name, m, prefix + "weight", bias))
    return layers


@contextmanager
def capture_layers(layers: list[Any]) -> Iterator[dict[str, Any]]:
    """Record the input and output of each layer (anything with ``.name`` and ``.module``)
    during the forward passes inside the block.

    Yields a dict ``{"inputs": {name: a}, "outputs": {name: z}, "calls": {name: count}}``.
    """
    record: dict[str, Any] = {"inputs": {}, "outputs": {}, "calls": {}}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            record["inputs"][name] = inputs[0].detach()
            record["outputs"][name] = output
            record["calls"][name] = record["calls"].get(name, 0) + 1

        return hook

    handles = [layer.module.register_forward_hook(make_hook(layer.name)) for layer in layers]
    try:
        with module_calls():
            yield record
    finally:
        for h in handles:
            h.remove()


def linear_output_grads(
    subset: ParameterSubset, layers: list[LinearLayer], x: Any
) -> tuple[Tensor, dict[str, Any]] | None:
    """Forward pass recording the layers; returns ``(f, record)``, or ``None`` when a layer
    was not called exactly once on a ``[B, in]`` input or its output has no graph."""
    with torch.enable_grad(), capture_layers(layers) as record:
        f = subset.call(x)
    for layer in layers:
        z = record["outputs"].get(layer.name)
        if record["calls"].get(layer.name) != 1 or z is None or z.dim() != 2 or not z.requires_grad:
            return None
    return f, record


def capture_once(
    subset: ParameterSubset, layers: list[Any], x: Any
) -> tuple[Tensor, dict[str, Any]]:
    """Forward pass recording each layer's input and output; refuses a layer not called
    exactly once (its Kronecker / layer block would not be its curvature)."""
    with torch.enable_grad(), capture_layers(layers) as record:
        f = subset.call(x)
    for layer in layers:
        if record["calls"].get(layer.name) != 1:
            raise ValueError(
                f"cannot represent layer {layer.name!r} by a layer block: it was called "
                f"{record['calls'].get(layer.name, 0)} times in one forward pass"
            )
    return f, record


def backward_columns(f: Tensor, record: dict[str, Any], names: list[str], cols: Tensor) -> list:
    """gₖ = (∂f/∂z)ᵀ sₖ for each layer output z, for ``cols`` of shape ``[K, B, C]``.

    Returns one ``[K, B, out]`` tensor per layer name (zeros for a layer f does not use).
    """
    outputs = [record["outputs"][n] for n in names]
    if cols.shape[0] > 1:
        grads = torch.autograd.grad(
            f, outputs, grad_outputs=cols, is_grads_batched=True, allow_unused=True
        )
    else:
        grads = torch.autograd.grad(f, outputs, grad_outputs=cols[0], allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]
    return [
        g if g is not None else z.new_zeros(cols.shape[0], *z.shape)
        for g, z in zip(grads, outputs, strict=True)
    ]
