"""Prior-aware posterior-precision structures: blocks and their block-diagonal composition.

Every class here is registered by name when it is defined (``STRUCTURES``), which is all that
persistence needs: a new structure is one new module.
"""

from ..prior import Prior, expand_prior, parse_prior
from .base import STRUCTURES, Structure, structure_from_state_dict
from .block_diagonal import BlockDiagonal
from .dense import Dense
from .diagonal import Diagonal
from .independent import IndependentOutputs
from .kernel import Kernel
from .kron import EKron, Kron
from .layout import LayerBlock
from .lowrank import LowRank
from .operator import Operator
from .per_output import PerOutput
from .sources import DEFAULT_MEMORY_BUDGET, DenseJacobian, JacobianSource

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "STRUCTURES",
    "BlockDiagonal",
    "Dense",
    "DenseJacobian",
    "Diagonal",
    "EKron",
    "IndependentOutputs",
    "JacobianSource",
    "Kernel",
    "Kron",
    "LayerBlock",
    "LowRank",
    "Operator",
    "PerOutput",
    "Prior",
    "Structure",
    "expand_prior",
    "parse_prior",
    "structure_from_state_dict",
]
