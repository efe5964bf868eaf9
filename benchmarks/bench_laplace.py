"""Benchmark laplacetorch against laplace-torch on the same models in the same run (no downloads).

Data: sklearn's digits, standardised with train statistics, float32, seeded 1500 / 297 split.
Two MLPs are trained briefly with Adam (batch 128) and put in eval mode:
A = 64-32-32-10 (~3.5k weights), B = 64-256-256-10 (~85k weights).

1. Fit + marginal-likelihood tuning of a scalar prior, ``hessian_structure="full"`` over all
   weights of net A. laplace-torch (BackPackGGN) runs ``--peer-steps`` Adam steps (its default
   is 100, each re-factorising the dense posterior precision); with fewer steps its tuning time
   is extrapolated from the per-step time to 100 steps, and this is printed. Target >= 15x.
2. GLM probit predictive for 400 inputs (the 297 test digits followed by the first 103
   training digits), ``hessian_structure="diag"`` over all weights of net B, prior 1.0 for
   both. Median of a few calls after a warm-up, ours and theirs alternating. Target >= 10x.

Ratios are theirs / ours. laplace-torch is an optional peer (``make peer`` installs it).

The data, net, training and timing helpers shared by the benchmarks are in ``common.py``.

Usage::

    python benchmarks/bench_laplace.py [--quick] [--peer-steps N] [--repeats R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Any

import torch
from common import (
    BATCH_SIZE,
    NO_PEER,
    SEED,
    accuracy,
    alternate,
    data_loader,
    load_digits_split,
    load_peer,
    make_mlp,
    median_time,
    n_params,
    ours_laplace,
    peer_line,
    prediction_inputs,
    print_predict_comparison,
    theirs_laplace,
    timed,
    train,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader

N_PRED = 400
PEER_DEFAULT_STEPS = 100
TUNE_TARGET = 15.0
PRED_TARGET = 10.0
SLOW_CALL_S = 30.0
peer = load_peer()


def verdict(ratio: float, target: float) -> str:
    """PASS / MISS against a lower bound on the speed-up."""
    return "PASS" if ratio >= target else "MISS"


def bench_tune(
    model: nn.Module, loader: DataLoader, peer_steps: int, repeats: int
) -> dict[str, Any]:
    """Benchmark 1: full-GGN fit + marglik tuning of a scalar prior, ours vs laplace-torch."""
    res: dict[str, Any] = {
        "model": "64-32-32-10",
        "n_params": n_params(model),
    }

    fits, tunes = [], []
    la = None
    for _ in range(repeats):
        la = ours_laplace(model, "full")
        _, fit_s = timed(lambda la=la: la.fit(loader))
        _, tune_s = timed(lambda la=la: la.optimize_prior_precision(method="marglik"))
        fits.append(fit_s)
        tunes.append(tune_s)
    res["ours"] = {
        "fit_s": statistics.median(fits),
        "tune_s": statistics.median(tunes),
        "prior_precision": float(la.prior_precision),
        "log_marglik": float(la.log_marginal_likelihood()),
    }
    res["ours"]["total_s"] = res["ours"]["fit_s"] + res["ours"]["tune_s"]
    if peer is None:
        return res

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = theirs_laplace(model, "full")
        _, fit_s = timed(lambda: lt.fit(loader))
        _, tune_s = timed(lambda: lt.optimize_prior_precision(method="marglik", n_steps=peer_steps))
        lml = float(lt.log_marginal_likelihood().detach())
    per_step = tune_s / peer_steps
    tune_100 = tune_s if peer_steps == PEER_DEFAULT_STEPS else per_step * PEER_DEFAULT_STEPS
    res["theirs"] = {
        "fit_s": fit_s,
        "tune_s_measured": tune_s,
        "steps": peer_steps,
        "per_step_s": per_step,
        "tune_s": tune_100,
        "extrapolated": peer_steps != PEER_DEFAULT_STEPS,
        "prior_precision": float(lt.prior_precision.reshape(-1)[0]),
        "log_marglik": lml,
    }
    res["theirs"]["total_s"] = fit_s + tune_100
    res["ratio"] = res["theirs"]["total_s"] / res["ours"]["total_s"]
    res["verdict"] = verdict(res["ratio"], TUNE_TARGET)
    return res


def bench_predict(
    model: nn.Module, loader: DataLoader, x_pred: Tensor, repeats: int
) -> dict[str, Any]:
    """Benchmark 2: diag-GGN fit and GLM probit predictive on ``x_pred``, ours vs theirs.

    After one warm-up call each, the timed calls alternate ours / theirs so that a burst of
    load on the machine hits both sides alike."""
    res: dict[str, Any] = {
        "model": "64-256-256-10",
        "n_params": n_params(model),
        "n_inputs": x_pred.shape[0],
    }
    la = ours_laplace(model, "diag")
    _, fit_s = timed(lambda: la.fit(loader))

    def ours_call() -> Tensor:
        return la(x_pred, pred_type="glm", link_approx="probit")

    if peer is None:
        ours, pred_s = median_time(ours_call, repeats)
        res["ours"] = {"fit_s": fit_s, "pred_s": pred_s, "repeats": repeats}
        return res

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = theirs_laplace(model, "diag")
        _, their_fit_s = timed(lambda: lt.fit(loader))

        def their_call() -> Tensor:
            return lt(x_pred, pred_type="glm", link_approx="probit").detach()

        ours_call()  # warm-ups; theirs also decides the number of repeats
        _, first_s = timed(their_call)
        n_rep = 1 if first_s > SLOW_CALL_S else repeats
        ours, theirs, ours_t, theirs_t = alternate(ours_call, their_call, n_rep)
    res["ours"] = {"fit_s": fit_s, "pred_s": statistics.median(ours_t), "repeats": n_rep}
    res["theirs"] = {
        "fit_s": their_fit_s,
        "pred_s": statistics.median(theirs_t),
        "repeats": n_rep,
        "warmup_s": first_s,
    }
    res["max_abs_diff"] = float((ours - theirs).abs().max())
    res["ratio"] = res["theirs"]["pred_s"] / res["ours"]["pred_s"]
    res["verdict"] = verdict(res["ratio"], PRED_TARGET)
    return res


def report_tune(r: dict[str, Any]) -> None:
    """Print benchmark 1."""
    o = r["ours"]
    print(
        f"\n[1] fit + marglik prior tuning, full GGN, all weights, {r['model']} "
        f"(P = {r['n_params']})"
    )
    print(
        f"  ours   fit {o['fit_s']:8.3f} s  tune {o['tune_s']:8.3f} s  total {o['total_s']:8.3f} s"
        f"   prior {o['prior_precision']:.5g}  log marglik {o['log_marglik']:.4f}"
    )
    if "theirs" not in r:
        print(NO_PEER)
        return
    t = r["theirs"]
    steps = f"{t['steps']} steps in {t['tune_s_measured']:.3f} s, {t['per_step_s']:.4f} s/step"
    tune = f"tune {t['tune_s']:8.3f} s"
    print(
        f"  theirs fit {t['fit_s']:8.3f} s  {tune}  total {t['total_s']:8.3f} s"
        f"   prior {t['prior_precision']:.5g}  log marglik {t['log_marglik']:.4f}"
    )
    print(f"         ({steps})")
    if t["extrapolated"]:
        print(
            f"  NOTE: their tuning time is EXTRAPOLATED to their default {PEER_DEFAULT_STEPS} "
            f"steps from {t['steps']} measured steps; their prior / marglik are after only "
            f"{t['steps']} Adam steps (not converged)"
        )
    print(
        f"  ratio theirs/ours (fit+tune): {r['ratio']:.1f}x   target >= {TUNE_TARGET:g}x   "
        f"{r['verdict']}"
    )


def report_predict(r: dict[str, Any]) -> None:
    """Print benchmark 2."""
    o = r["ours"]
    print(
        f"\n[2] GLM probit predictive, diag GGN, all weights, {r['model']} (P = {r['n_params']}), "
        f"{r['n_inputs']} inputs"
    )
    print(
        f"  ours   fit {o['fit_s']:8.3f} s  predict {o['pred_s']:8.4f} s "
        f"(median of {o['repeats']} after warm-up)"
    )
    if "theirs" not in r:
        print(NO_PEER)
        return
    t = r["theirs"]
    print(
        f"  theirs fit {t['fit_s']:8.3f} s  predict {t['pred_s']:8.4f} s "
        f"(median of {t['repeats']} after warm-up of {t['warmup_s']:.3f} s; alternating with ours)"
    )
    print_predict_comparison(r, PRED_TARGET)


def main() -> None:
    """Train the two MLPs, run both benchmarks, print (and optionally save) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="peer-steps 5, one repeat")
    parser.add_argument(
        "--peer-steps",
        type=int,
        default=None,
        help=f"laplace-torch marglik Adam steps (default {PEER_DEFAULT_STEPS}; 5 with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="Adam training epochs")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = parser.parse_args()
    peer_steps = args.peer_steps or (5 if args.quick else PEER_DEFAULT_STEPS)
    repeats = args.repeats or (1 if args.quick else 3)
    if peer_steps < 1 or repeats < 1 or args.epochs < 0:
        parser.error("--peer-steps and --repeats must be >= 1, --epochs >= 0")

    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    loader = data_loader(x_tr, y_tr)
    x_pred = prediction_inputs(x_tr, x_te, N_PRED)

    models = {"A": make_mlp(32, SEED + 1), "B": make_mlp(256, SEED)}
    for i, (name, model) in enumerate(models.items()):
        _, dt = timed(lambda m=model, i=i: train(m, x_tr, y_tr, args.epochs, seed=SEED + 10 + i))
        n = n_params(model)
        print(
            f"trained net {name} ({n} weights): {dt:.1f} s, "
            f"test acc {accuracy(model, x_te, y_te):.3f}"
        )

    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"N = {len(x_tr)}, batch {BATCH_SIZE}, ours: median of {repeats}"
    )
    print(peer_line(peer))
    r1 = bench_tune(models["A"], loader, peer_steps, repeats)
    report_tune(r1)
    r2 = bench_predict(models["B"], loader, x_pred, repeats)
    report_predict(r2)
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.1f} s")
    if args.json:
        out = {
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "peer_installed": peer is not None,
            "tune": r1,
            "predict": r2,
            "total_s": total,
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
