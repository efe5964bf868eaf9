"""The predictive from streamed function samples: no ``[B, C, C]`` covariance, never all S
samples at once.

Linearised (``glm``) samples are f(x; θ*) + J ε with ε ~ N(0, Π⁻¹) drawn from the structure
(its own square root: KFAC eigenbases, a diagonal, a low-rank factor, a Cholesky factor), and
J ε by forward-mode differentiation: one batched ``jvp`` a block of k draws, the network's
primal pass once and k tangent passes. Each sample is exactly a draw of N(f, J Π⁻¹ Jᵀ), so
the ``mc`` link and the entropies below are those of the linearised predictive, for outputs
whose covariance would never fit (a vocabulary of 50k per position: V² per position).
``nn`` samples are the network at θ* + ε. A summary folds each block into running sums
(mean probabilities, mean entropy), so memory stays flat in S.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import vmap

from .curvature.per_example import is_vmap_limit
from .linear_head import LinearHead, Scratch, split_at_head
from .model_call import _forward_ad, jvp
from .predictive import function_samples

if TYPE_CHECKING:
    from .likelihoods import Likelihood
    from .params import ParameterSubset

__all__ = [
    "SampleStream",
    "Uncertainty",
    "block_sizes",
    "body_tangents",
    "glm_sample_blocks",
    "head_sample_tiles",
    "over_draws",
    "sample_block_size",
    "sample_bytes",
    "sample_tiles",
    "streamed_mean",
    "streamed_uncertainty",
    "whole_sample_tiles",
]


@dataclass(frozen=True)
class Uncertainty:
    """Predictive uncertainty per input (per output, per position), split into its parts.

    Classification / binary: ``total`` the entropy of the predictive H(E[p]), ``aleatoric``
    the expected entropy E[H(p)], ``epistemic`` their difference (the mutual information
    between y and the weights, ≥ 0). Gaussian predictives: variances, ``aleatoric`` σ²,
    ``epistemic`` the variance of f, ``total`` their sum. ``mean``: the predictive mean
    (probabilities, or the mean of f) in the model's output layout.
    """

    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    mean: Tensor


@dataclass(frozen=True)
class SampleStream:
    """What a stream of function samples is drawn from and sized by.

    Attributes:
        theta: θ* ``[P]``. x: the prepared inputs, ``n_inputs`` of them, ``width`` outputs
        each of ``itemsize`` bytes. draw: ``draw(k)`` gives k weight perturbations ε
        ``[k, P]``. n_samples: S. memory_budget: the bytes a tile may hold.
    """

    theta: Tensor
    x: Any
    draw: Callable[[int], Tensor]
    n_samples: int
    n_inputs: int
    width: int
    itemsize: int
    memory_budget: int


def sample_bytes(n_outputs: int, itemsize: int) -> int:
    """Bytes one function sample of ``n_outputs`` numbers (the outputs of all inputs) holds
    while it is formed and folded in: the sample, its probabilities and the running sums,
    about three times the sample."""
    return max(3 * n_outputs * itemsize, 1)


def sample_block_size(n_samples: int, n_outputs: int, itemsize: int, memory_budget: int) -> int:
    """Draws per block: as many samples (:func:`sample_bytes`) as ``memory_budget`` holds,
    at least one and at most ``n_samples``."""
    return max(1, min(n_samples, memory_budget // sample_bytes(n_outputs, itemsize)))


def over_draws(subset: ParameterSubset, one: Callable[[Tensor], Tensor], eps: Tensor) -> Tensor:
    """``one`` over the draws ε ``[k, P]``, stacked: vmapped (the primal shared), a loop
    where vmap cannot run the model."""
    with torch.no_grad():
        if subset.vmap_ok:
            try:
                return vmap(one)(eps)
            except (RuntimeError, NotImplementedError) as err:
                if not is_vmap_limit(err):
                    raise
        return torch.stack([one(e) for e in eps])


def body_tangents(head: LinearHead, theta: Tensor, x: Any, eps: Tensor) -> tuple[Tensor, Tensor]:
    """φ(θ*) ``[B, ..., D]`` and the body's tangents J_φ ε ``[k, B, ..., D]`` of the draws
    ``eps`` ``[k, P]``: one vmapped forward-mode pass, the primal computed once and
    returned once (a loop where vmap cannot run the model)."""

    def one(e: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(lambda t: head.body(t, x), (theta,), (e,))

    with torch.no_grad(), _forward_ad:
        if head.subset.vmap_ok:
            try:
                return vmap(one, out_dims=(None, 0))(eps)
            except (RuntimeError, NotImplementedError, ValueError) as err:
                # "... can not return a BatchedTensor when out_dim is None": a body whose
                # primal depends on the draw; the loop below computes it per draw
                if not is_vmap_limit(err) and "out_dim" not in str(err):
                    raise
        pairs = [one(e) for e in eps]
        return pairs[0][0], torch.stack([t for _, t in pairs])


def glm_sample_blocks(
    subset: ParameterSubset, theta: Tensor, x: Any, draws: Iterator[Tensor]
) -> Iterator[Tensor]:
    """For each block ε ``[k, P]`` of ``draws``, the linearised samples f(x; θ*) + J ε
    ``[k, B, C]``: one batched forward-mode pass through the whole network."""

    def one(e: Tensor) -> Tensor:
        out, tangent = jvp(lambda t: subset.forward(t, x), (theta,), (e,))
        return out + tangent

    for eps in draws:
        yield over_draws(subset, one, eps)


def nn_sample_blocks(
    subset: ParameterSubset, theta: Tensor, x: Any, draws: Iterator[Tensor]
) -> Iterator[Tensor]:
    """For each block ε ``[k, P]``, the network's outputs at θ* + ε ``[k, B, C]``."""
    for eps in draws:
        yield function_samples(subset, theta + eps, x)


