"""A structure's persistence: its state as plain tensors and its rebuilding from one, checked
against the structure's class and size."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .layer_parts import LayerParts
from .layout import LayerBlock
from .registry import check_state, structure_key

if TYPE_CHECKING:
    from .base import Structure

__all__ = ["Composite", "StructureState", "child_from_state"]


class StructureState(ABC):
    """``state_dict``, ``load_state_dict`` and ``from_state_dict`` of a
    :class:`~laplacetorch.structures.base.Structure`, through the tensors each kind declares
    (``_tensor_keys``, ``_tensors``, ``_set_tensors``, ``_check_tensor_shapes``)."""

    #: names of the tensors returned by ``_tensors`` (persistence)
    _tensor_keys: ClassVar[tuple[str, ...]] = ()
    #: entries that must be ≥ 0 up to round-off (a PSD curvature's eigenvalues or diagonal;
    #: not checked where the state's ``psd`` entry says the curvature is indefinite)
    _nonnegative: ClassVar[tuple[str, ...]] = ()
    #: entries whose columns must be orthonormal (eigenvectors), probed at O(size) cost
    _orthonormal: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the structure without the data."""
        return {
            "structure": structure_key(type(self)),
            "n_params": self.n_params,
            "group_index": self.group_index.cpu(),
            "layout": None if self.layout is None else self.layout.to_dict(),
            **({} if self.layer_parts is None else {"layer_parts": self.layer_parts.state()}),
            **{k: v.cpu() for k, v in self._tensors().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a state of another structure or size and
        changes nothing then."""
        check_state(type(self), state, ("n_params",))
        if state.get("n_params") != self.n_params:
            raise ValueError(
                f"state has {state.get('n_params')} parameters; this structure has {self.n_params}"
            )
        other = type(self).from_state_dict(state, self.device, self.dtype)
        self.group_index, self.layout = other.group_index, other.layout
        self.layer_parts = other.layer_parts
        self._set_tensors(other._tensors())

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Structure:
        """Rebuild a structure of this class from :meth:`state_dict`."""
        from .base import Structure  # the base's own __init__, not the subclass's

        check_state(cls, state, ("n_params", "group_index", *cls._tensor_keys))
        dtype = dtype or state[cls._tensor_keys[0]].dtype
        obj = cls.__new__(cls)
        layout = state.get("layout")
        Structure.__init__(
            obj,
            state["n_params"],
            state["group_index"],
            dtype,
            torch.device(device),
            None if layout is None else LayerBlock.from_dict(layout),
        )
        # copies: the loaded structure owns its tensors (editing the dict changes nothing)
        tensors = {k: state[k].to(obj.device, dtype, copy=True) for k in cls._tensor_keys}
        obj._check_tensor_shapes(tensors)
        check_tensor_values(cls, tensors)
        obj._set_tensors(tensors)
        obj.layer_parts = LayerParts.from_state(state.get("layer_parts"), obj.n_params, obj.device)
        return obj

    @abstractmethod
    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        """Refuse tensors that cannot belong to a structure of ``n_params`` parameters."""

    @abstractmethod
    def _tensors(self) -> dict[str, Tensor]:
        """The tensors that define the structure (for persistence)."""

    @abstractmethod
    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Install tensors produced by :meth:`_tensors`."""


def check_tensor_values(cls: type[StructureState], tensors: dict[str, Tensor]) -> None:
    """Refuse a state whose tensors break what the structure's algebra assumes: NaN or Inf
    anywhere, negative eigenvalues of a PSD curvature (beyond round-off: 1e-3 of the largest),
    eigenvectors that are not orthonormal (one probe vector z: ‖QᵀQz − z‖ ≤ 1e-3‖z‖).

    Raises:
        ValueError: naming the structure, the entry and what was seen.
    """
    name = cls.__name__
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"state entry {key!r} of {name} contains NaN or Inf")
    psd = bool(tensors["psd"]) if "psd" in tensors else True
    for key in cls._nonnegative if psd else ():
        t = tensors.get(key)
        if t is None or not t.numel():
            continue
        low, high = float(t.min()), float(t.abs().max())
        if low < -1e-3 * high:
            raise ValueError(
                f"state entry {key!r} of {name} must be ≥ 0 (a positive semi-definite "
                f"curvature's); its smallest is {low:.3g} (largest magnitude {high:.3g})"
            )
    for key in cls._orthonormal:
        q = tensors.get(key)
        if q is None or q.dim() != 2 or not q.numel():
            continue
        z = torch.linspace(-1.0, 1.0, q.shape[1], dtype=q.dtype, device=q.device) + 0.5
        back = q.T @ (q @ z)
        if float((back - z).norm()) > 1e-3 * float(z.norm()):
            raise ValueError(
                f"state entry {key!r} of {name} must have orthonormal columns (eigenvectors); "
                f"‖QᵀQz − z‖ / ‖z‖ = {float((back - z).norm() / z.norm()):.3g}"
            )


class Composite:
    """The persistence of a structure made of structures (blocks, per-output parts): the
    children persist themselves; the composition has no tensors of its own. Listed before
    :class:`~laplacetorch.structures.base.Structure` among the bases."""

    def _tensors(self) -> dict[str, Tensor]:
        return {}

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        return None

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        return None


def child_from_state(
    parent: type, state: Any, device: torch.device | str, dtype: torch.dtype | None, what: str
) -> Structure:
    """A composite's child structure rebuilt from its state; refuses an unknown class, and the
    composite's own (a state nested in itself).

    Raises:
        ValueError: naming the child (``what``).
    """
    from .registry import STRUCTURES

    kind = STRUCTURES.get(state.get("structure")) if isinstance(state, dict) else None
    if kind is None or kind is parent:
        raise ValueError(f"{what} has an unknown structure")
    return kind.from_state_dict(state, device, dtype)
