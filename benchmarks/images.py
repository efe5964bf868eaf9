"""Fashion-MNIST images (or a synthetic stand-in) and LeNet, shared by the image benchmarks.

Kept apart from ``bench_kfac.py``, which imports laplace-torch (and BackPACK) at import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import SEED
from torch import Tensor, nn

from laplacetorch.datasets import FASHION_MNIST_DIR, load_fashion_mnist

__all__ = ["load_images", "make_lenet"]


def load_images(n: int, seed: int = SEED) -> tuple[Tensor, Tensor, str]:
    """Returns ``(x [n, 1, 28, 28] float32, y [n], source)``.

    The first ``n`` Fashion-MNIST training images (``laplacetorch.datasets``, Debian's
    files), standardised, when they are installed; else synthetic class-conditional images
    (a smooth random template per class plus noise; a net can learn them).
    """
    try:
        x, y = load_fashion_mnist("train")
    except FileNotFoundError as err:
        why = str(err).split(";")[0]
    else:
        x, y = x[:n], y[:n]
        return ((x - x.mean()) / x.std()).contiguous(), y, f"Fashion-MNIST ({FASHION_MNIST_DIR})"
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(10, 1, 7, 7, generator=gen)
    templates = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = templates[y] + 4.0 * torch.randn(n, 1, 28, 28, generator=gen)
    x = (x - x.mean()) / x.std()
    return x.contiguous(), y, f"SYNTHETIC class-conditional images ({why})"


def make_lenet(seed: int) -> nn.Sequential:
    """Returns a float32 LeNet-5-sized CNN for [N, 1, 28, 28] inputs (P = 61,706)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    ).to(torch.float32)
