"""Jacobian sources for the GLM predictive f(x) ~ N(f(x; θ*), J Π⁻¹ Jᵀ), chunked to a budget.

:func:`jacobian_sources` gives, per chunk of inputs, the cheapest form of J = ∂f/∂θ at θ* for
the layouts the structure can use (:meth:`Structure.layouts`):

- no layouts: dense rows ``[b, C, P]`` from vmap'd ``jacrev``;
- a linear head (``subset_of_weights="last_layer"``): its features from one forward, with
  output gradients g = I_C (f is the head's output), no backward;
- otherwise: one forward recording each laid-out layer's input and output and one batched
  backward of the C unit vectors (the layers' output gradients), plus dense columns for the
  parameters outside those layers.

The structure then computes J Π⁻¹ Jᵀ block by block from whatever the source offers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap
from torch.utils._pytree import tree_flatten

from .curvature.example_axis import ExampleAxis, learn_example_axes
from .curvature.layer_blocks import layer_positions, param_offsets
from .curvature.layer_capture import backward_columns, capture_layers
from .curvature.per_example import _index, _unsqueeze, is_vmap_limit, with_vmap_fallback
from .params import ParameterSubset
from .predictive_memory import example_bytes
from .structures import DEFAULT_MEMORY_BUDGET, DenseJacobian, JacobianSource, LayerBlock

__all__ = ["LayerJacobian", "dense_jacobians", "function_samples", "jacobian_sources"]


@dataclass
class _Layer:
    name: str
    module: nn.Module


class LayerJacobian(JacobianSource):
    """J of a chunk as per-layer factors plus dense columns for the other parameters.

    Args:
        f: outputs ``[B, C]``.
        layers: per layer name, its inputs ``[B, S, in]`` and output gradients
            ``[C, B, S, out]`` (g[c] = ∂f_c/∂z).
        rest: ``(lookup, jac)``: ``lookup[p]`` is the column of θ position p in ``jac``
            ``[B, C, R]`` (−1 where there is none), or ``None``.
    """

    def __init__(
        self,
        f: Tensor,
        layers: dict[str, tuple[Tensor, Tensor]],
        rest: tuple[Tensor, Tensor] | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.f, self.layers, self.rest, self.memory_budget = f, layers, rest, memory_budget

    def factors(self, layout: LayerBlock) -> tuple[Tensor, Tensor] | None:
        raw = self.layers.get(layout.layer)
        return None if raw is None else layout.select(*raw)

    def columns(self, positions: Tensor | None) -> Tensor:
        if self.rest is not None and positions is not None:
            lookup, jac = self.rest
            cols = lookup[positions]
            if not bool((cols >= 0).all()):
                raise ValueError("dense Jacobian columns were requested for a laid-out layer")
            return jac[..., cols]
        raise ValueError("this Jacobian source has no dense columns for these positions")


def dense_jacobians(
    subset: ParameterSubset,
    x: Any,
    n_examples: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    keep_graph: bool = False,
) -> Iterator[DenseJacobian]:
    """Dense ``[b, C, P]`` Jacobians (with the outputs ``f``) for chunks of the inputs, from
    vmap'd ``jacrev``; each chunk holds at most ``memory_budget`` bytes of J and of the
    covariances ``[b, C, C]`` made from it (one example at least). With
    ``keep_graph`` J and f stay differentiable in the inputs (``enable_backprop``)."""
    theta = subset.map_vector()

    def jac_and_value(xn: Any) -> tuple[Tensor, Tensor]:
        def with_aux(th: Tensor) -> tuple[Tensor, Tensor]:
            out = subset.forward(th, _unsqueeze(xn)).squeeze(0)
            return out, out if keep_graph else out.detach()

        return jacrev(with_aux, has_aux=True)(theta)

    row_bytes = subset.n_params * theta.element_size()
    n_out = n_out_of(subset, x)
    per_example = row_bytes * n_out + example_bytes(n_out, theta.element_size())
    chunk = max(1, memory_budget // per_example)
    eye = torch.eye(n_out, dtype=theta.dtype, device=theta.device)
    for s in range(0, n_examples, chunk):
        xs, b = _index(x, slice(s, s + chunk)), min(chunk, n_examples - s)
        if keep_graph:
            try:
                jac, out = vmap(jac_and_value)(xs)
            except (RuntimeError, NotImplementedError) as err:
                if not is_vmap_limit(err):
                    raise
                raise ValueError(
                    "enable_backprop needs torch.func.vmap over the model, which cannot run "
                    f"it ({type(err).__name__}: {str(err)[:120]})"
                ) from err
            yield DenseJacobian(jac, out, memory_budget)
            continue
        jac, out = with_vmap_fallback(
            subset, lambda xs=xs: vmap(jac_and_value)(xs), xs, b, theta, lambda f, n: eye
        )
        yield DenseJacobian(jac.detach(), out, memory_budget)


def jacobian_sources(
    subset: ParameterSubset,
    x: Any,
    n_examples: int,
    layouts: list[LayerBlock],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[JacobianSource]:
    """Jacobian sources for chunks of ``x`` (see the module docstring)."""
    names = list(dict.fromkeys(lay.layer for lay in layouts))
    if not names:
        yield from dense_jacobians(subset, x, n_examples, memory_budget)
        return
    if subset.closed_form_head and names == [subset.last_layer_name]:
        # a block's products are at most [b, C, P] per chunk (a dense head's J Q)
        row = subset.n_params * _bytes(subset)
        n_out = n_out_of(subset, x)
        per_example = row * n_out + example_bytes(n_out, _bytes(subset))
        chunk = min(
            max(1, memory_budget // per_example), batch_rows(n_examples, n_out, row * n_out)
        )
        for s in range(0, n_examples, chunk):
            phi, f = subset.features(_index(x, slice(s, s + chunk)))
            eye = torch.eye(n_out, dtype=f.dtype, device=f.device)
            g = eye.unsqueeze(1).expand(n_out, f.shape[0], n_out).unsqueeze(2)
            yield LayerJacobian(f, {names[0]: (phi.unsqueeze(1), g)}, None, memory_budget)
        return
    layers, axes, per_example, n_out = _layer_plan(subset, names, x, n_examples)
    rest = _rest_subset(subset, layers)
    per_example += example_bytes(n_out, _bytes(subset))  # its unit columns and covariance
    if rest is not None:  # and the rest's dense columns [C, R]
        per_example += n_out * int((rest[1] >= 0).sum()) * _bytes(subset)
    chunk = min(memory_budget // per_example, batch_rows(n_examples, n_out, per_example))
    for s in range(0, n_examples, max(1, chunk)):
        xc = _index(x, slice(s, s + max(1, chunk)))
        with torch.enable_grad(), capture_layers(layers) as record:
            f = subset.call(xc)
        if any(record["calls"].get(la.name) != 1 for la in layers):
            # this chunk uses a layer another number of times than the probe: dense J
            yield from dense_jacobians(subset, xc, f.shape[0], memory_budget)
            continue
        n_out = f.shape[-1]
        eye = torch.eye(n_out, dtype=f.dtype, device=f.device)
        cols = eye.unsqueeze(1).expand(n_out, f.shape[0], n_out).contiguous()  # [C, B, C]
        grads = backward_columns(f, record, [la.name for la in layers], cols)
        with torch.no_grad():
            factors = {
                la.name: layer_positions(
                    la.module, record["inputs"][la.name], g, axes.get(la.name), f.shape[0]
                )
                for la, g in zip(layers, grads, strict=True)
            }
        rest_part = None
        if rest is not None:
            sub, lookup = rest
            jac = torch.cat(
                [src.jac for src in dense_jacobians(sub, xc, f.shape[0], memory_budget)]
            )
            rest_part = (lookup, jac)
        yield LayerJacobian(f.detach(), factors, rest_part, memory_budget)


def function_samples(
    subset: ParameterSubset, thetas: Tensor, x: Any, keep_graph: bool = False
) -> Tensor:
    """``[S, B, C]`` network outputs at the weight draws ``thetas`` ``[S, P]``: vmap over the
    draws, or a loop where vmap cannot run the model (differentiable in x with
    ``keep_graph``)."""
    with torch.set_grad_enabled(keep_graph):
        if subset.vmap_ok:
            try:
                return vmap(lambda t: subset.forward(t, x))(thetas)
            except (RuntimeError, NotImplementedError) as err:
                if not is_vmap_limit(err):
                    raise
        return torch.stack([subset.forward(t, x) for t in thetas])


#: chunks below this many bytes are not worth their fixed cost (a forward, a C-column
#: backward and the structure's contraction each): the three-forward rule stops here
MIN_CHUNK_BYTES = 4 * 2**20


def batch_rows(n_examples: int, n_out: int, row_bytes: int = 0) -> int:
    """The most rows of a layer-factor chunk for a batch of ``n_examples``: ⌈3B / (2(C + 1))⌉,
    or as many rows of ``row_bytes`` as :data:`MIN_CHUNK_BYTES` holds, whichever is more.

    A row of a chunk holds each layer's input and C output-gradient columns (about C + 1
    activations of the layer) and the batched backward about as much again, so chunks of
    that size keep the predictive within about three forward passes of the whole batch's
    activations, whatever ``memory_budget`` allows; below a few MiB the chunks' fixed costs
    dominate instead (400 digits on the 85k MLP: 8 chunks of 55 rows 12.2 ms, 2 of 200
    rows 8.2 ms), so a chunk may always take that much (``memory_budget`` still caps it).
    """
    rule = -(-3 * n_examples // (2 * (n_out + 1)))
    floor = MIN_CHUNK_BYTES // row_bytes if row_bytes > 0 else 0
    return max(1, rule, min(floor, n_examples))


def n_out_of(subset: ParameterSubset, x: Any) -> int:
    """C, from the outputs of the first example."""
    with torch.no_grad():
        return subset.call(_index(x, slice(0, 1))).shape[-1]


def _bytes(subset: ParameterSubset) -> int:
    return torch.finfo(subset.dtype).bits // 8


def _signature(x: Any) -> tuple:
    """What a forward's layer layout can depend on: each input's shape past the batch, dtype
    and device (values aside), and the non-tensor leaves' types."""
    leaves, spec = tree_flatten(x)
    return str(spec), tuple(
        (tuple(t.shape[1:]), t.dtype, t.device) if isinstance(t, Tensor) else type(t).__name__
        for t in leaves
    )


