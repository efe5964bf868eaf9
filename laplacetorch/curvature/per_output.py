"""A fit with one curvature per output (a Gaussian noise per output, ``sigma_noise`` ``[C]``).

The backend runs once per output c on the term ½ (y_c − f_c)² alone
(:class:`~laplacetorch.likelihoods.output_column.OutputColumn`), giving G_c; the structures
are kept side by side in a :class:`~laplacetorch.structures.PerOutput`, which re-weights them
by s_c = 1/(σ_c² T) exactly, and the loss is kept per output for the evidence. C passes over
the data: the exact GGN pulls back the C output columns per example anyway, so the extra cost
is C − 1 forward passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from ..likelihoods.output_column import OutputColumn
from ..params import ParameterSubset
from ..structures import PerOutput
from .base import CurvatureResult, resolve_fisher_type
from .context import FitContext

if TYPE_CHECKING:
    from .registry import Backend

__all__ = ["check_per_output", "fit_per_output"]


def check_per_output(backend: Backend, fisher_type: str) -> None:
    """Refuse a noise per output where the backend's structure cannot keep one curvature per
    output, or the curvature is not a sum over outputs (the empirical Fisher).

    Raises:
        ValueError: naming the structures and curvature types that can.
    """
    from .registry import BACKENDS

    if not backend.per_output:
        able = [b.name for b in BACKENDS.values() if b.per_output]
        raise ValueError(
            f"a noise per output (sigma_noise of shape [C]) needs a structure that keeps one "
            f"curvature per output: one of {able}; got hessian_structure={backend.name!r} "
            "(or pass one sigma_noise for all outputs)"
        )
    if resolve_fisher_type(fisher_type, backend.name) == "ef":
        raise ValueError(
            "a noise per output (sigma_noise of shape [C]) needs a curvature that is a sum over "
            "outputs (fisher_type 'exact', 'mc' or 'hessian'); the empirical Fisher's "
            "gradients mix the outputs"
        )


def fit_per_output(
    backend: Backend,
    subset: ParameterSubset,
    loader: Iterable,
    context: FitContext,
    n_outputs: int,
    options: dict[str, Any],
) -> CurvatureResult:
    """The C per-output fits of ``backend``, combined (see the module docstring)."""
    results = [
        backend.fit(subset, OutputColumn(c, n_outputs), loader, context, **options)
        for c in range(n_outputs)
    ]
    first = results[0]
    return CurvatureResult(
        PerOutput([r.structure for r in results]),
        first.n_data,
        first.n_outputs,
        torch.stack([r.loss_sum.reshape(()) for r in results]),
        first.kind,
        first.prior_factor,
    )
