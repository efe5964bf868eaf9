"""The predictive methods of :class:`~laplacetorch.Laplace`, with laplace-torch's signatures.

The linearised (``glm``) predictive is f(x) ~ N(f(x; θ*), J Σ Jᵀ), J Σ Jᵀ computed by the
structure from Jacobian sources (:mod:`laplacetorch.predictive`); the ``nn`` predictive runs
the network at weight draws. The likelihood turns moments or samples into the predictive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .checks import check_count, check_generator
from .links import gaussian_samples
from .memory import MemoryBudgetError, memory_limit
from .model_call import WithKeywords, taking_turns
from .params import check_model_mode
from .persistence import check_weights_at_mean
from .predictive import dense_jacobians, function_samples, jacobian_sources, n_out_of
from .predictive_memory import PredictiveRequest, check_predictive_memory
from .prior import Prior
from .sampled_predictive import (
    SampleStream,
    Uncertainty,
    sample_bytes,
    sample_tiles,
    streamed_mean,
    streamed_uncertainty,
)
from .top_k_predictive import TopK, top_k_predictive

if TYPE_CHECKING:
    from .likelihoods import Likelihood
    from .params import ParameterSubset

__all__ = ["PRED_TYPES", "Prediction"]

PRED_TYPES = ("glm", "nn")


def _check_pred_type(pred_type: str) -> None:
    if pred_type not in PRED_TYPES:
        raise ValueError(f"unknown pred_type {pred_type!r}; expected one of {PRED_TYPES}")


class Prediction:
    """``__call__``, ``glm_moments``, ``functional_samples``, ``predictive_samples``: the one
    predictive (:meth:`glm_chunks`, :meth:`nn_function_samples`) that the grid search uses
    too. The host (:class:`~laplacetorch.Laplace`) gives the attributes declared here and
    ``structure``, ``mean``, ``inputs``, ``prior``, ``prior_at``, ``scale``, ``sample``,
    ``sigma_noise`` and ``_fitted``."""

    subset: ParameterSubset
    likelihood: Likelihood
    model: nn.Module
    memory_budget: int
    memory_limit: int | None
    enable_backprop: bool
    batch_size_fn: Callable[[Any], int] | None

    def _check_inputs(self, x: Any, fitting: bool = True) -> tuple[Any, int]:
        self._fitted()
        check_model_mode(self.model)
        check_weights_at_mean(self)
        lik = self.likelihood
        shape = self.inputs.shape if fitting else lik.predictive_input_shape(self.inputs.shape)
        return self.inputs.prepare(
            x, self.subset.device, self.subset.input_dtype, self.batch_size_fn, shape=shape
        )

    def _check_memory(self, x: Any, n: int, pred_type: str = "glm", **request: Any) -> None:
        """Refuse a predictive of the prepared inputs ``x`` (``n`` examples) whose peak
        exceeds ``memory_limit``, before any Jacobian or covariance is formed
        (:mod:`~laplacetorch.predictive_memory`; C from the fit, or for outputs with
        positions, or a fit that did not record it, from one example's forward)."""
        subset, layout = self.subset, self.subset.output_layout
        if n == 0:
            return
        c = self._output_width(x)
        dense = self.enable_backprop or not self.structure.layouts()
        classes = None if layout is None else layout.n_classes
        r = PredictiveRequest(pred_type, n, c, subset.n_params, self._itemsize(), classes,
                              dense=dense, memory_budget=self.memory_budget, **request)  # fmt: skip
        check_predictive_memory(r, memory_limit(self.memory_limit, subset.device))

    def _output_width(self, x: Any) -> int:
        """C of prepared inputs ``x``: from the fit, or for outputs with positions (T·C
        depends on the input) or a fit that did not record it, from one example's forward."""
        c = None if self.subset.output_layout is not None else self._fitted().n_outputs
        return n_out_of(self.subset, x) if c is None else c  # None: an empty shard's fit

    def _itemsize(self) -> int:
        """Bytes of one number of the predictive (the statistics dtype)."""
        return torch.finfo(self.subset.dtype).bits // 8

    def glm_moments(
        self,
        x: Any,
        prior_precision: Tensor | float | None = None,
        joint: bool = False,
        fitting: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Mean ``[B, C]`` and covariance ``[B, C, C]`` of the linearised f(x), no noise (at
        another δ when given); ``joint=True``: mean ``[B·C]`` and the covariance of all
        outputs of all inputs ``[B·C, B·C]`` (from dense Jacobian rows, B·C·P memory).
        ``fitting``: inputs like the training inputs (reward modelling: pairs)."""
        with taking_turns():  # torch.func's levels are process state
            x, n = self._check_inputs(x, fitting)
            prior = self.prior_at(prior_precision)  # with the fit's prior factor
            if n == 0:  # no Jacobian rows to compute: the shapes of the outputs, empty
                with torch.set_grad_enabled(self.enable_backprop):
                    f = self.subset.call(x)
                var = f.new_zeros(*f.shape, f.shape[-1])
                return (f.reshape(-1), var.reshape(0, 0)) if joint else (f, var)
            self._check_memory(x, n, joint=joint)
            if joint:
                parts = list(dense_jacobians(self.subset, x, n, self.memory_budget, True))
                jac = torch.cat([p.jac for p in parts])
                f = torch.cat([p.f for p in parts])
                var = self.structure.functional_variance(
                    jac.reshape(1, -1, jac.shape[-1]), prior, self.scale()
                )
                return f.reshape(-1), var[0]
            means, variances = [], []
            for f, (var,) in self.glm_chunks(x, n, [prior]):
                means.append(f)
                variances.append(var)
            return torch.cat(means), torch.cat(variances)

    def glm_chunks(
        self, x: Any, n: int, priors: list[Prior]
    ) -> Iterator[tuple[Tensor, list[Tensor]]]:
        """The one GLM pass: for each chunk of prepared inputs ``x`` (``n`` examples), f
        ``[b, C]`` and J Π⁻¹ Jᵀ ``[b, C, C]`` under each prior of ``priors`` (the chunk's
        Jacobian source built once for all of them; the grid search's many δ)."""
        structure, s = self.structure, self.scale()
        variances = [structure.variance_of(p, s) for p in priors]  # validated once a call
        sources = (
            dense_jacobians(self.subset, x, n, self.memory_budget, keep_graph=True)
            if self.enable_backprop  # the layer-factor sources are built without that graph
            else jacobian_sources(self.subset, x, n, structure.layouts(), self.memory_budget)
        )
        chunks = iter(sources)
        while True:  # one chunk alive at a time, each computed under the transforms' lock
            with taking_turns():  # (not held while the caller works on a chunk)
                source = next(chunks, None)
                if source is None:
                    return
                out = source.f, [var(source) for var in variances]
            yield out

    def nn_function_samples(
        self, x: Any, prior: Prior, n_samples: int, generator: torch.Generator | None
    ) -> Tensor:
        """``[S, B, C]`` network outputs at S weight draws θ* + ε, ε ~ N(0, Π⁻¹) under
        ``prior``, for prepared inputs ``x`` (the ``nn`` predictive and its grid search)."""
        with taking_turns():  # torch.func's levels are process state
            thetas = self.sample(n_samples, generator, prior_precision=prior)
            return function_samples(self.subset, thetas, x, keep_graph=self.enable_backprop)

    def functional_samples(
        self,
        x: Any,
        pred_type: str = "glm",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        fitting: bool = False,
    ) -> Tensor:
        """``[S, B, C]`` samples of f: of the linearised model (``glm``; with only the
        per-output variances when ``diagonal_output``), or of the network at weight draws
        (``nn``)."""
        with taking_turns():  # torch.func's levels are process state
            check_generator(generator)
            _check_pred_type(pred_type)
            check_count("n_samples", n_samples)
            if pred_type == "glm":
                mean, var = self.glm_moments(x, fitting=fitting)
                if diagonal_output:
                    var = torch.diag_embed(var.diagonal(dim1=-2, dim2=-1))
                return gaussian_samples(mean, var, n_samples, generator)
            x, n = self._check_inputs(x, fitting)
            self._check_memory(x, n, "nn", n_samples=n_samples)
            return self.nn_function_samples(x, self.prior, n_samples, generator)

    def predictive_samples(
        self,
        x: Any,
        pred_type: str = "glm",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        fitting: bool = False,
    ) -> Tensor:
        """``[S, B, C]`` samples of the predictive mean: probabilities (classification /
        binary; reward modelling with ``fitting``) or f (regression, rewards)."""
        with taking_turns():  # torch.func's levels are process state
            check_generator(generator)
            fs = self.functional_samples(
                x, pred_type, n_samples, diagonal_output, generator, fitting
            )
            lik = self.likelihood.for_fitting() if fitting else self.likelihood
            return lik.inverse_link(fs)

    def __call__(
        self,
        x: Any,
        pred_type: str = "glm",
        joint: bool = False,
        link_approx: str = "probit",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: torch.Generator | None = None,
        fitting: bool = False,
        **model_kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The posterior predictive at ``x`` (laplace-torch's signature and conventions).

        Classification / binary: probabilities ``[B, C]``. Regression: ``(f_mu [B, C],
        f_var [B, C, C])`` of f, without σ² (``diagonal_output``: ``f_var [B, C]``;
        ``joint``: ``f_mu [B·C]``, ``f_cov [B·C, B·C]``; ``nn``: elementwise ``[B, C]``).

        Args:
            x: inputs like the training inputs.
            pred_type: ``"glm"`` (linearised) or ``"nn"`` (network at weight draws).
            joint: the joint Gaussian over all inputs (regression, ``glm``).
            link_approx: ``"probit"``, ``"bridge"``, ``"bridge_norm"`` or ``"mc"``.
            n_samples, generator: for ``mc`` and ``nn``.
            diagonal_output: drop the covariances between outputs (regression ``glm``;
                the ``mc`` link).
            fitting: reward modelling: the predictive of preference pairs (as when fitted)
                rather than of single items' rewards (no effect for other likelihoods).
            **model_kwargs: constant keyword arguments of every model call (flags such as
                ``output_hidden_states=False``; per-example tensors go in a mapping x), for
                both predictives.
        """
        with taking_turns():  # torch.func's levels are process state
            check_generator(generator)
            if model_kwargs:
                x = WithKeywords(x, model_kwargs)
            _check_pred_type(pred_type)
            lik = self.likelihood.for_fitting() if fitting else self.likelihood
            lik.check_link(link_approx)
            check_count("n_samples", n_samples)
            if joint and pred_type == "nn":
                raise ValueError("joint=True is the regression glm predictive, not pred_type='nn'")
            if pred_type == "nn":
                fs = self.functional_samples(
                    x, "nn", n_samples, generator=generator, fitting=fitting
                )
                return lik.nn_predictive(fs, self.sigma_noise)
            if joint:
                lik.check_joint()  # before any Jacobian is formed
                return lik.joint_predictive(*self.glm_moments(x, joint=True, fitting=fitting))
            xp, n = self._check_inputs(x, fitting)
            if n == 0:
                mean, var = self.glm_moments(x, fitting=fitting)
                return lik.glm_predictive(
                    mean, var, self.sigma_noise, link_approx, n_samples, generator, diagonal_output
                )
            if link_approx == "mc" and not diagonal_output and not lik.gaussian_predictive:
                c = self._output_width(xp)
                if c * c * self._itemsize() > self.memory_budget:  # not one example's [C, C] fits
                    tiles = self._function_sample_tiles(xp, n, "glm", n_samples, generator, c)
                    return streamed_mean(lik, tiles, n_samples, n)
            self._check_memory(xp, n, link_approx=link_approx, n_samples=n_samples)
            return self._linked_chunks(
                xp, n, lambda f, var: lik.glm_predictive(
                    f, var, self.sigma_noise, link_approx, n_samples, generator, diagonal_output
                )
            )  # fmt: skip

    def _linked_chunks(self, x: Any, n: int, link: Callable[[Tensor, Tensor], Any]) -> Any:
        """``link(f, var)`` per chunk of the prepared inputs ``x`` (no ``[B, C, C]`` held),
        joined along the batch (each part of a tuple)."""
        parts = [link(f, var) for f, (var,) in self.glm_chunks(x, n, [self.prior_at(None)])]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts, strict=True))
        return torch.cat(parts)

    def uncertainty(
        self,
        x: Any,
        pred_type: str = "glm",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
        fitting: bool = False,
    ) -> Uncertainty:
        """The predictive uncertainty at ``x``, per input (per output, per position), split
        into its aleatoric and epistemic parts (:class:`Uncertainty`).

        Classification / binary: the predictive entropy, the expected entropy and the mutual
        information, from ``n_samples`` function samples streamed in blocks (linearised
        samples f + J ε for ``glm``, the network at weight draws for ``nn``): no covariance
        and no ``[S, B, T, V]`` tensor is formed, so full vocabularies fit. Gaussian
        likelihoods: σ², the variance of f and their sum.
        """
        with taking_turns():  # torch.func's levels are process state
            check_generator(generator)
            _check_pred_type(pred_type)
            check_count("n_samples", n_samples)
            lik = self.likelihood.for_fitting() if fitting else self.likelihood
            if lik.gaussian_predictive:
                sigma = self.sigma_noise
                if pred_type == "nn":
                    fs = self.functional_samples(x, "nn", n_samples, generator=generator,
                                                 fitting=fitting)  # fmt: skip
                    mean, aleatoric, epistemic = lik.nn_uncertainty_parts(fs, sigma)
                else:
                    xp, n = self._check_inputs(x, fitting)
                    if n == 0:
                        parts = lik.uncertainty_parts(*self.glm_moments(x, fitting=fitting), sigma)
                    else:
                        self._check_memory(xp, n, link_approx="probit", n_samples=n_samples)
                        parts = self._linked_chunks(
                            xp, n, lambda f, var: lik.uncertainty_parts(f, var, sigma)
                        )
                    mean, aleatoric, epistemic = parts
                return Uncertainty(aleatoric + epistemic, aleatoric, epistemic, mean)
            x, n = self._check_inputs(x, fitting)
            tiles = self._function_sample_tiles(x, n, pred_type, n_samples, generator)
            return streamed_uncertainty(lik, tiles, n_samples, n)

    def top_k(
        self, x: Any, k: int, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> TopK:
        """The predictive over each prediction's ``k`` likeliest outputs at θ* (per position
        for sequences: the top-k tokens), renormalised over them: E[softmax(f_K)] from
        ``n_samples`` linearised samples (:mod:`~laplacetorch.top_k_predictive`), the
        vocabulary never sampled where the model ends in a linear head. Classification
        only.

        Raises:
            ValueError: another likelihood; ``k`` not in [1, C]; an empty batch.
        """
        with taking_turns():  # torch.func's levels are process state
            check_generator(generator)
            if self.likelihood.name != "classification":
                raise ValueError(
                    f"top_k is the predictive over the likeliest classes of a softmax; the "
                    f"likelihood is {self.likelihood.name!r}"
                )
            check_count("k", k)
            check_count("n_samples", n_samples)
            x, n = self._check_inputs(x, fitting=False)
            if n == 0:
                raise ValueError("top_k needs at least one input; got an empty batch")
            layout = self.subset.output_layout
            width = self._output_width(x)
            classes = width if layout is None else layout.n_classes
            if k > classes:
                raise ValueError(f"k must be at most the number of classes {classes}; got {k}")
            _, itemsize = self._sample_fits(x, n, width)
            prior, s = self.prior, self.scale()

            def draw(m: int) -> Tensor:
                return self.structure.sample(m, prior, s, generator)

            stream = SampleStream(self.mean, x, draw, n_samples, n, width, itemsize,
                                  self.memory_budget)  # fmt: skip
            return top_k_predictive(self.subset, stream, k, classes)

    def _sample_fits(self, x: Any, n: int, width: int | None = None) -> tuple[int, int]:
        """``(outputs, itemsize)`` of one function sample of the ``n`` prepared inputs
        ``x`` (``width`` outputs each, when known), refused before any draw when it would
        exceed ``memory_limit``."""
        width = self._output_width(x) if width is None else width
        n_out, itemsize = n * width, self._itemsize()
        limit = memory_limit(self.memory_limit, self.subset.device)
        if sample_bytes(n_out, itemsize) > limit:
            raise MemoryBudgetError(
                f"one function sample of {n} inputs ({n_out} outputs) needs "
                f"{sample_bytes(n_out, itemsize):,} bytes, over the limit of {limit:,}: "
                "predict a smaller batch"
            )
        return n_out, itemsize

    def _function_sample_tiles(
        self,
        x: Any,
        n: int,
        pred_type: str,
        n_samples: int,
        generator: torch.Generator | None,
        width: int | None = None,
    ) -> Iterator[tuple[slice, Tensor]]:
        """Function samples of ``n`` prepared inputs ``x`` in tiles sized by
        ``memory_budget`` (at θ* and the current prior); refused before any draw when one
        sample of the batch's outputs would exceed ``memory_limit``."""
        width = self._output_width(x) if width is None else width
        _, itemsize = self._sample_fits(x, n, width)
        prior, s = self.prior, self.scale()

        def draw(k: int) -> Tensor:
            return self.structure.sample(k, prior, s, generator)

        stream = SampleStream(self.mean, x, draw, n_samples, n, width, itemsize,
                              self.memory_budget)  # fmt: skip
        return sample_tiles(pred_type, self.subset, stream)
