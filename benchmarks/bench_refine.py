"""Benchmark: fast PAR / VARM (wsss_blocks.refine) against the straightforward released algorithm.

Configuration of the target (issue 7): batch 2 × 21 maps × 224², 10 iterations, dilations (1, 2, 4, 8, 12, 24).
Targets: outputs equal to 1e-5 (max abs), >= 20× faster, <= 1/8 of the baseline's peak memory.

Method
------
* **Time**: one process, the baseline (``benchmarks/par_baseline.py``) and the fast refiner called
  **interleaved** (baseline, fast, fast, baseline, ...) after a warm-up of each, so that load from other processes
  hits both alike. Reported: median wall-clock ms (``median_ms``) and median process CPU ms (``cpu_ms``,
  ``time.process_time``, summed over threads). The speed ratio uses the wall-clock medians.
* **Peak memory, CPU**: every measurement runs in a **fresh subprocess** (``harness.peak_memory_subprocess``):
  inputs are built, the RSS high-water mark is reset (``/proc/self/clear_refs`` = 5), one call runs, and the
  reported figure is ``VmHWM - VmRSS`` before the call, i.e. the extra resident memory the call needed
  (tracemalloc cannot see torch's allocations). **CUDA**: ``torch.cuda.max_memory_allocated`` above the
  allocation before the call. ``--quick`` measures CPU memory in-process (``harness.peak_memory``: after the
  warm-up, so allocator caching makes it a lower bound) to stay fast.

Run ``python benchmarks/bench_refine.py [--device cuda] [--quick]``; results go to
``benchmarks/results/bench_refine[_quick]_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.par_baseline import baseline_par, baseline_varm
from wsss_blocks.propagation import DEFAULT_DILATIONS
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine

SPEED_TARGET = 20.0
MEM_TARGET = 1 / 8
DIFF_TARGET = 1e-5

_MEM_SETUP = """
import torch
torch.set_num_threads({threads})
from benchmarks.par_baseline import baseline_par, baseline_varm
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine
g = torch.Generator().manual_seed(0)
image = torch.rand({b}, 3, {h}, {w}, generator=g)
maps = torch.rand({b}, {c}, {h}, {w}, generator=g).softmax(1)
fn = {fn}
# --- measure ---
out = fn(image, maps)
"""

# name: (fast refiner, baseline function, the same two as source for the memory subprocess)
_CASES: dict[str, tuple[Callable[[int], Callable], Callable[[int], Callable], str, str]] = {
    "PixelAdaptiveRefine": (lambda it: PixelAdaptiveRefine(num_iter=it), lambda it: partial(baseline_par, num_iter=it),
                            "PixelAdaptiveRefine(num_iter={it})", "lambda i, m: baseline_par(i, m, num_iter={it})"),
    "VariationAwareRefine": (lambda it: VariationAwareRefine(num_iter=it),
                             lambda it: partial(baseline_varm, num_iter=it),
                             "VariationAwareRefine(num_iter={it})", "lambda i, m: baseline_varm(i, m, num_iter={it})"),
}


def _timed(fn, device: str) -> tuple[float, float, Any]:
    harness.sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    harness.sync(device)
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3, out


def _interleaved(fast, base, device: str, base_repeats: int, fast_per_base: int) -> dict[str, Any]:
    fast()
    base()  # warm-up of both
    f_wall, f_cpu, b_wall, b_cpu = [], [], [], []
    f_out = b_out = None
    for _ in range(base_repeats):
        w, c, b_out = _timed(base, device)
        b_wall.append(w)
        b_cpu.append(c)
        for _ in range(fast_per_base):
            w, c, f_out = _timed(fast, device)
            f_wall.append(w)
            f_cpu.append(c)
    assert f_out is not None
    assert b_out is not None
    diff = float((f_out - b_out).abs().max())
    return {"fast_wall": f_wall, "fast_cpu": f_cpu, "base_wall": b_wall, "base_cpu": b_cpu, "diff": diff}


def _peak_mb(code_fn: str, device: str, b: int, c: int, h: int, w: int, fn_obj, quick: bool) -> float:
    if torch.device(device).type == "cuda" or quick:
        g = torch.Generator().manual_seed(0)
        image = torch.rand(b, 3, h, w, generator=g).to(device)
        maps = torch.rand(b, c, h, w, generator=g).softmax(1).to(device)
        return harness.peak_memory(lambda: fn_obj(image, maps), device)
    code = _MEM_SETUP.format(threads=torch.get_num_threads(), b=b, c=c, h=h, w=w, fn=code_fn)
    return harness.peak_memory_subprocess(code)


def run(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    """Time and measure PAR and VARM against the release-style baseline; one row per refiner."""
    if quick:
        b, c, h, w, it, base_repeats, fast_per_base = 1, 5, 64, 64, 3, 2, 2
    else:
        b, c, h, w, it, base_repeats, fast_per_base = 2, 21, 224, 224, 10, 3, 3
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, h, w, generator=g).to(device)
    maps = torch.rand(b, c, h, w, generator=g).softmax(1).to(device)
    params = f"B={b} C={c} {h}x{w} iters={it} dilations={DEFAULT_DILATIONS}"
    rows = []
    for name, (make_fast, make_base, fast_code, base_code) in _CASES.items():
        fast_mod, base_fn = make_fast(it), make_base(it)
        with torch.no_grad():
            t = _interleaved(lambda m=fast_mod: m(image, maps), lambda f=base_fn: f(image, maps), device,
                             base_repeats, fast_per_base)
            fast_mem = _peak_mb(fast_code.format(it=it), device, b, c, h, w, fast_mod, quick)
            base_mem = _peak_mb(base_code.format(it=it), device, b, c, h, w, base_fn, quick)
        f_med, b_med = statistics.median(t["fast_wall"]), statistics.median(t["base_wall"])
        speedup = b_med / f_med
        mem_ratio = fast_mem / base_mem if base_mem > 0 else float("nan")
        passed = None if quick else (  # the targets are defined for the full configuration only
            harness.check_target(speedup, SPEED_TARGET) and harness.check_target(mem_ratio, MEM_TARGET, False)
            and harness.check_target(t["diff"], DIFF_TARGET, False))
        rows.append({
            "name": name, "params": params, "threads": torch.get_num_threads(),
            "median_ms": f_med, "cpu_ms": statistics.median(t["fast_cpu"]), "peak_mem_mb": fast_mem,
            "baseline_median_ms": b_med, "baseline_cpu_ms": statistics.median(t["base_cpu"]),
            "baseline_peak_mem_mb": base_mem,
            "speedup": speedup, "cpu_speedup": statistics.median(t["base_cpu"]) / statistics.median(t["fast_cpu"]),
            "mem_ratio": mem_ratio, "max_abs_diff": t["diff"],
            "target": f"speedup>={SPEED_TARGET:g}, mem_ratio<={MEM_TARGET:g}, diff<={DIFF_TARGET:g}"
                      + (" (quick config: targets apply to the full config)" if quick else ""),
            "passed": passed,
            "samples_ms": {"fast": t["fast_wall"], "baseline": t["base_wall"]},
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.quick)
    print(harness.config_header(args.device))
    harness.print_table(rows, ["name", "params", "median_ms", "cpu_ms", "peak_mem_mb", "baseline_median_ms",
                               "baseline_peak_mem_mb", "speedup", "cpu_speedup", "mem_ratio", "max_abs_diff",
                               "passed"])
    dev = torch.device(args.device).type
    tag = f"{'_quick' if args.quick else ''}_{dev}" + (f"_{args.threads}threads" if args.threads else "")
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        tag += "_omp_passive"
    path = harness.write_json(f"bench_refine{tag}", rows, args.device,
                              extra={"env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
                                     "loadavg_after": os.getloadavg()})
    print(f"wrote {path}")
    for r in ([] if args.quick else rows):
        print(harness.pass_fail_line(f"{r['name']} speedup", r["speedup"], SPEED_TARGET, unit="x"))
        print(harness.pass_fail_line(f"{r['name']} memory ratio", r["mem_ratio"], MEM_TARGET, False))
        print(harness.pass_fail_line(f"{r['name']} max abs diff", r["max_abs_diff"], DIFF_TARGET, False))


if __name__ == "__main__":
    main()
