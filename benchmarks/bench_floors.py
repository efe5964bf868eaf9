"""Every fit-cost ratio against its floor, on four nets of growing size (issue 17).

For each net, every cost is a ratio to one gradient epoch (forward + summed cross-entropy +
backward over every batch of the same loader), and each ratio is set against the floor the
design aims at (docs/performance.md):

| measurement                          | ratio                                 | floor        |
|--------------------------------------|---------------------------------------|--------------|
| ``kfac``, exact (type-2) Fisher      | r_fit = fit time / gradient epoch     | (1 + 2C)/3   |
| ``kfac``, MC Fisher (1 sample)       | r_fit                                 | 1.5 (≈ 1-2)  |
| ``ekfac``, exact                     | r_fit                                 | kfac's + 1   |
| ``lanczos`` rank 20 (oversample 10)  | r_fit; r_fit / vectors multiplied     | - ; 2.5      |
| GGN-vector product, 1 and 8 vectors  | one ``GGNOperator.matvec`` / epoch,   | 2            |
|                                      | per vector                            |              |
| ``operator`` SLQ nodes (first log    | seconds                               | -            |
| det, 30 probes, 40 Lanczos steps)    |                                       |              |

Verdict: PASS when ratio <= 1.25 × floor, else MISS; ratio / floor is printed either way.
Under the kfac exact row, the eigendecompositions of its Kronecker factors (timed once more on
the fitted factors) show how much of that fit they take: on a net with a wide layer they,
not the data pass, set the cost. Two more rows judge both KFAC fits against a floor that
also counts the factor GEMMs (B·S·in'² and K·B·S·out² per batch, from the layer sizes) and
that eigh time (:func:`gemm_rows`).
The nets, all float32, trained briefly with Adam and in eval mode, all weights Bayesian:

1. ``mlp``: the 64-256-256-10 ReLU MLP on sklearn's digits (1500 train), batch 128;
2. ``lenet``: LeNet-5 on [2048, 1, 28, 28] images, batch 128: the real Fashion-MNIST from
   /usr/share/datasets/fashion-mnist/ when present, else synthetic class-conditional images
   (the loader of bench_kfac.py, copied: importing that script imports laplace-torch);
3. ``cnn``: conv 1→32 3x3, conv 32→64 3x3, maxpool 2, Linear 9216→128, Linear 128→10
   (P = 1,199,882) on the same images, batch 128;
4. ``lora``: LoRA r = 8 (query, value) on a 2-layer BERT with random weights, built as in
   bench_real_models.py (HF dict batches, N = 1024, T = 32, batch 64, C = 2); only the
   adapters and the classifier copy are Bayesian (the frozen base is left out).

Timing: after one warm-up call each, the gradient epoch, every fit and the products run
round-robin for ``--repeats`` rounds (so that load on a shared machine hits all alike); each
number is the median. The Lanczos products are counted (and timed) by wrapping
``GGNOperator.matvec`` during its fits: the vectors multiplied (the floor is per vector) and
the data passes (more than one vector a pass with a block Lanczos). The SLQ nodes, a one-time
cost of at least 1200 vector products, are timed once between gradient epochs (as in
bench_matrix_free.py), on the MLP only; on the other nets the row says why it was skipped. A
fit that raises on a net is reported with its traceback and the other rows still run. At the
end a size-scaling table gives every ratio / floor per net, ordered by P. Nothing here
asserts on timings.

Usage::

    python benchmarks/bench_floors.py [--repeats R] [--threads T] [--models mlp,lenet,cnn,lora]
                                      [--skip-lanczos] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_matrix_free import MatvecCounter
from bench_real_models import BATCH as LORA_BATCH
from bench_real_models import N as LORA_N
from bench_real_models import T as LORA_T
from bench_real_models import epoch as lora_epoch
from bench_real_models import lora_model, tokens
from bench_real_models import train as lora_train
from common import (
    BATCH_SIZE,
    SEED,
    accuracy,
    bracketed,
    data_loader,
    gradient_epoch,
    load_digits_split,
    make_mlp,
    n_params,
    round_robin,
    timed,
    train,
)
from images import load_images, make_lenet
from torch import Tensor, nn

from laplacetorch import Laplace, ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_operator
from laplacetorch.curvature.ggn_operator import GGNOperator
from laplacetorch.datapass import BatchAdapter

MODELS = ("mlp", "lenet", "cnn", "lora")
PASS_MARGIN = 1.25  # PASS when ratio <= 1.25 × floor
MC_FLOOR = 1.5  # "≈ 1-2": one forward and one backward of a sampled target, plus the factors
LANCZOS_RANK, LANCZOS_OVERSAMPLE = 20, 10
LANCZOS_PRODUCT_FLOOR = 2.5  # per GGN-vector product (one forward, a jvp, a vjp)
MATVEC_FLOOR = 2.0  # per vector
SLQ_PROBES, SLQ_STEPS, SLQ_DELTA = 30, 40, 1.0
N_IMAGES = 2048
MLP_EPOCHS, LENET_EPOCHS, CNN_EPOCHS, LORA_STEPS = 10, 2, 1, 30


def exact_floor(n_classes: int) -> float:
    """The exact-Fisher KFAC floor: one forward and a backward of C columns, (1 + 2C)/3."""
    return (1 + 2 * n_classes) / 3


def make_cnn(seed: int) -> nn.Sequential:
    """Returns a float32 ~1.2M-weight CNN for [N, 1, 28, 28] inputs (P = 1,199,882).

    Almost all of P sits in the 9216→128 Linear, whose input-side KFAC factor is 9217 × 9217:
    the net shows what one wide layer does to each ratio.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 12 * 12, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    ).to(torch.float32)


