"""laplace-torch's option enums: ``str`` enums, so each member equals its string value."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = [
    "FeatureReduction",
    "HessianStructure",
    "Likelihood",
    "LinkApprox",
    "PredType",
    "PriorStructure",
    "SubsetOfWeights",
    "TuningMethod",
    "plain",
]


class SubsetOfWeights(str, Enum):
    """``subset_of_weights``."""

    ALL = "all"
    LAST_LAYER = "last_layer"
    SUBNETWORK = "subnetwork"


class HessianStructure(str, Enum):
    """``hessian_structure``."""

    FULL = "full"
    KRON = "kron"
    DIAG = "diag"
    LOWRANK = "lowrank"
    GP = "gp"


class Likelihood(str, Enum):
    """``likelihood``."""

    REGRESSION = "regression"
    CLASSIFICATION = "classification"
    REWARD_MODELING = "reward_modeling"


class PredType(str, Enum):
    """``pred_type``."""

    GLM = "glm"
    NN = "nn"
    GP = "gp"


class LinkApprox(str, Enum):
    """``link_approx``."""

    MC = "mc"
    PROBIT = "probit"
    BRIDGE = "bridge"
    BRIDGE_NORM = "bridge_norm"


class TuningMethod(str, Enum):
    """``method`` of ``optimize_prior_precision``."""

    MARGLIK = "marglik"
    GRIDSEARCH = "gridsearch"


class PriorStructure(str, Enum):
    """``prior_structure`` of ``optimize_prior_precision``."""

    SCALAR = "scalar"
    DIAG = "diag"
    LAYERWISE = "layerwise"


class FeatureReduction(str, Enum):
    """``feature_reduction`` of last-layer Laplace on sequence features."""

    PICK_FIRST = "pick_first"
    PICK_LAST = "pick_last"
    AVERAGE = "average"


def plain(value: Any) -> Any:
    """The string value of an enum member (anything else as it is)."""
    return value.value if isinstance(value, Enum) else value
