"""The structure interface: prior-aware linear algebra with the posterior precision.

A structure holds the unit-scale curvature G of the summed negative log-likelihood (no prior
in it) and answers questions about the posterior precision

    Π(δ, s) = s·G + diag(δ),

for a prior precision δ that is a scalar, one value per parameter group (layer) or one value
per parameter, and a likelihood scale s > 0 (1/σ², 1/T). Everything is differentiable in δ
and s where it is a closed form.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = ["Structure", "check_scale", "expand_prior"]


def expand_prior(
    prior_precision: Tensor | float,
    n_params: int,
    group_index: Tensor,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, bool]:
    """Validate a prior precision and return it as a 0-d tensor (scalar) or ``[P]``.

    Args:
        prior_precision: a scalar, ``[n_groups]`` (one per layer) or ``[P]``.
        n_params: P.
        group_index: ``[P]`` long tensor, the group of each parameter.

    Returns:
        ``(delta, is_scalar)``: a 0-d tensor and ``True``, or a ``[P]`` tensor and ``False``.

    Raises:
        ValueError: wrong number of entries, or a value that is not positive and finite.
        TypeError: not a number or tensor.
    """
    if isinstance(prior_precision, bool) or not isinstance(prior_precision, Tensor | float | int):
        raise TypeError(
            f"prior_precision must be a float or a tensor; got {type(prior_precision).__name__}"
        )
    delta = torch.as_tensor(prior_precision, dtype=dtype, device=device)
    if not torch.isfinite(delta).all() or (delta <= 0).any():
        raise ValueError(
            f"prior_precision must be positive and finite; got {delta.detach().cpu().tolist()}"
        )
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    if delta.numel() == 1:
        return delta.reshape(()), True
    if delta.dim() != 1 or delta.numel() not in (n_groups, n_params):
        raise ValueError(
            f"prior_precision must have 1, {n_groups} (one per layer) or {n_params} (one per "
            f"parameter) entries; got shape {list(delta.shape)}"
        )
    if delta.numel() == n_params:
        return delta, False
    return delta[group_index.to(device)], False


def check_scale(scale: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The likelihood scale s as a positive finite 0-d tensor."""
    s = torch.as_tensor(scale, dtype=dtype, device=device)
    if s.numel() != 1 or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"likelihood scale must be one positive finite number; got {s.tolist()}")
    return s.reshape(())


