"""One contract over a case registry: every block kind and composition against dense float64.

Each case is a structure together with the dense curvature G it represents. For every case,
prior shape (scalar, per layer, per parameter) and likelihood scale, log det, solves, traces,
the inverse diagonal, the sample covariance and J Π⁻¹ Jᵀ from each Jacobian source must equal
the dense algebra of Π = s·G + diag(δ); where a structure says it is not exact for a prior
(a Kronecker block under a prior varying within it) the oracle is the matrix it documents,
Q diag(s·E + d) Qᵀ with d the prior's diagonal in the eigenbasis.
"""

from __future__ import annotations

import pytest
import torch

from laplacetorch.predictive import LayerJacobian
from laplacetorch.structures import (
    BlockDiagonal,
    Dense,
    DenseJacobian,
    Diagonal,
    EKron,
    Kernel,
    Kron,
    LayerBlock,
    LowRank,
    structure_from_state_dict,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _psd(n: int, seed: int, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(n, rank or n + 1, generator=_gen(seed), dtype=DT)
    return a @ a.T / n


def _orth(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=DT))[0]


# ----------------------------------------------------------------- the registry
# Layer "l1": out 2, in 2, joint bias (S = 1); "l2": out 2, in 1, no bias (S = 1);
# "l3": out 2, in 2, separate bias, S = 3 positions (a conv or a sequence layer).
L1 = LayerBlock("l1", (0, 2), (0, 2), True)
L2 = LayerBlock("l2", (0, 2), (0, 1), False)
L3W = LayerBlock("l3", (0, 2), (0, 2), False)
L3B = LayerBlock("l3", (0, 2), None, True)


def _kron(layout=None, seed=0):
    return Kron(_psd(2, seed), _psd(3, seed + 1), layout=layout)


def _ekron(seed=3):
    e = torch.rand(2, 2, generator=_gen(seed), dtype=DT) * 2
    return EKron(e, _orth(2, seed), _orth(2, seed + 1))


def _ekron_layer(seed=13):
    e = torch.rand(2, 3, generator=_gen(seed), dtype=DT) * 2
    return EKron(e, _orth(2, seed), _orth(3, seed + 1), layout=L1)


def _lowrank(seed=5, correction=False):
    u = torch.linalg.qr(torch.randn(5, 2, generator=_gen(seed), dtype=DT))[0]
    lam = torch.tensor([3.0, 0.7], dtype=DT)
    d = torch.rand(5, generator=_gen(seed + 1), dtype=DT) if correction else None
    return LowRank(u, lam, d)


def _kernel(seed=15):
    """Six rows of W (M·K = 6 < P = 7) in chunks of two, held as their kernel."""
    w = torch.randn(6, 7, generator=_gen(seed), dtype=DT)
    lam, v = torch.linalg.eigh(w @ w.T)

    def rows():
        yield from w.split(2)

    return Kernel(rows, lam, v, 7, DT, torch.device("cpu"))


def _composite():
    """All block kinds on scattered positions of θ (P = 25), layer layouts on some."""
    perm = torch.randperm(25, generator=_gen(11))
    sizes = [6, 2, 4, 2, 4, 5, 2]
    idx = list(torch.split(perm, sizes))
    blocks = [
        ("l1", idx[0], _kron(L1)),
        ("l2", idx[1], Dense(_psd(2, 7), layout=L2)),
        ("l3.weight", idx[2], Diagonal(torch.rand(4, generator=_gen(8), dtype=DT), layout=L3W)),
        ("l3.bias", idx[3], Dense(_psd(2, 9), layout=L3B)),
        ("ek", idx[4], _ekron()),
        ("lr", idx[5], _lowrank(correction=True)),
        ("norm.weight", idx[6], Diagonal(torch.rand(2, generator=_gen(10), dtype=DT))),
    ]
    groups = torch.empty(25, dtype=torch.long)
    for g, (_, i, _) in enumerate(blocks):
        groups[i] = min(g, 4)  # the last three blocks share group 4: a block spanning groups
    groups[idx[5][:2]] = 2  # the low-rank block spans groups 2 and 4
    groups[idx[0][[2, 5]]] = 5  # l1's bias column is its own tensor: [W | b] spans 0 and 5
    return BlockDiagonal(blocks, 25, groups)


CASES = {
    "dense": lambda: Dense(_psd(7, 0, rank=4)),
    "diagonal": lambda: Diagonal(torch.rand(7, generator=_gen(1), dtype=DT)),
    "kron": lambda: _kron(),
    "ekron": lambda: _ekron(),
    "lowrank": lambda: _lowrank(),
    "lowrank+diag": lambda: _lowrank(correction=True),
    "dense layer": lambda: Dense(_psd(6, 2), layout=L1),
    "kron w|b": lambda: _kron(L1, seed=14),
    "ekron w|b": _ekron_layer,
    "kernel": _kernel,
    "blockdiagonal": _composite,
}
WB = torch.tensor([0, 0, 1, 0, 0, 1])  # a joint [W | b] block: W one tensor, b another
GROUPS = {
    "dense": torch.tensor([0, 0, 0, 1, 1, 2, 2]),
    "diagonal": torch.tensor([0, 1] * 3 + [2]),
    "kron w|b": WB,
    "ekron w|b": WB,
    "kernel": torch.tensor([0, 0, 0, 1, 1, 2, 2]),
}


def _make(name):
    st = CASES[name]()
    if name in GROUPS:  # one group per layer for the standalone blocks that have several
        st.group_index = GROUPS[name]
    return st


def _prior(st, kind):
    if kind == "scalar":
        return torch.tensor(0.7, dtype=DT)
    if kind == "layer":
        return torch.linspace(0.4, 2.0, st.n_groups, dtype=DT)
    return torch.linspace(0.3, 3.0, st.n_params, dtype=DT)


def _kron_oracle(block, d, s):
    """Q diag(s·E + d̃) Qᵀ with d̃ the documented eigenbasis diagonal of a varying prior."""
    q = torch.kron(block.qb, block.qa)
    if d.dim() and not bool((d == d[0]).all()):
        dd = (block.qb.square().T @ d.view(block.block_shape) @ block.qa.square()).reshape(-1)
    else:
        dd = d.reshape(-1)[0].expand(block.n_params)
    return (q * (s * block.eig.reshape(-1) + dd)) @ q.T


def _is_group_prior(st, delta):
    return delta.dim() > 0 and delta.numel() == st.n_groups and st.n_groups != st.n_params


def _column_prior(st, index, blk, delta):
    """A per-tensor δ on a joint [W | b] Kronecker block: exact (the rank-one column form)."""
    if not (_is_group_prior(st, delta) and blk.layout is not None and blk.layout.bias):
        return False
    g = st.group_index[index].view(blk.block_shape)
    return bool((g[:, :-1] == g[0, 0]).all() and (g[:, -1] == g[0, -1]).all())


def _oracle(st, delta, s):
    """The dense precision the structure represents for this prior."""
    d_full = delta.expand(st.n_params) if delta.dim() == 0 else delta
    if _is_group_prior(st, delta):
        d_full = delta[st.group_index]
    blocks = st.blocks if isinstance(st, BlockDiagonal) else [("", torch.arange(st.n_params), st)]
    prec = torch.zeros(st.n_params, st.n_params, dtype=DT)
    for _, index, blk in blocks:
        d = d_full[index]
        if isinstance(blk, Kron) and not _column_prior(st, index, blk, delta):
            sub = _kron_oracle(blk, d, s)
        else:
            sub = s * blk.curvature_dense() + torch.diag(d)
        prec[index.unsqueeze(1), index] = sub
    return prec


def _expected_exact(st, delta):
    d_full = delta.expand(st.n_params) if delta.dim() == 0 else delta
    if _is_group_prior(st, delta):
        d_full = delta[st.group_index]
    blocks = st.blocks if isinstance(st, BlockDiagonal) else [("", torch.arange(st.n_params), st)]
    return all(
        not isinstance(b, Kron)
        or bool((d_full[i] == d_full[i][0]).all())
        or _column_prior(st, i, b, delta)
        for _, i, b in blocks
    )


PRIOR_KINDS = ["scalar", "layer", "param"]


@pytest.mark.parametrize("scale", [1.0, 0.3])
@pytest.mark.parametrize("prior", PRIOR_KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_algebra_matches_dense(case, prior, scale):
    st = _make(case)
    delta = _prior(st, prior)
    prec = _oracle(st, delta, scale)
    cov = torch.linalg.inv(prec)
    assert st.is_exact(delta) == _expected_exact(st, delta)
    if st.is_exact(delta):
        torch.testing.assert_close(prec, st.precision_dense(delta, scale))
    torch.testing.assert_close(st.logdet(delta, scale), torch.logdet(prec))
    torch.testing.assert_close(st.trace_inverse(delta, scale), cov.trace())
    torch.testing.assert_close(st.inverse_diagonal(delta, scale), cov.diagonal())
    v = torch.randn(2, 3, st.n_params, generator=_gen(20), dtype=DT)
    torch.testing.assert_close(st.solve(v, delta, scale), v @ cov)
    jac = torch.randn(4, 3, st.n_params, generator=_gen(21), dtype=DT)
    expected = jac @ cov @ jac.transpose(1, 2)
    torch.testing.assert_close(st.functional_variance(jac, delta, scale), expected)
    torch.testing.assert_close(st.functional_variance(DenseJacobian(jac), delta, scale), expected)
    torch.testing.assert_close(st.matvec(v, delta, scale), v @ prec)
    if st.is_exact(delta):  # G itself (the inexact Kronecker oracle is not s·G + δ)
        g = (prec - torch.diag(_oracle(st, delta, 0.0).diagonal())) / scale
        torch.testing.assert_close(st.curvature_matvec(v), v @ g)
    lt = st.covariance_sqrt(torch.eye(st.n_params, dtype=DT), delta, scale)  # rows: L eᵢ
    torch.testing.assert_close(lt.T @ lt, cov)


@pytest.mark.parametrize("prior", PRIOR_KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_sample_covariance(case, prior):
    st = _make(case)
    delta = _prior(st, prior)
    cov = torch.linalg.inv(_oracle(st, delta, 2.0))
    n = 100_000
    s = st.sample(n, delta, 2.0, generator=_gen(5))
    assert s.shape == (n, st.n_params)
    emp = s.T @ s / n
    # Monte-Carlo error of a covariance entry ~ sqrt((Σii Σjj + Σij²)/n)
    tol = 5 * torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n)
    assert ((emp - cov).abs() <= tol).all()


@pytest.mark.parametrize("prior", PRIOR_KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_logdet_gradient_matches_finite_differences(case, prior):
    st = _make(case)
    delta = _prior(st, prior).clone().requires_grad_(True)
    scale = torch.tensor(1.7, dtype=DT, requires_grad=True)
    gd, gs = torch.autograd.grad(st.logdet(delta, scale), (delta, scale))
    eps = 1e-6
    flat = delta.detach().reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        up = st.logdet((flat + e).reshape(delta.shape), scale.detach())
        dn = st.logdet((flat - e).reshape(delta.shape), scale.detach())
        torch.testing.assert_close(gd.reshape(-1)[i], (up - dn) / (2 * eps), rtol=1e-6, atol=1e-8)
    up = st.logdet(delta.detach(), scale.detach() + eps)
    dn = st.logdet(delta.detach(), scale.detach() - eps)
    torch.testing.assert_close(gs, (up - dn) / (2 * eps), rtol=1e-6, atol=1e-8)


def _layer_source(st, n_pos=3, seed=30):
    """A LayerJacobian for the composite's layers plus the dense J it stands for."""
    g_ = _gen(seed)
    b, c = 4, 3
    raw = {
        "l1": (
            torch.randn(b, 1, 2, generator=g_, dtype=DT),
            torch.randn(c, b, 1, 2, generator=g_, dtype=DT),
        ),
        "l2": (
            torch.randn(b, 1, 1, generator=g_, dtype=DT),
            torch.randn(c, b, 1, 2, generator=g_, dtype=DT),
        ),
        "l3": (
            torch.randn(b, n_pos, 2, generator=g_, dtype=DT),
            torch.randn(c, b, n_pos, 2, generator=g_, dtype=DT),
        ),
    }
    jac = torch.randn(b, c, st.n_params, generator=g_, dtype=DT)  # columns of the other blocks
    lookup = torch.full((st.n_params,), -1, dtype=torch.long)
    rest = []
    for _, index, blk in st.blocks:
        if blk.layout is None:
            rest.append(index)
            continue
        a, g = raw[blk.layout.layer]
        if blk.layout.cols is None:  # a separate bias: J[b, c, i] = Σₛ g
            block_jac = g.sum(2).permute(1, 0, 2)
        else:
            if blk.layout.bias:
                a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=DT)], -1)
            block_jac = torch.einsum("cbsi,bsj->bcij", g, a).reshape(b, c, -1)
        jac[..., index] = block_jac
    rest = torch.cat(rest)
    lookup[rest] = torch.arange(rest.numel())
    source = LayerJacobian(jac.new_zeros(b, c), raw, (lookup, jac[..., rest].clone()), 1 << 20)
    return source, jac


