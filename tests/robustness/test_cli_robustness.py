"""The command line's failure modes (issue #16): one-line errors and exit statuses, the
``--out`` directory on failure, ``--n-train``, the checked option values, ``--help``,
``--version`` and progress bars."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

import laplacetorch
from laplacetorch import cli
from laplacetorch.memory import MemoryBudgetError

#: a quick evaluate run: 50 digits, one epoch, one structure, no OOD set
QUICK = ["evaluate", "--epochs", "1", "--n-train", "50", "--structures", "diag", "--ood", "none"]


def _one_line_error(err: str) -> str:
    assert err.startswith("laplacetorch: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- errors, exit status


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RuntimeError("the fit failed\nin two lines"), 1),
        (TypeError("a model that is not a module"), 1),
        (ValueError("the library refused this"), 1),
        (OSError("disk full"), 1),
        (FileNotFoundError("no such data set"), 1),
        (MemoryBudgetError("needs 9 GiB; 'diag' would fit"), 1),
        (cli.UsageError("--epochs must be an integer >= 1"), 2),
    ],
)
def test_errors_print_one_line_and_set_the_exit_status(monkeypatch, capsys, exc, status):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli.entry_point, "run_evaluate", fail)  # what main() calls
    assert cli.main(["evaluate"]) == status
    err = _one_line_error(capsys.readouterr().err)
    assert str(exc).splitlines()[0] in err
    if "two lines" in str(exc):
        assert "the fit failed; in two lines" in err


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.entry_point, "run_demo", interrupted)  # what main() calls
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err == "laplacetorch: interrupted\n"


@pytest.mark.parametrize("argv", [["--debug", "evaluate"], ["evaluate", "--debug"]])
def test_debug_shows_the_traceback(monkeypatch, argv):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.entry_point, "run_evaluate", fail)  # what main() calls
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(argv)


def test_parse_errors_are_one_line(capsys):
    assert cli.main(["evaluate", "--epochs", "many"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "--epochs" in err and "laplacetorch evaluate --help" in err
    assert cli.main([]) == 2
    _one_line_error(capsys.readouterr().err)


def test_python_dash_m_prints_one_line():
    """End to end through ``python -m laplacetorch``: no traceback, status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "laplacetorch", "evaluate", "--structures", ""],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    _one_line_error(proc.stderr)
    assert proc.stdout == ""


# --------------------------------------------------------------------------- --out on failure


def _fail_in(monkeypatch, where: str):
    """Make the run fail in the fits (``evaluate``) or half-way through writing (``to_json``,
    after table.txt is written)."""
    if where == "evaluate":

        def evaluate(*args, **kwargs):
            raise RuntimeError("the fit failed")

        monkeypatch.setattr("laplacetorch.evaluation.evaluate", evaluate)
    else:

        def to_json(self, path):
            path.write_text("{")  # partly written
            raise OSError("disk full")

        monkeypatch.setattr("laplacetorch.evaluation.EvaluationTable.to_json", to_json)


@pytest.mark.parametrize("where", ["evaluate", "to_json"])
def test_a_failed_run_leaves_no_output_directory(tmp_path, monkeypatch, capsys, where):
    _fail_in(monkeypatch, where)
    target = tmp_path / "runs" / "digits"
    assert cli.main([*QUICK, "--out", str(target)]) == 1
    _one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # neither the directory, its parent nor staging


def test_a_failed_run_keeps_an_existing_directory_as_it_was(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "table.txt").write_text("an earlier table")
    _fail_in(monkeypatch, "to_json")
    assert cli.main([*QUICK, "--out", str(mine)]) == 1
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "table.txt"]
    assert (mine / "table.txt").read_text() == "an earlier table"
    assert list(tmp_path.iterdir()) == [mine]


