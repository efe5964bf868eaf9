"""Per-example curvature factors Mₙ with Gₙ = Mₙᵀ Mₙ, vectorised with ``torch.func``.

GGN:  Mₙ = Sₙᵀ Jₙ  (``[K, P]``), the K vector-Jacobian products Jₙᵀ sₙₖ of one example, so
      Σₙ Mₙᵀ Mₙ = Σₙ Jₙᵀ Λₙ Jₙ.
EF:   Mₙ = gₙᵀ (``[1, P]``), gₙ = ∇θ (−log p(yₙ | f(xₙ; θ))), so Σₙ Mₙᵀ Mₙ = Σₙ gₙ gₙᵀ.

Rows are produced in chunks of examples and of the K columns so that no chunk holds more than
``memory_budget`` bytes: the full Jacobian of a batch is never needed at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vjp, vmap
from torch.utils._pytree import tree_map

from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import DEFAULT_MEMORY_BUDGET

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "is_vmap_limit",
    "per_example_diagonal",
    "per_example_factors",
    "with_vmap_fallback",
]


def _index(x: Any, sl: slice) -> Any:
    return tree_map(lambda t: t[sl] if isinstance(t, Tensor) else t, x)


def _unsqueeze(x: Any) -> Any:
    return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, x)


def per_example_factors(
    subset: ParameterSubset,
    likelihood: Likelihood,
    x: Any,
    y: Tensor,
    theta: Tensor,
    *,
    kind: str,
    n_outputs: int,
    n_examples: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    columns: Callable[[Tensor, Tensor], Tensor] | None = None,
    n_columns: int | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(M, nll)`` chunks: ``M`` is ``[b, k, P]``, ``nll`` the ``[b]`` unit-scale
    negative log-likelihoods of those examples (``None`` for later column chunks of the same
    examples, so each example's loss is yielded exactly once).

    ``columns``: ``(f, y) -> [K, b, C]`` output-space vectors to pull back instead of the
    columns of Sₙ (``n_columns`` = K; the Monte-Carlo Fisher's sampled output gradients)."""
    p = subset.n_params
    if columns is not None:
        yield from _given_columns(
            subset, likelihood, x, y, theta, columns, n_examples, memory_budget, n_columns
        )
        return
    n_cols = n_outputs if kind == "ggn" else 1
    row_bytes = p * theta.element_size()
    cols_per_chunk = max(1, min(n_cols, memory_budget // max(row_bytes, 1)))
    ex_per_chunk = max(1, memory_budget // (row_bytes * cols_per_chunk))

    for e0 in range(0, n_examples, ex_per_chunk):
        sl = slice(e0, min(e0 + ex_per_chunk, n_examples))
        xs, ys = _index(x, sl), y[sl]
        if kind == "ef":
            yield _ef_chunk(subset, likelihood, xs, ys, theta)
        else:
            yield from _ggn_chunks(subset, likelihood, xs, ys, theta, n_cols, cols_per_chunk)


def _forward_one(subset: ParameterSubset, th: Tensor, xn: Any) -> Tensor:
    """f(θ, xₙ) of one example (``xn`` without its batch axis)."""
    return subset.forward(th, _unsqueeze(xn)).squeeze(0)


def _ef_chunk(
    subset: ParameterSubset, likelihood: Likelihood, xs: Any, ys: Tensor, theta: Tensor
) -> tuple[Tensor, Tensor]:
    """The empirical Fisher's rows ``[b, 1, P]`` (each example's loss gradient) and the
    examples' NLL."""

    def ef_rows(xn: Any, yn: Tensor) -> tuple[Tensor, Tensor]:
        def nll(th: Tensor) -> tuple[Tensor, Tensor]:
            out = _forward_one(subset, th, xn)
            return likelihood.nll_unit(out.unsqueeze(0), yn.unsqueeze(0)).squeeze(0), out

        g, (_, out) = grad_and_value(nll, has_aux=True)(theta)
        return g.unsqueeze(0), out.detach()

    def ef_cols(out: Tensor, n: int) -> Tensor:
        return likelihood.output_grad(out[None], ys[n : n + 1]).T

    rows, out = with_vmap_fallback(
        subset, lambda: vmap(ef_rows)(xs, ys), xs, ys.shape[0], theta, ef_cols
    )
    return rows, likelihood.nll_unit(out.detach(), ys)


def _ggn_chunks(
    subset: ParameterSubset,
    likelihood: Likelihood,
    xs: Any,
    ys: Tensor,
    theta: Tensor,
    n_cols: int,
    cols_per_chunk: int,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """The GGN's rows Sₙᵀ Jₙ of the examples, ``cols_per_chunk`` columns of Sₙ a chunk; the
    examples' NLL with the first chunk, ``None`` with the others."""

    def ggn_rows(xn: Any, yn: Tensor, k0: int, k1: int) -> tuple[Tensor, Tensor]:
        out, pullback = vjp(lambda th: _forward_one(subset, th, xn), theta)
        sqrt = likelihood.hessian_sqrt(out.detach()[None], yn[None]).squeeze(0)  # [C, K]
        (rows,) = vmap(pullback)(sqrt[:, k0:k1].T.contiguous())
        return rows, out

    for k0 in range(0, n_cols, cols_per_chunk):
        k1 = min(k0 + cols_per_chunk, n_cols)

        def ggn_cols(out: Tensor, n: int, k0: int = k0, k1: int = k1) -> Tensor:
            return likelihood.hessian_sqrt(out[None], ys[n : n + 1]).squeeze(0)[:, k0:k1]

        rows, out = with_vmap_fallback(
            subset,
            lambda k0=k0, k1=k1: vmap(lambda xn, yn: ggn_rows(xn, yn, k0, k1))(xs, ys),
            xs,
            ys.shape[0],
            theta,
            ggn_cols,
        )
        nll = likelihood.nll_unit(out.detach(), ys) if k0 == 0 else None
        yield rows, nll


def _given_columns(subset, likelihood, x, y, theta, columns, n_examples, memory_budget, k):
    """Rows Jₙᵀ vₙₖ for given output vectors: f first (no graph), then vmap'd pullbacks."""
    row_bytes = subset.n_params * theta.element_size() * max(k or 1, 1)
    per_chunk = max(1, memory_budget // max(row_bytes, 1))

    def rows_of(xn: Any, vn: Tensor) -> tuple[Tensor, Tensor]:
        out, pullback = vjp(lambda th: subset.forward(th, _unsqueeze(xn)).squeeze(0), theta)
        (rows,) = vmap(pullback)(vn)
        return rows, out

    for e0 in range(0, n_examples, per_chunk):
        sl = slice(e0, min(e0 + per_chunk, n_examples))
        xs, ys = _index(x, sl), y[sl]
        with torch.no_grad():
            f = subset.forward(theta, xs)
        vs = columns(f, ys).permute(1, 0, 2).contiguous()  # [b, K, C]
        rows, out = with_vmap_fallback(
            subset,
            lambda xs=xs, vs=vs: vmap(rows_of)(xs, vs),
            xs,
            ys.shape[0],
            theta,
            lambda out, n, vs=vs: vs[n].T,
        )
        yield rows, likelihood.nll_unit(out.detach(), ys)


#: what vmap says when it cannot run an op (not when the model or the data is wrong)
_VMAP_LIMITS = (
    "batching rule",
    "doesn't match the broadcast shape",  # in-place writes into unbatched buffers (RNNs)
    "data-dependent control flow",
    "vmap: inplace",
    "not supported with vmap",
)


def is_vmap_limit(err: BaseException) -> bool:
    """Whether ``err`` says that vmap cannot run an op (not out of memory, not a user error)."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    msg = str(err).lower()
    return any(k in msg for k in _VMAP_LIMITS)


def with_vmap_fallback(
    subset: ParameterSubset,
    vmapped: Callable[[], tuple[Tensor, Tensor]],
    xs: Any,
    n_examples: int,
    theta: Tensor,
    cotangents: Callable[[Tensor, int], Tensor],
) -> tuple[Tensor, Tensor]:
    """``vmapped()``, or where vmap cannot run the model (fused RNN kernels, in-place ops on
    batched tensors, data-dependent control flow) the same rows by a loop over the
    ``n_examples`` examples: rows ``[b, K, P]`` = Jₙᵀ Vₙ with ``Vₙ = cotangents(fₙ, n)``
    ``[C, K]``, and the outputs ``[b, C]``. Once the loop has worked the subset remembers it
    (announced once); other errors are raised as they are.

    Raises:
        ValueError: for a model that draws random numbers in eval mode.
    """
    if subset.vmap_ok:
        try:
            return vmapped()
        except (RuntimeError, NotImplementedError) as err:
            msg = str(err)
            if "random" in msg and "vmap" in msg:
                raise ValueError(
                    "the model draws random numbers in eval mode (a noise layer, dropout "
                    "called with training=True): the curvature and the predictive would be "
                    "random; make it deterministic at evaluation"
                ) from err
            if not is_vmap_limit(err):
                raise
            rows = _loop_rows(subset, xs, n_examples, theta, cotangents)
            subset.vmap_ok = False
            warnings.warn(
                f"torch.func.vmap cannot run this model ({type(err).__name__}: "
                f"{msg[:120]}); per-example rows come from a loop over examples (slower)",
                stacklevel=3,
            )
            return rows
    return _loop_rows(subset, xs, n_examples, theta, cotangents)


def _loop_rows(subset, xs, n_examples, theta, cotangents) -> tuple[Tensor, Tensor]:
    rows, outs = [], []
    for n in range(n_examples):
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            out = subset.forward(th, _index(xs, slice(n, n + 1))).squeeze(0)
            v = cotangents(out.detach(), n)
            grads = [
                torch.autograd.grad(out, th, v[:, k], retain_graph=k + 1 < v.shape[1])[0]
                for k in range(v.shape[1])
            ]
        rows.append(torch.stack(grads))
        outs.append(out.detach())
    return torch.stack(rows), torch.stack(outs)


def per_example_diagonal(
    subset: ParameterSubset,
    likelihood: Likelihood,
    x: Any,
    y: Tensor,
    *,
    kind: str,
    n_outputs: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    columns: Callable[[Tensor, Tensor], Tensor] | None = None,
    n_columns: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(Σₙ Σₖ (Jₙᵀ sₙₖ)² ``[P]``, Σₙ nllₙ) for one batch, from :func:`per_example_factors`
    (``columns``: given output vectors instead of the columns of Sₙ)."""
    g = torch.zeros(subset.n_params, dtype=subset.dtype, device=subset.device)
    loss = torch.zeros((), dtype=subset.dtype, device=subset.device)
    for rows, nll in per_example_factors(
        subset,
        likelihood,
        x,
        y,
        subset.map_vector(),
        kind=kind,
        n_outputs=n_outputs,
        n_examples=y.shape[0],
        memory_budget=memory_budget,
        columns=columns,
        n_columns=n_columns,
    ):
        g += rows.square().sum((0, 1))
        if nll is not None:
            loss += nll.sum()
    return g, loss
