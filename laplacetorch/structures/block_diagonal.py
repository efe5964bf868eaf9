"""Block-diagonal composition: each block a structure on a named slice of θ."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..prior import parse_prior, prior_on_block, single_group
from .base import Structure, check_state, structure_key
from .layout import LayerBlock
from .saved import Composite, child_from_state
from .sources import JacobianSource

__all__ = ["BlockDiagonal"]


class BlockDiagonal(Composite, Structure):
    """Π(δ, s) = blockdiag(Π₁, …, Π_K) over disjoint slices of θ that together cover it.

    Block k is any structure on the positions ``index_k`` of θ (in the block's own order), so

        log det Π = Σₖ log det Πₖ,   (Π⁻¹ v)[index_k] = Πₖ⁻¹ v[index_k],
        J Π⁻¹ Jᵀ = Σₖ J[:, :, index_k] Πₖ⁻¹ J[:, :, index_k]ᵀ,

    and samples are drawn block by block. The prior maps onto each block: a scalar as it is,
    one per layer as that layer's value (a block within one layer) or its per-parameter
    values, one per parameter as the block's slice. Each answer is exact exactly where every
    block's is (:meth:`is_exact`).

    Args:
        blocks: ``(name, index, structure)`` per block; ``index`` ``[n_k]`` positions of θ.
        n_params: P. group_index: ``[P]`` group of each parameter.
    """

    def __init__(
        self,
        blocks: list[tuple[str, Tensor, Structure]],
        n_params: int,
        group_index: Tensor | None = None,
    ) -> None:
        if not blocks:
            raise ValueError("BlockDiagonal needs at least one block")
        ref = blocks[0][2]
        super().__init__(n_params, group_index, ref.dtype, ref.device)
        self._install(blocks)

    def _install(self, blocks: list[tuple[str, Tensor, Structure]]) -> None:
        placed = []
        for name, index, block in blocks:
            index = index.to(self.device, torch.long).reshape(-1)
            if index.numel() != block.n_params:
                raise ValueError(
                    f"block {name!r} has {block.n_params} parameters but {index.numel()} positions"
                )
            placed.append((name, index, block))
        every = torch.cat([i for _, i, _ in placed])
        hits = torch.zeros(self.n_params, dtype=torch.int32, device=self.device)
        ok = every.numel() == self.n_params and bool((every >= 0).all())
        ok = ok and bool((every < self.n_params).all())
        if ok:
            hits.index_add_(0, every, torch.ones_like(every, dtype=torch.int32))
        if not ok or not bool((hits == 1).all()):
            raise ValueError(
                f"blocks must cover each of the {self.n_params} parameters exactly once; "
                f"they cover {every.numel()} positions"
            )
        self.blocks = placed
        self._local_groups = [self.group_index[i] for _, i, _ in placed]
        self._groups = [single_group(g) for g in self._local_groups]

    def _block_prior(self, prior_precision: Tensor | float) -> list[Tensor]:
        delta, kind = parse_prior(
            prior_precision, self.n_params, self.n_groups, dtype=self.dtype, device=self.device
        )
        if kind == "group":  # a block within one tensor gets its δ; others their own form
            parts = zip(self.blocks, self._groups, self._local_groups, strict=True)
            return [
                delta[group] if group is not None else block._group_prior(delta, local)
                for (_, _, block), group, local in parts
            ]
        return [
            prior_on_block(delta, kind, self.group_index, index, group)
            for (_, index, _), group in zip(self.blocks, self._groups, strict=True)
        ]

    def layouts(self) -> list[LayerBlock]:
        return [lay for _, _, block in self.blocks for lay in block.layouts()]

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: list[Tensor]) -> bool:
        return all(blk._is_exact(db) for (_, _, blk), db in zip(self.blocks, d, strict=True))

    def _logdet(self, d: list[Tensor], s: Tensor) -> Tensor:
        return sum(blk._logdet(db, s) for (_, _, blk), db in zip(self.blocks, d, strict=True))

    def _trace_inverse(self, d: list[Tensor], s: Tensor) -> Tensor:
        return sum(
            blk._trace_inverse(db, s) for (_, _, blk), db in zip(self.blocks, d, strict=True)
        )

    def _scatter(self, v: Tensor | None, fn, d: list[Tensor], shape) -> Tensor:
        out = torch.empty(shape, dtype=self.dtype, device=self.device)
        for (_, index, blk), db in zip(self.blocks, d, strict=True):
            out[..., index] = fn(blk, None if v is None else v[..., index], db)
        return out

    def _solve(self, v: Tensor, d: list[Tensor], s: Tensor) -> Tensor:
        return self._scatter(v, lambda b, vb, db: b._solve(vb, db, s), d, v.shape)

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        if len(other.blocks) != len(self.blocks) or any(
            n1 != n2 or not torch.equal(i1, i2)
            for (n1, i1, _), (n2, i2, _) in zip(self.blocks, other.blocks, strict=True)
        ):
            raise TypeError("cannot add a BlockDiagonal with other blocks")
        blocks = [
            (name, index, b1.merged(b2, n_self, n_other))
            for (name, index, b1), (_, _, b2) in zip(self.blocks, other.blocks, strict=True)
        ]
        return BlockDiagonal(blocks, self.n_params, self.group_index)

    @classmethod
    def _weighted(cls, parts: list[Structure], weights: Tensor) -> Structure:
        ref = parts[0]
        blocks = []
        for k, (name, index, block) in enumerate(ref.blocks):
            same = [p.blocks[k][2] for p in parts]
            blocks.append((name, index, type(block)._weighted(same, weights)))
        return BlockDiagonal(blocks, ref.n_params, ref.group_index)

    def _trace_solve(self, other: Structure, d: list[Tensor], s: Tensor) -> Tensor:
        return sum(
            blk._trace_solve(ob, db, s)
            for (_, _, blk), (_, _, ob), db in zip(self.blocks, other.blocks, d, strict=True)
        )

    def _matvec(self, v: Tensor, d: list[Tensor], s: Tensor) -> Tensor:
        return self._scatter(v, lambda b, vb, db: b._matvec(vb, db, s), d, v.shape)

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        return self._scatter(
            v, lambda b, vb, _: b._curvature_matvec(vb), [None] * len(self.blocks), v.shape
        )

    def _inverse_diagonal(self, d: list[Tensor], s: Tensor) -> Tensor:
        fn = lambda b, _, db: b._inverse_diagonal(db, s)  # noqa: E731
        return self._scatter(None, fn, d, (self.n_params,))

    def _sample(self, z: Tensor, d: list[Tensor], s: Tensor) -> Tensor:
        return self._scatter(z, lambda b, zb, db: b._sample(zb, db, s), d, z.shape)

    def _fvar(self, source: JacobianSource, positions, d: list[Tensor], s: Tensor) -> Tensor:
        return sum(
            blk._fvar(source, index, db, s)
            for (_, index, blk), db in zip(self.blocks, d, strict=True)
        )

    def _fvar_dense(self, jac: Tensor, d: list[Tensor], s: Tensor) -> Tensor:
        return sum(
            blk._fvar_dense(jac[..., index], db, s)
            for (_, index, blk), db in zip(self.blocks, d, strict=True)
        )

    def curvature_dense(self) -> Tensor:
        g = torch.zeros(self.n_params, self.n_params, dtype=self.dtype, device=self.device)
        for _, index, blk in self.blocks:
            g[index.unsqueeze(1), index.unsqueeze(0)] = blk.curvature_dense()
        return g

    def diagonal(self) -> Tensor:
        out = torch.empty(self.n_params, dtype=self.dtype, device=self.device)
        for _, index, blk in self.blocks:
            out[index] = blk.diagonal()
        return out

    # ----------------------------------------------------------------- persistence
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses another block layout and changes nothing
        then."""
        other = type(self).from_state_dict(state, self.device, self.dtype)
        mine = [(n, i.tolist()) for n, i, _ in self.blocks]
        if other.n_params != self.n_params or [(n, i.tolist()) for n, i, _ in other.blocks] != mine:
            raise ValueError("state has another block layout than this structure")
        self.group_index = other.group_index.to(self.device)
        self._install(other.blocks)

    def state_dict(self) -> dict[str, Any]:
        return {
            "structure": structure_key(type(self)),
            "n_params": self.n_params,
            "group_index": self.group_index.cpu(),
            "blocks": [
                {"name": name, "index": index.cpu(), "block": blk.state_dict()}
                for name, index, blk in self.blocks
            ],
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> BlockDiagonal:
        check_state(cls, state, ("n_params", "group_index", "blocks"))
        if not state["blocks"]:
            raise ValueError(f"state of {cls.__name__} has no blocks")
        blocks = []
        for entry in state["blocks"]:
            what = f"block {entry.get('name')!r}"
            child = child_from_state(cls, entry["block"], device, dtype, what)
            blocks.append((entry["name"], entry["index"], child))
        return cls(blocks, state["n_params"], state["group_index"])
