"""Subnetwork selectors (laplace-torch's SubnetMask classes) and compat's utilities."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace
from laplacetorch.compat import FullSubnetLaplace
from laplacetorch.compat.utils import (
    FeatureExtractor,
    LargestMagnitudeSubnetMask,
    LargestVarianceDiagLaplaceSubnetMask,
    LargestVarianceSWAGSubnetMask,
    LastLayerSubnetMask,
    ModuleNameSubnetMask,
    ParamNameSubnetMask,
    RandomSubnetMask,
    expand_prior_precision,
    fit_diagonal_swag_var,
    fix_prior_prec_structure,
    get_nll,
    validate,
)

P = 83  # make_mlp(): 4-6-5-3


def _flat(model):
    return nn.utils.parameters_to_vector(model.parameters()).detach()


def test_largest_magnitude_and_the_subnetwork_laplace():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=16)
    idx = LargestMagnitudeSubnetMask(model, 10).select()
    expected = _flat(model).abs().argsort(descending=True)[:10].sort().values
    assert torch.equal(idx, expected)
    la = FullSubnetLaplace(model, "classification", idx)
    la.fit(batches(x, y))
    mask = torch.zeros(P, dtype=torch.bool)
    mask[idx] = True
    ref = Laplace(model, "classification", "subnetwork", "full", subnetwork=mask).fit(batches(x, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())


def test_random_is_seeded_and_leaves_the_global_rng():
    model = make_mlp()  # building it draws from the global RNG (nn.Linear's init)
    state = torch.random.get_rng_state()
    a = RandomSubnetMask(model, 12, torch.Generator().manual_seed(3)).select()
    b = RandomSubnetMask(model, 12, torch.Generator().manual_seed(3)).select()
    assert torch.equal(a, b) and a.numel() == 12 and torch.equal(a, a.sort().values)
    assert torch.equal(state, torch.random.get_rng_state())


def test_largest_diag_laplace_variance():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=16)
    diag = Laplace(model, "classification", "all", "diag")
    mask = LargestVarianceDiagLaplaceSubnetMask(model, 7, diag)
    idx = mask.select(batches(x, y))  # fits the diagonal Laplace first
    assert diag.curvature is not None and mask.n_params_subnet == 7
    expected = diag.posterior_variance.argsort(descending=True)[:7].sort().values
    assert torch.equal(idx, expected)
    with pytest.raises(ValueError, match="diagonal Laplace over all weights"):
        LargestVarianceDiagLaplaceSubnetMask(
            model, 7, Laplace(model, "classification", "all", "full")
        )


def test_diagonal_swag_with_two_snapshots_is_half_the_step_squared():
    """Two snapshots θ₁, θ₂ (after epochs 1 and 2): Var = ((θ₁ − θ₂)/2)²."""
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=16)
    before = _flat(model).clone()
    var = fit_diagonal_swag_var(
        model, batches(x, y), nn.CrossEntropyLoss(), 2, 1, 0.05, min_var=0.0
    )
    assert torch.equal(_flat(model), before)  # on a copy
    twin = make_mlp()
    opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    snaps = []
    for _ in range(2):
        for xb, yb in batches(x, y):
            opt.zero_grad()
            nn.functional.cross_entropy(twin(xb), yb).backward()
            opt.step()
        snaps.append(_flat(twin))
    torch.testing.assert_close(var, ((snaps[0] - snaps[1]) / 2).square(), rtol=1e-9, atol=1e-15)
    idx = LargestVarianceSWAGSubnetMask(model, 5, swag_n_snapshots=2, swag_lr=0.05).select(
        batches(x, y)
    )
    assert torch.equal(idx, var.argsort(descending=True)[:5].sort().values)


def test_name_masks():
    model = make_mlp()
    sizes = [p.numel() for p in model.parameters()]
    offs = torch.tensor([0, *sizes]).cumsum(0).tolist()
    idx = ParamNameSubnetMask(model, ["2.bias", "0.weight"]).select()
    assert idx.tolist() == list(range(offs[0], offs[1])) + list(range(offs[3], offs[4]))
    idx = ModuleNameSubnetMask(model, ["2"]).select()
    assert idx.tolist() == list(range(offs[2], offs[4]))
    idx = LastLayerSubnetMask(model).select()
    assert idx.tolist() == list(range(offs[4], offs[6]))


def test_bad_selectors_are_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match=r"n_params_subnet must be an integer in \[1, 83\]"):
        LargestMagnitudeSubnetMask(model, 0)
    with pytest.raises(ValueError, match=r"in \[1, 83\]"):
        LargestMagnitudeSubnetMask(model, 84)
    with pytest.raises(ValueError, match="unknown: \\['9.weight'\\]"):
        ParamNameSubnetMask(model, ["9.weight"])
    with pytest.raises(ValueError, match="unknown"):
        ModuleNameSubnetMask(model, ["head"])
    mask = LargestMagnitudeSubnetMask(model, 3)
    with pytest.raises(AttributeError, match="Run select"):
        _ = mask.indices
    mask.select()
    with pytest.raises(ValueError, match="already selected"):
        mask.select()
    with pytest.raises(ValueError, match="SWAG needs train_loader"):
        LargestVarianceSWAGSubnetMask(model, 3).select()


def test_compat_helpers():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=16)
    la = Laplace(model, "classification", "all", "full").fit(batches(x, y))
    probs = la(x)
    assert validate(la, batches(x, y), get_nll) == pytest.approx(
        float(get_nll(probs, y)), rel=1e-12
    )
    assert float(get_nll(probs, y)) == pytest.approx(
        float(-probs[torch.arange(16), y].log().mean())
    )
    d = expand_prior_precision(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=DT), model)
    sizes = [p.numel() for p in model.parameters()]
    assert d.shape == (P,) and d[: sizes[0]].eq(1).all() and d[-sizes[-1] :].eq(6).all()
    assert fix_prior_prec_structure(2.0, "layerwise", 6, P, "cpu", DT).tolist() == [2.0] * 6
    with pytest.raises(ValueError, match="Invalid prior structure"):
        fix_prior_prec_structure(2.0, "blocks", 6, P, "cpu", DT)


def test_feature_extractor():
    model = make_mlp()
    x, _ = make_data("mlp", "classification", n=5)
    fe = FeatureExtractor(model)
    out, phi = fe.forward_with_features(x)
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(phi, model[:-1](x))
    assert not phi.requires_grad
    seq = torch.randn(5, 4, 4, dtype=DT)
    fe = FeatureExtractor(model, feature_reduction="average")
    out, phi = fe.forward_with_features(seq)
    torch.testing.assert_close(phi, model[:-1](seq).mean(1))
    torch.testing.assert_close(out, model[-1](phi))
