"""Last-layer Laplace on a tied or frozen LM head (issue 31, item 4).

The rule under test: ``subset_of_weights="last_layer"`` makes the head's weights Bayesian
even when frozen, and a head weight tied to the embedding only in the head's use of it (the
body keeps the trained embedding), announced once. Every path must agree with a dense float64
oracle built on a copy of the model whose head owns its weight: the closed-form features, the
layer factors, the functional calls (dense Jacobians, jvp, vjp), weight samples and restore.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from conftest import batches
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp

from laplacetorch import Laplace, ParameterSubset
from laplacetorch.memory import MemoryBudgetError
from laplacetorch.model_call import KeywordInputs, call_model
from laplacetorch.persistence import WeightsChangedError
from laplacetorch.predictive import dense_jacobians

DT = torch.float64
V, D, T, N = 7, 4, 3, 6


class TiedNet(nn.Module):
    """Token ids ``[B, T]`` → logits ``[B, V]`` (mean-pooled) or ``[B, T, V]`` (``sequence``):
    an embedding, a hidden layer, and a head whose weight is the embedding's."""

    def __init__(self, sequence: bool = False, seed: int = 0, tied: bool = True) -> None:
        super().__init__()
        self.sequence = sequence
        self.emb, self.hidden, self.head = nn.Embedding(V, D), nn.Linear(D, D), nn.Linear(D, V)
        if tied:
            self.head.weight = self.emb.weight
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.8 * torch.randn(p.shape, generator=g))
        self.to(DT).eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(self.emb(ids)))
        return self.head(h if self.sequence else h.mean(1))


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (N, T), generator=g)
    return x, torch.randint(0, V, (N, T), generator=g)


def _targets(model: TiedNet, y: torch.Tensor) -> torch.Tensor:
    return y if model.sequence else y[:, 0]


def _laplace(model: nn.Module, structure: str, **kw) -> Laplace:
    sequence = getattr(model, "sequence", False) and "feature_reduction" not in kw
    seq = {"outputs": "sequence"} if sequence else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tie's notice (tested on its own)
        return Laplace(model, "classification", "last_layer", structure, **seq, **kw)


