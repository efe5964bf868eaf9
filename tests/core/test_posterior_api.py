"""laplace-torch's posterior attributes and predictive options, against dense float64 oracles."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch.func import jacrev

from laplacetorch import Laplace

STRUCTURES = ["full", "diag", "kfac", "ekfac", "block_full", "lanczos"]


def _fitted(structure, likelihood="classification", **kw):
    x, y = make_data("mlp", likelihood, n=16)
    la = Laplace(make_mlp(), likelihood, "all", structure, **kw).fit(batches(x, y))
    return la, x


def _prior(la, kind):
    if kind == "scalar":
        return torch.tensor(0.8, dtype=DT)
    return torch.linspace(0.5, 2.0, la.subset.n_groups, dtype=DT)  # one per tensor


def _jac(la, x):
    return jacrev(lambda t: la.subset.forward(t, x))(la.mean)  # [B, C, P]


@pytest.mark.parametrize("prior", ["scalar", "tensor"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_posterior_matrices_are_the_structures(structure, prior):
    la, _ = _fitted(structure, prior_precision=0.8)
    la.prior_precision = _prior(la, prior)
    s = la.scale()
    st = la.structure
    prec = st.precision_dense(la.prior_precision, s)
    if not st.is_exact(la.prior_precision):
        pytest.skip("an estimate for this prior (documented)")
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(la.posterior_precision.to_dense(), prec)
    torch.testing.assert_close(la.posterior_covariance.to_dense(), cov)
    v = torch.randn(la.n_params, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(la.posterior_precision @ v, prec @ v)
    torch.testing.assert_close(la.posterior_covariance @ v[:, 0], cov @ v[:, 0])
    scale = la.posterior_scale.to_dense()
    torch.testing.assert_close(scale @ scale.T, cov)
    torch.testing.assert_close(la.posterior_variance, cov.diagonal())
    torch.testing.assert_close(la.posterior_covariance.diagonal(), cov.diagonal())
    torch.testing.assert_close(la.posterior_precision.diagonal(), prec.diagonal())
    torch.testing.assert_close(la.H.to_dense(), st.curvature_dense())
    torch.testing.assert_close(la.posterior_precision.logdet(), torch.logdet(prec))
    torch.testing.assert_close(la.posterior_covariance.logdet(), -torch.logdet(prec))
    d = la.prior_precision_diag
    assert d.shape == (la.n_params,)
    torch.testing.assert_close(la.log_det_prior_precision, d.log().sum())
    torch.testing.assert_close(la.log_det_posterior_precision, torch.logdet(prec))
    torch.testing.assert_close(la.log_det_ratio, torch.logdet(prec) - d.log().sum())
    torch.testing.assert_close(la.scatter, (d * la.mean.square()).sum())
    expected = la.log_likelihood - 0.5 * (la.scatter + la.log_det_ratio)
    torch.testing.assert_close(la.log_marginal_likelihood(), expected)
    assert "PosteriorMatrix(precision" in repr(la.posterior_precision)


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_log_prob_is_the_gaussian_density(structure):
    la, _ = _fitted(structure, prior_precision=1.3)
    prec = la.structure.precision_dense(la.prior_precision, la.scale())
    dist = torch.distributions.MultivariateNormal(la.mean, precision_matrix=prec)
    g = torch.Generator().manual_seed(2)
    values = la.mean + 0.1 * torch.randn(4, la.n_params, generator=g, dtype=DT)
    torch.testing.assert_close(la.log_prob(values), dist.log_prob(values))
    torch.testing.assert_close(la.log_prob(values[0]), dist.log_prob(values[0]))
    quad = ((values - la.mean) @ prec * (values - la.mean)).sum(-1)
    torch.testing.assert_close(la.log_prob(values, normalized=False), -0.5 * quad)
    torch.testing.assert_close(la.square_norm(values), quad)
    with pytest.raises(ValueError, match=rf"value must have shape \[..., {la.n_params}\]"):
        la.log_prob(values[:, :3])
    with pytest.raises(ValueError, match="NaN or Inf"):
        la.log_prob(torch.full((la.n_params,), math.nan, dtype=DT))


@pytest.mark.parametrize("structure", ["full", "kfac", "lanczos"])
def test_functional_variance_and_covariance_of_given_jacobians(structure):
    la, x = _fitted(structure, prior_precision=0.9)
    cov = torch.linalg.inv(la.structure.precision_dense(la.prior_precision, la.scale()))
    js = _jac(la, x[:5])
    expected = js @ cov @ js.transpose(1, 2)
    torch.testing.assert_close(la.functional_variance(js), expected)
    flat = js.reshape(-1, la.n_params)
    joint = la.functional_covariance(flat)
    torch.testing.assert_close(joint, flat @ cov @ flat.T)
    torch.testing.assert_close(la.functional_covariance(js), joint)
    with pytest.raises(ValueError, match=r"Js must have shape \[B·C"):
        la.functional_covariance(flat[:, :4])


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_joint_regression_predictive(structure):
    """laplace-torch's README: the joint mean flattens the marginal one, the joint covariance
    has the marginal ones on its diagonal blocks and the dense J Σ Jᵀ off them."""
    la, x = _fitted(structure, "regression", sigma_noise=0.6)
    xs = x[:6]
    f_mu, f_var = la(xs)
    mu_joint, cov_joint = la(xs, joint=True)
    assert mu_joint.shape == (18,) and cov_joint.shape == (18, 18)
    torch.testing.assert_close(mu_joint, f_mu.flatten())
    blocks = cov_joint.view(6, 3, 6, 3).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    torch.testing.assert_close(blocks, f_var)
    cov = torch.linalg.inv(la.structure.precision_dense(la.prior_precision, la.scale()))
    flat = _jac(la, xs).reshape(18, -1)
    torch.testing.assert_close(cov_joint, flat @ cov @ flat.T)
    assert torch.equal(la(xs, "glm", True)[1], cov_joint)  # laplace-torch's argument order
    _, diag_var = la(xs, diagonal_output=True)
    torch.testing.assert_close(diag_var, f_var.diagonal(dim1=-2, dim2=-1))


def test_diagonal_output_with_the_mc_link_samples_independent_outputs():
    """Classification, ``mc`` link: with ``diagonal_output`` the logits are drawn from
    N(μ, diag Σ) (Monte-Carlo ground truth), not from N(μ, Σ)."""
    la, x = _fitted("full", prior_precision=0.05)
    xs = x[:4]
    mean, var = la.glm_moments(xs)
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(200_000, *mean.shape, generator=g, dtype=DT)
    truth = torch.softmax(mean + eps * var.diagonal(dim1=-2, dim2=-1).sqrt(), -1).mean(0)
    chol = torch.linalg.cholesky(var)
    joint = torch.softmax(mean + torch.einsum("bij,sbj->sbi", chol, eps), -1).mean(0)
    assert (truth - joint).abs().max() > 0.1  # the covariances matter on this net
    gen = torch.Generator().manual_seed(6)
    got = la(xs, link_approx="mc", n_samples=50_000, diagonal_output=True, generator=gen)
    torch.testing.assert_close(got, truth, atol=0.02, rtol=0)  # MC noise ≈ 0.007


def test_joint_is_refused_where_laplace_torch_ignores_it():
    la, x = _fitted("full")
    with pytest.raises(ValueError, match=r"joint=True is the regression glm predictive"):
        la(x, joint=True)
    mean, cov = la.glm_moments(x[:4], joint=True)  # any likelihood: the covariance of f
    assert mean.shape == (12,) and cov.shape == (12, 12)
    la_r, xr = _fitted("full", "regression")
    with pytest.raises(ValueError, match="joint=True"):
        la_r(xr, pred_type="nn", joint=True)


def test_functional_and_predictive_samples_follow_the_glm_moments():
    la, x = _fitted("full")
    xs = x[:3]
    mean, var = la.glm_moments(xs)
    g = torch.Generator().manual_seed(3)
    fs = la.functional_samples(xs, n_samples=40_000, generator=g)
    assert fs.shape == (40_000, 3, 3)
    torch.testing.assert_close(fs.mean(0), mean, atol=0.05, rtol=0)
    emp = torch.einsum("sbi,sbj->bij", fs - mean, fs - mean) / fs.shape[0]
    torch.testing.assert_close(emp, var, atol=0.05, rtol=0.05)
    fd = la.functional_samples(xs, n_samples=40_000, diagonal_output=True, generator=g)
    off = torch.einsum("sbi,sbj->bij", fd - mean, fd - mean) / fd.shape[0]
    torch.testing.assert_close(
        off, torch.diag_embed(var.diagonal(dim1=-2, dim2=-1)), atol=0.05, rtol=0.05
    )
    ps = la.predictive_samples(xs, n_samples=5, generator=g)
    torch.testing.assert_close(ps.sum(-1), torch.ones(5, 3, dtype=DT))
    nn_fs = la.functional_samples(xs, pred_type="nn", n_samples=7, generator=g)
    assert nn_fs.shape == (7, 3, 3)


class Scaled(torch.nn.Module):
    """f(x; scale) = scale · net(x): a keyword argument of the forward pass."""

    def __init__(self):
        super().__init__()
        self.net = make_mlp()

    def forward(self, x, scale=1.0):
        return self.net(x) * scale


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_model_kwargs_reach_every_model_call(structure):
    """With f_s = s·f, J_s = s·J: the glm predictive at scale s is probit(s·μ, s²·Σ_f)."""
    from laplacetorch.links import probit

    x, y = make_data("mlp", "classification", n=16)
    la = Laplace(Scaled().eval(), "classification", "all", structure).fit(batches(x, y))
    mean, var = la.glm_moments(x[:4])
    torch.testing.assert_close(la(x[:4], scale=2.0), probit(2 * mean, 4 * var))
    g = torch.Generator().manual_seed(0)
    fs = la.functional_samples(x[:4], pred_type="nn", n_samples=5, generator=g)
    g = torch.Generator().manual_seed(0)
    nn_probs = la(x[:4], pred_type="nn", n_samples=5, generator=g, scale=2.0)
    torch.testing.assert_close(nn_probs, torch.softmax(2 * fs, -1).mean(0))
    with pytest.raises(
        TypeError, match="'mask' is a tensor; pass per-example tensors in a mapping"
    ):
        la(x[:4], mask=torch.ones(4))
