"""Plots: reliability diagrams and confidence histograms written as PNG files."""

from __future__ import annotations

import sys

import pytest
import torch
from test_metrics import P6, Y6, _random_probs


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_and_histogram_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    from laplacetorch import plots

    p, y = _random_probs(n=100, c=3)
    out = plots.reliability_diagram(p, y, tmp_path / "rel.png", n_bins=10, title="test")
    assert out == tmp_path / "rel.png" and _is_png(out)
    out = plots.confidence_histogram(
        {"in": p, "out": torch.full((5, 3), 1 / 3)}, tmp_path / "h.png"
    )
    assert _is_png(out)
    plots.reliability_diagram(P6, Y6, str(tmp_path / "tiny.png"), n_bins=1)
    assert _is_png(tmp_path / "tiny.png")


def test_plots_unwritable_path_and_bad_input(tmp_path):
    pytest.importorskip("matplotlib")
    from laplacetorch import plots

    missing = tmp_path / "no_such_dir" / "rel.png"
    with pytest.raises(OSError, match=r"no_such_dir.*does not exist"):
        plots.reliability_diagram(P6, Y6, missing)
    with pytest.raises(OSError, match=r"it is a directory"):
        plots.confidence_histogram({"a": P6}, tmp_path)
    assert not missing.exists()
    with pytest.raises(ValueError, match=r"probs_by_name: expected a non-empty dict"):
        plots.confidence_histogram({}, tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"probs_by_name\['a'\]: expected rows summing to 1"):
        plots.confidence_histogram({"a": torch.tensor([[0.5, 0.6]])}, tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"n_bins"):
        plots.reliability_diagram(P6, Y6, tmp_path / "r.png", n_bins=0)


def test_plots_without_matplotlib(tmp_path, monkeypatch):
    from laplacetorch import plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install laplacetorch\[plots\]"):
        plots.reliability_diagram(P6, Y6, tmp_path / "r.png")