def _layer_plan(
    subset: ParameterSubset, names: list[str], x: Any, n_examples: int
) -> tuple[list[_Layer], dict[str, ExampleAxis], int, int]:
    """The layers a chunk's factors come from, their example axes, the bytes per example and
    C: probed by three small forwards the first time inputs of this signature are seen, then
    kept on the subset (every chunk still checks its layers' call counts)."""
    key = (tuple(names), _signature(x))
    plans = subset.layer_plans
    if key in plans:
        return plans[key]
    modules = dict(subset.model.named_modules())
    layers, per_example, n_out = _callable_once(subset, [_Layer(n, modules[n]) for n in names], x)
    layers, axes = _example_axes(subset, layers, x, n_examples)
    plan = (layers, axes, per_example, n_out)
    if min(n_examples, 8) >= 2:  # learnt from two examples or more: a plan for the signature
        plans[key] = plan  # one assignment: another thread sees the old dict or the new entry
    return plan


def _callable_once(
    subset: ParameterSubset, layers: list[_Layer], x: Any
) -> tuple[list[_Layer], int, int]:
    """The layers called exactly once by a forward pass (a probe on one example), the
    bytes per example of their recorded inputs and C output-gradient columns, and C."""
    with torch.no_grad(), capture_layers(layers) as record:
        out = subset.call(_index(x, slice(0, 1)))
    kept = [la for la in layers if record["calls"].get(la.name) == 1]
    n_out = out.shape[-1]
    size = sum(
        record["inputs"][la.name].numel() * _patch_factor(la.module)
        + n_out * record["outputs"][la.name].numel()
        for la in kept
    )
    return kept, size * out.element_size(), n_out


