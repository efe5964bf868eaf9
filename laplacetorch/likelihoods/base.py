"""Likelihoods: the log-likelihood of summed data, output Hessians and their square roots.

Curvature is always computed at *unit scale*: the Gaussian with σ = 1 and temperature 1. The
true curvature of the summed negative log-likelihood is then ``s · G`` with the likelihood scale
``s = 1 / (σ² T)`` (GGN). The empirical Fisher is built from gradients, so it scales with ``s²``
(see :meth:`Likelihood.curvature_scale`). This keeps σ and T tunable after one fit.

Each likelihood is a module of this package whose class registers itself under its ``name``
when it is defined (:data:`LIKELIHOODS`): a new likelihood is one new module.

Shapes: model outputs ``f`` are ``[B, C]``; targets are ``[B]`` (class indices, or a regression /
binary target when ``C == 1``) or ``[B, C]`` (regression, multi-label binary).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..links import bridge, gaussian_samples, probit
from ..metrics import nll

__all__ = ["LIKELIHOODS", "Likelihood", "get_likelihood"]

#: name -> likelihood class; every named subclass of :class:`Likelihood` registers itself
LIKELIHOODS: dict[str, type[Likelihood]] = {}


class Likelihood(ABC):
    """A likelihood p(y | f) over network outputs f of shape ``[B, C]``, and its predictive.

    The predictive methods take the linearised moments (mean ``[B, C]``, covariance
    ``[B, C, C]`` of f, without noise) or function samples ``[S, B, C]`` and return what the
    user sees: probabilities ``[B, C]`` (classification, binary) or ``(mean, covariance)`` of
    y (regression, noise included).
    """

    name: str = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):  # a named likelihood, not a wrapper
            LIKELIHOODS[cls.name] = cls

    def __eq__(self, other: object) -> bool:
        # laplace-torch's la.likelihood is the name: la.likelihood == "regression" holds here
        if isinstance(other, str):
            return other == self.name
        return other is self

    def __hash__(self) -> int:
        return id(self)

    @property
    def identity(self) -> str:
        """What identifies this likelihood in a saved state: its name, and the parameters of
        one that has them (a state of Student-t ν = 3 does not load into ν = 5)."""
        return self.name

    #: whether the predictive is a Gaussian (f_mu, f_var) rather than probabilities
    gaussian_predictive: bool = False
    #: whether the likelihood has a Gaussian noise σ (tunable, part of the predictive)
    has_noise: bool = False
    #: whether that σ may be one value per output, ``[C]`` (one curvature per output is fit)
    per_output_noise: bool = False
    #: the link approximations of the GLM predictive this likelihood accepts
    links: tuple[str, ...] = ("probit", "bridge", "bridge_norm", "mc")

    @abstractmethod
    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        """Validate targets against outputs of shape ``f_shape`` and return them normalised.

        Raises:
            ValueError: on a wrong shape, labels out of range or non-finite values.
        """

    def check_outputs(self, f: Tensor) -> None:
        """Refuse model outputs ``[B, C]`` this likelihood cannot take (the first batch's).

        Raises:
            ValueError: naming what was seen and the fix.
        """
        return None

    def n_terms(self, y: Tensor) -> int:
        """How many likelihood terms checked targets ``y`` hold: one per example (positions
        whose target is ignored are none)."""
        return y.shape[0]

    @abstractmethod
    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        """Per-example negative log-likelihood at unit scale (σ = 1, T = 1), shape ``[B]``.

        For regression this is ½‖y − f‖² *without* the normaliser; the normaliser is added in
        :meth:`log_likelihood_from_loss`.
        """

    @abstractmethod
    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        """A square root Sₙ of the unit-scale output Hessian, ``[B, C, K]`` with SₙSₙᵀ = Λₙ
        (the targets ``y``, where given, may mask terms: ignored positions)."""

    @abstractmethod
    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        """The unit-scale output Hessian Λₙ = ∂²(−log p)/∂f², shape ``[B, C, C]``."""

    @abstractmethod
    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        """Targets drawn from the model at unit scale, ``[n_samples, B, ...]`` (MC Fisher)."""

    def output_grad(self, f: Tensor, y: Tensor) -> Tensor:
        """∂(−log p(yₙ | fₙ))/∂fₙ at unit scale, ``[B, C]`` (for the empirical Fisher)."""
        f = f.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.nll_unit(f, y).sum(), f)
        return g

    def curvature_scale(
        self,
        sigma_noise: Tensor | float = 1.0,
        temperature: Tensor | float = 1.0,
        kind: str = "ggn",
    ) -> Tensor | float:
        """The factor s turning unit-scale curvature into that of the tempered likelihood.

        GGN: s = 1/(σ²T); empirical Fisher (outer products of gradients): s = 1/(σ²T)².
        """
        s = 1.0 / (self._noise_var(sigma_noise) * temperature)
        s = s * s if kind == "ef" else s
        t = torch.as_tensor(s).detach()
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            sigma = torch.as_tensor(sigma_noise).detach().tolist()
            raise ValueError(
                f"sigma_noise {sigma} and temperature {float(temperature):.3g} give a likelihood "
                f"scale 1/(σ²T){'²' if kind == 'ef' else ''} = {t.tolist()} in "
                f"{t.dtype}: not a positive finite number; take a larger σ or T"
            )
        return s

    def _noise_var(self, sigma_noise: Tensor | float) -> Tensor | float:
        return 1.0

    def log_likelihood_from_loss(
        self,
        loss_sum: Tensor | float,
        n_data: int,
        n_outputs: int,
        sigma_noise: Tensor | float = 1.0,
        temperature: Tensor | float = 1.0,
    ) -> Tensor:
        """log p(D | θ) of the tempered likelihood from the summed unit-scale loss Σₙ nll_unit:
        (−Σₙ nll_unit / σ² − log Z) / T, with σ² = 1 and log Z = 0 unless the likelihood has a
        noise (:meth:`_log_normaliser`). With a noise per output, ``loss_sum`` is ``[C]`` (the
        loss of each output) and σ ``[C]`` or one number."""
        noise_var = self._noise_var(sigma_noise)
        log_z = self._log_normaliser(n_data, n_outputs, noise_var)
        fit = torch.as_tensor(loss_sum / noise_var).sum()
        return torch.as_tensor((-fit - log_z) / temperature)

    def _log_normaliser(
        self, n_data: int, n_outputs: int, noise_var: Tensor | float
    ) -> Tensor | float:
        return 0.0

    def log_likelihood(
        self,
        f: Tensor,
        y: Tensor,
        sigma_noise: Tensor | float = 1.0,
        temperature: Tensor | float = 1.0,
    ) -> Tensor:
        """log p(y | f) summed over the batch (tempered), differentiable in f, σ and T."""
        y = self.check_targets(y, tuple(f.shape))
        return self.log_likelihood_from_loss(
            self._loss_sum(f, y), f.shape[0], f.shape[1], sigma_noise, temperature
        )

    def _loss_sum(self, f: Tensor, y: Tensor) -> Tensor:
        """Σₙ nll_unit: what :meth:`log_likelihood_from_loss` takes (per output where a
        likelihood's σ may be one per output)."""
        return self.nll_unit(f, y).sum()

    # ----------------------------------------------------------------- predictive
    def for_fitting(self) -> Likelihood:
        """The likelihood whose predictive is that of the training data (``fitting=True``);
        itself except for reward modelling (preferences of pairs)."""
        return self

    def predictive_input_shape(self, train_shape: tuple[int, ...] | None) -> tuple | None:
        """The per-example shape of prediction inputs, from that of the training inputs."""
        return train_shape

    def check_sigma_noise(self, sigma_noise: Tensor) -> None:
        """Refuse a noise σ ≠ 1 for a likelihood without noise, and one per output for a
        likelihood without a noise per output."""
        if sigma_noise.numel() > 1 and not self.per_output_noise:
            raise ValueError(
                f"sigma_noise of shape [C] (a noise per output) is for likelihood "
                f"'regression'; got {sigma_noise.numel()} values for likelihood {self.name!r}"
            )
        if not self.has_noise and float(sigma_noise) != 1.0:
            raise ValueError(
                f"sigma_noise is a regression-only option; got {float(sigma_noise)} for "
                f"likelihood {self.name!r}"
            )

    def check_link(self, link_approx: str) -> None:
        """Refuse a link approximation this likelihood has no use for."""
        if link_approx not in self.links:
            raise ValueError(
                f"unknown link_approx {link_approx!r} for likelihood {self.name!r}; expected one "
                f"of {self.links}"
            )

    @abstractmethod
    def inverse_link(self, f: Tensor) -> Tensor:
        """The mean of y given f, over ``[..., C]`` (softmax, sigmoid or identity)."""

    def glm_predictive(
        self,
        mean: Tensor,
        var: Tensor,
        sigma_noise: Tensor | float = 1.0,
        link_approx: str = "probit",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
        diagonal_output: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """E[inverse_link(f)] for f ~ N(mean ``[B, C]``, var ``[B, C, C]``) by the link
        approximation ``link_approx``; ``diagonal_output``: the ``mc`` link samples the
        outputs independently, from N(mean, diag var) (probit reads only the diagonal; the
        bridge keeps the covariances it conditions on, as in laplace-torch).

        A Gaussian predictive (regression, rewards) is ``(mean, var)`` of f whatever the link,
        laplace-torch's convention: the noise σ² is *not* in ``var`` (the predictive of y is
        N(mean, var + σ²I)); ``var`` ``[B, C, C]``, or its diagonal ``[B, C]`` with
        ``diagonal_output``."""
        self.check_link(link_approx)
        if self.gaussian_predictive:
            return mean, var.diagonal(dim1=-2, dim2=-1) if diagonal_output else var
        if link_approx == "probit":
            return self._probit(mean, var)
        if link_approx == "mc":
            if diagonal_output:
                var = torch.diag_embed(var.diagonal(dim1=-2, dim2=-1))
            return self.inverse_link(gaussian_samples(mean, var, n_samples, generator)).mean(0)
        return bridge(mean, var, normalise=link_approx == "bridge_norm")

    def _probit(self, mean: Tensor, var: Tensor) -> Tensor:
        return probit(mean, var)

    def joint_predictive(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
        """The joint Gaussian predictive of f over all inputs and outputs, ``[B·C]`` and
        ``[B·C, B·C]`` (regression and rewards: without σ², as laplace-torch's ``joint``)."""
        self.check_joint()
        return mean, cov

    def check_joint(self) -> None:
        """Refuse ``joint=True`` where the predictive is not a Gaussian.

        Raises:
            ValueError: naming what to call instead.
        """
        if not self.gaussian_predictive:
            raise ValueError(
                "joint=True is the regression glm predictive; for the joint covariance of f "
                "under any likelihood use glm_moments(x, joint=True)"
            )

    def probs_and_entropy(
        self, f: Tensor, scratch: Tensor | None = None, entropy: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`inverse_link` of f and the :meth:`entropy` of the distribution it gives
        (``None`` without ``entropy``), in one go (the softmax fuses them; no log of p is
        formed). With ``scratch`` (f's shape and dtype) f may be overwritten and p written
        into ``scratch``, so that a stream of samples allocates nothing of their size."""
        p = self.inverse_link(f)
        return p, self.entropy(p) if entropy else None

    def entropy(self, p: Tensor) -> Tensor:
        """The entropy of the predictive distribution of y with mean ``p`` (what
        :meth:`inverse_link` gives), one value per variable: per input for a softmax, per
        output for independent Bernoullis, per position for outputs with positions.

        Raises:
            ValueError: for a Gaussian predictive (its uncertainty splits into variances).
        """
        raise ValueError(
            f"the entropy is for classification and binary likelihoods; the {self.name} "
            "predictive is Gaussian: its uncertainty splits into variances"
        )

    def nn_predictive(
        self, fs: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The predictive from function samples ``fs`` ``[S, B, C]`` (the ``nn`` predictive):
        the mean of inverse_link(f), or for a Gaussian predictive the samples' mean and
        elementwise variance (denominator S − 1), ``[B, C]`` each, without σ² (laplace-torch's
        ``nn`` regression predictive)."""
        if not self.gaussian_predictive:
            return self.inverse_link(fs).mean(0)
        if fs.shape[0] < 2:  # one sample has no spread: its variance would read as certainty
            raise ValueError(
                f"the nn {self.name} predictive estimates a variance: n_samples must be at "
                f"least 2; got {fs.shape[0]}"
            )
        return fs.mean(0), fs.var(0)

    def uncertainty_parts(
        self, mean: Tensor, var: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A Gaussian predictive's ``(E[y], aleatoric, epistemic)`` variances per output from
        the linearised f's ``mean`` ``[B, C]`` and covariance ``var`` ``[B, C, C]``: the
        noise σ² and the variance of f, in the predictive's layout."""
        mean, epistemic = self.glm_predictive(mean, var, sigma_noise, diagonal_output=True)
        return mean, self._noise_var_like(sigma_noise, epistemic), epistemic

    def nn_uncertainty_parts(
        self, fs: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`uncertainty_parts` from function samples ``fs`` ``[S, B, C]``."""
        mean, epistemic = self.nn_predictive(fs, sigma_noise)
        return mean, self._noise_var_like(sigma_noise, epistemic), epistemic

    def _noise_var_like(self, sigma_noise: Tensor | float, like: Tensor) -> Tensor:
        noise = torch.as_tensor(self._noise_var(sigma_noise), dtype=like.dtype, device=like.device)
        return noise * torch.ones_like(like)

    def predictive_nll(
        self, pred: Tensor | tuple[Tensor, Tensor], y: Tensor, sigma_noise: Tensor | float = 1.0
    ) -> Tensor:
        """Σₙ −log p(yₙ) under a predictive ``pred`` of :meth:`glm_predictive` (σ: the
        Gaussian noise, added to a regression predictive's functional variance)."""
        return nll(pred, y, "sum")


def _check_outputs(f_shape: tuple[int, ...]) -> None:
    if len(f_shape) != 2:
        hint = outputs_hint(f_shape)
        raise ValueError(
            f"model outputs must have shape [batch, C]; got shape {list(f_shape)}{hint}"
        )


def outputs_hint(f_shape: tuple[int, ...]) -> str:
    """How to fit outputs with positions (the usual cause of outputs that are not 2-D)."""
    if len(f_shape) == 3:
        return ". For one output per position ([B, T, C]) pass outputs='sequence'"
    if len(f_shape) == 4:
        return ". For one output per pixel ([B, C, H, W]) pass outputs='channels_first'"
    return ""


def _per_output_targets(y: Tensor, f_shape: tuple[int, ...], kind: str) -> Tensor:
    """Targets ``[B, C]`` (``[B]`` accepted when C = 1) of a per-output likelihood."""
    _check_outputs(f_shape)
    batch, n_out = f_shape
    if not isinstance(y, Tensor):
        raise TypeError(f"targets y must be a torch.Tensor; got {type(y).__name__}")
    if y.shape == (batch,) and n_out == 1:
        y = y.unsqueeze(-1)
    if y.shape != (batch, n_out):
        expected = f"[{batch}, {n_out}]" + (f" or [{batch}]" if n_out == 1 else "")
        raise ValueError(f"{kind} targets y must have shape {expected}; got shape {list(y.shape)}")
    return y


def _real_targets(y: Tensor, f_shape: tuple[int, ...], kind: str) -> Tensor:
    """Real-valued targets ``[B, C]`` (``[B]`` when C = 1) of a per-output likelihood:
    floating point and finite."""
    y = _per_output_targets(y, f_shape, kind)
    if not y.is_floating_point():
        raise ValueError(f"{kind} targets y must be floating point; got dtype {y.dtype}")
    _check_finite(y)
    return y


def _check_finite(y: Tensor, name: str = "targets y") -> None:
    if y.is_floating_point() and not torch.isfinite(y).all():
        raise ValueError(f"{name} contain NaN or Inf values")


def get_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """Return a likelihood instance from its name or pass an instance through.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {likelihood!r}; expected one of {sorted(LIKELIHOODS)}"
        )
    return LIKELIHOODS[likelihood]()
