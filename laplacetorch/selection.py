"""Model selection by the Laplace log marginal likelihood.

Each candidate (a trained network) gets a Laplace approximation with the same structure, its
prior (and noise) tuned by the evidence, and is ranked by the tuned log marginal likelihood
log p(D | M) — training data only, no validation set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .laplace import Laplace

__all__ = ["Candidate", "SelectionResult", "select_model"]


@dataclass
class Candidate:
    """One candidate's evidence after tuning."""

    name: str
    log_marginal_likelihood: float
    log_likelihood: float
    prior_precision: list[float]
    #: σ (a list of one per output where the fit kept a noise per output)
    sigma_noise: float | list[float]
    n_params: int
    seconds: float
    #: the fitted and tuned approximation (for predictions)
    laplace: Laplace | None = field(default=None, repr=False, compare=False)


@dataclass
class SelectionResult:
    """Candidates ranked by evidence, best first."""

    ranking: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        """The candidate with the largest log marginal likelihood."""
        return self.ranking[0]

    def table(self) -> str:
        """A printable ranking."""
        rows = [
            f"{'rank':<6}{'model':<24}{'log p(D|M)':>14}{'log p(D|θ*)':>14}{'P':>9}"
            f"{'δ':>10}{'σ':>8}{'sec':>8}"
        ]
        for i, c in enumerate(self.ranking, 1):
            delta = c.prior_precision[0] if len(c.prior_precision) == 1 else float("nan")
            sigma = c.sigma_noise if isinstance(c.sigma_noise, float) else float("nan")
            rows.append(
                f"{i:<6}{c.name:<24}{c.log_marginal_likelihood:>14.3f}{c.log_likelihood:>14.3f}"
                f"{c.n_params:>9d}{delta:>10.3g}{sigma:>8.3g}{c.seconds:>8.2f}"
            )
        return "\n".join(rows)


def select_model(
    candidates: Mapping[str, nn.Module],
    likelihood: str,
    train_loader: Iterable,
    *,
    subset_of_weights: str = "all",
    hessian_structure: str | None = None,
    method: str = "marglik",
    prior_structure: str = "scalar",
    laplace_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> SelectionResult:
    """Rank trained candidate models by their tuned Laplace evidence.

    Args:
        candidates: name → trained model (eval mode).
        likelihood: ``"classification"``, ``"regression"`` or ``"binary"``.
        train_loader: the training data all candidates were trained on.
        subset_of_weights, hessian_structure: as for :class:`~laplacetorch.Laplace`; the
            evidence compares models fairly only with the same structure for all.
        method, prior_structure: how the prior (and σ) are tuned per candidate.
        laplace_kwargs: further :class:`~laplacetorch.Laplace` arguments.

    Raises:
        ValueError: for no candidates or a candidate that is not an ``nn.Module``.
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty mapping of name -> trained nn.Module")
    results = []
    for name, model in candidates.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"candidate {name!r} is not an nn.Module; got {type(model).__name__}")
        t0 = time.perf_counter()
        la = Laplace(
            model, likelihood, subset_of_weights, hessian_structure, **(laplace_kwargs or {})
        )
        la.fit(train_loader, progress=progress)
        res = la.optimize_prior_precision(
            method=method, prior_structure=prior_structure, tune_sigma=la.likelihood.has_noise
        )
        results.append(
            Candidate(
                name=name,
                log_marginal_likelihood=res.log_marginal_likelihood,
                log_likelihood=float(la.log_likelihood),
                prior_precision=la.prior_precision.reshape(-1).tolist(),
                sigma_noise=la.sigma_noise.tolist(),  # a float, or one per output
                n_params=la.n_params,
                seconds=time.perf_counter() - t0,
                laplace=la,
            )
        )
    results.sort(key=lambda c: c.log_marginal_likelihood, reverse=True)
    return SelectionResult(results)
