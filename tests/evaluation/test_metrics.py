"""Metrics: hand-computed cases, scikit-learn agreement and bad inputs (plots: test_plots.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from laplacetorch import metrics as M

DT = torch.float64

# Six binary predictions, hand-binned with n_bins = 5 (edges 0, .2, .4, .6, .8, 1):
#   top-label confidences .9 ✓, .7 ✓, .7 ✗, .9 ✓, .55 ✗, .85 ✗
#   bin 2 [.4, .6): {.55}          conf .55,   acc 0,   gap .55
#   bin 3 [.6, .8): {.7, .7}       conf .7,    acc 1/2, gap .2
#   bin 4 [.8, 1]:  {.9, .9, .85}  conf .8833, acc 2/3, gap .21667
#   ECE = (1·.55 + 2·.2 + 3·.21667)/6 = 1.6/6, MCE = .55
P6 = torch.tensor(
    [[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.1, 0.9], [0.55, 0.45], [0.85, 0.15]], dtype=DT
)
Y6 = torch.tensor([0, 0, 0, 1, 1, 1])

# Four 3-class predictions, n_bins = 2 (edges 0, .5, 1).
# Per class k, Σ_b |Σ_{n∈b} (p_nk − 1[y_n=k])|:
#   class 0: p .6 .2 .1 .45, y=0: 1 0 0 0 → bin1 |.6−1| = .4, bin0 |.2+.1+.45| = .75 → 1.15
#   class 1: p .3 .7 .1 .35, y=1: 0 0 0 1 → bin0 |.3+.1+.35−1| = .25, bin1 .7           → .95
#   class 2: p .1 .1 .8 .2,  y=2: 0 1 1 0 → bin0 |.1+.1−1+.2| = .6, bin1 |.8−1| = .2     → .8
#   classwise ECE = (1.15 + .95 + .8)/(3·4); classwise MCE = mean(max(.4, .25), max(.25/3, .7),
#   max(.2, .2)) = (.4 + .7 + .2)/3. Top-label: confidences .6 ✓, .7 ✗, .8 ✓, .45 ✗ →
#   ECE = (|−.4 + .7 − .2| + .45)/4, MCE = max(.1/3, .45).
P4 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.45, 0.35, 0.2]], dtype=DT)
Y4 = torch.tensor([0, 2, 2, 1])


def _random_probs(n=200, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(n, c, generator=g, dtype=DT), -1)
    return p, torch.randint(0, c, (n,), generator=g)


def _ece_reference(conf, hit, n_bins):
    """Loop-over-bins ECE and MCE of 1-D numpy arrays."""
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        m = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if m.any():
            gap = abs(conf[m].mean() - hit[m].mean())
            ece += m.sum() / len(conf) * gap
            mce = max(mce, gap)
    return ece, mce


# --------------------------------------------------------------------------- classification


def test_accuracy_nll_binary_nll_hand():
    assert M.accuracy(P6, Y6) == pytest.approx(3 / 6)
    want = -(math.log(0.9) + math.log(0.7) + math.log(0.3) + math.log(0.9) + math.log(0.45))
    want -= math.log(0.15)
    assert float(M.nll(P6, Y6)) == pytest.approx(want / 6)
    assert float(M.nll(P6, Y6, "sum")) == pytest.approx(want)
    assert M.nll(P6, Y6, "none").shape == (6,)
    p, y = torch.tensor([[0.8], [0.4]], dtype=DT), torch.tensor([1.0, 0.0], dtype=DT)
    assert float(M.binary_nll(p, y)) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert float(M.binary_nll(p, y.reshape(2, 1), "sum")) == pytest.approx(
        -(math.log(0.8) + math.log(0.6))
    )


def test_nll_types_gradient_and_float_labels():
    p = P6.clone().requires_grad_(True)
    out = M.nll(p, Y6.to(DT))  # integral float labels are accepted
    assert isinstance(out, torch.Tensor) and out.dim() == 0
    out.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert isinstance(M.accuracy(P6, Y6), float) and isinstance(M.brier(P6, Y6), float)
    assert isinstance(M.ece(P6, Y6), float) and isinstance(M.mce(P6, Y6), float)


def test_nll_matches_sklearn_log_loss():
    p, y = _random_probs()
    assert float(M.nll(p, y)) == pytest.approx(log_loss(y.numpy(), p.numpy(), labels=range(4)))


def test_brier_hand_and_sklearn():
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=DT)
    assert M.brier(p, torch.tensor([0, 0])) == pytest.approx((0.01 + 0.01 + 0.49 + 0.49) / 2)
    assert M.brier(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([1])) == pytest.approx(0.78)
    # two classes: the multi-class Brier is twice the binary Brier of p(class 1)
    g = torch.Generator().manual_seed(3)
    p1 = torch.rand(100, generator=g, dtype=DT)
    y = (torch.rand(100, generator=g, dtype=DT) < p1).long()
    want = 2 * brier_score_loss(y.numpy(), p1.numpy())
    assert M.brier(torch.stack([1 - p1, p1], -1), y) == pytest.approx(want)


# --------------------------------------------------------------------------- calibration


def test_ece_mce_top_label_hand():
    assert M.ece(P6, Y6, n_bins=5) == pytest.approx(1.6 / 6)
    assert M.mce(P6, Y6, n_bins=5) == pytest.approx(0.55)
    assert M.ece(P4, Y4, n_bins=2) == pytest.approx((0.1 + 0.45) / 4)
    assert M.mce(P4, Y4, n_bins=2) == pytest.approx(0.45)
    # one bin: ECE = MCE = |mean confidence − accuracy|
    conf = P6.max(-1).values.mean()
    assert M.ece(P6, Y6, n_bins=1) == pytest.approx(float(conf - 0.5))
    assert M.mce(P6, Y6, n_bins=1) == pytest.approx(float(conf - 0.5))


def test_ece_classwise_hand():
    assert M.ece(P4, Y4, n_bins=2, variant="classwise") == pytest.approx(2.9 / 12)
    assert M.mce(P4, Y4, n_bins=2, variant="classwise") == pytest.approx(1.3 / 3)


def test_ece_perfect_calibration_is_zero():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    y = torch.tensor([0, 1])
    for variant in ("top_label", "classwise"):
        assert M.ece(p, y, variant=variant) == 0.0 and M.mce(p, y, variant=variant) == 0.0


@pytest.mark.parametrize("n_bins", [1, 7, 15])
def test_ece_mce_match_loop_reference(n_bins):
    p, y = _random_probs(n=300, c=4)
    conf, pred = p.max(-1)
    e, m = _ece_reference(conf.numpy(), (pred == y).double().numpy(), n_bins)
    assert M.ece(p, y, n_bins) == pytest.approx(e) and M.mce(p, y, n_bins) == pytest.approx(m)
    per_class = [
        _ece_reference(p[:, k].numpy(), (y == k).double().numpy(), n_bins) for k in range(4)
    ]
    assert M.ece(p, y, n_bins, "classwise") == pytest.approx(np.mean([e for e, _ in per_class]))
    assert M.mce(p, y, n_bins, "classwise") == pytest.approx(np.mean([m for _, m in per_class]))


def test_calibration_bins_hand():
    b = M.calibration_bins(P6, Y6, n_bins=5)
    assert torch.allclose(b.edges, torch.tensor([0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=DT))
    assert b.counts.tolist() == [0, 0, 1, 2, 3]
    assert torch.isnan(b.confidence[:2]).all() and torch.isnan(b.accuracy[:2]).all()
    assert torch.allclose(b.confidence[2:], torch.tensor([0.55, 0.7, 2.65 / 3], dtype=DT))
    assert torch.allclose(b.accuracy[2:], torch.tensor([0.0, 0.5, 2 / 3], dtype=DT))
    # per class 2 of P4 with 2 bins: p = .1 .1 .8 .2, events 0 1 1 0
    b2 = M.calibration_bins(P4, Y4, n_bins=2, class_index=2)
    assert b2.counts.tolist() == [3, 1]
    assert torch.allclose(b2.confidence, torch.tensor([0.4 / 3, 0.8], dtype=DT))
    assert torch.allclose(b2.accuracy, torch.tensor([1 / 3, 1.0], dtype=DT))


# --------------------------------------------------------------------------- OOD


def test_entropy_and_max_probability():
    p = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=DT)
    assert torch.allclose(
        M.predictive_entropy(p), torch.tensor([math.log(4), 0, math.log(2)]).to(DT)
    )
    assert M.max_probability(p).tolist() == [0.25, 1.0, 0.5]


def test_ood_auroc_hand_separable_identical_and_sklearn():
    assert M.ood_auroc(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1])) == pytest.approx(0.75)
    assert M.ood_auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert M.ood_auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    g = torch.Generator().manual_seed(0)
    s_in, s_out = torch.randn(20000, generator=g), torch.randn(20000, generator=g)
    assert abs(M.ood_auroc(s_in, s_out) - 0.5) < 0.02
    s_out = s_out[:500] - 0.5
    want = roc_auc_score(np.r_[np.ones(20000), np.zeros(500)], np.r_[s_in.numpy(), s_out.numpy()])
    assert M.ood_auroc(s_in, s_out) == pytest.approx(want)


def test_fpr_at_95_tpr_hand():
    s_in = torch.arange(1, 21, dtype=DT)  # t* = 2 keeps 19/20 = 95% of in-distribution
    s_out = torch.tensor([0.5, 1.5, 2.5, 30.0], dtype=DT)  # 2.5 and 30 are ≥ 2
    assert M.fpr_at_95_tpr(s_in, s_out) == pytest.approx(0.5)
    assert M.fpr_at_95_tpr(s_in, s_out, tpr=1.0) == pytest.approx(0.75)  # t* = 1
    assert M.fpr_at_95_tpr(s_in + 100, s_out) == 0.0


def test_ood_metrics_scores():
    p_in = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.05, 0.9, 0.05]], dtype=DT)
    p_out = torch.tensor([[0.4, 0.3, 0.3], [1 / 3] * 3], dtype=DT)
    for score in ("max_prob", "entropy"):
        out = M.ood_metrics(p_in, p_out, score=score)
        assert out == {"auroc": 1.0, "fpr_at_95_tpr": 0.0}
    # in the reverse direction the in-distribution data look OOD
    assert M.ood_metrics(p_out, p_in)["auroc"] == 0.0


# --------------------------------------------------------------------------- regression


def test_rmse_hand():
    assert M.rmse(torch.tensor([[1.0], [2.0]]), torch.tensor([2.0, 0.0])) == pytest.approx(
        math.sqrt(2.5)
    )
    assert M.rmse(torch.zeros(2, 2), torch.tensor([[1.0, -1.0], [3.0, 1.0]])) == pytest.approx(
        math.sqrt(3.0)
    )


def test_interval_coverage_well_specified_gaussian():
    g = torch.Generator().manual_seed(0)
    n, c = 20000, 2
    mean = torch.randn(n, c, generator=g, dtype=DT)
    var = torch.rand(n, c, generator=g, dtype=DT) * 2 + 0.1
    y = mean + var.sqrt() * torch.randn(n, c, generator=g, dtype=DT)
    cov = torch.diag_embed(var)
    cov[:, 0, 1] = cov[:, 1, 0] = 0.3 * (var[:, 0] * var[:, 1]).sqrt()  # correlation 0.3
    levels = (0.5, 0.9, 0.95)
    cover = M.interval_coverage(mean, var, y, levels)
    assert set(cover) == set(levels)
    for a in levels:
        assert abs(cover[a] - a) < 0.015
    assert M.interval_coverage(mean, cov, y, levels) == cover  # covariances: the diagonal
    narrow = M.interval_coverage(mean, var / 4, y, levels)
    assert all(narrow[a] < a - 0.1 for a in levels)


def test_interval_coverage_hand():
    mean, var = torch.zeros(4, 1), torch.ones(4, 1)
    y = torch.tensor([0.1, -0.5, 1.0, 3.0])  # z(.5) = .674, z(.95) = 1.96
    assert M.interval_coverage(mean, var, y, (0.5, 0.95)) == {0.5: 0.5, 0.95: 0.75}


def test_gaussian_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(5, 3, generator=g, dtype=DT)
    a = torch.randn(5, 3, 3, generator=g, dtype=DT)
    cov = a @ a.mT + 0.5 * torch.eye(3, dtype=DT)
    y = torch.randn(5, 3, generator=g, dtype=DT)
    lp = torch.distributions.MultivariateNormal(mean, cov).log_prob(y)
    assert torch.allclose(M.gaussian_nll(mean, cov, y), -lp.mean())
    assert torch.allclose(M.gaussian_nll(mean, cov, y, "sum"), -lp.sum())
    assert torch.allclose(M.gaussian_nll(mean, cov, y, "none"), -lp)
    var = cov.diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(
        M.gaussian_nll(mean, var, y), M.gaussian_nll(mean, torch.diag_embed(var), y)
    )
    # [B] targets for one output
    assert torch.allclose(
        M.gaussian_nll(mean[:, :1], cov[:, :1, :1], y[:, 0]),
        M.gaussian_nll(mean[:, :1], cov[:, :1, :1], y[:, :1]),
    )


# --------------------------------------------------------------------------- bad input

P3 = torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
Y3 = torch.tensor([1, 0, 0])
CLASSIFIERS = [M.accuracy, M.nll, M.brier, M.ece, M.mce, M.calibration_bins]


@pytest.mark.parametrize("fn", CLASSIFIERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("probs", "y", "match"),
    [
        (
            torch.tensor([0.2, 0.8]),
            torch.tensor([1]),
            r"probs: expected shape \[B, C\], got \(2,\)",
        ),
        (P3, torch.tensor([1, 0]), r"y: expected 3 labels to match probs \(3, 2\), got 2"),
        (P3, Y3[:, None], r"y: expected labels of shape \[B\] = \(3,\), got \(3, 1\)"),
        (
            torch.zeros(0, 2),
            torch.zeros(0),
            r"probs: expected a non-empty tensor, got shape \(0, 2\)",
        ),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), r"probs: .*1 NaN/Inf"),
        (
            torch.tensor([[1.5, -0.5]]),
            torch.tensor([0]),
            r"probs: expected probabilities in \[0, 1\]",
        ),
        (torch.tensor([[0.5, 0.4]]), torch.tensor([0]), r"probs: expected rows summing to 1"),
        (P3, torch.tensor([1, 0, 2]), r"y: expected labels in \[0, 1\], got values in \[0, 2\]"),
        (P3, torch.tensor([1, 0, -1]), r"y: expected labels in \[0, 1\], got values in \[-1, 1\]"),
        (P3, torch.tensor([1.0, 0.5, 0.0]), r"y: expected integer class labels"),
        (torch.tensor([[0, 1]]), torch.tensor([1]), r"probs: expected a floating-point tensor"),
    ],
)
def test_bad_classification_inputs(fn, probs, y, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, y)


def test_bad_options():
    with pytest.raises(ValueError, match=r"n_bins: expected an integer >= 1, got 0"):
        M.ece(P3, Y3, n_bins=0)
    with pytest.raises(ValueError, match=r"n_bins: expected an integer >= 1, got -2"):
        M.mce(P3, Y3, n_bins=-2)
    with pytest.raises(ValueError, match=r"n_bins"):
        M.calibration_bins(P3, Y3, n_bins=0)
    with pytest.raises(ValueError, match=r"variant: expected 'top_label' or 'classwise'"):
        M.ece(P3, Y3, variant="marginal")
    with pytest.raises(ValueError, match=r"reduction: expected 'mean', 'sum' or 'none'"):
        M.nll(P3, Y3, reduction="avg")
    with pytest.raises(ValueError, match=r"class_index: expected an int in \[0, 1\], got 2"):
        M.calibration_bins(P3, Y3, class_index=2)
    with pytest.raises(ValueError, match=r"score: expected 'max_prob' or 'entropy'"):
        M.ood_metrics(P3, P3, score="energy")
    with pytest.raises(ValueError, match=r"probs_out: expected 2 classes like probs_in"):
        M.ood_metrics(P3, torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match=r"tpr: expected a rate in \(0, 1\], got 0"):
        M.fpr_at_95_tpr(torch.ones(3), torch.zeros(3), tpr=0)


def test_bad_binary_nll_inputs():
    p = torch.tensor([[0.8], [0.4]])
    with pytest.raises(ValueError, match=r"y: expected targets of shape \(2, 1\)"):
        M.binary_nll(p, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y: expected binary targets in \[0, 1\]"):
        M.binary_nll(p, torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\]"):
        M.binary_nll(torch.tensor([[1.2], [0.4]]), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("fn", [M.ood_auroc, M.fpr_at_95_tpr], ids=lambda f: f.__name__)
def test_bad_ood_scores(fn):
    with pytest.raises(ValueError, match=r"scores_in: expected shape \[N\], got \(2, 2\)"):
        fn(torch.ones(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"scores_out: expected a non-empty tensor"):
        fn(torch.ones(2), torch.zeros(0))
    with pytest.raises(ValueError, match=r"scores_out: .*NaN/Inf"):
        fn(torch.ones(2), torch.tensor([0.0, float("nan")]))


def test_bad_entropy_input():
    with pytest.raises(ValueError, match=r"probs: expected rows summing to 1"):
        M.predictive_entropy(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match=r"probs: expected shape \[B, C\]"):
        M.max_probability(torch.tensor([0.5, 0.5]))


def test_bad_regression_inputs():
    mean, var, y = torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"y: expected shape \(3, 2\) matching mean"):
        M.rmse(mean, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"mean: expected a non-empty tensor"):
        M.rmse(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"y: .*1 NaN/Inf"):
        M.rmse(mean, torch.tensor([[0.0, float("inf")], [0, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"var: expected variances \[B, C\] = \(3, 2\)"):
        M.interval_coverage(mean, torch.ones(3, 3), y)
    with pytest.raises(ValueError, match=r"var: expected non-negative variances"):
        M.interval_coverage(mean, -var, y)
    with pytest.raises(ValueError, match=r"levels: expected levels in \(0, 1\), got 1.5"):
        M.interval_coverage(mean, var, y, levels=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"cov: expected covariances \[B, C, C\] = \(3, 2, 2\)"):
        M.gaussian_nll(mean, torch.ones(3, 3, 3), y)
    with pytest.raises(ValueError, match=r"cov: expected positive-definite covariances, example 1"):
        cov = torch.eye(2).repeat(3, 1, 1)
        cov[1] = -cov[1]
        M.gaussian_nll(mean, cov, y)
    with pytest.raises(ValueError, match=r"mean: expected shape \[B, C\], got \(3,\)"):
        M.gaussian_nll(torch.zeros(3), torch.ones(3, 1, 1), torch.zeros(3))
