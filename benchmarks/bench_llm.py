"""Laplace on a GPT-2-architecture LM with LoRA in bfloat16 (issue 31): the measured costs.

The model of ``examples/llm_lora.py`` at the issue's size: 4 layers, n_embd 256, the GPT-2
vocabulary of V = 50,257, T = 64, random weights from a config (no download), bf16, LoRA
r = 8 on ``attn.c_attn`` and ``attn.c_proj`` (49,152 weights; float32 as peft keeps them,
or ``--lora-dtype bfloat16``). Next-token prediction on padded batches (``ignore_index``).
Each part runs in a fresh child process, so that its peak memory is its own: the child
returns freed blocks to the system (``MALLOC_MMAP_THRESHOLD_``, ``malloc_trim``), resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads ``VmHWM`` − ``VmRSS`` of the
measured call. It prints, with the issue's targets:

1. ``fit``: MC-Fisher KFAC fit time against one gradient epoch of the same batches (timed
   before and after it in the same process), its parts (first-batch checks, the data
   passes, the eigendecompositions), and its peak memory beside a training step's
   (forward, backward, Adam step);
2. ``predict``: the full-vocabulary predictive ``la(x, link_approx="mc", n_samples=S)``
   (streamed linearised samples) and ``la.uncertainty(x, n_samples=S)`` against one forward
   pass of the same batch (time and peak memory), the ``nn`` uncertainty and the top-10
   predictive ``la.top_k(x, 10, n_samples=S)`` beside them, and the
   profile of one streamed sample by operator;
3. ``refuse``: exact-Fisher KFAC and the default GLM (probit) predictive refused by the
   memory pre-check (``MemoryBudgetError``) before anything is formed;
4. ``choice``: the multiple-choice variant (logits of 4 answer tokens at the last position,
   ``[B, 4]``): LoRA KFAC with the exact Fisher, fit in gradient epochs and the probit
   predictive per sequence.

Usage (about 6 minutes on two shared CPU cores; ``--quick``: a tiny model, seconds)::

    python benchmarks/bench_llm.py [--quick] [--lora-dtype float32] [--batches 8]
                                   [--batch 8] [--pred-batch 4] [--samples 16] [--threads T]
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm_lora as lm

from laplacetorch import Laplace
from laplacetorch.memory import MemoryBudgetError

FULL = lm.Size()  # the size
QUICK = lm.Size(vocab=2_000, layers=2, embd=64, heads=2, positions=16, rank=4)
TARGETS = {"fit": 2.5, "pred_mem": 3.0}  # gradient epochs; forward passes' peak memory


# ----------------------------------------------------------------------------- measuring
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(fn) -> tuple[Any, float, int]:
    """``(fn(), wall seconds, peak bytes above the resident memory at the call)``: freed
    memory is handed back first and the kernel's peak mark reset to the current RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to VmRSS
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, 1024 * (_status_kb("VmHWM") - base)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gradient_epoch(model, data, loss_of) -> None:
    """One gradient pass: forward, summed loss and backward for every batch."""
    model.zero_grad(set_to_none=True)
    for batch in data:
        loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)


def lm_sum_loss(model, batch):
    logits = model(**lm.inputs_of(batch)).logits
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1),
        batch["labels"].flatten(),
        ignore_index=lm.IGNORE,
        reduction="sum",
    )


def choice_sum_loss(model, batch):
    return torch.nn.functional.cross_entropy(
        model(**lm.inputs_of(batch)).float(), batch["labels"], reduction="sum"
    )


def training_step(model, batch, loss_of) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    loss_of(model, batch).backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()