def _fit(model: TiedNet, structure: str, **kw) -> Laplace:
    x, y = _data()
    la = _laplace(model, structure, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return la.fit(batches(x, _targets(model, y), 4))


def _untied(model: TiedNet) -> TiedNet:
    """The oracle's model: a copy whose head owns a copy of the tied weight."""
    m = copy.deepcopy(model)
    m.head.weight = nn.Parameter(model.head.weight.detach().clone())
    return m


def _head_call(model: TiedNet, x: torch.Tensor):
    """θ* = [vec(W), b] of the head and θ ↦ f(θ, x) ``[B, K]`` (K = C or T·V) on the untied
    copy: only the head's use of the weight varies."""
    m = _untied(model)
    w, b = m.head.weight.detach(), m.head.bias.detach()

    def f(theta: torch.Tensor) -> torch.Tensor:
        params = {"head.weight": theta[: w.numel()].view_as(w), "head.bias": theta[w.numel() :]}
        return functional_call(m, params, (x,)).reshape(x.shape[0], -1)

    return torch.cat([w.reshape(-1), b]), f


def _oracle_ggn(model: TiedNet, x: torch.Tensor) -> torch.Tensor:
    """Σₙ Σₜ Jₙₜᵀ (diag p − p pᵀ) Jₙₜ over the head's use of its weight, dense float64."""
    theta, f = _head_call(model, x)
    jac = jacrev(f)(theta).reshape(x.shape[0], -1, V, theta.numel())  # [B, T', V, P]
    p = f(theta).reshape(x.shape[0], -1, V).softmax(-1)
    lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("btcp,btcd,btdq->pq", jac, lam, jac)


# ---------------------------------------------------------------------------- the rule


def test_a_tied_head_is_announced_once_naming_both_parameters():
    model = TiedNet()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sub = ParameterSubset(model, "last_layer")
    notes = [str(w.message) for w in seen]
    assert len(notes) == 1, notes
    assert re.search(r"'head\.weight' is 'emb\.weight'.*only the head's use", notes[0])
    assert sub.names == ["head.weight", "head.bias"] and sub.n_params == V * D + V
    assert sub.head_tied == {"head.weight": ["emb.weight"]}


def test_a_frozen_head_is_bayesian_without_a_word_and_all_still_refuses_it():
    model = TiedNet(tied=False).requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notice: the user named the head
        sub = ParameterSubset(model, "last_layer")
    assert sub.names == ["head.weight", "head.bias"] and sub.head_tied == {}
    with pytest.raises(ValueError, match="model has no parameters with requires_grad=True"):
        ParameterSubset(model, "all")
    with (
        pytest.warns(UserWarning, match="left out of the subnetwork"),
        pytest.raises(ValueError, match=r"every parameter of the subnetwork .*'head\.weight'"),
    ):
        ParameterSubset(model, "subnetwork", subnetwork=["head"])


def test_all_keeps_the_tie_and_last_layer_unties_it_in_the_functional_call():
    """θ = 2θ* of the head: under "last_layer" the body keeps the trained embedding (the
    untied copy's output), under "all" the one tensor doubles everywhere."""
    model, (x, _) = TiedNet(sequence=True), _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = ParameterSubset(model, "last_layer")
    theta, f = _head_call(model, x)
    torch.testing.assert_close(head.forward(2 * head.map_vector(), x).reshape(N, -1), f(2 * theta))
    # any caller of call_model with the subset's weights gets the head untied
    untied = call_model(model, x, head._weights(2 * head.map_vector()))
    torch.testing.assert_close(untied.reshape(N, -1), f(2 * theta))
    everything = ParameterSubset(model, "all")
    doubled = copy.deepcopy(model)
    with torch.no_grad():
        for p in doubled.parameters():
            p.mul_(2)
    torch.testing.assert_close(everything.forward(2 * everything.map_vector(), x), doubled(x))
    tied = call_model(model, x, everything._weights(2 * everything.map_vector()))
    torch.testing.assert_close(tied, doubled(x))
    assert not torch.allclose(doubled(x).reshape(N, -1), f(2 * theta))


def test_restricted_takes_whole_tensors_of_the_subset():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = ParameterSubset(TiedNet(), "last_layer")
    assert sub.restricted(["head.bias"]).n_params == V
    with pytest.raises(ValueError, match=r"restricted: \['emb.weight'\] are not whole parameter"):
        sub.restricted(["emb.weight"])


# ------------------------------------------------------------------- the curvature paths


@pytest.mark.parametrize("sequence", [False, True], ids=["closed_form", "positions"])
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_the_head_curvature_is_the_oracle_on_every_path(structure, sequence):
    """Pooled outputs take the closed form from φ; sequence outputs take the layer factors
    (``diag``) or per-example Jacobians of the functional call (``full``)."""
    model = TiedNet(sequence=sequence)
    la = _fit(model, structure)
    x, _ = _data()
    g = _oracle_ggn(model, x)
    got = la.structure.curvature_dense()
    torch.testing.assert_close(got, g if structure == "full" else torch.diag(g.diagonal()))


@pytest.mark.parametrize("sequence", [False, True], ids=["closed_form", "positions"])
@pytest.mark.parametrize("structure", ["kfac", "diag", "full", "lanczos"])
def test_a_tied_head_fits_as_a_head_that_owns_its_weight(structure, sequence):
    """The head is a layer of its own (a Kron block under kfac), equal to the untied copy."""
    model = TiedNet(sequence=sequence)
    la, ref = _fit(model, structure), _fit(_untied(model), structure)
    torch.testing.assert_close(la.structure.curvature_dense(), ref.structure.curvature_dense())
    if structure == "kfac":
        assert {type(b).__name__ for _, _, b in la.structure.blocks} == {"Kron"}


def test_a_frozen_head_on_a_frozen_model_takes_the_layer_factors():
    """No weight requires grad: the layer factors' backward still reaches the head."""
    model = TiedNet(sequence=True)
    g = _oracle_ggn(model, _data()[0])
    model.requires_grad_(False)
    la = _fit(model, "diag")
    torch.testing.assert_close(la.structure.curvature_dense(), torch.diag(g.diagonal()))
    assert la.structure.layouts()  # the head's own layer block, not a per-example rest


# ---------------------------------------------------------------------- the predictives


@pytest.mark.parametrize("sequence", [False, True], ids=["closed_form", "positions"])
def test_the_predictive_covariance_agrees_on_every_path(sequence):
    """J Π⁻¹ Jᵀ from the features / layer factors (``joint=False``), from dense Jacobians of
    the functional call (``joint=True``) and from the oracle."""
    model = TiedNet(sequence=sequence)
    la = _fit(model, "full", prior_precision=0.5)
    x, _ = _data(seed=2)
    theta, f = _head_call(model, x)
    jac = jacrev(f)(theta)  # [B, K, P]
    pi = _oracle_ggn(model, _data()[0]) + 0.5 * torch.eye(theta.numel(), dtype=DT)
    want = jac @ torch.linalg.solve(pi, jac.transpose(1, 2))
    mean, var = la.glm_moments(x)
    torch.testing.assert_close(mean, f(theta))
    torch.testing.assert_close(var, want)
    _, joint = la.glm_moments(x, joint=True)
    k = want.shape[-1]
    torch.testing.assert_close(joint.view(N, k, N, k).diagonal(dim1=0, dim2=2).movedim(-1, 0), want)
    dense = torch.cat([s.jac for s in dense_jacobians(la.subset, x, N)])
    torch.testing.assert_close(dense, jac)


def test_a_reduced_head_keeps_the_body_at_its_trained_embedding():
    """``feature_reduction="pick_last"``: the closed form on the last position's φ and the
    functional call (the body run up to the head, then the head on the reduced φ) agree
    with the oracle's last position."""
    model, (x, y) = TiedNet(sequence=True), _data()
    la = _laplace(model, "full", feature_reduction="pick_last", prior_precision=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la.fit(batches(x, y[:, 0], 4))
    theta, f_seq = _head_call(model, x)

    def f(t: torch.Tensor) -> torch.Tensor:
        return f_seq(t).view(N, T, V)[:, -1]

    jac = jacrev(f)(theta)
    p = f(theta).softmax(-1)
    g = torch.einsum("bcp,bcd,bdq->pq", jac, torch.diag_embed(p) - p[:, :, None] * p[:, None], jac)
    torch.testing.assert_close(la.structure.curvature_dense(), g)
    want = jac @ torch.linalg.solve(g + 0.5 * torch.eye(len(theta), dtype=DT), jac.mT)
    torch.testing.assert_close(la.glm_moments(x)[1], want)
    _, joint = la.glm_moments(x, joint=True)
    torch.testing.assert_close(joint.view(N, V, N, V).diagonal(dim1=0, dim2=2).movedim(-1, 0), want)


def test_jvp_and_vjp_of_the_functional_call_are_the_oracle():
    model, (x, _) = TiedNet(sequence=True), _data()
    la = _fit(model, "diag")
    theta, f = _head_call(model, x)
    jac = jacrev(f)(theta)
    e = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(3), dtype=DT)
    _, tangent = jvp(lambda t: la.subset.forward(t, x), (la.mean,), (e,))
    torch.testing.assert_close(tangent, jac @ e)
    v = torch.randn(N, T * V, generator=torch.Generator().manual_seed(4), dtype=DT)
    _, pull = vjp(lambda t: la.subset.forward(t, x), la.mean)
    torch.testing.assert_close(pull(v)[0], torch.einsum("bk,bkp->p", v, jac))


def test_weight_samples_and_the_nn_predictive_perturb_only_the_head():
    model, (x, _) = TiedNet(), _data()
    la = _fit(model, "diag", prior_precision=2.0)
    thetas = la.sample(5, torch.Generator().manual_seed(5))
    _, f = _head_call(model, x)
    got = la.nn_function_samples(x, la.prior, 5, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, torch.stack([f(t) for t in thetas]))
    torch.testing.assert_close(model.emb.weight, la.mean[: V * D].view(V, D))  # untouched
    probs = la(x, pred_type="nn", n_samples=5)
    assert probs.shape == (N, V) and torch.allclose(probs.sum(-1), torch.ones(N, dtype=DT))


# ------------------------------------------------------------------------- persistence


def test_restore_writes_the_head_and_its_embedding_back():
    """A model whose tied weight was changed after the fit: predicting is refused until θ*
    is written back, into the one tensor the head and the embedding share."""
    model, (x, _) = TiedNet(), _data()
    la = _fit(model, "kfac", prior_precision=1.0)
    want = la.glm_moments(x)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        fresh.emb.weight.normal_()
    other = _laplace(fresh, "kfac")
    other.load_state_dict(la.state_dict())
    with pytest.raises(WeightsChangedError, match="restore_weights"):
        other.glm_moments(x)
    other.restore_weights()
    assert fresh.head.weight is fresh.emb.weight  # still tied
    torch.testing.assert_close(fresh.emb.weight, model.emb.weight)
    for a, b in zip(other.glm_moments(x), want, strict=True):
        torch.testing.assert_close(a, b)


# -------------------------------------------------------------- Hugging Face GPT-2, peft


def _gpt2(vocab: int, embd: int = 16):
    """A 1-layer GPT-2 from a config (random weights, bf16, its head tied to ``wte``) with
    peft LoRA (float32) on the attention, and two HF-style batches of next-token labels."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=8, n_embd=embd, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    lora = peft.LoraConfig(
        r=2, target_modules=["attn.c_attn", "attn.c_proj"], fan_in_fan_out=True,
        lora_dropout=0.0, task_type="CAUSAL_LM",
    )  # fmt: skip
    base = transformers.GPT2LMHeadModel(config).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notices
        model = peft.get_peft_model(base, lora).eval()
    ids = torch.randint(0, vocab, (4, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    data = [
        {"input_ids": ids[i : i + 2], "attention_mask": torch.ones_like(ids[i : i + 2]),
         "labels": labels[i : i + 2]}
        for i in (0, 2)
    ]  # fmt: skip
    return model, data


def _lm_laplace(model, structure: str, **kw) -> Laplace:
    return Laplace(
        model, "classification", "last_layer", structure, outputs="sequence",
        ignore_index=-100, **kw,
    )  # fmt: skip


def test_gpt2_lora_head_is_bayesian_in_its_own_use():
    model, data = _gpt2(vocab=97)
    with pytest.warns(UserWarning, match=r"'base_model\.model\.transformer\.wte\.weight'"):
        la = _lm_laplace(model, "diag", fisher_type="mc")
    assert la.subset.names == ["base_model.model.lm_head.weight"] and la.n_params == 97 * 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la.fit(data)
    assert la.structure.layouts()  # the head's layer factors, not a per-example rest
    inputs = KeywordInputs({k: v for k, v in data[0].items() if k != "labels"})
    with torch.no_grad():
        logits = la.subset.call(inputs)  # [B, T·V]
        doubled = la.subset.forward(2 * la.mean, inputs)  # the body at its trained embedding
    torch.testing.assert_close(doubled, 2 * logits, rtol=0, atol=0)


def test_gpt2_at_the_full_vocabulary_refuses_what_does_not_fit_and_fits_diag():
    """V = 50,257: kfac's [V, V] factor (30 GB) and full's P² are refused before any batch
    is read, with the sizes and what fits; diag with the MC Fisher fits under the limit."""
    model, data = _gpt2(vocab=50_257, embd=8)

    class Unread:
        def __iter__(self):
            raise AssertionError("the loader was read before the memory check")

    limit = 2 * 10**9
    for structure, need in (("kfac", "131 GB"), ("full", "1.94 TB")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            la = _lm_laplace(model, structure, fisher_type="mc", memory_limit=limit)
        with pytest.raises(MemoryBudgetError) as err:
            la.fit(Unread())
        msg = str(err.value)
        assert f"{structure} needs {need} for P = 402056, over the limit of 2 GB" in msg, msg
        assert re.search(r"diag needs [\d.]+ MB", msg), msg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = _lm_laplace(model, "diag", fisher_type="mc", memory_limit=limit).fit(data)
    assert la.structure.curvature_dense is not None and la.n_params == 50_257 * 8
    assert torch.isfinite(la.log_marginal_likelihood()).item()
