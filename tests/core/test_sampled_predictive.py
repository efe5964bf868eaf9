"""The streamed sampled predictive on a tiny causal transformer (V = 32, T = 8): linearised
samples f + J ε match N(f, J Π⁻¹ Jᵀ) from the dense covariance within Monte-Carlo error,
the ``mc`` link streams them when the covariance would not fit, and the entropy split of
``la.uncertainty`` adds up and shrinks with the data."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DT
from torch import nn

from laplacetorch import Laplace
from laplacetorch.memory import MemoryBudgetError
from laplacetorch.sampled_predictive import glm_sample_blocks

V, T, D = 32, 8, 8
OPTIONS = {"lanczos": {"rank": 60, "seed": 0}}


class TinyCausalLM(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V]: one causal attention layer."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Parameter(0.1 * torch.randn(T, D))
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.Tanh(), nn.Linear(2 * D, D))
        self.head = nn.Linear(D, V)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))
        self.to(DT)

    def forward(self, ids):
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        t = ids.shape[1]
        h = h + self.attn(h, h, h, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        return self.head(h + self.mlp(h))


def _data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    return ids, torch.roll(ids, -1, 1)  # next token (the last wraps: a fixed target)


def _fit(backend: str, n: int = 16) -> Laplace:
    ids, y = _data(n)
    la = Laplace(TinyCausalLM().eval(), "classification", "all", backend, outputs="sequence",
                 prior_precision=2.0, backend_options=OPTIONS.get(backend))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # attention's tensors: diagonal blocks
        return la.fit([(ids[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)])


@pytest.mark.parametrize("backend", ["full", "diag", "kfac", "ekfac", "lanczos"])
def test_linearised_samples_have_the_dense_glm_mean_and_covariance(backend):
    la = _fit(backend)
    xt = _data(2, seed=5)[0]
    f, var = la.glm_moments(xt)  # [B, T·V], the dense J Π⁻¹ Jᵀ [B, T·V, T·V]
    n = 2000
    gen = torch.Generator().manual_seed(0)
    draws = (la.structure.sample(500, la.prior, la.scale(), gen) for _ in range(n // 500))
    fs = torch.cat(list(glm_sample_blocks(la.subset, la.mean, xt, draws)))  # [S, B, T·V]
    assert fs.shape == (n, *f.shape)
    for b in range(2):
        sigma = var[b]
        tr, fro2 = float(sigma.trace()), float((sigma**2).sum())
        # E‖f̄ − f‖² = tr Σ / S;  E‖Σ̂ − Σ‖²_F = ((tr Σ)² + ‖Σ‖²_F) / S (Gaussian samples)
        mean_err = float(((fs[:, b].mean(0) - f[b]) ** 2).sum())
        assert mean_err < 3 * tr / n, (mean_err, tr / n)
        centred = fs[:, b] - f[b]
        emp = centred.T @ centred / n
        cov_err = float(((emp - sigma) ** 2).sum())
        assert cov_err < 2 * (tr**2 + fro2) / n, (cov_err, (tr**2 + fro2) / n)
        assert cov_err > 0.25 * (tr**2 + fro2) / n  # sampled, not the covariance itself


def test_the_mc_link_streams_samples_when_the_covariance_would_not_fit():
    la = _fit("kfac")
    xt = _data(3, seed=6)[0]
    c = T * V
    need = 3 * c * c * 8  # the [B, T·V, T·V] float64 covariance
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    dense = la(xt, link_approx="mc", n_samples=400, generator=gen())
    la.memory_budget = need // 4  # the covariance no longer fits: streamed samples
    streamed = la(xt, link_approx="mc", n_samples=400, generator=gen())
    assert streamed.shape == dense.shape == (3, T, V)
    torch.testing.assert_close(streamed.sum(-1), torch.ones(3, T, dtype=DT))
    # two Monte-Carlo estimates of the same E[softmax(f)]: 400 samples each
    assert float((streamed - dense).abs().max()) < 0.05
    probit = la(xt)  # an independent approximation of the same mean
    assert float((streamed - probit).abs().mean()) < 0.01


def test_uncertainty_splits_the_entropy_per_position_and_shrinks_with_data():
    xt = _data(4, seed=7)[0]
    parts = {}
    for n in (8, 64):
        la = _fit("kfac", n=n)
        u = la.uncertainty(xt, n_samples=100, generator=torch.Generator().manual_seed(3))
        assert u.total.shape == u.aleatoric.shape == u.epistemic.shape == (4, T)
        assert u.mean.shape == (4, T, V)
        torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)
        assert bool((u.epistemic >= 0).all()) and bool((u.total <= math.log(V) + 1e-9).all())
        p = u.mean
        torch.testing.assert_close(u.total, -(p * p.log()).sum(-1))  # H(E[p])
        parts[n] = float(u.epistemic.mean())
    assert parts[64] < parts[8]  # more data, less epistemic uncertainty
    nn_u = la.uncertainty(xt, "nn", n_samples=20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(nn_u.total, nn_u.aleatoric + nn_u.epistemic)


def test_uncertainty_of_a_gaussian_predictive_is_its_variances():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT).eval()
    x = torch.randn(20, 3, dtype=DT)
    y = torch.randn(20, 2, dtype=DT)
    la = Laplace(net, "regression", "all", "full", sigma_noise=0.3).fit([(x, y)])
    u = la.uncertainty(x[:5])
    _, var = la(x[:5], diagonal_output=True)
    torch.testing.assert_close(u.epistemic, var)
    torch.testing.assert_close(u.aleatoric, torch.full_like(var, 0.09))
    torch.testing.assert_close(u.total, var + 0.09)


def test_a_sample_over_the_memory_limit_is_refused_before_any_draw():
    la = _fit("diag")
    xt = _data(3, seed=8)[0]
    la.memory_limit = 1000  # bytes: one sample of 3 × T·V float64 outputs is ~18 kB × 3

    def no_draw(*args, **kwargs):
        raise AssertionError("a weight draw was made")

    la.structure.sample = no_draw
    with pytest.raises(MemoryBudgetError, match="one function sample of 3 inputs"):
        la.uncertainty(xt, n_samples=4)
