"""The problem registry of the backend contract test (tests/backends/test_backend_contract.py).

A problem is a tiny float64 model, a likelihood, a subset of weights and data; for each it
gives the dense float64 oracles every backend is checked against: the GGN G from
``torch.func`` (conftest's ``dense_ggn``), the log-likelihood at θ* computed from the model's
outputs by hand, Jacobians of test inputs, and the dense Laplace algebra of Π = s·G + c·δ·I
(evidence, its gradient, J Π⁻¹ Jᵀ) for any G, so a backend's own curvature can be put in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from conftest import DT, batches, dense_ef, dense_ggn, make_cnn, make_data, make_mlp

from laplacetorch import Laplace

#: the hyperparameters every problem's Laplace is built with (σ only for regression)
PRIOR, PRIOR_MEAN, SIGMA = 0.8, 0.05, 0.7


def subnetwork_mask(model: torch.nn.Module) -> torch.Tensor:
    """A seeded boolean mask over all weights (about 40% of them)."""
    total = sum(p.numel() for p in model.parameters())
    return torch.rand(total, generator=torch.Generator().manual_seed(3)) < 0.4


@dataclass(frozen=True)
class Problem:
    """(model, likelihood, subset, data); ``subset`` "subnetwork" is a weight mask."""

    model: str
    likelihood: str
    subset: str
    n: int = 12

    @property
    def name(self) -> str:
        return f"{self.model}-{self.likelihood}-{self.subset}"

    def make_model(self) -> torch.nn.Module:
        return make_mlp() if self.model == "mlp" else make_cnn()

    @cached_property
    def data(self):
        """Training (x, y), validation (x, y) and test inputs."""
        x, y = make_data(self.model, self.likelihood, n=self.n + 10, seed=1)
        return (x[: self.n], y[: self.n]), (x[self.n : self.n + 6], y[self.n : self.n + 6]), x[-4:]

    def loader(self, lo: int = 0, hi: int | None = None, size: int = 5):
        (x, y), _, _ = self.data
        return batches(x[lo:hi], y[lo:hi], size)

    def laplace(self, backend: str, options: dict | None = None, model=None, **kw) -> Laplace:
        model = self.make_model() if model is None else model
        return Laplace(
            model,
            self.likelihood,
            self.subset,
            backend,
            subnetwork=subnetwork_mask(model) if self.subset == "subnetwork" else None,
            prior_precision=PRIOR,
            prior_mean=PRIOR_MEAN,
            sigma_noise=SIGMA if self.likelihood == "regression" else 1.0,
            backend_options=options,
            **kw,
        )

    # ----------------------------------------------------------------- oracles
    @cached_property
    def subset_of(self):
        """A Laplace object's subset (for f(θ, x)), built without fitting."""
        return self.laplace("full").subset

    @property
    def scale(self) -> float:
        return 1 / SIGMA**2 if self.likelihood == "regression" else 1.0

    @cached_property
    def ggn(self) -> torch.Tensor:
        (x, y), _, _ = self.data
        return dense_ggn(self.subset_of, x, y, self.likelihood)

    def ggn_of(self, x, y) -> torch.Tensor:
        return dense_ggn(self.subset_of, x, y, self.likelihood)

    def curvature_of(self, kind: str, x=None, y=None) -> torch.Tensor:
        """The dense unit-scale curvature of the summed NLL of (x, y) (default: the training
        data) for a curvature type: "ggn" (also what "mc" estimates), "ef" (Σₙ gₙgₙᵀ of the
        per-example gradients) or "hessian" (∂²/∂θ² by ``torch.func.hessian``)."""
        if x is None:
            (x, y), _, _ = self.data
        if kind == "ggn":
            return self.ggn_of(x, y)
        if kind == "ef":
            return dense_ef(self.subset_of, x, y, self.likelihood)
        assert kind == "hessian", kind
        sub = self.subset_of
        return torch.func.hessian(lambda t: self.unit_nll(sub.forward(t, x), y))(self.theta)

    def unit_nll(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σₙ of the unit-scale NLL (σ = 1 for regression), by hand."""
        if self.likelihood == "classification":
            return F.cross_entropy(f, y, reduction="sum")
        if self.likelihood == "binary":
            return F.binary_cross_entropy_with_logits(f, y, reduction="sum")
        return 0.5 * ((y - f) ** 2).sum()

    def scale_of(self, kind: str) -> float:
        """How G scales into Π: 1/σ² (σ⁻⁴ for the empirical Fisher, whose gradients each
        carry 1/σ²); 1 without a noise."""
        return self.scale**2 if kind == "ef" else self.scale

    @cached_property
    def block_mask(self) -> torch.Tensor:
        """[P, P]: True within a layer's block ([W | b] of one module)."""
        sub = self.subset_of
        owner = []
        for name, k in zip(sub.names, sub.numels, strict=True):
            owner += [name.rsplit(".", 1)[0]] * k
        ids = torch.tensor([sorted(set(owner)).index(o) for o in owner])
        return ids[:, None] == ids[None, :]

    @cached_property
    def log_likelihood(self) -> torch.Tensor:
        """log p(D | θ*) from the outputs, by hand."""
        (x, y), _, _ = self.data
        with torch.no_grad():
            f = self.subset_of.call(x)
        if self.likelihood == "classification":
            return -F.cross_entropy(f, y, reduction="sum")
        if self.likelihood == "binary":
            return -F.binary_cross_entropy_with_logits(f, y, reduction="sum")
        n_terms = y.numel()
        return -0.5 * ((y - f) ** 2).sum() / SIGMA**2 - 0.5 * n_terms * math.log(
            2 * math.pi * SIGMA**2
        )

    @cached_property
    def theta(self) -> torch.Tensor:
        return self.subset_of.map_vector().detach()

    def jacobian(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x) [B, C] and J [B, C, P] at θ*."""
        sub, theta = self.subset_of, self.theta
        jac = torch.func.jacrev(lambda t: sub.forward(t, x))(theta)
        with torch.no_grad():
            return sub.forward(theta, x), jac

    def precision(self, g: torch.Tensor, delta, factor: float = 1.0, kind="ggn") -> torch.Tensor:
        eye = torch.eye(g.shape[0], dtype=DT)
        return self.scale_of(kind) * g + factor * delta * eye

    def evidence(self, g: torch.Tensor, delta, factor: float = 1.0, kind="ggn") -> torch.Tensor:
        """log p(D|θ*) − ½[c·δ‖θ*−μ₀‖² + log det(s·G + c·δ·I) − P log(c·δ)] (differentiable
        in a tensor δ)."""
        p = g.shape[0]
        scatter = factor * delta * ((self.theta - PRIOR_MEAN) ** 2).sum()
        logdet = torch.linalg.slogdet(self.precision(g, delta, factor, kind))[1]
        return self.log_likelihood - 0.5 * (scatter + logdet - p * torch.log(factor * delta))

    def glm(self, g: torch.Tensor, x, delta=PRIOR, factor: float = 1.0):
        """Mean [B, C] and J Π⁻¹ Jᵀ [B, C, C] of the linearised predictive, plus J."""
        f, jac = self.jacobian(x)
        cov = torch.linalg.inv(self.precision(g, delta, factor))
        return f, torch.einsum("bcp,pq,bdq->bcd", jac, cov, jac), jac


PROBLEMS = [
    *(
        Problem("mlp", lik, sub)
        for lik in ("classification", "regression", "binary")
        for sub in ("all", "last_layer", "subnetwork")
    ),
    Problem("cnn", "classification", "all"),
]
