"""laplacetorch: post-hoc Laplace approximations for PyTorch networks."""

from .curvature import BACKENDS, CurvatureResult, fit_diag, fit_full, get_backend
from .datapass import set_reduction
from .laplace import HESSIAN_STRUCTURES, Laplace, NotFittedError
from .likelihoods import (
    BinaryLikelihood,
    ClassificationLikelihood,
    Likelihood,
    RegressionLikelihood,
    get_likelihood,
)
from .marglik_training import marglik_training
from .params import ParameterSubset
from .spectrum import Spectrum, curvature_spectrum
from .structures import Dense, Diagonal, Structure
from .tuning import TuningResult

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "HESSIAN_STRUCTURES",
    "BinaryLikelihood",
    "ClassificationLikelihood",
    "CurvatureResult",
    "Dense",
    "Diagonal",
    "Laplace",
    "Likelihood",
    "NotFittedError",
    "ParameterSubset",
    "RegressionLikelihood",
    "Spectrum",
    "Structure",
    "TuningResult",
    "curvature_spectrum",
    "fit_diag",
    "fit_full",
    "get_backend",
    "get_likelihood",
    "marglik_training",
    "set_reduction",
]
