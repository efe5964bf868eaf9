"""``operator``: nothing materialised; the posterior precision as GGN-vector products."""

from __future__ import annotations

from collections.abc import Iterable

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Operator
from .base import CurvatureResult
from .context import DEFAULT_CONTEXT, FitContext
from .ggn_operator import GGNOperator
from .hutchinson import probe_chunk

__all__ = ["fit_operator"]


def fit_operator(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    mc_samples: int = 1,
    n_probes: int = 30,
    n_steps: int = 40,
    cg_tol: float | None = None,
    solver: str = "cg",
    neumann_terms: int = 100,
    seed: int = 0,
    vector_loop: bool | None = None,
) -> CurvatureResult:
    """A matrix-free :class:`~laplacetorch.structures.Operator`; every later answer is an
    estimate from GGN-vector products over ``loader`` (kept by reference, so the data must
    stay available). The SLQ nodes for log det are computed once, at the first request.
    ``solver`` picks CG (default) or a truncated Neumann series for solves (see
    :class:`~laplacetorch.structures.Operator`). ``memory_budget`` bounds the probe block of
    its Hutchinson estimates (diagonals)."""
    op = GGNOperator.for_fit(subset, likelihood, loader, context, mc_samples, seed, vector_loop)
    structure = Operator(
        op.matvec,
        subset.n_params,
        subset.dtype,
        subset.device,
        subset.group_index,
        n_probes=n_probes,
        n_steps=n_steps,
        cg_tol=cg_tol,
        solver=solver,
        neumann_terms=neumann_terms,
        seed=seed,
        psd=op.kind != "hessian",
        probe_chunk=probe_chunk(subset, context.memory_budget),
    )
    return CurvatureResult(structure, op.n_data, op.n_outputs, op.loss_sum, op.kind)
