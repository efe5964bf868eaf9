"""The single data pass: reduction hook, progress bar, dict inputs end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, make_data, make_mlp

from laplacetorch import Laplace, ParameterSubset, fit_diag, get_likelihood, set_reduction
from laplacetorch.datapass import Gram, accumulate


def test_reduction_hook_sees_every_sum_once():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    ref = fit_diag(sub, lik, batches(x, y))
    seen = []

    def twice(sums):  # stands in for an all_reduce over two identical processes
        seen.append(sorted(sums))
        return {k: 2 * v for k, v in sums.items()}

    set_reduction(twice)
    try:
        res = fit_diag(sub, lik, batches(x, y))
    finally:
        set_reduction(None)
    # one diagonal block per layer, plus C·N (C on a rank with an empty shard) and the count
    # of likelihood terms (none: every target ignored, a warning)
    assert seen == [["0", "2", "4", "_outputs_times_n", "_terms", "loss", "n_data"]]
    assert res.n_data == 2 * ref.n_data
    torch.testing.assert_close(res.structure.diagonal(), 2 * ref.structure.diagonal())


def test_gram_terms_are_summed_in_place_as_products():
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    loader = [(r, torch.zeros(5)) for r in rows]

    def step(x, y):
        return {"g": Gram(x), "n": torch.tensor(float(x.shape[0]), dtype=torch.float64)}

    sums = accumulate(loader, step, device=torch.device("cpu"), dtype=torch.float64)
    torch.testing.assert_close(sums["g"], sum(r.T @ r for r in rows), rtol=1e-12, atol=1e-12)
    assert float(sums["n"]) == 15 and int(sums["n_data"]) == 15


def test_progress_bar_runs(capsys):
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    Laplace(model, "classification", "all", "diag").fit(batches(x, y), progress=True)
    assert "diag curvature" in capsys.readouterr().err


def test_laplace_with_dict_inputs_end_to_end():
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_mlp()

        def forward(self, batch):
            return self.net(batch["x"] + batch["shift"])

    model = DictNet().eval()
    x, y = make_data("mlp", "classification")
    shift = torch.full_like(x, 0.5)
    loader = [({"x": x[:6], "shift": shift[:6]}, y[:6]), ({"x": x[6:], "shift": shift[6:]}, y[6:])]
    plain = Laplace(model.net, "classification", "all", "full").fit(batches(x + 0.5, y))
    for subset in ("all", "last_layer"):
        la = Laplace(model, "classification", subset, "full").fit(loader)
        probs = la({"x": x, "shift": shift})
        assert probs.shape == (len(x), 3)
        if subset == "all":
            torch.testing.assert_close(probs, plain(x + 0.5))
            torch.testing.assert_close(
                la.log_marginal_likelihood(), plain.log_marginal_likelihood()
            )


def test_each_pass_iterates_the_loader_once():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    started = []

    class Counting(list):
        def __iter__(self):
            started.append(1)
            return super().__iter__()

    for progress in (False, True):
        started.clear()
        fit_diag(
            ParameterSubset(model, "all"),
            get_likelihood("classification"),
            Counting(batches(x, y)),
            progress=progress,
        )
        assert started == [1]


def test_validation_grid_search_goes_through_the_data_pass(capsys):
    """Checks, bar and reduction apply to the validation pass of the grid search."""
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(model, "classification", "all", "kfac").fit(batches(x, y))
    seen = []

    def record(sums):
        seen.append(sorted(sums))
        return sums

    set_reduction(record)
    try:
        la.optimize_prior_precision(method="gridsearch", val_loader=batches(x, y), progress=True)
    finally:
        set_reduction(None)
    assert seen == [["n_data", "nll"]]
    assert "grid search" in capsys.readouterr().err
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        la.optimize_prior_precision(method="gridsearch", val_loader=batches(bad, y))
    with pytest.raises(ValueError, match="empty loader"):
        la.optimize_prior_precision(method="gridsearch", val_loader=[])


def test_evaluation_goes_through_the_data_pass(capsys):
    from laplacetorch.evaluation import Variant, evaluate

    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    evaluate(
        model,
        batches(x, y),
        batches(x, y),
        variants=[Variant("last_layer", "diag")],
        progress=True,
    )
    assert "predict" in capsys.readouterr().err
    with pytest.raises(ValueError, match="each batch must be a pair"):
        evaluate(model, batches(x, y), [x], variants=[Variant("last_layer", "diag")])


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "block_full"])
def test_one_pass_backends_take_any_iterable(structure):
    """Generators and IterableDataset loaders (no len: the bar has no total)."""
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    ref = Laplace(model, "classification", "all", structure).fit(batches(x, y))
    streams = [
        (b for b in batches(x, y)),
        torch.utils.data.DataLoader(_Stream(x, y), batch_size=5),
    ]
    for loader in streams:
        la = Laplace(model, "classification", "all", structure).fit(loader, progress=True)
        assert la.n_data == 20
        torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())


@pytest.mark.parametrize("structure", ["ekfac", "hutchinson", "lanczos", "operator"])
def test_several_pass_backends_refuse_a_one_shot_iterator(structure):
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(model, "classification", "all", structure)
    with pytest.raises(ValueError, match="more than once; got a one-shot iterator"):
        la.fit(b for b in batches(x, y))
    assert la.curvature is None
