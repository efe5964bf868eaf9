"""Reliability diagrams and confidence histograms written as PNG files.

matplotlib is optional (``pip install laplacetorch[plots]``) and imported only when a plot is
drawn. Figures are built with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg`` canvas, so
pyplot, its global figure registry and the global backend are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .metrics import calibration_bins, ece, mce
from .metrics._checks import _check_n_bins, _check_probs

__all__ = ["confidence_histogram", "reliability_diagram"]


def _matplotlib():
    """``(Figure, FigureCanvasAgg)``, or an ImportError saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "laplacetorch.plots needs matplotlib: pip install laplacetorch[plots] "
            "(or pip install matplotlib)"
        ) from e
    return Figure, FigureCanvasAgg


def _check_path(path: str | os.PathLike) -> Path:
    """The output path, refused early when it cannot be written."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path (str or PathLike), got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"path: cannot write a PNG to {str(p)!r}, it is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"path: cannot write a PNG to {str(p)!r}, directory {str(parent)!r} does not exist"
        )
    return p


def _save(fig, canvas, path: Path) -> Path:
    try:
        canvas.print_figure(path, format="png", dpi=fig.dpi)
    except OSError as e:
        raise OSError(f"path: could not write a PNG to {str(path)!r}: {e}") from e
    return path


def reliability_diagram(
    probs: Tensor,
    y: Tensor,
    path: str | os.PathLike,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Writes a top-label reliability diagram to a PNG file.

    The upper panel shows the accuracy accᵦ of each equal-width confidence bin (bars), the gap to
    its mean confidence confᵦ (hatched), and the diagonal acc = conf of perfect calibration; the
    legend gives the ECE and MCE. The lower panel shows the bin counts nᵦ. See
    :func:`laplacetorch.metrics.calibration_bins`.

    Args:
        probs: predictive probabilities ``[B, C]``.
        y: integer labels ``[B]``.
        path: the PNG file to write; its directory must exist.
        n_bins: number of bins, >= 1.
        title: figure title (default none).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: bad ``probs``, ``y`` or ``n_bins``.
        OSError: ``path`` cannot be written.
    """
    bins = calibration_bins(probs, y, n_bins)
    e, m = ece(probs, y, n_bins), mce(probs, y, n_bins)
    out = _check_path(path)
    Figure, FigureCanvasAgg = _matplotlib()

    fig = Figure(figsize=(5, 6), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    edges = bins.edges.numpy()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    full = bins.counts.numpy() > 0
    acc = bins.accuracy.nan_to_num(0.0).numpy()
    conf = bins.confidence.nan_to_num(0.0).numpy()
    ax.bar(left, acc, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(
        left[full],
        (conf - acc)[full],
        bottom=acc[full],
        width=width[full],
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.legend(loc="upper left", title=f"ECE {e:.4f}   MCE {m:.4f}")
    if title:
        ax.set_title(title)
    ax_n.bar(left, bins.counts.numpy(), width=width, align="edge", edgecolor="black")
    ax_n.set(xlabel="confidence (max probability)", ylabel="count")
    return _save(fig, canvas, out)


def confidence_histogram(
    probs_by_name: dict[str, Tensor],
    path: str | os.PathLike,
    n_bins: int = 20,
    title: str | None = None,
    density: bool = True,
) -> Path:
    """Writes overlaid histograms of the confidence max_c pₙ꜀ of several predictives to a PNG.

    Typical uses: one model on in- and out-of-distribution data (``{"in": p_in, "out": p_out}``),
    or several models (MAP, Laplace) on the same data.

    Args:
        probs_by_name: legend label -> predictive probabilities ``[B, C]`` (B and C may differ
            between entries).
        path: the PNG file to write; its directory must exist.
        n_bins: number of equal-width bins on [0, 1], >= 1.
        title: figure title (default none).
        density: normalise each histogram to unit area (default) rather than show counts.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: an empty dict, a bad probability tensor or ``n_bins``.
        OSError: ``path`` cannot be written.
    """
    if not isinstance(probs_by_name, dict) or not probs_by_name:
        raise ValueError(
            "probs_by_name: expected a non-empty dict {name: probs [B, C]}, "
            f"got {probs_by_name!r:.60}"
        )
    _check_n_bins(n_bins)
    conf = {
        str(k): _check_probs(v, f"probs_by_name[{k!r}]").detach().max(-1).values
        for k, v in probs_by_name.items()
    }
    out = _check_path(path)
    Figure, FigureCanvasAgg = _matplotlib()

    fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).numpy()
    for name, c in conf.items():
        ax.hist(
            c.cpu().to(torch.float64).clamp(0, 1).numpy(),
            bins=edges,
            density=density,
            histtype="stepfilled",
            alpha=0.4,
            edgecolor="black",
            label=f"{name} (mean {float(c.to(torch.float64).mean()):.3f})",
        )
    ax.set(xlim=(0, 1), xlabel="confidence (max probability)")
    ax.set_ylabel("density" if density else "count")
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return _save(fig, canvas, out)
