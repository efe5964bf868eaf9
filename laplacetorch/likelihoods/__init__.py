"""Likelihoods: one module each, each class registering itself by name (:data:`LIKELIHOODS`).

See :mod:`.base` for the unit-scale convention and shapes.
"""

from __future__ import annotations

from .base import LIKELIHOODS, Likelihood, get_likelihood
from .binary import BinaryLikelihood
from .classification import ClassificationLikelihood
from .custom import CustomLikelihood
from .heteroscedastic import HeteroscedasticRegressionLikelihood
from .poisson import PoissonLikelihood
from .regression import RegressionLikelihood
from .reward_modeling import RewardModelingLikelihood
from .student_t import StudentTLikelihood

__all__ = [
    "LIKELIHOODS",
    "BinaryLikelihood",
    "ClassificationLikelihood",
    "CustomLikelihood",
    "HeteroscedasticRegressionLikelihood",
    "Likelihood",
    "PoissonLikelihood",
    "RegressionLikelihood",
    "RewardModelingLikelihood",
    "StudentTLikelihood",
    "get_likelihood",
]
