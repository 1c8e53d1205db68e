"""GPU suite: one prepared command that measures every GPU claim of the library and checks its goals.

Usage::

    python -m benchmarks.gpu                                  # one CUDA GPU: about 5-8 min including start-up
    python -m benchmarks.gpu --device cpu --quick             # CPU dry run, toy sizes, under 3 min on 2 cores
    python -m benchmarks.gpu --sections crf,refine --merge    # rerun two sections, keep the others' results

Sections, in this order (``benchmarks/gpu_sections.py`` documents each): ``tests`` (``pytest -m cuda``),
``crf`` (torch dense CRF on the GPU vs pydensecrf, agreement), ``refine`` (PAR/VARM vs the release-shaped
algorithm), ``cams`` (multi-scale + flip CAMs, ResNet-38/50, AMP off/on), ``pseudo`` (the pseudo-mask pass of
every ``<method>_voc`` config, projected to VOC train_aug, and PPL's CAMs + IRN's random walk) and ``train``
(training steps of every ``<method>_voc`` config at its real batch and crop). Everything runs on random
weights, scikit-image photos and in-memory VOC-size images: no dataset, no weight file, no download.

Each section runs in its own Python process (isolation: a crash, a CUDA error or an out-of-memory in one
section cannot take the others down, and each starts with empty GPU memory) under ``--timeout-per-section``.
The results file (``--out``, default ``benchmarks/results/gpu_<device>[_quick].json``) is rewritten atomically
after every finished row and section, and the benchmarks page (``docs/benchmarks.md``) is re-rendered after
every section, so a run that is stopped keeps everything it finished. A failed or timed-out section is
recorded with its error and the suite continues. Goal rows carry ``target`` and ``passed``; a missed goal
does not change the exit code, a failed section does (1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# torch is imported where it is needed: a section process imports only what its section uses
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_TIMEOUT_S = 300.0

#: the notes every results file carries (what the figures are, and are not)
NOTES = (
    "Random weights: the VOC configs' pretrained settings are overridden to none (cam.pretrained: null); "
    "the figures measure cost, not quality.",
    "Images: scikit-image photos at VOC sizes (375x500, 500x375, 333x500, 500x333), held in memory (no JPEG "
    "decoding, no PNG writing); labels are 1-3 random classes per image.",
    "Training steps run at lr 1e-6 (random weights can diverge at the released rates; the rate does not change a "
    "step's cost); TSCD runs with cam_iters 0 so that every loss is on.",
)


def section_specs() -> dict[str, tuple[str, str]]:
    """``{name: (title, "module:function")}`` of the suite's sections, in run order."""
    from benchmarks.gpu_sections import SECTIONS

    return {name: (title, f"{fn.__module__}:{fn.__name__}") for name, (title, fn) in SECTIONS.items()}


def default_out(device: str, quick: bool) -> Path:
    return RESULTS_DIR / f"gpu_{device.split(':')[0]}{'_quick' if quick else ''}.json"


