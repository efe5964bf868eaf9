"""Stochastic Lanczos quadrature: tr f(A), log det A in particular (Ubaru, Chen, Saad 2017)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_count
from .hutchinson import MatVec, _check_dtype, _draw
from .lanczos import _lanczos_batch, _tridiagonal

__all__ = ["slq_estimate", "slq_logdet", "slq_quadrature"]


def slq_quadrature(
    matvec: MatVec,
    n: int,
    n_probes: int,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    chunk_size: int | None = None,
    coarse: bool = False,
) -> tuple[Tensor, ...]:
    """Gauss quadrature nodes and weights of A's spectral measure, one rule per probe.

    For each Rademacher probe z (‖z‖² = n), j steps of Lanczos from z/√n give T = V diag(θ) Vᵀ
    and zᵀ f(A) z ≈ n Σⱼ τⱼ² f(θⱼ), τⱼ = V₁ⱼ: the j-node Gauss rule, exact for polynomials
    of degree < 2j. Averaging over S probes,

        tr f(A) ≈ (n / S) Σₛ Σⱼ wₛⱼ f(θₛⱼ)   (see :func:`slq_estimate`).

    Any f works with the same nodes, which is how a prior is changed without new matvecs: for
    A = G (the curvature, no prior), f(x) = log(s·x + δ) gives log det(sG + δI) and
    f(x) = 1/(s·x + δ) gives tr (sG + δI)⁻¹. This is not an approximation on top of SLQ:
    sG + δI has the same Krylov space as G and the tridiagonal sT + δI, so it is exactly the
    estimate SLQ would give on sG + δI with the same probes.

    A probe whose Krylov space becomes invariant early (low-rank A) has an exact rule with
    fewer nodes; its remaining nodes are filler (its first Ritz value) with weight 0.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]`` for symmetric A (PSD for f = log(s·x + δ)).
        n: the dimension of A. n_probes: S ≥ 1. n_steps: Lanczos steps per probe, ≥ 1
            (capped at n; Q takes chunk·steps·n float64 numbers).
        generator: the probes' only source of randomness.
        dtype, device: of the vectors handed to ``matvec``.
        chunk_size: probes run together (one batched matvec a step); all when None.

        coarse: also return the rules of the first ⌈steps/2⌉ Lanczos steps of the same runs
            (the leading block of each T), for an estimate of the quadrature bias.

    Returns:
        ``(nodes, weights)``, both ``[S, min(n_steps, n)]`` float64; each weight row sums to 1;
        with ``coarse``, ``(nodes, weights, coarse_nodes, coarse_weights)``.
    """
    check_count("n", n)
    check_count("n_probes", n_probes)
    check_count("n_steps", n_steps)
    _check_dtype(dtype)
    chunk = n_probes if chunk_size is None else check_count("chunk_size", chunk_size)
    steps = min(n_steps, n)
    Z = _draw((n_probes, n), "rademacher", generator, torch.float64, device)
    nodes, weights, c_nodes, c_weights = [], [], [], []
    half = (steps + 1) // 2
    for Zc in Z.split(chunk):
        alpha, beta, _, length = _lanczos_batch(matvec, Zc / math.sqrt(n), steps, dtype)
        alpha = F.pad(alpha, (0, steps - alpha.shape[1]))
        beta = F.pad(beta, (0, steps - beta.shape[1]))
        # Past a breakdown, T is block diagonal: filler values that are in A's range
        # (so f is defined there) and whose eigenvectors have no first component.
        filler = torch.arange(steps, device=alpha.device)[None] >= length[:, None]
        alpha = torch.where(filler, alpha[:, :1], alpha)
        theta, V = torch.linalg.eigh(_tridiagonal(alpha, beta))
        nodes.append(theta)
        weights.append(V[:, 0, :].square())
        if coarse:
            theta, V = torch.linalg.eigh(_tridiagonal(alpha[:, :half], beta[:, :half]))
            c_nodes.append(theta)
            c_weights.append(V[:, 0, :].square())
    if coarse:
        return torch.cat(nodes), torch.cat(weights), torch.cat(c_nodes), torch.cat(c_weights)
    return torch.cat(nodes), torch.cat(weights)


def slq_estimate(
    nodes: Tensor, weights: Tensor, n: int, fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """tr f(A) ≈ (n / S) Σₛ Σⱼ wₛⱼ f(θₛⱼ) from :func:`slq_quadrature`'s output.

    Args:
        nodes, weights: ``[S, j]`` from :func:`slq_quadrature`. n: the dimension of A.
        fn: elementwise f (e.g. ``lambda x: torch.log(s * x + delta)``).

    Returns:
        ``(estimate, standard_error)``: the mean of the per-probe estimates
        n Σⱼ wₛⱼ f(θₛⱼ) and their standard deviation / √S (``inf`` for S = 1). The standard
        error covers the probe noise, not the quadrature bias (see ``coarse`` of
        :func:`slq_quadrature` for an estimate of it).
    """
    if nodes.dim() != 2 or nodes.shape != weights.shape:
        raise ValueError(
            f"nodes and weights must both be [S, j]; got {list(nodes.shape)} and "
            f"{list(weights.shape)}"
        )
    # Filler nodes have weight 0; keep f's value there from turning 0·inf into NaN.
    vals = torch.where(weights > 0, weights * fn(nodes), 0)
    per_probe = n * vals.sum(1)
    s = per_probe.shape[0]
    se = per_probe.std() / math.sqrt(s) if s > 1 else torch.full_like(per_probe[0], math.inf)
    return per_probe.mean(), se


def slq_logdet(
    matvec: MatVec,
    n: int,
    n_probes: int = 30,
    n_steps: int = 30,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """log det A = tr log A for symmetric positive definite A, by stochastic Lanczos quadrature.

    log det A ≈ (n / S) Σₛ Σⱼ τₛⱼ² log θₛⱼ with S Rademacher probes and ``n_steps`` Lanczos steps
    each (see :func:`slq_quadrature`). The probe error falls like 1/√S; the quadrature error
    falls geometrically in the steps, faster for smaller condition numbers (Ubaru et al. 2017:
    about √κ·log(κ/ε) steps suffice). Not differentiable; for a new prior on a fixed curvature
    reuse :func:`slq_quadrature`'s nodes instead of calling this again.

    Args:
        matvec: V ``[m, n]`` ↦ V Aᵀ ``[m, n]`` for SPD A.
        n: the dimension of A. n_probes: S ≥ 1. n_steps: steps per probe ≥ 1 (capped at n).
        generator: the probes' only source of randomness.
        dtype, device: of the vectors handed to ``matvec`` and of the result.
        chunk_size: probes run together; all when None.

    Returns:
        ``(estimate, standard_error)``, scalars in ``dtype``; the standard error is over probes.

    Raises:
        ValueError: a Ritz value ≤ 0, i.e. A is not positive definite (to working precision).
    """
    nodes, weights = slq_quadrature(
        matvec, n, n_probes, n_steps, generator=generator, dtype=dtype, device=device,
        chunk_size=chunk_size,
    )  # fmt: skip
    smallest = nodes.min().item()
    if not smallest > 0:
        raise ValueError(
            f"slq_logdet needs a positive definite operator; found a Ritz value {smallest:.3e}"
        )
    est, se = slq_estimate(nodes, weights, n, torch.log)
    return est.to(dtype), se.to(dtype)
