"""``block_full``: the exact GGN / empirical Fisher within each layer, through Laplace."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import batches, dense_ef, dense_ggn, make_cnn, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace, ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_block_full
from laplacetorch.structures import BlockDiagonal, Dense, Diagonal

DT = torch.float64


def _norm_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)).to(DT).eval()


def _within_blocks(g: torch.Tensor, structure: BlockDiagonal) -> torch.Tensor:
    out = torch.zeros_like(g)
    for _, index, blk in structure.blocks:
        if isinstance(blk, Dense):
            out[index[:, None], index[None]] = g[index[:, None], index[None]]
        else:
            out[index, index] = g[index, index]
    return out


# a 1-byte budget makes every example its own chunk of a block's rows
@pytest.mark.parametrize("budget", [{}, {"memory_budget": 1}], ids=["default", "1 byte"])
@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
@pytest.mark.parametrize("net", ["mlp", "cnn", "norm"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_blocks_are_the_exact_curvature_within_layers(net, likelihood, fisher_type, budget):
    model = {"mlp": make_mlp, "cnn": make_cnn, "norm": _norm_net}[net]()
    x, y = make_data("cnn" if net == "cnn" else "mlp", likelihood, n=9)
    sub = ParameterSubset(model, "all")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = fit_block_full(
            sub, get_likelihood(likelihood), batches(x, y, 4), fisher_type=fisher_type, **budget
        )
    assert any("diagonal block" in str(w.message) for w in seen) == (net == "norm")
    st = res.structure
    kinds = [type(b) for _, _, b in st.blocks]
    assert kinds.count(Dense) == 3 if net != "norm" else kinds.count(Dense) == 2
    assert kinds.count(Diagonal) == (2 if net == "norm" else 0)
    oracle = (dense_ggn if fisher_type == "exact" else dense_ef)(sub, x, y, likelihood)
    torch.testing.assert_close(st.curvature_dense(), _within_blocks(oracle, st))


@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_through_laplace_every_prior_is_exact(subset):
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(model, "classification", subset, "block_full").fit(batches(x, y))
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    loglik = -F.cross_entropy(model(x), y, reduction="sum").detach()
    n_groups = la.subset.n_groups
    for delta in (
        torch.tensor(0.8, dtype=DT),
        torch.linspace(0.5, 2.0, n_groups, dtype=DT),
        torch.linspace(0.3, 3.0, la.n_params, dtype=DT),
    ):
        assert la.structure.is_exact(delta)
        prec = la.structure.precision_dense(delta, 1.0)
        d = delta.expand(la.n_params) if delta.numel() == 1 else delta
        if 1 < delta.numel() == n_groups != la.n_params:
            d = delta[la.subset.group_index]
        expected = loglik - 0.5 * (
            (d * la.mean.square()).sum() + torch.logdet(prec) - d.log().sum()
        )
        torch.testing.assert_close(la.log_marginal_likelihood(delta), expected)
        _, var = la.glm_moments(x, prior_precision=delta)
        torch.testing.assert_close(var, jac @ torch.linalg.inv(prec) @ jac.transpose(1, 2))
    res = la.optimize_prior_precision(method="marglik", prior_structure="layerwise")
    assert res.exact
    other = Laplace(make_mlp(), "classification", subset, "block_full")
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other(x), la(x))


def test_too_large_blocks_are_refused_before_any_pass():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    la = Laplace(model, "classification", "all", "block_full", memory_limit=3000)
    with pytest.raises(ValueError, match=r"block_full needs [\d.]+ KB for P = 83, .*diag needs"):
        la.fit(batches(x, y))
    assert la.curvature is None
    with pytest.raises(ValueError, match="mask"):
        fit_block_full(
            ParameterSubset(model, "subnetwork", subnetwork=torch.arange(83) % 2 == 0),
            get_likelihood("classification"),
            batches(x, y),
        )