@pytest.mark.parametrize("prior", PRIOR_KINDS)
@pytest.mark.parametrize("n_pos", [1, 3])
def test_functional_variance_from_layer_factors(prior, n_pos):
    st = _composite()
    delta = _prior(st, prior)
    source, jac = _layer_source(st, n_pos)
    assert sorted({lay.layer for lay in st.layouts()}) == ["l1", "l2", "l3"]
    cov = torch.linalg.inv(_oracle(st, delta, 0.8))
    torch.testing.assert_close(
        st.functional_variance(source, delta, 0.8), jac @ cov @ jac.transpose(1, 2)
    )


@pytest.mark.parametrize("prior", PRIOR_KINDS)
def test_linear_head_source(prior):
    """A head of C = 2 outputs on D̃ = 3 features: a = φ̃, g = I_C; every block kind."""
    layout = LayerBlock("head", (0, 2), (0, 2), True)
    phi = torch.randn(5, 2, generator=_gen(40), dtype=DT)
    eye = torch.eye(2, dtype=DT).unsqueeze(1).expand(2, 5, 2).unsqueeze(2)
    source = LayerJacobian(phi.new_zeros(5, 2), {"head": (phi.unsqueeze(1), eye)})
    phi_aug = torch.cat([phi, torch.ones(5, 1, dtype=DT)], 1)
    jac = torch.zeros(5, 2, 6, dtype=DT)
    for c in range(2):
        jac[:, c, 3 * c : 3 * c + 3] = phi_aug
    for blk in (
        Dense(_psd(6, 41), layout=layout),
        Diagonal(torch.rand(6, generator=_gen(42), dtype=DT), layout=layout),
        _kron(layout, seed=43),
    ):
        st = BlockDiagonal([("head", torch.arange(6), blk)], 6)
        delta = _prior(st, prior)
        cov = torch.linalg.inv(_oracle(st, delta, 1.3))
        torch.testing.assert_close(
            st.functional_variance(source, delta, 1.3), jac @ cov @ jac.transpose(1, 2)
        )


