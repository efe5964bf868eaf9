"""One contract over a problem registry: every curvature backend × likelihood × subset.

The backends are :data:`laplacetorch.curvature.BACKENDS`, every entry of it; the problems
are tests/problems.py's (tiny float64 MLPs and a CNN, three likelihoods, all weights, the last
layer and a masked subnetwork). For each pair the fitted curvature is checked against the
dense ``torch.func`` GGN restricted to what the backend claims (:data:`CLAIMS`: the whole G,
its diagonal, its layer blocks, an estimate of its diagonal, or, for KFAC / EKFAC, the layer
blocks where Kronecker factors are exact: one datum); then, with the backend's own dense G,
the evidence and its gradient in δ, every predictive option, the three tuning methods, adding
data with ``fit(override=False)``, a save / load round trip and a two-rank gloo fit, all
against dense float64 algebra of Π = s·G + c·δ·I.

A new backend joins by its registry entry; it is held to the whole dense G unless a line of
:data:`CLAIMS` says what it approximates (or which options it needs on these problems).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DT, gloo_port, join_gloo
from problems import PRIOR, PROBLEMS, SIGMA, Problem

from laplacetorch.curvature import BACKENDS
from laplacetorch.links import bridge, gaussian_samples

N_OUT = 3  # every problem's C


@dataclass(frozen=True)
class Claim:
    """What a backend's fit is exact for, and how it is run on the problems.

    Attributes:
        options: ``backend_options`` (a function of the problem where they depend on P).
        curvature: "full" (the dense G), "diag" (its diagonal), "blocks" (its layer blocks
            [W | b]), "diag_estimate" (an unbiased Rademacher estimate of its diagonal) or
            "own" (an approximation checked by ``one_datum`` and otherwise through its own
            dense G).
        one_datum: "blocks": on one datum (no weight sharing) it equals G's layer blocks.
        whole_layers: refuses a subnetwork given by a weight mask.
        estimates: log det and traces are stochastic estimates (``is_exact`` is False).
        draws_cheap: weight draws cost about a solve, not a run of CG / Lanczos per draw.
        problems: the problems it runs on (None: all); each of its answers is a run of
            CG / SLQ over the data, so a matrix-free backend takes a few.
        persists: what a loaded state answers: "all", "evidence" (the predictive needs the
            data points, which the state does not keep) or "nothing" (data by reference).
        indefinite: what it makes of the Hessian's negative eigenvalues: "kept" or
            "clipped" (its positive part, Q max(Λ, 0) Qᵀ).
    """

    options: Any = field(default_factory=dict)
    curvature: str = "full"
    one_datum: str | None = None
    whole_layers: bool = False
    estimates: bool = False
    draws_cheap: bool = True
    persists: str = "all"
    problems: tuple[str, ...] | None = None
    indefinite: str = "kept"

    def options_for(self, problem: Problem, fisher_type: str = "exact") -> dict:
        if callable(self.options):
            return self.options(problem, fisher_type)
        return dict(self.options)


def _rank_of(problem: Problem, fisher_type: str = "exact") -> int:
    """The curvature's rank bound, capped at P: N·C for the GGN (N·(C − 1) under a softmax),
    N for the empirical Fisher, P for the Hessian."""
    per_example = N_OUT - (problem.likelihood == "classification")
    bound = {"empirical": problem.n, "hessian": problem.subset_of.n_params}
    return min(bound.get(fisher_type, problem.n * per_example), problem.subset_of.n_params)


def _lanczos_options(problem: Problem, fisher_type: str = "exact") -> dict:
    """Rank the curvature's rank, one block of rank + oversample vectors (one pass per step)."""
    rank, p = _rank_of(problem, fisher_type), problem.subset_of.n_params
    block = min(rank + 12, p)
    return {"rank": rank, "oversample": block - rank, "block_size": block, "tol": 1e-12, "seed": 3}


