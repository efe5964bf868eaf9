"""The posterior of M training points held in function space: their kernel, not P-sized rows.

With W = Λ^½ J ``[M·K, P]`` the rows of M points, G = Wᵀ W and the kernel K = W Wᵀ
``[M·K, M·K]`` = V diag(λ) Vᵀ (only λ > 0 kept: Wᵀ vanishes on K's null space). For a scalar δ,
by Sylvester's identity and Woodbury,

    log det Π = P log δ + Σⱼ log(1 + s λⱼ / δ),
    Π⁻¹ v = (v − Wᵀ V diag(1/(δ/s + λ)) Vᵀ W v) / δ,
    J* Π⁻¹ J*ᵀ = (J* J*ᵀ − (J* Wᵀ) V diag(1/(δ/s + λ)) Vᵀ (W J*ᵀ)) / δ,

so the structure keeps V, λ and a way to recompute W chunk by chunk (``rows``): no product
holds more than one chunk of rows. A prior that varies, the inverse diagonal and samples
need U = Wᵀ V diag(λ^-½) ``[P, r]`` (the exact low-rank form of G); it is accumulated from
the chunks when asked for and not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .base import Structure
from .lowrank import LowRank
from .saved import check_tensor_values

__all__ = ["Kernel"]

Rows = Callable[[], Iterator[Tensor]]


class Kernel(Structure):
    """Π(δ, s) = s·Wᵀ W + diag(δ) from the kernel W Wᵀ = V diag(λ) Vᵀ of M points.

    Args:
        rows: a function yielding the row chunks W_c ``[m_c, P]`` of W in a fixed order
            (``None`` after loading a state: only log det then works).
        eigenvalues: λ ``[r]`` > 0. eigenvectors: V ``[M·K, r]``.
        n_params, dtype, device, group_index: as for every structure.
    """

    def __init__(
        self,
        rows: Rows | None,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        n_params: int,
        dtype: torch.dtype,
        device: torch.device,
        group_index: Tensor | None = None,
    ) -> None:
        super().__init__(n_params, group_index, dtype, device)
        self.rows = rows
        self._set_tensors({"eigenvalues": eigenvalues, "eigenvectors": eigenvectors})

    _tensor_keys = ("eigenvalues", "eigenvectors")
    _nonnegative = ("eigenvalues",)
    _orthonormal = ("eigenvectors",)

    def _tensors(self) -> dict[str, Tensor]:
        return {"eigenvalues": self.lam, "eigenvectors": self.v}

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.lam, self.v = tensors["eigenvalues"], tensors["eigenvectors"]

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        if tensors["eigenvectors"].shape[1:] != tensors["eigenvalues"].shape:
            raise ValueError("state entries 'eigenvalues' and 'eigenvectors' do not match")

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu", dtype=None
    ) -> Kernel:
        """Restore the kernel's eigendecomposition (log det works; the rest needs a refit)."""
        dtype = dtype or state["eigenvalues"].dtype
        tensors = {k: state[k].to(device, dtype, copy=True) for k in cls._tensor_keys}
        check_tensor_values(cls, tensors)
        return cls(
            None,
            tensors["eigenvalues"],
            tensors["eigenvectors"],
            state["n_params"],
            dtype,
            torch.device(device),
            state["group_index"],
        )

    @property
    def rank(self) -> int:
        """r, the number of nonzero kernel eigenvalues."""
        return int(self.lam.numel())

    # ----------------------------------------------------------------- chunks of W
    def _chunks(self) -> Iterator[tuple[slice, Tensor]]:
        if self.rows is None:
            raise RuntimeError("this kernel structure was loaded without its data points; refit it")
        start = 0
        for w in self.rows():
            yield slice(start, start + w.shape[0]), w
            start += w.shape[0]

    def _w_times(self, v: Tensor) -> Tensor:
        """W vᵀ for rows v ``[n, P]`` → ``[M·K, n]``."""
        return torch.cat([w @ v.T for _, w in self._chunks()])

    def _wt_times(self, c: Tensor) -> Tensor:
        """Wᵀ c for c ``[M·K, n]`` → ``[n, P]``."""
        out = None
        for sl, w in self._chunks():
            part = c[sl].T @ w
            out = part if out is None else out + part
        return out

    def low_rank(self) -> LowRank:
        """G as U diag(λ) Uᵀ, U = Wᵀ V diag(λ^-½) ``[P, r]`` (P·r memory, not kept)."""
        u = self._wt_times(self.v).T / self.lam.sqrt()
        return LowRank(u, self.lam, None, self.group_index)

    def _weights(self, d: Tensor, s: Tensor) -> Tensor:
        return 1.0 / (d / s + self.lam)

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: Tensor) -> bool:
        return True

    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() != 0:
            return self.low_rank()._logdet(d, s)
        return self.n_params * d.log() + torch.log1p(s * self.lam / d).sum()

    def _trace_inverse(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() != 0:
            return self.low_rank()._trace_inverse(d, s)
        # tr Π⁻¹ = (P − Σ λ/(δ/s + λ)) / δ
        return (self.n_params - (self.lam * self._weights(d, s)).sum()) / d

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() != 0:
            return self.low_rank()._solve(v, d, s)
        flat = v.reshape(-1, self.n_params)
        wv = self._w_times(flat)  # [MK, n]
        c = self.v @ (self._weights(d, s)[:, None] * (self.v.T @ wv))
        return ((flat - self._wt_times(c)) / d).reshape(v.shape)

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() != 0:
            return self.low_rank()._fvar_dense(jac, d, s)
        b, c, p = jac.shape
        flat = jac.reshape(b * c, p)
        cross = self.v.T @ self._w_times(flat)  # Vᵀ W J*ᵀ [r, B·C]
        prior = flat @ flat.T
        post = cross.T @ (self._weights(d, s)[:, None] * cross)
        full = (prior - post) / d
        idx = torch.arange(b, device=jac.device)
        return full.view(b, c, b, c)[idx, :, idx, :]

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        return self.low_rank()._inverse_diagonal(d, s)

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return self.low_rank()._sample(z, d, s)

    def _matvec(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return s * self._curvature_matvec(v) + d * v

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        flat = v.reshape(-1, self.n_params)
        return self._wt_times(self._w_times(flat)).reshape(v.shape)

    def curvature_dense(self) -> Tensor:
        return self.low_rank().curvature_dense()

    def diagonal(self) -> Tensor:
        return self.low_rank().diagonal()
