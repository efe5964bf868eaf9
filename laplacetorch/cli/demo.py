"""``laplacetorch demo``: MAP against four Laplace approximations on digits, with a table of
calibration and OOD detection and a sentence per row kind and column on what it means."""

from __future__ import annotations

import sys
import textwrap
import time
from typing import TextIO

import torch

from ..laplace import Laplace
from ..metrics import accuracy, ece, max_probability, nll, ood_metrics
from .arguments import SEED_MAX, _integer
from .digits import _DIGITS_TRAIN, _DIGITS_VAL_END, _digits_shuffled
from .training import _mlp, _train

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
    from .. import datasets

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
    seed: int = 0, epochs: int = 100, out: TextIO = sys.stdout, progress: bool = False
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
    _integer("--seed", seed, 0, SEED_MAX)
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
        results[key] = _demo_laplace_row(la, method, loader, val_loader, test, ood, progress)
    _print_demo_table(results, out)
    print(file=out)
    for note in _demo_notes(results, info, epochs):
        print(textwrap.fill(note, width=100, subsequent_indent="  "), file=out)
    return results


def _demo_laplace_row(la, method, loader, val_loader, test, ood, progress) -> dict[str, float]:
    """Fit ``la``, tune δ by ``method`` and score its probit predictive; the row also holds
    ``prior_precision`` and the seconds of the fit and of the tuning."""
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
    return row


def _print_demo_table(results: dict, out: TextIO) -> None:
    """The demo's table: one line per row of ``results``, a dash where MAP has no value."""
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