#: one line per backend that needs options or approximates G; absent: exact for the whole G
CLAIMS: dict[str, Claim] = {
    "diag": Claim(curvature="diag"),
    "block_full": Claim(curvature="blocks", whole_layers=True),
    "kfac": Claim(curvature="own", one_datum="blocks", whole_layers=True),
    "ekfac": Claim(curvature="own", one_datum="blocks", whole_layers=True),
    "hutchinson": Claim({"n_probes": 16, "seed": 3}, curvature="diag_estimate"),
    # rank ≥ the GGN's rank, eigenvalues kept down to 1e-12·λ₁: the whole G
    "lanczos": Claim(_lanczos_options, indefinite="clipped"),
    "nystrom": Claim(lambda p, _: {"n_eigenvalues": p.n * N_OUT}),
    # G itself through products (exact); SLQ estimates for log det, CG solves to 1e-12
    "operator": Claim(
        {"n_probes": 16, "n_steps": 30, "seed": 3, "cg_tol": 1e-12},
        estimates=True,
        draws_cheap=False,
        persists="evidence",
        problems=("mlp-regression-last_layer",),
    ),
    # all points (the default n_subset): the whole G
    "gp": Claim(persists="evidence"),
}

BACKEND_NAMES = list(BACKENDS)


def _hutchinson_sd(prec: torch.Tensor, claim: Claim, problem: Problem) -> tuple[float, float]:
    """Standard deviations of S-probe Rademacher estimates of tr log Π and tr Π⁻¹ (0 for
    an exact backend): Var = 2 Σ_{i≠j} A_ij² / S."""
    if not claim.estimates:
        return 0.0, 0.0
    lam, q = torch.linalg.eigh(prec)
    n_probes = claim.options_for(problem)["n_probes"]

    def sd(a):
        return float((2 * ((a**2).sum() - (a.diagonal() ** 2).sum()) / n_probes).sqrt())

    return sd(q @ torch.diag(lam.log()) @ q.T), sd(q @ torch.diag(1 / lam) @ q.T)


def _claim(backend: str) -> Claim:
    return CLAIMS.get(backend, Claim())


_FITS: dict[tuple[str, str], Any] = {}


def _fit(problem: Problem, backend: str):
    """The module's one fit of ``backend`` on ``problem`` (skips what the backend refuses,
    as the registry and claims say), with its own dense G; do not tune or refit it."""
    claim = _claim(backend)
    if claim.whole_layers and problem.subset == "subnetwork":
        pytest.skip(f"{backend} needs whole layers (checked: refuses a mask)")
    key = (problem.name, backend)
    if key not in _FITS:
        la = problem.laplace(backend, claim.options_for(problem)).fit(problem.loader())
        _FITS[key] = la, la.structure.curvature_dense().detach()
    return _FITS[key]


def _fresh(problem: Problem, backend: str):
    """A copy of the module's fit that may be changed (tuned, refitted)."""
    la, g = _fit(problem, backend)
    return copy.deepcopy(la), g


def _close(actual, expected, rtol=1e-8, atol=1e-10, what=""):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _case(p: Problem, b: str):
    only = _claim(b).problems
    marks = []
    if only is not None and p.name not in only:
        marks = [pytest.mark.skip(reason=f"{b} runs on {list(only)} (matrix-free: slow)")]
    return pytest.param(p, b, id=f"{b}-{p.name}", marks=marks)


CASES = [_case(p, b) for p in PROBLEMS for b in BACKEND_NAMES]
#: the cases of the costlier checks (predictive, samples, tuning, adding data, persistence):
#: the MLP problems; the CNN's layers (convolutions, weight sharing) are in checks 1 and 2
MLP_CASES = [c for c in CASES if c.values[0].model == "mlp"]


