"""Conv patches: ``patches @ Wᵀ + b`` reproduces ``module(x)`` for Conv1d / Conv2d / Conv3d."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from laplacetorch.curvature.conv_patches import conv_patches

# torch's own notice that it copies the input for 'same' with even kernels
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
DT = torch.float64
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SPATIAL = (9, 8, 7)

# per-dim values are truncated to the conv's dimension; uneven tuples catch swapped dims
CONFIGS = [
    {"kernel_size": 3},
    {"kernel_size": 2, "stride": 2, "bias": False},
    {"kernel_size": (3, 2, 4), "stride": (2, 1, 3)},
    {"kernel_size": 3, "dilation": (2, 1, 3), "padding": 2},
    {"kernel_size": (2, 3, 1), "padding": (1, 0, 2), "stride": (1, 2, 1)},
    {"kernel_size": 3, "padding": "valid", "dilation": 2},
    {"kernel_size": (4, 3, 2), "padding": "same"},
    {"kernel_size": 2, "dilation": (3, 2, 1), "padding": "same", "bias": False},
    {"kernel_size": 3, "groups": 2, "stride": 2, "padding": 1},
    {"kernel_size": (2, 3, 2), "groups": 2, "padding": "same", "dilation": 2},
    *(
        {"kernel_size": (3, 2, 3), "padding": pad, "padding_mode": mode, "dilation": dil}
        for mode in ("zeros", "reflect", "replicate", "circular")
        for pad, dil in ((1, 1), ((2, 1, 1), (1, 2, 1)), ("same", (2, 1, 2)))
    ),
    {"kernel_size": 3, "padding": 1, "padding_mode": "circular", "groups": 2, "stride": 2},
]


def _conv(n: int, cfg: dict, seed: int = 0) -> nn.Module:
    cfg = {key: v[:n] if isinstance(v, tuple) else v for key, v in cfg.items()}
    torch.manual_seed(seed)
    return CONVS[n](4, 6, **cfg).to(DT)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_patches_reproduce_module(n, cfg):
    m = _conv(n, cfg)
    x = torch.randn(3, 4, *SPATIAL[:n], dtype=DT)
    y = m(x)
    y = y.flatten(2).transpose(1, 2)  # [B, L, out]
    p = conv_patches(m, x)
    k = math.prod(m.kernel_size)
    assert p.shape == (3, y.shape[1], 4 * k)
    w = m.weight.reshape(m.out_channels, -1)
    cols, outs = 4 * k // m.groups, m.out_channels // m.groups
    for g in range(m.groups):
        z = p[..., g * cols : (g + 1) * cols] @ w[g * outs : (g + 1) * outs].T
        if m.bias is not None:
            z = z + m.bias[g * outs : (g + 1) * outs]
        torch.testing.assert_close(z, y[..., g * outs : (g + 1) * outs], rtol=1e-12, atol=1e-12)
