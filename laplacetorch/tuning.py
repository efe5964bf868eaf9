"""Prior (and noise) tuning: marginal-likelihood ascent, MacKay's fixed point, grid search.

Each method works on log δ (and log σ), calls only O(P) structure operations for the
structures whose logdet is closed form in δ, and leaves the Laplace object tuned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .datapass import BatchAdapter, accumulate
from .predictive import jacobian_sources

if TYPE_CHECKING:
    from .laplace import Laplace

__all__ = ["METHODS", "PRIOR_STRUCTURES", "TuningResult", "optimize"]

METHODS = ("marglik", "mackay", "gridsearch")
PRIOR_STRUCTURES = ("scalar", "layerwise", "diagonal")
_LOG_BOUND = 40.0  # δ and σ stay within e^±40


@dataclass
class TuningResult:
    """Outcome of :meth:`Laplace.optimize_prior_precision`."""

    method: str
    prior_precision: Tensor
    sigma_noise: Tensor
    log_marginal_likelihood: float
    n_iter: int
    converged: bool
    history: list[float] = field(default_factory=list)
    #: False when the structure's log det / traces are estimates for the tuned prior
    #: (``operator``; KFAC with a prior that varies within a Kronecker block)
    exact: bool = True


def _initial_prior(la: Laplace, prior_structure: str) -> Tensor:
    d = la.prior_precision
    gi = la.subset.group_index.to(d.device)
    if prior_structure == "scalar":
        return d.log().mean().exp().reshape(()) if d.numel() > 1 else d.clone()
    if prior_structure == "layerwise":
        if d.numel() == 1:
            return d.expand(la.subset.n_groups).clone()
        if d.numel() == la.subset.n_groups:
            return d.clone()
        sums = torch.zeros(la.subset.n_groups, dtype=d.dtype, device=d.device)
        counts = torch.zeros_like(sums).index_add_(0, gi, torch.ones_like(d))
        return (sums.index_add_(0, gi, d.log()) / counts).exp()
    if d.numel() == la.n_params:
        return d.clone()
    return (d if d.numel() == 1 else d[gi]).expand(la.n_params).clone()


def optimize(
    la: Laplace,
    method: str,
    prior_structure: str,
    val_loader: Iterable | None,
    *,
    tune_sigma: bool | None = None,
    **kwargs: Any,
) -> TuningResult:
    """Dispatch to a tuning method (see :meth:`Laplace.optimize_prior_precision`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if prior_structure not in PRIOR_STRUCTURES:
        raise ValueError(
            f"unknown prior_structure {prior_structure!r}; expected one of {PRIOR_STRUCTURES}"
        )
    regression = la.likelihood.has_noise
    if tune_sigma and not regression:
        raise ValueError("tune_sigma is a regression-only option")
    if tune_sigma is None:
        tune_sigma = regression and method != "gridsearch"
    if method == "gridsearch":
        if tune_sigma:
            raise ValueError("gridsearch tunes the prior precision only; use tune_sigma=False")
        return _gridsearch(la, prior_structure, val_loader, **kwargs)
    if val_loader is not None:
        raise ValueError(f"val_loader is only used by method='gridsearch', not {method!r}")
    delta0 = _initial_prior(la, prior_structure)
    if method == "marglik":
        return _marglik(la, delta0, tune_sigma, **kwargs)
    return _mackay(la, delta0, prior_structure, tune_sigma, **kwargs)


def _finish(la, method, delta, sigma, n_iter, converged, history) -> TuningResult:
    la.prior_precision = delta.detach()
    if la.likelihood.has_noise:
        la.sigma_noise = sigma.detach()
    with torch.no_grad():
        lml = float(la.log_marginal_likelihood())
    exact = la.structure.is_exact(la.prior_precision)
    return TuningResult(
        method, la.prior_precision, la.sigma_noise, lml, n_iter, converged, history, exact
    )


def _marglik(
    la: Laplace,
    delta0: Tensor,
    tune_sigma: bool,
    n_steps: int = 500,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    tol: float = 1e-9,
) -> TuningResult:
    """Maximise the evidence over log δ (and log σ) with L-BFGS (strong Wolfe) or Adam."""
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; expected 'lbfgs' or 'adam'")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    log_d = delta0.log().clone().requires_grad_(True)
    log_s = la.sigma_noise.log().clone().requires_grad_(True)
    params = [log_d, log_s] if tune_sigma else [log_d]
    history: list[float] = []

    def objective() -> Tensor:
        d = log_d.clamp(-_LOG_BOUND, _LOG_BOUND).exp()
        s = log_s.clamp(-_LOG_BOUND, _LOG_BOUND).exp() if tune_sigma else None
        return -la.log_marginal_likelihood(d, s)

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            params,
            lr=lr or 1.0,
            max_iter=n_steps,
            tolerance_grad=tol,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = objective()
            loss.backward()
            history.append(-loss.item())
            return loss

        opt.step(closure)
        n_iter = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    else:
        opt = torch.optim.Adam(params, lr=lr or 0.1)
        for _ in range(n_steps):
            opt.zero_grad()
            loss = objective()
            loss.backward()
            opt.step()
            history.append(-loss.item())
        n_iter = n_steps
    loss = objective()
    grads = torch.autograd.grad(loss, params)
    gmax = max(float(g.abs().max()) for g in grads)
    converged = gmax <= max(tol, 1e-6 * (1 + abs(loss.item())))
    return _finish(la, "marglik", log_d.exp(), log_s.exp(), n_iter, converged, history)


def _group_sum(la: Laplace, v: Tensor, prior_structure: str) -> Tensor:
    if prior_structure == "scalar":
        return v.sum().reshape(())
    if prior_structure == "diagonal":
        return v
    gi = la.subset.group_index.to(v.device)
    return torch.zeros(la.subset.n_groups, dtype=v.dtype, device=v.device).index_add_(0, gi, v)


def _mackay(
    la: Laplace,
    delta0: Tensor,
    prior_structure: str,
    tune_sigma: bool,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> TuningResult:
    """MacKay's fixed point: γ = n − δ·tr Π⁻¹ per prior block, δ ← γ / ‖θ* − μ₀‖², and for
    regression σ² ← 2·loss / (N·C − T·γ_total). Its fixed point is a stationary point of the
    Laplace evidence."""
    c = la.curvature
    diff2 = (la.mean - la.prior_mean).square()
    counts = _group_sum(la, torch.ones_like(diff2), prior_structure)
    scatter = _group_sum(la, diff2, prior_structure).clamp_min(torch.finfo(diff2.dtype).tiny)
    delta, sigma = delta0.clone(), la.sigma_noise.clone()
    history, converged, it = [], False, 0
    bound = float(torch.tensor(_LOG_BOUND).exp())
    for it in range(1, max_iter + 1):  # noqa: B007
        if prior_structure == "scalar":  # needs only tr Π⁻¹ (cheap for every structure)
            gamma_parts = counts - delta * c.structure.trace_inverse(delta, la.scale(sigma))
        else:
            dinv = c.structure.inverse_diagonal(delta, la.scale(sigma))
            gi = la.subset.group_index.to(delta.device)
            d_full = delta[gi] if prior_structure == "layerwise" else delta
            gamma_parts = counts - _group_sum(la, d_full * dinv, prior_structure)
        new_delta = (gamma_parts.clamp_min(0) / scatter).clamp(1 / bound, bound)
        new_sigma = sigma
        if tune_sigma:
            gamma = float(gamma_parts.sum())
            dof = c.n_data * c.n_outputs - la.temperature * gamma
            if dof <= 0:
                raise RuntimeError("MacKay's noise update failed: no residual degrees of freedom")
            new_sigma = (2 * c.loss_sum / dof).sqrt().reshape(())
        change = max(
            float(((new_delta - delta).abs() / delta).max()),
            float((new_sigma - sigma).abs() / sigma),
        )
        delta, sigma = new_delta, new_sigma
        history.append(change)
        if change < tol:
            converged = True
            break
    return _finish(la, "mackay", delta, sigma, it, converged, history)


def _gridsearch(
    la: Laplace,
    prior_structure: str,
    val_loader: Iterable | None,
    grid: Tensor | None = None,
    link_approx: str = "probit",
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> TuningResult:
    """Pick the scalar δ on ``grid`` with the best validation NLL (or the best evidence when
    there is no ``val_loader``). Jacobians of each validation batch are computed once; the
    validation pass goes through :func:`~laplacetorch.datapass.accumulate` (checks, bar,
    reduction across processes)."""
    if prior_structure != "scalar":
        raise ValueError("gridsearch tunes a scalar prior precision only")
    grid = torch.logspace(-4, 4, 81) if grid is None else torch.as_tensor(grid)
    grid = grid.to(la.subset.dtype).reshape(-1)
    if grid.numel() == 0 or not torch.isfinite(grid).all() or (grid <= 0).any():
        raise ValueError("grid must be a non-empty set of positive finite prior precisions")
    if val_loader is None:
        with torch.no_grad():
            scores = torch.stack([la.log_marginal_likelihood(d) for d in grid])
        best = int(scores.argmax())
    else:
        scores = _validation_nll(la, grid, val_loader, link_approx, n_samples, generator, progress)
        best = int(scores.argmin())
    return _finish(
        la, "gridsearch", grid[best], la.sigma_noise, grid.numel(), True, scores.tolist()
    )


def _validation_nll(
    la, grid, val_loader, link_approx, n_samples, generator, progress=False
) -> Tensor:
    """Mean validation NLL of the GLM predictive for each δ on ``grid``, through the data
    pass; each Jacobian source is built once per chunk and reused for every grid value."""
    la.likelihood.check_link(link_approx)
    structure, s, lik = la.structure, la.scale(), la.likelihood
    layouts = structure.layouts()

    def step(x: Any, y: Tensor) -> dict[str, Tensor]:
        totals = torch.zeros(grid.numel(), dtype=torch.float64, device=la.subset.device)
        start = 0
        for source in jacobian_sources(la.subset, x, y.shape[0], layouts, la.memory_budget):
            f = source.f
            yb = lik.check_targets(y[start : start + f.shape[0]], tuple(f.shape))
            start += f.shape[0]
            for i, d in enumerate(grid):
                var = structure.functional_variance(source, d, s)
                pred = lik.glm_predictive(f, var, la.sigma_noise, link_approx, n_samples, generator)
                totals[i] += lik.predictive_nll(pred, yb).double()
        return {"nll": totals}

    sums = accumulate(
        BatchAdapter(val_loader, la.dict_key_y),
        step,
        device=la.subset.device,
        dtype=la.subset.dtype,
        progress=progress,
        desc="grid search",
        batch_size_fn=la.batch_size_fn,
    )
    return (sums["nll"] / sums["n_data"]).cpu()
