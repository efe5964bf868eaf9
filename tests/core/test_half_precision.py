"""Half-precision models: the forward and backward run in bfloat16 / float16, every statistic
(θ, f, curvature, losses) is kept in float32, and the answers agree with a float64 reference of
the same weights (the half-precision values, widened) within half precision's round-off."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import DT, batches, make_cnn, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace
from laplacetorch.curvature import BACKENDS

HALF = (torch.bfloat16, torch.float16)
#: relative round-off of one half-precision op (the unit roundoff 2⁻⁸ / 2⁻¹¹)
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
OPTIONS = {
    "hutchinson": {"n_probes": 8, "seed": 1},
    "lanczos": {"rank": 20, "seed": 1},
}


def _pair(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The model in ``dtype`` and its float64 reference with the same (rounded) weights."""
    half = copy.deepcopy(model).to(dtype)
    return half, copy.deepcopy(half).to(DT)


def _fit(model, x, y, backend, subset="all", **kw):
    la = Laplace(model, "classification", subset, backend, backend_options=OPTIONS.get(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # diagonal blocks announced
        return la.fit(batches(x.to(next(model.parameters()).dtype), y, 8), **kw)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", [b for b, e in BACKENDS.items() if e.half_precision])
def test_every_backend_on_a_half_precision_model_matches_float64(backend, dtype):
    x, y = make_data("mlp", "classification", n=32)
    half, ref = _pair(make_mlp(), dtype)
    la, la64 = _fit(half, x, y, backend), _fit(ref, x, y, backend)
    assert la.mean.dtype == torch.float32
    assert half[0].weight.dtype == dtype  # the model itself is not widened
    tol = 40 * UNIT[dtype]
    for d in (0.5, 4.0):
        ev, ev64 = float(la.evidence(d)), float(la64.evidence(d))
        assert abs(ev - ev64) <= tol * abs(ev64), (d, ev, ev64)
    xt = x[:6]
    mean, var = la.glm_moments(xt.to(dtype))
    mean64, var64 = la64.glm_moments(xt)
    assert mean.dtype == var.dtype == torch.float32
    scale = float(var64.abs().max())
    torch.testing.assert_close(mean.double(), mean64, atol=tol * float(mean64.abs().max()), rtol=0)
    torch.testing.assert_close(var.double(), var64, atol=tol * scale, rtol=0)
    p, p64 = la(xt.to(dtype)), la64(xt)
    torch.testing.assert_close(p.double(), p64, atol=tol, rtol=0)


@pytest.mark.parametrize("backend", ["full", "kfac", "diag"])
def test_a_half_cnn_and_tuning(backend):
    x, y = make_data("cnn", "classification", n=24)
    half, ref = _pair(make_cnn(), torch.bfloat16)
    la, la64 = _fit(half, x, y, backend), _fit(ref, x, y, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        d = la.optimize_prior_precision(method="marglik").prior_precision
        d64 = la64.optimize_prior_precision(method="marglik").prior_precision
    assert d.dtype == torch.float32
    assert abs(float(d) / float(d64) - 1) < 0.02  # the tuned δ within 2 %


class _AdapterOnHalfBackbone(nn.Module):
    """A frozen half-precision body and a float32 head whose output is cast back to the
    body's dtype (what peft's LoRA layers on a bf16 model do)."""

    def __init__(self, dtype: torch.dtype, head_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.body = make_mlp(n_out=5).to(dtype).requires_grad_(False)
        self.head = nn.Linear(5, 3).to(head_dtype)
        self.dtype = dtype

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)).to(self.head.weight.dtype)).to(self.dtype)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("backend", ["full", "kfac", "diag"])
def test_float32_adapters_on_a_half_precision_backbone(subset, backend):
    x, y = make_data("mlp", "classification", n=24)
    model = _AdapterOnHalfBackbone(torch.bfloat16).eval()
    ref = copy.deepcopy(model).to(DT).eval()
    ref.dtype = DT
    la = Laplace(model, "classification", subset, backend).fit(batches(x.bfloat16(), y, 8))
    la64 = Laplace(ref, "classification", subset, backend).fit(batches(x, y, 8))
    assert la.subset.weight_dtype == torch.float32 and la.subset.input_dtype == torch.bfloat16
    assert la.n_params == 18  # the head alone: the frozen body is not Bayesian
    tol = 40 * UNIT[torch.bfloat16]
    ev, ev64 = float(la.evidence(1.0)), float(la64.evidence(1.0))
    assert abs(ev - ev64) <= tol * abs(ev64)
    torch.testing.assert_close(la(x[:5].bfloat16()).double(), la64(x[:5]), atol=tol, rtol=0)


def test_half_precision_state_round_trip_and_weight_draws():
    x, y = make_data("mlp", "classification", n=24)
    half = make_mlp().to(torch.bfloat16)
    la = _fit(half, x, y, "kfac")
    state = la.state_dict()
    fresh = Laplace(copy.deepcopy(half), "classification", "all", "kfac")
    fresh.load_state_dict(state)
    xt = x[:5].bfloat16()
    torch.testing.assert_close(fresh(xt), la(xt), rtol=0, atol=0)
    draws = la.sample(4, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and draws.shape == (4, la.n_params)
    probs = la(xt, pred_type="nn", n_samples=8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert half[0].weight.dtype == torch.bfloat16  # weight draws never written into the model


def test_inputs_of_another_dtype_than_the_half_model_are_refused():
    x, y = make_data("mlp", "classification", n=16)
    la = Laplace(make_mlp().to(torch.bfloat16), "classification", "all", "kfac")
    with pytest.raises(TypeError, match="dtype torch.float32 but the model has dtype torch.bfl"):
        la.fit(batches(x.float(), y))
    assert la.curvature is None  # nothing fitted
    la.fit(batches(x.bfloat16(), y))
    with pytest.raises(TypeError, match="x has dtype torch.float64|dtype torch.bfloat16"):
        la(x[:3])


def test_bayesian_weights_of_two_dtypes_are_refused():
    net = make_mlp()
    net[4].float()
    with pytest.raises(ValueError, match="share one dtype and one device"):
        Laplace(net, "classification", "all", "diag")
    with pytest.raises(TypeError, match="expected one of"):
        Laplace(make_mlp().to(torch.complex64), "classification", "all", "diag")


@pytest.mark.parametrize("backend", [b for b, e in BACKENDS.items() if not e.half_precision])
def test_backends_that_need_accurate_products_refuse_a_half_model(backend):
    la = Laplace(make_mlp().to(torch.bfloat16), "classification", "all", backend)
    with pytest.raises(TypeError, match="needs products more accurate than the model's torch.bf"):
        la.fit(_Untouchable())
    assert la.curvature is None


class _Untouchable:
    """A loader that fails the test when iterated (a refusal comes before any pass)."""

    def __iter__(self):
        raise AssertionError("the loader was iterated")

    def __len__(self):
        return 1


def test_kronecker_factors_are_decomposed_in_float64():
    """A float32 factor (what a half-precision model accumulates) with eigenvalues from 1e-6
    to 1: float32 eigh misses the small ones by ε·‖B‖, the structure's float64 does not."""
    from laplacetorch.structures import Kron

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=g))
    b = ((q * torch.logspace(-6, 0, 64, dtype=torch.float64)) @ q.T).float()
    exact = torch.linalg.eigvalsh(b.double())  # of the float32 matrix itself
    rel32 = ((torch.linalg.eigvalsh(b).double() - exact).abs() / exact).max()
    assert rel32 > 1e-3  # the test can fail: float32 LAPACK is this far off
    kron = Kron(b, torch.eye(3), wide=True)  # as for a half-precision model
    assert kron.lb.dtype == torch.float32
    assert float(((kron.lb.double() - exact).abs() / exact).max()) < 1e-6


@pytest.mark.parametrize("backend", ["diag", "kfac", "full", "lanczos"])
def test_a_float32_model_under_the_users_autocast(backend):
    """The user's ``torch.autocast(bfloat16)`` around fit and predict: the forward and
    backward run in bf16 as the user asked, every statistic stays float32, and the answers
    are the float32 fit's within bf16 round-off."""
    x, y = make_data("mlp", "classification", n=32)
    model = make_mlp().float()
    ref = _fit(model, x.float(), y, backend)
    la = Laplace(model, "classification", "all", backend, backend_options=OPTIONS.get(backend))
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        la.fit(batches(x.float(), y, 8))
        p = la(x[:6].float())
        ev = float(la.evidence(2.0))
    assert la.mean.dtype == p.dtype == torch.float32
    ev_ref = float(ref.evidence(2.0))
    assert abs(ev - ev_ref) <= 40 * UNIT[torch.bfloat16] * abs(ev_ref), (ev, ev_ref)
    assert ev != ev_ref  # autocast did run in bf16
    torch.testing.assert_close(p, ref(x[:6].float()), atol=40 * UNIT[torch.bfloat16], rtol=0)
