"""Where the coordinates of a structure spanning several layers sit in those layers.

A block with one :class:`~laplacetorch.structures.LayerBlock` (``layout``) covers one layer. A
structure over all of θ (a diagonal, a low rank) has coordinates in many layers and some
outside any (norm layers, embeddings): its *layer parts* say, per layer block, which of its
coordinates are that block's [rows, cols (+ bias)] in row-major order. The predictive then
takes each part's J from the layer's inputs and output gradients, and the dense columns only
for the other coordinates (:meth:`LayerParts.split`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .layout import LayerBlock
from .sources import JacobianSource

__all__ = ["LayerParts", "PartFactors"]


@dataclass
class PartFactors:
    """A source split by parts: ``parts`` ``(layout, index, a, g)`` with the layer factors
    (a ``[B, S, in']``, g ``[C, B, S, out]``), the other coordinates ``rest`` (block-local)
    and their dense columns ``cols`` ``[B, C, len(rest)]`` (``None`` when there are none)."""

    parts: list[tuple[LayerBlock, Tensor, Tensor, Tensor]]
    rest: Tensor
    cols: Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        """(B, C) of the chunk."""
        g = self.parts[0][3]
        return g.shape[1], g.shape[0]


class LayerParts:
    """Disjoint ``(layout, index)`` pairs on a block of ``n_params`` coordinates.

    Raises:
        ValueError: a part whose index does not have ``layout.numel`` positions, leaves
            [0, n_params), or overlaps another part.
    """

    def __init__(
        self, parts: list[tuple[LayerBlock, Tensor]], n_params: int, device: torch.device
    ) -> None:
        seen = torch.zeros(n_params, dtype=torch.bool)
        placed = []
        for layout, index in parts:
            index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
            if not isinstance(layout, LayerBlock) or index.numel() != layout.numel:
                raise ValueError(
                    f"layer part {layout!r} needs {getattr(layout, 'numel', '?')} positions; "
                    f"got {index.numel()}"
                )
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_params):
                raise ValueError(f"layer part {layout.layer!r} has positions outside [0, P)")
            if bool(seen[index].any()):
                raise ValueError(f"layer part {layout.layer!r} overlaps another part")
            seen[index] = True
            placed.append((layout, index.to(device)))
        self.parts = placed
        self.rest = (~seen).nonzero().squeeze(1).to(device)

    def layouts(self) -> list[LayerBlock]:
        """The parts' layer blocks."""
        return [layout for layout, _ in self.parts]

    def split(self, source: JacobianSource, positions: Tensor | None) -> PartFactors | None:
        """The parts with factors in ``source`` and the dense columns of the rest (a part
        whose layer the source lacks joins the rest); ``None`` when no part has factors.
        ``positions`` maps the block's coordinates to θ (``None``: the block is θ)."""
        factors = [source.factors(layout) for layout, _ in self.parts]
        if all(f is None for f in factors):
            return None
        with_factors, rest = [], [self.rest]
        for (layout, index), ag in zip(self.parts, factors, strict=True):
            if ag is None:  # a layer the source has no factors of (not called once)
                rest.append(index)
            else:
                with_factors.append((layout, index, *ag))
        local = torch.cat(rest)
        cols = None
        if local.numel():
            cols = source.columns(local if positions is None else positions[local])
        return PartFactors(with_factors, local, cols)

    def state(self) -> list[dict[str, Any]]:
        """Plain values for persistence."""
        return [{"layout": lay.to_dict(), "index": index.cpu()} for lay, index in self.parts]

    @classmethod
    def from_state(cls, state: Any, n_params: int, device: torch.device) -> LayerParts | None:
        """Inverse of :meth:`state` (``None`` for no parts).

        Raises:
            ValueError: for a malformed entry.
        """
        if not state:
            return None
        try:
            parts = [(LayerBlock.from_dict(p["layout"]), p["index"]) for p in state]
        except (KeyError, TypeError) as err:
            raise ValueError(f"state entry 'layer_parts' is malformed: {err}") from err
        return cls(parts, n_params, device)