@pytest.mark.parametrize("case", [c for c in CASES if c != "kernel"])
def test_state_dict_round_trip(case):
    st = _make(case)
    again = structure_from_state_dict(st.state_dict())
    assert type(again) is type(st)
    assert again.layouts() == st.layouts()
    for prior in PRIOR_KINDS:
        delta = _prior(st, prior)
        torch.testing.assert_close(again.logdet(delta, 2.0), st.logdet(delta, 2.0))
    other = _make("diagonal" if case != "diagonal" else "dense")
    with pytest.raises(ValueError, match="state is of structure|another block layout"):
        other.load_state_dict(st.state_dict())


def test_failed_load_changes_nothing():
    st = _make("blockdiagonal")
    before = st.logdet(0.5)
    state = st.state_dict()
    state["blocks"] = state["blocks"][:-1]
    with pytest.raises(ValueError, match="cover each"):
        st.load_state_dict(state)
    torch.testing.assert_close(st.logdet(0.5), before)
    small = Diagonal(torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="parameters"):
        small.load_state_dict(_make("diagonal").state_dict())
    bad = _make("diagonal").state_dict()
    bad["diagonal"] = bad["diagonal"][:3]
    target = _make("diagonal")
    with pytest.raises(ValueError, match="diagonal"):
        target.load_state_dict(bad)
    assert target.g.shape == (7,)


