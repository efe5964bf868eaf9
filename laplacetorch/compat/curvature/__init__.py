"""laplace-torch's curvature backend classes, as selectors of the curvature type.

laplace-torch computes curvature through BackPACK, ASDL or curvlinops; laplacetorch has its
own backends. An instance gives laplace-torch's Jacobian methods, computed through the native
subset. Passing one of these classes as ``backend=`` selects what it would compute:
the generalised Gauss-Newton (``*GGN``; with ``backend_kwargs={"stochastic": True}`` its
Monte-Carlo estimate), the empirical Fisher (``*EF``) or the Hessian of the loss
(``*Hessian``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...model_call import taking_turns
from ...params import ParameterSubset
from ..enums import plain

__all__ = [
    "AsdfghjklEF",
    "AsdfghjklGGN",
    "AsdfghjklHessian",
    "AsdlEF",
    "AsdlGGN",
    "AsdlHessian",
    "AsdlInterface",
    "BackPackEF",
    "BackPackGGN",
    "BackPackInterface",
    "CurvatureInterface",
    "CurvlinopsEF",
    "CurvlinopsGGN",
    "CurvlinopsHessian",
    "CurvlinopsInterface",
    "EFInterface",
    "GGNInterface",
    "fisher_type_of",
]


class CurvatureInterface:
    """Base of the backend selectors; an instance gives laplace-torch's Jacobians of
    ``model`` through the native subset (``jacobians``, ``last_layer_jacobians``).

    Args:
        model: the network (a compat ``FeatureExtractor`` for ``last_layer_jacobians``).
        likelihood: laplace-torch's likelihood name (kept; the Jacobians do not use it).
        last_layer, subnetwork_indices, dict_key_x, dict_key_y: laplace-torch's, kept.
    """

    curvature = "ggn"

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        last_layer: bool = False,
        subnetwork_indices: Tensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
    ) -> None:
        self.model, self.likelihood = model, plain(likelihood)
        self.last_layer, self.subnetwork_indices = last_layer, subnetwork_indices
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y

    def jacobians(self, x: Tensor, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
        """``(J [B, C, P], f [B, C])`` for all of the model's parameters, in
        ``parameters_to_vector`` order; differentiable in x with ``enable_backprop``."""
        subset = ParameterSubset(self.model, "all")
        theta = subset.map_vector()
        with taking_turns():
            jac = torch.func.jacrev(lambda t: subset.forward(t, x))(theta)
            f = subset.forward(theta, x)
        return (jac, f) if enable_backprop else (jac.detach(), f.detach())

    def last_layer_jacobians(
        self, x: Tensor, enable_backprop: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(J [B, C, P_ll], f [B, C])`` of the last (linear) layer from its input features
        φ: J[b, c, (c, j)] = φ[b, j] for the weight, then the identity for the bias."""
        f, phi = self.model.forward_with_features(x)
        b, c = f.shape
        eye = torch.eye(c, dtype=phi.dtype, device=phi.device)
        jac = torch.einsum("ck,bj->bckj", eye, phi).reshape(b, c, -1)
        if self.model.last_layer.bias is not None:
            jac = torch.cat([jac, eye.expand(b, c, c)], dim=2)
        return (jac, f) if enable_backprop else (jac.detach(), f.detach())


class GGNInterface(CurvatureInterface):
    """The generalised Gauss-Newton."""

    curvature = "ggn"


class EFInterface(CurvatureInterface):
    """The empirical Fisher."""

    curvature = "ef"


class _Hessian(CurvatureInterface):
    curvature = "hessian"


class BackPackInterface(CurvatureInterface):
    """BackPACK's interface (its Jacobians)."""


class AsdlInterface(CurvatureInterface):
    """ASDL's interface (its Jacobians)."""


class CurvlinopsInterface(CurvatureInterface):
    """curvlinops' interface (its Jacobians)."""


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
