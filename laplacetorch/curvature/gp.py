"""``gp``: the linearised Laplace as a Gaussian process on a subset of M training points.

The GGN of M points is G = Wᵀ W with W = Λ^½ J ``[M·K, P]`` (the rows Sₘᵀ Jₘ of each point),
and the GP's kernel matrix on them is K = W Wᵀ = Λ^½ J Jᵀ Λ^½ ``[M·K, M·K]``, built block by
block from two chunks of rows at a time (never all of W). One eigh of K, K = V diag(λ) Vᵀ,
is all the structure keeps (a :class:`~laplacetorch.structures.Kernel`, with the M points to
recompute rows chunk by chunk): the function-space posterior is the weight-space posterior of
those points, exactly, and by Sylvester's identity and Woodbury

    log det Π − P log δ = log det(I + (s/δ) K),
    J* Π⁻¹ J*ᵀ = (J* J*ᵀ − J* Wᵀ (δ/s I + K)⁻¹ W J*ᵀ) / δ,

the GP's evidence and predictive, at the cost of an (M·K)³ eigendecomposition instead of a P³
one. With M = N it is the ``full`` Laplace exactly. The data-fit term stays the one of all N
points at θ*.

Options (laplace-torch's ``FunctionalLaplace`` conventions, for ``compat``): ``diagonal_hessian``
replaces each softmax Hessian by its diagonal; ``prior_subset_scaling`` scales the GP's prior
covariance by M/N: the fit's prior factor c = N/M (P₀ = c·diag(δ), in Π and in the evidence's
prior terms alike; :class:`~laplacetorch.prior.Prior`);
``subset_indices`` gives the M points explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.data import DataLoader, IterableDataset, Subset

from ..datapass import BatchAdapter, require_reiterable
from ..likelihoods import Likelihood
from ..linalg.eigh import symmetric_eigh
from ..memory import Sizes, check_fit_memory
from ..params import ParameterSubset
from ..structures import IndependentOutputs, Kernel
from .base import CurvatureResult, curvature_pass, resolve_fisher_type
from .context import DEFAULT_CONTEXT, FitContext
from .per_example import per_example_factors

__all__ = ["fit_gp", "kernel_matrices", "subset_points", "top_eigen"]


def subset_points(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    n_subset: int | None,
    seed: int,
    subset_indices: Tensor | None,
    context: FitContext,
    what: str = "n_subset",
) -> tuple[Any, Tensor, int, int, Tensor]:
    """The M chosen examples' inputs and targets (all N when ``n_subset`` is None), with N,
    C and the summed unit-scale NLL of all N at θ*: one pass over the data, two when M < N."""
    count = _nll_step(subset, likelihood)
    chosen = None
    if subset_indices is not None:
        n_subset = int(torch.as_tensor(subset_indices).numel())
    if n_subset is not None:
        require_reiterable(loader, "a subset of the data (N, then the subset)")
        sums, n_data, n_out = curvature_pass(
            subset, likelihood, loader, count, context, desc="subset: N"
        )
        if subset_indices is None:
            chosen = _draw(n_data, n_subset, seed, what)
        else:
            chosen = _given(subset_indices, n_data)
    by_index = None if chosen is None else _dataset_points(loader, chosen, n_data)
    if by_index is not None:  # the points by dataset index: the same under any shuffle
        loader, chosen = by_index, None
    keep = _Keep(chosen, count if chosen is None and by_index is None else None)
    got, n_seen, n_out = curvature_pass(
        subset, likelihood, loader, keep, context, desc="subset: the points"
    )
    if by_index is not None:
        loss_sum = sums["loss"]
    elif chosen is None:
        n_data, loss_sum = n_seen, got["loss"]
    else:
        if n_seen != n_data:
            raise ValueError(
                f"the loader gave {n_seen} examples on its second pass, {n_data} on its first"
            )
        loss_sum = sums["loss"]
    xs, ys = _concat([x for x, _ in keep.kept]), torch.cat([y for _, y in keep.kept])
    return xs, ys, n_data, n_out, loss_sum


def _nll_step(subset: ParameterSubset, likelihood: Likelihood) -> Callable:
    """A pass's step summing the unit-scale NLL at θ* of each batch."""
    theta = subset.map_vector()

    def count(x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        with torch.no_grad():
            f = subset.forward(theta, x)
        return {"loss": likelihood.nll_unit(f, y).sum()}

    return count


class _Keep:
    """A pass's step keeping the ``chosen`` examples (positions in the pass; all of them when
    None) of each batch, and summing their NLL by ``count`` where given."""

    def __init__(self, chosen: Tensor | None, count: Callable | None) -> None:
        self.chosen, self.count = chosen, count
        self.kept: list[tuple[Any, Tensor]] = []
        self.offset = 0

    def __call__(self, x: Any, y: Tensor, n_out: int) -> dict[str, Tensor]:
        b, lo, chosen = y.shape[0], self.offset, self.chosen
        self.offset += b
        if chosen is not None:
            local = chosen[(chosen >= lo) & (chosen < lo + b)] - lo
            x = tree_map(lambda t: t[local] if isinstance(t, Tensor) else t, x)
            y = y[local]
        if y.shape[0]:
            self.kept.append((x, y))
        return self.count(x, y, n_out) if self.count is not None else {}


def _dataset_points(loader: Iterable, chosen: Tensor, n_data: int) -> BatchAdapter | None:
    """A loader of the examples ``chosen`` by their index in a map-style dataset, so that a
    shuffled DataLoader gives the same points as an unshuffled one (laplace-torch indexes the
    dataset too); ``None`` for other loaders, whose examples are taken in iteration order."""
    adapter = loader if isinstance(loader, BatchAdapter) else None
    inner = adapter.loader if adapter is not None else loader
    dataset = getattr(inner, "dataset", None)
    if not isinstance(inner, DataLoader) or isinstance(dataset, IterableDataset):
        return None
    if not hasattr(dataset, "__getitem__") or len(dataset) != n_data:
        return None
    batch = inner.batch_size or getattr(inner.batch_sampler, "batch_size", None) or 1
    points = DataLoader(Subset(dataset, chosen.tolist()), batch, collate_fn=inner.collate_fn)
    return BatchAdapter(points, adapter.spec.dict_key_y if adapter is not None else "labels")


def _draw(n_data: int, n_subset: int | None, seed: int, what: str = "n_subset") -> Tensor:
    """M of the N example indices, ascending, drawn without replacement from ``seed`` (all of
    them when ``n_subset`` is None or N).

    Raises:
        ValueError: for M < 1 or M > N.
    """
    if n_subset is None:
        return torch.arange(n_data)
    if isinstance(n_subset, bool) or not isinstance(n_subset, int) or not 1 <= n_subset <= n_data:
        raise ValueError(
            f"{what} must be an integer in [1, N = {n_data}] (the points of the kernel); "
            f"got {n_subset!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_data, generator=gen)[:n_subset].sort().values


def fit_gp(
    subset: ParameterSubset,
    likelihood: Likelihood,
    loader: Iterable,
    context: FitContext = DEFAULT_CONTEXT,
    *,
    n_subset: int | None = None,
    seed: int = 0,
    diagonal_hessian: bool = False,
    prior_subset_scaling: bool = False,
    subset_indices: Tensor | None = None,
    independent_outputs: bool = False,
) -> CurvatureResult:
    """The GP on ``n_subset`` seeded training points (default all N) as a :class:`Kernel`
    structure (see the module docstring). Two data passes when M < N (N first, then the
    points), one when M = N; memory: the M inputs, two chunks of rows within
    ``memory_budget``, and the (M·K)² kernel. The kernel's blocks recompute rows, about
    (#chunks + 1)/2 row passes over the M points.

    Args:
        fisher_type: ``"exact"`` (the GGN's Λ) or ``"empirical"``.
        n_subset: M, the GP's training points (``None``: all).
        seed: the subset's draw.
        diagonal_hessian: each softmax Hessian replaced by its diagonal (laplace-torch's).
        prior_subset_scaling: the GP's prior covariance times M/N (laplace-torch's).
        subset_indices: the M points (ascending indices into the loader's examples) instead
            of a seeded draw.
        independent_outputs: one GP per output with the diagonal of each Λ (laplace-torch's):
            no covariance between outputs; an :class:`IndependentOutputs` structure.
    """
    kind = resolve_fisher_type(context.fisher_type, "gp")
    columns = _diagonal_columns(likelihood) if diagonal_hessian or independent_outputs else None
    if (diagonal_hessian or independent_outputs) and kind != "ggn":
        raise ValueError("diagonal_hessian approximates the GGN's Λ; use fisher_type='exact'")
    theta = subset.map_vector()
    xs, ys, n_data, n_out, loss_sum = subset_points(
        subset,
        likelihood,
        loader,
        n_subset,
        seed,
        subset_indices,
        context,
    )
    m, k_cols = ys.shape[0], n_out if kind == "ggn" else 1
    # the kernel's (M·C)² is known now, before it is allocated (context.memory_limit: Laplace's)
    sized = {"n_subset": m, "independent_outputs": independent_outputs}
    check_fit_memory("gp", subset, sized, context.memory_limit, Sizes(n_data, k_cols))
    factor = n_data / m if prior_subset_scaling else 1.0
    spans = chunk_spans(m, k_cols, subset, context.memory_budget)

    chunk_rows = row_chunks(
        subset, likelihood, xs, ys, theta, kind, n_out, context.memory_budget, columns
    )

    def rows_of(sel: slice) -> Callable[[], Iterator[Tensor]]:
        def rows() -> Iterator[Tensor]:
            for lo, hi in spans:
                yield chunk_rows(lo, hi)[sel]

        return rows

    # one GP per output: every n_out-th row of a chunk of the diagonal columns is output c's
    selections = (
        [slice(c, None, n_out) for c in range(n_out)] if independent_outputs else [slice(None)]
    )
    kernels = _kernels(rows_of, spans, chunk_rows, k_cols, selections, subset)
    structure = (
        IndependentOutputs(kernels, subset.group_index) if independent_outputs else kernels[0]
    )
    return CurvatureResult(structure, n_data, n_out, loss_sum, kind, prior_factor=factor)


def chunk_spans(m: int, k_cols: int, subset: ParameterSubset, memory_budget: int) -> list:
    """``(lo, hi)`` spans of the M points whose rows ``[(hi − lo)·K, P]``, two chunks at a
    time, fit in ``memory_budget`` bytes."""
    row_bytes = k_cols * subset.n_params * torch.finfo(subset.dtype).bits // 8
    per_chunk = max(1, memory_budget // max(2 * row_bytes, 1))  # two chunks at a time
    return [(i, min(i + per_chunk, m)) for i in range(0, m, per_chunk)]


def row_chunks(
    subset: ParameterSubset,
    likelihood: Likelihood,
    xs: Any,
    ys: Tensor,
    theta: Tensor,
    kind: str,
    n_out: int,
    memory_budget: int,
    columns: Callable | None,
) -> Callable[[int, int], Tensor]:
    """``(lo, hi) ↦`` the rows Sᵀ J of the points lo … hi − 1, ``[(hi − lo)·K, P]``."""

    def chunk_rows(lo: int, hi: int) -> Tensor:
        x = tree_map(lambda t: t[lo:hi] if isinstance(t, Tensor) else t, xs)
        parts = [
            r.reshape(-1, subset.n_params)
            for r, _ in per_example_factors(
                subset,
                likelihood,
                x,
                ys[lo:hi],
                theta,
                kind=kind,
                n_outputs=n_out,
                n_examples=hi - lo,
                memory_budget=memory_budget,
                columns=columns,
                n_columns=n_out,
            )
        ]
        return torch.cat(parts)

    return chunk_rows


def _given(indices: Tensor, n_data: int) -> Tensor:
    idx = torch.as_tensor(indices).to(torch.long).reshape(-1).cpu()
    if idx.numel() == 0 or bool((idx < 0).any()) or bool((idx >= n_data).any()):
        raise ValueError(f"subset_indices must lie in [0, N = {n_data}); got {idx.tolist()[:8]}")
    if idx.unique().numel() != idx.numel() or not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError("subset_indices must be ascending without duplicates")
    return idx


def _concat(parts: list[Any]) -> Any:
    """Concatenate input pytrees (tensors, mappings) along the batch dimension."""
    leaves, spec = tree_flatten(parts[0])
    columns = [tree_flatten(p)[0] for p in parts]
    cat = [
        torch.cat([c[i] for c in columns]) if isinstance(leaves[i], Tensor) else leaves[i]
        for i in range(len(leaves))
    ]
    return tree_unflatten(cat, spec)


def kernel_matrices(
    spans: list[tuple[int, int]],
    chunk_rows: Callable[[int, int], Tensor],
    per_example: int,
    selections: list[slice],
    device: torch.device,
) -> list[Tensor]:
    """K = W Wᵀ in float64, block by block from two chunks of rows at a time (each chunk's
    rows computed once per pair), for every selection of a chunk's rows (all of them, or
    every C-th for one output); ``per_example``: the rows an example has in a selection."""
    n = spans[-1][1] * per_example
    bigs = [torch.zeros(n, n, dtype=torch.float64, device=device) for _ in selections]
    for i, (lo_i, hi_i) in enumerate(spans):
        wi = chunk_rows(lo_i, hi_i)
        ri = slice(lo_i * per_example, hi_i * per_example)
        for lo_j, hi_j in spans[i:]:
            wj = wi if lo_j == lo_i else chunk_rows(lo_j, hi_j)
            rj = slice(lo_j * per_example, hi_j * per_example)
            for big, sel in zip(bigs, selections, strict=True):
                block = (wi[sel] @ wj[sel].T).double()
                big[ri, rj] = block
                big[rj, ri] = block.T
    return bigs


def top_eigen(big: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """K's eigenpairs above round-off (Wᵀ vanishes on the rest), largest first."""
    lam, v = symmetric_eigh(big, "the GP kernel")
    keep = lam > lam.max().clamp_min(0) * big.shape[0] * torch.finfo(dtype).eps
    return lam[keep].flip(0), v[:, keep].flip(1)


def _kernels(
    rows_of: Callable[[slice], Callable[[], Iterator[Tensor]]],
    spans: list[tuple[int, int]],
    chunk_rows: Callable[[int, int], Tensor],
    k_cols: int,
    selections: list[slice],
    subset: ParameterSubset,
) -> list[Kernel]:
    per_example = k_cols if selections == [slice(None)] else 1
    out = []
    for sel, big in zip(
        selections,
        kernel_matrices(spans, chunk_rows, per_example, selections, subset.device),
        strict=True,
    ):
        lam, v = top_eigen(big, subset.dtype)
        out.append(
            Kernel(
                rows_of(sel),
                lam.to(subset.dtype),
                v.to(subset.dtype),
                subset.n_params,
                subset.dtype,
                subset.device,
                subset.group_index,
            )
        )
    return out


def _diagonal_columns(likelihood: Likelihood) -> Callable[[Tensor, Tensor], Tensor]:
    """The columns of diag(Λ)^½ ``[C, B, C]`` (laplace-torch's diagonal softmax Hessian)."""

    def columns(f: Tensor, y: Tensor) -> Tensor:
        diag = likelihood.output_hessian(f, y).diagonal(dim1=-2, dim2=-1).clamp_min(0)
        return torch.diag_embed(diag.sqrt()).permute(2, 0, 1)

    return columns
