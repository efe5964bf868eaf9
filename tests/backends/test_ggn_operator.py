"""The matrix-free GGN / empirical-Fisher operator against dense oracles."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, dense_ef, dense_ggn, make_cnn, make_data, make_mlp, make_subset

from laplacetorch import get_likelihood
from laplacetorch.curvature import ggn_operator, hessian
from laplacetorch.curvature.ggn_operator import GGNOperator


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("likelihood", ["classification", "regression", "binary"])
@pytest.mark.parametrize("subset", ["all", "last_layer", "subnetwork"])
def test_ggn_and_ef_vector_products_equal_dense(net, likelihood, subset):
    model = make_mlp() if net == "mlp" else make_cnn()
    x, y = make_data(net, likelihood)
    sub = make_subset(model, subset)
    lik = get_likelihood(likelihood)
    op = GGNOperator(sub, lik, batches(x, y))
    g = dense_ggn(sub, x, y, likelihood)
    v = torch.randn(3, sub.n_params, generator=torch.Generator().manual_seed(0), dtype=g.dtype)
    torch.testing.assert_close(op.matvec(v), v @ g)
    torch.testing.assert_close(op(v[0]), v[0] @ g)
    ef = GGNOperator(sub, lik, batches(x, y), fisher_type="empirical")
    torch.testing.assert_close(ef.matvec(v), v @ dense_ef(sub, x, y, likelihood))
    torch.testing.assert_close(ef.matvec(v[1:2]), v[1:2] @ dense_ef(sub, x, y, likelihood))
    assert op.n_data == len(x) and op.n_outputs == 3 and op.n_matvecs == 2


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("fisher_type", ["exact", "empirical", "mc", "hessian"])
def test_looped_and_vmapped_blocks_are_the_same_operator(net, fisher_type, monkeypatch):
    """A block of vectors looped over inside each batch gives the vmapped products (with the
    same Monte-Carlo draws for every vector); convolutional nets loop by default."""
    model = make_mlp() if net == "mlp" else make_cnn()
    x, y = make_data(net, "classification")
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    v = torch.randn(4, sub.n_params, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    ops = {
        loop: GGNOperator(sub, lik, batches(x, y), fisher_type=fisher_type, vector_loop=loop)
        for loop in (False, True)
    }
    products = {False: ops[False].matvec(v)}
    with monkeypatch.context() as m:  # the loop never vmaps over the vectors
        for module in (ggn_operator, hessian):
            m.setattr(module, "vmap", lambda *a, **k: pytest.fail("vmap in the vector loop"))
        products[True] = ops[True].matvec(v)
    torch.testing.assert_close(products[True], products[False])
    # each looped row is the single-vector product (one MC draw per batch, shared)
    torch.testing.assert_close(products[True][2], ops[True].matvec(v[2]))
    assert GGNOperator(sub, lik, batches(x, y)).vector_loop is (net == "cnn")
    with pytest.raises(TypeError, match="vector_loop must be True, False or None; got 'yes'"):
        GGNOperator(sub, lik, batches(x, y), vector_loop="yes")


@pytest.mark.parametrize("fisher_type", ["exact", "mc"])
def test_blocks_past_vmap_block_are_split_inside_each_batch(fisher_type, monkeypatch):
    """More than ``VMAP_BLOCK`` vmapped vectors go through a batch in blocks (sharing one MC
    draw): the same products as one block, with no block larger than ``VMAP_BLOCK``."""
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    v = torch.randn(7, sub.n_params, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    op = GGNOperator(sub, lik, batches(x, y), fisher_type=fisher_type, vector_loop=False)
    whole = op.matvec(v)
    sizes = []
    products = GGNOperator._products

    def recorded(self, x, y, v, weights):
        sizes.append(v.shape[0])
        return products(self, x, y, v, weights)

    monkeypatch.setattr(ggn_operator, "VMAP_BLOCK", 3)
    monkeypatch.setattr(GGNOperator, "_products", recorded)
    torch.testing.assert_close(op.matvec(v), whole)
    assert sizes and max(sizes) == 3 and sum(sizes) == 7 * sizes.count(1)


def test_hessian_blocks_past_vmap_block_are_split_inside_each_batch(monkeypatch):
    """The Hessian kind vmaps at most ``VMAP_BLOCK`` vectors through a batch too."""
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    lik = get_likelihood("classification")
    v = torch.randn(7, sub.n_params, generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    op = GGNOperator(sub, lik, batches(x, y), fisher_type="hessian", vector_loop=False)
    whole = op.matvec(v)
    sizes = []
    hvp = ggn_operator.batch_hessian_matvec

    def recorded(*args, **kwargs):
        sizes.append(args[5].shape[0])
        return hvp(*args, **kwargs)

    monkeypatch.setattr(ggn_operator, "VMAP_BLOCK", 3)
    monkeypatch.setattr(ggn_operator, "batch_hessian_matvec", recorded)
    torch.testing.assert_close(op.matvec(v), whole)
    assert sizes and max(sizes) == 3 and sum(sizes) == 7 * sizes.count(1)


def test_minibatch_product_and_bad_vectors():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    op = GGNOperator(sub, get_likelihood("classification"), batches(x, y))
    v = torch.randn(2, sub.n_params, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    torch.testing.assert_close(
        op.batch_matvec(x[:5], y[:5], v), v @ dense_ggn(sub, x[:5], y[:5], "classification")
    )
    with pytest.raises(ValueError, match=r"v must have shape \[P\] or \[m, P\]"):
        op.matvec(torch.ones(2, 3, dtype=x.dtype))
    empty = GGNOperator(sub, get_likelihood("classification"), [])
    with pytest.raises(ValueError, match="empty loader"):
        empty.matvec(v)
    with pytest.raises(ValueError, match="empty loader"):
        _ = empty.n_data


def test_statistics_come_from_the_first_product_without_another_pass():
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    sub = make_subset(model, "all")
    passes = []

    class Counting(list):
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

    op = GGNOperator(sub, get_likelihood("classification"), Counting(batches(x, y)))
    assert passes == []  # nothing read at construction
    op.matvec(torch.ones(sub.n_params, dtype=x.dtype))
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum").detach()
    assert op.n_data == len(x) and op.n_outputs == 3
    torch.testing.assert_close(op.loss_sum, loss)
    assert len(passes) == 1


def test_float32_model_gives_float32_products_close_to_float64():
    model64 = make_mlp()
    model32 = make_mlp().float()
    x, y = make_data("mlp", "regression")
    g = dense_ggn(make_subset(model64, "all"), x, y, "regression")
    op = GGNOperator(
        make_subset(model32, "all"), get_likelihood("regression"), batches(x.float(), y.float())
    )
    v = torch.randn(2, g.shape[0], generator=torch.Generator().manual_seed(3))
    out = op.matvec(v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), v.double() @ g, rtol=1e-4, atol=1e-4)
