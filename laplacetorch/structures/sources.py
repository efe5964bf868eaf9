"""Jacobian sources: J = ∂f/∂θ at θ* for a chunk of inputs, in the form that is cheapest.

A structure computes J Π⁻¹ Jᵀ from a source. A block with a layer layout first asks for the
layer's factors (inputs and output-gradient columns, see
:class:`~laplacetorch.structures.layout.LayerBlock`); otherwise it asks for the dense columns
of J at its positions of θ. :mod:`laplacetorch.predictive` builds the sources from a model.
"""

from __future__ import annotations

from torch import Tensor

from .layout import LayerBlock

__all__ = ["DEFAULT_MEMORY_BUDGET", "DenseJacobian", "JacobianSource"]

DEFAULT_MEMORY_BUDGET = 32 * 2**20  # larger chunks page-fault more than they gain


class JacobianSource:
    """The Jacobian of outputs ``f`` ``[B, C]`` with respect to θ.

    Attributes:
        f: the outputs at θ*, ``[B, C]``.
        memory_budget: bytes a block's intermediate products may take.
    """

    f: Tensor
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def columns(self, positions: Tensor | None) -> Tensor:
        """Dense J at ``positions`` of θ (``None``: all of θ), ``[B, C, n]``."""
        raise ValueError(f"{type(self).__name__} has no dense Jacobian columns")

    def factors(self, layout: LayerBlock) -> tuple[Tensor, Tensor] | None:
        """The block's layer inputs ``[B, S, in']`` and output gradients ``[C, B, S, out]``,
        or ``None`` when this source does not have that layer."""
        return None


class DenseJacobian(JacobianSource):
    """J given as a dense ``[B, C, P]`` tensor."""

    def __init__(
        self, jac: Tensor, f: Tensor | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        self.jac, self.memory_budget = jac, memory_budget
        self.f = jac.new_zeros(jac.shape[:2]) if f is None else f

    def columns(self, positions: Tensor | None) -> Tensor:
        return self.jac if positions is None else self.jac[..., positions]
