"""KFAC and EKFAC through Laplace; EKFAC never further from the exact blocks than KFAC."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SeqNet, batches, dense_ggn, make_cnn, make_data, make_mlp
from test_kfac import _block_diag_of, _deep_linear
from torch import nn

from laplacetorch import ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_kfac
from laplacetorch.structures import BlockDiagonal, Kron

DT = torch.float64


def _block_errors(structure, g):
    errs = []
    dense = structure.curvature_dense()
    for _, index, _ in structure.blocks:
        ix = (index[:, None], index[None])
        errs.append(float((dense[ix] - g[ix]).norm()))
    return errs


@pytest.mark.parametrize("cache_budget", [None, 0], ids=["kept", "second_pass"])
@pytest.mark.parametrize(
    ("net", "likelihood"),
    [("mlp", "classification"), ("cnn", "regression"), ("seq", "classification")],
)
def test_ekfac_is_never_further_from_the_exact_blocks_than_kfac(net, likelihood, cache_budget):
    from laplacetorch.curvature import fit_ekfac

    g_ = torch.Generator().manual_seed(8)
    if net == "mlp":
        model = make_mlp()
        x, y = make_data("mlp", likelihood, n=15)
    elif net == "cnn":
        torch.manual_seed(2)
        model = (
            nn.Sequential(
                nn.Conv2d(1, 2, 3, padding=1),
                nn.Tanh(),
                nn.Conv2d(2, 2, 3),
                nn.Flatten(),
                nn.Linear(8, 3),
            )
            .to(DT)
            .eval()
        )
        x = torch.randn(10, 1, 4, 4, generator=g_, dtype=DT)
        y = torch.randn(10, 3, generator=g_, dtype=DT)
    else:
        torch.manual_seed(3)
        model = SeqNet().to(DT).eval()
        x = torch.randn(10, 4, 3, generator=g_, dtype=DT)
        y = torch.randint(0, 2, (10,), generator=g_)
    sub = ParameterSubset(model, "all")
    lik = get_likelihood(likelihood)
    g = dense_ggn(sub, x, y, likelihood)
    kf = fit_kfac(sub, lik, batches(x, y, 4)).structure
    options = {} if cache_budget is None else {"cache_budget": cache_budget}
    ek = fit_ekfac(sub, lik, batches(x, y, 4), **options).structure
    for e_k, e_e in zip(_block_errors(kf, g), _block_errors(ek, g), strict=True):
        assert e_e <= e_k + 1e-10
    assert sum(_block_errors(ek, g)) < sum(_block_errors(kf, g))  # strictly better overall
    # in the KFAC eigenbasis, EKFAC's eigenvalues are the exact blocks' diagonal there
    for _, index, blk in ek.blocks:
        q = torch.kron(blk.qb, blk.qa)
        torch.testing.assert_close(
            blk.eig.reshape(-1), (q.T @ g[index[:, None], index[None]] @ q).diagonal()
        )


class _CountingLoader:
    """A re-iterable list of batches that counts the passes over it."""

    def __init__(self, items):
        self.items, self.passes = items, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.items)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
def test_ekfac_refit_from_the_kept_pass_is_the_second_pass_bit_for_bit(net, fisher_type):
    from laplacetorch.curvature import fit_ekfac

    g_ = torch.Generator().manual_seed(4)
    if net == "mlp":
        model = make_mlp()
        x, y = make_data("mlp", "classification", n=21)
    else:
        model = make_cnn()
        x = torch.randn(13, 1, 6, 6, generator=g_, dtype=DT)
        y = torch.randint(0, 3, (13,), generator=g_)
    sub, lik = ParameterSubset(model, "all"), get_likelihood("classification")
    ekfac = {}
    for budget in (10**9, 0, 2000):  # all kept; never; overflowing after a batch or two
        loader = _CountingLoader(batches(x, y, 5))
        res = fit_ekfac(sub, lik, loader, fisher_type=fisher_type, cache_budget=budget)
        ekfac[budget] = (res.structure.curvature_dense(), loader.passes)
    assert ekfac[10**9][1] == 1 and ekfac[0][1] == 2 and ekfac[2000][1] == 2
    if net == "mlp":
        assert torch.equal(ekfac[10**9][0], ekfac[0][0])
        assert torch.equal(ekfac[2000][0], ekfac[0][0])
    else:  # oneDNN may pick another conv kernel for the recomputed pass: round-off only
        tol = 1e-13 * float(ekfac[0][0].abs().max())
        torch.testing.assert_close(ekfac[10**9][0], ekfac[0][0], rtol=0, atol=tol)
        torch.testing.assert_close(ekfac[2000][0], ekfac[0][0], rtol=0, atol=tol)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1MB"])
def test_ekfac_refuses_a_bad_cache_budget(bad):
    from laplacetorch.curvature import fit_ekfac

    x, y = make_data("mlp", "classification", n=6)
    loader = _CountingLoader(batches(x, y, 3))
    with pytest.raises(ValueError, match="cache_budget must be a non-negative integer"):
        fit_ekfac(
            ParameterSubset(make_mlp(), "all"),
            get_likelihood("classification"),
            loader,
            cache_budget=bad,
        )
    assert loader.passes == 0


@pytest.mark.parametrize("joint_bias", [True, False])
def test_ekfac_equals_the_exact_blocks_where_kfac_is_exact(joint_bias):
    from laplacetorch.curvature import fit_ekfac

    model = _deep_linear()
    g_ = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 4, generator=g_, dtype=DT), torch.randn(30, 2, generator=g_, dtype=DT)
    sub = ParameterSubset(model, "all")
    res = fit_ekfac(sub, get_likelihood("regression"), batches(x, y, 7), joint_bias=joint_bias)
    g = dense_ggn(sub, x, y, "regression")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


@pytest.mark.parametrize("fisher_type", ["exact", "mc", "empirical"])
def test_laplace_with_ekfac_end_to_end(fisher_type):
    from laplacetorch import Laplace
    from laplacetorch.structures import EKron

    model = make_cnn()
    g_ = torch.Generator().manual_seed(9)
    x = torch.randn(12, 1, 6, 6, generator=g_, dtype=DT)
    y = torch.randint(0, 3, (12,), generator=g_)
    la = Laplace(
        model, "classification", "all", "ekfac", prior_precision=0.9, fisher_type=fisher_type
    ).fit(batches(x, y, 5))
    assert all(isinstance(b, EKron) for _, _, b in la.structure.blocks)
    prec = la.structure.precision_dense(la.prior_precision, la.scale())
    torch.testing.assert_close(la.structure.logdet(0.9, la.scale()), torch.logdet(prec))
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    _, var = la.glm_moments(x)
    torch.testing.assert_close(var, jac @ torch.linalg.inv(prec) @ jac.transpose(1, 2))
    la.optimize_prior_precision(method="marglik", prior_structure="layerwise")
    other = Laplace(make_cnn(), "classification", "all", "ekfac", fisher_type=fisher_type)
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other(x), la(x))


@pytest.mark.parametrize("k_cols", [1, 3, 12])
def test_ekfac_gramian_and_per_example_forms_agree(k_cols):
    from laplacetorch.curvature.layer_fit import square_sum as _rotated_square_sum

    g_ = torch.Generator().manual_seed(11)
    u = torch.randn(k_cols, 5, 4, 3, generator=g_, dtype=DT)  # [K, B, S, out]
    v = torch.randn(5, 4, 6, generator=g_, dtype=DT)  # [B, S, in']
    ref = sum(
        torch.einsum("so,si->oi", u[k, n], v[n]).square() for k in range(k_cols) for n in range(5)
    )
    for form in ("per_example", "gramian", "auto"):
        for budget in (1, 10**9):  # one example per chunk, or all at once
            torch.testing.assert_close(_rotated_square_sum(u, v, budget, form), ref)
    with pytest.raises(ValueError, match="unknown form"):
        _rotated_square_sum(u, v, 10**9, "dense")


@pytest.mark.parametrize("subset", ["all", "last_layer", "subnetwork"])
def test_laplace_with_kfac_end_to_end(subset):
    from laplacetorch import Laplace

    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    kw = {"subnetwork": ["2", "4"]} if subset == "subnetwork" else {}
    la = Laplace(model, "classification", subset, "kron", prior_precision=0.8, **kw)
    la.fit(batches(x, y))
    st = la.structure
    assert isinstance(st, BlockDiagonal)
    assert all(type(b) is Kron for _, _, b in st.blocks)
    prec = st.precision_dense(0.8, 1.0)
    theta = la.mean
    loglik = -F.cross_entropy(model(x), y, reduction="sum").detach()
    expected = loglik - 0.5 * (
        0.8 * theta @ theta
        + torch.logdet(prec)
        - la.n_params * torch.log(torch.tensor(0.8, dtype=DT))
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), expected)
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)
    cov = torch.linalg.inv(prec)
    _, var = la.glm_moments(x)
    torch.testing.assert_close(var, jac @ cov @ jac.transpose(1, 2))
    for method in ("marglik", "mackay", "gridsearch"):
        la.prior_precision = 1.0
        la.optimize_prior_precision(method=method)
    for ps in ("layerwise", "diagonal"):
        la.optimize_prior_precision(method="mackay", prior_structure=ps)
    assert la(x, pred_type="nn", n_samples=5).shape == (20, 3)
    other = Laplace(make_mlp(), "classification", subset, "kfac", **kw)
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other(x), la(x))


def test_laplace_passes_backend_options_to_kfac():
    from laplacetorch import Laplace

    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(
        model,
        "classification",
        "all",
        "kfac",
        fisher_type="mc",
        backend_options={"mc_samples": 3, "seed": 7, "joint_bias": False},
    )
    la.fit(batches(x, y))
    assert len(la.structure.blocks) == 6  # separate weight and bias blocks
    with pytest.raises(ValueError, match="unknown approximation"):
        Laplace(model, "classification", "all", "kfac", backend_options={"approximation": "x"}).fit(
            batches(x, y)
        )


def test_tuning_result_says_whether_the_tuned_prior_is_exact():
    """Exactness follows the prior: KFAC is exact for a scalar or per-layer δ and an estimate
    (eigenbasis diagonal) for a per-parameter δ that varies within a block."""
    from laplacetorch import Laplace

    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(make_mlp(), "classification", "all", "kfac").fit(batches(x, y))
    assert la.optimize_prior_precision(method="marglik").exact
    assert la.optimize_prior_precision(method="mackay", prior_structure="layerwise").exact
    res = la.optimize_prior_precision(method="mackay", prior_structure="diagonal")
    assert not res.exact and not la.structure.is_exact(la.prior_precision)
