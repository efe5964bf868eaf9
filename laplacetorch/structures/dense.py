"""Dense posterior precision from a full ``[P, P]`` curvature matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Structure

__all__ = ["Dense"]


class Dense(Structure):
    """Π(δ, s) = s·G + diag(δ) with G dense, eigendecomposed once: G = Q diag(λ) Qᵀ.

    Scalar prior δ: Π = Q diag(sλ + δ) Qᵀ, so log det Π = Σᵢ log(sλᵢ + δ) costs O(P) and solves,
    samples and functional variances use Q, with no new factorisation for a new δ or s.

    Per-layer or per-parameter prior: Π is not diagonal in Q; each distinct (δ, s) is factorised
    exactly by a Cholesky decomposition of s·G + diag(δ) (O(P³), cached for the last value when
    no gradient is requested).

    Round-off can leave tiny negative eigenvalues in a PSD curvature; they are clamped to 0, so
    G is used as its projection onto the PSD cone.

    Args:
        curvature: symmetric PSD ``[P, P]`` unit-scale curvature.
        group_index: ``[P]`` group of each parameter (for a per-layer prior).
    """

    def __init__(self, curvature: Tensor, group_index: Tensor | None = None) -> None:
        if curvature.dim() != 2 or curvature.shape[0] != curvature.shape[1]:
            raise ValueError(f"curvature must be square [P, P]; got {list(curvature.shape)}")
        if not torch.isfinite(curvature).all():
            raise ValueError("curvature contains NaN or Inf")
        super().__init__(curvature.shape[0], group_index, curvature.dtype, curvature.device)
        sym = 0.5 * (curvature + curvature.T)
        evals, evecs = torch.linalg.eigh(sym)
        self._set_tensors({"eigenvalues": evals.clamp_min(0), "eigenvectors": evecs})

    _tensor_keys = ("eigenvalues", "eigenvectors")

    def _tensors(self) -> dict[str, Tensor]:
        return {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors}

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.eigenvalues = tensors["eigenvalues"]
        self.eigenvectors = tensors["eigenvectors"]
        self._chol_key: tuple | None = None
        self._chol: Tensor | None = None

    # ----------------------------------------------------------------- helpers
    def curvature_dense(self) -> Tensor:
        q = self.eigenvectors
        return (q * self.eigenvalues) @ q.T

    def diagonal(self) -> Tensor:
        return (self.eigenvectors.square() * self.eigenvalues).sum(-1)

    def _cholesky(self, delta: Tensor, s: Tensor) -> Tensor:
        """Lower Cholesky factor of s·G + diag(δ) for a per-parameter δ."""
        cacheable = not (delta.requires_grad or s.requires_grad)
        if cacheable:
            key = (s.item(), delta.detach().cpu().numpy().tobytes())
            if key == self._chol_key:
                return self._chol
        prec = s * self.curvature_dense() + torch.diag(delta)
        chol, info = torch.linalg.cholesky_ex(prec)
        if info.item() != 0:
            raise RuntimeError("posterior precision is not positive definite (Cholesky failed)")
        if cacheable:
            self._chol_key, self._chol = key, chol
        return chol

    def _eig_prec(self, delta: Tensor, s: Tensor) -> Tensor:
        return s * self.eigenvalues + delta

    # ----------------------------------------------------------------- the API
    def logdet(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        if scalar:
            return self._eig_prec(delta, s).log().sum()
        return 2 * self._cholesky(delta, s).diagonal().log().sum()

    def solve(
        self, v: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_v(v)
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        if scalar:
            q = self.eigenvectors
            return ((v @ q) / self._eig_prec(delta, s)) @ q.T
        chol = self._cholesky(delta, s)
        flat = v.reshape(-1, self.n_params).T
        return torch.cholesky_solve(flat, chol).T.reshape(v.shape)

    def trace_inverse(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        if scalar:
            return self._eig_prec(delta, s).reciprocal().sum()
        return self.inverse_diagonal(delta, s).sum()

    def inverse_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        if scalar:
            return self.eigenvectors.square() @ self._eig_prec(delta, s).reciprocal()
        chol = self._cholesky(delta, s)
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        linv = torch.linalg.solve_triangular(chol, eye, upper=False)
        return linv.square().sum(0)

    def sample(
        self,
        n_samples: int,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        z = self._normal((n_samples, self.n_params), generator)
        if scalar:
            # Q diag((sλ+δ)^-1/2) z has covariance Q diag(1/(sλ+δ)) Qᵀ = Π⁻¹.
            return (z * self._eig_prec(delta, s).rsqrt()) @ self.eigenvectors.T
        # x = L⁻ᵀ z has covariance (L Lᵀ)⁻¹ = Π⁻¹.
        chol = self._cholesky(delta, s)
        return torch.linalg.solve_triangular(chol.T, z.T, upper=True).T

    def functional_variance(
        self, jac: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_jacobian(jac)
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        if scalar:
            m = (jac @ self.eigenvectors) * self._eig_prec(delta, s).rsqrt()
        else:
            chol = self._cholesky(delta, s)
            b, c, p = jac.shape
            m = torch.linalg.solve_triangular(chol, jac.reshape(b * c, p).T, upper=False)
            m = m.T.reshape(b, c, p)
        return m @ m.transpose(-1, -2)

    def functional_variance_head(
        self,
        phi_aug: Tensor,
        index: Tensor,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
    ) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        if not scalar:
            return super().functional_variance_head(phi_aug, index, prior_precision, scale)
        # (J Q)[b, c, :] = Σⱼ φ̃[b, j] Q[index[c, j], :]: B·C·D̃·P instead of B·C·P².
        q_head = self.eigenvectors[index]  # [C, D̃, P]
        m = torch.einsum("bj,cjp->bcp", phi_aug, q_head)
        m = m * self._eig_prec(delta, self._scale(scale)).rsqrt()
        return m @ m.transpose(-1, -2)
