"""Heteroscedastic regression: the network learns the noise, Laplace adds the epistemic part.

What it shows:

* 1-D data whose noise grows across x: y = sin(2x) + 0.3x + σ(x)ε with σ(x) rising linearly
  from 0.09 (x = −2.5) to 0.46 (x = 2.5);
* a 1-32-32-2 tanh MLP trained with the heteroscedastic negative log-likelihood in natural
  parameters (outputs [η₁ | log precision], η₁ = μ/σ²) plus the weight decay of a Gaussian
  prior of precision δ (the MAP objective that the Laplace approximation expands);
* ``Laplace(net, "heteroscedastic_regression", "all", structure)`` for ``"full"`` (the dense
  GGN) and ``"kfac"``, with δ tuned by marglik; ``la(x)`` gives E[y] and Var[y] with the
  noise included and ``la.uncertainty(x)`` splits Var[y] into the aleatoric E[σ²(x)] and the
  epistemic Var[μ(x)];
* the baseline: the same net with one output trained by mean squared error, and
  ``Laplace(net, "regression", ...)`` with δ and one σ tuned by marglik (``tune_sigma=True``);
* held-out negative log-likelihood per point and the coverage of the 90 % predictive interval
  in each third of the test inputs ordered by the true noise: the homoscedastic band is too
  wide where the noise is low and too narrow where it is high; the heteroscedastic one is
  right in each third.

Run it (about 15 s on two CPU cores)::

    python examples/heteroscedastic_regression.py [--out DIR] [--structures full,kfac]
        [--n 400] [--steps 3000] [--seed S] [--threads T]

It writes ``heteroscedastic_regression.png`` (predictive mean, aleatoric and epistemic bands
against the true mean and noise) into ``--out`` (default: ``examples_out/`` in the system's
temporary directory). ``benchmarks/bench_heteroscedastic.py`` runs the same recipe on 8-D and
image data.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from laplacetorch import Laplace

DTYPE = torch.float64  # the inputs must have the model's dtype (the library refuses a mismatch)
Z90 = 1.6448536269514722  # the 95 % quantile of N(0, 1): mean ± Z90·sd is a 90 % interval
X_RANGE = (-2.5, 2.5)
NOISE_RANGE = (0.09, 0.46)


# ----------------------------------------------------------------------------- data
def true_mean(x: Tensor) -> Tensor:
    """E[y | x] = sin(2x) + 0.3x, ``[N]`` from ``x`` ``[N, 1]``."""
    return torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0]


def true_noise(x: Tensor, heteroscedastic: bool = True) -> Tensor:
    """σ(x) ``[N]``: linear from 0.09 to 0.46 across ``X_RANGE`` (constant 0.25 otherwise)."""
    if not heteroscedastic:
        return torch.full_like(x[:, 0], 0.25)
    lo, hi = X_RANGE
    return NOISE_RANGE[0] + (NOISE_RANGE[1] - NOISE_RANGE[0]) * (x[:, 0] - lo) / (hi - lo)


def make_data(
    n: int, generator: torch.Generator, heteroscedastic: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [N, 1], y [N], σ(x) [N])`` with x uniform on ``X_RANGE``."""
    lo, hi = X_RANGE
    x = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=DTYPE)
    sd = true_noise(x, heteroscedastic)
    y = true_mean(x) + sd * torch.randn(n, generator=generator, dtype=DTYPE)
    return x, y, sd


# ----------------------------------------------------------------------------- training
def mlp(
    d_in: int, d_out: int, width: int = 32, depth: int = 2, seed: int = 0, dtype=DTYPE
) -> nn.Module:
    """A tanh MLP d_in-width-...-width-d_out (``depth`` hidden layers) in ``dtype``."""
    torch.manual_seed(seed)  # a script owns its process; the library never seeds globally
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers).to(dtype)


def heteroscedastic_nll(f: Tensor, y: Tensor) -> Tensor:
    """−log N(y | μ, σ²) per point ``[N]`` for outputs ``f = [η₁ | log(1/σ²)]`` ``[N, 2]``:
    −η₁y − η₂y² + A(η) + ½ log 2π with η₂ = −½ e^{f₂}, A(η) = −η₁²/(4η₂) − ½ log(−2η₂)."""
    f1, f2 = f[:, 0], f[:, 1]
    return (
        -f1 * y
        + 0.5 * torch.exp(f2) * y.square()
        + 0.5 * f1.square() * torch.exp(-f2)
        - 0.5 * f2
        + 0.5 * math.log(2 * math.pi)
    )


