"""Which ``backend_options`` a curvature backend takes, and when each one matters.

An option a backend does not know, or one that has no effect with the other settings (a
Monte-Carlo sample count without ``fisher_type="mc"``), is refused when the Laplace object
is built: a silently ignored option is a wrong experiment.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import Backend

__all__ = ["check_backend_options"]

#: arguments Laplace passes itself; not backend options
_RESERVED = ("fisher_type", "progress", "memory_budget", "batch_size_fn", "memory_limit")


def check_backend_options(backend: Backend, options: dict[str, Any], fisher_type: str) -> None:
    """Refuse an option the ``backend``'s fit function does not take, one of Laplace's own
    arguments, and one without effect under ``fisher_type`` and the others (the entry's
    ``rules``).

    Raises:
        TypeError: ``options`` is not a mapping with string keys.
        ValueError: naming the option, the backend and what it accepts.
    """
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"backend_options must be a dict of option names; got {options!r}")
    params = inspect.signature(backend.fit).parameters
    known = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _RESERVED)
    for name in options:
        if name in _RESERVED:
            raise ValueError(
                f"backend_options[{name!r}]: pass {name} to Laplace(...) itself, not as a "
                "backend option"
            )
        if name not in known:
            raise ValueError(
                f"unknown backend option {name!r} for hessian_structure={backend.name!r}; its "
                f"options are {known}"
            )
        rule = backend.rules.get(name)
        if rule is not None and not rule[0](fisher_type, options):
            raise ValueError(
                f"backend option {name!r} of hessian_structure={backend.name!r} has an effect "
                f"{rule[1]}; drop it (fisher_type={fisher_type!r})"
            )
