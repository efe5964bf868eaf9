"""Checks of the model by its behaviour on the first batch of a fit.

A list of module types (Dropout, BatchNorm) misses ``F.dropout(training=True)``, RReLU in
training mode, a BatchNorm without running statistics, or any user layer with noise; two
forward passes of the same inputs, and of one example alone, catch them all. The outputs are
then shown to the likelihood (probabilities where logits belong, one class).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from ..likelihoods.base import outputs_hint
from ..model_call import KeywordInputs
from .per_example import _index

if TYPE_CHECKING:
    from ..likelihoods import Likelihood
    from ..params import ParameterSubset

__all__ = ["check_causal_targets", "check_first_batch"]

#: examples of the first batch the checks run on
_N_CHECKED = 8


_BATCH_DEPENDENT = (
    "an example's output depends on the other examples of its batch ({what}): batch "
    "statistics, e.g. a BatchNorm in training mode or with track_running_stats=False. Call "
    "model.eval(), or use running statistics"
)


def _gap(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_first_batch(
    subset: ParameterSubset, likelihood: Likelihood, x: Any, n: int, y: Tensor | None = None
) -> int:
    """C, the outputs per example, after checking the model on (up to 8 of) ``n`` examples
    (and the targets ``y`` against the inputs: :func:`check_causal_targets`).

    Raises:
        ValueError: the outputs are not ``[B, C]``; two forward passes of the same inputs
            differ (randomness left in the model); an example's output depends on the other
            examples of the batch (batch statistics); or the likelihood refuses the outputs
            (probabilities for a softmax likelihood, one output for classification).
    """
    k = max(1, min(n, _N_CHECKED))
    xs = _index(x, slice(0, k))
    with torch.no_grad():
        try:
            first = subset.call(xs)
        except (RuntimeError, TypeError) as err:  # e.g. integer inputs into a layer
            ints = [t.dtype for t in tree_leaves(xs) if isinstance(t, Tensor)]
            ints = [d for d in ints if not d.is_floating_point]
            if not ints or "type" not in str(err).lower():
                raise _failed_on(err, xs) from err
            raise TypeError(
                f"the model failed on the inputs of dtype {ints[0]} ({err}); inputs that go "
                f"into a layer (not an embedding) must be floating point of the model's dtype "
                f"{subset.input_dtype}: pass x.to({subset.input_dtype})"
            ) from err
        second = subset.call(xs)
        m = k // 2 if k > 1 else 1  # the first half alone, against its rows in the batch
        try:
            part = subset.call(_index(x, slice(0, m))) if k > 1 else first
        except (RuntimeError, ValueError) as err:  # e.g. batch statistics of one example
            what = f"it fails on {m} example(s): {err}"
            raise ValueError(_BATCH_DEPENDENT.format(what=what)) from err
    if not isinstance(first, Tensor) or first.dim() != 2:
        shape = list(first.shape) if isinstance(first, Tensor) else type(first).__name__
        hint = outputs_hint(tuple(first.shape)) if isinstance(first, Tensor) else ""
        raise ValueError(f"model outputs must have shape [batch, C]; got {shape}{hint}")
    scale = float(first.abs().max()) if first.numel() else 0.0
    tol = torch.finfo(first.dtype).eps ** 0.5 * max(scale, 1.0)
    if _gap(first, second) > tol:  # a tolerance: GPU kernels may differ in the last bit
        raise ValueError(
            "the model is not deterministic: two forward passes of the same inputs differ "
            f"(max |Δf| = {_gap(first, second):.3g}); it draws random numbers (Dropout, "
            "RReLU or F.dropout(training=True) in training mode, a noise layer), so the "
            "curvature would be random. Call model.eval(), or make the layer deterministic"
        )
    part_gap = _gap(part, first[:m]) if part.shape == first[:m].shape else float("inf")
    if part_gap > tol:
        raise ValueError(
            _BATCH_DEPENDENT.format(
                what=f"max |Δf| = {part_gap:.3g}, half a batch against the "
                "same examples in the whole batch"
            )
        )
    likelihood.check_outputs(first)
    if y is not None:
        check_causal_targets(likelihood, x, y)
    return first.shape[1]


def check_causal_targets(likelihood: Likelihood, x: Any, y: Tensor) -> None:
    """Refuse sequence targets that are the input tokens themselves (Hugging Face's
    ``labels=input_ids``): a causal LM's position t predicts token t + 1, and HF models shift
    the labels inside their own loss; taken as they are, position t would be scored against
    the token it reads.

    Raises:
        ValueError: with the shift to apply.
    """
    ignore = getattr(likelihood, "ignore_index", None)
    layout = getattr(likelihood, "layout", None)
    if likelihood.name != "classification" or layout is None or layout.kind != "sequence":
        return
    if ignore is None or y.dim() != 2:
        return
    inner = getattr(x, "inputs", x)
    ids = inner.get("input_ids") if isinstance(inner, Mapping) else inner
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.shape != y.shape:
        return
    keep = y != ignore
    if bool(keep.any()) and bool((y[keep] == ids.to(y.device)[keep]).all()):
        raise ValueError(
            "the targets are the input tokens themselves (labels=input_ids): a causal LM's "
            "position t predicts token t + 1, and Hugging Face models shift the labels inside "
            "their own loss. Shift them: y = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], "
            f"{ignore})], 1) (the last position then has no target)"
        )


def _failed_on(err: Exception, x: Any) -> Exception:
    """The model's own error on the fit's first batch, saying what it was given (the usual
    causes: inputs of another feature size than the model's, a mapping inside an (X, y)
    batch for a model that takes a tensor)."""
    if isinstance(x, Tensor):
        seen = f"a tensor of shape {list(x.shape)}"
    elif isinstance(x, Mapping):
        seen = f"a mapping with keys {sorted(map(str, x.keys()))}"
    else:
        seen = type(x).__name__
    hint = ""
    if isinstance(x, Mapping) and not isinstance(x, KeywordInputs):
        hint = (
            "; a model that takes keyword inputs gets them from mapping batches (the label "
            "under dict_key_y), not from a mapping inside an (X, y) pair"
        )
    message = f"the model failed on the fit's first batch, given {seen}: {err}{hint}"
    try:
        return type(err)(message)
    except TypeError:  # an exception type with another signature
        return RuntimeError(message)
