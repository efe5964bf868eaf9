"""Tuning numerics against their oracles: MacKay's fixed point lands on the evidence optimum
that marglik finds (GGN and empirical Fisher, T = 1 and 2), converges in float32, and an
iteration cap or a bound is reported, never read as converged."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from laplacetorch import Laplace


def _regression(dtype, steps=400):
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 150, dtype=dtype).reshape(-1, 1)
    y = torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1)
    ).to(dtype)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    return net.eval(), [(x[i : i + 50], y[i : i + 50]) for i in range(0, 150, 50)]


@pytest.fixture(scope="module")
def problem64():
    return _regression(torch.float64)


@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_mackay_lands_on_the_marglik_optimum(problem64, fisher_type, temperature):
    net, data = problem64
    found = {}
    for method in ("mackay", "marglik"):
        la = Laplace(
            net, "regression", "all", "kfac", fisher_type=fisher_type, temperature=temperature
        ).fit(data)
        res = la.optimize_prior_precision(method=method, tune_sigma=True)
        assert res.converged, method
        found[method] = (res.prior_precision.item(), res.sigma_noise.item())
    d = torch.tensor(found["mackay"][0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(found["mackay"][1], dtype=torch.float64, requires_grad=True)
    la.evidence(d, s).backward()  # MacKay's fixed point is stationary
    assert abs(d.grad.item() * d.item()) < 1e-4 and abs(s.grad.item() * s.item()) < 1e-4
    for a, b in zip(found["mackay"], found["marglik"], strict=True):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("prior_structure", ["scalar", "layerwise"])
def test_float32_mackay_converges(prior_structure):
    net, data = _regression(torch.float32)
    la = Laplace(net, "regression", "all", "kfac").fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a cap nor a bound is hit
        res = la.optimize_prior_precision(
            method="mackay", prior_structure=prior_structure, tune_sigma=True
        )
    assert res.converged and res.n_iter < 400
    ref = Laplace(net, "regression", "all", "kfac").fit(data)
    want = ref.optimize_prior_precision(
        method="marglik", prior_structure=prior_structure, tune_sigma=True
    )
    assert want.converged
    assert res.sigma_noise.item() == pytest.approx(want.sigma_noise.item(), rel=2e-3)


def test_an_iteration_cap_warns_and_is_not_converged(problem64):
    net, data = problem64
    la = Laplace(net, "regression", "all", "kfac").fit(data)
    with pytest.warns(RuntimeWarning, match="MacKay did not converge in 3 iterations"):
        res = la.optimize_prior_precision(method="mackay", tune_sigma=True, max_iter=3)
    assert not res.converged and res.n_iter == 3
    with pytest.warns(RuntimeWarning, match="marglik did not converge in 2 iterations"):
        res = la.optimize_prior_precision(method="marglik", lr=1e-3, n_steps=2)
    assert not res.converged


def test_a_bound_is_not_an_optimum():
    # an exact fit (y = f(x; θ*)): the evidence grows without end as σ → 0
    net = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)).double().eval()
    x = torch.linspace(-1, 1, 40, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        y = net(x)
    for method in ("marglik", "mackay"):
        la = Laplace(net, "regression", "all", "full").fit([(x, y)])
        with pytest.warns(RuntimeWarning, match="sigma_noise σ reached the bound"):
            res = la.optimize_prior_precision(method=method, tune_sigma=True)
        assert not res.converged


@pytest.mark.parametrize("prior", ["layerwise", "diag"])
def test_operator_per_layer_gradient_is_its_values_derivative(prior):
    from conftest import batches, make_data, make_mlp

    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(make_mlp(), "classification", "all", "operator").fit(batches(x, y))
    n = la.subset.n_groups if prior == "layerwise" else la.n_params
    g = torch.Generator().manual_seed(1)
    delta = (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    s = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    value = la.structure.logdet(delta, s)
    g_delta, g_s = torch.autograd.grad(value, (delta, s))
    h = 1e-6
    with torch.no_grad():
        for i in (0, n // 2, n - 1):
            e = torch.zeros_like(delta)
            e[i] = h
            fd = (la.structure.logdet(delta + e, s) - la.structure.logdet(delta - e, s)) / (2 * h)
            assert float(g_delta[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
        fd_s = (la.structure.logdet(delta, s + h) - la.structure.logdet(delta, s - h)) / (2 * h)
    assert float(g_s) == pytest.approx(float(fd_s), rel=1e-6)
    # and the value is an SLQ estimate of the exact log-determinant
    dense = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    exact = dense.structure.logdet(delta.detach(), s.detach())
    est, se = la.structure.logdet_with_error(delta.detach(), s.detach())
    assert float(est) == pytest.approx(float(value))
    assert abs(float(est - exact)) < 4 * float(se) + 1e-6 * abs(float(exact))


def test_a_grid_search_at_the_edge_of_its_grid_warns(problem64):
    net, data = problem64
    la = Laplace(net, "regression", "all", "kfac").fit(data)
    with pytest.warns(RuntimeWarning, match="the largest value of its grid"):
        la.optimize_prior_precision(method="gridsearch", grid=torch.tensor([1e-6, 1e-5, 1e-4]))
    with pytest.warns(RuntimeWarning, match="value of its grid \\[1e\\+04, 1e\\+05\\]"):
        la.optimize_prior_precision(
            method="gridsearch", grid=torch.tensor([1e4, 1e5]), val_loader=data
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = la.optimize_prior_precision(method="gridsearch", grid_size=21)
    assert 1e-4 < res.prior_precision.item() < 1e4
