"""GGN-vector (and empirical-Fisher-vector) products over the data, matrix-free.

For a batch of vectors V ``[m, P]`` (rows), with ``torch.func``:

    GGN:  G vᵢ = Σₙ Jₙᵀ Λₙ (Jₙ vᵢ)       — jvp, then the output Hessian, then vjp;
    EF:   F vᵢ = Σₙ gₙ (gₙᵀ vᵢ),  gₙ = Jₙᵀ rₙ — jvp, a dot with rₙ, then vjp;
    Hessian: H vᵢ = ∇²θ Σₙ ℓₙ · vᵢ — a jvp of the gradient (forward-over-reverse).

One product costs one forward, m jvps and m vjps per batch (vmap'd over the m vectors), and
goes through the single data pass (progress bar, reduction across processes). On models with
convolutions the m vectors are looped over inside the batch instead (one forward with its
tangent and one backward each): vmap's convolution batching rules cost more than m single
convolutions (CNN: 2.3 against 1.45 gradient epochs a vector). Vmapped, at most
``VMAP_BLOCK`` vectors share a batch's forward: the working set of a batch grows with the
vectors (their tangents, cotangents and weight gradients), while the time a vector no longer
falls past about 30 (digits MLP: 0.90, 0.72, 0.72 epochs a vector for 10, 30, 90).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from ..checks import check_count
from ..datapass import accumulate, require_reiterable
from ..distributed import rank_seed
from ..likelihoods import Likelihood
from ..model_call import jvp, taking_turns
from ..params import ParameterSubset, check_model_mode
from .base import resolve_fisher_type
from .context import FitContext
from .first_batch import check_first_batch
from .hessian import batch_hessian_matvec
from .kfac import output_columns

__all__ = ["VMAP_BLOCK", "GGNOperator", "loops_over_vectors"]

VMAP_BLOCK = 32  # vectors vmapped through a batch at once (a larger block: more memory only)

_CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def loops_over_vectors(model: nn.Module) -> bool:
    """The default of ``vector_loop``: whether ``model`` has a convolution, where a loop over
    the vectors of a block beats vmap's batching rules (measured in docs/performance.md)."""
    return any(isinstance(m, _CONVOLUTIONS) for m in model.modules())


