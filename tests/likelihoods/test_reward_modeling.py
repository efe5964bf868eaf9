"""The reward-modelling (Bradley-Terry) likelihood against a hand-built evidence."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DT, batches
from torch import nn
from torch.func import functional_call, jacrev

from laplacetorch import Laplace, marglik_training


class RewardModel(nn.Module):
    """r(x) for single items [B, D] -> [B, 1]; pairs [B, 2, D] -> the two rewards [B, 2]."""

    def __init__(self, d=3, width=6):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 1)).to(DT)

    def forward(self, x):
        if x.dim() == 3:
            return self.net(x).squeeze(-1)
        return self.net(x)


def _pairs(n=24, d=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, d, generator=g, dtype=DT)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    y = ((x[:, 1] - x[:, 0]) @ w > 0).long()  # 1: the second item is preferred
    return x, y


def _theta_fn(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta, x):
        parts = dict(
            zip(
                names,
                (t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True)),
                strict=True,
            )
        )
        return functional_call(model, parts, (x,))

    return f, nn.utils.parameters_to_vector(model.parameters()).detach()


def test_fit_is_bradley_terry_and_the_predictive_is_over_rewards():
    model = RewardModel().eval()
    x, y = _pairs()
    la = Laplace(model, "reward_modeling", "all", "full", prior_precision=0.6).fit(batches(x, y, 8))
    f, theta = _theta_fn(model)
    r = f(theta, x)  # [N, 2]
    loglik = -nn.functional.cross_entropy(r, y, reduction="sum")  # log σ(r_y − r_{1−y}) summed
    bt = r.gather(1, y[:, None]).squeeze(1) - r.gather(1, 1 - y[:, None]).squeeze(1)
    torch.testing.assert_close(loglik, nn.functional.logsigmoid(bt).sum())
    jac = jacrev(f)(theta, x)  # [N, 2, P]
    p = torch.softmax(r, -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("nip,nij,njq->pq", jac, lam, jac)
    prec = ggn + 0.6 * torch.eye(theta.numel(), dtype=DT)
    evidence = loglik - 0.5 * (
        0.6 * theta @ theta + torch.logdet(prec) - theta.numel() * math.log(0.6)
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), evidence)
    # single items: the Gaussian over rewards
    xs = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    f_mu, f_var = la(xs)
    js = jacrev(f)(theta, xs)  # [5, 1, P]
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(f_mu, model(xs).detach())
    torch.testing.assert_close(f_var, js @ cov @ js.transpose(1, 2))
    # pairs with fitting=True: preference probabilities (the classification predictive)
    probs = la(x[:4], fitting=True)
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=DT))
    mu_pair, var_pair = la.glm_moments(x[:4], fitting=True)
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * var_pair.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(probs, torch.softmax(kappa * mu_pair, -1))
    assert la.predictive_samples(xs, n_samples=3).shape == (3, 5, 1)
    assert la(xs, pred_type="nn", n_samples=4)[1].shape == (5, 1)
    with pytest.raises(ValueError, match="n_samples must be at least 2"):  # not a zero variance
        la(xs, pred_type="nn", n_samples=1)
    _, joint_cov = la(xs, joint=True)
    assert joint_cov.shape == (5, 5)


def test_tuning_and_marglik_training_run_on_pairs():
    model = RewardModel()
    x, y = _pairs(48)
    la = Laplace(model.eval(), "reward_modeling", "all", "kfac").fit(batches(x, y, 16))
    res = la.optimize_prior_precision(
        method="gridsearch", val_loader=batches(x, y, 16), grid_size=5
    )
    assert len(res.history) == 5
    la.optimize_prior_precision(method="marglik")
    la2, _, margliks, _ = marglik_training(
        RewardModel(),
        batches(x, y, 16),
        "reward_modeling",
        "full",
        n_epochs=4,
        optimizer_kwargs={"lr": 1e-2},
        n_hypersteps=2,
    )
    assert la2.likelihood == "reward_modeling" and len(margliks) == 8


def test_bad_reward_inputs_are_refused():
    class Single(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1).to(DT)

        def forward(self, x):
            return self.lin(x.reshape(x.shape[0], -1)[:, :3])

    x, y = _pairs()
    with pytest.raises(ValueError, match=r"map inputs \[B, 2, ...\] to the two rewards \[B, 2\]"):
        Laplace(Single(), "reward_modeling", "all", "full").fit(batches(x, y))
    la = Laplace(RewardModel().eval(), "reward_modeling", "all", "full").fit(batches(x, y))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3\] \(single items\)"):
        la(torch.randn(4, 5, dtype=DT))
    with pytest.raises(ValueError, match="sigma_noise is a regression-only option"):
        Laplace(RewardModel(), "reward_modeling", "all", "full", sigma_noise=0.5)
