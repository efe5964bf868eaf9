"""Kronecker-factored blocks: KFAC's B ⊗ A and EKFAC's eigen-corrected form."""

from __future__ import annotations

import torch
from torch import Tensor

from ..linalg.eigh import all_finite, symmetric_eigh
from .base import Structure
from .checks import log_sum
from .layer_variance import layer_variance
from .layout import LayerBlock

__all__ = ["EKron", "Kron"]


class Kron(Structure):
    """Π(δ, s) = s·(B ⊗ A) + diag(δ) on one block, in row-major vec of W̃ ``[out, in']``.

    Each factor is eigendecomposed once, B = Q_B diag(β) Q_Bᵀ, A = Q_A diag(α) Q_Aᵀ, so the
    curvature is Q diag(vec E) Qᵀ with Q = Q_B ⊗ Q_A and E = β αᵀ. For a prior constant on
    the block (a scalar, or one per layer) everything is exact:

        log det Π = Σᵢⱼ log(s Eᵢⱼ + δ),   Π⁻¹ v = Q (Qᵀ v / (s E + δ)),

    at O(out² in' + out in'²) per vector; nothing of size P × P.

    A joint [W | b] block under one δ per parameter tensor (laplace-torch's "layerwise") has
    the prior I ⊗ diag(δ_W, …, δ_W, δ_b) = δ_W I + (δ_b − δ_W) I ⊗ e eᵀ (e: the bias column),
    a rank-one change of each of the ``out`` rotated row blocks; with H = s E + δ_W,
    c = δ_b − δ_W, q = Q_Aᵀ e and dᵢ = 1 + c Σⱼ qⱼ² / Hᵢⱼ, by the determinant lemma and
    Sherman–Morrison, still exactly and at the same cost:

        log det Π = Σᵢⱼ log Hᵢⱼ + Σᵢ log dᵢ,
        (row i of Π⁻¹ in the eigenbasis) = diag(1/Hᵢ) − (c / dᵢ) uᵢ uᵢᵀ,  uᵢ = q / Hᵢ.

    Any other prior that varies on the block is *approximate*: diag(δ), viewed as D
    ``[out, in']``, is replaced by its diagonal in the eigenbasis,
    d_ij = Σ_pq (Q_B)²_pi D_pq (Q_A)²_qj; :meth:`is_exact` says which.

    Args:
        b: ``[out, out]`` and a: ``[in', in']`` PSD factors (negative eigenvalues clamped).
        group_index: ``[out·in']`` group of each parameter. layout: the layer block.
        wide: decompose the factors in float64 (a half-precision model's).
    """

    _tensor_keys = ("qb", "lb", "qa", "la")
    _nonnegative = ("lb", "la")
    _orthonormal = ("qb", "qa")

    def __init__(
        self,
        b: Tensor,
        a: Tensor,
        group_index: Tensor | None = None,
        layout: LayerBlock | None = None,
        *,
        wide: bool = False,
    ) -> None:
        for name, f in (("b", b), ("a", a)):
            if f.dim() != 2 or f.shape[0] != f.shape[1] or not all_finite(f):
                raise ValueError(f"Kronecker factor {name} must be a finite square matrix")
        super().__init__(b.shape[0] * a.shape[0], group_index, b.dtype, b.device, layout)
        # wide: in float64 (a half-precision model's float32 factors: float32 eigh's own error
        # on the small eigenvalues, ~ε·‖F‖, would dominate log det Π), kept in the factors'
        # dtype; a float32 model's in float32 (a float64 eigh costs 1.5x: about an eighth more
        # on a small MLP's KFAC fit), retried in float64 where it fails
        self.wide = wide
        dtype = torch.promote_types(b.dtype, torch.float64) if wide else b.dtype
        lb, qb = symmetric_eigh(b.to(dtype), "a Kronecker factor B (output side)")
        la, qa = symmetric_eigh(a.to(dtype), "a Kronecker factor A (input side)")
        tensors = {"qb": qb, "lb": lb.clamp_min(0), "qa": qa, "la": la.clamp_min(0)}
        self._set_tensors({k: t.to(b.dtype) for k, t in tensors.items()})

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.qb, self.qa = tensors["qb"], tensors["qa"]
        self.lb, self.la = tensors["lb"], tensors["la"]
        self.eig = torch.outer(self.lb, self.la)

    def _tensors(self) -> dict[str, Tensor]:
        return {"qb": self.qb, "lb": self.lb, "qa": self.qa, "la": self.la}

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        o, i = tensors["qb"].shape[0], tensors["qa"].shape[0]
        if o * i != self.n_params:
            raise ValueError(f"state factors of {o} × {i} do not cover {self.n_params} parameters")

    @property
    def block_shape(self) -> tuple[int, int]:
        """``(out, in')``."""
        return self.qb.shape[0], self.qa.shape[0]

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(B, A)`` rebuilt from their eigendecompositions."""
        return (self.qb * self.lb) @ self.qb.T, (self.qa * self.la) @ self.qa.T

    # ----------------------------------------------------------------- helpers
    def _group_prior(self, delta: Tensor, groups: Tensor) -> Tensor:
        """``[1, 2]`` (δ_W, δ_b) when the block is a joint [W | b] with one group for W and
        one for b (the exact column prior); else δ per parameter."""
        pair = self._bias_groups(groups)
        if pair is None:
            return delta[groups]
        return delta[pair].reshape(1, 2)

    def _bias_groups(self, groups: Tensor) -> Tensor | None:
        cached = getattr(self, "_pair_cache", None)
        if cached is not None and cached[0] is groups:
            return cached[1]
        pair = None
        layout = self.layout
        if layout is not None and layout.bias and layout.cols is not None:
            g = groups.view(self.block_shape)
            gw, gb = g[0, 0], g[0, -1]
            if bool((g[:, :-1] == gw).all()) and bool((g[:, -1] == gb).all()) and gw != gb:
                pair = torch.stack((gw, gb))
        self._pair_cache = (groups, pair)
        return pair

    def _column(self, d: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For the column prior: H = sE + δ_W, u = q / H, c / dᵢ ``[out]`` and dᵢ."""
        h = s * self.eig + d[0, 0]
        c = d[0, 1] - d[0, 0]
        u = self.qa[-1] / h
        den = 1 + c * (self.qa[-1] * u).sum(-1)
        return h, u, c / den, den

    def _eig_prec(self, d: Tensor, s: Tensor) -> Tensor:
        """s E + δ in the eigenbasis, ``[out, in']`` (δ projected when it varies)."""
        if d.dim() != 0:
            d = self.qb.square().T @ d.view(self.block_shape) @ self.qa.square()
        return s * self.eig + d

    def _unvec(self, v: Tensor) -> Tensor:
        return v.reshape(*v.shape[:-1], *self.block_shape)

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: Tensor) -> bool:
        return d.dim() != 1

    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 2:
            h, _, _, den = self._column(d, s)
            return log_sum(h) + log_sum(den)
        return log_sum(self._eig_prec(d, s))

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        r = self.qb.T @ self._unvec(v) @ self.qa
        if d.dim() == 2:
            h, u, k, _ = self._column(d, s)
            r = r / h - (k * (r * u).sum(-1)).unsqueeze(-1) * u
        else:
            r = r / self._eig_prec(d, s)
        return (self.qb @ r @ self.qa.T).flatten(-2)

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 2:
            h, u, k, _ = self._column(d, s)
            inner = h.reciprocal() @ self.qa.square().T - k.unsqueeze(-1) * (u @ self.qa.T).square()
            return (self.qb.square() @ inner).reshape(-1)
        inv = self._eig_prec(d, s).reciprocal()
        return (self.qb.square() @ inv @ self.qa.square().T).reshape(-1)

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        # Q_B (Z / √(sE+δ)) Q_Aᵀ has covariance Q diag(1/(sE+δ)) Qᵀ = Π⁻¹ (no rotation of Z).
        z = self._unvec(z)
        if d.dim() == 2:
            # row i: diag(H^-½)(I − β t tᵀ) z, t = q/√H, β = (c/d)/(1 + d^-½) squares to Π⁻¹
            h, _, k, den = self._column(d, s)
            t = self.qa[-1] * h.rsqrt()
            beta = k / (1 + den.rsqrt())
            r = (z - (beta * (z * t).sum(-1)).unsqueeze(-1) * t) * h.rsqrt()
        else:
            r = z * self._eig_prec(d, s).rsqrt()
        return (self.qb @ r @ self.qa.T).flatten(-2)

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        m = self.qb.T @ self._unvec(jac) @ self.qa
        if d.dim() == 2:
            h, u, k, _ = self._column(d, s)
            mm = (m * h.rsqrt()).flatten(-2)
            hu = (m * u).sum(-1)  # [B, C, out]
            return mm @ mm.transpose(-1, -2) - (hu * k) @ hu.transpose(-1, -2)
        m = (m * self._eig_prec(d, s).rsqrt()).flatten(-2)
        return m @ m.transpose(-1, -2)

    def _fvar_factors(
        self, a: Tensor, g: Tensor, d: Tensor, s: Tensor, memory_budget: int
    ) -> Tensor:
        gq, aq = g @ self.qb, a @ self.qa
        if d.dim() == 2:
            h, u, k, _ = self._column(d, s)
            hu = torch.einsum("cbsi,bsi->bci", gq, aq @ u.T)
            return layer_variance(gq, aq, h.reciprocal(), memory_budget) - torch.einsum(
                "bci,i,bdi->bcd", hu, k, hu
            )
        return layer_variance(gq, aq, self._eig_prec(d, s).reciprocal(), memory_budget)

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        # B sums over examples, A is a mean over them: KFAC of the union, exactly
        b1, a1 = self.factors()
        b2, a2 = other.factors()
        a = (n_self * a1 + n_other * a2) / (n_self + n_other)
        return Kron(b1 + b2, a, self.group_index, self.layout, wide=getattr(self, "wide", False))

    @classmethod
    def _weighted(cls, parts: list[Structure], weights: Tensor) -> Structure:
        # B_c ⊗ A: the input factor A is each output's (the same forward), B sums
        if cls is not Kron:
            raise TypeError(f"{cls.__name__} has no form for one curvature per output")
        ref = parts[0]
        b = sum(w * p.factors()[0] for w, p in zip(weights, parts, strict=True))
        wide = getattr(ref, "wide", False)
        return Kron(b, ref.factors()[1], ref.group_index, ref.layout, wide=wide)

    def _trace_solve(self, other: Structure, d: Tensor, s: Tensor) -> Tensor:
        # G_c = B_c ⊗ A in this block's eigenbasis: (Q_Bᵀ B_c Q_B) ⊗ diag(α); Π⁻¹ is block
        # diagonal over the rows i there, so only the diagonal of Q_Bᵀ B_c Q_B enters
        bc = other.factors()[0]
        m = ((self.qb.T @ bc) * self.qb.T).sum(-1)  # [out]
        if d.dim() == 2:
            h, u, k, _ = self._column(d, s)
            row = (self.la / h).sum(-1) - k * (self.la * u.square()).sum(-1)
        else:
            row = (self.la / self._eig_prec(d, s)).sum(-1)
        return (m * row).sum()

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        r = (self.qb.T @ self._unvec(v) @ self.qa) * self.eig
        return (self.qb @ r @ self.qa.T).flatten(-2)

    def _matvec(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        if d.dim() == 2:  # the column prior (δ_W, δ_b): δ_b on the bias column, exact
            cols = torch.cat([d[0, :1].expand(self.block_shape[1] - 1), d[0, 1:]])
            return s * self._curvature_matvec(v) + (cols * self._unvec(v)).flatten(-2)
        # the matrix the other methods invert: a varying δ projected onto the eigenbasis
        r = (self.qb.T @ self._unvec(v) @ self.qa) * self._eig_prec(d, s)
        return (self.qb @ r @ self.qa.T).flatten(-2)

    def curvature_dense(self) -> Tensor:
        q = torch.kron(self.qb, self.qa)
        return (q * self.eig.reshape(-1)) @ q.T

    def diagonal(self) -> Tensor:
        return (self.qb.square() @ self.eig @ self.qa.square().T).reshape(-1)


class EKron(Kron):
    """EKFAC: the KFAC eigenbasis Q_B ⊗ Q_A with eigenvalues E refit to the data.

    E[i, j] = Σₙ Σₖ ((Q_Bᵀ Gₙₖ Q_A)[i, j])² for the per-example gradients Gₙₖ of the block, the
    diagonal of the exact block curvature in that basis, so the block is never further
    (Frobenius) from the exact block than KFAC. The algebra is that of :class:`Kron`; E is not
    rank one, so there are no factors.

    Args:
        eig: E ``[out, in']`` (clamped at 0). qb, qa: the eigenbases ``[out, out]``,
            ``[in', in']``. group_index, layout: as for :class:`Kron`.
    """

    _tensor_keys = ("qb", "qa", "eig")
    _nonnegative = ("eig",)

    def __init__(
        self,
        eig: Tensor,
        qb: Tensor,
        qa: Tensor,
        group_index: Tensor | None = None,
        layout: LayerBlock | None = None,
    ) -> None:
        if eig.shape != (qb.shape[0], qa.shape[0]) or not torch.isfinite(eig).all():
            raise ValueError(
                f"eig must be finite with shape [{qb.shape[0]}, {qa.shape[0]}]; "
                f"got {list(eig.shape)}"
            )
        Structure.__init__(self, eig.numel(), group_index, eig.dtype, eig.device, layout)
        self._set_tensors({"qb": qb, "qa": qa, "eig": eig.clamp_min(0)})

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.qb, self.qa, self.eig = tensors["qb"], tensors["qa"], tensors["eig"]

    def _tensors(self) -> dict[str, Tensor]:
        return {"qb": self.qb, "qa": self.qa, "eig": self.eig}

    def factors(self) -> tuple[Tensor, Tensor]:
        raise TypeError("EKron has no Kronecker factors (its eigenvalues are refit)")

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        return Structure._merged(self, other, n_self, n_other)  # the basis needs all the data
