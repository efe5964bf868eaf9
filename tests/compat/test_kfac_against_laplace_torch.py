"""Optional: KFAC on the same trained MLP as laplace-torch's ``hessian_structure="kron"``
(skipped when laplace-torch is not installed).

laplace-torch runs with its BackPACK backend (KFLR: the exact type-2 Fisher = GGN, our
``fisher_type="exact"``) on a deep copy of the model (its default curvlinops backend fails with
curvlinops 3; BackPACK's hooks would break torch.func on the original module).

Their conventions, read from laplace-torch 0.3 / BackPACK 1.7 and checked factor by factor below:

- Factors: BackPACK's KFLR on the summed cross-entropy gives per batch of M examples
  B = Σₙ Σₖ gₙₖgₙₖᵀ and A = (1/M) Σₙ aₙaₙᵀ; laplace-torch rescales A by M/N and sums over
  batches, so A = (1/N) Σ aaᵀ and B = Σ ggᵀ: exactly our normalisation.
- Bias: laplace-torch keeps the bias as its *own* block with the single (full) factor B, and
  the weight block B ⊗ A uses A without the appended 1. That is our ``joint_bias=False``. Our
  default ``joint_bias=True`` is a different approximation (one block B ⊗ Ã for [W | b] with
  Ã = (1/N) Σ ããᵀ, ã = [a, 1]), so its marglik legitimately differs from theirs (by ~3 % on
  this net): the comparisons below use ``joint_bias=False``, and a separate test checks that
  the joint block holds their weight and bias factors inside it.
- Log-determinant: ``KronDecomposed.logdet`` is Σᵢⱼ log(βᵢαⱼ + δ) per block (undamped, the
  default ``damping=False``) and Σ log(βᵢ + δ) for the bias block: exact, like ours.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

laplace = pytest.importorskip("laplace")
from laplace.curvature import BackPackGGN  # noqa: E402

from laplacetorch import Laplace, ParameterSubset, get_likelihood  # noqa: E402
from laplacetorch.curvature import fit_kfac  # noqa: E402

DT = torch.float64


@pytest.fixture(scope="module")
def trained():
    """A 64-12-10 tanh MLP trained by 100 full-batch Adam steps on 300 digits, float64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data[:300], dtype=DT) / 16.0
    y = torch.as_tensor(data.target[:300], dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=DT))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    return model.eval(), loader, x[:40]


def _theirs(model, loader, subset, prior_precision=1.7):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la = laplace.Laplace(
            copy.deepcopy(model),
            "classification",
            subset_of_weights=subset,
            hessian_structure="kron",
            prior_precision=prior_precision,
            backend=BackPackGGN,
        )
        la.fit(loader)
    return la


def _ours(model, loader, subset, prior_precision=1.7, joint_bias=False):
    return Laplace(
        model,
        "classification",
        subset,
        "kfac",
        prior_precision=prior_precision,
        fisher_type="exact",
        backend_options={"joint_bias": joint_bias},
    ).fit(loader)


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_kfac_marglik_and_glm_predictive_match_laplace_torch_kron(trained, subset):
    model, loader, xs = trained
    theirs = _theirs(model, loader, subset)
    ours = _ours(model, loader, subset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_lml = float(theirs.log_marginal_likelihood())
        ref_pred = theirs(xs, pred_type="glm", link_approx="probit")
    assert float(ours.log_marginal_likelihood()) == pytest.approx(ref_lml, rel=1e-4)
    pred = ours(xs, pred_type="glm", link_approx="probit")
    torch.testing.assert_close(pred, ref_pred.to(DT), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_kfac_marglik_matches_laplace_torch_over_priors(trained, subset):
    """The same fit evaluated at other priors: scalar ones, and (all weights) one value per
    parameter tensor (their "layer-wise" prior; for us a per-parameter prior that is constant on
    every block, which our Kron treats exactly)."""
    model, loader, _ = trained
    theirs = _theirs(model, loader, subset)
    ours = _ours(model, loader, subset)
    for delta in (1e-2, 1.0, 30.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = float(theirs.log_marginal_likelihood(prior_precision=torch.tensor(delta)))
        assert float(ours.log_marginal_likelihood(delta)) == pytest.approx(ref, rel=1e-4)

    if subset == "last_layer":
        return  # their last-layer Laplace takes a scalar or a per-parameter prior only
    per_tensor = torch.tensor([0.3, 4.0, 2.0, 0.05], dtype=DT)
    per_param = torch.cat(
        [v.expand(t.numel()) for v, t in zip(per_tensor, model.parameters(), strict=True)]
    )
    assert ours.structure.is_exact(per_param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = float(theirs.log_marginal_likelihood(prior_precision=per_tensor))
    assert float(ours.log_marginal_likelihood(per_param)) == pytest.approx(ref, rel=1e-4)


def _factors(structure):
    return [(i, *b.factors()) for _, i, b in structure.blocks]


def test_kfac_factors_match_backpack_kflr(trained):
    """Factor by factor: separate-bias blocks equal theirs; our joint [W | b] block holds their
    weight factors (B, and A in its leading in × in corner) and their bias factor (B)."""
    model, loader, _ = trained
    theirs = _theirs(model, loader, "all")
    their_facs = [[f.to(DT) for f in fs] for fs in theirs.H_facs.kfacs]  # per parameter tensor
    subset, lik = ParameterSubset(model, "all"), get_likelihood("classification")

    sep = fit_kfac(subset, lik, loader, fisher_type="exact", joint_bias=False)
    blocks = _factors(sep.structure)  # per layer: the weight block, then the bias block
    assert len(blocks) == len(their_facs) == 4
    kw = {"rtol": 1e-7, "atol": 1e-9}
    for (_, b, a), fs in zip(blocks, their_facs, strict=True):
        torch.testing.assert_close(b, fs[0], **kw)
        if len(fs) == 2:
            torch.testing.assert_close(a, fs[1], **kw)
        else:
            torch.testing.assert_close(a, torch.ones(1, 1, dtype=DT))

    joint = fit_kfac(subset, lik, loader, fisher_type="exact", joint_bias=True)
    jblocks = _factors(joint.structure)
    assert len(jblocks) == 2
    for (_, b, a), (wb, wa), (bb,) in zip(jblocks, their_facs[0::2], their_facs[1::2], strict=True):
        torch.testing.assert_close(b, wb, **kw)
        torch.testing.assert_close(b, bb, **kw)
        torch.testing.assert_close(a[:-1, :-1], wa, **kw)
        assert float(a[-1, -1]) == pytest.approx(1.0, rel=1e-12)
