"""Which axis of a layer's input is the example is learnt from the model (issue 30).

Forwards that fold the batch ([B, 2, D] → [2B, D], both orders), split an example's features
into positions ([B, D] → [B·S, D/S]) or put positions first ([T, B, D]) against the dense
GGN of ``full`` and against a twin model that keeps the positions as an axis of its own.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from laplacetorch import Laplace
from laplacetorch.structures import Dense, Kron

DT = torch.float64


class Reshaping(nn.Module):
    """One network, its batch laid out by ``mode`` ("twin": positions as an axis of their own).

    pairs: [B, 2, D] → (fold) → MLP → [B, 2]; "fold" folds example-major ([2B, D], rows
    [b, j]), "fold_t" position-major (rows [j, b]). split: [B, 4] → [B·2, 2] → Linear(2, 3)
    → [B, 6] → Linear(6, 3). seq: [B, T, D] → [T, B, D] ("seq_first") → Linear → mean over T.
    """

    def __init__(self, kind: str, mode: str, act: bool = True, seed: int = 0):
        super().__init__()
        self.kind, self.mode = kind, mode
        g = torch.Generator().manual_seed(seed)
        a = nn.Tanh() if act else nn.Identity()
        if kind == "pairs":
            self.net = nn.Sequential(nn.Linear(3, 4), a, nn.Linear(4, 3), a, nn.Linear(3, 1))
        elif kind == "split":
            self.net = nn.Sequential(nn.Linear(2, 3), a, nn.Linear(6, 3))
        else:
            self.net = nn.Sequential(nn.Linear(3, 4), a, nn.Linear(4, 3))
        self.to(DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.8)
        self.eval()

    def forward(self, x):
        b, net = x.shape[0], self.net
        if self.kind == "pairs":
            if self.mode == "twin":
                return net(x).squeeze(-1)
            if self.mode == "fold":
                return net(x.reshape(-1, x.shape[-1])).view(b, 2)
            return net(x.transpose(0, 1).reshape(-1, x.shape[-1])).view(2, b).T
        if self.kind == "split":
            h = net[1](net[0](x.view(b, 2, 2) if self.mode == "twin" else x.view(2 * b, 2)))
            return net[2](h.reshape(b, 6))
        h = net[1](net[0](x if self.mode == "twin" else x.transpose(0, 1)))
        return net[2](h.mean(1 if self.mode == "twin" else 0))


def _data(kind: str, likelihood: str, n: int = 7):
    g = torch.Generator().manual_seed(1)
    x = torch.randn({"pairs": (n, 2, 3), "split": (n, 4), "seq": (n, 5, 3)}[kind], generator=g)
    c = 2 if kind == "pairs" else 3
    if likelihood == "regression":
        return x.to(DT), torch.randn(n, c, generator=g, dtype=DT)
    return x.to(DT), torch.randint(0, c, (n,), generator=g)


def _batches(x, y, size: int = 3):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _fit(model, likelihood, structure, x, y, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, nothing announced
        la = Laplace(model, likelihood, "all", structure, backend_options=options or None)
        return la.fit(_batches(x, y))


def _within_blocks(g: torch.Tensor, structure) -> torch.Tensor:
    out = torch.zeros_like(g)
    for _, index, _ in structure.blocks:
        out[index[:, None], index[None]] = g[index[:, None], index[None]]
    return out


CASES = [
    ("pairs", "fold", "classification"),
    ("pairs", "fold", "reward_modeling"),
    ("pairs", "fold_t", "classification"),
    ("split", "split", "classification"),
    ("split", "split", "regression"),
    ("seq", "seq_first", "classification"),
]


@pytest.mark.parametrize(("kind", "mode", "likelihood"), CASES)
def test_exact_diagonal_and_blocks_are_the_full_ggn(kind, mode, likelihood):
    model = Reshaping(kind, mode)
    x, y = _data(kind, likelihood)
    g = _fit(model, likelihood, "full", x, y).structure.curvature_dense()
    diag = _fit(model, likelihood, "diag", x, y).structure
    torch.testing.assert_close(diag.curvature_dense().diagonal(), g.diagonal())
    blocks = _fit(model, likelihood, "block_full", x, y).structure
    assert all(isinstance(b, Dense) for _, _, b in blocks.blocks)
    torch.testing.assert_close(blocks.curvature_dense(), _within_blocks(g, blocks))


@pytest.mark.parametrize("mode", ["fold", "fold_t"])
def test_kfac_is_exact_on_a_folded_deep_linear_network(mode):
    """Each folded item reaches only its own output, and a deep linear network's output
    gradients do not depend on the input: B ⊗ A (expand) is the exact layer block."""
    model = Reshaping("pairs", mode, act=False)
    x, y = _data("pairs", "regression")
    g = _fit(model, "regression", "full", x, y).structure.curvature_dense()
    kfac = _fit(model, "regression", "kfac", x, y).structure
    assert all(isinstance(b, Kron) for _, _, b in kfac.blocks)
    torch.testing.assert_close(kfac.curvature_dense(), _within_blocks(g, kfac))


@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
@pytest.mark.parametrize("approximation", ["expand", "reduce"])
@pytest.mark.parametrize(
    ("kind", "mode"),
    [("pairs", "fold"), ("pairs", "fold_t"), ("split", "split"), ("seq", "seq_first")],
)
def test_kfac_sees_the_positions_of_the_twin_model(kind, mode, approximation, structure):
    """The folded rows are the example's positions, as the twin's positions axis is."""
    x, y = _data(kind, "classification")
    twin = _fit(
        Reshaping(kind, "twin"), "classification", structure, x, y, approximation=approximation
    )
    model = Reshaping(kind, mode)
    la = _fit(model, "classification", structure, x, y, approximation=approximation)
    torch.testing.assert_close(la.structure.curvature_dense(), twin.structure.curvature_dense())
    torch.testing.assert_close(la.log_marginal_likelihood(), twin.log_marginal_likelihood())


def _dense_variance(la, x, delta):
    jac = torch.func.jacrev(lambda t: la.subset.forward(t, x))(la.mean)  # [B, C, P]
    prec = la.structure.precision_dense(delta, 1.0)
    return jac @ torch.linalg.inv(prec) @ jac.transpose(1, 2)


@pytest.mark.parametrize("structure", ["diag", "kfac", "block_full"])
@pytest.mark.parametrize(
    ("kind", "mode"), [("pairs", "fold_t"), ("split", "split"), ("seq", "seq_first")]
)
def test_the_layer_factor_predictive_is_dense_algebra(kind, mode, structure):
    x, y = _data(kind, "classification")
    la = _fit(Reshaping(kind, mode), "classification", structure, x, y)
    delta = torch.tensor(0.7, dtype=DT)
    for xs in (x[:5], x[:1]):  # one example: nothing to learn, all rows are its own
        _, var = la.glm_moments(xs, prior_precision=delta)
        torch.testing.assert_close(var, _dense_variance(la, xs, delta))


class TableNet(nn.Module):
    """A Linear on a learned table, the same rows for every example: no example axis."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(4, 3, dtype=DT))
        self.proj = nn.Linear(3, 3).to(DT)
        self.head = nn.Linear(3, 3).to(DT)
        self.eval()

    def forward(self, x):
        return self.head(torch.tanh(x + self.proj(self.table).sum(0)))