def profile_parts(fn, names: dict[str, str]) -> dict[str, float]:
    """Cumulative seconds of the functions ``names`` (label -> function name) in ``fn()``."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = dict.fromkeys(names, 0.0)
    for (_, _, func), (_, _, _, ct, callers) in stats.items():
        for label, name in names.items():
            # count the outermost calls only (a recursive or re-entered name once)
            if func == name and not any(c[2] == name for c in callers):
                out[label] += ct
    return out


# ----------------------------------------------------------------------------- the parts
def _setup(args) -> tuple[lm.Size, torch.nn.Module, list[dict[str, torch.Tensor]]]:
    size = QUICK if args.quick else FULL
    model = lm.build_lm(size, 0, getattr(torch, args.lora_dtype))
    n = args.batches * args.batch
    data = lm.batches(lm.run_language(n, size, 1), args.batch)
    return size, model, data


def part_fit(args) -> dict[str, Any]:
    _, model, data = _setup(args)
    gradient_epoch(model, data[:1], lm_sum_loss)  # warm-up
    before = timed(lambda: gradient_epoch(model, data, lm_sum_loss))
    _, step_s, step_mem = measured(lambda: training_step(model, data[0], lm_sum_loss))
    la, fit_s, fit_mem = measured(lambda: lm.fit_lm_laplace(model, data))
    after = timed(lambda: gradient_epoch(model, data, lm_sum_loss))
    out = {
        "epoch_s": [before, after],
        "fit_s": fit_s,
        "fit_mem": fit_mem,
        "step_s": step_s,
        "step_mem": step_mem,
        "n_params": la.n_params,
    }
    if not args.no_profile:  # a second fit, profiled: where its time goes
        out["fit_parts"] = profile_parts(
            lambda: lm.fit_lm_laplace(model, data),
            {
                "first-batch model checks": "check_first_batch",
                "which layers get blocks (first batch)": "blocked_layers",
                "data passes (forward, MC backward, factors)": "layer_passes",
                "eigendecompositions": "symmetric_eigh",
            },
        )
    return out


def part_predict(args) -> dict[str, Any]:
    size, model, data = _setup(args)
    la = lm.fit_lm_laplace(model, data[:1])
    x = lm.inputs_of(lm.batches(lm.run_language(args.pred_batch, size, 2), args.pred_batch)[0])
    s = args.samples

    def forward():
        with torch.no_grad():
            return model(**x).logits.float()  # the float32 logits every predictive returns

    forward()
    fwd_times = [timed(forward) for _ in range(3)]
    _, _, fwd_mem = measured(forward)
    probs, mc_s, mc_mem = measured(lambda: la(x, link_approx="mc", n_samples=s))
    unc, unc_s, unc_mem = measured(lambda: la.uncertainty(x, n_samples=s))
    _, nn_s, nn_mem = measured(lambda: la.uncertainty(x, pred_type="nn", n_samples=s))
    top_k, top_s, top_mem = measured(lambda: la.top_k(x, 10, n_samples=s))
    fwd_times += [timed(forward) for _ in range(3)]
    # one streamed linearised sample, by operator (self time, the top ones)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        la.uncertainty(x, n_samples=1)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in ops[:8]]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    fwd_prof = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    return {
        "fwd_s": statistics.median(fwd_times),
        "fwd_times": fwd_times,
        "fwd_mem": fwd_mem,
        "mc_s": mc_s,
        "mc_mem": mc_mem,
        "unc_s": unc_s,
        "unc_mem": unc_mem,
        "nn_s": nn_s,
        "nn_mem": nn_mem,
        "top_s": top_s,
        "top_mem": top_mem,
        "top_gap": float((top_k.probs - top_k.map_probs).abs().mean()),
        "shape": list(probs.shape),
        "entropy": [float(v.mean()) for v in (unc.total, unc.aleatoric, unc.epistemic)],
        "sample_ops": top,
        "sample_total": total / 1e6,
        "fwd_profiled": fwd_prof,
    }


def _refused(call) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        call()
    except MemoryBudgetError as err:
        return str(err), time.perf_counter() - t0
    raise SystemExit("not refused")


def part_refuse(args) -> dict[str, Any]:
    _, model, data = _setup(args)
    # the default limit (80 % of the memory available); --quick's tiny model fits it, so a
    # limit of 256 MB stands in for it there
    limit = {"memory_limit": 2**28} if args.quick else {}
    exact = Laplace(
        model, "classification", "all", "kfac", outputs="sequence", ignore_index=lm.IGNORE, **limit
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kfac_msg, kfac_s = _refused(lambda: exact.fit(data[:1]))
    la = lm.fit_lm_laplace(model, data[:1], **limit)
    glm_msg, glm_s = _refused(lambda: la(lm.inputs_of(data[0])))
    return {"kfac": [kfac_msg, kfac_s], "glm": [glm_msg, glm_s]}


def part_choice(args) -> dict[str, Any]:
    size = QUICK if args.quick else FULL
    answers = [0, 1, 2, 3]
    model = lm.AnswerLogits(lm.build_lm(size, 3, getattr(torch, args.lora_dtype)), answers)
    data = lm.batches(lm.choice_prompts(args.batches * args.batch, size, answers, 4), args.batch)
    gradient_epoch(model, data[:1], choice_sum_loss)
    before = timed(lambda: gradient_epoch(model, data, choice_sum_loss))

    def fit():
        la = Laplace(model, "classification", "all", "kfac")  # exact Fisher, C = 4
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return la.fit(data)

    la, fit_s, fit_mem = measured(fit)
    after = timed(lambda: gradient_epoch(model, data, choice_sum_loss))
    x = lm.inputs_of(data[0])
    la(x)  # the first call learns the layer plan of this input signature
    _, pred_s, pred_mem = measured(lambda: la(x))
    with torch.no_grad():
        fwd_s = statistics.median(timed(lambda: model(**x)) for _ in range(3))
    return {
        "epoch_s": [before, after],
        "fit_s": fit_s,
        "fit_mem": fit_mem,
        "pred_s": pred_s,
        "pred_mem": pred_mem,
        "fwd_s": fwd_s,
        "n": len(data[0]["labels"]),
        "n_params": la.n_params,
    }


PARTS = {"fit": part_fit, "predict": part_predict, "refuse": part_refuse, "choice": part_choice}


# ----------------------------------------------------------------------------- the parent
def _child(part: str, argv: list[str]) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--part", part, *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"part {part} failed:\n{done.stdout}\n{done.stderr}")


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny model: a smoke run")
    p.add_argument("--lora-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batches", type=int, default=8, help="batches of the fit and the epoch")
    p.add_argument("--batch", type=int, default=8, help="sequences per batch")
    p.add_argument("--pred-batch", type=int, default=4, help="sequences of the predictive")
    p.add_argument("--samples", type=int, default=16, help="S of the mc predictive")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-profile", action="store_true", help="skip the profiled second fit")
    p.add_argument("--parts", default="refuse,fit,predict,choice")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.part:
        print("RESULT " + json.dumps(PARTS[args.part](args)))
        return
    argv, skip = [], False  # the children get every flag but --parts (and its value)
    for a in sys.argv[1:]:
        if not skip and not a.startswith("--parts"):
            argv.append(a)
        skip = a == "--parts"
    size = QUICK if args.quick else FULL
    s = args.samples
    print(
        f"GPT-2 LM from a config: V = {size.vocab}, {size.layers} layers, n_embd {size.embd}, "
        f"T = {size.positions}; bf16, LoRA r = {size.rank} ({args.lora_dtype}); "
        f"fit on {args.batches} batches of {args.batch}, predictive on {args.pred_batch}, "
        f"S = {s}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()}\n"
    )
    res: dict[str, Any] = {}
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        res[part] = r = _child(part, argv)
        print(f"[{part}: {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()}]")
        if part == "refuse":
            for name, key in (
                ("kfac, fisher_type='exact'", "kfac"),
                ("la(x) (glm, probit)", "glm"),
            ):
                msg, sec = r[key]
                print(f"  {name}: refused in {sec:.2f} s\n    MemoryBudgetError: {msg}")
        elif part == "fit":
            epoch = statistics.mean(r["epoch_s"])
            ratio = r["fit_s"] / epoch
            print(
                f"  MC-Fisher KFAC over {r['n_params']} LoRA weights: fit {r['fit_s']:.3g} s, "
                f"gradient epoch {epoch:.3g} s (before {r['epoch_s'][0]:.3g}, after "
                f"{r['epoch_s'][1]:.3g}): {ratio:.2f} gradient epochs; target <= "
                f"{TARGETS['fit']}: {_verdict(ratio <= TARGETS['fit'])}"
            )
            for label, sec in r.get("fit_parts", {}).items():
                print(f"    {label:<45} {sec:6.1f} s  (profiled second fit)")
            print(
                f"  peak memory: fit {_mb(r['fit_mem'])}, a training step (forward, "
                f"backward, Adam) {_mb(r['step_mem'])} ({r['step_s']:.1f} s)"
            )
        elif part == "predict":
            fwd, mem = r["fwd_s"], r["fwd_mem"]
            print(
                f"  one forward pass of {args.pred_batch} sequences: {fwd:.3g} s (median of "
                f"{len(r['fwd_times'])}: {min(r['fwd_times']):.2f} to "
                f"{max(r['fwd_times']):.2f}), peak {_mb(mem)}"
            )
            for name, key in (
                (f"la(x, link_approx='mc', n_samples={s}) {r['shape']}", "mc"),
                (f"la.uncertainty(x, n_samples={s})", "unc"),
                (f"la.uncertainty(x, pred_type='nn', n_samples={s})", "nn"),
                (f"la.top_k(x, 10, n_samples={s}) (the top-10 tokens per position)", "top"),
            ):
                t, m = r[f"{key}_s"], r[f"{key}_mem"]
                line = (
                    f"  {name}: {t:.3g} s = {t / fwd:.1f} forward passes, peak {_mb(m)} = "
                    f"{m / mem:.1f} forward passes"
                )
                if key in ("mc", "unc"):
                    line += (
                        f"; targets <= {1 + 1.5 * s:g} passes: {_verdict(t / fwd <= 1 + 1.5 * s)}"
                        f", <= {TARGETS['pred_mem']:g}x memory: "
                        f"{_verdict(m / mem <= TARGETS['pred_mem'])}"
                    )
                print(line)
            print(f"    top-10: mean |E[p_K] - p_K(MAP)| = {r['top_gap']:.2g}")
            total, aleatoric, epistemic = r["entropy"]
            print(f"    per-token entropy (mean): {total:.3f} = {aleatoric:.3f} + {epistemic:.4f}")
            print(
                f"  one streamed sample, profiled: {r['sample_total']:.2f} s CPU (a forward "
                f"pass: {r['fwd_profiled']:.2f} s); top operators by self time:"
            )
            for key, sec, count in r["sample_ops"]:
                print(f"    {key:<45} {sec:6.2f} s  {count:5d} calls")
        elif part == "choice":
            epoch = statistics.mean(r["epoch_s"])
            print(
                f"  multiple choice ([B, 4] answer logits at the last position), KFAC exact "
                f"Fisher over {r['n_params']} LoRA weights: fit {r['fit_s']:.1f} s = "
                f"{r['fit_s'] / epoch:.2f} gradient epochs ({epoch:.1f} s), peak "
                f"{_mb(r['fit_mem'])}; probit predictive {1e3 * r['pred_s'] / r['n']:.0f} ms "
                f"a sequence ({r['pred_s'] / r['fwd_s']:.1f} forward passes of the batch), "
                f"peak {_mb(r['pred_mem'])}"
            )
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
