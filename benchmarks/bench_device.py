"""Fit and predictive throughput on the available accelerator beside the CPU.

On a machine with CUDA (lent through the ``device`` tool) it times, on the GPU and on the CPU
in the same run, the fit of ``kfac``, ``diag`` and a last-layer ``full`` Laplace on a
64-1024-256-10 MLP over 20,000 synthetic digits-shaped inputs, and the probit predictive of
10,000 inputs; it prints examples per second and the GPU / CPU ratio. Without CUDA it prints
the CPU figures only. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplacetorch import Laplace


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(device: torch.device, n: int, n_pred: int, repeats: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        .to(device)
        .eval()
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=512)
    out = {}
    for subset, structure in (("all", "kfac"), ("all", "diag"), ("last_layer", "full")):
        la = Laplace(model, "classification", subset, structure)
        out[f"fit {subset} {structure}"] = n / _median(
            lambda la=la: la.fit(loader), device, repeats
        )
        out[f"predict {subset} {structure}"] = n_pred / _median(
            lambda la=la, xp=x[:n_pred]: la(xp), device, repeats
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--n-pred", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = run(torch.device("cpu"), args.n, args.n_pred, args.repeats)
    gpu = None
    if torch.cuda.is_available():
        gpu = run(torch.device("cuda"), args.n, args.n_pred, args.repeats)
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"CPU threads: {torch.get_num_threads()}")
    print(f"{'task':28} {'CPU ex/s':>12} {'GPU ex/s':>12} {'GPU/CPU':>8}")
    for k, v in cpu.items():
        g = f"{gpu[k]:12.0f} {gpu[k] / v:8.1f}" if gpu else f"{'—':>12} {'—':>8}"
        print(f"{k:28} {v:12.0f} {g}")


if __name__ == "__main__":
    main()
