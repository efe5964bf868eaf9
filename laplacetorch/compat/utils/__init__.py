"""laplace-torch's ``laplace.utils`` names used in user code."""

from ...subnet_masks import (
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    LastLayerSubnetMask,
    ModuleNameSubnetMask,
    ParamNameSubnetMask,
    RandomSubnetMask,
    ScoreBasedSubnetMask,
    SubnetMask,
    fit_diagonal_swag_var,
)
from ..enums import (
    FeatureReduction,
    HessianStructure,
    Likelihood,
    LinkApprox,
    PredType,
    PriorStructure,
    SubsetOfWeights,
    TuningMethod,
)
from .feature_extractor import FeatureExtractor
from .helpers import (
    expand_prior_precision,
    fix_prior_prec_structure,
    get_nll,
    parameters_per_layer,
    validate,
)

__all__ = [
    "FeatureExtractor",
    "FeatureReduction",
    "HessianStructure",
    "LargestMagnitudeSubnetMask",
    "LargestVarianceDiagLaplaceSubnetMask",
    "LargestVarianceSWAGSubnetMask",
    "LastLayerSubnetMask",
    "Likelihood",
    "LinkApprox",
    "ModuleNameSubnetMask",
    "ParamNameSubnetMask",
    "PredType",
    "PriorStructure",
    "RandomSubnetMask",
    "ScoreBasedSubnetMask",
    "SubnetMask",
    "SubsetOfWeights",
    "TuningMethod",
    "expand_prior_precision",
    "fit_diagonal_swag_var",
    "fix_prior_prec_structure",
    "get_nll",
    "parameters_per_layer",
    "validate",
]
