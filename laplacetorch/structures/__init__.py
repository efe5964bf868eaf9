"""Prior-aware posterior-precision structures."""

from .base import Structure, expand_prior
from .dense import Dense
from .diagonal import Diagonal
from .kron import EKron, Kron
from .lowrank import LowRank
from .operator import Operator

STRUCTURES: dict[str, type[Structure]] = {
    "Dense": Dense,
    "Diagonal": Diagonal,
    "Kron": Kron,
    "EKron": EKron,
    "LowRank": LowRank,
    "Operator": Operator,
}


def structure_from_state_dict(state: dict, device="cpu", dtype=None) -> Structure:
    """Rebuild any registered structure from its ``state_dict``."""
    name = state.get("structure") if isinstance(state, dict) else None
    if name not in STRUCTURES:
        raise ValueError(
            f"unknown structure in state: {name!r}; expected one of {list(STRUCTURES)}"
        )
    return STRUCTURES[name].from_state_dict(state, device=device, dtype=dtype)


__all__ = [
    "STRUCTURES",
    "Dense",
    "Diagonal",
    "EKron",
    "Kron",
    "LowRank",
    "Operator",
    "Structure",
    "expand_prior",
    "structure_from_state_dict",
]
