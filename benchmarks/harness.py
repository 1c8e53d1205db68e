"""Shared timing / memory / reporting helpers for the benchmark scripts.

Discipline: warm-up, device synchronisation, median of repeats, peak memory
(``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak resident set size of a fresh subprocess or,
in-process, the increase of the process's high-water mark), a config header, a printed table and JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _pin_glibc_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations >= ``threshold`` with mmap and return them to the OS on free.

    By default glibc raises its mmap threshold after large frees and then keeps freed tensors in the
    heap, so the RSS high-water mark stops moving after a warm-up and CPU peak memory reads ~0. Fixing
    the threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps every large tensor visible to the RSS counters.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        return False


_MMAP_PINNED = _pin_glibc_mmap_threshold()


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str | torch.device = "cpu", warmup: int = 2, repeats: int = 5,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed runs; return median/IQR/min in milliseconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync(device)
        samples.append((clock() - t0) * 1e3)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "iqr_ms": q[2] - q[0], "min_ms": min(samples),
            "samples_ms": samples}


def _vm_hwm_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_hwm() -> bool:
    """Reset the process's RSS high-water mark (Linux ``clear_refs`` 5); return True if supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Peak memory in MiB attributable to one call of ``fn``.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call. CPU: increase of the
    resident-set high-water mark over the RSS before the call (after resetting the mark where Linux
    allows it). CPU figures include allocator caching effects; compare blocks run the same way.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _reset_hwm()
    base = _rss_kb()
    fn()
    return max(0, _vm_hwm_kb() - base) / 1024


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _vm_hwm_kb()


def peak_memory_subprocess(code: str, timeout: float = 600) -> float:
    """Peak RSS (MiB) of running ``code`` in a fresh Python process, minus that process's baseline after imports.

    ``code`` must define the work after a line ``# --- measure ---``; everything before it is setup.
    """
    setup, _, work = code.partition("# --- measure ---")
    script = (
        setup
        + "\nimport benchmarks.harness as _h\n_h._reset_hwm()\n_b = _h._rss_kb()\n"
        + work
        + "\nprint('PEAK_KB', _h._vm_hwm_kb() - _b)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{out.stderr[-2000:]}")
    for line in out.stdout.splitlines():
        if line.startswith("PEAK_KB"):
            return max(0, int(line.split()[1])) / 1024
    raise RuntimeError("memory subprocess printed no PEAK_KB line")


def config_header(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Library and torch versions, device name, threads, date: the header of every JSON result."""
    try:
        import wsss_blocks

        lib = wsss_blocks.__version__
    except Exception:  # pragma: no cover
        lib = "unknown"
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "wsss_blocks": lib,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def check_target(value: float, target: float, higher_is_better: bool = True) -> bool:
    """True when ``value`` meets ``target`` (>= for higher-is-better, <= otherwise)."""
    return value >= target if higher_is_better else value <= target


def pass_fail_line(name: str, value: float, target: float, higher_is_better: bool = True,
                   unit: str = "") -> str:
    ok = check_target(value, target, higher_is_better)
    op = ">=" if higher_is_better else "<="
    return f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3g}{unit} (target {op} {target:g}{unit})"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Print (and return) a markdown table of ``rows``."""
    if not rows:
        print("(no rows)")
        return ""
    cols = list(columns) if columns else [k for k in rows[0] if k != "samples_ms"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, bool):
            return "PASS" if v else "FAIL"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def write_json(name: str, rows: Sequence[dict[str, Any]], device: str | torch.device = "cpu",
               out_dir: Path | str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"config": header, "rows": rows}`` to ``<out_dir>/<name>.json`` atomically; return the path."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config_header(device), "rows": list(rows)}
    if extra:
        payload.update(extra)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
    return path
