"""Memory, caught up front, everywhere (issue 31): a fit whose batch's output columns would
not fit, and every predictive path whose covariances or Jacobian chunks would not, is
refused before anything large is allocated, with the bytes and what fits instead."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from conftest import batches, make_data, make_mlp
from torch import nn

import laplacetorch.prediction as prediction
from laplacetorch import Laplace
from laplacetorch.curvature import BACKENDS
from laplacetorch.memory import MemoryBudgetError

V, T = 256, 16  # the sequence toy: 16 positions of 256 classes, C = 4096 per example


class TinyLM(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, T, V]`` (a frozen embedding, a Bayesian head);
    counts the examples of each forward."""

    def __init__(self, vocab: int = V, width: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.embed.weight.requires_grad_(False)  # the head is Bayesian, as with adapters
        self.seen: list[int] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.shape[0])
        return self.head(torch.tanh(self.embed(ids)))


class OneBatch:
    """A loader of one batch that fails the test when asked for a second (a refusal must
    come at the first batch, before its columns are formed)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch = (x, y)

    def __iter__(self):
        yield self.batch
        raise AssertionError("the loader was asked for a second batch")


def _tokens(n: int = 16, t: int = T, vocab: int = V, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, n, t), generator=g)
    return ids[0], ids[1]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the embedding's diagonal block is announced
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def mc_lm():
    """The toy fitted with the MC Fisher under a 100 MB limit."""
    model, (x, y) = TinyLM(), _tokens()
    la = Laplace(
        model, "classification", "all", "kfac", fisher_type="mc", outputs="sequence",
        memory_limit=10**8,
    )  # fmt: skip
    return _quiet(la.fit, batches(x, y, 16)), model, x


def test_exact_kfac_on_a_sequence_head_is_refused_on_the_first_batch_and_mc_fits(mc_lm):
    """K = C = 16·256 columns per example: 3.3 GB a batch of 16 against 100 MB, refused
    after the first batch's ≤ 8-example checks and before any column; the MC Fisher it
    suggests fits and runs under the same limit."""
    model, (x, y) = TinyLM(), _tokens()
    la = Laplace(model, "classification", "all", "kfac", outputs="sequence", memory_limit=10**8)
    with pytest.raises(MemoryBudgetError) as err:
        _quiet(la.fit, OneBatch(x, y))
    msg = str(err.value)
    assert re.search(r"kfac needs 3\.\d+ GB for C = 4096 \(16 positions × 256\), B = 16", msg)
    assert "fisher_type='exact': 3." in msg and "K = 4096 output columns" in msg
    assert "over the limit of 100 MB" in msg
    assert re.search(r"fisher_type='mc', mc_samples=1 needs \d+(\.\d+)? MB", msg)
    assert "positions per example (a batch of 1)" in msg
    assert max(model.seen) <= 8 and la.curvature is None  # only the first-batch checks ran
    assert mc_lm[0].n_data == 16  # the MC Fisher it suggests fits under the same limit


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_refuses_a_batch_of_output_columns_before_forming_them(backend):
    """Every backend's pass checks its first batch's K·B·C (or its structure up front)."""
    model, (x, y) = TinyLM(), _tokens()
    fisher = "exact" if "exact" in BACKENDS[backend].fisher_types else "ggn"
    la = Laplace(
        model, "classification", "all", backend, fisher_type=fisher, outputs="sequence",
        memory_limit=10**8,
    )  # fmt: skip
    with pytest.raises(MemoryBudgetError, match=rf"^{backend} needs .* over the limit of 100 MB"):
        _quiet(la.fit, OneBatch(x, y))
    assert max(model.seen, default=0) <= 8 and la.curvature is None


def test_mc_kfac_counts_the_exact_columns_of_its_diagonal_rest():
    """KFAC's rest (here a Bayesian embedding) takes the C exact columns even under the MC
    Fisher: counted, so the MC fit is refused rather than run out of memory."""
    model, (x, y) = TinyLM(), _tokens()
    model.embed.weight.requires_grad_(True)
    la = Laplace(
        model, "classification", "all", "kfac", fisher_type="mc", outputs="sequence",
        memory_limit=10**8,
    )  # fmt: skip
    with pytest.raises(MemoryBudgetError, match=r"fisher_type='mc': 3\.\d+ GB .* K = 4096"):
        _quiet(la.fit, OneBatch(x, y))
    assert max(model.seen) <= 8


def test_a_refused_fit_changes_nothing():
    model, (x, y) = TinyLM(vocab=64), _tokens(8, 2, 64)
    la = _quiet(Laplace(model, "classification", "all", "kfac", outputs="sequence").fit,
                batches(x, y, 8))  # fmt: skip
    state, structure = la.fitted_state, la.structure
    la.memory_limit = 250_000  # the structure fits, a batch does not
    with pytest.raises(MemoryBudgetError, match="kfac needs .* B = 8"):
        _quiet(la.fit, batches(x, y, 8))
    assert la.fitted_state is state and la.structure is structure


def _fitted_mlp(likelihood: str = "classification") -> tuple[Laplace, torch.Tensor]:
    x, y = make_data("mlp", likelihood, n=20)
    la = Laplace(make_mlp(), likelihood, "all", "kfac").fit(batches(x, y))
    return la, torch.randn(64, 4, dtype=x.dtype, generator=torch.Generator().manual_seed(3))


#: every predictive path: (name, likelihood, call, the limit in KB: the weight draws of
#: nn and the dense rows of joint need more than the glm covariances)
PATHS = [
    ("probit", "classification", lambda la, x: la(x), 6),
    ("bridge", "classification", lambda la, x: la(x, link_approx="bridge"), 6),
    ("mc", "classification", lambda la, x: la(x, link_approx="mc", n_samples=50), 6),
    ("nn", "classification", lambda la, x: la(x, pred_type="nn", n_samples=50), 100),
    ("diagonal_output", "regression", lambda la, x: la(x, diagonal_output=True), 6),
    ("joint", "regression", lambda la, x: la(x, joint=True), 100),
    ("glm_moments", "regression", lambda la, x: la.glm_moments(x), 6),
    ("functional_samples", "regression", lambda la, x: la.functional_samples(x), 6),
    ("predictive_samples", "classification", lambda la, x: la.predictive_samples(x), 6),
    ("nn samples", "classification",
     lambda la, x: la.predictive_samples(x, pred_type="nn", n_samples=50), 100),
]  # fmt: skip


def _untouched(monkeypatch):
    def touched(*args, **kwargs):
        raise AssertionError("a Jacobian or a weight draw was formed before the memory check")

    for name in ("jacobian_sources", "dense_jacobians", "function_samples"):
        monkeypatch.setattr(prediction, name, touched)


@pytest.mark.parametrize(("name", "likelihood", "call", "kb"), PATHS, ids=[p[0] for p in PATHS])
def test_every_predictive_path_is_refused_before_any_jacobian(
    name, likelihood, call, kb, monkeypatch
):
    """64 inputs under a limit of a few KB: refused with the bytes and a smaller batch that
    fits; that batch then runs under the same limit."""
    la, x = _fitted_mlp(likelihood)
    la.memory_limit = kb * 1000
    with monkeypatch.context() as m:
        _untouched(m)
        with pytest.raises(MemoryBudgetError) as err:
            call(la, x)
    msg = str(err.value)
    assert re.search(r"needs [\d.]+ KB for B = 64, C = \d, P = 83 \(", msg), msg
    assert f"over the limit of {kb} KB" in msg
    b = int(re.search(r"a batch of (\d+) examples needs", msg).group(1))
    assert 1 <= b < 64
    call(la, x[:b])  # what it suggests fits


def test_the_sequence_predictive_is_refused_and_the_nn_predictive_it_suggests_runs(mc_lm):
    """[T·V, T·V] = 67 MB a covariance; the 100 MB limit refuses the glm predictive after
    one example's forward, and the nn predictive with the samples it names runs."""
    la, model, x = mc_lm
    model.seen.clear()
    with pytest.raises(MemoryBudgetError) as err:
        la(x[:4])
    msg = str(err.value)
    assert "glm predictive (link_approx='probit') needs" in msg
    assert "C = 4096 (16 positions × 256)" in msg and "67.1 MB per example" in msg
    assert model.seen == [1]  # one example's forward told C; nothing else ran
    s = int(re.search(r"pred_type='nn' with n_samples=(\d+)", msg).group(1))
    probs = la(x[:4], pred_type="nn", n_samples=s)
    assert probs.shape == (4, T, V)
    with pytest.raises(MemoryBudgetError, match=r"glm moments needs .* positions per example"):
        la.glm_moments(x)


def test_the_memory_budget_bounds_the_chunks_of_a_sequence_predictive(monkeypatch):
    """C = 4·64: an example holds 786 KB (its unit columns and covariance 524 KB); a 1.7 MB budget
    the chunks hold two examples, with the variances of one chunk."""
    import laplacetorch.predictive as pred

    model, (x, y) = TinyLM(vocab=64), _tokens(12, 4, 64)
    la = Laplace(
        model, "classification", "all", "kfac", outputs="sequence", memory_budget=1_700_000
    )
    _quiet(la.fit, batches(x, y, 6))
    sizes, real = [], pred.LayerJacobian.__init__

    def spy(self, f, *args, **kwargs):
        sizes.append(f.shape[0])
        real(self, f, *args, **kwargs)

    monkeypatch.setattr(pred.LayerJacobian, "__init__", spy)
    _, var = la.glm_moments(x)
    assert max(sizes) == 2 and sum(sizes) == 12
    la.memory_budget = 2**30
    _, whole = la.glm_moments(x)
    torch.testing.assert_close(var, whole)