# ----------------------------------------------------------------------------- nets
@dataclass
class Net:
    """A trained net with its fit loader and its gradient epoch.

    Attributes:
        key: The ``--models`` name. name: a description for the tables.
        model: The net, in eval mode.
        fit_loader: What the fits and the GGN operator iterate over.
        grad_epoch: One gradient epoch over the same batches.
        n_classes: C. n_data: N. batch_size: the batch size of both loaders.
        notes: Lines printed under the net's heading (data source, training).
    """

    key: str
    name: str
    model: nn.Module
    fit_loader: Iterable
    grad_epoch: Callable[[], None]
    n_classes: int
    n_data: int
    batch_size: int
    notes: list[str] = field(default_factory=list)


def build_mlp() -> Net:
    """Returns the digits 64-256-256-10 MLP, trained for ``MLP_EPOCHS`` epochs."""
    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = make_mlp(256, SEED)
    _, seconds = timed(lambda: train(model, x_tr, y_tr, MLP_EPOCHS, seed=SEED + 10))
    loader = data_loader(x_tr, y_tr)
    note = (
        f"trained {MLP_EPOCHS} epochs in {seconds:.1f} s, test accuracy "
        f"{accuracy(model, x_te, y_te):.3f}"
    )
    return Net(
        "mlp",
        "64-256-256-10 MLP, digits",
        model,
        loader,
        lambda: gradient_epoch(model, loader),
        10,
        len(x_tr),
        BATCH_SIZE,
        [note],
    )


@functools.cache
def _images() -> tuple[Tensor, Tensor, str]:
    """Returns the LeNet / CNN images, loaded once for both nets."""
    return load_images(N_IMAGES)


def build_image_net(key: str) -> Net:
    """Returns ``lenet`` or ``cnn`` trained briefly on the N = 2048 images."""
    x, y, source = _images()
    if key == "lenet":
        model, epochs, lr, name = make_lenet(SEED + 1), LENET_EPOCHS, 3e-3, "LeNet"
    else:
        # at common.train's 3e-3 this net is still at chance after an epoch (train accuracy
        # 0.10 here); at 1e-3 it reaches about 0.89
        model, epochs, lr, name = make_cnn(SEED + 2), CNN_EPOCHS, 1e-3, "CNN 2 conv + 2 Linear"
    _, seconds = timed(lambda: train(model, x, y, epochs, seed=SEED + 11, lr=lr))
    loader = data_loader(x, y)
    notes = [
        f"data: {source}",
        f"trained {epochs} epoch(s) in {seconds:.1f} s, train accuracy {accuracy(model, x, y):.3f}",
    ]
    short = source.split(" (")[0]
    return Net(
        key,
        f"{name}, {short}",
        model,
        loader,
        lambda: gradient_epoch(model, loader),
        10,
        len(x),
        BATCH_SIZE,
        notes,
    )


