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
parameter tensor (norms, embeddings, and layers that are tied to another module or called
more than once; announced once in a warning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..checks import check_count
from ..datapass import Gram
from ..distributed import rank_seed
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Kron, LayerBlock
from .base import CurvatureResult, resolve_fisher_type
from .context import DEFAULT_CONTEXT, FitContext
from .layer_fit import fit_layer_blocks

__all__ = ["APPROXIMATIONS", "fit_kfac", "kfac_pass", "output_columns"]

APPROXIMATIONS = ("expand", "reduce")


def fit_kfac(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    approximation: str = "expand",
    joint_bias: bool = True,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    seed: int = 0,
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
        subset, "kfac", context.fisher_type, approximation, mc_samples, generator, seed
    )
    return kfac_pass(
        subset,
        likelihood,
        loader,
        kind=kind,
        approximation=approximation,
        joint_bias=joint_bias,
        mc_samples=mc_samples,
        generator=generator,
        context=context,
    )


def output_gram(g: Tensor, memory_budget: int) -> Tensor:
    """Σₖ Σₙ Σₛ gₖₙₛ gₖₙₛᵀ ``[out, out]`` for ``g`` ``[K, B, S, out]``.

    A conv layer's g is a transposed view of its ``[K, B, out, S]`` gradients: flattening it
    to ``[K·B·S, out]`` would copy all of it (slower than the product), so its Gram is summed
    from batched ``[out, S]`` products, in chunks whose results fit ``memory_budget``.
    """
    k, b, n_pos, n_out = g.shape
    if n_pos == 1 or g.stride(-2) != 1:
        gf = g.reshape(-1, n_out)
        return gf.T @ gf
    gt = g.transpose(-1, -2).reshape(k * b, n_out, n_pos)  # a view for a conv's gradients
    step = max(1, memory_budget // max(n_out * n_out * g.element_size(), 1))
    total = g.new_zeros(n_out, n_out)
    for i in range(0, k * b, step):
        c = gt[i : i + step]
        total += torch.bmm(c, c.transpose(1, 2)).sum(0)
    return total


def kfac_pass(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    *,
    kind: str,
    approximation: str,
    joint_bias: bool,
    mc_samples: int,
    generator: torch.Generator | None,
    context: FitContext,
    keep: Callable[[str, Tensor, Tensor], None] | None = None,
    plan: dict[str, Any] | None = None,
) -> CurvatureResult:
    """The KFAC data pass with checked options (``keep``, ``plan`` as in
    ``fit_layer_blocks``)."""
    if subset.index is not None:
        raise ValueError("kfac needs whole layers; a subnetwork given by a mask is not supported")

    def factor_sums(name: str, a: Tensor, g: Tensor) -> dict[str, Tensor]:
        if approximation == "reduce":
            a, g = a.mean(1, keepdim=True), g.sum(2, keepdim=True)
        af = a.reshape(-1, a.shape[-1])
        r = af.new_tensor(float(a.shape[0] * a.shape[1]))
        b_sum = output_gram(g, context.memory_budget)
        return {f"{name}.A": Gram(af), f"{name}.B": b_sum, f"{name}.R": r}

    def kron(name: str, sums: dict[str, Tensor], group_index: Tensor, layout: LayerBlock) -> Kron:
        a_fac = sums[f"{name}.A"] / sums[f"{name}.R"]
        # a half-precision model's float32 factors are decomposed in float64
        return Kron(sums[f"{name}.B"], a_fac, group_index, layout, wide=subset.half_precision)

    return fit_layer_blocks(
        "kfac",
        subset,
        likelihood,
        loader,
        joint_bias=joint_bias,
        kind=kind,
        columns=lambda f, y: output_columns(
            likelihood, context.fisher_type, f, y, mc_samples, generator
        ),
        block_sums=factor_sums,
        make_block=kron,
        context=context,
        keep=keep,
        plan=plan,
    )


def check_kfac_options(
    subset: ParameterSubset,
    backend: str,
    fisher_type: str,
    approximation: str,
    mc_samples: int,
    generator: torch.Generator | None,
    seed: int,
) -> tuple[str, torch.Generator | None]:
    """Validate KFAC's options (the curvature types ``backend``'s registry entry lists);
    returns the curvature kind and the generator for ``"mc"``."""
    kind = resolve_fisher_type(fisher_type, backend)
    if approximation not in APPROXIMATIONS:
        raise ValueError(
            f"unknown approximation {approximation!r}; expected one of {APPROXIMATIONS}"
        )
    check_count("mc_samples", mc_samples)
    if generator is None and fisher_type == "mc":
        generator = torch.Generator(device=subset.device).manual_seed(rank_seed(seed))
    return kind, generator


def mc_columns(
    likelihood: Likelihood,
    fisher_type: str,
    mc_samples: int,
    generator: torch.Generator | None,
    seed: int,
) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``(f, y) -> [M, B, C]`` sampled output gradients / √M for ``fisher_type="mc"`` (a
    fresh generator seeded with ``seed`` unless one is given); ``None`` otherwise."""
    if fisher_type != "mc":
        return None
    check_count("mc_samples", mc_samples)
    box = [generator]

    def columns(f: Tensor, y: Tensor) -> Tensor:
        if box[0] is None:  # on the data's device, at the first batch
            box[0] = torch.Generator(device=f.device).manual_seed(rank_seed(seed))
        return output_columns(likelihood, "mc", f, y, mc_samples, box[0])

    return columns


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
        return likelihood.hessian_sqrt(f, y).permute(2, 0, 1).contiguous()
    if fisher_type in ("empirical", "ef"):
        return likelihood.output_grad(f, y).unsqueeze(0)
    ys = likelihood.sample_targets(f, mc_samples, generator, y)  # [M, B, ...]
    f_rep = f.unsqueeze(0).expand(mc_samples, *f.shape).reshape(-1, f.shape[-1])
    r = likelihood.output_grad(f_rep, ys.reshape(-1, *ys.shape[2:]))
    return r.view(mc_samples, *f.shape) / math.sqrt(mc_samples)