# ----------------------------------------------------------------- 1. the curvature
@pytest.mark.parametrize(("problem", "backend"), CASES)
def test_curvature_is_what_the_backend_claims(problem, backend):
    la, g = _fit(problem, backend)
    claim, oracle = _claim(backend), problem.ggn
    tol = 1e-10 * float(oracle.abs().max())
    _close(g, g.T, atol=tol, what="G symmetric")
    assert la.n_data == problem.n
    if claim.curvature == "full":
        _close(g, oracle, atol=tol, what="G")
    elif claim.curvature == "diag":
        _close(g, torch.diag(oracle.diagonal()), atol=tol, what="diag G")
    elif claim.curvature == "blocks":
        _close(g, oracle * problem.block_mask, atol=tol, what="layer blocks of G")
    elif claim.curvature == "diag_estimate":
        _close(g, torch.diag(g.diagonal()), atol=tol, what="a diagonal")
        # Var(zᵢ (Gz)ᵢ) = Σ_{j≠i} G_ij² for Rademacher z; S probes
        off = (oracle**2).sum(1) - oracle.diagonal() ** 2
        sd = (off / claim.options_for(problem)["n_probes"]).sqrt()
        err = (g.diagonal() - oracle.diagonal()).abs()
        assert bool((err <= 6 * sd + tol).all()), f"max error/sd {float((err / sd).max()):.2f}"
    else:
        assert claim.curvature == "own", claim.curvature
        assert bool(torch.linalg.eigvalsh(g).min() >= -tol), "G not PSD"
        if claim.whole_layers:
            _close(g * ~problem.block_mask, torch.zeros_like(g), atol=tol, what="off blocks")
    if claim.one_datum == "blocks":
        if problem.model != "mlp":
            return  # weight sharing: Kronecker factors are not exact even on one datum
        (x, y), _, _ = problem.data
        one = problem.laplace(backend, claim.options_for(problem)).fit([(x[:1], y[:1])])
        g1 = one.structure.curvature_dense()
        oracle1 = problem.ggn_of(x[:1], y[:1]) * problem.block_mask
        _close(g1, oracle1, atol=1e-10 * float(oracle1.abs().max()), what="one datum")


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if _claim(b).whole_layers])
def test_whole_layer_backends_refuse_a_mask(backend):
    problem = Problem("mlp", "classification", "subnetwork")
    la = problem.laplace(backend, _claim(backend).options_for(problem))
    with pytest.raises(ValueError, match="whole layers"):
        la.fit(problem.loader())


# ----------------------------------------------------------------- 2. the evidence
@pytest.mark.parametrize(("problem", "backend"), CASES)
def test_evidence_and_its_gradient(problem, backend):
    la, g = _fresh(problem, backend)
    claim, c = _claim(backend), la.curvature.prior_factor
    assert la.structure.is_exact(la.prior) is not claim.estimates
    _close(la.log_likelihood, problem.log_likelihood, rtol=1e-10, what="log p(D|θ*)")
    for delta in (0.3, PRIOR, 4.0):
        d = torch.tensor(delta, dtype=DT, requires_grad=True)
        ev = la.log_marginal_likelihood(d)
        (grad,) = torch.autograd.grad(ev, d)
        d0 = torch.tensor(delta, dtype=DT, requires_grad=True)
        oracle = problem.evidence(g, d0, c)
        (grad0,) = torch.autograd.grad(oracle, d0)
        # SLQ: Rademacher estimates of tr log Π and (its gradient) tr Π⁻¹, S probes: 6 sd
        sd_logdet, sd_trace = _hutchinson_sd(problem.precision(g, delta, c), claim, problem)
        _close(ev.detach(), oracle.detach(), atol=3 * sd_logdet + 1e-9, what="lml")
        _close(grad, grad0, rtol=1e-7, atol=3 * c * sd_trace + 1e-9, what="∂lml/∂δ")
        h = 1e-5 * delta
        fd = (la.evidence(delta + h) - la.evidence(delta - h)) / (2 * h)
        _close(grad, fd, rtol=1e-5, atol=1e-6, what="∂lml/∂δ by differences")
        assert float(la.prior_precision) == pytest.approx(delta)  # stored, as laplace-torch


# ----------------------------------------------------------------- 3. the predictive
def _link(likelihood):
    return (lambda f: torch.softmax(f, -1)) if likelihood == "classification" else torch.sigmoid


