"""G += XᵀX for a symmetric G, at about half the flops of a full GEMM.

BLAS's ``syrk`` is not exposed by torch; :func:`add_gram_` gets most of its saving by
splitting the D columns into k blocks and forming only the blocks on and below the diagonal,
k(k+1)/2 of the k² (k = 4: 62.5 % of the GEMM), then mirroring the strictly lower blocks
onto the upper ones (one copy of D²/2 entries).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = ["add_gram_", "gram"]

#: below this width one GEMM is faster than the blocks' bookkeeping
MIN_BLOCKED_WIDTH = 1024
N_BLOCKS = 4


def add_gram_(total: Tensor, x: Tensor) -> Tensor:
    """``total`` ``[D, D]`` += xᵀx for rows ``x`` ``[M, D]``, in place; returns ``total``.

    ``total`` must be symmetric on entry (it is on exit); only its blocks on and below the
    diagonal are computed by GEMMs when D ≥ :data:`MIN_BLOCKED_WIDTH`.
    """
    return _blocked(total, x, 1.0)


def gram(x: Tensor) -> Tensor:
    """xᵀx ``[D, D]`` for rows ``x`` ``[M, D]`` (the blocks on and below the diagonal)."""
    d = x.shape[-1]
    return _blocked(torch.empty(d, d, dtype=x.dtype, device=x.device), x, 0.0)


def _blocked(total: Tensor, x: Tensor, beta: float) -> Tensor:
    """β·total + xᵀx into ``total`` (β = 0: its entries are never read)."""
    d = x.shape[-1]
    if d < MIN_BLOCKED_WIDTH:
        return total.addmm_(x.mT, x, beta=beta)
    edges = torch.linspace(0, d, N_BLOCKS + 1).round().long().tolist()
    spans = list(itertools.pairwise(edges))
    for i, (r0, r1) in enumerate(spans):
        xi = x[:, r0:r1]
        for c0, c1 in spans[: i + 1]:
            total[r0:r1, c0:c1].addmm_(xi.mT, x[:, c0:c1], beta=beta)
    for i, (r0, r1) in enumerate(spans):  # mirror the strictly lower blocks
        for c0, c1 in spans[:i]:
            total[c0:c1, r0:r1].copy_(total[r0:r1, c0:c1].mT)
    return total
