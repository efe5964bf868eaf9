"""Choosing Bayesian parameters and the functional model."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cnn, make_data, make_mlp
from torch import nn

from laplacetorch import ParameterSubset


def test_all_weights_flat_vector_and_forward():
    model = make_mlp()
    sub = ParameterSubset(model, "all")
    flat = nn.utils.parameters_to_vector(model.parameters())
    assert sub.n_params == flat.numel()
    torch.testing.assert_close(sub.map_vector(), flat)
    x, _ = make_data("mlp", "regression")
    torch.testing.assert_close(sub.forward(sub.map_vector(), x), model(x))
    assert sub.group_names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    sizes = [p.numel() for p in model.parameters()]
    assert sub.group_index.tolist() == [i for i, k in enumerate(sizes) for _ in range(k)]


def test_functional_forward_with_new_theta_equals_modified_model():
    model = make_cnn()
    x, _ = make_data("cnn", "regression")
    sub = ParameterSubset(model, "subnetwork", subnetwork=["4.weight", "0"])
    assert sub.names == ["0.weight", "0.bias", "4.weight"]
    theta = sub.map_vector() + 0.1
    out = sub.forward(theta, x)
    ref = make_cnn()
    ParameterSubset(ref, "subnetwork", subnetwork=["0", "4.weight"]).assign(theta)
    torch.testing.assert_close(out, ref(x))
    torch.testing.assert_close(sub.forward(sub.map_vector(), x), model(x))


def test_mask_subnetwork_round_trip_and_frozen_entries():
    model = make_mlp()
    total = sum(p.numel() for p in model.parameters())
    mask = torch.zeros(total, dtype=torch.bool)
    mask[[0, 5, 31, 82]] = True
    sub = ParameterSubset(model, "subnetwork", subnetwork=mask)
    flat = nn.utils.parameters_to_vector(model.parameters())
    assert sub.n_params == 4
    torch.testing.assert_close(sub.map_vector(), flat[mask])
    theta = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    named = sub.to_named(theta)
    torch.testing.assert_close(sub.from_named(named), theta)
    full = torch.cat([named.get(n, p.detach()).reshape(-1) for n, p in model.named_parameters()])
    expected = flat.clone()
    expected[mask] = theta
    torch.testing.assert_close(full, expected)
    assert sub.group_index.tolist() == [0, 0, 1, 2]


def test_last_layer_default_and_named():
    model = make_mlp()
    sub = ParameterSubset(model, "last_layer")
    assert sub.last_layer_name == "4" and sub.names == ["4.weight", "4.bias"]
    assert sub.n_params == 18
    sub = ParameterSubset(model, "last_layer", last_layer_name="2")
    assert sub.names == ["2.weight", "2.bias"]
    x, _ = make_data("mlp", "regression")
    phi, out = ParameterSubset(model, "last_layer").features(x)
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(phi, model[:4](x))


def test_last_layer_that_is_not_the_output_is_refused_for_features():
    model = make_mlp()
    sub = ParameterSubset(model, "last_layer", last_layer_name="2")
    x, _ = make_data("mlp", "regression")
    with pytest.raises(ValueError, match="final operation"):
        sub.features(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subset": "some"}, "unknown subset_of_weights 'some'"),
        ({"subset": "subnetwork"}, "needs `subnetwork`"),
        ({"subset": "subnetwork", "subnetwork": torch.zeros(83, dtype=torch.bool)}, "all False"),
        (
            {"subset": "subnetwork", "subnetwork": torch.ones(10, dtype=torch.bool)},
            r"shape \[83\] \(all parameters\); got \[10\]",
        ),
        ({"subset": "subnetwork", "subnetwork": torch.ones(83)}, "must be boolean"),
        ({"subset": "subnetwork", "subnetwork": ["nope"]}, "matches no parameter"),
        ({"subset": "subnetwork", "subnetwork": []}, "empty"),
        ({"subset": "last_layer", "last_layer_name": "1"}, "must be an nn.Linear"),
        ({"subset": "last_layer", "last_layer_name": "9"}, "not a module"),
    ],
)
def test_bad_subsets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParameterSubset(make_mlp(), **kwargs)


def test_no_linear_layer_for_last_layer_and_not_a_module():
    with pytest.raises(ValueError, match="needs an nn.Linear"):
        ParameterSubset(nn.Sequential(nn.Conv2d(1, 1, 3)), "last_layer")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ParameterSubset(lambda x: x, "all")


def test_non_finite_weights_are_refused():
    model = make_mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf \(parameter '2.weight'\)"):
        ParameterSubset(model, "all")
