"""marglik_training: evidence per epoch, the selected prior and σ, and time per epoch beside
laplace-torch's ``marglik_training`` on the same model in the same run.

Two tasks: laplace-torch's 1-D sinusoid regression (a 1-50-1 tanh MLP, ``full``, scalar
prior) and digits classification (a 64-width-width-10 ReLU MLP, KFAC, layerwise prior). Ours
runs through ``laplacetorch.compat.marglik_training`` with laplace-torch's arguments, theirs
with its BackPACK GGN backend; the two alternate epoch budgets so that load hits both alike.
Prints the load average; time on a quiet machine (or compare with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import torch
from common import data_loader, load_digits_split, load_peer, make_mlp, peer_line
from torch import nn

import laplacetorch.compat as compat
from laplacetorch.compat.curvature import BackPackGGN


def sinusoid(n: int = 150, seed: int = 711):
    """laplace-torch's regression example data (150 points, σ = 0.3)."""
    torch.manual_seed(seed)
    x = (torch.rand(n) * 8).unsqueeze(-1)
    y = torch.sin(x) + torch.randn_like(x) * 0.3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)


def sinusoid_model() -> nn.Module:
    torch.manual_seed(711)
    return nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 1))


def run(lib, backend, model, loader, likelihood, structure, epochs, prior_structure, **kw):
    """One marglik_training run; returns (la, margliks, losses, seconds per epoch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        la, _, margliks, losses = lib.marglik_training(
            model=model,
            train_loader=loader,
            likelihood=likelihood,
            hessian_structure=structure,
            backend=backend,
            n_epochs=epochs,
            optimizer_kwargs={"lr": 1e-2},
            prior_structure=prior_structure,
            **kw,
        )
        return la, margliks, losses, (time.perf_counter() - t0) / epochs


def report(name, ours, theirs, n_hyper) -> None:
    la, ml, _, per_epoch = ours
    print(f"\n[{name}]")
    print(f"  ours   {per_epoch * 1e3:8.2f} ms/epoch  −log evidence {ml[-1]:.3f}")
    marks = [ml[i] for i in range(n_hyper - 1, len(ml), max(n_hyper, len(ml) // 5))]
    every = ", ".join(f"{-m:.1f}" for m in marks)
    print(f"         log evidence along training (every ~{len(ml) // 5} steps): {every}")
    print(f"         σ = {float(la.sigma_noise):.4f}, δ = {_short(la.prior_precision)}")
    if theirs is None:
        return
    la2, ml2, _, per_epoch2 = theirs
    print(f"  theirs {per_epoch2 * 1e3:8.2f} ms/epoch  −log evidence {ml2[-1]:.3f}")
    print(f"         σ = {float(la2.sigma_noise):.4f}, δ = {_short(la2.prior_precision)}")
    d1, d2 = la.prior_precision.detach().double(), la2.prior_precision.detach().double()
    gap = float(((d1 - d2).abs() / d2).max())
    ratio = per_epoch / per_epoch2
    print(f"  ours / theirs time per epoch: {ratio:.2f}; max relative δ gap {gap:.1e}")


def _short(delta: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in delta.detach().reshape(-1).tolist()[:6]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per task (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peer = load_peer()
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    print(peer_line(peer))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports dynamo (~1 s)
    if peer is not None:
        from laplace.curvature import BackPackGGN as TheirGGN

    loader = sinusoid()
    ours = run(
        compat, BackPackGGN, sinusoid_model(), loader, "regression", "full", args.epochs, "scalar"
    )
    theirs = None
    if peer is not None:
        theirs = run(
            peer, TheirGGN, sinusoid_model(), loader, "regression", "full", args.epochs, "scalar"
        )
    report("1-D regression, full, scalar prior", ours, theirs, 10)

    x_tr, y_tr, _, _ = load_digits_split()
    digits = data_loader(x_tr, y_tr)
    base = make_mlp(64, 0)
    epochs = max(1, args.epochs // 5)
    ours = run(
        compat,
        BackPackGGN,
        copy.deepcopy(base),
        digits,
        "classification",
        "kron",
        epochs,
        "layerwise",
    )
    theirs = None
    if peer is not None:
        theirs = run(
            peer,
            TheirGGN,
            copy.deepcopy(base),
            digits,
            "classification",
            "kron",
            epochs,
            "layerwise",
        )
    report(f"digits, 64-64-64-10 MLP, KFAC, layerwise prior, {epochs} epochs", ours, theirs, 10)


if __name__ == "__main__":
    main()
