"""laplace-torch's ``laplace.utils`` names used in user code."""

from ...subnet_masks import fit_diagonal_swag_var
from . import enums as _enums
from . import subnetmask as _subnetmask
from .enums import *  # noqa: F403
from .feature_extractor import FeatureExtractor, FeatureReduction
from .helpers import (
    expand_prior_precision,
    fix_prior_prec_structure,
    get_nll,
    parameters_per_layer,
    validate,
)
from .linalg import diagonal_add_scalar, invsqrt_precision, normal_samples, symeig
from .matrix import KronDecomposed
from .metrics import RunningNLLMetric
from .subnetmask import *  # noqa: F403

__all__ = [
    *_enums.__all__,
    *_subnetmask.__all__,
    "FeatureExtractor",
    "FeatureReduction",
    "KronDecomposed",
    "RunningNLLMetric",
    "diagonal_add_scalar",
    "invsqrt_precision",
    "normal_samples",
    "symeig",
    "expand_prior_precision",
    "fit_diagonal_swag_var",
    "fix_prior_prec_structure",
    "get_nll",
    "parameters_per_layer",
    "validate",
]
