"""Benchmark: IRN random walk and boundary affinity loss (wsss_blocks.irn) against the released computation.

Rows:

* ``random_walk`` — `wsss_blocks.irn.random_walk` (sparse, 256 steps) against the release's
  ``propagate_to_edge`` (``benchmarks/irn_baseline.py``: dense ``hw × hw`` transition matrix squared 8 times)
  on one image with 3 present classes, radius 5, beta 10, exp_times 8. The release's cost grows with
  ``(hw)³`` time and ``(hw)²`` memory, so the side-by-side row uses a 48×64 stride-4 grid (a 190×255 image);
  the ``random_walk_voc`` row times the library alone on the VOC-size 94×125 grid (a 375×500 image), where
  the dense matrix alone would take 552 MB and one squaring 3.2·10¹² FLOP.
* ``boundary_affinity_loss`` — forward + backward of `wsss_blocks.irn.boundary_affinity_loss` at the
  released training setting (radius 10 on the 128×128 grid of a 512 crop) against the release's
  ``edge_to_affinity`` + loss lines, batch 2 (the release uses 32 over its GPUs).

Method: baseline and library called **interleaved** after a warm-up of each; median wall-clock ms; peak memory
as the RSS high-water-mark increase of one call in a **fresh subprocess** (CPU, ``harness.peak_memory_subprocess``;
``--quick`` measures in-process, a lower bound) or ``torch.cuda.max_memory_allocated`` (CUDA); ``max_abs_diff``
between the two outputs.

Run ``python benchmarks/bench_irn.py [--device cuda] [--quick] [--threads N]``; results go to
``benchmarks/results/bench_irn[_quick]_<device>[_Nthreads].json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.irn_baseline import (
    ReleasePathIndex,
    release_affinity_labels,
    release_affinity_loss,
    release_propagate_to_edge,
)
from wsss_blocks.irn import affinity_targets, boundary_affinity_loss, random_walk

_WALK_SETUP = """
import torch
torch.set_num_threads({threads})
from benchmarks.irn_baseline import release_propagate_to_edge
from wsss_blocks.irn import random_walk
g = torch.Generator().manual_seed(0)
cams = torch.rand(1, {k}, {h}, {w}, generator=g)
edge = torch.rand(1, 1, {h}, {w}, generator=g) ** 3
# --- measure ---
with torch.no_grad():
    out = {call}
