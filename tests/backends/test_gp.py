"""hessian_structure="gp": the GP view on a subset of data, against the weight-space full
Laplace (Sylvester, Woodbury) in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch.func import jacrev

from laplacetorch import Laplace


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_all_points_equal_the_full_laplace(likelihood, subset):
    x, y = make_data("mlp", likelihood, n=14)
    kw = {"sigma_noise": 0.7} if likelihood == "regression" else {}
    gp = Laplace(make_mlp(), likelihood, subset, "gp", prior_precision=0.8, **kw).fit(batches(x, y))
    full = Laplace(make_mlp(), likelihood, subset, "full", prior_precision=0.8, **kw).fit(
        batches(x, y)
    )
    assert gp.structure.rank <= 14 * 3 < gp.n_params or subset == "last_layer"
    torch.testing.assert_close(
        gp.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-10, atol=1e-8
    )
    d = torch.tensor(0.8, dtype=DT, requires_grad=True)
    s = torch.tensor(0.7, dtype=DT, requires_grad=True)
    sig = s if likelihood == "regression" else None
    g1 = torch.autograd.grad(gp.evidence(d, sig), [d] + ([s] if sig is not None else []))
    g2 = torch.autograd.grad(full.evidence(d, sig), [d] + ([s] if sig is not None else []))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    xs = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    torch.testing.assert_close(
        gp.glm_moments(xs)[1], full.glm_moments(xs)[1], rtol=1e-8, atol=1e-10
    )
    if likelihood == "classification":
        torch.testing.assert_close(gp(xs), full(xs), rtol=1e-8, atol=1e-10)
    r1 = gp.optimize_prior_precision(method="marglik", tune_sigma=likelihood == "regression")
    r2 = full.optimize_prior_precision(method="marglik", tune_sigma=likelihood == "regression")
    torch.testing.assert_close(r1.prior_precision, r2.prior_precision, rtol=1e-6, atol=0)
    torch.testing.assert_close(r1.sigma_noise, r2.sigma_noise, rtol=1e-6, atol=0)
    layer = torch.linspace(0.5, 2.0, gp.subset.n_groups, dtype=DT)  # exact for any prior
    torch.testing.assert_close(gp.evidence(layer), full.evidence(layer), rtol=1e-10, atol=1e-8)


def test_a_subset_is_the_curvature_of_its_points_and_the_fit_of_all():
    x, y = make_data("mlp", "classification", n=20)
    gp = Laplace(
        make_mlp(), "classification", "all", "gp", backend_options={"n_subset": 7, "seed": 3}
    )
    gp.fit(batches(x, y))
    assert gp.n_data == 20
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:7].sort().values
    on_subset = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x[idx], y[idx]))
    torch.testing.assert_close(
        gp.structure.curvature_dense(), on_subset.structure.curvature_dense()
    )
    everything = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    torch.testing.assert_close(gp.log_likelihood, everything.log_likelihood)  # all N points
    again = Laplace(
        make_mlp(), "classification", "all", "gp", backend_options={"n_subset": 7, "seed": 3}
    )
    torch.testing.assert_close(
        again.fit(batches(x, y)).structure.curvature_dense(), gp.structure.curvature_dense()
    )
    scaled = Laplace(
        make_mlp(),
        "classification",
        "all",
        "gp",
        backend_options={"subset_indices": idx, "prior_subset_scaling": True},
    ).fit(batches(x, y))
    torch.testing.assert_close(scaled.structure.curvature_dense(), gp.structure.curvature_dense())
    # the GP prior covariance times M/N: the weight-space posterior of the points at δ·N/M
    delta = torch.tensor(0.6, dtype=DT)
    torch.testing.assert_close(
        scaled.structure.logdet(scaled.prior_at(delta), 1.0),
        on_subset.structure.logdet(delta * 20 / 7, 1.0),
    )
    torch.testing.assert_close(
        scaled.glm_moments(x[:3], delta)[1], on_subset.glm_moments(x[:3], delta * 20 / 7)[1]
    )
    # its evidence: that of the points' posterior at δ·N/M, with the data fit of all N
    shift = everything.log_likelihood - on_subset.log_likelihood
    torch.testing.assert_close(scaled.evidence(delta), on_subset.evidence(delta * 20 / 7) + shift)


def _scaled_gp(likelihood="classification"):
    """A subset-of-data GP with laplace-torch's prior scaling (c = N/M = 20/7)."""
    x, y = make_data("mlp", likelihood, n=20)
    opts = {"n_subset": 7, "seed": 3, "prior_subset_scaling": True}
    kw = {"sigma_noise": 0.8} if likelihood == "regression" else {}
    la = Laplace(make_mlp(), likelihood, "all", "gp", prior_precision=0.6, backend_options=opts)
    return la.fit(batches(x, y)), x, y, kw


