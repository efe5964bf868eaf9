"""fisher_type="hessian": the Hessian of the summed loss, against torch.func.hessian."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch.func import hessian

from laplacetorch import Laplace


def _dense_hessian(la, x, y):
    lik = la.likelihood

    def loss(theta):
        return lik.nll_unit(la.subset.forward(theta, x), lik.check_targets(y, (len(y), 3))).sum()

    return hessian(loss)(la.mean)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_hessian_and_its_evidence(likelihood):
    x, y = make_data("mlp", likelihood, n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the Hessian is indefinite
        la = Laplace(make_mlp(), likelihood, "all", "full", fisher_type="hessian").fit(
            batches(x, y, 7)
        )
    h = _dense_hessian(la, x, y)
    torch.testing.assert_close(la.structure.curvature_dense(), h)
    lam_min = float(torch.linalg.eigvalsh(h).min())
    assert lam_min < 0  # away from a minimum
    delta = 2 * abs(lam_min) + 1.0
    prec = h + delta * torch.eye(la.n_params, dtype=DT)
    loglik = la.log_likelihood
    expected = loglik - 0.5 * (
        delta * la.mean.square().sum() + torch.logdet(prec) - la.n_params * math.log(delta)
    )
    torch.testing.assert_close(la.log_marginal_likelihood(delta), expected)
    before = la.prior_precision.clone()
    with pytest.raises(ValueError, match=r"not positive definite for this prior .* δ > "):
        la.log_marginal_likelihood(0.5 * abs(lam_min))
    assert torch.equal(la.prior_precision, before)  # a failed call changes nothing
    la.prior_precision = 0.5 * abs(lam_min)
    with pytest.raises(ValueError, match="not positive definite"):
        la(x[:2])
    la.prior_precision = delta
    la(x[:2])  # a PD prior predicts


def test_indefinite_hessian_is_announced():
    x, y = make_data("mlp", "classification", n=20)
    with pytest.warns(UserWarning, match=r"negative eigenvalue\(s\).*δ > −s·λ_min"):
        Laplace(make_mlp(), "classification", "all", "full", fisher_type="hessian").fit(
            batches(x, y)
        )


def test_diag_hutchinson_operator_and_lanczos_hessians():
    x, y = make_data("mlp", "classification", n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diag = Laplace(make_mlp(), "classification", "all", "diag", fisher_type="hessian").fit(
            batches(x, y)
        )
        op = Laplace(make_mlp(), "classification", "all", "operator", fisher_type="hessian").fit(
            batches(x, y)
        )
        hut = Laplace(
            make_mlp(),
            "classification",
            "all",
            "hutchinson",
            fisher_type="hessian",
            backend_options={"n_probes": 4000},
        ).fit(batches(x, y))
        low = Laplace(
            make_mlp(),
            "classification",
            "all",
            "lanczos",
            fisher_type="hessian",
            backend_options={"rank": 3},
        ).fit(batches(x, y))
    h = _dense_hessian(diag, x, y)
    torch.testing.assert_close(diag.structure.diagonal(), h.diagonal())
    assert (diag.structure.diagonal() < 0).any()  # kept, not clamped
    v = torch.randn(2, diag.n_params, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(op.structure.curvature_matvec(v), v @ h)
    assert (hut.structure.diagonal() - h.diagonal()).abs().max() < 0.2 * h.diagonal().abs().max()
    top = torch.linalg.eigvalsh(h).flip(0)[:3]
    torch.testing.assert_close(low.structure.lam, top.clamp_min(0), rtol=1e-6, atol=1e-8)
    lam_min = float(torch.linalg.eigvalsh(h).min())
    with pytest.raises(ValueError, match="not positive definite"):
        diag.log_marginal_likelihood(1e-3)
    with pytest.raises(ValueError, match="not positive definite"):
        op.log_marginal_likelihood(1e-3)
    assert torch.isfinite(op.log_marginal_likelihood(2 * abs(lam_min) + 1))


def test_hessian_of_a_linear_head_is_its_ggn():
    x, y = make_data("mlp", "classification", n=20)
    hess = Laplace(make_mlp(), "classification", "last_layer", "full", fisher_type="hessian").fit(
        batches(x, y)
    )
    ggn = Laplace(make_mlp(), "classification", "last_layer", "full").fit(batches(x, y))
    torch.testing.assert_close(hess.structure.curvature_dense(), ggn.structure.curvature_dense())


@pytest.mark.parametrize("structure", ["kfac", "ekfac", "block_full"])
def test_hessian_is_refused_where_not_offered(structure):
    with pytest.raises(ValueError, match="hessian"):
        x, y = make_data("mlp", "classification", n=8)
        Laplace(make_mlp(), "classification", "all", structure, fisher_type="hessian").fit(
            batches(x, y)
        )


def test_state_keeps_the_hessian_indefinite():
    x, y = make_data("mlp", "classification", n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(
            make_mlp(), "classification", "all", "full", fisher_type="hessian", prior_precision=50.0
        )
        la.fit(batches(x, y))
        again = Laplace(make_mlp(), "classification", "all", "full", fisher_type="hessian")
        again.load_state_dict(la.state_dict())
    torch.testing.assert_close(again.log_marginal_likelihood(), la.log_marginal_likelihood())
    with pytest.raises(ValueError, match="not positive definite"):
        again.log_marginal_likelihood(1e-4)
