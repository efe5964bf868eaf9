"""J Π⁻¹ Jᵀ of a layer block whose covariance is diagonal in a (rotated) basis.

With J[b, c, (i, j)] = Σₛ u[c, b, s, i] v[b, s, j] and Π⁻¹ = diag(w) in that basis (Kronecker
blocks rotate u = Q_Bᵀ g and v = Q_Aᵀ ã first; diagonal blocks use g and ã as they are):

    Var[b, c, d] = Σᵢⱼ M_c[i, j] M_d[i, j] w[i, j],   M_c = Σₛ u_cs v_sᵀ,

which for one position (S = 1) factorises into Σᵢ u_ci u_di (Σⱼ vⱼ² w[i, j]).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["layer_variance"]


def layer_variance(u: Tensor, v: Tensor, w: Tensor, memory_budget: int) -> Tensor:
    """``[B, C, C]`` for ``u`` ``[C, B, S, out]``, ``v`` ``[B, S, in']``, ``w`` ``[out, in']``;
    with S > 1 the products M_c are formed in chunks of examples under ``memory_budget``."""
    if u.shape[2] == 1:
        u0 = u[:, :, 0]
        return torch.einsum("cbi,bi,dbi->bcd", u0, v[:, 0].square() @ w.T, u0)
    n_out, b = u.shape[0], u.shape[1]
    per_example = n_out * w.numel() * u.element_size()
    chunk = max(1, memory_budget // max(per_example, 1))
    parts = []
    for s0 in range(0, b, chunk):
        m = torch.einsum("cbso,bsi->bcoi", u[:, s0 : s0 + chunk], v[s0 : s0 + chunk])
        parts.append(torch.einsum("bcoi,oi,bdoi->bcd", m, w, m))
    return torch.cat(parts)
