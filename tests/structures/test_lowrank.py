"""The LowRank structure against the dense matrix it represents."""

from __future__ import annotations

import pytest
import torch

from laplacetorch.structures import LowRank, structure_from_state_dict

DT = torch.float64
P, R = 9, 3
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])


def _lowrank(correction: bool):
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(P, R, generator=g, dtype=DT))
    lam = torch.tensor([5.0, 1.5, 0.2], dtype=DT)
    d = torch.rand(P, generator=g, dtype=DT) if correction else None
    return LowRank(u, lam, d, GROUPS)


PRIORS = {
    "scalar": torch.tensor(0.5, dtype=DT),
    "layer": torch.tensor([0.3, 1.0, 2.5], dtype=DT),
    "param": torch.linspace(0.2, 2.0, P, dtype=DT),
}


@pytest.mark.parametrize("correction", [False, True])
@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("scale", [1.0, 0.4, 3.0])
def test_lowrank_matches_dense_algebra(correction, prior, scale):
    st = _lowrank(correction)
    delta = PRIORS[prior]
    prec = st.precision_dense(delta, scale)
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(st.logdet(delta, scale), torch.logdet(prec))
    torch.testing.assert_close(st.inverse_diagonal(delta, scale), cov.diagonal())
    torch.testing.assert_close(st.trace_inverse(delta, scale), cov.trace())
    v = torch.randn(2, 4, P, generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.testing.assert_close(st.solve(v, delta, scale), v @ cov)
    jac = torch.randn(5, 2, P, generator=torch.Generator().manual_seed(2), dtype=DT)
    torch.testing.assert_close(
        st.functional_variance(jac, delta, scale), jac @ cov @ jac.transpose(1, 2)
    )
    s = st.sample(200_000, delta, scale, generator=torch.Generator().manual_seed(3))
    emp = s.T @ s / s.shape[0]
    tol = 5 * torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / s.shape[0])
    assert ((emp - cov).abs() <= tol).all()


def test_isotropic_logdet_has_p_copies_of_log_delta():
    st = _lowrank(False)
    expected = P * torch.log(torch.tensor(0.5, dtype=DT)) + torch.log1p(2.0 * st.lam / 0.5).sum()
    torch.testing.assert_close(st.logdet(0.5, 2.0), expected)


def test_lowrank_logdet_gradient_and_state_dict():
    st = _lowrank(True)
    d = PRIORS["layer"].clone().requires_grad_(True)
    s = torch.tensor(1.3, dtype=DT, requires_grad=True)
    gd, gs = torch.autograd.grad(st.logdet(d, s), (d, s))
    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=DT)
        e[i] = eps
        fd = (st.logdet(PRIORS["layer"] + e, 1.3) - st.logdet(PRIORS["layer"] - e, 1.3)) / 2 / eps
        assert float(gd[i]) == pytest.approx(float(fd), rel=1e-6)
    fd = (st.logdet(PRIORS["layer"], 1.3 + eps) - st.logdet(PRIORS["layer"], 1.3 - eps)) / 2 / eps
    assert float(gs) == pytest.approx(float(fd), rel=1e-6)
    again = structure_from_state_dict(st.state_dict())
    torch.testing.assert_close(again.logdet(0.7, 2.0), st.logdet(0.7, 2.0))


def test_lowrank_bad_shapes():
    with pytest.raises(ValueError, match=r"eigenvectors must be \[P, r\]"):
        LowRank(torch.eye(3, dtype=DT), torch.ones(2, dtype=DT))
