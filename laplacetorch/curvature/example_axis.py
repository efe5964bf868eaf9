"""Which axis of a layer's input holds the examples, learnt from the model on the first batch.

A forward may fold the batch (``[B, 2, D] → [2B, D]``, reward modelling's pairs), split an
example's features into positions (``[B, D] → [B·S, D/S]``), or put positions first
(``[T, B, D]``). The layer statistics need each example's rows,

    Mₙₖ = Σₛ gₙₖₛ ãₙₛᵀ   (s over the rows of example n: positions, patches, folded items),

so a layer's input ``[d₀, …, d_{m-1}, F]`` is read through an :class:`ExampleAxis`: dim ``dim``
of size k·B, split example-major (rows ``[b, j]``, as ``reshape`` folds ``[B, k, …]``) or
position-major (rows ``[j, b]``). It is learnt, not assumed: one extra forward of the first
batch with its examples in reverse order must move each example's rows with the example.
A layer for which no axis does (its input does not depend on one example only, a data-
dependent layout) has no layer block; its parameters take the exact per-example path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .conv_patches import conv_patches
from .layer_capture import capture_layers

__all__ = ["CONV_MODULES", "ExampleAxis", "learn_example_axes", "positions_of"]

CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ExampleAxis:
    """Dim ``dim`` of a layer's input (conv: 0) holds k·B rows, example-major or not."""

    dim: int = 0
    example_major: bool = True

    def group(self, t: Tensor, n: int, lead: int = 0) -> Tensor:
        """``[*L, n, S, F]`` from ``t`` ``[*L, d₀, …, F]`` (``lead`` = len(L)), the example's
        rows (its k rows of ``dim`` times the other dims) as its S positions.

        Raises:
            ValueError: the axis's size is not a multiple of the batch size ``n``.
        """
        p = lead + self.dim
        if p >= t.dim() - 1 or t.shape[p] % n:
            raise ValueError(
                f"a layer's input of shape {list(t.shape[lead:])} has no axis of k·{n} rows at "
                f"dim {self.dim}, where the first batch had its examples: the model lays out "
                "its batch differently from batch to batch; use 'full' or 'diag' with a mask"
            )
        if p == lead and self.example_major:  # the usual [B·k, …]: a view
            return t.reshape(*t.shape[:lead], n, -1, t.shape[-1])
        k = t.shape[p] // n
        t = t.unflatten(p, (n, k) if self.example_major else (k, n))
        t = t.movedim(p if self.example_major else p + 1, lead)
        return t.reshape(*t.shape[: lead + 1], -1, t.shape[-1])


def positions_of(
    module: nn.Module, a: Tensor, g: Tensor, axis: ExampleAxis | None = None, n: int | None = None
) -> tuple[Tensor, Tensor]:
    """A layer's inputs ``[n, S, in]`` and output gradients ``[K, n, S, out]`` per example,
    from its recorded input ``a`` and gradients ``g`` ``[K, *output shape]``; without
    ``axis`` the rows of dim 0 are the examples."""
    if isinstance(module, CONV_MODULES):  # rows: dim 0 of the input; positions: patches
        k, rows, out = g.shape[:3]
        a, g = conv_patches(module, a), g.reshape(k, rows, out, -1).transpose(2, 3)
    axis = axis or ExampleAxis()
    n = a.shape[axis.dim] if n is None else n
    return axis.group(a, n), axis.group(g, n, lead=1)


def _reversed(x: Any) -> Any:
    return tree_map(lambda t: t.flip(0) if isinstance(t, Tensor) else t, x)


def _candidates(module: nn.Module, a: Tensor, n: int) -> list[ExampleAxis]:
    """Axes whose size is a multiple of n, the usual [B·k, …] first."""
    dims = [0] if isinstance(module, CONV_MODULES) else range(a.dim() - 1)
    out = []
    for d in dims:
        if a.shape[d] % n == 0:
            out.append(ExampleAxis(d, True))
            if a.shape[d] > n:  # k = 1: both orders are the same
                out.append(ExampleAxis(d, False))
    return out


def axis_of(module: nn.Module, a: Tensor, a_rev: Tensor | None, n: int) -> ExampleAxis | None:
    """The first axis under which ``a_rev`` (the input of the reversed batch) is ``a`` with
    its examples reversed, within √ε of the input's scale; ``None`` when none is."""
    if a_rev is None or a_rev.shape != a.shape:
        return None
    if isinstance(module, CONV_MODULES):  # only its batch dim can hold the examples
        a, a_rev = a.reshape(a.shape[0], 1, -1), a_rev.reshape(a.shape[0], 1, -1)
    scale = float(a.abs().max()) if a.numel() else 0.0
    tol = torch.finfo(a.dtype).eps ** 0.5 * max(scale, 1.0) if a.is_floating_point() else 0.0
    for axis in _candidates(module, a, n):
        u, v = axis.group(a, n), axis.group(a_rev, n)
        if float((v - u.flip(0)).abs().max()) <= tol:
            return axis
    return None


def learn_example_axes(
    call: Any, layers: list[Any], x: Any, n: int, inputs: dict[str, Tensor]
) -> dict[str, ExampleAxis | None]:
    """Each layer's :class:`ExampleAxis` (``None``: not learnt), from its recorded inputs
    ``inputs`` on the batch ``x`` of ``n ≥ 2`` examples and one forward ``call`` of the
    batch with its examples reversed."""
    with torch.no_grad(), capture_layers(layers) as record:
        call(_reversed(x))
    return {
        la.name: axis_of(la.module, inputs[la.name], record["inputs"].get(la.name), n)
        for la in layers
    }