def squared_error(f: Tensor, y: Tensor) -> Tensor:
    """½ (y − f)² per point: the Gaussian NLL at σ = 1 up to a constant."""
    return 0.5 * (f[:, 0] - y).square()


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    prior_precision: float,
    steps: int,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Adam with a cosine schedule on the MAP objective per point,
    mean(loss) + δ/(2N)·‖θ‖² (``batch_size`` None: full batch)."""
    n = x.shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = slice(None) if batch_size is None else torch.randint(n, (batch_size,), generator=g)
        opt.zero_grad()
        penalty = sum(p.square().sum() for p in model.parameters())
        (loss(model(x[idx]), y[idx]).mean() + prior_precision / (2 * n) * penalty).backward()
        opt.step()
        sched.step()
    return model.eval()


# ----------------------------------------------------------------------------- Laplace
def batches(x: Tensor, y: Tensor, size: int = 256) -> list[tuple[Tensor, Tensor]]:
    return list(zip(x.split(size), y.split(size), strict=True))


def fit_heteroscedastic(model: nn.Module, loader, structure: str = "kfac") -> Laplace:
    """The heteroscedastic Laplace over all weights, δ tuned by marglik (no σ: it is the
    network's)."""
    la = Laplace(model, "heteroscedastic_regression", "all", structure)
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    return la


def fit_homoscedastic(model: nn.Module, loader, structure: str = "kfac") -> Laplace:
    """The homoscedastic Laplace over all weights, δ and σ tuned by marglik together."""
    la = Laplace(model, "regression", "all", structure)
    la.fit(loader)
    la.optimize_prior_precision(method="marglik", tune_sigma=True)
    return la


def train_at_evidence(
    make_net: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    heteroscedastic: bool,
    delta: float,
    rounds: int,
    loader,
    structure: str = "kfac",
    **train_kwargs,
) -> tuple[list[tuple[float, nn.Module]], Laplace]:
    """Train the MAP at the prior the evidence picks: train at ``delta``, fit the Laplace
    (δ, and σ for the homoscedastic net, tuned by marglik, scalar prior), retrain from the
    same initialisation at the tuned prior, ``rounds`` times; returns every round's
    ``(training δ, net)`` (δ in the loss's own units) and the last net's Laplace.

    The MAP objective is per point mean(NLL) + δ/(2N)·‖θ‖². The heteroscedastic loss is the
    NLL itself, so its training δ is the evidence's δ; the homoscedastic net is trained on
    ½(y − f)² = σ²·NLL + const, so its training δ is δ̂·σ̂². Training at a δ the evidence
    then moves by a factor of 3–300 (the 8-D and image problems) leaves a MAP that is not
    the mode the Laplace approximation expands around: an over- or under-fitted mean whose
    error the linearised posterior then inflates the epistemic variance to cover.
    """
    loss = heteroscedastic_nll if heteroscedastic else squared_error
    fit = fit_heteroscedastic if heteroscedastic else fit_homoscedastic
    nets = []
    for _ in range(rounds + 1):
        net = train(make_net(), x, y, loss, delta, **train_kwargs)
        nets.append((delta, net))
        la = fit(net, loader, structure)
        delta = float(la.prior_precision)
        if not heteroscedastic:
            delta *= float(la.sigma_noise) ** 2
    return nets, la


@dataclass
class Predictive:
    """A Gaussian predictive of y per point, ``[N]`` each: the mean, the total variance and its
    aleatoric (noise) and epistemic (weights) parts."""

    mean: Tensor
    var: Tensor
    aleatoric: Tensor
    epistemic: Tensor


@torch.no_grad()
def predict(la: Laplace, x: Tensor, size: int = 1024) -> Predictive:
    """``la.uncertainty`` over ``x`` in chunks; one target (D = 1)."""
    parts = [la.uncertainty(xb) for xb in x.split(size)]
    cat = [torch.cat([getattr(u, k) for u in parts])[:, 0] for k in ("mean", "aleatoric",
                                                                     "epistemic")]  # fmt: skip
    mean, aleatoric, epistemic = cat
    return Predictive(mean, aleatoric + epistemic, aleatoric, epistemic)


@dataclass
class Scores:
    """Held-out figures: the Gaussian NLL per point (all, and per third of the inputs ordered
    by the true noise) and the coverage of the 90 % interval mean ± 1.645 sd per third."""

    nll: float
    nll_thirds: list[float]
    coverage: float
    coverage_thirds: list[float]


def scores(pred: Predictive, y: Tensor, noise_sd: Tensor) -> Scores:
    nll = 0.5 * ((y - pred.mean).square() / pred.var + pred.var.log() + math.log(2 * math.pi))
    inside = ((y - pred.mean).abs() <= Z90 * pred.var.sqrt()).to(y.dtype)
    thirds = noise_sd.argsort().tensor_split(3)
    return Scores(
        float(nll.mean()),
        [float(nll[t].mean()) for t in thirds],
        float(inside.mean()),
        [float(inside[t].mean()) for t in thirds],
    )


def score_line(name: str, s: Scores) -> str:
    nll = " ".join(f"{v:7.3f}" for v in s.nll_thirds)
    cov = " ".join(f"{v:5.2f}" for v in s.coverage_thirds)
    return f"{name:<26}{s.nll:8.3f}   {nll}   {cov}"


SCORE_HEADER = f"{'':<26}{'NLL':>8}   {'NLL per third (low → high σ)':<23}   90 % coverage, thirds"


# ----------------------------------------------------------------------------- plot
def plot(path: Path, x, y, grid: Tensor, pred: Predictive, hom: Predictive, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    g = grid[:, 0].numpy()
    m = pred.mean.numpy()
    sd_total, sd_ale = pred.var.sqrt().numpy(), pred.aleatoric.sqrt().numpy()
    left.fill_between(g, m - Z90 * sd_total, m + Z90 * sd_total, color="tab:orange",
                      alpha=0.35, label="90 %: aleatoric + epistemic")  # fmt: skip
    left.fill_between(g, m - Z90 * sd_ale, m + Z90 * sd_ale, color="tab:blue", alpha=0.3,
                      label="90 %: aleatoric E[σ²(x)] only")  # fmt: skip
    left.plot(g, m, color="tab:blue", lw=2, label="predictive mean E[y]")
    mh, sh = hom.mean.numpy(), hom.var.sqrt().numpy()
    left.plot(g, mh - Z90 * sh, color="tab:red", lw=1, label="homoscedastic Laplace 90 %")
    left.plot(g, mh + Z90 * sh, color="tab:red", lw=1)
    # the truth exists on the data's range only
    on = (grid[:, 0] >= X_RANGE[0]) & (grid[:, 0] <= X_RANGE[1])
    gt, mu, sd = g[on.numpy()], true_mean(grid[on]).numpy(), true_noise(grid[on]).numpy()
    left.plot(gt, mu, "k--", lw=1, label="true mean")
    left.plot(gt, mu - Z90 * sd, "k:", lw=1.2, label="true 90 % band")
    left.plot(gt, mu + Z90 * sd, "k:", lw=1.2)
    left.scatter(x[:, 0].numpy(), y.numpy(), s=4, c="k", alpha=0.4, label="training data")
    for ax in (left, right):
        for edge in X_RANGE:
            ax.axvline(edge, color="0.6", lw=0.8)
    left.set(xlabel="x", ylabel="y", title=title, ylim=(-3, 3))
    left.legend(loc="upper left", fontsize=7)
    right.plot(gt, sd, "k--", lw=1, label="true σ(x)")
    right.plot(g, sd_ale, color="tab:blue", label="aleatoric √E[σ²(x)]")
    right.plot(g, pred.epistemic.sqrt().numpy(), color="tab:orange", label="epistemic √Var[μ(x)]")
    right.plot(g, sh, color="tab:red", label="homoscedastic: total sd")
    right.set(xlabel="x", ylabel="standard deviation of y", yscale="log", ylim=(0.02, 20),
              title="the parts of the predictive sd (lines: the data's range)")  # fmt: skip
    right.legend(loc="upper left", fontsize=7)
    canvas.print_figure(path, format="png", dpi=fig.dpi)


# ----------------------------------------------------------------------------- the run
def run(
    n: int = 400,
    n_test: int = 3000,
    steps: int = 3000,
    structures: tuple[str, ...] = ("full", "kfac"),
    seed: int = 0,
    prior_precision: float = 0.1,
    out: Path | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Trains both nets, fits both Laplace approximations with each structure, scores them on
    ``n_test`` held-out points, writes the plot (the first structure) into ``out`` (if given)
    and returns the figures, keyed ``"<het|hom> <structure> <figure>"``."""
    say = print if verbose else (lambda *a, **k: None)
    g = torch.Generator().manual_seed(seed)
    x, y, _ = make_data(n, g)
    xt, yt, sdt = make_data(n_test, g)
    loader = batches(x, y)
    thirds = sdt.argsort().tensor_split(3)

    t0 = time.perf_counter()
    het_net = train(mlp(1, 2, seed=seed), x, y, heteroscedastic_nll, prior_precision, steps)
    hom_net = train(mlp(1, 1, seed=seed), x, y, squared_error, prior_precision, steps)
    say(f"trained two 1-32-32-(2|1) tanh MLPs on {n} points in {time.perf_counter() - t0:.1f} s")
    figures: dict[str, float] = {}
    grid = torch.linspace(-3.5, 3.5, 351, dtype=DTYPE).unsqueeze(-1)
    inside = (grid[:, 0] >= X_RANGE[0]) & (grid[:, 0] <= X_RANGE[1])
    for k, structure in enumerate(structures):
        t0 = time.perf_counter()
        het = fit_heteroscedastic(het_net, loader, structure)
        hom = fit_homoscedastic(hom_net, loader, structure)
        say(
            f"\n{structure}: fitted and tuned both (P = {het.n_params} / {hom.n_params}) in "
            f"{time.perf_counter() - t0:.1f} s; heteroscedastic δ = "
            f"{float(het.prior_precision):.3g}; homoscedastic δ = "
            f"{float(hom.prior_precision):.3g}, σ = {float(hom.sigma_noise):.3f} "
            f"(true σ {NOISE_RANGE[0]}…{NOISE_RANGE[1]})"
        )
        p_het, p_hom = predict(het, xt), predict(hom, xt)
        s_het, s_hom = scores(p_het, yt, sdt), scores(p_hom, yt, sdt)
        say(f"held out, {n_test} points\n{SCORE_HEADER}")
        say(score_line("heteroscedastic Laplace", s_het))
        say(score_line("homoscedastic Laplace", s_hom))
        ale = [float(p_het.aleatoric[t].sqrt().mean()) for t in thirds]
        say(
            f"NLL gain {s_hom.nll - s_het.nll:.3f} nats per point; aleatoric sd per third "
            + " ".join(f"{v:.3f}" for v in ale)
            + " (true "
            + " ".join(f"{float(sdt[t].mean()):.3f}" for t in thirds)
            + ")"
        )
        p_grid = predict(het, grid)
        # the median over the grid: beyond the data, Var[μ] = Var[η₁ e^{−f₂}] has log-normal tails
        ratio_out = float(p_grid.epistemic[~inside].median() / p_grid.epistemic[inside].median())
        say(f"epistemic variance outside the data's range / inside (medians): {ratio_out:.1f}")
        for name, s in (("het", s_het), ("hom", s_hom)):
            figures[f"{name} {structure} nll"] = s.nll
            for i in range(3):
                figures[f"{name} {structure} coverage {i}"] = s.coverage_thirds[i]
        for i in range(3):
            figures[f"het {structure} aleatoric sd {i}"] = ale[i]
        figures[f"het {structure} epistemic out/in"] = ratio_out
        if out is not None and k == 0:
            out.mkdir(parents=True, exist_ok=True)
            path = out / "heteroscedastic_regression.png"
            title = f"heteroscedastic Laplace ({structure}, all weights), N = {n}"
            plot(path, x, y, grid, p_grid, predict(hom, grid), title)
            say(f"wrote {path}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "examples_out"))
    parser.add_argument(
        "--structures", default="full,kfac", help="hessian_structures, the first one plotted"
    )
    parser.add_argument("--n", type=int, default=400, help="training points")
    parser.add_argument("--n-test", type=int, default=3000, help="held-out points")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps (full batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    # Tiny matrices: one thread avoids OpenMP hand-offs that cost more than the arithmetic.
    torch.set_num_threads(args.threads)
    structures = tuple(args.structures.split(","))
    run(args.n, args.n_test, args.steps, structures, args.seed, out=Path(args.out))


if __name__ == "__main__":
    main()