def build_lora() -> Net | None:
    """Returns the LoRA BERT of bench_real_models.py, or None without transformers / peft."""
    try:
        model = lora_model()
    except ImportError:
        return None
    x, y = tokens()
    mask = torch.ones(LORA_N, LORA_T, dtype=torch.long)
    # the fits take HF dict batches (label under "labels"); the epoch calls model(**inputs)
    dicts = [
        {
            "input_ids": x[i : i + LORA_BATCH],
            "attention_mask": mask[i : i + LORA_BATCH],
            "labels": y[i : i + LORA_BATCH],
        }
        for i in range(0, LORA_N, LORA_BATCH)
    ]
    inputs = [({k: v for k, v in d.items() if k != "labels"}, d["labels"]) for d in dicts]
    _, seconds = timed(lambda: lora_train(model, inputs, LORA_STEPS))
    total = n_params(model)
    notes = [
        f"trained {LORA_STEPS} Adam steps in {seconds:.1f} s; {total:,} weights in all, "
        "the frozen base is not Bayesian"
    ]
    return Net(
        "lora",
        f"BERT-2 LoRA r=8, tokens T = {LORA_T}",
        model,
        dicts,
        lambda: lora_epoch(model, inputs),
        2,
        LORA_N,
        LORA_BATCH,
        notes,
    )


def build(key: str) -> Net | None:
    """Returns the trained net named ``key`` (None when its packages are missing)."""
    if key == "mlp":
        return build_mlp()
    if key in ("lenet", "cnn"):
        return build_image_net(key)
    return build_lora()


# ----------------------------------------------------------------------------- measuring
@dataclass
class Row:
    """One measured cost of one net.

    Attributes:
        measurement: What was timed. seconds: its median wall time.
        ratio: seconds / gradient epoch (per product or per vector where the name says so).
        best_ratio: the same ratio of the fastest runs (less sensitive to load).
        floor: the floor of ``ratio`` (None: none). floor_text: how it is stated.
        factor: ratio / floor. verdict: PASS, MISS, "-" (no floor) or ERROR / skipped.
        note: counts, ranks, the skip reason or the error.
    """

    measurement: str
    seconds: float | None = None
    ratio: float | None = None
    best_ratio: float | None = None
    floor: float | None = None
    floor_text: str = "-"
    factor: float | None = None
    verdict: str = "-"
    note: str = ""

    def judge(self) -> Row:
        """Sets ``factor`` and ``verdict`` from ``ratio`` and ``floor``; returns self."""
        if self.floor is not None and self.ratio is not None:
            self.factor = self.ratio / self.floor
            self.verdict = "PASS" if self.ratio <= PASS_MARGIN * self.floor else "MISS"
        return self


@dataclass
class NetResult:
    """Everything measured on one net (what ``--json`` writes)."""

    key: str
    name: str
    n_params: int
    n_data: int
    n_classes: int
    batch_size: int
    notes: list[str]
    grad_epoch_s: float = float("nan")
    grad_epoch_times_s: list[float] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    times_s: dict[str, list[float]] = field(default_factory=dict)
    warmup_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def time_all(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, str]]:
    """Warms up every callable, then times those that ran round-robin for ``repeats`` rounds.

    Returns:
        The wall times per name, the warm-up time per name, and the traceback of every
        callable whose warm-up raised (left out of the rounds, so that one failing fit does not
        lose the net's other rows).
    """
    ok: dict[str, Callable[[], Any]] = {}
    warmup: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:
            errors[name] = traceback.format_exc()
        else:
            ok[name] = fn
        warmup[name] = time.perf_counter() - t0
    return round_robin(ok, repeats, warm=frozenset(ok)), warmup, errors


