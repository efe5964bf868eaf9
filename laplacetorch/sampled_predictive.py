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
from torch.func import jvp, vmap

from .curvature.per_example import is_vmap_limit
from .predictive import function_samples

if TYPE_CHECKING:
    from .likelihoods import Likelihood
    from .params import ParameterSubset

__all__ = [
    "Uncertainty",
    "glm_sample_blocks",
    "sample_block_size",
    "sample_bytes",
    "streamed_uncertainty",
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


def sample_bytes(n_outputs: int, itemsize: int) -> int:
    """Bytes one function sample of ``n_outputs`` numbers (the outputs of all inputs) holds
    while it is formed and folded in: the sample, its probabilities and the running sums,
    about three times the sample."""
    return max(3 * n_outputs * itemsize, 1)


def sample_block_size(n_samples: int, n_outputs: int, itemsize: int, memory_budget: int) -> int:
    """Draws per block: as many samples (:func:`sample_bytes`) as ``memory_budget`` holds,
    at least one and at most ``n_samples``."""
    return max(1, min(n_samples, memory_budget // sample_bytes(n_outputs, itemsize)))


def glm_sample_blocks(
    subset: ParameterSubset, theta: Tensor, x: Any, draws: Iterator[Tensor]
) -> Iterator[Tensor]:
    """For each block ε ``[k, P]`` of ``draws``, the linearised samples f(x; θ*) + J ε
    ``[k, B, C]``: one batched forward-mode pass (a loop over the block where vmap cannot
    run the model)."""

    def f(t: Tensor) -> Tensor:
        return subset.forward(t, x)

    def one(e: Tensor) -> Tensor:
        out, tangent = jvp(f, (theta,), (e,))
        return out + tangent

    for eps in draws:
        with torch.no_grad():
            if subset.vmap_ok:
                try:
                    yield vmap(one)(eps)
                    continue
                except (RuntimeError, NotImplementedError) as err:
                    if not is_vmap_limit(err):
                        raise
            yield torch.stack([one(e) for e in eps])


def nn_sample_blocks(
    subset: ParameterSubset, theta: Tensor, x: Any, draws: Iterator[Tensor]
) -> Iterator[Tensor]:
    """For each block ε ``[k, P]``, the network's outputs at θ* + ε ``[k, B, C]``."""
    for eps in draws:
        yield function_samples(subset, theta + eps, x)


def sample_blocks(
    pred_type: str,
    subset: ParameterSubset,
    theta: Tensor,
    x: Any,
    draw: Callable[[int], Tensor],
    n_samples: int,
    block: int,
) -> Iterator[Tensor]:
    """``n_samples`` function samples of ``pred_type`` in blocks of at most ``block``;
    ``draw(k)`` gives k weight perturbations ε ``[k, P]``."""
    sizes = [block] * (n_samples // block) + ([n_samples % block] if n_samples % block else [])
    draws = (draw(k) for k in sizes)
    if pred_type == "glm":
        return glm_sample_blocks(subset, theta, x, draws)
    return nn_sample_blocks(subset, theta, x, draws)


def streamed_uncertainty(
    likelihood: Likelihood, blocks: Iterator[Tensor], n_samples: int
) -> Uncertainty:
    """The entropy split of a classification or binary predictive from function-sample
    blocks ``[k, B, C]``, holding one block at a time: E[p] and E[H(p)] as running sums,
    then H(E[p]) and the mutual information H(E[p]) − E[H(p)]."""
    sum_p = sum_h = None
    for fs in blocks:
        p = likelihood.inverse_link(fs)
        h = likelihood.entropy(p)
        sum_p = p.sum(0) if sum_p is None else sum_p + p.sum(0)
        sum_h = h.sum(0) if sum_h is None else sum_h + h.sum(0)
    mean = sum_p / n_samples
    total, aleatoric = likelihood.entropy(mean), sum_h / n_samples
    # ≥ 0 by the concavity of the entropy; clamp the round-off where the samples agree
    return Uncertainty(total, aleatoric, (total - aleatoric).clamp_min(0), mean)


def streamed_mean(likelihood: Likelihood, blocks: Iterator[Tensor], n_samples: int) -> Tensor:
    """E[inverse_link(f)] over function-sample blocks (the ``mc`` link), one block at a time."""
    total = None
    for fs in blocks:
        p = likelihood.inverse_link(fs).sum(0)
        total = p if total is None else total + p
    return total / n_samples
