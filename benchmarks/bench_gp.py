"""Function-space Laplace: the Nyström error against k, and the subset-of-data GP beside
laplace-torch's FunctionalLaplace (same net, same subset, same run).

[1] digits, a 64-16-10 tanh MLP on 300 points: ``nystrom`` with k kernel eigenpairs of a
    100-point subsample against the exact ``full`` Laplace (log evidence and predictive
    variance at 200 test points), a printed table.
[2] laplace-torch's 1-D regression net (1-50-1 tanh, N = 150): ``gp`` through
    ``laplacetorch.compat.FunctionalLaplace`` and laplace-torch's, M = 50, fit and predictive
    of 500 points; their agreement and the time ratio.
Prints the load average; time on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
from common import load_digits_split, load_peer, peer_line
from torch import nn

import laplacetorch.compat as compat
from laplacetorch import Laplace
from laplacetorch.compat.curvature import BackPackGGN


def nystrom_table() -> None:
    x, y, xt, _ = load_digits_split()
    x, y, xt = x[:300].double(), y[:300], xt[:200].double()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    loader = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    t0 = time.perf_counter()
    full = Laplace(model, "classification", "all", "full", prior_precision=1.0).fit(loader)
    t_full = time.perf_counter() - t0
    ev, var = float(full.log_marginal_likelihood()), full.glm_moments(xt)[1]
    print(f"\n[1] Nyström on digits, P = {full.n_params}, N = 300, subsample 100 (float64)")
    print(f"  full: log evidence {ev:.3f}, fit {t_full:.2f} s")
    print(f"  {'k':>5} {'|Δ log ev|':>12} {'rel. var error':>15} {'fit s':>8}")
    for k in (5, 20, 50, 100, 300, 1000):
        t0 = time.perf_counter()
        la = Laplace(
            model,
            "classification",
            "all",
            "nystrom",
            prior_precision=1.0,
            backend_options={"n_eigenvalues": k, "subsample_size": 100, "seed": 0},
        ).fit(loader)
        dt = time.perf_counter() - t0
        err = float((la.glm_moments(xt)[1] - var).norm() / var.norm())
        gap = abs(float(la.log_marginal_likelihood()) - ev)
        print(f"  {k:>5} {gap:>12.4f} {err:>15.2e} {dt:>8.2f}")


def functional_against_peer(peer) -> None:
    torch.manual_seed(711)
    x = (torch.rand(150) * 8).unsqueeze(-1)
    y = torch.sin(x) + torch.randn_like(x) * 0.3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    torch.manual_seed(711)
    model = nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1000):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    model.eval()
    xt = torch.linspace(-5, 13, 500).unsqueeze(-1)
    print("\n[2] FunctionalLaplace, 1-D regression, N = 150, M = 50, 500 predictions")
    runs = [("ours", compat, BackPackGGN)]
    if peer is not None:
        from laplace.curvature import BackPackGGN as TheirGGN

        runs.append(("theirs", peer, TheirGGN))
    found = {}
    for name, lib, backend in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits, preds = [], []
            for _ in range(7):  # medians of the 6 after the first
                la = lib.FunctionalLaplace(
                    copy.deepcopy(model),
                    "regression",
                    50,
                    sigma_noise=0.3,
                    prior_precision=1.0,
                    backend=backend,
                )
                t0 = time.perf_counter()
                la.fit(loader)
                fits.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, var = la(xt)
                preds.append(time.perf_counter() - t0)
            t_fit, t_pred = statistics.median(fits[1:]), statistics.median(preds[1:])
        found[name] = (t_fit, t_pred, var.detach())
        print(f"  {name:6} fit {t_fit * 1e3:8.1f} ms  predict {t_pred * 1e3:8.1f} ms")
    if "theirs" in found:
        (f1, p1, v1), (f2, p2, v2) = found["ours"], found["theirs"]
        gap = float(((v1 - v2).abs() / v2.abs().clamp_min(1e-12)).max())
        print(
            f"  ours / theirs: fit {f1 / f2:.2f}, predict {p1 / p2:.2f}; max rel. var gap {gap:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peer = load_peer()
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    print(peer_line(peer))
    nystrom_table()
    functional_against_peer(peer)


if __name__ == "__main__":
    main()
