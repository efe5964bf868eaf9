"""KFAC: exactness where the mathematics allows it, weight sharing against its definition,
MC convergence, the Kron structure against the dense matrix it represents."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SeqNet, batches, dense_ef, dense_ggn, make_data, make_mlp
from torch import nn

from laplacetorch import ParameterSubset, get_likelihood
from laplacetorch.curvature import fit_kfac
from laplacetorch.structures import BlockDiagonal, Diagonal, Kron

DT = torch.float64


def _block_diag_of(g: torch.Tensor, structure: BlockDiagonal) -> torch.Tensor:
    """G restricted to the structure's blocks: Kronecker blocks whole, diagonal blocks'
    diagonals."""
    out = torch.zeros_like(g)
    for _, index, blk in structure.blocks:
        if isinstance(blk, Diagonal):
            out[index, index] = g[index, index]
        else:
            out[index[:, None], index[None]] = g[index[:, None], index[None]]
    return out


def _factors(structure: BlockDiagonal) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(i, *b.factors()) for _, i, b in structure.blocks if type(b) is Kron]


def _rest_index(structure: BlockDiagonal) -> torch.Tensor:
    return torch.cat([i for _, i, b in structure.blocks if isinstance(b, Diagonal)])


def _deep_linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 2)).to(DT).eval()


def _conv_s1(seed=0, groups=1, padding=0, mode="zeros", dilation=1):
    """Convs whose outputs are 1×1 (S = 1), where KFAC is exact for one datum."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(
                2, 4, 3, padding=padding, groups=groups, padding_mode=mode, dilation=dilation
            ),
            nn.Tanh(),
            nn.Conv2d(4, 4, 1, groups=groups),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        .to(DT)
        .eval()
    )


@pytest.mark.parametrize("likelihood", ["classification", "regression", "binary"])
@pytest.mark.parametrize("joint_bias", [True, False])
def test_single_datum_exact_for_linear_layers(likelihood, joint_bias):
    model = make_mlp()
    x, y = make_data("mlp", likelihood, n=1)
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood(likelihood), [(x, y)], joint_bias=joint_bias)
    g = dense_ggn(sub, x, y, likelihood)
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


@pytest.mark.parametrize(
    ("groups", "padding", "mode", "shape", "dilation"),
    [
        (1, 0, "zeros", (1, 2, 3, 3), 1),
        (2, 0, "zeros", (1, 2, 3, 3), 1),
        (1, "same", "zeros", (1, 2, 1, 1), 1),
        (2, 1, "circular", (1, 2, 1, 1), 1),
        (1, 0, "zeros", (1, 2, 5, 5), 2),
    ],
)
def test_single_datum_exact_for_conv_layers(groups, padding, mode, shape, dilation):
    model = _conv_s1(groups=groups, padding=padding, mode=mode, dilation=dilation)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    y = torch.tensor([2])
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("classification"), [(x, y)])
    g = dense_ggn(sub, x, y, "classification")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


@pytest.mark.parametrize("joint_bias", [True, False])
def test_deep_linear_network_gaussian_is_exact(joint_bias):
    model = _deep_linear()
    g_ = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 4, generator=g_, dtype=DT), torch.randn(30, 2, generator=g_, dtype=DT)
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("regression"), batches(x, y, 7), joint_bias=joint_bias)
    g = dense_ggn(sub, x, y, "regression")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


def test_deep_linear_conv_network_gaussian_is_exact():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 1), nn.Flatten()).to(DT).eval()
    g_ = torch.Generator().manual_seed(4)
    x = torch.randn(9, 2, 3, 3, generator=g_, dtype=DT)
    y = torch.randn(9, 2, generator=g_, dtype=DT)
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("regression"), batches(x, y, 4))
    g = dense_ggn(sub, x, y, "regression")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_single_datum_exact_for_conv_nd(dims, groups):
    """Conv1d / Conv2d / Conv3d with 1-position outputs: KFAC is exact for one datum."""
    torch.manual_seed(dims)
    conv = _CONV[dims]
    model = nn.Sequential(
        conv(2, 4, 3, padding=1, padding_mode="circular", groups=groups, stride=2),
        nn.Tanh(),
        conv(4, 4, 1, groups=groups),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    model = model.to(DT).eval()
    x = torch.randn(1, 2, *[1] * dims, generator=torch.Generator().manual_seed(1), dtype=DT)
    y = torch.tensor([1])
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("classification"), [(x, y)])
    assert sum(type(b) is Kron for _, _, b in res.structure.blocks) == 2 * groups + 1
    g = dense_ggn(sub, x, y, "classification")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