def test_output_lands_in_an_existing_directory(tmp_path, monkeypatch):
    # no plots here: this checks where the files go, not the diagrams
    monkeypatch.setattr("laplacetorch.plots.reliability_diagram", lambda *a, **k: None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli.main([*QUICK, "--out", str(mine)]) == 0
    assert {"notes.txt", "table.txt", "table.json"} <= {p.name for p in mine.iterdir()}
    assert not any(p.name.startswith(".laplacetorch") for p in mine.iterdir())
    assert (mine / "notes.txt").read_text() == "keep me"


def test_an_unwritable_out_creates_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main([*QUICK, "--out", str(blocker / "sub")]) == 2
    assert "cannot be written" in _one_line_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == [blocker]


# --------------------------------------------------------------------------- --n-train


def test_n_train_is_honoured_for_digits():
    train, val, test, _ = cli._evaluation_data("digits", "none", 0, 50)
    assert len(train[1]) == 50 and len(val[1]) == 300 and len(test[1]) == 297
    full, *_ = cli._evaluation_data("digits", "none", 0, None)
    assert len(full[1]) == 1200
    torch.testing.assert_close(train[0], full[0][:50])  # the first 50 of the training split


@pytest.mark.parametrize(("n", "match"), [(0, "integer >= 1"), (1201, "more than the 1200")])
def test_n_train_out_of_range_is_refused(capsys, n, match):
    assert cli.main(["evaluate", "--n-train", str(n)]) == 2
    assert match in _one_line_error(capsys.readouterr().err)


def test_n_train_fashion_mnist_never_overlaps_validation(monkeypatch):
    import laplacetorch.datasets as ds

    def fake(split="train"):  # each image holds its own index, so overlaps show
        n = 60000 if split == "train" else 10000
        offset = 0 if split == "train" else 10**6
        x = (torch.arange(n, dtype=torch.float32) + offset).reshape(n, 1, 1, 1)
        return x, torch.arange(n) % 10

    monkeypatch.setattr(ds, "load_fashion_mnist", fake)
    train, val, test, _ = cli._evaluation_data("fashion-mnist", "none", 0, 60000)
    assert len(train[1]) == 60000
    ids = [set(part[0].flatten().tolist()) for part in (train, val, test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    default, *_ = cli._evaluation_data("fashion-mnist", "none", 0, None)
    assert len(default[1]) == 10000
    with pytest.raises(cli.UsageError, match="more than the 60000"):
        cli._evaluation_data("fashion-mnist", "none", 0, 60001)


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["evaluate", "--structures", ""], "needs at least one name"),
        (["evaluate", "--structures", " "], "needs at least one name"),
        (["evaluate", "--structures", "kfac,"], "empty name"),
        (["evaluate", "--structures", "kfac,kfac"], "names 'kfac' twice"),
        (["evaluate", "--structures", "kfac,kron"], "names 'kfac' twice ('kfac' and 'kron')"),
        (["evaluate", "--structures", "kfac,bogus"], "unknown structure 'bogus'"),
        (["evaluate", "--subset", ""], "needs at least one name"),
        (["evaluate", "--subset", "all,all"], "names 'all' twice"),
        (["evaluate", "--epochs", "0"], "--epochs must be an integer >= 1"),
        (["evaluate", "--lr", "0"], "--lr must be a finite number > 0"),
        (["evaluate", "--lr", "nan"], "--lr must be a finite number > 0"),
        (["evaluate", "--weight-decay=-1e-4"], "--weight-decay must be a finite number >= 0"),
        (["evaluate", "--weight-decay", "inf"], "--weight-decay must be a finite number >= 0"),
        (["evaluate", "--seed", "-1"], "--seed must be an integer >= 0"),
        (["select", "--widths", ""], "--widths must be comma-separated positive integers"),
        (["select", "--widths", "4,x"], "--widths must be comma-separated positive integers"),
        (["select", "--widths", "0,4"], "--widths must be positive integers"),
        (["select", "--widths", "4,4"], "--widths names a width twice"),
        (["select", "--steps", "0"], "--steps must be an integer >= 1"),
        (["demo", "--epochs", "0"], "--epochs must be an integer >= 1"),
    ],
)
def test_bad_option_values_are_refused_in_one_line(capsys, argv, match):
    assert cli.main(argv) == 2
    assert match in _one_line_error(capsys.readouterr().err)


def test_unknown_structure_lists_the_valid_ones(capsys):
    assert cli.main(["evaluate", "--structures", "bogus"]) == 2
    err = capsys.readouterr().err
    assert all(repr(s) in err for s in laplacetorch.HESSIAN_STRUCTURES)


def test_aliases_are_accepted():
    args = argparse.Namespace(
        structures="kron, diag", subset="last_layer", epochs=1, seed=0, progress=False
    )
    assert cli._check_evaluate_args(args)["structures"] == ["kron", "diag"]


# --------------------------------------------------------------------------- help, version


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_describes_every_command_and_option(capsys):
    parser = cli._parser()
    subs = _subparsers(parser)
    assert set(subs) == {"demo", "evaluate", "select"}
    for name, sub in subs.items():
        assert sub.description and "example" in (sub.epilog or "")
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.default not in (None, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), (
                    f"{name} {action.option_strings} shows no default"
                )
        assert cli.main([name, "--help"]) == 0
        assert sub.description.split()[0] in capsys.readouterr().out
    top = parser.format_help()
    assert all(name in top for name in subs) and "--version" in top


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"laplacetorch {laplacetorch.__version__}"


# --------------------------------------------------------------------------- progress


def test_progress_bars_follow_the_flag(capsys):
    assert cli.main([*QUICK, "--progress"]) == 0
    err = capsys.readouterr().err
    assert "train" in err and "epoch" in err  # the training bar (the fits have their own)
    assert cli.main([*QUICK, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_default_is_on_for_a_terminal_only(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert cli._progress(None) is True and cli._progress(False) is False
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert cli._progress(None) is False and cli._progress(True) is True
