"""A noise per output (``sigma_noise`` of shape [C]) on a trained MLP: σ recovered, NLL, cost.

Issue 32, item 2. Data: x uniform on [−1, 1]⁸, C = 4 outputs y_c = sin(3a_cᵀx) + (b_cᵀx)² +
σ_c ε with σ = (0.1, 0.25, 0.5, 1.0), N = 8000 training and 2000 test points; an 8-64-64-4
tanh MLP trained by Adam on the per-output Gaussian NLL with σ learnt jointly (the MAP of a
user who models the noise per output), plus the weight decay of the prior.

For ``kfac`` on all weights and ``full`` on the last layer, printed:
- each σ_c tuned by marglik and by MacKay (``tune_sigma=True``) against the truth (target:
  within 5 %), and marglik against MacKay; beside them the MAP's training and held-out RMS
  per output (the net's own error is in every residual: σ̂ recovers the truth only as far as
  the MAP does);
- the held-out NLL per point of the GLM predictive with one σ per output against the best
  fit with one σ for all outputs (both tuned by marglik);
- the fit's cost: C passes over the data (one per output's curvature) against the fit with
  one σ, as a ratio, and the peak memory.

Usage::

    python benchmarks/bench_per_output_noise.py [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

import torch
from torch import Tensor, nn

from laplacetorch import Laplace

SIGMA = torch.tensor([0.1, 0.25, 0.5, 1.0])
N_TRAIN, N_TEST, DIM = 8000, 2000, 8
DELTA = 1.0  # the prior precision of the MAP's weight decay


def make_data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(len(SIGMA), DIM, generator=g) / math.sqrt(DIM)
    b = torch.randn(len(SIGMA), DIM, generator=g) / math.sqrt(DIM)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = 2 * torch.rand(n, DIM, generator=g) - 1
        mean = torch.sin(3 * x @ a.T) + (x @ b.T).square()
        return x, mean + SIGMA * torch.randn(n, len(SIGMA), generator=g)

    return (*draw(N_TRAIN), *draw(N_TEST))


def train(x: Tensor, y: Tensor, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(DIM, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                        nn.Linear(64, len(SIGMA)))  # fmt: skip
    log_sigma = torch.zeros(len(SIGMA), requires_grad=True)
    opt = torch.optim.Adam([*net.parameters(), log_sigma], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    n = len(x)
    for _ in range(3000):
        idx = torch.randint(0, n, (512,))
        r = y[idx] - net(x[idx])
        nll = (0.5 * r.square() * torch.exp(-2 * log_sigma) + log_sigma).sum(-1).mean()
        decay = 0.5 * DELTA * sum(p.square().sum() for p in net.parameters()) / n
        opt.zero_grad()
        (nll + decay).backward()
        opt.step()
        sched.step()
    return net


def loader(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + 500], y[i : i + 500]) for i in range(0, len(x), 500)]


def held_out_nll(la: Laplace, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        mean, var = la(x)
    return float(la.likelihood.predictive_nll((mean, var), y, la.sigma_noise)) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}")
    x, y, xt, yt = make_data(args.seed)
    t0 = time.perf_counter()
    net = train(x, y, args.seed)
    print(f"trained in {time.perf_counter() - t0:.1f} s; true σ = {SIGMA.tolist()}")
    with torch.no_grad():  # the MAP's own error: what σ̂ can be at most as close as
        for name, (xs, ys) in (("train", (x, y)), ("held-out", (xt, yt))):
            rms = (ys - net(xs)).square().mean(0).sqrt()
            print(f"MAP {name} RMS per output " + " ".join(f"{v:.4f}" for v in rms.tolist()))
    data = loader(x, y)
    for subset, structure in (("all", "kfac"), ("last_layer", "full")):
        tuned, times = {}, {}
        for method in ("marglik", "mackay"):
            la = Laplace(net, "regression", subset, structure,
                         sigma_noise=torch.ones(len(SIGMA)), prior_precision=DELTA)  # fmt: skip
            t0 = time.perf_counter()
            la.fit(data)
            times["per output"] = time.perf_counter() - t0
            result = la.optimize_prior_precision(method=method, tune_sigma=True)
            tuned[method] = la.sigma_noise.clone()
            rel = (la.sigma_noise / SIGMA - 1).abs()
            print(f"{subset:>10} {structure:<5} {method:<8} σ = "
                  + " ".join(f"{v:.4f}" for v in la.sigma_noise.tolist())
                  + f"  max |σ̂/σ − 1| = {float(rel.max()):.3f} (target < 0.05: "
                  + f"{'met' if float(rel.max()) < 0.05 else 'MISSED'}), converged "
                  + f"{result.converged}")  # fmt: skip
        per_nll = held_out_nll(la, xt, yt)
        one = Laplace(net, "regression", subset, structure, prior_precision=DELTA)
        t0 = time.perf_counter()
        one.fit(data)
        times["one σ"] = time.perf_counter() - t0
        one.optimize_prior_precision(method="marglik", tune_sigma=True)
        one_nll = held_out_nll(one, xt, yt)
        gap = float((tuned["marglik"] / tuned["mackay"] - 1).abs().max())
        print(f"{'':>16} marglik vs MacKay: max relative gap {gap:.1e}")
        print(
            f"{'':>16} held-out NLL/pt: one σ per output {per_nll:.4f}, one σ "
            f"({float(one.sigma_noise):.3f}) {one_nll:.4f}: {one_nll - per_nll:+.4f} nats"
        )
        print(
            f"{'':>16} fit {times['per output']:.2f} s vs {times['one σ']:.2f} s with one σ "
            f"({times['per output'] / times['one σ']:.1f}x; C = {len(SIGMA)} passes)"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
