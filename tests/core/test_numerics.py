"""Numerics that must not break on extreme but finite inputs: the Laplace bridge at large
logits, an eigendecomposition that fails in float32."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import pytest
import torch
from conftest import batches, make_data, make_mlp

from laplacetorch import Laplace
from laplacetorch.linalg.eigh import symmetric_eigh
from laplacetorch.links import bridge

getcontext().prec = 50


def _bridge_reference(mean, var):
    """The bridge's mean α/Σα straight from the formula, in Python decimals (no overflow)."""
    c = mean.shape[-1]
    s1 = var.sum(-1)
    total = s1.sum(-1, keepdim=True)
    mu = (mean - s1 * mean.sum(-1, keepdim=True) / total).tolist()
    v = (var.diagonal(dim1=-2, dim2=-1) - s1.square() / total).tolist()
    out = []
    for mu_b, v_b in zip(mu, v, strict=True):
        e = [Decimal(m).exp() for m in mu_b]
        rest = sum(1 / t for t in e)
        alpha = [
            (1 - Decimal(2) / c + t * rest / c**2) / Decimal(w) for t, w in zip(e, v_b, strict=True)
        ]
        out.append([float(a / sum(alpha)) for a in alpha])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [2, 3, 10])
def test_bridge_is_finite_for_large_logits_and_exact_for_moderate_ones(dtype, c):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, c, generator=g, dtype=torch.float64)
    a = torch.randn(5, c, c, generator=g, dtype=torch.float64)
    var = a @ a.mT + 0.1 * torch.eye(c, dtype=torch.float64)
    torch.testing.assert_close(
        bridge(mean.to(dtype), var.to(dtype)), _bridge_reference(mean, var).to(dtype)
    )
    for scale in (1e2, 1e3, 1e4):  # e^{μ} overflows in both dtypes
        probs = bridge((mean * scale).to(dtype), var.to(dtype))
        want = _bridge_reference(mean * scale, var).to(dtype)
        torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-4)


def test_bridge_predictive_of_a_saturated_net_is_finite():
    model = make_mlp()
    with torch.no_grad():
        model[4].weight.mul_(500)
    x, y = make_data("mlp", "classification")
    la = Laplace(model, "classification", "last_layer", "full").fit(batches(x, y))
    for link in ("bridge", "bridge_norm"):
        probs = la(x, link_approx=link)
        assert bool(torch.isfinite(probs).all())


def test_a_float32_eigh_failure_is_retried_in_float64(monkeypatch):
    eigh = torch.linalg.eigh

    def failing_in_float32(a):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return eigh(a)

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a @ a.T
    monkeypatch.setattr(torch.linalg, "eigh", failing_in_float32)
    with pytest.warns(RuntimeWarning, match="failed to converge in torch.float32; it was"):
        evals, evecs = symmetric_eigh(a.float(), "the test matrix")
    assert evals.dtype == torch.float32
    torch.testing.assert_close(evecs @ torch.diag(evals) @ evecs.T, a.float(), rtol=1e-4, atol=1e-4)
    # and through a KFAC fit of a float32 net (its factors decomposed in float32)
    model = make_mlp().float()
    x, y = make_data("mlp", "classification")
    with pytest.warns(RuntimeWarning, match="Kronecker factor"):
        la = Laplace(model, "classification", "all", "kfac").fit(batches(x.float(), y))
    assert math.isfinite(float(la.log_marginal_likelihood()))


def test_a_float64_eigh_failure_gets_a_jitter_then_a_clear_error(monkeypatch):
    eigh = torch.linalg.eigh
    calls = {"n": 0}

    def failing(a):
        calls["n"] += 1
        if calls["n"] <= limit:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return eigh(a)

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    a = torch.eye(4, dtype=torch.float64) * 2
    limit = 1
    with pytest.warns(RuntimeWarning, match="with a jitter"):
        evals, _ = symmetric_eigh(a)
    torch.testing.assert_close(evals, torch.full((4,), 2.0, dtype=torch.float64))
    calls["n"], limit = 0, 5
    with (
        pytest.raises(ValueError, match="eigendecomposition of the curvature failed"),
        pytest.warns(RuntimeWarning),
    ):
        symmetric_eigh(a)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        symmetric_eigh(torch.full((2, 2), float("nan")))


@pytest.mark.parametrize("n_steps", [6, 40])
def test_slq_error_covers_its_quadrature_bias_at_small_priors(n_steps):
    x, y = make_data("mlp", "classification", n=40)
    model = make_mlp()
    op = Laplace(
        model, "classification", "all", "operator", backend_options={"n_steps": n_steps}
    ).fit(batches(x, y))
    full = Laplace(model, "classification", "all", "full").fit(batches(x, y))
    for delta in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        est, err = op.structure.logdet_with_error(delta)
        exact = full.structure.logdet(delta)
        # at δ = 1e-4 the 40-step bias (7 nats) exceeds the probes' standard error (6.8)
        # alone, and 6 steps were 188 nats off: the steps double until the bias is resolved
        assert abs(float(est - exact)) <= float(err), delta
        assert abs(float(est - exact)) < 3.0, delta
    state = op.state_dict()  # the half-step rule persists with the nodes
    again = Laplace(model, "classification", "all", "operator")
    again.load_state_dict(state)
    assert torch.equal(
        again.structure.logdet_with_error(1e-4)[1], op.structure.logdet_with_error(1e-4)[1]
    )
