"""Out-of-distribution detection scores and their AUROC / FPR at 95% TPR."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._checks import _check_probs, _finite, _nonempty, _tensor

__all__ = ["fpr_at_95_tpr", "max_probability", "ood_auroc", "ood_metrics", "predictive_entropy"]


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
