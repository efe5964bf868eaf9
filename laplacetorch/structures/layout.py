"""Where a block's coordinates come from inside a layer.

A layer computes z = W̃ ã over positions s (sequence positions, convolution patches), with
W̃ = [W | b] of shape ``[out, in']``. A block that covers rows ``rows`` of W̃ (output
channels; one conv group) and the input columns ``cols`` (plus a trailing bias column when
``bias``) has, for output column c of the network, the Jacobian

    J[b, c, (i, j)] = Σₛ g[c, b, s, i] ã[b, s, j],    g = ∂f_c/∂z,

in row-major order over ``[rows, cols (+ 1)]``. A separate bias block has no input columns
(``cols = None``, ``bias = True``): ã is the constant 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["LayerBlock"]


@dataclass(frozen=True)
class LayerBlock:
    """A block of layer ``layer``: output channels ``rows``, input columns ``cols``, and a
    column of ones for the bias when ``bias``."""

    layer: str
    rows: tuple[int, int]
    cols: tuple[int, int] | None
    bias: bool

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in')`` of the block's weight matrix."""
        n_cols = 0 if self.cols is None else self.cols[1] - self.cols[0]
        return self.rows[1] - self.rows[0], n_cols + int(self.bias)

    @property
    def numel(self) -> int:
        """Number of parameters the block covers."""
        out, cols = self.shape
        return out * cols

    def select(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The block's inputs ``[B, S, in']`` and output gradients ``[K, B, S, out]`` from the
        layer's inputs ``a`` ``[B, S, in]`` and output gradients ``g`` ``[K, B, S, out_all]``."""
        g = g[..., self.rows[0] : self.rows[1]]
        if self.cols is None:
            return a.new_ones(*a.shape[:2], 1), g
        a = a[..., self.cols[0] : self.cols[1]]
        if self.bias:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        return a, g

    def to_dict(self) -> dict[str, Any]:
        """Plain values for persistence."""
        return {"layer": self.layer, "rows": self.rows, "cols": self.cols, "bias": self.bias}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LayerBlock:
        """Inverse of :meth:`to_dict`."""
        cols = state["cols"]
        return cls(
            state["layer"],
            tuple(state["rows"]),
            None if cols is None else tuple(cols),
            bool(state["bias"]),
        )
