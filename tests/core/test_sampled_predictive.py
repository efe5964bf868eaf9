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
from laplacetorch.linear_head import split_at_head
from laplacetorch.memory import MemoryBudgetError
from laplacetorch.sampled_predictive import SampleStream, glm_sample_blocks, head_sample_tiles

V, T, D = 32, 8, 8
BIG = (64, 16)  # the tiny transformer: V = 64, T = 16 (P = 1,904)
OPTIONS = {"lanczos": {"rank": 60, "seed": 0}}


class TinyCausalLM(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V]: one causal attention layer."""

    def __init__(self, seed: int = 0, v: int = V, t: int = T):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(v, D)
        self.pos = nn.Parameter(0.1 * torch.randn(t, D))
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.Tanh(), nn.Linear(2 * D, D))
        self.head = nn.Linear(D, v)
        self.register_buffer("mask", torch.triu(torch.ones(t, t, dtype=torch.bool), 1))
        self.to(DT)

    def forward(self, ids):
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        t = ids.shape[1]
        h = h + self.attn(h, h, h, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        return self.head(h + self.mlp(h))


def _data(n: int, seed: int = 1, v: int = V, t: int = T):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (n, t), generator=g)
    return ids, torch.roll(ids, -1, 1)  # next token (the last wraps: a fixed target)


def _fit(backend: str, n: int = 16, size: tuple[int, int] = (V, T), fisher: str = "exact"):
    ids, y = _data(n, 1, *size)
    model = TinyCausalLM(0, *size).eval()
    la = Laplace(model, "classification", "all", backend, outputs="sequence", fisher_type=fisher,
                 prior_precision=2.0, backend_options=OPTIONS.get(backend))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # attention's tensors: diagonal blocks
        return la.fit([(ids[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)])


@pytest.mark.parametrize("backend", ["full", "diag", "kfac", "ekfac", "lanczos"])
def test_linearised_samples_have_the_dense_glm_mean_and_covariance(backend):
    la = _fit(backend, 8, BIG, "mc")  # any posterior will do: a cheaper fit
    xt = _data(2, 5, *BIG)[0]
    f, var = la.glm_moments(xt)  # [B, T·V], the dense J Π⁻¹ Jᵀ [B, T·V, T·V]
    n = 2000
    gen = torch.Generator().manual_seed(0)
    head = split_at_head(la.subset, la.mean, xt)
    assert head is not None  # the path la(x, link_approx="mc") takes on this model

    def draw(k: int) -> torch.Tensor:
        return la.structure.sample(k, la.prior, la.scale(), gen)

    # a budget of 1 GB: the body's tangents of all draws in one pass, each tile all inputs
    c = BIG[0] * BIG[1]
    fs = torch.cat(
        [
            fs.clone()
            for _, fs in head_sample_tiles(head, SampleStream(la.mean, xt, draw, n, 2, c, 8, 10**9))
        ]
    )
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


class TiedLM(TinyCausalLM):
    """The head's weight is the embedding's (GPT-2's tie), and the logits are the head's."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.head.weight = self.embed.weight


class ScaledLM(TinyCausalLM):
    """Logits scaled after the head: the output is not the head's, so no split."""

    def forward(self, ids):
        return 2 * super().forward(ids)


def _split_vs_whole(model, budget: int, subset: str = "all") -> None:
    la = Laplace(model.eval(), "classification", subset, "diag", outputs="sequence",
                 prior_precision=2.0)  # fmt: skip
    ids, y = _data(8)
    la.fit([(ids[:2], y[:2])])
    xt = _data(3, seed=9)[0]
    eps = la.structure.sample(5, la.prior, la.scale(), torch.Generator().manual_seed(0))
    whole = next(glm_sample_blocks(la.subset, la.mean, xt, iter([eps])))
    head = split_at_head(la.subset, la.mean, xt)
    assert head is not None
    used = [0]

    def draw(k: int) -> torch.Tensor:
        used[0] += k
        return eps[used[0] - k : used[0]]

    split = torch.full_like(whole, float("nan"))
    done = torch.zeros(whole.shape[1], dtype=torch.long)  # samples seen of each input
    for rows, fs in head_sample_tiles(
        head, SampleStream(la.mean, xt, draw, 5, 3, T * V, 8, budget)
    ):
        k = len(fs)  # each input's samples come in the order drawn
        assert bool((done[rows] == done[rows.start]).all())
        split[done[rows.start] : done[rows.start] + k, rows] = fs
        done[rows] += k
    assert used[0] == 5 and bool((done == 5).all())
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("budget", [10**9, 3 * T * V * 8])  # all at once; one input a tile
def test_samples_split_at_the_head_equal_the_whole_networks(budget):
    """J ε = φ̇ Wᵀ + φ Ẇᵀ + ḃ: the same samples as the whole network's jvp, head in θ."""
    _split_vs_whole(TinyCausalLM(), budget)


def test_split_samples_with_a_frozen_or_tied_head():
    frozen = TinyCausalLM()
    frozen.head.requires_grad_(False)  # outside θ, as under LoRA: only φ̇ Wᵀ
    _split_vs_whole(frozen, 3 * T * V * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _split_vs_whole(TiedLM(), 3 * T * V * 8)  # the weight in the body and the head
        # last layer: the tied weight Bayesian in the head's use only (no body tangent)
        _split_vs_whole(TiedLM(), 3 * T * V * 8, "last_layer")


def test_no_split_where_the_output_is_not_the_heads():
    la = Laplace(ScaledLM().eval(), "classification", "all", "diag", outputs="sequence")
    ids, y = _data(8)
    la.fit([(ids, y)])
    xt = _data(2, seed=9)[0]
    assert split_at_head(la.subset, la.mean, xt) is None
    u = la.uncertainty(xt, n_samples=4)  # the whole network's samples instead
    assert u.total.shape == (2, T)


@pytest.mark.parametrize("scratch", [False, True])
def test_fused_softmax_and_entropy_equal_softmax_and_xlogy(scratch):
    from laplacetorch.likelihoods import get_likelihood

    lik = get_likelihood("classification")
    f = torch.randn(3, 5, 7, dtype=DT, generator=torch.Generator().manual_seed(0)) * 4
    f[0, 1, 2] = f[2, 0, :3] = -torch.inf  # masked tokens
    p_ref = torch.softmax(f, -1)
    h_ref = -torch.special.xlogy(p_ref, p_ref).sum(-1)
    work = torch.empty_like(f) if scratch else None
    p, h = lik.probs_and_entropy(f.clone(), work)
    torch.testing.assert_close(p, p_ref)
    torch.testing.assert_close(h, h_ref)
    assert not scratch or p.data_ptr() == work.data_ptr()  # written into the buffer


# ---------------------------------------------------------------------- top-k predictive
def test_top_k_matches_the_dense_restricted_glm_predictive():
    """E[softmax(f_K)] for f_K ~ N(f_K*, J_K Π⁻¹ J_Kᵀ): against draws from the dense
    covariance's K × K blocks, per position."""
    la = _fit("kfac")
    xt, k = _data(2, seed=11)[0], 4
    top = la.top_k(xt, k, n_samples=3000, generator=torch.Generator().manual_seed(0))
    f, var = la.glm_moments(xt)  # [B, T·V], [B, T·V, T·V]
    f = f.view(2, T, V)
    torch.testing.assert_close(top.indices, f.topk(k, -1).indices)
    idx = (torch.arange(T)[:, None] * V + top.indices).view(2, T * k)  # flat output ids
    sub = torch.stack([var[b][idx[b]][:, idx[b]] for b in range(2)])  # [B, T·k, T·k]
    f_k = f.gather(-1, top.indices)
    torch.testing.assert_close(top.map_probs, torch.softmax(f_k, -1))
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40000, 2, T * k, dtype=DT, generator=g)
    draws = f_k.reshape(2, T * k) + torch.einsum("bij,sbj->sbi", torch.linalg.cholesky(sub), z)
    ref = torch.softmax(draws.view(-1, 2, T, k), -1).mean(0)
    assert float((top.probs - ref).abs().max()) < 0.02  # 3000 samples against 40000
    assert float((top.probs - top.map_probs).abs().max()) > 0.02  # not the MAP's
    torch.testing.assert_close(top.probs.sum(-1), torch.ones(2, T, dtype=DT))


@pytest.mark.parametrize("model", ["head in theta", "frozen head", "tied head"])
def test_top_k_split_at_the_head_equals_the_whole_networks(model, monkeypatch):
    import laplacetorch.top_k_predictive as top_k_module

    net = {"head in theta": TinyCausalLM, "frozen head": TinyCausalLM, "tied head": TiedLM}
    net = net[model]()
    if model == "frozen head":
        net.head.requires_grad_(False)
    la = Laplace(net.eval(), "classification", "all", "diag", outputs="sequence",
                 prior_precision=2.0)  # fmt: skip
    ids, y = _data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        la.fit([(ids, y)])
    xt = _data(3, seed=12)[0]
    split = la.top_k(xt, 5, n_samples=7, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(top_k_module, "split_at_head", lambda *args: None)
    whole = la.top_k(xt, 5, n_samples=7, generator=torch.Generator().manual_seed(2))
    assert torch.equal(split.indices, whole.indices)
    torch.testing.assert_close(split.probs, whole.probs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.map_probs, whole.map_probs, rtol=1e-12, atol=1e-14)


def test_top_k_refuses_what_it_cannot_give():
    la = _fit("diag", n=8)
    xt = _data(2, seed=13)[0]
    with pytest.raises(ValueError, match=r"k must be at most the number of classes 32; got 33"):
        la.top_k(xt, V + 1)
    with pytest.raises(ValueError, match="k must be"):
        la.top_k(xt, 0)
    with pytest.raises(ValueError, match="empty batch"):
        la.top_k(xt[:0], 3)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT).eval()
    data = [(torch.randn(6, 3, dtype=DT), torch.randn(6, 2, dtype=DT))]
    reg = Laplace(net, "regression", "all", "diag").fit(data)
    with pytest.raises(ValueError, match="top_k is the predictive over the likeliest classes"):
        reg.top_k(torch.randn(2, 3, dtype=DT), 1)


def test_a_classifier_splits_at_its_last_layer_too(monkeypatch):
    """[B, C] outputs of an MLP: the entropy split by the head split equals the whole
    network's, draw for draw."""
    import laplacetorch.sampled_predictive as sampled

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT).eval()
    x, y = torch.randn(30, 3, dtype=DT), torch.randint(0, 4, (30,))
    la = Laplace(net, "classification", "all", "kfac", prior_precision=0.5).fit([(x, y)])
    la.memory_budget = 10**9  # one block of all draws on both paths

    def unc():
        return la.uncertainty(x[:6], n_samples=50, generator=torch.Generator().manual_seed(1))

    assert sampled.split_at_head(la.subset, la.mean, x[:6]) is not None
    split = unc()
    monkeypatch.setattr(sampled, "split_at_head", lambda *args: None)
    whole = unc()
    for part in ("total", "aleatoric", "mean"):
        torch.testing.assert_close(getattr(split, part), getattr(whole, part), rtol=1e-10,
                                   atol=1e-12)  # fmt: skip
    assert float(split.epistemic.mean()) > 1e-4  # the samples do spread


