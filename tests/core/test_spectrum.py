"""curvature_spectrum: top eigenvalues and the SLQ spectral density, against eigvalsh."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp

from laplacetorch import Laplace, curvature_spectrum
from laplacetorch.structures import Dense


def test_top_eigenvalues_and_density_of_a_known_spectrum():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=DT))[0]
    lam = torch.cat(
        [torch.tensor([50.0, 20.0, 9.0], dtype=DT), torch.rand(57, generator=g, dtype=DT)]
    )
    st = Dense((q * lam) @ q.T)
    grid = torch.linspace(-1.0, 55.0, 4_001, dtype=DT)
    sp = curvature_spectrum(st, top=3, n_probes=150, n_steps=30, grid=grid, width=0.03)
    torch.testing.assert_close(
        sp.top_eigenvalues, torch.tensor([50.0, 20.0, 9.0], dtype=DT), rtol=1e-6, atol=0
    )
    step = sp.grid[1] - sp.grid[0]
    assert float(sp.density.sum() * step) == pytest.approx(1.0, abs=0.01)
    mean = float((sp.grid * sp.density).sum() * step)
    assert mean == pytest.approx(float(lam.mean()), rel=0.1)  # tr(G)/P
    # most of the mass is in [0, 1] where 57 of the 60 eigenvalues are
    inside = (sp.grid >= -0.1) & (sp.grid <= 1.1)
    assert float(sp.density[inside].sum() * step) == pytest.approx(57 / 60, abs=0.05)


@pytest.mark.parametrize("structure", ["full", "kfac", "operator"])
def test_spectrum_of_a_fitted_laplace(structure):
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(make_mlp(), "classification", "all", structure).fit(batches(x, y))
    sp = curvature_spectrum(la, top=4, n_probes=4, n_steps=20)
    dense = la.structure.curvature_dense() if structure != "operator" else None
    if dense is not None:
        exact = torch.linalg.eigvalsh(dense).flip(0)[: sp.top_eigenvalues.numel()]
        torch.testing.assert_close(sp.top_eigenvalues, exact, rtol=1e-5, atol=1e-8)
    assert sp.top_eigenvectors.shape == (la.n_params, sp.top_eigenvalues.numel())
    with pytest.raises(TypeError, match="a fitted Laplace or a Structure"):
        curvature_spectrum("G")
    with pytest.raises(ValueError, match="top must be a positive integer"):
        curvature_spectrum(la, top=0)
