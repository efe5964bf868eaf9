"""Choosing an MLP's width by the Laplace evidence, from the training data alone.

What it shows:

* ``laplacetorch.selection.select_model``: every candidate network gets a Laplace
  approximation of the same structure, its prior precision (and, for regression, the noise σ)
  is tuned by the marginal likelihood, and the candidates are ranked by the tuned log evidence
  log p(D | M). No validation data is used;
* the check: the held-out negative log-likelihood of each candidate's Laplace predictive on
  data that selection never saw, to see whether the evidence picks a good model.

Two tasks:

1. regression, y = sin(2x) + 0.3x + noise on x in [-3, 3], one-hidden-layer tanh MLPs of several
   widths, ``hessian_structure="full"`` (dense GGN, exact evidence);
2. classification of scikit-learn's 8×8 digits (shipped with scikit-learn: no download),
   64-w-10 tanh MLPs, ``hessian_structure="kfac"`` (Kronecker factors, exact Kronecker
   eigenvalue log determinant).

Run it (about 30 s on two CPU cores)::

    python examples/model_selection.py [--out DIR] [--widths 1,2,4,16,64]
        [--digits-widths 2,8,32,128] [--seed S] [--threads T]

It writes ``model_selection.png`` (evidence per datum and held-out NLL against width) into
``--out`` (default: ``examples_out/`` in the system's temporary directory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from laplacetorch import datasets
from laplacetorch.metrics import accuracy, gaussian_nll, nll
from laplacetorch.selection import select_model


def mlp(n_in: int, width: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out))


def fit_map(model: nn.Module, x, y, loss_fn, epochs, batch, weight_decay, seed) -> nn.Module:
    """Adam on the mean loss plus an L2 penalty: the MAP under a Gaussian prior on the weights.

    For the mean cross-entropy over N examples, ``weight_decay`` = δ₀/N is the MAP of the
    summed log-likelihood under the prior N(0, 1/δ₀). The evidence then tunes δ afresh.
    """
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def regression_task(widths, seed: int):
    g = torch.Generator().manual_seed(seed)

    def sample(n):
        x = 6 * torch.rand(n, 1, generator=g) - 3
        return x, torch.sin(2 * x) + 0.3 * x + 0.2 * torch.randn(n, 1, generator=g)

    (xtr, ytr), (xte, yte) = sample(150), sample(2000)
    candidates = {}
    for w in widths:
        torch.manual_seed(seed)  # the same initial seed for every candidate
        model = fit_map(mlp(1, w, 1), xtr, ytr, nn.functional.mse_loss, 600, 150, 1e-4, seed)
        candidates[f"width {w}"] = model
    loader = list(zip(xtr.split(50), ytr.split(50), strict=True))
    result = select_model(candidates, "regression", loader, hessian_structure="full")

    def held_out(la):
        mean, f_cov = la(xte)  # GLM predictive of f (laplace-torch's convention: no noise)
        cov = f_cov + la.sigma_noise.square() * torch.eye(f_cov.shape[-1])
        with torch.no_grad():  # MAP mean with the tuned noise only
            f_map = la.model(xte)
        noise = la.sigma_noise.square().expand_as(f_map)
        return float(gaussian_nll(mean, cov, yte)), float(gaussian_nll(f_map, noise, yte)), None

    return result, held_out, len(ytr)


def digits_task(widths, seed: int):
    x, y = datasets.load_digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[1000:], y[1000:]
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    candidates = {}
    for w in widths:
        torch.manual_seed(seed)
        # weight decay 1e-2 = δ₀/N with δ₀ = 10: without it the wide nets drive the training
        # loss to ~0, the GGN vanishes and every posterior falls back to the prior.
        ce = nn.functional.cross_entropy
        model = fit_map(mlp(64, w, 10), xtr, ytr, ce, 40, 100, 1e-2, seed)
        candidates[f"width {w}"] = model
    loader = list(zip(xtr.split(250), ytr.split(250), strict=True))
    result = select_model(candidates, "classification", loader, hessian_structure="kfac")

    def held_out(la):
        probs = la(xte, link_approx="probit")
        with torch.no_grad():
            p_map = torch.softmax(la.model(xte), -1)
        return float(nll(probs, yte)), float(nll(p_map, yte)), accuracy(probs, yte)

    return result, held_out, len(ytr)


def report(title: str, result, held_out, n_train: int) -> dict[str, tuple[int, float, float]]:
    print(f"\n=== {title}")
    print(result.table())
    print(
        f"\n{'model':<14}{'log p(D|M)/N':>14}{'held-out NLL':>14}{'(MAP NLL)':>12}"
        f"{'held-out acc':>14}"
    )
    rows = {}
    for c in result.ranking:
        held, held_map, acc = held_out(c.laplace)
        width = int(c.name.split()[-1])
        rows[c.name] = (width, c.log_marginal_likelihood / n_train, held)
        acc_s = f"{acc:>14.4f}" if acc is not None else ""
        print(
            f"{c.name:<14}{c.log_marginal_likelihood / n_train:>14.4f}{held:>14.4f}"
            f"{held_map:>12.4f}{acc_s}"
        )
    best_held = min(rows, key=lambda k: rows[k][2])
    print(f"evidence picks {result.best.name}; held-out NLL picks {best_held}")
    return rows


def plot(path: Path, panels: dict[str, dict[str, tuple[int, float, float]]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=110, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (title, rows) in zip(axes, panels.items(), strict=True):
        pts = sorted(rows.values())
        widths = [p[0] for p in pts]
        ax.plot(widths, [-p[1] for p in pts], "o-", label="−log p(D|M) / N (train only)")
        ax.plot(widths, [p[2] for p in pts], "s--", label="held-out NLL per datum")
        ax.set(xscale="log", xlabel="hidden width", title=title)
        ax.legend(fontsize=8)
    canvas.print_figure(path, format="png", dpi=fig.dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "examples_out"))
    parser.add_argument("--widths", default="1,2,4,16,64", help="regression candidates")
    parser.add_argument("--digits-widths", default="2,8,32,128", help="digits candidates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # small nets: one thread beats OpenMP hand-offs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    widths = [int(w) for w in args.widths.split(",")]
    reg = report("regression, full GGN", *regression_task(widths, args.seed))
    widths = [int(w) for w in args.digits_widths.split(",")]
    cls = report("digits, KFAC", *digits_task(widths, args.seed))
    path = out / "model_selection.png"
    plot(path, {"regression (full)": reg, "digits (kfac)": cls})
    print(f"\nwrote {path} ({time.perf_counter() - t0:.1f} s in all)")


if __name__ == "__main__":
    main()
