"""Progress bars: on every step that can take seconds when asked, off when told, and off by
default where stderr is not a terminal (CI logs)."""

from __future__ import annotations

import pytest
from conftest import batches, make_data, make_mlp

from laplacetorch import Laplace

STEPS = {
    "kfac curvature": lambda la, data, p: la.fit(data, progress=p),
    "marglik (L-BFGS": lambda la, data, p: la.optimize_prior_precision(progress=p),
    "marglik:": lambda la, data, p: la.optimize_prior_precision(lr=0.1, n_steps=3, progress=p),
    "MacKay": lambda la, data, p: la.optimize_prior_precision(method="mackay", progress=p),
    "grid search (evidence)": lambda la, data, p: la.optimize_prior_precision(
        method="gridsearch", grid_size=3, progress=p
    ),
    "grid search:": lambda la, data, p: la.optimize_prior_precision(
        method="gridsearch", grid_size=3, val_loader=data, progress=p
    ),
}


@pytest.mark.parametrize("desc", list(STEPS))
@pytest.mark.parametrize("progress", [True, False, None])
def test_progress_bars(desc, progress, capsys):
    x, y = make_data("mlp", "classification")
    data = batches(x, y)
    la = Laplace(make_mlp(), "classification", "all", "kfac").fit(data, progress=False)
    capsys.readouterr()
    STEPS[desc](la, data, progress)
    err = capsys.readouterr().err
    if progress:
        assert desc in err
    else:  # False, or the default under pytest's captured (non-terminal) stderr
        assert err == ""