def laplace_fits(net: Net) -> tuple[dict[str, Laplace], dict[str, str]]:
    """Returns the unfitted Laplace objects by label and the tracebacks of any that cannot be
    built."""
    specs: dict[str, tuple[str, str, dict[str, Any]]] = {
        "kfac exact": ("kfac", "exact", {}),
        "kfac mc": ("kfac", "mc", {"mc_samples": 1, "seed": 0}),
        "ekfac exact": ("ekfac", "exact", {}),
        "lanczos": (
            "lanczos",
            "exact",
            {"rank": LANCZOS_RANK, "oversample": LANCZOS_OVERSAMPLE},
        ),
    }
    las: dict[str, Laplace] = {}
    errors: dict[str, str] = {}
    for label, (structure, fisher, options) in specs.items():
        try:
            las[label] = Laplace(
                net.model,
                "classification",
                subset_of_weights="all",
                hessian_structure=structure,
                prior_precision=1.0,
                fisher_type=fisher,
                backend_options=options,
            )
        except Exception:
            errors[label] = traceback.format_exc()
    return las, errors


def counted(fn: Callable[[], Any], log: list[MatvecCounter]) -> Callable[[], Any]:
    """Returns ``fn`` with every ``GGNOperator.matvec`` inside it counted; one entry of ``log``
    per call."""

    def run() -> Any:
        counter = MatvecCounter()
        with counter.active():
            out = fn()
        log.append(counter)
        return out

    return run


def median_ratio(times: list[float], grad: list[float]) -> tuple[float, float, float]:
    """Returns ``(median seconds, median ratio to the epoch, ratio of the bests)``."""
    sec = statistics.median(times)
    return sec, sec / statistics.median(grad), min(times) / min(grad)


def bench_net(net: Net, repeats: int, skip_lanczos: bool, slq: bool) -> NetResult:
    """Times the gradient epoch, the fits and the products of one net; fills its rows."""
    t_start = time.perf_counter()
    lik = get_likelihood("classification")
    subset = ParameterSubset(net.model, "all")
    res = NetResult(
        net.key,
        net.name,
        subset.n_params,
        net.n_data,
        net.n_classes,
        net.batch_size,
        net.notes,
    )
    fns: dict[str, Callable[[], Any]] = {"grad": net.grad_epoch}
    las, res.errors = laplace_fits(net)
    if skip_lanczos:
        las.pop("lanczos", None)
    for label, la in las.items():
        fns[label] = lambda la=la: la.fit(net.fit_loader)
    lanczos_log: list[MatvecCounter] = []
    if "lanczos" in fns:
        fns["lanczos"] = counted(fns["lanczos"], lanczos_log)
    gen = torch.Generator().manual_seed(SEED)
    blocks = {m: torch.randn(m, subset.n_params, generator=gen) for m in (1, 8)}
    try:
        # BatchAdapter turns HF dict batches into (keyword inputs, labels), as Laplace.fit does
        op = GGNOperator(subset, lik, BatchAdapter(net.fit_loader))
    except Exception:
        res.errors["GGNOperator"] = traceback.format_exc()
    else:
        for m, v in blocks.items():
            fns[f"mv{m}"] = lambda v=v: op.matvec(v)
    times, res.warmup_s, errors = time_all(fns, repeats)
    res.errors.update(errors)
    res.times_s = times
    if "grad" not in times:
        return res
    grad = res.grad_epoch_times_s = times["grad"]
    res.grad_epoch_s = statistics.median(grad)

    def fit_row(label: str, title: str, floor: float | None, floor_text: str) -> Row:
        if label not in times:
            if label == "lanczos" and skip_lanczos:
                return Row(title, verdict="skipped", note="--skip-lanczos")
            return Row(title, verdict="ERROR")  # its traceback is printed under the table
        sec, r, best = median_ratio(times[label], grad)
        return Row(title, sec, r, best, floor, floor_text).judge()

    c_floor = exact_floor(net.n_classes)
    kfac = fit_row("kfac exact", "kfac exact (type-2)", c_floor, f"(1+2C)/3 = {c_floor:.3g}")
    res.rows.append(kfac)
    eigh = None
    if "kfac exact" in times:
        eigh = eigh_row(las["kfac exact"], grad, kfac)
        res.rows.append(eigh)
    mc = fit_row("kfac mc", "kfac mc (1 sample)", MC_FLOOR, f"{MC_FLOOR:g} (≈ 1-2)")
    res.rows.append(mc)
    if eigh is not None and net.key != "lora":  # LoRA: a frozen base dominates the epoch
        res.rows.extend(gemm_rows(net, kfac, mc, eigh))
    e_floor = None if kfac.ratio is None else kfac.ratio + 1
    e_text = "-" if e_floor is None else f"kfac + 1 = {e_floor:.3g}"
    ekfac = fit_row("ekfac exact", "ekfac exact", e_floor, e_text)
    res.rows.append(ekfac)
    if eigh is not None and net.key != "lora":
        res.rows.append(ekfac_row(net, kfac, ekfac))

    lz = fit_row("lanczos", f"lanczos k={LANCZOS_RANK} r_fit", None, "-")
    res.rows.append(lz)
    if lz.ratio is not None and lanczos_log:
        # a product is one vector through G; a data pass may carry a block of them (block
        # Lanczos), so the floor is set per vector and the passes go in the note
        last = lanczos_log[-1]  # the same counts every call (seeded start block)
        passes, vectors = last.passes, last.vectors
        in_products = statistics.median(c.seconds for c in lanczos_log[1:] or lanczos_log)
        lz.note = (
            f"{passes} passes, {vectors} vectors, {in_products / lz.seconds:.0%} of the time "
            f"inside them, rank {las['lanczos'].structure.rank}"
        )
        res.rows.append(
            Row(
                f"lanczos per vector product ({vectors})",
                lz.seconds / vectors,
                lz.ratio / vectors,
                lz.best_ratio / vectors,
                LANCZOS_PRODUCT_FLOOR,
                f"{LANCZOS_PRODUCT_FLOOR:g}",
                note=f"r_fit per data pass {lz.ratio / passes:.2f}",
            ).judge()
        )
    for m in blocks:
        label = f"mv{m}"
        title = "GGN-vector product, 1 vector" if m == 1 else f"GGN-vector product /vec ({m})"
        if label not in times:
            res.rows.append(Row(title, verdict="ERROR"))
            continue
        sec, r, best = median_ratio(times[label], grad)
        res.rows.append(Row(title, sec, r / m, best / m, MATVEC_FLOOR, f"{MATVEC_FLOOR:g}").judge())
    res.rows.append(slq_row(net, subset, lik, repeats, times, slq))
    res.seconds = time.perf_counter() - t_start
    return res


