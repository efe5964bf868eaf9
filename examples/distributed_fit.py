"""A data-parallel Laplace fit with torch.distributed, launched by torchrun.

What it shows: each rank fits on its shard of the digits (every world-th example) and ends with
the fit of all the data, because every data pass of ``Laplace.fit`` reduces over the default
process group; tuning the prior and predicting then need no communication, and every rank
gets the same answers. Run it (gloo on CPU; NCCL on GPUs works alike)::

    torchrun --nproc_per_node=2 examples/distributed_fit.py [--structure kfac]

Run without torchrun it is one process on all the data: the same numbers.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from laplacetorch import Laplace
from laplacetorch.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="kfac")
    args = parser.parse_args()
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    x, y = load_digits()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # the same MAP on every rank (same seed, full batch)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    data = TensorDataset(x, y)
    if dist.is_initialized():
        # not DistributedSampler: it pads the shards to equal length by repeating examples,
        # which would count them twice in the curvature; uneven shards are fine here
        data = Subset(data, range(rank, len(data), dist.get_world_size()))
    loader = DataLoader(data, batch_size=128)
    la = Laplace(model, "classification", "all", args.structure).fit(loader)
    res = la.optimize_prior_precision(method="marglik")
    probs = la(x[:5])
    print(
        f"rank {rank}: N = {la.n_data}, δ = {float(res.prior_precision):.4f}, "
        f"log evidence {res.log_marginal_likelihood:.3f}, p(y | x₀) max {float(probs[0].max()):.4f}"
    )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
