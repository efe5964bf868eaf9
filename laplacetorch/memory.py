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

The default limit is 80% of the memory available now: ``MemAvailable`` of the host, or the
free memory of the model's CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .params import ParameterSubset

__all__ = [
    "MemoryBudgetError",
    "Sizes",
    "available_memory",
    "check_fit_memory",
    "fit_bytes",
]

_FALLBACK_BYTES = 8 * 2**30


class MemoryBudgetError(ValueError):
    """A fit would need more memory than its limit (raised before anything is allocated)."""


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
    """What the data tell about a fit's size: N and C (``None`` while unknown)."""

    n_data: int | None = None
    n_outputs: int | None = None


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
    """Both factors and their eigenbases per block, 3·Σ_b (out_b² + in_b²), and the rest."""
    shapes, rest = _layer_sizes(subset)
    return (3 * sum(o * o + i * i for o, i in shapes) + 4 * rest) * _e(subset)


def ekfac_bytes(subset: ParameterSubset, options: dict[str, Any], sizes: Sizes) -> int:
    """KFAC's, plus the refitted eigenvalues Σ_b out_b·in_b."""
    shapes, _ = _layer_sizes(subset)
    return kfac_bytes(subset, options, sizes) + sum(o * i for o, i in shapes) * _e(subset)


def fit_bytes(
    structure: str, subset: ParameterSubset, options: dict[str, Any], sizes: Sizes | None = None
) -> int:
    """The peak bytes of a fit of ``structure``, as its registry entry estimates it."""
    from .curvature.registry import get_backend  # the curvature package imports us

    return get_backend(structure).memory(subset, options, sizes or Sizes())


def check_fit_memory(
    structure: str,
    subset: ParameterSubset,
    options: dict[str, Any],
    limit: int | None,
    sizes: Sizes | None = None,
) -> None:
    """Refuse a fit whose peak exceeds ``limit`` bytes (default: 80% of what is available).

    Raises:
        MemoryBudgetError: with the bytes needed and the structures that would fit.
    """
    from .curvature.registry import BACKENDS

    if limit is None:
        limit = int(0.8 * available_memory(subset.device))
    need = fit_bytes(structure, subset, options, sizes)
    if need <= limit:
        return
    sizes = sizes or Sizes()
    known = sizes.n_data is not None and sizes.n_outputs is not None
    others = {  # a kernel's size is known only once N and C are
        s: fit_bytes(s, subset, {}, sizes)
        for s, b in BACKENDS.items()
        if s != structure and (known or not b.sized_by_data)
    }
    ranked = sorted(others.items(), key=lambda kv: kv[1])
    fits = [f"{s} needs {_human(b)}" for s, b in ranked if b <= limit]
    n = f"N = {sizes.n_data}, C = {sizes.n_outputs}, " if known else ""
    raise MemoryBudgetError(
        f"{structure} needs {_human(need)} for {n}P = {subset.n_params}, over the limit of "
        f"{_human(limit)}; " + ("; ".join(fits) if fits else "no structure fits that limit")
    )


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"
