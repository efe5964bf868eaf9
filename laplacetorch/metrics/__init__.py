"""Evaluation metrics for predictive distributions: classification, calibration, OOD, regression.

Shapes and conventions:

- Classification metrics take probabilities ``probs`` ``[B, C]`` (rows on the simplex) and
  integer labels ``y`` ``[B]`` in ``{0, …, C−1}``. ``binary_nll`` takes independent Bernoulli
  probabilities ``[B, C]`` and 0/1 targets ``[B, C]`` (or ``[B]`` when C = 1).
- Calibration uses ``n_bins`` equal-width bins on [0, 1]; bin b is [b/n, (b+1)/n), the last one
  closed at 1.
- OOD scores measure *in-distribution-ness*: higher means more in-distribution (max probability,
  negative entropy). In-distribution examples are the positive class of the ROC curve.
- Regression metrics take means ``[B, C]`` (or ``[B]``), variances ``[B, C]`` or covariances
  ``[B, C, C]``, and targets ``[B]`` or ``[B, C]`` (reshaped to the mean's shape).

Bad input (wrong shapes, mismatched lengths, empty batches, NaN/Inf, probabilities outside
[0, 1] or rows not summing to 1) raises ``ValueError`` naming the argument, what was seen and
what was expected. Scalar metrics return Python floats; the NLLs return tensors (differentiable).
"""

from ._checks import PROB_ATOL
from .calibration import CalibrationBins, calibration_bins, ece, mce
from .classification import accuracy, binary_nll, brier, nll
from .ood import fpr_at_95_tpr, max_probability, ood_auroc, ood_metrics, predictive_entropy
from .regression import gaussian_nll, interval_coverage, rmse

__all__ = [
    "PROB_ATOL",
    "CalibrationBins",
    "accuracy",
    "binary_nll",
    "brier",
    "calibration_bins",
    "ece",
    "fpr_at_95_tpr",
    "gaussian_nll",
    "interval_coverage",
    "max_probability",
    "mce",
    "nll",
    "ood_auroc",
    "ood_metrics",
    "predictive_entropy",
    "rmse",
]
