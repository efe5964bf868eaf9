"""Helpers shared by the benchmark scripts (no downloads).

Digits data and MLPs, a short Adam training loop, one gradient epoch as the unit of cost, the
timing helpers (``timed``, ``median_time``, ``round_robin``, ``bracketed``, ``alternate``) and
the optional laplace-torch peer. The scripts run as ``python benchmarks/bench_x.py``, which puts
``benchmarks/`` on ``sys.path``, and import these as ``from common import ...``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import statistics
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from laplacetorch import Laplace

SEED = 0
N_TRAIN = 1500
BATCH_SIZE = 128
NO_PEER = "  theirs: laplace-torch is not installed (`make peer` installs it); ours only"


# ----------------------------------------------------------------------------- data and nets
def load_digits_split(
    seed: int = SEED, n_train: int = N_TRAIN
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loads sklearn's digits as float32, standardised with train statistics.

    Args:
        seed: Seed of the random train / test permutation.
        n_train: Number of training digits (the rest, 297 of 1797 by default, are the test set).

    Returns:
        ``(X_train, y_train, X_test, y_test)``, contiguous.
    """
    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    mean = x[tr].mean(0)
    std = x[tr].std(0).clamp_min(1e-6)  # some border pixels are constant
    x = (x - mean) / std
    return x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous()


def prediction_inputs(x_train: Tensor, x_test: Tensor, n: int) -> Tensor:
    """Returns the ``n`` predictive inputs: every test input, then the first training ones."""
    return torch.cat([x_test, x_train])[:n].contiguous()


def data_loader(x: Tensor, y: Tensor, batch_size: int = BATCH_SIZE) -> DataLoader:
    """Returns an unshuffled loader over ``(x, y)``, the one every fit and epoch is timed on."""
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_mlp(width: int, seed: int) -> nn.Sequential:
    """Returns a float32 64-width-width-10 ReLU MLP with seeded initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    ).to(torch.float32)


def n_params(model: nn.Module) -> int:
    """Returns the number of weights of ``model``."""
    return sum(p.numel() for p in model.parameters())


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Trains with Adam on the mean cross-entropy over shuffled epochs, then sets eval mode.

    Args:
        model: The net, trained in place.
        x: Training inputs.
        y: Integer class labels.
        epochs: Number of epochs (0 leaves the weights as they are).
        seed: Seed of the shuffling.
        lr: Adam learning rate.
        batch_size: Mini-batch size.
    """
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Returns the accuracy of ``model`` on ``(x, y)``."""
    return (model(x).argmax(-1) == y).float().mean().item()


def gradient_epoch(model: nn.Module, loader: DataLoader, clear_after: bool = True) -> None:
    """Runs one gradient pass: forward, summed cross-entropy and backward for every batch.

    Args:
        model: The net; its gradients are cleared first.
        loader: The batches.
        clear_after: Whether to clear the accumulated gradients again at the end.
    """
    model.zero_grad(set_to_none=True)
    for xb, yb in loader:
        F.cross_entropy(model(xb), yb, reduction="sum").backward()
    if clear_after:
        model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Returns ``(fn(), wall seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """Returns the last result and median wall time of ``repeats`` calls after one warm-up."""
    out = fn()
    times = []
    for _ in range(repeats):
        out, dt = timed(fn)
        times.append(dt)
    return out, statistics.median(times)


def round_robin(
    fns: dict[str, Callable[[], Any]], repeats: int, warm: frozenset[str] = frozenset()
) -> dict[str, list[float]]:
    """Times several callables in turn, so that load on a shared machine hits all alike.

    Args:
        fns: The callables by name.
        repeats: Number of rounds; every entry runs once per round.
        warm: Names already called once, which skip the warm-up call the others get.

    Returns:
        The wall times of every entry, one per round.
    """
    for k, fn in fns.items():
        if k not in warm:
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn)[1])
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Returns the median of every entry of ``times``."""
    return {k: statistics.median(v) for k, v in times.items()}


def bracketed(
    fn: Callable[[], Any], ref: Callable[[], Any], repeats: int
) -> tuple[Any, float, float]:
    """Times a single-shot ``fn`` between ``repeats`` timed calls of ``ref`` before and after.

    Returns:
        ``(fn(), its wall time, median of the ref times)``; ``ref`` should already be warm.
    """
    refs = [timed(ref)[1] for _ in range(repeats)]
    out, seconds = timed(fn)
    refs += [timed(ref)[1] for _ in range(repeats)]
    return out, seconds, statistics.median(refs)


def alternate(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[Any, Any, list[float], list[float]]:
    """Times two callables call by call (no warm-up), ``first`` then ``second``, ``repeats`` times.

    Returns:
        ``(last first(), last second(), first's times, second's times)``.
    """
    out1 = out2 = None
    t1, t2 = [], []
    for _ in range(repeats):
        out1, dt = timed(first)
        t1.append(dt)
        out2, dt = timed(second)
        t2.append(dt)
    return out1, out2, t1, t2


# ----------------------------------------------------------------------------- Laplace
def ours_laplace(model: nn.Module, structure: str, **options: Any) -> Laplace:
    """Returns an unfitted classification Laplace over all weights, prior precision 1.0.

    Args:
        model: The trained net.
        structure: The ``hessian_structure``.
        **options: Further keyword arguments of ``Laplace`` (``fisher_type``, ...).
    """
    return Laplace(
        model,
        "classification",
        subset_of_weights="all",
        hessian_structure=structure,
        prior_precision=1.0,
        **options,
    )


def load_peer() -> ModuleType | None:
    """Returns laplace-torch's ``laplace`` module, or None when the optional peer is missing."""
    try:
        import laplace
        from laplace.curvature import BackPackGGN  # noqa: F401  (the backend the peer runs)
    except ImportError:
        return None
    return laplace


def peer_line(peer: ModuleType | None) -> str:
    """Returns the line saying which laplace-torch the benchmark compares with, if any."""
    if peer is None:
        return (
            "laplace-torch (peer) is not importable: printing ours only (`make peer` installs it)"
        )
    return f"peer: laplace-torch {importlib.metadata.version('laplace-torch')} with BackPackGGN"


def theirs_laplace(
    model: nn.Module, structure: str, prior_precision: float = 1.0, subset: str = "all"
) -> Any:
    """Returns laplace-torch's unfitted classification Laplace over ``subset`` (its
    ``subset_of_weights``: all weights by default).

    It runs with the BackPackGGN backend on a deep copy of ``model``; the peer must be
    installed (see ``load_peer``).
    """
    import laplace
    from laplace.curvature import BackPackGGN

    return laplace.Laplace(
        copy.deepcopy(model),
        "classification",
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=prior_precision,
        backend=BackPackGGN,
    )


def print_predict_comparison(r: dict[str, Any], target: float) -> None:
    """Prints the max difference of the predictive probabilities and the speed-up in ``r``."""
    print(f"  max |ours - theirs| of the predictive probabilities: {r['max_abs_diff']:.2e}")
    print(
        f"  ratio theirs/ours (predict): {r['ratio']:.1f}x   target >= {target:g}x   {r['verdict']}"
    )
