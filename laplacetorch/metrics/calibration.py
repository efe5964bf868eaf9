"""Calibration: equal-width confidence bins, ECE and MCE (top-label and classwise)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import Variant, _check_classification, _check_n_bins, _check_variant

__all__ = ["CalibrationBins", "calibration_bins", "ece", "mce"]


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
    classwise ECE (which averages the per-class ECEs). The arguments are those of :func:`ece`;
    the MCE is in [0, 1].
    """
    _check_n_bins(n_bins)
    _check_variant(variant)
    probs, y = _check_classification(probs, y)
    counts, s_conf, s_hit = _bin_sums(*_conf_hit(probs, y, variant), n_bins)
    gap = (s_conf - s_hit).abs() / counts.clamp_min(1)  # zero in empty bins
    return float(gap.max(-1).values.mean())
