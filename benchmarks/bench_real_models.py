"""KFAC on the models people have: a small transformer encoder and LoRA adapters of a BERT.

r_fit = fit time / one gradient epoch over the same batches (the summed cross-entropy's
forward and backward), median of ``--repeats`` after a warm-up, the two alternating:

1. a 2-layer ``nn.TransformerEncoder`` classifier (d = 64, 4 heads, LayerNorm) on synthetic
   token sequences (N = 1024, T = 32): Kronecker blocks for the feed-forward Linears and the
   head, exact diagonal blocks for the attention's fused projections, norms and embedding;
2. LoRA (peft, r = 8 on query / value) on a 2-layer BERT built from a config with random
   weights (hidden 64, no download), HF-style dict batches; only the adapters and the
   classifier copy are Bayesian.

laplace-torch's ``kron`` (BackPackGGN) is run on the same transformer when installed; it
refuses the LayerNorm / attention modules (BackPACK has no extension for them), which is
printed.

Usage::

    python benchmarks/bench_real_models.py [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch
import torch.nn.functional as F
from common import load_peer, peer_line, theirs_laplace, timed
from torch import nn

from laplacetorch import Laplace

N, T, VOCAB, BATCH = 1024, 32, 200, 64


class TokenClassifier(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (N, T), generator=g)
    return x, (x[:, :4].sum(1) > 2 * VOCAB).long()


def train(model: nn.Module, loader: list, steps: int = 30) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for i in range(steps):
        xb, yb = loader[i % len(loader)]
        out = model(**xb) if isinstance(xb, dict) else model(xb)
        loss = F.cross_entropy(getattr(out, "logits", out), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def epoch(model: nn.Module, loader: list) -> None:
    model.zero_grad(set_to_none=True)
    for xb, yb in loader:
        out = model(**xb) if isinstance(xb, dict) else model(xb)
        F.cross_entropy(getattr(out, "logits", out), yb, reduction="sum").backward()
    model.zero_grad(set_to_none=True)


def r_fit(name: str, model: nn.Module, fit_loader, grad_loader, repeats: int) -> None:
    def fit() -> Laplace:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Laplace(model, "classification", "all", "kfac").fit(fit_loader)

    la = fit()
    epoch(model, grad_loader)
    fits, epochs = [], []
    for _ in range(repeats):
        fits.append(timed(fit)[1])
        epochs.append(timed(lambda: epoch(model, grad_loader))[1])
    kinds = [type(b).__name__ for _, _, b in la.structure.blocks]
    f, e = statistics.median(fits), statistics.median(epochs)
    print(
        f"  {name:<34} P = {la.n_params:>7}  blocks: {kinds.count('Kron')} Kron, "
        f"{kinds.count('Diagonal')} Diagonal  fit {f:.3f} s  epoch {e:.3f} s  r_fit {f / e:.2f}"
    )


def lora_model():
    import peft
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=T,
        num_labels=2,
    )
    lora = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(transformers.BertForSequenceClassification(config), lora)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {N}, T = {T}, "
        f"batch {BATCH}, median of {args.repeats}, 1-min load average {os.getloadavg()[0]:.2f}"
    )
    x, y = tokens()
    pairs = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH)]
    torch.manual_seed(0)
    enc = TokenClassifier()
    train(enc, pairs)
    print("[1] KFAC fit / gradient epoch")
    r_fit("transformer encoder (2 layers)", enc, pairs, pairs, args.repeats)
    peer = load_peer()
    print("  " + peer_line(peer))
    if peer is not None:
        try:
            warnings.simplefilter("ignore")
            theirs_laplace(enc, "kron").fit(
                torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
            )
            print("  laplace-torch kron ran on the transformer")
        except Exception as err:
            print(
                f"  laplace-torch kron on the transformer: {type(err).__name__}: {str(err)[:100]}"
            )
    try:
        model = lora_model()
    except ImportError:
        print("[2] LoRA: transformers / peft are not installed (the test extra); skipped")
        return
    mask = torch.ones(N, T, dtype=torch.long)
    dicts = [
        {
            "input_ids": x[i : i + BATCH],
            "attention_mask": mask[i : i + BATCH],
            "labels": y[i : i + BATCH],
        }
        for i in range(0, N, BATCH)
    ]
    inputs = [({k: v for k, v in d.items() if k != "labels"}, d["labels"]) for d in dicts]
    train(model, inputs)
    print("[2] KFAC fit / gradient epoch over the LoRA adapters (frozen base)")
    r_fit("BERT-2 LoRA r=8 (query, value)", model, dicts, inputs, args.repeats)


if __name__ == "__main__":
    main()
