"""full and diag curvature against dense float64 oracles from torch.func."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ReuseNet,
    batches,
    dense_ef,
    dense_ggn,
    make_cnn,
    make_data,
    make_mlp,
    make_subset,
    training_loss,
)

from laplacetorch import fit_diag, fit_full, get_likelihood
from laplacetorch.curvature import get_backend

LIKELIHOODS = ["classification", "regression", "binary"]
SUBSETS = ["all", "last_layer", "subnetwork"]


def _model(kind):
    return make_mlp() if kind == "mlp" else make_cnn()


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_full_and_diag_equal_dense_ggn(net, likelihood, subset, reduction):
    model = _model(net)
    x, y = make_data(net, likelihood)
    sub = make_subset(model, subset)
    lik = get_likelihood(likelihood)
    oracle = dense_ggn(sub, x, y, likelihood, reduction)
    full = fit_full(sub, lik, batches(x, y))
    diag = fit_diag(sub, lik, batches(x, y))
    assert full.n_data == len(x) and full.n_outputs == 3
    torch.testing.assert_close(full.structure.curvature_dense(), oracle, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(diag.structure.diagonal(), oracle.diagonal(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("subset", SUBSETS)
def test_empirical_fisher_equals_sum_of_gradient_outer_products(net, likelihood, subset):
    model = _model(net)
    x, y = make_data(net, likelihood)
    sub = make_subset(model, subset)
    lik = get_likelihood(likelihood)
    oracle = dense_ef(sub, x, y, likelihood)
    full = fit_full(sub, lik, batches(x, y), fisher_type="empirical")
    diag = fit_diag(sub, lik, batches(x, y), fisher_type="empirical")
    assert full.kind == "ef"
    torch.testing.assert_close(full.structure.curvature_dense(), oracle, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(diag.structure.diagonal(), oracle.diagonal(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("backend", ["full", "diag"])
def test_loss_sum_is_unit_scale_nll(likelihood, backend):
    model = make_mlp()
    x, y = make_data("mlp", likelihood)
    res = get_backend(backend)(make_subset(model, "all"), get_likelihood(likelihood), batches(x, y))
    loss = training_loss(likelihood, "sum")(model(x), y).detach()
    expected = 0.5 * loss if likelihood == "regression" else loss
    torch.testing.assert_close(res.loss_sum, expected)


@pytest.mark.parametrize("budget", [1, 2000, 10**9])
def test_memory_budget_chunking_does_not_change_the_result(budget):
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    ref = dense_ggn(sub, x, y, "classification")
    full = fit_full(sub, lik, batches(x, y, 12), memory_budget=budget)
    diag = fit_diag(sub, lik, batches(x, y, 12), memory_budget=budget)
    torch.testing.assert_close(full.structure.curvature_dense(), ref)
    torch.testing.assert_close(diag.structure.diagonal(), ref.diagonal())


def test_last_layer_closed_form_without_bias_and_with_named_layer():
    model = make_mlp()
    model[4] = torch.nn.Linear(5, 3, bias=False).double()
    x, y = make_data("mlp", "classification")
    from laplacetorch import ParameterSubset

    sub = ParameterSubset(model, "last_layer", last_layer_name="4")
    assert sub.n_params == 15
    oracle = dense_ggn(sub, x, y, "classification")
    full = fit_full(sub, get_likelihood("classification"), batches(x, y))
    torch.testing.assert_close(full.structure.curvature_dense(), oracle)


@pytest.mark.parametrize("order", ["theta", "reversed", "head"])
def test_last_layer_closed_form_in_any_order_of_theta(order):
    """The closed form returns G over the θ positions asked for, in their order: θ's own
    (the default), any permutation, or the head block's own [W | b] layout (no gather)."""
    from laplacetorch.curvature.last_layer import last_layer_curvature
    from laplacetorch.curvature.layer_blocks import layer_blocks

    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "last_layer")
    oracle = dense_ggn(sub, x, y, "classification")
    if order == "theta":
        index = None
    elif order == "reversed":
        index = torch.arange(sub.n_params).flip(0)
    else:
        index = layer_blocks(sub)[0][0].blocks[0][1]
        assert not torch.equal(index, torch.arange(sub.n_params))  # the bias is interleaved
    lik = get_likelihood("classification")
    g, n, c, _ = last_layer_curvature(sub, lik, batches(x, y), kind="ggn", diagonal=False,
                                      order=index)  # fmt: skip
    d, *_ = last_layer_curvature(sub, lik, batches(x, y), kind="ggn", diagonal=True, order=index)
    want = oracle if index is None else oracle[index][:, index]
    torch.testing.assert_close(g, want)
    torch.testing.assert_close(d, want.diagonal())
    assert (n, c) == (len(x), 3)