class Structure(ABC):
    """Posterior-precision linear algebra for Π(δ, s) = s·G + diag(δ).

    Subclasses decompose G once at construction. ``v`` arguments are ``[..., P]`` (a batch of
    vectors in the last dimension); Jacobians are ``[B, C, P]``.
    """

    #: whether logdet / solve / trace are exact (False: stochastic estimates)
    exact: bool = True
    #: names of the tensors returned by ``_tensors`` (persistence)
    _tensor_keys: tuple[str, ...] = ()

    def __init__(
        self, n_params: int, group_index: Tensor | None, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.n_params = n_params
        self.dtype = dtype
        self.device = device
        if group_index is None:
            group_index = torch.zeros(n_params, dtype=torch.long)
        if group_index.shape != (n_params,):
            raise ValueError(
                f"group_index must have shape [{n_params}]; got {list(group_index.shape)}"
            )
        self.group_index = group_index.to(device=device, dtype=torch.long)

    @property
    def n_groups(self) -> int:
        """Number of parameter groups (layers) for a per-layer prior."""
        return int(self.group_index.max()) + 1 if self.n_params else 0

    def _prior(self, prior_precision: Tensor | float) -> tuple[Tensor, bool]:
        return expand_prior(
            prior_precision, self.n_params, self.group_index, dtype=self.dtype, device=self.device
        )

    def _scale(self, scale: Tensor | float) -> Tensor:
        return check_scale(scale, self.dtype, self.device)

    def _check_v(self, v: Tensor, name: str = "v") -> None:
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[-1] != self.n_params:
            shape = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name} must have shape [..., {self.n_params}]; got {shape}")

    def _check_jacobian(self, jac: Tensor) -> None:
        if not isinstance(jac, Tensor) or jac.dim() != 3 or jac.shape[-1] != self.n_params:
            shape = list(jac.shape) if isinstance(jac, Tensor) else type(jac).__name__
            raise ValueError(f"J must have shape [B, C, {self.n_params}]; got {shape}")

    # ----------------------------------------------------------------- the API
    @abstractmethod
    def logdet(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        """log det Π(δ, s), a 0-d tensor differentiable in δ and s."""

    @abstractmethod
    def solve(
        self, v: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Π⁻¹v for ``v`` of shape ``[..., P]``."""

    @abstractmethod
    def trace_inverse(self, prior_precision: Tensor | float, scale: Tensor | float = 1.0) -> Tensor:
        """tr Π⁻¹."""

    @abstractmethod
    def inverse_diagonal(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """diag Π⁻¹, ``[P]`` (MacKay's update, marginal variances)."""

    @abstractmethod
    def sample(
        self,
        n_samples: int,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[n_samples, P]`` draws from N(0, Π⁻¹)."""

    @abstractmethod
    def functional_variance(
        self, jac: Tensor, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """J Π⁻¹ Jᵀ for ``J`` of shape ``[B, C, P]``, returning ``[B, C, C]``."""

    def functional_variance_head(
        self,
        phi_aug: Tensor,
        index: Tensor,
        prior_precision: Tensor | float,
        scale: Tensor | float = 1.0,
    ) -> Tensor:
        """J Π⁻¹ Jᵀ ``[B, C, C]`` for a linear head's Jacobian J_b = I_C ⊗ φ̃_bᵀ, given the
        features ``phi_aug`` ``[B, D̃]`` and the ``[C, D̃]`` positions ``index`` of the head's
        weights in θ. This default builds J; structures override it to avoid that."""
        b, (c, d) = phi_aug.shape[0], index.shape
        jac = phi_aug.new_zeros(b, c, self.n_params)
        jac.scatter_(2, index.unsqueeze(0).expand(b, c, d), phi_aug.unsqueeze(1).expand(b, c, d))
        return self.functional_variance(jac, prior_precision, scale)

    @abstractmethod
    def curvature_dense(self) -> Tensor:
        """The unit-scale curvature G as a dense ``[P, P]`` matrix (tests, small P)."""

    @abstractmethod
    def diagonal(self) -> Tensor:
        """diag G, ``[P]``."""

    def precision_dense(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> Tensor:
        """Π(δ, s) as a dense ``[P, P]`` matrix (tests, small P)."""
        delta, _ = self._prior(prior_precision)
        g = self.curvature_dense()
        return self._scale(scale) * g + torch.diag(delta.expand(self.n_params))

    def _normal(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        if not isinstance(shape[0], int) or shape[0] < 1:
            raise ValueError(f"n_samples must be a positive integer; got {shape[0]!r}")
        return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the structure without the data."""
        return {
            "structure": type(self).__name__,
            "n_params": self.n_params,
            "group_index": self.group_index.cpu(),
            **{k: v.cpu() for k, v in self._tensors().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a state of another structure or size."""
        if state.get("structure") != type(self).__name__:
            raise ValueError(
                f"state is of structure {state.get('structure')!r}, not {type(self).__name__!r}"
            )
        if state.get("n_params") != self.n_params:
            raise ValueError(
                f"state has {state.get('n_params')} parameters; this structure has {self.n_params}"
            )
        own = self._tensors()
        for k, v in own.items():
            if k not in state or tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"state entry {k!r} is missing or has the wrong shape")
        self.group_index = state["group_index"].to(self.device)
        self._set_tensors({k: state[k].to(self.device, self.dtype) for k in own})

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Structure:
        """Rebuild a structure of this class from :meth:`state_dict`."""
        if state.get("structure") != cls.__name__:
            raise ValueError(
                f"state is of structure {state.get('structure')!r}, not {cls.__name__!r}"
            )
        missing = [k for k in cls._tensor_keys if k not in state]
        if missing or "n_params" not in state or "group_index" not in state:
            raise ValueError(f"state of {cls.__name__} lacks entries {missing or ['n_params']}")
        dtype = dtype or state[cls._tensor_keys[0]].dtype
        obj = cls.__new__(cls)
        Structure.__init__(
            obj, state["n_params"], state["group_index"], dtype, torch.device(device)
        )
        obj._set_tensors({k: state[k].to(obj.device, dtype) for k in cls._tensor_keys})
        return obj

    @abstractmethod
    def _tensors(self) -> dict[str, Tensor]:
        """The tensors that define the structure (for persistence)."""

    @abstractmethod
    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Install tensors produced by :meth:`_tensors`."""
