"""Dense and Diagonal structures against dense float64 linear algebra."""

from __future__ import annotations

import pytest
import torch

from laplacetorch.structures import Dense, Diagonal, structure_from_state_dict

DT = torch.float64
P = 7
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 2])


def _psd(seed=0, rank=4):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(P, rank, generator=g, dtype=DT)
    return a @ a.T  # rank-deficient on purpose: the prior must carry the rest


def _make(kind):
    g = _psd()
    if kind == "dense":
        return Dense(g, GROUPS), g
    d = g.diagonal().clone()
    return Diagonal(d, GROUPS), torch.diag(d)


PRIORS = {
    "scalar": torch.tensor(0.7, dtype=DT),
    "layer": torch.tensor([0.5, 2.0, 1.3], dtype=DT),
    "param": torch.linspace(0.3, 3.0, P, dtype=DT),
}


def _dense_prior(name):
    d = PRIORS[name]
    if name == "scalar":
        return torch.full((P,), float(d), dtype=DT)
    return d[GROUPS] if name == "layer" else d


@pytest.fixture(params=["dense", "diag"])
def kind(request):
    return request.param


@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_quantities_match_dense_algebra(kind, prior, scale):
    st, g = _make(kind)
    prec = scale * g + torch.diag(_dense_prior(prior))
    cov = torch.linalg.inv(prec)
    delta = PRIORS[prior]
    torch.testing.assert_close(st.precision_dense(delta, scale), prec)
    torch.testing.assert_close(st.logdet(delta, scale), torch.logdet(prec))
    torch.testing.assert_close(st.trace_inverse(delta, scale), cov.trace())
    torch.testing.assert_close(st.inverse_diagonal(delta, scale), cov.diagonal())
    v = torch.randn(2, 5, P, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(st.solve(v, delta, scale), v @ cov)
    jac = torch.randn(4, 3, P, generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.testing.assert_close(
        st.functional_variance(jac, delta, scale), jac @ cov @ jac.transpose(1, 2)
    )


@pytest.mark.parametrize("prior", list(PRIORS))
def test_sample_covariance(kind, prior):
    st, g = _make(kind)
    scale = 2.0
    cov = torch.linalg.inv(scale * g + torch.diag(_dense_prior(prior)))
    n = 200_000
    s = st.sample(n, PRIORS[prior], scale, generator=torch.Generator().manual_seed(5))
    assert s.shape == (n, P)
    emp = s.T @ s / n
    # Monte-Carlo error of a covariance entry ~ sqrt((Σii Σjj + Σij²)/n)
    tol = 5 * torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n)
    assert ((emp - cov).abs() <= tol).all()
    assert s.mean(0).abs().max() < 5 * cov.diagonal().max().sqrt() / n**0.5


def test_sampling_is_reproducible_and_leaves_global_rng_alone(kind):
    st, _ = _make(kind)
    state = torch.random.get_rng_state()
    a = st.sample(3, 1.0, generator=torch.Generator().manual_seed(9))
    b = st.sample(3, 1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("prior", list(PRIORS))
def test_logdet_gradient_matches_finite_differences(kind, prior):
    st, _ = _make(kind)
    delta = PRIORS[prior].clone().requires_grad_(True)
    scale = torch.tensor(1.7, dtype=DT, requires_grad=True)
    gd, gs = torch.autograd.grad(st.logdet(delta, scale), (delta, scale))
    eps = 1e-6
    flat = delta.detach().reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        up = st.logdet((flat + e).reshape(delta.shape), scale.detach())
        dn = st.logdet((flat - e).reshape(delta.shape), scale.detach())
        torch.testing.assert_close(gd.reshape(-1)[i], (up - dn) / (2 * eps), rtol=1e-6, atol=1e-8)
    up = st.logdet(delta.detach(), scale.detach() + eps)
    dn = st.logdet(delta.detach(), scale.detach() - eps)
    torch.testing.assert_close(gs, (up - dn) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_state_dict_round_trip(kind):
    st, _ = _make(kind)
    state = st.state_dict()
    again = structure_from_state_dict(state)
    assert type(again) is type(st)
    for prior in PRIORS.values():
        torch.testing.assert_close(again.logdet(prior, 2.0), st.logdet(prior, 2.0))
    other = Dense(_psd(1), GROUPS) if kind == "diag" else Diagonal(torch.ones(P, dtype=DT))
    with pytest.raises(ValueError, match="state is of structure"):
        other.load_state_dict(state)
    small = type(st)(torch.eye(3, dtype=DT) if kind == "dense" else torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="parameters"):
        small.load_state_dict(state)


def test_dense_scalar_prior_needs_no_new_factorisation(monkeypatch):
    st, _ = _make("dense")
    st.logdet(1.0)

    def boom(*a, **k):
        raise AssertionError("refactorised")

    monkeypatch.setattr(torch.linalg, "eigh", boom)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", boom)
    for d in (0.1, 1.0, 10.0):
        st.logdet(d, 0.5)
        st.solve(torch.ones(P, dtype=DT), d)
        st.trace_inverse(d)


def test_dense_clamps_round_off_negative_eigenvalues():
    g = _psd()
    g = g - 1e-12 * torch.eye(P, dtype=DT)  # smallest eigenvalues slightly negative
    st = Dense(g)
    assert (st.eigenvalues >= 0).all()
    assert torch.isfinite(st.logdet(1e-6))


@pytest.mark.parametrize(
    ("prior", "match"),
    [
        (0.0, "positive and finite"),
        (-1.0, "positive and finite"),
        (float("nan"), "positive and finite"),
        (torch.ones(4, dtype=DT), r"1, 3 \(one per layer\) or 7"),
        (torch.ones(2, 3, dtype=DT), "entries"),
    ],
)
def test_bad_prior_is_refused(kind, prior, match):
    st, _ = _make(kind)
    with pytest.raises(ValueError, match=match):
        st.logdet(prior)


def test_bad_prior_type_and_scale_and_shapes(kind):
    st, _ = _make(kind)
    with pytest.raises(TypeError, match="prior_precision must be a float or a tensor"):
        st.logdet("big")
    with pytest.raises(ValueError, match="likelihood scale"):
        st.logdet(1.0, scale=0.0)
    with pytest.raises(ValueError, match=r"v must have shape \[..., 7\]"):
        st.solve(torch.ones(3, dtype=DT), 1.0)
    with pytest.raises(ValueError, match=r"J must have shape \[B, C, 7\]"):
        st.functional_variance(torch.ones(2, 7, dtype=DT), 1.0)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        st.sample(0, 1.0)


def test_non_finite_curvature_is_refused():
    bad = _psd()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        Dense(bad)
    with pytest.raises(ValueError, match="NaN or Inf"):
        Diagonal(bad.diagonal().clone())


@pytest.mark.parametrize("prior", list(PRIORS))
def test_linear_head_fast_path_equals_dense_jacobian(kind, prior):
    # a head with C = 2 outputs and D̃ = 3 augmented features on 6 of the 7 parameters
    st, g = _make(kind)
    index = torch.tensor([[0, 1, 5], [2, 3, 6]])
    phi = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    jac = torch.zeros(4, 2, P, dtype=DT)
    for c in range(2):
        jac[:, c, index[c]] = phi
    cov = torch.linalg.inv(1.3 * g + torch.diag(_dense_prior(prior)))
    torch.testing.assert_close(
        st.functional_variance_head(phi, index, PRIORS[prior], 1.3), jac @ cov @ jac.transpose(1, 2)
    )
