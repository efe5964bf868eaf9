"""Outputs with positions: sequences ``[B, T, C]`` and dense maps ``[B, C, H, W]``.

Each position is a likelihood term. The network's output is seen flattened, f ∈ ℝ^{B × T·C}
(positions first, classes last), and the likelihood over it is the sum of the per-position
likelihoods, so its output Hessian is block diagonal,

    Λₙ = blockdiag_t(Λₙₜ),   Sₙ = blockdiag_t(Sₙₜ),

with the blocks of ignored positions (targets equal to ``ignore_index``) zero. Every backend
then computes Σₙ Σₜ Jₙₜᵀ Λₙₜ Jₙₜ unchanged (exact type-2 KFAC pulls back the T·C columns of
Sₙ, one position at a time), and the predictive is taken per position from the diagonal blocks
of J Π⁻¹ Jᵀ. ``"sequence"``: outputs ``[B, *positions, C]``; ``"channels_first"``: outputs
``[B, C, *positions]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .likelihoods import Likelihood

__all__ = ["LAYOUTS", "OutputLayout", "PositionwiseLikelihood"]

LAYOUTS = ("sequence", "channels_first")


@dataclass
class OutputLayout:
    """How the model lays out positions and classes; the shape of its last output."""

    kind: str
    example_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown output layout {self.kind!r}; expected one of {LAYOUTS}")

    @property
    def n_classes(self) -> int:
        if self.example_shape is None:
            raise RuntimeError("the output layout has not seen an output yet")
        return self.example_shape[-1 if self.kind == "sequence" else 0]

    def flatten(self, out: Tensor, record: bool = True) -> Tensor:
        """``[B, T·C]`` from the model's output (positions first, classes last); ``record``
        keeps its shape (for the predictive's layout)."""
        if out.dim() < 3:
            raise ValueError(
                f"outputs={self.kind!r} expects model outputs with positions, [B, T, C] or "
                f"[B, C, H, W]; got shape {list(out.shape)}"
            )
        if record:
            self.example_shape = tuple(out.shape[1:])
        if self.kind == "channels_first":
            out = out.movedim(1, -1)
        return out.flatten(1)  # a view; [0, T·C] for an empty batch too

    def unflatten(self, f: Tensor) -> Tensor:
        """The model's layout ``[..., B, T, C]`` / ``[..., B, C, H, W]`` from ``[..., B, T·C]``."""
        shape = self.example_shape
        if self.kind == "sequence":
            return f.reshape(*f.shape[:-1], *shape)
        f = f.reshape(*f.shape[:-1], *shape[1:], shape[0])
        return f.movedim(-1, -len(shape))


class PositionwiseLikelihood(Likelihood):
    """The sum over positions of ``base``'s likelihood, on flattened outputs ``[B, T·C]``.

    Args:
        base: the per-position likelihood (classification or regression).
        layout: the output layout, filled with the output shape by the forward passes.
        ignore_index: classification targets with this value are not likelihood terms.
    """

    def __init__(self, base: Likelihood, layout: OutputLayout, ignore_index: int = -100) -> None:
        if base.name not in ("classification", "regression"):
            raise ValueError(
                f"outputs with positions take a classification or regression "
                f"likelihood; got {base.name!r}"
            )
        self.base, self.layout, self.ignore_index = base, layout, ignore_index
        self.name, self.has_noise, self.links = base.name, base.has_noise, base.links
        self.gaussian_predictive = base.gaussian_predictive

    def check_sigma_noise(self, sigma_noise: Tensor) -> None:
        if sigma_noise.numel() > 1:
            raise ValueError(
                f"outputs={self.layout.kind!r} take one sigma_noise for every position and "
                f"output; got {sigma_noise.numel()} values (a noise per output is for outputs "
                "[B, C])"
            )
        self.base.check_sigma_noise(sigma_noise)

    # ----------------------------------------------------------------- shapes
    def _per_position(self, f: Tensor) -> Tensor:
        c = self.layout.n_classes
        return f.reshape(*f.shape[:-1], f.shape[-1] // c, c)  # [..., B, T, C]

    def _n_positions(self, b: int, numel: int) -> int:
        """T of a prediction of ``numel`` elements per output column over ``b`` examples (an
        empty batch: the fit's T)."""
        if b:
            return numel // b
        return math.prod(self.layout.example_shape) // self.layout.n_classes

    def _mask(self, y: Tensor | None, f: Tensor) -> Tensor:
        """``[B, T]``: 1 for a likelihood term, 0 for an ignored position."""
        ones = f.new_ones(f.shape[0], f.shape[1] // self.layout.n_classes)
        if y is None or self.name != "classification":
            return ones
        return (y != self.ignore_index).to(f.dtype)

    def check_targets(self, y: Tensor, f_shape: tuple[int, ...]) -> Tensor:
        if not isinstance(y, Tensor):
            raise TypeError(f"targets y must be a torch.Tensor; got {type(y).__name__}")
        c = self.layout.n_classes
        batch, n_pos = f_shape[0], f_shape[1] // c
        if self.name == "regression":
            return self.base.check_targets(
                self.layout.flatten(y, record=False) if y.dim() > 2 else y, f_shape
            )
        flat = y.reshape(y.shape[0], -1) if y.dim() >= 2 else y
        if flat.shape != (batch, n_pos):
            raise ValueError(
                f"targets y must have one class index per position: the outputs have {n_pos} "
                f"positions per example, so y of shape [{batch}, {n_pos}]; got shape "
                f"{list(y.shape)}. A fit has one number of positions T, its first batch's: "
                f"pad the sequences to one length, the padding's targets "
                f"ignore_index={self.ignore_index}"
            )
        keep = flat != self.ignore_index
        checked = self.base.check_targets(flat[keep], (int(keep.sum()), c))
        return flat.long().masked_scatter(keep, checked)

    def n_terms(self, y: Tensor) -> int:
        if self.name != "classification":
            return y.numel()
        return int((y != self.ignore_index).sum())

    def check_outputs(self, f: Tensor) -> None:
        self.base.check_outputs(self._per_position(f).reshape(-1, self.layout.n_classes))

    # ----------------------------------------------------------------- curvature
    def nll_unit(self, f: Tensor, y: Tensor) -> Tensor:
        if self.name == "regression":
            return self.base.nll_unit(f, y)
        fp = self._per_position(f)
        nll = F.cross_entropy(
            fp.reshape(-1, fp.shape[-1]),
            y.reshape(-1),
            ignore_index=self.ignore_index,
            reduction="none",
        )
        return nll.view(f.shape[0], -1).sum(1)

    def _block_diagonal(self, blocks: Tensor, mask: Tensor) -> Tensor:
        """``[B, T·C, T·K]`` from per-position ``[B, T, C, K]``, ignored positions zero."""
        b, t, c, k = blocks.shape
        eye = torch.eye(t, dtype=blocks.dtype, device=blocks.device)
        out = torch.einsum("btck,ts->btcsk", blocks * mask[:, :, None, None], eye)
        return out.reshape(b, t * c, t * k)

    def _positions_of(self, method, f: Tensor, y: Tensor | None) -> Tensor:
        fp = self._per_position(f)
        b, t, c = fp.shape
        blocks = method(fp.reshape(b * t, c))
        return self._block_diagonal(blocks.view(b, t, c, -1), self._mask(y, f))

    def hessian_sqrt(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return self._positions_of(self.base.hessian_sqrt, f, y)

    def output_hessian(self, f: Tensor, y: Tensor | None = None) -> Tensor:
        return self._positions_of(self.base.output_hessian, f, y)

    def sample_targets(
        self, f: Tensor, n_samples: int, generator: torch.Generator | None, y: Tensor | None = None
    ) -> Tensor:
        fp = self._per_position(f)
        b, t, c = fp.shape
        ys = self.base.sample_targets(fp.reshape(b * t, c), n_samples, generator)
        if self.name == "regression":
            return ys.reshape(n_samples, b, t * c)
        ys = ys.reshape(n_samples, b, t)
        if y is not None:
            ys = torch.where(y == self.ignore_index, torch.full_like(ys, self.ignore_index), ys)
        return ys

    def _noise_var(self, sigma_noise):
        return self.base._noise_var(sigma_noise)

    def log_likelihood_from_loss(
        self, loss_sum, n_data, n_outputs, sigma_noise=1.0, temperature=1.0
    ):
        return self.base.log_likelihood_from_loss(
            loss_sum, n_data, n_outputs, sigma_noise, temperature
        )

    # ----------------------------------------------------------------- predictive
    def inverse_link(self, f: Tensor) -> Tensor:
        return self.layout.unflatten(self.base.inverse_link(self._per_position(f)).flatten(-2))

    def entropy(self, p: Tensor) -> Tensor:
        """The base entropy at each position of ``p`` in the model's layout: ``[..., B, T]``
        (sequence) or ``[..., B, H, W]`` (channels first)."""
        if self.name != "classification":
            return super().entropy(p)
        return self.base.entropy(p.movedim(-len(self.layout.example_shape), -1)
                                 if self.layout.kind == "channels_first" else p)  # fmt: skip

    def probs_and_entropy(
        self, f: Tensor, scratch: Tensor | None = None, entropy: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        if self.name != "classification":
            return super().probs_and_entropy(f, scratch, entropy)
        work = None if scratch is None else self._per_position(scratch)
        # [..., B, T', C] and [..., B, T']
        p, h = self.base.probs_and_entropy(self._per_position(f), work, entropy)
        shape = self.layout.example_shape
        positions = shape[:-1] if self.layout.kind == "sequence" else shape[1:]
        p = self.layout.unflatten(p.flatten(-2))
        return p, None if h is None else h.reshape(*h.shape[:-1], *positions)

    def _blocks(self, var: Tensor) -> Tensor:
        """The per-position blocks ``[B·T, C, C]`` of ``[B, T·C, T·C]``."""
        c = self.layout.n_classes
        b, t = var.shape[0], var.shape[1] // c
        blocks = var.view(b, t, c, t, c).diagonal(dim1=1, dim2=3)  # [B, C, C, T]
        return blocks.permute(0, 3, 1, 2).reshape(b * t, c, c)

    def _layout(self, pred, b: int):
        c = self.layout.n_classes
        if isinstance(pred, tuple):  # regression: (mean [B, T, C], var [B, T, C(, C)])
            t = self._n_positions(b, pred[0].numel() // c)
            mean = self.layout.unflatten(pred[0].reshape(b, t * c))
            var = pred[1]
            return mean, var.reshape(b, t, c, c) if var.dim() == 3 else var.reshape(b, t, c)
        t = self._n_positions(b, pred.numel() // c)
        return self.layout.unflatten(pred.reshape(b, t * c))

    def glm_predictive(
        self,
        mean,
        var,
        sigma_noise=1.0,
        link_approx="probit",
        n_samples=100,
        generator=None,
        diagonal_output=False,
    ):
        """Per position: the base predictive of (μₜ, Σₜₜ), in the model's output layout."""
        c = self.layout.n_classes
        pred = self.base.glm_predictive(
            mean.reshape(-1, c),
            self._blocks(var),
            sigma_noise,
            link_approx,
            n_samples,
            generator,
            diagonal_output,
        )
        return self._layout(pred, mean.shape[0])

    def nn_predictive(self, fs: Tensor, sigma_noise=1.0):
        c = self.layout.n_classes
        pred = self.base.nn_predictive(fs.reshape(fs.shape[0], -1, c), sigma_noise)
        return self._layout(pred, fs.shape[1])

    def predictive_nll(self, pred, y: Tensor, sigma_noise=1.0) -> Tensor:
        c = self.layout.n_classes
        if isinstance(pred, tuple):  # Gaussian: (mean, var) per position
            mean, var = pred
            var = var.reshape(-1, c, c) if var.dim() == mean.dim() + 1 else var.reshape(-1, c)
            return self.base.predictive_nll((mean.reshape(-1, c), var), y, sigma_noise)
        probs = pred.movedim(1, -1) if self.layout.kind == "channels_first" else pred
        probs, y = probs.reshape(-1, c), y.reshape(-1)
        keep = y != self.ignore_index
        return self.base.predictive_nll(probs[keep], y[keep])
