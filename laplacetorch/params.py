"""Choosing the Bayesian parameters and a functional view of the model in them.

A :class:`ParameterSubset` fixes which weights vary (``"all"``, ``"last_layer"`` or a
``"subnetwork"``) and orders them as one flat vector θ of length P: the selected parameter
tensors in ``model.named_parameters()`` order, each flattened row-major, restricted to a mask
for a subnetwork. :meth:`ParameterSubset.forward` evaluates f(θ, x) with
:func:`torch.func.functional_call`; every weight outside θ keeps its trained value.

The last layer's weights are named by the head (``"lm_head.weight"``) and are Bayesian even
when frozen. A head weight tied to another module (an LM's output embedding) is Bayesian in
the head's use only: every functional call passes the tensor under each of its names and
unties them (``tie_weights=False``), θ under the head's name, the trained value elsewhere.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .bayesian_weights import (
    check_subset_arguments,
    find_last_linear,
    head_names,
    subnetwork_names,
)
from .model_call import call_model
from .model_checks import check_dtypes_and_devices, check_model_mode, check_not_meta
from .subset_inputs import attention_mask_of, input_of, reduce_features

__all__ = [
    "ParameterSubset",
    "check_model_mode",
    "find_last_linear",
    "head_index",
    "statistics_dtype",
]


def statistics_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and decompositions are kept in for weights of ``weight_dtype``:
    float32 for half precision (bfloat16, float16), the weights' own dtype otherwise."""
    return torch.float32 if weight_dtype in (torch.bfloat16, torch.float16) else weight_dtype


def head_index(n_out: int, n_feat: int, has_bias: bool, device: torch.device) -> Tensor:
    """``[C, D̃]`` positions of a linear head's weights in θ = [vec(W) row-major, b]."""
    idx = torch.arange(n_out * n_feat, device=device).view(n_out, n_feat)
    if has_bias:
        bias = torch.arange(n_out * n_feat, n_out * (n_feat + 1), device=device).view(n_out, 1)
        idx = torch.cat([idx, bias], dim=1)
    return idx


