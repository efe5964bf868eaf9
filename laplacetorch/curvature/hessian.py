"""The Hessian of the summed negative log-likelihood, by Hessian-vector products.

For a batch, H v = ∇²θ Σₙ ℓ(f(xₙ; θ), yₙ) · v by forward-over-reverse (a ``jvp`` of
``grad``), vmap'd over the rows of V. Unlike the GGN, H = Σₙ Jₙᵀ Λₙ Jₙ + Σₙ Σ_c (∂ℓₙ/∂f_c)
∇²θ f_c is indefinite in general away from a minimum: the structures built from it keep
its negative eigenvalues and refuse a prior that leaves Π = s·H + P₀ not positive definite.
For a linear head (the last layer) it equals the GGN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..likelihoods import Likelihood
from ..model_call import jvp
from ..params import ParameterSubset

__all__ = ["batch_hessian_matvec", "hessian_rows"]


def batch_hessian_matvec(
    subset: ParameterSubset,
    likelihood: Likelihood,
    x: Any,
    y: Tensor,
    theta: Tensor,
    v: Tensor,
    *,
    loop: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(H V, Σ ℓ)`` for one batch: H of the summed unit-scale NLL applied to the rows of
    ``v`` ``[m, P]`` (vmapped over them, or with ``loop`` one at a time), and the summed NLL."""

    def loss(th: Tensor) -> Tensor:
        return likelihood.nll_unit(subset.forward(th, x), y).sum()

    g = grad(loss)
    if loop:
        hv = torch.stack([jvp(g, (theta,), (t,))[1] for t in v])
    else:
        hv = vmap(lambda t: jvp(g, (theta,), (t,))[1])(v)
    with torch.no_grad():
        value = loss(theta)
    return hv.detach(), value


def hessian_rows(
    subset: ParameterSubset,
    likelihood: Likelihood,
    x: Any,
    y: Tensor,
    theta: Tensor,
    memory_budget: int,
    diagonal_only: bool = False,
) -> tuple[Tensor, Tensor]:
    """The batch Hessian ``[P, P]`` (or its diagonal ``[P]``) from P Hessian-vector products
    in chunks of unit vectors under ``memory_budget``, and the summed NLL."""
    p = subset.n_params
    eye_rows = max(1, memory_budget // max(2 * p * theta.element_size(), 1))
    parts, value = [], None
    for r0 in range(0, p, eye_rows):
        r1 = min(p, r0 + eye_rows)
        e = torch.zeros(r1 - r0, p, dtype=theta.dtype, device=theta.device)
        e[torch.arange(r1 - r0), torch.arange(r0, r1)] = 1
        hv, value = batch_hessian_matvec(subset, likelihood, x, y, theta, e)
        parts.append(hv[torch.arange(r1 - r0), torch.arange(r0, r1)] if diagonal_only else hv)
    h = torch.cat(parts)
    return (h if diagonal_only else 0.5 * (h + h.T)), value
