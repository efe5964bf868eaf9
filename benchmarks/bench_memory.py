"""Peak memory of fits and predictives, ours beside laplace-torch's and curvlinops'.

Each case runs in a fresh process (spawned): it loads the trained 64-256-256-10 MLP and
the digits, runs the case once to warm up (lazy imports, first-call caches), then once more
and reports how far the resident memory rose above its level at the start of that run: the
process's peak (``ru_maxrss``) when the run sets a new one, else the maximum of a 1 ms
sampler while it runs (short spikes can slip between samples). On CUDA the device's
``max_memory_allocated`` is the figure (``bench_device.py``). Between the two runs, glibc's
``malloc_trim`` hands freed memory back, so the second run's allocations show. Printed
beside each row: the case's peak in MB, the size of its structure (the fitted curvature's
tensors) and, for predictives, the size of three forward passes' activations of the
predicted batch (the target: the predictive's peak at most about that plus the structure),
and the second run's wall time. A case ``ours:<structure>:predict:<MiB>`` predicts with
``Laplace(..., memory_budget=MiB·2²⁰)``: the predictive works in chunks of rows whose
recorded layer inputs and C output-gradient columns fit that budget, so the budget, not the
batch, sets its peak. The ``operator`` predictive predicts only the first ``N_OPERATOR``
inputs (one chunk of the default budget): each of its B·C output rows is a CG solve over the
training data, every CG step a pass over the data (about 60 steps at the float32 tolerance),
so a full batch would take hours.

laplace-torch (``make peer``) and curvlinops-for-pytorch are optional peers.

Usage::

    python benchmarks/bench_memory.py [--n-predict 400] [--runs 1] [--only ours:lanczos:predict ...]

With ``--runs K`` every case runs in K fresh processes and the table gives the median peak
and time, and the range of the peaks: an allocator's caching moves a peak by about 1 MB.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import threading
import time
import warnings

import torch

N_PREDICT = 400
N_OPERATOR = 9  # inputs the operator predictive predicts (see above)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sampled_peak(fn):
    """``fn()`` and how far the resident memory rose above its start while it ran, MB: the
    process's own peak (``ru_maxrss``) when ``fn`` sets a new one, else a 1 ms sampler's."""
    base, before = _rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    top, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            top[0] = max(top[0], _rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = after if after > before else max(top[0], _rss_mb())
    return out, peak - base


def _setup(path: str, n_predict: int):
    from common import load_digits_split, make_mlp, prediction_inputs

    x, y, xt, _ = load_digits_split()
    model = make_mlp(256, 0)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128)
    return model, loader, prediction_inputs(x, xt, n_predict)


def _structure_mb(la) -> float:
    state = la.structure.state_dict()

    def size(v):
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, dict):
            return sum(size(u) for u in v.values())
        if isinstance(v, list | tuple):
            return sum(size(u) for u in v)
        return 0

    return size(state) / 2**20


def _case(name: str, path: str, n_predict: int, queue) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    side, structure, what, *budget = name.split(":")
    if structure == "operator" and what == "predict":
        n_predict = N_OPERATOR
    model, loader, xp = _setup(path, n_predict)
    options = {"memory_budget": int(budget[0]) * 2**20} if budget else {}
    subset = "all"
    if structure.startswith("last_layer-"):  # the last layer's structure (full: P_ll²)
        subset, structure = "last_layer", structure.removeprefix("last_layer-")
    fitted = None
    if side == "ours":
        from laplacetorch import Laplace

        def fit():
            return Laplace(model, "classification", subset, structure, **options).fit(loader)
    elif side == "laplace-torch":
        from common import theirs_laplace

        def fit():
            la = theirs_laplace(model, structure, subset=subset)
            la.fit(loader)
            return la
    else:
        import curvlinops
        from torch import nn

        kind = {"kfac": curvlinops.KFACLinearOperator, "ekfac": curvlinops.EKFACLinearOperator}

        def fit():
            op = kind[structure](
                model, nn.CrossEntropyLoss(reduction="sum"), list(model.parameters()), loader,
                fisher_type="type-2", separate_weight_and_bias=False, check_deterministic=False,
            )  # fmt: skip
            op.compute_kronecker_factors()
            if structure == "ekfac":
                op.compute_eigenvalue_correction()
            return op

    fitted = fit()  # warm: lazy imports and first-call caches are not the case's memory
    if what == "predict":
        fitted(xp) if side == "ours" else fitted(xp, link_approx="probit")
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory leaves the resident set
    t0 = time.perf_counter()
    if what == "fit":
        out, peak = _sampled_peak(fit)
    elif side == "ours":
        out, peak = _sampled_peak(lambda: fitted(xp))
    else:
        out, peak = _sampled_peak(lambda: fitted(xp, link_approx="probit"))
    seconds = time.perf_counter() - t0
    extra = _structure_mb(out if what == "fit" else fitted) if side == "ours" else float("nan")
    queue.put((name, peak, extra, seconds))


def _activations_mb(model, xp) -> float:
    """Three forward passes' activations of the predicted batch (every layer's output)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
             for m in model.modules() if not list(m.children())]  # fmt: skip
    with torch.no_grad():
        model(xp)
    for h in hooks:
        h.remove()
    return 3 * sum(sizes) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-predict", type=int, default=N_PREDICT)
    parser.add_argument("--only", nargs="*", help="run only these cases")
    parser.add_argument(
        "--runs", type=int, default=1, help="fresh processes per case: median and range"
    )
    args = parser.parse_args()
    from common import SEED, load_digits_split, make_mlp, train

    x, y, _, _ = load_digits_split()
    model = make_mlp(256, SEED)
    train(model, x, y, 20, SEED)
    try:
        import laplace  # noqa: F401

        peer = True
    except ImportError:
        peer = False
    try:
        import curvlinops  # noqa: F401

        cl = True
    except ImportError:
        cl = False
    every = ("diag", "hutchinson", "kfac", "ekfac", "lanczos", "last_layer-full")
    cases = [f"ours:{s}:{w}" for s in every for w in ("fit", "predict")]
    # the predictive's peak is set by its chunks (memory_budget): C output-gradient columns
    # of every layer per row; a small budget trades speed for memory
    cases += [f"ours:{s}:predict:1" for s in every]
    cases += ["ours:operator:fit", "ours:operator:predict"]
    if peer:
        theirs = ("diag", "kron", "last_layer-full")
        cases += [f"laplace-torch:{s}:{w}" for s in theirs for w in ("fit", "predict")]
    if cl:
        cases += ["curvlinops:kfac:fit", "curvlinops:ekfac:fit"]
    if args.only:
        cases = args.only
    print(
        f"load average {os.getloadavg()[0]:.2f}; 64-256-256-10 MLP, 1500 digits, "
        f"{args.n_predict} predicted; peaks above the loaded process, MB"
    )
    from common import prediction_inputs

    _, _, xt, _ = load_digits_split()
    act = _activations_mb(model, prediction_inputs(x, xt, args.n_predict))
    act_operator = _activations_mb(model, prediction_inputs(x, xt, N_OPERATOR))
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp.pt")
        torch.save(model.state_dict(), path)
        spread = f" {'range of ' + str(args.runs):>14}" if args.runs > 1 else ""
        print(
            f"{'case (:memory_budget MiB)':<38} {'peak MB':>8} {'structure MB':>13} "
            f"{'3 fwd acts MB':>14} {'seconds':>8}{spread}"
        )
        for name in cases:
            peaks, times = [], []
            for _ in range(max(1, args.runs)):
                q = ctx.Queue()
                p = ctx.Process(target=_case, args=(name, path, args.n_predict, q))
                p.start()
                _, peak, extra, seconds = q.get(timeout=600)
                p.join()
                peaks.append(peak)
                times.append(seconds)
            a = act_operator if name.startswith("ours:operator:predict") else act
            acts = f"{a:14.2f}" if ":predict" in name else " " * 14
            peak, seconds = statistics.median(peaks), statistics.median(times)
            rng = f" {min(peaks):6.1f}-{max(peaks):<7.1f}" if args.runs > 1 else ""
            print(f"{name:<38} {peak:8.1f} {extra:13.2f} {acts} {seconds:8.3f}{rng}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