def test_a_layer_without_an_example_axis_takes_the_exact_path():
    model = TableNet()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, generator=g, dtype=DT), torch.randint(0, 3, (8,), generator=g)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    full = Laplace(model, "classification", "all", "full").fit(batches)
    with pytest.warns(UserWarning, match=r"\['proj'\].*exact per-example path"):
        diag = Laplace(model, "classification", "all", "diag").fit(batches)
    torch.testing.assert_close(
        diag.structure.curvature_dense().diagonal(), full.structure.curvature_dense().diagonal()
    )
    delta = torch.tensor(0.7, dtype=DT)
    _, var = diag.glm_moments(x, prior_precision=delta)  # proj's columns dense
    torch.testing.assert_close(var, _dense_variance(diag, x, delta))


def test_a_first_batch_of_one_example_learns_the_axis_from_the_next():
    model = Reshaping("pairs", "fold_t")
    x, y = _data("pairs", "classification")
    batches = [(x[:1], y[:1]), (x[1:4], y[1:4]), (x[4:], y[4:])]
    g = Laplace(model, "classification", "all", "full").fit(batches).structure
    blocks = Laplace(model, "classification", "all", "block_full").fit(batches).structure
    torch.testing.assert_close(
        blocks.curvature_dense(), _within_blocks(g.curvature_dense(), blocks)
    )


def test_the_predictive_probes_layers_once_per_input_signature():
    """The layers' call counts and example axes are probed by three small forwards the first
    time inputs of a signature come (shape past the batch, dtype), then reused: a second
    call runs one forward per chunk only."""
    x, y = _data("seq", "classification")
    model = Reshaping("seq", "seq_first")
    la = _fit(model, "classification", "kfac", x, y)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    delta = torch.tensor(0.7, dtype=DT)
    la.glm_moments(x[:6], prior_precision=delta)
    first = len(calls)
    calls.clear()
    _, var = la.glm_moments(x[:6], prior_precision=delta)
    assert first - len(calls) == 3 and all(n > 1 for n in calls)  # chunks, no probes
    torch.testing.assert_close(var, _dense_variance(la, x[:6], delta))
