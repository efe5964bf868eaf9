"""Model selection by the Laplace evidence on tasks with a known right answer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from laplacetorch.selection import select_model

DT = torch.float64


class Poly(nn.Module):
    """y = Σₖ wₖ xᵏ + b for k = 1..degree: linear in its weights."""

    def __init__(self, degree: int):
        super().__init__()
        self.degree = degree
        self.head = nn.Linear(degree, 1).to(DT)

    def forward(self, x):
        return self.head(torch.cat([x**k for k in range(1, self.degree + 1)], dim=1))


def _fit_map(model: Poly, x, y, delta=1e-2, sigma=0.1):
    """The exact MAP of the ridge problem (prior δ, noise σ)."""
    phi = torch.cat([x**k for k in range(1, model.degree + 1)] + [torch.ones_like(x)], dim=1)
    a = phi.T @ phi / sigma**2 + delta * torch.eye(phi.shape[1], dtype=DT)
    w = torch.linalg.solve(a, phi.T @ y / sigma**2)
    with torch.no_grad():
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    return model.eval()


def test_evidence_picks_the_true_polynomial_degree():
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(200, 1, generator=g, dtype=DT) - 1
    y = 1 - 2 * x + 3 * x**3 + 0.1 * torch.randn(200, 1, generator=g, dtype=DT)
    loader = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]
    candidates = {f"degree {d}": _fit_map(Poly(d), x, y) for d in range(1, 7)}
    res = select_model(candidates, "regression", loader, hessian_structure="full")
    assert res.best.name == "degree 3"
    assert [c.name for c in res.ranking][:1] == ["degree 3"]
    lml = {c.name: c.log_marginal_likelihood for c in res.ranking}
    # under-fitting is punished by the likelihood, over-fitting by the Occam factor
    assert lml["degree 3"] > lml["degree 2"] + 10
    assert lml["degree 3"] > lml["degree 6"]
    assert abs(res.best.sigma_noise - 0.1) < 0.02
    assert "degree 3" in res.table().splitlines()[1]


def test_bad_candidates():
    with pytest.raises(ValueError, match="non-empty mapping"):
        select_model({}, "regression", [])
    with pytest.raises(ValueError, match="is not an nn.Module"):
        select_model({"a": 3}, "regression", [])
