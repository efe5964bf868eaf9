"""A fitted Laplace shared between threads (issue 33): every predictive of every structure,
called from several threads at once, gives bit for bit the answers of one thread.

The library's calls of one model are serialised (``model_call.model_lock``: functional calls
swap the module's parameters) and forward-mode AD is process-wide (``model_call.jvp``); the
structures' caches are replaced whole. Each call here seeds its own generator, so its answer
is fixed; a thread that saw another's weights, hooks, caches or AD levels would differ."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace

N_THREADS, N_CALLS = 4, 3

# the structures of the registry that predict (gp and nystrom: function space, below)
STRUCTURES = ["full", "diag", "kfac", "ekfac", "block_full", "hutchinson", "lanczos", "operator"]
OPTIONS = {
    "hutchinson": {"n_probes": 8, "seed": 1},
    "lanczos": {"rank": 4, "seed": 1},
    "operator": {"n_probes": 4, "n_steps": 8, "seed": 1},
}


def _calls(la: Laplace, x: torch.Tensor, regression: bool) -> dict[str, Callable]:
    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    calls = {
        "glm": lambda: la(x),
        "nn": lambda: la(x, pred_type="nn", n_samples=6, generator=gen()),
        "samples": lambda: la.predictive_samples(x, n_samples=4, generator=gen()),
        "uncertainty": lambda: la.uncertainty(x, n_samples=6, generator=gen()),
        "weights": lambda: la.sample(3, generator=gen()),
    }
    if not regression:
        calls["mc"] = lambda: la(x, link_approx="mc", n_samples=8, generator=gen())
        calls["top_k"] = lambda: la.top_k(x, 2, n_samples=6, generator=gen())
    return calls


def _flat(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _flat(v)]
    return [t for v in vars(value).values() for t in _flat(v)]  # result dataclasses


def _hammer(calls: dict[str, Callable], n_calls: int = N_CALLS) -> None:
    """Every call from N_THREADS threads at once, ``n_calls`` times each, against its one-thread
    answer; any difference or exception fails."""
    refs = {name: _flat(call()) for name, call in calls.items()}
    failures: list[str] = []
    start = threading.Barrier(N_THREADS)

    def worker(k: int) -> None:
        start.wait()
        for i in range(n_calls):
            for name in list(calls)[k % len(calls) :] + list(calls)[: k % len(calls)]:
                try:
                    got = _flat(calls[name]())
                except Exception as err:
                    failures.append(f"{name}: {type(err).__name__}: {err}")
                    continue
                if len(got) != len(refs[name]) or any(
                    not torch.equal(a, b) for a, b in zip(got, refs[name], strict=True)
                ):
                    failures.append(f"{name}: differs from the one-thread answer (call {i})")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures[:5]


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_every_structure_predicts_the_same_from_many_threads(structure, likelihood):
    if structure == "operator" and likelihood == "classification":
        pytest.skip("operator: CG solves per input, seconds a call; its regression case runs")
    x, y = make_data("mlp", likelihood, n=16)
    la = Laplace(make_mlp(), likelihood, "all", structure, backend_options=OPTIONS.get(structure))
    la.fit(batches(x, y, 8))
    calls = _calls(la, x[:5], likelihood == "regression")
    if structure == "operator":  # its GGN products after the fit: the glm predictive, samples
        calls = {k: calls[k] for k in ("glm", "weights")}
    _hammer(calls, 1 if structure == "operator" else N_CALLS)


@pytest.mark.parametrize("subset", ["last_layer", "subnetwork"])
def test_subsets_predict_the_same_from_many_threads(subset):
    x, y = make_data("mlp", "classification", n=16)
    net = make_mlp()
    kw = {"subnetwork": torch.arange(0, 40, 3)} if subset == "subnetwork" else {}
    la = Laplace(net, "classification", subset, "full", **kw).fit(batches(x, y, 8))
    _hammer(_calls(la, x[:5], False))


def test_sequence_outputs_predict_the_same_from_many_threads():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(11, 6), nn.Tanh(), nn.Linear(6, 11)).to(DT)
    x = torch.randint(0, 11, (6, 5))
    y = torch.randint(0, 11, (6, 5))
    la = Laplace(net, "classification", "all", "kfac", outputs="sequence")
    la.fit(batches(x, y, 3))
    _hammer(_calls(la, x[:3], False))


def test_a_fit_does_not_hold_the_lock_while_its_loader_waits():
    """A fit takes the transforms' lock per batch step: while its loader waits (for data, or
    for another lock of the user's), another thread predicts with an unrelated object."""
    x, y = make_data("mlp", "classification", n=16)
    fitted = Laplace(make_mlp(), "classification", "all", "kfac").fit(batches(x, y, 8))
    state = {"waiting": False}
    started, release = threading.Event(), threading.Event()

    class SlowLoader:
        def __iter__(self):
            yield x[:8], y[:8]
            state["waiting"] = True
            started.set()
            release.wait(timeout=20)
            state["waiting"] = False
            yield x[8:], y[8:]

    other = Laplace(make_mlp(seed=3), "classification", "all", "diag")
    fit = threading.Thread(target=lambda: other.fit(SlowLoader()))
    fit.start()
    assert started.wait(timeout=20)
    fitted(x[:4])  # would wait for the fit's whole pass if the fit held the lock throughout
    assert state["waiting"], "the prediction waited for the other object's fit"
    release.set()
    fit.join()
    assert other.curvature is not None


def test_warnings_point_at_the_callers_line():
    """The lock is taken inside the entry points (no wrapper frame): a warning's location is
    the user's call, as its stacklevel says."""
    x, y = make_data("mlp", "classification", n=16)
    la = Laplace(make_mlp(), "classification", "all", "diag").fit(batches(x, y, 8))
    with pytest.warns(RuntimeWarning, match="grid search picked") as record:
        la.optimize_prior_precision(method="gridsearch", val_loader=batches(x, y, 8),
                                    grid=torch.tensor([1e-6, 2e-6]))  # fmt: skip
    assert any(r.filename == __file__ for r in record), [(r.filename, r.lineno) for r in record]
