"""Exact Bayesian linear regression: there the Laplace approximation is exact.

Model y = W x + b + ε, ε ~ N(0, σ²I), prior θ ~ N(0, δ⁻¹I) on θ = [vec W, b]. With Φ the
design matrix of [x, 1] per output: Π = ΦᵀΦ/σ² + δI, θ* = Π⁻¹Φᵀy/σ², and the evidence is
log N(y | 0, σ²I + ΦΦᵀ/δ) per output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from laplacetorch import Laplace

DT = torch.float64
N, D, C = 40, 3, 2


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=DT)
    w = torch.randn(C, D, generator=g, dtype=DT)
    y = x @ w.T + 0.3 + 0.5 * torch.randn(N, C, generator=g, dtype=DT)
    return x, y


def _design(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)


def _closed_form(x, y, delta, sigma):
    """Per-output posterior (shared across outputs) and the total evidence."""
    phi = _design(x)
    prec1 = phi.T @ phi / sigma**2 + delta * torch.eye(D + 1, dtype=DT)
    theta1 = torch.linalg.solve(prec1, phi.T @ y / sigma**2)  # [D+1, C]
    cov_y = sigma**2 * torch.eye(N, dtype=DT) + phi @ phi.T / delta
    ev = torch.distributions.MultivariateNormal(torch.zeros(N, dtype=DT), cov_y)
    lml = sum(ev.log_prob(y[:, c]) for c in range(C))
    return prec1, theta1, lml


def _model_at_map(x, y, delta, sigma):
    _, theta1, _ = _closed_form(x, y, delta, sigma)
    model = nn.Linear(D, C).to(DT)
    with torch.no_grad():
        model.weight.copy_(theta1[:D].T)
        model.bias.copy_(theta1[D])
    return model.eval()


def _laplace(x, y, delta, sigma, structure="full"):
    model = _model_at_map(x, y, delta, sigma)
    la = Laplace(model, "regression", "all", structure, prior_precision=delta, sigma_noise=sigma)
    return la.fit([(x[:25], y[:25]), (x[25:], y[25:])])


def _assert_rel(a, b, rtol=1e-8):
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    # round-off of exact zeros is judged against the matrix's scale (Q diag(λ) Qᵀ gives 1e-18)
    atol = rtol * float(b.abs().max()) if b.numel() else 0.0
    assert torch.allclose(a, b, rtol=rtol, atol=atol), (a, b)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_posterior_predictive_and_evidence_equal_closed_form(subset):
    x, y = _data()
    delta, sigma = 0.8, 0.45
    prec1, _, lml = _closed_form(x, y, delta, sigma)
    model = _model_at_map(x, y, delta, sigma)
    la = Laplace(model, "regression", subset, "full", prior_precision=delta, sigma_noise=sigma)
    la.fit([(x, y)])
    # θ = [vec W (row-major, C×D), b]: the precision is I_C ⊗ (per-output block), permuted
    perm = [c * (D + 1) + j for c in range(C) for j in range(D)] + [
        c * (D + 1) + D for c in range(C)
    ]
    big = torch.block_diag(*[prec1] * C)[perm][:, perm]
    _assert_rel(la.structure.precision_dense(la.prior_precision, la.scale()), big)
    _assert_rel(la.log_marginal_likelihood(), lml)

    xs = torch.randn(7, D, generator=torch.Generator().manual_seed(5), dtype=DT)
    mean, f_cov = la(xs)  # of f, laplace-torch's convention: σ² is not in it
    phis = _design(xs)
    f_var = (phis @ torch.linalg.solve(prec1, phis.T)).diagonal()
    _assert_rel(mean, model(xs).detach())
    _assert_rel(f_cov, torch.diag_embed(f_var.unsqueeze(-1).expand(7, C)))


def _exact_maximiser(x, y):
    """argmax of the closed-form evidence over (δ, σ), in numpy via the eigenbasis of ΦΦᵀ."""
    phi = _design(x).numpy()
    e, u = np.linalg.eigh(phi @ phi.T)
    e = np.clip(e, 0, None)
    proj2 = ((u.T @ y.numpy()) ** 2).sum(1)  # Σ_c (Uᵀy_c)² per eigen-direction

    def neg(v):
        var = math.exp(2 * v[1]) + e / math.exp(v[0])
        return 0.5 * (C * np.log(var).sum() + (proj2 / var).sum())

    res = scipy.optimize.minimize(
        neg,
        np.zeros(2),
        method="Nelder-Mead",
        options={"xatol": 1e-13, "fatol": 1e-15, "maxiter": 4000},
    )
    return math.exp(res.x[0]), math.exp(res.x[1])


@pytest.mark.parametrize("method", ["marglik", "mackay"])
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_tuning_finds_the_closed_form_evidence_maximiser(method, structure):
    # At θ* = MAP(δ*, σ*) the Laplace evidence (θ* held fixed) has the true evidence's gradient
    # (envelope theorem), so tuning from elsewhere must land on (δ*, σ*) for the exact `full`.
    x, y = _data()
    d_star, s_star = _exact_maximiser(x, y)
    la = _laplace(x, y, d_star, s_star, structure)
    la.prior_precision, la.sigma_noise = 1.0, 1.0
    res = la.optimize_prior_precision(method=method, tune_sigma=True)
    assert res.converged
    if structure == "full":
        _assert_rel(la.prior_precision, d_star, 1e-6)
        _assert_rel(la.sigma_noise, s_star, 1e-6)
    else:  # the diagonal evidence has its own maximiser; it must be a stationary point
        d = la.prior_precision.clone().requires_grad_(True)
        s = la.sigma_noise.clone().requires_grad_(True)
        gd, gs = torch.autograd.grad(la.log_marginal_likelihood(d, s), (d, s))
        assert abs(float(gd)) < 1e-5 and abs(float(gs)) < 1e-5


def test_gridsearch_on_evidence_agrees_with_marglik_and_mackay():
    x, y = _data()
    la = _laplace(x, y, 0.8, 0.45)
    found = []
    for method in ("marglik", "mackay"):
        la.prior_precision = 1.0
        la.optimize_prior_precision(method=method, tune_sigma=False)
        found.append(float(la.prior_precision))
    assert found[0] == pytest.approx(found[1], rel=1e-7)
    grid = torch.logspace(-3, 3, 601)
    la.optimize_prior_precision(method="gridsearch", grid=grid)
    step = math.log(float(grid[1] / grid[0]))
    assert abs(math.log(float(la.prior_precision)) - math.log(found[0])) <= step / 2 + 1e-12
