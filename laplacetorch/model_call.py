"""Calling the user's model: keyword inputs (HF style), outputs with ``.logits``, and the
settings under which every submodule runs as a module with both AD modes."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import register_pytree_node

__all__ = [
    "KeywordInputs",
    "WithKeywords",
    "call_model",
    "model_output",
    "module_calls",
    "names_a_tie",
    "taking_turns",
]

R = TypeVar("R")


class KeywordInputs(dict):
    """Inputs the model takes as keyword arguments, ``model(**inputs)``: what is left of an
    HF-style batch (a mapping) once the label is taken out."""


register_pytree_node(
    KeywordInputs,
    lambda d: (list(d.values()), list(d.keys())),
    lambda values, keys: KeywordInputs(zip(keys, values, strict=True)),
)


class WithKeywords:
    """Inputs plus constant keyword arguments of every model call, ``model(x, **constants)``
    (laplace-torch's ``**model_kwargs``). The constants are the pytree's context, not its
    leaves, so chunking and vmap over examples leave them alone.

    Raises:
        TypeError: for tensor-valued constants (per-example tensors belong in a mapping x).
    """

    def __init__(self, inputs: Any, constants: dict[str, Any]) -> None:
        for k, v in constants.items():
            if isinstance(v, torch.Tensor):
                raise TypeError(
                    f"model keyword argument {k!r} is a tensor; pass per-example tensors in a "
                    "mapping x (the model is then called as model(**x))"
                )
        self.inputs, self.constants = inputs, dict(constants)


register_pytree_node(
    WithKeywords,
    lambda w: ([w.inputs], tuple(sorted(w.constants.items()))),
    lambda children, ctx: WithKeywords(children[0], dict(ctx)),
)


_fastpath: dict[str, Any] = {"depth": 0, "saved": None}
_fastpath_lock = threading.Lock()
_SDP = ("flash", "mem_efficient", "math", "cudnn")


def _switches() -> tuple[bool, ...]:
    """The user's settings: attention's fast path, then the four SDPA kernels' flags."""
    cuda = torch.backends.cuda
    return (torch.backends.mha.get_fastpath_enabled(),
            *(getattr(cuda, f"{k}_sdp_enabled")() for k in _SDP))  # fmt: skip


def _set_switches(values: tuple[bool, ...]) -> None:
    torch.backends.mha.set_fastpath_enabled(values[0])
    for k, v in zip(_SDP, values[1:], strict=True):
        getattr(torch.backends.cuda, f"enable_{k}_sdp")(v)


@contextmanager
def module_calls() -> Iterator[None]:
    """Run the model so that every submodule is called as a module and every op has both AD
    modes: attention's fused fast path (eval mode, no grad) skips ``out_proj``, and the fused
    scaled-dot-product kernels have no forward-mode AD (the math kernel has).

    Both switches are process-wide flags of torch (``sdpa_kernel`` sets them too, not per
    thread): nested and concurrent uses share one count, the first sets them and the last
    puts the user's settings back (also on an exception), so one thread's prediction never
    turns the fused kernels back on under another's forward-mode pass."""
    with _fastpath_lock:
        if _fastpath["depth"] == 0:
            _fastpath["saved"] = _switches()
            _set_switches((False, False, False, True, False))  # the math kernel only
        _fastpath["depth"] += 1
    try:
        yield
    finally:
        with _fastpath_lock:
            _fastpath["depth"] -= 1
            if _fastpath["depth"] == 0:
                _set_switches(_fastpath["saved"])


_forward_ad = threading.RLock()
_transforms = threading.RLock()


def taking_turns() -> threading.RLock:
    """The library's one process-wide re-entrant lock (``with taking_turns():``), around the
    code that runs torch.func transforms (vmap, jacrev, jvp): their levels are process state,
    and a lock taken inside a transform comes too late, so two threads inside them at once
    corrupt each other's (wrong numbers, or functorch's internal asserts). The predictives and
    the GGN operator's products take it whole; a fit takes it per batch step, so the user's
    loader and a distributed fit's waits run outside it."""
    return _transforms


_model_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock every library call of ``model`` holds: ``functional_call`` swaps the
    module's parameters for the given tensors during a call (θ, dual or batched tensors
    under jvp / vmap), so two threads calling one model, or reading its weights meanwhile,
    would see each other's (predictions silently wrong). One re-entrant lock per model."""
    with _model_locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


def jvp(func: Any, primals: tuple, tangents: tuple, **kwargs: Any) -> Any:
    """``torch.func.jvp``, one thread at a time: torch's forward-AD levels are process-wide,
    and two threads inside a jvp at once corrupt each other's tangents (a served model's
    predictions silently wrong, or "no level exists" errors)."""
    with _forward_ad:
        return torch.func.jvp(func, primals, tangents, **kwargs)


def model_output(out: Any) -> Tensor:
    """The output tensor: ``out`` itself, or its ``logits`` (an HF ``ModelOutput``).

    Raises:
        TypeError: for an output that is neither.
    """
    if isinstance(out, Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"model outputs must be a tensor or have a tensor .logits; got {type(out).__name__}"
    )


def names_a_tie(model: nn.Module, params: dict[str, Tensor]) -> bool:
    """Whether ``params`` holds one tied parameter under two of its names (a head tied to
    its embedding, each name then given its own value)."""
    owners: set[int] = set()
    for n, p in model.named_parameters(remove_duplicate=False):
        if n in params:
            if id(p) in owners:
                return True
            owners.add(id(p))
    return False


def call_model(
    model: nn.Module,
    x: Any,
    params: dict[str, Tensor] | None = None,
    *,
    tie_weights: bool | None = None,
) -> Tensor:
    """f(x): ``model(**x)`` for :class:`KeywordInputs`, else ``model(x)``; with ``params``
    through ``torch.func.functional_call``. ``tie_weights``: whether a value given under one
    name of a tied weight goes to all its names (``functional_call``'s default); ``False``:
    each name takes its own value from ``params``; ``None``: ``False`` exactly when
    ``params`` names a tied weight twice (:func:`names_a_tie`)."""
    constants = {}
    if isinstance(x, WithKeywords):
        x, constants = x.inputs, x.constants
    args, kwargs = ((), dict(x)) if isinstance(x, KeywordInputs) else ((x,), {})
    kwargs.update(constants)
    with model_lock(model), module_calls():
        if params is None:
            return model_output(model(*args, **kwargs))
        if tie_weights is None:
            tie_weights = not names_a_tie(model, params)
        return model_output(functional_call(model, params, args, kwargs, tie_weights=tie_weights))
