"""Structure specifics beyond the contract (tests/structures/test_structure_contract.py): no new
factorisation per prior value, PSD clamping, refusal of non-finite curvature."""

from __future__ import annotations

import pytest
import torch

from laplacetorch.structures import Dense, Diagonal, EKron, Kron

DT = torch.float64
P = 7


def _psd(seed=0, rank=4):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(P, rank, generator=g, dtype=DT)
    return a @ a.T  # rank-deficient on purpose: the prior must carry the rest


def test_dense_scalar_prior_needs_no_new_factorisation(monkeypatch):
    """One eigendecomposition per structure, none per prior value: the eigenvalues at fit
    (all log det and its tuning need), the eigenvectors of the same matrix on first use."""
    st = Dense(_psd())
    calls = {"eigh": 0}
    real = torch.linalg.eigh

    def counted(*a, **k):
        calls["eigh"] += 1
        return real(*a, **k)

    def boom(*a, **k):
        raise AssertionError("refactorised")

    monkeypatch.setattr(torch.linalg, "eigh", counted)
    monkeypatch.setattr(torch.linalg, "eigvalsh", boom)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", boom)
    before = st.logdet(1.0, 0.5)
    assert calls["eigh"] == 0  # log det from the fit's eigenvalues
    for d in (0.1, 1.0, 10.0):
        st.logdet(d, 0.5)
        st.solve(torch.ones(P, dtype=DT), d)
        st.trace_inverse(d)
    assert calls["eigh"] == 1
    assert torch.equal(st.logdet(1.0, 0.5), before)  # the eigenvalues did not move
    torch.testing.assert_close(st.curvature_dense(), _psd())


def test_dense_keeps_round_off_eigenvalues_and_stays_finite():
    """Round-off below zero is kept (unbiased log det, as a Cholesky factor would give) while
    it is small against δ/s, and held at s·λ + δ = δ/2 beyond, so log det stays finite."""
    g = _psd() - 1e-3 * torch.eye(P, dtype=DT)  # smallest eigenvalues negative
    st = Dense(g)
    assert (st.eigenvalues < 0).any()
    torch.testing.assert_close(st.logdet(1.0), torch.logdet(g + torch.eye(P, dtype=DT)))
    torch.testing.assert_close(st.logdet(1.0, 0.5), torch.logdet(0.5 * g + torch.eye(P, dtype=DT)))
    assert (
        torch.isfinite(st.logdet(1e-6))
        and torch.isfinite(st.solve(torch.ones(P, dtype=DT), 1e-6)).all()
    )
    per_param = torch.full((P,), 1e-6, dtype=DT) * torch.linspace(1, 2, P, dtype=DT)
    assert torch.isfinite(st.logdet(per_param))


def test_dense_float32_decomposes_in_float64():
    g = _psd().float()
    st = Dense(g)
    assert st.eigenvalues.dtype == torch.float32
    exact = torch.linalg.eigvalsh(g.double())
    torch.testing.assert_close(st.eigenvalues.double(), exact, rtol=1e-6, atol=1e-6)


def test_non_finite_curvature_is_refused():
    bad = _psd()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        Dense(bad)
    with pytest.raises(ValueError, match="NaN or Inf"):
        Diagonal(bad.diagonal().clone())
    with pytest.raises(ValueError, match="finite square"):
        Kron(bad[:2, :2], torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="finite with shape"):
        EKron(torch.ones(2, 2, dtype=DT), torch.eye(2, dtype=DT), torch.eye(3, dtype=DT))


def test_ekron_has_no_factors():
    st = EKron(torch.ones(2, 3, dtype=DT), torch.eye(2, dtype=DT), torch.eye(3, dtype=DT))
    with pytest.raises(TypeError, match="no Kronecker factors"):
        st.factors()
