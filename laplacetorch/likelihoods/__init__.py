"""Likelihoods: one module each, each class registering itself by name (:data:`LIKELIHOODS`).

See :mod:`.base` for the unit-scale convention and shapes.
"""

from __future__ import annotations

from .base import LIKELIHOODS, Likelihood, get_likelihood
from .binary import BinaryLikelihood
from .classification import ClassificationLikelihood
from .heteroscedastic import HeteroscedasticRegressionLikelihood
from .regression import RegressionLikelihood
from .reward_modeling import RewardModelingLikelihood

__all__ = [
    "LIKELIHOODS",
    "BinaryLikelihood",
    "ClassificationLikelihood",
    "HeteroscedasticRegressionLikelihood",
    "Likelihood",
    "RegressionLikelihood",
    "RewardModelingLikelihood",
    "get_likelihood",
]
