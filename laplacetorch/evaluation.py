"""One call from a trained classifier to a table: MAP against Laplace variants.

For each requested variant (subset of weights × structure) :func:`evaluate` fits, tunes and
predicts, and records accuracy, NLL, ECE, MCE, Brier, optionally OOD detection (AUROC and
FPR at 95% TPR from the max probability, and the mean confidence on OOD data), and the fit /
tune / predict seconds and peak memory.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .datapass import collect
from .laplace import Laplace
from .metrics import accuracy, brier, ece, max_probability, mce, nll, ood_metrics
from .model_call import call_model

__all__ = ["EvaluationTable", "Variant", "evaluate"]

COLUMNS = (
    "acc",
    "nll",
    "ece",
    "mce",
    "brier",
    "ood_auroc",
    "ood_fpr95",
    "ood_conf",
    "fit_s",
    "tune_s",
    "predict_s",
    "peak_mem_mb",
)


@dataclass(frozen=True)
class Variant:
    """A Laplace variant: which weights, which structure, how the prior is tuned."""

    subset: str = "last_layer"
    structure: str = "kfac"
    method: str = "marglik"
    link_approx: str = "probit"

    @property
    def name(self) -> str:
        """Row label; the tuning method and link appear when they are not the defaults."""
        extra = "" if self.method == "marglik" else f" {self.method}"
        extra += "" if self.link_approx == "probit" else f" {self.link_approx}"
        return f"LA {self.subset} {self.structure}{extra}"


@dataclass
class EvaluationTable:
    """Rows of metrics per model (MAP first), printable and serialisable."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    #: test-set probabilities per model and the labels (for reliability diagrams)
    probs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    ood_probs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    labels: torch.Tensor | None = field(default=None, repr=False)

    def table(self) -> str:
        """A fixed-width text table (NaN where a column does not apply)."""
        head = f"{'model':<28}" + "".join(f"{c:>12}" for c in COLUMNS)
        lines = [head, "-" * len(head)]
        for name, row in self.rows.items():
            lines.append(f"{name:<28}" + "".join(f"{row.get(c, math.nan):>12.4f}" for c in COLUMNS))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.rows.items()}

    def to_json(self, path: str | Path) -> Path:
        """Write the rows as JSON (NaN as null)."""
        path = Path(path)
        clean = {
            k: {c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in row.items()}
            for k, row in self.rows.items()
        }
        path.write_text(json.dumps(clean, indent=2))
        return path


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def _predict_all(
    fn, loader: Iterable, model: nn.Module, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and labels over a loader, through the data pass (checks, bar)."""
    p = next(model.parameters())
    out = collect(
        loader,
        lambda x, y: {"p": fn(x), "y": y},
        device=p.device,
        dtype=p.dtype,
        progress=progress,
        desc="predict",
    )
    return out["p"], out["y"]


def _row(probs, y, probs_ood, times, peak) -> dict[str, float]:
    y = y.to(probs.device)
    row = {
        "acc": accuracy(probs, y),
        "nll": float(nll(probs, y)),
        "ece": ece(probs, y),
        "mce": mce(probs, y),
        "brier": brier(probs, y),
    }
    if probs_ood is not None:
        ood = ood_metrics(probs, probs_ood, score="max_prob")
        row.update(
            ood_auroc=ood["auroc"],
            ood_fpr95=ood["fpr_at_95_tpr"],
            ood_conf=float(max_probability(probs_ood).mean()),
        )
    row.update(fit_s=times[0], tune_s=times[1], predict_s=times[2], peak_mem_mb=peak)
    return row


def evaluate(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    variants: Sequence[Variant] = (Variant("last_layer", "kfac"),),
    val_loader: Iterable | None = None,
    ood_loader: Iterable | None = None,
    progress: bool = False,
    laplace_kwargs: dict[str, Any] | None = None,
) -> EvaluationTable:
    """Fit, tune and evaluate each variant of a trained classifier against its MAP.

    Args:
        model: a trained classifier in eval mode, outputs ``[B, C]`` logits.
        train_loader, test_loader: ``(X, y)`` batches.
        variants: the Laplace variants to compare.
        val_loader: validation data, used by variants whose method is ``"gridsearch"``.
        ood_loader: out-of-distribution inputs (labels ignored); must have the test inputs'
            shape.
        laplace_kwargs: further :class:`~laplacetorch.Laplace` arguments for every variant.

    Returns:
        An :class:`EvaluationTable` with a ``"MAP"`` row and one row per variant. Peak memory
        is the process's peak resident set size after the variant (it only grows).
    """
    if not variants:
        raise ValueError("variants must name at least one Laplace variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variants must be distinct; got {names}")
    table = EvaluationTable()
    t0 = time.perf_counter()

    shapes: dict[str, tuple] = {}

    def map_probs(x, role="test"):
        if isinstance(x, torch.Tensor):  # OOD inputs must look like the test inputs
            seen = shapes.setdefault(role, tuple(x.shape[1:]))
            want = shapes.get("test")
            if role == "ood" and want is not None and seen != want:
                raise ValueError(
                    f"ood_loader's inputs have shape [B, {', '.join(map(str, seen))}] but the "
                    f"test inputs [B, {', '.join(map(str, want))}]: out-of-distribution inputs "
                    "must have the test inputs' shape (resize or pad them)"
                )
        with torch.no_grad():
            return torch.softmax(call_model(model, x), -1)

    probs, y = _predict_all(map_probs, test_loader, model, progress)
    t_map = time.perf_counter() - t0
    probs_ood = None
    if ood_loader is not None:
        probs_ood, _ = _predict_all(lambda x: map_probs(x, "ood"), ood_loader, model, progress)
    table.rows["MAP"] = _row(probs, y, probs_ood, (0.0, 0.0, t_map), _peak_rss_mb())
    table.labels = y
    _keep(table, "MAP", probs, probs_ood)
    for v in variants:
        la = Laplace(model, "classification", v.subset, v.structure, **(laplace_kwargs or {}))
        t0 = time.perf_counter()
        la.fit(train_loader, progress=progress)
        t1 = time.perf_counter()
        grid_kw = (
            {"val_loader": val_loader, "progress": progress} if v.method == "gridsearch" else {}
        )
        la.optimize_prior_precision(method=v.method, **grid_kw)
        t2 = time.perf_counter()
        probs, y = _predict_all(
            lambda x, la=la, v=v: la(x, link_approx=v.link_approx), test_loader, model, progress
        )
        t3 = time.perf_counter()
        probs_ood = None
        if ood_loader is not None:
            probs_ood, _ = _predict_all(
                lambda x, la=la, v=v: la(x, link_approx=v.link_approx), ood_loader, model, progress
            )
        table.rows[v.name] = _row(probs, y, probs_ood, (t1 - t0, t2 - t1, t3 - t2), _peak_rss_mb())
        _keep(table, v.name, probs, probs_ood)
    return table


def _keep(table: EvaluationTable, name: str, probs, probs_ood) -> None:
    table.probs[name] = probs.detach().cpu()
    if probs_ood is not None:
        table.ood_probs[name] = probs_ood.detach().cpu()
