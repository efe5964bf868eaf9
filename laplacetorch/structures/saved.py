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

__all__ = ["StructureState"]


class StructureState(ABC):
    """``state_dict``, ``load_state_dict`` and ``from_state_dict`` of a
    :class:`~laplacetorch.structures.base.Structure`, through the tensors each kind declares
    (``_tensor_keys``, ``_tensors``, ``_set_tensors``, ``_check_tensor_shapes``)."""

    #: names of the tensors returned by ``_tensors`` (persistence)
    _tensor_keys: ClassVar[tuple[str, ...]] = ()

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
