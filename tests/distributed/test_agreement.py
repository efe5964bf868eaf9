"""Ranks must agree before they sum: a fault on one rank stops every rank alike, and soon.

One spawned gloo group per world size runs every fault in turn (spawning costs seconds): a
rank fitting other weights, another likelihood, a model with another output width, a rank
interrupted inside a batch, then a rank that dies inside a batch (last: it ends the group).
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import batches, gloo_port, join_gloo, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace

LIMIT_S = 30  # each spawned run, faults included
SLOW_BATCHES, SLOW_S = 100, 0.1  # an interrupted pass that would last 10 s on the others


class _Tripwire(nn.Module):
    """``model``, its outputs cut to ``width``; on its ``calls``-th call ``trip()``."""

    def __init__(self, model, width=3, calls=None, trip=None):
        super().__init__()
        self.model, self.width, self.calls, self.trip, self.seen = model, width, calls, trip, 0

    def forward(self, x):
        self.seen += 1
        if self.seen == self.calls:
            self.trip()
        return self.model(x)[:, : self.width]


class _Slow:
    """A loader that takes ``SLOW_S`` per batch."""

    def __init__(self, shard):
        self.shard = shard

    def __iter__(self):
        for b in self.shard:
            time.sleep(SLOW_S)
            yield b


def _interrupt():
    raise KeyboardInterrupt


def _die():
    os._exit(1)


def _attempt(fit):
    """``(error type, message, seconds)`` of ``fit()`` (``("ok", "", s)`` when it passes)."""
    start = time.monotonic()
    try:
        fit()
        kind, message = "ok", ""
    except (Exception, KeyboardInterrupt) as err:
        kind, message = type(err).__name__, str(err)
    return kind, message, time.monotonic() - start


def _faults_worker(rank, world, port, out, bad, dying):
    join_gloo(rank, world, port)
    x, y = make_data("mlp", "classification", n=20)
    shard = batches(x, y, 4)
    odd = rank == bad
    res = {}

    def fit(model, loader, likelihood="classification", **kw):
        return lambda: Laplace(model, likelihood, "all", "diag", **kw).fit(loader)

    res["weights"] = _attempt(fit(make_mlp(seed=int(odd)), shard))
    res["likelihood"] = _attempt(fit(make_mlp(), shard, "regression" if odd else "classification"))
    res["how"] = _attempt(fit(make_mlp(), shard, fisher_type="empirical" if odd else "exact"))
    two_classes = batches(x, y % 2, 4)  # labels every width takes: only C differs
    res["outputs"] = _attempt(fit(_Tripwire(make_mlp(), 2 if odd else 3), two_classes))
    # inside the second batch (the first batch's model check makes three calls)
    tripped = _Tripwire(make_mlp(), calls=5 if odd else None, trip=_interrupt)
    res["interrupt"] = _attempt(fit(tripped, _Slow(shard * (SLOW_BATCHES // len(shard)))))
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    if dying is not None:
        tripped = _Tripwire(make_mlp(), calls=5 if rank == dying else None, trip=_die)
        res["death"] = _attempt(fit(tripped, shard))
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    # the group may be broken: leave without its teardown (see test_distributed._worker)
    os._exit(0)


def _spawn(worker, world, *args):
    """Every surviving rank's results, and the run's seconds; fails past ``LIMIT_S``."""
    with tempfile.TemporaryDirectory() as out:
        start = time.monotonic()
        ctx = mp.start_processes(
            worker,
            args=(world, gloo_port(), out, *args),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        for p in ctx.processes:  # not ctx.join: it kills the others when one rank dies
            p.join(max(0.0, start + LIMIT_S - time.monotonic()))
        hung = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
        for r in hung:
            ctx.processes[r].kill()
        seconds = time.monotonic() - start
        assert not hung, f"ranks {hung} still running after {LIMIT_S} s"
        files = {r: os.path.join(out, f"rank{r}.pt") for r in range(world)}
        return {r: torch.load(f) for r, f in files.items() if os.path.exists(f)}, seconds


def _same_on(per_rank, fault, ranks):
    """The error type and message of ``fault`` on ``ranks``, asserted identical."""
    seen = {(per_rank[r][fault][0], per_rank[r][fault][1]) for r in ranks}
    assert len(seen) == 1, f"{fault}: the ranks raised different errors: {seen}"
    return seen.pop()


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_stops_alike_on_a_fault_of_one_rank(world):
    bad, dying = world - 1, 1
    per_rank, seconds = _spawn(_faults_worker, world, bad, dying)
    every, survivors = range(world), [r for r in range(world) if r != dying]
    assert sorted(per_rank) == list(every)

    kind, message = _same_on(per_rank, "weights", every)
    assert kind == "ValueError", message
    assert message.startswith(f"ranks 0 and {bad} fit different weights θ* (rank 0: 83 float64")
    assert "each rank would end with another 'fit of all the data'" in message
    assert message.endswith("load the same weights on every rank")

    kind, message = _same_on(per_rank, "likelihood", every)
    assert kind == "ValueError", message
    assert message.startswith(
        f"ranks 0 and {bad} fit different likelihoods (rank 0: 'classification'; "
        f"rank {bad}: 'regression')"
    )

    kind, message = _same_on(per_rank, "how", every)  # a GGN shard and an EF shard
    assert kind == "ValueError", message
    assert message.startswith(f"ranks 0 and {bad} sum different curvatures"), message
    assert "'curvature': 'ef'" in message and "pass the same fisher_type" in message

    kind, message = _same_on(per_rank, "outputs", every)
    assert kind == "ValueError", message
    assert message.startswith(
        f"ranks 0 and {bad} see different output widths C (rank 0: 3; rank {bad}: 2)"
    )

    assert per_rank[bad]["interrupt"][:2] == ("KeyboardInterrupt", "")
    others = [r for r in every if r != bad]
    kind, message = _same_on(per_rank, "interrupt", others)
    assert (kind, message) == (
        "ValueError",
        f"rank {bad} of the data-parallel pass failed: KeyboardInterrupt",
    )
    for r in others:  # their passes would take SLOW_BATCHES · SLOW_S = 10 s
        assert per_rank[r]["interrupt"][2] < 3, per_rank[r]["interrupt"]

    kind, message = _same_on(per_rank, "death", survivors)
    assert kind == "RuntimeError", message
    assert message.startswith(f"rank {dying} never reached the data-parallel pass's exchange")
    assert "set it, e.g. init_process_group(..., timeout=timedelta(minutes=5))" in message
    for r in survivors:
        assert per_rank[r]["death"][2] < 10, per_rank[r]["death"]
    print(f"world {world}: every fault in {seconds:.1f} s")


def test_a_dead_rank_0_is_named_as_the_store_host():
    """Rank 0 hosts the group's store (tcp:// initialisation): the survivor cannot read who
    arrived, and says that rank 0 probably died."""
    per_rank, seconds = _spawn(_death_worker, 2, 0)
    assert sorted(per_rank) == [1]
    kind, message, spent = per_rank[1]["death"]
    assert kind == "RuntimeError", message
    assert "store cannot be reached to tell which: rank 0, which hosts it" in message
    assert "timeout" in message and spent < 10
    print(f"rank 0 dead: {seconds:.1f} s")


def _death_worker(rank, world, port, out, dying):
    join_gloo(rank, world, port)
    x, y = make_data("mlp", "classification", n=20)
    tripped = _Tripwire(make_mlp(), calls=5 if rank == dying else None, trip=_die)
    res = {"death": _attempt(lambda: Laplace(tripped, "classification", "all", "diag").fit(
        batches(x, y, 4)
    ))}  # fmt: skip
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    os._exit(0)