def block_sizes(n_samples: int, block: int) -> list[int]:
    """``n_samples`` split into blocks of ``block`` (the last one smaller)."""
    return [block] * (n_samples // block) + ([n_samples % block] if n_samples % block else [])


def head_sample_tiles(head: LinearHead, stream: SampleStream) -> Iterator[tuple[slice, Tensor]]:
    """Linearised samples split at the model's linear head (:mod:`~laplacetorch.linear_head`),
    as tiles ``(rows, [k, b, C])``: the body's tangents of as many draws as the memory budget
    holds in one vmapped forward-mode pass (its primal φ(θ*) kept from the first), then, a
    few inputs at a time, the head's output at θ* once and one head product a block of
    samples. Each tile is a buffer the next one overwrites: fold it in (or copy it) before
    asking for the next."""
    n, budget, size = stream.n_inputs, stream.memory_budget, stream.itemsize
    rows = max(1, min(n, budget // sample_bytes(stream.width, size)))
    per_tile = sample_block_size(stream.n_samples, rows * stream.width, size, budget)
    in_head = sum(p[1].numel() for p in (head.weight, head.bias) if p is not None)
    per_draw = (head.example_phi.numel() * n + in_head) * size
    k_body = max(1, min(stream.n_samples, budget // max(per_draw, 1)))
    scratch, phi = None, None
    for k in block_sizes(stream.n_samples, k_body):
        eps = stream.draw(k)
        primal_phi, phi_dot = body_tangents(head, stream.theta, stream.x, eps)
        phi = primal_phi if phi is None else phi  # [B, ..., D]; phi_dot [k, B, ..., D]
        scratch = Scratch(phi.device) if scratch is None else scratch
        for r0 in range(0, n, rows):
            sl = slice(r0, min(n, r0 + rows))
            f0 = head.primal(phi[sl])
            for j in range(0, k, per_tile):
                tile = slice(j, j + per_tile)
                yield sl, head.samples(phi[sl], phi_dot[tile, sl], eps[tile], f0, scratch)


def sample_tiles(
    pred_type: str, subset: ParameterSubset, stream: SampleStream
) -> Iterator[tuple[slice, Tensor]]:
    """``stream.n_samples`` function samples of ``pred_type`` as tiles ``(rows, [k, b, C])``
    that each fit the memory budget (at least one sample of one input). Linearised samples
    of a model ending in a linear layer are split at it (:func:`head_sample_tiles`); the
    others are whole samples of all inputs."""
    glm, theta, x = pred_type == "glm", stream.theta, stream.x
    head = split_at_head(subset, theta, x) if glm and stream.n_inputs else None
    if head is not None:
        return head_sample_tiles(head, stream)
    return whole_sample_tiles(pred_type, subset, stream)


def whole_sample_tiles(
    pred_type: str, subset: ParameterSubset, stream: SampleStream
) -> Iterator[tuple[slice, Tensor]]:
    """Function samples of all inputs at once, ``(rows, [k, B, C])``, in blocks of as many
    draws as the memory budget holds: the whole network's forward(-mode) pass each."""
    block = sample_block_size(
        stream.n_samples, stream.n_inputs * stream.width, stream.itemsize, stream.memory_budget
    )
    draws = (stream.draw(k) for k in block_sizes(stream.n_samples, block))
    blocks = glm_sample_blocks if pred_type == "glm" else nn_sample_blocks
    for fs in blocks(subset, stream.theta, stream.x, draws):
        yield slice(0, fs.shape[1]), fs


def streamed_uncertainty(
    likelihood: Likelihood, tiles: Iterator[tuple[slice, Tensor]], n_samples: int, n_inputs: int
) -> Uncertainty:
    """The entropy split of a classification or binary predictive from function-sample
    tiles ``(rows, [k, b, C])``, holding one tile at a time: E[p] and E[H(p)] as running
    sums per input, then H(E[p]) and the mutual information H(E[p]) − E[H(p)]."""
    sum_p, sum_h = _running_sums(likelihood, tiles, n_inputs, entropy=True)
    mean = sum_p / n_samples
    total, aleatoric = likelihood.entropy(mean), sum_h / n_samples
    # ≥ 0 by the concavity of the entropy; clamp the round-off where the samples agree
    return Uncertainty(total, aleatoric, (total - aleatoric).clamp_min(0), mean)


def streamed_mean(
    likelihood: Likelihood, tiles: Iterator[tuple[slice, Tensor]], n_samples: int, n_inputs: int
) -> Tensor:
    """E[inverse_link(f)] over function-sample tiles (the ``mc`` link), one at a time."""
    return _running_sums(likelihood, tiles, n_inputs, entropy=False)[0] / n_samples


def _running_sums(
    likelihood: Likelihood, tiles: Iterator[tuple[slice, Tensor]], n_inputs: int, entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """Σ_s inverse_link(f_s) per input (and Σ_s H(p_s) with ``entropy``), in the model's
    layout, filled tile by tile."""
    sum_p = sum_h = None
    scratch: Scratch | None = None
    for rows, fs in tiles:
        if scratch is None:
            scratch = Scratch(fs.device)
        # the tile is consumed: p written into a reused buffer, no tile-sized allocation
        work = scratch.take("p", tuple(fs.shape), fs.dtype)
        p, h = likelihood.probs_and_entropy(fs, work, entropy)
        if sum_p is None:
            sum_p = p.new_zeros(n_inputs, *p.shape[2:])
        sum_p[rows] += p[0] if len(p) == 1 else p.sum(0)  # no copy of a lone sample
        if h is not None:
            sum_h = h.new_zeros(n_inputs, *h.shape[2:]) if sum_h is None else sum_h
            sum_h[rows] += h.sum(0)
    return sum_p, sum_h
