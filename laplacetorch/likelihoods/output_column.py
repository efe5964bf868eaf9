"""One output of a Gaussian likelihood: the curvature of a noise per output, output by output.

With a noise σ_c per output, the curvature of the summed NLL is Σ_c G_c / (σ_c² T), each G_c
the GGN (or Hessian, or Monte-Carlo Fisher) of ½ (y_c − f_c)² alone. :class:`OutputColumn` is
that term as a likelihood, so that any backend fits G_c unchanged: its output Hessian is
e_c e_cᵀ, its square root the column e_c, its loss ½ Σₙ (y_{n,c} − f_{n,c})² (the data fit of
output c in the evidence). The empirical Fisher is not a sum over outputs (its gradients mix
them) and has no such form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .regression import RegressionLikelihood

__all__ = ["OutputColumn"]


class OutputColumn(RegressionLikelihood):
    """The Gaussian likelihood's term of output ``column`` of ``n_outputs`` (unit scale).

    Args:
        column: c, which output. n_outputs: C, checked against the model's outputs.
    """

    name = ""  # a part of "regression", not a likelihood of its own

    def __init__(self, column: int, n_outputs: int) -> None:
        self.column, self.n_outputs = column, n_outputs

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        if len(f_shape) == 2 and f_shape[1] != self.n_outputs:
            raise ValueError(
                f"sigma_noise has {self.n_outputs} values (one noise per output), but the "
                f"model gives {f_shape[1]} outputs; pass one σ per output or one for all"
            )
        return super().check_targets(y, f_shape)

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        c = self.column
        return 0.5 * (y[..., c] - f[..., c]).square()

    def _unit(self, f: Tensor) -> Tensor:
        e = torch.zeros(f.shape[-1], dtype=f.dtype, device=f.device)
        e[self.column] = 1.0
        return e

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        e = self._unit(f)
        return torch.outer(e, e).expand(f.shape[0], -1, -1)

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return self._unit(f).reshape(-1, 1).expand(f.shape[0], -1, -1)
