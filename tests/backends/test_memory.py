"""Memory, up front: refusals before anything is allocated, and predictives in chunks."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from conftest import batches, make_data, make_mlp
from torch import nn

from laplacetorch import Laplace
from laplacetorch.memory import MemoryBudgetError, fit_bytes
from laplacetorch.structures import Dense, Diagonal, Kron

DT = torch.float64


def test_full_on_two_million_weights_is_refused_at_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2000, 1000), nn.Tanh(), nn.Linear(1000, 10)).eval()
    x, y = torch.randn(8, 2000), torch.randint(0, 10, (8,))
    la = Laplace(model, "classification", "all", "full", memory_limit=2**30)
    t0 = time.perf_counter()
    with pytest.raises(
        MemoryBudgetError,
        match=r"full needs 48.5 TB for P = 2011010, over the "
        r"limit of 1.07 GB; diag needs 32.2 MB; hutchinson needs 32.2 MB; kfac needs 152 MB",
    ):
        la.fit([(x, y)])
    assert time.perf_counter() - t0 < 1.0
    assert la.curvature is None
    with pytest.raises(MemoryBudgetError, match="full needs 48.5 TB"):  # the default limit
        Laplace(model, "classification", "all", "full").fit([(x, y)])


def test_estimates_count_the_structures_tensors():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=20)
    e = 8
    for structure in ("full", "kfac", "block_full"):
        la = Laplace(model, "classification", "all", structure).fit(batches(x, y))
        held = 0
        blocks = getattr(la.structure, "blocks", [("", None, la.structure)])
        for _, _, b in blocks:
            if isinstance(b, Dense):
                held += 2 * b.n_params**2 * e  # G and its eigenvectors
            elif isinstance(b, Kron):
                held += (b.qb.numel() + b.qa.numel()) * 2 * e
            elif isinstance(b, Diagonal):
                held += b.n_params * e
        estimate = fit_bytes(structure, la.subset, {})
        assert held <= estimate <= 4 * held
    with pytest.raises(MemoryBudgetError, match="no structure fits"):
        Laplace(model, "classification", "all", "diag", memory_limit=10).fit(batches(x, y))


def test_a_gp_on_all_points_is_refused_before_its_kernel_is_built(monkeypatch):
    """300 points x 10 classes: a (3000)² float64 kernel, its eigenvectors and eigh's
    workspace (216 MB) against a 100 MB limit, refused once the first pass has counted C."""
    import laplacetorch.curvature.gp as gp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 10)).to(DT).eval()
    x, y = torch.randn(300, 4, dtype=DT), torch.randint(0, 10, (300,))

    def built(*args, **kwargs):
        raise AssertionError("the kernel was built before the memory check")

    monkeypatch.setattr(gp, "kernel_matrices", built)
    la = Laplace(model, "classification", "all", "gp", memory_limit=100 * 10**6)
    with pytest.raises(MemoryBudgetError, match=r"gp needs 216 MB for N = 300, C = 10"):
        la.fit(batches(x, y, 50))
    assert la.curvature is None
    # a subset that fits passes the same check
    small = Laplace(
        model,
        "classification",
        "all",
        "gp",
        memory_limit=100 * 10**6,
        backend_options={"n_subset": 30},
    )
    monkeypatch.undo()
    assert small.fit(batches(x, y, 50)).structure.rank <= 300


def test_every_backend_declares_its_memory_and_an_unknown_one_is_refused():
    from laplacetorch.curvature import BACKENDS, Backend
    from laplacetorch.curvature.full import fit_full

    la = Laplace(make_mlp(), "classification", "all", "kfac")
    for name in BACKENDS:
        assert fit_bytes(name, la.subset, {}) > 0
    with pytest.raises(ValueError, match="unknown curvature backend 'newthing'"):
        fit_bytes("newthing", la.subset, {})
    with pytest.raises(TypeError, match="memory estimate"):
        Backend("newthing", fit_full, None, ("exact",))


@pytest.mark.parametrize(
    ("subset", "structure"),
    [
        ("last_layer", "full"),
        ("last_layer", "kfac"),
        ("all", "diag"),
        ("all", "kfac"),
        ("all", "hutchinson"),
        ("all", "lanczos"),
    ],
)
def test_predictive_of_a_large_batch_comes_in_chunks_within_the_budget(
    subset, structure, monkeypatch
):
    """600k inputs: no product larger than the memory budget's chunk at any time."""
    import laplacetorch.predictive as pred

    model = make_mlp().float()
    x, y = make_data("mlp", "classification", n=20)
    budget = 2**20
    la = Laplace(model, "classification", subset, structure, memory_budget=budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lanczos: fewer pairs than the rank on this tiny net
        la.fit(batches(x.float(), y))
    sizes = []
    real = pred.LayerJacobian.__init__

    def spy(self, f, *args, **kwargs):
        sizes.append(f.shape[0])
        real(self, f, *args, **kwargs)

    monkeypatch.setattr(pred.LayerJacobian, "__init__", spy)
    big = torch.randn(600_000, 4, generator=torch.Generator().manual_seed(0))
    probs = la(big)
    assert probs.shape == (600_000, 3) and sum(sizes) == 600_000 and len(sizes) > 1
    # per example a chunk holds C·P (a head's J Q), or the layers' inputs (4 + 6 + 5) and
    # C output-gradient columns of their outputs (6 + 5 + 3)
    per_example = 4 * (3 * la.n_params if subset == "last_layer" else 15 + 3 * 14)
    assert max(sizes) * per_example <= 2 * budget
    torch.testing.assert_close(probs[:20], la(big[:20]))


def test_dense_layer_blocks_form_their_jacobian_in_chunks(monkeypatch):
    """block_full's dense blocks with out > C form J from the layer factors per chunk of
    examples, each at most the memory budget."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 2)
    )
    model = model.to(DT).eval()
    x = torch.randn(30, 4, dtype=DT)
    y = torch.randint(0, 2, (30,))
    budget = 2**16
    la = Laplace(model, "classification", "all", "block_full", memory_budget=budget)
    la.fit(batches(x, y))
    real, largest = torch.einsum, [0]

    def spy(eq, *ops):
        out = real(eq, *ops)
        if eq == "cbsi,bsj->bcij":
            largest[0] = max(largest[0], out.numel() * out.element_size())
        return out

    monkeypatch.setattr(torch, "einsum", spy)
    big = torch.randn(2000, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    _, var = la.glm_moments(big)
    monkeypatch.setattr(torch, "einsum", real)
    assert 0 < largest[0] <= budget
    _, ref = la.glm_moments(big[:7])
    torch.testing.assert_close(var[:7], ref)


@pytest.mark.parametrize("structure", ["kfac", "lanczos"])
def test_layer_chunks_stay_within_a_few_forward_passes_of_the_batch(structure, monkeypatch):
    """Under the default budget a batch of B rows comes in chunks of at most
    ⌈3B / (2(C + 1))⌉ rows (C + 1 activations a row, and the backward as much again), with
    the same variances as one chunk."""
    import laplacetorch.predictive as pred

    model = make_mlp().float()
    x, y = make_data("mlp", "classification", n=20)
    la = Laplace(model, "classification", "all", structure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la.fit(batches(x.float(), y))
    sizes, real = [], pred.LayerJacobian.__init__

    def spy(self, f, *args, **kwargs):
        sizes.append(f.shape[0])
        real(self, f, *args, **kwargs)

    monkeypatch.setattr(pred.LayerJacobian, "__init__", spy)
    big = torch.randn(400, 4, generator=torch.Generator().manual_seed(2))
    _, var = la.glm_moments(big)
    # this net's rows are 228 bytes: the 4 MiB floor takes the batch at once
    assert pred.batch_rows(400, 3, 228) == 400 and sizes == [400]
    sizes.clear()
    monkeypatch.setattr(pred, "MIN_CHUNK_BYTES", 0)  # rows as large as a real net's
    _, var = la.glm_moments(big)
    assert pred.batch_rows(400, 3) == 150 and sizes == [150, 150, 100]
    monkeypatch.setattr(pred, "batch_rows", lambda n, c, r=0: n)  # one chunk
    _, whole = la.glm_moments(big)
    torch.testing.assert_close(var, whole)
