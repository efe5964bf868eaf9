"""Matrix-free linear algebra against dense float64 oracles."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from laplacetorch.linalg import (
    CGNotConvergedError,
    CGNotConvergedWarning,
    block_lanczos,
    cg,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    largest_eigenvalue,
    neumann,
    slq_estimate,
    slq_logdet,
    slq_quadrature,
)

DT = torch.float64
KW = {"dtype": DT, "device": "cpu"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(lam: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a random orthogonal Q."""
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=gen(seed + 100), dtype=DT))
    return (q * lam) @ q.T


def op(A: torch.Tensor):
    return lambda V: V @ A.to(V.dtype)  # A symmetric: rows of V Aᵀ = A vᵢ


P = 80
A_WIDE = spd(torch.logspace(-2, 2, P, dtype=DT))  # κ = 1e4, no gaps
LAM_GAP = torch.cat([torch.tensor([100.0, 80, 60, 40, 20], dtype=DT), torch.logspace(-2, 0, P - 5)])
A_GAP = spd(LAM_GAP.to(DT), seed=1)  # top 5 well separated, like a GGN


def no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


# --------------------------------------------------------------------------- CG
def test_cg_batch_matches_solve():
    B = torch.randn(4, P, generator=gen(), dtype=DT)
    B[1] = 0
    X, info = cg(op(A_WIDE), B)
    exact = torch.linalg.solve(A_WIDE, B.T).T
    assert info.converged and info.residual.shape == (4,) and info.residual.max() <= 1e-10
    assert torch.equal(X[1], torch.zeros(P, dtype=DT)) and info.residual[1] == 0
    assert ((X - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-300))[[0, 2, 3]].max() < 1e-6
    x, _ = cg(op(A_WIDE), B[0])  # a vector is one row
    assert x.shape == (P,) and torch.allclose(x, X[0], rtol=1e-8, atol=0)


def test_cg_jacobi_preconditioner_helps():
    d = torch.logspace(-0.5, 0.5, P, dtype=DT)
    A = d[:, None] * spd(torch.logspace(0, 1, P, dtype=DT)) * d[None, :]  # bad scaling
    B = torch.randn(3, P, generator=gen(1), dtype=DT)
    X0, plain = cg(op(A), B)
    X1, jacobi = cg(op(A), B, precond=lambda V: V / A.diagonal())
    exact = torch.linalg.solve(A, B.T).T
    assert plain.converged and jacobi.converged
    assert jacobi.iterations < plain.iterations / 2
    for X in (X0, X1):
        assert ((X - exact).norm() / exact.norm()) < 1e-6


def test_cg_not_converged_warns_or_raises_with_residual():
    B = torch.randn(2, P, generator=gen(), dtype=DT)
    with pytest.warns(CGNotConvergedWarning, match="max relative residual") as rec:
        _, info = cg(op(A_WIDE), B, max_iter=3)
    assert not info.converged and info.iterations == 3
    assert f"{info.residual.max().item():.3e}" in str(rec[0].message)
    with pytest.raises(CGNotConvergedError, match="max relative residual") as err:
        cg(op(A_WIDE), B, max_iter=3, on_fail="raise")
    assert not err.value.info.converged and f"{info.residual.max().item():.3e}" in str(err.value)
    ctx = no_warnings()
    _, info = cg(op(A_WIDE), B, max_iter=3, on_fail="ignore")
    ctx.__exit__(None, None, None)
    assert not info.converged


def test_cg_float32_warm_start():
    A = spd(torch.linspace(1, 10, P, dtype=DT)).float()
    B = torch.randn(3, P, generator=gen(), dtype=torch.float32)
    X, info = cg(op(A), B)
    assert X.dtype == torch.float32 and info.converged and info.residual.max() <= 1e-5
    _, again = cg(op(A), B, x0=X)
    assert again.iterations == 0 and again.converged


def test_cg_bad_input():
    B = torch.randn(2, P, dtype=DT)
    with pytest.raises(ValueError, match="tol must be > 0; got 0"):
        cg(op(A_WIDE), B, tol=0)
    with pytest.raises(ValueError, match="max_iter must be a positive integer; got 0"):
        cg(op(A_WIDE), B, max_iter=0)
    with pytest.raises(ValueError, match="on_fail must be"):
        cg(op(A_WIDE), B, on_fail="shout")
    with pytest.raises(ValueError, match=r"B must be a floating-point tensor \[m, P\]"):
        cg(op(A_WIDE), B[None])
    with pytest.raises(ValueError, match=r"x0 must have B's shape \[2, 80\]; got \[80\]"):
        cg(op(A_WIDE), B, x0=B[0])
    with pytest.raises(ValueError, match=r"matvec must map .* got \[2, 79\]"):
        cg(lambda V: V[:, 1:], B)
    with pytest.raises(ValueError, match="not positive definite"):
        cg(lambda V: -V, B)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cg(op(A_WIDE), B * math.nan)


