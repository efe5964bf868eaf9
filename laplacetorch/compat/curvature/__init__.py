"""laplace-torch's curvature backend classes, as selectors of the curvature type.

laplace-torch computes curvature through BackPACK, ASDL or curvlinops; laplacetorch has its
own backends. Passing one of these classes as ``backend=`` selects what it would compute:
the generalised Gauss-Newton (``*GGN``; with ``backend_kwargs={"stochastic": True}`` its
Monte-Carlo estimate), the empirical Fisher (``*EF``) or the Hessian of the loss
(``*Hessian``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AsdfghjklEF",
    "AsdfghjklGGN",
    "AsdfghjklHessian",
    "AsdlEF",
    "AsdlGGN",
    "AsdlHessian",
    "BackPackEF",
    "BackPackGGN",
    "CurvatureInterface",
    "CurvlinopsEF",
    "CurvlinopsGGN",
    "CurvlinopsHessian",
    "EFInterface",
    "GGNInterface",
    "fisher_type_of",
]


class CurvatureInterface:
    """Base of the backend selectors (never instantiated here)."""

    curvature = "ggn"


class GGNInterface(CurvatureInterface):
    """The generalised Gauss-Newton."""

    curvature = "ggn"


class EFInterface(CurvatureInterface):
    """The empirical Fisher."""

    curvature = "ef"


class _Hessian(CurvatureInterface):
    curvature = "hessian"


class BackPackGGN(GGNInterface):
    """BackPACK's GGN."""


class BackPackEF(EFInterface):
    """BackPACK's empirical Fisher."""


class AsdlGGN(GGNInterface):
    """ASDL's GGN."""


class AsdlEF(EFInterface):
    """ASDL's empirical Fisher."""


class AsdlHessian(_Hessian):
    """ASDL's Hessian."""


class CurvlinopsGGN(GGNInterface):
    """curvlinops' GGN (laplace-torch's default)."""


class CurvlinopsEF(EFInterface):
    """curvlinops' empirical Fisher."""


class CurvlinopsHessian(_Hessian):
    """curvlinops' Hessian."""


class AsdfghjklGGN(GGNInterface):
    """asdfghjkl's GGN."""


class AsdfghjklEF(EFInterface):
    """asdfghjkl's empirical Fisher."""


class AsdfghjklHessian(_Hessian):
    """asdfghjkl's Hessian."""


def fisher_type_of(backend: Any, backend_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """laplacetorch's ``fisher_type`` and backend options for a laplace-torch ``backend``.

    Raises:
        TypeError: for a backend that is not one of this module's classes.
        ValueError: for unknown ``backend_kwargs``.
    """
    if backend is None:
        backend = CurvlinopsGGN
    if not (isinstance(backend, type) and issubclass(backend, CurvatureInterface)):
        raise TypeError(
            "backend must be one of laplacetorch.compat.curvature's classes (BackPackGGN, "
            f"CurvlinopsEF, ...); got {backend!r}"
        )
    kwargs = dict(backend_kwargs or {})
    stochastic = bool(kwargs.pop("stochastic", False))
    n_samples = kwargs.pop("num_samples", None)
    if kwargs:
        raise ValueError(
            f"unknown backend_kwargs {sorted(kwargs)}; expected 'stochastic', 'num_samples'"
        )
    if backend.curvature == "hessian":
        return "hessian", {}
    if backend.curvature == "ef":
        return "empirical", {}
    if stochastic:
        return "mc", {} if n_samples is None else {"mc_samples": int(n_samples)}
    return "exact", {}