"""

_LOSS_SETUP = """
import torch
import numpy as np
torch.set_num_threads({threads})
from benchmarks.irn_baseline import ReleasePathIndex, release_affinity_labels, release_affinity_loss
from wsss_blocks.irn import affinity_targets, boundary_affinity_loss
g = torch.Generator().manual_seed(0)
logits = torch.randn({b}, 1, {s}, {s}, generator=g, requires_grad=True)
masks = torch.randint(0, 3, ({b}, {s}, {s}), generator=g)
masks[:, ::3] = 255
pi = ReleasePathIndex(10, ({s}, {s}))
labs = [release_affinity_labels(m.numpy().astype(np.uint8), pi.src_indices, pi.dst_indices) for m in masks]
bg, fg, neg = (torch.stack([x[i] for x in labs]) for i in range(3))
targets = affinity_targets(masks, 10)
# --- measure ---
{call}.backward()
"""


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    harness.sync(device)
    t0 = time.perf_counter()
    out = fn()
    harness.sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def _interleaved(fast: Callable[[], Any], base: Callable[[], Any], device: str, repeats: int
                 ) -> tuple[list[float], list[float], Any, Any]:
    fast()
    base()
    f_ms, b_ms, f_out, b_out = [], [], None, None
    for _ in range(repeats):
        t, b_out = _timed(base, device)
        b_ms.append(t)
        t, f_out = _timed(fast, device)
        f_ms.append(t)
    return f_ms, b_ms, f_out, b_out


def _walk_rows(device: str, quick: bool) -> list[dict[str, Any]]:
    h, w = (24, 32) if quick else (48, 64)
    k, repeats = 3, (2 if quick else 3)
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(1, k, h, w, generator=g).to(device)
    edge = (torch.rand(1, 1, h, w, generator=g) ** 3).to(device)

    def fast() -> torch.Tensor:
        return random_walk(cams, edge)[0]

    def base() -> torch.Tensor:
        return release_propagate_to_edge(cams[0], edge[0])[:, 0]

    with torch.no_grad():
        f_ms, b_ms, f_out, b_out = _interleaved(fast, base, device, repeats)
    if torch.device(device).type == "cuda" or quick:
        with torch.no_grad():
            f_mem = harness.peak_memory(fast, device)
            b_mem = harness.peak_memory(base, device)
    else:
        fmt = dict(threads=torch.get_num_threads(), k=k, h=h, w=w)
        f_mem = harness.peak_memory_subprocess(_WALK_SETUP.format(call="random_walk(cams, edge)", **fmt))
        b_mem = harness.peak_memory_subprocess(
            _WALK_SETUP.format(call="release_propagate_to_edge(cams[0], edge[0])", **fmt))
    fm, bm = statistics.median(f_ms), statistics.median(b_ms)
    rows = [{
        "name": "random_walk", "params": f"1 image, {k} classes, {h}x{w} grid, r=5, beta=10, exp_times=8, {device}",
        "threads": torch.get_num_threads(), "median_ms": fm, "baseline_ms": bm, "ratio": fm / bm,
        "speedup": bm / fm, "peak_mem_mb": f_mem, "baseline_mem_mb": b_mem,
        "max_abs_diff": float((f_out - b_out).abs().max()),
        "samples_ms": {"library": f_ms, "baseline": b_ms},
    }]
    vh, vw = (47, 63) if quick else (94, 125)
    cams_v = torch.rand(1, k, vh, vw, generator=g).to(device)
    edge_v = (torch.rand(1, 1, vh, vw, generator=g) ** 3).to(device)
    with torch.no_grad():
        t = harness.time_fn(lambda: random_walk(cams_v, edge_v), device, warmup=1, repeats=repeats)
        v_mem = harness.peak_memory(lambda: random_walk(cams_v, edge_v), device)
    n = vh * vw
    rows.append({
        "name": "random_walk_voc", "params": f"1 image, {k} classes, {vh}x{vw} grid (library only), {device}",
        "threads": torch.get_num_threads(), "median_ms": t["median_ms"], "peak_mem_mb": v_mem,
        "baseline_dense_matrix_mb": n * n * 4 / 2**20, "baseline_flop": 8 * 2 * float(n) ** 3,
        "samples_ms": t["samples_ms"],
    })
    return rows


def _loss_rows(device: str, quick: bool) -> list[dict[str, Any]]:
    b, s = (1, 48) if quick else (2, 128)
    repeats = 2 if quick else 3
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, 1, s, s, generator=g).to(device).requires_grad_(True)
    masks = torch.randint(0, 3, (b, s, s), generator=g)
    masks[:, ::3] = 255
    pi = ReleasePathIndex(10, (s, s))
    labs = [release_affinity_labels(m.numpy().astype("uint8"), pi.src_indices, pi.dst_indices) for m in masks]
    bg, fg, neg = (torch.stack([x[i] for x in labs]).to(device) for i in range(3))
    targets = affinity_targets(masks.to(device), 10)

    def fast() -> float:
        logits.grad = None
        loss = boundary_affinity_loss(logits, targets, 10)
        loss.backward()
        return float(loss.detach())

    def base() -> float:
        logits.grad = None
        loss = release_affinity_loss(logits, pi, bg, fg, neg)
        loss.backward()
        return float(loss.detach())

    f_ms, b_ms, f_out, b_out = _interleaved(fast, base, device, repeats)
    if torch.device(device).type == "cuda" or quick:
        f_mem = harness.peak_memory(fast, device)
        b_mem = harness.peak_memory(base, device)
    else:
        fmt = dict(threads=torch.get_num_threads(), b=b, s=s)
        f_mem = harness.peak_memory_subprocess(_LOSS_SETUP.format(call="boundary_affinity_loss(logits, targets, 10)",
                                                                  **fmt))
        b_mem = harness.peak_memory_subprocess(_LOSS_SETUP.format(call="release_affinity_loss(logits, pi, bg, fg, neg)",
                                                                  **fmt))
    fm, bm = statistics.median(f_ms), statistics.median(b_ms)
    return [{
        "name": "boundary_affinity_loss", "params": f"B={b}, {s}x{s} grid, r=10 (152 directions), fwd+bwd, {device}",
        "threads": torch.get_num_threads(), "median_ms": fm, "baseline_ms": bm, "ratio": fm / bm, "speedup": bm / fm,
        "peak_mem_mb": f_mem, "baseline_mem_mb": b_mem, "max_abs_diff": abs(f_out - b_out),
        "samples_ms": {"library": f_ms, "baseline": b_ms},
    }]


def run(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    """Time and measure the random walk and the affinity loss against the released computation."""
    return _walk_rows(device, quick) + _loss_rows(device, quick)


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
    harness.print_table(rows, ["name", "params", "median_ms", "baseline_ms", "speedup", "peak_mem_mb",
                               "baseline_mem_mb", "max_abs_diff"])
    dev = torch.device(args.device).type
    tag = f"{'_quick' if args.quick else ''}_{dev}" + (f"_{args.threads}threads" if args.threads else "")
    path = harness.write_json(f"bench_irn{tag}", rows, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