# --------------------------------------------------------------------------- Neumann
def test_neumann_error_shrinks_and_obeys_bound():
    lam = torch.linspace(1, 10, P, dtype=DT)
    A, B = spd(lam), torch.randn(2, P, generator=gen(), dtype=DT)
    exact = torch.linalg.solve(A, B.T).T
    errs = []
    for k in (5, 20, 80):
        X = neumann(op(A), B, n_terms=k, lambda_max=10.0)
        errs.append((X - exact).norm().item())
        bound = (1 - lam / 10).abs().max() ** k * exact.norm()
        assert errs[-1] <= bound * (1 + 1e-8)
    assert errs[0] > 5 * errs[1] > 25 * errs[2]
    X = neumann(op(A), B, n_terms=300, generator=gen())  # α from power iteration
    assert (X - exact).norm() / exact.norm() < 1e-8
    X = neumann(op(A), B[0], n_terms=80, scale=0.1)
    assert torch.allclose(X, neumann(op(A), B, n_terms=80, lambda_max=10.0)[0])


def test_largest_eigenvalue_underestimates_slightly():
    lam = torch.cat([torch.tensor([10.0], dtype=DT), torch.linspace(0.1, 8, P - 1, dtype=DT)])
    theta = largest_eigenvalue(op(spd(lam)), P, generator=gen(), **KW)
    assert 10 * (1 - 1e-6) < theta <= 10 * (1 + 1e-12)
    t32 = largest_eigenvalue(op(spd(lam).float()), P, generator=gen(), dtype=torch.float32,
                             device="cpu")  # fmt: skip
    assert t32.dtype == torch.float32 and abs(t32.item() - 10) < 1e-4


def test_neumann_bad_input():
    B = torch.randn(2, P, dtype=DT)
    with pytest.raises(ValueError, match="n_terms must be a positive integer; got 0"):
        neumann(op(A_GAP), B, n_terms=0)
    with pytest.raises(ValueError, match="scale must be > 0; got -1"):
        neumann(op(A_GAP), B, scale=-1.0)
    with pytest.raises(ValueError, match="at most one of scale and lambda_max"):
        neumann(op(A_GAP), B, scale=1.0, lambda_max=1.0)
    with pytest.raises(ValueError, match="not positive definite"):
        neumann(lambda V: -V, B, generator=gen())


