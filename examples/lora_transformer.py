"""Laplace over LoRA adapters of a transformer (transformers + peft), from HF-style batches.

What it shows:

* a 2-layer BERT for sequence classification built from a config with random weights (no
  download), LoRA adapters on the attention's query and value projections (peft), trained
  briefly on a made-up token task: the label says whether the sequence holds more "high"
  tokens (ids ≥ 50) than "low" ones, with 10% of the labels flipped;
* batches as the HF ecosystem yields them, dicts of ``input_ids``, ``attention_mask`` and
  ``labels``: ``Laplace.fit`` takes the label from ``labels`` (``dict_key_y``) and calls the
  model as ``model(**inputs)``, reading ``.logits``; prediction takes the same dicts;
* the frozen base weights are never Bayesian: over ``subset_of_weights="all"`` the posterior
  covers the adapters and the classifier head peft keeps trainable;
* ``hessian_structure="kfac"`` (a Kronecker block per LoRA matrix, exact diagonal blocks for
  nothing else here), ``"diag"`` and last-layer ``"full"``; the prior tuned by the evidence;
* the MAP against each Laplace predictive on held-out sequences: accuracy, NLL, ECE.

Run it (about 15 s on two CPU cores; needs the test extra: ``pip install -e .[test]``)::

    python examples/lora_transformer.py [--epochs 60] [--seed S] [--threads T]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from laplacetorch import Laplace
from laplacetorch.metrics import accuracy, ece, nll

try:
    import peft
    import transformers
except ImportError as err:  # the test extra
    raise SystemExit(
        f"this example needs transformers and peft ({err}); pip install -e .[test]"
    ) from err


def make_data(n: int, seed: int, length: int = 12) -> dict[str, torch.Tensor]:
    """Token sequences, padded at random lengths; label = more high than low tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = ids * mask
    high = ((ids >= 50) & mask.bool()).sum(1)
    labels = (2 * high > lengths).long()
    flip = torch.rand(n, generator=g) < 0.1
    labels = torch.where(flip, 1 - labels, labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(data: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = data["labels"].shape[0]
    return [{k: v[i : i + size] for k, v in data.items()} for i in range(0, n, size)]


def build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS"
    )
    return peft.get_peft_model(transformers.BertForSequenceClassification(config), lora)


def train(model: torch.nn.Module, data: dict[str, torch.Tensor], epochs: int) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in batches(data, 64):
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def report(name: str, probs: torch.Tensor, y: torch.Tensor, seconds: float) -> None:
    print(
        f"{name:<26} acc {accuracy(probs, y):.3f}  nll {float(nll(probs, y)):.3f}  "
        f"ece {ece(probs, y):.3f}  {seconds:6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    train_data, test_data = make_data(512, args.seed), make_data(512, args.seed + 1)
    model = build(args.seed)
    t0 = time.perf_counter()
    train(model, train_data, args.epochs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"trained LoRA ({trainable} of {total} weights) in {time.perf_counter() - t0:.1f} s")
    inputs = {k: v for k, v in test_data.items() if k != "labels"}
    y = test_data["labels"]
    with torch.no_grad():
        t0 = time.perf_counter()
        report("MAP", torch.softmax(model(**inputs).logits, -1), y, time.perf_counter() - t0)
    for subset, structure in (("all", "kfac"), ("all", "diag"), ("last_layer", "full")):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the per-example loop's notice (HF masks under vmap)
            la = Laplace(model, "classification", subset, structure)
            la.fit(batches(train_data, 64))
            la.optimize_prior_precision(method="marglik")
        probs = la(inputs)
        name = f"LA {subset} {structure} (P={la.n_params})"
        report(name, probs, y, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
