"""C independent GPs, one per output (laplace-torch's ``independent_outputs``).

Output c has its own kernel K_c = W_c W_cᵀ on the M points, W_c = diag(λ_c)^½ J_c (the
output-c rows, with the diagonal of each Λ), and its own posterior Π_c = s·W_cᵀ W_c + δ; the
outputs do not share the weights' uncertainty. So

    J* Σ J*ᵀ = diag_c(J*_c Π_c⁻¹ J*_cᵀ)   (no covariance between outputs),
    "log det Π" − P log δ = Σ_c log det(I + (s/δ) K_c),

the latter laplace-torch's log-determinant ratio, so that the Laplace evidence is the sum of
the C GPs' (with the data fit and prior terms once). There is no single weight-space
posterior: solves, samples (the ``nn`` predictive), the inverse diagonal and MacKay's update
are refused by name, and so is a prior that is not one scalar.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from torch import Tensor

from .base import Structure
from .kernel import Kernel

__all__ = ["IndependentOutputs"]


class IndependentOutputs(Structure):
    """One :class:`Kernel` per output; see the module docstring.

    Args:
        kernels: the C per-output kernels (same P).
        group_index: ``[P]`` group of each parameter.
    """

    def __init__(self, kernels: list[Kernel], group_index: Tensor | None = None) -> None:
        if not kernels:
            raise ValueError("IndependentOutputs needs at least one kernel")
        k0 = kernels[0]
        super().__init__(k0.n_params, group_index, k0.dtype, k0.device)
        self.kernels = list(kernels)

    def _scalar(self, d: Tensor) -> None:
        if d.dim() != 0:
            raise ValueError(
                "independent outputs take one scalar prior precision (each output's GP has the "
                "isotropic prior δ·I)"
            )

    def _refuse(self, what: str) -> NoReturn:
        raise ValueError(
            f"{what} is not defined for independent outputs: there is no single weight-space "
            "posterior (use the joint kernel, independent_outputs=False)"
        )

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: Tensor) -> bool:
        return True

    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        self._scalar(d)
        prior = self.n_params * d.log()
        return sum(k._logdet(d, s) - prior for k in self.kernels) + prior

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._scalar(d)
        per = [k._fvar_dense(jac[:, c : c + 1], d, s)[:, 0, 0] for c, k in enumerate(self.kernels)]
        return torch.diag_embed(torch.stack(per, -1))

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._refuse("Π⁻¹ v")

    def _trace_inverse(self, d: Tensor, s: Tensor) -> Tensor:
        self._refuse("tr Π⁻¹ (MacKay's update)")

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        self._refuse("diag Π⁻¹")

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._refuse("sampling weights (the nn predictive)")

    def _matvec(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._refuse("Π v")

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        self._refuse("G v")

    def curvature_dense(self) -> Tensor:
        self._refuse("the dense curvature")

    def diagonal(self) -> Tensor:
        self._refuse("the curvature's diagonal")

    def state_dict(self) -> dict[str, Any]:
        self._refuse("a saved state")

    def _tensors(self) -> dict[str, Tensor]:
        self._refuse("a saved state")

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self._refuse("loading a state")

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        self._refuse("loading a state")
