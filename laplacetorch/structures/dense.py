"""Dense posterior precision from a full ``[P, P]`` curvature matrix."""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from ..linalg.eigh import all_finite, symmetric_eigh
from .base import Structure, report_indefinite, require_positive
from .checks import log_sum
from .layout import LayerBlock

__all__ = ["Dense"]

_WHAT = "the dense curvature"
_DECOMPOSE_LOCK = threading.Lock()


class Dense(Structure):
    """Π(δ, s) = s·G + diag(δ) with G dense, eigendecomposed once: G = Q diag(λ) Qᵀ.

    Prior constant on the block: Π = Q diag(sλ + δ) Qᵀ, so log det Π = Σᵢ log(sλᵢ + δ) costs
    O(P) and solves, samples and functional variances use Q, with no new factorisation for a
    new δ or s.

    Prior varying on the block (per layer across layers, per parameter): Π is not diagonal in
    Q; each distinct (δ, s) is factorised exactly by a Cholesky decomposition of s·G + diag(δ)
    (O(P³), cached for the last value when no gradient is requested).

    Round-off leaves eigenvalues of either sign around the exact ones of a PSD curvature
    (float32 accumulation: ~ε·‖G‖). They are kept as they are, as a Cholesky factorisation
    of s·G + δ would keep them: clamping the negative ones to 0 would bias log det Π upward
    at first order in the round-off (by 0.2 nats on laplace-torch's 1-D regression example in
    float32, against the float64 answer). Only where s·λ + δ would fall below δ/2 is it
    held there, so that log det Π stays finite for any δ.

    An indefinite curvature (``psd=False``: the Hessian of the loss) keeps its eigenvalues
    with no floor: a prior with s·λ_min + δ ≤ 0 leaves Π without a Gaussian and is refused.

    Args:
        curvature: symmetric ``[P, P]`` unit-scale curvature (PSD unless ``psd=False``).
        group_index: ``[P]`` group of each parameter (for a per-layer prior).
        layout: the layer block the coordinates belong to, if any.
        psd: whether the curvature is PSD up to round-off (GGN, Fisher) or may be indefinite.
    """

    _tensor_keys = ("eigenvalues", "eigenvectors", "psd")
    _nonnegative = ("eigenvalues",)
    _orthonormal = ("eigenvectors",)

    def __init__(
        self,
        curvature: Tensor,
        group_index: Tensor | None = None,
        layout: LayerBlock | None = None,
        psd: bool = True,
    ) -> None:
        if curvature.dim() != 2 or curvature.shape[0] != curvature.shape[1]:
            raise ValueError(f"curvature must be square [P, P]; got {list(curvature.shape)}")
        if not all_finite(curvature):
            raise ValueError("curvature contains NaN or Inf")
        p = curvature.shape[0]
        super().__init__(p, group_index, curvature.dtype, curvature.device, layout)
        # in float64 for lower precisions: eigh's own error (~ε·‖G‖·P on the small
        # eigenvalues) would otherwise dominate log det Π. The eigenvalues now (all that
        # log det Π, the evidence and its tuning need for a scalar prior), the eigenvectors of
        # the same float64 matrix on first use (_decompose): a fit followed by marglik tuning
        # no longer pays for them (P = 3466: eigh 6.6 s, eigvalsh about a quarter of it)
        wide = torch.promote_types(curvature.dtype, torch.float64)
        evals, _ = symmetric_eigh(curvature.to(wide), _WHAT, vectors=False, checked=True)
        self._set_tensors({"eigenvalues": evals.to(curvature.dtype), "psd": torch.tensor(psd)})
        self._pending = curvature.detach().clone()
        if not psd:
            report_indefinite(self.eigenvalues, "the Hessian")

    def _tensors(self) -> dict[str, Tensor]:
        return {
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
            "psd": torch.tensor(self.psd),
        }

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        p = self.n_params
        if tensors["eigenvalues"].shape != (p,) or tensors["eigenvectors"].shape != (p, p):
            raise ValueError(f"state entries of Dense do not have P = {p}")

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.eigenvalues = tensors["eigenvalues"]
        self._eigenvectors: Tensor | None = tensors.get("eigenvectors")
        self._pending: Tensor | None = None
        self.psd = bool(tensors["psd"])
        # (key, factor) as one value: a thread reads an old pair or a new one, never a mix
        self._chol_cache: tuple[tuple, Tensor] | None = None

    @property
    def eigenvectors(self) -> Tensor:
        """Q ``[P, P]``, decomposed on first use after a fit (once, under a lock)."""
        q = self._eigenvectors
        return q if q is not None else self._decompose()

    def _decompose(self) -> Tensor:
        """The eigenvectors of the fitted curvature, by the same float64 eigendecomposition
        whose eigenvalues the fit kept (those stay: log det Π does not move by round-off
        when a prediction first needs Q)."""
        with _DECOMPOSE_LOCK:
            if self._eigenvectors is None:
                g = self._pending
                wide = torch.promote_types(g.dtype, torch.float64)
                _, evecs = symmetric_eigh(g.to(wide), _WHAT, checked=True)
                self._eigenvectors, self._pending = evecs.to(g.dtype), None
            return self._eigenvectors

    def curvature_dense(self) -> Tensor:
        g = self._pending
        if g is not None:  # not decomposed yet: G itself, symmetrised
            return (g + g.mT).mul_(0.5)
        q = self.eigenvectors
        return (q * self.eigenvalues) @ q.T

    def diagonal(self) -> Tensor:
        if self._pending is not None:
            return self._pending.diagonal().clone()
        return (self.eigenvectors.square() * self.eigenvalues).sum(-1)

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        # G is a sum over examples
        g = self.curvature_dense() + other.curvature_dense()
        return Dense(g, self.group_index, self.layout, psd=self.psd and other.psd)

    @classmethod
    def _weighted(cls, parts: list[Structure], weights: Tensor) -> Structure:
        ref = parts[0]
        g = sum(w * p.curvature_dense() for w, p in zip(weights, parts, strict=True))
        return Dense(g, ref.group_index, ref.layout, psd=all(p.psd for p in parts))

    def _trace_solve(self, other: Structure, d: Tensor, s: Tensor) -> Tensor:
        # tr(Π⁻¹ G) = Σᵢⱼ (Π⁻¹)ᵢⱼ Gᵢⱼ, Π⁻¹ applied to G's (symmetric) rows
        return self._solve(other.curvature_dense(), d, s).diagonal().sum()

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        q = self.eigenvectors
        return ((v @ q) * self.eigenvalues) @ q.T

    # ----------------------------------------------------------------- helpers
    def _cholesky(self, d: Tensor, s: Tensor) -> Tensor:
        """Lower Cholesky factor of s·G + diag(d) for a varying prior ``d`` ``[P]``."""
        cacheable = not (d.requires_grad or s.requires_grad)
        if cacheable:
            key = (s.item(), d.detach().cpu().numpy().tobytes())
            cached = self._chol_cache
            if cached is not None and cached[0] == key:
                return cached[1]
        q = self.eigenvectors
        lam = self.eigenvalues
        if self.psd:
            lam = lam.clamp_min(-0.5 * d.detach().min() / s.detach())
        prec = s * ((q * lam) @ q.T) + torch.diag(d)
        chol, info = torch.linalg.cholesky_ex(prec)
        if info.item() != 0:
            raise RuntimeError("posterior precision is not positive definite (Cholesky failed)")
        if cacheable:
            self._chol_cache = (key, chol)
        return chol

    def _eig_prec(self, d: Tensor, s: Tensor) -> Tensor:
        if not self.psd:  # an indefinite curvature (the Hessian): Π must be PD as it is
            return require_positive(s * self.eigenvalues + d, s, d)
        return torch.maximum(s * self.eigenvalues + d, 0.5 * d)

    # ----------------------------------------------------------------- block methods
    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            return log_sum(self._eig_prec(d, s))
        return 2 * log_sum(self._cholesky(d, s).diagonal())

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            q = self.eigenvectors
            return ((v @ q) / self._eig_prec(d, s)) @ q.T
        flat = v.reshape(-1, self.n_params).T
        return torch.cholesky_solve(flat, self._cholesky(d, s)).T.reshape(v.shape)

    def _trace_inverse(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            return self._eig_prec(d, s).reciprocal().sum()
        return self._inverse_diagonal(d, s).sum()

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            return self.eigenvectors.square() @ self._eig_prec(d, s).reciprocal()
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        linv = torch.linalg.solve_triangular(self._cholesky(d, s), eye, upper=False)
        return linv.square().sum(0)

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            # Q diag((sλ+δ)^-1/2) z has covariance Q diag(1/(sλ+δ)) Qᵀ = Π⁻¹.
            return (z * self._eig_prec(d, s).rsqrt()) @ self.eigenvectors.T
        # x = L⁻ᵀ z has covariance (L Lᵀ)⁻¹ = Π⁻¹.
        return torch.linalg.solve_triangular(self._cholesky(d, s).T, z.T, upper=True).T

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 0:
            m = (jac @ self.eigenvectors) * self._eig_prec(d, s).rsqrt()
        else:
            b, c, p = jac.shape
            m = torch.linalg.solve_triangular(
                self._cholesky(d, s), jac.reshape(b * c, p).T, upper=False
            )
            m = m.T.reshape(b, c, p)
        return m @ m.transpose(-1, -2)

    def _fvar_factors(
        self, a: Tensor, g: Tensor, d: Tensor, s: Tensor, memory_budget: int
    ) -> Tensor:
        out, cols = self.layout.shape
        if d.dim() != 0 or a.shape[1] != 1 or out > g.shape[0]:
            return super()._fvar_factors(a, g, d, s, memory_budget)
        # (J Q)[b, c, :] = Σᵢ g[c, b, i] Σⱼ ã[b, j] Q[(i, j), :]: B·P² + B·C·out·P flops
        # instead of B·C·P²; the intermediate [B, out, P] is no larger than J Q while
        # out ≤ C (a linear head: out = C).
        # batched matmuls over views: einsum would copy the [out, in', P] eigenvectors
        t = torch.matmul(a[:, 0].unsqueeze(0), self.eigenvectors.view(out, cols, -1))  # [out, B, P]
        m = torch.matmul(g[:, :, 0].permute(1, 0, 2), t.transpose(0, 1))
        m = m * self._eig_prec(d, s).rsqrt()
        return m @ m.transpose(-1, -2)
