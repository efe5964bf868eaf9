"""The models people have: norm layers, embeddings, attention, tied and frozen weights.

Every structure × the subsets that apply: fit, marglik tuning and the predictive run, nothing
holds an autograd graph, and the exact structures (and the GLM variance of every structure
with exact algebra) equal dense float64 oracles from ``torch.func``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import batches
from torch import nn

from laplacetorch import Laplace, ParameterSubset

DT = torch.float64


class EmbeddingPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class TiedLM(nn.Module):
    """A head tied to the embedding: one parameter used twice counts once."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x).mean(1)))


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[kind](3, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _frozen():
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    m[0].weight.requires_grad_(False)
    return m


def _batchnorm():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten())
    m.append(nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():  # running statistics that are not the identity
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


MODELS = {
    "layernorm": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)),
        lambda g: torch.randn(10, 4, generator=g, dtype=DT),
    ),
    "batchnorm": (_batchnorm, lambda g: torch.randn(10, 1, 6, 6, generator=g, dtype=DT)),
    "embedding": (EmbeddingPool, lambda g: torch.randint(0, 10, (10, 5), generator=g)),
    "encoder": (Encoder, lambda g: torch.randn(10, 5, 4, generator=g, dtype=DT)),
    "tied": (TiedLM, lambda g: torch.randint(0, 5, (10, 3), generator=g)),
    "gru": (lambda: Recurrent("gru"), lambda g: torch.randn(10, 6, 3, generator=g, dtype=DT)),
    "lstm": (lambda: Recurrent("lstm"), lambda g: torch.randn(10, 6, 3, generator=g, dtype=DT)),
    "rnn": (lambda: Recurrent("rnn"), lambda g: torch.randn(10, 6, 3, generator=g, dtype=DT)),
    "frozen": (_frozen, lambda g: torch.randn(10, 4, generator=g, dtype=DT)),
    "conv1d+groupnorm": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 6, 3),
        ),
        lambda g: torch.randn(10, 2, 6, generator=g, dtype=DT),
    ),
}
STRUCTURES = ["full", "diag", "kfac", "ekfac", "block_full", "hutchinson", "lanczos", "operator"]
OPTIONS = {"lanczos": {"rank": 4}, "operator": {"n_probes": 4, "n_steps": 8}}
#: structures whose algebra is exact for the matrix they hold (the GLM variance oracle applies)
EXACT_ALGEBRA = {"full", "diag", "kfac", "ekfac", "block_full", "hutchinson", "lanczos"}


def _setup(name, seed=0):
    torch.manual_seed(seed)
    make, inputs = MODELS[name]
    model = make().to(DT).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = inputs(g)
    n_out = 5 if name == "tied" else 3
    y = torch.randint(0, n_out, (x.shape[0],), generator=g)
    return model, x, y


def _jacobian(la, x):
    """J [N, C, P] by plain autograd (vmap, and so jacrev, cannot run fused RNN kernels)."""
    return torch.autograd.functional.jacobian(lambda t: la.subset.forward(t, x), la.mean)


def _dense_ggn(la, x):
    """Σₙ Jₙᵀ (diag p − p pᵀ) Jₙ of the summed cross-entropy."""
    jac = _jacobian(la, x)
    p = torch.softmax(la.model(x).detach(), -1)
    lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac)


def _no_graph(*tensors):
    return not any(t.requires_grad for t in tensors)


CASES = [
    (m, s, sub)
    for m in MODELS
    for s in STRUCTURES
    for sub in ("all", "last_layer", "subnetwork")
    if sub == "all" or s in ("full", "diag", "kfac")
]


def _subnetwork(model):
    """The first module with weights of its own and the last Linear, by name."""
    from laplacetorch.params import find_last_linear

    first = next(n for n, m in model.named_modules() if list(m.parameters(recurse=False)))
    return sorted({first, find_last_linear(model)[0]})


@pytest.mark.parametrize(("name", "structure", "subset"), CASES)
def test_fit_tune_predict_without_a_graph(name, structure, subset):
    model, x, y = _setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the announcements of diagonal / frozen parameters
        kw = {"subnetwork": _subnetwork(model)} if subset == "subnetwork" else {}
        la = Laplace(
            model, "classification", subset, structure, backend_options=OPTIONS.get(structure), **kw
        ).fit(batches(x, y, 4))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not frozen & set(la.subset.names)
    st = la.structure
    assert _no_graph(st.diagonal(), la.mean, la.log_marginal_likelihood())
    res = la.optimize_prior_precision(method="marglik", n_steps=30)
    assert torch.isfinite(torch.tensor(res.log_marginal_likelihood))
    probs = la(x)
    assert probs.shape == (x.shape[0], y.max().item() + 1 if name != "tied" else 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(x.shape[0], dtype=DT))
    mean, var = la.glm_moments(x)
    assert _no_graph(probs, mean, var, la.sample(3))
    torch.testing.assert_close(mean, model(x).detach())
    if structure in EXACT_ALGEBRA:
        jac = _jacobian(la, x)
        prec = st.precision_dense(la.prior_precision, la.scale())
        torch.testing.assert_close(var, jac @ torch.linalg.inv(prec) @ jac.transpose(1, 2))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("structure", ["full", "diag", "block_full"])
def test_exact_structures_equal_the_dense_ggn(name, structure):
    model, x, y = _setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(model, "classification", "all", structure).fit(batches(x, y, 4))
    g = _dense_ggn(la, x)
    got = la.structure.curvature_dense()
    if structure == "full":
        torch.testing.assert_close(got, g)
    elif structure == "diag":
        torch.testing.assert_close(got, torch.diag(g.diagonal()))
    else:  # block_full: exact within its dense blocks, the diagonal elsewhere
        mask = got != 0
        torch.testing.assert_close(got, torch.where(mask, g, torch.zeros_like(g)))
        torch.testing.assert_close(got.diagonal(), g.diagonal())