@pytest.mark.parametrize("dims", [1, 3])
def test_deep_linear_conv_nd_network_gaussian_is_exact(dims):
    torch.manual_seed(3)
    conv = _CONV[dims]
    model = nn.Sequential(conv(2, 3, 3), conv(3, 2, 1), nn.Flatten()).to(DT).eval()
    g_ = torch.Generator().manual_seed(4)
    x = torch.randn(9, 2, *[3] * dims, generator=g_, dtype=DT)
    y = torch.randn(9, 2, generator=g_, dtype=DT)
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("regression"), batches(x, y, 4))
    assert all(type(b) is Kron for _, _, b in res.structure.blocks)
    g = dense_ggn(sub, x, y, "regression")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


def _definition_factors(model, layer, x, f_cols, approximation):
    """A and B of one layer from explicit per-example, per-position loops (the definition)."""
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.update(a=i[0], z=o))
    out = model(x)
    h.remove()
    a_in, z = store["a"], store["z"]
    n = x.shape[0]
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        p = layer.padding if not isinstance(layer.padding, str) else (kh // 2, kw // 2)
        xp = F.pad(a_in, (p[1], p[1], p[0], p[0]))
        ho, wo = z.shape[-2:]
        pats = torch.stack(
            [
                torch.stack(
                    [
                        xp[
                            :,
                            :,
                            i * layer.stride[0] : i * layer.stride[0] + kh,
                            j * layer.stride[1] : j * layer.stride[1] + kw,
                        ].reshape(n, -1)
                        for j in range(wo)
                    ],
                    1,
                )
                for i in range(ho)
            ],
            1,
        ).reshape(n, ho * wo, -1)
    else:
        pats = a_in.reshape(n, -1, a_in.shape[-1])
    pats = torch.cat([pats, torch.ones_like(pats[..., :1])], -1).detach()
    gs = []  # [K, N, S, out]
    for k in range(f_cols.shape[0]):
        (gz,) = torch.autograd.grad(out, z, f_cols[k], retain_graph=True)
        gz = (
            gz.reshape(n, gz.shape[1], -1).transpose(1, 2)
            if gz.dim() == 4
            else gz.reshape(n, -1, gz.shape[-1])
        )
        gs.append(gz)
    gs = torch.stack(gs)
    if approximation == "expand":
        a_fac = torch.einsum("nsi,nsj->ij", pats, pats) / (n * pats.shape[1])
        b_fac = torch.einsum("knsi,knsj->ij", gs, gs)
    else:
        am, gsum = pats.mean(1), gs.sum(2)
        a_fac = am.T @ am / n
        b_fac = torch.einsum("kni,knj->ij", gsum, gsum)
    return a_fac, b_fac


@pytest.mark.parametrize("approximation", ["expand", "reduce"])
@pytest.mark.parametrize("net", ["conv", "seq"])
def test_weight_sharing_factors_match_their_definition(approximation, net):
    torch.manual_seed(5)
    g_ = torch.Generator().manual_seed(6)
    if net == "conv":
        model = (
            nn.Sequential(
                nn.Conv2d(2, 3, 3, padding=1, stride=2),
                nn.Tanh(),
                nn.Conv2d(3, 2, 2),
                nn.Flatten(),
                nn.Linear(8, 3),
            )
            .to(DT)
            .eval()
        )
        x = torch.randn(5, 2, 5, 5, generator=g_, dtype=DT)
        layers = [model[0], model[2], model[4]]
    else:
        model = SeqNet().to(DT).eval()
        x = torch.randn(5, 6, 3, generator=g_, dtype=DT)
        layers = [model.a, model.b]
    lik = get_likelihood("classification")
    y = torch.randint(0, 2 if net == "seq" else 3, (5,), generator=g_)
    res = fit_kfac(
        ParameterSubset(model, "all"), lik, batches(x, y, 2), approximation=approximation
    )
    f = model(x).detach()
    cols = lik.hessian_sqrt(f).permute(2, 0, 1)
    for layer, (_, b_fac, a_fac) in zip(layers, _factors(res.structure), strict=True):
        a_ref, b_ref = _definition_factors(model, layer, x, cols, approximation)
        torch.testing.assert_close(a_fac, a_ref)
        torch.testing.assert_close(b_fac, b_ref)


def test_mc_fisher_converges_to_the_exact_factors():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=6)
    sub = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    exact = _factors(fit_kfac(sub, lik, [(x, y)]).structure)
    errs = []
    for m in (1, 100, 10_000):
        mc = fit_kfac(sub, lik, [(x, y)], fisher_type="mc", mc_samples=m, seed=0).structure
        errs.append(
            max(
                float((b - be).norm() / be.norm())
                for (_, b, _), (_, be, _) in zip(_factors(mc), exact, strict=True)
            )
        )
    assert errs[2] < 0.05 and errs[0] > errs[1] > errs[2]
    again = fit_kfac(sub, lik, [(x, y)], fisher_type="mc", mc_samples=3, seed=0).structure
    torch.testing.assert_close(
        again.curvature_dense(),
        fit_kfac(
            sub, lik, [(x, y)], fisher_type="mc", mc_samples=3, seed=0
        ).structure.curvature_dense(),
    )