def eigh_row(la: Laplace, grad: list[float], kfac: Row) -> Row:
    """The eigendecompositions inside a KFAC fit, timed once on its fitted factors.

    Every Kron block eigendecomposes its two factors when it is built (O(out³ + in'³) for a
    block, whatever the data): on a net with a wide layer this, not the data pass, sets
    the fit's cost, so the row shows how much of the kfac row it is.
    """
    from laplacetorch.linalg.eigh import symmetric_eigh

    factors = [
        (blk.qb * blk.lb) @ blk.qb.T
        for _, _, blk in la.structure.blocks
        if hasattr(blk, "qb") and hasattr(blk, "lb")
    ] + [
        (blk.qa * blk.la) @ blk.qa.T
        for _, _, blk in la.structure.blocks
        if hasattr(blk, "qa") and hasattr(blk, "la")
    ]
    widest = max((f.shape[0] for f in factors), default=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for f in factors:
            symmetric_eigh(f)
        sec = time.perf_counter() - t0
    share = f"{sec / kfac.seconds:.0%} of the kfac exact fit" if kfac.seconds else ""
    return Row(
        "  of which eigh of the factors",
        sec,
        sec / statistics.median(grad),
        note=f"{len(factors)} factors, the widest {widest}; {share}",
    )


def layer_sizes(net: Net) -> list[tuple[int, int, int]]:
    """(S, in', out) of every Bayesian Linear / Conv layer, from one forward on the first
    batch (S: positions, in' = in·kernel + bias)."""
    sizes: list[tuple[int, int, int]] = []

    def hook(m: nn.Module, inputs: Any, out: Tensor) -> None:
        n_out = m.weight.shape[0]
        n_in = m.weight[0].numel() + (m.bias is not None)
        positions = out[0].numel() // n_out  # sequence positions or conv output pixels
        sizes.append((positions, n_in, n_out))

    mods = [m for m in net.model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    mods = [m for m in mods if m.weight.requires_grad]
    handles = [m.register_forward_hook(hook) for m in mods]
    x, _ = next(iter(BatchAdapter(net.fit_loader)))
    with torch.no_grad():
        net.model(**x) if isinstance(x, dict) else net.model(x)
    for h in handles:
        h.remove()
    return sizes


def layer_counts(net: Net) -> tuple[float, float, float]:
    """Multiply-adds per example of the layers: the forward GEMMs F = Σ S·in'·out, the
    input factors Σ S·in'² and the output factors Σ S·out² (one column)."""
    sizes = layer_sizes(net)
    forward = sum(s * i * o for s, i, o in sizes)
    return forward, sum(s * i * i for s, i, _ in sizes), sum(s * o * o for s, _, o in sizes)


def ekfac_row(net: Net, kfac: Row, ekfac: Row) -> Row:
    """EKFAC judged against KFAC plus what its refit has to do, counted from the layer sizes.

    Its eigenvalue refit rotates every example's statistics, u = Q_Bᵀ g (K·S·out²) and
    v = Q_Aᵀ ã (S·in'²), and sums the squares of Σₛ u vᵀ (K·out·in' for S = 1; for S > 1 the
    cheaper of K·S·out·in' and the Gramian S²·(out·in' + K·out)). When the kept statistics,
    N·Σ S·(in' + K·out) floats, exceed the default ``cache_budget`` (128 MiB), a second data
    pass of one forward and K backward columns comes first: (F + K·F) / 3F.
    """
    from laplacetorch.curvature.ekfac import DEFAULT_CACHE_BUDGET

    try:
        sizes = layer_sizes(net)
    except Exception:
        return Row("  ekfac, refit counted", verdict="ERROR", note=traceback.format_exc())
    k = net.n_classes
    f = sum(s * i * o for s, i, o in sizes)
    refit = 0.0
    for s, i, o in sizes:
        square = k * o * i if s == 1 else min(k * s * o * i, s * s * (o * i + k * o))
        refit += k * s * o * o + s * i * i + square
    kept = net.n_data * sum(s * (i + k * o) for s, i, o in sizes) * 4
    second = (f + k * f) / (3 * f) if kept > DEFAULT_CACHE_BUDGET else 0.0
    count = second + refit / (3 * f)
    base = kfac.ratio or 0.0
    row = Row(
        "  ekfac, refit counted",
        ekfac.seconds,
        ekfac.ratio,
        ekfac.best_ratio,
        base + count,
        f"kfac + {count:.3g} = {base + count:.3g}",
        note=(
            f"kept statistics {kept / 2**20:.0f} MiB: "
            + ("a second pass" if second else "one pass")
        ),
    )
    return row.judge() if ekfac.ratio is not None and kfac.ratio is not None else row


def gemm_rows(net: Net, kfac: Row, mc: Row, eigh: Row) -> list[Row]:
    """The KFAC floors once its factor GEMMs and eigendecompositions are counted.

    The issue's floors count the forward and the backward columns; the factors add
    B·S·in'² (input side) and K·B·S·out² (output side, K = C columns or 1 sample) per batch,
    which on square or wide layers is more than the forward itself, and the eigh of the
    factors is a cost per fit that does not grow with N (the "of which eigh" row). In units
    of an epoch ≈ 3F (forward and two backward GEMMs):
    exact ≈ (F + C·F + A + C·G) / 3F + eigh, mc ≈ (2F + A + G) / 3F + eigh.
    """
    try:
        f, a, g = layer_counts(net)
    except Exception:
        return [Row("  GEMM-count floors", verdict="ERROR", note=traceback.format_exc())]
    c, e = net.n_classes, eigh.ratio or 0.0
    rows = []
    for base, label, count in (
        (kfac, "kfac exact", (f + c * f + a + c * g) / (3 * f)),
        (mc, "kfac mc", (2 * f + a + g) / (3 * f)),
    ):
        floor = count + e
        row = Row(
            f"  {label}, GEMM count + eigh",
            base.seconds,
            base.ratio,
            base.best_ratio,
            floor,
            f"{count:.3g} + {e:.3g} = {floor:.3g}",
            note=f"factors {(a + (c if label == 'kfac exact' else 1) * g) / f:.2g} F",
        )
        rows.append(row.judge() if base.ratio is not None else row)
    return rows


def slq_row(
    net: Net,
    subset: ParameterSubset,
    lik: Any,
    repeats: int,
    times: dict[str, list[float]],
    run: bool,
) -> Row:
    """The ``operator`` SLQ nodes row: timed once between gradient epochs, or skipped."""
    title = f"operator SLQ nodes (S={SLQ_PROBES}, j={SLQ_STEPS})"
    if not run:
        note = "skipped: measured on the MLP only"
        if "mv8" in times:  # what it would cost: SLQ_STEPS products of SLQ_PROBES vectors
            est = SLQ_STEPS * SLQ_PROBES / 8 * statistics.median(times["mv8"])
            note += f" (≥ {SLQ_STEPS}×{SLQ_PROBES} vector products, est. ≥ {est:.0f} s)"
        return Row(title, verdict="skipped", note=note)
    counter = MatvecCounter()
    holder: dict[str, Any] = {}

    def first() -> tuple[Tensor, Tensor]:
        # the operator's construction and its first log det: the nodes are built there
        st = fit_operator(
            subset, lik, BatchAdapter(net.fit_loader), n_probes=SLQ_PROBES, n_steps=SLQ_STEPS
        ).structure
        holder["st"] = st
        return st.logdet_with_error(SLQ_DELTA)

    try:
        with counter.active():
            (est, se), sec, grad_s = bracketed(first, net.grad_epoch, repeats)
    except Exception:
        return Row(title, verdict="ERROR", note=traceback.format_exc())
    _, later_s = timed(lambda: holder["st"].logdet_with_error(10 * SLQ_DELTA))
    note = (
        f"{counter.passes} passes, {counter.vectors} vectors; log det(δ={SLQ_DELTA:g}) "
        f"{float(est):.1f} ± {float(se):.1f}; a later δ {later_s * 1e3:.1f} ms"
    )
    return Row(title, sec, sec / grad_s, None, None, "-", None, "-", note)


# ----------------------------------------------------------------------------- report
def _fmt(x: float | None, spec: str) -> str:
    """Formats ``x`` with ``spec``, or "-" for None."""
    return "-" if x is None else format(x, spec)


def report_net(res: NetResult, repeats: int) -> None:
    """Prints the table of one net."""
    print(
        f"\n[{res.key}] {res.name}: P = {res.n_params:,} (Bayesian), N = {res.n_data}, "
        f"C = {res.n_classes}, batch {res.batch_size}; median of {repeats} after a warm-up, "
        "round-robin"
    )
    for line in res.notes:
        print(f"  {line}")
    if res.grad_epoch_times_s:
        print(
            f"  one gradient epoch: {res.grad_epoch_s:.4f} s "
            f"(best {min(res.grad_epoch_times_s):.4f})"
        )
    if res.warmup_s:
        first = ", ".join(f"{k} {v:.3g}" for k, v in res.warmup_s.items())
        print(f"  warm-up calls (s): {first}")
    header = (
        f"  {'measurement':<32} {'seconds':>9} {'ratio':>8} {'floor':<18} "
        f"{'ratio/floor':>11}  {'verdict':<7} {'best ratio':>10}  note"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in res.rows:
        print(
            f"  {row.measurement:<32} {_fmt(row.seconds, '9.4f'):>9} "
            f"{_fmt(row.ratio, '8.2f'):>8} {row.floor_text:<18} "
            f"{_fmt(row.factor, '11.2f'):>11}  {row.verdict:<7} "
            f"{_fmt(row.best_ratio, '10.2f'):>10}  {row.note if row.verdict != 'ERROR' else ''}"
        )
    for label, tb in res.errors.items():
        print(f"  ERROR in {label}:")
        print("    " + tb.rstrip().replace("\n", "\n    "))
    for row in res.rows:
        if row.verdict == "ERROR" and row.note:
            print(f"  ERROR in {row.measurement}:")
            print("    " + row.note.rstrip().replace("\n", "\n    "))
    for w in res.warnings:
        print(f"  warning: {w}")
    print(f"  ({res.seconds:.1f} s for this net)")


SCALING_COLUMNS = {
    "kfac exact": "kfac exact (type-2)",
    "kfac mc": "kfac mc (1 sample)",
    "ekfac": "ekfac exact",
    "lanczos/vec": "lanczos per vector product",
    "mv 1": "GGN-vector product, 1 vector",
    "mv 8/vec": "GGN-vector product /vec",
}


def report_scaling(results: list[NetResult]) -> None:
    """Prints ratio / floor per net and measurement, the nets ordered by P."""
    print(
        f"\nsize scaling: ratio / floor per net, ordered by P (PASS <= {PASS_MARGIN:g}; "
        "'-': not measured)"
    )
    header = f"  {'net':<6} {'P':>10} {'grad s':>8}" + "".join(f" {c:>12}" for c in SCALING_COLUMNS)
    print(header)
    print("  " + "-" * (len(header) - 2))
    for res in sorted(results, key=lambda r: r.n_params):
        cells = []
        for prefix in SCALING_COLUMNS.values():
            row = next((r for r in res.rows if r.measurement.startswith(prefix)), None)
            cells.append(_fmt(None if row is None else row.factor, ".2f"))
        print(
            f"  {res.key:<6} {res.n_params:>10,} {res.grad_epoch_s:>8.3f}"
            + "".join(f" {c:>12}" for c in cells)
        )


# ----------------------------------------------------------------------------- main
def is_torch_deprecation(w: warnings.WarningMessage) -> bool:
    """Whether ``w`` is a deprecation raised inside torch itself (e.g. its jvp decompositions'
    ``torch.jit.script`` at the first forward-mode product), which says nothing of ours."""
    torch_dir = str(Path(torch.__file__).parent)
    return issubclass(w.category, DeprecationWarning) and w.filename.startswith(torch_dir)


def parse_args() -> argparse.Namespace:
    """Parses and checks the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for everything (default: torch's choice)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma list of {','.join(MODELS)} (default: all)",
    )
    parser.add_argument(
        "--skip-lanczos", action="store_true", help="leave out the (slowest) lanczos fits"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON here")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models takes a comma list of {','.join(MODELS)}; got {unknown}")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    return args


def main() -> None:
    """Builds the chosen nets, measures each against its floors, prints (and saves) it all."""
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min), "
        f"repeats {args.repeats}, nets {','.join(args.models)}"
    )
    if load[0] > 1.0:
        print(
            "WARNING: load average > 1.0: other processes inflate every timing; rerun on a "
            "quiet machine (or with --threads 1) before trusting the ratios"
        )
    print(
        f"verdict: PASS when ratio <= {PASS_MARGIN:g} × floor; ratios are to one gradient "
        "epoch over the same batches"
    )

    results: list[NetResult] = []
    for key in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # model construction (transformers, peft)
            net = build(key)
        if net is None:
            print(f"\n[{key}] skipped: transformers / peft are not installed (the test extra)")
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = bench_net(net, args.repeats, args.skip_lanczos, slq=key == "mlp")
        # each distinct warning once (they repeat every round), shortened
        seen = dict.fromkeys(
            f"{w.category.__name__} ({Path(w.filename).name}:{w.lineno}): {w.message}"
            for w in caught
            if not is_torch_deprecation(w)
        )
        res.warnings = [w if len(w) <= 240 else w[:237] + "..." for w in seen]
        report_net(res, args.repeats)
        results.append(res)
        del net  # free the net (and the CNN's factors) before the next one

    if results:
        report_scaling(results)
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.1f} s, 1-min load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        payload = {
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "load_average_start": list(load),
            "load_average_end": list(os.getloadavg()),
            "repeats": args.repeats,
            "skip_lanczos": args.skip_lanczos,
            "pass_margin": PASS_MARGIN,
            "nets": [asdict(r) for r in results],
            "total_s": total,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
