"""Result rows, dense-reference accuracy checks and the printed tables of
``bench_matrix_free.py`` (imported from there; see its docstring for what is measured)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from common import BATCH_SIZE, N_TRAIN
from torch import nn
from torch.utils.data import DataLoader

from laplacetorch import ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_diag, fit_full

MATVEC_TARGET = 4.0
LANCZOS_RANK = 20
LANCZOS_FLOOR = 2.5 * LANCZOS_RANK
HUTCH_PROBES = 16
HUTCH_FLOOR = 2.0 * HUTCH_PROBES
DELTAS = (0.1, 1.0, 10.0)
BIG, SMALL = "64-256-256-10", "64-32-32-10"


@dataclass
class MatvecRow:
    """One GGN-vector product timing."""

    model: str
    n_params: int
    block: int
    matvec_s: float
    grad_epoch_s: float
    ratio: float
    per_vector: float
    target: str
    verdict: str


@dataclass
class FitRow:
    """One timed matrix-free fit."""

    model: str
    method: str
    n_params: int
    fit_s: float
    grad_epoch_s: float
    r_fit: float
    data_passes: int
    vectors: int
    matvec_share: float
    floor: str
    note: str


@dataclass
class LogdetRow:
    """One SLQ log det estimate (and its exact value where affordable)."""

    model: str
    delta: float
    estimate: float
    std_err: float
    call_s: float
    exact: float | None = None
    rel_err: float | None = None
    err_over_se: float | None = None


@dataclass
class Accuracy:
    """Accuracy of the small net's Lanczos and Hutchinson fits against dense references."""

    lanczos_rank: int = 0
    lanczos_max_rel_err: float = math.nan
    lanczos_subspace_cos: float = math.nan
    hutch_rel_l2_err: float = math.nan
    hutch_predicted_rel_err: float = math.nan
    dense_logdet_vs_f64: float = math.nan
    notes: list[str] = field(default_factory=list)