def test_frozen_weights_are_never_bayesian_in_all_or_a_subnetwork():
    """Frozen weights are left out of "all" and subnetworks; a frozen last layer is Bayesian,
    chosen by name (tests/models/test_lm_head_last_layer.py)."""
    model = _frozen().to(DT).eval()
    with pytest.warns(UserWarning, match=r"requires_grad=False are not Bayesian.*'0.weight'"):
        sub = ParameterSubset(model, "subnetwork", subnetwork=["0"])
    assert sub.names == ["0.bias"]
    mask = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.bool)
    with pytest.warns(UserWarning, match="left out of the subnetwork mask"):
        sub = ParameterSubset(model, "subnetwork", subnetwork=mask)
    assert sub.n_params == 5 + 18
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the subnetwork"):
        ParameterSubset(model, "subnetwork", subnetwork=["0", "2"])
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        ParameterSubset(model, "all")


def test_kfac_on_attention_uses_kron_blocks_where_layers_are_called():
    """Inside attention, the feed-forward Linears are called as modules (Kron blocks); the
    fused in-projection and out_proj (read by F.multi_head_attention_forward) are not."""
    model, x, y = _setup("encoder")
    with pytest.warns(UserWarning, match="exact diagonal block"):
        la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y, 4))
    kinds = {name: type(b).__name__ for name, _, b in la.structure.blocks}
    assert kinds["enc.linear1"] == kinds["enc.linear2"] == kinds["head"] == "Kron"
    assert kinds["enc.self_attn.in_proj_weight"] == "Diagonal"
    assert kinds["enc.self_attn.out_proj.weight"] == "Diagonal"
    assert kinds["enc.norm1.weight"] == "Diagonal"


@pytest.mark.parametrize("fisher_type", ["exact", "empirical"])
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_loop_fallback_equals_vmap(structure, fisher_type):
    """Where vmap cannot run a model the per-example rows come from a loop: same answers."""
    model, x, y = _setup("layernorm")
    answers = []
    for vmap_ok in (True, False):
        la = Laplace(model, "classification", "all", structure, fisher_type=fisher_type)
        la.subset.vmap_ok = vmap_ok
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            la.fit(batches(x, y, 4))
        answers.append((la.structure.curvature_dense(), la.log_marginal_likelihood(0.5)))
    torch.testing.assert_close(answers[0], answers[1])
    with pytest.warns(UserWarning, match="vmap cannot run this model"):
        Laplace(_setup("gru")[0], "classification", "all", "full").fit(batches(_setup("gru")[1], y))


@pytest.mark.parametrize("name", ["layernorm", "embedding", "gru", "frozen"])
def test_kfac_blocks_are_exact_for_one_datum(name):
    """Layers without weight sharing: B ⊗ A is the exact GGN block for one datum, next to the
    exact diagonal blocks of norms, embeddings and recurrent cells."""
    model, x, y = _setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(model, "classification", "all", "kfac").fit([(x[:1], y[:1])])
    g = _dense_ggn(la, x[:1])
    want = torch.zeros_like(g)
    for _, index, blk in la.structure.blocks:
        if type(blk).__name__ == "Kron":
            want[index[:, None], index] = g[index[:, None], index]
        else:
            want[index, index] = g[index, index]
    assert any(type(b).__name__ == "Kron" for _, _, b in la.structure.blocks)
    torch.testing.assert_close(la.structure.curvature_dense(), want)


def test_the_nn_predictive_of_a_recurrent_model_loops_where_vmap_cannot():
    model, x, y = _setup("gru")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y, 4))
    g = torch.Generator().manual_seed(3)
    probs = la(x, pred_type="nn", n_samples=5, generator=g)
    thetas = la.sample(5, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([torch.softmax(la.subset.forward(t, x), -1) for t in thetas]).mean(0)
    torch.testing.assert_close(probs, expected.detach())


def test_a_model_drawing_random_numbers_in_eval_mode_is_refused():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x + 0.1 * torch.randn_like(x))

    model, x, y = Noisy().to(DT).eval(), *_setup("layernorm")[1:]
    with pytest.raises(ValueError, match="not deterministic: two forward passes"):
        Laplace(model, "classification", "all", "full").fit(batches(x, y))


def test_a_layer_called_another_number_of_times_at_prediction_goes_dense():
    """Layer blocks come from layer factors only where the layer is called once per forward;
    a chunk that calls it twice is computed from dense Jacobians (no wrong factors)."""

    class Adaptive(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mid, self.out = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
            if bool((x[:, 0] > 3).any()):
                h = torch.tanh(self.mid(h))
            return self.out(h)

    torch.manual_seed(0)
    model = Adaptive().to(DT).eval()
    x, y = _setup("layernorm")[1:]
    x = x.clamp(max=2.5)
    la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y))
    xt = x.clone()
    xt[5, 0] = 4.0  # a batch holding example 5 calls mid twice; the probe (example 0) once
    _, var = la.glm_moments(xt[:5])
    _, var_all = la.glm_moments(xt)
    per_example = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda t, i=i: la.subset.forward(t, xt[i : i + 1]), la.mean
            )[0]
            for i in range(len(xt))
        ]
    )
    prec = la.structure.precision_dense(la.prior_precision, la.scale())
    want = per_example @ torch.linalg.inv(prec) @ per_example.transpose(1, 2)
    torch.testing.assert_close(var_all, want)
    torch.testing.assert_close(var, want[:5])
