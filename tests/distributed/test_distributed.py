"""Data-parallel fits over gloo processes on loopback equal the one-process fit."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DT, batches, gloo_port, join_gloo, make_data, make_mlp

from laplacetorch import Laplace

STRUCTURES = ["full", "diag", "kfac", "ekfac", "block_full", "hutchinson", "lanczos", "operator"]
SHARDS = {2: [(0, 9), (9, 20)], 3: [(0, 4), (4, 4), (4, 20)]}  # uneven; an empty one


def _fit(structure, loader, subset="all"):
    opts = {
        "operator": {"n_probes": 8, "n_steps": 12, "seed": 3},
        "hutchinson": {"n_probes": 16, "seed": 3},
        "lanczos": {"rank": 5, "seed": 3},
    }.get(structure)
    return Laplace(make_mlp(), "classification", subset, structure, backend_options=opts).fit(
        loader
    )


def _answers(la, xs):
    return torch.stack([la.evidence(0.5), la.evidence(2.0)]), la(xs)


def _brier(probs, y):
    return ((probs - torch.nn.functional.one_hot(y, probs.shape[-1])) ** 2).sum(-1).mean()


def _grids(la, val):
    nll = la.optimize_prior_precision(method="gridsearch", val_loader=val, grid_size=5)
    brier = la.optimize_prior_precision(
        method="gridsearch", val_loader=val, grid_size=5, loss=_brier
    )
    return torch.tensor(nll.history), torch.tensor(brier.history)


def _worker(rank, world, port, out, structures, bad_rank):
    join_gloo(rank, world, port)
    try:
        x, y = make_data("mlp", "classification", n=20)
        lo, hi = SHARDS[world][rank]
        results = {}
        for structure in structures:
            for subset in ("all", "last_layer") if structure == "full" else ("all",):
                shard = batches(x[lo:hi], y[lo:hi], 4) if hi > lo else []
                la = _fit(structure, shard, subset)
                results[f"{structure}/{subset}"] = _answers(la, x[:5])
                if structure == "diag":  # the validation pass, sharded alike
                    results["grid"] = _grids(la, shard)
        if bad_rank is not None:
            yb = y.clone()
            if rank == bad_rank:
                yb[lo] = 7  # a label out of range on one rank only
            try:
                _fit("diag", batches(x[lo:hi], yb[lo:hi], 4))
                results["error"] = None
            except ValueError as err:
                results["error"] = str(err)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()
    # gloo's threads can abort in the interpreter's exit ("terminate called without an
    # active exception", SIGABRT) after a clean run: leave without the C++ teardown
    os._exit(0)


def _mc_worker(rank, world, port, out, structures, bad_rank):
    """Every rank fits MC KFAC and MC diag on the same examples (identical shards)."""
    join_gloo(rank, world, port)
    try:
        x, y = make_data("mlp", "classification", n=20)
        results = {}
        for structure in ("kfac", "diag"):
            la = Laplace(
                make_mlp(), "classification", "all", structure, fisher_type="mc",
                backend_options={"seed": 5},
            )  # fmt: skip
            la.fit(batches(x[:10], y[:10], 4))
            results[structure] = la.structure.diagonal()
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def _run(world, structures, bad_rank=None, worker=_worker):
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(
            worker,
            args=(world, gloo_port(), out, structures, bad_rank),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        while not ctx.join(timeout=120):
            pass
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_ends_with_the_one_process_fit(world):
    """... and, in the same spawned group (spawning costs seconds), a bad label on the last
    rank only stops every rank with its error."""
    x, y = make_data("mlp", "classification", n=20)
    per_rank = _run(world, STRUCTURES, bad_rank=world - 1)
    assert "lie in [0, 2]" in per_rank[-1]["error"]
    for res in per_rank[:-1]:
        assert res["error"].startswith(f"rank {world - 1} of the data-parallel pass failed")
    for key in [k for k in per_rank[0] if k not in ("grid", "error")]:
        structure, subset = key.split("/")
        la = _fit(structure, batches(x, y, 4), subset)
        ev, pred = _answers(la, x[:5])
        for r, res in enumerate(per_rank):
            if key not in res:
                continue
            rel = 1e-4 if structure in ("operator", "hutchinson", "lanczos") else 1e-6
            torch.testing.assert_close(res[key][0], ev, rtol=rel, atol=0, msg=f"{key} rank {r}")
            torch.testing.assert_close(res[key][1], pred, rtol=rel, atol=1e-9)
    grids = _grids(_fit("diag", batches(x, y, 4)), batches(x, y, 4))
    for res in per_rank:  # the validation metrics of all shards, on every rank
        torch.testing.assert_close(res["grid"][0], grids[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res["grid"][1], grids[1], rtol=1e-9, atol=1e-12)

    assert "lie in [0, 2]" in per_rank[0]["error"]


def test_without_torch_distributed_nothing_changes():
    assert not dist.is_initialized()
    x, y = make_data("mlp", "classification", n=20)
    a = _fit("diag", batches(x, y, 4))
    b = Laplace(make_mlp(), "classification", "all", "diag", process_group=False).fit(
        batches(x, y, 4)
    )
    torch.testing.assert_close(a.evidence(0.5), b.evidence(0.5))
    assert DT == torch.float64


def test_mc_fits_draw_independent_samples_on_each_rank():
    """Two ranks holding the same examples: rank 0 draws what one process draws (its seed),
    rank 1 its own stream, so the reduced curvature is not twice one rank's (it would be,
    exactly, with one stream repeated on every rank) and is the same on both ranks."""
    x, y = make_data("mlp", "classification", n=20)
    per_rank = _run(2, [], worker=_mc_worker)
    for structure in ("kfac", "diag"):
        la = Laplace(
            make_mlp(), "classification", "all", structure, fisher_type="mc",
            backend_options={"seed": 5},
        )  # fmt: skip
        one = la.fit(batches(x[:10], y[:10], 4)).structure.diagonal()
        both = per_rank[0][structure]
        torch.testing.assert_close(per_rank[1][structure], both, rtol=1e-12, atol=0)
        assert not torch.allclose(both, 2 * one, rtol=1e-6)
        rank1 = both - one  # rank 1's own draws: a curvature of the same order
        assert bool((rank1 >= -1e-9).all()) and 0.3 < float(rank1.sum() / one.sum()) < 3
