"""The spectrum of a fitted curvature, for users who inspect it: top eigenvalues by Lanczos
and the spectral density by stochastic Lanczos quadrature.

Both need only curvature-vector products G v (:meth:`Structure.curvature_matvec`), so they
work for every structure, the matrix-free operator included. The density is the SLQ
spectral measure smoothed by a Gaussian of width ``width``:

    ρ(t) = (1/S) Σₛ Σⱼ wₛⱼ N(t; θₛⱼ, width²),   ∫ρ = 1,   ∫ t ρ(t) dt ≈ tr(G)/P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import check_count
from .linalg.lanczos import lanczos
from .linalg.slq import slq_quadrature
from .structures import Structure

__all__ = ["Spectrum", "curvature_spectrum"]


@dataclass
class Spectrum:
    """The result of :func:`curvature_spectrum`.

    Attributes:
        top_eigenvalues: ``[r]`` the largest eigenvalues of G (converged Ritz values),
            descending; ``top_eigenvectors`` ``[P, r]``.
        grid, density: ``[T]`` points and ρ there.
        nodes, weights: ``[S, n_steps]`` the SLQ quadrature of every probe.
    """

    top_eigenvalues: Tensor
    top_eigenvectors: Tensor
    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor


def _structure(curvature: Any) -> Structure:
    structure = getattr(curvature, "structure", curvature)
    if not isinstance(structure, Structure):
        raise TypeError(
            "curvature_spectrum takes a fitted Laplace or a Structure; got "
            f"{type(curvature).__name__}"
        )
    return structure


def curvature_spectrum(
    curvature: Any,
    top: int = 10,
    n_probes: int = 10,
    n_steps: int = 60,
    grid: Tensor | None = None,
    width: float | None = None,
    seed: int = 0,
) -> Spectrum:
    """Top eigenvalues and spectral density of the unit-scale curvature G of a fitted
    :class:`~laplacetorch.Laplace` (or of a :class:`Structure`).

    Args:
        curvature: a fitted Laplace or a structure.
        top: how many of the largest eigenvalues (Lanczos, full reorthogonalisation).
        n_probes, n_steps: SLQ probes and Lanczos steps per probe.
        grid: where to evaluate ρ (default 400 points over the span of the nodes).
        width: the Gaussian smoothing (default 1% of that span).
        seed: seeds both estimates (the global RNG is not touched).
    """
    st = _structure(curvature)
    p = st.n_params
    for name, value in (("top", top), ("n_probes", n_probes), ("n_steps", n_steps)):
        check_count(name, value)
    top = min(top, p)

    def matvec(v: Tensor) -> Tensor:
        return st.curvature_matvec(v)

    gen = torch.Generator(device=st.device).manual_seed(seed)
    evals, evecs = lanczos(
        matvec,
        p,
        top,
        generator=gen,
        dtype=st.dtype,
        device=st.device,
        max_iter=min(p, 4 * top + 40),
    )
    nodes, weights = slq_quadrature(
        matvec,
        p,
        n_probes,
        min(n_steps, p),
        generator=torch.Generator(device=st.device).manual_seed(seed + 1),
        dtype=st.dtype,
        device=st.device,
    )
    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
    width = 0.01 * span if width is None else float(width)
    if not width > 0:
        raise ValueError(f"width must be positive; got {width!r}")
    if grid is None:
        grid = torch.linspace(lo - 3 * width, hi + 3 * width, 400, dtype=nodes.dtype)
    grid = torch.as_tensor(grid, dtype=nodes.dtype, device=nodes.device).reshape(-1)
    z = (grid[:, None, None] - nodes[None]) / width
    kernel = torch.exp(-0.5 * z.square()) / (width * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(-1).mean(-1)
    return Spectrum(evals, evecs, grid, density, nodes, weights)
