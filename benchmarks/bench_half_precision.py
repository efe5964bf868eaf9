"""The error budget of half precision: a bfloat16 (or float16) model against a float64
reference of the same weights (its half-precision values, widened), per structure.

For LeNet on Fashion-MNIST (synthetic images when the Debian package is not installed) and a
4-layer transformer classifier on token sequences, each trained in float32 with weight decay,
then rounded to half precision: fit, tune a scalar δ by marglik, and compare

- the tuned δ (relative difference),
- log det Π at the reference's tuned δ (relative difference; the curvature's error alone),
- log det Π at each one's own tuned δ,
- the median GLM predictive variance of f on held-out inputs, at each one's own δ,

and print the fit time and the process's peak memory. Targets (issue 31): log det within
1e-3, median variance within 1e-2, δ within 2 %.

    python benchmarks/bench_half_precision.py [--dtype bfloat16] [--n 1000] [--threads 2]
        [--models lenet,transformer] [--structures diag,kfac,ekfac,lanczos]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import time
import warnings

import torch
import torch.nn.functional as F
from images import load_images, make_lenet
from torch import Tensor, nn

from laplacetorch import Laplace

STRUCTURES = ("diag", "kfac", "ekfac", "lanczos")
OPTIONS = {"lanczos": {"rank": 30, "seed": 0}}


class TinyTransformer(nn.Module):
    """Token ids [B, T] -> class logits [B, C]: 4 pre-norm encoder layers, mean-pooled."""

    def __init__(self, vocab: int = 64, d: int = 64, n_classes: int = 4, t: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(t, d))
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.body = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.body(self.embed(ids) + self.pos)
        return self.head(h.mean(1))


def _token_task(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sequences whose class is the most frequent of four token groups (learnable, noisy)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 16), generator=g)
    y = torch.stack([((ids // 16) == k).sum(1) for k in range(4)], 1).argmax(1)
    return ids, y


def _train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    return model.eval()


def _answers(model: nn.Module, structure: str, data, xt: Tensor, floating: bool, at=None):
    dtype = next(model.parameters()).dtype
    cast = (lambda t: t.to(dtype)) if floating else (lambda t: t)
    x, y = data
    loader = [(cast(x[i : i + 100]), y[i : i + 100]) for i in range(0, len(x), 100)]
    la = Laplace(model, "classification", "all", structure, backend_options=OPTIONS.get(structure))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        la.fit(loader)
        fit_s = time.perf_counter() - t0
        la.optimize_prior_precision(method="marglik")
    delta = float(la.prior_precision)
    own = float(la.structure.logdet(la.prior, la.scale()))
    common = own if at is None else float(la.structure.logdet(la.prior_at(at), la.scale()))
    _, var = la.glm_moments(cast(xt))
    med = float(var.diagonal(dim1=-2, dim2=-1).median())
    return {"delta": delta, "logdet": own, "logdet_at": common, "medvar": med, "fit_s": fit_s}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _compare(
    name: str, model: nn.Module, data, xt: Tensor, dtype, floating: bool, structures=STRUCTURES
) -> None:
    half = copy.deepcopy(model).to(dtype)
    ref = copy.deepcopy(half).to(torch.float64)
    x, y = data
    ref_data = (x.double() if floating else x, y)
    ref_xt = xt.double() if floating else xt
    print(f"\n{name}: P = {sum(p.numel() for p in model.parameters()):,}, N = {len(x)}, {dtype}")
    print(f"{'structure':10s} {'δ':>9s} {'logdet@δ64':>11s} {'logdet@own':>11s} {'med var':>9s}"
          f" {'fit half':>9s} {'fit f64':>8s}")  # fmt: skip
    for structure in structures:
        r64 = _answers(ref, structure, ref_data, ref_xt, floating)
        rh = _answers(half, structure, data, xt, floating, at=r64["delta"])
        at, own = _rel(rh["logdet_at"], r64["logdet"]), _rel(rh["logdet"], r64["logdet"])
        print(
            f"{structure:10s} {_rel(rh['delta'], r64['delta']):9.2e} {at:11.2e} {own:11.2e}"
            f" {_rel(rh['medvar'], r64['medvar']):9.2e} {rh['fit_s']:8.2f}s {r64['fit_s']:7.2f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--n", type=int, default=1000, help="training examples of the fit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="lenet,transformer", help="comma-separated")
    parser.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"load average {os.getloadavg()[0]:.2f}, threads {args.threads}")
    models, structures = args.models.split(","), tuple(args.structures.split(","))
    if "lenet" in models:
        x, y, source = load_images(args.n + 200)
        print(f"images: {source}")
        lenet = _train(make_lenet(0), x[: args.n], y[: args.n], epochs=8, lr=2e-3)
        _compare("LeNet", lenet, (x[: args.n], y[: args.n]), x[args.n :], dtype, True, structures)
    if "transformer" in models:
        ids, labels = _token_task(args.n + 200)
        torch.manual_seed(0)
        tf = _train(TinyTransformer(), ids[: args.n], labels[: args.n], epochs=15, lr=1e-3)
        _compare("4-layer transformer", tf, (ids[: args.n], labels[: args.n]), ids[args.n :],
                 dtype, False, structures)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\npeak memory (max RSS of the process): {peak:.0f} MB")


if __name__ == "__main__":
    main()
