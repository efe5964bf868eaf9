"""fit(override=False): adding data to a fit equals one fit on all of it, where that is exact."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_cnn, make_data, make_mlp

from laplacetorch import Laplace
from laplacetorch.curvature import BACKENDS


@pytest.mark.parametrize(
    ("kind", "subset", "structure"),
    [  # every backend the registry calls mergeable, and two more subsets / models
        *[("mlp", "all", n) for n, b in BACKENDS.items() if b.mergeable],
        ("mlp", "last_layer", "full"),
        ("cnn", "all", "kfac"),
    ],
)
def test_two_halves_equal_one_fit(kind, subset, structure):
    model = make_mlp() if kind == "mlp" else make_cnn()
    x, y = make_data(kind, "classification", n=20)
    whole = Laplace(model, "classification", subset, structure, prior_precision=0.7)
    whole.fit(batches(x, y))
    parts = Laplace(model, "classification", subset, structure, prior_precision=0.7)
    parts.fit(batches(x[:12], y[:12]))
    parts.fit(batches(x[12:], y[12:]), override=False)
    assert parts.n_data == 20
    torch.testing.assert_close(parts.structure.curvature_dense(), whole.structure.curvature_dense())
    torch.testing.assert_close(parts.log_marginal_likelihood(), whole.log_marginal_likelihood())
    torch.testing.assert_close(parts(x[:5]), whole(x[:5]))
    layer = torch.linspace(0.5, 2.0, parts.subset.n_groups, dtype=DT)
    torch.testing.assert_close(parts.evidence(layer), whole.evidence(layer))


def test_override_true_replaces():
    x, y = make_data("mlp", "regression", n=20)
    la = Laplace(make_mlp(), "regression", "all", "full").fit(batches(x[:8], y[:8]))
    la.fit(batches(x, y))
    assert la.n_data == 20
    again = Laplace(make_mlp(), "regression", "all", "full").fit(batches(x, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), again.log_marginal_likelihood())


class _Counted(list):
    """A list of batches that counts its passes."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


@pytest.mark.parametrize("structure", [n for n, b in BACKENDS.items() if not b.mergeable])
def test_structures_that_need_all_the_data_refuse_and_change_nothing(structure):
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(make_mlp(), "classification", "all", structure).fit(batches(x[:12], y[:12]))
    before = float(la.log_marginal_likelihood())
    more = _Counted(batches(x[12:], y[12:]))
    with pytest.raises(TypeError, match="cannot take more data exactly.*override=True"):
        la.fit(more, override=False)
    assert more.passes == 0  # refused before a pass over the new data
    assert la.n_data == 12 and float(la.log_marginal_likelihood()) == before


def test_adding_data_at_other_weights_is_refused():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(model, "classification", "all", "full").fit(batches(x[:12], y[:12]))
    with torch.no_grad():
        model[0].weight.add_(0.1)
    with pytest.raises(ValueError, match="weights have changed since the first fit"):
        la.fit(batches(x[12:], y[12:]), override=False)
    assert la.n_data == 12
