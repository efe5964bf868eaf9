"""Likelihoods: output Hessians, square roots, log-likelihoods and target sampling."""

from __future__ import annotations

import math

import pytest
import torch

from laplacetorch import get_likelihood
from laplacetorch.likelihoods import Likelihood

DT = torch.float64
NAMES = ["classification", "regression", "binary"]


def _f(c=4, b=6, seed=0):
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed), dtype=DT) * 2


def _y(name, f, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, c = f.shape
    if name == "classification":
        return torch.randint(0, c, (b,), generator=g)
    if name == "regression":
        return torch.randn(b, c, generator=g, dtype=DT)
    return torch.randint(0, 2, (b, c), generator=g).to(DT)


@pytest.mark.parametrize("name", NAMES)
def test_output_hessian_and_sqrt_match_autograd(name):
    lik = get_likelihood(name)
    f = _f()
    y = _y(name, f)
    hess = torch.stack(
        [
            torch.func.hessian(lambda o, i=i: lik.nll_unit(o[None], y[i : i + 1]).sum())(f[i])
            for i in range(len(f))
        ]
    )
    torch.testing.assert_close(lik.output_hessian(f), hess)
    s = lik.hessian_sqrt(f)
    torch.testing.assert_close(s @ s.transpose(-1, -2), hess)


@pytest.mark.parametrize("name", NAMES)
def test_output_grad_matches_autograd(name):
    lik = get_likelihood(name)
    f = _f().requires_grad_(True)
    y = _y(name, f)
    (g,) = torch.autograd.grad(lik.nll_unit(f, y).sum(), f)
    torch.testing.assert_close(lik.output_grad(f.detach(), y), g)


def test_log_likelihoods_match_torch_distributions():
    f = _f()
    y = _y("classification", f)
    lik = get_likelihood("classification")
    ref = torch.distributions.Categorical(logits=f).log_prob(y).sum()
    torch.testing.assert_close(lik.log_likelihood(f, y), ref)
    torch.testing.assert_close(lik.log_likelihood(f, y, temperature=2.0), ref / 2)

    y = _y("regression", f)
    lik = get_likelihood("regression")
    sigma = torch.tensor(0.7, dtype=DT, requires_grad=True)
    ll = lik.log_likelihood(f, y, sigma_noise=sigma)
    torch.testing.assert_close(ll, torch.distributions.Normal(f, 0.7).log_prob(y).sum())
    (g,) = torch.autograd.grad(ll, sigma)
    n = f.numel()
    expected = ((y - f) ** 2).sum() / 0.7**3 - n / 0.7  # d/dσ of the Gaussian log-likelihood
    torch.testing.assert_close(g, expected)
    # from the summed loss: -(½Σr²)/σ² - (NC/2) log 2πσ²
    loss = lik.nll_unit(f, y).sum()
    manual = -loss / 0.49 - 0.5 * n * math.log(2 * math.pi * 0.49)
    torch.testing.assert_close(lik.log_likelihood_from_loss(loss, 6, 4, 0.7), manual)

    y = _y("binary", f)
    lik = get_likelihood("binary")
    ref = torch.distributions.Bernoulli(logits=f).log_prob(y).sum()
    torch.testing.assert_close(lik.log_likelihood(f, y), ref)


def test_curvature_scale():
    reg, cls = get_likelihood("regression"), get_likelihood("classification")
    assert reg.curvature_scale(0.5) == pytest.approx(4.0)
    assert reg.curvature_scale(0.5, 2.0) == pytest.approx(2.0)
    assert reg.curvature_scale(0.5, kind="ef") == pytest.approx(16.0)
    assert cls.curvature_scale(0.5, 4.0) == pytest.approx(0.25)  # σ plays no part


@pytest.mark.parametrize("name", NAMES)
def test_sample_targets_follow_the_model(name):
    lik = get_likelihood(name)
    f = _f(c=3, b=2)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    ys = lik.sample_targets(f, n, g)
    assert torch.equal(ys, lik.sample_targets(f, n, torch.Generator().manual_seed(0)))
    if name == "classification":
        assert ys.shape == (n, 2)
        freq = torch.nn.functional.one_hot(ys, 3).to(DT).mean(0)
        torch.testing.assert_close(freq, torch.softmax(f, -1), atol=0.015, rtol=0)
    elif name == "regression":
        assert ys.shape == (n, 2, 3)
        torch.testing.assert_close(ys.mean(0), f, atol=0.03, rtol=0)
        torch.testing.assert_close(ys.var(0), torch.ones_like(f), atol=0.05, rtol=0)
    else:
        assert ys.shape == (n, 2, 3)
        torch.testing.assert_close(ys.mean(0), torch.sigmoid(f), atol=0.015, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_mc_fisher_from_sampled_targets_converges_to_output_hessian(name):
    # E_y[r rᵀ] = Λ: the basis of an MC Fisher.
    lik = get_likelihood(name)
    f = _f(c=3, b=2)
    ys = lik.sample_targets(f, 20_000, torch.Generator().manual_seed(0))
    s = len(ys)
    f_rep = f.unsqueeze(0).expand(s, -1, -1).reshape(-1, f.shape[-1])
    r = lik.output_grad(f_rep, ys.reshape(s * f.shape[0], *ys.shape[2:])).view(s, *f.shape)
    emp = torch.einsum("sbi,sbj->bij", r, r) / s
    torch.testing.assert_close(emp, lik.output_hessian(f), atol=0.03, rtol=0)


def test_unknown_likelihood():
    with pytest.raises(ValueError, match="unknown likelihood 'gamma_counts'"):
        get_likelihood("gamma_counts")
    assert isinstance(get_likelihood(get_likelihood("binary")), Likelihood)


@pytest.mark.parametrize(
    ("name", "y", "match"),
    [
        ("classification", torch.tensor([0, 1, 5]), r"in \[0, 3\]; got values in \[0, 5\]"),
        ("classification", torch.tensor([0, -1, 2]), r"in \[0, 3\]"),
        ("classification", torch.zeros(3, 4, dtype=torch.long), r"shape \[3\]; got shape \[3, 4\]"),
        ("classification", torch.tensor([0.5, 1.0, 2.0], dtype=DT), "integer class indices"),
        ("classification", torch.tensor([0.0, 1.0, 2.0], dtype=DT), "got dtype torch.float64"),
        ("regression", torch.zeros(3, dtype=DT), r"shape \[3, 4\]; got shape \[3\]"),
        ("regression", torch.zeros(3, 4, dtype=torch.long), "floating point"),
        ("regression", torch.full((3, 4), float("inf"), dtype=DT), "NaN or Inf"),
        ("binary", torch.full((3, 4), 0.5, dtype=DT), "0 or 1"),
        ("binary", torch.zeros(3, 2, dtype=DT), r"shape \[3, 4\]"),
    ],
)
def test_bad_targets(name, y, match):
    with pytest.raises(ValueError, match=match):
        get_likelihood(name).check_targets(y, (3, 4))


def test_targets_must_be_tensors_and_outputs_2d():
    with pytest.raises(TypeError, match="torch.Tensor"):
        get_likelihood("classification").check_targets([0, 1], (2, 3))
    with pytest.raises(ValueError, match=r"\[batch, C\]"):
        get_likelihood("regression").check_targets(torch.zeros(2), (2,))
