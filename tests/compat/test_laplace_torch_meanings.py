"""laplace-torch's calls mean the same here (the native API, not the compat layer)."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp

from laplacetorch import Laplace


def _fitted(likelihood="classification", structure="full", subset="all", **kw):
    x, y = make_data("mlp", likelihood, n=20)
    la = Laplace(make_mlp(), likelihood, subset, structure, **kw).fit(batches(x, y))
    return la, x, y


def test_log_marginal_likelihood_stores_the_values_passed():
    """laplace-torch's README regression loop: Adam on log δ, log σ through
    ``log_marginal_likelihood(log_prior.exp(), log_sigma.exp())`` leaves the object tuned."""
    la, _, _ = _fitted("regression")
    log_prior = torch.ones(1, dtype=DT, requires_grad=True)
    log_sigma = torch.ones(1, dtype=DT, requires_grad=True)
    opt = torch.optim.Adam([log_prior, log_sigma], lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        (-la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())).backward()
        opt.step()
    lml = la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
    assert lml.requires_grad
    assert float(la.prior_precision) == pytest.approx(float(log_prior.detach().exp()), rel=1e-12)
    assert float(la.sigma_noise) == pytest.approx(float(log_sigma.detach().exp()), rel=1e-12)
    assert not la.prior_precision.requires_grad and not la.sigma_noise.requires_grad
    assert float(la.log_marginal_likelihood()) == pytest.approx(float(lml), rel=1e-12)
    assert float(la.sigma_noise) != pytest.approx(1.0, abs=0.05)  # it moved: tuning worked


def test_a_failed_evidence_call_changes_nothing():
    la, _, _ = _fitted("regression", prior_precision=0.5, sigma_noise=0.8)
    with pytest.raises(ValueError, match="sigma_noise"):
        la.log_marginal_likelihood(3.0, -1.0)
    assert float(la.prior_precision) == 0.5 and float(la.sigma_noise) == pytest.approx(0.8)
    la.evidence(3.0, 0.4)  # evaluates without storing
    assert float(la.prior_precision) == 0.5 and float(la.sigma_noise) == pytest.approx(0.8)


def test_arguments_after_hessian_structure_are_keyword_only():
    # laplace-torch's 5th positional argument is sigma_noise; here it cannot be mistaken
    with pytest.raises(TypeError, match="positional"):
        Laplace(make_mlp(), "regression", "all", "full", 0.5)


def test_unknown_keyword_names_the_public_method():
    la, _, _ = _fitted()
    with pytest.raises(TypeError, match=r"Laplace\.optimize_prior_precision\(\).*'nsteps'"):
        la.optimize_prior_precision(method="marglik", nsteps=3)
    with pytest.raises(ValueError, match="unknown pred_type"):
        la.optimize_prior_precision(method="marglik", pred_type="linear")


def test_marglik_with_lr_is_laplace_torchs_adam_loop():
    """``lr`` / ``n_steps`` mean Adam on log δ from ``init_prior_prec`` (default 1)."""
    la, _, _ = _fitted(prior_precision=7.0)
    res = la.optimize_prior_precision(method="marglik", lr=0.2, n_steps=25)
    ref, _, _ = _fitted()
    log_d = torch.zeros((), dtype=DT, requires_grad=True)
    opt = torch.optim.Adam([log_d], lr=0.2)
    for _ in range(25):
        opt.zero_grad()
        (-ref.evidence(log_d.clamp(-40, 40).exp())).backward()
        opt.step()
    assert float(res.prior_precision) == pytest.approx(float(log_d.exp()), rel=1e-12)
    assert res.n_iter == 25 and len(res.history) == 25


def test_marglik_without_lr_converges_and_leaves_sigma_alone():
    la, _, _ = _fitted("regression", sigma_noise=0.6)
    res = la.optimize_prior_precision(method="marglik")
    assert res.converged and float(la.sigma_noise) == pytest.approx(0.6)
    d = la.prior_precision.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(la.evidence(d), d)
    assert abs(float(g)) < 1e-6
    la.optimize_prior_precision(method="marglik", tune_sigma=True)
    assert float(la.sigma_noise) != pytest.approx(0.6, abs=1e-3)


def test_prior_structures_follow_laplace_torch():
    la, _, _ = _fitted()
    n_tensors = len(list(la.model.parameters()))
    res = la.optimize_prior_precision(method="mackay", prior_structure="layerwise")
    assert res.prior_precision.shape == (n_tensors,)  # one per parameter tensor
    diag = la.optimize_prior_precision(method="mackay", prior_structure="diag")
    again = la.optimize_prior_precision(method="mackay", prior_structure="diagonal")
    assert diag.prior_precision.shape == (la.n_params,)
    torch.testing.assert_close(diag.prior_precision, again.prior_precision)
    init = torch.full((n_tensors,), 2.0, dtype=DT)
    kept = la.optimize_prior_precision(method="marglik", init_prior_prec=init)
    assert kept.prior_precision.shape == (n_tensors,)
    with pytest.raises(ValueError, match="init_prior_prec has 6 entries"):
        la.optimize_prior_precision(method="marglik", init_prior_prec=init, prior_structure="diag")
    with pytest.raises(ValueError, match="unknown prior_structure 'blocks'"):
        la.optimize_prior_precision(method="marglik", prior_structure="blocks")


def test_gridsearch_takes_laplace_torchs_grid_and_a_loss(capsys):
    la, _, _ = _fitted()
    xv, yv = make_data("mlp", "classification", n=15, seed=7)
    val = batches(xv, yv)
    res = la.optimize_prior_precision(
        method="gridsearch",
        val_loader=val,
        log_prior_prec_min=-2,
        log_prior_prec_max=2,
        grid_size=9,
        verbose=True,
    )
    grid = torch.logspace(-2, 2, 9, dtype=DT)
    assert len(res.history) == 9
    assert float(res.prior_precision) == pytest.approx(
        float(grid[int(torch.tensor(res.history).argmin())])
    )
    assert "Optimized prior precision is" in capsys.readouterr().out

    def brier(probs, y):
        return ((probs - torch.nn.functional.one_hot(y, probs.shape[-1])) ** 2).sum(-1).mean()

    res = la.optimize_prior_precision(method="gridsearch", val_loader=val, grid=grid, loss=brier)
    expected = []
    for d in grid:
        la.prior_precision = d
        expected.append(float(brier(la(xv), yv)))
    assert res.history == pytest.approx(expected, rel=1e-10)
    assert float(res.prior_precision) == float(grid[int(torch.tensor(expected).argmin())])


def test_regression_gridsearch_loss_gets_mean_and_variance_or_mean():
    la, _, _ = _fitted("regression", sigma_noise=0.5)
    xv, yv = make_data("mlp", "regression", n=15, seed=7)
    grid = torch.logspace(-1, 1, 3, dtype=DT)
    seen = []

    def three(mean, var, y):
        seen.append(var.shape)
        return float(((mean - y) ** 2 / (var.diagonal(dim1=-2, dim2=-1) + 0.25)).mean())

    la.optimize_prior_precision(
        method="gridsearch", val_loader=batches(xv, yv), grid=grid, loss=three
    )
    assert seen == [torch.Size([15, 3, 3])] * 3
    mse = la.optimize_prior_precision(
        method="gridsearch",
        val_loader=batches(xv, yv),
        grid=grid,
        loss=lambda mean, y: float(((mean - y) ** 2).mean()),
    )
    assert len(set(mse.history)) == 1  # the glm mean does not depend on δ


def test_nn_gridsearch_matches_glm_for_a_linear_head():
    """On the last layer the network is linear in θ: the nn predictive equals the glm one up
    to Monte-Carlo error, δ by δ."""
    la, _, _ = _fitted(subset="last_layer")
    xv, yv = make_data("mlp", "classification", n=15, seed=7)
    grid = torch.logspace(-1, 1, 4, dtype=DT)
    g = torch.Generator().manual_seed(0)
    nn_res = la.optimize_prior_precision(
        method="gridsearch",
        pred_type="nn",
        val_loader=batches(xv, yv),
        grid=grid,
        n_samples=4000,
        generator=g,
    )
    glm_res = la.optimize_prior_precision(
        method="gridsearch", val_loader=batches(xv, yv), grid=grid, link_approx="mc", n_samples=4000
    )
    assert nn_res.history == pytest.approx(glm_res.history, rel=0.02)


def test_regression_predictive_is_of_f_without_the_noise():
    la, x, _ = _fitted("regression", sigma_noise=0.7)
    mean, f_var = la(x)
    m, cov = la.glm_moments(x)
    torch.testing.assert_close(f_var, cov)
    torch.testing.assert_close(mean, m)
    g = torch.Generator().manual_seed(1)
    mean_nn, var_nn = la(x, pred_type="nn", n_samples=50, generator=g)
    assert mean_nn.shape == var_nn.shape == (20, 3)  # laplace-torch's elementwise variance
