"""Models and inputs the fit cannot use are refused at the boundary, by their behaviour,
with what was seen and the fix (never a result without a word, never torch's internals)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DT, batches, make_data, make_mlp
from torch import nn

from laplacetorch import HESSIAN_STRUCTURES, Laplace

STRUCTURES = list(HESSIAN_STRUCTURES)  # every backend


class _FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(F.dropout(x, 0.3, training=True))


def _data(likelihood="classification"):
    return make_data("mlp", likelihood, n=16)


@pytest.mark.parametrize(
    "model, match",
    [
        (
            lambda: nn.Sequential(nn.Linear(4, 5), nn.RReLU(), nn.Linear(5, 3)).train(),
            "not deterministic",
        ),
        (lambda: _FunctionalDropout().eval(), "not deterministic"),
        (
            lambda: nn.Sequential(
                nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)
            ).eval(),
            "depends on the other examples",
        ),
        (
            lambda: nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)).eval(),
            "look like probabilities.*Remove the final Softmax",
        ),
        (lambda: nn.Sequential(nn.Linear(4, 1)).eval(), "at least 2 outputs; the model gives 1"),
    ],
)
@pytest.mark.parametrize("structure", ["full", "kfac", "operator"])
def test_a_model_the_fit_cannot_use_is_refused(model, match, structure):
    net = model().to(DT)
    x, y = _data()
    la = Laplace(net, "classification", "all", structure)
    with pytest.raises(ValueError, match=match):
        la.fit(batches(x, y))
    assert la.curvature is None


def test_log_softmax_outputs_are_taken_as_logits():
    net = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(-1)).to(DT).eval()
    x, y = _data()
    probs = Laplace(net, "classification", "all", "full").fit(batches(x, y))(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(x), dtype=DT))


def test_float_class_labels_are_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="integer class indices; got dtype torch.float64"):
        Laplace(make_mlp(), "classification", "all", "diag").fit(batches(x, y.to(DT)))


def test_integer_inputs_into_a_layer_get_the_fix():
    x, y = _data()
    with pytest.raises(TypeError, match=r"inputs of dtype torch.int64.*pass x.to\(torch.float64"):
        Laplace(make_mlp(), "classification", "all", "kfac").fit(batches(x.long(), y))
    la = Laplace(make_mlp(), "classification", "all", "kfac").fit(batches(x, y))
    with pytest.raises(TypeError, match="x has dtype torch.int64 but the training inputs"):
        la(x.long())


def test_options_that_do_not_apply_are_refused():
    net = make_mlp()
    with pytest.raises(ValueError, match="subnetwork is only used with subset_of_weights"):
        Laplace(net, "classification", "all", "full", subnetwork=torch.ones(83, dtype=bool))
    with pytest.raises(ValueError, match="last_layer_name is only used"):
        Laplace(net, "classification", "all", "full", last_layer_name="4")
    with pytest.raises(ValueError, match=r"unknown backend option 'rnak'.*'rank'"):
        Laplace(net, "classification", "all", "lanczos", backend_options={"rnak": 5})
    with pytest.raises(ValueError, match="pass fisher_type to Laplace"):
        Laplace(net, "classification", "all", "kfac", backend_options={"fisher_type": "mc"})
    with pytest.raises(ValueError, match="'mc_samples'.*only with fisher_type='mc'"):
        Laplace(net, "classification", "all", "kfac", backend_options={"mc_samples": 4})
    with pytest.raises(ValueError, match="'seed'.*only with fisher_type='mc'"):
        Laplace(net, "classification", "all", "diag", backend_options={"seed": 4})
    with pytest.raises(ValueError, match="'neumann_terms'.*only with solver='neumann'"):
        Laplace(net, "classification", "all", "operator", backend_options={"neumann_terms": 9})
    with pytest.raises(ValueError, match="'seed'.*only with n_subset"):
        Laplace(net, "classification", "all", "gp", backend_options={"seed": 1})
    with pytest.raises(TypeError, match="backend_options must be a dict"):
        Laplace(net, "classification", "all", "kfac", backend_options=[("seed", 1)])
    # the same options where they apply are taken
    Laplace(
        net,
        "classification",
        "all",
        "kfac",
        fisher_type="mc",
        backend_options={"mc_samples": 4, "seed": 2},
    )
    Laplace(net, "classification", "all", "gp", backend_options={"n_subset": 5, "seed": 1})


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_an_empty_batch_predicts_empty(structure, likelihood):
    x, y = _data(likelihood)
    la = Laplace(make_mlp(), likelihood, "all", structure).fit(batches(x, y))
    if structure in ("operator", "gp") or likelihood == "classification":
        out = la(x[:0])
        out = out if isinstance(out, tuple) else (out,)
        assert tuple(out[0].shape) == (0, 3)
    else:
        f_mu, f_var = la(x[:0])
        assert f_mu.shape == (0, 3) and f_var.shape == (0, 3, 3)
        mu, cov = la(x[:0], joint=True)
        assert mu.shape == (0,) and cov.shape == (0, 0)
    assert la.functional_samples(x[:0], n_samples=4).shape == (4, 0, 3)
    mean, var = la.glm_moments(x[:0])
    assert mean.shape == (0, 3) and var.shape == (0, 3, 3)


def test_the_nn_regression_variance_needs_two_samples():
    x, y = _data("regression")
    la = Laplace(make_mlp(), "regression", "all", "diag").fit(batches(x, y))
    with pytest.raises(ValueError, match="n_samples must be at least 2; got 1"):
        la(x, pred_type="nn", n_samples=1)
    _, var = la(x, pred_type="nn", n_samples=2, generator=torch.Generator().manual_seed(0))
    assert bool((var > 0).all())


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), torch.tensor([1.0, 2.0])])
def test_sigma_and_temperature_are_checked_everywhere(bad):
    x, y = _data("regression")
    la = Laplace(make_mlp(), "regression", "all", "kfac", sigma_noise=0.5).fit(batches(x, y))
    before = la.log_marginal_likelihood().item()
    for call in (
        lambda: la.evidence(sigma_noise=bad),
        lambda: la.log_marginal_likelihood(sigma_noise=bad),
        lambda: la.log_likelihood_at(bad),
        lambda: la.scale(bad),
        lambda: setattr(la, "sigma_noise", bad),
    ):
        # a vector is one σ per output, which this fit (summed over outputs) cannot take
        match = "summed over outputs" if isinstance(bad, torch.Tensor) else "one positive finite"
        with pytest.raises(ValueError, match=match):
            call()
    if isinstance(bad, float):
        with pytest.raises(ValueError, match="temperature must be a positive finite number"):
            la.temperature = bad
    assert la.log_marginal_likelihood().item() == before
    with pytest.raises(TypeError, match="sigma_noise must be a number or a tensor"):
        la.evidence(sigma_noise="0.5")


def test_boundary_cases_of_arguments_and_inputs():
    net = make_mlp()
    with pytest.raises(ValueError, match="on the meta device: load its weights first"):
        Laplace(make_mlp().to("meta"), "classification", "all", "diag")
    with pytest.raises(ValueError, match="prior_mean must be finite"):
        Laplace(net, "classification", "all", "diag", prior_mean=float("nan"))
    x, y = _data()
    la = Laplace(net, "classification", "all", "diag")
    with pytest.raises(ValueError, match="inputs X must have a batch dimension"):
        la.fit([(torch.tensor(1.0, dtype=DT), y[:1])])
    with pytest.raises(TypeError, match="inputs X must be a tensor or a dict of tensors"):
        la.fit([(x.tolist(), y)])
    la.fit(batches(x, y))
    with pytest.raises(ValueError, match="val_loader is only used by method='gridsearch'"):
        la.optimize_prior_precision(method="marglik", val_loader=batches(x, y))
    with pytest.raises(ValueError, match="feature_reduction gives one output per example"):
        Laplace(
            net,
            "classification",
            "last_layer",
            "full",
            outputs="sequence",
            feature_reduction="average",
        )


def test_an_interrupt_in_the_middle_of_a_fit_changes_nothing():
    x, y = _data()
    la = Laplace(make_mlp(), "classification", "all", "kfac").fit(batches(x, y))
    before = la.state_dict()

    def interrupted():
        yield from batches(x, y)[:1]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        la.fit(interrupted())
    after = la.state_dict()
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            [after["mean"], after["loss_sum"]], [before["mean"], before["loss_sum"]], strict=True
        )
    )
    assert after["n_data"] == before["n_data"]
