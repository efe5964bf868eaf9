"""Block-diagonal Kronecker-factored posterior precision (KFAC)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Structure

__all__ = ["EKron", "Kron"]


class Kron(Structure):
    """Π(δ, s) = s·G + diag(δ) with G block diagonal: Kronecker blocks B ⊗ A and a diagonal rest.

    Block ``b`` covers the parameters ``index_b`` (θ positions, in the block's row-major order
    of W̃ = [W | b] with shape ``[out, in']``) with curvature B ⊗ A. Each factor is
    eigendecomposed once, B = Q_B diag(β) Q_Bᵀ, A = Q_A diag(α) Q_Aᵀ, so for a prior that is
    constant on each block (scalar or one per layer) everything is exact:

        log det Π_b = Σᵢⱼ log(s βᵢ αⱼ + δ_b),   Π_b⁻¹ v = Q (Q ᵀ v / (s β ⊗ α + δ_b)),

    with Q = Q_B ⊗ Q_A, at O(out² in' + out in'²) per block and vector; nothing of size P × P.

    A per-parameter prior is *approximate*: diag(δ) on a block is replaced by its diagonal in the
    Kronecker eigenbasis, d_ij = Σ_pq (Q_B)²_pi δ_pq (Q_A)²_qj (exact when δ is constant on the
    block). Parameters without a Kronecker block (e.g. norms) have an exact diagonal curvature.

    Args:
        blocks: ``(index [out·in'], B [out, out], A [in', in'])`` per block.
        diag_index: θ positions of the diagonal rest, ``diag_values`` their curvature.
        n_params: P. group_index: ``[P]`` group of each parameter.
    """

    def __init__(
        self,
        blocks: list[tuple[Tensor, Tensor, Tensor]],
        diag_index: Tensor,
        diag_values: Tensor,
        n_params: int,
        group_index: Tensor | None = None,
    ) -> None:
        ref = blocks[0][1] if blocks else diag_values
        super().__init__(n_params, group_index, ref.dtype, ref.device)
        decomposed, self._factor_eigs = [], []
        for index, b, a in blocks:
            if index.numel() != b.shape[0] * a.shape[0]:
                raise ValueError("a Kronecker block's index must have out·in' entries")
            lb, qb = torch.linalg.eigh(0.5 * (b + b.T))
            la, qa = torch.linalg.eigh(0.5 * (a + a.T))
            lb, la = lb.clamp_min(0), la.clamp_min(0)
            self._factor_eigs.append((lb, la))
            decomposed.append((index.to(self.device), torch.outer(lb, la), qb, qa))
        self._install(decomposed, diag_index.to(self.device), diag_values.clamp_min(0))

    def _install(self, blocks, diag_index, diag_values) -> None:
        """Blocks are ``(index, E, Q_B, Q_A)``: block curvature (Q_B ⊗ Q_A) diag(vec E) (…)ᵀ."""
        self.blocks = blocks
        self.diag_index = diag_index
        self.diag_values = diag_values
        covered = sum(int(b[0].numel()) for b in blocks) + int(diag_index.numel())
        if covered != self.n_params:
            raise ValueError(
                f"{type(self).__name__} blocks cover {covered} parameters; expected {self.n_params}"
            )

    # ----------------------------------------------------------------- prior per block
    def _block_prior(self, delta: Tensor, scalar: bool, blk) -> tuple[Tensor, bool]:
        """δ on a block as a scalar (exact) or its eigenbasis-diagonal projection ``[o, i]``."""
        index, _, qb, qa = blk
        if scalar:
            return delta, True
        d = delta[index]
        if bool((d == d[0]).all()):
            return d[0], True
        d = d.view(qb.shape[0], qa.shape[0])
        return qb.square().T @ d @ qa.square(), False

    def _block_eig(self, delta: Tensor, scalar: bool, s: Tensor, blk) -> Tensor:
        """s E + δ on the block (E = β ⊗ α for KFAC), ``[out, in']``."""
        d, _ = self._block_prior(delta, scalar, blk)
        return s * blk[1] + d

    def _diag_prec(self, delta: Tensor, scalar: bool, s: Tensor) -> Tensor:
        d = delta if scalar else delta[self.diag_index]
        return s * self.diag_values + d

    def is_exact_for(self, prior_precision: Tensor | float) -> bool:
        """Whether answers for this prior are exact (prior constant on every Kronecker block)."""
        delta, scalar = self._prior(prior_precision)
        return all(self._block_prior(delta, scalar, blk)[1] for blk in self.blocks)

    # ----------------------------------------------------------------- the API
    def logdet(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        total = self._diag_prec(delta, scalar, s).log().sum()
        for blk in self.blocks:
            total = total + self._block_eig(delta, scalar, s, blk).log().sum()
        return total

    def _apply(self, v: Tensor, delta: Tensor, scalar: bool, s: Tensor, power: float) -> Tensor:
        """Q Λ^power Qᵀ v (power −1: Π⁻¹v) or, for power −½, Q Λ^−½ v — a square root of the
        covariance applied to a standard normal v (no rotation into the basis needed)."""
        out = torch.empty_like(v)
        diag_prec = self._diag_prec(delta, scalar, s)
        out[..., self.diag_index] = v[..., self.diag_index] * diag_prec.pow(power)
        for blk in self.blocks:
            index, _, qb, qa = blk
            vb = v[..., index].reshape(*v.shape[:-1], qb.shape[0], qa.shape[0])
            if power == -1.0:
                vb = qb.T @ vb @ qa
            r = vb * self._block_eig(delta, scalar, s, blk).pow(power)
            out[..., index] = (qb @ r @ qa.T).reshape(*v.shape[:-1], -1)
        return out

    def solve(
        self, v: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_v(v)
        delta, scalar = self._prior(prior_precision)
        return self._apply(v, delta, scalar, self._scale(scale), -1.0)

    def trace_inverse(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        return self.inverse_diagonal(prior_precision, scale).sum()

    def inverse_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        out = torch.empty(self.n_params, dtype=self.dtype, device=self.device)
        out[self.diag_index] = self._diag_prec(delta, scalar, s).reciprocal()
        for blk in self.blocks:
            index, _, qb, qa = blk
            inv = self._block_eig(delta, scalar, s, blk).reciprocal()
            out[index] = (qb.square() @ inv @ qa.square().T).reshape(-1)
        return out

    def sample(
        self,
        n_samples: int,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        delta, scalar = self._prior(prior_precision)
        z = self._normal((n_samples, self.n_params), generator)
        # block: Q_B (Z / √(sβα+δ)) Q_Aᵀ has covariance Q diag(1/(sβα+δ)) Qᵀ = Π_b⁻¹
        return self._apply(z, delta, scalar, self._scale(scale), -0.5)

    def functional_variance(
        self, jac: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        self._check_jacobian(jac)
        delta, scalar = self._prior(prior_precision)
        s = self._scale(scale)
        jd = jac[..., self.diag_index]
        var = torch.einsum("bcp,p,bdp->bcd", jd, self._diag_prec(delta, scalar, s).reciprocal(), jd)
        for blk in self.blocks:
            index, _, qb, qa = blk
            jb = jac[..., index].reshape(*jac.shape[:2], qb.shape[0], qa.shape[0])
            m = (qb.T @ jb @ qa) * self._block_eig(delta, scalar, s, blk).rsqrt()
            m = m.flatten(-2)
            var = var + m @ m.transpose(-1, -2)
        return var

    def functional_variance_head(
        self,
        phi_aug: Tensor,
        index: Tensor,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
    ) -> Tensor:
        # When the head is one Kronecker block laid out like J = I_C ⊗ φ̃ᵀ:
        # (Q_Bᵀ J Q_A)[c, i, j] = Q_B[c, i] (φ̃ Q_A)_j, so Var = Q_B diag(w) Q_Bᵀ with
        # w_i = Σⱼ (φ̃ Q_A)ⱼ² / (s βᵢ αⱼ + δ).
        delta, scalar = self._prior(prior_precision)
        for blk in self.blocks:
            if blk[0].numel() == index.numel() and torch.equal(blk[0], index.reshape(-1)):
                _, _, qb, qa = blk
                inv = self._block_eig(delta, scalar, self._scale(scale), blk).reciprocal()
                w = (phi_aug @ qa).square() @ inv.T  # [B, out]
                return torch.einsum("ci,bi,di->bcd", qb, w, qb)
        return super().functional_variance_head(phi_aug, index, prior_precision, scale)

    # ----------------------------------------------------------------- dense views
    def curvature_dense(self) -> Tensor:
        g = torch.zeros(self.n_params, self.n_params, dtype=self.dtype, device=self.device)
        g[self.diag_index, self.diag_index] = self.diag_values
        for index, eig, qb, qa in self.blocks:
            q = torch.kron(qb, qa)
            g[index.unsqueeze(1), index.unsqueeze(0)] = (q * eig.reshape(-1)) @ q.T
        return g

    def factors(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(index, B, A)`` per block, rebuilt from the factors' eigendecompositions."""
        out = []
        for (index, _, qb, qa), (lb, la) in zip(self.blocks, self._factor_eigs, strict=True):
            out.append((index, (qb * lb) @ qb.T, (qa * la) @ qa.T))
        return out

    def diagonal(self) -> Tensor:
        out = torch.empty(self.n_params, dtype=self.dtype, device=self.device)
        out[self.diag_index] = self.diag_values
        for index, eig, qb, qa in self.blocks:
            out[index] = (qb.square() @ eig @ qa.square().T).reshape(-1)
        return out

    # ----------------------------------------------------------------- persistence
    def _tensors(self) -> dict[str, Tensor]:
        out = {"diag_index": self.diag_index, "diag_values": self.diag_values}
        for k, (index, eig, qb, qa) in enumerate(self.blocks):
            out.update(
                {
                    f"block{k}.index": index,
                    f"block{k}.eig": eig,
                    f"block{k}.qb": qb,
                    f"block{k}.qa": qa,
                }
            )
        for k, (lb, la) in enumerate(getattr(self, "_factor_eigs", [])):
            out.update({f"block{k}.lb": lb, f"block{k}.la": la})
        return out

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        n_blocks = sum(1 for k in tensors if k.endswith(".index"))
        blocks = [
            (
                tensors[f"block{k}.index"].long(),
                tensors[f"block{k}.eig"],
                tensors[f"block{k}.qb"],
                tensors[f"block{k}.qa"],
            )
            for k in range(n_blocks)
        ]
        if all(f"block{k}.lb" in tensors for k in range(n_blocks)):
            self._factor_eigs = [
                (tensors[f"block{k}.lb"], tensors[f"block{k}.la"]) for k in range(n_blocks)
            ]
        self._install(blocks, tensors["diag_index"].long(), tensors["diag_values"])

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu", dtype=None
    ) -> Kron:
        if state.get("structure") != cls.__name__:
            raise ValueError(
                f"state is of structure {state.get('structure')!r}, not {cls.__name__!r}"
            )
        tensors = {k: v for k, v in state.items() if k.startswith(("block", "diag"))}
        dtype = dtype or state["diag_values"].dtype
        obj = cls.__new__(cls)
        Structure.__init__(
            obj, state["n_params"], state["group_index"], dtype, torch.device(device)
        )
        obj._set_tensors(
            {
                k: v.to(obj.device) if k.endswith("index") else v.to(obj.device, dtype)
                for k, v in tensors.items()
            }
        )
        return obj

    def load_state_dict(self, state: dict[str, Any]) -> None:
        other = type(self).from_state_dict(state, self.device, self.dtype)
        if other.n_params != self.n_params or len(other.blocks) != len(self.blocks):
            raise ValueError("state has another block layout than this structure")
        self.group_index = other.group_index
        if hasattr(other, "_factor_eigs"):
            self._factor_eigs = other._factor_eigs
        self._install(other.blocks, other.diag_index, other.diag_values)


class EKron(Kron):
    """EKFAC: the KFAC eigenbases Q_B ⊗ Q_A with eigenvalues E refit to the data.

    E[i, j] = Σₙ Σₖ ((Q_Bᵀ Gₙₖ Q_A)[i, j])² for the per-example gradients Gₙₖ of each block,
    the diagonal of the exact block curvature in the KFAC eigenbasis, so the block is never
    further (Frobenius) from the exact block than KFAC. All algebra is as for :class:`Kron`;
    ``factors()`` does not exist (E is not rank one).

    Args:
        blocks: ``(index, E [out, in'], Q_B, Q_A)`` per block.
    """

    def __init__(
        self,
        blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]],
        diag_index: Tensor,
        diag_values: Tensor,
        n_params: int,
        group_index: Tensor | None = None,
    ) -> None:
        ref = blocks[0][1] if blocks else diag_values
        Structure.__init__(self, n_params, group_index, ref.dtype, ref.device)
        blocks = [(i.to(self.device), e.clamp_min(0), qb, qa) for i, e, qb, qa in blocks]
        self._install(blocks, diag_index.to(self.device), diag_values.clamp_min(0))

    def factors(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        raise NotImplementedError("EKron has no Kronecker factors (its eigenvalues are refit)")
