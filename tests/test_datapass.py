"""The single data pass: reduction hook, progress bar, dict inputs end to end."""

from __future__ import annotations

import torch
from conftest import batches, make_data, make_mlp

from laplacetorch import Laplace, ParameterSubset, fit_diag, get_likelihood, set_reduction


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
    assert seen == [["G", "loss", "n_data"]]
    assert res.n_data == 2 * ref.n_data
    torch.testing.assert_close(res.structure.diagonal(), 2 * ref.structure.diagonal())


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
