"""Heteroscedastic Gaussian regression in natural parameters (issue 32): the output Fisher
against ``torch.func.hessian`` of the negative log-likelihood, the GGN and the likelihood
term against a dense oracle in η, the predictive's exact moments against Monte Carlo, and the
uncertainty split."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DT
from torch import nn

from laplacetorch import Laplace
from laplacetorch.likelihoods import get_likelihood

LIK = get_likelihood("heteroscedastic_regression")


def _nll(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An independent −log N(y | μ, σ²) from (μ, σ²) = (f₁ e^{−f₂}, e^{−f₂})."""
    d = y.shape[-1]
    var = torch.exp(-f[..., d:])
    return -torch.distributions.Normal(f[..., :d] * var, var.sqrt()).log_prob(y).sum(-1)


def test_the_output_fisher_is_the_expected_hessian_of_the_nll():
    """The Hessian in f is affine in (y, y²): its average at y = μ ± σ is its exact
    expectation, the Fisher Λ; and S Sᵀ = Λ, positive definite."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 4, dtype=DT, generator=g)  # D = 2 targets
    mu, var = LIK.pointwise(f)
    lam = LIK.output_hessian(f)
    for n in range(5):
        h = [torch.func.hessian(lambda o, y=y: _nll(o, y))(f[n]) for y in
             (mu[n] + var[n].sqrt(), mu[n] - var[n].sqrt())]  # fmt: skip
        torch.testing.assert_close(lam[n], (h[0] + h[1]) / 2, rtol=1e-8, atol=1e-10)
    s = LIK.hessian_sqrt(f)
    torch.testing.assert_close(s @ s.mT, lam)
    assert bool((torch.linalg.eigvalsh(lam) > 0).all())
    y = torch.randn(5, 2, dtype=DT, generator=g)
    torch.testing.assert_close(LIK.nll_unit(f, y), _nll(f, y))
    # the MC Fisher's ingredients: gradients at drawn targets average to Λ
    ys = LIK.sample_targets(f, 4000, torch.Generator().manual_seed(1))  # [S, 5, 2]
    grads = LIK.output_grad(f.expand(4000, -1, -1).reshape(-1, 4), ys.reshape(-1, 2))
    grads = grads.view(4000, 5, 4)
    emp = torch.einsum("sbi,sbj->bij", grads, grads) / len(grads)
    assert float((emp - lam).abs().max() / lam.abs().max()) < 0.1


class Net(nn.Sequential):
    def __init__(self, d: int = 1, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 2 * d))
        self.to(DT)


def _data(n: int, d: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, dtype=DT, generator=g) * 4 - 2
    sd = 0.1 + 0.2 * (x + 2)
    return x, torch.sin(x) + sd * torch.randn(n, d, dtype=DT, generator=g)


def _train(net: nn.Module, x, y, steps: int = 300) -> nn.Module:
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        LIK.nll_unit(net(x), y).mean().backward()
        opt.step()
    return net.eval()


def test_the_ggn_and_the_likelihood_against_a_dense_oracle_in_eta():
    """Π = Σ J_ηᵀ ∇²A(η) J_η + δ with η(θ) = [f₁, −½ e^{f₂}] and A the Gaussian's
    log-partition, both by torch.func; log p(D | θ*) by torch.distributions."""
    x, y = _data(40, d=2)
    net = _train(Net(2), x, y, 100)
    la = Laplace(net, "heteroscedastic_regression", "all", "full", prior_precision=0.7)
    la.fit([(x[:25], y[:25]), (x[25:], y[25:])])
    theta = la.subset.map_vector()

    def eta(t):
        f = la.subset.forward(t, x)
        return torch.cat([f[:, :2], -0.5 * torch.exp(f[:, 2:])], -1)  # [N, 4]

    def log_partition(e):  # A(η) per target, summed
        e1, e2 = e[:2], e[2:]
        return (-(e1**2) / (4 * e2) - 0.5 * torch.log(-2 * e2)).sum()

    jac = torch.func.jacrev(eta)(theta)  # [N, 4, P]
    e = eta(theta)
    hess = torch.stack([torch.func.hessian(log_partition)(en) for en in e])  # [N, 4, 4]
    ggn = torch.einsum("nip,nij,njq->pq", jac, hess, jac)
    eye = torch.eye(la.n_params, dtype=DT)
    prec = la.posterior_precision.to_dense()
    torch.testing.assert_close(prec, ggn + 0.7 * eye, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(la.log_likelihood, -_nll(net(x), y).sum(), rtol=1e-10, atol=0)


def test_the_predictive_moments_are_exact():
    """E[μ], E[σ²] and Cov[μ] of f ~ N(m, Σ) in closed form, against 400k draws."""
    g = torch.Generator().manual_seed(2)
    m = torch.tensor([[0.8, -0.5, 0.3, 0.6]], dtype=DT)  # D = 2: [f₁ | f₂]
    a = torch.randn(4, 4, dtype=DT, generator=g) * 0.25
    cov = (a @ a.T + 0.02 * torch.eye(4, dtype=DT)).unsqueeze(0)
    e_mu, ale, epi = LIK.y_moments(m, cov)
    fs = m + torch.randn(400_000, 4, dtype=DT, generator=g) @ torch.linalg.cholesky(cov[0]).T
    mu, var = LIK.pointwise(fs)
    torch.testing.assert_close(e_mu[0], mu.mean(0), rtol=0, atol=5e-3)
    torch.testing.assert_close(ale[0], var.mean(0), rtol=0, atol=5e-3)
    torch.testing.assert_close(epi[0], torch.cov(mu.T), rtol=0, atol=5e-3)
    assert float(epi[0, 0, 1].abs()) > 0.02  # the cross term is there, and matched


def test_fit_predict_and_the_uncertainty_split():
    x, y = _data(200)
    net = _train(Net(), x, y)
    xt = torch.linspace(-2, 2, 9, dtype=DT).unsqueeze(-1)
    epistemic = {}
    for n in (50, 200):
        la = Laplace(net, "heteroscedastic_regression", "all", "kfac")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            la.fit([(x[:n], y[:n])])
            la.optimize_prior_precision(method="marglik")
        mean, var = la(xt)  # E[y] [B, 1] and Cov[y] [B, 1, 1], the noise included
        u = la.uncertainty(xt)
        assert mean.shape == (9, 1) and var.shape == (9, 1, 1)
        torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)
        torch.testing.assert_close(u.total, var[:, :, 0])
        torch.testing.assert_close(u.mean, mean)
        epistemic[n] = float(u.epistemic.mean())
        assert math.isfinite(float(la.log_marginal_likelihood()))
    assert epistemic[200] < epistemic[50]
    # the aleatoric part follows the noise: low on the left, high on the right
    assert float(u.aleatoric[-1]) > 4 * float(u.aleatoric[0])
    nn_u = la.uncertainty(xt, pred_type="nn", n_samples=50, generator=torch.Generator())
    torch.testing.assert_close(nn_u.total, nn_u.aleatoric + nn_u.epistemic)


def test_bad_outputs_and_targets_are_refused():
    net = nn.Linear(1, 3).to(DT)
    la = Laplace(net, "heteroscedastic_regression", "all", "diag")
    x = torch.randn(4, 1, dtype=DT)
    with pytest.raises(ValueError, match="two outputs per target"):
        la.fit([(x, torch.randn(4, 1, dtype=DT))])
    la = Laplace(Net(), "heteroscedastic_regression", "all", "diag")
    shape = r"regression targets y must have shape \[4, 1\] or \[4\]; got shape \[4, 2\]"
    with pytest.raises(ValueError, match=shape):
        la.fit([(x, torch.randn(4, 2, dtype=DT))])
    with pytest.raises(ValueError, match="sigma_noise is a regression-only option"):
        Laplace(Net(), "heteroscedastic_regression", "all", "diag", sigma_noise=0.5)


def test_marglik_training_trains_on_the_likelihoods_own_nll():
    from torch.utils.data import DataLoader, TensorDataset

    from laplacetorch import marglik_training

    x, y = _data(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    la, _, margliks, losses = marglik_training(
        Net(), loader, likelihood="heteroscedastic_regression", hessian_structure="kfac",
        n_epochs=30, n_hypersteps=5, marglik_frequency=5, optimizer_kwargs={"lr": 1e-2},
    )  # fmt: skip
    assert la.likelihood.name == "heteroscedastic_regression"
    assert margliks[-1] < margliks[0] and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="unknown likelihood 'gamma'"):
        marglik_training(Net(), loader, likelihood="gamma", n_epochs=1)


def test_the_predictive_moments_keep_their_digits_in_float32():
    """μ ≈ 100 with a tiny spread of f: Cov[μ] is formed from small terms, not as the
    difference of two numbers of size E[μ]²."""
    m = torch.tensor([[100.0, -0.4, 0.0, 0.0]], dtype=DT)  # μ₁ = 100, μ₂ = −0.4
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 4, dtype=DT, generator=g) * 1e-3
    cov = (a @ a.T).unsqueeze(0)
    _, _, epi64 = LIK.y_moments(m, cov)
    _, _, epi32 = LIK.y_moments(m.float(), cov.float())
    torch.testing.assert_close(epi32.double(), epi64, rtol=1e-3, atol=1e-9)
