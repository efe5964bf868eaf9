"""The structure interface: prior-aware linear algebra with the posterior precision.

A structure holds the unit-scale curvature G of the summed negative log-likelihood (no prior
in it) and answers questions about the posterior precision

    Π(δ, s) = s·G + diag(δ),

for a prior precision δ that is a scalar, one value per parameter group (layer) or one value
per parameter, and a likelihood scale s > 0 (1/σ², 1/T). Everything is differentiable in δ
and s where it is a closed form.

Every structure is also a *block*: :class:`~laplacetorch.structures.BlockDiagonal` places
structures on slices of θ and calls their private methods with the prior already mapped onto
the block, as a 0-d tensor (constant on the block) or a vector of the block's length.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..checks import check_count
from ..prior import Prior, expand_prior, parse_prior, prior_on_block, single_group
from .checks import check_scale, report_indefinite, require_positive
from .layer_parts import LayerParts, PartFactors
from .layout import LayerBlock
from .registry import STRUCTURES, check_state, structure_from_state_dict, structure_key
from .saved import StructureState
from .sources import DenseJacobian, JacobianSource

__all__ = [
    "STRUCTURES",
    "Structure",
    "check_scale",
    "check_state",
    "report_indefinite",
    "require_positive",
    "structure_from_state_dict",
    "structure_key",
]


class Structure(StructureState):
    """Posterior-precision linear algebra for Π(δ, s) = s·G + diag(δ).

    Subclasses decompose G once at construction and implement the private block methods
    (``_logdet``, ``_solve``, ``_inverse_diagonal``, ``_sample``, ``_fvar_dense``), which take
    the prior already mapped onto the block (see :func:`prior_on_block`). ``v`` arguments are
    ``[..., P]`` (vectors in the last dimension); Jacobians are ``[B, C, P]`` or a
    :class:`~laplacetorch.structures.sources.JacobianSource`.

    Args:
        n_params: P. group_index: ``[P]`` group of each parameter (default: one group).
        layout: where the block's coordinates come from in a layer (see
            :class:`~laplacetorch.structures.layout.LayerBlock`), for Jacobian-free predictives.

    A structure over several layers may carry ``layer_parts`` instead
    (:class:`~laplacetorch.structures.layer_parts.LayerParts`, set by :meth:`_set_layer_parts`):
    its predictive then uses each part's layer factors (:meth:`_fvar_parts`).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        STRUCTURES[structure_key(cls)] = cls

    def __init__(
        self,
        n_params: int,
        group_index: Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        layout: LayerBlock | None = None,
    ) -> None:
        self.n_params = n_params
        self.dtype = dtype
        self.device = torch.device(device)
        if group_index is None:
            group_index = torch.zeros(n_params, dtype=torch.long)
        if group_index.shape != (n_params,):
            raise ValueError(
                f"group_index must have shape [{n_params}]; got {list(group_index.shape)}"
            )
        self.group_index = group_index.to(device=self.device, dtype=torch.long, copy=True)
        if layout is not None and layout.numel != n_params:
            raise ValueError(
                f"layout {layout} covers {layout.numel} parameters; the block has {n_params}"
            )
        self.layout = layout
        self.layer_parts: LayerParts | None = None

    def _set_layer_parts(self, parts: list[tuple[LayerBlock, Tensor]] | None) -> None:
        """Install ``(layout, index)`` layer parts (see :mod:`.layer_parts`); refuses them on a
        block that already has a layout."""
        if parts and self.layout is not None:
            raise ValueError("a block with a layout cannot have layer parts too")
        self.layer_parts = LayerParts(parts, self.n_params, self.device) if parts else None

    @property
    def n_groups(self) -> int:
        """Number of parameter groups (layers) for a per-layer prior."""
        return self._n_groups

    @property
    def group_index(self) -> Tensor:
        """``[P]`` the parameter group (tensor) of each coordinate."""
        return self._group_index

    @group_index.setter
    def group_index(self, value: Tensor) -> None:
        # counted once here, not by a reduction over P on every prior a call validates
        self._group_index = value
        self._n_groups = int(value.max()) + 1 if value.numel() else 0

    # ----------------------------------------------------------------- argument handling
    def _block_prior(self, prior_precision: Tensor | float | Prior) -> Any:
        """The validated prior as the private methods take it."""
        delta, kind = parse_prior(
            prior_precision, self.n_params, self.n_groups, dtype=self.dtype, device=self.device
        )
        group = single_group(self.group_index)
        if kind == "group" and group is None:
            return self._group_prior(delta, self.group_index)
        return prior_on_block(delta, kind, self.group_index, None, group)

    def _group_prior(self, delta: Tensor, groups: Tensor) -> Any:
        """δ ``[n_groups]`` on a block spanning several groups ``groups`` ``[n]``: per
        parameter, unless the block has an exact form for it (Kronecker [W | b] blocks)."""
        return delta[groups]

    #: how many likelihood scales the structure takes: 1 (the curvature summed over outputs);
    #: C for one curvature per output (:class:`~laplacetorch.structures.PerOutput`)
    output_scales: int = 1

    def _scale(self, scale: Tensor | float) -> Tensor:
        return check_scale(scale, self.dtype, self.device)

    @classmethod
    def _weighted(cls, parts: list[Structure], weights: Tensor) -> Structure:
        """The structure of Σ_c w_c G_c for curvatures ``parts`` of this kind (one per output)
        and weights ``[C]`` (:class:`~laplacetorch.structures.PerOutput`).

        Raises:
            TypeError: for a kind whose curvature cannot be re-weighted by output.
        """
        raise TypeError(f"{cls.__name__} has no form for one curvature per output")

    def _trace_solve(self, other: Structure, d: Any, s: Tensor) -> Tensor:
        """tr(Π(d, s)⁻¹ G_other) for ``other`` one of the curvatures this one is a weighted
        sum of (:meth:`_weighted`): the evidence's gradient in that output's scale."""
        raise TypeError(f"{type(self).__name__} has no form for one curvature per output")

    def _check_v(self, v: Tensor, name: str = "v") -> None:
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[-1] != self.n_params:
            shape = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name} must have shape [..., {self.n_params}]; got {shape}")

    def _source(self, jac: Tensor | JacobianSource) -> JacobianSource:
        if isinstance(jac, JacobianSource):
            return jac
        if not isinstance(jac, Tensor) or jac.dim() != 3 or jac.shape[-1] != self.n_params:
            shape = list(jac.shape) if isinstance(jac, Tensor) else type(jac).__name__
            raise ValueError(f"J must have shape [B, C, {self.n_params}]; got {shape}")
        return DenseJacobian(jac)

    def _normal(self, n_samples: int, generator: torch.Generator | None) -> Tensor:
        check_count("n_samples", n_samples)
        return torch.randn(
            (n_samples, self.n_params), generator=generator, dtype=self.dtype, device=self.device
        )

    # ----------------------------------------------------------------- the API
    def logdet(
        self, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """log det Π(δ, s), a 0-d tensor differentiable in δ and s."""
        return self._logdet(self._block_prior(prior_precision), self._scale(scale))

    def solve(
        self, v: Tensor, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Π⁻¹v for ``v`` of shape ``[..., P]``."""
        self._check_v(v)
        return self._solve(v, self._block_prior(prior_precision), self._scale(scale))

    def matvec(
        self, v: Tensor, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Π v = s·G v + δ ⊙ v for ``v`` of shape ``[..., P]``, without forming Π."""
        self._check_v(v)
        return self._matvec(v, self._block_prior(prior_precision), self._scale(scale))

    def curvature_matvec(self, v: Tensor) -> Tensor:
        """G v for ``v`` of shape ``[..., P]`` (the unit-scale curvature, no prior)."""
        self._check_v(v)
        return self._curvature_matvec(v)

    def covariance_sqrt(
        self, z: Tensor, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """L z for ``z`` ``[..., P]``, with the square root L (L Lᵀ = Π⁻¹) that :meth:`sample`
        draws with (linear in z)."""
        self._check_v(z, "z")
        return self._sample(z, self._block_prior(prior_precision), self._scale(scale))

    def trace_inverse(
        self, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """tr Π⁻¹."""
        return self._trace_inverse(self._block_prior(prior_precision), self._scale(scale))

    def inverse_diagonal(
        self, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """diag Π⁻¹, ``[P]`` (MacKay's update, marginal variances)."""
        return self._inverse_diagonal(self._block_prior(prior_precision), self._scale(scale))

    def sample(
        self,
        n_samples: int,
        prior_precision: Tensor | float | Prior,
        scale: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[n_samples, P]`` draws from N(0, Π⁻¹)."""
        d, s = self._block_prior(prior_precision), self._scale(scale)
        return self._sample(self._normal(n_samples, generator), d, s)

    def functional_variance(
        self,
        jac: Tensor | JacobianSource,
        prior_precision: Tensor | float | Prior,
        scale: Tensor | float = 1.0,
    ) -> Tensor:
        """J Π⁻¹ Jᵀ ``[B, C, C]`` for J given as ``[B, C, P]`` or as a Jacobian source (each
        block takes the cheapest form the source offers)."""
        return self.variance_of(prior_precision, scale)(jac)

    def variance_of(
        self, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Callable[[Tensor | JacobianSource], Tensor]:
        """J ↦ J Π⁻¹ Jᵀ at one (δ, s), the prior and scale validated once for every chunk of
        a predictive (not once per chunk)."""
        d, s = self._block_prior(prior_precision), self._scale(scale)
        return lambda jac: self._fvar(self._source(jac), None, d, s)

    def is_exact(self, prior_precision: Tensor | float | Prior) -> bool:
        """Whether log det, solves and traces are exact for this prior (not estimates)."""
        return self._is_exact(self._block_prior(prior_precision))

    def layouts(self) -> list[LayerBlock]:
        """The layer layouts whose factors the predictive can use instead of dense J."""
        if self.layer_parts is not None:
            return self.layer_parts.layouts()
        return [self.layout] if self.layout is not None else []

    def precision_dense(
        self, prior_precision: Tensor | float | Prior, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Π(δ, s) as a dense ``[P, P]`` matrix (tests, small P)."""
        delta, _ = expand_prior(
            prior_precision, self.n_params, self.group_index, dtype=self.dtype, device=self.device
        )
        g = self.curvature_dense()
        return self._scale(scale) * g + torch.diag(delta.expand(self.n_params))

    @abstractmethod
    def curvature_dense(self) -> Tensor:
        """The unit-scale curvature G as a dense ``[P, P]`` matrix (tests, small P)."""

    @abstractmethod
    def diagonal(self) -> Tensor:
        """diag G, ``[P]``."""

    def scaled_diagonal(self, scale: Tensor | float = 1.0) -> Tensor:
        """diag(s·G), ``[P]`` (the likelihood's part of diag Π)."""
        return self._scale(scale) * self.diagonal()

    # ----------------------------------------------------------------- block methods
    @abstractmethod
    def _logdet(self, d: Tensor, s: Tensor) -> Tensor: ...

    @abstractmethod
    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor: ...

    @abstractmethod
    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor: ...

    @abstractmethod
    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        """Map standard normal rows ``z`` ``[m, P]`` to draws from N(0, Π⁻¹)."""

    @abstractmethod
    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor) -> Tensor:
        """J Π⁻¹ Jᵀ for dense ``J`` ``[B, C, P]``."""

    def _trace_inverse(self, d: Tensor, s: Tensor) -> Tensor:
        return self._inverse_diagonal(d, s).sum()

    def _fvar(self, source: JacobianSource, positions: Tensor | None, d: Tensor, s: Tensor):
        """J_b Π_b⁻¹ J_bᵀ with J_b the columns of ``source`` at ``positions`` of θ."""
        if self.layer_parts is not None:
            split = self.layer_parts.split(source, positions)
            if split is not None:
                return self._fvar_parts(split, d, s, source.memory_budget)
        factors = source.factors(self.layout) if self.layout is not None else None
        if factors is not None:
            return self._fvar_factors(*factors, d, s, source.memory_budget)
        return self._fvar_dense(source.columns(positions), d, s)

    def _fvar_factors(
        self, a: Tensor, g: Tensor, d: Tensor, s: Tensor, memory_budget: int
    ) -> Tensor:
        """J Π⁻¹ Jᵀ for the layer Jacobian J[b, c, (i, j)] = Σₛ g[c, b, s, i] a[b, s, j]
        (``a`` ``[B, S, in']``, ``g`` ``[C, B, S, out]``); by default J is formed, in chunks of
        examples of at most ``memory_budget`` bytes."""
        row = g.shape[0] * self.n_params * g.element_size()
        chunk = max(1, memory_budget // max(row, 1))
        parts = []
        for b0 in range(0, a.shape[0], chunk):
            jac = torch.einsum("cbsi,bsj->bcij", g[:, b0 : b0 + chunk], a[b0 : b0 + chunk])
            parts.append(self._fvar_dense(jac.flatten(2), d, s))
        return torch.cat(parts)

    def _fvar_parts(self, split: PartFactors, d: Tensor, s: Tensor, memory_budget: int) -> Tensor:
        """J Π⁻¹ Jᵀ from layer parts' factors and the rest's dense columns; by default J is
        formed (structures with layer parts override this)."""
        b, c = split.shape
        jac = torch.zeros(b, c, self.n_params, dtype=self.dtype, device=self.device)
        for _, index, a, g in split.parts:
            jac[..., index] = torch.einsum("cbsi,bsj->bcij", g, a).flatten(2)
        if split.cols is not None:
            jac[..., split.rest] = split.cols
        return self._fvar_dense(jac, d, s)

    def merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        """The curvature of the union of the data this structure and ``other`` (fitted the
        same way, on ``n_self`` and ``n_other`` examples) were fitted on.

        Raises:
            TypeError: for a structure that cannot take more data exactly (its basis or
                estimate depends on all the data at once: refit on all of it).
        """
        if type(other) is not type(self) or other.n_params != self.n_params:
            raise TypeError(
                f"cannot add a {type(other).__name__} of {other.n_params} parameters to a "
                f"{type(self).__name__} of {self.n_params}"
            )
        if self.layout != other.layout:
            raise TypeError("cannot add a block of another layer layout")
        return self._merged(other, n_self, n_other)

    def _merged(self, other: Structure, n_self: int, n_other: int) -> Structure:
        raise TypeError(
            f"{type(self).__name__} cannot take more data exactly (it depends on all the data "
            "at once); fit again on all of it (override=True)"
        )

    def _matvec(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        return s * self._curvature_matvec(v) + d * v

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        """G v; the default forms G (blocks override it with their structure)."""
        return v @ self.curvature_dense()

    def _is_exact(self, d: Tensor) -> bool:
        return True
