"""Poisson counts and Student-t regression (issue 32, item 3): each output curvature against
``torch.func.hessian`` of the negative log-likelihood (Poisson: the Hessian itself;
Student-t: its expectation over y, the Fisher, by Gauss–Legendre quadrature), the GGN
against a dense oracle, the predictive's moments against Monte Carlo, and the split."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DT
from torch import nn

from laplacetorch import Laplace
from laplacetorch.likelihoods import PoissonLikelihood, StudentTLikelihood


def test_poisson_hessian_is_torch_func_hessian_of_the_nll():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 3, dtype=DT, generator=g)
    y = torch.poisson(torch.exp(f), generator=g)
    lik = PoissonLikelihood()

    def nll(fn, yn):  # an independent −log Poisson(y | e^f)
        return -torch.distributions.Poisson(torch.exp(fn)).log_prob(yn).sum()

    for n in range(4):
        h = torch.func.hessian(nll)(f[n], y[n])
        torch.testing.assert_close(lik.output_hessian(f)[n], h, rtol=1e-10, atol=1e-12)
    s = lik.hessian_sqrt(f)
    torch.testing.assert_close(s @ s.mT, lik.output_hessian(f))
    torch.testing.assert_close(
        lik.nll_unit(f, y), torch.stack([nll(a, b) for a, b in zip(f, y, strict=True)])
    )


def test_student_t_fisher_is_the_expected_hessian_of_the_nll():
    """E_y[∂²(−log p)/∂f²] by 200-point Gauss–Legendre in θ, y = f + σ√ν tan θ (the density
    becomes ∝ cos^{ν−1} θ, smooth on (−π/2, π/2)), against (ν+1)/((ν+3)σ²)."""
    for nu, scale in ((3.0, 0.5), (5.0, 2.0)):
        lik = StudentTLikelihood(nu, scale)
        f = torch.tensor([[0.3]], dtype=DT)
        nodes, weights = _gauss_legendre(200)
        theta = nodes * math.pi / 2
        ys = f + scale * math.sqrt(nu) * torch.tan(theta).unsqueeze(-1)
        dens = torch.cos(theta) ** (nu - 1)
        hess = torch.stack([torch.func.hessian(lambda o, y=y, t=lik: t.nll_unit(o, y).sum())(f)
                            .reshape(()) for y in ys.unsqueeze(1)])  # fmt: skip
        fisher = float((weights * dens * hess).sum() / (weights * dens).sum())
        assert abs(fisher - lik.fisher()) < 1e-8 * lik.fisher(), (fisher, lik.fisher())
        assert float(hess.min()) < 0  # the Hessian itself is indefinite: the Fisher is used
        torch.testing.assert_close(
            lik.output_hessian(f), torch.full((1, 1, 1), lik.fisher(), dtype=DT)
        )
    y = torch.tensor([[1.7, -0.2]], dtype=DT)
    f = torch.tensor([[0.5, 0.1]], dtype=DT)
    t = StudentTLikelihood(3.0, 0.5)
    ref = -torch.distributions.StudentT(3.0, f, 0.5).log_prob(y).sum(-1)
    torch.testing.assert_close(t.nll_unit(f, y), ref)


def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights on [−1, 1] (Golub–Welsch: the Jacobi matrix's eigenpairs)."""
    k = torch.arange(1, n, dtype=DT)
    beta = k / torch.sqrt(4 * k**2 - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(beta, 1) + torch.diag(beta, -1))
    return nodes, 2 * vecs[0] ** 2


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, 2)).to(DT)


@pytest.mark.parametrize("lik", [PoissonLikelihood(), StudentTLikelihood(3.0, 0.4)])
def test_the_ggn_against_a_dense_oracle_and_the_predictive(lik):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 2, dtype=DT, generator=g)
    net = _net().eval()
    with torch.no_grad():
        f = net(x)
    y = lik.sample_targets(f, 1, g)[0]
    la = Laplace(net, lik, "all", "full", prior_precision=0.5).fit([(x, y)])
    theta = la.subset.map_vector()
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(theta)  # [N, C, P]
    lam = torch.stack([torch.func.hessian(lambda o, yn=yn: lik.nll_unit(o[None], yn[None]).sum())
                       (fn) for fn, yn in zip(f, y, strict=True)])  # fmt: skip
    if isinstance(lik, StudentTLikelihood):
        lam = torch.full_like(lam, 0) + lik.fisher() * torch.eye(2, dtype=DT)  # Fisher GGN
    ggn = torch.einsum("nip,nij,njq->pq", jac, lam, jac)
    prec = la.posterior_precision.to_dense()
    torch.testing.assert_close(prec, ggn + 0.5 * torch.eye(la.n_params, dtype=DT))
    assert math.isfinite(float(la.log_marginal_likelihood()))
    # the predictive's moments against draws of the linearised f
    xt = x[:3]
    mean_f, cov_f = la.glm_moments(xt)
    mean, cov = la(xt)
    fs = mean_f + torch.einsum(
        "bij,sbj->sbi", torch.linalg.cholesky(cov_f), torch.randn(200_000, 3, 2, dtype=DT)
    )
    ys = lik.sample_targets(fs, 1, None)[0]  # y given each f: the predictive of y
    torch.testing.assert_close(mean, ys.mean(0), rtol=0.03, atol=0.03)
    emp = torch.einsum("sbi,sbj->bij", ys - ys.mean(0), ys - ys.mean(0)) / len(ys)
    torch.testing.assert_close(cov, emp, rtol=0.08, atol=0.05)
    u = la.uncertainty(xt)
    torch.testing.assert_close(u.total, cov.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)
    nll = lik.predictive_nll((mean, cov), y[:3])
    assert math.isfinite(float(nll))


