"""Which ``backend_options`` a curvature backend takes, and when each one matters.

An option a backend does not know, or one that has no effect with the other settings (a
Monte-Carlo sample count without ``fisher_type="mc"``), is refused when the Laplace object
is built: a silently ignored option is a wrong experiment.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["check_backend_options"]

#: arguments Laplace passes itself; not backend options
_RESERVED = ("fisher_type", "progress", "memory_budget", "batch_size_fn")

_MC_ONLY = "only with fisher_type='mc'"
#: option -> (the condition under which it has an effect, its wording); per backend
_APPLIES: dict[str, dict[str, tuple[Callable[[str, dict[str, Any]], bool], str]]] = {
    **{
        name: {
            "mc_samples": (lambda f, o: f == "mc", _MC_ONLY),
            "seed": (lambda f, o: f == "mc", _MC_ONLY),
            "generator": (lambda f, o: f == "mc", _MC_ONLY),
        }
        for name in ("full", "diag", "kfac", "ekfac")
    },
    **{
        name: {"mc_samples": (lambda f, o: f == "mc", _MC_ONLY)}
        for name in ("hutchinson", "lanczos")  # operator: below
    },
    "operator": {
        "mc_samples": (lambda f, o: f == "mc", _MC_ONLY),
        "neumann_terms": (lambda f, o: o.get("solver") == "neumann", "only with solver='neumann'"),
        "cg_tol": (lambda f, o: o.get("solver", "cg") == "cg", "only with solver='cg'"),
    },
    "gp": {
        "seed": (
            lambda f, o: o.get("n_subset") is not None and o.get("subset_indices") is None,
            "only with n_subset (and no subset_indices): it draws the subset",
        ),
    },
}


def check_backend_options(
    backend: str, function: Callable[..., Any], options: dict[str, Any], fisher_type: str
) -> None:
    """Refuse an option ``function`` (the backend ``backend``) does not take, one of
    Laplace's own arguments, and one without effect under ``fisher_type`` and the others.

    Raises:
        TypeError: ``options`` is not a mapping with string keys.
        ValueError: naming the option, the backend and what it accepts.
    """
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"backend_options must be a dict of option names; got {options!r}")
    params = inspect.signature(function).parameters
    known = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _RESERVED)
    for name in options:
        if name in _RESERVED:
            raise ValueError(
                f"backend_options[{name!r}]: pass {name} to Laplace(...) itself, not as a "
                "backend option"
            )
        if name not in known:
            raise ValueError(
                f"unknown backend option {name!r} for hessian_structure={backend!r}; its "
                f"options are {known}"
            )
        rule = _APPLIES.get(backend, {}).get(name)
        if rule is not None and not rule[0](fisher_type, options):
            raise ValueError(
                f"backend option {name!r} of hessian_structure={backend!r} has an effect "
                f"{rule[1]}; drop it (fisher_type={fisher_type!r})"
            )