def test_the_prior_factor_survives_a_save_and_load():
    la, *_ = _scaled_gp()
    before = la.log_marginal_likelihood()
    other = Laplace(
        make_mlp(),
        "classification",
        "all",
        "gp",
        backend_options={"n_subset": 7, "seed": 3, "prior_subset_scaling": True},
    )
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other.log_marginal_likelihood(), before)
    torch.testing.assert_close(other.log_det_prior_precision, la.log_det_prior_precision)
    assert other.prior.factor == pytest.approx(20 / 7)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_mackay_with_the_prior_factor_is_a_stationary_point_of_the_evidence(likelihood):
    la, *_ = _scaled_gp(likelihood)
    res = la.optimize_prior_precision(method="mackay")
    log_d = res.prior_precision.log().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(la.evidence(log_d.exp()), log_d)
    assert abs(float(grad)) < 1e-6
    ml = la.optimize_prior_precision(method="marglik")
    torch.testing.assert_close(ml.prior_precision, res.prior_precision, rtol=1e-5, atol=0)


def test_posterior_precision_views_agree_with_their_dense_form_under_the_factor():
    la, *_ = _scaled_gp()
    prec = la.posterior_precision
    dense = prec.to_dense()
    torch.testing.assert_close(prec.diagonal(), dense.diagonal())
    torch.testing.assert_close(
        la.prior_precision_diag, torch.full((la.n_params,), 0.6 * 20 / 7, dtype=DT)
    )
    torch.testing.assert_close(prec.logdet(), torch.linalg.slogdet(dense)[1])
    cov = la.posterior_covariance
    torch.testing.assert_close(cov.to_dense() @ dense, torch.eye(la.n_params, dtype=DT))
    torch.testing.assert_close(cov.diagonal(), torch.linalg.inv(dense).diagonal())


def test_a_shuffled_loader_gives_the_same_subset_as_an_unshuffled_one():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_data("mlp", "classification", n=20)
    opts = {"n_subset": 7, "seed": 3}
    fits = []
    for shuffle in (False, True):
        loader = DataLoader(
            TensorDataset(x, y), batch_size=6, shuffle=shuffle, generator=torch.Generator()
        )
        la = Laplace(make_mlp(), "classification", "all", "gp", backend_options=opts)
        fits.append(la.fit(loader))
    torch.testing.assert_close(
        fits[0].structure.curvature_dense(), fits[1].structure.curvature_dense()
    )
    torch.testing.assert_close(fits[0](x[:4]), fits[1](x[:4]))
    torch.testing.assert_close(fits[0].log_marginal_likelihood(), fits[1].log_marginal_likelihood())
    # the points are the dataset's indices drawn from the seed, whatever the loader's order
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:7].sort().values
    on_subset = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x[idx], y[idx]))
    torch.testing.assert_close(
        fits[1].structure.curvature_dense(), on_subset.structure.curvature_dense()
    )


def test_diagonal_softmax_hessian_option():
    x, y = make_data("mlp", "classification", n=10)
    gp = Laplace(
        make_mlp(), "classification", "all", "gp", backend_options={"diagonal_hessian": True}
    )
    gp.fit(batches(x, y))
    jac = jacrev(lambda t: gp.subset.forward(t, x))(gp.mean)  # [N, C, P]
    p = torch.softmax(gp.subset.forward(gp.mean, x), -1)
    expected = torch.einsum("ncp,nc,ncq->pq", jac, p * (1 - p), jac)
    torch.testing.assert_close(gp.structure.curvature_dense(), expected)


