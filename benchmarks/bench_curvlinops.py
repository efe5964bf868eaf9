"""curvlinops as a second yardstick: KFAC / EKFAC fits, GGN-vector products and the
KFAC log-determinant on the same net and data (no downloads).

The net is the 64-256-256-10 ReLU MLP of the other benchmarks on sklearn's digits (1500
train, float32, trained briefly with Adam); every timing uses the same unshuffled loader
(batch 128) and is a median over rounds that go round-robin (ours, theirs, the gradient
epoch) so load on a shared machine hits all alike. curvlinops-for-pytorch 3.x is an optional
peer (``pip install -c requirements/constraints.txt curvlinops-for-pytorch``), never a
dependency; without it only our side is printed.

Rows:
- KFAC fit (type-2 Fisher, [W | b] one block, "expand"): ours ``Laplace(..., "kfac").fit``
  against ``KFACLinearOperator(...).compute_kronecker_factors()``; target ratio ≤ 1.
- EKFAC fit: ours ``"ekfac"`` against ``EKFACLinearOperator`` (factors, eigenbases and the
  eigenvalue refit).
- GGN-vector products, 8 vectors: ours ``GGNOperator.matvec`` on ``[8, P]`` against
  ``GGNLinearOperator @ V`` with V ``[P, 8]``; both are also timed against one gradient epoch.
- log det of the KFAC posterior precision at δ = 1 (s = 1): ours is exact for
  A ⊗ B + δI (Σ log(λᵢᴬλⱼᴮ + δ) per block); curvlinops' KFAC has no prior, and the usual
  damped-factor inverse's log det, log det((A + √δ I) ⊗ (B + √δ I)), is computed from its
  own factors. Printed: both values and their difference (the factors agree first: the
  relative difference of the Kronecker factors is printed).

Usage::

    python benchmarks/bench_curvlinops.py [--repeats R] [--threads T] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch
from common import (
    SEED,
    data_loader,
    gradient_epoch,
    load_digits_split,
    make_mlp,
    n_params,
    round_robin,
    train,
)
from torch import nn

from laplacetorch import Laplace, get_likelihood
from laplacetorch.curvature.ggn_operator import GGNOperator
from laplacetorch.params import ParameterSubset

DELTA = 1.0
N_VECTORS = 8


def _peer():
    try:
        import curvlinops
    except ImportError:
        return None
    return curvlinops


def _their_kfac_logdet(op, delta: float) -> float:
    """log det((A + √δ I) ⊗ (B + √δ I)) over curvlinops' blocks, from its factors."""
    total = 0.0
    root = delta**0.5
    for name, a in op._input_covariances.items():
        b = op._gradient_covariances[name]
        la = torch.linalg.eigvalsh(a.double()) + root
        lb = torch.linalg.eigvalsh(b.double()) + root
        total += float(b.shape[0] * la.log().sum() + a.shape[0] * lb.log().sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"load average {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}")
    x, y, _, _ = load_digits_split()
    model = make_mlp(256, SEED)
    train(model, x, y, args.epochs, SEED)
    loader = data_loader(x, y)
    params = list(model.parameters())
    p = n_params(model)
    print(f"64-256-256-10 MLP, P = {p}, N = {len(x)}, batch 128")
    cl = _peer()
    if cl is None:
        print("  theirs: curvlinops-for-pytorch is not installed; ours only")
    loss = nn.CrossEntropyLoss(reduction="sum")
    v = torch.randn(N_VECTORS, p, generator=torch.Generator().manual_seed(1))
    ggn = GGNOperator(ParameterSubset(model, "all"), get_likelihood("classification"), loader)
    fns = {
        "gradient epoch": lambda: gradient_epoch(model, loader),
        "ours kfac": lambda: Laplace(model, "classification", "all", "kfac").fit(loader),
        "ours ekfac": lambda: Laplace(model, "classification", "all", "ekfac").fit(loader),
        "ours GGN @ 8": lambda: ggn.matvec(v),
    }
    theirs = {}
    if cl is not None:
        common = {"check_deterministic": False}

        def their_kfac():
            op = cl.KFACLinearOperator(
                model, loss, params, loader, fisher_type="type-2",
                separate_weight_and_bias=False, **common,
            )  # fmt: skip
            op.compute_kronecker_factors()
            theirs["kfac"] = op

        def their_ekfac():
            op = cl.EKFACLinearOperator(
                model, loss, params, loader, fisher_type="type-2",
                separate_weight_and_bias=False, **common,
            )  # fmt: skip
            op.compute_kronecker_factors()
            op.compute_eigenvalue_correction()

        their_ggn = cl.GGNLinearOperator(model, loss, params, loader, **common)
        fns |= {
            "theirs kfac": their_kfac,
            "theirs ekfac": their_ekfac,
            "theirs GGN @ 8": lambda: their_ggn @ v.T.contiguous(),
        }
    times = round_robin(fns, args.repeats)
    med = {k: statistics.median(t) for k, t in times.items()}
    epoch = med["gradient epoch"]
    print(
        f"\n{'step':<16} {'ours s':>9} {'/ epoch':>8} {'theirs s':>9} {'/ epoch':>8} "
        f"{'ours/theirs':>11}  target"
    )
    for what, target in (("kfac", "≤ 1"), ("ekfac", "–"), ("GGN @ 8", "–")):
        ours = med[f"ours {what}"]
        row = f"{what:<16} {ours:9.3f} {ours / epoch:8.2f}"
        if f"theirs {what}" in med:
            th = med[f"theirs {what}"]
            row += f" {th:9.3f} {th / epoch:8.2f} {ours / th:11.2f}  {target}"
        print(row)
    print(f"(one gradient epoch: {epoch:.3f} s)")
    la = Laplace(model, "classification", "all", "kfac").fit(loader)
    ours_ld = float(la.structure.logdet(DELTA, 1.0))
    print(f"\nlog det(Π) at δ = {DELTA}: ours (exact for the KFAC Π) {ours_ld:.3f}")
    if cl is not None:
        op = theirs["kfac"]
        their_ld = _their_kfac_logdet(op, DELTA)
        print(
            f"  curvlinops' factors, damped-factor inverse's log det {their_ld:.3f} "
            f"(differs by {their_ld - ours_ld:+.3f} nats)"
        )
        _compare_factors(la, op)


def _compare_factors(la: Laplace, op) -> None:
    """The largest relative difference of the Kronecker factors' spectra (a check that both
    sides factor the same curvature before their log dets are compared)."""
    ours = sorted(
        (float(blk.lb.max() * blk.la.max()) for _, _, blk in la.structure.blocks), reverse=True
    )
    theirs = sorted(
        (
            float(torch.linalg.eigvalsh(op._gradient_covariances[k].double()).max()
                  * torch.linalg.eigvalsh(a.double()).max())
            for k, a in op._input_covariances.items()
        ),
        reverse=True,
    )  # fmt: skip
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(ours, theirs, strict=True))
    print(f"  largest eigenvalue of each block, max relative difference ours vs theirs {worst:.2e}")


if __name__ == "__main__":
    main()
