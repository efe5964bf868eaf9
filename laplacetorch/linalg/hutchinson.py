"""Stochastic trace and diagonal estimators from matrix-vector products (and their probes).

The small checks and probe draws shared by the other ``linalg`` modules live here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import check_count

MatVec = Callable[[Tensor], Tensor]

__all__ = ["hutchinson_diagonal", "hutchinson_trace", "hutchpp_trace", "rademacher"]


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
    return dtype


def _apply(matvec: MatVec, V: Tensor, name: str = "matvec") -> Tensor:
    """``matvec(V)`` with its shape checked, returned in ``V``'s dtype."""
    out = matvec(V)
    if not isinstance(out, Tensor) or out.shape != V.shape:
        seen = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{name} must map a batch of rows [m, P] to [m, P]; got {seen} for input "
            f"{list(V.shape)}"
        )
    return out.to(V.dtype)


def _draw(
    shape: tuple[int, ...],
    kind: str,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    # Draw where the generator lives, so a CPU generator also serves a GPU operator.
    src = generator.device if generator is not None else device
    if kind == "rademacher":
        z = torch.randint(0, 2, shape, generator=generator, device=src, dtype=dtype) * 2 - 1
    else:
        z = torch.randn(shape, generator=generator, device=src, dtype=dtype)
    return z.to(device)


def rademacher(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Independent ±1 entries with probability ½ each, of the given shape."""
    return _draw(tuple(shape), "rademacher", generator, _check_dtype(dtype), device)


def _probe_chunks(
    matvec: MatVec,
    n: int,
    n_probes: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    chunk_size: int | None,
):
    """Yield ``z ⊙ Az`` for Rademacher probes, ``[c, n]`` per chunk of ``c`` probes."""
    check_count("n", n)
    _check_dtype(dtype)
    chunk = n_probes if chunk_size is None else check_count("chunk_size", chunk_size)
    for start in range(0, n_probes, chunk):
        Z = _draw((min(chunk, n_probes - start), n), "rademacher", generator, dtype, device)
        prod = Z * _apply(matvec, Z)
        if not torch.isfinite(prod).all():
            raise ValueError("matvec returned NaN or Inf on a probe")
        yield prod


def hutchinson_trace(
    matvec: MatVec,
    n: int,
    n_probes: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate of tr A with Rademacher probes.

    tr A ≈ (1/S) Σₛ zₛᵀ A zₛ, unbiased with Var(zᵀAz) = 2 Σ_{i≠j} A_ij² per probe.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]`` (A applied to each row).
        n: the dimension of A. n_probes: S ≥ 1.
        generator: the probes' only source of randomness.
        dtype, device: of the probes handed to ``matvec``.
        chunk_size: probes per ``matvec`` call (all at once when None).

    Returns:
        ``(estimate, standard_error)``, scalars; the standard error is the sample standard
        deviation over probes / √S (``inf`` for S = 1).
    """
    check_count("n_probes", n_probes)
    t = torch.cat(
        [p.sum(1) for p in _probe_chunks(matvec, n, n_probes, generator, dtype, device, chunk_size)]
    )
    se = t.std() / math.sqrt(n_probes) if n_probes > 1 else torch.full_like(t[0], math.inf)
    return t.mean(), se


def hutchinson_diagonal(
    matvec: MatVec,
    n: int,
    n_probes: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Hutchinson's estimate of diag A: d ≈ (1/S) Σₛ zₛ ⊙ A zₛ with Rademacher zₛ.

    Unbiased; entry i has per-probe variance Σ_{j≠i} A_ij², so its error falls like 1/√S.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]``.
        n: the dimension of A. n_probes: S ≥ 1.
        generator: the probes' only source of randomness.
        dtype, device: of the probes handed to ``matvec``.
        chunk_size: probes per ``matvec`` call (all at once when None).

    Returns:
        ``(diagonal [n], variance [n])``: the estimate and the sample variance of that mean
        per entry, s²ᵢ / S (``inf`` for S = 1). The estimate is not clamped.
    """
    check_count("n_probes", n_probes)
    count, mean, m2 = 0, None, None
    for prod in _probe_chunks(matvec, n, n_probes, generator, dtype, device, chunk_size):
        # Chan et al.'s pairwise update: stable running mean and sum of squared deviations.
        c, cm = prod.shape[0], prod.mean(0)
        cm2 = (prod - cm).square().sum(0)
        if mean is None:
            mean, m2 = cm, cm2
        else:
            delta = cm - mean
            mean = mean + delta * (c / (count + c))
            m2 = m2 + cm2 + delta.square() * (count * c / (count + c))
        count += c
    if n_probes > 1:
        var = m2 / ((n_probes - 1) * n_probes)
    else:
        var = torch.full_like(mean, math.inf)
    return mean, var


def hutchpp_trace(
    matvec: MatVec,
    n: int,
    n_probes: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    """Hutch++ estimate of tr A (Meyer, Musco, Musco, Woodruff 2021) with ``n_probes`` matvecs.

    With k = ⌊S/3⌋ and l = S − 2k: Q = orth(A Ω) for Rademacher Ω ``[n, k]``, then
    tr A ≈ tr(QᵀAQ) + (1/l) Σ gᵀ(I − QQᵀ)A(I − QQᵀ)g over Rademacher g. The top of the
    spectrum is taken exactly, Hutchinson only sees the rest: error O(1/S) instead of O(1/√S)
    for PSD A, so it wins when A is dominated by a few large eigenvalues.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]``. n: the dimension of A.
        n_probes: S ≥ 3, the total number of matvecs.
        generator: the probes' only source of randomness. dtype, device: of the probes.

    Returns:
        The estimate, a scalar.
    """
    check_count("n", n)
    check_count("n_probes", n_probes, minimum=3)
    _check_dtype(dtype)
    k = n_probes // 3
    omega = _draw((k, n), "rademacher", generator, dtype, device)
    G = _draw((n_probes - 2 * k, n), "rademacher", generator, dtype, device)
    Q, _ = torch.linalg.qr(_apply(matvec, omega).T)  # [n, k], orthonormal even if rank-deficient
    Qt = Q.T.contiguous()
    top = (Qt * _apply(matvec, Qt)).sum()
    G = G - (G @ Q) @ Qt
    rest = (G * _apply(matvec, G)).sum() / G.shape[0]
    out = top + rest
    if not torch.isfinite(out):
        raise ValueError("matvec returned NaN or Inf on a probe")
    return out
