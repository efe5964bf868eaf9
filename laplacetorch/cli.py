"""Command-line front end: ``laplacetorch demo | evaluate | select`` (also ``python -m
laplacetorch``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .laplace import Laplace
from .metrics import accuracy, brier, ece, nll

__all__ = ["main", "run_demo", "run_evaluate", "run_select"]


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


def _mlp(n_in: int, width: int = 128, n_out: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_in, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, n_out),
    )


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
) -> nn.Module:
    """Adam on the mean cross-entropy with seeded shuffling; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _train_mlp(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)  # the demo owns its process; library code never does this
    return _train(_mlp(64), x, y, seed, epochs, batch_size=64)


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


def _lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def _writable_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output directory {out!r} cannot be written: {err}") from err
    return path


def _evaluation_data(dataset: str, ood: str, seed: int, n_train: int):
    from . import datasets

    if dataset == "digits":
        x, y = datasets.load_digits()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        x, y = x[perm], y[perm]
        mu, sd = x[:1200].mean(0), x[:1200].std(0).clamp_min(1e-3)
        x = (x - mu) / sd
        train, val, test = (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])
    elif dataset == "fashion-mnist":
        xtr, ytr = datasets.load_fashion_mnist("train")
        xte, yte = datasets.load_fashion_mnist("test")
        train, val, test = (
            (xtr[:n_train], ytr[:n_train]),
            (xtr[-2000:], ytr[-2000:]),
            (xte[:2000], yte[:2000]),
        )
    elif dataset == "mnist1d":
        xtr, ytr, xte, yte = datasets.load_mnist1d(seed=42)
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        train, val, test = (xtr[:3500], ytr[:3500]), (xtr[3500:], ytr[3500:]), (xte, yte)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {datasets.DATASETS}")
    if ood == "none":
        ood_x = None
    elif ood == "noise":
        ood_x = datasets.noise_like(test[0], len(test[1]), seed)
    elif ood == "mnist":
        ood_x, _ = datasets.load_mnist5k()
        ood_x = ood_x[:2000]
    else:
        raise ValueError(f"unknown OOD set {ood!r}; expected 'mnist', 'noise' or 'none'")
    if ood_x is not None and ood_x.shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"the OOD set has inputs of shape {list(ood_x.shape[1:])} but {dataset} has "
            f"{list(test[0].shape[1:])}; pick an OOD set of the same shape"
        )
    return train, val, test, ood_x


def _ranks() -> tuple[int, int]:
    """``(rank, world)``; under torchrun the default group is initialised here (gloo on CPU,
    NCCL when CUDA is there)."""

    import torch.distributed as dist

    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run_evaluate(args: argparse.Namespace, out=sys.stdout) -> dict:
    """``laplacetorch evaluate``: train, fit each variant, write the table and diagrams.

    Under torchrun every rank trains the same model, then fits and evaluates on its stride of
    each data set (the data passes reduce over the ranks), and rank 0 reports."""
    from .curvature import ALIASES, HESSIAN_STRUCTURES
    from .evaluation import Variant, evaluate

    structures = [s for s in args.structures.split(",") if s]
    for s in structures:
        if s not in HESSIAN_STRUCTURES and s not in ALIASES:
            raise ValueError(f"unknown structure {s!r}; expected one of {list(HESSIAN_STRUCTURES)}")
    subsets = [s for s in args.subset.split(",") if s]
    for s in subsets:
        if s not in ("last_layer", "all"):
            raise ValueError(f"unknown subset {s!r}; expected 'last_layer' or 'all'")
    out_dir = _writable_dir(args.out) if args.out else None
    train, val, test, ood_x = _evaluation_data(args.dataset, args.ood, args.seed, args.n_train)
    torch.manual_seed(args.seed)  # the command owns its process
    if args.dataset == "fashion-mnist":
        model = _lenet()
    else:
        model = _mlp(train[0].shape[1])
    t0 = time.perf_counter()
    model = _train(
        model,
        *train,
        args.seed,
        args.epochs,
        lr=getattr(args, "lr", 1e-3),
        weight_decay=getattr(args, "weight_decay", 1e-4),
    )
    print(f"trained on {args.dataset} in {time.perf_counter() - t0:.1f} s", file=out)

    rank, world = _ranks()
    if rank != 0:
        out, out_dir = open(os.devnull, "w"), None

    def batches(pair, size=256):
        x, y = pair[0][rank::world], pair[1][rank::world]  # this rank's shard
        return list(zip(x.split(size), y.split(size), strict=True))

    ood_loader = None if ood_x is None else batches((ood_x, torch.zeros(len(ood_x))))
    variants = [Variant(sub, st) for sub in subsets for st in structures]
    table = evaluate(
        model,
        batches(train, 128),
        batches(test),
        variants=variants,
        val_loader=batches(val),
        ood_loader=ood_loader,
        progress=args.progress,
    )
    print(table.table(), file=out)
    if out_dir is not None:
        (out_dir / "table.txt").write_text(table.table() + "\n")
        table.to_json(out_dir / "table.json")
        try:
            from .plots import confidence_histogram, reliability_diagram

            for name, probs in table.probs.items():
                slug = name.replace(" ", "_")
                reliability_diagram(
                    probs, table.labels, out_dir / f"reliability_{slug}.png", title=name
                )
            if table.ood_probs:
                confidence_histogram(
                    table.ood_probs,
                    out_dir / "ood_confidence.png",
                    title=f"confidence on OOD ({args.ood})",
                )
        except ImportError as err:
            print(f"no plots: {err}", file=out)
        print(f"wrote {out_dir}", file=out)
    return table.to_dict()


