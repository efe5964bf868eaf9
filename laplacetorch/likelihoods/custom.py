"""Any likelihood, from its negative log-likelihood alone (``CustomLikelihood``).

The user gives ``nll(f, y) -> [B]``, the per-example negative log-likelihood of outputs
``f`` ``[B, C]`` and targets ``y``; the output curvature Λₙ the GGN needs is derived from it
with ``torch.func``: the Hessian ∂²nll/∂f² at each example's own target (vmapped
``torch.func.hessian``), its negative eigenvalues dropped, since Λ must be positive
semi-definite (announced once by the batched paths — KFAC, diag, the GGN operator — as the
per-example vmapped ones cannot branch on values). Where the Hessian can be indefinite
(robust and location–scale likelihoods) give the Fisher instead: ``curvature=fisher`` with
``fisher(f) -> [B, C, C]``. Its square root is Λ's eigendecomposition V √λ. With
``sample_targets`` the MC Fisher works too. Every structure, the evidence and prior tuning
then work as for the built-in likelihoods; the predictive is that of f (``(mean,
covariance)``, as regression's without σ²), or E[``inverse_link``(f)] by the ``mc`` link
where an inverse link is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .base import LIKELIHOODS, Likelihood, _check_finite

__all__ = ["CustomLikelihood"]


class CustomLikelihood(Likelihood):
    """A likelihood given by its per-example negative log-likelihood.

    Args:
        nll: ``(f [B, C], y) -> [B]``, differentiable twice in f by ``torch.func``.
        curvature: ``"hessian"`` (∂²nll/∂f² at the observed targets, its negative part
            dropped) or ``fisher(f) -> [B, C, C]``, the expected Hessian in closed form.
        sample_targets: ``(f, n, generator) -> [n, B, ...]`` draws of targets, for
            ``fisher_type="mc"``.
        inverse_link: ``f -> E[y | f]``, for the ``mc`` link of the predictive.
        name: how the likelihood is named in messages and states.

    Raises:
        TypeError: ``nll`` not callable; ValueError: an unknown ``curvature``.
    """

    gaussian_predictive = True
    links = ("probit", "mc")

    def __init__(
        self,
        nll: Callable[[Tensor, Tensor], Tensor],
        *,
        curvature: str | Callable[[Tensor], Tensor] = "hessian",
        sample_targets: Callable[..., Tensor] | None = None,
        inverse_link: Callable[[Tensor], Tensor] | None = None,
        name: str = "custom",
    ) -> None:
        if not callable(nll):
            raise TypeError(f"nll must be callable (f, y) -> [B]; got {type(nll).__name__}")
        if not isinstance(name, str) or name in LIKELIHOODS:
            raise ValueError(
                f"name must be a string other than the built-in likelihoods' "
                f"{sorted(LIKELIHOODS)} (a name is compared as the likelihood); got {name!r}"
            )
        if curvature != "hessian" and not callable(curvature):
            raise ValueError(
                f"curvature must be 'hessian' or a callable fisher(f) -> [B, C, C]; got "
                f"{curvature!r}"
            )
        self._nll, self._curvature = nll, curvature
        self._sampler, self._link = sample_targets, inverse_link
        self.name = name
        self.gaussian_predictive = inverse_link is None
        self.links = ("probit", "mc") if inverse_link is None else ("mc",)
        self._announced = False

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        if not isinstance(y, Tensor):
            raise TypeError(f"targets y must be a torch.Tensor; got {type(y).__name__}")
        if y.dim() == 0 or y.shape[0] != f_shape[0]:
            raise ValueError(
                f"targets y must have the batch's {f_shape[0]} rows first; got shape "
                f"{list(y.shape)}"
            )
        _check_finite(y)
        return y

    @property
    def identity(self) -> str:
        """The name and the nll's qualified name (a state does not load into another nll)."""
        fn = getattr(self._nll, "__qualname__", type(self._nll).__name__)
        return f"{self.name}({getattr(self._nll, '__module__', '?')}.{fn})"

    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        out = self._nll(f, y)
        if not isinstance(out, Tensor) or out.shape != f.shape[:1]:
            raise ValueError(
                f"nll(f, y) must return one value per example, shape [{f.shape[0]}]; got "
                f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        return out

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        if callable(self._curvature):
            return self._curvature(f)
        if y is None:
            raise ValueError(
                f"the {self.name} likelihood's curvature is the Hessian at the targets: give y, "
                "or a closed-form curvature=fisher"
            )

        def one(fn: Tensor, yn: Tensor) -> Tensor:
            return self._nll(fn.unsqueeze(0), yn.unsqueeze(0)).sum()

        hess = torch.func.hessian(one)
        try:
            return torch.vmap(hess)(f.detach(), y)
        except (RuntimeError, NotImplementedError, ValueError):  # an nll vmap cannot run
            return torch.stack([hess(fn, yn) for fn, yn in zip(f.detach(), y, strict=True)])

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        lam = self.output_hessian(f, y)
        evals, evecs = torch.linalg.eigh(0.5 * (lam + lam.mT))
        try:
            negative = bool((evals < -1e-6 * evals.abs().amax()).any())
        except RuntimeError:  # under vmap (per-example paths): announced by batched calls
            negative = False
        if not self._announced and negative:
            self._announced = True
            warnings.warn(
                f"the {self.name} likelihood's Hessian is indefinite at some targets: its "
                "negative part is dropped (Λ must be positive semi-definite); pass "
                "curvature=fisher with the expected Hessian for the Fisher GGN",
                UserWarning,
                stacklevel=2,
            )
        return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        if self._sampler is None:
            raise ValueError(
                f"the {self.name} likelihood has no sample_targets: the MC Fisher needs it; "
                "use fisher_type='exact'"
            )
        return self._sampler(f.detach(), n_samples, generator)

    def inverse_link(self, f: Tensor) -> Tensor:
        return f if self._link is None else self._link(f)

    def entropy(self, p: Tensor) -> Tensor:
        raise ValueError(
            f"the {self.name} likelihood does not know the distribution of y given its mean: "
            "its uncertainty has no entropy to split; la(x, link_approx='mc') gives E[y]"
        )

    def uncertainty_parts(
        self, mean: Tensor, var: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        raise ValueError(
            f"the {self.name} likelihood does not know its noise: its uncertainty has no "
            "aleatoric part to split off; la(x) gives the predictive of f"
        )

    def nn_uncertainty_parts(
        self, fs: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.uncertainty_parts(fs, fs, sigma_noise)

    def predictive_nll(
        self, pred: Tensor | tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        raise ValueError(
            f"the {self.name} likelihood has no predictive distribution of y to score: tune the "
            "prior by the evidence (method='marglik') or give gridsearch a loss"
        )
