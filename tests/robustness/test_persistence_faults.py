"""Persistence and interrupted work: a refused state, an interrupted fit or tuning leaves
the object exactly as it was; round trips through torch.save are bit-identical."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import batches, make_data, make_mlp

from laplacetorch import HESSIAN_STRUCTURES, Laplace
from laplacetorch.persistence import WeightsChangedError

STRUCTURES = list(HESSIAN_STRUCTURES)  # every backend


def _block(state: dict) -> dict:
    return state["structure"]["blocks"][0]["block"]


def _fitted(structure="diag", likelihood="classification", dtype=torch.float64, **options):
    model = make_mlp().to(dtype)
    x, y = make_data("mlp", likelihood)
    x = x.to(dtype)
    y = y.to(dtype) if y.is_floating_point() else y
    la = Laplace(model, likelihood, "all", structure, prior_precision=0.5, backend_options=options)
    return la.fit(batches(x, y)), model, x, y


def _same(a, b) -> bool:
    """Bit-identical nested states (tensors: same dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def _snapshot(la):
    return None if la.curvature is None else la.state_dict()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("mean"), "lacks entries \\['mean'\\]"),
        (lambda s: s.pop("structure"), "lacks entries"),
        (lambda s: s.update(prior_precision=torch.tensor(-1.0)), "prior_precision must be"),
        (lambda s: s.update(sigma_noise=torch.tensor(0.0)), "sigma_noise must be"),
        (lambda s: s.update(temperature=-2.0), "temperature must be"),
        (lambda s: s.update(mean=s["mean"][:-1]), "'mean' must be 83 finite weights"),
        (lambda s: s.update(mean=s["mean"] + 1e-9), "does not match its fingerprint"),
        (lambda s: s.update(n_data=0), "'n_data' must be a positive integer"),
        (lambda s: s.update(n_outputs=2.5), "'n_outputs' must be a positive integer"),
        (lambda s: s.update(loss_sum=torch.tensor(float("nan"))), "'loss_sum' must be one"),
        (lambda s: s.update(kind="fisher"), "'kind' must be one of"),
        (lambda s: s.update(mean=s["mean"].tolist()), "'mean' must be a tensor"),
        (lambda s: s.update(format=3), "state has format 3"),
        (lambda s: s.update(hessian_structure="kron"), "hessian_structure is 'kron'"),
        (
            lambda s: s["structure"]["blocks"][0]["block"].update(
                diagonal=s["structure"]["blocks"][0]["block"]["diagonal"][:-1]
            ),
            "has shape \\[29\\]",
        ),
        (lambda s: s["structure"].update(structure="Mystery"), "unknown structure"),
        (lambda s: _block(s)["diagonal"].__setitem__(0, float("nan")), "contains NaN or Inf"),
        (lambda s: _block(s)["diagonal"].__setitem__(0, -5.0), "'diagonal' of Diagonal must"),
    ],
)
@pytest.mark.parametrize("target", ["fresh", "fitted"])
def test_a_refused_state_changes_nothing(edit, match, target):
    la, model, x, y = _fitted()
    state = copy.deepcopy(la.state_dict())
    edit(state)
    if target == "fresh":
        other = Laplace(model, "classification", "all", "diag")
    else:  # a fitted object at another prior: its own fit and δ survive
        other = Laplace(model, "classification", "all", "diag", prior_precision=3.0)
        other.fit(batches(x[:6], y[:6]))
    before, delta = _snapshot(other), other.prior_precision.clone()
    with pytest.raises((ValueError, TypeError), match=match):
        other.load_state_dict(state)
    assert _same(_snapshot(other), before)
    assert torch.equal(other.prior_precision, delta)
    if target == "fresh":
        assert other.curvature is None and other.mean is None


def test_state_of_another_model_is_refused():
    la, _, _, _ = _fitted()
    other = Laplace(make_mlp(n_out=2), "classification", "all", "diag")
    with pytest.raises(ValueError, match="its subset differs in"):
        other.load_state_dict(la.state_dict())
    assert other.curvature is None