def _example_axes(
    subset: ParameterSubset, layers: list[_Layer], x: Any, n_examples: int
) -> tuple[list[_Layer], dict[str, ExampleAxis]]:
    """Each layer's example axis, learnt on up to 8 examples (two small forwards); a layer
    with none is dropped, so its parameters get dense columns. With one example there is
    nothing to learn: all of a layer's rows are that example's."""
    m = min(n_examples, 8)
    if m < 2 or not layers:
        return layers, {}
    xs = _index(x, slice(0, m))
    with torch.no_grad(), capture_layers(layers) as record:
        subset.call(xs)
    axes = learn_example_axes(subset.call, layers, xs, m, record["inputs"])
    return [la for la in layers if axes[la.name] is not None], axes


def _patch_factor(module: nn.Module) -> int:
    """How much larger a layer's unfolded input is than its input (kernel volume)."""
    kernel = getattr(module, "kernel_size", ())
    return int(torch.tensor(kernel).prod()) if kernel else 1


def _rest_subset(
    subset: ParameterSubset, layers: list[_Layer]
) -> tuple[ParameterSubset, Tensor] | None:
    """The Bayesian parameters outside ``layers`` as a subset, with the lookup from θ
    positions to its columns (−1 inside the layers)."""
    covered = {la.name + ("." if la.name else "") + p for la in layers for p in ("weight", "bias")}
    rest_names = [n for n in subset.names if n not in covered]
    if not rest_names:
        return None
    offs, numel = param_offsets(subset), dict(zip(subset.names, subset.numels, strict=True))
    lookup = torch.full((subset.n_params,), -1, dtype=torch.long, device=subset.device)
    col = 0
    for n in rest_names:
        lookup[offs[n] : offs[n] + numel[n]] = torch.arange(col, col + numel[n])
        col += numel[n]
    return subset.restricted(rest_names), lookup