def test_poisson_predictive_nll_is_the_poisson_at_zero_spread():
    lik = PoissonLikelihood()
    rate = torch.tensor([[0.7, 3.0]], dtype=DT)
    y = torch.tensor([[2.0, 1.0]], dtype=DT)
    ref = -torch.distributions.Poisson(rate).log_prob(y).sum()
    torch.testing.assert_close(lik.predictive_nll((rate, rate * (1 + 1e-9)), y), ref)
    # more spread: a heavier tail, a higher probability far out
    far = torch.tensor([[9.0, 12.0]], dtype=DT)
    assert float(lik.predictive_nll((rate, 3 * rate), far)) < float(
        lik.predictive_nll((rate, rate), far)
    )


def test_bad_targets_and_options_are_refused():
    x = torch.randn(4, 2, dtype=DT)
    with pytest.raises(ValueError, match="counts: non-negative integers"):
        Laplace(_net(), "poisson", "all", "diag").fit([(x, torch.full((4, 2), 0.5, dtype=DT))])
    with pytest.raises(ValueError, match="counts"):
        Laplace(_net(), "poisson", "all", "diag").fit([(x, -torch.ones(4, 2, dtype=DT))])
    with pytest.raises(ValueError, match="nu must be a positive finite number; got 0"):
        StudentTLikelihood(nu=0)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        StudentTLikelihood(scale=float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        la = Laplace(_net(), "student_t", "all", "kfac").fit([(x, torch.randn(4, 2, dtype=DT))])
    assert la.likelihood.nu == 4.0 and la.likelihood.scale == 1.0


# ---------------------------------------------------------------------- any log-likelihood
def _poisson_nll(f, y):
    return (torch.exp(f) - y * f + torch.lgamma(y + 1)).sum(-1)


def test_a_custom_nll_gives_the_built_in_likelihoods_posterior():
    """Only −log p(y | f) given: the Hessian by torch.func equals Poisson's own curvature
    (exact: f is the natural parameter), so the fits agree to round-off; the Student-t
    with its Fisher given equals the built-in one, with the Hessian it warns and differs."""
    from laplacetorch.likelihoods import CustomLikelihood

    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 2, dtype=DT, generator=g)
    net = _net().eval()
    with torch.no_grad():
        y = torch.poisson(torch.exp(net(x)), generator=g)
    custom = CustomLikelihood(_poisson_nll, name="my_poisson")
    for backend in ("full", "kfac", "diag"):
        a = Laplace(net, custom, "all", backend, prior_precision=0.5).fit([(x, y)])
        b = Laplace(net, "poisson", "all", backend, prior_precision=0.5).fit([(x, y)])
        torch.testing.assert_close(a.log_marginal_likelihood(), b.log_marginal_likelihood())
        mean_f, cov_f = b.glm_moments(x[:3])
        torch.testing.assert_close(a(x[:3]), (mean_f, cov_f))  # the predictive of f
    t = StudentTLikelihood(3.0, 0.4)
    yt = t.sample_targets(net(x).detach(), 1, g)[0]
    fisher = CustomLikelihood(t.nll_unit, curvature=t.output_hessian, name="my_t")
    a = Laplace(net, fisher, "all", "full").fit([(x, yt)])
    b = Laplace(net, t, "all", "full").fit([(x, yt)])
    torch.testing.assert_close(a.log_marginal_likelihood(), b.log_marginal_likelihood())
    with pytest.warns(UserWarning, match="Hessian is indefinite at some targets"):
        c = Laplace(net, CustomLikelihood(t.nll_unit), "all", "kfac").fit([(x, yt)])
    d = Laplace(net, t, "all", "kfac").fit([(x, yt)])
    assert abs(float(c.log_marginal_likelihood() - d.log_marginal_likelihood())) > 1e-3
    # the MC Fisher needs draws of targets; with them it runs
    with pytest.raises(ValueError, match="has no sample_targets: the MC Fisher needs it"):
        Laplace(net, custom, "all", "kfac", fisher_type="mc").fit([(x, y)])
    draws = CustomLikelihood(_poisson_nll, sample_targets=PoissonLikelihood().sample_targets)
    Laplace(net, draws, "all", "kfac", fisher_type="mc").fit([(x, y)])
    with pytest.raises(ValueError, match="does not know its noise"):
        a.uncertainty(x[:2])
    with pytest.raises(ValueError, match=r"one value per example, shape \[30\]; got \[30, 2\]"):
        Laplace(net, CustomLikelihood(lambda f, y: f - y), "all", "diag").fit([(x, y)])
    with pytest.raises(TypeError, match="nll must be callable"):
        CustomLikelihood("poisson")


