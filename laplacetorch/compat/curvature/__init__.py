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
        stochastic: bool = False,
        **kwargs: Any,
    ) -> None:
        self.model, self.likelihood = model, plain(likelihood)
        self.last_layer, self.subnetwork_indices = last_layer, subnetwork_indices
        self.dict_key_x, self.dict_key_y = dict_key_x, dict_key_y
        self.stochastic = stochastic

    # ----------------------------------------------------------------- curvature of a batch
    def _fit(self, x: Any, y: Tensor, structure: str, **kwargs: Any) -> tuple[Tensor, Any]:
        """``(loss, structure)`` of the native backend ``structure`` on the one batch
        ``(x, y)``: laplace-torch's curvature type of this class (the Monte-Carlo GGN with
        ``stochastic``, ``mc_samples`` draws), its loss Σₙ nll (½‖y − f‖² for regression)."""
        from ...curvature import get_backend  # the registry imports every backend
        from ...likelihoods import get_likelihood

        if self.last_layer:
            subset = ParameterSubset(self.model, "last_layer")
        elif self.subnetwork_indices is not None:
            subset = ParameterSubset(self.model, "subnetwork", subnetwork=self.subnetwork_indices)
        else:
            subset = ParameterSubset(self.model, "all")
        options: dict[str, Any] = {}
        fisher = {"ggn": "exact", "ef": "empirical", "hessian": "hessian"}[self.curvature]
        if self.curvature == "ggn" and self.stochastic:
            fisher, options["mc_samples"] = "mc", int(kwargs.get("mc_samples", 1))
        if structure == "kfac":
            options["joint_bias"] = bool(kwargs.get("joint_bias", False))
            if "kfac_approx" in kwargs:
                options["approximation"] = kwargs["kfac_approx"]
        result = get_backend(structure)(
            subset, get_likelihood(self.likelihood), [(x, y)], fisher_type=fisher, **options
        )
        return result.loss_sum, result.structure

    def full(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(loss, H [P, P])`` of the batch."""
        loss, structure = self._fit(x, y, "full", **kwargs)
        return loss, structure.curvature_dense()

    def diag(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(loss, diag H [P])`` of the batch."""
        loss, structure = self._fit(x, y, "diag", **kwargs)
        return loss, structure.diagonal()

    def kron(self, x: Any, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Any]:
        """``(loss, KFAC)`` of the batch, laplace-torch's layout (separate W and b blocks),
        as the matrix view with ``to_matrix()`` (``N`` is laplace-torch's data size for
        its factors' scaling; the factors here are the batch's)."""
        from ..classes import KronPosterior  # classes imports this module

        loss, structure = self._fit(x, y, "kfac", **kwargs)
        return loss, KronPosterior(structure, "curvature", 0.0, 1.0)

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
