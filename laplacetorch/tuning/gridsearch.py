"""Grid-search tuning of a scalar δ: the validation loss of the predictive at each grid
point (the NLL by default, or a user loss with laplace-torch's calling convention), through
the data-pass helper, or the evidence when there is no validation data."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..checks import check_count
from ..datapass import BatchAdapter, accumulate, collect, progress_range
from .common import TuningResult, _finish

if TYPE_CHECKING:
    from ..laplace import Laplace


def _gridsearch(
    la: Laplace,
    val_loader: Iterable | None,
    grid: Tensor,
    pred_type: str,
    loss: Callable[..., Tensor | float] | None,
    link_approx: str,
    n_samples: int,
    generator: torch.Generator | None,
    progress: bool,
) -> TuningResult:
    """Pick the scalar δ on ``grid`` with the lowest validation loss (default: the predictive
    NLL), or the best evidence when there is no ``val_loader``. Each validation batch's
    Jacobians are computed once for all δ (``glm``); the pass goes through the data-pass
    helper (checks, bar, reduction across processes)."""
    grid = torch.as_tensor(grid).to(la.subset.dtype).reshape(-1)
    if grid.numel() == 0 or not torch.isfinite(grid).all() or (grid <= 0).any():
        raise ValueError("grid must be a non-empty set of positive finite prior precisions")
    if val_loader is None:
        if loss is not None or pred_type != "glm":
            raise ValueError("gridsearch with a loss or pred_type='nn' needs a val_loader")
        with torch.no_grad():
            it = progress_range(grid.numel(), progress, "grid search (evidence)")
            scores = torch.stack([la.evidence(grid[i]) for i in it])
        best = int(scores.argmax())
    else:
        la.likelihood.check_link(link_approx)
        check_count("n_samples", n_samples)
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable; got {type(loss).__name__}")
        scores = _validation_scores(
            la, grid, val_loader, pred_type, loss, link_approx, n_samples, generator, progress
        )
        best = int(scores.argmin())
    if grid.numel() > 1 and best in (0, grid.numel() - 1):
        end = "smallest" if float(grid[best]) == float(grid.min()) else "largest"
        warnings.warn(
            f"the grid search picked δ = {float(grid[best]):.3g}, the {end} value of its grid "
            f"[{float(grid.min()):.3g}, {float(grid.max()):.3g}]: the best δ may lie outside "
            "it; widen log_prior_prec_min / log_prior_prec_max (or pass another grid)",
            RuntimeWarning,
            stacklevel=4,
        )
    return _finish(
        la, "gridsearch", grid[best], la.sigma_noise, grid.numel(), True, scores.tolist()
    )


def _predictives(la, x, n, grid, pred_type, link_approx, n_samples, generator):
    """The predictive at every δ of ``grid`` for one batch (a list over δ of chunk lists),
    and the shape of f: the object's own predictive (:meth:`Laplace.glm_chunks`, each
    chunk's Jacobians once for all δ; :meth:`Laplace.nn_function_samples`), with the
    likelihood of the training pairs."""
    lik, priors = la.likelihood.for_fitting(), [la.prior_at(d) for d in grid]
    if pred_type == "nn":
        out = []
        for prior in priors:
            fs = la.nn_function_samples(x, prior, n_samples, generator)
            out.append([lik.nn_predictive(fs, la.sigma_noise)])
        return out, tuple(fs.shape[1:])
    out, f_shape = [[] for _ in grid], [0, 0]
    for f, variances in la.glm_chunks(x, n, priors):
        f_shape = [f_shape[0] + f.shape[0], *f.shape[1:]]
        for i, var in enumerate(variances):
            out[i].append(
                lik.glm_predictive(f, var, la.sigma_noise, link_approx, n_samples, generator)
            )
    return out, tuple(f_shape)


def _cat(chunks: list) -> Tensor | tuple[Tensor, ...]:
    if isinstance(chunks[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))
    return torch.cat(chunks)


def _call_loss(loss: Callable, pred, y: Tensor) -> float:
    """laplace-torch's convention: ``loss(probs, y)``, or for a Gaussian predictive
    ``loss(mean, var, y)`` when the loss takes three arguments, else ``loss(mean, y)``."""
    if isinstance(pred, tuple):
        try:
            n_args = len(inspect.signature(loss).parameters)
        except (TypeError, ValueError):
            n_args = 3
        value = loss(*pred, y) if n_args >= 3 else loss(pred[0], y)
    else:
        value = loss(pred, y)
    value = float(value)
    if value != value:
        raise ValueError("the validation loss returned NaN")
    return value


def _validation_scores(
    la, grid, val_loader, pred_type, loss, link_approx, n_samples, generator, progress
) -> Tensor:
    """Validation loss of the predictive for each δ on ``grid``: the mean NLL, or ``loss``
    on all validation predictions at once."""
    lik = la.likelihood.for_fitting()  # validation data are like the training data
    kw = {
        "device": la.subset.device,
        "dtype": la.subset.input_dtype,
        "progress": progress,
        "desc": "grid search",
        "batch_size_fn": la.batch_size_fn,
    }
    loader = BatchAdapter(val_loader, la.dict_key_y)

    def preds(x: Any, y: Tensor) -> tuple[list, tuple[int, ...]]:
        out, f_shape = _predictives(
            la, x, y.shape[0], grid, pred_type, link_approx, n_samples, generator
        )
        return [_cat(c) for c in out], f_shape

    if loss is None:

        def nll_step(x: Any, y: Tensor) -> dict[str, Tensor]:
            ps, f_shape = preds(x, y)
            yb = lik.check_targets(y, f_shape)
            nll = [lik.predictive_nll(p, yb, la.sigma_noise).double() for p in ps]
            return {"nll": torch.stack(nll)}

        sums = accumulate(loader, nll_step, **kw)
        return (sums["nll"] / sums["n_data"]).cpu()

    def keep_step(x: Any, y: Tensor) -> dict[str, Tensor]:
        out = {"y": y}
        for i, p in enumerate(preds(x, y)[0]):
            for j, t in enumerate(p if isinstance(p, tuple) else (p,)):
                out[f"{i}.{j}"] = t
        return out

    got = collect(loader, keep_step, **kw)
    scores = []
    for i in range(grid.numel()):
        parts = [got[k] for k in sorted(k for k in got if k.startswith(f"{i}."))]
        scores.append(_call_loss(loss, tuple(parts) if len(parts) > 1 else parts[0], got["y"]))
    return torch.tensor(scores, dtype=torch.float64)