def run_select(args: argparse.Namespace, out=sys.stdout) -> list:
    """``laplacetorch select``: choose an MLP width by the evidence, against held-out NLL."""
    from .metrics import nll
    from .selection import select_model

    widths = [int(w) for w in args.widths.split(",")]
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if args.task == "regression":
        x = 4 * torch.rand(300, 1, generator=g) - 2
        y = torch.sin(2 * x) + 0.2 * torch.randn(300, 1, generator=g)
        (xtr, ytr), (xte, yte) = (x[:150], y[:150]), (x[150:], y[150:])
        likelihood, n_in, n_out = "regression", 1, 1
    else:
        from . import datasets

        x, y = datasets.load_digits()
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
        (xtr, ytr), (xte, yte) = (x[:1000], y[:1000]), (x[1000:], y[1000:])
        likelihood, n_in, n_out = "classification", 64, 10
    candidates = {}
    for w in widths:
        model = nn.Sequential(nn.Linear(n_in, w), nn.Tanh(), nn.Linear(w, n_out))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(args.steps):
            opt.zero_grad()
            f = model(xtr)
            loss = (
                nn.functional.mse_loss(f, ytr)
                if likelihood == "regression"
                else nn.functional.cross_entropy(f, ytr)
            )
            loss.backward()
            opt.step()
        candidates[f"width {w}"] = model.eval()
    loader = list(zip(xtr.split(100), ytr.split(100), strict=True))
    res = select_model(candidates, likelihood, loader, hessian_structure="full")
    print(res.table(), file=out)
    print(f"\n{'model':<24}{'held-out NLL':>14}", file=out)
    rows = []
    for c in res.ranking:
        la = c.laplace
        pred = la(xte)  # regression: of f; the predictive of y adds σ²
        if likelihood == "regression":
            held = la.likelihood.predictive_nll(pred, yte, la.sigma_noise) / len(yte)
        else:
            held = nll(pred, yte)
        rows.append((c.name, c.log_marginal_likelihood, float(held)))
        print(f"{c.name:<24}{float(held):>14.4f}", file=out)
    best_held = min(rows, key=lambda r: r[2])[0]
    print(f"\nevidence picks {res.best.name}; held-out NLL picks {best_held}", file=out)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laplacetorch`` console script."""
    parser = argparse.ArgumentParser(prog="laplacetorch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train an MLP on digits and compare MAP with Laplace")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=30)
    ev = sub.add_parser("evaluate", help="calibration and OOD table for Laplace variants")
    ev.add_argument("--dataset", default="digits", help="digits | fashion-mnist | mnist1d")
    ev.add_argument("--ood", default="noise", help="mnist | noise | none")
    ev.add_argument("--structures", default="kfac,diag")
    ev.add_argument("--subset", default="last_layer")
    ev.add_argument("--out", default=None, help="directory for table.txt/json and PNGs")
    ev.add_argument("--epochs", type=int, default=20)
    ev.add_argument("--n-train", type=int, default=10000)
    ev.add_argument("--lr", type=float, default=1e-3)
    ev.add_argument("--weight-decay", type=float, default=1e-4)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--progress", action="store_true")
    sel = sub.add_parser("select", help="pick an MLP width by the Laplace evidence")
    sel.add_argument("--task", choices=("regression", "classification"), default="regression")
    sel.add_argument("--widths", default="1,4,16,64")
    sel.add_argument("--steps", type=int, default=1000)
    sel.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(seed=args.seed, epochs=args.epochs)
        elif args.command == "evaluate":
            run_evaluate(args)
        else:
            run_select(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"laplacetorch {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
