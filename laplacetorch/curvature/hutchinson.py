"""``hutchinson``: the GGN diagonal estimated from GGN-vector products with random probes."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..checks import check_count
from ..likelihoods import Likelihood
from ..linalg import hutchinson_diagonal
from ..params import ParameterSubset
from ..structures import Diagonal
from .base import CurvatureResult
from .context import DEFAULT_CONTEXT, FitContext
from .ggn_operator import GGNOperator
from .layer_blocks import layer_parts

__all__ = ["fit_hutchinson", "probe_chunk", "probe_generator"]


def probe_chunk(subset: ParameterSubset, memory_budget: int) -> int:
    """How many probe vectors ``[P]`` fit in ``memory_budget`` bytes (at least one)."""
    return max(1, memory_budget // max(subset.n_params * torch.finfo(subset.dtype).bits // 8, 1))


def probe_generator(
    generator: torch.Generator | None, subset: ParameterSubset, seed: int
) -> torch.Generator:
    """The probes' generator: the one given, else one on the subset's device seeded by ``seed``."""
    if generator is None:
        generator = torch.Generator(device=subset.device).manual_seed(seed)
    return generator


def fit_hutchinson(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    mc_samples: int = 1,
    n_probes: int = 32,
    generator: torch.Generator | None = None,
    seed: int = 0,
    vector_loop: bool | None = None,
) -> CurvatureResult:
    """diag G ≈ (1/S) Σₛ zₛ ⊙ G zₛ with S Rademacher probes, clamped at 0.

    Costs one data pass with S jvps and S vjps per batch (about 2S gradient epochs). The
    estimator's per-entry variance is kept as ``structure.variance``. For models where only
    GGN-vector products are affordable; ``diag`` is exact and cheaper when it applies.

    Args:
        n_probes: S. generator, seed: the probes' randomness (``seed`` when no generator).
        memory_budget: bytes the probe block ``[S, P]`` may take per chunk of probes.
    """
    check_count("n_probes", n_probes)
    op = GGNOperator.for_fit(subset, likelihood, loader, context, mc_samples, seed, vector_loop)
    generator = probe_generator(generator, subset, seed)
    diag, variance = hutchinson_diagonal(
        op.matvec,
        subset.n_params,
        n_probes,
        generator=generator,
        dtype=subset.dtype,
        device=subset.device,
        chunk_size=probe_chunk(subset, context.memory_budget),
    )
    psd = op.kind != "hessian"  # the Hessian's diagonal may be negative: kept
    structure = Diagonal(
        diag.clamp_min(0) if psd else diag,
        subset.group_index,
        variance=variance,
        psd=psd,
        layer_parts=layer_parts(subset),
    )
    return CurvatureResult(structure, op.n_data, op.n_outputs, op.loss_sum, op.kind)
