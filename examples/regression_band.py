"""1-D regression: a Laplace predictive band that widens where there is no data.

What it shows:

* a small tanh MLP trained on y = sin(3x) + noise, with x drawn from two clusters and a gap
  between them;
* ``Laplace(model, "regression", "all", "full")``: the dense GGN over every weight;
* ``optimize_prior_precision(method="marglik", tune_sigma=True)`` tuning the prior precision δ
  and the noise σ together by the Laplace evidence (MacKay's fixed point is run afterwards as a
  cross-check: it should reach the same stationary point);
* the GLM predictive mean ± 2 std (σ² included) over a grid, and how much wider it is in the gap
  and outside the data than on the data.

Run it (about 10 s on two CPU cores)::

    python examples/regression_band.py [--out DIR] [--structure full|kfac] [--seed S] [--threads T]

It writes ``regression_band.png`` into ``--out`` (default: ``examples_out/`` in the system's
temporary directory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from laplacetorch import Laplace

DTYPE = torch.float64  # the inputs must have the model's dtype (the library refuses a mismatch)


def make_data(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """x from two clusters, [-2, -0.8] and [0.8, 2]; y = sin(3x) + noise."""
    half = n // 2
    left = -2.0 + 1.2 * torch.rand(half, 1, generator=generator, dtype=DTYPE)
    right = 0.8 + 1.2 * torch.rand(n - half, 1, generator=generator, dtype=DTYPE)
    x = torch.cat([left, right])
    y = torch.sin(3 * x) + noise * torch.randn(n, 1, generator=generator, dtype=DTYPE)
    return x, y


def train(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int) -> nn.Module:
    torch.manual_seed(seed)  # a script owns its process; the library never seeds globally
    model = nn.Sequential(
        nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    model = model.to(DTYPE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    return model.eval()


def plot(path: Path, x, y, grid, mean, std, f_std, sigma: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    g, m = grid.squeeze(-1).numpy(), mean.numpy()
    lo, hi = m - 2 * std.numpy(), m + 2 * std.numpy()
    ax.fill_between(g, lo, hi, color="tab:blue", alpha=0.2, label="± 2 std of y (GLM + σ²)")
    lo, hi = m - 2 * f_std.numpy(), m + 2 * f_std.numpy()
    ax.fill_between(g, lo, hi, color="tab:blue", alpha=0.35, label="± 2 std of f (GLM)")
    ax.plot(g, m, color="tab:blue", lw=2, label="predictive mean")
    ax.plot(g, torch.sin(3 * grid).squeeze(-1).numpy(), "k--", lw=1, label="sin(3x)")
    ax.scatter(x.squeeze(-1).numpy(), y.squeeze(-1).numpy(), s=8, c="k", label="training data")
    ax.set(
        xlabel="x", ylabel="y", ylim=(-3, 3), title=f"Laplace GLM predictive, tuned σ = {sigma:.3f}"
    )
    ax.legend(loc="lower left", fontsize=8)
    canvas.print_figure(path, format="png", dpi=fig.dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "examples_out"))
    parser.add_argument("--structure", default="full", choices=("full", "kfac"))
    parser.add_argument("--n", type=int, default=120, help="training points")
    parser.add_argument("--noise", type=float, default=0.1, help="true noise σ")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    # Tiny matrices: one thread avoids OpenMP hand-offs that cost more than the arithmetic and
    # that slow to a crawl when another process keeps the other core busy.
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    g = torch.Generator().manual_seed(args.seed)
    x, y = make_data(args.n, args.noise, g)
    t0 = time.perf_counter()
    model = train(x, y, args.seed, args.steps)
    print(f"trained 1-32-32-1 tanh MLP on {args.n} points in {time.perf_counter() - t0:.1f} s")
    loader = list(zip(x.split(40), y.split(40), strict=True))

    la = Laplace(model, "regression", "all", args.structure)
    t0 = time.perf_counter()
    la.fit(loader)
    t_fit = time.perf_counter() - t0
    print(
        f"fit: {args.structure} GGN over P = {la.n_params} weights, N = {la.n_data}, {t_fit:.2f} s"
    )
    lml = float(la.log_marginal_likelihood())
    print(
        f"before tuning: δ = {float(la.prior_precision):.4g}, σ = {float(la.sigma_noise):.4g}, "
        f"log evidence = {lml:.3f}"
    )

    t0 = time.perf_counter()
    res = la.optimize_prior_precision(method="marglik", tune_sigma=True)
    t_tune = time.perf_counter() - t0
    delta, sigma = float(res.prior_precision), float(res.sigma_noise)
    print(
        f"marglik: δ = {delta:.4g}, σ = {sigma:.4g} (true σ = {args.noise}), "
        f"log evidence = {res.log_marginal_likelihood:.3f}, {res.n_iter} L-BFGS iterations, "
        f"converged = {res.converged}, {t_tune * 1e3:.0f} ms"
    )

    # Cross-check: MacKay's fixed point from the same start, on a copy restored from the state
    # dict (no refit), so that `la` keeps the marglik values.
    check = Laplace(model, "regression", "all", args.structure)
    check.load_state_dict(la.state_dict())
    check.prior_precision, check.sigma_noise = 1.0, 1.0
    mk = check.optimize_prior_precision(method="mackay", tune_sigma=True)
    print(
        f"mackay:  δ = {float(mk.prior_precision):.4g}, σ = {float(mk.sigma_noise):.4g}, "
        f"log evidence = {mk.log_marginal_likelihood:.3f} ({mk.n_iter} iterations)"
    )

    grid = torch.linspace(-3.5, 3.5, 281, dtype=DTYPE).unsqueeze(-1)
    mean, f_cov = la(grid)  # GLM predictive of f: mean [B, 1], covariance [B, 1, 1], no noise
    mean, f_var = mean.squeeze(-1), f_cov.squeeze(-1).squeeze(-1)
    std, f_std = (f_var + la.sigma_noise.square()).sqrt(), f_var.sqrt()

    gs = grid.squeeze(-1)
    regions = {
        "on the data (|x| in [0.8, 2])": (gs.abs() >= 0.8) & (gs.abs() <= 2.0),
        "in the gap (|x| < 0.5)": gs.abs() < 0.5,
        "outside (|x| > 2.5)": gs.abs() > 2.5,
    }
    print(f"\n{'region':<32}{'mean std of y':>15}{'mean std of f':>15}")
    for name, mask in regions.items():
        print(f"{name:<32}{float(std[mask].mean()):>15.4f}{float(f_std[mask].mean()):>15.4f}")

    path = out / "regression_band.png"
    plot(path, x, y, grid, mean, std, f_std, sigma)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
