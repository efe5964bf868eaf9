"""Command-line front end: ``laplacetorch demo`` (also ``python -m laplacetorch demo``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from .laplace import Laplace
from .metrics import accuracy, brier, ece, nll

__all__ = ["main", "run_demo"]


def _digits(seed: int) -> tuple[torch.Tensor, ...]:
    """sklearn's digits (shipped with scikit-learn), standardised, split 1500 / 297."""
    from sklearn.datasets import load_digits

    data = load_digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data.target), generator=g)
    x = torch.as_tensor(data.data, dtype=torch.float32)[perm]
    y = torch.as_tensor(data.target, dtype=torch.long)[perm]
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
    return (xtr - mu) / sd, ytr, (xte - mu) / sd, yte


def _train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)  # the demo owns its process; library code never does this
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _row(name: str, probs: torch.Tensor, y: torch.Tensor, times: tuple[float, ...]) -> str:
    fit, tune, pred = times
    return (
        f"{name:<26}{accuracy(probs, y):>8.4f}{float(nll(probs, y)):>8.4f}{ece(probs, y):>8.4f}"
        f"{brier(probs, y):>8.4f}{fit:>9.3f}{tune:>9.3f}{pred:>9.3f}"
    )


def run_demo(seed: int = 0, epochs: int = 30, out=sys.stdout) -> dict[str, dict[str, float]]:
    """Train an MLP on digits, fit two Laplace approximations, tune them and print a table."""
    xtr, ytr, xte, yte = _digits(seed)
    t0 = time.perf_counter()
    model = _train_mlp(xtr, ytr, seed, epochs)
    print(f"trained 64-128-128-10 MLP on digits in {time.perf_counter() - t0:.1f} s", file=out)
    loader = list(zip(xtr.split(128), ytr.split(128), strict=True))
    header = f"{'model':<26}{'acc':>8}{'nll':>8}{'ece':>8}{'brier':>8}{'fit s':>9}{'tune s':>9}"
    print(header + f"{'pred s':>9}", file=out)
    t0 = time.perf_counter()
    with torch.no_grad():
        p_map = torch.softmax(model(xte), -1)
    results = {"MAP": {"acc": accuracy(p_map, yte), "nll": float(nll(p_map, yte))}}
    print(_row("MAP", p_map, yte, (0.0, 0.0, time.perf_counter() - t0)), file=out)
    for name, subset, structure in (
        ("last-layer full", "last_layer", "full"),
        ("all-weights diag", "all", "diag"),
    ):
        la = Laplace(model, "classification", subset, structure)
        t0 = time.perf_counter()
        la.fit(loader)
        t1 = time.perf_counter()
        la.optimize_prior_precision(method="marglik")
        t2 = time.perf_counter()
        probs = la(xte, link_approx="probit")
        t3 = time.perf_counter()
        label = f"LA {name} (δ={float(la.prior_precision):.3g})"
        print(_row(label, probs, yte, (t1 - t0, t2 - t1, t3 - t2)), file=out)
        results[name] = {
            "acc": accuracy(probs, yte),
            "nll": float(nll(probs, yte)),
            "prior_precision": float(la.prior_precision),
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laplacetorch`` console script."""
    parser = argparse.ArgumentParser(prog="laplacetorch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train an MLP on digits and compare MAP with Laplace")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(seed=args.seed, epochs=args.epochs)
    return 0
