"""The structure classes by name, and checks on their states (persistence).

Every :class:`~laplacetorch.structures.base.Structure` subclass registers itself here when it
is defined, so a state names its class and :func:`structure_from_state_dict` finds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .base import Structure

__all__ = ["STRUCTURES", "check_state", "structure_from_state_dict", "structure_key"]

#: every structure class by name, filled by subclassing (persistence looks classes up here)
STRUCTURES: dict[str, type[Structure]] = {}


def structure_key(cls: type) -> str:
    """A structure class's name in ``STRUCTURES`` and in states: the class name for
    laplacetorch's own, module-qualified for others (a user's ``Dense`` stays apart)."""
    if cls.__module__.startswith("laplacetorch."):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def check_state(cls: type, state: Any, keys: tuple[str, ...]) -> None:
    """Refuse a state that is not of structure ``cls`` or lacks one of ``keys``."""
    if not isinstance(state, dict) or state.get("structure") != structure_key(cls):
        got = state.get("structure") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"state is of structure {got!r}, not {structure_key(cls)!r}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state of {cls.__name__} lacks entries {missing}")


def structure_from_state_dict(
    state: dict[str, Any], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Structure:
    """Rebuild any structure from its ``state_dict``."""
    name = state.get("structure") if isinstance(state, dict) else None
    if name not in STRUCTURES:
        raise ValueError(
            f"unknown structure in state: {name!r}; expected one of {sorted(STRUCTURES)}"
        )
    return STRUCTURES[name].from_state_dict(state, device=device, dtype=dtype)
