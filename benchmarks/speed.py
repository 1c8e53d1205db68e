"""Speed and memory suite: runs every ``benchmarks/bench_*.py`` family and writes one JSON file.

Usage::

    python -m benchmarks.speed --device cpu --quick          # smoke run, under 3 minutes on 2 cores
    python -m benchmarks.speed --device cuda                 # full suite on a GPU
    python -m benchmarks.speed --only core,crf --out /tmp/results

Each family module exposes ``run(device, quick) -> list[dict]``. Rows carrying ``passed`` are targets
from the issues; they are printed as PASS/FAIL lines and never change the exit code. A family that
raises makes the exit code 1 (the CI smoke test checks that the scripts work, not the figures).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS_DIR, print_table, write_json

COLUMNS = ["name", "params", "median_ms", "baseline_ms", "ratio", "peak_mem_mb", "baseline_mem_mb", "target",
           "passed"]


def families() -> list[str]:
    """Names of the benchmark families (``bench_<name>.py`` beside this file)."""
    here = Path(__file__).resolve().parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL lines for rows that carry a target."""
    lines = []
    for r in rows:
        if "passed" in r and r["passed"] is not None:
            status = "PASS" if r["passed"] else "FAIL"
            lines.append(f"{status}  [{r.get('family', '?')}] {r['name']}: {r.get('target', '')}")
    return lines


def run_suite(device: str, quick: bool, only: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for fam in families():
        if only and fam not in only:
            continue
        t0 = time.perf_counter()
        print(f"\n## {fam}", flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.bench_{fam}")
            fam_rows = mod.run(device=device, quick=quick)
        except Exception:
            errors.append(fam)
            traceback.print_exc()
            continue
        for r in fam_rows:
            r.setdefault("family", fam)
        print_table(fam_rows, [c for c in COLUMNS if any(c in r for r in fam_rows)])
        print(f"({fam}: {time.perf_counter() - t0:.1f} s)")
        rows.extend(fam_rows)
    return rows, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="wsss-blocks speed and memory suite")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small sizes; a smoke run")
    ap.add_argument("--only", default="", help="comma-separated families, e.g. core,crf")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON results")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: 1 with --quick, torch's default otherwise)")
    args = ap.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        if threads < 1:
            print(f"error: --threads must be >= 1, got {threads}", file=sys.stderr)
            return 2
        # quick mode runs tiny tensors: one thread avoids OpenMP start-up and spin-wait costs
        # (measured here: the quick suite took 215 s with 2 threads on a busy 2-core machine, 57 s with 1)
        torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    only = [s for s in args.only.split(",") if s] or None
    unknown = set(only or []) - set(families())
    if unknown:
        print(f"error: unknown families {sorted(unknown)}; available: {families()}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows, errors = run_suite(args.device, args.quick, only)
    print("\n## targets")
    for line in summarize(rows):
        print(line)
    name = f"speed_{args.device}{'_quick' if args.quick else ''}"
    path = write_json(name, rows, args.device, args.out,
                      extra={"quick": args.quick, "errors": errors, "wall_s": time.perf_counter() - t0})
    print(f"\nwrote {path} ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    if errors:
        print(f"families that failed: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
