"""Memory caught up front at real size (issue 31): a V = 50,257 sequence head.

A GPT-2-sized output without a download: token ids ``[B, T]`` -> a frozen embedding
``[V, d]`` -> a Bayesian adapter ``Linear(d, d)`` (as LoRA adapters are the Bayesian
weights) -> tanh -> a frozen head ``Linear(d, V)`` -> logits ``[B, T, V]``, with
``outputs="sequence"`` (C = T·V = 3,216,448 outputs per example at T = 64).

It shows, under the default memory limit (80% of what is available):

1. exact-Fisher KFAC refused on its first batch, before any output column is formed (the
   square root alone would be B·T·V² elements), with the bytes and what fits;
2. the MC-Fisher KFAC fit that message suggests, run;
3. the default GLM predictive refused before any Jacobian (a ``[T·V, T·V]`` covariance per
   example), with what fits; and the ``nn`` predictive it suggests, run on one example.

It prints each step's wall time, the process's peak resident memory (``ru_maxrss``) after
each step, and the load average (the machine may be shared).

Usage::

    python benchmarks/bench_memory_precheck.py [--batch 8] [--positions 64] [--width 32]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import time
import warnings

import torch
from torch import nn

from laplacetorch import Laplace
from laplacetorch.memory import MemoryBudgetError

VOCAB = 50_257


class AdapterLM(nn.Module):
    """ids ``[B, T]`` -> logits ``[B, T, V]``; only ``adapter`` is Bayesian."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.adapter = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)
        for p in (*self.embed.parameters(), *self.head.parameters()):
            p.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.adapter(self.embed(ids))))


def _peak() -> str:
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"


def _refused(what: str, call) -> str:
    t0 = time.perf_counter()
    try:
        call()
    except MemoryBudgetError as err:
        dt = time.perf_counter() - t0
        print(f"{what}: refused in {dt:.3f} s ({_peak()})\n  MemoryBudgetError: {err}\n")
        return str(err)
    raise SystemExit(f"{what} was not refused")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--positions", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    model = AdapterLM(args.width).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, args.batch, args.positions), generator=g)
    data = [(ids[0], ids[1])]
    print(
        f"V = {VOCAB}, T = {args.positions}, B = {args.batch}, d = {args.width}; "
        f"load average {os.getloadavg()}; {_peak()} at the start\n"
    )
    warnings.simplefilter("ignore")

    exact = Laplace(model, "classification", "all", "kfac", outputs="sequence")
    _refused("kfac, fisher_type='exact'", lambda: exact.fit(data))

    la = Laplace(model, "classification", "all", "kfac", fisher_type="mc", outputs="sequence")
    t0 = time.perf_counter()
    la.fit(data)
    print(f"kfac, fisher_type='mc': fitted in {time.perf_counter() - t0:.2f} s ({_peak()})\n")

    msg = _refused("the default glm predictive la(x)", lambda: la(ids[0]))
    s = re.search(r"n_samples=(\d+)", msg)
    n = min(int(s.group(1)), 10) if s else 10
    t0 = time.perf_counter()
    probs = la(ids[0][:1], pred_type="nn", n_samples=n)
    print(
        f"la(x[:1], pred_type='nn', n_samples={n}): {list(probs.shape)} in "
        f"{time.perf_counter() - t0:.2f} s ({_peak()})"
    )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
