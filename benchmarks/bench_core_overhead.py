"""The core's per-call overheads (issue 30): ``full`` fit + marglik tuning, and the ``diag`` probit
predictive, beside laplace-torch on the same models in the same run (no downloads).

Data and nets as in ``bench_laplace.py``: sklearn's digits (1500 / 297), the 64-32-32-10 MLP
(P = 3466) for the fit + tuning, the 64-256-256-10 MLP (P = 85,002) for the predictive of 400
inputs. laplace-torch runs with BackPackGGN on a ``copy.deepcopy`` of each model (its default
100 Adam steps of marglik tuning, or ``--peer-steps`` extrapolated to 100). Prints seconds, the
load average and the thread count: on a shared machine, read the figures with the load.

Usage::

    python benchmarks/bench_core_overhead.py [--threads T] [--repeats R] [--peer-steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch
from common import (
    NO_PEER,
    SEED,
    data_loader,
    load_digits_split,
    load_peer,
    make_mlp,
    ours_laplace,
    peer_line,
    prediction_inputs,
    theirs_laplace,
    timed,
    train,
)

N_PRED = 400
PEER_DEFAULT_STEPS = 100
peer = load_peer()


def load() -> str:
    """The 1-minute load average, as printed beside every figure."""
    return f"load {os.getloadavg()[0]:.2f}"


def main() -> None:
    """Train both MLPs, time both cases (ours, then theirs), print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="fit repeats (median)")
    parser.add_argument("--pred-repeats", type=int, default=21, help="predictive repeats")
    parser.add_argument("--peer-steps", type=int, default=PEER_DEFAULT_STEPS)
    parser.add_argument("--epochs", type=int, default=10, help="Adam training epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_tr, y_tr, x_te, _ = load_digits_split()
    loader = data_loader(x_tr, y_tr)
    x_pred = prediction_inputs(x_tr, x_te, N_PRED)
    small, big = make_mlp(32, SEED + 1), make_mlp(256, SEED)
    train(small, x_tr, y_tr, args.epochs, seed=SEED + 10)
    train(big, x_tr, y_tr, args.epochs, seed=SEED + 11)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {load()}")
    print(peer_line(peer))

    fits, tunes, firsts = [], [], []
    for _ in range(args.repeats):
        la = ours_laplace(small, "full")
        _, fit_s = timed(lambda la=la: la.fit(loader))
        _, tune_s = timed(lambda la=la: la.optimize_prior_precision(method="marglik"))
        _, first_s = timed(lambda la=la: la(x_pred, pred_type="glm", link_approx="probit"))
        fits.append(fit_s)
        tunes.append(tune_s)
        firsts.append(first_s)
    fit_s, tune_s = statistics.median(fits), statistics.median(tunes)
    print(f"\n[1] full fit + marglik tuning, 64-32-32-10 (P = 3466), median of {args.repeats}")
    print(
        f"  ours   fit {fit_s:.3f} s + tune {tune_s:.3f} s = {fit_s + tune_s:.3f} s   "
        f"(then the first predict of {N_PRED}: {statistics.median(firsts):.3f} s)   {load()}"
    )
    if peer is None:
        print(NO_PEER)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lt = theirs_laplace(small, "full")
            _, their_fit = timed(lambda: lt.fit(loader))
            _, their_tune = timed(
                lambda: lt.optimize_prior_precision(method="marglik", n_steps=args.peer_steps)
            )
        their_tune *= PEER_DEFAULT_STEPS / args.peer_steps
        total = their_fit + their_tune
        note = "" if args.peer_steps == PEER_DEFAULT_STEPS else " (tune extrapolated to 100)"
        print(
            f"  theirs fit {their_fit:.3f} s + tune {their_tune:.3f} s = {total:.3f} s{note}   "
            f"{load()}"
        )
        print(f"  theirs / ours: {total / (fit_s + tune_s):.1f}x")

    lb = ours_laplace(big, "diag")
    lb.fit(loader)

    def ours() -> torch.Tensor:
        return lb(x_pred, pred_type="glm", link_approx="probit")

    ours()
    times = [timed(ours)[1] for _ in range(args.pred_repeats)]
    pred_s = statistics.median(times)
    print(f"\n[2] diag GLM probit predictive, 64-256-256-10 (P = 85,002), {N_PRED} inputs")
    print(
        f"  ours   {1e3 * pred_s:.2f} ms (median of {args.pred_repeats}, min "
        f"{1e3 * min(times):.2f})   {load()}"
    )
    if peer is None:
        print(NO_PEER)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = theirs_laplace(big, "diag")
        lt.fit(loader)
        theirs_t = [
            timed(lambda: lt(x_pred, pred_type="glm", link_approx="probit"))[1] for _ in range(3)
        ]
    their_s = statistics.median(theirs_t)
    print(f"  theirs {1e3 * their_s:.1f} ms (median of 3)   {load()}")
    print(f"  theirs / ours: {their_s / pred_s:.0f}x")


if __name__ == "__main__":
    main()
