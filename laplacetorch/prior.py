"""The Gaussian prior N(μ₀, P₀⁻¹) on the Bayesian weights, P₀ = c·diag(δ).

δ has one of three forms: a scalar, one value per parameter tensor (laplace-torch's
"layerwise"; ``group_index`` ``[P]`` says which tensor each weight belongs to) or one value
per weight. c is a factor a fit may put on the prior (laplace-torch's subset-of-data GP
scales its prior covariance by M/N: c = N/M); it is 1 otherwise.

:class:`Prior` is the only place that knows these forms and the factor: the structures take
a :class:`Prior` (or a bare δ, c = 1) and ask it for their part (:func:`prior_on_block`), the
evidence asks it for log det P₀ and the scatter, MacKay for c·δ, the posterior views for
diag P₀. A new prior form is a change here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KINDS", "Prior", "expand_prior", "parse_prior", "prior_on_block", "single_group"]

#: the forms of δ: one value, one per parameter tensor (group), one per weight
KINDS = ("scalar", "group", "param")


@dataclass(frozen=True)
class Prior:
    """P₀ = c·diag(δ) on P weights in ``n_groups`` parameter tensors.

    Attributes:
        precision: δ as given, detached or not: a 0-d tensor, ``[n_groups]`` or ``[P]``
            (differentiable: the evidence's gradient in δ flows through every answer).
        kind: one of :data:`KINDS`, what ``precision`` is.
        group_index: ``[P]`` the parameter tensor of each weight.
        factor: c (1 but for laplace-torch's subset-of-data GP prior scaling).
    """

    precision: Tensor
    kind: str
    group_index: Tensor
    factor: float = 1.0

    @classmethod
    def of(
        cls,
        prior_precision: Tensor | float | Prior,
        group_index: Tensor,
        *,
        dtype: torch.dtype,
        device: torch.device,
        factor: float = 1.0,
    ) -> Prior:
        """A validated prior for δ = ``prior_precision`` on weights grouped by ``group_index``.

        Raises:
            TypeError: δ is not a number or a tensor.
            ValueError: wrong number of entries, or a value that is not positive and finite.
        """
        if isinstance(prior_precision, Prior):
            return prior_precision
        n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
        delta, kind = _parse(prior_precision, group_index.numel(), n_groups, dtype, device)
        return cls(delta, kind, group_index.to(device), float(factor))

    @property
    def n_params(self) -> int:
        """P."""
        return self.group_index.numel()

    @property
    def effective(self) -> Tensor:
        """c·δ in δ's own form (0-d, ``[n_groups]`` or ``[P]``)."""
        return self.precision * self.factor if self.factor != 1.0 else self.precision

    def expanded(self) -> Tensor:
        """c·δ as a 0-d tensor (scalar δ) or ``[P]``."""
        d = self.effective
        return d[self.group_index] if self.kind == "group" else d

    def diagonal(self) -> Tensor:
        """diag P₀ = c·δ, ``[P]``."""
        return self.expanded().expand(self.n_params)

    def logdet(self) -> Tensor:
        """log det P₀ = Σᵢ log(c·δᵢ)."""
        d = self.expanded()
        return self.n_params * d.log() if self.kind == "scalar" else d.log().sum()

    def quadratic(self, v: Tensor) -> Tensor:
        """vᵀ P₀ v for ``v`` ``[P]`` (the scatter (θ* − μ₀)ᵀ P₀ (θ* − μ₀))."""
        return (self.expanded() * v.square()).sum()

    def with_precision(self, prior_precision: Tensor | float) -> Prior:
        """The same form and factor with another δ (validated)."""
        return Prior.of(
            prior_precision,
            self.group_index,
            dtype=self.precision.dtype,
            device=self.precision.device,
            factor=self.factor,
        )


def _parse(
    prior_precision: Tensor | float,
    n_params: int,
    n_groups: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, str]:
    if isinstance(prior_precision, bool) or not isinstance(prior_precision, Tensor | float | int):
        raise TypeError(
            f"prior_precision must be a float or a tensor; got {type(prior_precision).__name__}"
        )
    delta = torch.as_tensor(prior_precision, dtype=dtype, device=device)
    if not torch.isfinite(delta).all() or (delta <= 0).any():
        raise ValueError(
            f"prior_precision must be positive and finite; got {delta.detach().cpu().tolist()}"
        )
    if delta.numel() == 1:
        return delta.reshape(()), "scalar"
    if delta.dim() != 1 or delta.numel() not in (n_groups, n_params):
        raise ValueError(
            f"prior_precision must have 1, {n_groups} (one per layer) or {n_params} (one per "
            f"parameter) entries; got shape {list(delta.shape)}"
        )
    return delta, "param" if delta.numel() == n_params else "group"


def parse_prior(
    prior_precision: Tensor | float | Prior,
    n_params: int,
    n_groups: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, str]:
    """The precision a structure's posterior uses, c·δ, in δ's form, and that form.

    A :class:`Prior` gives its c·δ (checked against ``n_params``); a bare δ is validated
    (c = 1).

    Returns:
        ``(delta, kind)``: a 0-d tensor and ``"scalar"``, ``[n_groups]`` and ``"group"`` or
        ``[P]`` and ``"param"``.

    Raises:
        TypeError: not a number, tensor or Prior.
        ValueError: wrong number of entries, or a value that is not positive and finite.
    """
    if isinstance(prior_precision, Prior):
        if prior_precision.n_params != n_params:
            raise ValueError(
                f"the prior covers {prior_precision.n_params} weights; the structure has {n_params}"
            )
        d = prior_precision.effective
        return d.to(device=device, dtype=dtype), prior_precision.kind
    return _parse(prior_precision, n_params, n_groups, dtype, device)


def expand_prior(
    prior_precision: Tensor | float | Prior,
    n_params: int,
    group_index: Tensor,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, bool]:
    """c·δ as a 0-d tensor (``True``: scalar) or ``[P]`` (``False``)."""
    n_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    delta, kind = parse_prior(prior_precision, n_params, n_groups, dtype=dtype, device=device)
    if kind == "group":
        return delta[group_index.to(device)], False
    return delta, kind == "scalar"


def prior_on_block(
    delta: Tensor, kind: str, group_index: Tensor, positions: Tensor | None, group: int | None
) -> Tensor:
    """δ on the block at ``positions`` of θ (``None``: all of θ), as a 0-d tensor when it is
    constant there, else a vector of the block's length.

    ``group`` is the block's single parameter group (``None`` if it spans several). A
    per-parameter δ that requires a gradient stays a vector, so that each entry gets its own
    gradient even where the values happen to coincide.
    """
    if kind == "scalar":
        return delta
    if kind == "group":
        if group is not None:
            return delta[group]
        return delta[group_index if positions is None else group_index[positions]]
    d = delta if positions is None else delta[positions]
    if not d.requires_grad and d.numel() and bool((d == d[0]).all()):
        return d[0]
    return d


def single_group(group_index: Tensor) -> int | None:
    """The one group of a block, or ``None`` when it spans several (or is empty)."""
    if group_index.numel() == 0:
        return None
    g0 = group_index[0]
    return int(g0) if bool((group_index == g0).all()) else None