def test_block_diagonal_refuses_bad_cover():
    with pytest.raises(ValueError, match="exactly once"):
        BlockDiagonal([("a", torch.tensor([0, 1]), Diagonal(torch.ones(2, dtype=DT)))], 3)
    with pytest.raises(ValueError, match="positions"):
        BlockDiagonal([("a", torch.tensor([0, 1, 2]), Diagonal(torch.ones(2, dtype=DT)))], 3)
    with pytest.raises(ValueError, match="covers 6 parameters"):
        Diagonal(torch.ones(4, dtype=DT), layout=L1)


@pytest.mark.parametrize(
    ("prior", "match"),
    [
        (0.0, "positive and finite"),
        (-1.0, "positive and finite"),
        (float("nan"), "positive and finite"),
        (torch.ones(4, dtype=DT), r"1, 3 \(one per layer\) or 7"),
        (torch.ones(2, 3, dtype=DT), "entries"),
    ],
)
def test_bad_prior_is_refused(prior, match):
    with pytest.raises(ValueError, match=match):
        _make("dense").logdet(prior)


@pytest.mark.parametrize("case", ["dense", "blockdiagonal"])
def test_bad_arguments_are_refused(case):
    st = _make(case)
    p = st.n_params
    with pytest.raises(TypeError, match="prior_precision must be a float or a tensor"):
        st.logdet("big")
    with pytest.raises(ValueError, match="likelihood scale"):
        st.logdet(1.0, scale=0.0)
    with pytest.raises(ValueError, match=rf"v must have shape \[..., {p}\]"):
        st.solve(torch.ones(p + 1, dtype=DT), 1.0)
    with pytest.raises(ValueError, match=rf"J must have shape \[B, C, {p}\]"):
        st.functional_variance(torch.ones(2, p, dtype=DT), 1.0)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        st.sample(0, 1.0)


