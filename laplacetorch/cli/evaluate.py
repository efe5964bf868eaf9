"""``laplacetorch evaluate``: the data sets and their splits, the run, and the files it
writes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from .arguments import SEED_MAX, UsageError, _integer, _names, _progress, _real
from .digits import _DIGITS_TRAIN, _DIGITS_VAL_END, _digits_shuffled
from .output import _OutputDir
from .training import _lenet, _mlp, _train

#: training examples each data set offers (``--n-train`` picks the first N of them)
_TRAIN_POOL = {"digits": _DIGITS_TRAIN, "fashion-mnist": 60000, "mnist1d": 3500}
_DEFAULT_N_TRAIN = {"fashion-mnist": 10000}


def _evaluation_data(dataset: str, ood: str, seed: int, n_train: int | None):
    """``(train, val, test, ood_x)``; ``train`` is the first ``n_train`` examples of the
    training split (default all; 10000 for fashion-mnist), never overlapping val or test."""
    from .. import datasets

    if dataset not in datasets.DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; expected one of {list(datasets.DATASETS)}")
    if ood not in ("mnist", "noise", "none"):
        raise UsageError(f"unknown OOD set {ood!r}; expected 'mnist', 'noise' or 'none'")
    pool = _TRAIN_POOL[dataset]
    n = _DEFAULT_N_TRAIN.get(dataset, pool) if n_train is None else n_train
    _integer("--n-train", n, 1)
    if n > pool:
        raise UsageError(
            f"--n-train {n} is more than the {pool} training examples of {dataset} (the rest "
            f"is held out for validation and test); pick 1 to {pool}"
        )
    if dataset == "digits":
        x, y, mu, sd = _digits_shuffled(seed)
        x = (x - mu) / sd
        train = (x[:n], y[:n])
        val = (x[_DIGITS_TRAIN:_DIGITS_VAL_END], y[_DIGITS_TRAIN:_DIGITS_VAL_END])
        test = (x[_DIGITS_VAL_END:], y[_DIGITS_VAL_END:])
    elif dataset == "fashion-mnist":
        xtr, ytr = datasets.load_fashion_mnist("train")
        xte, yte = datasets.load_fashion_mnist("test")
        # validation from the test images the table does not use, so all 60000 can train
        train, val, test = (xtr[:n], ytr[:n]), (xte[-2000:], yte[-2000:]), (xte[:2000], yte[:2000])
    else:
        xtr, ytr, xte, yte = datasets.load_mnist1d(seed=42)
        mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        train, val, test = (xtr[:n], ytr[:n]), (xtr[pool:], ytr[pool:]), (xte, yte)
    if ood == "none":
        ood_x = None
    elif ood == "noise":
        ood_x = datasets.noise_like(test[0], len(test[1]), seed)
    else:
        ood_x, _ = datasets.load_mnist5k()
        ood_x = ood_x[:2000]
    if ood_x is not None and ood_x.shape[1:] != test[0].shape[1:]:
        raise UsageError(
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


def _check_evaluate_args(args: argparse.Namespace) -> dict:
    """Every ``evaluate`` option checked before any work; the options with their defaults."""
    from ..curvature import ALIASES, HESSIAN_STRUCTURES

    opts = {
        "structures": _names("--structures", args.structures, HESSIAN_STRUCTURES, ALIASES),
        "subsets": _names("--subset", args.subset, ("last_layer", "all")),
        "epochs": _integer("--epochs", args.epochs, 1),
        "lr": _real("--lr", getattr(args, "lr", 1e-3), positive=True),
        "weight_decay": _real(
            "--weight-decay", getattr(args, "weight_decay", 1e-4), positive=False
        ),
        "seed": _integer("--seed", args.seed, 0, SEED_MAX),
        "progress": _progress(getattr(args, "progress", None)),
    }
    n_train = getattr(args, "n_train", None)
    if n_train is not None:
        _integer("--n-train", n_train, 1)
    return opts


def _write_results(table, directory: Path, ood: str, out) -> None:
    (directory / "table.txt").write_text(table.table() + "\n")
    table.to_json(directory / "table.json")
    try:
        from ..plots import confidence_histogram, reliability_diagram

        for name, probs in table.probs.items():
            slug = name.replace(" ", "_")
            reliability_diagram(
                probs, table.labels, directory / f"reliability_{slug}.png", title=name
            )
        if table.ood_probs:
            confidence_histogram(
                table.ood_probs,
                directory / "ood_confidence.png",
                title=f"confidence on OOD ({ood})",
            )
    except ImportError as err:
        print(f"no plots: {err}", file=out)


def run_evaluate(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict:
    """``laplacetorch evaluate``: train, fit each variant, write the table and diagrams.

    The options are checked first (:class:`UsageError`); the ``--out`` directory is created
    only once the results exist. Under torchrun every rank trains the same model, then fits
    and evaluates on its stride of each data set (the data passes reduce over the ranks), and
    rank 0 reports."""
    from ..evaluation import Variant, evaluate

    opts = _check_evaluate_args(args)
    out_dir = _OutputDir(args.out) if args.out else None
    train, val, test, ood_x = _evaluation_data(
        args.dataset, args.ood, opts["seed"], getattr(args, "n_train", None)
    )
    first_rank = int(os.environ.get("RANK", "0")) == 0
    progress = opts["progress"] and first_rank
    torch.manual_seed(opts["seed"])  # the command owns its process
    if args.dataset == "fashion-mnist":
        model = _lenet()
    else:
        model = _mlp(train[0].shape[1])
    t0 = time.perf_counter()
    model = _train(
        model,
        *train,
        opts["seed"],
        opts["epochs"],
        lr=opts["lr"],
        weight_decay=opts["weight_decay"],
        progress=progress,
    )
    print(
        f"trained on {len(train[1])} {args.dataset} examples in {time.perf_counter() - t0:.1f} s",
        file=out,
    )

    rank, world = _ranks()
    if rank != 0:
        out, out_dir = open(os.devnull, "w"), None

    def batches(pair, size=256):
        x, y = pair[0][rank::world], pair[1][rank::world]  # this rank's shard
        return list(zip(x.split(size), y.split(size), strict=True))

    ood_loader = None if ood_x is None else batches((ood_x, torch.zeros(len(ood_x))))
    variants = [Variant(sub, st) for sub in opts["subsets"] for st in opts["structures"]]
    table = evaluate(
        model,
        batches(train, 128),
        batches(test),
        variants=variants,
        val_loader=batches(val),
        ood_loader=ood_loader,
        progress=progress,
    )
    print(table.table(), file=out)
    if out_dir is not None:
        with out_dir.writing() as staging:
            _write_results(table, staging, args.ood, out)
        print(f"wrote {out_dir.path}", file=out)
    return table.to_dict()
