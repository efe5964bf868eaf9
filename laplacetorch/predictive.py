"""Predictive distributions: the linearised (GLM) moments and the link approximations.

GLM: f(x) ~ N(f(x; θ*), J Π⁻¹ Jᵀ) with J = ∂f/∂θ at θ*, shapes ``[B, C]`` and ``[B, C, C]``.
Jacobians come from vmap'd ``jacrev`` in chunks of examples under a memory budget; the last
layer builds J from its features instead (J = I_C ⊗ φ̃ᵀ, no autograd).

Links for classification (softmax) and binary (sigmoid) outputs:
- ``probit``: softmax(μ / √(1 + π/8 · diag Σ)),
- ``bridge``: the Laplace bridge (Hobbhahn et al., 2022) on the zero-sum projection of (μ, Σ),
  ``bridge_norm`` its normalised variant,
- ``mc``: the average of softmax(μ + L ε) over samples, L Lᵀ = Σ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from .curvature.per_example import DEFAULT_MEMORY_BUDGET, _index, _unsqueeze
from .params import ParameterSubset, head_index
from .structures import Structure

__all__ = [
    "LINK_APPROXIMATIONS",
    "LinearHead",
    "bridge",
    "bridge_concentration",
    "functional_variance",
    "gaussian_samples",
    "glm_jacobians",
    "mc_link",
    "probit",
    "psd_sqrt",
]

LINK_APPROXIMATIONS = ("probit", "bridge", "bridge_norm", "mc")


class LinearHead:
    """The Jacobian of a linear last layer, kept factored: J_b = I_C ⊗ φ̃_bᵀ.

    ``index[c, j]`` is the position in θ of the weight linking feature j (j = D: the bias) to
    output c, so J[b, c, index[c, j]] = φ̃[b, j] and J is zero elsewhere.
    """

    def __init__(self, phi_aug: Tensor, index: Tensor) -> None:
        self.phi_aug, self.index = phi_aug, index

    @property
    def n_out(self) -> int:
        return self.index.shape[0]


def glm_jacobians(
    subset: ParameterSubset,
    x: Any,
    n_examples: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[Tensor, Tensor | LinearHead]]:
    """Yield ``(f [b, C], J)`` for chunks of the batch, J = ∂f/∂θ at θ*: a dense ``[b, C, P]``
    tensor from vmap'd ``jacrev``, or for the last layer a factored :class:`LinearHead`."""
    if subset.kind == "last_layer":
        phi, f = subset.features(x)
        has_bias = len(subset.names) == 2
        if has_bias:
            phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)
        index = head_index(f.shape[1], subset.last_layer.in_features, has_bias, phi.device)
        yield f, LinearHead(phi, index)
        return
    theta = subset.map_vector()

    def f1(th: Tensor, xn: Any) -> Tensor:
        return subset.forward(th, _unsqueeze(xn)).squeeze(0)

    def jac_and_value(xn: Any) -> tuple[Tensor, Tensor]:
        def with_aux(th: Tensor) -> tuple[Tensor, Tensor]:
            out = f1(th, xn)
            return out, out.detach()

        return jacrev(with_aux, has_aux=True)(theta)

    row_bytes = subset.n_params * theta.element_size()
    with torch.no_grad():
        n_out = subset.model(_index(x, slice(0, 1))).shape[-1]
    chunk = max(1, memory_budget // max(row_bytes * n_out, 1))
    for s in range(0, n_examples, chunk):
        jac, out = vmap(jac_and_value)(_index(x, slice(s, s + chunk)))
        yield out, jac


def functional_variance(
    structure: Structure, jac: Tensor | LinearHead, prior_precision: Tensor, scale: Tensor | float
) -> Tensor:
    """J Π⁻¹ Jᵀ ``[b, C, C]`` for a dense or factored Jacobian."""
    if isinstance(jac, LinearHead):
        return structure.functional_variance_head(jac.phi_aug, jac.index, prior_precision, scale)
    return structure.functional_variance(jac, prior_precision, scale)


def probit(mean: Tensor, var: Tensor, binary: bool = False) -> Tensor:
    """Probit approximation of E[softmax(f)] (or E[sigmoid(f)]), ``[B, C]``."""
    kappa = (1 + math.pi / 8 * var.diagonal(dim1=-2, dim2=-1)).rsqrt()
    return torch.sigmoid(mean * kappa) if binary else torch.softmax(mean * kappa, dim=-1)


def bridge_concentration(mean: Tensor, var_diag: Tensor) -> Tensor:
    """Dirichlet concentration α of the Laplace bridge for means ``[B, C]`` and variances
    ``[B, C]``: α_c = (1 − 2/C + e^{μ_c} Σ_l e^{−μ_l} / C²) / v_c."""
    c = mean.shape[-1]
    # e^{μ_c} Σ_l e^{−μ_l} / C² in log space for stability
    log_term = mean + torch.logsumexp(-mean, dim=-1, keepdim=True) - 2 * math.log(c)
    return (1 - 2 / c + log_term.exp()) / var_diag


def bridge(mean: Tensor, var: Tensor, normalise: bool = False) -> Tensor:
    """Mean α / Σα of the Laplace-bridge Dirichlet after projecting (μ, Σ) onto Σ_c f_c = 0.

    The bridge ignores correlations and is accurate only for near-isotropic projected
    covariances; prefer ``probit`` or ``mc`` otherwise. ``normalise`` rescales μ and Σ by the
    mean variance first (the "bridge_norm" variant). Variances below √tiny are clamped (the
    bridge is singular at zero variance).
    """
    c = mean.shape[-1]
    proj = torch.eye(c, dtype=mean.dtype, device=mean.device) - 1.0 / c
    mu = mean @ proj
    v = (proj @ var @ proj).diagonal(dim1=-2, dim2=-1)
    v = v.clamp_min(torch.finfo(v.dtype).tiny ** 0.5)
    if normalise:
        vm = v.mean(-1, keepdim=True) / math.sqrt(c / 2)
        mu, v = mu / vm.sqrt(), v / vm
    alpha = bridge_concentration(mu, v)
    return alpha / alpha.sum(-1, keepdim=True)


def psd_sqrt(var: Tensor) -> Tensor:
    """L with L Lᵀ = Σ for a batch of PSD matrices (Cholesky, or eigh when singular)."""
    chol, info = torch.linalg.cholesky_ex(var)
    if bool((info == 0).all()):
        return chol
    w, q = torch.linalg.eigh(var)
    return q * w.clamp_min(0).sqrt().unsqueeze(-2)


def mc_link(
    mean: Tensor,
    var: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    binary: bool = False,
) -> Tensor:
    """Monte-Carlo E[softmax(f)] (or sigmoid) for f ~ N(μ, Σ), averaged over ``n_samples``."""
    return link_samples(mean, var, n_samples, generator, binary).mean(0)


def link_samples(
    mean: Tensor,
    var: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    binary: bool = False,
) -> Tensor:
    """``[S, B, C]`` samples of softmax(f) (or sigmoid(f)) for f ~ N(μ, Σ)."""
    f = gaussian_samples(mean, var, n_samples, generator)
    return torch.sigmoid(f) if binary else torch.softmax(f, dim=-1)


def gaussian_samples(
    mean: Tensor, var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``[S, B, C]`` samples f = μ + L ε of N(μ, Σ), L Lᵀ = Σ."""
    eps = torch.randn(
        (n_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
    )
    return mean + torch.einsum("bij,sbj->sbi", psd_sqrt(var), eps)
