"""The network as a body and a final linear layer, for linearised samples at full width.

When the model's output *is* the output of its last ``nn.Linear`` (an LM head, a
classifier's last layer), f(θ) = φ(θ) Wᵀ + b, and a linearised sample splits at the head:

    f(θ*) + J ε = φ* Wᵀ + b + φ̇ Wᵀ + φ* Ẇᵀ + ḃ,

with φ̇ = J_φ ε the body's tangent at the head's input (``[k, B, ..., D]``: D numbers per
position, small beside C = 50k), and Ẇ, ḃ the head's own entries of ε (zero for a head
outside θ, as under LoRA). The body's forward-mode pass then runs once for a block of draws
(the primal shared), and each sample costs one product with the head's weight, formed a
few inputs at a time: neither ``[S, B, T, V]`` nor one whole ``[B, T, V]`` sample is
held. The products run in the head's dtype, as the forward and its ``jvp`` do.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bayesian_weights import find_last_linear
from .curvature.per_example import _index
from .model_call import model_lock
from .subset_inputs import input_of

if TYPE_CHECKING:
    from .params import ParameterSubset

__all__ = ["LinearHead", "Scratch", "split_at_head"]


@dataclass(frozen=True)
class LinearHead:
    """The final linear layer of a model, and where its weights sit in θ.

    Attributes:
        subset: the Bayesian parameters θ of the model.
        module: the ``nn.Linear`` whose output is the model's output.
        example_phi: the shape of one input's φ, the head's input (``[T, D]``, ``[D]``).
        weight: the ``(start, shape)`` of the head's weight in θ (``None``: not in θ).
        bias: likewise for its bias.
        head_weight, head_bias: the head's weight and bias tensors themselves, read under the
            model's lock (another thread's functional call swaps the module's attributes).
    """

    subset: ParameterSubset
    module: nn.Linear
    example_phi: torch.Size
    weight: tuple[int, torch.Size] | None
    bias: tuple[int, torch.Size] | None
    head_weight: Tensor
    head_bias: Tensor | None

    def body(self, theta: Tensor, x: Any) -> Tensor:
        """φ(θ, x): the model run with θ substituted, stopped at the head's input."""
        sub = self.subset
        phi = input_of(self.module, lambda: sub._call(x, sub._weights(theta)))
        if phi is None:  # the check's example reached it: the model branches on its inputs
            raise RuntimeError(
                "the model's last linear layer was called on the first input but not on "
                "these inputs: its output is not the head's for every input"
            )
        return phi

    @torch.no_grad()
    def primal(self, phi: Tensor) -> Tensor:
        """f(θ*) of the inputs whose head inputs are ``phi`` ``[b, ..., D]``, ``[b, C]`` in
        the subset's output layout and dtype."""
        out = _linear(phi, self.head_weight, self.head_bias)
        return out.to(self.subset.dtype).reshape(out.shape[0], -1)

    @torch.no_grad()
    def samples(
        self, phi: Tensor, phi_dot: Tensor, eps: Tensor, primal: Tensor, scratch: Scratch
    ) -> Tensor:
        """The linearised samples f(θ*) + J ε of the inputs whose head inputs are ``phi``
        ``[b, ..., D]``, ``[k, b, C]`` in the subset's output layout and dtype, from the
        body's tangents ``phi_dot`` ``[k, b, ..., D]``, the draws ``eps`` ``[k, P]`` and
        ``primal`` = :meth:`primal` of ``phi``; written into ``scratch``'s buffers (valid
        until its next use)."""
        w = self.head_weight
        k, c = phi_dot.shape[0], w.shape[0]
        lead = phi_dot.shape[:-1]  # [k, b, ...]
        tangent = scratch.take("tangent", (lead.numel(), c), w.dtype)
        torch.mm(phi_dot.reshape(-1, phi_dot.shape[-1]).to(w.dtype), w.t(), out=tangent)
        tangent = tangent.view(*lead, c)
        if self.weight is not None:
            start, shape = self.weight
            dw = eps[:, start : start + shape.numel()].view(k, *shape).to(w.dtype)
            tangent += torch.einsum("b...d,kcd->kb...c", phi, dw)
        if self.bias is not None:
            start, shape = self.bias
            db = eps[:, start : start + shape.numel()].to(w.dtype)
            tangent += db.view(k, *([1] * (phi.dim() - 1)), -1)
        out = scratch.take("sample", (k, *primal.shape), self.subset.dtype)
        return out.copy_(tangent.view(out.shape)).add_(primal)  # the cast in place


class Scratch:
    """Buffers reused from one tile to the next, one per name (a fresh CPU tensor of ten
    megabytes costs its page faults, about four times the arithmetic done on it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A contiguous ``shape`` view of the buffer ``name`` (grown when too small)."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` on ``x`` seen as rows ``[N, D]``: a slice's odd strides on its size-1
    axes send CPU bf16 matmuls to a path 20x slower."""
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], -1)


def _place(subset: ParameterSubset, param: Tensor | None) -> tuple[int, torch.Size] | None:
    """Where the parameter ``param`` lies in θ (by identity: a tied weight is found under
    its first owner's name), or ``None`` when it is not among the Bayesian weights."""
    if param is None:
        return None
    start = 0
    for p in subset._params:
        if p is param:
            return start, p.shape
        start += p.numel()
    return None


def split_at_head(subset: ParameterSubset, theta: Tensor, x: Any) -> LinearHead | None:
    """The model at θ as body and linear head, when its output is the last ``nn.Linear``'s
    output (itself, or a pure cast of it) from one call of that layer, checked on the
    first input of ``x`` (one example's forward), and the head's weights are whole in θ or
    outside it; ``None`` otherwise (then samples take the whole network's forward-mode
    pass)."""
    layout = subset.output_layout
    if subset.feature_reduction is not None or subset.index is not None:
        return None  # features reduced inside the head; a mask through the head's weights
    if layout is not None and layout.kind != "sequence":
        return None  # a linear head's classes are last: channels-first outputs are permuted
    try:
        _, module = find_last_linear(subset.model, subset.last_layer_name)
    except ValueError:
        return None
    seen: list[tuple[Tensor | None, Tensor, int]] = []
    me = threading.get_ident()

    def record(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if threading.get_ident() == me:  # another thread's forward is not this check's
            phi = inputs[0] if inputs else None  # None: called by keyword
            seen.append((phi, output, output._version))

    # with grad, so that the output's graph says what was done to the head's output
    probe = theta.detach().requires_grad_(True)
    handle = module.register_forward_hook(record)
    try:
        with torch.enable_grad():
            out = subset._call(_index(x, slice(0, 1)), subset._weights(probe))
    finally:
        handle.remove()
    if len(seen) != 1 or not isinstance(out, Tensor):
        return None
    phi, head_out, version = seen[0]
    if phi is None or head_out._version != version:  # changed in place after the head
        return None
    if out is not head_out:  # only a cast of it, checked on the graph, not on values
        step = out.grad_fn
        if (
            step is None
            or type(step).__name__ != "ToCopyBackward0"
            or step.next_functions[0][0] is not head_out.grad_fn
        ):
            return None
    if phi.shape[:-1] != out.shape[:-1]:
        return None
    with model_lock(subset.model):  # the real weights, not another call's substitutes
        weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
        places = _place(subset, module.weight), _place(subset, module.bias)
    return LinearHead(subset, module, phi.shape[1:], *places, head_weight=weight, head_bias=bias)
