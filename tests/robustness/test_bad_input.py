"""Bad input reaching the curvature backends gets a clear error."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace, ParameterSubset, fit_diag, fit_full, get_likelihood

LIK = get_likelihood("classification")


@pytest.fixture(params=[fit_full, fit_diag])
def fit(request):
    return request.param


def _setup():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    return model, ParameterSubset(model, "all"), x, y


def test_empty_loader(fit):
    _, sub, _, _ = _setup()
    with pytest.raises(ValueError, match="empty loader"):
        fit(sub, LIK, [])
    with pytest.raises(ValueError, match="empty loader"):
        fit(sub, LIK, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0))))


def test_nan_and_inf_inputs(fit):
    _, sub, x, y = _setup()
    x = x.clone()
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match="inputs X contain NaN or Inf"):
        fit(sub, LIK, batches(x, y))


def test_nan_weights_at_fit_time(fit):
    model, sub, x, y = _setup()
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="weights contain NaN or Inf"):
        fit(sub, LIK, batches(x, y))


def test_labels_out_of_range_and_wrong_shape(fit):
    _, sub, x, y = _setup()
    y = y.clone()
    y[0] = 7
    with pytest.raises(ValueError, match=r"lie in \[0, 2\]"):
        fit(sub, LIK, batches(x, y))
    with pytest.raises(ValueError, match="class indices of shape"):
        fit(sub, LIK, batches(x, torch.zeros(len(x), 3, dtype=torch.long)))


def test_dtype_mismatch_and_bad_batches(fit):
    _, sub, x, y = _setup()
    with pytest.raises(
        TypeError, match="dtype torch.float32 but the model has dtype torch.float64"
    ):
        fit(sub, LIK, batches(x.float(), y))
    with pytest.raises(ValueError, match=r"pair \(X, y\)"):
        fit(sub, LIK, [(x, y, y)])
    with pytest.raises(ValueError, match="batch dimension 12"):
        fit(sub, LIK, [(x, y[:5])])
    with pytest.raises(TypeError, match="DataLoader or an iterable"):
        fit(sub, LIK, x)
    with pytest.raises(ValueError, match="unknown fisher_type 'fisher'"):
        fit(sub, LIK, batches(x, y), fisher_type="fisher")


@pytest.mark.parametrize("module", [nn.Dropout(0.5), nn.BatchNorm1d(4)])
def test_model_in_training_mode_with_dropout_or_batchnorm(fit, module):
    model = nn.Sequential(module, make_mlp()).double()
    model.train()
    x, y = make_data("mlp", "classification")
    with pytest.raises(ValueError, match=r"training mode.*model.eval\(\)"):
        fit(ParameterSubset(model, "all"), LIK, batches(x, y))
    model.eval()
    fit(ParameterSubset(model, "all"), LIK, batches(x, y))  # fine once in eval mode


def test_training_mode_without_stochastic_layers_is_fine(fit):
    model, sub, x, y = _setup()
    model.train()
    assert fit(sub, LIK, batches(x, y)).n_data == len(x)


def test_outputs_that_are_not_2d(fit):
    model = nn.Sequential(make_mlp(n_out=1), nn.Flatten(0))
    x, _ = make_data("mlp", "regression")
    with pytest.raises(ValueError, match=r"outputs must have shape \[batch, C\]"):
        fit(ParameterSubset(model, "all"), get_likelihood("regression"), batches(x, x[:, 0]))


def test_a_bool_is_not_a_count_anywhere():
    """One validator for counts: True is refused where it once read as 1 (marglik's n_steps,
    the operator's probes), as it always was for n_samples."""
    x, y = make_data("mlp", "classification", n=10)
    la = Laplace(make_mlp(), "classification", "all", "diag").fit(batches(x, y))
    with pytest.raises(ValueError, match="n_steps must be a positive integer; got True"):
        la.optimize_prior_precision(method="marglik", n_steps=True)
    with pytest.raises(ValueError, match="n_samples must be a positive integer; got True"):
        la(x, link_approx="mc", n_samples=True)
    op = Laplace(
        make_mlp(), "classification", "all", "operator", backend_options={"n_probes": True}
    )
    with pytest.raises(ValueError, match="n_probes must be a positive integer; got True"):
        op.fit(batches(x, y))
