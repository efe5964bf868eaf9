"""Smoke test of examples/llm_lora.py on a tiny GPT-2 config (random weights, no download):
LoRA in bf16 with float32 adapters, MC-Fisher KFAC on padded next-token batches, the evidence,
the streamed full-vocabulary predictive, per-token uncertainty and the multiple-choice head."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import llm_lora as lm

TINY = lm.Size(vocab=300, layers=1, embd=32, heads=2, positions=12, rank=2)


def test_the_example_runs_on_a_tiny_config():
    out = lm.run(TINY, n_train=16, steps=3, n_samples=4, lora_dtype=torch.float32)
    assert all(math.isfinite(v) for v in out.values()), out
    assert out["held-out runs epistemic"] >= 0 and out["random tokens epistemic"] >= 0
    assert 0 < out["top10 shift"] < 2  # the top-10 predictive moved off the MAP's, a little


@pytest.mark.parametrize("lora_dtype", [torch.float32, torch.bfloat16])
def test_padding_and_the_last_token_are_no_likelihood_terms(lora_dtype):
    model = lm.build_lm(TINY, 0, lora_dtype)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {lora_dtype}
    data = lm.run_language(8, TINY, 1)
    labelled = data["labels"] != lm.IGNORE
    assert not (labelled & (data["attention_mask"] == 0)).any()
    la = lm.fit_lm_laplace(model, lm.batches(data, 4))
    assert la.n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = lm.inputs_of(data)
    probs = la(x, link_approx="mc", n_samples=3)  # [B, T, V]
    assert probs.shape == (8, TINY.positions, TINY.vocab)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, TINY.positions))
    u = la.uncertainty(x, n_samples=3)
    assert u.total.shape == (8, TINY.positions)
    torch.testing.assert_close(u.total, u.aleatoric + u.epistemic)


def test_the_multiple_choice_head_reads_the_last_real_token():
    answers = [0, 1, 2, 3]
    head = lm.AnswerLogits(lm.build_lm(TINY, 0), answers)
    data = lm.choice_prompts(4, TINY, answers, 0)
    x = lm.inputs_of(data)
    with torch.no_grad():
        out = head(**x)
        logits = head.lm(**x).logits
    last = data["attention_mask"].sum(1) - 1
    assert out.shape == (4, 4)
    torch.testing.assert_close(out, logits[torch.arange(4), last][:, answers])