class ParameterSubset:
    """The Bayesian parameters θ of a model, as one flat vector of length P.

    Args:
        model: the trained network; its outputs must be ``[batch, C]``.
        subset: ``"all"`` (every parameter with ``requires_grad``), ``"last_layer"`` (the
            head's weight and bias, frozen or not; a weight tied to another module is
            Bayesian in the head's use only) or ``"subnetwork"`` (frozen weights left out).
        last_layer_name: module name of the last layer (default: the last ``nn.Linear``).
        subnetwork: for ``"subnetwork"``: parameter or module names, a boolean mask over the
            flat vector of all parameters (``torch.nn.utils.parameters_to_vector`` order), or
            laplace-torch's integer indices into it (ascending).

    Attributes:
        names: names of the parameter tensors θ touches, in model order (the last layer's:
            the head's own names, also for a weight tied to an embedding).
        head_tied: for the last layer, each head weight shared with another module and the
            other names it is reachable by (``{}``: none); those are untied in every call.
        index: positions of θ inside the concatenation of those tensors (``None``: all).
        n_params: P.
        group_names: one group per parameter tensor (for layer-wise priors, as laplace-torch).
        group_index: ``[P]`` long tensor, the group of each entry of θ.
    """

    def __init__(
        self,
        model: nn.Module,
        subset: str = "all",
        *,
        last_layer_name: str | None = None,
        subnetwork: Sequence[str] | Tensor | None = None,
        feature_reduction: str | None = None,
    ) -> None:
        check_subset_arguments(subset, last_layer_name, subnetwork, feature_reduction)
        #: how last-layer sequence features [B, T, D] are reduced to [B, D] (None: not)
        self.feature_reduction = feature_reduction
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.kind = subset
        self.last_layer_name: str | None = None
        self.last_layer: nn.Linear | None = None
        named = dict(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters")
        self.head_tied: dict[str, list[str]] = {}
        index = None
        if subset == "all":
            names = [n for n, p in named.items() if p.requires_grad]
            if not names:
                raise ValueError("model has no parameters with requires_grad=True")
        elif subset == "last_layer":
            self.last_layer_name, self.last_layer = find_last_linear(model, last_layer_name)
            # the head's own names, frozen weights included: the user chose the head
            names, self.head_tied = head_names(model, self.last_layer_name, self.last_layer)
            named = self._named()
            self._head_names = dict(
                zip((local for local, _ in self.last_layer.named_parameters()), names, strict=True)
            )
        elif subset == "subnetwork":
            names, index = subnetwork_names(model, named, subnetwork)
        else:
            raise ValueError(
                f"unknown subset_of_weights {subset!r}; expected 'all', 'last_layer' or "
                "'subnetwork'"
            )
        self.names = names
        #: False once torch.func.vmap failed on this model (the per-example paths then loop)
        self.vmap_ok = True
        #: outputs with positions, seen flattened (see :mod:`laplacetorch.positions`)
        self.output_layout: Any = None
        #: within :meth:`fitting`: the fit's output width (0 before the first output)
        self._fit_width: int | None = None
        #: the layer-factor predictive's probe of each input signature (predictive._layer_plan)
        self.layer_plans: dict[tuple, Any] = {}
        self.shapes = [named[n].shape for n in names]
        self.numels = [named[n].numel() for n in names]
        self.index = index
        check_dtypes_and_devices({n: named[n] for n in names})
        check_not_meta(model)
        self.n_params = int(index.numel()) if index is not None else sum(self.numels)
        self._build_groups()
        self.check_weights()

    # ----------------------------------------------------------------- construction
    def _build_groups(self) -> None:
        # one group per parameter tensor: laplace-torch's "layerwise" prior
        self.group_names = list(self.names)
        gi = torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(self.numels)])
        self.group_index = gi if self.index is None else gi[self.index]

    # ----------------------------------------------------------------- properties
    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def _named(self) -> dict[str, nn.Parameter]:
        """Every parameter under every name it is reachable by (a tied weight under each)."""
        return dict(self.model.named_parameters(remove_duplicate=not self.head_tied))

    @property
    def _params(self) -> list[nn.Parameter]:
        named = self._named()
        return [named[n] for n in self.names]

    @property
    def device(self) -> torch.device:
        return self._params[0].device

    @property
    def weight_dtype(self) -> torch.dtype:
        """The Bayesian weights' own dtype: the forward and backward passes run in it."""
        return self._params[0].dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of θ, the outputs f and every statistic (curvature, losses): the weights'
        dtype, or float32 for half-precision weights (bf16 / fp16 sums lose the evidence)."""
        return statistics_dtype(self.weight_dtype)

    @property
    def half_precision(self) -> bool:
        """Whether the statistics are kept wider than the weights (bf16 / fp16 weights):
        then decompositions are done in float64 too."""
        return self.dtype != self.weight_dtype

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype floating inputs must have: that of the model's first floating weight
        (the input layer's, also when the Bayesian weights are float32 adapters on a
        half-precision backbone)."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return self.weight_dtype

    def _output(self, out: Tensor) -> Tensor:
        """The model's output in :attr:`dtype` (a cast inside the graph: gradients flow back
        into the half-precision network), flattened over positions where it has them; within
        a fit (:meth:`fitting`), of the width of the fit's first output."""
        if isinstance(out, Tensor) and out.is_floating_point() and out.dtype != self.dtype:
            out = out.to(self.dtype)
        out = out if self.output_layout is None else self.output_layout.flatten(out)
        if self._fit_width is not None and isinstance(out, Tensor) and out.dim():
            self._check_width(out.shape[-1])
        return out

    @contextmanager
    def fitting(self) -> Iterator[None]:
        """A fit's passes: every output must have the width of the fit's first (one C, and
        one number of positions T, per fit), or its sums would mix outputs of two widths."""
        self._fit_width = 0  # 0: not seen yet
        try:
            yield
        finally:
            self._fit_width = None

    def _check_width(self, width: int) -> None:
        if self._fit_width == 0:
            self._fit_width = width
        elif width != self._fit_width:
            layout = self.output_layout
            unit = "outputs" if layout is None else f"outputs (positions × {layout.n_classes})"
            fix = (
                "the model's output width must not depend on the batch"
                if layout is None
                else "pad the sequences to one length, the padding's targets ignore_index"
            )
            raise ValueError(
                f"the model gives {width} {unit} per example on this batch but gave "
                f"{self._fit_width} on the fit's first: a fit has one output width; {fix}"
            )

    def check_weights(self) -> None:
        """Raise ``ValueError`` if a Bayesian weight is NaN or infinite."""
        for n, p in zip(self.names, self._params, strict=True):
            if not torch.isfinite(p).all():
                raise ValueError(f"model weights contain NaN or Inf (parameter {n!r})")

    # ----------------------------------------------------------------- flat <-> named
    def _concat(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def map_vector(self) -> Tensor:
        """θ* — the current (trained) values of the Bayesian weights, detached, ``[P]``."""
        flat = self._concat([p.detach() for p in self._params]).to(self.dtype)
        return flat if self.index is None else flat[self.index]

    def weights_equal(self, theta: Tensor) -> bool:
        """Whether the model's Bayesian weights are exactly ``theta`` ``[P]``, compared
        tensor by tensor against views of θ (no P-sized copy; a masked subnetwork, small
        by construction, is gathered)."""
        if self.index is not None:
            return torch.equal(self.map_vector(), theta)
        if theta.shape != (self.n_params,):
            return False
        views = torch.split(theta, self.numels)
        return all(
            torch.equal(p.detach().reshape(-1).to(v.dtype), v)
            for p, v in zip(self._params, views, strict=True)
        )

    def from_named(self, tensors: dict[str, Tensor]) -> Tensor:
        """Flatten named tensors (e.g. gradients) into the θ layout, ``[P]``."""
        flat = self._concat([tensors[n] for n in self.names]).to(self.dtype)
        return flat if self.index is None else flat[self.index]

    def to_named(self, theta: Tensor) -> dict[str, Tensor]:
        """Named parameter tensors with θ in place; entries outside θ keep their trained value."""
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape [{self.n_params}]; got {list(theta.shape)}")
        if self.index is not None:
            base = self._concat([p.detach() for p in self._params]).to(theta.dtype)
            theta = base.scatter(0, self.index, theta)
        chunks = torch.split(theta, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def _weights(self, theta: Tensor) -> dict[str, Tensor]:
        """Every named parameter for a functional call: θ in place, in the weights' own dtype
        (a cast inside the graph), the others detached; a tied head weight under each of its
        names, θ only under the head's."""
        params = {n: p.detach() for n, p in self._named().items()}
        for n, t in self.to_named(theta).items():
            params[n] = t.to(params[n].dtype)
        return params

    def _call(self, x: Any, params: dict[str, Tensor] | None) -> Tensor:
        """The model on ``x`` (with ``params`` through ``functional_call``; a tied head
        untied from the module it shares its weight with)."""
        return call_model(self.model, x, params, tie_weights=not self.head_tied)

    def _leaf_weights(self) -> dict[str, Tensor] | None:
        """Frozen Bayesian weights as leaves that require grad, for a forward whose layer
        outputs must be differentiable (the layer-wise paths' backward of output columns);
        ``None`` when grad is off or some Bayesian weight has ``requires_grad`` already."""
        if not torch.is_grad_enabled() or any(p.requires_grad for p in self._params):
            return None
        params = {n: p.detach() for n, p in self._named().items()}
        for n in self.names:
            params[n] = params[n].requires_grad_()
        return params

    def forward(self, theta: Tensor, x: Any) -> Tensor:
        """f(θ, x): the model with θ substituted and every other parameter detached (so no
        graph reaches weights outside θ), via ``torch.func.functional_call``."""
        params = self._weights(theta)
        if self.feature_reduction is not None:
            return self._output(self._reduced_head(x, params))
        return self._output(self._call(x, params))

    def call(self, x: Any) -> Tensor:
        """f(x) at the model's own weights (see :func:`~laplacetorch.model_call.call_model`),
        in :attr:`dtype`; with grad on, differentiable in the layers' outputs even when the
        Bayesian weights are frozen (a frozen head)."""
        params = self._leaf_weights()
        if self.feature_reduction is not None:
            return self._output(self._reduced_head(x, params))
        return self._output(self._call(x, params))

    def _reduced_head(self, x: Any, params: dict[str, Tensor] | None) -> Tensor:
        """head(reduce(φ(x))): the model runs up to the last layer's input φ (and stops
        there), then the last layer is called once, as a module, on the reduced φ."""
        phi = input_of(self.last_layer, lambda: self._call(x, params))
        if phi is None:
            raise ValueError(f"last layer {self.last_layer_name!r} was not called by the model")
        phi = reduce_features(phi, self.feature_reduction, attention_mask_of(x))
        if params is None:
            return self.last_layer(phi)
        # θ in place, under each head parameter's own name
        own = dict(self.last_layer.named_parameters())
        head = {local: params.get(name, own[local]) for local, name in self._head_names.items()}
        return functional_call(self.last_layer, head, (phi,))

    def restricted(self, names: list[str]) -> ParameterSubset:
        """The subset of just the parameter tensors ``names`` (whole tensors of this subset),
        calling the model alike: the same reduction of the head's features, the same untied
        head weights."""
        if self.index is not None or not set(names) <= set(self.names):
            raise ValueError(f"restricted: {names} are not whole parameter tensors of the subset")
        sub = copy.copy(self)
        sub.kind, sub.layer_plans = "subnetwork", {}
        sub.names = [n for n in self.names if n in names]
        shapes = dict(zip(self.names, self.shapes, strict=True))
        sub.shapes = [shapes[n] for n in sub.names]
        sub.numels = [s.numel() for s in sub.shapes]
        sub.n_params = sum(sub.numels)
        sub._build_groups()
        return sub

    @property
    def closed_form_head(self) -> bool:
        """Whether the last layer's closed forms apply (a head on ``[B, D]`` features)."""
        return self.kind == "last_layer" and self.output_layout is None

    def assign(self, theta: Tensor) -> None:
        """Write θ into the model's parameters in place (``restore_weights`` writes θ*). A head
        weight tied to an embedding is one tensor: writing it writes the embedding too (right
        for θ*, the value both had when fitted)."""
        with torch.no_grad():
            for p, t in zip(self._params, self.to_named(theta).values(), strict=True):
                p.copy_(t)

    # ----------------------------------------------------------------- last layer
    def features(self, x: Any) -> tuple[Tensor, Tensor]:
        """Last-layer features φ(x) ``[B, D]`` and outputs f(x) ``[B, C]`` in one forward pass.

        Raises:
            ValueError: if the last layer's output is not the model's output, or its input is
                not ``[B, D]``.
        """
        if self.last_layer is None:
            raise ValueError("features() needs subset_of_weights='last_layer'")
        seen: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen["phi"], seen["out"] = inputs[0], output

        handle = self.last_layer.register_forward_hook(hook)
        try:
            with torch.no_grad():  # the model's own output, before the cast to self.dtype
                if self.feature_reduction is not None:
                    out = self._reduced_head(x, None)
                else:
                    out = call_model(self.model, x)
        finally:
            handle.remove()
        if "phi" not in seen:
            raise ValueError(f"last layer {self.last_layer_name!r} was not called by the model")
        phi = seen["phi"]  # reduced already under feature_reduction (see _reduced_head)
        if (
            phi.dim() != 2
            or not isinstance(out, Tensor)
            or out.shape != seen["out"].shape
            # the head's output is the model's, up to a cast (a float32 head on a bf16 model)
            or not (out is seen["out"] or torch.equal(out, seen["out"].to(out.dtype)))
        ):
            raise ValueError(
                f"last layer {self.last_layer_name!r} must map [B, D] features to the model "
                "output [B, C] as the final operation"
            )
        return phi.detach().to(self.dtype), self._output(out.detach())

    # ----------------------------------------------------------------- identity
    def signature(self) -> dict[str, Any]:
        """What identifies this subset of this model (checked when loading a state)."""
        return {
            "kind": self.kind,
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            # the layer behind each tensor: a state of a Linear does not load into a Conv1d
            "modules": [
                type(self.model.get_submodule(n.rpartition(".")[0])).__name__ for n in self.names
            ],
            "n_params": self.n_params,
            # which weights of those tensors: another mask of the same size is another subset
            "mask": None if self.index is None else _index_hash(self.index),
            "feature_reduction": self.feature_reduction,
        }


def _index_hash(index: Tensor) -> str:
    """A short hash of a subnetwork's positions (its signature: equal exactly for one mask)."""
    data = index.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
