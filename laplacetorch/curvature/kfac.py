"""``kfac``: Kronecker-factored curvature per Linear / Conv2d layer.

For a layer z = W a + b (a conv: the same on unfolded patches), with W̃ = [W | b] and
ã = [a, 1] when weight and bias form one block, the block of the summed-NLL curvature is
approximated by B ⊗ A in row-major vec(W̃), with

    A = (1/R) Σ ã ãᵀ,    B = Σ g gᵀ,

g = (∂f/∂z)ᵀ v for the columns v of: Sₙ (``exact``, type-2 Fisher = GGN), sampled output
gradients / √M (``mc``), or the observed output gradient (``empirical``). Over weight-sharing
positions s (sequence positions, conv patches): ``expand`` sums over (n, s) and R = N·S;
``reduce`` averages ã over s, sums g over s and R = N. Numerators are accumulated over
batches and normalised once by the global count.

Parameters outside supported layers get an exact diagonal GGN block (with a warning naming
them); a Linear/Conv2d weight shared between modules or called twice is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import Kron
from .base import CurvatureResult, curvature_pass, zeros_like_theta
from .layer_capture import backward_columns, capture_linear
from .per_example import DEFAULT_MEMORY_BUDGET, per_example_diagonal

__all__ = [
    "APPROXIMATIONS",
    "KFAC_FISHER_TYPES",
    "block_plan",
    "capture_forward",
    "fit_kfac",
    "kfac_layers",
    "output_columns",
]

APPROXIMATIONS = ("expand", "reduce")
KFAC_FISHER_TYPES = {"exact": "ggn", "ggn": "ggn", "mc": "ggn", "empirical": "ef", "ef": "ef"}
_SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class KronLayer:
    """A supported layer and where its Kronecker blocks live in θ."""

    name: str
    module: nn.Module
    blocks: list[tuple[Tensor, slice, int]]  # (θ index, out-channel slice, group) per conv group
    n_cols: int  # columns of ã (in', plus 1 for a joint bias)
    joint_bias: bool
    bias_blocks: list[tuple[Tensor, slice]]  # separate bias: (θ index, out-channel slice)


def _offsets(subset: ParameterSubset) -> dict[str, int]:
    offs, pos = {}, 0
    for n, k in zip(subset.names, subset.numels, strict=True):
        offs[n] = pos
        pos += k
    return offs


def kfac_layers(subset: ParameterSubset, joint_bias: bool) -> tuple[list[KronLayer], list[str]]:
    """The supported layers of the subset and the names of the other Bayesian parameters.

    Raises:
        ValueError: for a masked subnetwork, a weight shared between modules, or no layer.
    """
    if subset.index is not None:
        raise ValueError("kfac needs whole layers; a subnetwork given by a mask is not supported")
    offs, chosen = _offsets(subset), set(subset.names)
    owners: dict[int, int] = {}
    for _, m in subset.model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers, covered = [], set()
    for name, m in subset.model.named_modules():
        prefix = name + "." if name else ""
        if not isinstance(m, _SUPPORTED) or prefix + "weight" not in chosen:
            continue
        if owners[id(m.weight)] != 1:
            raise ValueError(f"kfac cannot represent the weight of {name!r}: it is shared (tied)")
        has_bias = m.bias is not None and prefix + "bias" in chosen
        groups = getattr(m, "groups", 1)
        out = m.weight.shape[0]
        in_cols = m.weight[0].numel()  # in/groups · kh · kw, or in
        og = out // groups
        w_off = offs[prefix + "weight"]
        b_off = offs[prefix + "bias"] if has_bias else None
        blocks, bias_blocks = [], []
        for gi in range(groups):
            rows = torch.arange(gi * og, (gi + 1) * og)
            w_idx = w_off + rows.unsqueeze(1) * in_cols + torch.arange(in_cols).unsqueeze(0)
            if has_bias and joint_bias:
                w_idx = torch.cat([w_idx, (b_off + rows).unsqueeze(1)], dim=1)
            blocks.append((w_idx.reshape(-1), slice(gi * og, (gi + 1) * og), gi))
            if has_bias and not joint_bias:
                bias_blocks.append((b_off + rows, slice(gi * og, (gi + 1) * og)))
        layers.append(
            KronLayer(
                name,
                m,
                blocks,
                in_cols + int(has_bias and joint_bias),
                has_bias and joint_bias,
                bias_blocks,
            )
        )
        covered.update({prefix + "weight"} | ({prefix + "bias"} if has_bias else set()))
    rest = [n for n in subset.names if n not in covered]
    if not layers:
        raise ValueError(
            "kfac found no supported layer (nn.Linear, nn.Conv2d) among the Bayesian parameters"
        )
    return layers, rest


def _conv_patches(m: nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded input patches ``[B, L, in·kh·kw]`` (padding modes and string padding included)."""
    kh, kw = m.kernel_size
    if isinstance(m.padding, str):
        pads = []
        for k, d in ((kw, m.dilation[1]), (kh, m.dilation[0])):
            total = d * (k - 1) if m.padding == "same" else 0
            pads += [total // 2, total - total // 2]
    else:
        pads = [m.padding[1], m.padding[1], m.padding[0], m.padding[0]]
    if any(pads):
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, pads, mode=mode)
    # strided views instead of F.unfold, whose im2col is pathologically slow for one channel
    (dh, dw), (sh, sw) = m.dilation, m.stride
    win = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    win = win[..., ::dh, ::dw]  # [B, C, Ho, Wo, kh, kw]
    b, c, ho, wo = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(b, ho * wo, c * kh * kw)


