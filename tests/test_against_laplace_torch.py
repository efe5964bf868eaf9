"""Optional: the same trained MLP through laplace-torch (skipped when it is not installed).

laplace-torch runs with its BackPACK backend on a deep copy of the model (its default
curvlinops backend fails with curvlinops 3; BackPACK's hooks would break torch.func on the
original module).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

laplace = pytest.importorskip("laplace")
from laplace.curvature import BackPackGGN  # noqa: E402

from laplacetorch import Laplace  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data[:300], dtype=torch.float64) / 16.0
    y = torch.as_tensor(data.target[:300], dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    return model.eval(), loader, x[:40]


@pytest.mark.parametrize("subset", ["last_layer", "all"])
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_marglik_and_glm_predictive_match_laplace_torch(trained, subset, structure):
    model, loader, xs = trained
    ours = Laplace(model, "classification", subset, structure, prior_precision=1.7).fit(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = laplace.Laplace(
            copy.deepcopy(model),
            "classification",
            subset_of_weights=subset,
            hessian_structure=structure,
            prior_precision=1.7,
            backend=BackPackGGN,
        )
        theirs.fit(loader)
        ref_lml = float(theirs.log_marginal_likelihood())
        ref_pred = theirs(xs, pred_type="glm", link_approx="probit")
    assert float(ours.log_marginal_likelihood()) == pytest.approx(ref_lml, rel=1e-4)
    torch.testing.assert_close(ours(xs), ref_pred.to(torch.float64), rtol=1e-4, atol=1e-6)
