"""HF-style batches: a mapping with the label under ``dict_key_y``, the model called as
``model(**inputs)``, an output with ``.logits``; the same answers as tensor batches."""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass

import pytest
import torch
from conftest import batches
from torch import nn

from laplacetorch import Laplace
from laplacetorch.evaluation import Variant, evaluate

DT = torch.float64


@dataclass
class Output:
    """Stands in for transformers' ModelOutput."""

    logits: torch.Tensor


class TokenModel(nn.Module):
    """Embeds token ids, pools over the attention mask, classifies."""

    def __init__(self, return_dict: bool = True):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.hidden = nn.Linear(4, 6)
        self.classifier = nn.Linear(6, 3)
        self.return_dict = return_dict

    def forward(self, input_ids, attention_mask):
        h = self.norm(self.emb(input_ids)) * attention_mask.unsqueeze(-1)
        h = h.sum(1) / attention_mask.sum(1, keepdim=True)
        logits = self.classifier(torch.tanh(self.hidden(h)))
        return Output(logits) if self.return_dict else {"logits": logits}


class Packed(nn.Module):
    """The same network on one tensor [B, 2, T] of ids and mask (the tensor-batch twin)."""

    def __init__(self, inner: TokenModel):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x[:, 0], x[:, 1].to(DT)).logits


def _data(n=12, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=DT)
    mask[::3, -2:] = 0
    y = torch.randint(0, 3, (n,), generator=g)
    return ids, mask, y


def _mapping_batches(ids, mask, y, kind=dict, key="labels", size=5):
    return [
        kind(
            {
                "input_ids": ids[i : i + size],
                "attention_mask": mask[i : i + size],
                key: y[i : i + size],
            }
        )
        for i in range(0, len(y), size)
    ]


def _model(**kw):
    torch.manual_seed(0)
    return TokenModel(**kw).to(DT).eval()


@pytest.mark.parametrize(
    ("subset", "structure"),
    [
        ("all", "full"),
        ("all", "kfac"),
        ("all", "diag"),
        ("last_layer", "full"),
        ("last_layer", "kfac"),
    ],
)
@pytest.mark.parametrize("kind", [dict, collections.UserDict])
def test_mapping_batches_equal_tensor_batches(subset, structure, kind):
    model = _model()
    ids, mask, y = _data()
    packed = torch.stack([ids, mask.long()], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = Laplace(model, "classification", subset, structure).fit(
            _mapping_batches(ids, mask, y, kind)
        )
        twin = Laplace(
            Packed(model),
            "classification",
            subset,
            structure,
            last_layer_name="inner.classifier" if subset == "last_layer" else None,
        ).fit(batches(packed, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), twin.log_marginal_likelihood())
    la.optimize_prior_precision(method="marglik")
    twin.optimize_prior_precision(method="marglik")
    torch.testing.assert_close(la.prior_precision, twin.prior_precision)
    inputs = {"input_ids": ids, "attention_mask": mask}
    torch.testing.assert_close(la(inputs), twin(packed))
    torch.testing.assert_close(la({**inputs, "labels": y}), twin(packed))  # labels ignored
    assert la(inputs, pred_type="nn", n_samples=4).shape == (12, 3)


def test_custom_label_key_dict_outputs_grid_search_and_persistence():
    model = _model(return_dict=False)
    ids, mask, y = _data()
    loader = _mapping_batches(ids, mask, y, key="target")
    la = Laplace(model, "classification", "last_layer", "full", dict_key_y="target").fit(loader)
    res = la.optimize_prior_precision(method="gridsearch", val_loader=loader, grid=[0.1, 1.0, 10.0])
    assert len(res.history) == 3
    other = Laplace(
        _model(return_dict=False), "classification", "last_layer", "full", dict_key_y="target"
    )
    other.load_state_dict(la.state_dict())
    inputs = {"input_ids": ids, "attention_mask": mask}
    torch.testing.assert_close(other(inputs), la(inputs))
    with pytest.raises(
        ValueError,
        match=r"dict_key_y='labels'; got keys \['attention_mask', 'input_ids', 'target'\]",
    ):
        Laplace(model, "classification", "last_layer", "full").fit(loader)


def test_evaluation_takes_mapping_batches():
    model = _model()
    ids, mask, y = _data()
    loader = _mapping_batches(ids, mask, y)
    table = evaluate(model, loader, loader, variants=[Variant("last_layer", "full")])
    assert set(table.rows) == {"MAP", "LA last_layer full"}


def test_outputs_that_are_neither_tensor_nor_logits_are_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return (self.lin(x),)

    x = torch.randn(4, 2, dtype=DT)
    with pytest.raises(TypeError, match="must be a tensor or have a tensor .logits; got tuple"):
        Laplace(Bad().to(DT), "classification", "all", "diag").fit([(x, torch.zeros(4).long())])


def test_module_calls_restore_the_users_fast_path_setting():
    from laplacetorch.model_call import module_calls

    for user in (True, False):
        torch.backends.mha.set_fastpath_enabled(user)
        with module_calls():
            with module_calls():
                assert not torch.backends.mha.get_fastpath_enabled()
            assert not torch.backends.mha.get_fastpath_enabled()
        assert torch.backends.mha.get_fastpath_enabled() == user
        with pytest.raises(KeyError), module_calls():
            raise KeyError("inside")
        assert torch.backends.mha.get_fastpath_enabled() == user
    torch.backends.mha.set_fastpath_enabled(True)


def test_batch_encoding_batches():
    transformers = pytest.importorskip("transformers")
    model = _model()
    ids, mask, y = _data()
    loader = [transformers.BatchEncoding(b) for b in _mapping_batches(ids, mask, y)]
    la = Laplace(model, "classification", "all", "kfac").fit(loader)
    ref = Laplace(model, "classification", "all", "kfac").fit(_mapping_batches(ids, mask, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())
    enc = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(la(enc), ref({"input_ids": ids, "attention_mask": mask}))