def _positions(layer: KronLayer, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Layer input ``[B, S, in]`` and output gradients ``[K, B, S, out]`` over positions S."""
    if isinstance(layer.module, nn.Conv2d):
        k, b, out = g.shape[:3]
        return _conv_patches(layer.module, a), g.reshape(k, b, out, -1).transpose(2, 3)
    return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(
        g.shape[0], g.shape[1], -1, g.shape[-1]
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
    """KFAC curvature in a :class:`~laplacetorch.structures.Kron` structure.

    Args:
        fisher_type: ``"exact"`` (type-2: the C columns of Sₙ), ``"mc"`` (``mc_samples``
            sampled targets) or ``"empirical"``.
        approximation: weight sharing, ``"expand"`` or ``"reduce"``.
        joint_bias: one block for [W | b] (default) or separate W and b blocks.
        mc_samples: targets sampled per example for ``"mc"``.
        generator, seed: randomness for ``"mc"`` (a fresh generator seeded with ``seed``
            when no ``generator`` is given; the global RNG is never used).
    """
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
    kind = KFAC_FISHER_TYPES[fisher_type]
    layers, rest_names = kfac_layers(subset, joint_bias)
    if rest_names:
        warnings.warn(
            f"kfac: parameters outside Linear/Conv2d layers get a diagonal block: {rest_names}",
            stacklevel=2,
        )
    rest = (
        ParameterSubset(subset.model, "subnetwork", subnetwork=rest_names) if rest_names else None
    )
    if generator is None and fisher_type == "mc":
        generator = torch.Generator(device=subset.device).manual_seed(seed)

    def step(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        f, record = capture_forward(subset.model, layers, x)
        fd = f.detach()
        cols = output_columns(likelihood, fisher_type, fd, y, mc_samples, generator)
        grads = backward_columns(f, record, [layer.name for layer in layers], cols)
        out = {"loss": likelihood.nll_unit(fd, y).sum()}
        with torch.no_grad():
            for layer, g in zip(layers, grads, strict=True):
                a, g = _positions(layer, record["inputs"][layer.name], g)
                _accumulate_layer(out, layer, a, g, approximation)
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
    blocks = []
    for layer in layers:
        for gi, (index, _, _) in enumerate(layer.blocks):
            a_fac = sums[f"{layer.name}.A{gi}"] / sums[f"{layer.name}.R"]
            blocks.append((index, sums[f"{layer.name}.B{gi}"], a_fac))
        for gi, (index, _) in enumerate(layer.bias_blocks):
            one = torch.ones(1, 1, dtype=subset.dtype, device=subset.device)
            blocks.append((index, sums[f"{layer.name}.B{gi}"], one))
    offs = _offsets(subset)
    diag_index = torch.cat(
        [
            torch.arange(offs[n], offs[n] + k)
            for n, k in zip(subset.names, subset.numels, strict=True)
            if n in rest_names
        ]
        or [torch.zeros(0, dtype=torch.long)]
    )
    diag_values = sums.get("rest", zeros_like_theta(subset, 0))
    structure = Kron(blocks, diag_index, diag_values, subset.n_params, subset.group_index)
    return CurvatureResult(structure, n_data, n_out, sums["loss"], kind, "kfac")


def block_plan(layers: list[KronLayer]) -> list[tuple[KronLayer, str, int | None, slice]]:
    """``(layer, "weight" | "bias", group, out-channel slice)`` in the order of the Kron blocks
    that :func:`fit_kfac` builds: each layer's weight blocks (one per conv group), then its
    separate bias blocks."""
    plan = []
    for layer in layers:
        plan += [(layer, "weight", gi, rows) for gi, (_, rows, _) in enumerate(layer.blocks)]
        plan += [(layer, "bias", None, rows) for _, rows in layer.bias_blocks]
    return plan


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


def capture_forward(model: nn.Module, layers: list[KronLayer], x: Any) -> tuple[Tensor, dict]:
    """Forward pass recording each layer's input and output; refuses a layer called twice."""
    with torch.enable_grad(), capture_linear(layers) as record:
        f = model(x)
    for layer in layers:
        if record["calls"].get(layer.name) != 1:
            raise ValueError(
                f"kfac cannot represent layer {layer.name!r}: it was called "
                f"{record['calls'].get(layer.name, 0)} times in one forward pass"
            )
    return f, record


def _accumulate_layer(out: dict, layer: KronLayer, a: Tensor, g: Tensor, approximation: str):
    """Add this batch's A and B numerators (and the row count R) of one layer to ``out``."""
    if layer.joint_bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    if approximation == "reduce":
        a = a.mean(1, keepdim=True)
        g = g.sum(2, keepdim=True)
    out[f"{layer.name}.R"] = torch.tensor(a.shape[0] * a.shape[1], dtype=a.dtype, device=a.device)
    for gi, (_, rows, _) in enumerate(layer.blocks):
        a_g = _group_columns(layer, a, gi)
        af = a_g.reshape(-1, a_g.shape[-1])
        gf = g[..., rows].reshape(-1, rows.stop - rows.start)
        out[f"{layer.name}.A{gi}"] = af.T @ af
        out[f"{layer.name}.B{gi}"] = gf.T @ gf


def _group_columns(layer: KronLayer, a: Tensor, gi: int) -> Tensor:
    """The patch columns feeding conv group ``gi`` (all columns for one group)."""
    n_groups = len(layer.blocks)
    if n_groups == 1:
        return a
    per = a.shape[-1] - int(layer.joint_bias)
    per //= n_groups
    cols = a[..., gi * per : (gi + 1) * per]
    if layer.joint_bias:
        cols = torch.cat([cols, a[..., -1:]], dim=-1)
    return cols
