"""Which parameter tensors are Bayesian: the options of each ``subset_of_weights`` checked,
the last ``nn.Linear`` (its weights named by the head, frozen or tied ones included), a
subnetwork's names, mask or integer indices, and frozen weights (``requires_grad=False``)
left out of ``"all"`` and subnetworks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .subset_inputs import FEATURE_REDUCTIONS, indices_to_mask

__all__ = [
    "check_subset_arguments",
    "find_last_linear",
    "head_names",
    "subnetwork_names",
    "trainable",
]


def check_subset_arguments(
    subset: str,
    last_layer_name: str | None,
    subnetwork: Any,
    feature_reduction: str | None,
) -> None:
    """Refuse options that belong to another ``subset_of_weights`` (or an unknown reduction)."""
    if feature_reduction is not None and (
        subset != "last_layer" or feature_reduction not in FEATURE_REDUCTIONS
    ):
        raise ValueError(
            f"feature_reduction must be one of {FEATURE_REDUCTIONS} with "
            f"subset_of_weights='last_layer'; got {feature_reduction!r} with {subset!r}"
        )
    if subnetwork is not None and subset != "subnetwork":
        raise ValueError(
            f"subnetwork is only used with subset_of_weights='subnetwork'; got {subset!r}"
        )
    if last_layer_name is not None and subset != "last_layer":
        raise ValueError(
            f"last_layer_name is only used with subset_of_weights='last_layer'; got {subset!r}"
        )


def find_last_linear(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` module, or the last one in ``model.named_modules()`` order.

    Raises:
        ValueError: if there is no such ``nn.Linear``.
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"last_layer_name {name!r} is not a module of the model")
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(
                f"last layer {name!r} must be an nn.Linear; got {type(modules[name]).__name__}"
            )
        return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("subset_of_weights='last_layer' needs an nn.Linear layer; none found")
    return linears[-1]


def head_names(
    model: nn.Module, layer_name: str, layer: nn.Linear
) -> tuple[list[str], dict[str, list[str]]]:
    """The last layer's parameters under the head's own names (``"lm_head.weight"``), and for
    each one tied to another module the other names it is reachable by.

    The rule: the user chose the head, so its weights are Bayesian even when frozen
    (``requires_grad=False``, as a fine-tuned LM's head usually is); and a weight the head
    shares with another module (a language model's output embedding tied to its input
    embedding) is Bayesian only in the head's use of it: the rest of the model keeps the
    tensor's trained value. The tie is announced once, naming both parameters.
    """
    prefix = layer_name + "." if layer_name else ""
    own = {id(p): prefix + local for local, p in layer.named_parameters()}
    tied: dict[str, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in own and n != own[id(p)]:
            tied.setdefault(own[id(p)], []).append(n)
    if tied:
        pairs = "; ".join(f"{n!r} is {', '.join(map(repr, o))}" for n, o in tied.items())
        warnings.warn(
            f"the last layer {layer_name!r} shares weights with other modules ({pairs}): "
            "last-layer Laplace makes only the head's use of them Bayesian; the rest of the "
            "model keeps their trained values, in fitting, sampling and every predictive",
            stacklevel=4,
        )
    return list(own.values()), tied


def trainable(names: list[str], named: dict[str, nn.Parameter], what: str) -> list[str]:
    """``names`` without the parameters that have ``requires_grad=False`` (frozen weights are
    never Bayesian), saying once which were left out.

    Raises:
        ValueError: when every parameter named is frozen.
    """
    frozen = [n for n in names if not named[n].requires_grad]
    if frozen:
        warnings.warn(
            f"parameters with requires_grad=False are not Bayesian; left out of {what}: {frozen}",
            stacklevel=4,
        )
    kept = [n for n in names if named[n].requires_grad]
    if not kept:
        raise ValueError(f"every parameter of {what} has requires_grad=False: {frozen}")
    return kept


def subnetwork_names(
    model: nn.Module, named: dict[str, nn.Parameter], subnetwork: Sequence[str] | Tensor | None
) -> tuple[list[str], Tensor | None]:
    """The parameter tensors a subnetwork touches (frozen ones left out) and the positions of
    its entries in their concatenation (``None``: all of them), from names of parameters or
    modules, a boolean mask over all parameters, or integer indices into it."""
    if subnetwork is None:
        raise ValueError(
            "subset_of_weights='subnetwork' needs `subnetwork`: parameter/module names or a "
            "boolean mask over the flat parameter vector"
        )
    if isinstance(subnetwork, np.ndarray):  # a numpy mask or index array, as a tensor
        if subnetwork.dtype.kind not in "biu":
            raise ValueError(
                f"subnetwork array must be boolean (a mask) or integer (indices); got numpy "
                f"dtype {subnetwork.dtype}"
            )
        subnetwork = torch.from_numpy(subnetwork.copy())
    if (
        isinstance(subnetwork, Tensor)
        and not subnetwork.dtype.is_floating_point
        and (subnetwork.dtype != torch.bool)
    ):
        subnetwork = indices_to_mask(subnetwork, sum(p.numel() for p in named.values()))
    if isinstance(subnetwork, Tensor):
        total = sum(p.numel() for p in named.values())
        if subnetwork.dtype != torch.bool:
            raise ValueError(f"subnetwork mask must be boolean; got dtype {subnetwork.dtype}")
        if subnetwork.shape != (total,):
            raise ValueError(
                f"subnetwork mask must have shape [{total}] (all parameters); "
                f"got {list(subnetwork.shape)}"
            )
        if not subnetwork.any():
            raise ValueError("subnetwork mask selects no parameter (all False)")
        chunks = list(torch.split(subnetwork.cpu(), [p.numel() for p in named.values()]))
        selected = [n for n, c in zip(named, chunks, strict=True) if c.any()]
        trainable(selected, named, "the subnetwork mask")  # warns, or refuses if none
        chunks = [c & named[n].requires_grad for n, c in zip(named, chunks, strict=True)]
        names = [n for n, c in zip(named, chunks, strict=True) if c.any()]
        kept = torch.cat([c for c, n in zip(chunks, named, strict=True) if n in names])
        index = None if kept.all() else kept.nonzero().squeeze(-1)
        return names, index
    if isinstance(subnetwork, str):
        subnetwork = [subnetwork]
    wanted = list(subnetwork)
    if not wanted:
        raise ValueError("subnetwork names are empty")
    chosen = set()
    # every name a parameter is reachable by (a tied weight has several), to its first
    canonical = {id(p): n for n, p in named.items()}
    aliases = {
        n: canonical[id(p)]
        for n, p in model.named_parameters(remove_duplicate=False)
        if id(p) in canonical
    }
    for w in wanted:
        hits = {c for n, c in aliases.items() if n == w or n.startswith(w + ".")}
        if not hits:
            raise ValueError(
                f"subnetwork name {w!r} matches no parameter or module; parameters are "
                f"{list(named)[:8]}{'…' if len(named) > 8 else ''}"
            )
        chosen.update(hits)
    names = trainable([n for n in named if n in chosen], named, "the subnetwork")
    return names, None