@pytest.mark.parametrize(("problem", "backend"), MLP_CASES)
def test_every_predictive_option(problem, backend):
    la, g = _fit(problem, backend)
    c, lik = la.curvature.prior_factor, problem.likelihood
    _, _, xt = problem.data
    f, var, _ = problem.glm(g, xt, PRIOR, c)
    tol = {"rtol": 1e-7, "atol": 1e-10}
    mean, cov = la.glm_moments(xt)
    _close(mean, f, **tol, what="glm mean")
    _close(cov, var, **tol, what="J Π⁻¹ Jᵀ")
    _close(la.glm_moments(xt, prior_precision=2.5)[1], problem.glm(g, xt, 2.5, c)[1], **tol,
           what="J Π⁻¹ Jᵀ at another δ")  # fmt: skip
    if lik == "regression":
        f_mu, f_var = la(xt)
        _close(f_mu, f, **tol, what="mean")
        _close(f_var, var, **tol, what="f_var")
        _close(la(xt, diagonal_output=True)[1], var.diagonal(dim1=-2, dim2=-1), **tol,
               what="diagonal_output")  # fmt: skip
        _, _, jac = problem.glm(g, xt, PRIOR, c)
        jf = jac.reshape(-1, jac.shape[-1])
        joint_cov = jf @ torch.linalg.inv(problem.precision(g, PRIOR, c)) @ jf.T
        j_mu, j_cov = la(xt, joint=True)
        _close(j_mu, f.reshape(-1), **tol, what="joint mean")
        _close(j_cov, joint_cov, **tol, what="joint covariance")
    else:
        kappa = (1 + math.pi / 8 * var.diagonal(dim1=-2, dim2=-1)).rsqrt()
        _close(la(xt, link_approx="probit"), _link(lik)(f * kappa), **tol, what="probit")
        if "bridge" in la.likelihood.links:  # the bridge's formula on the oracle moments
            _close(la(xt, link_approx="bridge"), bridge(f, var), **tol, what="bridge")
            _close(la(xt, link_approx="bridge_norm"), bridge(f, var, normalise=True), **tol,
                   what="bridge_norm")  # fmt: skip
        # the mc link: the library's Gaussian draws of the oracle moments, same generator
        for diagonal, v in ((False, var), (True, torch.diag_embed(var.diagonal(0, -2, -1)))):
            gen = torch.Generator().manual_seed(5)
            got = la(xt, link_approx="mc", n_samples=50, generator=gen, diagonal_output=diagonal)
            fs = gaussian_samples(f, v, 50, torch.Generator().manual_seed(5))
            _close(got, _link(lik)(fs).mean(0), **tol, what="mc link")
    if not _claim(backend).draws_cheap:
        return  # one CG / Lanczos run per weight draw
    # the nn predictive: the network at la.sample's draws (same generator state)
    n = 64
    got = la(xt, pred_type="nn", n_samples=n, generator=torch.Generator().manual_seed(9))
    thetas = la.sample(n, generator=torch.Generator().manual_seed(9))
    fs = torch.stack([problem.subset_of.forward(t, xt) for t in thetas]).detach()
    if lik == "regression":
        _close(got[0], fs.mean(0), **tol, what="nn mean")
        _close(got[1], fs.var(0), **tol, what="nn variance")
    else:
        _close(got, _link(lik)(fs).mean(0), **tol, what="nn predictive")


@pytest.mark.parametrize(("problem", "backend"), MLP_CASES)
def test_weight_samples_have_the_posterior_covariance(problem, backend):
    la, g = _fit(problem, backend)
    if not _claim(backend).draws_cheap:
        pytest.skip(f"{backend}: one CG / Lanczos run per weight draw (minutes for 4000)")
    cov = torch.linalg.inv(problem.precision(g, PRIOR, la.curvature.prior_factor))
    n = 4000
    eps = la.sample(n, generator=torch.Generator().manual_seed(2)) - la.mean
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eps.T, upper=False)
    emp = white @ white.T / n  # ≈ I: entries ± 1/√n, its mean diagonal ± √(2/(nP))
    p = g.shape[0]
    assert abs(float(emp.diagonal().mean()) - 1) < 5 * math.sqrt(2 / (n * p))
    assert float((emp - torch.eye(p, dtype=DT)).abs().max()) < 6 / math.sqrt(n) * math.sqrt(2)


