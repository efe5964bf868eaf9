"""Wrong answers that the rest of the suite let through, each pinned against a real oracle.

Oracles: dense float64 GGNs from ``torch.func`` (conftest), Monte-Carlo ground truth with
tolerances of a few MC standard errors, hand-written eigendecompositions, ``torch.distributions``
and ``sklearn``. Only the public API of laplacetorch is exercised.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import batches, dense_ggn
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.distributions import MultivariateNormal
from torch.func import functional_call, vmap

from laplacetorch import Laplace, ParameterSubset
from laplacetorch.metrics import ood_metrics

DT = torch.float64
N_SE = 5.0  # tolerance in MC standard errors (max over a few dozen entries)


def _mlp(n_out: int = 3, seed: int = 0) -> nn.Module:
    """A 3-8-n_out tanh MLP in float64."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, n_out)).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.8)
    return m.eval()


def _data(likelihood: str, n: int = 24, n_out: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=DT)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (n,), generator=g)
    elif likelihood == "regression":
        y = torch.randn(n, n_out, generator=g, dtype=DT)
    else:
        y = torch.randint(0, 2, (n, n_out), generator=g).to(DT)
    return x, y


def _named(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """θ split over ``model.named_parameters()`` in order."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[i : i + p.numel()].view(p.shape)
        i += p.numel()
    return out


def _outputs_at(model: nn.Module, thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x; θₛ) for every row of ``thetas``, ``[S, B, C]``."""
    with torch.no_grad():
        return vmap(lambda t: functional_call(model, _named(model, t), (x,)))(thetas)


def _dense_posterior_draws(model, x, y, likelihood, delta, n, seed) -> torch.Tensor:
    """θ ~ N(θ*, (G + δI)⁻¹) with G the dense GGN oracle, ``[n, P]``."""
    subset = ParameterSubset(model, "all")
    theta = subset.map_vector()
    prec = dense_ggn(subset, x, y, likelihood) + delta * torch.eye(theta.numel(), dtype=DT)
    chol = torch.linalg.cholesky(torch.linalg.inv(prec))
    z = torch.randn(n, theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=DT)
    return theta + z @ chol.T


def _assert_within_mc_error(estimate, truth, se, n_se=N_SE):
    err = (estimate - truth).abs()
    bound = n_se * se + 1e-12
    assert bool((err <= bound).all()), f"max error / bound = {float((err / bound).max()):.3g}"


def test_nn_predictive_averages_the_sampled_probabilities():
    """Guards: the ``nn`` classification predictive returning one sample's probabilities."""
    model = _mlp()
    x, y = _data("classification")
    delta = 0.5
    la = Laplace(model, "classification", "all", "full", prior_precision=delta)
    la.fit(batches(x, y))
    xt = x[:8]
    n = 4000
    p = la(xt, pred_type="nn", n_samples=n, generator=torch.Generator().manual_seed(0))
    thetas = _dense_posterior_draws(model, x, y, "classification", delta, n, seed=7)
    probs = torch.softmax(_outputs_at(model, thetas, xt), -1)  # [S, B, C]
    truth = probs.mean(0)
    # two independent S-sample means of the same softmax(f(θ)): SE √2·std/√S
    se = math.sqrt(2.0) * probs.std(0) / math.sqrt(n)
    assert float(probs.std(0).max()) > 0.05  # the posterior spread is visible
    torch.testing.assert_close(p.sum(-1), torch.ones(len(xt), dtype=DT))
    _assert_within_mc_error(p, truth, se)


def test_regression_glm_samples_have_the_glm_covariance():
    """Guards: regression ``predictive_samples(pred_type="glm")`` with the wrong (4×) variance."""
    model = _mlp()
    x, y = _data("regression")
    la = Laplace(model, "regression", "all", "full", prior_precision=0.5, sigma_noise=0.6)
    la.fit(batches(x, y))
    xt = x[:6]
    n = 20_000
    fs = la.predictive_samples(
        xt, pred_type="glm", n_samples=n, generator=torch.Generator().manual_seed(2)
    )
    assert fs.shape == (n, 6, 3)
    mean, cov = la.glm_moments(xt)
    var = cov.diagonal(dim1=-2, dim2=-1)
    _assert_within_mc_error(fs.mean(0), mean, (var / n).sqrt())
    d = fs - fs.mean(0)
    emp = torch.einsum("sbi,sbj->bij", d, d) / (n - 1)
    # Var of a Gaussian sample covariance entry: (Σᵢᵢ Σⱼⱼ + Σᵢⱼ²) / S
    se = ((var.unsqueeze(-1) * var.unsqueeze(-2) + cov.square()) / n).sqrt()
    _assert_within_mc_error(emp, cov, se)


def test_nn_predictive_samples_are_the_softmax_of_the_sampled_networks():
    """Guards: ``predictive_samples(pred_type="nn")`` transforming f (e.g. softmax(f/2))."""
    model = _mlp()
    x, y = _data("classification")
    la = Laplace(model, "classification", "all", "full", prior_precision=0.5)
    la.fit(batches(x, y))
    xt = x[:8]
    # the nn predictive draws its weights with la.sample(n, generator) before any other use
    samples = la.predictive_samples(
        xt, pred_type="nn", n_samples=50, generator=torch.Generator().manual_seed(5)
    )
    thetas = la.sample(50, generator=torch.Generator().manual_seed(5))
    assert float((thetas - la.mean).abs().max()) > 0.1  # real draws, not the MAP
    expected = torch.softmax(_outputs_at(model, thetas, xt), -1)
    # sanity of the oracle: the MAP weights give the model's own outputs
    map_out = _outputs_at(model, la.mean.unsqueeze(0), xt)[0]
    torch.testing.assert_close(map_out, model(xt).detach())
    torch.testing.assert_close(samples, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pred", ["probit", "mc", "nn"])
def test_binary_single_output_predictive_uses_a_sigmoid(pred):
    """Guards: the binary predictive through ``Laplace`` using a softmax (1.0 for C = 1)."""
    model = _mlp(n_out=1)
    x, y = _data("binary", n_out=1)
    delta = 0.5
    la = Laplace(model, "binary", "all", "full", prior_precision=delta).fit(batches(x, y))
    xt = x[:10]
    n = 20_000
    if pred == "probit":
        mean, var = la.glm_moments(xt)
        expected = torch.sigmoid(mean / (1 + math.pi / 8 * var[..., 0]).sqrt())
        p = la(xt, link_approx="probit")
        assert p.shape == (10, 1)
        torch.testing.assert_close(p, expected, rtol=1e-10, atol=1e-12)
        return
    if pred == "mc":
        mean, var = la.glm_moments(xt)
        z = torch.randn(n, *mean.shape, generator=torch.Generator().manual_seed(9), dtype=DT)
        truth_samples = torch.sigmoid(mean + var[..., 0].sqrt() * z)
        p = la(xt, link_approx="mc", n_samples=n, generator=torch.Generator().manual_seed(1))
    else:
        thetas = _dense_posterior_draws(model, x, y, "binary", delta, n, seed=9)
        truth_samples = torch.sigmoid(_outputs_at(model, thetas, xt))
        p = la(xt, pred_type="nn", n_samples=n, generator=torch.Generator().manual_seed(1))
    assert p.shape == (10, 1)
    se = math.sqrt(2.0) * truth_samples.std(0) / math.sqrt(n)
    _assert_within_mc_error(p, truth_samples.mean(0), se)


def test_kfac_per_parameter_prior_logdet_uses_the_eigenbasis_diagonal():
    """Guards: KFAC replacing a per-parameter prior by its block mean instead of its
    eigenbasis diagonal d_ij = Σ_pq (Q_B)²_pi D_pq (Q_A)²_qj."""
    model = _mlp()  # Linear layers only carry weights: every parameter is in a Kronecker block
    x, y = _data("classification", n=30)
    la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y))
    structure = la.structure
    factors = [(index, *blk.factors()) for _, index, blk in structure.blocks]
    p = la.n_params
    covered = torch.cat([index for index, _, _ in factors]).sort().values
    assert torch.equal(covered, torch.arange(p))  # no diagonal rest
    g = torch.Generator().manual_seed(3)
    delta = torch.logspace(-1, 1, p, dtype=DT)[torch.randperm(p, generator=g)]
    s = 1.3
    expected = torch.zeros((), dtype=DT)
    for index, b, a in factors:
        beta, qb = torch.linalg.eigh(b)
        alpha, qa = torch.linalg.eigh(a)
        for lam in (beta, alpha):  # distinct eigenvalues: the eigenbases are unique
            assert float(lam.diff().min()) > 1e-6 * float(lam.abs().max())
        d = delta[index].view(b.shape[0], a.shape[0])
        assert float(d.std()) > 0.1  # per-parameter, not constant on the block
        d_eig = qb.square().T @ d @ qa.square()
        expected = expected + (s * torch.outer(beta, alpha) + d_eig).log().sum()
    torch.testing.assert_close(structure.logdet(delta, s), expected, rtol=1e-10, atol=1e-10)


