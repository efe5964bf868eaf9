"""The predictive over each prediction's k likeliest outputs: the top-k tokens of a language
model, position by position.

Where only the likeliest tokens matter, the linearised predictive is restricted to the k
outputs with the largest logits at θ*, K, and renormalised over them: E[softmax(f_K)] for
f_K ~ N(f_K(θ*), J_K Π⁻¹ J_Kᵀ), the softmax of those k logits alone (what a head restricted
to them predicts: laplace-torch's multiple-choice variant, with the answers chosen by the
model), by Monte Carlo over linearised samples f_K + J_K ε, ε ~ N(0, Π⁻¹). Split at a linear
head (:mod:`~laplacetorch.linear_head`) a sample costs the body's tangent and, per
position, a product with the head's k rows: the vocabulary is read once, for the top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .linear_head import LinearHead, split_at_head
from .sampled_predictive import (
    SampleStream,
    block_sizes,
    body_tangents,
    sample_bytes,
    whole_sample_tiles,
)

if TYPE_CHECKING:
    from .params import ParameterSubset

__all__ = ["TopK", "top_k_predictive"]


@dataclass(frozen=True)
class TopK:
    """The predictive over each prediction's k likeliest outputs at θ*.

    Attributes:
        indices: ``[B, ..., k]`` the outputs (token ids), by descending logit at θ*;
            positions before the k (``[B, T, k]`` for sequences).
        probs: ``[B, ..., k]`` E[softmax(f_K)], the linearised predictive over those k
            outputs (sums to 1 over them).
        map_probs: ``[B, ..., k]`` softmax(f_K(θ*)), the same restriction at θ*.
    """

    indices: Tensor
    probs: Tensor
    map_probs: Tensor


def top_k_predictive(subset: ParameterSubset, stream: SampleStream, k: int, n_classes: int) -> TopK:
    """:class:`TopK` at the stream's inputs from its linearised samples; the outputs have
    ``n_classes`` per prediction (the vocabulary), positions first."""
    head = split_at_head(subset, stream.theta, stream.x)
    if head is not None:
        return _split_top_k(head, stream, k, n_classes)
    with torch.no_grad():
        f0 = subset.forward(stream.theta, stream.x)  # [B, T·C], the whole network's output
    logits, index = _per_position(f0, n_classes).topk(k, dim=-1)
    total = torch.zeros_like(logits)
    for _, fs in whole_sample_tiles("glm", subset, stream):
        picked = _per_position(fs, n_classes).gather(-1, index.expand(len(fs), *index.shape))
        total += torch.softmax(picked, dim=-1).sum(0)
    return TopK(index, total / stream.n_samples, torch.softmax(logits, dim=-1))


def _per_position(f: Tensor, n_classes: int) -> Tensor:
    """``[..., B, T·C]`` seen as ``[..., B, T, C]`` (``[..., B, C]`` without positions)."""
    if f.shape[-1] == n_classes:
        return f
    return f.view(*f.shape[:-1], -1, n_classes)


def _split_top_k(head: LinearHead, stream: SampleStream, k: int, n_classes: int) -> TopK:
    """The top-k predictive split at the head: f_K + φ̇ W_Kᵀ + φ Ẇ_Kᵀ + ḃ_K, with W_K the
    head's rows of each position's k outputs ``[B, ..., k, D]``; the first block of draws'
    forward-mode pass gives φ(θ*), from which the top k are read."""
    w, n, size, budget = head.head_weight, stream.n_inputs, stream.itemsize, stream.memory_budget
    rows = max(1, min(n, budget // sample_bytes(stream.width, size)))
    per_draw = head.example_phi.numel() * n * size
    if head.weight is not None:  # the gathered head perturbation of each draw
        per_draw += stream.width // n_classes * k * head.example_phi[-1] * n * size
    s_block = max(1, min(stream.n_samples, budget // max(per_draw, 1)))
    total = logits = index = w_k = None
    with torch.no_grad():
        for s in block_sizes(stream.n_samples, s_block):
            eps = stream.draw(s)
            phi, phi_dot = body_tangents(head, stream.theta, stream.x, eps)  # [B, .., D], [s, ..]
            if index is None:  # the top k of f(θ*), a few inputs at a time
                picked = [
                    _per_position(head.primal(phi[r : r + rows]), n_classes).topk(k, dim=-1)
                    for r in range(0, n, rows)
                ]
                logits = torch.cat([v for v, _ in picked])  # [B, ..., k], the model's own
                index = torch.cat([i for _, i in picked])
                w_k = w[index]  # [B, ..., k, D]
                total = torch.zeros_like(logits)
            tangent = torch.einsum("sb...d,b...kd->sb...k", phi_dot.to(w.dtype), w_k)
            if head.weight is not None:
                start, shape = head.weight
                dw = eps[:, start : start + shape.numel()].view(s, *shape)[:, index]
                tangent = tangent + torch.einsum("b...d,sb...kd->sb...k", phi, dw.to(w.dtype))
            if head.bias is not None:
                start, shape = head.bias
                tangent = tangent + eps[:, start : start + shape.numel()][:, index].to(w.dtype)
            total += torch.softmax(logits + tangent.to(logits.dtype), dim=-1).sum(0)
    return TopK(index, total / stream.n_samples, torch.softmax(logits, dim=-1))