def test_a_student_t_state_loads_only_into_the_same_nu_and_scale():
    x = torch.randn(10, 2, dtype=DT)
    t = StudentTLikelihood(3.0, 0.5)
    la = Laplace(_net(), t, "all", "diag").fit([(x, t.sample_targets(_net()(x), 1, None)[0])])
    same = Laplace(_net(), StudentTLikelihood(3.0, 0.5), "all", "diag")
    same.load_state_dict(la.state_dict())
    torch.testing.assert_close(same.log_marginal_likelihood(), la.log_marginal_likelihood())
    other = Laplace(_net(), StudentTLikelihood(5.0, 0.5), "all", "diag")
    with pytest.raises(ValueError, match=r"likelihood is 'student_t\(nu=3.0, scale=0.5\)'"):
        other.load_state_dict(la.state_dict())


def test_predictive_nlls_in_float32_and_their_refusals():
    from laplacetorch.likelihoods import CustomLikelihood

    lik = PoissonLikelihood()
    m, y = torch.tensor([[2.0]]), torch.tensor([[3.0]])
    for excess in (1e-4, 1e-6):  # a tiny spread of f: the terms cancel in float32
        n32 = lik.predictive_nll((m, m * (1 + excess)), y)
        n64 = lik.predictive_nll((m.double(), m.double() * (1 + excess)), y.double())
        assert n32.dtype == torch.float32 and abs(float(n32) - float(n64)) < 1e-5
    with pytest.raises(ValueError, match="nu = 2.0 has an infinite variance"):
        StudentTLikelihood(2.0).predictive_nll((m, m), y)
    custom = CustomLikelihood(_poisson_nll)
    with pytest.raises(ValueError, match="no predictive distribution of y to score"):
        custom.predictive_nll((m, m), y)
    linked = Laplace(_net(), CustomLikelihood(_poisson_nll, inverse_link=torch.exp), "all", "diag")
    linked.fit([(torch.randn(6, 2, dtype=DT), torch.ones(6, 2, dtype=DT))])
    assert linked(torch.randn(3, 2, dtype=DT), link_approx="mc").shape == (3, 2)
    with pytest.raises(ValueError, match="no entropy to split"):
        linked.uncertainty(torch.randn(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="other than the built-in likelihoods"):
        CustomLikelihood(_poisson_nll, name="regression")
    assert custom.identity != CustomLikelihood(lambda f, y: _poisson_nll(f, y)).identity


_OPTIONS = {
    "lanczos": {"rank": 10, "seed": 0},
    "hutchinson": {"n_probes": 4, "seed": 0},
    "nystrom": {"n_eigenvalues": 10, "seed": 0},
}


@pytest.mark.parametrize("lik", ["heteroscedastic_regression", "poisson", "student_t"])
def test_every_structure_fits_tunes_and_predicts_with_the_new_likelihoods(lik):
    """Every registry backend: fit in two batches, the evidence, marglik tuning, the
    predictive and the uncertainty split; the exact GGN's (full) evidence is the one the
    matrix-free operator estimates."""
    from laplacetorch import BACKENDS

    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, dtype=DT, generator=g)
    y = {
        "heteroscedastic_regression": torch.randn(24, 1, dtype=DT, generator=g),
        "poisson": torch.poisson(torch.ones(24, 2, dtype=DT), generator=g),
        "student_t": torch.randn(24, 2, dtype=DT, generator=g),
    }[lik]
    evidence = {}
    for backend in BACKENDS:
        subset = "last_layer" if backend == "gp" else "all"
        la = Laplace(_net(), lik, subset, backend, backend_options=_OPTIONS.get(backend))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            la.fit([(x[:12], y[:12]), (x[12:], y[12:])])
            evidence[backend] = float(la.log_marginal_likelihood())
            la.optimize_prior_precision(method="marglik")
        mean, cov = la(x[:3])
        u = la.uncertainty(x[:3])
        assert math.isfinite(evidence[backend]) and bool(torch.isfinite(cov).all()), backend
        torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)
        torch.testing.assert_close(u.mean, mean)
    assert abs(evidence["operator"] - evidence["full"]) < 0.02 * abs(evidence["full"])
