"""Prior (and noise) tuning: marginal-likelihood ascent, MacKay's fixed point, grid search.

Each method works on log δ (and log σ), calls only O(P) structure operations for the
structures whose logdet is closed form in δ, and leaves the Laplace object tuned.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .datapass import BatchAdapter, accumulate, collect, progress_bar, progress_range
from .predictive import function_samples, jacobian_sources

if TYPE_CHECKING:
    from .laplace import Laplace

__all__ = ["METHODS", "PRIOR_STRUCTURES", "TuningResult", "optimize"]

METHODS = ("marglik", "mackay", "gridsearch")
#: laplace-torch's names; "layerwise" is one δ per parameter tensor, "diag" one per weight
PRIOR_STRUCTURES = ("scalar", "layerwise", "diag", "diagonal")
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


def _structure_of(la: Laplace, delta: Tensor) -> str:
    if delta.numel() == 1:
        return "scalar"
    return "diag" if delta.numel() == la.n_params else "layerwise"


def initial_prior(la: Laplace, init: Tensor | float, prior_structure: str | None) -> Tensor:
    """δ to start from: a scalar ``init`` spread over ``prior_structure``; a vector ``init``
    keeps its own structure (laplace-torch's rule), which an explicit ``prior_structure``
    must then agree with."""
    d, _ = la._expand_prior(init)  # validates
    d = torch.as_tensor(init, dtype=la.subset.dtype, device=la.subset.device).detach()
    d = d.reshape(()) if d.numel() == 1 else d.reshape(-1)
    if d.numel() > 1:
        own = _structure_of(la, d)
        if prior_structure is not None and _canonical(prior_structure) != own:
            raise ValueError(
                f"init_prior_prec has {d.numel()} entries ({own!r}) but prior_structure is "
                f"{prior_structure!r}; pass a scalar init_prior_prec to choose the structure"
            )
        return d.clone()
    ps = _canonical(prior_structure or "scalar")
    if ps == "scalar":
        return d.clone()
    return d.expand(la.subset.n_groups if ps == "layerwise" else la.n_params).clone()


def _canonical(prior_structure: str) -> str:
    if prior_structure not in PRIOR_STRUCTURES:
        raise ValueError(
            f"unknown prior_structure {prior_structure!r}; expected one of {PRIOR_STRUCTURES}"
        )
    return "diag" if prior_structure == "diagonal" else prior_structure


def optimize(
    la: Laplace,
    method: str = "marglik",
    *,
    pred_type: str = "glm",
    prior_structure: str | None = None,
    val_loader: Iterable | None = None,
    init_prior_prec: Tensor | float = 1.0,
    tune_sigma: bool = False,
    n_steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    grid: Tensor | None = None,
    log_prior_prec_min: float = -4.0,
    log_prior_prec_max: float = 4.0,
    grid_size: int = 100,
    log_prior_prec_base: float = 10.0,
    loss: Callable[..., Tensor | float] | None = None,
    link_approx: str = "probit",
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> TuningResult:
    """Tune δ (and σ when ``tune_sigma``) as :meth:`Laplace.optimize_prior_precision` says."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if pred_type not in ("glm", "nn"):
        raise ValueError(f"unknown pred_type {pred_type!r}; expected 'glm' or 'nn'")
    if tune_sigma and not la.likelihood.has_noise:
        raise ValueError("tune_sigma is a regression-only option")
    delta0 = initial_prior(la, init_prior_prec, prior_structure)
    ps = _structure_of(la, delta0) if delta0.numel() > 1 else "scalar"
    if method == "gridsearch":
        if tune_sigma:
            raise ValueError("gridsearch tunes the prior precision only; use tune_sigma=False")
        if ps != "scalar":
            raise ValueError("gridsearch tunes a scalar prior precision only")
        if grid is None:
            _check_count("grid_size", grid_size)
            grid = torch.logspace(
                log_prior_prec_min, log_prior_prec_max, grid_size, base=log_prior_prec_base
            )
        return _gridsearch(
            la, val_loader, grid, pred_type, loss, link_approx, n_samples, generator, progress
        )
    if val_loader is not None:
        raise ValueError(f"val_loader is only used by method='gridsearch', not {method!r}")
    if method == "marglik":
        if optimizer is None:  # laplace-torch's lr means Adam's; without one, L-BFGS converges
            optimizer = "adam" if lr is not None else "lbfgs"
        if n_steps is None:
            n_steps = 100 if optimizer == "adam" else 500
        return _marglik(la, delta0, tune_sigma, n_steps, optimizer, lr, tol or 1e-9, progress)
    return _mackay(la, delta0, ps, tune_sigma, max_iter, tol, progress)


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


def _finish(la, method, delta, sigma, n_iter, converged, history) -> TuningResult:
    la.prior_precision = delta.detach()
    if la.likelihood.has_noise:
        la.sigma_noise = sigma.detach()
    with torch.no_grad():
        lml = float(la.evidence())
    exact = la.structure.is_exact(la.prior_precision)
    return TuningResult(
        method, la.prior_precision, la.sigma_noise, lml, n_iter, converged, history, exact
    )


def _marglik(
    la: Laplace,
    delta0: Tensor,
    tune_sigma: bool,
    n_steps: int,
    optimizer: str,
    lr: float | None,
    tol: float,
    progress: bool | None,
) -> TuningResult:
    """Maximise the evidence over log δ (and log σ) with L-BFGS (strong Wolfe) or Adam
    (``n_steps`` steps at ``lr``, laplace-torch's way)."""
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
        return -la.evidence(d, s)

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

        bar = progress_bar(None, progress, "marglik (L-BFGS evaluations)")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = objective()
            loss.backward()
            history.append(-loss.item())
            bar.update()
            return loss

        with bar:
            opt.step(closure)
        n_iter = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
    else:
        opt = torch.optim.Adam(params, lr=0.1 if lr is None else lr)
        for _ in progress_range(n_steps, progress, "marglik"):
            opt.zero_grad()
            loss = objective()
            loss.backward()
            opt.step()
            history.append(-loss.item())
        n_iter = n_steps
    loss = objective()
    grads = torch.autograd.grad(loss, params)
    gmax = max(float(g.abs().max()) for g in grads)
    # the gradient's round-off floor: float32 evidence gradients are noisy at ~√eps·|L|
    rel = max(1e-6, torch.finfo(la.subset.dtype).eps ** 0.5)
    converged = gmax <= max(tol, rel * (1 + abs(loss.item())))
    converged = _interior(log_d.detach(), log_s.detach() if tune_sigma else None) and converged
    if not converged:
        _warn_not_converged("marglik", n_iter, f"largest gradient {gmax:.3g}")
    return _finish(la, "marglik", log_d.exp(), log_s.exp(), n_iter, converged, history)


def _interior(log_d: Tensor, log_s: Tensor | None) -> bool:
    """False (with a warning) when δ or σ sits at its bound e^±40: no optimum inside."""
    at = [
        n
        for n, v in (("prior precision δ", log_d), ("sigma_noise σ", log_s))
        if v is not None and bool((v.abs() >= _LOG_BOUND * (1 - 1e-6)).any())
    ]
    if at:
        warnings.warn(
            f"{' and '.join(at)} reached the bound e^±{_LOG_BOUND:g}: the evidence has no "
            "optimum inside it (e.g. a prior δ → 0 for weights the data determine, or σ → 0 "
            "for a net that interpolates); the result is not converged",
            RuntimeWarning,
            stacklevel=4,
        )
    return not at


def _warn_not_converged(method: str, n_iter: int, what: str) -> None:
    warnings.warn(
        f"{method} did not converge in {n_iter} iterations ({what}); the result's "
        "converged is False: raise max_iter / n_steps, or loosen tol",
        RuntimeWarning,
        stacklevel=4,
    )


def _group_sum(la: Laplace, v: Tensor, prior_structure: str) -> Tensor:
    if prior_structure == "scalar":
        return v.sum().reshape(())
    if prior_structure == "diag":
        return v
    gi = la.subset.group_index.to(v.device)
    return torch.zeros(la.subset.n_groups, dtype=v.dtype, device=v.device).index_add_(0, gi, v)


def _mackay(
    la: Laplace,
    delta0: Tensor,
    prior_structure: str,
    tune_sigma: bool,
    max_iter: int | None = None,
    tol: float | None = None,
    progress: bool | None = None,
) -> TuningResult:
    """MacKay's fixed point: γ = n − δ·tr Π⁻¹ per prior block, δ ← γ / ‖θ* − μ₀‖², and for
    regression σ² ← (2·loss + k·T·γ_total·σ²) / (N·C), k = 1 for a curvature that scales as
    (σ²T)⁻¹ (GGN, Hessian) and k = 2 for the empirical Fisher, which scales as (σ²T)⁻²
    (docs/math.md §10). Its fixed point is a stationary point of the Laplace evidence.

    ``tol`` (relative change) defaults to what the dtype can meet (1e-10 in float64, 1e-5
    in float32; 1e-3 where traces are estimates); ``max_iter`` to 1000 (50 where traces
    are estimates, each a set of solves). Hitting the cap or a bound warns and reports
    ``converged=False``.
    """
    c = la.curvature
    estimated = not c.structure.is_exact(delta0)
    if max_iter is None:
        max_iter = 50 if estimated else 1000
    _check_count("max_iter", max_iter)
    if tol is None:
        tol = 1e-3 if estimated else max(1e-10, 100 * torch.finfo(la.subset.dtype).eps)
    k = 2.0 if c.kind == "ef" else 1.0
    diff2 = (la.mean - la.prior_mean).square()
    counts = _group_sum(la, torch.ones_like(diff2), prior_structure)
    scatter = _group_sum(la, diff2, prior_structure).clamp_min(torch.finfo(diff2.dtype).tiny)
    delta, sigma = delta0.clone(), la.sigma_noise.clone()
    history, converged, it, change = [], False, 0, float("inf")
    bound = float(torch.tensor(_LOG_BOUND).exp())
    bar = progress_bar(max_iter, progress, "MacKay")
    for it in range(1, max_iter + 1):  # noqa: B007
        bar.update()
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
            # the stationarity 2·loss − N·C·σ² + k·T·γ·σ² = 0 as σ² = (2·loss + kTγσ²)/(N·C):
            # the same fixed point as σ² = 2·loss/(N·C − kTγ), but positive and contracting
            # where N·C − kTγ is small (that form oscillates or has no residual dof there)
            ktg = k * la.temperature * gamma_parts.sum()
            new_sigma = (2 * c.loss_sum + ktg * sigma.square()) / (c.n_data * c.n_outputs)
            new_sigma = new_sigma.sqrt().reshape(()).clamp(1 / bound, bound)
        change = max(
            float(((new_delta - delta).abs() / delta).max()),
            float((new_sigma - sigma).abs() / sigma),
        )
        delta, sigma = new_delta, new_sigma
        history.append(change)
        bar.set_postfix(change=f"{change:.2g}")
        if change < tol:
            converged = True
            break
    bar.close()
    converged = _interior(delta.log(), sigma.log() if tune_sigma else None) and converged
    if not converged and change >= tol:
        _warn_not_converged("MacKay", it, f"last relative change {change:.3g}, tol {tol:.3g}")
    return _finish(la, "mackay", delta, sigma, it, converged, history)


def _gridsearch(
    la: Laplace,
    val_loader: Iterable | None,
    grid: Tensor,
    pred_type: str,
    loss: Callable[..., Tensor | float] | None,
    link_approx: str,
    n_samples: int,
    generator: torch.Generator | None,
    progress: bool,
) -> TuningResult:
    """Pick the scalar δ on ``grid`` with the lowest validation loss (default: the predictive
    NLL), or the best evidence when there is no ``val_loader``. Each validation batch's
    Jacobians are computed once for all δ (``glm``); the pass goes through the data-pass
    helper (checks, bar, reduction across processes)."""
    grid = torch.as_tensor(grid).to(la.subset.dtype).reshape(-1)
    if grid.numel() == 0 or not torch.isfinite(grid).all() or (grid <= 0).any():
        raise ValueError("grid must be a non-empty set of positive finite prior precisions")
    if val_loader is None:
        if loss is not None or pred_type != "glm":
            raise ValueError("gridsearch with a loss or pred_type='nn' needs a val_loader")
        with torch.no_grad():
            it = progress_range(grid.numel(), progress, "grid search (evidence)")
            scores = torch.stack([la.evidence(grid[i]) for i in it])
        best = int(scores.argmax())
    else:
        la.likelihood.check_link(link_approx)
        _check_count("n_samples", n_samples)
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable; got {type(loss).__name__}")
        scores = _validation_scores(
            la, grid, val_loader, pred_type, loss, link_approx, n_samples, generator, progress
        )
        best = int(scores.argmin())
    if grid.numel() > 1 and best in (0, grid.numel() - 1):
        end = "smallest" if float(grid[best]) == float(grid.min()) else "largest"
        warnings.warn(
            f"the grid search picked δ = {float(grid[best]):.3g}, the {end} value of its grid "
            f"[{float(grid.min()):.3g}, {float(grid.max()):.3g}]: the best δ may lie outside "
            "it; widen log_prior_prec_min / log_prior_prec_max (or pass another grid)",
            RuntimeWarning,
            stacklevel=3,
        )
    return _finish(
        la, "gridsearch", grid[best], la.sigma_noise, grid.numel(), True, scores.tolist()
    )


def _predictives(la, x, n, grid, pred_type, link_approx, n_samples, generator):
    """The predictive at every δ of ``grid`` for one batch (a list over δ of chunk lists),
    and the shape of f."""
    structure, s, lik = la.structure, la.scale(), la.likelihood.for_fitting()
    if pred_type == "nn":
        out = []
        for d in grid:
            theta = la.mean + structure.sample(n_samples, d, s, generator)
            fs = function_samples(la.subset, theta, x)
            out.append([lik.nn_predictive(fs, la.sigma_noise)])
        return out, tuple(fs.shape[1:])
    out, f_shape = [[] for _ in grid], [0, 0]
    for source in jacobian_sources(la.subset, x, n, structure.layouts(), la.memory_budget):
        f_shape = [f_shape[0] + source.f.shape[0], *source.f.shape[1:]]
        for i, d in enumerate(grid):
            var = structure.functional_variance(source, d, s)
            out[i].append(
                lik.glm_predictive(source.f, var, la.sigma_noise, link_approx, n_samples, generator)
            )
    return out, tuple(f_shape)


def _cat(chunks: list) -> Tensor | tuple[Tensor, ...]:
    if isinstance(chunks[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))
    return torch.cat(chunks)


def _call_loss(loss: Callable, pred, y: Tensor) -> float:
    """laplace-torch's convention: ``loss(probs, y)``, or for a Gaussian predictive
    ``loss(mean, var, y)`` when the loss takes three arguments, else ``loss(mean, y)``."""
    if isinstance(pred, tuple):
        try:
            n_args = len(inspect.signature(loss).parameters)
        except (TypeError, ValueError):
            n_args = 3
        value = loss(*pred, y) if n_args >= 3 else loss(pred[0], y)
    else:
        value = loss(pred, y)
    value = float(value)
    if value != value:
        raise ValueError("the validation loss returned NaN")
    return value


def _validation_scores(
    la, grid, val_loader, pred_type, loss, link_approx, n_samples, generator, progress
) -> Tensor:
    """Validation loss of the predictive for each δ on ``grid``: the mean NLL, or ``loss``
    on all validation predictions at once."""
    lik = la.likelihood.for_fitting()  # validation data are like the training data
    kw = {
        "device": la.subset.device,
        "dtype": la.subset.dtype,
        "progress": progress,
        "desc": "grid search",
        "batch_size_fn": la.batch_size_fn,
    }
    loader = BatchAdapter(val_loader, la.dict_key_y)

    def preds(x: Any, y: Tensor) -> tuple[list, tuple[int, ...]]:
        out, f_shape = _predictives(
            la, x, y.shape[0], grid, pred_type, link_approx, n_samples, generator
        )
        return [_cat(c) for c in out], f_shape

    if loss is None:

        def nll_step(x: Any, y: Tensor) -> dict[str, Tensor]:
            ps, f_shape = preds(x, y)
            yb = lik.check_targets(y, f_shape)
            nll = [lik.predictive_nll(p, yb, la.sigma_noise).double() for p in ps]
            return {"nll": torch.stack(nll)}

        sums = accumulate(loader, nll_step, **kw)
        return (sums["nll"] / sums["n_data"]).cpu()

    def keep_step(x: Any, y: Tensor) -> dict[str, Tensor]:
        out = {"y": y}
        for i, p in enumerate(preds(x, y)[0]):
            for j, t in enumerate(p if isinstance(p, tuple) else (p,)):
                out[f"{i}.{j}"] = t
        return out

    got = collect(loader, keep_step, **kw)
    scores = []
    for i in range(grid.numel()):
        parts = [got[k] for k in sorted(k for k in got if k.startswith(f"{i}."))]
        scores.append(_call_loss(loss, tuple(parts) if len(parts) > 1 else parts[0], got["y"]))
    return torch.tensor(scores, dtype=torch.float64)
