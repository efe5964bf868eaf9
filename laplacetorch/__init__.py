"""laplacetorch: post-hoc Laplace approximations for PyTorch networks."""

from .curvature import BACKENDS, CurvatureResult, fit_diag, fit_full, get_backend
from .datapass import set_reduction
from .likelihoods import (
    BinaryLikelihood,
    ClassificationLikelihood,
    Likelihood,
    RegressionLikelihood,
    get_likelihood,
)
from .params import ParameterSubset
from .structures import Dense, Diagonal, Structure

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BinaryLikelihood",
    "ClassificationLikelihood",
    "CurvatureResult",
    "Dense",
    "Diagonal",
    "Likelihood",
    "ParameterSubset",
    "RegressionLikelihood",
    "Structure",
    "fit_diag",
    "fit_full",
    "get_backend",
    "get_likelihood",
    "set_reduction",
]
