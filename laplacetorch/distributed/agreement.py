"""What ranks of one data-parallel fit must share (:class:`FitIdentity`): θ*'s fingerprint,
the subset, the likelihood, the structure and how its passes sum, and the output width C;
and the refusal, alike on every rank, of ranks whose facts differ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# ----------------------------------------------------------------- what identifies a fit
_CHUNK = 1 << 20  # words per step of the fingerprint: bounds its int64 temporaries (8 MiB)
_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int32}


def weights_fingerprint(theta: Tensor) -> tuple[str, int, int, int, float]:
    """A cheap fingerprint of θ: ``(dtype, P, Σ w, Σ w·(position weight), ‖θ‖)`` over the
    integer words w of θ's bytes, on θ's device in chunks (no copy to the host).

    Integer sums are exact in any order, so equal weights give equal fingerprints on every
    rank whatever its threads or kernels (float sums need not); any change of one weight
    changes Σ w, a swap of two changes the weighted sum. ``‖θ‖`` is for messages only.
    """
    t = theta.detach().reshape(-1).contiguous()
    words = t.view(_WORD[t.element_size()])
    parts, position = [], None
    for chunk in words.split(_CHUNK):
        w = chunk.to(torch.int64)
        if position is None or position.numel() != w.numel():
            position = torch.arange(w.numel(), device=w.device) % 251 + 1
        # |w| < 2³¹, weights ≤ 251, 2²⁰ words: no int64 overflow within a chunk
        parts.append(torch.stack([w.sum(), (w * position).sum()]))
    sums = torch.stack(parts).tolist() if parts else []  # one copy to the host
    plain = sum(s for s, _ in sums)
    weighted = sum(ws + k * s for k, (s, ws) in enumerate(sums))  # Python ints: exact
    norm = float(torch.linalg.vector_norm(t)) if t.numel() else 0.0
    return str(t.dtype).removeprefix("torch."), t.numel(), plain, weighted, norm


class FitIdentity:
    """What every rank of one data-parallel fit must share: θ*, the parameter subset (its
    signature), the likelihood (its ``identity``), the structure and how its passes sum (the
    curvature type, one curvature per output or one, the backend's options), and the output
    width C
    (noted on the first batch by the fit's memory check, :meth:`noting_outputs`).

    Args:
        subset: the :class:`~laplacetorch.params.ParameterSubset` fitted.
        likelihood: the :class:`~laplacetorch.likelihoods.Likelihood` fitted.
        structure: the backend's name.
        curvature: ``"ggn"``, ``"ef"`` or ``"hessian"``. output_scales: C for one curvature
            per output, else 1. options: the backend's options.
    """

    def __init__(
        self,
        subset: Any,
        likelihood: Any,
        structure: str,
        curvature: str = "ggn",
        output_scales: int = 1,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.subset, self.likelihood, self.structure = subset, likelihood, structure
        # what each pass adds up: the curvature type, one curvature per output or one for
        # all, and the backend's options (e.g. mc_samples)
        self.how = {
            "curvature": curvature,
            "output_scales": output_scales,
            "options": sorted((k, _plain(v)) for k, v in (options or {}).items()),
        }
        #: C on this rank's first batch (``None``: not seen yet, or positions in the outputs)
        self.outputs: int | None = None

    def noting_outputs(
        self, check: Callable[[int | None, int | None], None]
    ) -> Callable[[int | None, int | None], None]:
        """``check(B, C)`` (the fit's memory check, which the data pass calls with the first
        batch's C before any output column is formed) that also notes C."""

        def noted(n_batch: int | None, n_outputs: int | None) -> None:
            # with positions C counts them too, and shards may differ in length
            if n_outputs is not None and getattr(self.subset, "output_layout", None) is None:
                self.outputs = n_outputs
            check(n_batch, n_outputs)

        return noted

    def facts(self) -> dict[str, Any]:
        """What the ranks compare when the fit's scope opens (θ* by its fingerprint)."""
        return {
            "structure": self.structure,
            "how": self.how,
            "likelihood": self.likelihood.identity,
            "subset": self.subset.signature(),
            "weights": weights_fingerprint(self.subset.map_vector()),
        }


def _plain(value: Any) -> str:
    """An option as the ranks compare it: plain values by value, others (a generator, a
    callable) by type only (their repr names an address)."""
    if isinstance(value, bool | int | float | str | tuple | list | type(None)):
        return repr(value)
    return type(value).__name__


_ADVICE = {
    "structure": "pass the same hessian_structure on every rank",
    "how": "pass the same fisher_type, sigma_noise shape and backend_options on every rank",
    "likelihood": "pass the same likelihood on every rank",
    "subset": "build the same model and subset_of_weights on every rank",
    "weights": "load the same weights on every rank",
    "outputs": "the model's outputs must not depend on the rank",
}


def _fact(name: str, value: Any) -> str:
    if name == "weights":
        dtype, n, *_, norm = value
        return f"{n} {dtype} weights, ‖θ*‖ = {norm:.6g}"
    if name == "subset":
        return f"{value['kind']}, {value['n_params']} weights in {len(value['shapes'])} tensors"
    return repr(value)


def _check_facts(per_rank: list[dict[str, Any]]) -> None:
    """Refuse, on every rank alike, ranks whose facts differ (the first fact that does)."""
    for name, what in (
        ("structure", "fit different structures"),
        ("how", "sum different curvatures (curvature type, one per output, or options)"),
        ("likelihood", "fit different likelihoods"),
        ("subset", "fit different parameter subsets"),
        ("weights", "fit different weights θ*"),
        ("outputs", "see different output widths C"),
    ):
        seen = [(r, f[name]) for r, f in enumerate(per_rank) if f.get(name) is not None]
        if not seen:
            continue
        ref, value = seen[0]
        others = [r for r, v in seen if v != value]
        if others:
            other = next(v for _, v in seen if v != value)
            shown = f"rank {ref}: {_fact(name, value)}; {_ranks(others)}: {_fact(name, other)}"
            if name == "subset" and _fact(name, value) == _fact(name, other):
                diff = next(k for k in value if value[k] != other.get(k))
                shown += f"; their {diff!r} differ"
            raise ValueError(
                f"{_ranks([ref, *others])} {what} ({shown}): each rank would end with "
                f"another 'fit of all the data'; {_ADVICE[name]}"
            )


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"
