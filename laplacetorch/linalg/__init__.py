"""Matrix-free linear algebra on symmetric (PSD) operators given as batched matvecs.

An operator is a callable ``matvec(V)`` taking a batch of vectors as rows, ``V`` ``[m, P]``,
and returning ``[m, P]`` (A applied to each row). Randomness comes only from a
``generator`` argument; nothing touches the global RNG or default dtype.
"""

from .block_lanczos import block_lanczos
from .cg import CGInfo, CGNotConvergedError, CGNotConvergedWarning, cg
from .hutchinson import hutchinson_diagonal, hutchinson_trace, hutchpp_trace, rademacher
from .lanczos import lanczos
from .neumann import largest_eigenvalue, neumann
from .slq import slq_estimate, slq_logdet, slq_quadrature

__all__ = [
    "CGInfo",
    "CGNotConvergedError",
    "CGNotConvergedWarning",
    "block_lanczos",
    "cg",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "largest_eigenvalue",
    "neumann",
    "rademacher",
    "slq_estimate",
    "slq_logdet",
    "slq_quadrature",
]
