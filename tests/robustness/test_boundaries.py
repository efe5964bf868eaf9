"""Every argument checked at the boundary, every invariant stated where it is enforced
(issue 33): the cases an outside fuzz found accepted silently or failing deep inside torch."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace, marglik_training


def _fitted(structure: str = "diag") -> tuple[Laplace, torch.Tensor, torch.Tensor]:
    x, y = make_data("mlp", "classification")
    return Laplace(make_mlp(), "classification", "all", structure).fit(batches(x, y)), x, y


def test_numbers_and_callables_are_checked_by_name_before_any_work():
    net = make_mlp()
    for kw, match in [
        ({"memory_budget": -5}, "memory_budget must be a positive number of bytes; got -5"),
        ({"memory_budget": 0}, "memory_budget must be a positive number of bytes; got 0"),
        ({"memory_limit": -1}, "memory_limit must be a positive number of bytes or None"),
    ]:
        with pytest.raises(ValueError, match=match):
            Laplace(net, "classification", "all", "diag", **kw)
    for kw, match in [
        ({"batch_size_fn": 3}, "batch_size_fn must be a callable"),
        ({"dict_key_y": 0}, "dict_key_y must be a str; got int"),
        ({"ignore_index": "a", "outputs": "sequence"}, "ignore_index must be an int .* str 'a'"),
        ({"ignore_index": None, "outputs": "sequence"}, "ignore_index must be an int"),
    ]:
        with pytest.raises(TypeError, match=match):
            Laplace(net, "classification", "all", "diag", **kw)
    la, x, _ = _fitted()
    before = la.prior_precision.clone()
    for method in ("marglik", "mackay"):
        for tol in (-1.0, 0.0, float("nan")):
            with pytest.raises(ValueError, match="tol must be a positive finite number or None"):
                la.optimize_prior_precision(method=method, tol=tol)
    assert torch.equal(la.prior_precision, before)
    for gen, match in [(np.random.default_rng(0), "numpy.random"), (3, "a seed: pass torch")]:
        for call in (
            lambda g: la(x, pred_type="nn", generator=g),
            lambda g: la(x, link_approx="mc", generator=g),
            lambda g: la.sample(2, generator=g),
            lambda g: la.uncertainty(x, generator=g),
            lambda g: la.predictive_samples(x, generator=g),
        ):
            with pytest.raises(TypeError, match=f"generator must be a torch.Generator.*{match}"):
                call(gen)
    x, y = make_data("mlp", "classification")
    bad = Laplace(make_mlp(), "classification", "all", "diag", batch_size_fn=lambda b: "a")
    with pytest.raises(ValueError, match="batch_size_fn must return .* it returned 'a' \\(str\\)"):
        bad.fit(batches(x, y))


class _Flip(nn.Module):
    """An output width that changes between batches (a model gone wrong)."""

    def __init__(self) -> None:
        super().__init__()
        self.wide, self.a, self.b = True, nn.Linear(4, 3).to(DT), nn.Linear(4, 2).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if self.wide else self.b(x)


@pytest.mark.parametrize("structure", ["diag", "kfac", "full"])
def test_a_fit_has_one_output_width(structure):
    x, y = make_data("mlp", "classification", n=12, n_out=2)
    model = _Flip()

    class Loader:
        def __iter__(self):
            model.wide = True
            yield x[:6], y[:6]
            model.wide = False
            yield x[6:], y[6:]

    la = Laplace(model, "classification", "all", structure)
    msg = "gives 2 outputs per example on this batch but gave 3 on the fit's first: a fit has one"
    with pytest.raises(ValueError, match=msg):
        la.fit(Loader())
    assert la.curvature is None
    model.wide = True
    la.fit(batches(x, y, 6))  # the check ends with the fit: predictions of any batch
    assert la(x).shape == (12, 3)


def _sequence_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5)).to(DT)


def test_positions_state_their_rules():
    net = _sequence_model()
    xs, ys = torch.randint(0, 5, (4, 3)), torch.randint(0, 5, (4, 3))
    # one T per fit: the rule and the fix in the message
    la = Laplace(net, "classification", "all", "diag", outputs="sequence")
    with pytest.raises(ValueError, match="A fit has one number of positions T.*ignore_index=-100"):
        la.fit([(xs, ys), (torch.randint(0, 5, (4, 7)), torch.randint(0, 5, (4, 7)))])
    # [B, T, C] outputs without outputs=
    with pytest.raises(ValueError, match="got \\[4, 3, 5\\]. For one output .*'sequence'"):
        Laplace(net, "classification", "all", "diag").fit([(xs, ys)])
    # every target ignored: the fit warns that the posterior is the prior
    with pytest.warns(UserWarning, match="no likelihood term in the data: every target is ignore"):
        Laplace(net, "classification", "all", "diag", outputs="sequence").fit(
            [(xs, torch.full((4, 3), -100))]
        )
    # empty batches predict empty, with the fit's T
    la = Laplace(net, "classification", "all", "diag", outputs="sequence").fit([(xs, ys)])
    assert la(xs[:0]).shape == (0, 3, 5)
    assert la(xs[:0], pred_type="nn", n_samples=3).shape == (0, 3, 5)
    assert la.uncertainty(xs[:0], n_samples=3).total.shape == (0, 3)
    conv = nn.Conv2d(1, 3, 1).to(DT)
    xi, yi = torch.randn(4, 1, 3, 3, dtype=DT), torch.randint(0, 3, (4, 3, 3))
    la = Laplace(conv, "classification", "all", "diag", outputs="channels_first").fit([(xi, yi)])
    assert la(xi[:0]).shape == (0, 3, 3, 3)


def test_the_models_own_errors_say_what_it_was_given():
    la, x, y = _fitted()
    x5 = torch.randn(12, 5, dtype=DT)
    for override in (True, False):
        with pytest.raises(RuntimeError, match="failed on the fit's first batch, given a tensor of"
                                               " shape \\[8, 5\\]: mat1 and mat2"):  # fmt: skip
            la.fit(batches(x5, y, 12), override=override)
    with pytest.raises(TypeError, match="given a mapping with keys \\['input'\\].*mapping batches"):
        Laplace(make_mlp(), "classification", "all", "diag").fit([({"input": x}, y)])
    with pytest.raises(TypeError, match="x is a mapping \\(keys \\['input'\\]\\) but the fit's"):
        la({"input": x})


def test_a_model_changed_after_fit_is_refused_by_name():
    x, y = make_data("mlp", "classification")
    model = make_mlp()
    la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y))
    model.float()
    msg = "weights are now torch.float32 .* fit was of weights in torch.float64 .*model.to\\("
    with pytest.raises(TypeError, match=msg):
        la(x.float())
    model.double()  # back, with float32's round-off: θ* written back, then it predicts
    la.restore_weights()
    assert la(x).shape == (12, 3)
    body = nn.Sequential(nn.Linear(4, 6, device="meta"), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="parameter '0.weight' is on the meta device"):
        Laplace(body, "classification", "last_layer", "full")


def test_inputs_users_pass_are_taken_or_named():
    x, y = make_data("mlp", "classification")
    mask = np.zeros(83, dtype=bool)
    mask[:7] = True
    la = Laplace(make_mlp(), "classification", "subnetwork", "full", subnetwork=mask)
    assert la.fit(batches(x, y)).n_params == 7
    with pytest.raises(ValueError, match="subnetwork array must be boolean .* or integer"):
        Laplace(make_mlp(), "classification", "subnetwork", "full", subnetwork=mask * 0.5)
    fitted, _, _ = _fitted()
    with pytest.raises(TypeError, match="state must be the dict of la.state_dict\\(\\); got str"):
        fitted.load_state_dict("/tmp/state.pt")
    xr, yr = make_data("mlp", "regression")
    msg = "sigma_noise 1e-200 is not representable in the model's torch.float32"
    with pytest.raises(ValueError, match=msg):
        Laplace(make_mlp().float(), "regression", "all", "diag", sigma_noise=1e-200)
    la = Laplace(make_mlp(), "regression", "all", "diag", temperature=1e-320).fit(batches(xr, yr))
    with pytest.raises(
        ValueError, match="temperature 1e-320 give a likelihood scale 1/\\(σ²T\\) ="
    ):
        la.log_marginal_likelihood()


def test_marglik_training_checks_its_targets_and_stops_when_it_diverges():
    x, y = make_data("mlp", "classification")
    yb = y.clone()
    yb[0] = 9
    with pytest.raises(ValueError, match="classification targets y must lie in \\[0, 2\\]"):
        marglik_training(make_mlp(), batches(x, yb), "classification", n_epochs=1)
    with pytest.warns(RuntimeWarning, match="objective rose from .* optimiser diverged"):
        marglik_training(make_mlp(), batches(x, y), "classification", n_epochs=4,
                         optimizer_kwargs={"lr": 1e4})  # fmt: skip
    xr, yr = make_data("mlp", "regression")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match="the optimiser diverged; lower its learning"):
            marglik_training(make_mlp(), batches(xr, yr * 1e300), "regression", n_epochs=2,
                             optimizer_kwargs={"lr": 1e300})  # fmt: skip


def test_compat_refuses_a_string_sigma_by_name():
    from laplacetorch.compat import Laplace as CompatLaplace

    # laplace-torch's error type for it (a ValueError); the native API's is a TypeError
    with pytest.raises(ValueError, match="sigma_noise must be a real number or a tensor; got str"):
        CompatLaplace(make_mlp(), "regression", sigma_noise="0.5")
    with pytest.raises(TypeError, match="sigma_noise must be a number or a tensor; got str"):
        Laplace(make_mlp(), "regression", sigma_noise="0.5")


def test_the_command_lines_seed_is_bounded():
    out = subprocess.run(
        [sys.executable, "-m", "laplacetorch", "demo", "--seed", str(2**80)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "--seed must be an integer in [0, 9223372036854775807]" in out.stderr


def test_ood_inputs_of_another_shape_are_named_in_evaluate():
    from laplacetorch.evaluation import Variant, evaluate

    x, y = make_data("mlp", "classification")
    ood = [(torch.randn(6, 5, dtype=DT), torch.zeros(6, dtype=torch.long))]
    msg = "ood_loader's inputs have shape \\[B, 5\\] but the test inputs \\[B, 4\\]"
    with pytest.raises(ValueError, match=msg):
        evaluate(make_mlp(), batches(x, y), batches(x, y), ood_loader=ood,
                 variants=[Variant("last_layer", "full")])  # fmt: skip