def test_the_split_hooks_leave_other_threads_alone():
    """The head split's hooks act in their own thread: the same model serving plain
    forwards in another thread meanwhile is never stopped at its head."""
    import threading

    la = _fit("kfac")
    xt = _data(3, seed=5)[0]
    ref = la.uncertainty(xt, n_samples=10, generator=torch.Generator().manual_seed(0))
    errors, done = [], threading.Event()

    def plain():
        while not done.is_set():
            try:
                with torch.no_grad():
                    assert la.model(xt).shape == (3, T, V)
            except Exception as err:  # the test reports any failure
                errors.append(err)
                return

    thread = threading.Thread(target=plain)
    thread.start()
    try:
        for _ in range(5):
            u = la.uncertainty(xt, n_samples=10, generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(u.total, ref.total)
    finally:
        done.set()
        thread.join()
    assert not errors, errors


class _InPlaceAfterHead(nn.Module):
    def __init__(self, masked: bool):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head, self.masked = nn.Linear(3, 6), nn.Linear(6, 4), masked
        self.to(DT)

    def forward(self, x):
        out = self.head(torch.tanh(self.body(x)))
        if self.masked:  # a cast, then a change: not the head's output
            return out.float().masked_fill(x[:, :1] > 0.5, -30.0).to(DT)
        return out.mul_(3.0)  # changed in place after the head


@pytest.mark.parametrize("masked", [False, True])
def test_no_split_where_the_heads_output_is_changed_after_it(masked):
    from laplacetorch.linear_head import split_at_head

    x = torch.rand(12, 3, dtype=DT)
    x[0, 0] = 0.1  # the first example (the check's) unmasked
    y = torch.randint(0, 4, (12,))
    la = Laplace(_InPlaceAfterHead(masked).eval(), "classification", "all", "diag").fit([(x, y)])
    assert split_at_head(la.subset, la.mean, x) is None
    la.prior_precision = 1e8  # no spread: E[p] is the MAP's softmax
    u = la.uncertainty(x, n_samples=4)
    with torch.no_grad():
        torch.testing.assert_close(u.mean, torch.softmax(la.model(x), -1), atol=1e-3, rtol=0)


def test_an_empty_batch_has_an_empty_uncertainty():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT).eval()
    x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 4, (10,))
    la = Laplace(net, "classification", "all", "diag").fit([(x, y)])
    u = la.uncertainty(x[:0], n_samples=3)
    assert u.total.shape == (0,) and u.mean.shape == (0, 4)


def test_threads_predicting_at_once_get_the_sequential_answers():
    """Three threads streaming linearised samples from one fitted object: functional calls
    swap the model's parameters and torch's forward-AD levels are process-wide, so the
    library's calls of one model are serialised; every answer equals the sequential one."""
    import threading

    la = _fit("kfac")
    xt = _data(3, seed=5)[0]

    def total():
        return la.uncertainty(xt, n_samples=10, generator=torch.Generator().manual_seed(0)).total

    ref, diffs, errors = total(), [], []

    def worker():
        try:
            for _ in range(4):
                diffs.append(float((total() - ref).abs().max()))
        except Exception as err:  # the test reports any failure
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(diffs) == 12 and max(diffs) == 0.0, (errors, diffs)
