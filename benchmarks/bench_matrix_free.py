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

Usage::

    python benchmarks/bench_matrix_free.py [--quick] [--repeats R] [--epochs E] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from laplacetorch import ParameterSubset, get_likelihood
from laplacetorch.curvature import (
    fit_diag,
    fit_full,
    fit_hutchinson,
    fit_lanczos,
    fit_operator,
)
from laplacetorch.curvature.ggn_operator import GGNOperator

SEED = 0
N_TRAIN = 1500
BATCH_SIZE = 128
MATVEC_TARGET = 4.0
LANCZOS_RANK = 20
LANCZOS_FLOOR = 2.5 * LANCZOS_RANK
HUTCH_PROBES = 16
HUTCH_FLOOR = 2.0 * HUTCH_PROBES
DELTAS = (0.1, 1.0, 10.0)
BIG, SMALL = "64-256-256-10", "64-32-32-10"


@dataclass
class MatvecRow:
    """One GGN-vector product timing."""

    model: str
    n_params: int
    block: int
    matvec_s: float
    grad_epoch_s: float
    ratio: float
    per_vector: float
    target: str
    verdict: str


@dataclass
class FitRow:
    """One timed matrix-free fit."""

    model: str
    method: str
    n_params: int
    fit_s: float
    grad_epoch_s: float
    r_fit: float
    data_passes: int
    vectors: int
    matvec_share: float
    floor: str
    note: str


@dataclass
class LogdetRow:
    """One SLQ log det estimate (and its exact value where affordable)."""

    model: str
    delta: float
    estimate: float
    std_err: float
    call_s: float
    exact: float | None = None
    rel_err: float | None = None
    err_over_se: float | None = None


@dataclass
class Accuracy:
    """Accuracy of the small net's Lanczos and Hutchinson fits against dense references."""

    lanczos_rank: int = 0
    lanczos_max_rel_err: float = math.nan
    lanczos_subspace_cos: float = math.nan
    hutch_rel_l2_err: float = math.nan
    hutch_predicted_rel_err: float = math.nan
    dense_logdet_vs_f64: float = math.nan
    notes: list[str] = field(default_factory=list)


def load_data(seed: int = SEED) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as float32, standardised with train statistics: ``(X_train, y_train, X_test,
    y_test)`` from a seeded 1500 / 297 split."""
    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    mean = x[tr].mean(0)
    std = x[tr].std(0).clamp_min(1e-6)  # some border pixels are constant
    x = (x - mean) / std
    return x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous()


def make_mlp(width: int, seed: int) -> nn.Sequential:
    """A float32 64-width-width-10 ReLU MLP with seeded initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    ).to(torch.float32)


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int, lr: float = 3e-3) -> None:
    """Adam on the mean cross-entropy for ``epochs`` shuffled epochs (batch size 128)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test accuracy of ``model`` on ``(x, y)``."""
    return (model(x).argmax(-1) == y).float().mean().item()


def gradient_epoch(model: nn.Module, loader: DataLoader) -> None:
    """One full-batch-sum gradient pass: forward, summed cross-entropy, backward per batch."""
    model.zero_grad(set_to_none=True)
    for xb, yb in loader:
        F.cross_entropy(model(xb), yb, reduction="sum").backward()
    model.zero_grad(set_to_none=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), wall seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def round_robin(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time per entry: one warm-up call each, then ``repeats`` rounds in which
    every entry runs once, in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn)[1])
    return {k: statistics.median(v) for k, v in times.items()}


def bracketed(
    fn: Callable[[], Any], ref: Callable[[], Any], repeats: int
) -> tuple[Any, float, float]:
    """``(fn(), its wall time, median of the ``ref`` times)``: ``fn`` runs once, between
    ``repeats`` timed ``ref`` calls before and ``repeats`` after (``ref`` already warm)."""
    refs = [timed(ref)[1] for _ in range(repeats)]
    out, seconds = timed(fn)
    refs += [timed(ref)[1] for _ in range(repeats)]
    return out, seconds, statistics.median(refs)


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
    med = round_robin(fns, repeats)
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
        med = round_robin({"grad": lambda: gradient_epoch(model, loader), "fit": fit}, repeats)
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


