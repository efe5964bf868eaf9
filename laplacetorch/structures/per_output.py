"""One curvature per output, each with its own likelihood scale (a Gaussian noise per output).

With a noise σ_c per output c of a Gaussian likelihood, the output Hessian is
diag(1/σ_c²)/T and the curvature of the summed NLL is no longer a multiple of one matrix:

    Π(δ, s) = Σ_c s_c G_c + diag(δ),   s_c = 1/(σ_c² T),   G_c = Σₙ J_{n,c}ᵀ J_{n,c},

with J_{n,c} the Jacobian row of output c (for KFAC, G_c = B_c ⊗ A per layer: the input factor
A does not depend on the output). :class:`PerOutput` keeps the C unit-scale curvatures G_c (each
a structure of one kind: dense, diagonal, Kronecker or a block-diagonal of these), and answers
every question at a scale vector s ``[C]`` with the structure of Σ_c s_c G_c, built by that kind
(``_weighted``) and kept for the last s. Everything is exact where that kind is exact.

The log determinant is differentiable in δ (through the weighted structure) and in s: its
gradient ∂ log det Π / ∂s_c = tr(Π⁻¹ G_c) is each kind's exact trace (``_trace_solve``); so is
the evidence in σ_c, and MacKay's effective counts γ_c = s_c tr(Π⁻¹ G_c) are that gradient
times s_c. (Second derivatives in s are not carried. KFAC with a prior that varies within a
Kronecker block is approximate already, ``is_exact`` False: its value projects δ onto an
eigenbasis that turns with s, which the trace leaves out, about 1e-4 relative.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..prior import expand_prior
from .base import Structure, check_state, structure_key
from .layout import LayerBlock
from .saved import Composite, child_from_state
from .sources import JacobianSource

__all__ = ["PerOutput"]


class PerOutput(Composite, Structure):
    """Π(δ, s) = Σ_c s_c G_c + diag(δ) over C unit-scale curvatures G_c of one kind.

    Args:
        parts: the C structures holding G_1 … G_C (one kind, one P, one block layout).

    The scale is a vector ``[C]`` (one s_c per output) or one number for all outputs.
    """

    def __init__(self, parts: list[Structure]) -> None:
        if not parts:
            raise ValueError("PerOutput needs one curvature per output; got none")
        ref = parts[0]
        for p in parts[1:]:
            if type(p) is not type(ref) or p.n_params != ref.n_params:
                raise ValueError(
                    "the per-output curvatures must be of one kind and size; got "
                    f"{type(ref).__name__}[{ref.n_params}] and {type(p).__name__}[{p.n_params}]"
                )
        super().__init__(ref.n_params, ref.group_index, ref.dtype, ref.device)
        self.parts = list(parts)
        self._at_cache: tuple[tuple[float, ...], Structure] | None = None

    @property
    def output_scales(self) -> int:
        """C, the number of likelihood scales this structure takes."""
        return len(self.parts)

    def _scale(self, scale: Tensor | float) -> Tensor:
        s = torch.as_tensor(scale, dtype=self.dtype, device=self.device)
        c = len(self.parts)
        if s.numel() == 1:
            s = s.reshape(()).expand(c)
        if s.shape != (c,) or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError(
                f"the likelihood scale of a fit with one curvature per output is one positive "
                f"finite number per output ([{c}]) or one for all; got {s.tolist()}"
            )
        return s

    def _block_prior(self, prior_precision: Any) -> Any:
        return self.parts[0]._block_prior(prior_precision)

    def _at(self, s: Tensor) -> Structure:
        """The structure of Σ_c s_c G_c at unit scale, built once per s (the last kept)."""
        key = tuple(s.detach().tolist())
        cached = self._at_cache  # one read: another thread replaces the pair whole
        if cached is not None and cached[0] == key:
            return cached[1]
        built = type(self.parts[0])._weighted(self.parts, s.detach())
        self._at_cache = (key, built)
        return built

    def _one(self) -> Tensor:
        return torch.ones((), dtype=self.dtype, device=self.device)

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: Any) -> bool:
        return self.parts[0]._is_exact(d)

    def _logdet(self, d: Any, s: Tensor) -> Tensor:
        at = self._at(s)
        value = at._logdet(d, self._one())
        if s.requires_grad:  # ∂/∂s_c = tr(Π⁻¹ G_c), exact, as a first-order term
            traces = torch.stack([at._trace_solve(p, d, self._one()) for p in self.parts])
            value = value + ((s - s.detach()) * traces.detach()).sum()
        return value

    def _solve(self, v: Tensor, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._solve(v, d, self._one())

    def _matvec(self, v: Tensor, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._matvec(v, d, self._one())

    def _trace_inverse(self, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._trace_inverse(d, self._one())

    def _inverse_diagonal(self, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._inverse_diagonal(d, self._one())

    def _sample(self, z: Tensor, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._sample(z, d, self._one())

    def _fvar(self, source: JacobianSource, positions: Tensor | None, d: Any, s: Tensor):
        return self._at(s)._fvar(source, positions, d, self._one())

    def _fvar_dense(self, jac: Tensor, d: Any, s: Tensor) -> Tensor:
        return self._at(s)._fvar_dense(jac, d, self._one())

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        return sum(p._curvature_matvec(v) for p in self.parts)

    def layouts(self) -> list[LayerBlock]:
        return self.parts[0].layouts()

    def curvature_dense(self) -> Tensor:
        """Σ_c G_c (the curvature at unit scale on every output)."""
        return sum(p.curvature_dense() for p in self.parts)

    def diagonal(self) -> Tensor:
        return sum(p.diagonal() for p in self.parts)

    def scaled_diagonal(self, scale: Tensor | float = 1.0) -> Tensor:
        s = self._scale(scale)
        return sum(sc * p.diagonal() for sc, p in zip(s, self.parts, strict=True))

    def precision_dense(self, prior_precision: Any, scale: Tensor | float = 1.0) -> Tensor:
        delta, _ = expand_prior(
            prior_precision, self.n_params, self.group_index, dtype=self.dtype, device=self.device
        )
        s = self._scale(scale)
        g = sum(sc * p.curvature_dense() for sc, p in zip(s, self.parts, strict=True))
        return g + torch.diag(delta.expand(self.n_params))

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        if len(other.parts) != len(self.parts):
            raise TypeError(
                f"cannot add a fit of {len(other.parts)} outputs to one of {len(self.parts)}"
            )
        return PerOutput(
            [a.merged(b, n_self, n_other) for a, b in zip(self.parts, other.parts, strict=True)]
        )

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "structure": structure_key(type(self)),
            "n_params": self.n_params,
            "parts": [p.state_dict() for p in self.parts],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses another size or number of outputs and
        changes nothing then."""
        other = type(self).from_state_dict(state, self.device, self.dtype)
        if other.n_params != self.n_params or len(other.parts) != len(self.parts):
            raise ValueError(
                f"state has {len(other.parts)} outputs of {other.n_params} parameters; this "
                f"structure has {len(self.parts)} of {self.n_params}"
            )
        self.parts, self._at_cache = other.parts, None
        self.group_index = other.group_index

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> PerOutput:
        check_state(cls, state, ("n_params", "parts"))
        parts = state["parts"]
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"state of {cls.__name__} has no per-output curvatures")
        what = "a per-output curvature in the state"
        out = cls([child_from_state(cls, part, device, dtype, what) for part in parts])
        if out.n_params != state["n_params"]:
            raise ValueError(
                f"state's per-output curvatures have {out.n_params} parameters; its entry "
                f"says {state['n_params']}"
            )
        return out
