"""The Laplace class on small nets: evidence gradients, links, predictives, persistence, errors."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from conftest import batches, dense_ggn, make_data, make_mlp, make_subset

from laplacetorch import Laplace, NotFittedError
from laplacetorch.likelihoods import get_likelihood
from laplacetorch.links import (
    bridge,
    bridge_concentration,
    gaussian_samples,
    probit,
)

DT = torch.float64


def _fitted(likelihood="classification", subset="all", structure="full", **kw):
    model = make_mlp()
    x, y = make_data("mlp", likelihood, n=20)
    la = Laplace(model, likelihood, subset, structure, **kw)
    return la.fit(batches(x, y)), x, y


@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("prior", ["scalar", "layer", "param"])
def test_marglik_gradient_matches_finite_differences(structure, likelihood, prior):
    la, _, _ = _fitted(likelihood, "all", structure)
    delta = {
        "scalar": torch.tensor(0.9, dtype=DT),
        "layer": torch.linspace(0.5, 2.0, la.subset.n_groups, dtype=DT),  # per tensor
        "param": torch.linspace(0.5, 2.0, la.n_params, dtype=DT),
    }[prior]
    sigma = torch.tensor(0.7, dtype=DT)
    use_sigma = likelihood == "regression"
    d = delta.clone().requires_grad_(True)
    s = sigma.clone().requires_grad_(True)
    lml = la.log_marginal_likelihood(d, s if use_sigma else None)
    grads = torch.autograd.grad(lml, (d, s) if use_sigma else (d,))
    eps = 1e-6
    for i in range(min(d.numel(), 4)):
        e = torch.zeros_like(delta).reshape(-1)
        e[i] = eps
        e = e.reshape(delta.shape)
        up = la.log_marginal_likelihood(delta + e, sigma if use_sigma else None)
        dn = la.log_marginal_likelihood(delta - e, sigma if use_sigma else None)
        fd = (up - dn) / (2 * eps)
        assert float(grads[0].reshape(-1)[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)
    if use_sigma:
        fd = (
            la.log_marginal_likelihood(delta, sigma + eps)
            - la.log_marginal_likelihood(delta, sigma - eps)
        ) / (2 * eps)
        assert float(grads[1]) == pytest.approx(float(fd), rel=1e-5)


def test_marglik_matches_its_definition_on_a_dense_oracle():
    la, x, y = _fitted("classification", "all", "full", prior_precision=0.7)
    ggn = dense_ggn(la.subset, x, y, "classification")
    prec = ggn + 0.7 * torch.eye(la.n_params, dtype=DT)
    theta = la.mean
    loglik = -torch.nn.functional.cross_entropy(la.model(x), y, reduction="sum")
    expected = loglik - 0.5 * (
        0.7 * theta @ theta + torch.logdet(prec) - la.n_params * math.log(0.7)
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), expected.detach())


@pytest.mark.parametrize("prior_structure", ["scalar", "layerwise", "diagonal"])
def test_marglik_and_mackay_agree(prior_structure):
    la, _, _ = _fitted("classification", "all", "diag")
    res = []
    for method in ("marglik", "mackay"):
        la.prior_precision = 1.0
        out = la.optimize_prior_precision(method=method, prior_structure=prior_structure)
        res.append(out)
    # both reach the same optimum; MacKay's fixed point converges slowly per parameter
    assert res[0].log_marginal_likelihood == pytest.approx(res[1].log_marginal_likelihood, 1e-9)
    torch.testing.assert_close(res[0].prior_precision, res[1].prior_precision, rtol=1e-3, atol=0)


@pytest.mark.parametrize("likelihood", ["classification", "binary"])
def test_gridsearch_on_validation_nll_picks_the_best_grid_point(likelihood):
    la, _x, _y = _fitted(likelihood, "last_layer", "full")
    xv, yv = make_data("mlp", likelihood, n=15, seed=7)
    grid = torch.logspace(-2, 2, 9)
    res = la.optimize_prior_precision(method="gridsearch", val_loader=batches(xv, yv), grid=grid)
    nlls = []
    for d in grid:
        la.prior_precision = d
        p = la(xv)
        if likelihood == "binary":  # independent Bernoulli outputs, summed per example
            nll = -(yv * p.log() + (1 - yv) * (1 - p).log()).sum(1)
        else:
            nll = -p.gather(1, yv[:, None]).log()[:, 0]
        nlls.append(float(nll.mean()))
    assert res.history == pytest.approx(nlls, rel=1e-9)
    assert float(res.prior_precision) == pytest.approx(
        float(grid[int(torch.tensor(nlls).argmin())])
    )


def _moments(seed=0, b=5, c=4, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, c, generator=g, dtype=DT) * 2
    a = torch.randn(b, c, c, generator=g, dtype=DT) * scale
    return mean, a @ a.transpose(1, 2) / c


def _mc_truth(mean, var, binary=False, n=400_000):
    f = gaussian_samples(mean, var, n, torch.Generator().manual_seed(11))
    return (torch.sigmoid(f) if binary else torch.softmax(f, -1)).mean(0)


@pytest.mark.parametrize(("link", "tol"), [("probit", 0.04), ("mc", 0.01)])
def test_links_against_monte_carlo_ground_truth(link, tol):
    mean, var = _moments(scale=0.5)  # full, correlated covariances
    truth = _mc_truth(mean, var)
    if link == "probit":
        p = probit(mean, var)
    else:
        lik = get_likelihood("classification")  # the library's mc link itself
        gen = torch.Generator().manual_seed(1)
        p = lik.glm_predictive(mean, var, link_approx="mc", n_samples=20_000, generator=gen)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=DT))
    assert (p - truth).abs().max() < tol
    small = probit(mean, var * 1e-10)
    torch.testing.assert_close(small, torch.softmax(mean, -1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("normalise", [False, True])
def test_bridge_against_monte_carlo_in_its_regime(normalise):
    # the bridge is built for near-uniform means and large isotropic variances
    g = torch.Generator().manual_seed(0)
    mean = 0.3 * torch.randn(6, 4, generator=g, dtype=DT)
    var = 16 * torch.eye(4, dtype=DT).expand(6, 4, 4)
    p = bridge(mean, var, normalise=normalise)
    torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=DT))
    assert (p - _mc_truth(mean, var)).abs().max() < 0.05


def test_bridge_inverts_the_inverse_bridge():
    # inverse bridge (Hennig et al.): μ_c = log α_c − mean log α, v_c = (1 − 2/C)/α_c + Σ 1/α / C²
    alpha = torch.tensor([[0.5, 2.0, 7.0], [3.0, 3.0, 1.0]], dtype=DT)
    c = alpha.shape[-1]
    mu = alpha.log() - alpha.log().mean(-1, keepdim=True)
    v = (1 - 2 / c) / alpha + alpha.reciprocal().sum(-1, keepdim=True) / c**2
    torch.testing.assert_close(bridge_concentration(mu, v), alpha)
    # conditioning on Σ f = 0 leaves an already zero-sum Gaussian alone (1ᵀΣ1 = 0)
    proj = torch.eye(c, dtype=DT) - 1.0 / c
    var = proj @ torch.diag_embed(v) @ proj
    expected = bridge_concentration(mu, var.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(bridge(mu, var), expected / expected.sum(-1, keepdim=True))


def test_binary_probit_against_monte_carlo():
    mean, var = _moments(c=3)
    truth = _mc_truth(mean, var, binary=True)
    assert (probit(mean, var, binary=True) - truth).abs().max() < 0.02


def test_larger_prior_precision_is_closer_to_map():
    la, x, _ = _fitted("classification", "all", "diag")
    p_map = torch.softmax(la.model(x), -1).detach()
    dist = []
    for d in (0.1, 1.0, 10.0, 100.0):
        la.prior_precision = d
        dist.append(float((la(x) - p_map).abs().sum()))
    assert all(a > b for a, b in itertools.pairwise(dist))


@pytest.mark.parametrize("likelihood", ["classification", "regression", "binary"])
@pytest.mark.parametrize("subset", ["all", "last_layer", "subnetwork"])
def test_glm_moments_equal_dense_jacobian_formula(likelihood, subset):
    model = make_mlp()
    x, y = make_data("mlp", likelihood, n=10)
    la = Laplace(
        model, likelihood, "all" if subset == "subnetwork" else subset, "full", prior_precision=0.5
    )
    if subset == "subnetwork":
        la.subset = make_subset(model, "subnetwork")
    la.fit(batches(x, y))
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    ggn = dense_ggn(la.subset, x, y, likelihood)
    cov = torch.linalg.inv(ggn + 0.5 * torch.eye(la.n_params, dtype=DT))
    mean, var = la.glm_moments(x)
    torch.testing.assert_close(mean, model(x).detach())
    torch.testing.assert_close(var, jac @ cov @ jac.transpose(1, 2))


def test_nn_predictive_and_weight_samples_match_the_posterior():
    la, x, _ = _fitted("regression", "last_layer", "full", prior_precision=2.0, sigma_noise=0.3)
    g = torch.Generator().manual_seed(0)
    thetas = la.sample(100_000, generator=g)
    cov = torch.linalg.inv(la.structure.precision_dense(la.prior_precision, la.scale()))
    emp = torch.cov(thetas.T)
    assert (emp - cov).abs().max() < 0.03 * cov.diagonal().max()
    torch.testing.assert_close(thetas.mean(0), la.mean, atol=0.01, rtol=0)
    # the last layer is linear in θ: the nn predictive equals the GLM one up to MC error
    mean_nn, var_nn = la(x, pred_type="nn", n_samples=20_000, generator=g)
    mean_glm, var_glm = la(x)
    torch.testing.assert_close(mean_nn, mean_glm, atol=0.02, rtol=0)
    # laplace-torch's shapes: the nn variance is elementwise [B, C], the glm one [B, C, C]
    torch.testing.assert_close(var_nn, var_glm.diagonal(dim1=-2, dim2=-1), atol=0.02, rtol=0.05)


def test_predictive_samples_shapes_and_reproducibility():
    la, x, _ = _fitted("classification", "all", "diag")
    s1 = la.predictive_samples(x, n_samples=7, generator=torch.Generator().manual_seed(3))
    s2 = la.predictive_samples(x, n_samples=7, generator=torch.Generator().manual_seed(3))
    assert s1.shape == (7, 20, 3) and torch.equal(s1, s2)
    torch.testing.assert_close(s1.sum(-1), torch.ones(7, 20, dtype=DT))
    s3 = la.predictive_samples(x, pred_type="nn", n_samples=4)
    assert s3.shape == (4, 20, 3)
    la_r, xr, _ = _fitted("regression", "all", "diag")
    assert la_r.predictive_samples(xr, n_samples=5).shape == (5, 20, 3)


def test_fit_twice_replaces_and_state_dict_round_trip():
    la, x, y = _fitted("classification", "all", "full", prior_precision=0.3)
    first = la.structure.curvature_dense().clone()
    la.fit(batches(x, y))
    torch.testing.assert_close(la.structure.curvature_dense(), first)
    assert la.n_data == 20
    state = la.state_dict()
    other = Laplace(copy.deepcopy(la.model), "classification", "all", "full")
    other.load_state_dict(state)
    assert torch.equal(other(x), la(x))
    assert float(other.log_marginal_likelihood()) == float(la.log_marginal_likelihood())
    wrong = Laplace(make_mlp(n_out=4), "classification", "all", "full")
    with pytest.raises(ValueError, match="state does not match"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="hessian_structure"):
        Laplace(make_mlp(), "classification", "all", "diag").load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "format"}  # as saved before format 2
    fresh = Laplace(copy.deepcopy(la.model), "classification", "all", "full")
    with pytest.raises(ValueError, match=r"state has format 1 \(no format entry\); .* fit again"):
        fresh.load_state_dict(old)
    assert fresh.curvature is None


def test_bad_input_to_laplace():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=10)
    la = Laplace(model, "classification", "all", "diag")
    with pytest.raises(NotFittedError, match="call fit"):
        la(x)
    with pytest.raises(NotFittedError, match="call fit"):
        la.optimize_prior_precision()
    with pytest.raises(NotFittedError, match="call fit"):
        la.log_marginal_likelihood()
    la.fit(batches(x, y))
    with pytest.raises(ValueError, match="unknown pred_type 'bayes'"):
        la(x, pred_type="bayes")
    with pytest.raises(ValueError, match="unknown link_approx 'logit'"):
        la(x, link_approx="logit")
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        la.optimize_prior_precision(method="adam")
    with pytest.raises(ValueError, match="unknown prior_structure"):
        la.optimize_prior_precision(prior_structure="blocks")
    with pytest.raises(ValueError, match="tune_sigma is a regression-only option"):
        la.optimize_prior_precision(tune_sigma=True)
    with pytest.raises(ValueError, match="regression-only"):
        la.log_marginal_likelihood(sigma_noise=0.5)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4\]"):
        la(torch.zeros(3, 5, dtype=DT))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        la(x, link_approx="mc", n_samples=0)
    with pytest.raises(ValueError, match="regression-only option"):
        Laplace(model, "classification", sigma_noise=0.5)
    with pytest.raises(ValueError, match="unknown hessian_structure 'block'"):
        Laplace(model, "classification", hessian_structure="block")
    with pytest.raises(ValueError, match="temperature must be a positive"):
        Laplace(model, "classification", temperature=0)
    with pytest.raises(ValueError, match="prior_mean must be a scalar"):
        Laplace(model, "classification", prior_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="positive and finite"):
        Laplace(model, "classification", prior_precision=-1.0)


def test_binary_bridge_is_refused():
    la, x, _ = _fitted("binary", "all", "diag")
    with pytest.raises(ValueError, match="bridge needs a softmax"):
        la(x, link_approx="bridge")
    p = la(x)
    assert p.shape == (20, 3) and ((p > 0) & (p < 1)).all()


def test_default_structures():
    model = make_mlp()
    assert Laplace(model, "classification").hessian_structure == "full"
    assert Laplace(model, "classification", "all").hessian_structure == "kfac"
    assert Laplace(model, "classification", "all", "kron").hessian_structure == "kfac"


@pytest.mark.parametrize("net", ["mlp", "cnn", "twice", "tied", "sequence"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_diag_glm_moments_equal_dense_jacobian_formula(net, likelihood):
    from conftest import ReuseNet, make_cnn

    torch.manual_seed(0)
    model = {"mlp": make_mlp, "cnn": make_cnn}.get(net, lambda: ReuseNet(net).eval())()
    x, y = make_data("cnn" if net == "cnn" else "mlp", likelihood, n=10)
    la = Laplace(model, likelihood, "all", "diag", prior_precision=0.5).fit(batches(x, y))
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    inv = la.structure.inverse_diagonal(0.5, la.scale())
    mean, var = la.glm_moments(x)
    torch.testing.assert_close(mean, model(x).detach())
    torch.testing.assert_close(var, torch.einsum("bcp,p,bdp->bcd", jac, inv, jac))


def test_layerwise_glm_moments_never_build_a_jacobian_for_an_mlp(monkeypatch):
    import laplacetorch.predictive as pred

    def refuse(*args, **kwargs):
        raise AssertionError("dense Jacobian built")

    for structure in ("diag", "kfac", "ekfac", "block_full"):
        for subset in ("all", "last_layer"):
            la, x, _ = _fitted("classification", subset, structure)
            with monkeypatch.context() as mp:
                mp.setattr(pred, "dense_jacobians", refuse)
                assert la(x).shape == (20, 3)


@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
@pytest.mark.parametrize("net", ["mlp", "cnn", "grouped", "sequence", "norm"])
@pytest.mark.parametrize("joint_bias", [True, False])
def test_kron_glm_moments_equal_dense_jacobian_formula(structure, net, joint_bias):
    from conftest import SeqNet

    torch.manual_seed(0)
    g_ = torch.Generator().manual_seed(4)
    if net == "mlp":
        model, x = make_mlp(), torch.randn(8, 4, generator=g_, dtype=DT)
    elif net == "sequence":
        model, x = SeqNet().to(DT).eval(), torch.randn(8, 5, 3, generator=g_, dtype=DT)
    elif net == "norm":
        model = (
            torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
            .to(DT)
            .eval()
        )
        x = torch.randn(8, 4, generator=g_, dtype=DT)
    else:
        groups = 2 if net == "grouped" else 1
        model = (
            torch.nn.Sequential(
                torch.nn.Conv2d(2, 4, 3, padding=1, groups=groups),
                torch.nn.Tanh(),
                torch.nn.Conv2d(4, 2, 3, stride=2),
                torch.nn.Flatten(),
                torch.nn.Linear(2, 3),
            )
            .to(DT)
            .eval()
        )
        x = torch.randn(8, 2, 3, 3, generator=g_, dtype=DT)
    n_out = model(x).shape[1]
    y = torch.randint(0, n_out, (8,), generator=g_)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(
            model,
            "classification",
            "all",
            structure,
            prior_precision=0.7,
            backend_options={"joint_bias": joint_bias},
        ).fit(batches(x, y, 3))
    prec = la.structure.precision_dense(0.7, la.scale())
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    mean, var = la.glm_moments(x)
    torch.testing.assert_close(mean, model(x).detach())
    torch.testing.assert_close(var, jac @ torch.linalg.inv(prec) @ jac.transpose(1, 2))