def test_empirical_factors_match_their_definition():
    model = make_mlp()
    x, y = make_data("mlp", "classification", n=1)
    sub = ParameterSubset(model, "all")
    res = fit_kfac(sub, get_likelihood("classification"), [(x, y)], fisher_type="empirical")
    assert res.kind == "ef"
    # one datum: B ⊗ A = g gᵀ ⊗ ã ãᵀ is the exact EF block
    ef = dense_ef(sub, x, y, "classification")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(ef, res.structure))


def test_other_parameters_get_a_diagonal_block_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))
    model = model.to(DT).eval()
    x, y = make_data("mlp", "classification")
    sub = ParameterSubset(model, "all")
    with pytest.warns(UserWarning, match=r"diagonal block: \['1.weight', '1.bias'\]"):
        res = fit_kfac(sub, get_likelihood("classification"), batches(x, y))
    g = dense_ggn(sub, x, y, "classification")
    d = _rest_index(res.structure)
    assert d.numel() == 10
    torch.testing.assert_close(res.structure.diagonal()[d], g.diagonal()[d])


def test_bad_input_to_kfac():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = ParameterSubset(model, "all")
    lik = get_likelihood("classification")
    offered = "fisher_type='hessian' is offered by .* not by hessian_structure='kfac'"
    with pytest.raises(ValueError, match=offered):
        fit_kfac(sub, lik, batches(x, y), fisher_type="hessian")
    with pytest.raises(ValueError, match="unknown approximation 'mean'"):
        fit_kfac(sub, lik, batches(x, y), approximation="mean")
    with pytest.raises(ValueError, match="mc_samples must be a positive integer; got 0"):
        fit_kfac(sub, lik, batches(x, y), fisher_type="mc", mc_samples=0)
    mask = torch.zeros(83, dtype=torch.bool)
    mask[:5] = True
    with pytest.raises(ValueError, match="mask is not supported"):
        fit_kfac(ParameterSubset(model, "subnetwork", subnetwork=mask), lik, batches(x, y))


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def _tied():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    m[2].weight = m[0].weight
    return m.to(DT).eval()


@pytest.mark.parametrize("net", ["norm_only", "tied", "twice"])
def test_layers_kfac_cannot_represent_get_exact_diagonal_blocks(net):
    """A norm layer, a weight tied between modules, a layer called twice: no B ⊗ A exists,
    so those tensors get exact diagonal blocks (announced), the other layers Kron blocks."""
    torch.manual_seed(0)
    model = {
        "norm_only": lambda: nn.Sequential(nn.LayerNorm(4)).to(DT).eval(),
        "tied": _tied,
        "twice": lambda: _Twice().to(DT).eval(),
    }[net]()
    x, _ = make_data("mlp", "regression", n=7)
    sub = ParameterSubset(model, "all")
    with pytest.warns(UserWarning, match="exact diagonal block"):
        res = fit_kfac(sub, get_likelihood("regression"), batches(x, x, 3))
    kron = {name for name, _, b in res.structure.blocks if type(b) is Kron}
    assert kron == {"norm_only": set(), "tied": {"4"}, "twice": {"head"}}[net]
    g = dense_ggn(sub, x, x, "regression")
    torch.testing.assert_close(res.structure.curvature_dense(), _block_diag_of(g, res.structure))


@pytest.mark.parametrize("budget", [1 << 20, 40])
def test_output_gram_of_conv_gradients_without_the_copy(budget):
    """A conv layer's g is a transposed view of [K, B, out, S]: its Gram, summed in batched
    chunks, equals the flat [K·B·S, out] product; other layouts take the flat path."""
    from laplacetorch.curvature.kfac import output_gram

    g0 = torch.randn(3, 4, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = g0.transpose(2, 3)  # [K, B, S = 7, out = 5], as layer_positions gives a conv's
    flat = g.reshape(-1, 5)
    torch.testing.assert_close(output_gram(g, budget), flat.T @ flat)
    dense = g.contiguous()
    torch.testing.assert_close(output_gram(dense, budget), flat.T @ flat)
    rows = g[..., 1:4]  # a conv group's rows of the output channels
    rf = rows.reshape(-1, 3)
    torch.testing.assert_close(output_gram(rows, budget), rf.T @ rf)