def small_references(model: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """The dense GGN of the small net, its float64 eigendecomposition and exact diagonal."""
    subset = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    full = fit_full(subset, lik, loader).structure
    g = full.curvature_dense().to(torch.float64)
    evals, evecs = torch.linalg.eigh((g + g.T) / 2)
    diag = fit_diag(subset, lik, loader).structure.diagonal().to(torch.float64)
    return {
        "full": full,
        "evals": evals.flip(0),
        "evecs": evecs.flip(1),
        "diag": diag,
    }


def lanczos_accuracy(res: Any, ref: dict[str, Any], acc: Accuracy) -> None:
    """Top eigenvalues' max relative error and the subspace cosine against the dense GGN."""
    lam = res.structure.lam.to(torch.float64)
    u = res.structure.U.to(torch.float64)
    r = lam.shape[0]
    acc.lanczos_rank = r
    if r == 0:
        acc.notes.append(f"{SMALL} lanczos returned rank 0")
        return
    true = ref["evals"][:r]
    acc.lanczos_max_rel_err = ((lam - true).abs() / true.abs()).max().item()
    acc.lanczos_subspace_cos = torch.linalg.svdvals(u.T @ ref["evecs"][:, :r]).min().item()
    gap = (ref["evals"][r - 1] - ref["evals"][r]) / ref["evals"][r - 1]
    acc.notes.append(
        f"{SMALL} dense GGN: λ_{r} = {true[-1]:.4g}, relative gap to λ_{r + 1} {gap:.2e}"
    )


def hutch_accuracy(res: Any, ref: dict[str, Any], acc: Accuracy) -> None:
    """Relative L2 error of the Hutchinson diagonal and what its own variance predicts."""
    est = res.structure.diagonal().to(torch.float64)
    exact = ref["diag"]
    norm = exact.norm()
    acc.hutch_rel_l2_err = ((est - exact).norm() / norm).item()
    var = res.structure.variance.to(torch.float64)
    acc.hutch_predicted_rel_err = (var.sum().sqrt() / norm).item()


def exact_logdet(ref: dict[str, Any], acc: Accuracy) -> Callable[[float], float]:
    """δ ↦ ``fit_full(...).structure.logdet(δ)``; also records its largest gap to the float64
    Σ log(λ + δ) of the dense eigenvalues over the benchmarked deltas."""
    full, evals = ref["full"], ref["evals"].clamp_min(0)
    gaps = []
    for delta in DELTAS:
        lib = float(full.logdet(delta))
        f64 = torch.log(evals + delta).sum().item()
        gaps.append(abs(lib - f64) / abs(f64))
    acc.dense_logdet_vs_f64 = max(gaps)
    return lambda delta: float(full.logdet(delta))


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or ``-`` for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def report(
    mv_rows: list[MatvecRow],
    fit_rows: list[FitRow],
    ld_rows: list[LogdetRow],
    acc: Accuracy,
    repeats: int,
) -> None:
    """Print the four tables."""
    print()
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"N = {N_TRAIN}, batch size {BATCH_SIZE}, float32"
    )
    print(
        f"\n1. GGN-vector product over the data / one gradient epoch (median of {repeats} "
        "round-robin rounds after 1 warm-up)"
    )
    header = (
        f"{'model':<14} {'P':>6} {'m':>2} {'matvec s':>9} {'grad ep s':>9} {'ratio':>7} "
        f"{'per vec':>7}  {'target':<10} {'':<4}"
    )
    print(header)
    print("-" * len(header))
    for r in mv_rows:
        print(
            f"{r.model:<14} {r.n_params:>6d} {r.block:>2d} {r.matvec_s:>9.3f} "
            f"{r.grad_epoch_s:>9.4f} {r.ratio:>7.2f} {r.per_vector:>7.2f}  {r.target:<10} "
            f"{r.verdict:<4}"
        )

    print(
        "\n2-4. fits / one gradient epoch (lanczos and slq: one run between gradient epochs; "
        "passes include the operator's statistics pass)"
    )
    header = (
        f"{'model':<14} {'method':<16} {'fit s':>8} {'grad ep s':>9} {'r_fit':>7} "
        f"{'floor':>5} {'passes':>6} {'vectors':>7} {'mv share':>8}  note"
    )
    print(header)
    print("-" * len(header))
    for r in fit_rows:
        print(
            f"{r.model:<14} {r.method:<16} {r.fit_s:>8.2f} {r.grad_epoch_s:>9.4f} "
            f"{r.r_fit:>7.1f} {r.floor:>5} {r.data_passes:>6d} {r.vectors:>7d} "
            f"{fmt(r.matvec_share, '8.0%'):>8}  {r.note}"
        )

    print("\n3. SLQ log det(G + δI) (first call builds the nodes; later calls reuse them)")
    header = (
        f"{'model':<14} {'δ':>5} {'estimate':>12} {'± se':>9} {'call s':>9} {'exact':>12} "
        f"{'rel err':>8} {'err/se':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in ld_rows:
        print(
            f"{r.model:<14} {r.delta:>5g} {r.estimate:>12.2f} {r.std_err:>9.2f} "
            f"{r.call_s:>9.2e} {fmt(r.exact, '12.2f'):>12} {fmt(r.rel_err, '8.2e'):>8} "
            f"{fmt(r.err_over_se, '6.2f'):>6}"
        )
    print(
        f"   (exact = fit_full(...).structure.logdet(δ); its largest relative gap to the float64 "
        f"Σ log(λ+δ) of the dense eigenvalues: {acc.dense_logdet_vs_f64:.1e})"
    )

    print(f"\naccuracy on {SMALL} (dense references from fit_full / fit_diag)")
    print(
        f"  lanczos: rank {acc.lanczos_rank}, top-{acc.lanczos_rank} eigenvalues max rel err "
        f"{acc.lanczos_max_rel_err:.2e}, subspace cosine (min σ of UᵀU_true) "
        f"{acc.lanczos_subspace_cos:.6f}"
    )
    print(
        f"  hutchinson S={HUTCH_PROBES}: ‖d̂ − d‖/‖d‖ = {acc.hutch_rel_l2_err:.3f} "
        f"(its own variance predicts {acc.hutch_predicted_rel_err:.3f})"
    )
    print("notes:")
    for note in acc.notes:
        print(f"  {note}")
    print(
        f"targets: one GGN-vector product <= {MATVEC_TARGET:g} gradient epochs per vector; "
        f"floors: lanczos ~2.5k = {LANCZOS_FLOOR:g}, hutchinson ~2S = {HUTCH_FLOOR:g}"
    )