def test_a_subnetwork_state_loads_only_into_the_same_mask():
    """Two masks of the same size: the state names its mask (a hash), so it is refused before
    ``restore_weights=True`` could write θ* into the wrong weights."""
    model = make_mlp()
    x, y = make_data("mlp", "classification")
    first, second = torch.zeros(83, dtype=torch.bool), torch.zeros(83, dtype=torch.bool)
    first[:10], second[10:20] = True, True
    la = Laplace(model, "classification", "subnetwork", "full", subnetwork=first)
    state = la.fit(batches(x, y)).state_dict()
    other_model = make_mlp(seed=4)
    before = [p.clone() for p in other_model.parameters()]
    other = Laplace(other_model, "classification", "subnetwork", "full", subnetwork=second)
    with pytest.raises(ValueError, match=r"differs in \['mask'\].*another subnetwork"):
        other.load_state_dict(state, restore_weights=True)
    assert other.curvature is None
    assert all(torch.equal(a, b) for a, b in zip(before, other_model.parameters(), strict=True))
    fresh = make_mlp()  # the same backbone, its subnetwork's weights not yet θ*
    with torch.no_grad():
        next(fresh.parameters()).view(-1)[:10] += 1.0
    same = Laplace(fresh, "classification", "subnetwork", "full", subnetwork=first)
    same.load_state_dict(state, restore_weights=True)
    torch.testing.assert_close(same(x), la(x))


@pytest.mark.parametrize(
    "structure, key, edit, match",
    [
        ("full", "eigenvalues", lambda t: t.__setitem__(0, -1e3), "'eigenvalues' of Dense must"),
        ("full", "eigenvectors", lambda t: t.mul_(1.5), "orthonormal columns"),
        ("kfac", "lb", lambda t: t.__setitem__(0, -1e3), "'lb' of Kron must be ≥ 0"),
        ("kfac", "qa", lambda t: t.__setitem__((0, 0), 3.0), "'qa' of Kron must have orthonormal"),
        ("kfac", "la", lambda t: t.__setitem__(0, float("inf")), "'la' of Kron contains NaN"),
        ("ekfac", "eig", lambda t: t.__setitem__((0, 0), -1e3), "'eig' of EKron must"),
        ("lanczos", "eigenvectors", lambda t: t.mul_(2.0), "'eigenvectors' of LowRank must"),
    ],
)
def test_a_state_breaking_the_algebra_is_refused(structure, key, edit, match):
    """Negative eigenvalues of a PSD curvature, eigenvectors that are not orthonormal, NaN:
    refused at load (they would predict NaN or nonsense), naming the entry."""
    la, model, _, _ = _fitted(structure, **({"rank": 4} if structure == "lanczos" else {}))
    state = copy.deepcopy(la.state_dict())
    blocks = state["structure"].get("blocks")
    edit(next(b["block"][key] for b in blocks if key in b["block"]) if blocks
         else state["structure"][key])  # fmt: skip
    other = Laplace(model, "classification", "all", structure)
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(state)
    assert other.curvature is None


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_load_round_trip_is_bit_identical(structure, dtype):
    la, model, x, _ = _fitted(structure, dtype=dtype)
    buf = io.BytesIO()
    torch.save(la.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = Laplace(model, "classification", "all", structure)
    other.load_state_dict(state)
    assert _same(other.state_dict(), la.state_dict())
    assert torch.equal(other.log_marginal_likelihood(), la.log_marginal_likelihood())
    if structure not in ("operator", "gp"):  # those predict after a refit only
        assert torch.equal(other(x), la(x))


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, list | tuple):
        for v in state:
            yield from _tensors(v)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_loaded_object_owns_its_tensors(structure):
    """Editing the state dict after load_state_dict changes nothing in the loaded object."""
    la, model, _, _ = _fitted(structure)
    state = la.state_dict()
    other = Laplace(model, "classification", "all", structure)
    other.load_state_dict(state)
    before = other.state_dict()
    for t in _tensors(state):
        if t.is_floating_point():
            t.mul_(2).add_(1)
        elif t.dtype == torch.long:
            t.zero_()
    assert _same(other.state_dict(), before)


def test_state_in_a_fresh_model_predicts_only_after_restoring_weights():
    la, _, x, _ = _fitted("kfac")
    fresh = make_mlp(seed=5)
    other = Laplace(fresh, "classification", "all", "kfac")
    other.load_state_dict(la.state_dict())
    with pytest.raises(WeightsChangedError, match="restore_weights"):
        other(x)
    with pytest.raises(WeightsChangedError):
        other.predictive_samples(x, pred_type="nn", n_samples=2)
    other.restore_weights()
    assert torch.equal(other(x), la(x))
    again = Laplace(make_mlp(seed=6), "classification", "all", "kfac")
    again.load_state_dict(la.state_dict(), restore_weights=True)
    assert torch.equal(again(x), la(x))


