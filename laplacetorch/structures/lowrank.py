"""Low-rank (plus diagonal) posterior precision."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Structure
from .checks import log_sum
from .layer_parts import PartFactors
from .layer_variance import layer_variance, weighted_gram
from .layout import LayerBlock

__all__ = ["LowRank"]


class LowRank(Structure):
    """Π(δ, s) = s·(U diag(λ) Uᵀ + diag(d)) + diag(δ), U ``[P, r]`` orthonormal, λ ≥ 0.

    ``d`` is an optional diagonal correction (e.g. diag G − diag(U diag(λ) Uᵀ)), zero by
    default. Write D = s·d + δ (diagonal) and W = √s U diag(√λ), so Π = D + W Wᵀ:

    - scalar δ and no correction: log det Π = P·log δ + Σᵣ log(1 + sλᵣ/δ) (P, not r, copies of
      log δ), Π⁻¹ = (I − U diag(sλ/(sλ + δ)) Uᵀ)/δ — O(P r);
    - otherwise the matrix-determinant lemma and Woodbury with K = I_r + Wᵀ D⁻¹ W:
      log det Π = Σ log D + log det K, Π⁻¹ = D⁻¹ − D⁻¹ W K⁻¹ Wᵀ D⁻¹ — O(P r²).

    Everything is exact for the matrix it represents; a new δ or s costs O(P r²) at most.

    With ``layer_parts`` (where coordinates of θ sit in which layer) the predictive needs no
    dense Jacobian: J Π⁻¹ Jᵀ = J D⁻¹ Jᵀ − (J D⁻¹W) K⁻¹ (J D⁻¹W)ᵀ, where J D⁻¹ Jᵀ is a diagonal
    layer variance and J M (M = D⁻¹W ``[P, r]``) is, for a layer part,
    (J M)[b, c, k] = Σₛ Σᵢⱼ g[c, b, s, i] M[(i, j), k] ã[b, s, j]; the coordinates outside
    the parts use the source's dense columns.

    Args:
        eigenvectors: U ``[P, r]`` with orthonormal columns.
        eigenvalues: λ ``[r]``.
        diag_correction: d ``[P]`` or ``None``.
        layer_parts: ``(layout, index)`` pairs: the coordinates ``index`` ``[numel]`` of the
            block are layout's [rows, cols (+ bias)] in row-major order; disjoint.
    """

    _tensor_keys = ("eigenvectors", "eigenvalues", "diag_correction")
    _orthonormal = ("eigenvectors",)

    def __init__(
        self,
        eigenvectors: Tensor,
        eigenvalues: Tensor,
        diag_correction: Tensor | None = None,
        group_index: Tensor | None = None,
        layer_parts: list[tuple[LayerBlock, Tensor]] | None = None,
    ) -> None:
        if eigenvectors.dim() != 2 or eigenvalues.shape != (eigenvectors.shape[1],):
            raise ValueError(
                f"eigenvectors must be [P, r] and eigenvalues [r]; got "
                f"{list(eigenvectors.shape)} and {list(eigenvalues.shape)}"
            )
        super().__init__(
            eigenvectors.shape[0], group_index, eigenvectors.dtype, eigenvectors.device
        )
        d = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)
        if diag_correction is not None:
            if diag_correction.shape != (self.n_params,):
                raise ValueError(f"diag_correction must have shape [{self.n_params}]")
            d = diag_correction.clamp_min(0)
        self._set_tensors(
            {
                "eigenvectors": eigenvectors,
                "eigenvalues": eigenvalues.clamp_min(0),
                "diag_correction": d,
            }
        )
        self._set_layer_parts(layer_parts)

    def _tensors(self) -> dict[str, Tensor]:
        return {"eigenvectors": self.U, "eigenvalues": self.lam, "diag_correction": self.d}

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        u, lam = tensors["eigenvectors"], tensors["eigenvalues"]
        if u.dim() != 2 or u.shape[0] != self.n_params or lam.shape != (u.shape[1],):
            raise ValueError(f"state entries of LowRank do not have P = {self.n_params}")
        if tensors["diag_correction"].shape != (self.n_params,):
            raise ValueError(f"state entry 'diag_correction' must have shape [{self.n_params}]")

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self._by_input: dict[LayerBlock, Tensor] = {}
        self.U, self.lam, self.d = (
            tensors["eigenvectors"],
            tensors["eigenvalues"],
            tensors["diag_correction"],
        )
        self._has_correction = bool((self.d != 0).any())

    @property
    def rank(self) -> int:
        """r, the number of eigenpairs."""
        return self.lam.shape[0]

    # ----------------------------------------------------------------- helpers
    def _parts(self, d: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """(D = s·d_corr + δ as ``[P]``, W = √s U diag(√λ))."""
        dvec = (s * self.d + d).expand(self.n_params)
        return dvec, self.U * (s * self.lam).sqrt()

    def _isotropic(self, d: Tensor) -> bool:
        return d.dim() == 0 and not self._has_correction

    def _woodbury(self, dvec: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """(D⁻¹W, Cholesky of K = I + Wᵀ D⁻¹ W)."""
        dw = w / dvec.unsqueeze(1)
        k = torch.eye(self.rank, dtype=self.dtype, device=self.device) + w.T @ dw
        return dw, torch.linalg.cholesky(k)

    # ----------------------------------------------------------------- block methods
    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        if self._isotropic(d):
            return self.n_params * d.log() + torch.log1p(s * self.lam / d).sum()
        dvec, w = self._parts(d, s)
        _, chol = self._woodbury(dvec, w)
        return log_sum(dvec) + 2 * log_sum(chol.diagonal())

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if self._isotropic(d):
            shrink = s * self.lam / (s * self.lam + d)
            return (v - ((v @ self.U) * shrink) @ self.U.T) / d
        dvec, w = self._parts(d, s)
        dw, chol = self._woodbury(dvec, w)
        inner = torch.cholesky_solve((v @ dw).unsqueeze(-1), chol).squeeze(-1)
        return v / dvec - inner @ dw.T

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        dvec, w = self._parts(d, s)
        dw, chol = self._woodbury(dvec, w)
        m = torch.linalg.solve_triangular(chol, dw.T, upper=False)  # L⁻¹ Wᵀ D⁻¹, [r, P]
        return dvec.reciprocal() - m.square().sum(0)

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        dvec, w = self._parts(d, s)
        # Π = D^½ (I + Y Yᵀ) D^½ with Y = D^-½ W = V S Hᵀ (thin SVD), so
        # x = D^-½ (I + V (1/√(1+S²) − 1) Vᵀ) z has covariance Π⁻¹.
        y = w / dvec.sqrt().unsqueeze(1)
        v, sv, _ = torch.linalg.svd(y, full_matrices=False)
        z = z + ((z @ v) * ((1 + sv.square()).rsqrt() - 1)) @ v.T
        return z / dvec.sqrt()

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        dvec, w = self._parts(d, s)
        dw, chol = self._woodbury(dvec, w)
        base = weighted_gram(jac, dvec.reciprocal())
        m = torch.linalg.solve_triangular(chol, (jac @ dw).transpose(-1, -2), upper=False)
        return base - m.transpose(-1, -2) @ m

    def _input_major(self, layout: LayerBlock, index: Tensor) -> Tensor:
        """U's rows of a layer part as ``[in', out·r]`` (kept: the predictive's every chunk
        needs them; as large as those rows of U)."""
        cached = self._by_input.get(layout)
        if cached is None:
            out, cols = layout.shape
            u = self.U[index].view(out, cols, self.rank)
            cached = u.transpose(0, 1).reshape(cols, out * self.rank)
            self._by_input[layout] = cached
        return cached

    def _fvar_parts(self, split: PartFactors, d: Tensor, s: Tensor, memory_budget: int) -> Tensor:
        # J Π⁻¹ Jᵀ = J D⁻¹ Jᵀ − (J D⁻¹ U) diag(w) K⁻¹ diag(w) (J D⁻¹ U)ᵀ, w = √(sλ),
        # K = I + diag(w) Uᵀ D⁻¹ U diag(w). Under a scalar prior K is diagonal and each
        # chunk is one GEMM a layer with U's rows kept input-major; otherwise D⁻¹U's rows
        # are gathered per chunk in column blocks.
        inv_d = (s * self.d + d).expand(self.n_params).reciprocal()
        iso, w = self._isotropic(d), (s * self.lam).sqrt()
        b, c = split.shape
        jdu = torch.zeros(b, c, self.rank, dtype=self.dtype, device=self.device)
        base = 0.0
        for layout, index, a, g in split.parts:
            base = base + layer_variance(g, a, inv_d[index].view(layout.shape), memory_budget)
            if iso:  # U's rows of the layer, laid out [in', out·r] once (cached)
                jdu += _layer_times(a, g, self._input_major(layout, index), memory_budget)
                continue
            # D⁻¹U's rows in chunks of columns: each copy stays within the budget and
            # within the size of the layer's factors for this chunk of inputs
            room = min(memory_budget, (a.numel() + g.numel()) * a.element_size())
            step = max(1, room // max(2 * index.numel() * self.U.element_size(), 1))
            inv_rows = inv_d[index].unsqueeze(1)
            for k0 in range(0, self.rank, step):
                u = self.U[index, k0 : k0 + step] * inv_rows
                u = u.view(*layout.shape, -1).transpose(0, 1).reshape(layout.shape[1], -1)
                jdu[..., k0 : k0 + step] += _layer_times(a, g, u, memory_budget)
        if split.cols is not None:
            rest, cols = split.rest, split.cols
            u = self.U[rest] if iso else self.U[rest] * inv_d[rest].unsqueeze(1)
            base = base + weighted_gram(cols, inv_d[rest])
            jdu += cols @ u
        if iso:  # UᵀU = I: K is diagonal
            m = jdu * (w / d / (1 + w.square() / d).sqrt())
            return base - m @ m.transpose(-1, -2)
        eye = torch.eye(self.rank, dtype=self.dtype, device=self.device)
        k = eye + w.unsqueeze(1) * (self.U.T @ (self.U * inv_d.unsqueeze(1))) * w
        chol = torch.linalg.cholesky(k)
        m = torch.linalg.solve_triangular(chol, (jdu * w).transpose(-1, -2), upper=False)
        return base - m.transpose(-1, -2) @ m

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        return ((v @ self.U) * self.lam) @ self.U.T + v * self.d

    def curvature_dense(self) -> Tensor:
        return (self.U * self.lam) @ self.U.T + torch.diag(self.d)

    def diagonal(self) -> Tensor:
        return (self.U.square() * self.lam).sum(1) + self.d


def _layer_times(a: Tensor, g: Tensor, m: Tensor, memory_budget: int) -> Tensor:
    """(J M)[b, c, k] = Σₛ Σᵢⱼ g[c, b, s, i] M[(i, j), k] a[b, s, j] ``[B, C, r]`` for ``a``
    ``[B, S, in']``, ``g`` ``[C, B, S, out]`` and M's rows laid out input-major, ``m``
    ``[in', out·r]``: t = a·m ``[b, S, out, r]`` is one GEMM, in chunks of examples under
    ``memory_budget``."""
    n_b, n_pos, n_in = a.shape
    n_out = g.shape[-1]
    r = m.shape[1] // n_out
    chunk = max(1, memory_budget // max(n_pos * m.shape[1] * a.element_size(), 1))
    parts = []
    for b0 in range(0, n_b, chunk):
        ac, gc = a[b0 : b0 + chunk], g[:, b0 : b0 + chunk]
        t = (ac.reshape(-1, n_in) @ m).view(ac.shape[0], n_pos, n_out, r)
        if n_pos == 1:
            parts.append(torch.matmul(gc[:, :, 0].transpose(0, 1), t[:, 0]))
        else:
            parts.append(torch.einsum("cbsi,bsik->bck", gc, t))
    return torch.cat(parts)