def test_dict_inputs_and_batch_size_fn():
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_mlp()

        def forward(self, batch):
            return self.net(batch["x"] * batch["scale"])

    model = DictNet().eval()
    x, y = make_data("mlp", "classification")
    scale = torch.full((len(x), 1), 2.0, dtype=torch.float64)
    loader = [({"x": x[:6], "scale": scale[:6]}, y[:6]), ({"x": x[6:], "scale": scale[6:]}, y[6:])]
    sub = make_subset(model, "all")
    res = fit_diag(sub, get_likelihood("classification"), loader)
    oracle = dense_ggn(make_subset(model.net, "all"), 2 * x, y, "classification")
    torch.testing.assert_close(res.structure.diagonal(), oracle.diagonal())
    res2 = fit_diag(
        sub, get_likelihood("classification"), loader, batch_size_fn=lambda b: len(b["x"])
    )
    assert res2.n_data == len(x)


def test_frozen_weights_stay_frozen_in_subnetwork():
    model = make_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = make_data("mlp", "regression")
    fit_full(make_subset(model, "subnetwork"), get_likelihood("regression"), batches(x, y))
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_diag_takes_the_layer_path_for_linear_and_conv_layers(monkeypatch, net):
    import laplacetorch.curvature.diag as diag_mod
    import laplacetorch.curvature.layer_fit as fit_mod
    import laplacetorch.curvature.per_example as pe_mod

    def refuse(*args, **kwargs):
        raise AssertionError("per-example path used")

    for mod in (diag_mod, fit_mod, pe_mod):
        monkeypatch.setattr(mod, "per_example_diagonal", refuse)
    monkeypatch.setattr(pe_mod, "per_example_factors", refuse)
    model = make_mlp() if net == "mlp" else make_cnn()
    x, y = make_data(net, "classification")
    sub = make_subset(model, "all")
    res = fit_diag(sub, get_likelihood("classification"), batches(x, y))
    oracle = dense_ggn(sub, x, y, "classification")
    torch.testing.assert_close(res.structure.diagonal(), oracle.diagonal())


@pytest.mark.parametrize("mode", ["twice", "tied", "sequence"])
@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
def test_diag_with_reused_tied_and_sequence_linear_layers(mode, fisher_type):
    torch.manual_seed(0)
    model = ReuseNet(mode).eval()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    oracle = (dense_ggn if fisher_type == "exact" else dense_ef)(sub, x, y, "classification")
    res = fit_diag(sub, lik, batches(x, y), fisher_type=fisher_type)
    torch.testing.assert_close(res.structure.diagonal(), oracle.diagonal())


def test_diag_on_a_named_subnetwork_mixes_both_paths():
    model = make_cnn()
    x, y = make_data("cnn", "regression")
    from laplacetorch import ParameterSubset

    sub = ParameterSubset(model, "subnetwork", subnetwork=["0", "4.weight"])
    res = fit_diag(sub, get_likelihood("regression"), batches(x, y))
    torch.testing.assert_close(
        res.structure.diagonal(), dense_ggn(sub, x, y, "regression").diagonal()
    )
