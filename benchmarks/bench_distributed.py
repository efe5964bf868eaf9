"""A 2-rank data-parallel fit against 1 rank on the same machine (gloo on loopback).

Each rank runs one torch thread and fits on its half of 1,500 digits (a 64-256-256-10 MLP);
the time is the slowest rank's, between barriers, median of ``--repeats``. On a 2-core
machine two ranks share the cores the one rank could use with two threads, so the ratio is
printed against both a 1-thread and a 2-thread single process.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import data_loader, load_digits_split, make_mlp, train
from torch.utils.data import Subset, TensorDataset

from laplacetorch import Laplace


def _model():
    x, y, _, _ = load_digits_split()
    model = make_mlp(256, 0)
    train(model, x, y, 5, seed=1)
    return model.eval(), x, y


def _fit_time(model, loader, structure, repeats):
    times = []
    for _ in range(repeats + 1):
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        Laplace(model, "classification", "all", structure).fit(loader)
        if dist.is_initialized():
            dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _worker(rank, world, port, out, structure, repeats):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    model, x, y = _model()
    shard = Subset(TensorDataset(x, y), range(rank, len(y), world))
    loader = torch.utils.data.DataLoader(shard, batch_size=128)
    t = _fit_time(model, loader, structure, repeats)
    torch.save(t, os.path.join(out, f"{rank}.pt"))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    model, x, y = _model()
    for structure in ("kfac", "diag", "ekfac"):
        single = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            single[threads] = _fit_time(model, data_loader(x, y), structure, args.repeats)
        with tempfile.TemporaryDirectory() as out, socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            mp.start_processes(
                _worker,
                args=(2, port, out, structure, args.repeats),
                nprocs=2,
                start_method="spawn",
            )
            two = max(torch.load(os.path.join(out, f"{r}.pt")) for r in range(2))
        print(
            f"{structure:5}: 1 rank {single[1] * 1e3:7.1f} ms (1 thread), "
            f"{single[2] * 1e3:7.1f} ms (2 threads); 2 ranks × 1 thread {two * 1e3:7.1f} ms; "
            f"2 ranks / 1 rank: {two / single[1]:.2f} (vs 1 thread), {two / single[2]:.2f} "
            "(vs 2 threads)"
        )


if __name__ == "__main__":
    main()
