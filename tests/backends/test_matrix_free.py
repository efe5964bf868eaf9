"""hutchinson, lanczos and operator backends against dense float64 references."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import batches, dense_ggn, make_data, make_mlp, make_subset

from laplacetorch import Laplace, get_likelihood
from laplacetorch.curvature import fit_hutchinson, fit_lanczos, fit_operator
from laplacetorch.structures import operator as operator_structure
from laplacetorch.structures.operator import lanczos_inverse_sqrt
from laplacetorch.structures.sources import DenseJacobian

DT = torch.float64


@pytest.fixture(scope="module")
def problem():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=30)
    sub = make_subset(model, "all")
    return model, x, y, sub, dense_ggn(sub, x, y, "classification")


def test_hutchinson_error_shrinks_like_one_over_sqrt_probes(problem):
    _, x, y, sub, g = problem
    lik = get_likelihood("classification")
    errs, reported = [], []
    for s in (16, 1024):
        runs = [fit_hutchinson(sub, lik, batches(x, y), n_probes=s, seed=k) for k in range(4)]
        errs.append(sum(float((r.structure.diagonal() - g.diagonal()).norm()) for r in runs) / 4)
        reported.append(sum(float(r.structure.variance.sum().sqrt()) for r in runs) / 4)
    assert 4 < errs[0] / errs[1] < 16  # √(1024/16) = 8
    for e, r in zip(errs, reported, strict=True):  # the reported variance predicts the error
        assert 0.5 < e / r < 2
    assert (runs[0].structure.diagonal() >= 0).all()


def test_lanczos_top_eigenpairs_and_diagonal_correction(problem):
    _, x, y, sub, g = problem
    evals, evecs = torch.linalg.eigh(g)
    evals, evecs = evals.flip(0), evecs.flip(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_lanczos(
            sub,
            get_likelihood("classification"),
            batches(x, y),
            rank=8,
            oversample=20,
            diag_correction=True,
        )
    st = res.structure
    r = st.rank
    assert r == 8
    torch.testing.assert_close(st.lam, evals[:r], rtol=1e-8, atol=1e-10)
    # subspace angle between the Ritz vectors and the true top-r eigenvectors
    cos = torch.linalg.svdvals(st.U.T @ evecs[:, :r])
    assert float(cos.min()) > 1 - 1e-8
    torch.testing.assert_close(st.diagonal(), g.diagonal())  # exact with the correction


def test_operator_estimates_against_dense(problem, monkeypatch):
    _, x, y, sub, g = problem
    p = g.shape[0]
    res = fit_operator(
        sub, get_likelihood("classification"), batches(x, y), n_probes=40, n_steps=40
    )
    st = res.structure
    assert not st.is_exact(1.0)
    for d in (0.3, 1.0, 5.0):
        exact = torch.logdet(g + d * torch.eye(p, dtype=DT))
        est, se = st.logdet_with_error(d)
        assert abs(float(est) - float(exact)) < 4 * float(se)
        assert float(se) < 0.1 * abs(float(exact))
    prec = 2.0 * g + 0.7 * torch.eye(p, dtype=DT)
    cov = torch.linalg.inv(prec)
    v = torch.randn(3, p, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(st.solve(v, 0.7, 2.0), v @ cov, rtol=1e-7, atol=1e-9)
    jac = torch.randn(2, 3, p, generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.testing.assert_close(
        st.functional_variance(jac, 0.7, 2.0), jac @ cov @ jac.transpose(1, 2), rtol=1e-7, atol=1e-9
    )
    est_tr = float(st.trace_inverse(0.7, 2.0))
    assert est_tr == pytest.approx(float(cov.trace()), rel=0.05)
    # more rows than SOLVE_BLOCK: solved in blocks of it, the same answer
    solved = []
    cg_of = operator_structure.cg
    monkeypatch.setattr(operator_structure, "SOLVE_BLOCK", 4)
    monkeypatch.setattr(
        operator_structure, "cg", lambda a, b, **k: solved.append(len(b)) or cg_of(a, b, **k)
    )
    torch.testing.assert_close(
        st.functional_variance(jac, 0.7, 2.0), jac @ cov @ jac.transpose(1, 2), rtol=1e-7, atol=1e-9
    )
    assert solved == [4, 2]
    # through a source, the rows per CG run follow its memory_budget (ROW_WORK P-vectors a row)
    row = operator_structure.ROW_WORK * p * jac.element_size()
    for budget, runs in ((row, [1] * 6), (3 * row + 1, [3, 3]), (2**40, [4, 2])):
        solved.clear()
        src = DenseJacobian(jac, memory_budget=budget)
        torch.testing.assert_close(
            st.functional_variance(src, 0.7, 2.0),
            jac @ cov @ jac.transpose(1, 2),
            rtol=1e-7,
            atol=1e-9,
        )
        assert solved == runs


def test_lanczos_inverse_sqrt_is_exact_with_a_full_krylov_space():
    g_ = torch.Generator().manual_seed(2)
    a = torch.randn(12, 12, generator=g_, dtype=DT)
    prec = a @ a.T + 0.5 * torch.eye(12, dtype=DT)
    w, q = torch.linalg.eigh(prec)
    z = torch.randn(4, 12, generator=g_, dtype=DT)
    x = lanczos_inverse_sqrt(lambda v: v @ prec, z, 12)
    torch.testing.assert_close(x, z @ ((q * w.rsqrt()) @ q.T), rtol=1e-6, atol=1e-8)


def test_operator_marglik_tuning_lands_near_full(problem):
    model, x, y, _, _ = problem
    found = {}
    for structure in ("full", "operator"):
        la = Laplace(model, "classification", "all", structure).fit(batches(x, y))
        res = la.optimize_prior_precision(method="marglik")
        found[structure] = float(la.prior_precision)
        assert res.exact == (structure == "full")
    assert (
        abs(math.log(found["operator"]) - math.log(found["full"]))
        < 0.05 * abs(math.log(found["full"])) + 0.05
    )
    la.optimize_prior_precision(method="mackay")
    assert abs(math.log(float(la.prior_precision)) - math.log(found["full"])) < 0.1


@pytest.mark.parametrize("structure", ["hutchinson", "lowrank", "operator"])
def test_matrix_free_structures_through_laplace(structure, problem):
    model, x, y, _, _ = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(
            model,
            "classification",
            "all",
            structure,
            backend_options={"rank": 5} if structure == "lowrank" else None,
        )
        la.fit(batches(x, y))
    probs = la(x[:4])
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=DT))
    assert torch.isfinite(la.log_marginal_likelihood())
    assert la.sample(3).shape == (3, la.n_params)
    if structure != "operator":
        other = Laplace(make_mlp(), "classification", "all", structure)
        other.load_state_dict(la.state_dict())
        torch.testing.assert_close(other(x[:4]), probs)
    else:
        other = Laplace(make_mlp(), "classification", "all", structure)
        other.load_state_dict(la.state_dict())
        torch.testing.assert_close(other.log_marginal_likelihood(), la.log_marginal_likelihood())
        with pytest.raises(RuntimeError, match="without its data"):
            other(x[:4])


def test_bad_input_to_matrix_free_backends(problem):
    _, x, y, sub, _ = problem
    lik = get_likelihood("classification")
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, P = 83\]; got 100"):
        fit_lanczos(sub, lik, batches(x, y), rank=100)
    with pytest.raises(ValueError, match="tol must be positive"):
        fit_lanczos(sub, lik, batches(x, y), rank=3, tol=0.0)
    with pytest.raises(ValueError, match="n_probes must be a positive integer"):
        fit_hutchinson(sub, lik, batches(x, y), n_probes=0)
    with pytest.raises(ValueError, match="n_probes must be a positive integer"):
        fit_operator(sub, lik, batches(x, y), n_probes=0)
    with pytest.raises(ValueError, match="cg_tol must be positive"):
        fit_operator(sub, lik, batches(x, y), cg_tol=-1.0)


def test_operator_neumann_solver(problem):
    _, x, y, sub, g = problem
    p = g.shape[0]
    lik = get_likelihood("classification")
    st = fit_operator(sub, lik, batches(x, y, 30), solver="neumann", neumann_terms=400).structure
    prec = g + 5.0 * torch.eye(p, dtype=DT)  # well conditioned: the series converges fast
    v = torch.randn(2, p, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(st.solve(v, 5.0), v @ torch.linalg.inv(prec), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        fit_operator(sub, lik, batches(x, y), solver="lu")


def test_lanczos_keeps_iterating_until_the_top_pairs_converge(problem):
    _, x, y, sub, g = problem
    lik = get_likelihood("classification")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "only r of k converged" warning by default
        res = fit_lanczos(sub, lik, batches(x, y), rank=20, oversample=2)
    evals = torch.linalg.eigvalsh(g).flip(0)
    assert res.structure.rank == 20
    torch.testing.assert_close(res.structure.lam, evals[:20], rtol=1e-6, atol=1e-8)
    with pytest.warns(UserWarning, match="Ritz pairs converged"):
        fit_lanczos(sub, lik, batches(x, y), rank=20, oversample=2, max_iter=22)


def test_lanczos_says_when_the_curvature_has_fewer_eigenvalues_than_the_rank():
    # 4 examples, 3 classes: G has rank ≤ 4·(3 − 1) = 8 < the 12 pairs asked for
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=4)
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    rank_g = int(torch.linalg.matrix_rank(dense_ggn(sub, x, y, "classification")))
    with pytest.warns(UserWarning, match=rf"rank {rank_g} instead of 12"):
        res = fit_lanczos(sub, lik, batches(x, y), rank=12, max_iter=sub.n_params)
    assert res.structure.rank == rank_g < 12


def test_operator_logdet_for_a_per_layer_prior_and_its_gradient(problem):
    _, x, y, sub, g = problem
    st = fit_operator(
        sub, get_likelihood("classification"), batches(x, y), n_probes=40, n_steps=40
    ).structure
    layer = torch.linspace(0.5, 2.0, sub.n_groups, dtype=DT)  # one per parameter tensor
    d_full = layer[sub.group_index]
    prec = 1.5 * g + torch.diag(d_full)
    est, se = st.logdet_with_error(layer, 1.5)
    assert abs(float(est) - float(torch.logdet(prec))) < 4 * float(se)
    d = layer.clone().requires_grad_(True)
    s = torch.tensor(1.5, dtype=DT, requires_grad=True)
    gd, gs = torch.autograd.grad(st.logdet(d, s), (d, s))
    cov = torch.linalg.inv(prec)
    exact_gd = torch.zeros(sub.n_groups, dtype=DT).index_add_(0, sub.group_index, cov.diagonal())
    exact_gs = (cov @ g).trace()
    torch.testing.assert_close(gd, exact_gd, rtol=0.15, atol=0)  # Hutchinson: an estimate
    assert float(gs) == pytest.approx(float(exact_gs), rel=0.15)


def test_operator_layerwise_marglik_tuning_runs_and_lands_near_full(problem):
    model, x, y, _, _ = problem
    found = {}
    for structure in ("full", "operator"):
        opts = {"n_probes": 20, "n_steps": 30} if structure == "operator" else None
        la = Laplace(model, "classification", "all", structure, backend_options=opts)
        la.fit(batches(x, y, 30))  # one batch: a data pass per product costs one call
        la.optimize_prior_precision(method="marglik", prior_structure="layerwise", n_steps=30)
        found[structure] = la.prior_precision.log()
    gap = (found["operator"] - found["full"]).abs()
    # weights to 0.1 in log δ; a bias tensor has a handful of entries, so its Hutchinson
    # trace (and so its δ) is the noisier estimate
    assert gap[0::2].max() < 0.1 and gap[1::2].max() < 0.75
