"""MacKay's fixed-point tuning: δ per prior block (and σ for regression) updated from the
effective number of parameters γ until the relative change is below ``tol``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..checks import check_count
from ..datapass import progress_bar
from .common import (
    _LOG_BOUND,
    TuningResult,
    _finish,
    _group_sum,
    _interior,
    _warn_not_converged,
)

if TYPE_CHECKING:
    from ..laplace import Laplace


def _mackay(
    la: Laplace,
    delta0: Tensor,
    prior_structure: str,
    tune_sigma: bool,
    max_iter: int | None = None,
    tol: float | None = None,
    progress: bool | None = None,
) -> TuningResult:
    """MacKay's fixed point: γ = n − c·δ·tr Π⁻¹ per prior block, c·δ ← γ / ‖θ* − μ₀‖² (c the
    prior's factor, :class:`~laplacetorch.prior.Prior`), and for
    regression σ² ← (2·loss + k·T·γ_total·σ²) / (N·C), k = 1 for a curvature that scales as
    (σ²T)⁻¹ (GGN, Hessian) and k = 2 for the empirical Fisher, which scales as (σ²T)⁻²
    (docs/math.md §10); with a noise per output, σ_c² ← (2·loss_c + T·γ_c·σ_c²) / N with
    γ_c = s_c tr(Π⁻¹ G_c). Its fixed point is a stationary point of the Laplace evidence.

    ``tol`` (relative change) defaults to what the dtype can meet (1e-10 in float64; 1.2e-4
    in float32, where the traces' round-off keeps the change near 2e-5; 1e-3 where traces
    are estimates); ``max_iter`` to 1000 (50 where traces are estimates, each a set of
    solves). Hitting the cap or a bound warns and reports
    ``converged=False``.
    """
    c = la.curvature
    estimated = not c.structure.is_exact(la.prior_at(delta0))
    if max_iter is None:
        max_iter = 50 if estimated else 1000
    check_count("max_iter", max_iter)
    if tol is None:
        tol = 1e-3 if estimated else max(1e-10, 1000 * torch.finfo(la.subset.dtype).eps)
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
        prior = la.prior_at(delta)  # P₀ = c·diag(δ): γ and the update are in c·δ
        if prior_structure == "scalar":  # needs only tr Π⁻¹ (cheap for every structure)
            trace = c.structure.trace_inverse(prior, la.scale(sigma))
            gamma_parts = counts - prior.expanded() * trace
        else:
            dinv = c.structure.inverse_diagonal(prior, la.scale(sigma))
            gamma_parts = counts - _group_sum(la, prior.diagonal() * dinv, prior_structure)
        new_delta = gamma_parts.clamp_min(0) / (prior.factor * scatter)
        new_delta = new_delta.clamp(1 / bound, bound)
        new_sigma = sigma
        if tune_sigma and sigma.numel() > 1:
            # one σ_c per output: γ_c = s_c ∂ log det Π/∂s_c = s_c tr(Π⁻¹ G_c) (Σ_c γ_c = γ),
            # and each output's stationarity as below with its own loss, N and γ_c
            s = la.scale(sigma).detach().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(c.structure.logdet(prior, s), s)
            ktg = k * la.temperature * s.detach() * grad
            new_sigma = (2 * c.loss_sum + ktg * sigma.square()) / c.n_data
            new_sigma = new_sigma.sqrt().clamp(1 / bound, bound)
        elif tune_sigma:
            # the stationarity 2·loss − N·C·σ² + k·T·γ·σ² = 0 as σ² = (2·loss + kTγσ²)/(N·C):
            # the same fixed point as σ² = 2·loss/(N·C − kTγ), but positive and contracting
            # where N·C − kTγ is small (that form oscillates or has no residual dof there)
            ktg = k * la.temperature * gamma_parts.sum()
            new_sigma = (2 * c.loss_sum.sum() + ktg * sigma.square()) / (c.n_data * c.n_outputs)
            new_sigma = new_sigma.sqrt().reshape(()).clamp(1 / bound, bound)
        change = max(
            float(((new_delta - delta).abs() / delta).max()),
            float(((new_sigma - sigma).abs() / sigma).max()),
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
