"""Laplace over the LoRA adapters of a GPT-2-architecture language model, in bfloat16.

What it shows:

* a GPT-2 causal LM built from a config with random weights (no download), the GPT-2
  vocabulary of 50,257 tokens, in bfloat16, with peft LoRA adapters (r = 8) on the
  attention projections ``attn.c_attn`` and ``attn.c_proj``; peft keeps the adapters in
  float32 on the bf16 backbone (``--lora-dtype bfloat16``: all bf16). Only the adapters have
  ``requires_grad``, so they are the Bayesian weights;
* next-token prediction from HF-style padded batches: ``labels`` are the next token, with
  the padding and each sequence's last token set to ``ignore_index`` (-100), so they are no
  likelihood terms (``outputs="sequence"``);
* KFAC with the Monte-Carlo Fisher (``fisher_type="mc"``: one sampled token per position, a
  backward pass as in training; the exact type-2 Fisher would pull back all 50,257 columns
  per token and is refused before any is formed), the prior tuned by the evidence;
* the full-vocabulary predictive ``la(x, link_approx="mc")``: the [V, V] covariance per token
  never fits ``memory_budget``, so it streams linearised samples f + J ε instead, and
  ``la.uncertainty(x)``: per-token predictive entropy, expected entropy and mutual
  information; on held-out sequences of the training language and on random tokens;
* laplace-torch's multiple-choice variant: the logits at each prompt's last token restricted
  to 4 answer tokens (a wrapper returning ``[B, 4]``), LoRA KFAC with the exact Fisher
  (C = 4 outputs), the default probit predictive, against the MAP.

The made-up language: runs of one token repeated 3 to 8 times, run tokens drawn from the
first 512 ids, so the next token is usually the current one. The multiple-choice task: a
prompt of random tokens holding one of the 4 answer tokens once; the answer is which.

Run it (about 30 s on two idle CPU cores; needs the test extra: ``pip install -e .[test]``)::

    python examples/llm_lora.py [--layers 2] [--embd 128] [--positions 32] [--steps 200]
                                [--lora-dtype float32] [--samples 16] [--threads T]

Costs at the issue's size (4 layers, n_embd 256, T = 64): benchmarks/bench_llm.py and
docs/language_models.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from laplacetorch import Laplace
from laplacetorch.metrics import accuracy, ece, nll

try:
    import peft
    import transformers
except ImportError as err:  # the test extra
    raise SystemExit(
        f"this example needs transformers and peft ({err}); pip install -e .[test]"
    ) from err

IGNORE = -100
GPT2_VOCAB = 50_257


@dataclass(frozen=True)
class Size:
    """The language model's size: vocabulary, layers, width, heads, positions, LoRA rank."""

    vocab: int = GPT2_VOCAB
    layers: int = 4
    embd: int = 256
    heads: int = 4
    positions: int = 64
    rank: int = 8


def build_lm(size: Size, seed: int = 0, lora_dtype: torch.dtype = torch.float32) -> nn.Module:
    """A GPT-2 LM from a config (random weights) in bfloat16, LoRA on the attention
    projections; the adapters in ``lora_dtype`` (peft's default on a bf16 model: float32)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=size.vocab,
        n_positions=size.positions,
        n_embd=size.embd,
        n_layer=size.layers,
        n_head=size.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=size.vocab - 1,
        eos_token_id=size.vocab - 1,
    )
    base = transformers.GPT2LMHeadModel(config).to(torch.bfloat16)
    lora = peft.LoraConfig(
        r=size.rank,
        lora_alpha=2 * size.rank,
        target_modules=["attn.c_attn", "attn.c_proj"],
        lora_dropout=0.0,
        fan_in_fan_out=True,  # GPT-2's Conv1D stores its weight [in, out]
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notice about fan_in_fan_out
        model = peft.get_peft_model(base, lora, autocast_adapter_dtype=lora_dtype == torch.float32)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(lora_dtype)
    return model.eval()


def run_language(n: int, size: Size, seed: int, padded: bool = True) -> dict[str, Tensor]:
    """``n`` sequences of runs (one token 3 to 8 times, tokens < 512), right-padded at random
    lengths; ``labels`` the next token, ``IGNORE`` at the padding and the last real token."""
    g = torch.Generator().manual_seed(seed)
    t, top = size.positions, min(512, size.vocab)
    ids = torch.empty(n, t, dtype=torch.long)
    for i in range(n):
        j = 0
        while j < t:
            run = int(torch.randint(3, 9, (), generator=g))
            ids[i, j : j + run] = torch.randint(0, top, (), generator=g)
            j += run
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g) if padded else torch.full((n,), t)
    return causal_batch(ids, lengths)


def random_tokens(n: int, size: Size, seed: int) -> dict[str, Tensor]:
    """``n`` unpadded sequences of uniformly random tokens (out of the training language)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, size.vocab, (n, size.positions), generator=g)
    return causal_batch(ids, torch.full((n,), size.positions))


