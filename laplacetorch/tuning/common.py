"""What the tuning methods share: the result (:class:`TuningResult`), the prior's
structures and their canonical names, the starting δ, the bound e^±40 on δ and σ with its
check, the not-converged warning, the per-block sums, and installing the tuned values."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..laplace import Laplace

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


def _finish(la, method, delta, sigma, n_iter, converged, history) -> TuningResult:
    la.prior_precision = delta.detach()
    if la.likelihood.has_noise:
        la.sigma_noise = sigma.detach()
    with torch.no_grad():
        lml = float(la.evidence())
    exact = la.structure.is_exact(la.prior)
    return TuningResult(
        method, la.prior_precision, la.sigma_noise, lml, n_iter, converged, history, exact
    )


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
            stacklevel=5,
        )
    return not at


def _warn_not_converged(method: str, n_iter: int, what: str) -> None:
    warnings.warn(
        f"{method} did not converge in {n_iter} iterations ({what}); the result's "
        "converged is False: raise max_iter / n_steps, or loosen tol",
        RuntimeWarning,
        stacklevel=5,
    )


def _group_sum(la: Laplace, v: Tensor, prior_structure: str) -> Tensor:
    if prior_structure == "scalar":
        return v.sum().reshape(())
    if prior_structure == "diag":
        return v
    gi = la.subset.group_index.to(v.device)
    return torch.zeros(la.subset.n_groups, dtype=v.dtype, device=v.device).index_add_(0, gi, v)