# ----------------------------------------------------------------- 4. tuning
def _nll_by_hand(la, problem, x, y):
    if problem.likelihood == "regression":
        mu, var = la(x)
        noise = SIGMA**2 * torch.eye(N_OUT, dtype=DT)
        mvn = torch.distributions.MultivariateNormal(mu, var + noise)
        return float(-mvn.log_prob(y).mean())
    probs = la(x)
    if problem.likelihood == "classification":
        return float(-probs.gather(1, y[:, None]).log().mean())
    return float(-(y * probs.log() + (1 - y) * (1 - probs).log()).sum(-1).mean())


@pytest.mark.parametrize(("problem", "backend"), MLP_CASES)
def test_tuning_agrees_with_the_dense_evidence(problem, backend):
    la, g = _fresh(problem, backend)
    claim, c = _claim(backend), la.curvature.prior_factor
    # estimates: a few steps (each SLQ / CG over the data); their answers are not checked
    short = claim.estimates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not converged in the short runs
        marglik = copy.deepcopy(la).optimize_prior_precision(
            method="marglik", **({"n_steps": 3, "lr": 0.1} if short else {})
        )
        mackay = copy.deepcopy(la).optimize_prior_precision(
            method="mackay", **({"max_iter": 2} if short else {})
        )
    assert marglik.exact is mackay.exact is not claim.estimates
    if not claim.estimates:
        # δ* is a stationary point of the dense evidence: ∂/∂ log δ = 0
        log_d = marglik.prior_precision.detach().log().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(problem.evidence(g, log_d.exp(), c), log_d)
        assert abs(float(grad)) < 1e-5 * problem.subset_of.n_params, float(grad)
        _close(mackay.prior_precision, marglik.prior_precision, rtol=1e-5, what="MacKay δ")
        _close(torch.as_tensor(marglik.log_marginal_likelihood, dtype=DT),
               problem.evidence(g, marglik.prior_precision.detach(), c).detach(), rtol=1e-9,
               what="tuned evidence")  # fmt: skip
    _, (xv, yv), _ = problem.data
    grid = torch.tensor([0.05, 0.5, 3.0, 20.0], dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pick at the grid's end
        result = la.optimize_prior_precision(
            method="gridsearch", val_loader=[(xv[:4], yv[:4]), (xv[4:], yv[4:])], grid=grid
        )
    by_hand = []
    for d in grid:
        la.prior_precision = d
        by_hand.append(_nll_by_hand(la, problem, xv, yv))
    _close(torch.tensor(result.history, dtype=DT), torch.tensor(by_hand, dtype=DT), rtol=1e-9,
           what="grid NLL")  # fmt: skip
    assert float(result.prior_precision) == float(grid[int(torch.tensor(by_hand).argmin())])


# ----------------------------------------------------------------- 5. adding data
class _Untouchable:
    """A loader that fails the test when iterated (a refusal must come before any pass)."""

    def __iter__(self):
        raise AssertionError("the loader was iterated")

    def __len__(self):
        return 1


@pytest.mark.parametrize(("problem", "backend"), MLP_CASES)
def test_fit_override_false_is_exact_or_refused(problem, backend):
    la, g = _fresh(problem, backend)
    if not BACKENDS[backend].mergeable:
        before = la.structure
        with pytest.raises(TypeError, match="cannot take more data"):
            la.fit(_Untouchable(), override=False)
        assert la.structure is before
        return
    claim = _claim(backend)
    two = problem.laplace(backend, claim.options_for(problem)).fit(problem.loader(0, 7))
    two.fit(problem.loader(7), override=False)
    assert two.n_data == problem.n
    _close(two.structure.curvature_dense(), g, atol=1e-10 * float(g.abs().max()), what="G")
    for d in (0.3, 4.0):
        _close(two.evidence(d), la.evidence(d), rtol=1e-9, what="evidence")


# ----------------------------------------------------------------- 6. persistence
@pytest.mark.parametrize(("problem", "backend"), MLP_CASES)
def test_state_dict_round_trip(problem, backend):
    la, _ = _fit(problem, backend)
    _, _, xt = problem.data
    state = la.state_dict()
    fresh = problem.laplace(backend, _claim(backend).options_for(problem))
    fresh.load_state_dict(state)
    persists = _claim(backend).persists
    if persists != "all":
        with pytest.raises(RuntimeError, match="loaded without its data"):
            fresh.glm_moments(xt)
    if persists == "nothing":
        with pytest.raises(RuntimeError, match="loaded without its data"):
            fresh.evidence(0.3)
        return
    for d in (0.3, 4.0):
        _close(fresh.evidence(d), la.evidence(d), rtol=1e-12, what="evidence")
    if persists != "all":
        return
    for got, want in zip(fresh.glm_moments(xt), la.glm_moments(xt), strict=True):
        _close(got, want, rtol=1e-10, atol=1e-12, what="glm moments")
    _close(fresh(xt), la(xt), rtol=1e-10, atol=1e-12, what="predictive")


# ----------------------------------------------------------------- 7. ranks
DIST_PROBLEM = Problem("mlp", "classification", "all")
SPLIT = 7  # rank 0 fits examples [0, 7), rank 1 [7, 12)


def _answers(la, xt):
    return {
        "G": la.structure.curvature_dense(),
        "evidence": torch.stack([la.evidence(0.5), la.evidence(2.0)]),
        "moments": torch.cat([t.reshape(-1) for t in la.glm_moments(xt)]),
    }


def _rank_worker(rank, world, port, out):
    join_gloo(rank, world, port)
    try:
        problem = DIST_PROBLEM
        lo, hi = (0, SPLIT) if rank == 0 else (SPLIT, None)
        results = {}
        for backend in BACKENDS:
            la = problem.laplace(backend, _claim(backend).options_for(problem))
            try:
                la.fit(problem.loader(lo, hi))
            except ValueError as err:
                results[backend] = str(err)
                continue
            results[backend] = _answers(la, problem.data[2])
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # gloo's teardown can abort at exit (see test_distributed)


def test_two_rank_fit_equals_one_process_or_is_refused():
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(
            _rank_worker, args=(2, gloo_port(), out), nprocs=2, join=False, start_method="spawn"
        )
        while not ctx.join(timeout=120):
            pass
        per_rank = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(2)]
    for backend, entry in BACKENDS.items():
        if not entry.reducible:
            for res in per_rank:
                assert isinstance(res[backend], str), backend
                assert "does not reduce over a process group" in res[backend]
            continue
        la, _ = _fit(DIST_PROBLEM, backend)
        want = _answers(la, DIST_PROBLEM.data[2])
        for r, res in enumerate(per_rank):
            assert not isinstance(res[backend], str), (backend, res[backend])
            for k, v in want.items():
                _close(res[backend][k], v, rtol=1e-9, atol=1e-10, what=f"{backend} rank {r} {k}")


