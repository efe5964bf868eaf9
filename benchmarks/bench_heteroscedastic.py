"""Heteroscedastic against homoscedastic Laplace: held-out NLL and coverage per noise level.

Issue 32's "What it must show", on three problems whose noise depends on the input, and on
the same three with a constant noise:

[1] 1-D: y = sin(2x) + 0.3x + σ(x)ε, σ from 0.09 to 0.46 across x (the example's data),
    N = 1000, a 1-32-32-(2|1) tanh MLP;
[2] 8-D: y = sin(3aᵀx) + (bᵀx)² + σ(x)ε, x uniform on [−1, 1]⁸, σ(x) = 0.1 + 0.4·sigmoid(4cᵀx),
    N = 6000, an 8-64-64-(2|1) tanh MLP;
[3] images: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, no download), y = v(class) +
    σ(x)ε with a value per class and σ(x) = 0.1 + 0.4·q(x), q the quantile of the image's
    mean intensity among the training images, N = 10,000, a 784-128-128-(2|1) tanh MLP in
    float32.

Each net is trained by Adam on its MAP objective (the heteroscedastic NLL in natural
parameters, or the squared error, plus the weight decay of a Gaussian prior of precision δ)
at the δ its own evidence picks: trained at a first δ, the Laplace's marglik δ (and σ) is
used to retrain from the same initialisation, ``rounds`` times (``ex.train_at_evidence``;
the images' δ moves 0.1 → 37 → 87 → 106, so two rounds there, one elsewhere). The
homoscedastic baseline gets the same loop from its first δ, and keeps the nets of every
round and of its other training δ; then
``Laplace(net, "heteroscedastic_regression", "all", structure)`` with δ tuned by marglik is
scored against the *best* homoscedastic Laplace (``"regression"``, δ and σ tuned by marglik,
``tune_sigma=True``; the lowest held-out NLL over the structures and prior structures tried).
Printed beside each target: the held-out NLL per point (heteroscedastic at least 0.1 nats
better), the 90 % interval's coverage in each third of the test inputs ordered by the true
noise (0.85–0.95), and on the constant-noise copies the heteroscedastic model no worse than
0.01 nats. About 5 minutes on one thread.

Usage::

    python benchmarks/bench_heteroscedastic.py [--threads 1] [--only 1d,8d,image] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import heteroscedastic_regression as ex  # the example's recipe: data, training, fits, scores

from laplacetorch import Laplace
from laplacetorch.datasets import load_fashion_mnist

GAIN_TARGET = 0.1  # nats per point, heteroscedastic better than the best homoscedastic
COVERAGE_TARGET = (0.85, 0.95)
CONTROL_TARGET = 0.01  # nats per point, heteroscedastic worse at most, on constant noise
CONSTANT_NOISE = 0.25


@dataclass
class Problem:
    """A regression problem: train / test inputs, targets ``[N]`` and true noise sd ``[N]``,
    and the net and training settings."""

    name: str
    x: Tensor
    y: Tensor
    xt: Tensor
    yt: Tensor
    sdt: Tensor
    width: int
    steps: int
    batch_size: int | None
    lr: float
    het_structures: tuple[str, ...]
    hom_structures: tuple[str, ...]
    het_delta: float  # the training prior precision (weight decay) of the heteroscedastic net
    hom_deltas: tuple[float, ...]  # the homoscedastic nets': the best held-out NLL is kept
    rounds: int = 1  # retrainings at the δ the evidence picks (from het_delta, hom_deltas[0])


# ----------------------------------------------------------------------------- problems
def one_d(n: int, n_test: int, seed: int, heteroscedastic: bool) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x, y, _ = ex.make_data(n, g, heteroscedastic)
    xt, yt, sdt = ex.make_data(n_test, g, heteroscedastic)
    if not heteroscedastic:  # the example's constant σ is 0.25 too
        assert float(sdt[0]) == CONSTANT_NOISE
    return Problem("1-D", x, y, xt, yt, sdt, 32, 3000, None, 1e-2, ("full",), ("full", "kfac"),
                   0.1, (0.1, 1.0))  # fmt: skip


def eight_d(n: int, n_test: int, seed: int, heteroscedastic: bool) -> Problem:
    g = torch.Generator().manual_seed(seed)
    a, b, c = torch.nn.functional.normalize(torch.randn(3, 8, generator=g, dtype=ex.DTYPE), dim=1)

    def draw(m: int) -> tuple[Tensor, Tensor, Tensor]:
        x = 2 * torch.rand(m, 8, generator=g, dtype=ex.DTYPE) - 1
        mean = torch.sin(3 * x @ a) + (x @ b).square()
        sd = 0.1 + 0.4 * torch.sigmoid(4 * x @ c)
        if not heteroscedastic:
            sd = torch.full_like(sd, CONSTANT_NOISE)
        return x, mean + sd * torch.randn(m, generator=g, dtype=ex.DTYPE), sd

    x, y, _ = draw(n)
    xt, yt, sdt = draw(n_test)
    return Problem("8-D", x, y, xt, yt, sdt, 64, 8000, 256, 3e-3, ("kfac",), ("kfac",), 1.0,
                   (1.0, 10.0))  # fmt: skip


# A value per Fashion-MNIST class (T-shirt, trouser, pullover, dress, coat, sandal, shirt,
# sneaker, bag, ankle boot): tops high, footwear low, so that the usual confusions cost little.
CLASS_VALUES = (0.6, -0.2, 0.8, 0.3, 0.9, -0.9, 0.7, -0.7, 0.0, -0.5)


def images(n: int, n_test: int, seed: int, heteroscedastic: bool) -> Problem:
    g = torch.Generator().manual_seed(seed)
    xs, cs = load_fashion_mnist("train")
    perm = torch.randperm(len(xs), generator=g)[: n + n_test]
    xs, cs = xs[perm].flatten(1), cs[perm]
    ink = xs.mean(1)
    ref = ink[:n].sort().values  # σ(x) from the quantile of the ink among the training images
    q = torch.searchsorted(ref, ink).float() / n
    sd = 0.1 + 0.4 * q if heteroscedastic else torch.full_like(q, CONSTANT_NOISE)
    y = torch.tensor(CLASS_VALUES)[cs] + sd * torch.randn(len(xs), generator=g)
    xs = (xs - 0.286) / 0.353
    return Problem("images", xs[:n], y[:n], xs[n:], y[n:], sd[n:], 128, 3000, 128, 1e-3,
                   ("kfac",), ("kfac",), 0.1, (0.1, 1.0), rounds=2)  # fmt: skip


# ----------------------------------------------------------------------------- scoring
def evaluate(p: Problem, seed: int) -> dict:
    """Trains the nets, fits every Laplace asked for, returns the heteroscedastic one's scores
    (its first structure) and the best homoscedastic one's (lowest held-out NLL over the
    training δ, structures and prior structures: the baseline gets every benefit of doubt)."""
    d_in, dtype = p.x.shape[1], p.x.dtype
    loader = ex.batches(p.x, p.y)
    t_train = t_laplace = 0.0
    fit = dict(steps=p.steps, lr=p.lr, batch_size=p.batch_size, seed=seed)

    def make_net(d_out: int):
        return lambda: ex.mlp(d_in, d_out, width=p.width, seed=seed, dtype=dtype)

    # the heteroscedastic MAP at the δ its evidence picks (p.rounds retrainings)
    t0 = time.perf_counter()
    het_nets, la = ex.train_at_evidence(make_net(2), p.x, p.y, True, p.het_delta,
                                        p.rounds, loader, p.het_structures[0], **fit)  # fmt: skip
    t_train += time.perf_counter() - t0
    het_delta, het_net = het_nets[-1]
    het = {}
    t0 = time.perf_counter()
    for k, structure in enumerate(p.het_structures):
        if k:
            la = ex.fit_heteroscedastic(het_net, loader, structure)
        het[f"{structure}, trained δ {het_delta:.3g}, δ = {float(la.prior_precision):.3g}"] = (
            ex.scores(ex.predict(la, p.xt), p.yt, p.sdt)
        )
    t_laplace += time.perf_counter() - t0
    # the homoscedastic nets: the same evidence loop from the first training δ, and the
    # other training δ as given
    t0 = time.perf_counter()
    hom_nets, _ = ex.train_at_evidence(make_net(1), p.x, p.y, False, p.hom_deltas[0],
                                       p.rounds, loader, p.hom_structures[0], **fit)  # fmt: skip
    for delta in p.hom_deltas[1:]:
        hom_nets.append((delta, ex.train(make_net(1)(), p.x, p.y, ex.squared_error, delta, **fit)))
    t_train += time.perf_counter() - t0
    hom = {}
    t0 = time.perf_counter()
    for delta, hom_net in hom_nets:
        for structure in p.hom_structures:
            for prior in ("scalar", "layerwise"):
                la = Laplace(hom_net, "regression", "all", structure)
                la.fit(loader)
                la.optimize_prior_precision(method="marglik", tune_sigma=True,
                                            prior_structure=prior)  # fmt: skip
                sigma = float(la.sigma_noise)
                name = f"trained δ {delta:.3g}, {structure}, {prior}, σ = {sigma:.3f}"
                hom[name] = ex.scores(ex.predict(la, p.xt), p.yt, p.sdt)
    t_laplace += time.perf_counter() - t0
    return {
        "het": next(iter(het.items())),
        "hom": min(hom.items(), key=lambda kv: kv[1].nll),
        "time": f"training {t_train:.0f} s, Laplace fits and predictions {t_laplace:.0f} s",
        "params": sum(q.numel() for q in het_net.parameters()),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(p: Problem, res: dict, control: dict | None) -> dict[str, bool]:
    het_name, het = res["het"]
    hom_name, hom = res["hom"]
    gain = hom.nll - het.nll
    print(f"\n[{p.name}] N = {len(p.y)}, {len(p.yt)} held out, P = {res['params']}; {res['time']}")
    print(f"  {ex.SCORE_HEADER.strip()}")
    print("  " + ex.score_line(f"hetero. ({het_name})", het))
    print("  " + ex.score_line("best homoscedastic", hom) + f"   ({hom_name})")
    lo, hi = COVERAGE_TARGET
    true_sd = " ".join(f"{float(p.sdt[t].mean()):.3f}" for t in p.sdt.argsort().tensor_split(3))
    print(f"  true noise sd per third: {true_sd}")
    ok = {"gain": gain >= GAIN_TARGET}
    print(f"  NLL gain {gain:.3f} nats per point          target ≥ {GAIN_TARGET}: "
          f"{verdict(ok['gain'])}")  # fmt: skip
    for i, c in enumerate(het.coverage_thirds):
        ok[f"coverage {i}"] = lo <= c <= hi
        print(
            f"  coverage, third {i + 1} (low → high σ): {c:.3f}   target {lo}–{hi}: "
            f"{verdict(ok[f'coverage {i}'])}  (homoscedastic {hom.coverage_thirds[i]:.3f})"
        )
    if control is not None:
        loss = control["het"][1].nll - control["hom"][1].nll
        ok["control"] = loss <= CONTROL_TARGET
        print(
            f"  constant σ = {CONSTANT_NOISE}: heteroscedastic NLL {control['het'][1].nll:.4f} vs "
            f"best homoscedastic {control['hom'][1].nll:.4f} ({control['hom'][0]}): worse by "
            f"{loss:+.4f} nats   target ≤ {CONTROL_TARGET}: {verdict(ok['control'])}"
        )
    return ok


PROBLEMS = {
    "1d": (one_d, 1000, 6000),
    "8d": (eight_d, 6000, 6000),
    "image": (images, 10000, 6000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="1d,8d,image", help="comma-separated: 1d, 8d, image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-control", action="store_true", help="skip the constant-noise runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {}
    for key in args.only.split(","):
        make, n, n_test = PROBLEMS[key]
        p = make(n, n_test, args.seed, True)
        res = evaluate(p, args.seed)
        control = None
        if not args.no_control:
            control = evaluate(make(n, n_test, args.seed, False), args.seed)
        results[key] = report(p, res, control)
    met = sum(v for r in results.values() for v in r.values())
    total = sum(len(r) for r in results.values())
    print(f"\n{met} of {total} targets met; {time.perf_counter() - t0:.0f} s on "
          f"{args.threads} thread(s)")  # fmt: skip


if __name__ == "__main__":
    main()
