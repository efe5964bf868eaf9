"""Memory, up front: what a fit will hold at its peak, checked before anything is allocated.

The estimates count the tensors that grow with the model, in bytes of the model's dtype:

- ``full``: G, its eigenvectors and the eigendecomposition's workspace, 3·P²;
- ``block_full``: the same per layer block, 3·Σ_b P_b², plus the diagonal rest;
- ``kfac`` / ``ekfac``: both factors and their eigenbases per block, 3·Σ_b (out_b² + in_b²)
  (EKFAC adds its eigenvalues, Σ_b out_b·in_b), plus the diagonal rest;
- ``diag``, ``hutchinson``: a few vectors of length P;
- ``lanczos``: the Krylov basis and the Ritz vectors, 2·P·m with m the iterations;
- ``operator``: the SLQ Lanczos bases of all probes, n_probes·n_steps·P in float64.

The default limit is 80% of the memory available now: ``MemAvailable`` of the host, or the
free memory of the model's CUDA device.
"""

from __future__ import annotations

from typing import Any

import torch

from .params import ParameterSubset

__all__ = ["MemoryBudgetError", "available_memory", "check_fit_memory", "fit_bytes"]

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


def fit_bytes(structure: str, subset: ParameterSubset, options: dict[str, Any]) -> int:
    """The peak bytes of a fit of ``structure`` (see the module docstring)."""
    e = torch.finfo(subset.dtype).bits // 8
    p = subset.n_params
    if structure == "full":
        return 3 * p * p * e
    if structure in ("diag", "hutchinson"):
        return 4 * p * e
    if structure == "lanczos":
        m = options.get("max_iter") or min(
            p, 3 * (options.get("rank", 20) + options.get("oversample", 10))
        )
        return 2 * p * m * e
    if structure == "nystrom":  # U [P, k] and its float64 accumulator
        return 3 * options.get("n_eigenvalues", 20) * p * e
    if structure == "gp":  # the subset's rows M·C·P and its kernel (C: one per output)
        return 3 * (options.get("n_subset") or 0) * p * e
    if structure == "operator":
        return options.get("n_probes", 30) * options.get("n_steps", 40) * p * 8
    shapes, rest = _layer_sizes(subset)
    if structure == "block_full":
        return 3 * sum((o * i) ** 2 for o, i in shapes) * e + 4 * rest * e
    refit = sum(o * i for o, i in shapes) if structure == "ekfac" else 0
    return (3 * sum(o * o + i * i for o, i in shapes) + refit + 4 * rest) * e


def check_fit_memory(
    structure: str, subset: ParameterSubset, options: dict[str, Any], limit: int | None
) -> None:
    """Refuse a fit whose peak exceeds ``limit`` bytes (default: 80% of what is available).

    Raises:
        MemoryBudgetError: with the bytes needed and the structures that would fit.
    """
    if limit is None:
        limit = int(0.8 * available_memory(subset.device))
    need = fit_bytes(structure, subset, options)
    if need <= limit:
        return
    others = {
        s: fit_bytes(s, subset, {})
        for s in ("kfac", "diag", "lanczos", "operator", "block_full", "full")
        if s != structure
    }
    fits = [f"{s} needs {_human(b)}" for s, b in sorted(others.items(), key=lambda kv: kv[1])]
    fits = [f for f, b in zip(fits, sorted(others.values()), strict=True) if b <= limit]
    raise MemoryBudgetError(
        f"{structure} needs {_human(need)} for P = {subset.n_params}, over the limit of "
        f"{_human(limit)}; " + ("; ".join(fits) if fits else "no structure fits that limit")
    )


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"
