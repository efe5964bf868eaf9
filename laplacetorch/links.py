"""Link approximations: E[softmax(f)] or E[sigmoid(f)] for f ~ N(μ, Σ), and Gaussian samples.

- ``probit``: softmax(μ / √(1 + π/8 · diag Σ)),
- ``bridge``: the Laplace bridge (Hobbhahn et al., 2022) on the zero-sum projection of (μ, Σ),
  ``bridge_norm`` its normalised variant,
- ``mc``: the average of softmax(μ + L ε) over samples, L Lᵀ = Σ.

Means are ``[B, C]`` and covariances ``[B, C, C]``. The likelihoods choose among these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bridge",
    "bridge_concentration",
    "gaussian_samples",
    "log_bridge_concentration",
    "probit",
    "psd_sqrt",
]


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


def log_bridge_concentration(mean: Tensor, var_diag: Tensor) -> Tensor:
    """log α of :func:`bridge_concentration`, finite for any finite μ (α itself overflows
    once μ_c − min μ exceeds ~700 in float64, ~88 in float32)."""
    c = mean.shape[-1]
    log_term = mean + torch.logsumexp(-mean, dim=-1, keepdim=True) - 2 * math.log(c)
    log_a = math.log(1 - 2 / c) if c > 2 else -math.inf  # C = 2: the constant vanishes
    return torch.logaddexp(torch.full_like(log_term, log_a), log_term) - var_diag.log()


def bridge(mean: Tensor, var: Tensor, normalise: bool = False) -> Tensor:
    """Mean α / Σα of the Laplace-bridge Dirichlet of N(μ, Σ) conditioned on Σ_c f_c = 0
    (Hobbhahn et al. 2022, as laplace-torch):

        μ' = μ − Σ1 (1ᵀμ) / (1ᵀΣ1),   Σ' = Σ − Σ11ᵀΣ / (1ᵀΣ1).

    The bridge ignores correlations and is accurate only for near-isotropic covariances;
    prefer ``probit`` or ``mc`` otherwise. ``normalise`` rescales μ' and Σ' by the mean
    variance first (the "bridge_norm" variant). Variances below √tiny are clamped (the bridge
    is singular at zero variance); with 1ᵀΣ1 = 0 there is nothing to condition on.
    """
    c = mean.shape[-1]
    s1 = var.sum(-1)  # Σ1, [B, C]
    total = s1.sum(-1, keepdim=True)  # 1ᵀΣ1 ∈ [0, C·tr Σ] for a PSD Σ
    # 1ᵀΣ1 at the round-off of its C² terms is zero: nothing to condition on (dividing by it
    # would amplify the round-off of Σ1 into an O(1) shift of μ)
    trace = var.diagonal(dim1=-2, dim2=-1).abs().sum(-1, keepdim=True)
    zero = total <= c * c * torch.finfo(var.dtype).eps * trace
    s1 = torch.where(zero, torch.zeros_like(s1), s1)
    total = torch.where(zero, torch.ones_like(total), total).clamp_min(torch.finfo(var.dtype).tiny)
    mu = mean - s1 * mean.sum(-1, keepdim=True) / total
    v = var.diagonal(dim1=-2, dim2=-1) - s1.square() / total
    v = v.clamp_min(torch.finfo(v.dtype).tiny ** 0.5)
    if normalise:
        vm = v.mean(-1, keepdim=True) / math.sqrt(c / 2)
        mu, v = mu / vm.sqrt(), v / vm
    return torch.softmax(log_bridge_concentration(mu, v), dim=-1)  # α / Σα, without overflow


def psd_sqrt(var: Tensor) -> Tensor:
    """L with L Lᵀ = Σ for a batch of PSD matrices (Cholesky, or eigh when singular)."""
    chol, info = torch.linalg.cholesky_ex(var)
    if bool((info == 0).all()):
        return chol
    w, q = torch.linalg.eigh(var)
    return q * w.clamp_min(0).sqrt().unsqueeze(-2)


def gaussian_samples(
    mean: Tensor, var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``[S, B, C]`` samples f = μ + L ε of N(μ, Σ), L Lᵀ = Σ."""
    eps = torch.randn(
        (n_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
    )
    return mean + torch.einsum("bij,sbj->sbi", psd_sqrt(var), eps)