# ----------------------------------------------------------------- 8. curvature types
#: the problems of the other curvature types: three likelihoods, three subsets
TYPE_PROBLEMS = [
    p
    for p in PROBLEMS
    if p.name in ("mlp-classification-all", "mlp-regression-last_layer", "mlp-binary-subnetwork")
]
#: the Monte-Carlo Fisher's samples per output: its G is within a few % of the GGN
MC_SAMPLES = 4000
KIND = {"empirical": "ef", "mc": "ggn", "hessian": "hessian"}


def _type_case(p: Problem, b: str, fisher_type: str):
    marks = _case(p, b).marks
    return pytest.param(p, b, fisher_type, id=f"{b}-{fisher_type}-{p.name}", marks=marks)


TYPE_CASES = [
    _type_case(p, b, t)
    for p in TYPE_PROBLEMS
    for b, entry in BACKENDS.items()
    for t in ("empirical", "mc", "hessian")
    if t in entry.fisher_types
]


def _type_fit(problem: Problem, backend: str, fisher_type: str, loader=None):
    claim = _claim(backend)
    options = claim.options_for(problem, fisher_type)
    if fisher_type == "mc":
        options.update(mc_samples=MC_SAMPLES, seed=4)
    la = problem.laplace(backend, options, fisher_type=fisher_type)
    return la.fit(problem.loader() if loader is None else loader)