def resolve_out(out: str | None, device: str, quick: bool) -> Path:
    """``--out``: a JSON file, or a folder (existing, or written with a trailing slash) for the default name."""
    if out is None:
        return default_out(device, quick)
    p = Path(out)
    if p.is_dir() or out.endswith(("/", os.sep)):
        return p / default_out(device, quick).name
    return p


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ child process
def run_child(spec: str, device: str, quick: bool, rows_path: Path) -> int:
    """Run one section (``module:function``) and save its rows to ``rows_path`` after each one."""
    rows: list[dict[str, Any]] = []
    try:
        mod, _, fn_name = spec.partition(":")
        fn: Callable[[str, bool], Iterator[dict[str, Any]]] = getattr(importlib.import_module(mod), fn_name)
        for row in fn(device, quick):
            rows.append(row)
            _write_json(rows_path, {"rows": rows})
            shown = {k: v for k, v in row.items() if k not in ("samples_ms", "params")}
            print("  row:", json.dumps(shown, default=str), flush=True)
    except BaseException as e:
        _write_json(rows_path, {"rows": rows, "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc()[-6000:]})
        traceback.print_exc()
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ the suite
def _brief(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("device_name", "torch", "wsss_blocks", "threads")}


def _load_previous(path: Path, header: Mapping[str, Any], quick: bool) -> dict[str, Any] | None:
    """The existing results file when it can be merged with this run (same machine, versions and mode)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("suite") != "gpu" or old.get("quick") != quick:
        return None
    if _brief(old.get("config") or {}) != _brief(header):
        print(f"note: {path.name} was written on another machine or version ({_brief(old.get('config') or {})}); "
              "not merged", flush=True)
        return None
    return old


def run_suite(device: str, quick: bool, sections: Sequence[str] | None = None, out: Path | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S, docs: Path | None = None, merge: bool = False,
              threads: int | None = None, specs: Mapping[str, tuple[str, str]] | None = None,
              argv: Sequence[str] | None = None) -> tuple[dict[str, Any], int]:
    """Run the sections one by one, each in a subprocess; returns the results payload and the exit code.

    ``specs`` (default `section_specs`) maps section names to ``(title, "module:function")``; the
    children import the function, so it must be importable from the repository root or ``PYTHONPATH``.
    """
    from benchmarks.harness import config_header

    specs = dict(specs if specs is not None else section_specs())
    selected = [n for n in specs if sections is None or n in sections]
    out = out if out is not None else default_out(device, quick)
    header = config_header(device)
    if threads is not None:
        header["threads"] = threads
    t_start = time.perf_counter()
    payload: dict[str, Any] = {
        "config": header, "suite": "gpu", "quick": quick, "complete": False,
        "command": "python -m benchmarks.gpu " + " ".join(argv or []), "notes": list(NOTES),
        "sections": [], "rows": [], "wall_s": 0.0,
    }
    old = _load_previous(out, header, quick) if merge and out.is_file() else None
    kept: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    if old is not None:
        for sec in old.get("sections", []):
            if sec.get("name") not in selected and sec.get("name") in specs:
                kept[sec["name"]] = (sec, [r for r in old.get("rows", []) if r.get("section") == sec["name"]])
    records: dict[str, dict[str, Any]] = {}
    rows_by: dict[str, list[dict[str, Any]]] = {}
    for name, (title, _) in specs.items():
        if name in kept:
            records[name], rows_by[name] = dict(kept[name][0], merged_from=out.name), kept[name][1]
        elif name in selected:
            records[name], rows_by[name] = {"name": name, "title": title, "status": "pending"}, []
        else:
            records[name], rows_by[name] = {"name": name, "title": title, "status": "not run"}, []

    def save() -> None:
        payload["sections"] = [records[n] for n in specs]
        payload["rows"] = [r for n in specs for r in rows_by[n]]
        payload["wall_s"] = time.perf_counter() - t_start
        _write_json(out, payload)

    def refresh_docs() -> None:
        if docs is None:
            return
        try:
            from benchmarks.render_docs import render

            render(out.parent, docs)
        except Exception as e:
            print(f"warning: could not re-render {docs}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    save()
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rc = 0
    for name in selected:
        title, spec = specs[name]
        rec = records[name]
        rec.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), timeout_s=timeout_s)
        save()
        print(f"\n## {name}: {title}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows_file = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", spec, "--child-rows", str(rows_file),
                   "--device", device] + (["--quick"] if quick else []) + (
                   ["--threads", str(threads)] if threads is not None else [])
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
            status = "ok"
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                status = "timeout"
            except KeyboardInterrupt:
                status = "interrupted"
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the section and everything it started (pytest, workers)
                proc.wait()
            seconds = time.perf_counter() - t0
            child: dict[str, Any] = {}
            if rows_file.is_file():
                try:
                    child = json.loads(rows_file.read_text())
                except ValueError:
                    child = {}
        if status == "ok" and proc.returncode != 0:
            status = "failed"
        rows = []
        for r in child.get("rows", []):
            r = dict(r, section=name, family=f"gpu/{name}")
            rows.append(r)
        rows_by[name] = rows
        rec.update(status=status, seconds=round(seconds, 1), rows=len(rows), config=_brief(header))
        if status == "failed":
            rec["error"] = child.get("error") or f"exit code {proc.returncode}"
            rec["traceback"] = child.get("traceback", "")
        elif status == "timeout":
            rec["error"] = f"stopped after {timeout_s:g} s (--timeout-per-section); {len(rows)} rows kept"
        elif status == "interrupted":
            rec["error"] = "interrupted (Ctrl-C)"
        if status != "ok":
            rc = 1
        save()
        refresh_docs()
        print_section(rec, rows)
        if status == "interrupted":
            break
    payload["complete"] = all(records[n]["status"] == "ok" for n in selected)
    save()
    refresh_docs()
    return payload, rc


# ------------------------------------------------------------------------------------------------ printing
COLUMNS = ("name", "median_ms", "baseline_ms", "speedup", "images_per_s", "steps_per_s", "peak_mem_mb",
           "passed")


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "PASS", False: "FAIL", None: ""}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_section(rec: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    print(f"-- {rec['name']}: {rec['status']} in {rec.get('seconds', 0):g} s"
          + (f" ({rec['error']})" if rec.get("error") else ""), flush=True)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    if rows:
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        for r in rows:
            print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    sys.stdout.flush()


def print_summary(payload: Mapping[str, Any], out: Path) -> None:
    print("\n## GPU suite summary")
    for rec in payload["sections"]:
        if rec["status"] == "not run":
            continue
        print(f"- {rec['name']}: {rec['status']}" + (f", {rec.get('seconds'):g} s" if "seconds" in rec else "")
              + (f", {rec['rows']} rows" if "rows" in rec else "") + (f"; {rec['error']}" if rec.get("error") else ""))
    goals = [r for r in payload["rows"] if isinstance(r.get("passed"), bool)]
    if goals:
        print("\n## goals" + (" (quick sizes: not the goals' configuration)" if payload.get("quick") else ""))
        for r in goals:
            print(f"{'PASS' if r['passed'] else 'FAIL'}  [{r['section']}] {r['name']}: {r['target']}")
    print(f"\nwrote {out} ({len(payload['rows'])} rows, {payload['wall_s']:.1f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run; use with --quick)")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks that every section works")
    ap.add_argument("--sections", default="", help="comma-separated subset, e.g. crf,refine (default: all)")
    ap.add_argument("--timeout-per-section", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                    help=f"stop a section after S seconds, keep its finished rows (default {DEFAULT_TIMEOUT_S:g})")
    ap.add_argument("--out", default=None,
                    help="results JSON file or folder (default benchmarks/results/gpu_<device>[_quick].json)")
    ap.add_argument("--docs", default=None, metavar="PAGE",
                    help="benchmarks page to re-render after each section from the results file's folder "
                         "(default docs/benchmarks.md when --out is in benchmarks/results, else none; 'none' "
                         "to disable)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the sections not run now from an existing results file of the same machine, "
                         "versions and mode (to rerun a failed section)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in the sections (default: 1 with --quick, torch's otherwise)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-rows", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None and threads < 1:
        print(f"error: --threads must be >= 1, got {threads}", file=sys.stderr)
        return 2
    if threads is not None or not args.child:
        import torch

        if threads is not None:
            # quick mode runs small tensors: one thread avoids OpenMP spin-waiting on shared CPUs (as
            # benchmarks.speed); the full suite keeps torch's default
            torch.set_num_threads(threads)
    if args.child:
        return run_child(args.child, args.device, args.quick, Path(args.child_rows))
    import torch

    try:
        dev = torch.device(args.device)
    except RuntimeError:
        print(f"error: --device must be cuda or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if dev.type not in ("cuda", "cpu"):
        print(f"error: --device must be cuda or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available (use --device cpu --quick for a dry run)",
              file=sys.stderr)
        return 2
    if args.timeout_per_section <= 0:
        print(f"error: --timeout-per-section must be > 0, got {args.timeout_per_section}", file=sys.stderr)
        return 2
    specs = section_specs()
    sections = [s for s in args.sections.split(",") if s] or None
    unknown = sorted(set(sections or []) - set(specs))
    if unknown:
        print(f"error: unknown sections {unknown}; available: {', '.join(specs)}", file=sys.stderr)
        return 2
    out = resolve_out(args.out, args.device, args.quick)
    if args.docs is None:
        docs = DEFAULT_DOCS if out.resolve().parent == RESULTS_DIR.resolve() else None
    else:
        docs = None if args.docs.lower() == "none" else Path(args.docs)
    payload, rc = run_suite(args.device, args.quick, sections, out, args.timeout_per_section, docs, args.merge,
                            threads, specs, argv)
    print_summary(payload, out)
    if docs is not None:
        print(f"re-rendered {docs}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
