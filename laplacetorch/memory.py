"""Memory, up front: what a fit will hold at its peak, checked before anything is allocated.

The estimates count the tensors that grow with the model, in bytes of the model's dtype:

- ``full``: G, its eigenvectors and the eigendecomposition's workspace, 3·P²;
- ``block_full``: the same per layer block, 3·Σ_b P_b², plus the diagonal rest;
- ``kfac`` / ``ekfac``: both factors and their eigenbases per block, 3·Σ_b (out_b² + in_b²)
  (EKFAC adds its eigenvalues, Σ_b out_b·in_b), plus the diagonal rest;
- ``diag``, ``hutchinson``: a few vectors of length P;
- ``lanczos``: the Krylov basis and the Ritz vectors, 2·P·m with m the iterations;
- ``operator``: the SLQ Lanczos bases of all probes, n_probes·n_steps·P in float64;
- ``gp``, ``nystrom``: the kernel of the M points' C outputs, (M·C)² in float64, checked again
  by the backend once its first pass has counted N and C.

Each backend's registry entry (:mod:`laplacetorch.curvature.registry`) names its estimate.
Every fit adds the working memory of a batch that grows with the output width
(:func:`batch_bytes`): K output vectors of width C per example, K = C for the exact GGN and
the Hessian (the columns of Sₙ; T·V of them for T positions of V classes), ``mc_samples`` for
the MC Fisher, 1 for the empirical Fisher. A batch holds them about three times (as made: the
square root ``[B, C, K]`` or the sampled gradients; as pulled back, ``[K, B, C]``; and their
gradient at the outputs), and a backend that pulls them back to its layers
(``Backend.layer_columns``) holds ``[K, B, out]`` per layer as well. B and C are known once
the first batch is drawn: ``Laplace.fit`` checks the structure before any pass, and the pass
checks again on its first batch (:attr:`~.curvature.context.FitContext.memory_check`),
before the first column is formed. A refusal names what fits instead: the cheaper curvature
types of the same structure, smaller batches, fewer positions, other structures.

The default limit is 80% of the memory available now: ``MemAvailable`` of the host, or the
free memory of the model's CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .params import ParameterSubset

__all__ = [
    "MemoryBudgetError",
    "Sizes",
    "available_memory",
    "batch_bytes",
    "check_fit_memory",
    "columns_bytes",
    "fit_bytes",
    "human_bytes",
    "largest_fitting",
    "memory_limit",
    "n_columns",
]

_FALLBACK_BYTES = 8 * 2**30


class MemoryBudgetError(ValueError):
    """A fit or a predictive would need more memory than its limit (raised before anything
    large is allocated)."""


def available_memory(device: torch.device) -> int:
    """Bytes available for new tensors on ``device`` now."""
    if device.type == "cuda":  # free, plus what the caching allocator holds unused
        free = torch.cuda.mem_get_info(device)[0]
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _FALLBACK_BYTES


def memory_limit(limit: int | None, device: torch.device) -> int:
    """``limit``, or by default 80% of the memory available on ``device`` now."""
    return int(0.8 * available_memory(device)) if limit is None else limit


def _layer_sizes(subset: ParameterSubset) -> tuple[list[tuple[int, int]], int]:
    """``(out, in')`` of each layer block and the number of other parameters."""
    from .curvature.layer_blocks import KRON_MODULES  # the curvature package imports us

    if subset.index is not None:
        return [], subset.n_params
    chosen, shapes, covered = set(subset.names), [], 0
    for name, m in subset.model.named_modules():
        prefix = name + "." if name else ""
        if isinstance(m, KRON_MODULES) and prefix + "weight" in chosen:
            groups = getattr(m, "groups", 1)
            bias = int(m.bias is not None and prefix + "bias" in chosen)
            shapes += [(m.weight.shape[0] // groups, m.weight[0].numel() + bias)] * groups
            covered += m.weight.numel() + (m.bias.numel() if bias else 0)
    return shapes, subset.n_params - covered


@dataclass(frozen=True)
class Sizes:
    """What is known of a fit's size: N, C and the examples B of a batch from the data
    (``None`` while unknown), and the curvature type, which sets the output vectors a batch
    pulls back (:func:`n_columns`)."""

    n_data: int | None = None
    n_outputs: int | None = None
    n_batch: int | None = None
    fisher_type: str = "exact"
    #: the curvatures the fit keeps: C for a noise per output (each output's, and the
    #: structure of their weighted sum the evidence builds), else 1
    curvatures: int = 1


def n_columns(fisher_type: str, n_outputs: int, mc_samples: int = 1) -> int:
    """K, the output vectors pulled back per example: the C columns of Sₙ (the exact GGN;
    the Hessian's C output directions), ``mc_samples`` sampled gradients (``"mc"``) or the
    observed gradient (``"empirical"``)."""
    if fisher_type == "mc":
        return mc_samples
    if fisher_type in ("empirical", "ef"):
        return 1
    return n_outputs


def columns_bytes(n_columns: int, n_examples: int, width: int, element_size: int) -> int:
    """K·B·W elements: K vectors of width W for each of B examples (the columns ``[K, B, C]``;
    an output covariance ``[B, C, C]`` is K = W = C)."""
    return n_columns * n_examples * width * element_size


def _e(subset: ParameterSubset) -> int:
    return torch.finfo(subset.dtype).bits // 8


def full_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """G, its eigenvectors and the eigendecomposition's workspace, 3·P²."""
    return 3 * subset.n_params**2 * _e(subset)


def vector_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """A few vectors of length P (``diag``, ``hutchinson``)."""
    return 4 * subset.n_params * _e(subset)


def lanczos_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """The Krylov basis and the Ritz vectors, 2·P·m with m the iterations."""
    p = subset.n_params
    m = options.get("max_iter") or min(
        p, 3 * (options.get("rank", 20) + options.get("oversample", 10))
    )
    return 2 * p * m * _e(subset)


def operator_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """The SLQ Lanczos bases of all probes, n_probes·n_steps·P in float64."""
    return options.get("n_probes", 30) * options.get("n_steps", 40) * subset.n_params * 8


def _points(option: str, options: dict[str, Any], sizes: Sizes) -> int:
    """M, the kernel's points: the option, else N (0 while N is unknown)."""
    if options.get("subset_indices") is not None:
        return len(options["subset_indices"])
    return options.get(option) or sizes.n_data or 0


def gp_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """The kernel K ``[M·C, M·C]`` and its eigenvectors in float64 with eigh's workspace
    (per output with ``independent_outputs``: C kernels of M²), plus a chunk of rows."""
    m, c = _points("n_subset", options, sizes), sizes.n_outputs or 1
    kernel = c * m * m if options.get("independent_outputs") else (m * c) ** 2
    return 3 * kernel * 8 + 2 * c * subset.n_params * _e(subset)


def nystrom_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """U ``[P, k]`` and its float64 accumulator, and the subsample's kernel (float64)."""
    m, c = _points("subsample_size", options, sizes), sizes.n_outputs or 1
    k = options.get("n_eigenvalues", 20)
    return 3 * k * subset.n_params * _e(subset) + 3 * (m * c) ** 2 * 8


def block_full_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """3·P_b² per layer block and the diagonal rest."""
    shapes, rest = _layer_sizes(subset)
    return (3 * sum((o * i) ** 2 for o, i in shapes) + 4 * rest) * _e(subset)


def kfac_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """Both factors and their eigenbases per block, 3·Σ_b (out_b² + in_b²), and the rest;
    plus the widest factor's eigendecomposition while it runs (its copy, the symmetrised
    one, the eigenvectors and LAPACK's workspace: about 5n², in float64 for a
    half-precision model, whose factors are decomposed so)."""
    shapes, rest = _layer_sizes(subset)
    widest = max((max(o, i) for o, i in shapes), default=0)
    held = (3 * sum(o * o + i * i for o, i in shapes) + 4 * rest) * _e(subset)
    decomposition = 8 if subset.half_precision else _e(subset)
    return held + 5 * widest * widest * decomposition


def ekfac_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """KFAC's, plus the refitted eigenvalues Σ_b out_b·in_b."""
    shapes, _ = _layer_sizes(subset)
    return kfac_bytes(subset, options, sizes) + sum(o * i for o, i in shapes) * _e(subset)


def batch_bytes(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes
) -> int:
    """The working memory of one batch that grows with the output width (0 while B or C is
    unknown): the K output vectors per example three times, 3·K·B·C, and with a backend that
    pulls them back to its layers K·B·Σ_l out_l (each layer's output gradients at one
    position at least); K = C where KFAC's diagonal rest takes the exact columns
    (``Backend.exact_rest``) whatever the curvature type.

    The per-example paths (``full``, a diagonal rest) make the square root per chunk of
    examples (at most the batch) and their P-wide rows per ``memory_budget``: the rows are
    not counted here, the batch's columns are.
    """
    from .curvature.registry import get_backend  # the curvature package imports us

    if sizes.n_batch is None or sizes.n_outputs is None:
        return 0
    b, c, backend = sizes.n_batch, sizes.n_outputs, get_backend(structure)
    k = _batch_columns(structure, subset, options, sizes)
    if backend.layer_columns:
        shapes, _ = _layer_sizes(subset)
        return 3 * columns_bytes(k, b, c, _e(subset)) + columns_bytes(
            k, b, sum(o for o, _ in shapes), _e(subset)
        )
    return 3 * columns_bytes(k, b, c, _e(subset))


def _batch_columns(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes
) -> int:
    """K of a batch of ``structure``'s pass: the curvature type's, or C where its diagonal
    rest takes the exact columns (``Backend.exact_rest``) and the subset has a rest."""
    from .curvature.registry import get_backend  # the curvature package imports us

    k = n_columns(sizes.fisher_type, sizes.n_outputs, options.get("mc_samples", 1))
    if get_backend(structure).exact_rest and _layer_sizes(subset)[1]:
        k = max(k, n_columns("exact", sizes.n_outputs))  # the rest's, per chunk of examples
    return k


def fit_bytes(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes | None = None
) -> int:
    """The peak bytes of a fit of ``structure``: its registry entry's estimate of the
    structure, plus a batch's output columns (:func:`batch_bytes`) once B and C are known."""
    from .curvature.registry import get_backend  # the curvature package imports us

    sizes = sizes or Sizes()
    held = get_backend(structure).memory(subset, options, sizes)
    if sizes.curvatures > 1:  # the C per-output structures and their weighted sum
        held *= sizes.curvatures + 1
    return held + batch_bytes(structure, subset, options, sizes)


def check_fit_memory(
    structure: str,
    subset: ParameterSubset,
    options: dict[str, Any],
    limit: int | None,
    sizes: Sizes | None = None,
) -> None:
    """Refuse a fit whose peak exceeds ``limit`` bytes (default: 80% of what is available).

    Raises:
        MemoryBudgetError: with the bytes needed (the structure's and a batch's), the limit,
            and what would fit: the cheaper curvature types of ``structure``, smaller
            batches, fewer positions, other structures.
    """
    limit = memory_limit(limit, subset.device)
    sizes = sizes or Sizes()
    need = fit_bytes(structure, subset, options, sizes)
    if need <= limit:
        return
    batch = batch_bytes(structure, subset, options, sizes)
    what = f"{structure} needs {human_bytes(need)} for {_sizes_text(subset, sizes)}"
    if batch:
        k = _batch_columns(structure, subset, options, sizes)
        what += (
            f" (fisher_type={sizes.fisher_type!r}: {human_bytes(batch)} for a batch's "
            f"K = {k} output columns per example, {human_bytes(need - batch)} for the "
            "structure)"
        )
    fits = _cheaper_fits(structure, subset, options, sizes, limit)
    raise MemoryBudgetError(
        f"{what}, over the limit of {human_bytes(limit)}; "
        + ("; ".join(fits) if fits else "no structure fits that limit")
    )


def _sizes_text(subset: ParameterSubset, sizes: Sizes) -> str:
    """``N = …, C = … (T positions × V), B = …, P = …``: what is known of the fit's size."""
    parts, c = [], sizes.n_outputs
    if sizes.n_data is not None and c is not None:
        parts.append(f"N = {sizes.n_data}")
    if c is not None and (parts or sizes.n_batch is not None):
        parts.append(f"C = {c}{_positions_text(subset, sizes)}")
    if sizes.n_batch is not None and c is not None:
        parts.append(f"B = {sizes.n_batch}")
    if sizes.curvatures > 1:
        parts.append(f"one curvature per output ({sizes.curvatures})")
    return ", ".join([*parts, f"P = {subset.n_params}"])


def _positions_text(subset: ParameterSubset, sizes: Sizes) -> str:
    v = _classes_per_position(subset)
    return f" ({sizes.n_outputs // v} positions × {v})" if v else ""


def _classes_per_position(subset: ParameterSubset) -> int | None:
    """V, the classes of one position, for outputs with positions seen by a forward."""
    layout = getattr(subset, "output_layout", None)
    return None if layout is None or layout.example_shape is None else layout.n_classes


#: the canonical name of a curvature type's alias
_CANONICAL = {"ggn": "exact", "ef": "empirical"}


def _cheaper_fits(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes, limit: int
) -> list[str]:
    """What fits ``limit`` instead, cheapest change first."""
    from .curvature.registry import BACKENDS

    fits, now = [], _CANONICAL.get(sizes.fisher_type, sizes.fisher_type)
    for ft in ("mc", "empirical"):  # the cheaper curvature types of the same structure
        cheaper = replace(sizes, fisher_type=ft)
        if ft in BACKENDS[structure].fisher_types and ft != now:
            need = fit_bytes(structure, subset, options, cheaper)
            if need <= limit and batch_bytes(structure, subset, options, sizes):
                mc = f", mc_samples={options.get('mc_samples', 1)}" if ft == "mc" else ""
                fits.append(f"fisher_type={ft!r}{mc} needs {human_bytes(need)}")
    fits += _smaller_batches(structure, subset, options, sizes, limit)
    known = sizes.n_data is not None and sizes.n_outputs is not None
    others = {  # a kernel's size is known only once N and C are
        s: fit_bytes(s, subset, {}, sizes)
        for s, b in BACKENDS.items()
        if s != structure and (known or not b.sized_by_data)
    }
    ranked = sorted(others.items(), key=lambda kv: kv[1])
    return fits + [f"{s} needs {human_bytes(b)}" for s, b in ranked if b <= limit]


def _smaller_batches(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes, limit: int
) -> list[str]:
    """The largest batch, and for outputs with positions the most positions per example of
    a one-example batch, that fit ``limit``."""
    if sizes.n_batch is None or sizes.n_outputs is None:
        return []

    def need(b: int, c: int) -> int:
        return fit_bytes(structure, subset, options, replace(sizes, n_batch=b, n_outputs=c))

    out = []
    b = largest_fitting(lambda b: need(b, sizes.n_outputs) <= limit, sizes.n_batch - 1)
    if b:
        out.append(f"a batch of {b} examples needs {human_bytes(need(b, sizes.n_outputs))}")
    v = _classes_per_position(subset)
    t = v and largest_fitting(lambda t: need(1, t * v) <= limit, sizes.n_outputs // v - 1)
    if t and not b:
        out.append(f"{t} positions per example (a batch of 1) needs {human_bytes(need(1, t * v))}")
    return out


def largest_fitting(fits: Any, upper: int) -> int:
    """The largest n in [1, upper] with ``fits(n)`` for a ``fits`` that holds below some n
    (0 when none)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def human_bytes(n: int) -> str:
    """``n`` bytes in decimal units (``5.17 TB``)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"
