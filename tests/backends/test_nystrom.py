"""hessian_structure="nystrom": Nyström features of the kernel, against the full Laplace."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp

from laplacetorch import Laplace


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_all_points_and_the_kernels_rank_are_the_full_laplace(likelihood):
    x, y = make_data("mlp", likelihood, n=12)
    kw = {"sigma_noise": 0.7} if likelihood == "regression" else {}
    nys = Laplace(
        make_mlp(),
        likelihood,
        "all",
        "nystrom",
        prior_precision=0.8,
        backend_options={"n_eigenvalues": 36},
        **kw,
    ).fit(batches(x, y))
    full = Laplace(make_mlp(), likelihood, "all", "full", prior_precision=0.8, **kw).fit(
        batches(x, y)
    )
    torch.testing.assert_close(nys.structure.curvature_dense(), full.structure.curvature_dense())
    torch.testing.assert_close(nys.log_marginal_likelihood(), full.log_marginal_likelihood())
    xs = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    torch.testing.assert_close(nys.glm_moments(xs)[1], full.glm_moments(xs)[1])


def test_the_error_falls_as_k_grows():
    x, y = make_data("mlp", "classification", n=20)
    full = Laplace(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    xs = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    exact_ev, exact_var = full.log_marginal_likelihood(), full.glm_moments(xs)[1]
    ev_err, var_err = [], []
    for k in (2, 6, 15, 40, 60):
        la = Laplace(
            make_mlp(),
            "classification",
            "all",
            "nystrom",
            backend_options={"n_eigenvalues": k, "subsample_size": 12, "seed": 1},
        ).fit(batches(x, y))
        ev_err.append(float((la.log_marginal_likelihood() - exact_ev).abs()))
        var_err.append(float((la.glm_moments(xs)[1] - exact_var).norm() / exact_var.norm()))
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(ev_err))  # interlacing
    assert ev_err[-1] < 0.2 * ev_err[0] and var_err[-1] < 0.5 * var_err[0]


def test_bad_nystrom_options():
    x, y = make_data("mlp", "classification", n=10)
    with pytest.raises(ValueError, match="n_eigenvalues must be a positive integer"):
        Laplace(
            make_mlp(), "classification", "all", "nystrom", backend_options={"n_eigenvalues": 0}
        ).fit(batches(x, y))
    with pytest.raises(ValueError, match=r"subsample_size must be an integer in \[1, N = 10\]"):
        Laplace(
            make_mlp(), "classification", "all", "nystrom", backend_options={"subsample_size": 11}
        ).fit(batches(x, y))
    with pytest.raises(ValueError, match="one-shot|more than once"):
        Laplace(make_mlp(), "classification", "all", "nystrom").fit(iter(batches(x, y)))
