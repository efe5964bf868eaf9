"""laplace-torch's public names on laplacetorch: replace ``from laplace import ...`` with
``from laplacetorch.compat import ...``.

Each name maps onto the native API (:class:`laplacetorch.Laplace`); there is no second
implementation. What still differs is listed in ``docs/migrating.md``.
"""

from . import curvature
from .classes import (
    BaseLaplace,
    DiagLaplace,
    FullLaplace,
    KronLaplace,
    LowRankLaplace,
    ParametricLaplace,
)
from .enums import (
    FeatureReduction,
    HessianStructure,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    SubsetOfWeights,
    TuningMethod,
)
from .factory import Laplace
from .functional import FunctionalLaplace, FunctionalLLLaplace
from .last_layer import DiagLLLaplace, FullLLLaplace, KronLLLaplace, LLLaplace
from .marglik import marglik_training
from .subnetwork import DiagSubnetLaplace, FullSubnetLaplace, SubnetLaplace

__all__ = [
    "BaseLaplace",
    "DiagLLLaplace",
    "DiagLaplace",
    "DiagSubnetLaplace",
    "FeatureReduction",
    "FullLLLaplace",
    "FullLaplace",
    "FullSubnetLaplace",
    "FunctionalLLLaplace",
    "FunctionalLaplace",
    "HessianStructure",
    "KronLLLaplace",
    "KronLaplace",
    "LLLaplace",
    "Laplace",
    "Likelihood",
    "LinkApprox",
    "LowRankLaplace",
    "ParametricLaplace",
    "PredType",
    "PriorStructure",
    "SubnetLaplace",
    "SubsetOfWeights",
    "TuningMethod",
    "curvature",
    "marglik_training",
]