def test_bad_gp_options_are_refused():
    x, y = make_data("mlp", "classification", n=10)
    for m in (0, 11, 2.5):
        with pytest.raises(ValueError, match=r"n_subset must be an integer in \[1, N = 10\]"):
            Laplace(make_mlp(), "classification", "all", "gp", backend_options={"n_subset": m}).fit(
                batches(x, y)
            )
    with pytest.raises(ValueError, match="passes over the data more than once|one-shot"):
        Laplace(make_mlp(), "classification", "all", "gp", backend_options={"n_subset": 5}).fit(
            iter(batches(x, y))
        )
    with pytest.raises(ValueError, match="unknown backend option 'inducing_points' for hessian"):
        Laplace(make_mlp(), "classification", "all", "gp", backend_options={"inducing_points": 4})
    with pytest.raises(ValueError, match="diagonal_hessian approximates the GGN"):
        Laplace(
            make_mlp(),
            "classification",
            "all",
            "gp",
            fisher_type="empirical",
            backend_options={"diagonal_hessian": True},
        ).fit(batches(x, y))


def test_the_kernel_is_built_in_chunks_and_rows_are_never_all_held():
    """A budget of a few rows gives many chunks of W and the same answers."""
    x, y = make_data("mlp", "classification", n=14)
    small = Laplace(make_mlp(), "classification", "all", "gp", memory_budget=4 * 3 * 83 * 8)
    small.fit(batches(x, y))
    big = Laplace(make_mlp(), "classification", "all", "gp").fit(batches(x, y))
    chunks = [w.shape[0] for w in small.structure.rows()]
    assert len(chunks) > 3 and max(chunks) <= 2 * 3  # two examples (K = 3 rows each) a chunk
    torch.testing.assert_close(small.log_marginal_likelihood(), big.log_marginal_likelihood())
    xs = x[:4]
    torch.testing.assert_close(small(xs), big(xs))
    torch.testing.assert_close(small.posterior_variance, big.posterior_variance)
    again = Laplace(make_mlp(), "classification", "all", "gp")
    again.load_state_dict(big.state_dict())
    torch.testing.assert_close(again.log_marginal_likelihood(), big.log_marginal_likelihood())


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_independent_outputs_are_one_gp_per_output(likelihood):
    """Output c: Π_c = s Σₙ λₙ꜀ Jₙ꜀ᵀ Jₙ꜀ + δ I; the evidence's log-det ratio sums over outputs and
    the predictive has no covariance between outputs."""
    x, y = make_data("mlp", likelihood, n=10)
    kw = {"sigma_noise": 0.7} if likelihood == "regression" else {}
    la = Laplace(
        make_mlp(),
        likelihood,
        "all",
        "gp",
        prior_precision=0.8,
        backend_options={"independent_outputs": True},
        **kw,
    ).fit(batches(x, y))
    jac = jacrev(lambda t: la.subset.forward(t, x))(la.mean)  # [N, C, P]
    f = la.subset.forward(la.mean, x)
    lam = la.likelihood.output_hessian(f, None).diagonal(dim1=-2, dim2=-1)  # [N, C]
    s, p = float(la.scale()), la.n_params
    precs = [
        s * torch.einsum("np,n,nq->pq", jac[:, c], lam[:, c], jac[:, c])
        + 0.8 * torch.eye(p, dtype=DT)
        for c in range(3)
    ]
    ratio = sum(torch.logdet(pc) - p * torch.log(torch.tensor(0.8, dtype=DT)) for pc in precs)
    expected = la.log_likelihood - 0.5 * (0.8 * la.mean.square().sum() + ratio)
    torch.testing.assert_close(la.log_marginal_likelihood(), expected)
    xs = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    js = jacrev(lambda t: la.subset.forward(t, xs))(la.mean)
    var = torch.stack(
        [
            torch.einsum("bp,pq,bq->b", js[:, c], torch.linalg.inv(precs[c]), js[:, c])
            for c in range(3)
        ],
        -1,
    )
    torch.testing.assert_close(la.glm_moments(xs)[1], torch.diag_embed(var))
    la.optimize_prior_precision(method="marglik")  # the evidence is differentiable in δ
    with pytest.raises(ValueError, match="not defined for independent outputs"):
        la(xs, pred_type="nn")
    with pytest.raises(ValueError, match="one scalar prior precision"):
        la.log_marginal_likelihood(torch.ones(la.subset.n_groups, dtype=DT))
    with pytest.raises(ValueError, match="a saved state is not defined"):
        la.state_dict()
