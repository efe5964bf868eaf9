"""Language-model batches: the reduced last-layer feature is the token the model itself reads
under left or right padding, and Hugging Face's ``labels=input_ids`` (unshifted causal
targets) is refused with the shift, never fitted silently."""

from __future__ import annotations

import pytest
import torch
from conftest import DT
from torch import nn

from laplacetorch import Laplace
from laplacetorch.subset_inputs import reduce_features

V, D, C = 20, 6, 3


class MaskedCausalClassifier(nn.Module):
    """``(input_ids [B, T], attention_mask [B, T]) -> [B, C]``: causal masked means of token
    embeddings, a head per position, and the logits of the last token (as HF's sequence
    classifiers read them); the head's input is [B, T, D]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, D).to(DT)
        self.head = nn.Linear(D, C).to(DT)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.to(DT)[..., None]
        e = self.embed(input_ids)
        # tokens: their causal masked mean; a pad position: its own embedding (not a token's)
        h = torch.tanh((e * m).cumsum(1) / m.cumsum(1).clamp_min(1) * m + e * (1 - m))
        logits = self.head(h)  # [B, T, C]
        last = (attention_mask * torch.arange(input_ids.shape[1])).argmax(1)
        return logits[torch.arange(len(input_ids)), last]


def _padded(side: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 7, 2, 6, 4])
    t = int(lengths.max())
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens = torch.randint(1, V, (n,), generator=g)
        span = slice(0, n) if side == "right" else slice(t - n, t)
        ids[i, span], mask[i, span] = tokens, 1
    y = torch.randint(0, C, (len(lengths),), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": y}


@pytest.mark.parametrize("reduction", ["pick_first", "pick_last", "average"])
def test_reductions_read_tokens_not_padding(reduction):
    phi = torch.arange(2 * 4 * 1, dtype=DT).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    left = right.flip(1)
    want = {"pick_first": [[0.0], [4.0]], "pick_last": [[1.0], [6.0]],
            "average": [[0.5], [5.0]]}[reduction]  # fmt: skip
    torch.testing.assert_close(reduce_features(phi, reduction, right), torch.tensor(want, dtype=DT))
    flipped = {"pick_first": [[2.0], [5.0]], "pick_last": [[3.0], [7.0]],
               "average": [[2.5], [6.0]]}[reduction]  # fmt: skip
    torch.testing.assert_close(
        reduce_features(phi, reduction, left), torch.tensor(flipped, dtype=DT)
    )
    with pytest.raises(ValueError, match="has no token"):
        reduce_features(phi, reduction, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one entry per example and position"):
        reduce_features(phi, reduction, torch.ones(2, 3))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pick_last_reads_the_models_own_token_under_padding(side):
    batch = _padded(side)
    model = MaskedCausalClassifier().eval()
    la = Laplace(model, "classification", "last_layer", "full", feature_reduction="pick_last")
    la.fit([batch])
    x = {k: v for k, v in batch.items() if k != "labels"}
    mean, _ = la.glm_moments(x)
    with torch.no_grad():
        torch.testing.assert_close(mean, model(**x))  # the model's own output, not a pad's
    # the same examples one at a time, unpadded: the same curvature and evidence
    alone = []
    for i in range(len(batch["labels"])):
        keep = batch["attention_mask"][i].bool()
        alone.append({"input_ids": batch["input_ids"][i, keep][None],
                      "attention_mask": batch["attention_mask"][i, keep][None],
                      "labels": batch["labels"][i : i + 1]})  # fmt: skip
    one = Laplace(MaskedCausalClassifier().eval(), "classification", "last_layer", "full",
                  feature_reduction="pick_last").fit(alone)  # fmt: skip
    torch.testing.assert_close(la.evidence(1.0), one.evidence(1.0))


class TinyCausalLM(nn.Module):
    """``input_ids [B, T] -> logits [B, T, V]`` (causal: position t sees tokens ≤ t)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, D).to(DT)
        self.head = nn.Linear(D, V).to(DT)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[:, None]
        return self.head(torch.tanh(h))


@pytest.mark.parametrize("mapping", [True, False], ids=["hf-batch", "tensor"])
def test_unshifted_causal_labels_are_refused_with_the_shift(mapping):
    ids = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :2] = -100  # padding left out, the rest still the inputs themselves

    def batch(y):  # an HF batch (labels in the mapping) or (ids, y)
        if mapping:
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": y}
        return (ids, y)

    la = Laplace(TinyCausalLM().eval(), "classification", "all", "diag", outputs="sequence")
    with pytest.raises(ValueError, match=r"labels=input_ids.*Shift them"):
        la.fit([batch(labels)])
    assert la.fitted_state is None  # nothing fitted
    shifted = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    la.fit([batch(shifted)])
    assert la.n_data == 4
