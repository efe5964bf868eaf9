"""Smoke test of examples/heteroscedastic_regression.py at a tiny size: both nets trained,
both Laplace approximations fitted and tuned with ``full`` and ``kfac``, the held-out figures
finite and sensible, and the plot written."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import heteroscedastic_regression as ex


def test_the_example_runs_at_a_tiny_size(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: OpenMP hand-offs cost more than the arithmetic
    try:
        out = ex.run(n=120, n_test=300, steps=250, out=tmp_path, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in out.values()), out
    png = tmp_path / "heteroscedastic_regression.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s in ("full", "kfac"):
        for i in range(3):
            assert 0.7 <= out[f"het {s} coverage {i}"] <= 1.0, out
        # the learnt noise grows with the true one (0.09 → 0.46 across x)
        ale = [out[f"het {s} aleatoric sd {i}"] for i in range(3)]
        assert 0.05 < ale[0] < ale[1] < ale[2] < 0.7, ale
        # the epistemic part grows away from the data
        assert out[f"het {s} epistemic out/in"] > 3
        assert -1 < out[f"het {s} nll"] < 1 and -1 < out[f"hom {s} nll"] < 1
    # where the noise is high the homoscedastic band undercovers more than the learnt one
    assert out["het full coverage 2"] > out["hom full coverage 2"]
    assert out["het full nll"] < out["hom full nll"]


def test_the_heteroscedastic_nll_is_the_gaussian_one():
    """The training loss in natural parameters equals −log N(y | f₁e^{−f₂}, e^{−f₂})."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(7, 2, dtype=torch.float64, generator=g)
    y = torch.randn(7, dtype=torch.float64, generator=g)
    var = torch.exp(-f[:, 1])
    ref = -torch.distributions.Normal(f[:, 0] * var, var.sqrt()).log_prob(y)
    torch.testing.assert_close(ex.heteroscedastic_nll(f, y), ref)


def test_train_at_evidence_retrains_at_the_tuned_prior():
    """Each round trains at the previous round's marglik δ (times σ̂² for the squared error)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x, y, _ = ex.make_data(80, g)
        loader = ex.batches(x, y)
        kw = dict(steps=60, lr=1e-2, batch_size=None, seed=0)
        for het in (True, False):
            nets, _ = ex.train_at_evidence(
                lambda h=het: ex.mlp(1, 2 if h else 1, width=8), x, y, het, 0.5, 1, loader,
                "full", **kw,
            )  # fmt: skip
            assert len(nets) == 2 and nets[0][0] == 0.5
            # the second round's δ is the first fit's marglik δ: refit the first net to check
            fit = ex.fit_heteroscedastic if het else ex.fit_homoscedastic
            first = fit(nets[0][1], loader, "full")
            expected = float(first.prior_precision)
            if not het:
                expected *= float(first.sigma_noise) ** 2
            assert math.isclose(nets[1][0], expected, rel_tol=1e-6)
    finally:
        torch.set_num_threads(threads)
