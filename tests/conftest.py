"""Small float64 nets, data and dense oracles from ``torch.func``."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from laplacetorch import ParameterSubset

DT = torch.float64


def make_mlp(n_in: int = 4, n_out: int = 3, seed: int = 0) -> nn.Module:
    """An MLP with two hidden layers."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(
        nn.Linear(n_in, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, n_out)
    ).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.7)
    return m.eval()


def make_cnn(n_out: int = 3, seed: int = 0) -> nn.Module:
    """A small CNN on 1×6×6 inputs."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, n_out),
    ).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5)
    return m.eval()


def make_data(kind: str, likelihood: str, n: int = 12, n_out: int = 3, seed: int = 1):
    """Inputs for ``kind`` ("mlp" or "cnn") and targets for ``likelihood``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 4) if kind == "mlp" else (n, 1, 6, 6), generator=g, dtype=DT)
    if likelihood == "classification":
        y = torch.randint(0, n_out, (n,), generator=g)
    elif likelihood == "regression":
        y = torch.randn((n, n_out), generator=g, dtype=DT)
    else:
        y = torch.randint(0, 2, (n, n_out), generator=g).to(DT)
    return x, y


def batches(x, y, size: int = 5):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def make_subset(model: nn.Module, subset: str) -> ParameterSubset:
    if subset == "subnetwork":
        total = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(3)
        mask = torch.rand(total, generator=g) < 0.4
        return ParameterSubset(model, "subnetwork", subnetwork=mask)
    return ParameterSubset(model, subset)


# Training losses as a user would write them, and the factor turning each into the summed
# unit-scale NLL of the likelihood (sum: 1; mean: N, or N·C/2 for MSE which is ½-free).
def training_loss(likelihood: str, reduction: str):
    if likelihood == "classification":
        return lambda f, y: F.cross_entropy(f, y, reduction=reduction)
    if likelihood == "regression":
        return lambda f, y: F.mse_loss(f, y, reduction=reduction)
    return lambda f, y: F.binary_cross_entropy_with_logits(f, y, reduction=reduction)


def loss_to_sum_nll(likelihood: str, reduction: str, n: int, c: int) -> float:
    factor = 0.5 if likelihood == "regression" else 1.0
    if reduction == "mean":
        factor *= n * (c if likelihood != "classification" else 1)
    return factor


def dense_ggn(subset: ParameterSubset, x, y, likelihood: str, reduction: str = "sum"):
    """Oracle GGN: Jᵀ (∂²L/∂f²) J with J from jacrev and the Hessian of the training loss."""
    theta = subset.map_vector()
    jac = torch.func.jacrev(lambda t: subset.forward(t, x))(theta)  # [N, C, P]
    out = subset.forward(theta, x)
    loss = training_loss(likelihood, reduction)
    hess = torch.func.hessian(lambda o: loss(o, y))(out)  # [N, C, N, C]
    n, c, p = jac.shape
    hess = hess.reshape(n * c, n * c) * loss_to_sum_nll(likelihood, reduction, n, c)
    jf = jac.reshape(n * c, p)
    return jf.T @ hess @ jf


def dense_ef(subset: ParameterSubset, x, y, likelihood: str, reduction: str = "sum"):
    """Oracle empirical Fisher Σₙ gₙgₙᵀ with per-example gradients by plain autograd."""
    loss = training_loss(likelihood, reduction)
    theta = subset.map_vector()
    grads = []
    for i in range(len(x)):
        t = theta.clone().requires_grad_(True)
        li = loss(subset.forward(t, x[i : i + 1]), y[i : i + 1])
        factor = loss_to_sum_nll(likelihood, reduction, 1, y.shape[-1] if y.dim() > 1 else 1)
        (gi,) = torch.autograd.grad(li * factor, t)
        grads.append(gi)
    gm = torch.stack(grads)
    return gm.T @ gm


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


class ReuseNet(torch.nn.Module):
    """A Linear applied twice, a tied pair, and a Linear on a sequence."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.inp = torch.nn.Linear(4, 5).double()
        self.mid = torch.nn.Linear(5, 5).double()
        self.out = torch.nn.Linear(5, 3).double()
        self.tied = torch.nn.Linear(5, 5).double()
        if mode == "tied":
            self.tied.weight = self.mid.weight

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        if self.mode == "twice":
            h = torch.tanh(self.mid(torch.tanh(self.mid(h))))
        elif self.mode == "tied":
            h = torch.tanh(self.tied(torch.tanh(self.mid(h))))
        else:  # sequence: [B, 2, 5] through mid, then mean over the sequence
            h = torch.tanh(self.mid(torch.stack([h, h.flip(-1)], 1))).mean(1)
        return self.out(h)


class SeqNet(nn.Module):
    """Two Linear layers on a sequence [B, T, 3], then the mean over T."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):  # x: [B, T, 3] → mean over the sequence
        return self.b(torch.tanh(self.a(x))).mean(1)


def gloo_port() -> int:
    """A free TCP port on loopback for a gloo group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int) -> None:
    """Join the gloo group on loopback; a missing collective times out after 60 s."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
