"""Threads sharing one fitted Laplace: bit-equal answers, and the throughput against one thread.

Issue 33's stress benchmark. An MLP 64-50-10 on the digits (sklearn's, no download), fitted
with each structure on all weights; then 8 threads × 200 calls of the GLM predictive
(``la(x)``, 32 inputs) and of the streamed uncertainty (``la.uncertainty(x, n_samples=20)``
with a seeded generator) at once (fewer calls where one takes long: about 10 s a mode).
Printed per structure: whether every threaded answer is bit for bit the one-thread answer,
and calls per second with 8 threads against one thread doing the same calls in turn. The
library's entry points that run torch.func transforms take turns under one process-wide lock
(``model_call.serialised``: the transforms' levels are process state); the gain, if any,
comes from the work outside it (checks, the likelihood's link) and from torch releasing the
GIL.

Usage::

    python benchmarks/bench_threads.py [--threads N] [--calls 200] [--only kfac,diag]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

import torch
from common import load_digits_split, make_mlp, train
from torch import Tensor

from laplacetorch import Laplace

STRUCTURES = ["full", "diag", "kfac", "ekfac", "block_full", "hutchinson", "lanczos", "operator"]
OPTIONS = {"operator": {"n_probes": 8, "n_steps": 16, "seed": 0}, "lanczos": {"rank": 20}}
N_THREADS = 8


def _run(call: Callable[[], Tensor], n_threads: int, n_calls: int) -> tuple[list[Tensor], float]:
    out: list[Tensor] = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads + 1)

    def worker() -> None:
        start.wait()
        mine = [call() for _ in range(n_calls)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch's intra-op threads")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    x_train, y_train, x_test, _ = load_digits_split()
    net = make_mlp(50, seed=0)
    train(net, x_train, y_train, epochs=30, seed=0)
    loader = [(x_train[i : i + 256], y_train[i : i + 256]) for i in range(0, len(x_train), 256)]
    x = x_test[:32]
    print(f"{'structure':<11}{'call':<12}{'bit-equal':>10}{'1 thread /s':>13}"
          f"{'8 threads /s':>14}{'ratio':>7}  calls")  # fmt: skip
    for structure in args.only.split(",") if args.only else STRUCTURES:
        la = Laplace(net, "classification", "all", structure,
                     backend_options=OPTIONS.get(structure)).fit(loader)  # fmt: skip
        calls = {
            "glm": lambda la=la: la(x),
            "uncertainty": lambda la=la: (
                la.uncertainty(x, n_samples=20, generator=torch.Generator().manual_seed(0)).total
            ),
        }
        for name, call in calls.items():
            t0 = time.perf_counter()
            ref = call()
            # slow calls (the dense GGN's Jacobians, CG solves): about 10 s a mode
            n_calls = min(args.calls, max(5, int(10 / (N_THREADS * (time.perf_counter() - t0)))))
            _, one = _run(call, 1, N_THREADS * n_calls)  # the same calls, one thread
            got, many = _run(call, N_THREADS, n_calls)
            equal = len(got) == N_THREADS * n_calls and all(torch.equal(g, ref) for g in got)
            rate1, rate8 = N_THREADS * n_calls / one, N_THREADS * n_calls / many
            print(f"{structure:<11}{name:<12}{equal!s:>10}{rate1:>13.1f}{rate8:>14.1f}"
                  f"{rate8 / rate1:>7.2f}{N_THREADS:>4} x {n_calls}")  # fmt: skip


if __name__ == "__main__":
    main()
