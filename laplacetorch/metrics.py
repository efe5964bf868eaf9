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

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

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

_TINY = 1e-12
PROB_ATOL = 1e-3
"""Tolerance for probabilities outside [0, 1] and for rows of ``probs`` summing to 1."""

Variant = Literal["top_label", "classwise"]


# --------------------------------------------------------------------------- input checks


def _tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}") from e
    return x


def _finite(x: Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
        n_bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/Inf entries")


def _nonempty(x: Tensor, name: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")


def _check_probs(probs, name: str = "probs", simplex: bool = True) -> Tensor:
    """Checks ``[B, C]`` probabilities (rows summing to 1 when ``simplex``)."""
    probs = _tensor(probs, name)
    if probs.dim() != 2:
        raise ValueError(f"{name}: expected shape [B, C], got {tuple(probs.shape)}")
    _nonempty(probs, name)
    if not probs.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {probs.dtype}")
    _finite(probs, name)
    p = probs.detach()
    lo, hi = float(p.min()), float(p.max())
    if lo < -PROB_ATOL or hi > 1 + PROB_ATOL:
        raise ValueError(f"{name}: expected probabilities in [0, 1], got values in [{lo}, {hi}]")
    if simplex:
        dev = float((p.to(torch.float64).sum(-1) - 1).abs().max())
        if dev > PROB_ATOL:
            raise ValueError(
                f"{name}: expected rows summing to 1 (tolerance {PROB_ATOL}), "
                f"got a row sum off by {dev:.3g}"
            )
    return probs


def _check_labels(y, probs: Tensor, name: str = "y") -> Tensor:
    """Checks integer labels ``[B]`` in [0, C) matching ``probs`` ``[B, C]``; returns longs."""
    y = _tensor(y, name)
    b, c = probs.shape
    if y.dim() != 1:
        raise ValueError(f"{name}: expected labels of shape [B] = ({b},), got {tuple(y.shape)}")
    if y.shape[0] != b:
        raise ValueError(
            f"{name}: expected {b} labels to match probs {tuple(probs.shape)}, got {y.shape[0]}"
        )
    if y.is_floating_point():
        _finite(y, name)
        if not bool((y == y.round()).all()):
            raise ValueError(f"{name}: expected integer class labels, got non-integer values")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise ValueError(f"{name}: expected labels in [0, {c - 1}], got values in [{lo}, {hi}]")
    return y.to(probs.device)


def _check_classification(probs, y) -> tuple[Tensor, Tensor]:
    probs = _check_probs(probs)
    return probs, _check_labels(y, probs)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1, got {n_bins!r}")


def _check_variant(variant: str) -> None:
    if variant not in ("top_label", "classwise"):
        raise ValueError(f"variant: expected 'top_label' or 'classwise', got {variant!r}")


def _check_target(mean, y, name_mean: str = "mean", name_y: str = "y") -> tuple[Tensor, Tensor]:
    """Checks a regression mean ``[B]``/``[B, C]`` and a target reshaped to its shape."""
    mean, y = _tensor(mean, name_mean), _tensor(y, name_y)
    if mean.dim() not in (1, 2):
        raise ValueError(f"{name_mean}: expected shape [B] or [B, C], got {tuple(mean.shape)}")
    _nonempty(mean, name_mean)
    if not mean.is_floating_point():
        raise ValueError(f"{name_mean}: expected a floating-point tensor, got dtype {mean.dtype}")
    ok = y.shape == mean.shape or (
        y.dim() == 1 and mean.dim() == 2 and mean.shape[1] == 1 and y.shape[0] == mean.shape[0]
    )
    if not ok:
        raise ValueError(
            f"{name_y}: expected shape {tuple(mean.shape)} matching {name_mean}"
            f"{' (or [B] for C = 1)' if mean.dim() == 2 else ''}, got {tuple(y.shape)}"
        )
    _finite(mean, name_mean)
    _finite(y, name_y)
    return mean, y.reshape(mean.shape).to(device=mean.device, dtype=mean.dtype)


# --------------------------------------------------------------------------- classification


def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of examples whose most probable class is the label.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.

    Returns:
        (1/B) Σₙ 1[argmax_c pₙ꜀ = yₙ].
    """
    probs, y = _check_classification(probs, y)
    return float((probs.argmax(-1) == y).to(torch.float64).mean())


def nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Categorical negative log-likelihood −log pₙ(yₙ), with pₙ(yₙ) clamped at 1e-12.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``probs``): (1/B) Σₙ −log pₙ(yₙ) for ``"mean"``.
    """
    _check_reduction(reduction)
    probs, y = _check_classification(probs, y)
    lp = probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).clamp_min(_TINY).log()
    return -_reduce(lp, reduction)


def binary_nll(probs: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Bernoulli negative log-likelihood of independent outputs, summed over outputs.

    −log p(yₙ) = −Σ_c [yₙ꜀ log pₙ꜀ + (1 − yₙ꜀) log(1 − pₙ꜀)], logs clamped at 1e-12.

    Args:
        probs: probabilities of the positive class ``[B, C]`` (rows need not sum to 1).
        y: targets in [0, 1], ``[B, C]`` (or ``[B]`` when C = 1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``probs``).
    """
    _check_reduction(reduction)
    probs = _check_probs(probs, simplex=False)
    y = _tensor(y, "y")
    if y.dim() == 0 or y.numel() != probs.numel() or y.shape[0] != probs.shape[0]:
        raise ValueError(
            f"y: expected targets of shape {tuple(probs.shape)} matching probs, "
            f"got {tuple(y.shape)}"
        )
    _finite(y, "y")
    y = y.reshape(probs.shape).to(device=probs.device, dtype=probs.dtype)
    lo, hi = float(y.min()), float(y.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"y: expected binary targets in [0, 1], got values in [{lo}, {hi}]")
    lp = (y * probs.clamp_min(_TINY).log() + (1 - y) * (1 - probs).clamp_min(_TINY).log()).sum(-1)
    return -_reduce(lp, reduction)


def brier(probs: Tensor, y: Tensor) -> float:
    """Multi-class Brier score (1/B) Σₙ Σ_c (pₙ꜀ − 1[yₙ = c])².

    For two classes this is twice scikit-learn's binary ``brier_score_loss`` of p(class 1).

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
    """
    probs, y = _check_classification(probs, y)
    onehot = torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs.dtype)
    return float((probs - onehot).square().sum(-1).to(torch.float64).mean())


# --------------------------------------------------------------------------- calibration


class CalibrationBins(NamedTuple):
    """Per-bin statistics of a reliability diagram (all float64 on the CPU).

    Attributes:
        edges: bin edges ``[n_bins + 1]``, 0, 1/n, …, 1.
        confidence: mean predicted probability in each bin ``[n_bins]`` (NaN when empty).
        accuracy: observed frequency of the event in each bin ``[n_bins]`` (NaN when empty).
        counts: number of examples in each bin ``[n_bins]``.
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    counts: Tensor


def _bin_sums(conf: Tensor, hit: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Counts, Σ conf and Σ hit per bin for ``conf``/``hit`` ``[N, K]``: each ``[K, n_bins]``.

    Column k is binned on its own (K = 1 for top-label, K = C for classwise).
    """
    conf = conf.detach().to(torch.float64)
    hit = hit.detach().to(torch.float64)
    k = conf.shape[1]
    idx = (conf * n_bins).floor().long().clamp(0, n_bins - 1)
    idx = (idx + n_bins * torch.arange(k, device=conf.device)).reshape(-1)
    sums = torch.zeros(3, k * n_bins, dtype=torch.float64, device=conf.device)
    sums[0].index_add_(0, idx, torch.ones_like(conf).reshape(-1))
    sums[1].index_add_(0, idx, conf.reshape(-1))
    sums[2].index_add_(0, idx, hit.reshape(-1))
    counts, s_conf, s_hit = sums.reshape(3, k, n_bins).cpu()
    return counts, s_conf, s_hit


def _conf_hit(probs: Tensor, y: Tensor, variant: str) -> tuple[Tensor, Tensor]:
    """(confidence, event) pairs ``[N, K]``: top label (K = 1) or every class (K = C)."""
    if variant == "top_label":
        conf, pred = probs.max(-1)
        return conf.unsqueeze(-1), (pred == y).unsqueeze(-1)
    onehot = torch.nn.functional.one_hot(y, probs.shape[-1])
    return probs, onehot


def calibration_bins(
    probs: Tensor, y: Tensor, n_bins: int = 15, class_index: int | None = None
) -> CalibrationBins:
    """Equal-width binning of confidences for reliability diagrams.

    Top-label (default): the confidence of example n is max_c pₙ꜀ and the event is
    1[argmax_c pₙ꜀ = yₙ]. With ``class_index = k``: the confidence is pₙₖ and the event
    1[yₙ = k]. Bin b = [b/n_bins, (b+1)/n_bins) (the last closed at 1) holds nᵦ examples with
    mean confidence confᵦ and event frequency accᵦ.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        n_bins: number of bins, >= 1.
        class_index: a class k in [0, C) for a per-class diagram, or None for top-label.

    Returns:
        ``CalibrationBins(edges, confidence, accuracy, counts)``; empty bins have NaN
        confidence and accuracy and a zero count.
    """
    _check_n_bins(n_bins)
    probs, y = _check_classification(probs, y)
    if class_index is None:
        conf, hit = _conf_hit(probs, y, "top_label")
    else:
        c = probs.shape[1]
        if not isinstance(class_index, int) or not 0 <= class_index < c:
            raise ValueError(f"class_index: expected an int in [0, {c - 1}], got {class_index!r}")
        conf, hit = probs[:, class_index : class_index + 1], (y == class_index).unsqueeze(-1)
    counts, s_conf, s_hit = (t[0] for t in _bin_sums(conf, hit, n_bins))
    nan = torch.full_like(counts, float("nan"))
    safe = counts.clamp_min(1)
    return CalibrationBins(
        edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
        confidence=torch.where(counts > 0, s_conf / safe, nan),
        accuracy=torch.where(counts > 0, s_hit / safe, nan),
        counts=counts.long(),
    )


def ece(probs: Tensor, y: Tensor, n_bins: int = 15, variant: Variant = "top_label") -> float:
    """Expected calibration error with ``n_bins`` equal-width bins.

    Top-label: ECE = Σᵦ (nᵦ/B) |confᵦ − accᵦ| over the bins of max_c p꜀ (see
    :func:`calibration_bins`). Classwise (Kull et al., 2019): every class k is binned on its own
    with confidences pₙₖ and events 1[yₙ = k], and
    ECE = (1/C) Σₖ Σᵦ (nₖᵦ/B) |confₖᵦ − accₖᵦ|.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        n_bins: number of bins, >= 1.
        variant: ``"top_label"`` (default) or ``"classwise"``.

    Returns:
        The ECE in [0, 1].
    """
    _check_n_bins(n_bins)
    _check_variant(variant)
    probs, y = _check_classification(probs, y)
    _, s_conf, s_hit = _bin_sums(*_conf_hit(probs, y, variant), n_bins)
    # Σᵦ (nᵦ/B) |confᵦ − accᵦ| = Σᵦ |Σ_{n∈b} (confₙ − hitₙ)| / B, averaged over the K columns
    return float((s_conf - s_hit).abs().sum(-1).mean() / probs.shape[0])


def mce(probs: Tensor, y: Tensor, n_bins: int = 15, variant: Variant = "top_label") -> float:
    """Maximum calibration error with ``n_bins`` equal-width bins.

    Top-label: MCE = max over non-empty bins b of |confᵦ − accᵦ|. Classwise: the average over
    classes of the per-class MCE, (1/C) Σₖ max_{b: nₖᵦ > 0} |confₖᵦ − accₖᵦ|, matching the
    classwise ECE (which averages the per-class ECEs).

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        n_bins: number of bins, >= 1.
        variant: ``"top_label"`` (default) or ``"classwise"``.

    Returns:
        The MCE in [0, 1].
    """
    _check_n_bins(n_bins)
    _check_variant(variant)
    probs, y = _check_classification(probs, y)
    counts, s_conf, s_hit = _bin_sums(*_conf_hit(probs, y, variant), n_bins)
    gap = (s_conf - s_hit).abs() / counts.clamp_min(1)  # zero in empty bins
    return float(gap.max(-1).values.mean())


# --------------------------------------------------------------------------- OOD detection


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy H[pₙ] = −Σ_c pₙ꜀ log pₙ꜀ (with 0 log 0 = 0) of each predictive, in nats.

    Args:
        probs: predictive probabilities ``[B, C]``.

    Returns:
        Entropies ``[B]`` in [0, log C].
    """
    probs = _check_probs(probs)
    return -torch.special.xlogy(probs, probs.clamp(0, 1)).sum(-1)


def max_probability(probs: Tensor) -> Tensor:
    """Confidence max_c pₙ꜀ of each predictive.

    Args:
        probs: predictive probabilities ``[B, C]``.

    Returns:
        Max probabilities ``[B]`` in [1/C, 1].
    """
    return _check_probs(probs).max(-1).values


def _check_scores(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, s in (("scores_in", scores_in), ("scores_out", scores_out)):
        s = _tensor(s, name)
        if s.dim() != 1:
            raise ValueError(f"{name}: expected shape [N], got {tuple(s.shape)}")
        _nonempty(s, name)
        _finite(s, name)
        out.append(s.detach().cpu().to(torch.float64).numpy())
    return out[0], out[1]


def _roc_inputs(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    s_in, s_out = _check_scores(scores_in, scores_out)
    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    return labels, np.concatenate([s_in, s_out])


def ood_auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for separating in- from out-of-distribution data.

    Scores measure in-distribution-ness (higher = more in-distribution, e.g. max probability or
    negative entropy); in-distribution data are the positive class. AUROC = P(s_in > s_out) +
    ½ P(s_in = s_out): 1 for perfect separation, ½ for indistinguishable scores. Computed with
    ``sklearn.metrics.roc_auc_score``.

    Args:
        scores_in: scores of in-distribution examples ``[N_in]``.
        scores_out: scores of out-of-distribution examples ``[N_out]``.
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = _roc_inputs(scores_in, scores_out)
    return float(roc_auc_score(labels, scores))


def fpr_at_95_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate on OOD data at the threshold that keeps ``tpr`` of in-distribution data.

    With in-distribution as the positive class and t* the largest threshold with
    TPR(t) = P(s_in ≥ t) ≥ ``tpr``, returns FPR(t*) = P(s_out ≥ t*): the fraction of OOD
    examples still accepted as in-distribution. Lower is better. Computed from
    ``sklearn.metrics.roc_curve`` (all thresholds kept).

    Args:
        scores_in: scores of in-distribution examples ``[N_in]`` (higher = more in-distribution).
        scores_out: scores of out-of-distribution examples ``[N_out]``.
        tpr: the true-positive rate to reach, in (0, 1].
    """
    from sklearn.metrics import roc_curve

    if not 0 < tpr <= 1:
        raise ValueError(f"tpr: expected a rate in (0, 1], got {tpr!r}")
    labels, scores = _roc_inputs(scores_in, scores_out)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def ood_metrics(
    probs_in: Tensor, probs_out: Tensor, score: Literal["max_prob", "entropy"] = "max_prob"
) -> dict[str, float]:
    """AUROC and FPR@95%TPR of an in-distribution score computed from predictive probabilities.

    Args:
        probs_in: predictives on in-distribution data ``[N_in, C]``.
        probs_out: predictives on out-of-distribution data ``[N_out, C]``.
        score: ``"max_prob"`` (s = max_c p꜀) or ``"entropy"`` (s = −H[p]).

    Returns:
        ``{"auroc": …, "fpr_at_95_tpr": …}``, floats.
    """
    if score not in ("max_prob", "entropy"):
        raise ValueError(f"score: expected 'max_prob' or 'entropy', got {score!r}")
    probs_in = _check_probs(probs_in, "probs_in")
    probs_out = _check_probs(probs_out, "probs_out")
    if probs_in.shape[1] != probs_out.shape[1]:
        raise ValueError(
            f"probs_out: expected {probs_in.shape[1]} classes like probs_in, "
            f"got shape {tuple(probs_out.shape)}"
        )
    if score == "max_prob":
        s_in, s_out = max_probability(probs_in), max_probability(probs_out)
    else:
        s_in, s_out = -predictive_entropy(probs_in), -predictive_entropy(probs_out)
    return {"auroc": ood_auroc(s_in, s_out), "fpr_at_95_tpr": fpr_at_95_tpr(s_in, s_out)}


# --------------------------------------------------------------------------- regression


def rmse(mean: Tensor, y: Tensor) -> float:
    """Root mean squared error √((1/(B·C)) Σₙ꜀ (yₙ꜀ − μₙ꜀)²).

    Args:
        mean: predictive means ``[B, C]`` (or ``[B]``).
        y: targets of the mean's shape (or ``[B]`` when C = 1).
    """
    mean, y = _check_target(mean, y)
    return math.sqrt(float((y - mean).detach().to(torch.float64).square().mean()))


def _diag_var(var, mean: Tensor, name: str) -> Tensor:
    """Per-output variances ``[B, C]`` from variances ``[B, C]`` or covariances ``[B, C, C]``."""
    var = _tensor(var, name)
    m = mean if mean.dim() == 2 else mean.unsqueeze(-1)
    b, c = m.shape
    if var.shape == (b, c, c):
        var = var.diagonal(dim1=-2, dim2=-1)
    elif var.shape != (b, c) and not (mean.dim() == 1 and var.shape == (b,)):
        raise ValueError(
            f"{name}: expected variances [B, C] = ({b}, {c}) or covariances [B, C, C] = "
            f"({b}, {c}, {c}), got {tuple(var.shape)}"
        )
    _finite(var, name)
    if float(var.min()) < 0:
        raise ValueError(f"{name}: expected non-negative variances, got min {float(var.min())}")
    return var.reshape(mean.shape).to(device=mean.device, dtype=mean.dtype)


def gaussian_nll(mean: Tensor, cov: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Gaussian negative log-likelihood −log N(yₙ | μₙ, Σₙ) per example.

    −log N(y | μ, Σ) = ½[(y − μ)ᵀ Σ⁻¹ (y − μ) + log det Σ + C log 2π], via a Cholesky factor.

    Args:
        mean: predictive means ``[B, C]``.
        cov: covariances ``[B, C, C]`` (positive definite), or variances ``[B, C]`` (diagonal).
        y: targets ``[B, C]`` (or ``[B]`` when C = 1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per example, ``[B]``).

    Returns:
        A tensor (differentiable in ``mean`` and ``cov``).
    """
    _check_reduction(reduction)
    mean = _tensor(mean, "mean")
    if mean.dim() != 2:
        raise ValueError(f"mean: expected shape [B, C], got {tuple(mean.shape)}")
    mean, y = _check_target(mean, y)
    cov = _tensor(cov, "cov")
    b, c = mean.shape
    if cov.shape == (b, c):
        cov = torch.diag_embed(_diag_var(cov, mean, "cov"))
    elif cov.shape != (b, c, c):
        raise ValueError(
            f"cov: expected covariances [B, C, C] = ({b}, {c}, {c}) or variances [B, C], "
            f"got {tuple(cov.shape)}"
        )
    _finite(cov, "cov")
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        bad = int(torch.nonzero(info)[0, 0])
        raise ValueError(f"cov: expected positive-definite covariances, example {bad} is not")
    r = torch.linalg.solve_triangular(chol, (y - mean).unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    out = 0.5 * (r.square().sum(-1) + logdet + c * math.log(2 * math.pi))
    return _reduce(out, reduction)


def interval_coverage(
    mean: Tensor, var: Tensor, y: Tensor, levels: tuple[float, ...] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Empirical coverage of central Gaussian predictive intervals, per output.

    For level α the interval of output c is μₙ꜀ ± z σₙ꜀ with z = Φ⁻¹((1 + α)/2) and
    σₙ꜀² the marginal variance; coverage(α) = (1/(B·C)) Σₙ꜀ 1[|yₙ꜀ − μₙ꜀| ≤ z σₙ꜀]. A calibrated
    predictive has coverage(α) ≈ α.

    Args:
        mean: predictive means ``[B, C]`` (or ``[B]``).
        var: variances ``[B, C]`` or covariances ``[B, C, C]`` (only the diagonal is used).
        y: targets of the mean's shape (or ``[B]`` when C = 1).
        levels: nominal levels α in (0, 1).

    Returns:
        ``{α: coverage}`` for each level, floats.
    """
    mean, y = _check_target(mean, y)
    sd = _diag_var(var, mean, "var").detach().to(torch.float64).sqrt()
    err = (y - mean).detach().to(torch.float64).abs()
    out = {}
    for a in levels:
        if not 0 < a < 1:
            raise ValueError(f"levels: expected levels in (0, 1), got {a!r}")
        z = NormalDist().inv_cdf((1 + a) / 2)
        out[a] = float((err <= z * sd).to(torch.float64).mean())
    return out
