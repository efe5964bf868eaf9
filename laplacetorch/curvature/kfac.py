"""``kfac``: Kronecker-factored curvature per Linear / Conv1d / Conv2d / Conv3d layer.

For a layer z = W a + b (a conv: the same on unfolded patches), with W̃ = [W | b] and
ã = [a, 1] when weight and bias form one block, the block of the summed-NLL curvature is
approximated by B ⊗ A in row-major vec(W̃), with

    A = (1/R) Σ ã ãᵀ,    B = Σ g gᵀ,

g = (∂f/∂z)ᵀ v for the columns v of: Sₙ (``exact``, type-2 Fisher = GGN), sampled output
gradients / √M (``mc``), or the observed output gradient (``empirical``). Over weight-sharing
positions s (sequence positions, conv patches): ``expand`` sums over (n, s) and R = N·S;
``reduce`` averages ã over s, sums g over s and R = N. Numerators are accumulated over
batches and normalised once by the global count.

The result is a :class:`~laplacetorch.structures.BlockDiagonal` of one
:class:`~laplacetorch.structures.Kron` block per layer (per conv group, and per separate
bias) and an exact :class:`~laplacetorch.structures.Diagonal` block for every other Bayesian
parameter tensor (norms, embeddings; announced once in a warning). A layer weight shared
between modules or called twice is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Diagonal, Kron, LayerBlock
from .base import CurvatureResult, curvature_pass
from .layer_blocks import (
    LayerBlocks,
    block_diagonal,
    layer_blocks,
    layer_positions,
    rest_positions,
)
from .layer_capture import backward_columns, capture_once
from .per_example import DEFAULT_MEMORY_BUDGET, per_example_diagonal

__all__ = [
    "APPROXIMATIONS",
    "KFAC_FISHER_TYPES",
    "fit_kfac",
    "kfac_layers",
    "layer_passes",
    "output_columns",
]

APPROXIMATIONS = ("expand", "reduce")
KFAC_FISHER_TYPES = {"exact": "ggn", "ggn": "ggn", "mc": "ggn", "empirical": "ef", "ef": "ef"}


def kfac_layers(subset: ParameterSubset, joint_bias: bool) -> tuple[list[LayerBlocks], list[str]]:
    """The Kronecker layers of the subset and the names of the other Bayesian parameters.

    Raises:
        ValueError: for a masked subnetwork, a shared weight, or no supported layer.
    """
    if subset.index is not None:
        raise ValueError("kfac needs whole layers; a subnetwork given by a mask is not supported")
    layers, rest = layer_blocks(subset, joint_bias=joint_bias)
    if not layers:
        raise ValueError(
            "kfac found no supported layer (nn.Linear, nn.Conv1d/2d/3d) among the Bayesian "
            "parameters"
        )
    return layers, rest


def layer_passes(
    subset: ParameterSubset, layers: list[LayerBlocks], x: Any, cols_fn: Callable[[Tensor], Tensor]
):
    """One forward and one batched backward of the columns ``cols_fn(f)`` ``[K, B, C]``.

    Returns ``(f, [(layer, a [B, S, in], g [K, B, S, out])])`` with a layer's inputs and
    output gradients over its weight-sharing positions.
    """
    f, record = capture_once(subset.model, layers, x)
    cols = cols_fn(f.detach())
    grads = backward_columns(f, record, [layer.name for layer in layers], cols)
    with torch.no_grad():
        per_layer = [
            (layer, *layer_positions(layer.module, record["inputs"][layer.name], g))
            for layer, g in zip(layers, grads, strict=True)
        ]
    return f.detach(), per_layer


def announce_rest(backend: str, rest_names: list[str]) -> None:
    """Say once which parameters get an exact diagonal block instead of a layer block."""
    if rest_names:
        warnings.warn(
            f"{backend}: parameters outside Linear/Conv layers get an exact diagonal block: "
            f"{rest_names}",
            stacklevel=3,
        )


def fit_kfac(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    fisher_type: str = "exact",
    approximation: str = "expand",
    joint_bias: bool = True,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batch_size_fn: Callable[[Any], int] | None = None,
) -> CurvatureResult:
    """KFAC curvature: a BlockDiagonal of Kron blocks (and exact diagonal blocks for the rest).

    Args:
        fisher_type: ``"exact"`` (type-2: the C columns of Sₙ), ``"mc"`` (``mc_samples``
            sampled targets) or ``"empirical"``.
        approximation: weight sharing, ``"expand"`` or ``"reduce"``.
        joint_bias: one block for [W | b] (default) or separate W and b blocks.
        mc_samples: targets sampled per example for ``"mc"``.
        generator, seed: randomness for ``"mc"`` (a fresh generator seeded with ``seed``
            when no ``generator`` is given; the global RNG is never used).
        memory_budget: bytes a chunk of per-example rows of the diagonal rest may take.
    """
    kind, generator = check_kfac_options(
        subset, fisher_type, approximation, mc_samples, generator, seed
    )
    layers, rest_names = kfac_layers(subset, joint_bias)
    announce_rest("kfac", rest_names)
    rest = (
        ParameterSubset(subset.model, "subnetwork", subnetwork=rest_names) if rest_names else None
    )

    def cols_fn(f: Tensor, y: Tensor) -> Tensor:
        return output_columns(likelihood, fisher_type, f, y, mc_samples, generator)

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        f, per_layer = layer_passes(subset, layers, x, lambda f: cols_fn(f, y))
        out = {"loss": likelihood.nll_unit(f, y).sum()}
        with torch.no_grad():
            for layer, a, g in per_layer:
                for name, _, layout in layer.blocks:
                    ab, gb = layout.select(a, g)
                    if approximation == "reduce":
                        ab, gb = ab.mean(1, keepdim=True), gb.sum(2, keepdim=True)
                    af, gf = ab.reshape(-1, ab.shape[-1]), gb.reshape(-1, gb.shape[-1])
                    out[f"{name}.A"], out[f"{name}.B"] = af.T @ af, gf.T @ gf
                    out[f"{name}.R"] = af.new_tensor(float(ab.shape[0] * ab.shape[1]))
        if rest is not None:
            out["rest"], _ = per_example_diagonal(
                rest, likelihood, x, y, kind=kind, n_outputs=n_out, memory_budget=memory_budget
            )
        return out

    sums, n_data, n_out = curvature_pass(
        subset,
        likelihood,
        loader,
        step,
        progress=progress,
        desc="kfac curvature",
        batch_size_fn=batch_size_fn,
    )
    rest_diag = torch.zeros(subset.n_params, dtype=subset.dtype, device=subset.device)
    if rest_names:
        rest_diag[torch.cat([i for _, i in rest_positions(subset, rest_names)])] = sums["rest"]

    def kron(name: str, index: Tensor, layout: LayerBlock) -> Kron:
        a_fac = sums[f"{name}.A"] / sums[f"{name}.R"]
        return Kron(sums[f"{name}.B"], a_fac, subset.group_index[index], layout)

    def diagonal(name: str, index: Tensor) -> Diagonal:
        return Diagonal(rest_diag[index], subset.group_index[index])

    structure = block_diagonal(subset, layers, rest_names, kron, diagonal)
    return CurvatureResult(structure, n_data, n_out, sums["loss"], kind)


def check_kfac_options(
    subset: ParameterSubset,
    fisher_type: str,
    approximation: str,
    mc_samples: int,
    generator: torch.Generator | None,
    seed: int,
) -> tuple[str, torch.Generator | None]:
    """Validate KFAC's options; returns the curvature kind and the generator for ``"mc"``."""
    if fisher_type not in KFAC_FISHER_TYPES:
        raise ValueError(
            f"unknown fisher_type {fisher_type!r} for backend 'kfac'; expected one of "
            f"{sorted(KFAC_FISHER_TYPES)}"
        )
    if approximation not in APPROXIMATIONS:
        raise ValueError(
            f"unknown approximation {approximation!r}; expected one of {APPROXIMATIONS}"
        )
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be an integer >= 1; got {mc_samples!r}")
    if generator is None and fisher_type == "mc":
        generator = torch.Generator(device=subset.device).manual_seed(seed)
    return KFAC_FISHER_TYPES[fisher_type], generator


def output_columns(
    likelihood: Likelihood,
    fisher_type: str,
    f: Tensor,
    y: Tensor,
    mc_samples: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The vectors v pulled back through the network, ``[K, B, C]``: the columns of Sₙ
    (exact), sampled output gradients / √M (mc) or the observed output gradient (empirical)."""
    if fisher_type in ("exact", "ggn"):
        return likelihood.hessian_sqrt(f).permute(2, 0, 1).contiguous()
    if fisher_type in ("empirical", "ef"):
        return likelihood.output_grad(f, y).unsqueeze(0)
    ys = likelihood.sample_targets(f, mc_samples, generator)  # [M, B, ...]
    f_rep = f.unsqueeze(0).expand(mc_samples, *f.shape).reshape(-1, f.shape[-1])
    r = likelihood.output_grad(f_rep, ys.reshape(-1, *ys.shape[2:]))
    return r.view(mc_samples, *f.shape) / math.sqrt(mc_samples)
