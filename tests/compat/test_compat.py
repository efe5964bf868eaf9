"""laplacetorch.compat without laplace-torch: names, signatures, return types, refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import DT, batches, make_data, make_mlp
from torch import nn

import laplacetorch.compat as compat
from laplacetorch import Laplace as Native
from laplacetorch.compat.curvature import backpack, curvlinops


def _data():
    return make_data("mlp", "classification", n=16)


@pytest.mark.parametrize(
    ("subset", "structure", "name"),
    [
        ("all", "full", "FullLaplace"),
        ("all", "kron", "KronLaplace"),
        ("all", "diag", "DiagLaplace"),
        ("all", "lowrank", "LowRankLaplace"),
        ("last_layer", "full", "FullLLLaplace"),
        ("last_layer", "kron", "KronLLLaplace"),
        ("last_layer", "diag", "DiagLLLaplace"),
    ],
)
def test_factory_picks_laplace_torchs_class_and_the_native_answers(subset, structure, name):
    x, y = _data()
    la = compat.Laplace(make_mlp(), compat.Likelihood.CLASSIFICATION, subset, structure)
    assert type(la).__name__ == name and isinstance(la, Native)
    la.fit(batches(x, y))
    native_structure = {"kron": "kfac", "lowrank": "lanczos"}.get(structure, structure)
    opts = {"joint_bias": False} if structure == "kron" else None
    ref = Native(make_mlp(), "classification", subset, native_structure, backend_options=opts)
    ref.fit(batches(x, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())
    torch.testing.assert_close(
        la(x[:4], compat.PredType.GLM, link_approx=compat.LinkApprox.PROBIT), ref(x[:4])
    )
    assert la.prior_precision.shape == (1,)  # laplace-torch keeps δ 1-D
    assert la.likelihood == "classification"


def test_defaults_are_laplace_torchs():
    la = compat.Laplace(make_mlp(), "classification")
    assert type(la).__name__ == "KronLLLaplace"  # last layer, KFAC


def test_positional_arguments_follow_laplace_torch():
    x, y = make_data("mlp", "regression", n=16)
    la = compat.FullLaplace(make_mlp(), "regression", 0.5, 2.0)  # sigma_noise, prior_precision
    assert float(la.sigma_noise) == 0.5 and float(la.prior_precision) == 2.0
    kron = compat.KronLaplace(
        make_mlp(), "regression", 0.5, 2.0, 0.0, 1.0, False, "input_ids", "labels", None, False
    )
    assert float(kron.sigma_noise) == 0.5
    ll = compat.DiagLLLaplace(
        make_mlp(), "regression", 0.5, 2.0, 0.0, 1.0, False, None, "input_ids", "labels", None, "4"
    )
    assert ll.subset.last_layer_name == "4"
    la.fit(batches(x, y))
    assert la.n_outputs == 3 and la.n_layers == 6 and la.loss > 0


def test_posterior_types_are_laplace_torchs():
    x, y = _data()
    full = compat.FullLaplace(make_mlp(), "classification")
    full.fit(batches(x, y))
    p = full.n_params
    assert full.posterior_precision.shape == (p, p) and full.H.shape == (p, p)
    torch.testing.assert_close(
        full.posterior_covariance, torch.linalg.inv(full.posterior_precision)
    )
    sc = full.posterior_scale
    torch.testing.assert_close(sc @ sc.T, full.posterior_covariance)
    diag = compat.DiagLaplace(make_mlp(), "classification")
    diag.fit(batches(x, y))
    assert diag.posterior_precision.shape == (p,) and diag.H.shape == (p,)
    torch.testing.assert_close(diag.posterior_scale.square(), diag.posterior_variance)
    kron = compat.KronLaplace(make_mlp(), "classification")
    kron.fit(batches(x, y))
    dense = kron.posterior_precision.to_matrix()
    torch.testing.assert_close(kron.posterior_precision.diag(), dense.diagonal())
    torch.testing.assert_close(
        dense, kron.structure.precision_dense(kron.prior_precision, kron.scale())
    )


def test_optimize_prior_precision_is_laplace_torchs_adam_loop():
    x, y = _data()
    la = compat.FullLaplace(make_mlp(), "classification", prior_precision=5.0)
    la.fit(batches(x, y))
    assert (
        la.optimize_prior_precision("glm", "marglik", 10, 0.2) is None
    )  # laplace-torch returns None
    ref = Native(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    log_d = torch.zeros((), dtype=DT, requires_grad=True)
    opt = torch.optim.Adam([log_d], lr=0.2)
    for _ in range(10):
        opt.zero_grad()
        (-ref.evidence(log_d.exp())).backward()
        opt.step()
    assert float(la.prior_precision) == pytest.approx(float(log_d.detach().exp()), rel=1e-12)
    with pytest.raises(ValueError, match="gridsearch requires a validation set"):
        la.optimize_prior_precision(method="gridsearch")
    with pytest.raises(ValueError, match="only marglik and gridsearch"):
        la.optimize_prior_precision(method="mackay")


def test_regression_gridsearch_defaults_to_the_mse_of_the_mean():
    x, y = make_data("mlp", "regression", n=16)
    la = compat.FullLaplace(make_mlp(), "regression")
    la.fit(batches(x, y))
    la.optimize_prior_precision(method="gridsearch", val_loader=batches(x, y), grid_size=5)
    # the glm mean does not depend on δ: every grid value ties and the first (10⁻⁴) wins
    assert float(la.prior_precision) == pytest.approx(1e-4)


class DictModel(nn.Module):
    """A model written for laplace-torch: it takes the whole batch mapping."""

    def __init__(self):
        super().__init__()
        self.net = make_mlp()

    def forward(self, batch):
        return self.net(batch["input_ids"])


def test_mapping_batches_go_to_the_model_whole():
    x, y = _data()
    loader = [{"input_ids": x[i : i + 4], "labels": y[i : i + 4]} for i in range(0, 16, 4)]
    la = compat.FullLaplace(DictModel().eval(), "classification")
    la.fit(loader)
    ref = Native(make_mlp(), "classification", "all", "full").fit(batches(x, y))
    torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())
    torch.testing.assert_close(la({"input_ids": x[:3]}), ref(x[:3]))


def test_subnetwork_indices():
    x, y = _data()
    idx = torch.tensor([0, 3, 5, 40, 41, 80])
    la = compat.FullSubnetLaplace(make_mlp(), "classification", idx)
    la.fit(batches(x, y))
    assert la.n_params_subnet == 6
    mask = torch.zeros(83, dtype=torch.bool)
    mask[idx] = True
    ref = Native(make_mlp(), "classification", "subnetwork", "full", subnetwork=mask).fit(
        batches(x, y)
    )
    torch.testing.assert_close(la.log_marginal_likelihood(), ref.log_marginal_likelihood())
    with pytest.raises(ValueError, match="LongTensor"):
        compat.FullSubnetLaplace(make_mlp(), "classification", idx.float())
    with pytest.raises(ValueError, match="ascending"):
        compat.FullSubnetLaplace(make_mlp(), "classification", idx.flip(0))
    with pytest.raises(ValueError, match="duplicates"):
        compat.FullSubnetLaplace(make_mlp(), "classification", torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match=r"lie in \[0, 83\)"):
        compat.FullSubnetLaplace(make_mlp(), "classification", torch.tensor([1, 100]))
    with pytest.raises(ValueError, match="full or diagonal"):
        compat.Laplace(make_mlp(), "classification", "subnetwork", "kron", subnetwork_indices=idx)


def test_backends_select_the_curvature():
    x, y = _data()
    ef = compat.FullLaplace(make_mlp(), "classification", backend=backpack.BackPackEF)
    ef.fit(batches(x, y))
    ref = Native(make_mlp(), "classification", "all", "full", fisher_type="empirical").fit(
        batches(x, y)
    )
    torch.testing.assert_close(ef.log_marginal_likelihood(), ref.log_marginal_likelihood())
    mc = compat.KronLaplace(
        make_mlp(),
        "classification",
        backend=curvlinops.CurvlinopsGGN,
        backend_kwargs={"stochastic": True},
    )
    assert mc.fisher_type == "mc"
    hess = compat.FullLaplace(make_mlp(), "classification", backend=curvlinops.CurvlinopsHessian)
    assert hess.fisher_type == "hessian"
    with pytest.raises(ValueError, match="hessian"):
        compat.KronLaplace(make_mlp(), "classification", backend=curvlinops.CurvlinopsHessian).fit(
            batches(x, y)
        )
    with pytest.raises(TypeError, match="backend must be one of"):
        compat.FullLaplace(make_mlp(), "classification", backend=object)
    with pytest.raises(ValueError, match="unknown backend_kwargs"):
        compat.FullLaplace(make_mlp(), "classification", backend_kwargs={"foo": 1})


def test_what_is_not_offered_is_refused_loudly():
    with pytest.raises(ValueError, match="damping=True"):
        compat.KronLaplace(make_mlp(), "classification", damping=True)
    with pytest.raises(ValueError, match="asdl_fisher_kwargs"):
        compat.FullLaplace(make_mlp(), "classification", asdl_fisher_kwargs={})
    with pytest.raises(ValueError, match="only 'sod'"):
        compat.Laplace(
            make_mlp(), "classification", "all", "gp", 5, functional_approximation="nystrom"
        )
    with pytest.raises(ValueError, match="Only isotropic priors"):
        compat.FunctionalLaplace(make_mlp(), "classification", 5, prior_precision=torch.ones(6))
    with pytest.raises(
        ValueError, match="no Laplace for subset_of_weights='all' and hessian_structure='ekfac'"
    ):
        compat.Laplace(make_mlp(), "classification", "all", "ekfac")


def test_functional_laplace_is_the_gp_structure_with_laplace_torchs_conventions():
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    la = compat.Laplace(make_mlp(), "classification", "all", "gp", 6, prior_precision=2.0)
    assert type(la).__name__ == "FunctionalLaplace"
    la.fit(loader)
    import numpy as np

    idx = np.sort(np.random.default_rng(0).choice(np.arange(16), 6, replace=False))
    sub = x[idx]
    ref = Native(
        make_mlp(), "classification", "all", "full", prior_precision=2.0 * 16 / 6
    )  # the points' posterior at δ·N/M with the diagonal softmax Hessian
    p = torch.softmax(make_mlp()(sub), -1)
    jac = torch.func.jacrev(lambda t: ref.subset.forward(t, sub))(ref.subset.map_vector())
    g = torch.einsum("ncp,nc,ncq->pq", jac, p * (1 - p), jac).detach()
    torch.testing.assert_close(la.structure.curvature_dense(), g)
    ll = compat.FunctionalLLLaplace(make_mlp(), "classification", 6)
    ll.fit(loader)
    assert ll.n_params == 18
    with pytest.raises(ValueError, match=r"n_subset must be in \[1, N = 16\]"):
        compat.FunctionalLaplace(make_mlp(), "classification", 17).fit(loader)


def test_backend_classes_give_laplace_torch_jacobians():
    """An instance of a compat backend class gives laplace-torch's Jacobian methods: all
    parameters in parameters_to_vector order, and the last layer's from its features."""
    from torch.func import functional_call, jacrev

    from laplacetorch.compat.curvature import AsdlInterface, CurvlinopsGGN
    from laplacetorch.compat.utils import FeatureExtractor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model = model.double()
    x = torch.randn(7, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    flat = torch.cat([v.reshape(-1) for v in params.values()])

    def f(theta):
        out, i = {}, 0
        for k, v in params.items():
            out[k] = theta[i : i + v.numel()].view_as(v)
            i += v.numel()
        return functional_call(model, out, (x,))

    for cls in (AsdlInterface, CurvlinopsGGN):
        jac, out = cls(model, "classification").jacobians(x)
        torch.testing.assert_close(jac, jacrev(f)(flat))
        torch.testing.assert_close(out, model(x))
    fe = FeatureExtractor(model)
    jac, out = AsdlInterface(fe, "regression").last_layer_jacobians(x)
    torch.testing.assert_close(jac, jacrev(f)(flat)[:, :, -12:])  # the head's 5·2 + 2 weights
    torch.testing.assert_close(out, model(x))


def test_la_backend_is_an_instance_of_the_backend_class():
    from laplacetorch.compat import FullLLLaplace, FullSubnetLaplace
    from laplacetorch.compat.curvature import AsdlGGN, CurvlinopsGGN

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x = torch.randn(6, 3)
    la = FullLLLaplace(model, "classification", backend=AsdlGGN)
    assert isinstance(la.backend, AsdlGGN) and la.backend.last_layer
    jac, f = la.backend.last_layer_jacobians(x)
    assert jac.shape == (6, 2, 12) and torch.allclose(f, model(x))
    idx = torch.tensor([0, 4, 20, 30])
    sub = FullSubnetLaplace(model, "classification", idx)
    assert isinstance(sub.backend, CurvlinopsGGN)
    assert sub.backend.subnetwork_indices.equal(idx)


def test_backend_instances_give_a_batchs_curvature_through_the_native_backends():
    from laplacetorch import Laplace
    from laplacetorch.compat.curvature import AsdlEF, BackPackGGN, CurvlinopsGGN

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    loss, h = CurvlinopsGGN(model, "classification").full(x, y)
    la = Laplace(model, "classification", "all", "full").fit([(x, y)])
    torch.testing.assert_close(h, la.structure.curvature_dense())
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    )
    _, d = AsdlEF(model, "classification").diag(x, y)
    ef = Laplace(model, "classification", "all", "diag", fisher_type="empirical").fit([(x, y)])
    torch.testing.assert_close(d, ef.structure.diagonal())
    _, kron = BackPackGGN(model, "classification").kron(x, y, N=9)
    torch.testing.assert_close(kron.to_matrix(), kron.structure.curvature_dense())
    assert kron.to_matrix().shape == (32, 32)
