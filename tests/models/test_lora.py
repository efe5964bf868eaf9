"""Laplace over LoRA adapters (peft) on a tiny BERT built from a config (random weights, no
download): fit, marglik, predict from HF-style batches; the evidence of ``full`` and ``diag``
equals a dense float64 oracle."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from laplacetorch import Laplace  # noqa: E402
from laplacetorch.model_call import KeywordInputs  # noqa: E402

DT = torch.float64
N, T = 48, 6


@pytest.fixture(scope="module")
def lora():
    """A 1-layer BERT (hidden 16) with LoRA on query/value, trained briefly on a token task."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    lora_cfg = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(transformers.BertForSequenceClassification(cfg), lora_cfg)
    model = model.to(DT)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 30, (N, T), generator=g)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::4, -2:] = 0
    labels = (ids[:, 0] > 15).long()  # the label is in the first token
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(25):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    loader = [
        {
            "input_ids": ids[i : i + 16],
            "attention_mask": mask[i : i + 16],
            "labels": labels[i : i + 16],
        }
        for i in range(0, N, 16)
    ]
    return model, ids, mask, labels, loader


def _fit(model, loader, subset, structure):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's data-dependent masks: the announced loop
        return Laplace(model, "classification", subset, structure).fit(loader)


@pytest.mark.parametrize(
    ("subset", "structure"),
    [("all", "kfac"), ("all", "diag"), ("all", "full"), ("last_layer", "full")],
)
def test_fit_tune_predict_on_the_adapters(lora, subset, structure):
    model, ids, mask, labels, loader = lora
    la = _fit(model, loader, subset, structure)
    assert all("lora_" in n or "modules_to_save" in n for n in la.subset.names)
    if subset == "all":
        assert la.n_params == 4 * 2 * 16 + 2 * 16 + 2  # four adapters, the classifier copy
    res = la.optimize_prior_precision(method="marglik")
    assert math.isfinite(res.log_marginal_likelihood)
    probs = la({"input_ids": ids, "attention_mask": mask})
    assert probs.shape == (N, 2) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(N, dtype=DT))
    acc = float((probs.argmax(-1) == labels).double().mean())
    assert acc > 0.6


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_evidence_on_the_adapters_equals_a_dense_oracle(lora, structure):
    model, ids, mask, labels, loader = lora
    la = _fit(model, loader, "all", structure)
    inputs = KeywordInputs(input_ids=ids, attention_mask=mask)
    jac = torch.autograd.functional.jacobian(lambda t: la.subset.forward(t, inputs), la.mean)
    f = la.subset.forward(la.mean, inputs).detach()
    p = torch.softmax(f, -1)
    lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    ggn = torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac)
    if structure == "diag":
        ggn = torch.diag(ggn.diagonal())
    loglik = -torch.nn.functional.cross_entropy(f, labels, reduction="sum")
    for delta in (0.3, 3.0):
        logdet = torch.logdet(ggn + delta * torch.eye(la.n_params, dtype=DT))
        expected = loglik - 0.5 * (
            delta * la.mean.square().sum() + logdet - la.n_params * math.log(delta)
        )
        torch.testing.assert_close(la.log_marginal_likelihood(delta), expected)
