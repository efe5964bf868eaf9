"""A Gaussian noise per output (issue 32, item 2): ``sigma_noise`` of shape [C].

The evidence against a dense float64 oracle Σ_c G_c/σ_c² built from ``torch.func`` Jacobians
(and exact Bayesian linear regression), its gradient in σ against finite differences for each
structure that keeps one curvature per output, marglik and MacKay against each other and
against the true σ of each output, persistence, and every refusal."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DT
from torch import nn
from torch.func import functional_call, jacrev

from laplacetorch import Laplace

N, D, C = 240, 3, 3
SIGMA = torch.tensor([0.1, 0.5, 2.0], dtype=DT)
S0 = torch.tensor([0.2, 0.4, 1.5], dtype=DT)
PER_OUTPUT = ("full", "diag", "kfac", "block_full")


def _data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, dtype=DT, generator=g)
    w = torch.randn(C, D, dtype=DT, generator=g)
    return x, torch.sin(x) @ w.T + SIGMA * torch.randn(n, C, dtype=DT, generator=g)


def _mlp(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, C)).to(DT)
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    for _ in range(150):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model


def _loader(x: torch.Tensor, y: torch.Tensor, b: int = 80) -> list:
    return [(x[i : i + b], y[i : i + b]) for i in range(0, len(x), b)]


@pytest.fixture(scope="module")
def problem():
    x, y = _data()
    return _mlp(x, y), x, y


def _jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    theta = torch.cat([v.reshape(-1) for v in params.values()])

    def f(th: torch.Tensor) -> torch.Tensor:
        out, i = {}, 0
        for k, v in params.items():
            out[k] = th[i : i + v.numel()].view_as(v)
            i += v.numel()
        return functional_call(model, out, (x,))

    return jacrev(f)(theta), theta


def _oracle(model, x, y, sigma, delta, diagonal=False) -> torch.Tensor:
    """The Laplace evidence with Π = Σ_c G_c/σ_c² + δI from dense Jacobians."""
    jac, theta = _jacobian(model, x)
    g = torch.einsum("ncp,c,ncq->pq", jac, sigma.pow(-2), jac)
    if diagonal:
        g = torch.diag(g.diagonal())
    p = g.shape[0]
    with torch.no_grad():
        r = y - model(x)
    fit = -(0.5 * r.square().sum(0) / sigma.square()).sum()
    fit = fit - 0.5 * len(x) * torch.log(2 * math.pi * sigma.square()).sum()
    logdet = torch.logdet(g + delta * torch.eye(p, dtype=DT))
    return fit - 0.5 * (delta * theta.square().sum() + logdet - p * math.log(delta))


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_evidence_matches_the_dense_oracle(problem, structure):
    model, x, y = problem
    la = Laplace(model, "regression", "all", structure, sigma_noise=S0, prior_precision=2.0)
    la.fit(_loader(x, y))
    want = _oracle(model, x, y, S0, 2.0, diagonal=structure == "diag")
    torch.testing.assert_close(la.log_marginal_likelihood(), want, rtol=1e-10, atol=1e-9)


def test_exact_bayesian_linear_regression_for_every_structure():
    """A linear model: full, KFAC (exact: Λ ⊗ Σ x̃x̃ᵀ), block_full and the last layer are the
    exact BLR evidence with one noise per output."""
    x, y = _data()
    model = nn.Linear(D, C).to(DT)
    with torch.no_grad():
        xt = torch.cat([x, torch.ones(N, 1, dtype=DT)], 1)
        sol = torch.linalg.lstsq(xt, y).solution
        model.weight.copy_(sol[:D].T)
        model.bias.copy_(sol[D])
    want = _oracle(model, x, y, S0, 0.5)
    for structure, subset in [("full", "all"), ("kfac", "all"), ("block_full", "all"),
                              ("full", "last_layer"), ("kfac", "last_layer")]:  # fmt: skip
        la = Laplace(model, "regression", subset, structure, sigma_noise=S0, prior_precision=0.5)
        la.fit(_loader(x, y))
        got = la.log_marginal_likelihood()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9, msg=f"{structure} {subset}")


@pytest.mark.parametrize("structure", PER_OUTPUT)
def test_equal_noises_give_the_fit_with_one_noise(problem, structure):
    """σ_c all equal: the per-output fit's evidence, gradient in σ, predictive and samples'
    covariance are those of the fit with one σ."""
    model, x, y = problem
    kw = {"prior_precision": 1.5}
    one = Laplace(model, "regression", "all", structure, sigma_noise=0.7, **kw).fit(_loader(x, y))
    equal = torch.full((C,), 0.7, dtype=DT)
    per = Laplace(model, "regression", "all", structure, sigma_noise=equal, **kw)
    per.fit(_loader(x, y))
    torch.testing.assert_close(per.log_marginal_likelihood(), one.log_marginal_likelihood())
    s1 = torch.tensor(0.7, dtype=DT, requires_grad=True)
    (g1,) = torch.autograd.grad(one.evidence(None, s1), s1)
    sc = torch.full((C,), 0.7, dtype=DT, requires_grad=True)
    (gc,) = torch.autograd.grad(per.evidence(None, sc), sc)
    torch.testing.assert_close(gc.sum(), g1)
    for a, b in zip(per(x[:7]), one(x[:7]), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("structure", "prior"), [
    ("full", 1.5), ("diag", 1.5), ("kfac", 1.5), ("kfac", "layerwise"), ("block_full", 1.5),
    ("full", "layerwise"),
])  # fmt: skip
def test_the_evidence_gradient_in_each_sigma_is_exact(problem, structure, prior):
    model, x, y = problem
    la = Laplace(model, "regression", "all", structure, sigma_noise=S0).fit(_loader(x, y))
    if prior == "layerwise":  # KFAC's exact column prior (δ_W, δ_b) and full's Cholesky path
        prior = torch.linspace(0.5, 3.0, la.subset.n_groups, dtype=DT)
    s = S0.clone().requires_grad_(True)
    d = torch.as_tensor(prior, dtype=DT).clone().requires_grad_(True)
    grads = torch.autograd.grad(la.evidence(d, s), (s, d))
    eps, d0 = 1e-6, d.detach()
    for grad, value, at in ((grads[0], S0, lambda v: (d0, v)), (grads[1], d0, lambda v: (v, S0))):
        for i in range(value.numel()):
            step = torch.zeros(value.numel(), dtype=DT)
            step[i] = eps
            step = step.reshape(value.shape)
            fd = (la.evidence(*at(value + step)) - la.evidence(*at(value - step))) / (2 * eps)
            torch.testing.assert_close(grad.reshape(-1)[i], fd, rtol=1e-6, atol=1e-6)


def test_marglik_and_mackay_recover_each_outputs_noise():
    """Exact least squares on N = 4000: each tuned σ_c within 5 % of the truth (0.1, 0.5,
    2.0 over four orders of magnitude in σ²), marglik and MacKay at the same optimum."""
    x, y = _data(4000, seed=1)
    model = nn.Linear(D, C).to(DT)
    feats = torch.sin(x)  # the true mean is linear in sin(x)
    net = nn.Sequential(_Sin(), model)
    with torch.no_grad():
        xt = torch.cat([feats, torch.ones(len(x), 1, dtype=DT)], 1)
        sol = torch.linalg.lstsq(xt, y).solution
        model.weight.copy_(sol[:D].T)
        model.bias.copy_(sol[D])
    tuned = {}
    for method in ("marglik", "mackay"):
        la = Laplace(net, "regression", "all", "full", sigma_noise=torch.ones(C, dtype=DT))
        la.fit(_loader(x, y, 500))
        result = la.optimize_prior_precision(method=method, tune_sigma=True)
        assert result.converged
        assert result.sigma_noise.shape == (C,)
        tuned[method] = la.sigma_noise
        rel = (la.sigma_noise / SIGMA - 1).abs()
        assert bool((rel < 0.05).all()), (method, la.sigma_noise.tolist())
    torch.testing.assert_close(tuned["marglik"], tuned["mackay"], rtol=1e-5, atol=0)


class _Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def test_predictive_and_uncertainty_carry_each_noise(problem):
    model, x, y = problem
    la = Laplace(model, "regression", "all", "kfac", sigma_noise=S0).fit(_loader(x, y))
    mean, var = la(x[:5])
    u = la.uncertainty(x[:5])
    torch.testing.assert_close(u.aleatoric, S0.square().expand(5, C))
    torch.testing.assert_close(u.epistemic, var.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)
    want = (
        -torch.distributions.MultivariateNormal(mean, var + torch.diag(S0.square()))
        .log_prob(y[:5])
        .sum()
    )
    torch.testing.assert_close(la.likelihood.predictive_nll((mean, var), y[:5], S0), want)
    # the noise enters the posterior: a larger σ_c makes f_c more uncertain
    big = S0.clone()
    big[0] = 5.0
    la.sigma_noise = big
    assert bool((la(x[:5])[1][:, 0, 0] > var[:, 0, 0]).all())


def test_state_round_trip_and_adding_data(problem):
    model, x, y = problem
    la = Laplace(model, "regression", "all", "kfac", sigma_noise=S0).fit(_loader(x, y))
    la.optimize_prior_precision(method="mackay", tune_sigma=True)
    state = la.state_dict()
    other = Laplace(model, "regression", "all", "kfac")
    other.load_state_dict(state)
    torch.testing.assert_close(other.sigma_noise, la.sigma_noise)
    torch.testing.assert_close(other.log_marginal_likelihood(), la.log_marginal_likelihood())
    torch.testing.assert_close(other(x[:4])[1], la(x[:4])[1])
    # two halves added (override=False) equal one fit of all the data
    half = Laplace(model, "regression", "all", "full", sigma_noise=S0)
    half.fit(_loader(x[:120], y[:120])).fit(_loader(x[120:], y[120:]), override=False)
    whole = Laplace(model, "regression", "all", "full", sigma_noise=S0).fit(_loader(x, y))
    torch.testing.assert_close(half.log_marginal_likelihood(), whole.log_marginal_likelihood())


def test_refusals_name_the_cause_and_change_nothing(problem):
    model, x, y = problem
    loader = _loader(x, y)
    with pytest.raises(ValueError, match="one curvature per output: one of"):
        Laplace(model, "regression", "all", "lanczos", sigma_noise=S0).fit(loader)
    with pytest.raises(ValueError, match="empirical Fisher"):
        Laplace(model, "regression", "all", "full", sigma_noise=S0, fisher_type="empirical").fit(
            loader
        )
    with pytest.raises(ValueError, match="model gives 3 outputs"):
        Laplace(model, "regression", "all", "diag", sigma_noise=S0[:2]).fit(loader)
    with pytest.raises(ValueError, match="more than once"):
        Laplace(model, "regression", "all", "diag", sigma_noise=S0).fit(iter(loader))
    with pytest.raises(ValueError, match="is for likelihood 'regression'"):
        Laplace(model, "classification", sigma_noise=S0)
    with pytest.raises(ValueError, match="one per output"):
        Laplace(model, "regression", sigma_noise=torch.ones(2, 2))
    with pytest.raises(ValueError, match="one sigma_noise for every position"):
        Laplace(model, "regression", sigma_noise=S0, outputs="sequence")
    one = Laplace(model, "regression", "all", "diag", sigma_noise=0.5).fit(loader)
    with pytest.raises(ValueError, match="summed over outputs; set sigma_noise of shape"):
        one.sigma_noise = S0
    with pytest.raises(ValueError, match="summed over outputs"):
        one.log_marginal_likelihood(sigma_noise=S0)
    assert float(one.sigma_noise) == 0.5
    per = Laplace(model, "regression", "all", "diag", sigma_noise=S0).fit(loader)
    before = per.log_marginal_likelihood()
    with pytest.raises(ValueError, match="keeps one curvature per output for 3"):
        per.sigma_noise = torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match="one positive finite number"):
        per.sigma_noise = torch.tensor([0.1, -1.0, 0.3], dtype=DT)
    torch.testing.assert_close(per.sigma_noise, S0)
    torch.testing.assert_close(per.log_marginal_likelihood(), before)
    state = per.state_dict()
    state["loss_sum"] = state["loss_sum"][:2]
    with pytest.raises(ValueError, match="loss_sum"):
        Laplace(model, "regression", "all", "diag").load_state_dict(state)


def test_compat_keeps_laplace_torch_one_noise(problem):
    from laplacetorch.compat import Laplace as CompatLaplace

    model = problem[0]
    with pytest.raises(ValueError, match="one number here, as in laplace-torch"):
        CompatLaplace(model, "regression", "all", "diag", sigma_noise=S0)
    la = CompatLaplace(model, "regression", "all", "diag", sigma_noise=torch.tensor([0.3]))
    assert float(la.sigma_noise) == pytest.approx(0.3)


def test_posterior_views_and_model_selection_take_a_noise_per_output(problem):
    from laplacetorch.selection import select_model

    model, x, y = problem
    la = Laplace(model, "regression", "all", "diag", sigma_noise=S0, prior_precision=1.5)
    la.fit(_loader(x, y))
    dense = la.structure.precision_dense(la.prior, la.scale())
    torch.testing.assert_close(la.posterior_precision.diagonal(), dense.diagonal())
    res = select_model({"mlp": model}, "regression", _loader(x, y), hessian_structure="diag",
                       laplace_kwargs={"sigma_noise": S0})  # fmt: skip
    assert res.best.sigma_noise == pytest.approx(res.best.laplace.sigma_noise.tolist())
    assert "nan" in res.table()  # one σ column: a per-output σ has no one value


def test_the_memory_check_counts_one_curvature_per_output(problem):
    """C dense curvatures and their weighted sum: a limit that one [P, P] fits but C + 1 do
    not is refused before any pass, naming the per-output fit; the one-σ fit runs."""
    from laplacetorch import memory

    model, x, y = problem
    subset = Laplace(model, "regression", "all", "full").subset
    one = memory.fit_bytes("full", subset, {}, memory.Sizes())
    limit = 2 * one  # one curvature fits, C + 1 = 4 do not
    la = Laplace(model, "regression", "all", "full", sigma_noise=S0, memory_limit=limit)
    with pytest.raises(memory.MemoryBudgetError, match="one curvature per output \\(3\\)"):
        la.fit(_loader(x, y))
    assert la.curvature is None
    Laplace(model, "regression", "all", "full", memory_limit=limit).fit(_loader(x, y))