# --------------------------------------------------------------------------- Lanczos
def subspace_cos(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Cosine of the largest principal angle between span U and span V."""
    return torch.linalg.svdvals(U.T @ V).min()


def test_lanczos_top_k_eigenpairs():
    ctx = no_warnings()
    vals, vecs = lanczos(op(A_GAP), P, 5, generator=gen(), **KW)
    ctx.__exit__(None, None, None)
    evals, evecs = torch.linalg.eigh(A_GAP)
    assert vals.shape == (5,) and vecs.shape == (P, 5)
    assert torch.allclose(vals, evals.flip(0)[:5], rtol=1e-10, atol=0)
    assert 1 - subspace_cos(vecs, evecs[:, -5:]) < 1e-10
    assert torch.allclose(vecs.T @ vecs, torch.eye(5, dtype=DT), atol=1e-12)
    for i in range(5):  # each pair, not only the subspace
        assert (A_GAP @ vecs[:, i] - vals[i] * vecs[:, i]).norm() < 1e-6


def test_lanczos_returns_only_converged_pairs():
    with pytest.warns(UserWarning, match="Ritz pairs converged"):
        vals, vecs = lanczos(op(A_WIDE), P, 5, generator=gen(), **KW)
    top = torch.linalg.eigvalsh(A_WIDE).flip(0)
    assert vals.numel() < 5 and vecs.shape == (P, vals.numel())
    for v in vals:  # whatever is returned is accurate
        assert (top - v).abs().min() < 1e-6 * top[0]
    vals, _ = lanczos(op(A_WIDE), P, 5, max_iter=P, generator=gen(), **KW)
    assert torch.allclose(vals, top[:5], rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_low_rank_returns_exactly_the_nonzero_pairs(dtype):
    U, _ = torch.linalg.qr(torch.randn(P, 4, generator=gen(3), dtype=DT))
    lam = torch.tensor([5.0, 3.0, 2.0, 0.5], dtype=DT)
    L = (U * lam) @ U.T
    ctx = no_warnings()
    vals, vecs = lanczos(op(L), P, 10, generator=gen(), dtype=dtype, device="cpu")
    ctx.__exit__(None, None, None)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert vals.dtype == vecs.dtype == dtype and vals.shape == (4,) and vecs.shape == (P, 4)
    assert torch.allclose(vals.double(), lam, rtol=tol, atol=0)
    assert 1 - subspace_cos(vecs.double(), U) < tol


def test_lanczos_float32():
    vals, vecs = lanczos(op(A_GAP.float()), P, 5, generator=gen(), dtype=torch.float32,
                         device="cpu")  # fmt: skip
    assert vals.dtype == vecs.dtype == torch.float32 and vals.shape == (5,)
    assert torch.allclose(vals.double(), LAM_GAP[:5].to(DT), rtol=1e-5, atol=0)


def test_lanczos_bad_input():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n = 80\]; got 81"):
        lanczos(op(A_GAP), P, 81, **KW)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n = 80\]; got 0"):
        lanczos(op(A_GAP), P, 0, **KW)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 5; got 3"):
        lanczos(op(A_GAP), P, 5, max_iter=3, **KW)
    with pytest.raises(ValueError, match="tol must be > 0"):
        lanczos(op(A_GAP), P, 5, tol=-1.0, **KW)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        lanczos(op(A_GAP), P, 5, dtype=torch.int64, device="cpu")
    with pytest.raises(ValueError, match=r"matvec must map .* got \[1, 79\]"):
        lanczos(lambda V: V[:, 1:], P, 5, **KW)


# --------------------------------------------------------------------------- block Lanczos
def _calls(A: torch.Tensor):
    """The operator V ↦ V A and a list recording the block width of each call."""
    widths: list[int] = []

    def matvec(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[0])
        return V @ A.to(V.dtype)

    return matvec, widths


@pytest.mark.parametrize("b", [1, 3, 8])
def test_block_lanczos_top_k_eigenpairs(b):
    matvec, widths = _calls(A_GAP)
    ctx = no_warnings()
    vals, vecs, calls = block_lanczos(matvec, P, 5, block_size=b, max_iter=P, generator=gen(), **KW)
    ctx.__exit__(None, None, None)
    evals, evecs = torch.linalg.eigh(A_GAP)
    assert calls == len(widths) and set(widths) <= set(range(1, b + 1))
    assert vals.shape == (5,) and vecs.shape == (P, 5)
    assert torch.allclose(vals, evals.flip(0)[:5], rtol=1e-10, atol=0)
    assert 1 - subspace_cos(vecs, evecs[:, -5:]) < 1e-10
    assert torch.allclose(vecs.T @ vecs, torch.eye(5, dtype=DT), atol=1e-12)
    for i in range(5):
        assert (A_GAP @ vecs[:, i] - vals[i] * vecs[:, i]).norm() < 1e-6 * vals[0]


def test_block_lanczos_needs_fewer_calls_than_lanczos_needs_products():
    m1, w1 = _calls(A_WIDE)
    m8, w8 = _calls(A_WIDE)
    v1, _, _ = block_lanczos(m1, P, 5, block_size=1, max_iter=P, generator=gen(), **KW)
    v8, _, _ = block_lanczos(m8, P, 5, block_size=8, max_iter=P, generator=gen(), **KW)
    top = torch.linalg.eigvalsh(A_WIDE).flip(0)[:5]
    assert torch.allclose(v1, top, rtol=1e-10, atol=0)
    assert torch.allclose(v8, top, rtol=1e-10, atol=0)
    assert len(w8) < len(w1) / 2


@pytest.mark.parametrize("b", [2, 8])
def test_block_lanczos_low_rank_deflates_to_exactly_the_nonzero_pairs(b):
    U, _ = torch.linalg.qr(torch.randn(P, 4, generator=gen(3), dtype=DT))
    lam = torch.tensor([5.0, 3.0, 2.0, 0.5], dtype=DT)
    ctx = no_warnings()
    vals, vecs, _ = block_lanczos(op((U * lam) @ U.T), P, 10, block_size=b, generator=gen(), **KW)
    ctx.__exit__(None, None, None)
    assert vals.shape == (4,) and torch.allclose(vals, lam, rtol=1e-10, atol=0)
    assert 1 - subspace_cos(vecs, U) < 1e-10


def test_block_lanczos_indefinite_and_the_full_space():
    # largest algebraic eigenvalues of an indefinite A; n = 10 with b = 4 ends on a block of 2
    lam = torch.tensor([9.0, 7.0, 4.0, 1.0, 0.5, -0.5, -3.0, -8.0, -9.5, -12.0], dtype=DT)
    A = spd(lam, seed=5)
    widths = []
    vals, vecs, calls = block_lanczos(
        lambda V: widths.append(V.shape[0]) or V @ A, 10, 3, block_size=4, max_iter=10,
        generator=gen(), **KW,
    )  # fmt: skip
    assert calls <= 3 and torch.allclose(vals, lam[:3], rtol=1e-10, atol=0)
    assert torch.allclose(A @ vecs, vecs * vals, atol=1e-10)


def test_block_lanczos_at_its_cap_returns_only_converged_pairs():
    # the residual is measured, not assumed zero, when the basis stops short of n
    with pytest.warns(UserWarning, match="Ritz pairs converged"):
        vals, vecs, _ = block_lanczos(op(A_WIDE), P, 5, block_size=8, generator=gen(), **KW)
    top = torch.linalg.eigvalsh(A_WIDE).flip(0)
    assert vals.numel() < 5 and vecs.shape == (P, vals.numel())
    for i, v in enumerate(vals):
        assert (top - v).abs().min() < 1e-6 * top[0]
        assert (A_WIDE @ vecs[:, i] - v * vecs[:, i]).norm() < 1e-6 * top[0]


def test_block_lanczos_bad_input():
    with pytest.raises(ValueError, match="block_size must be a positive integer; got 0"):
        block_lanczos(op(A_GAP), P, 5, block_size=0, **KW)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n = 80\]; got 81"):
        block_lanczos(op(A_GAP), P, 81, **KW)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 5; got 3"):
        block_lanczos(op(A_GAP), P, 5, max_iter=3, **KW)
    with pytest.raises(ValueError, match=r"matvec must map .* got \[8, 79\]"):
        block_lanczos(lambda V: V[:, 1:], P, 5, **KW)
    with pytest.raises(ValueError, match="matvec returned NaN or Inf"):
        block_lanczos(lambda V: V * float("nan"), P, 5, **KW)


# --------------------------------------------------------------------------- Hutchinson
def test_hutchinson_diagonal_error_falls_like_inverse_sqrt():
    A = A_GAP
    truth = A.diagonal()
    offdiag_sq = A.square().sum(1) - truth.square()  # per-probe variance of each entry
    err = {}
    for s in (16, 1024):
        runs = [hutchinson_diagonal(op(A), P, s, generator=gen(seed), **KW) for seed in range(4)]
        err[s] = sum((d - truth).norm() for d, _ in runs) / len(runs)
        var = runs[0][1]
        assert torch.allclose(var.sum(), offdiag_sq.sum() / s, rtol=0.25)
    assert 6 < err[16] / err[1024] < 11  # √(1024/16) = 8


def test_hutchinson_trace_and_standard_error():
    truth = A_GAP.trace()
    est, se = hutchinson_trace(op(A_GAP), P, 400, generator=gen(), chunk_size=64, **KW)
    sd = math.sqrt(2 * (A_GAP.square().sum() - A_GAP.diagonal().square().sum()) / 400)
    assert abs(est - truth) < 4 * se and 0.75 < se / sd < 1.3
    d, v = hutchinson_diagonal(op(A_GAP), P, 1, generator=gen(), **KW)
    assert torch.isinf(v).all() and torch.isfinite(d).all()


def test_hutchpp_beats_hutchinson_on_low_rank_dominated_matrix():
    U, _ = torch.linalg.qr(torch.randn(P, 8, generator=gen(5), dtype=DT))
    A = (U * torch.linspace(10, 100, 8, dtype=DT)) @ U.T + spd(torch.full((P,), 0.1, dtype=DT))
    truth, m = A.trace(), 60
    e_pp = sum(abs(hutchpp_trace(op(A), P, m, generator=gen(s), **KW) - truth) for s in range(8))
    e_h = sum(abs(hutchinson_trace(op(A), P, m, generator=gen(s), **KW)[0] - truth)
              for s in range(8))  # fmt: skip
    assert e_pp < e_h / 10


def test_hutchinson_bad_input():
    with pytest.raises(ValueError, match="n_probes must be a positive integer; got 0"):
        hutchinson_trace(op(A_GAP), P, 0, **KW)
    with pytest.raises(ValueError, match="n_probes must be a positive integer; got 0"):
        hutchinson_diagonal(op(A_GAP), P, 0, **KW)
    with pytest.raises(ValueError, match="n_probes must be an integer >= 3; got 2"):
        hutchpp_trace(op(A_GAP), P, 2, **KW)
    with pytest.raises(ValueError, match=r"matvec must map .* got \[4, 79\]"):
        hutchinson_diagonal(lambda V: V[:, 1:], P, 4, **KW)


# --------------------------------------------------------------------------- SLQ
A_LOG = spd(torch.logspace(0, 2, P, dtype=DT), seed=2)  # log det ≈ 184, κ = 100
P_SLQ = 200  # probe noise relative to log det falls like 1/√P
A_SLQ = spd(torch.logspace(0, 2, P_SLQ, dtype=DT), seed=2)


def rel_error(n_probes, n_steps, seeds):
    """Mean |relative error| of SLQ's log det A_SLQ over seeds (each checked against its se)."""
    truth = torch.logdet(A_SLQ)
    out = []
    for s in seeds:
        est, se = slq_logdet(op(A_SLQ), P_SLQ, n_probes, n_steps, generator=gen(s), **KW)
        out.append(((est - truth) / truth).abs().item())
        if n_probes >= 30:  # below that the se itself is too noisy to test against
            assert abs(est - truth) < 4 * se + 5e-3 * truth  # probe noise, plus a little bias
    return sum(out) / len(out)


def test_slq_logdet_within_two_percent():
    assert rel_error(30, 30, range(12)) < 0.02  # ≈ 0.8% expected, ≤ 1.3% over 20 seed blocks


def test_slq_error_falls_with_probes():
    # √(128/2) = 8 expected; ≥ 4.8 over 20 blocks of 10 seeds
    assert rel_error(2, 20, range(10)) > 3 * rel_error(128, 20, range(10))


def recorded(A):
    """``op(A)`` that keeps its inputs: the first call sees the SLQ probes z/√n."""
    seen = []

    def matvec(V):
        seen.append(V)
        return V @ A

    return matvec, seen


def exact_probe_trace(probes, fA):
    """n · mean over probes q of qᵀ f(A) q, the quantity SLQ approximates by quadrature."""
    return P * ((probes @ fA) * probes).sum(1).mean()


def test_slq_quadrature_error_falls_with_steps():
    """Against the exact quadratic forms of the very probes used: the Gauss rule's bias."""
    evals, evecs = torch.linalg.eigh(A_LOG)
    log_a = (evecs * evals.log()) @ evecs.T
    errs = []
    for steps in (4, 8, 16, 32):
        matvec, seen = recorded(A_LOG)
        est, _ = slq_logdet(matvec, P, 10, steps, generator=gen(), **KW)
        errs.append(abs(est - exact_probe_trace(seen[0], log_a)).item())
    assert all(errs[i] > 5 * errs[i + 1] for i in range(3)) and errs[-1] < 1e-4


def test_slq_nodes_change_the_prior_without_matvecs():
    U, _ = torch.linalg.qr(torch.randn(P, 6, generator=gen(4), dtype=DT))
    G = (U * torch.logspace(-1, 2, 6, dtype=DT)) @ U.T  # rank 6: Lanczos breaks down early
    matvec, seen = recorded(G)
    nodes, weights = slq_quadrature(matvec, P, 12, 20, generator=gen(), **KW)
    assert nodes.shape == weights.shape == (12, 20) and nodes.dtype == DT
    assert torch.allclose(weights.sum(1), torch.ones(12, dtype=DT))
    s, delta = 2.0, 0.5
    eye = torch.eye(P, dtype=DT)
    est, se = slq_estimate(nodes, weights, P, lambda x: torch.log(s * x + delta))
    direct, _ = slq_logdet(lambda V: s * (V @ G) + delta * V, P, 12, 20, generator=gen(), **KW)
    assert torch.allclose(est, direct, rtol=1e-10)
    # The Krylov spaces are invariant: the rule is exact for each probe, any f.
    evals, evecs = torch.linalg.eigh(s * G + delta * eye)
    log_p = (evecs * evals.log()) @ evecs.T
    assert torch.allclose(est, exact_probe_trace(seen[0], log_p), rtol=1e-10)
    assert abs(est - torch.logdet(s * G + delta * eye)) < 4 * se
    tr_inv, _ = slq_estimate(nodes, weights, P, lambda x: 1 / (s * x + delta))
    inv_p = torch.linalg.inv(s * G + delta * eye)
    assert torch.allclose(tr_inv, exact_probe_trace(seen[0], inv_p), rtol=1e-10)


def test_slq_float32():
    est, se = slq_logdet(op(A_LOG.float()), P, generator=gen(), dtype=torch.float32,
                         device="cpu")  # fmt: skip
    truth = torch.logdet(A_LOG).item()
    assert est.dtype == se.dtype == torch.float32 and abs(est.item() - truth) < 4 * se.item()


def test_slq_bad_input():
    with pytest.raises(ValueError, match="positive definite operator; found a Ritz value"):
        slq_logdet(lambda V: V @ (A_LOG - 50 * torch.eye(P, dtype=DT)), P, 4, 10, **KW)
    with pytest.raises(ValueError, match="n_probes must be a positive integer; got 0"):
        slq_logdet(op(A_LOG), P, 0, 10, **KW)
    with pytest.raises(ValueError, match="n_steps must be a positive integer; got 0"):
        slq_quadrature(op(A_LOG), P, 3, 0, **KW)
    with pytest.raises(ValueError, match=r"nodes and weights must both be \[S, j\]"):
        slq_estimate(torch.ones(3), torch.ones(3), P, torch.log)


# --------------------------------------------------------------------------- randomness
CALLS = {
    "largest_eigenvalue": lambda g: largest_eigenvalue(op(A_GAP), P, generator=g, **KW),
    "lanczos": lambda g: lanczos(op(A_GAP), P, 3, generator=g, **KW)[1],
    "block_lanczos": lambda g: block_lanczos(op(A_GAP), P, 3, max_iter=P, generator=g, **KW)[1],
    "hutchinson_trace": lambda g: hutchinson_trace(op(A_GAP), P, 5, generator=g, **KW)[0],
    "hutchinson_diagonal": lambda g: hutchinson_diagonal(op(A_GAP), P, 5, generator=g, **KW)[0],
    "hutchpp_trace": lambda g: hutchpp_trace(op(A_GAP), P, 6, generator=g, **KW),
    "slq_quadrature": lambda g: slq_quadrature(op(A_GAP), P, 3, 5, generator=g, **KW)[0],
    "neumann": lambda g: neumann(op(A_GAP), torch.ones(1, P, dtype=DT), generator=g),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_seeded_and_global_rng_untouched(name):
    state = torch.get_rng_state()
    a, b, c = CALLS[name](gen(7)), CALLS[name](gen(7)), CALLS[name](gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    if name not in ("largest_eigenvalue", "neumann"):  # converged answers need not differ
        assert not torch.equal(a, c)


def test_all_finite_is_exact_where_the_sum_is_not():
    from laplacetorch.linalg.eigh import all_finite

    big = torch.full((4, 4), 3e38)  # finite entries whose float32 sum overflows
    assert all_finite(big) and all_finite(torch.zeros(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        a = torch.ones(3, 3)
        a[1, 2] = bad
        assert not all_finite(a)
    cancel = torch.tensor([float("inf"), -float("inf")])  # the sum is NaN, the test catches it
    assert not all_finite(cancel)


@pytest.mark.parametrize("d", [7, 1030])
def test_the_blocked_gram_is_the_full_product(d):
    """G += XᵀX from the blocks on and below the diagonal (mirrored) equals the GEMM; the
    first product never reads its uninitialised accumulator."""
    from laplacetorch.linalg.gram import add_gram_, gram

    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(9, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, d, generator=g, dtype=torch.float64)
    total = gram(x1)
    torch.testing.assert_close(total, x1.T @ x1, rtol=1e-12, atol=1e-12)
    add_gram_(total, x2)
    torch.testing.assert_close(total, x1.T @ x1 + x2.T @ x2, rtol=1e-12, atol=1e-12)
    assert torch.equal(total, total.T)