def causal_batch(ids: Tensor, lengths: Tensor) -> dict[str, Tensor]:
    """HF-style batch of right-padded ``ids``: next-token ``labels`` (shifted here, as the
    likelihood compares position t's logits with ``labels[:, t]``), ``IGNORE`` where the next
    token is padding or missing."""
    pos = torch.arange(ids.shape[1])
    mask = (pos < lengths[:, None]).long()
    labels = torch.roll(ids, -1, 1)
    labels[(pos + 1 >= lengths[:, None])] = IGNORE
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def batches(data: dict[str, Tensor], size: int) -> list[dict[str, Tensor]]:
    n = data["input_ids"].shape[0]
    return [{k: v[i : i + size] for k, v in data.items()} for i in range(0, n, size)]


def inputs_of(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the labelled positions, in float32."""
    return nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE
    )


def train(model: nn.Module, data: list[dict[str, Tensor]], steps: int, loss_of) -> None:
    """Adam on the trainable (LoRA) weights for ``steps`` steps over the batches in turn."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(steps):
        batch = data[step % len(data)]
        loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def lm_step_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return lm_loss(model(**inputs_of(batch)).logits, batch["labels"])


def fit_lm_laplace(model: nn.Module, data: list[dict[str, Tensor]], **options) -> Laplace:
    """MC-Fisher KFAC over the LoRA weights, one term per labelled token."""
    la = Laplace(
        model,
        "classification",
        "all",
        "kfac",
        fisher_type="mc",
        outputs="sequence",
        ignore_index=IGNORE,
        **options,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notices: frozen weights, HF masks under vmap
        return la.fit(data)


def token_nll(probs: Tensor, labels: Tensor) -> float:
    """Mean NLL of the labelled next tokens under ``probs`` ``[B, T, V]``."""
    keep = labels != IGNORE
    p = probs[keep].gather(-1, labels[keep][:, None]).squeeze(-1)
    return float(-p.clamp_min(1e-12).log().mean())


def mean_over_tokens(values: Tensor, labels: Tensor) -> float:
    return float(values[labels != IGNORE].mean())


# ----------------------------------------------------------------------------- multiple choice
class AnswerLogits(nn.Module):
    """laplace-torch's multiple-choice LM head: the logits of the ``answer_ids`` tokens at
    each prompt's last real token, ``[B, len(answer_ids)]``, read from a causal LM."""

    def __init__(self, lm: nn.Module, answer_ids: list[int]) -> None:
        super().__init__()
        self.lm = lm
        self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        last = attention_mask.sum(1) - 1  # right padding: each prompt's last real token
        at_last = logits[torch.arange(logits.shape[0]), last]  # [B, V]
        return at_last[:, self.answer_ids]


def choice_prompts(n: int, size: Size, answer_ids: list[int], seed: int) -> dict[str, Tensor]:
    """Prompts of random tokens (none an answer token) holding one answer token once, at a
    random place; the label is which answer (0 to 3); right-padded at random lengths."""
    g = torch.Generator().manual_seed(seed)
    t = size.positions
    ids = torch.randint(len(answer_ids), min(512, size.vocab), (n, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    labels = torch.randint(0, len(answer_ids), (n,), generator=g)
    where = (torch.rand(n, generator=g) * (lengths - 1)).long()
    ids[torch.arange(n), where] = torch.tensor(answer_ids)[labels]
    mask = (torch.arange(t) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def choice_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(**inputs_of(batch)).float(), batch["labels"])


# ----------------------------------------------------------------------------- the example
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=GPT2_VOCAB)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--train", type=int, default=64, help="training sequences")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--lora-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    size = Size(args.vocab, args.layers, args.embd, max(1, args.embd // 64), args.positions)
    run(size, args.train, args.steps, args.samples, getattr(torch, args.lora_dtype), args.seed)


def run(
    size: Size,
    n_train: int,
    steps: int,
    n_samples: int,
    lora_dtype: torch.dtype,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, float]:
    """The example; returns its figures (the smoke test checks them)."""
    out: dict[str, float] = {}
    model = build_lm(size, seed, lora_dtype)
    n_bayes = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"GPT-2 LM: vocabulary {size.vocab}, {size.layers} layers, n_embd {size.embd}, "
        f"T = {size.positions}; bf16 backbone, {n_bayes} LoRA weights in {lora_dtype}"
    )
    train_data = batches(run_language(n_train, size, seed + 1), batch_size)
    test = run_language(batch_size, size, seed + 2)
    t0 = time.perf_counter()
    before = float(lm_step_loss(model, test).detach())
    train(model, train_data, steps, lm_step_loss)
    after = float(lm_step_loss(model, test).detach())
    print(
        f"trained {steps} steps in {time.perf_counter() - t0:.1f} s: held-out token NLL "
        f"{before:.2f} -> {after:.2f}"
    )

    t0 = time.perf_counter()
    la = fit_lm_laplace(model, train_data)
    fit_s = time.perf_counter() - t0
    la.optimize_prior_precision(method="marglik")
    print(
        f"MC-Fisher KFAC fit {fit_s:.1f} s, prior tuned by the evidence: "
        f"δ = {float(la.prior_precision):.3g} ({time.perf_counter() - t0:.1f} s in all)"
    )
    out["prior_precision"] = float(la.prior_precision)

    x, y = inputs_of(test), test["labels"]
    with torch.no_grad():
        map_probs = torch.softmax(model(**x).logits.float(), -1)
    t0 = time.perf_counter()
    probs = la(x, link_approx="mc", n_samples=n_samples)  # [B, T, V]: streamed samples
    pred_s = time.perf_counter() - t0
    out["map_nll"], out["la_nll"] = token_nll(map_probs, y), token_nll(probs, y)
    print(
        f"full-vocabulary predictive {list(probs.shape)} (mc, S = {n_samples}) in "
        f"{pred_s:.1f} s; held-out token NLL: MAP {out['map_nll']:.3f}, "
        f"Laplace {out['la_nll']:.3f}"
    )
    print("per-token uncertainty (nats, mean over labelled tokens):")
    for name, data in (("held-out runs", test), ("random tokens", random_tokens(4, size, 9))):
        u = la.uncertainty(inputs_of(data), n_samples=n_samples)  # each [B, T]
        parts = [mean_over_tokens(v, data["labels"]) for v in (u.total, u.aleatoric, u.epistemic)]
        out[f"{name} epistemic"] = parts[2]
        print(
            f"  {name:<14} predictive entropy {parts[0]:.3f} = expected entropy "
            f"{parts[1]:.3f} + mutual information {parts[2]:.4f}"
        )

    # the predictive over each position's 10 likeliest tokens (renormalised over them)
    t0 = time.perf_counter()
    top = la.top_k(x, 10, n_samples=n_samples)  # indices, probs, map_probs: [B, T, 10]
    out["top10 shift"] = float((top.probs - top.map_probs).abs().sum(-1).mean())
    print(
        f"top-10 predictive {list(top.probs.shape)} in {time.perf_counter() - t0:.1f} s: "
        f"mean total-variation shift from the MAP's top 10 {out['top10 shift'] / 2:.3f}"
    )

    # multiple choice: the answer tokens' logits at the last position
    answers = [0, 1, 2, 3]
    mc_model = AnswerLogits(build_lm(size, seed + 3, lora_dtype), answers)
    mc_train = batches(choice_prompts(n_train, size, answers, seed + 4), batch_size)
    test_mc = choice_prompts(64, size, answers, seed + 5)
    train(mc_model, mc_train, steps, choice_loss)
    t0 = time.perf_counter()
    mla = Laplace(mc_model, "classification", "all", "kfac")  # exact Fisher: C = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mla.fit(mc_train)
    mla.optimize_prior_precision(method="marglik")
    fit_s = time.perf_counter() - t0
    xm, ym = inputs_of(test_mc), test_mc["labels"]
    with torch.no_grad():
        mc_map = torch.softmax(mc_model(**xm).float(), -1)
    t0 = time.perf_counter()
    mc_probs = mla(xm)  # the GLM predictive, probit: [B, 4]
    per_seq = (time.perf_counter() - t0) / len(ym)
    print(
        f"multiple choice (logits of {len(answers)} answer tokens at the last position), "
        f"LoRA KFAC fit + tune {fit_s:.1f} s, predictive {1e3 * per_seq:.1f} ms a sequence:"
    )
    for name, p in (("MAP", mc_map), ("Laplace", mc_probs)):
        out[f"mc {name} nll"] = float(nll(p, ym))
        print(
            f"  {name:<8} acc {accuracy(p, ym):.3f}  nll {float(nll(p, ym)):.3f}  "
            f"ece {ece(p, ym):.3f}"
        )
    return out


if __name__ == "__main__":
    main()
