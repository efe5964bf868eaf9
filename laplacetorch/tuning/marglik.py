"""Marginal-likelihood tuning: the evidence maximised over log δ (and log σ) by L-BFGS
(strong Wolfe line search, to convergence) or by Adam (laplace-torch's fixed steps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..checks import check_count
from ..datapass import progress_bar, progress_range
from .common import _LOG_BOUND, TuningResult, _finish, _interior, _warn_not_converged

if TYPE_CHECKING:
    from ..laplace import Laplace


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
    check_count("n_steps", n_steps)
    log_d = delta0.log().clone().requires_grad_(True)
    log_s = la.sigma_noise.log().clone().requires_grad_(True)
    params = [log_d, log_s] if tune_sigma else [log_d]
    history: list[float] = []

    def objective() -> Tensor:
        d = log_d.clamp(-_LOG_BOUND, _LOG_BOUND).exp()
        s = log_s.clamp(-_LOG_BOUND, _LOG_BOUND).exp() if tune_sigma else None
        return -la.evidence(d, s)

    run = _lbfgs if optimizer == "lbfgs" else _adam
    n_iter = run(objective, params, n_steps, lr, tol, history, progress)
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


def _lbfgs(objective, params, n_steps, lr, tol, history, progress) -> int:
    """L-BFGS with a strong Wolfe line search to ``tol`` on the gradient; its iterations."""
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
    return int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))


def _adam(objective, params, n_steps, lr, tol, history, progress) -> int:
    """``n_steps`` Adam steps at ``lr`` (default 0.1), laplace-torch's way; its steps."""
    opt = torch.optim.Adam(params, lr=0.1 if lr is None else lr)
    for _ in progress_range(n_steps, progress, "marglik"):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        opt.step()
        history.append(-loss.item())
    return n_steps
