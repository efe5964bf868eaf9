"""Outputs with positions: ``[B, T, C]`` sequences and ``[B, C, H, W]`` maps, each position a
likelihood term, ``ignore_index`` left out; dense float64 oracles over positions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import batches
from torch import nn

from laplacetorch import Laplace

DT = torch.float64


class Tagger(nn.Module):
    """Token classification: [B, T] ids -> [B, T, C] logits."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.hid = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.hid(self.emb(x))))


class Segmenter(nn.Module):
    """Per-pixel classification: [B, 1, H, W] -> [B, C, H, W]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)))


def _tokens(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 7, (8, 4), generator=g)
    y = torch.randint(0, 3, (8, 4), generator=g)
    y[::3, -1] = -100  # padding
    return x, y


def _fit(model, x, y, structure, subset="all", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Laplace(model, "classification", subset, structure, **kw).fit(batches(x, y, 4))


def _oracle(la, x, y, kind="sequence"):
    """(J per position [B, T, C, P], Σₙₜ Jₙₜᵀ Λₙₜ Jₙₜ over the kept positions)."""
    jac = torch.autograd.functional.jacobian(lambda t: la.subset.forward(t, x), la.mean)
    f = la.model(x).detach()
    if kind == "channels_first":
        f, y = f.movedim(1, -1), y
    c = f.shape[-1]
    f, yf = f.reshape(f.shape[0], -1, c), y.reshape(y.shape[0], -1)
    p = torch.softmax(f, -1)
    lam = torch.diag_embed(p) - p[..., None] * p[..., None, :]
    keep = (yf != -100).to(DT)
    j = jac.view(f.shape[0], f.shape[1], c, -1)
    return j, torch.einsum("btcp,bt,btcd,btdq->pq", j, keep, lam, j)


@pytest.mark.parametrize(
    ("structure", "subset"),
    [
        ("full", "all"),
        ("full", "last_layer"),
        ("diag", "all"),
        ("diag", "last_layer"),
        ("block_full", "all"),
    ],
)
def test_curvature_sums_the_kept_positions(structure, subset):
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    la = _fit(model, x, y, structure, subset, outputs="sequence")
    _, g = _oracle(la, x, y)
    got = la.structure.curvature_dense()
    if structure == "diag":
        torch.testing.assert_close(got.diagonal(), g.diagonal())
    elif structure == "full":
        torch.testing.assert_close(got, g)
    else:
        torch.testing.assert_close(got[got != 0], g[got != 0])
    # the evidence: kept positions' log-likelihood, the exact log det
    f = model(x).detach()
    loglik = -torch.nn.functional.cross_entropy(f.reshape(-1, 3), y.reshape(-1), reduction="sum")
    delta = 0.7
    prec = la.structure.precision_dense(delta, 1.0)
    expected = loglik - 0.5 * (
        delta * la.mean.square().sum() + torch.logdet(prec) - la.n_params * math.log(delta)
    )
    torch.testing.assert_close(la.log_marginal_likelihood(delta), expected)


def test_ignored_positions_are_not_likelihood_terms():
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    other = y.clone()
    other[other == -100] = 0
    a = _fit(model, x, y, "kfac", outputs="sequence")
    b = _fit(model, x, other, "kfac", outputs="sequence")
    assert float(b.log_marginal_likelihood()) != pytest.approx(float(a.log_marginal_likelihood()))
    shifted = y.clone()
    shifted[y == -100] = -7
    c = _fit(model, x, shifted, "kfac", outputs="sequence", ignore_index=-7)
    torch.testing.assert_close(c.structure.curvature_dense(), a.structure.curvature_dense())
    torch.testing.assert_close(c.log_marginal_likelihood(), a.log_marginal_likelihood())


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "ekfac", "block_full", "lanczos"])
def test_predictive_per_position(structure):
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    opts = {"backend_options": {"rank": 4}} if structure == "lanczos" else {}
    la = _fit(model, x, y, structure, outputs="sequence", **opts)
    la.optimize_prior_precision(method="marglik")
    probs = la(x)
    assert probs.shape == (8, 4, 3) and not probs.requires_grad
    j, _ = _oracle(la, x, y)
    cov = torch.linalg.inv(la.structure.precision_dense(la.prior_precision, la.scale()))
    var = torch.einsum("btcp,pq,btdq->btcd", j, cov, j)
    kappa = (1 + math.pi / 8 * var.diagonal(dim1=-2, dim2=-1)).rsqrt()
    torch.testing.assert_close(probs, torch.softmax(model(x).detach() * kappa, -1))
    assert la(x, pred_type="nn", n_samples=3).shape == (8, 4, 3)
    assert la.predictive_samples(x, n_samples=3).shape == (3, 8, 4, 3)
    res = la.optimize_prior_precision(
        method="gridsearch", val_loader=batches(x, y, 4), grid=[0.1, 10.0]
    )
    assert len(res.history) == 2


def test_per_pixel_outputs_channels_first():
    torch.manual_seed(0)
    model = Segmenter().to(DT).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 3, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (6, 3, 3), generator=g)
    y[0, 0, 0] = -100
    la = _fit(model, x, y, "full", outputs="channels_first")
    j, gg = _oracle(la, x, y, "channels_first")
    torch.testing.assert_close(la.structure.curvature_dense(), gg)
    probs = la(x)
    assert probs.shape == (6, 3, 3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(6, 3, 3, dtype=DT))
    cov = torch.linalg.inv(la.structure.precision_dense(la.prior_precision, la.scale()))
    var = torch.einsum("btcp,pq,btdq->btcd", j, cov, j)
    kappa = (1 + math.pi / 8 * var.diagonal(dim1=-2, dim2=-1)).rsqrt()
    f = model(x).detach().movedim(1, -1).reshape(6, 9, 3)
    want = torch.softmax(f * kappa, -1).reshape(6, 3, 3, 3).movedim(-1, 1)
    torch.testing.assert_close(probs, want)
    kfac = _fit(model, x, y, "kfac", outputs="channels_first")
    assert kfac(x).shape == (6, 3, 3, 3)


def test_sequence_regression_moments_per_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 2, generator=g, dtype=DT)
    y = torch.randn(6, 4, 2, generator=g, dtype=DT)
    la = Laplace(model, "regression", "all", "full", outputs="sequence", sigma_noise=0.5)
    la.fit(batches(x, y, 3))
    jac = torch.autograd.functional.jacobian(lambda t: la.subset.forward(t, x), la.mean)
    ggn = torch.einsum("bip,biq->pq", jac, jac)
    torch.testing.assert_close(la.structure.curvature_dense(), ggn)
    resid = 0.5 * (y - model(x).detach()).square().sum()
    n = y.numel()
    loglik = -resid / 0.25 - 0.5 * n * math.log(2 * math.pi * 0.25)
    prec = 4.0 * ggn + torch.eye(la.n_params, dtype=DT)
    expected = loglik - 0.5 * (la.mean.square().sum() + torch.logdet(prec))
    torch.testing.assert_close(la.log_marginal_likelihood(1.0), expected)
    mean, cov = la(x)
    assert mean.shape == (6, 4, 2) and cov.shape == (6, 4, 2, 2)
    j = jac.view(6, 4, 2, -1)
    want = torch.einsum("btcp,pq,btdq->btcd", j, torch.linalg.inv(prec), j)  # f only, no σ²
    torch.testing.assert_close(cov, want)
    mean_d, var_d = la(x, diagonal_output=True)  # per position and output
    torch.testing.assert_close(mean_d, mean)
    torch.testing.assert_close(var_d, want.diagonal(dim1=-2, dim2=-1))


def test_bad_sequence_inputs_are_refused():
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    with pytest.raises(ValueError, match="unknown output layout 'tokens'"):
        Laplace(model, "classification", "all", "full", outputs="tokens")
    with pytest.raises(ValueError, match="classification or regression"):
        Laplace(model, "binary", "all", "full", outputs="sequence")
    flat = nn.Sequential(nn.Linear(4, 3)).to(DT).eval()
    with pytest.raises(
        ValueError, match=r"expects model outputs with positions.*got shape \[\d+, 3\]"
    ):
        _fit(flat, torch.randn(8, 4, dtype=DT), y[:, 0], "full", outputs="sequence")
    with pytest.raises(ValueError, match="one class index per position: the outputs have 4 pos"):
        _fit(model, x, y[:, :3], "full", outputs="sequence")
    bad = y.clone()
    bad[1, 1] = 5
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        _fit(model, x, bad, "kfac", outputs="sequence")


def test_mc_fisher_leaves_ignored_positions_out():
    """Sampled targets keep the ignore mask: the MC factors converge to the exact ones."""
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    y[:, 2:] = -100  # half the positions are padding
    exact = _fit(model, x, y, "kfac", outputs="sequence").structure.curvature_dense()
    mc = _fit(
        model,
        x,
        y,
        "kfac",
        outputs="sequence",
        fisher_type="mc",
        backend_options={"mc_samples": 4000, "seed": 1},
    ).structure.curvature_dense()
    assert float((mc - exact).norm() / exact.norm()) < 0.05


class TiedLM(nn.Module):
    """A language model whose output layer is tied to its embedding: [B, T] -> [B, T, V]."""

    def __init__(self, vocab=6, d=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.mix(self.emb(x))))


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "block_full"])
def test_tied_language_model(structure):
    torch.manual_seed(0)
    model = TiedLM().to(DT).eval()
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 6, (6, 5), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[0, -1] = -100
    la = _fit(model, x, y, structure, outputs="sequence")
    assert la.n_params == 6 * 3 + 3 * 3 + 3  # the tied weight counts once
    _, gg = _oracle(la, x, y)
    got = la.structure.curvature_dense()
    if structure == "full":
        torch.testing.assert_close(got, gg)
    else:  # exact diagonals, except KFAC's Kronecker block (weight shared over positions)
        exact = [i for _, i, b in la.structure.blocks if type(b).__name__ != "Kron"]
        index = torch.cat(exact)
        torch.testing.assert_close(got.diagonal()[index], gg.diagonal()[index])
    la.optimize_prior_precision(method="marglik")
    probs = la(x)
    assert probs.shape == (6, 4, 6) and not probs.requires_grad


def test_sequence_state_round_trip():
    torch.manual_seed(0)
    model = Tagger().to(DT).eval()
    x, y = _tokens()
    la = _fit(model, x, y, "kfac", outputs="sequence")
    other = Laplace(model, "classification", "all", "kfac", outputs="sequence")
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other(x), la(x))
    torch.testing.assert_close(other.log_marginal_likelihood(), la.log_marginal_likelihood())


def test_grid_search_nll_of_channels_first_outputs_sums_the_kept_pixels():
    """The validation NLL at each δ: −Σ log p(y) over an image's kept pixels, averaged over
    images, from the channels-first predictive itself."""
    torch.manual_seed(0)
    model = Segmenter().to(DT).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 3, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (6, 3, 3), generator=g)
    y[0, 0, 0] = y[3, 2, 1] = -100
    la = _fit(model, x[:4], y[:4], "full", outputs="channels_first")
    grid = torch.logspace(-1, 1, 3, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an edge of the grid may win
        res = la.optimize_prior_precision(
            method="gridsearch", val_loader=batches(x, y, 4), grid=grid
        )
    want = []
    for d in grid:
        la.prior_precision = d
        probs = la(x)  # [B, C, H, W]
        keep = y != -100
        picked = probs.gather(1, y.clamp_min(0)[:, None])[:, 0]
        want.append(float(-(picked.log() * keep).sum() / 6))
    assert res.history == pytest.approx(want, rel=1e-10)
