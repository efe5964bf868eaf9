"""Benchmark the matrix-free curvature (GGN-vector products) on sklearn's digits (no downloads).

Two float32 MLPs are trained briefly with Adam on 1500 standardised digits (batch 128) and put
in eval mode: 64-256-256-10 (P = 85002) for cost, 64-32-32-10 (P = 3466) where a dense GGN
reference is affordable. Every cost is a ratio to one gradient epoch (forward + summed
cross-entropy + backward over every batch of the same loader).

1. One GGN-vector product over the whole data (``GGNOperator.matvec``) for a block of 1 and of 8
   vectors: median of a few rounds after a warm-up, the gradient epoch and both block sizes
   alternating round-robin so that load on a shared machine hits all alike. Target: a product
   of one vector within 4 gradient epochs (and so is the per-vector cost of a block of 8).
2. ``fit_lanczos`` rank 20 (oversample 10): fit time, r_fit (floor ~2.5k = 50 for k = 20), data
   passes and vectors pushed through the operator (counted by wrapping ``GGNOperator.matvec``),
   rank returned; on the small net the top-20 eigenvalues' max relative error against the
   dense GGN (``fit_full``, ``eigh`` in float64) and the subspace cosine (smallest singular value
   of Uᵀ U_true).
3. ``fit_operator`` SLQ log det (30 probes, 40 Lanczos steps): ``logdet_with_error(δ)`` for
   δ in (0.1, 1, 10); the first call builds the quadrature nodes (timed, with the operator's
   construction pass, as the fit), later calls are O(#nodes). On the small net the estimate is
   compared with the exact ``fit_full(...).structure.logdet(δ)``.
4. ``fit_hutchinson`` diagonal with 16 probes: r_fit (floor ~2S = 32) and, on the small net,
   the relative L2 error against the exact diagonal of ``fit_diag``.

Single-shot fits (Lanczos, the SLQ nodes) are timed once each and divided by the median of the
gradient epochs timed right before and right after them; the Hutchinson fit alternates with
gradient epochs round-robin.

The result rows, the dense-reference accuracy checks and the printed tables are in
``matrix_free_report.py``; the data, net, training and timing helpers shared by the benchmarks
in ``common.py``.

Usage::

    python benchmarks/bench_matrix_free.py [--quick] [--repeats R] [--epochs E] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
from common import (
    BATCH_SIZE,
    N_TRAIN,
    SEED,
    accuracy,
    bracketed,
    data_loader,
    gradient_epoch,
    load_digits_split,
    make_mlp,
    medians,
    round_robin,
    timed,
    train,
)
from matrix_free_report import (
    BIG,
    DELTAS,
    HUTCH_FLOOR,
    HUTCH_PROBES,
    LANCZOS_FLOOR,
    LANCZOS_RANK,
    MATVEC_TARGET,
    SMALL,
    Accuracy,
    FitRow,
    LogdetRow,
    MatvecRow,
    exact_logdet,
    hutch_accuracy,
    lanczos_accuracy,
    report,
    small_references,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader

from laplacetorch import ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_hutchinson, fit_lanczos, fit_operator
from laplacetorch.curvature.ggn_operator import GGNOperator


class MatvecCounter:
    """While active, counts the data passes and vectors of every ``GGNOperator.matvec`` call
    (and the time spent inside them) by wrapping the class attribute; restored on exit."""

    def __init__(self) -> None:
        self.passes, self.vectors, self.seconds = 0, 0, 0.0

    @contextmanager
    def active(self) -> Iterator[MatvecCounter]:
        """Wrap ``GGNOperator.matvec`` for the duration of the ``with`` block."""
        original = GGNOperator.matvec

        def counted(op: GGNOperator, v: Tensor) -> Tensor:
            out, seconds = timed(lambda: original(op, v))
            self.passes += 1
            self.vectors += 1 if v.dim() == 1 else v.shape[0]
            self.seconds += seconds
            return out

        GGNOperator.matvec = counted  # type: ignore[method-assign]
        try:
            yield self
        finally:
            GGNOperator.matvec = original  # type: ignore[method-assign]


def bench_matvec(
    name: str, model: nn.Module, loader: DataLoader, repeats: int
) -> tuple[list[MatvecRow], float]:
    """Round-robin timing of a gradient epoch and a GGN-vector product for 1 and 8 vectors."""
    subset = ParameterSubset(model, "all")
    op = GGNOperator(subset, get_likelihood("classification"), loader)
    gen = torch.Generator().manual_seed(SEED)
    blocks = {m: torch.randn(m, subset.n_params, generator=gen) for m in (1, 8)}
    fns: dict[str, Callable[[], Any]] = {"grad": lambda: gradient_epoch(model, loader)}
    for m, v in blocks.items():
        fns[f"mv{m}"] = lambda v=v: op.matvec(v)
    med = medians(round_robin(fns, repeats))
    rows = []
    for m in blocks:
        ratio = med[f"mv{m}"] / med["grad"]
        per_vector = ratio / m
        ok = per_vector <= MATVEC_TARGET
        rows.append(
            MatvecRow(
                name,
                subset.n_params,
                m,
                med[f"mv{m}"],
                med["grad"],
                ratio,
                per_vector,
                f"<= {MATVEC_TARGET:g}/vec",
                "PASS" if ok else "MISS",
            )
        )
    return rows, med["grad"]


def run_lanczos(
    name: str, model: nn.Module, loader: DataLoader, repeats: int
) -> tuple[FitRow, Any, list[str]]:
    """One timed ``fit_lanczos`` of rank 20, bracketed by gradient epochs."""
    subset = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    counter = MatvecCounter()
    with warnings.catch_warnings(record=True) as caught, counter.active():
        warnings.simplefilter("always")
        res, fit_s, grad_s = bracketed(
            lambda: fit_lanczos(subset, lik, loader, rank=LANCZOS_RANK),
            lambda: gradient_epoch(model, loader),
            repeats,
        )
    lam = res.structure.lam
    note = f"rank {res.structure.rank}/{LANCZOS_RANK}"
    if lam.numel():
        note += f", λ {lam[0]:.4g} .. {lam[-1]:.4g}"
    # only the library's own warnings (e.g. unconverged Ritz pairs), not torch deprecations
    caught = [
        w for w in caught if issubclass(w.category, UserWarning) and "laplacetorch" in w.filename
    ]
    if caught:
        note += f"; {len(caught)} warning(s), below"
    warns = [f"{name}: {w.message}" for w in caught]
    row = FitRow(
        name,
        "lanczos k=20",
        subset.n_params,
        fit_s,
        grad_s,
        fit_s / grad_s,
        counter.passes + 1,  # + the operator's statistics pass at construction
        counter.vectors,
        counter.seconds / fit_s,
        f"~{LANCZOS_FLOOR:g}",
        note,
    )
    return row, res, warns


def run_slq(
    name: str,
    model: nn.Module,
    loader: DataLoader,
    repeats: int,
    n_probes: int,
    n_steps: int,
    exact: Callable[[float], float] | None,
) -> tuple[FitRow, list[LogdetRow]]:
    """``fit_operator`` + the first ``logdet_with_error`` (the SLQ nodes) timed once between
    gradient epochs; the later deltas timed call by call."""
    subset = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    counter = MatvecCounter()
    holder: dict[str, Any] = {}

    def first() -> tuple[Tensor, Tensor]:
        st = fit_operator(subset, lik, loader, n_probes=n_probes, n_steps=n_steps).structure
        holder["st"] = st
        t0 = time.perf_counter()
        out = st.logdet_with_error(DELTAS[0])
        holder["first_call_s"] = time.perf_counter() - t0
        return out

    with counter.active():
        (est, se), fit_s, grad_s = bracketed(first, lambda: gradient_epoch(model, loader), repeats)
    st = holder["st"]
    results = [(DELTAS[0], est, se, holder["first_call_s"])]
    for delta in DELTAS[1:]:
        (e, s), seconds = timed(lambda d=delta: st.logdet_with_error(d))
        results.append((delta, e, s, seconds))
    rows = []
    for delta, e, s, seconds in results:
        row = LogdetRow(name, delta, float(e), float(s), seconds)
        if exact is not None:
            row.exact = exact(delta)
            row.rel_err = abs(row.estimate - row.exact) / abs(row.exact)
            row.err_over_se = abs(row.estimate - row.exact) / row.std_err
        rows.append(row)
    fit = FitRow(
        name,
        f"slq S={n_probes} j={n_steps}",
        subset.n_params,
        fit_s,
        grad_s,
        fit_s / grad_s,
        counter.passes + 1,
        counter.vectors,
        counter.seconds / fit_s,
        "-",
        f"first logdet call {holder['first_call_s']:.2f} s (nodes)",
    )
    return fit, rows


def run_hutchinson(
    name: str, model: nn.Module, loader: DataLoader, repeats: int
) -> tuple[FitRow, Any]:
    """``fit_hutchinson`` with 16 probes, alternating with gradient epochs round-robin."""
    subset = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    holder: dict[str, Any] = {}

    def fit() -> None:
        holder["res"] = fit_hutchinson(subset, lik, loader, n_probes=HUTCH_PROBES)

    counter = MatvecCounter()
    with counter.active():
        fns = {"grad": lambda: gradient_epoch(model, loader), "fit": fit}
        med = medians(round_robin(fns, repeats))
    calls = repeats + 1
    row = FitRow(
        name,
        f"hutchinson S={HUTCH_PROBES}",
        subset.n_params,
        med["fit"],
        med["grad"],
        med["fit"] / med["grad"],
        counter.passes // calls + 1,
        counter.vectors // calls,
        math.nan,  # the counter spans the warm-up too; the share is not meaningful here
        f"~{HUTCH_FLOOR:g}",
        f"median of {repeats} alternating with gradient epochs",
    )
    return row, holder["res"]


def main() -> None:
    """Train the two MLPs, time products and fits, check accuracy, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one timed repeat; SLQ with 10 probes, 20 steps"
    )
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="Adam training epochs")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1 or args.epochs < 0:
        parser.error("--repeats must be >= 1 and --epochs >= 0")
    slq_probes, slq_steps = (10, 20) if args.quick else (30, 40)

    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    loader = data_loader(x_tr, y_tr)
    print(f"torch.get_num_threads() = {torch.get_num_threads()}")

    models = {BIG: make_mlp(256, SEED), SMALL: make_mlp(32, SEED + 1)}
    for i, (name, model) in enumerate(models.items()):
        _, seconds = timed(lambda m=model, s=SEED + 10 + i: train(m, x_tr, y_tr, args.epochs, s))
        print(f"trained {name}: {seconds:.1f} s, test accuracy {accuracy(model, x_te, y_te):.3f}")

    ref, seconds = timed(lambda: small_references(models[SMALL], loader))
    print(f"dense references for {SMALL} (fit_full, eigh, fit_diag): {seconds:.1f} s")
    acc = Accuracy()
    exact = exact_logdet(ref, acc)

    mv_rows: list[MatvecRow] = []
    fit_rows: list[FitRow] = []
    ld_rows: list[LogdetRow] = []
    for name, model in models.items():
        t0 = time.perf_counter()
        mv_rows += bench_matvec(name, model, loader, repeats)[0]
        row, res, warns = run_lanczos(name, model, loader, repeats)
        fit_rows.append(row)
        acc.notes += warns
        if name == SMALL:
            lanczos_accuracy(res, ref, acc)
        del res
        row, rows = run_slq(
            name,
            model,
            loader,
            repeats,
            slq_probes,
            slq_steps,
            exact if name == SMALL else None,
        )
        fit_rows.append(row)
        ld_rows += rows
        row, res = run_hutchinson(name, model, loader, repeats)
        fit_rows.append(row)
        if name == SMALL:
            hutch_accuracy(res, ref, acc)
        print(f"benchmarked {name}: {time.perf_counter() - t0:.1f} s")

    report(mv_rows, fit_rows, ld_rows, acc, repeats)
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")

    if args.json:
        payload = {
            "torch_version": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "n_train": N_TRAIN,
            "batch_size": BATCH_SIZE,
            "repeats": repeats,
            "epochs": args.epochs,
            "slq_probes": slq_probes,
            "slq_steps": slq_steps,
            "matvec": [asdict(r) for r in mv_rows],
            "fits": [asdict(r) for r in fit_rows],
            "logdet": [asdict(r) for r in ld_rows],
            "accuracy": asdict(acc),
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
