"""Benchmark KFAC fits against one gradient epoch, and the KFAC GLM predictive against
laplace-torch (no downloads).

(a) r_fit = fit time / one gradient epoch (forward + summed cross-entropy + backward over every
    batch of the same loader, batch 128), median of a few runs after one warm-up; the runs go
    round-robin (gradient epoch, each fit, laplace-torch's) so that load on a shared machine
    hits all alike. Fits: ``kfac`` with the exact type-2 Fisher, ``kfac`` MC (one sampled
    target per example) and ``ekfac`` when it exists, over all weights of
    (i) a 64-256-256-10 ReLU MLP on sklearn's digits (1500 train) and
    (ii) a LeNet-sized CNN on [N, 1, 28, 28] inputs, N = 2048: the real Fashion-MNIST from
        /usr/share/datasets/fashion-mnist/ (IDX files, gzipped or not) when that folder exists,
        else synthetic class-conditional images of that shape (printed which).
    Both nets are float32 and trained briefly with Adam first. Targets: kfac MC r_fit <= 3 (floor
    ~1), kfac exact r_fit <= (1 + 2C)/3 + 2 = 9 for C = 10 (floor ~7). laplace-torch's
    ``hessian_structure="kron"`` (BackPackGGN = BackPACK's KFLR, on a deep copy of the model) is
    timed on the same loader beside ours when installed.
(b) GLM probit predictive for 400 digits (the 297 test digits, then the first 103 training
    digits) with ``kfac`` (exact Fisher) on the 64-256-256-10 MLP, prior 1.0, ours against
    laplace-torch's ``kron``: time per call (median after a warm-up, ours and theirs
    alternating call by call), max |difference| of the probabilities and theirs / ours
    (target >= 20x). Ours runs with ``joint_bias=False`` here, laplace-torch's convention (bias
    a block of its own); our default joint [W | b] block is a different approximation, so only
    the same convention makes the difference a correctness check.

The data, net, training and timing helpers shared by the benchmarks are in ``common.py``.

Usage::

    python benchmarks/bench_kfac.py [--quick] [--repeats R] [--threads T] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from common import (
    BATCH_SIZE,
    NO_PEER,
    SEED,
    accuracy,
    alternate,
    data_loader,
    gradient_epoch,
    load_digits_split,
    load_peer,
    make_mlp,
    n_params,
    ours_laplace,
    peer_line,
    prediction_inputs,
    print_predict_comparison,
    round_robin,
    theirs_laplace,
    timed,
    train,
)
from images import load_images, make_lenet
from torch import Tensor, nn
from torch.utils.data import DataLoader

from laplacetorch import Laplace

N_CNN = 2048
N_PRED = 400
N_CLASSES = 10
MC_TARGET = 3.0
EXACT_TARGET = (1 + 2 * N_CLASSES) / 3 + 2  # 9 for C = 10
PRED_TARGET = 20.0
peer = load_peer()


def ours_kfac(model: nn.Module, fisher_type: str, structure: str = "kfac", **options) -> Laplace:
    """An unfitted Laplace with a KFAC-type structure over all weights (raises
    ``NotImplementedError`` when the structure does not exist yet)."""
    return ours_laplace(model, structure, fisher_type=fisher_type, backend_options=options)


# ----------------------------------------------------------------------------- (a) fits
def bench_fits(name: str, model: nn.Module, loader: DataLoader, repeats: int) -> dict[str, Any]:
    """r_fit of kfac exact, kfac MC, ekfac (if available) and laplace-torch's kron on one net."""
    res: dict[str, Any] = {
        "model": name,
        "n_params": n_params(model),
        "n_data": len(loader.dataset),
    }
    fns: dict[str, Callable[[], Any]] = {"grad_epoch": lambda: gradient_epoch(model, loader)}
    fits = {
        "kfac exact": ("kfac", "exact", {}),
        "kfac mc (M=1)": ("kfac", "mc", {"mc_samples": 1, "seed": 0}),
        "ekfac exact": ("ekfac", "exact", {}),
    }
    unavailable = []
    for label, (structure, fisher, opts) in fits.items():
        try:
            la = ours_kfac(model, fisher, structure, **opts)
            la.fit(loader)  # the warm-up; it also checks that the fit exists, not only its name
        except NotImplementedError as e:
            unavailable.append(f"{label}: not available ({e})")
            continue
        fns[label] = lambda la=la: la.fit(loader)
    if peer is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lt = theirs_laplace(model, "kron")

            def their_fit(lt=lt) -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lt.fit(loader)

        fns["laplace-torch kron"] = their_fit
    times = round_robin(fns, repeats, warm=frozenset(fits))
    grad_times = times.pop("grad_epoch")
    grad_s = statistics.median(grad_times)
    res["grad_epoch_s"] = grad_s
    res["grad_epoch_times_s"] = grad_times
    res["unavailable"] = unavailable
    targets = {"kfac exact": EXACT_TARGET, "kfac mc (M=1)": MC_TARGET}
    res["rows"] = []
    for label, ts in times.items():
        target = targets.get(label)
        fit_s = statistics.median(ts)
        r = fit_s / grad_s
        res["rows"].append(
            {
                "fit": label,
                "fit_s": fit_s,
                "times_s": ts,
                "r_fit": r,
                "r_fit_best": min(ts) / min(grad_times),
                "target": target,
                "verdict": "-" if target is None else ("PASS" if r <= target else "MISS"),
            }
        )
    return res