def test_regression_gridsearch_scores_include_the_noise_variance():
    """Guards: the regression validation grid search dropping σ² from the predictive covariance."""
    model = _mlp()
    x, y = _data("regression")
    xv, yv = _data("regression", n=15, seed=5)
    sigma = 0.7
    la = Laplace(model, "regression", "all", "full", sigma_noise=sigma).fit(batches(x, y))
    grid = torch.logspace(-2, 2, 9, dtype=DT)
    res = la.optimize_prior_precision(method="gridsearch", val_loader=batches(xv, yv), grid=grid)
    expected = []
    for d in grid:
        la.prior_precision = d
        mean, cov = la.glm_moments(xv)
        cov = cov + sigma**2 * torch.eye(3, dtype=DT)
        expected.append(float(-MultivariateNormal(mean, cov).log_prob(yv).mean()))
    assert res.history == pytest.approx(expected, rel=1e-9, abs=1e-12)
    best = float(grid[int(torch.tensor(expected).argmin())])
    assert float(res.prior_precision) == pytest.approx(best, rel=1e-12)


def test_ood_auroc_treats_in_distribution_as_positive():
    """Guards: OOD AUROC with in- and out-of-distribution data swapped (1 − AUROC)."""
    g = torch.Generator().manual_seed(4)
    probs_in = torch.softmax(2.5 * torch.randn(40, 4, generator=g, dtype=DT), -1)
    probs_out = torch.softmax(0.6 * torch.randn(30, 4, generator=g, dtype=DT), -1)
    labels = [1] * 40 + [0] * 30
    for score, s_in, s_out in (
        ("max_prob", probs_in.max(-1).values, probs_out.max(-1).values),
        (
            "entropy",
            (probs_in * probs_in.log()).sum(-1),
            (probs_out * probs_out.log()).sum(-1),
        ),
    ):
        truth = roc_auc_score(labels, torch.cat([s_in, s_out]).numpy())
        assert 0.6 < truth < 0.999  # overlapping, far from symmetric
        auroc = ood_metrics(probs_in, probs_out, score=score)["auroc"]
        assert auroc == pytest.approx(truth, abs=1e-12)