def test_sampling_is_reproducible_and_leaves_global_rng_alone():
    st = _make("blockdiagonal")
    state = torch.random.get_rng_state()
    a = st.sample(3, 1.0, generator=_gen(9))
    b = st.sample(3, 1.0, generator=_gen(9))
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())


def test_per_parameter_prior_keeps_its_own_gradients():
    """A constant per-parameter δ under a gradient is not collapsed to one value: each entry
    gets ∂ log det / ∂δᵢ = [Π⁻¹]ᵢᵢ (exact at a constant δ, also on a Kronecker block)."""
    st = _make("blockdiagonal")
    delta = torch.full((st.n_params,), 0.9, dtype=DT, requires_grad=True)
    (gd,) = torch.autograd.grad(st.logdet(delta, 1.0), delta)
    torch.testing.assert_close(gd, st.inverse_diagonal(0.9, 1.0))


def test_a_users_structure_named_like_ours_does_not_replace_it():
    from laplacetorch.structures import STRUCTURES

    class Dense(Diagonal):  # a user's class that happens to share the name
        pass

    assert STRUCTURES["Dense"].__module__ == "laplacetorch.structures.dense"
    mine = Dense(torch.ones(3, dtype=DT))
    again = structure_from_state_dict(mine.state_dict())
    assert type(again) is Dense and again.state_dict()["structure"].endswith(".Dense")


def test_kernel_state_keeps_the_evidence_and_needs_its_points_for_the_rest():
    st = _make("kernel")
    again = structure_from_state_dict(st.state_dict())
    assert type(again) is Kernel
    torch.testing.assert_close(again.logdet(0.7, 2.0), st.logdet(0.7, 2.0))
    with pytest.raises(RuntimeError, match="loaded without its data points; refit it"):
        again.solve(torch.ones(7, dtype=DT), 0.7)


def _over_layers(kind: str, st: BlockDiagonal, perm: torch.Tensor | None = None):
    """A structure on all 25 coordinates of the composite, with its layer blocks as layer
    parts (in the block's own order ``perm`` of θ when given): a low rank (+ diagonal), a
    diagonal, or a dense block through the default (J formed) part variance."""
    where = torch.arange(25) if perm is None else torch.argsort(perm)  # θ position → local
    parts = [(blk.layout, where[index]) for _, index, blk in st.blocks if blk.layout is not None]
    group = st.group_index if perm is None else st.group_index[perm]
    if kind == "diagonal":
        return Diagonal(torch.rand(25, generator=_gen(53), dtype=DT), group, layer_parts=parts)
    if kind == "dense":
        dense = Dense(_psd(25, 54), group)
        dense._set_layer_parts(parts)
        return dense
    u, _ = torch.linalg.qr(torch.randn(25, 4, generator=_gen(50), dtype=DT))
    lam = torch.tensor([6.0, 2.0, 0.5, 0.1], dtype=DT)
    d = torch.rand(25, generator=_gen(51), dtype=DT) if kind == "lowrank+diag" else None
    return LowRank(u, lam, d, group, parts)


