"""GLM functional variances J Σ Jᵀ from layer inputs and output gradients, without J.

For a layer z = W a + b the Jacobian rows of output c are g_c ⊗ ã with g_c = ∂f_c/∂z (one
batched backward of the C unit vectors gives all of them) and ã = [a, 1]. Contracting these
with a diagonal or Kronecker-eigenbasis covariance per layer costs about C backward passes
plus small per-layer products, instead of a ``[B, C, P]`` Jacobian. Parameters outside the
handled layers fall back to dense Jacobians of just those parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .curvature.kfac import _group_columns, _positions, block_plan, capture_forward, kfac_layers
from .curvature.layer_capture import backward_columns, linear_layers, linear_output_grads
from .curvature.per_example import DEFAULT_MEMORY_BUDGET
from .params import ParameterSubset
from .predictive import glm_jacobians
from .structures import Kron

__all__ = ["diagonal_glm_moments", "kron_glm_moments"]


def _unit_columns(f: Tensor) -> Tensor:
    n_out = f.shape[1]
    eye = torch.eye(n_out, dtype=f.dtype, device=f.device)
    return eye.unsqueeze(1).expand(n_out, f.shape[0], n_out).contiguous()  # [C, B, C]


def _add_rest(var, subset, rest_names, rest_var_fn, x, n_examples, memory_budget) -> None:
    """var += J_rest Σ_rest J_restᵀ with dense Jacobians of the remaining parameters."""
    if not rest_names:
        return
    rest = ParameterSubset(subset.model, "subnetwork", subnetwork=rest_names)
    start = 0
    for f_chunk, jac in glm_jacobians(rest, x, n_examples, memory_budget):
        stop = start + f_chunk.shape[0]
        var[start:stop] += rest_var_fn(rest, jac)
        start = stop


def diagonal_glm_moments(
    subset: ParameterSubset,
    inv_diag: Tensor,
    x: Any,
    n_examples: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[Tensor, Tensor] | None:
    """GLM mean and J Σ Jᵀ for a diagonal posterior covariance Σ = diag(``inv_diag``) without
    building J for Linear layers: with a the layer input and g_c = ∂f_c/∂z (one batched
    backward of the C unit vectors),

        Var[c, d] += Σᵢ g_c[i] g_d[i] (Σⱼ aⱼ² Σ_W[i, j] + Σ_b[i]).

    Parameters outside such layers go through dense Jacobians. ``None`` when no Linear layer
    qualifies (the caller then uses the dense path).
    """
    layers = linear_layers(subset)
    if not layers:
        return None
    captured = linear_output_grads(subset.model, layers, x)
    if captured is None:
        return None
    f, record = captured
    grads = backward_columns(f, record, [layer.name for layer in layers], _unit_columns(f))
    var_named = subset.to_named(inv_diag)
    var = f.new_zeros(f.shape[0], f.shape[1], f.shape[1])
    with torch.no_grad():
        for layer, g in zip(layers, grads, strict=True):
            u = record["inputs"][layer.name].square() @ var_named[layer.weight].T  # [B, out]
            if layer.bias is not None:
                u = u + var_named[layer.bias]
            var += torch.einsum("cbi,bi,dbi->bcd", g, u, g)
    covered = {n for layer in layers for n in (layer.weight, layer.bias) if n}
    rest_names = [n for n in subset.names if n not in covered]

    def rest_var(rest: ParameterSubset, jac: Tensor) -> Tensor:
        return torch.einsum("bcp,p,bdp->bcd", jac, rest.from_named(var_named), jac)

    _add_rest(var, subset, rest_names, rest_var, x, n_examples, memory_budget)
    return f.detach(), var


def kron_glm_moments(
    subset: ParameterSubset,
    structure: Kron,
    joint_bias: bool,
    prior_precision: Tensor,
    scale: Tensor | float,
    x: Any,
    n_examples: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[Tensor, Tensor] | None:
    """GLM mean and J Π⁻¹ Jᵀ for a Kron / EKron structure, per block in its eigenbasis.

    With u_c = Q_Bᵀ g_c and v = Q_Aᵀ ã, block b contributes Σᵢⱼ u_ci u_di vⱼ² / (s Eᵢⱼ + δ)
    without weight sharing; with S positions the rotated rows Σₛ u_cs v_sᵀ are formed per
    block in chunks. ``None`` when the structure's blocks do not match the model's layers.
    """
    layers, rest_names = kfac_layers(subset, joint_bias)
    plan = block_plan(layers)
    if len(plan) != len(structure.blocks):
        return None
    delta, scalar = structure._prior(prior_precision)
    s = structure._scale(scale)
    f, record = capture_forward(subset.model, layers, x)
    grads = dict(
        zip(
            [la.name for la in layers],
            backward_columns(f, record, [la.name for la in layers], _unit_columns(f)),
            strict=True,
        )
    )
    var = f.new_zeros(f.shape[0], f.shape[1], f.shape[1])
    with torch.no_grad():
        for blk, (layer, part, gi, rows) in zip(structure.blocks, plan, strict=True):
            _, _, qb, qa = blk
            inv = structure._block_eig(delta, scalar, s, blk).reciprocal()  # [out, in']
            a, g = _positions(layer, record["inputs"][layer.name], grads[layer.name])
            u = g[..., rows] @ qb  # [C, B, S, out]
            if part == "bias":
                ub = u.sum(2)
                var += torch.einsum("cbi,i,dbi->bcd", ub, inv[:, 0], ub)
                continue
            if layer.joint_bias:
                a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
            v = _group_columns(layer, a, gi) @ qa  # [B, S, in']
            if u.shape[2] == 1:
                w = v[:, 0].square() @ inv.T  # [B, out]
                var += torch.einsum("cbi,bi,dbi->bcd", u[:, :, 0], w, u[:, :, 0])
            else:
                var += _shared_block_variance(u, v, inv, memory_budget)
    full = f.new_zeros(subset.n_params)
    full[structure.diag_index] = structure._diag_prec(delta, scalar, s).reciprocal()
    var_named = subset.to_named(full)

    def rest_var(rest: ParameterSubset, jac: Tensor) -> Tensor:
        return torch.einsum("bcp,p,bdp->bcd", jac, rest.from_named(var_named), jac)

    _add_rest(var, subset, rest_names, rest_var, x, n_examples, memory_budget)
    return f.detach(), var


def _shared_block_variance(u: Tensor, v: Tensor, inv: Tensor, memory_budget: int) -> Tensor:
    """Σᵢⱼ M_c[i, j] M_d[i, j] inv[i, j] with M_c = Σₛ u_cs v_sᵀ, in chunks of examples."""
    n_out, b = u.shape[0], u.shape[1]
    per_example = n_out * inv.numel() * u.element_size()
    chunk = max(1, memory_budget // max(per_example, 1))
    parts = []
    for s0 in range(0, b, chunk):
        m = torch.einsum("cbso,bsi->bcoi", u[:, s0 : s0 + chunk], v[s0 : s0 + chunk])
        parts.append(torch.einsum("bcoi,oi,bdoi->bcd", m, inv, m))
    return torch.cat(parts)
