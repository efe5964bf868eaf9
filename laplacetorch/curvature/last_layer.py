"""Closed-form curvature of a linear last layer from its features.

For the head f = W φ + b, write φ̃ = [φ, 1]. The Jacobian of fₙ with respect to the augmented
weight W̃ = [W | b] is I_C ⊗ φ̃ₙᵀ, so with Λₙ the output Hessian (GGN) or rₙrₙᵀ with rₙ the
output gradient (empirical Fisher):

    G[(c, i), (c', j)] = Σₙ Λₙ[c, c'] φ̃ₙᵢ φ̃ₙⱼ,        diag G[(c, i)] = Σₙ Λₙ[c, c] φ̃ₙᵢ².

One forward pass of the network gives φ and f; the sums are two matrix products per batch.
The result is permuted into the parameter order [vec(W) row-major, b] (see ``head_index``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset, head_index
from .base import curvature_pass
from .context import DEFAULT_CONTEXT, FitContext

__all__ = ["last_layer_curvature"]


def _augment(phi: Tensor, has_bias: bool) -> Tensor:
    if not has_bias:
        return phi
    return torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)


def _output_curvature(
    likelihood: Likelihood, f: Tensor, y: Tensor, kind: str
) -> tuple[Tensor | None, Tensor]:
    """(Λₙ ``[B, C, C]`` or None, its diagonal ``[B, C]``) for the GGN or the EF."""
    if kind == "ggn":
        lam = likelihood.output_hessian(f, y)
        return lam, lam.diagonal(dim1=-2, dim2=-1)
    r = likelihood.output_grad(f, y)
    return r.unsqueeze(-1) * r.unsqueeze(-2), r.square()


def last_layer_curvature(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    kind: str,
    diagonal: bool,
    context: FitContext = DEFAULT_CONTEXT,
    order: Tensor | None = None,
) -> tuple[Tensor, int, int, Tensor]:
    """Closed-form last-layer curvature ``(G [P, P] or diag [P], N, C, Σ nll)``.

    ``order``: the positions of θ the result is over, in that order (default: θ itself), so
    that a caller wanting another order gets it in one gather rather than two.
    """
    has_bias = subset.last_layer.bias is not None and len(subset.names) == 2

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        phi, f = subset.features(x)
        phi_aug = _augment(phi, has_bias)
        lam, lam_diag = _output_curvature(likelihood, f, y, kind)
        out = {"loss": likelihood.nll_unit(f, y).sum()}
        if diagonal:
            out["G"] = lam_diag.T @ phi_aug.square()  # [C, D̃]
            return out
        # G[c, :, e, :] = Σₙ Λₙ[c, e] φₙ φₙᵀ, one GEMM per class c: the temporary stays
        # [B, C·D̃] (one GEMM over all (c, e) would need [B, C²·D̃]; the old form [B, D̃²])
        b, d = phi_aug.shape
        g = phi_aug.new_empty(n_out, d, n_out * d)
        for c in range(n_out):
            weighted = (lam[:, c, :, None] * phi_aug[:, None, :]).reshape(b, n_out * d)
            torch.mm(phi_aug.T, weighted, out=g[c])  # [D̃, C·D̃], written in place
        out["G"] = g
        return out

    sums, n_data, n_out = curvature_pass(
        subset, likelihood, loader, step, context, desc="last-layer curvature"
    )
    n_feat = subset.last_layer.in_features
    d = n_feat + int(has_bias)
    # position p of θ holds augmented entry perm[p]
    perm = torch.argsort(head_index(n_out, n_feat, has_bias, sums["G"].device).reshape(-1))
    if order is not None:
        perm = perm[order]
    if diagonal:
        return sums["G"].reshape(-1)[perm], n_data, n_out, sums["loss"]
    g = sums["G"].view(n_out * d, n_out * d)
    if not torch.equal(perm, torch.arange(len(perm), device=perm.device)):
        g = g[perm[:, None], perm]  # one [P, P] gather
    return g, n_data, n_out, sums["loss"]
