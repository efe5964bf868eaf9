"""The Bradley-Terry reward-modelling likelihood (laplace-torch's ``"reward_modeling"``).

A reward model r(x) maps one item to one reward. Fitted on preference pairs, the network is
given inputs ``[B, 2, ...]`` and returns the two rewards as logits ``[B, 2]``; the label
y ∈ {0, 1} says which item is preferred, with p(y | r) = softmax(r)_y = σ(r_y − r_{1−y}).
So the curvature, evidence and tuning are those of two-class classification. Predicting, the
network is given single items ``[B, ...]`` and the predictive is that of the rewards
``[B, 1]``: a Gaussian ``(f_mu, f_var)`` as for regression (no noise); ``fitting=True``
predicts preference probabilities of pairs instead.
"""

from __future__ import annotations

from torch import Tensor

from .base import Likelihood
from .classification import ClassificationLikelihood

__all__ = ["RewardModelingLikelihood"]


def _check_pairs(f_shape: tuple[int, ...]) -> None:
    if len(f_shape) != 2 or f_shape[1] != 2:
        raise ValueError(
            "reward_modeling fits preference pairs: the model must map inputs [B, 2, ...] "
            f"to the two rewards [B, 2]; got outputs of shape {list(f_shape)}"
        )


class RewardModelingLikelihood(ClassificationLikelihood):
    """Bradley-Terry preferences for fitting, a Gaussian over rewards for prediction."""

    name = "reward_modeling"
    gaussian_predictive = True  # the predictive of single items is over rewards

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        _check_pairs(f_shape)
        return super().check_targets(y, f_shape)

    def check_outputs(self, f: Tensor) -> None:
        _check_pairs(tuple(f.shape))  # rewards, not logits of classes: any two reals

    def for_fitting(self) -> Likelihood:
        """Classification over the pair's two rewards (the predictive of preferences)."""
        return ClassificationLikelihood()

    def predictive_input_shape(self, train_shape: tuple[int, ...] | None) -> tuple | None:
        """Single items: the training pairs ``[2, ...]`` without their pair dimension."""
        return None if train_shape is None else train_shape[1:]

    # ----------------------------------------------------------------- the reward predictive
    def inverse_link(self, f: Tensor) -> Tensor:
        return f