def test_training_on_after_fit_refuses_to_predict():
    la, model, x, y = _fitted("full")
    probs = la(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with pytest.raises(WeightsChangedError, match=r"max \|θ − θ\*\| = "):
        la(x)
    la.restore_weights()
    assert torch.equal(la(x), probs)


class _Interrupt(Exception):
    pass


class _FailingLoader:
    """A re-iterable loader whose ``after``-th batch of its second pass fails (the first
    pass, for backends that pass once)."""

    def __init__(self, x, y, after: int, failing_pass: int):
        self.data, self.after, self.failing_pass = batches(x, y), after, failing_pass
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for i, batch in enumerate(self.data):
            if i == self.after and self.passes == self.failing_pass:
                raise _Interrupt("the loader failed")
            yield batch


@pytest.mark.parametrize(
    "structure, failing_pass",
    [
        ("full", 1),
        ("kfac", 1),
        ("ekfac", 1),
        ("ekfac", 2),
        ("lanczos", 1),
        ("lanczos", 2),
        ("operator", 1),
    ],
)
def test_interrupted_fit_changes_nothing(structure, failing_pass):
    # ekfac's second pass only runs when its layer statistics are not kept from the first
    options = {"cache_budget": 0} if structure == "ekfac" else {}
    la, model, x, y = _fitted(structure, **options)
    before = la.state_dict()
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.raises(_Interrupt):
        la.fit(_FailingLoader(x, y, after=1, failing_pass=failing_pass))
    assert _same(la.state_dict(), before)
    assert hooks == [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    assert grads == [p.requires_grad for p in model.parameters()]
    assert not model.training


@pytest.mark.parametrize("method", ["marglik", "mackay", "gridsearch"])
def test_interrupted_tuning_changes_nothing(method, monkeypatch):
    la, _, _, _ = _fitted("kfac", likelihood="regression")
    la.sigma_noise = 0.7
    before = la.prior_precision.clone(), la.sigma_noise.clone()
    calls = {"n": 0}
    kind = type(la.structure)
    for name in ("logdet", "trace_inverse", "inverse_diagonal"):
        monkeypatch.setattr(kind, name, _interrupting(getattr(kind, name), calls))
    with pytest.raises(KeyboardInterrupt):
        la.optimize_prior_precision(method=method, tune_sigma=method == "marglik")
    assert calls["n"] == 4
    assert torch.equal(la.prior_precision, before[0])
    assert torch.equal(la.sigma_noise, before[1])


def _interrupting(method, calls):
    def wrapped(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # a Ctrl-C in the middle of the tuning
            raise KeyboardInterrupt
        return method(self, *args, **kwargs)

    return wrapped


def test_a_state_with_a_malformed_shape_or_another_size_is_refused():
    la, model, _, _ = _fitted()
    state = copy.deepcopy(la.state_dict())
    state["input_shape"] = "four"
    other = Laplace(model, "classification", "all", "diag")
    with pytest.raises(ValueError, match="'input_shape' must be a tuple of ints"):
        other.load_state_dict(state)
    small, _, _, _ = _fitted()
    state = copy.deepcopy(la.state_dict())
    blocks = state["structure"]["blocks"]
    state["structure"]["blocks"] = blocks[:1]  # a well-formed structure of 30 parameters
    state["structure"]["n_params"] = 30
    state["structure"]["group_index"] = state["structure"]["group_index"][:30]
    with pytest.raises(ValueError, match="structure has 30 parameters; expected 83"):
        other.load_state_dict(state)
    assert other.curvature is None and small.curvature is not None


def test_a_format_5_state_still_loads_unless_it_is_a_subnetworks():
    """Format 6 only added the module types and the mask to the subset's signature: an
    older state of the whole network or its last layer loads; a subnetwork's, whose mask
    cannot be checked, is refused."""
    la, model, x, _ = _fitted()
    old = copy.deepcopy(la.state_dict())
    old["format"] = 5
    for key in ("modules", "mask"):
        del old["subset"][key]
    other = Laplace(model, "classification", "all", "diag")
    other.load_state_dict(old)
    torch.testing.assert_close(other(x), la(x))
    mask = torch.zeros(83, dtype=torch.bool)
    mask[:10] = True
    sub = Laplace(model, "classification", "subnetwork", "full", subnetwork=mask)
    state = sub.fit(batches(*make_data("mlp", "classification"))).state_dict()
    state["format"] = 5
    with pytest.raises(ValueError, match="state has format 5"):
        Laplace(model, "classification", "subnetwork", "full", subnetwork=mask).load_state_dict(
            state
        )
