"""fisher_type="mc" for full and diag: the Monte-Carlo Fisher is an unbiased GGN estimate."""

from __future__ import annotations

import pytest
import torch
from conftest import batches, make_data, make_mlp

from laplacetorch import Laplace


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize(
    ("subset", "structure"),
    [("all", "full"), ("all", "diag"), ("last_layer", "full"), ("last_layer", "diag")],
)
def test_many_samples_approach_the_ggn(likelihood, subset, structure):
    x, y = make_data("mlp", likelihood, n=12)
    opts = {"mc_samples": 3000, "seed": 1}
    mc = Laplace(make_mlp(), likelihood, subset, structure, fisher_type="mc", backend_options=opts)
    mc.fit(batches(x, y))
    ggn = Laplace(make_mlp(), likelihood, subset, structure).fit(batches(x, y))
    a, b = mc.structure.curvature_dense(), ggn.structure.curvature_dense()
    assert float((a - b).norm() / b.norm()) < 0.06
    assert mc.curvature.kind == "ggn"  # scales with σ and T like the GGN
    torch.testing.assert_close(mc.log_likelihood, ggn.log_likelihood)


def test_mc_fisher_is_seeded_and_refused_elsewhere():
    x, y = make_data("mlp", "classification", n=12)

    def fit(seed):
        la = Laplace(
            make_mlp(),
            "classification",
            "all",
            "full",
            fisher_type="mc",
            backend_options={"seed": seed},
        )
        return la.fit(batches(x, y)).structure.curvature_dense()

    assert torch.equal(fit(0), fit(0)) and not torch.equal(fit(0), fit(1))
    for structure in ("block_full",):
        with pytest.raises(ValueError, match="fisher_type='mc'"):
            Laplace(make_mlp(), "classification", "all", structure, fisher_type="mc").fit(
                batches(x, y)
            )
    with pytest.raises(ValueError, match="mc_samples must be a positive integer"):
        Laplace(
            make_mlp(),
            "classification",
            "all",
            "full",
            fisher_type="mc",
            backend_options={"mc_samples": 0},
        ).fit(batches(x, y))


def test_matrix_free_mc_fisher_is_one_fixed_operator():
    """The operator's samples are drawn afresh from its seed at every product: the same
    vector gives the same product, and many samples give the GGN's."""
    x, y = make_data("mlp", "classification", n=12)
    mc = Laplace(
        make_mlp(),
        "classification",
        "all",
        "operator",
        fisher_type="mc",
        backend_options={"mc_samples": 3000},
    ).fit(batches(x, y))
    ggn = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    v = torch.randn(3, mc.n_params, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    first = mc.structure.curvature_matvec(v)
    assert torch.equal(first, mc.structure.curvature_matvec(v))
    exact = v @ ggn.structure.curvature_dense()
    assert float((first - exact).norm() / exact.norm()) < 0.06
    low = Laplace(
        make_mlp(),
        "classification",
        "all",
        "lanczos",
        fisher_type="mc",
        backend_options={"mc_samples": 3000, "rank": 3},
    ).fit(batches(x, y))
    top = torch.linalg.eigvalsh(ggn.structure.curvature_dense()).flip(0)[:3]
    torch.testing.assert_close(low.structure.lam, top, rtol=0.08, atol=0)
