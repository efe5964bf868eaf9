"""Memory of a predictive, checked before any Jacobian or output covariance is formed.

A predictive call holds, at its peak (bytes of the model's dtype, C outputs per example,
C = T·V for T positions of V classes):

- ``glm``: one chunk of examples at a time, each example with its C unit columns and its
  covariance ``[C, C]`` (:func:`example_bytes`; dense Jacobian rows ``[C, P]`` twice more
  where the structure takes no layer factors), at most ``memory_budget`` unless one example
  alone is larger; the moments (``glm_moments``, the samples) hold every covariance
  ``[B, C, C]`` (twice while they are joined), the predictive (``la(x)``) only a chunk's
  link (the per-position blocks, the ``mc`` link's Cholesky factors and samples);
- ``joint=True``: the dense rows ``[B·C, P]`` of all inputs, three times (J, its solve, their
  join), and the covariance ``[B·C, B·C]``;
- ``nn``: S weight draws ``[S, P]`` and the outputs at them ``[S, B, C]``, twice each.

:func:`check_predictive_memory` refuses a call past the limit with what fits instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import MemoryBudgetError, columns_bytes, human_bytes, largest_fitting
from .structures import DEFAULT_MEMORY_BUDGET

__all__ = ["PredictiveRequest", "check_predictive_memory", "example_bytes", "predictive_bytes"]


def example_bytes(n_outputs: int, element_size: int) -> int:
    """One example's share of a GLM chunk that grows with C²: its C unit columns ``[C, C]``
    and its covariance J Π⁻¹ Jᵀ ``[C, C]``."""
    return 2 * columns_bytes(n_outputs, 1, n_outputs, element_size)


@dataclass(frozen=True)
class PredictiveRequest:
    """What a predictive call will compute, known before any Jacobian is formed.

    Attributes:
        pred_type: ``"glm"`` or ``"nn"``.
        n_examples, n_outputs, n_params, element_size: B, C (T·V with positions), P, bytes.
        n_classes: V of a position for outputs with positions (``None`` without).
        joint: the joint covariance ``[B·C, B·C]``.
        link_approx: the link applied per chunk (``la(x)``); ``None``: the moments of all B
            are held (``glm_moments``, samples).
        n_samples: S draws (``nn``; the ``mc`` link).
        n_priors: covariances per chunk (the grid search's prior values).
        dense: the Jacobian as dense rows ``[b, C, P]`` (no layer factors).
        memory_budget: bytes a chunk may take.
    """

    pred_type: str
    n_examples: int
    n_outputs: int
    n_params: int
    element_size: int
    n_classes: int | None = None
    joint: bool = False
    link_approx: str | None = None
    n_samples: int = 100
    n_priors: int = 1
    dense: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET


def _chunk(r: PredictiveRequest) -> tuple[int, int]:
    """(examples of a chunk, bytes of a chunk)."""
    one = r.n_priors * example_bytes(r.n_outputs, r.element_size)
    if r.dense:
        one += 2 * columns_bytes(r.n_outputs, 1, r.n_params, r.element_size)
    rows = min(r.n_examples, max(1, r.memory_budget // max(one, 1)))
    return rows, rows * one


def predictive_bytes(r: PredictiveRequest) -> int:
    """The peak bytes of the predictive ``r`` (see the module docstring)."""
    e, b, c = r.element_size, r.n_examples, r.n_outputs
    if r.pred_type == "nn":
        return 2 * columns_bytes(r.n_samples, 1, r.n_params, e) + 2 * columns_bytes(
            r.n_samples, b, c, e
        )
    if r.joint:
        return 3 * columns_bytes(b * c, 1, r.n_params, e) + columns_bytes(b * c, 1, b * c, e)
    rows, chunk = _chunk(r)
    if r.link_approx is None:  # every covariance held, and joined
        return chunk + 2 * r.n_priors * columns_bytes(c, b, c, e)
    link = 2 * columns_bytes(c, rows, c, e)  # per-position blocks, Cholesky factors
    if r.link_approx == "mc":
        link += 2 * columns_bytes(r.n_samples, rows, c, e)
    return chunk + link + 2 * columns_bytes(1, b, c, e)


def _describe(r: PredictiveRequest) -> str:
    if r.pred_type == "nn":
        return f"the nn predictive (n_samples={r.n_samples})"
    if r.joint:
        return "the joint glm predictive"
    if r.link_approx is None:
        return "the glm moments"
    return f"the glm predictive (link_approx={r.link_approx!r})"


def _alternatives(r: PredictiveRequest, limit: int) -> list[str]:
    """What fits ``limit`` instead of ``r``, cheapest change first."""
    options: list[tuple[str, PredictiveRequest]] = []

    def fits(q: PredictiveRequest) -> bool:
        return predictive_bytes(q) <= limit

    if r.joint:
        options.append(("joint=False", replace(r, joint=False)))
    if r.link_approx == "mc":
        options.append(("link_approx='probit'", replace(r, link_approx="probit")))
    if not r.joint:  # the nn predictive, with as many samples as fit (two at least)

        def nn(s: int) -> PredictiveRequest:
            return replace(r, pred_type="nn", n_samples=s)

        s = largest_fitting(lambda s: fits(nn(s)), r.n_samples)
        if s >= 2 and (r.pred_type == "glm" or s < r.n_samples):
            kind = "pred_type='nn' with " if r.pred_type == "glm" else ""
            options.append((f"{kind}n_samples={s}", nn(s)))
    b = largest_fitting(lambda b: fits(replace(r, n_examples=b)), r.n_examples - 1)
    if b:
        options.append((f"a batch of {b} examples", replace(r, n_examples=b)))
    elif r.n_classes:
        v, t_max = r.n_classes, r.n_outputs // r.n_classes - 1
        one = replace(r, n_examples=1)
        t = largest_fitting(lambda t: fits(replace(one, n_outputs=t * v)), t_max)
        if t:
            options.append((f"{t} positions per example (a batch of 1)",
                            replace(one, n_outputs=t * v)))  # fmt: skip
    return [f"{what} needs {human_bytes(predictive_bytes(q))}" for what, q in options if fits(q)]


def check_predictive_memory(r: PredictiveRequest, limit: int) -> None:
    """Refuse the predictive ``r`` when its peak exceeds ``limit`` bytes.

    Raises:
        MemoryBudgetError: with the bytes needed, the sizes, the limit and what fits instead
            (``joint=False``, the probit link, the ``nn`` predictive with fewer samples,
            smaller batches, fewer positions).
    """
    need = predictive_bytes(r)
    if need <= limit:
        return
    pos = f" ({r.n_outputs // r.n_classes} positions × {r.n_classes})" if r.n_classes else ""
    e, c = r.element_size, r.n_outputs
    if r.pred_type == "nn":
        held = f"the outputs at {r.n_samples} draws, {human_bytes(columns_bytes(1, 1, c, e))}"
    else:
        held = f"an output covariance [C, C], {human_bytes(columns_bytes(c, 1, c, e))}"
    fits = _alternatives(r, limit)
    raise MemoryBudgetError(
        f"{_describe(r)} needs {human_bytes(need)} for B = {r.n_examples}, C = {c}{pos}, "
        f"P = {r.n_params} ({held} per example), over the limit of {human_bytes(limit)}; "
        + ("; ".join(fits) if fits else "nothing smaller fits that limit")
    )