@pytest.mark.parametrize(("problem", "backend", "fisher_type"), TYPE_CASES)
def test_every_curvature_type_against_its_dense_oracle(problem, backend, fisher_type):
    """Each curvature type a registry entry lists, against its own dense oracle (the
    empirical Fisher Σₙ gₙgₙᵀ, the Hessian, the GGN that the MC Fisher estimates),
    restricted to what the backend claims; then the evidence with that G and its scale."""
    claim, kind = _claim(backend), KIND[fisher_type]
    if claim.whole_layers and problem.subset == "subnetwork":
        pytest.skip(f"{backend} needs whole layers (checked: refuses a mask)")
    la = _type_fit(problem, backend, fisher_type)
    g = la.structure.curvature_dense().detach()
    oracle = problem.curvature_of(kind)
    if kind == "hessian" and claim.indefinite == "clipped":
        lam, q = torch.linalg.eigh(oracle)
        oracle = q @ torch.diag(lam.clamp_min(0)) @ q.T
    big = float(oracle.abs().max())
    # the MC Fisher: 1/√K relative sampling error per entry (K samples of each example)
    tol = 0.08 * big if fisher_type == "mc" else 1e-10 * big
    _close(g, g.T, atol=1e-10 * big, what="G symmetric")
    if claim.curvature == "full":
        _close(g, oracle, atol=tol, what=f"{fisher_type} G")
    elif claim.curvature == "diag":
        _close(g, torch.diag(oracle.diagonal()), atol=tol, what=f"{fisher_type} diag G")
    elif claim.curvature == "blocks":
        _close(g, oracle * problem.block_mask, atol=tol, what=f"{fisher_type} layer blocks")
    elif claim.curvature == "diag_estimate":
        off = (oracle**2).sum(1) - oracle.diagonal() ** 2
        sd = (off / claim.options_for(problem)["n_probes"]).sqrt()
        err = (g.diagonal() - oracle.diagonal()).abs()
        assert bool((err <= 6 * sd + tol).all()), f"max error/sd {float((err / sd).max()):.2f}"
    else:
        assert bool(torch.linalg.eigvalsh(g).min() >= -1e-10 * big), "G not PSD"
        _close(g * ~problem.block_mask, torch.zeros_like(g), atol=1e-10 * big, what="off blocks")
        (x, y), _, _ = problem.data
        g1 = _type_fit(problem, backend, fisher_type, [(x[:1], y[:1])]).structure
        oracle1 = problem.curvature_of(kind, x[:1], y[:1]) * problem.block_mask
        tol1 = (0.08 if fisher_type == "mc" else 1e-10) * float(oracle1.abs().max())
        _close(g1.curvature_dense(), oracle1, atol=tol1, what="one datum: Kronecker-exact")
    # the evidence with the backend's own G: s² for the empirical Fisher, s otherwise; the
    # Hessian's negative eigenvalues need δ above them (a smaller δ is refused, tested apart)
    c = la.curvature.prior_factor
    delta = 4.0 + max(0.0, -float(torch.linalg.eigvalsh(problem.scale_of(kind) * g)[0])) / c
    sd_logdet, _ = _hutchinson_sd(problem.precision(g, delta, c, kind), claim, problem)
    want = problem.evidence(g, torch.tensor(delta, dtype=DT), c, kind)
    _close(la.evidence(delta), want, atol=3 * sd_logdet + 1e-9, what="evidence")