def small_references(model: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """The dense GGN of the small net, its float64 eigendecomposition and exact diagonal."""
    subset = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    full = fit_full(subset, lik, loader).structure
    g = full.curvature_dense().to(torch.float64)
    evals, evecs = torch.linalg.eigh((g + g.T) / 2)
    diag = fit_diag(subset, lik, loader).structure.diagonal().to(torch.float64)
    return {
        "full": full,
        "evals": evals.flip(0),
        "evecs": evecs.flip(1),
        "diag": diag,
    }


def lanczos_accuracy(res: Any, ref: dict[str, Any], acc: Accuracy) -> None:
    """Top eigenvalues' max relative error and the subspace cosine against the dense GGN."""
    lam = res.structure.lam.to(torch.float64)
    u = res.structure.U.to(torch.float64)
    r = lam.shape[0]
    acc.lanczos_rank = r
    if r == 0:
        acc.notes.append(f"{SMALL} lanczos returned rank 0")
        return
    true = ref["evals"][:r]
    acc.lanczos_max_rel_err = ((lam - true).abs() / true.abs()).max().item()
    acc.lanczos_subspace_cos = torch.linalg.svdvals(u.T @ ref["evecs"][:, :r]).min().item()
    gap = (ref["evals"][r - 1] - ref["evals"][r]) / ref["evals"][r - 1]
    acc.notes.append(
        f"{SMALL} dense GGN: λ_{r} = {true[-1]:.4g}, relative gap to λ_{r + 1} {gap:.2e}"
    )


def hutch_accuracy(res: Any, ref: dict[str, Any], acc: Accuracy) -> None:
    """Relative L2 error of the Hutchinson diagonal and what its own variance predicts."""
    est = res.structure.diagonal().to(torch.float64)
    exact = ref["diag"]
    norm = exact.norm()
    acc.hutch_rel_l2_err = ((est - exact).norm() / norm).item()
    var = res.structure.variance.to(torch.float64)
    acc.hutch_predicted_rel_err = (var.sum().sqrt() / norm).item()


def exact_logdet(ref: dict[str, Any], acc: Accuracy) -> Callable[[float], float]:
    """δ ↦ ``fit_full(...).structure.logdet(δ)``; also records its largest gap to the float64
    Σ log(λ + δ) of the dense eigenvalues over the benchmarked deltas."""
    full, evals = ref["full"], ref["evals"].clamp_min(0)
    gaps = []
    for delta in DELTAS:
        lib = float(full.logdet(delta))
        f64 = torch.log(evals + delta).sum().item()
        gaps.append(abs(lib - f64) / abs(f64))
    acc.dense_logdet_vs_f64 = max(gaps)
    return lambda delta: float(full.logdet(delta))


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or ``-`` for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def report(
    mv_rows: list[MatvecRow],
    fit_rows: list[FitRow],
    ld_rows: list[LogdetRow],
    acc: Accuracy,
    repeats: int,
) -> None:
    """Print the four tables."""
    print()
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"N = {N_TRAIN}, batch size {BATCH_SIZE}, float32"
    )
    print(
        f"\n1. GGN-vector product over the data / one gradient epoch (median of {repeats} "
        "round-robin rounds after 1 warm-up)"
    )
    header = (
        f"{'model':<14} {'P':>6} {'m':>2} {'matvec s':>9} {'grad ep s':>9} {'ratio':>7} "
        f"{'per vec':>7}  {'target':<10} {'':<4}"
    )
    print(header)
    print("-" * len(header))
    for r in mv_rows:
        print(
            f"{r.model:<14} {r.n_params:>6d} {r.block:>2d} {r.matvec_s:>9.3f} "
            f"{r.grad_epoch_s:>9.4f} {r.ratio:>7.2f} {r.per_vector:>7.2f}  {r.target:<10} "
            f"{r.verdict:<4}"
        )

    print(
        "\n2-4. fits / one gradient epoch (lanczos and slq: one run between gradient epochs; "
        "passes include the operator's statistics pass)"
    )
    header = (
        f"{'model':<14} {'method':<16} {'fit s':>8} {'grad ep s':>9} {'r_fit':>7} "
        f"{'floor':>5} {'passes':>6} {'vectors':>7} {'mv share':>8}  note"
    )
    print(header)
    print("-" * len(header))
    for r in fit_rows:
        print(
            f"{r.model:<14} {r.method:<16} {r.fit_s:>8.2f} {r.grad_epoch_s:>9.4f} "
            f"{r.r_fit:>7.1f} {r.floor:>5} {r.data_passes:>6d} {r.vectors:>7d} "
            f"{fmt(r.matvec_share, '8.0%'):>8}  {r.note}"
        )

    print("\n3. SLQ log det(G + δI) (first call builds the nodes; later calls reuse them)")
    header = (
        f"{'model':<14} {'δ':>5} {'estimate':>12} {'± se':>9} {'call s':>9} {'exact':>12} "
        f"{'rel err':>8} {'err/se':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in ld_rows:
        print(
            f"{r.model:<14} {r.delta:>5g} {r.estimate:>12.2f} {r.std_err:>9.2f} "
            f"{r.call_s:>9.2e} {fmt(r.exact, '12.2f'):>12} {fmt(r.rel_err, '8.2e'):>8} "
            f"{fmt(r.err_over_se, '6.2f'):>6}"
        )
    print(
        f"   (exact = fit_full(...).structure.logdet(δ); its largest relative gap to the float64 "
        f"Σ log(λ+δ) of the dense eigenvalues: {acc.dense_logdet_vs_f64:.1e})"
    )

    print(f"\naccuracy on {SMALL} (dense references from fit_full / fit_diag)")
    print(
        f"  lanczos: rank {acc.lanczos_rank}, top-{acc.lanczos_rank} eigenvalues max rel err "
        f"{acc.lanczos_max_rel_err:.2e}, subspace cosine (min σ of UᵀU_true) "
        f"{acc.lanczos_subspace_cos:.6f}"
    )
    print(
        f"  hutchinson S={HUTCH_PROBES}: ‖d̂ − d‖/‖d‖ = {acc.hutch_rel_l2_err:.3f} "
        f"(its own variance predicts {acc.hutch_predicted_rel_err:.3f})"
    )
    print("notes:")
    for note in acc.notes:
        print(f"  {note}")
    print(
        f"targets: one GGN-vector product <= {MATVEC_TARGET:g} gradient epochs per vector; "
        f"floors: lanczos ~2.5k = {LANCZOS_FLOOR:g}, hutchinson ~2S = {HUTCH_FLOOR:g}"
    )


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
    x_tr, y_tr, x_te, y_te = load_data()
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=BATCH_SIZE, shuffle=False)
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
