"""Layer inputs and output gradients, for layer-wise curvature and predictives.

For a layer z = W a + b inside the network and a vector sₙₖ on the network output, Jₙᵀ sₙₖ
restricted to W is Σₛ gₙₖₛ aₙₛᵀ with gₙₖ = (∂fₙ/∂zₙ)ᵀ sₙₖ. Forward hooks record a and z in one
forward pass; one batched backward (``is_grads_batched``) of the K columns of S gives all
gₙₖ. Nothing per-example of size P is ever formed. Both are handed on in the statistics dtype
(float32 for a half-precision network, :func:`~laplacetorch.params.statistics_dtype`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..model_call import module_calls
from ..params import ParameterSubset, statistics_dtype

__all__ = ["backward_columns", "capture_layers", "capture_once"]


@contextmanager
def capture_layers(layers: list[Any]) -> Iterator[dict[str, Any]]:
    """Record the input and output of each layer (anything with ``.name`` and ``.module``)
    during the forward passes inside the block.

    Yields a dict ``{"inputs": {name: a}, "outputs": {name: z}, "calls": {name: count}}``.
    """
    record: dict[str, Any] = {"inputs": {}, "outputs": {}, "calls": {}}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            a = inputs[0].detach()
            record["inputs"][name] = a.to(statistics_dtype(a.dtype)) if a.is_floating_point() else a
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


def capture_once(
    subset: ParameterSubset, layers: list[Any], x: Any
) -> tuple[Tensor, dict[str, Any]]:
    """Forward pass recording each layer's input and output; refuses a layer not called
    exactly once (it was chosen for a layer block on the first batch, where it was)."""
    with torch.enable_grad(), capture_layers(layers) as record:
        f = subset.call(x)
    for layer in layers:
        if record["calls"].get(layer.name) != 1:
            raise ValueError(
                f"layer {layer.name!r} was called {record['calls'].get(layer.name, 0)} times in "
                "this batch's forward pass, once in the first batch's: how often the model uses "
                "it depends on the data, so it has no layer block; use 'diag' or 'full'"
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
        (g if g is not None else z.new_zeros(cols.shape[0], *z.shape)).to(statistics_dtype(z.dtype))
        for g, z in zip(grads, outputs, strict=True)
    ]
