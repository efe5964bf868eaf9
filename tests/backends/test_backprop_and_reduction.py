"""enable_backprop (input gradients of the predictive) and feature_reduction (last layer on
reduced sequence features)."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace


def _fd_grad(fn, x, eps=1e-6):
    g = torch.zeros_like(x)
    flat = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = eps
        e = e.view_as(x)
        flat[i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize(
    ("subset", "structure"),
    [("all", "full"), ("all", "kfac"), ("all", "diag"), ("last_layer", "full")],
)
def test_input_gradients_of_the_glm_predictive_match_finite_differences(subset, structure):
    x, y = make_data("mlp", "regression", n=16)
    la = Laplace(make_mlp(), "regression", subset, structure, enable_backprop=True, sigma_noise=0.5)
    la.fit(batches(x, y))
    xs = x[:3].clone().requires_grad_(True)
    f_mu, f_var = la(xs)
    assert f_mu.requires_grad and f_var.requires_grad
    # against the graph-free predictive of a copy without enable_backprop
    plain = Laplace(make_mlp(), "regression", subset, structure, sigma_noise=0.5).fit(batches(x, y))
    torch.testing.assert_close(f_var.detach(), plain(xs.detach())[1])
    g_mu, g_var = (
        torch.autograd.grad(f_mu[:, 1].sum(), xs, retain_graph=True)[0],
        torch.autograd.grad(f_var[:, 0, 2].sum(), xs)[0],
    )
    fd_mu = _fd_grad(lambda z: plain(z)[0][:, 1].sum(), xs.detach())
    fd_var = _fd_grad(lambda z: plain(z)[1][:, 0, 2].sum(), xs.detach())
    torch.testing.assert_close(g_mu, fd_mu, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_var, fd_var, rtol=1e-5, atol=1e-7)


def test_input_gradients_of_probit_probabilities_and_nn_samples():
    x, y = make_data("mlp", "classification", n=16)
    la = Laplace(make_mlp(), "classification", "all", "full", enable_backprop=True).fit(
        batches(x, y)
    )
    xs = x[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(la(xs)[:, 0].sum(), xs)
    fd = _fd_grad(lambda z: la(z)[:, 0].detach().sum(), xs.detach())
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)

    def nn_pred(z):
        gen = torch.Generator().manual_seed(0)
        return la(z, pred_type="nn", n_samples=8, generator=gen)[:, 0].sum()

    (g_nn,) = torch.autograd.grad(nn_pred(xs), xs)
    torch.testing.assert_close(
        g_nn, _fd_grad(lambda z: nn_pred(z).detach(), xs.detach()), rtol=1e-5, atol=1e-7
    )


def test_without_enable_backprop_nothing_holds_a_graph():
    x, y = make_data("mlp", "regression", n=16)
    la = Laplace(make_mlp(), "regression", "all", "kfac").fit(batches(x, y))
    f_mu, f_var = la(x[:3].clone().requires_grad_(True))
    assert not f_mu.requires_grad and not f_var.requires_grad
    with pytest.raises(TypeError, match="enable_backprop must be a bool"):
        Laplace(make_mlp(), "regression", "all", "kfac", enable_backprop="yes")


class Tokens(nn.Module):
    """Embedding → per-token features [B, T, D] → a head applied per token [B, T, C]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(7, 5).to(DT)
        self.mix = nn.Linear(5, 5).to(DT)
        self.head = nn.Linear(5, 3).to(DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT))

    def features(self, x):
        return torch.tanh(self.mix(self.emb(x)))

    def forward(self, x):
        return self.head(self.features(x))


class Reduced(nn.Module):
    """The same network with the reduction written into the model."""

    def __init__(self, base, how):
        super().__init__()
        self.base, self.how = base, how

    def forward(self, x):
        phi = self.base.features(x)
        phi = {"pick_first": phi[:, 0], "pick_last": phi[:, -1], "average": phi.mean(1)}[self.how]
        return self.base.head(phi)


@pytest.mark.parametrize("how", ["pick_first", "pick_last", "average"])
@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
def test_feature_reduction_equals_the_reduction_in_the_model(how, structure):
    model = Tokens().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 7, (12, 4), generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    la = Laplace(model, "classification", "last_layer", structure, feature_reduction=how)
    la.fit(batches(x, y))
    ref = Laplace(
        Reduced(model, how).eval(),
        "classification",
        "last_layer",
        structure,
        last_layer_name="base.head",
    ).fit(batches(x, y))
    torch.testing.assert_close(la.log_marginal_likelihood(0.7), ref.log_marginal_likelihood(0.7))
    torch.testing.assert_close(la(x[:5]), ref(x[:5]))
    gen = torch.Generator().manual_seed(2)
    nn_la = la(x[:5], pred_type="nn", n_samples=6, generator=gen)
    gen = torch.Generator().manual_seed(2)
    torch.testing.assert_close(nn_la, ref(x[:5], pred_type="nn", n_samples=6, generator=gen))


def test_feature_reduction_is_refused_where_it_has_no_meaning_and_leaves_flat_features():
    with pytest.raises(ValueError, match="feature_reduction must be one of"):
        Laplace(make_mlp(), "classification", "all", "full", feature_reduction="average")
    with pytest.raises(ValueError, match="feature_reduction must be one of"):
        Laplace(make_mlp(), "classification", "last_layer", "full", feature_reduction="max")
    # on features without positions it does nothing (laplace-torch's meaning)
    la = Laplace(make_mlp(), "classification", "last_layer", "full", feature_reduction="average")
    x, y = make_data("mlp", "classification", n=8)
    plain = Laplace(make_mlp(), "classification", "last_layer", "full").fit(batches(x, y))
    torch.testing.assert_close(la.fit(batches(x, y))(x), plain(x))