class GGNOperator:
    """The unit-scale GGN (or empirical Fisher) of the summed NLL as a matrix-free operator.

    Args:
        subset: the Bayesian parameters (θ at its current values).
        likelihood: the likelihood giving Λₙ (or rₙ for the empirical Fisher).
        loader: the data; iterated once per product.
        fisher_type: ``"exact"`` (GGN), ``"mc"`` (the Monte-Carlo Fisher: ``mc_samples``
            targets per example, the same at every product — drawn afresh from ``mc_seed`` at
            the start of each data pass, so the loader must yield its batches in the same
            order every pass), ``"empirical"`` or ``"hessian"``.
        progress: tqdm bar per data pass.
        vector_loop: how a block of m > 1 vectors goes through a batch: ``False`` vmaps the m
            jvps and vjps, ``True`` loops over them (one primal forward shared with each
            vector's tangent); ``None`` (default) loops on models with convolutions
            (:func:`loops_over_vectors`). The products agree to round-off either way.
        memory_check: ``check(B, C)`` before a batch's Λₙ or draws are formed (the fit's
            :attr:`~.context.FitContext.memory_check`), on the first batch and a larger one.

    Attributes:
        n_params: P. n_data, n_outputs, loss_sum: recorded by the first product (no extra
            pass over the data unless they are asked for before any product).
        n_matvecs: data passes done by :meth:`matvec` so far (cost accounting).
    """

    @classmethod
    def for_fit(
        cls,
        subset: ParameterSubset,
        likelihood: Likelihood,
        loader: Iterable,
        context: FitContext,
        mc_samples: int,
        seed: int,
        vector_loop: bool | None,
    ) -> GGNOperator:
        """The operator of a matrix-free backend's fit (its MC targets seeded apart from
        its probes: seed + 7919)."""
        return cls(
            subset,
            likelihood,
            loader,
            fisher_type=context.fisher_type,
            progress=context.progress,
            batch_size_fn=context.batch_size_fn,
            mc_samples=mc_samples,
            mc_seed=seed + 7919,
            vector_loop=vector_loop,
            memory_check=context.memory_check,
        )

    def __init__(
        self,
        subset: ParameterSubset,
        likelihood: Likelihood,
        loader: Iterable,
        *,
        fisher_type: str = "exact",
        progress: bool = False,
        batch_size_fn: Callable[[Any], int] | None = None,
        mc_samples: int = 1,
        mc_seed: int = 0,
        vector_loop: bool | None = None,
        memory_check: Callable[[int, int], None] | None = None,
    ) -> None:
        check_model_mode(subset.model)
        if vector_loop is not None and not isinstance(vector_loop, bool):
            raise TypeError(f"vector_loop must be True, False or None; got {vector_loop!r}")
        subset.check_weights()
        require_reiterable(loader, "a GGN-vector product operator (hutchinson, lanczos, operator)")
        self.subset, self.likelihood, self.loader = subset, likelihood, loader
        self.kind = resolve_fisher_type(fisher_type, "ggn operator")
        self.mc = fisher_type == "mc"
        check_count("mc_samples", mc_samples)
        self.mc_samples, self.mc_seed = mc_samples, mc_seed
        self._mc_gen: torch.Generator | None = None
        self.progress, self.batch_size_fn = progress, batch_size_fn
        self.n_params = subset.n_params
        self.dtype, self.device = subset.dtype, subset.device
        self.theta = subset.map_vector()
        self.vector_loop = loops_over_vectors(subset.model) if vector_loop is None else vector_loop
        self.n_matvecs = 0
        self._n_out: int | None = None
        self._memory_check, self._checked = memory_check, 0

        self._stats: tuple[int, Tensor] | None = None  # (N, Σ nll), from the first data pass

    def _data_stats(self) -> tuple[int, Tensor]:
        """N and the summed unit-scale NLL at θ*: recorded by the first product, or by a
        forward-only pass when they are asked for before any product."""
        if self._stats is None:

            def stats(x: Any, y: Tensor) -> dict[str, Tensor]:
                y = self._targets(x, y)
                with torch.no_grad():
                    f = self.subset.forward(self.theta, x)
                return {"loss": self.likelihood.nll_unit(f, y).sum()}

            sums = self._pass(stats, "ggn operator: statistics")
            self._stats = (int(sums["n_data"]), sums["loss"])
        return self._stats

    @property
    def n_data(self) -> int:
        """N, the number of examples."""
        return self._data_stats()[0]

    @property
    def loss_sum(self) -> Tensor:
        """Σₙ unit-scale NLL at θ*."""
        return self._data_stats()[1]

    @property
    def n_outputs(self) -> int:
        """C."""
        self._data_stats()
        return self._n_out

    def _targets(self, x: Any, y: Tensor) -> Tensor:
        if self._n_out is None:
            self._n_out = check_first_batch(self.subset, self.likelihood, x, y.shape[0], y)
        if self._memory_check is not None and y.shape[0] > self._checked:
            self._memory_check(y.shape[0], self._n_out)  # before Λ or a draw is formed
            self._checked = y.shape[0]
        return self.likelihood.check_targets(y, (y.shape[0], self._n_out))

    def _pass(self, step: Callable, desc: str) -> dict[str, Tensor]:
        return accumulate(
            self.loader,
            step,
            device=self.device,
            dtype=self.subset.input_dtype,
            progress=self.progress,
            desc=desc,
            batch_size_fn=self.batch_size_fn,
        )

    def batch_matvec(self, x: Any, y: Tensor, v: Tensor) -> Tensor:
        """The curvature of one batch ``(x, y)`` applied to the rows of ``v`` ``[m, P]``."""
        if self.mc and self._mc_gen is None:
            self._mc_gen = torch.Generator(device=self.device).manual_seed(rank_seed(self.mc_seed))
        return self._batch_matvec(x, y, v)[0]

    def _batch_matvec(self, x: Any, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(curvature of the batch applied to ``v``, Σ unit-scale NLL of the batch)."""
        if self.kind == "hessian":  # no output-side factor to share: blocks are independent
            step = len(v) if self.vector_loop else VMAP_BLOCK
            rows = [
                batch_hessian_matvec(
                    self.subset,
                    self.likelihood,
                    x,
                    y,
                    self.theta,
                    v[i : i + step],
                    loop=self.vector_loop,
                )
                for i in range(0, len(v), step)
            ]
            return torch.cat([r[0] for r in rows]), rows[0][1]
        if v.shape[0] <= (1 if self.vector_loop else VMAP_BLOCK):
            return self._products(x, y, v, {})
        weights: dict[str, Tensor] = {}  # Λₙ or the MC draws, once for all m vectors
        step = 1 if self.vector_loop else VMAP_BLOCK
        rows = [self._products(x, y, v[i : i + step], weights) for i in range(0, len(v), step)]
        return torch.cat([r[0] for r in rows]), rows[0][1]

    def _products(
        self, x: Any, y: Tensor, v: Tensor, weights: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The GGN / EF / MC products of one batch for the rows of ``v``; ``weights`` caches
        the output-side factor so that looped vectors share one MC draw."""
        lik, theta = self.likelihood, self.theta

        def f(th: Tensor) -> Tensor:
            return self.subset.forward(th, x)

        if v.shape[0] == 1:  # one primal forward serves the jvp and the vjp

            def with_tangent(th: Tensor) -> tuple[Tensor, Tensor]:
                out, jv = jvp(f, (th,), (v[0],))
                return out, jv.unsqueeze(0).detach()

            out, pullback, jv = vjp(with_tangent, theta, has_aux=True)
        else:  # two primal forwards: one vjp through m vmapped jvps was slower (LoRA 3.9 vs 3.1 s)
            out, pullback = vjp(f, theta)
            jv = vmap(lambda t: jvp(f, (theta,), (t,))[1])(v)  # [m, B, C]
        out = out.detach()
        if self.mc:  # Σₘ rₘ rₘᵀ / M with the pass's sampled output gradients rₘ
            if "r" not in weights:
                weights["r"] = output_columns(lik, "mc", out, y, self.mc_samples, self._mc_gen)
            cot = torch.einsum("kbc,kbd,mbd->mbc", weights["r"], weights["r"], jv)  # r [M, B, C]
        elif self.kind == "ggn":
            if "h" not in weights:
                weights["h"] = lik.output_hessian(out, y)
            cot = torch.einsum("bcd,mbd->mbc", weights["h"], jv)
        else:
            if "r" not in weights:
                weights["r"] = lik.output_grad(out, y)  # [B, C]
            r = weights["r"].unsqueeze(0)
            cot = r * (jv * r).sum(-1, keepdim=True)
        gv = pullback(cot[0])[0].unsqueeze(0) if cot.shape[0] == 1 else vmap(pullback)(cot)[0]
        return gv.detach(), lik.nll_unit(out, y).sum()

    def matvec(self, v: Tensor) -> Tensor:
        """G V over the whole data set for ``v`` of shape ``[m, P]`` (or ``[P]``)."""
        with taking_turns():  # torch.func's levels are process state
            single = v.dim() == 1
            vv = v.unsqueeze(0) if single else v
            if vv.dim() != 2 or vv.shape[1] != self.n_params:
                raise ValueError(
                    f"v must have shape [P] or [m, P] with P = {self.n_params}; got {list(v.shape)}"
                )
            vv = vv.to(self.device, self.dtype)

            def step(x: Any, y: Tensor) -> dict[str, Tensor]:
                gv, loss = self._batch_matvec(x, self._targets(x, y), vv)
                return {"gv": gv, "loss": loss}

            self.n_matvecs += 1
            if self.mc:  # the same samples at every product: a fixed operator
                self._mc_gen = torch.Generator(device=self.device).manual_seed(
                    rank_seed(self.mc_seed)
                )
            sums = self._pass(step, "ggn-vector product")
            if self._stats is None:
                self._stats = (int(sums["n_data"]), sums["loss"])
            gv = sums["gv"]
            return gv.squeeze(0) if single else gv

    __call__ = matvec

    def dense(self) -> Tensor:
        """G as a dense ``[P, P]`` matrix (P products; tests and small P only)."""
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        return self.matvec(eye)