def report_fits(r: dict[str, Any], repeats: int) -> None:
    """Print one table of benchmark (a)."""
    print(
        f"\n[a] fit / gradient epoch, all weights, {r['model']} (P = {r['n_params']}, "
        f"N = {r['n_data']}, batch {BATCH_SIZE}), median of {repeats} after warm-up, "
        "round-robin"
    )
    print(
        f"  one gradient epoch: {r['grad_epoch_s']:.4f} s (best {min(r['grad_epoch_times_s']):.4f})"
    )
    header = (
        f"  {'fit':<20} {'fit s':>9} {'r_fit':>8}  {'target':<8} {'':<4}  {'r_fit of bests':>14}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in r["rows"]:
        t = "-" if row["target"] is None else f"<= {row['target']:g}"
        print(
            f"  {row['fit']:<20} {row['fit_s']:>9.4f} {row['r_fit']:>8.2f}  {t:<8} "
            f"{row['verdict']:<4}  {row['r_fit_best']:>14.2f}"
        )
    for line in r["unavailable"]:
        print(f"  {line}")
    if peer is None:
        print("  laplace-torch: not installed (`make peer` installs it); ours only")


# ----------------------------------------------------------------------------- (b) predictive
def bench_predict(
    model: nn.Module, loader: DataLoader, x_pred: Tensor, repeats: int
) -> dict[str, Any]:
    """GLM probit predictive with kfac (exact Fisher, separate bias blocks), ours vs theirs."""
    res: dict[str, Any] = {
        "model": "64-256-256-10",
        "n_params": n_params(model),
        "n_inputs": x_pred.shape[0],
    }
    la = ours_kfac(model, "exact", joint_bias=False)
    _, res["ours_fit_s"] = timed(lambda: la.fit(loader))

    def ours_call() -> Tensor:
        return la(x_pred, pred_type="glm", link_approx="probit")

    if peer is None:
        ours_call()
        t = [timed(ours_call)[1] for _ in range(repeats)]
        res["ours_pred_s"] = statistics.median(t)
        res["ours_pred_times_s"] = t
        return res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = theirs_laplace(model, "kron")
        _, res["theirs_fit_s"] = timed(lambda: lt.fit(loader))

        def their_call() -> Tensor:
            return lt(x_pred, pred_type="glm", link_approx="probit").detach()

        ours_call()  # warm-ups
        their_call()
        ours, theirs, ours_t, theirs_t = alternate(ours_call, their_call, repeats)
    res["ours_pred_s"] = statistics.median(ours_t)
    res["theirs_pred_s"] = statistics.median(theirs_t)
    res["ours_pred_times_s"], res["theirs_pred_times_s"] = ours_t, theirs_t
    res["max_abs_diff"] = float((ours - theirs.to(ours.dtype)).abs().max())
    res["ratio"] = res["theirs_pred_s"] / res["ours_pred_s"]
    res["verdict"] = "PASS" if res["ratio"] >= PRED_TARGET else "MISS"
    return res


def report_predict(r: dict[str, Any], repeats: int) -> None:
    """Print benchmark (b)."""
    print(
        f"\n[b] GLM probit predictive, kfac (exact, joint_bias=False), all weights, {r['model']} "
        f"(P = {r['n_params']}), {r['n_inputs']} inputs, median of {repeats} after warm-up"
    )
    best = f" (best {min(r['ours_pred_times_s']):.4f})" if "ours_pred_times_s" in r else ""
    print(f"  ours   fit {r['ours_fit_s']:8.3f} s  predict {r['ours_pred_s']:8.4f} s{best}")
    if "theirs_pred_s" not in r:
        print(NO_PEER)
        return
    print(
        f"  theirs fit {r['theirs_fit_s']:8.3f} s  predict {r['theirs_pred_s']:8.4f} s "
        f"(best {min(r['theirs_pred_times_s']):.4f}; alternating with ours call by call)"
    )
    print_predict_comparison(r, PRED_TARGET)


# ----------------------------------------------------------------------------- main
def main() -> None:
    """Train the two nets, run (a) on both and (b) on the MLP, print (and save) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat, fewer epochs")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for everything (default: torch's choice); 1 is far less "
        "sensitive to other processes on a shared machine, and the ratios stay like for like",
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mlp_epochs, cnn_epochs = (3, 1) if args.quick else (10, 2)

    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    digits_loader = data_loader(x_tr, y_tr)
    x_pred = prediction_inputs(x_tr, x_te, N_PRED)
    x_img, y_img, source = load_images(N_CNN)
    img_loader = data_loader(x_img, y_img)

    mlp, cnn = make_mlp(256, SEED), make_lenet(SEED + 1)
    _, dt = timed(lambda: train(mlp, x_tr, y_tr, mlp_epochs, seed=SEED + 10))
    print(
        f"trained 64-256-256-10 on digits ({mlp_epochs} epochs): {dt:.1f} s, "
        f"test acc {accuracy(mlp, x_te, y_te):.3f}"
    )
    _, dt = timed(lambda: train(cnn, x_img, y_img, cnn_epochs, seed=SEED + 11))
    print(
        f"trained LeNet on {source}, N = {N_CNN} ({cnn_epochs} epochs): {dt:.1f} s, "
        f"train acc {accuracy(cnn, x_img, y_img):.3f}"
    )
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"batch {BATCH_SIZE}, median of {repeats}, 1-min load average {os.getloadavg()[0]:.2f} "
        "(other processes on a shared machine inflate every timing)"
    )
    print(peer_line(peer))

    fits = [
        bench_fits("64-256-256-10 MLP, digits", mlp, digits_loader, repeats),
        bench_fits(f"LeNet, {source.split(' (')[0]}", cnn, img_loader, repeats),
    ]
    for r in fits:
        report_fits(r, repeats)
    print(
        f"  targets: kfac mc r_fit <= {MC_TARGET:g} (floor ~1); kfac exact r_fit <= "
        f"(1 + 2C)/3 + 2 = {EXACT_TARGET:g} (floor (1 + 2C)/3 = {(1 + 2 * N_CLASSES) / 3:.0f})"
    )
    pred = bench_predict(mlp, digits_loader, x_pred, repeats)
    report_predict(pred, repeats)
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.1f} s, 1-min load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        out = {
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "peer_installed": peer is not None,
            "image_data": source,
            "batch_size": BATCH_SIZE,
            "repeats": repeats,
            "fits": fits,
            "predict": pred,
            "total_s": total,
            "load_average_end": os.getloadavg()[0],
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
