"""``laplacetorch select``: an MLP width chosen by the Laplace evidence, against the held-out
NLL."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import torch
from torch import nn

from ..metrics import nll
from .arguments import SEED_MAX, UsageError, _integer, _progress


def _widths(text) -> list[int]:
    if isinstance(text, str):
        items = [s.strip() for s in text.split(",")]
        try:
            widths = [int(s) for s in items]
        except ValueError:
            raise UsageError(
                f"--widths must be comma-separated positive integers; got {text!r}"
            ) from None
    else:
        widths = list(text)
    if not widths:
        raise UsageError("--widths needs at least one width")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise UsageError(f"--widths must be positive integers; got {text!r}")
    if len(set(widths)) != len(widths):
        raise UsageError(f"--widths names a width twice: {text!r}")
    return widths


def run_select(args: argparse.Namespace, out: TextIO = sys.stdout) -> list:
    """``laplacetorch select``: choose an MLP width by the evidence, against held-out NLL."""
    from tqdm.auto import tqdm

    from ..selection import select_model

    if args.task not in ("regression", "classification"):
        raise UsageError(f"unknown task {args.task!r}; expected 'regression' or 'classification'")
    widths = _widths(args.widths)
    steps = _integer("--steps", args.steps, 1)
    seed = _integer("--seed", args.seed, 0, SEED_MAX)
    progress = _progress(getattr(args, "progress", False))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if args.task == "regression":
        x = 4 * torch.rand(300, 1, generator=g) - 2
        y = torch.sin(2 * x) + 0.2 * torch.randn(300, 1, generator=g)
        (xtr, ytr), (xte, yte) = (x[:150], y[:150]), (x[150:], y[150:])
        likelihood, n_in, n_out = "regression", 1, 1
    else:
        from .. import datasets

        x, y = datasets.load_digits()
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
        (xtr, ytr), (xte, yte) = (x[:1000], y[:1000]), (x[1000:], y[1000:])
        likelihood, n_in, n_out = "classification", 64, 10
    candidates = {}
    for w in widths:
        model = nn.Sequential(nn.Linear(n_in, w), nn.Tanh(), nn.Linear(w, n_out))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in tqdm(range(steps), desc=f"train width {w}", disable=not progress, leave=False):
            opt.zero_grad()
            f = model(xtr)
            loss = (
                nn.functional.mse_loss(f, ytr)
                if likelihood == "regression"
                else nn.functional.cross_entropy(f, ytr)
            )
            loss.backward()
            opt.step()
        candidates[f"width {w}"] = model.eval()
    loader = list(zip(xtr.split(100), ytr.split(100), strict=True))
    res = select_model(candidates, likelihood, loader, hessian_structure="full", progress=progress)
    print(res.table(), file=out)
    print(f"\n{'model':<24}{'held-out NLL':>14}", file=out)
    rows = []
    for c in res.ranking:
        la = c.laplace
        pred = la(xte)  # regression: of f; the predictive of y adds σ²
        if likelihood == "regression":
            held = la.likelihood.predictive_nll(pred, yte, la.sigma_noise) / len(yte)
        else:
            held = nll(pred, yte)
        rows.append((c.name, c.log_marginal_likelihood, float(held)))
        print(f"{c.name:<24}{float(held):>14.4f}", file=out)
    best_held = min(rows, key=lambda r: r[2])[0]
    print(f"\nevidence picks {res.best.name}; held-out NLL picks {best_held}", file=out)
    return rows
