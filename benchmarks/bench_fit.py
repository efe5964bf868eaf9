"""Benchmark curvature fits against one gradient epoch on sklearn's digits (no downloads).

Two MLPs (64-256-256-10 and 64-32-32-10) are trained briefly with Adam, put in eval mode and
then timed: one gradient epoch (forward + summed cross-entropy + backward over every batch),
and ``fit_full`` / ``fit_diag`` over the same loader. The ratio r_fit = fit / gradient epoch is
compared with the targets: diag over all weights r_fit <= 10 (ideal (1 + 2C)/3 = 7 for C = 10),
last layer r_fit ~ 0.3.

The data, net, training and timing helpers shared by the benchmarks are in ``common.py``.

Usage::

    python benchmarks/bench_fit.py [--repeats 3] [--epochs 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import torch
from common import (
    BATCH_SIZE,
    SEED,
    accuracy,
    data_loader,
    gradient_epoch,
    load_digits_split,
    make_mlp,
    median_time,
    train,
)
from torch.utils.data import DataLoader

from laplacetorch import ParameterSubset, fit_diag, fit_full, get_likelihood

DIAG_TARGET = 10.0
LAST_LAYER_TARGET = 0.3


@dataclass
class Row:
    """One timed fit."""

    model: str
    backend: str
    subset: str
    n_params: int
    fit_s: float
    grad_epoch_s: float
    r_fit: float
    target: str
    verdict: str


def loader_epoch(loader: DataLoader) -> None:
    """Iterate over the loader only (the data-loading share of every pass)."""
    for _ in loader:
        pass


def judge(backend: str, subset: str, r_fit: float) -> tuple[str, str]:
    """The target string and verdict for one row (PASS/MISS only for diag over all weights)."""
    if backend == "diag" and subset == "all":
        return f"<= {DIAG_TARGET:g}", "PASS" if r_fit <= DIAG_TARGET else "MISS"
    if subset == "last_layer":
        return f"~{LAST_LAYER_TARGET:g}", "-"
    return "-", "-"


def main() -> None:
    """Train the two MLPs, time the gradient epochs and the fits, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--epochs", type=int, default=10, help="Adam training epochs")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = parser.parse_args()
    if args.repeats < 1 or args.epochs < 0:
        parser.error("--repeats must be >= 1 and --epochs >= 0")

    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    loader = data_loader(x_tr, y_tr)
    lik = get_likelihood("classification")

    models = {"64-256-256-10": make_mlp(256, SEED), "64-32-32-10": make_mlp(32, SEED + 1)}
    grad_epoch_s: dict[str, float] = {}
    for i, (name, model) in enumerate(models.items()):
        t0 = time.perf_counter()
        train(model, x_tr, y_tr, args.epochs, seed=SEED + 10 + i)
        print(
            f"trained {name}: {time.perf_counter() - t0:.1f} s, "
            f"test accuracy {accuracy(model, x_te, y_te):.3f}"
        )
        grad_epoch_s[name] = median_time(
            lambda m=model: gradient_epoch(m, loader, clear_after=False), args.repeats
        )[1]

    load_s = median_time(lambda: loader_epoch(loader), args.repeats)[1]

    cases = [
        ("64-32-32-10", "full", "all"),
        ("64-256-256-10", "diag", "all"),
        ("64-256-256-10", "full", "last_layer"),
        ("64-256-256-10", "diag", "last_layer"),
    ]
    backends = {"full": fit_full, "diag": fit_diag}
    rows: list[Row] = []
    for name, backend, subset_kind in cases:
        subset = ParameterSubset(models[name], subset_kind)
        fit = backends[backend]
        fit_s = median_time(lambda s=subset, f=fit: f(s, lik, loader), args.repeats)[1]
        r_fit = fit_s / grad_epoch_s[name]
        target, verdict = judge(backend, subset_kind, r_fit)
        rows.append(
            Row(
                name,
                backend,
                subset_kind,
                subset.n_params,
                fit_s,
                grad_epoch_s[name],
                r_fit,
                target,
                verdict,
            )
        )

    print()
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"N = {len(x_tr)}, batch size {BATCH_SIZE}, median of {args.repeats} after 1 warm-up"
    )
    header = (
        f"{'model':<14} {'backend':<7} {'subset':<10} {'P':>7} {'fit s':>8} "
        f"{'grad ep s':>9} {'r_fit':>7}  {'target':<7} {'':<4}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.model:<14} {r.backend:<7} {r.subset:<10} {r.n_params:>7d} {r.fit_s:>8.3f} "
            f"{r.grad_epoch_s:>9.4f} {r.r_fit:>7.2f}  {r.target:<7} {r.verdict:<4}"
        )
    print(
        f"targets: diag over all weights r_fit <= {DIAG_TARGET:g} (ideal (1+2C)/3 = 7); "
        f"last layer r_fit ~ {LAST_LAYER_TARGET:g}"
    )
    print(
        f"DataLoader iteration alone: {load_s:.4f} s per epoch (included in every fit and "
        "gradient epoch above)"
    )
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")

    if args.json:
        payload = {
            "torch_version": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "n_train": len(x_tr),
            "batch_size": BATCH_SIZE,
            "repeats": args.repeats,
            "epochs": args.epochs,
            "grad_epoch_s": grad_epoch_s,
            "loader_epoch_s": load_s,
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