@pytest.mark.parametrize("kind", ["lowrank", "lowrank+diag", "diagonal", "dense"])
@pytest.mark.parametrize("prior", PRIOR_KINDS)
@pytest.mark.parametrize("n_pos", [1, 3])
def test_variance_from_layer_parts(kind, prior, n_pos):
    """J Π⁻¹ Jᵀ of a structure over several layers (joint and separate biases, S > 1) and
    other coordinates, from the layer factors and the dense rest, equals the dense one."""
    composite = _composite()
    source, jac = _layer_source(composite, n_pos)
    st = _over_layers(kind, composite)
    assert sorted({lay.layer for lay in st.layouts()}) == ["l1", "l2", "l3"]
    delta = _prior(st, prior)
    cov = torch.linalg.inv(st.precision_dense(delta, 0.8))
    expected = jac @ cov @ jac.transpose(1, 2)
    torch.testing.assert_close(st.functional_variance(source, delta, 0.8), expected)
    torch.testing.assert_close(st.functional_variance(jac, delta, 0.8), expected)
    source.memory_budget = 16  # one column of U and one example at a time
    torch.testing.assert_close(st.functional_variance(source, delta, 0.8), expected)
    # a source without l2's factors (a layer not called once) has its dense columns instead
    l2 = torch.cat([i for _, i, blk in composite.blocks if blk.layout == L2])
    lookup = torch.full((25,), -1, dtype=torch.long)
    rest = (source.rest[0] >= 0).nonzero().squeeze(1)
    dense = torch.cat([rest, l2])
    lookup[dense] = torch.arange(dense.numel())
    raw = {k: v for k, v in source.layers.items() if k != "l2"}
    partial = LayerJacobian(source.f, raw, (lookup, jac[..., dense].clone()), 1 << 20)
    torch.testing.assert_close(st.functional_variance(partial, delta, 0.8), expected)
    # the same low rank as a block on a permutation of θ: its rest columns are looked up
    perm = torch.randperm(25, generator=_gen(52))
    local = _over_layers(kind, composite, perm)
    outer = BlockDiagonal([("all", perm, local)], 25, composite.group_index)
    torch.testing.assert_close(
        outer.functional_variance(source, 0.7, 0.8),
        jac[..., perm] @ torch.linalg.inv(local.precision_dense(0.7, 0.8)) @ jac[..., perm].mT,
    )


@pytest.mark.parametrize("kind", ["lowrank+diag", "diagonal"])
def test_layer_parts_persist_and_bad_parts_are_refused(kind):
    composite = _composite()
    st = _over_layers(kind, composite)
    again = structure_from_state_dict(st.state_dict())
    assert again.layouts() == st.layouts()
    source, _ = _layer_source(composite)
    torch.testing.assert_close(
        again.functional_variance(source, 0.7, 1.0), st.functional_variance(source, 0.7, 1.0)
    )
    old = st.state_dict()
    del old["layer_parts"]  # a state saved before layer parts: dense J in the predictive
    assert structure_from_state_dict(old).layouts() == []
    bad = st.state_dict()
    bad["layer_parts"] = [{"index": torch.arange(6)}]
    with pytest.raises(ValueError, match="layer_parts"):
        structure_from_state_dict(bad)
    before = st.layouts()
    with pytest.raises(ValueError, match="layer_parts"):
        st.load_state_dict(bad)
    assert st.layouts() == before
    g = torch.ones(25, dtype=DT)
    with pytest.raises(ValueError, match="needs 6 positions; got 5"):
        Diagonal(g, layer_parts=[(L1, torch.arange(5))])
    with pytest.raises(ValueError, match="overlaps"):
        LowRank(torch.eye(25, 2, dtype=DT), g[:2], None, None,
                [(L1, torch.arange(6)), (L2, torch.arange(4, 6))])  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        Diagonal(g, layer_parts=[(L2, torch.tensor([0, 1]) + 24)])
    with pytest.raises(ValueError, match="layout cannot have layer parts"):
        Diagonal(torch.ones(6, dtype=DT), layout=L1, layer_parts=[(L1, torch.arange(6))])
