"""The backend registry: every fact the rest of the library asks of a curvature backend.

An entry (:class:`Backend`) declares the fit function, the curvature types it takes, the
options whose effect depends on others, its peak-memory estimate, whether it is one pass,
whether ``fit(override=False)`` can add data to it, and whether its passes reduce over a
torch.distributed group. A new backend is its own module plus one entry in :data:`BACKENDS`;
an entry cannot be made without a memory estimate, so no backend falls back silently on
another's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import memory
from ..likelihoods import Likelihood
from ..params import ParameterSubset
from ..structures import DEFAULT_MEMORY_BUDGET
from .base import FISHER_TYPES, CurvatureResult
from .block_full import fit_block_full
from .context import FitContext
from .diag import fit_diag
from .ekfac import fit_ekfac
from .full import fit_full
from .gp import fit_gp
from .hutchinson import fit_hutchinson
from .kfac import fit_kfac
from .lanczos import fit_lanczos
from .nystrom import fit_nystrom
from .operator import fit_operator

__all__ = [
    "ALIASES",
    "BACKENDS",
    "HESSIAN_STRUCTURES",
    "Backend",
    "OptionRule",
    "batch_memory_check",
    "canonical_structure",
    "check_fisher_type",
    "get_backend",
]

#: (the condition under which an option has an effect, given fisher_type and the options;
#: its wording in the refusal)
OptionRule = tuple[Callable[[str, dict[str, Any]], bool], str]


@dataclass(frozen=True)
class Backend:
    """What a curvature backend is, for everyone who asks.

    Attributes:
        name: the canonical ``hessian_structure``.
        fit: ``fit(subset, likelihood, loader, context, **options) -> CurvatureResult``
            (the :class:`~.context.FitContext`, then the backend's own options).
        memory: ``memory(subset, options, sizes) -> bytes`` at the fit's peak
            (:mod:`laplacetorch.memory`); sizes N and C may be unknown (``None``).
        fisher_types: the ``fisher_type`` names it takes.
        rules: options that have an effect only with certain others (refused otherwise).
        one_pass: a single pass over the data (else the loader must be re-iterable).
        mergeable: ``fit(override=False)`` adds data exactly (a sum over examples).
        reducible: its passes sum over the ranks of a process group.
        sized_by_data: its peak grows with N and C (a kernel of the data): it checks it again
            once a first pass has counted them, with the context's memory limit.
        half_precision: it fits a bfloat16 / float16 model (statistics in float32); False
            where its answers need products more accurate than half precision's round-off
            (CG to a tolerance stalls on them), and such a model is refused before any pass.
        layer_columns: its pass pulls a batch's K output columns back to each Linear / Conv
            layer (``[K, B, out]`` per layer, counted by :func:`~laplacetorch.memory.batch_bytes`).
        exact_rest: its diagonal rest (tensors outside the layers) pulls back the C columns of
            Sₙ per example whatever the curvature type (KFAC's and EKFAC's exact rest).
        per_output: its structure can keep one curvature per output and re-weight them (a
            noise per output, :mod:`.per_output`).
    """

    name: str
    fit: Callable[..., CurvatureResult]
    memory: Callable[..., int]
    fisher_types: tuple[str, ...]
    rules: dict[str, OptionRule] = field(default_factory=dict)
    one_pass: bool = True
    mergeable: bool = False
    reducible: bool = True
    sized_by_data: bool = False
    half_precision: bool = True
    layer_columns: bool = False
    exact_rest: bool = False
    per_output: bool = False

    def __post_init__(self) -> None:
        if not callable(self.fit) or not callable(self.memory):
            raise TypeError(
                f"backend {self.name!r} needs a fit function and a memory estimate "
                "(memory(subset, options, sizes) -> bytes); no estimate falls back on another's"
            )

    def __call__(
        self,
        subset: ParameterSubset,
        likelihood: Likelihood,
        loader: Iterable,
        *,
        fisher_type: str = "exact",
        progress: bool | None = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        batch_size_fn: Callable[[Any], int] | None = None,
        memory_limit: int | None = None,
        **options: Any,
    ) -> CurvatureResult:
        """Run the fit outside ``Laplace``: the :class:`FitContext` from these keywords, the
        backend's own ``options`` as they are (``fit_kfac(subset, lik, loader,
        fisher_type="mc", mc_samples=4)``)."""
        context = FitContext(
            fisher_type,
            progress,
            memory_budget,
            batch_size_fn,
            memory_limit,
            batch_memory_check(self.name, subset, options, fisher_type, memory_limit),
        )
        return self.fit(subset, likelihood, loader, context, **options)


_MC_ONLY = "only with fisher_type='mc'"
_GGN_EF = ("exact", "ggn", "empirical", "ef")
_WITH_MC = (*_GGN_EF, "mc")
_ALL = (*_WITH_MC, "hessian")


def _mc(*names: str) -> dict[str, OptionRule]:
    return {n: (lambda f, o: f == "mc", _MC_ONLY) for n in names}


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("full", fit_full, memory.full_bytes, _ALL, _mc("mc_samples", "seed", "generator"),
                mergeable=True, per_output=True),
        Backend("diag", fit_diag, memory.vector_bytes, _ALL,
                _mc("mc_samples", "seed", "generator"), mergeable=True, layer_columns=True,
                per_output=True),
        Backend("kfac", fit_kfac, memory.kfac_bytes, _WITH_MC,
                _mc("mc_samples", "seed", "generator"), mergeable=True, layer_columns=True,
                exact_rest=True, per_output=True),
        Backend("ekfac", fit_ekfac, memory.ekfac_bytes, _WITH_MC,
                _mc("mc_samples", "seed", "generator"), one_pass=False, layer_columns=True,
                exact_rest=True),
        Backend("block_full", fit_block_full, memory.block_full_bytes, _GGN_EF, mergeable=True,
                layer_columns=True, per_output=True),
        Backend("hutchinson", fit_hutchinson, memory.vector_bytes, _ALL, _mc("mc_samples"),
                one_pass=False),
        Backend("lanczos", fit_lanczos, memory.lanczos_bytes, _ALL, _mc("mc_samples"),
                one_pass=False),
        Backend(
            "operator",
            fit_operator,
            memory.operator_bytes,
            _ALL,
            {
                **_mc("mc_samples"),
                "neumann_terms": (
                    lambda f, o: o.get("solver") == "neumann",
                    "only with solver='neumann'",
                ),
                "cg_tol": (lambda f, o: o.get("solver", "cg") == "cg", "only with solver='cg'"),
            },
            one_pass=False,
            half_precision=False,
        ),
        Backend(
            "gp",
            fit_gp,
            memory.gp_bytes,
            _GGN_EF,
            {
                "seed": (
                    lambda f, o: o.get("n_subset") is not None and o.get("subset_indices") is None,
                    "only with n_subset (and no subset_indices): it draws the subset",
                )
            },
            one_pass=False,
            reducible=False,
            sized_by_data=True,
        ),
        Backend("nystrom", fit_nystrom, memory.nystrom_bytes, ("exact", "ggn"), one_pass=False,
                reducible=False, sized_by_data=True),
    )
}  # fmt: skip

#: canonical structure names; laplace-torch's aliases map onto them
HESSIAN_STRUCTURES = tuple(BACKENDS)
ALIASES = {"kron": "kfac", "lowrank": "lanczos", "diag_hutchinson": "hutchinson"}


def canonical_structure(name: str | None, subset: str) -> str:
    """The backend name for a ``hessian_structure`` (aliases resolved, defaults chosen)."""
    if name is None:
        # Best that exists: exact dense curvature where P is small by construction, KFAC (with
        # exact eigenbasis algebra) for whole networks.
        return "full" if subset in ("last_layer", "subnetwork") else "kfac"
    canon = ALIASES.get(name, name) if isinstance(name, str) else name
    if canon not in HESSIAN_STRUCTURES:
        raise ValueError(
            f"unknown hessian_structure {name!r}; expected one of {list(HESSIAN_STRUCTURES)} "
            f"or an alias {sorted(ALIASES)}"
        )
    return canon


def batch_memory_check(
    name: str,
    subset: ParameterSubset,
    options: dict[str, Any],
    fisher_type: str,
    limit: int | None,
    n_data: int | None = None,
    curvatures: int = 1,
) -> Callable[[int | None, int | None], None]:
    """``check(B, C)``: refuses a fit of backend ``name`` whose peak with a batch of B
    examples of C outputs exceeds ``limit`` (:func:`~laplacetorch.memory.check_fit_memory`);
    ``check(None, None)`` checks the structure alone, before any pass; the data pass calls
    it on its first batch, before any output column is formed. ``curvatures``: C for a fit
    that keeps one curvature per output."""

    def check(n_batch: int | None, n_outputs: int | None) -> None:
        sizes = memory.Sizes(n_data, n_outputs, n_batch, fisher_type, curvatures)
        memory.check_fit_memory(name, subset, options, limit, sizes)

    return check


def get_backend(name: str) -> Backend:
    """The registry entry of backend ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown curvature backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def check_fisher_type(name: str, fisher_type: Any) -> None:
    """Refuse a ``fisher_type`` backend ``name`` does not take, naming those that do.

    Raises:
        ValueError: an unknown curvature type, or one the backend does not offer.
    """
    if not isinstance(fisher_type, str) or fisher_type not in FISHER_TYPES:
        raise ValueError(
            f"unknown fisher_type {fisher_type!r}; expected one of {sorted(FISHER_TYPES)}"
        )
    if fisher_type not in BACKENDS[name].fisher_types:
        offer = [b.name for b in BACKENDS.values() if fisher_type in b.fisher_types]
        raise ValueError(
            f"fisher_type={fisher_type!r} is offered by {offer}, not by hessian_structure="
            f"{name!r} (which takes {list(BACKENDS[name].fisher_types)})"
        )
