"""marglik_training (Immer et al. 2021, Algorithm 1)."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches
from torch import nn

from laplacetorch import Laplace, marglik_training


def _sinusoid(n=120, noise=0.3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=g, dtype=DT) * 8
    y = torch.sin(x) + noise * torch.randn(n, 1, generator=g, dtype=DT)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=60)
    return x, y, loader


def _mlp(n_out=1, n_in=1, width=20):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out)).to(DT)


def test_regression_evidence_rises_and_sigma_is_found():
    _, _, loader = _sinusoid()
    la, model, margliks, losses = marglik_training(
        _mlp(),
        loader,
        "regression",
        "full",
        n_epochs=150,
        optimizer_kwargs={"lr": 1e-2},
        prior_structure="scalar",
        n_hypersteps=5,
    )
    assert len(losses) == 150 and len(margliks) == 150 * 5
    assert margliks[-1] < margliks[0] - 50  # −log evidence falls: the evidence rises
    assert float(la.sigma_noise) == pytest.approx(0.3, rel=0.25)
    assert isinstance(la, Laplace) and la.hessian_structure == "full" and la.n_data == 120
    assert la.prior_precision.numel() == 1
    # the returned Laplace is fitted at the returned model's weights
    torch.testing.assert_close(la.mean, nn.utils.parameters_to_vector(model.parameters()).detach())
    assert not model.training


@pytest.mark.parametrize("structure", ["kron", "diag", "ekfac"])
def test_classification_with_a_layerwise_prior(structure):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(90, 4, generator=g, dtype=DT)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    la, _, margliks, losses = marglik_training(
        _mlp(3, 4, 8),
        batches(x, y, 30),
        "classification",
        structure,
        n_epochs=30,
        optimizer_kwargs={"lr": 1e-2},
        n_hypersteps=3,
        marglik_frequency=5,
        n_epochs_burnin=10,
    )
    assert len(losses) == 30 and len(margliks) == 3 * 5  # epochs 10, 15, 20, 25, 30
    assert la.prior_precision.shape == (4,)  # one per parameter tensor
    assert losses[-1] < losses[0]


def test_the_best_epoch_is_kept():
    """The returned model and δ are those of the hyperparameter step with the best evidence,
    even when later epochs are worse (a learning rate that ends in divergence)."""
    _, _, loader = _sinusoid()
    sched = torch.optim.lr_scheduler.LambdaLR
    la, model, margliks, _ = marglik_training(
        _mlp(),
        loader,
        "regression",
        "full",
        n_epochs=40,
        optimizer_kwargs={"lr": 1e-2},
        scheduler_cls=sched,
        scheduler_kwargs={"lr_lambda": lambda step: 1.0 if step < 40 else 60.0},
        prior_structure="scalar",
        n_hypersteps=2,
    )
    best = min(margliks)
    assert best < margliks[-1]  # it got worse at the end
    # the final Laplace is refitted at the kept weights with the kept hyperparameters
    again = Laplace(
        model,
        "regression",
        "all",
        "full",
        prior_precision=la.prior_precision,
        sigma_noise=la.sigma_noise,
    ).fit(loader)
    torch.testing.assert_close(again.log_marginal_likelihood(), la.log_marginal_likelihood())


def test_fixed_sigma_and_bad_arguments():
    _, _, loader = _sinusoid()
    la, _, _, _ = marglik_training(
        _mlp(), loader, "regression", "diag", n_epochs=3, sigma_noise_init=0.5, fix_sigma_noise=True
    )
    assert float(la.sigma_noise) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weight_decay is the prior's"):
        marglik_training(_mlp(), loader, "regression", optimizer_kwargs={"weight_decay": 1e-3})
    with pytest.raises(ValueError, match="unknown prior_structure 'layer'"):
        marglik_training(_mlp(), loader, "regression", prior_structure="layer")
    with pytest.raises(ValueError, match="n_epochs must be a positive integer"):
        marglik_training(_mlp(), loader, "regression", n_epochs=0)
    with pytest.raises(ValueError, match="empty loader"):
        marglik_training(_mlp(), [], "regression")
