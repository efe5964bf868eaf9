"""Matrix-free posterior precision: Π = s·G + δI applied through GGN-vector products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..checks import check_count
from ..linalg import cg, hutchinson_diagonal, neumann, slq_quadrature
from ..linalg.slq_gradient import slq_logdet_graph
from .base import Structure, require_positive
from .sources import JacobianSource

__all__ = ["Operator"]

Matvec = Callable[[Tensor], Tensor]

# rows per CG solve at most: a product's time a row stops falling past about 30 rows
SOLVE_BLOCK = 32
# P-vectors one solved row takes: ~6 of CG state and its share of a product's working set
# (tangents, cotangents, weight gradients; 2.8 MB a vector ≈ 8 P on the digits MLP)
ROW_WORK = 16


def rows_per_solve(n_params: int, element_size: int, memory_budget: int) -> int:
    """Rows one CG run of the predictive takes: as many as ``memory_budget`` bytes hold at
    ``ROW_WORK`` P-vectors a row, at least 1 and at most ``SOLVE_BLOCK``."""
    return max(1, min(SOLVE_BLOCK, memory_budget // max(ROW_WORK * n_params * element_size, 1)))


class Operator(Structure):
    """Π(δ, s) = s·G + diag(δ) with G known only through ``matvec`` (rows: ``[m, P]``).

    Nothing of size P × P is formed. All answers are *estimates* (:meth:`is_exact` is False):

    - log det Π and tr Π⁻¹ (scalar δ): stochastic Lanczos quadrature of G's spectrum with a
      probe set fixed at construction, tr f(G) ≈ (P/n) Σ_probes Σⱼ τⱼ² f(θⱼ) with
      f = log(s·x + δ) or 1/(s·x + δ). Smooth and differentiable in δ and s, O(#nodes) per
      new δ, so marginal-likelihood tuning is cheap once the nodes exist.
    - log det Π for a per-layer / per-parameter δ: SLQ on Π with a fixed probe set (new
      products for every δ), with the gradient ∂/∂δᵢ = [Π⁻¹]ᵢᵢ and
      ∂/∂s = (P − Σᵢ δᵢ [Π⁻¹]ᵢᵢ)/s from Hutchinson with CG solves (fixed probes too).
    - solves and J Π⁻¹ Jᵀ: conjugate gradients (a residual warning if they do not converge);
    - diag Π⁻¹ (per-layer / per-parameter MacKay): Hutchinson with CG solves;
    - samples: Π^{-1/2} z by Lanczos on Π started at z (``sample_steps`` steps).

    Args:
        matvec: the unit-scale curvature G applied to rows ``[m, P]``.
        n_params, dtype, device: P and where vectors live.
        n_probes, n_steps: SLQ probes and Lanczos steps per probe.
        cg_tol: relative residual of the CG solves. seed: fixes every probe set.
        probe_chunk: probes per product in the Hutchinson estimates (all at once if None).
        solver: ``"cg"`` (default, with a residual warning) or ``"neumann"`` (a truncated
            series of ``neumann_terms`` terms scaled by a power-iteration estimate of the
            largest eigenvalue of Π; cheaper per term, accurate only when Π is well
            conditioned: the error falls like (1 − δ/λ_max)^terms).
    """

    _tensor_keys = ("slq_nodes", "slq_weights", "slq_coarse_nodes", "slq_coarse_weights")

    def __init__(
        self,
        matvec: Matvec,
        n_params: int,
        dtype: torch.dtype,
        device: torch.device,
        group_index: Tensor | None = None,
        *,
        n_probes: int = 30,
        n_steps: int = 40,
        cg_tol: float | None = None,
        solver: str = "cg",
        neumann_terms: int = 100,
        sample_steps: int = 60,
        seed: int = 0,
        probe_chunk: int | None = None,
        psd: bool = True,
    ) -> None:
        super().__init__(n_params, group_index, dtype, device)
        self.psd = psd
        for name, val in (
            ("n_probes", n_probes),
            ("n_steps", n_steps),
            ("sample_steps", sample_steps),
        ):
            check_count(name, val)
        if cg_tol is not None and not cg_tol > 0:
            raise ValueError(f"cg_tol must be positive; got {cg_tol!r}")
        if solver not in ("cg", "neumann"):
            raise ValueError(f"unknown solver {solver!r}; expected 'cg' or 'neumann'")
        check_count("neumann_terms", neumann_terms)
        self.solver, self.neumann_terms = solver, neumann_terms
        self.matvec_g = matvec
        self.n_probes, self.n_steps, self.cg_tol = n_probes, n_steps, cg_tol
        self._steps = n_steps  # of G's quadrature; raised where a δ needs more
        self.sample_steps, self.seed, self.probe_chunk = sample_steps, seed, probe_chunk
        self.nodes: Tensor | None = None
        self.weights: Tensor | None = None
        self.coarse_nodes: Tensor | None = None
        self.coarse_weights: Tensor | None = None

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)

    def _require_matvec(self) -> Matvec:
        if self.matvec_g is None:
            raise RuntimeError("this Operator structure was loaded without its data; refit it")
        return self.matvec_g

    def _quadrature(self, coarse: bool = False) -> tuple[Tensor, ...]:
        """G's SLQ rules: ``(nodes, weights)``, and with ``coarse`` also the rules of half
        the steps (the quadrature-bias estimate of :meth:`logdet_with_error`)."""
        if self.nodes is None:
            nodes, weights, c_nodes, c_weights = slq_quadrature(
                self._require_matvec(),
                self.n_params,
                self.n_probes,
                self._steps,
                generator=self._generator(),
                dtype=self.dtype,
                device=self.device,
                coarse=True,
            )
            clamp = (lambda t: t.clamp_min(0)) if self.psd else (lambda t: t)
            self.nodes, self.weights = clamp(nodes), weights
            self.coarse_nodes, self.coarse_weights = clamp(c_nodes), c_weights
        if coarse:
            return self.nodes, self.weights, self.coarse_nodes, self.coarse_weights
        return self.nodes, self.weights

    def _precision_matvec(self, d: Tensor, s: Tensor) -> Matvec:
        mv = self._require_matvec()
        return lambda v: s * mv(v) + d * v

    def _curvature_matvec(self, v: Tensor) -> Tensor:
        mv = self._require_matvec()
        return mv(v.reshape(-1, self.n_params)).reshape(v.shape)

    # ----------------------------------------------------------------- block methods
    def _is_exact(self, d: Tensor) -> bool:
        return False

    def _check_definite(self, d: Tensor, s: Tensor) -> None:
        """An indefinite curvature (the Hessian): Π must be PD at its extreme Ritz values."""
        if self.psd:
            return
        if d.dim() != 0:
            raise ValueError(
                "an operator of an indefinite curvature (the Hessian) takes a scalar prior "
                "only: its positive definiteness is checked at the extreme Ritz values"
            )
        require_positive(s * self._quadrature()[0] + d, s, d)

    def _logdet(self, d: Tensor, s: Tensor) -> Tensor:
        self._check_definite(d, s)
        if d.dim() != 0:  # SLQ on Π; its gradient is the estimate's own (same probes)
            return self._slq_precision(d, s)[0]
        nodes, weights = self._quadrature()
        quad = (weights * torch.log(s * nodes + d)).sum(-1)  # per probe
        return self.n_params * quad.mean()

    def logdet_with_error(
        self, prior_precision: Tensor | float, scale: Tensor | float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """The SLQ estimate of log det Π and its error: for a scalar δ, the probes' standard
        error combined (in quadrature) with an estimate of the quadrature bias, the change
        from the rule of half the Lanczos steps on the same probes. While that bias exceeds
        the probe noise, G's quadrature is recomputed with twice the steps (up to 8·n_steps
        or P; the later log-determinants use the finer rule). For a varying δ, the probes'
        standard error."""
        d, s = self._block_prior(prior_precision), self._scale(scale)
        if d.dim() != 0:
            with torch.no_grad():
                est, se = self._slq_precision(d, s)
            return est.to(self.dtype), se.to(self.dtype)
        while True:
            nodes, weights, c_nodes, c_weights = self._quadrature(coarse=True)
            per_probe = self.n_params * (weights * torch.log(s * nodes + d)).sum(-1)
            coarse = self.n_params * (c_weights * torch.log(s * c_nodes + d)).sum(-1)
            probe_se = per_probe.std() / per_probe.numel() ** 0.5
            bias = (per_probe - coarse).mean().abs()  # same probes: the probe noise cancels
            steps = nodes.shape[-1]
            if bias <= probe_se or steps >= min(self.n_params, 8 * self.n_steps):
                break
            if self.matvec_g is None:  # a loaded state: report what the nodes give
                break
            # the spectrum needs more steps at this δ: double them (the probes stay)
            self._steps, self.nodes = min(2 * steps, self.n_params), None
        return per_probe.mean().to(self.dtype), probe_se.hypot(bias).to(self.dtype)

    def _slq_precision(self, d: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """SLQ on Π itself (a varying δ is not a function of G's spectrum), differentiable
        in δ and s (see :mod:`~laplacetorch.linalg.slq_gradient`)."""
        d = d.expand(self.n_params) if d.dim() == 0 else d
        return slq_logdet_graph(
            self._require_matvec(),
            d,
            s,
            self.n_params,
            self.n_probes,
            self.n_steps,
            generator=self._generator(4),
            dtype=self.dtype,
        )

    def _trace_inverse(self, d: Tensor, s: Tensor) -> Tensor:
        self._check_definite(d, s)
        if d.dim() != 0:
            return self._inverse_diagonal(d, s).sum()
        nodes, weights = self._quadrature()
        return self.n_params * (weights / (s * nodes + d)).sum(-1).mean()

    def _solve(self, v: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._check_definite(d, s)
        return self._solve_rows(v.reshape(-1, self.n_params), d, s).reshape(v.shape)

    def _solve_rows(
        self,
        rows: Tensor,
        d: Tensor,
        s: Tensor,
        for_estimate: bool = False,
        block: int | None = None,
    ) -> Tensor:
        """Π⁻¹ rows, CG on at most ``block`` rows at a time (default ``SOLVE_BLOCK``).
        ``for_estimate``: the solves feed a Hutchinson estimate whose probe noise is
        ~1/√n_probes, so CG stops at a relative residual of 1e-4 (unless ``cg_tol`` says
        otherwise) and after 5·n_steps products: each estimate is bounded in cost."""
        prec = self._precision_matvec(d, s)
        if self.solver == "neumann":
            return neumann(prec, rows, n_terms=self.neumann_terms, generator=self._generator(3))
        if for_estimate:
            tol = self.cg_tol if self.cg_tol is not None else max(1e-4, _float_tol(self.dtype))
            return cg(prec, rows, tol=tol, max_iter=5 * self.n_steps)[0]
        # the rows' Krylov iterations are independent: blocks of them give the same solves
        size = SOLVE_BLOCK if block is None else block
        return torch.cat([cg(prec, b, tol=self.cg_tol)[0] for b in rows.split(size)])

    def _inverse_diagonal(self, d: Tensor, s: Tensor) -> Tensor:
        self._check_definite(d, s)
        est, _ = hutchinson_diagonal(
            lambda v: self._solve_rows(v, d, s, for_estimate=True),
            self.n_params,
            self.n_probes,
            generator=self._generator(1),
            dtype=self.dtype,
            device=self.device,
            chunk_size=self.probe_chunk,
        )
        return est

    def _sample(self, z: Tensor, d: Tensor, s: Tensor) -> Tensor:
        self._check_definite(d, s)
        return lanczos_inverse_sqrt(self._precision_matvec(d, s), z, self.sample_steps)

    def _fvar(self, source: JacobianSource, positions: Tensor | None, d: Tensor, s: Tensor):
        """J Π⁻¹ Jᵀ with the B·C rows of J solved in CG runs sized by the source's
        ``memory_budget`` (:func:`rows_per_solve`): a smaller budget, less memory, more time."""
        jac = source.columns(positions)
        return self._fvar_dense(
            jac, d, s, rows_per_solve(self.n_params, jac.element_size(), source.memory_budget)
        )

    def _fvar_dense(self, jac: Tensor, d: Tensor, s: Tensor, block: int | None = None) -> Tensor:
        """[J Π⁻¹ Jᵀ]_b ``[B, C, C]`` from ``jac`` ``[B, C, P]``, solving ``block`` rows of
        the B·C at a time and contracting each run's solutions with the J rows of its inputs
        at once, so no [B·C, P] solution is ever held."""
        self._check_definite(d, s)
        b, c, p = jac.shape
        rows = jac.reshape(b * c, p)
        size = SOLVE_BLOCK if block is None else block
        out = jac.new_empty(b, c, c)
        for start in range(0, b * c, size):
            stop = min(start + size, b * c)
            x = self._solve_rows(rows[start:stop], d, s, block=size)
            for i in range(start // c, (stop - 1) // c + 1):  # the inputs this run touches
                lo, hi = max(start, i * c), min(stop, (i + 1) * c)
                out[i, :, lo - i * c : hi - i * c] = jac[i] @ x[lo - start : hi - start].T
        return out

    def curvature_dense(self) -> Tensor:
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.device)
        return self._require_matvec()(eye)

    def diagonal(self) -> Tensor:
        est, _ = hutchinson_diagonal(
            self._require_matvec(),
            self.n_params,
            self.n_probes,
            generator=self._generator(2),
            dtype=self.dtype,
            device=self.device,
            chunk_size=self.probe_chunk,
        )
        return est

    # ----------------------------------------------------------------- persistence
    def _tensors(self) -> dict[str, Tensor]:
        return dict(zip(self._tensor_keys, self._quadrature(coarse=True), strict=True))

    def _set_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.nodes, self.weights = tensors["slq_nodes"], tensors["slq_weights"]
        self.coarse_nodes, self.coarse_weights = (
            tensors["slq_coarse_nodes"],
            tensors["slq_coarse_weights"],
        )

    def _check_tensor_shapes(self, tensors: dict[str, Tensor]) -> None:
        for rule in ("slq", "slq_coarse"):
            if tensors[f"{rule}_nodes"].shape != tensors[f"{rule}_weights"].shape:
                raise ValueError(
                    f"state entries '{rule}_nodes' and '{rule}_weights' differ in shape"
                )

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu", dtype=None
    ) -> Operator:
        """Restore the SLQ nodes (log det and tr Π⁻¹ work); other answers need a refit."""
        dtype = dtype or state["slq_nodes"].dtype
        obj = cls(None, state["n_params"], dtype, torch.device(device), state["group_index"])
        # the nodes keep their own dtype (float64 quadrature) so a round trip is bit-identical
        tensors = {k: state[k].to(obj.device) for k in cls._tensor_keys}
        obj._check_tensor_shapes(tensors)
        obj._set_tensors(tensors)
        return obj


def _float_tol(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps


def lanczos_inverse_sqrt(matvec: Matvec, z: Tensor, n_steps: int) -> Tensor:
    """A^{-1/2} zᵢ ≈ ‖zᵢ‖ Vᵢ T_i^{-1/2} e₁ for each row of ``z`` ``[m, P]``: independent Lanczos
    runs, vectorised over rows, full reorthogonalisation, recurrence in float64."""
    dt = z.dtype
    m, p = z.shape
    steps = min(n_steps, p)
    b = z.to(torch.float64)
    norm = b.norm(dim=1, keepdim=True)
    q = b / norm
    basis = torch.zeros(steps, m, p, dtype=torch.float64, device=z.device)
    alpha = torch.zeros(m, steps, dtype=torch.float64, device=z.device)
    beta = torch.zeros(m, steps, dtype=torch.float64, device=z.device)
    used = steps
    for j in range(steps):
        basis[j] = q
        w = matvec(q.to(dt)).to(torch.float64)
        alpha[:, j] = (w * q).sum(1)
        # full reorthogonalisation against every previous basis vector, twice for stability
        for _ in range(2):
            w = w - torch.einsum(
                "jm,jmp->mp", torch.einsum("jmp,mp->jm", basis[: j + 1], w), basis[: j + 1]
            )
        if j + 1 < steps:
            nb = w.norm(dim=1)
            beta[:, j] = nb
            if bool((nb <= 1e-12 * alpha[:, : j + 1].abs().amax(1).clamp_min(1e-300)).all()):
                used = j + 1
                break
            ok = (nb > 1e-12 * alpha[:, : j + 1].abs().amax(1).clamp_min(1e-300)).unsqueeze(1)
            q = torch.where(ok, w / nb.clamp_min(1e-300).unsqueeze(1), torch.zeros_like(w))
            beta[:, j] = torch.where(ok.squeeze(1), nb, torch.zeros_like(nb))
    t = (
        torch.diag_embed(alpha[:, :used])
        + torch.diag_embed(beta[:, : used - 1], 1)
        + torch.diag_embed(beta[:, : used - 1], -1)
    )
    evals, evecs = torch.linalg.eigh(t)
    coef = evecs @ (evals.clamp_min(1e-300).rsqrt().unsqueeze(-1) * evecs[:, 0, :].unsqueeze(-1))
    x = torch.einsum("jm,jmp->mp", coef.squeeze(-1).T, basis[:used]) * norm
    return x.to(dt)
