"""Render the "Benchmarks" docs page and its bar chart from the committed JSON results.

Usage::

    python -m benchmarks.render_docs                                  # benchmarks/results -> docs/benchmarks.md
    python -m benchmarks.render_docs --results /tmp/results --out /tmp/benchmarks.md

Reads every ``*.json`` in the results folder: ``speed_<device>[_quick].json`` from ``benchmarks.speed``,
the per-family files some ``bench_<family>.py`` scripts write, ``quality_*.json`` from
``benchmarks.quality`` and ``gpu_<device>[_quick].json`` from the GPU suite ``benchmarks.gpu`` (its own
section: the goals and per-section tables of a full CUDA run, "unmeasured" without one, and a status line per
dry run). Writes one table per family and device (median time, baseline, time ratio, peak
memory, target, PASS/FAIL) with the hardware, thread count, versions and date from each file's config
header, the quality tables, and a bar chart of the time ratios (``docs/img/benchmarks_overhead.png``).

Which file a table comes from: for each device and family the runner's full run wins, then a family's own
full run, then quick (smoke-size) runs; files at the same level are all shown, files not shown are listed.
The output depends only on the JSON files (no clock, no absolute paths), so re-rendering is reproducible.
Broken or partial files are listed as skipped; a device without results says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
IMG_NAME = "benchmarks_overhead.png"

NO_GPU = "not measured (no GPU in this session)"

# keys rendered in their own columns (or never rendered)
_TIME_KEYS = ("median_ms", "min_ms")
_BASE_TIME_KEYS = ("baseline_median_ms", "baseline_ms")
_MEM_KEYS = ("peak_mem_mb",)
_BASE_MEM_KEYS = ("baseline_mem_mb", "baseline_peak_mem_mb")
_SKIP = {"name", "params", "family", "section", "todo", "target", "passed", "ratio", "samples_ms", *_TIME_KEYS,
         *_BASE_TIME_KEYS, *_MEM_KEYS, *_BASE_MEM_KEYS}

DEVICE_TITLES = {"cpu": "CPU", "cuda": "GPU (CUDA)"}

# tiers: which source wins for a (device, family) pair
_TIER_NAMES = {0: "runner, full", 1: "family script, full", 2: "runner, quick", 3: "family script, quick"}


@dataclass
class Source:
    """One JSON result file."""

    file: str                      # file name (relative: output must not depend on where the folder is)
    kind: str                      # "speed" (runner), "family", "quality", "gpu" (benchmarks.gpu)
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    quick: bool
    device: str                    # "cpu" or "cuda"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tier(self) -> int:
        return (0 if self.kind == "speed" else 1) + (2 if self.quick else 0)


# --------------------------------------------------------------------------------------------- loading


def _device_of(config: dict[str, Any], stem: str) -> str:
    dev = str(config.get("device", "")).lower()
    if dev.startswith("cuda"):
        return "cuda"
    if dev:
        return "cpu" if dev.startswith("cpu") else dev.split(":")[0]
    tokens = stem.lower().split("_")
    return "cuda" if ("cuda" in tokens or "gpu" in tokens) else "cpu"


def _family_of_file(stem: str) -> str:
    s = stem[len("bench_"):] if stem.startswith("bench_") else stem
    return s.split("_")[0] or stem


def load_sources(results: Path) -> tuple[list[Source], list[str]]:
    """Parse every ``*.json`` in ``results``; returns the usable sources and ``"file: reason"`` for the rest."""
    sources: list[Source] = []
    skipped: list[str] = []
    if not results.is_dir():
        return sources, [f"{results.name}/: folder not found"]
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            skipped.append(f"{path.name}: not readable JSON ({type(e).__name__})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            skipped.append(f"{path.name}: no 'rows' list")
            continue
        rows = [r for r in data["rows"] if isinstance(r, dict)]
        if data.get("suite") == "gpu":  # the GPU suite's file: shown in its own section, even without rows
            cfg_g = data.get("config")
            config_g: dict[str, Any] = cfg_g if isinstance(cfg_g, dict) else {}
            extra_g = {k: v for k, v in data.items() if k not in ("rows", "config")}
            sources.append(Source(path.name, "gpu", config_g, rows, bool(data.get("quick")),
                                  _device_of(config_g, path.stem), extra_g))
            continue
        if not rows:
            skipped.append(f"{path.name}: no rows")
            continue
        cfg = data.get("config")
        config: dict[str, Any] = cfg if isinstance(cfg, dict) else {}
        stem = path.stem
        if stem.startswith("quality"):
            kind = "quality"
        elif stem.startswith("speed") or all(r.get("family") for r in rows):
            kind = "speed"  # the runner's output (also under another name, e.g. results/<device>.json)
        else:
            kind = "family"
        quick = data.get("quick")
        if not isinstance(quick, bool):
            quick = "quick" in stem.split("_")
        extra = {k: v for k, v in data.items() if k not in ("rows", "config")}
        sources.append(Source(path.name, kind, config, rows, quick, _device_of(config, stem), extra))
    return sources, skipped


def family_of(row: dict[str, Any], src: Source) -> str:
    fam = row.get("family")
    return str(fam) if fam else _family_of_file(Path(src.file).stem)


def select(sources: Sequence[Source]) -> dict[str, dict[str, list[tuple[Source, list[dict[str, Any]]]]]]:
    """``{device: {family: [(source, rows), ...]}}`` keeping, per pair, only the best tier's files."""
    cand: dict[tuple[str, str], list[tuple[Source, list[dict[str, Any]]]]] = {}
    for src in sources:
        if src.kind in ("quality", "gpu"):
            continue
        by_fam: dict[str, list[dict[str, Any]]] = {}
        for r in src.rows:
            by_fam.setdefault(family_of(r, src), []).append(r)
        for fam, rows in by_fam.items():
            cand.setdefault((src.device, fam), []).append((src, rows))
    out: dict[str, dict[str, list[tuple[Source, list[dict[str, Any]]]]]] = {}
    for (dev, fam), items in sorted(cand.items()):
        best = min(s.tier for s, _ in items)
        out.setdefault(dev, {})[fam] = sorted([(s, r) for s, r in items if s.tier == best], key=lambda t: t[0].file)
    return out


# ------------------------------------------------------------------------------------------- formatting


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_num(v: Any) -> str:
    """Compact, deterministic number formatting (3 significant digits, no exponent below 1e6)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) and abs(v) < 1e6:
        return str(v)
    if not _finite(v):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _first(row: dict[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        if _finite(row.get(k)):
            return k, row[k]
    return None, None


def row_ratio(row: dict[str, Any]) -> float | None:
    """Our time / baseline time: the row's ``ratio``, else computed from its times, else ``1 / speedup``."""
    if _finite(row.get("ratio")):
        return float(row["ratio"])
    _, t = _first(row, _TIME_KEYS)
    _, b = _first(row, _BASE_TIME_KEYS)
    if t is not None and b:
        return float(t) / float(b)
    if _finite(row.get("speedup")) and row["speedup"]:
        return 1.0 / float(row["speedup"])
    return None


def verdict(row: dict[str, Any]) -> str:
    p = row.get("passed")
    if p is True:
        return "**PASS**"
    if p is False:
        return "**FAIL**"
    return "not checked" if row.get("target") else ""


def hardware_line(src: Source) -> str:
    """``Measured on ...`` sentence from a file's config header (what, where, when)."""
    c = src.config
    if not c:
        return f"Source `{src.file}`: hardware and date unknown (the file has no config header)."
    name = c.get("device_name") or "unknown device"
    threads = c.get("threads")
    cpus = c.get("cpu_count")
    parts = [f"`{name}` ({c.get('device', src.device)})"]
    if threads is not None:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}"
                     + (f" of {cpus} CPU cores" if cpus is not None else ""))
    vers = ", ".join(f"{k} {c[k]}" for k in ("torch", "wsss_blocks", "python") if c.get(k))
    if vers:
        parts.append(vers)
    date = c.get("date", "date unknown")
    if src.kind == "quality":
        mode = "quick budget (the presets' quick_overrides)" if src.quick else "the presets' full budget"
    else:
        mode = "quick mode (smoke-test sizes, not the targets' working sizes)" if src.quick else "full sizes"
    return f"Measured on {', '.join(parts)}; {date}; {mode}. Source: `{src.file}`."


def _other(row: dict[str, Any]) -> str:
    bits = []
    for k in sorted(row):
        if k in _SKIP:
            continue
        v = row[k]
        if isinstance(v, bool) or _finite(v):
            bits.append(f"{k} {fmt_num(v)}")
        elif isinstance(v, str) and len(v) <= 40:
            bits.append(f"{k} {v}")
    return ", ".join(bits)


SPEED_COLUMNS = ["benchmark (parameters)", "median ms: ours / baseline", "ratio", "peak MiB: ours / baseline",
                 "target: result", "other figures"]


def _pair(ours: Any, base: Any) -> str:
    """``ours / baseline``, or ours alone when the row has no baseline figure."""
    return f"{ours} / {fmt_num(base)}" if _finite(base) else str(ours)


def speed_table(rows: Sequence[dict[str, Any]]) -> str:
    """Six columns, so that the table fits the docs' content column (ours and the baseline share a cell)."""
    lines = ["| " + " | ".join(SPEED_COLUMNS) + " |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        tk, t = _first(r, _TIME_KEYS)
        time_txt = fmt_num(t) if tk != "min_ms" else f"min {fmt_num(t)}"
        _, b = _first(r, _BASE_TIME_KEYS)
        _, m = _first(r, _MEM_KEYS)
        _, bm = _first(r, _BASE_MEM_KEYS)
        name = str(r.get("name", "?")) + (f" ({r['params']})" if r.get("params") else "")
        target = ": ".join(x for x in (str(r.get("target") or ""), verdict(r)) if x)
        cells = [name, _pair(time_txt, b), fmt_num(row_ratio(r)), _pair(fmt_num(m), bm), target, _other(r)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def quality_table(src: Source) -> str:
    order = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")
    rows = sorted(src.rows, key=lambda r: (order.index(r["method"]) if r.get("method") in order else len(order),
                                       str(r.get("method", ""))))
    paper = any(_finite(r.get(k)) for r in rows for k in ("paper_cam_miou_pct", "paper_pseudo_miou_pct",
                                                           "paper_seg_miou_pct"))
    paper = paper and not str(src.file).startswith("quality_synthetic")
    cols = ["method", "CAM mIoU", "bg score", "pseudo-mask mIoU", "segmentation mIoU"]
    if paper:
        cols += ["paper CAM", "paper pseudo-mask", "paper segmentation"]
    cols += ["data", "CAM steps", "seg. steps", "wall s"]
    dated = any(r.get("date") for r in rows)
    if dated:
        cols.append("date")
    align = "|---|" + "---:|" * (7 if paper else 4) + "---|---:|---:|---:|" + ("---|" if dated else "")
    lines = ["| " + " | ".join(cols) + " |", align]

    def pct(v: Any) -> str:
        return f"{v:.1f}" if _finite(v) else "–"

    for r in rows:
        if r.get("error"):
            cells = [r.get("method", "?"), f"failed: {r['error']}"] + [""] * (len(cols) - 2)
        else:
            bg = r.get("bg_score")
            bg_txt = (f"{bg:.2f}" if _finite(bg) else "–") + (" (swept on "
                                                               f"{r.get('cam_eval_split', 'train')})"
                                                               if r.get("bg_rule") == "sweep" and _finite(bg) else "")
            cells = [r.get("method", "?"), pct(r.get("cam_miou_pct")), bg_txt, pct(r.get("pseudo_miou_pct")),
                     pct(r.get("seg_miou_pct"))]
            if paper:
                cells += [pct(r.get("paper_cam_miou_pct")), pct(r.get("paper_pseudo_miou_pct")),
                          pct(r.get("paper_seg_miou_pct"))]
            seg = "own head" if r.get("seg_source") == "method" else fmt_num(r.get("seg_steps"))
            cells += [r.get("data", ""), fmt_num(r.get("cam_steps")), seg, fmt_num(r.get("seconds"))]
            if dated:
                cells.append(str(r.get("date", ""))[:10])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ GPU suite
#: the goals the GPU suite (``python -m benchmarks.gpu``) checks, shown as unmeasured until a GPU run exists
GPU_GOALS: tuple[tuple[str, str], ...] = (
    ("tests", "`pytest -m cuda`: every CUDA-marked test passes (device/dtype parity of the blocks that claim "
              "CUDA support)"),
    ("crf", "dense CRF on the GPU, batch 8: >= 30x pydensecrf (one CPU core) per image, 375x500, K=21, "
            "10 iterations, afa and deeplab presets"),
    ("crf", "dense CRF: argmax agreement with pydensecrf >= 99.5 % (scikit-image photos)"),
    ("refine", "PAR and VARM at (2, 21, 224, 224) and (8, 21, 448, 448): >= 20x faster, <= 1/8 peak "
               "`max_memory_allocated`, equal to 1e-5, against the release-shaped algorithm on the same GPU"),
    ("pseudo", "pseudo masks of VOC train_aug (10,582 images) in < 15 min on one GPU, for every method's VOC "
               "config (CAMs, CoV/PPMG, SMAF, VARM, CRF as configured) and for PPL's CAMs + IRN's random walk"),
)

GPU_HOWTO = (
    "**How to run on a rented GPU.** On a machine with one CUDA GPU (H100/H200 class), in a checkout with the "
    "development environment installed (`pip install -e '.[dev]'`, which brings pytest, pydensecrf and "
    "scikit-image), run `python -m benchmarks.gpu`. It needs no dataset, no weight file and no internet (random "
    "weights, scikit-image photos and in-memory images at VOC sizes); the expected wall time is about 5-7 "
    "minutes including start-up (an estimate: the target is under 8). It writes "
    "`benchmarks/results/gpu_cuda.json` after every finished row and section and re-renders this page after "
    "every section, so a run cut short keeps what it finished. Each section runs in its own process under "
    "`--timeout-per-section` (default 300 s); a failed section is recorded with its error and the others "
    "continue (exit code 1). `--sections crf,refine --merge` reruns a subset and keeps the other sections' "
    "results from the same machine and versions. Commit the JSON file and this page. The same code at toy sizes "
    "runs on the CPU with `python -m benchmarks.gpu --device cpu --quick` (under 3 minutes; CI runs it).")

_GOAL_FIGURES = (("tests_passed", "{} passed"), ("tests_failed", "{} failed"), ("tests_skipped", "{} skipped"),
                 ("agreement_pct", "agreement {} %"), ("speedup", "{}x"), ("mem_ratio", "memory ratio {}"),
                 ("max_abs_diff", "max abs diff {}"), ("projected_train_aug_min", "train_aug {} min"),
                 ("images_per_s", "{} images/s"))


def _num_text(v: Any) -> str:
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else fmt_num(v)


def claim_verdict(mine: float, mine_std: float | None, base: float, base_std: float | None,
                  lower_is_better: bool = False) -> str:
    """``"better"``, ``"worse"`` or ``"within noise"``: a difference no larger than the larger of the two
    standard deviations over seeds is not counted as an effect (one seed: no std, the sign decides).
    """
    diff = mine - base
    noise = max(s for s in (mine_std, base_std, 0.0) if s is not None and not math.isnan(s))
    if abs(diff) <= noise:
        return "within noise"
    return "better" if (diff < 0) == lower_is_better else "worse"


def goal_figure(row: dict[str, Any]) -> str:
    """The figures a goal row is judged on, in words (``"41.2x"``, ``"agreement 99.9 %"``, ...)."""
    parts = [fmt.format(_num_text(row[k])) for k, fmt in _GOAL_FIGURES if _finite(row.get(k))]
    return ", ".join(parts)


def _gpu_sources(sources: Sequence[Source]) -> tuple[Source | None, list[Source]]:
    """(the newest full CUDA run, the other GPU-suite files: dry runs, quick or CPU runs)."""
    gpu = [s for s in sources if s.kind == "gpu"]
    full = [s for s in gpu if s.device == "cuda" and not s.quick]
    best = max(full, key=lambda s: (str(s.config.get("date", "")), s.file)) if full else None
    return best, sorted((s for s in gpu if s is not best), key=lambda s: s.file)


def _sections(src: Source) -> list[dict[str, Any]]:
    secs = src.extra.get("sections")
    return [x for x in secs if isinstance(x, dict) and x.get("name")] if isinstance(secs, list) else []


def section_status_line(src: Source) -> str:
    """``tests ok (12 s), crf failed (RuntimeError: ...), ...`` for the sections that ran."""
    bits = []
    for sec in _sections(src):
        if sec.get("status") in ("not run", None):
            continue
        txt = f"{sec['name']} {sec['status']}"
        extra = [f"{fmt_num(sec['seconds'])} s"] if _finite(sec.get("seconds")) else []
        for r in src.rows:  # the test counts are the tests section's result
            if r.get("section") == sec["name"] and _finite(r.get("tests_passed")):
                extra.append(", ".join(f"{r.get(k)} {w}" for k, w in (("tests_passed", "passed"),
                                       ("tests_failed", "failed"), ("tests_skipped", "skipped"))))
        if sec.get("status") != "ok" and sec.get("error"):
            err = str(sec["error"]).splitlines()[0]
            extra.append(err if len(err) <= 120 else err[:119] + "…")
        bits.append(txt + (f" ({'; '.join(extra)})" if extra else ""))
    return ", ".join(bits) or "no section ran"


def gpu_target_lines(sources: Sequence[Source]) -> list[str]:
    """Lines of the page's Targets list for the GPU suite: its goals, or "unmeasured" ones without a GPU run."""
    full, _ = _gpu_sources(sources)
    if full is None:
        return [f"- **unmeasured** [gpu suite/{sec}] {_cell(goal)} (no GPU run yet)" for sec, goal in GPU_GOALS]
    date = full.config.get("date", "date unknown")
    return [f"- **{'PASS' if r['passed'] else 'FAIL'}** [gpu suite/{r.get('section', '?')}] "
            f"{_cell(r.get('name', '?'))}: {_cell(r.get('target', ''))} (`{full.file}`, {date})" for r in full.rows
            if isinstance(r.get("passed"), bool)]


def gpu_section(sources: Sequence[Source]) -> list[str]:
    """The "GPU suite" part of the page."""
    full, others = _gpu_sources(sources)
    L = ["## GPU suite", "", GPU_HOWTO, ""]
    if full is None:
        L += ["GPU figures: **unmeasured** (no GPU run yet; `benchmarks/results/gpu_cuda.json` does not exist). "
              "The goals it will check:", ""]
        L += ["| section | goal | result |", "|---|---|---|"]
        L += [f"| {sec} | {_cell(goal)} | unmeasured |" for sec, goal in GPU_GOALS]
        L += ["", "Also measured, without a goal: images/s of multi-scale + flip CAMs (ResNet-38 and ResNet-50 at "
              "375x500, AMP off and on) and, for every method's VOC config, steps/s and peak memory of a training "
              "step at its real batch and crop, with the projected time of each training phase.", ""]
    else:
        L += [hardware_line(full), ""]
        wall = full.extra.get("wall_s")
        done = "complete" if full.extra.get("complete") else "**incomplete**"
        L += [f"Sections: {section_status_line(full)}; {done}"
              + (f", {fmt_num(wall)} s in all." if _finite(wall) else "."), ""]
        goals = [r for r in full.rows if isinstance(r.get("passed"), bool)]
        L += ["### Goals", ""]
        if goals:
            L += ["| section | benchmark | figure | target | result |", "|---|---|---|---|---|"]
            L += [f"| {_cell(r.get('section', '?'))} | {_cell(r.get('name', '?'))} | {_cell(goal_figure(r))} | "
                  f"{_cell(r.get('target', ''))} | {verdict(r)} |" for r in goals]
        else:
            L.append("No goal row was measured (see the sections' errors above).")
        L.append("")
        notes = full.extra.get("notes")
        if isinstance(notes, list) and notes:
            L += [f"- {_cell(n)}" for n in notes] + [""]
        for sec in _sections(full):
            rows = [r for r in full.rows if r.get("section") == sec["name"]]
            if not rows and sec.get("status") in ("not run", None):
                continue
            L += [f"### {sec.get('title') or sec['name']}", ""]
            status = f"Section `{sec['name']}`: {sec.get('status', '?')}"
            if _finite(sec.get("seconds")):
                status += f" in {fmt_num(sec['seconds'])} s"
            if sec.get("error"):
                status += f"; {_cell(str(sec['error']).splitlines()[0])}"
            if sec.get("merged_from"):
                status += f" (kept from an earlier run started {sec.get('started', '?')})"
            L += [status + ".", ""]
            if rows:
                L += [speed_table(rows), ""]
            for r in rows:
                if r.get("todo"):
                    L.append(f"- {_cell(r.get('name', '?'))}: TODO: {_cell(r['todo'])}")
                if r.get("failed_tests"):
                    L.append(f"- failed tests: {_cell(', '.join(map(str, r['failed_tests'])))}")
            if any(r.get("todo") or r.get("failed_tests") for r in rows):
                L.append("")
    if others:
        L += ["Dry runs of the suite (the same code at toy sizes or off the GPU; they show that the suite works, "
              "not the goals):", ""]
        for src in others:
            c = src.config
            where = f"`{c.get('device_name', 'unknown device')}` ({c.get('device', src.device)})"
            threads = c.get("threads")
            mode = "quick sizes" if src.quick else "full sizes"
            wall = src.extra.get("wall_s")
            L.append(f"- `{src.file}`: {where}"
                     + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads is not None else "")
                     + f", {mode}, {c.get('date', 'date unknown')}: {section_status_line(src)}"
                     + (f"; {fmt_num(wall)} s in all" if _finite(wall) else "") + ".")
        L.append("")
    return L


# ------------------------------------------------------------------------------- synthetic protocol grid
GRID_COLUMNS = (("cam_miou", "CAM"), ("pseudo_miou", "pseudo-mask"), ("seg_miou", "seg."),
                ("seg_own_miou", "own head"), ("head_recall", "head recall"), ("body_recall", "body recall"),
                ("bg_fp", "bg FP"), ("boundary_f", "boundary F"), ("trimap_miou", "trimap"))
_CLAIM_WORDS = {"body_recall": "body recall (completeness)", "boundary_f": "boundary F (refinement)",
                "pseudo_miou": "pseudo-mask mIoU", "bg_fp": "background false positives (lower is better)",
                "seg_minus_pseudo": "segmentation − pseudo-mask mIoU (PUF: learning from noisy masks)"}
_LOWER_IS_BETTER = ("bg_fp",)


def _stats(values: Sequence[Any]) -> tuple[float | None, float | None, int]:
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, sd, len(v)


def mean_std(values: Sequence[Any]) -> str:
    """``"m ± s"`` (sample standard deviation over seeds), ``"m"`` for one value, ``"–"`` for none."""
    m, sd, _ = _stats(values)
    if m is None:
        return "–"
    return f"{m:.1f}" if sd is None else f"{m:.1f} ± {sd:.1f}"


def _value(rec: dict[str, Any], key: str) -> Any:
    if key == "seg_minus_pseudo":
        a, b = rec.get("seg_miou"), rec.get("pseudo_miou")
        return a - b if _finite(a) and _finite(b) else None
    return rec.get(key)


def is_grid(src: Source) -> bool:
    """A ``benchmarks.quality`` synthetic-protocol file (records per row × init × seed, a protocol header)."""
    return src.kind == "quality" and isinstance(src.extra.get("protocol"), dict)


def _baseline_of(row: str, protocol: dict[str, Any]) -> str | None:
    arch = (protocol.get("cam_backbones") or {}).get(row, {})
    for name in protocol.get("rows") or []:
        if name.startswith("baseline") and (protocol.get("cam_backbones") or {}).get(name) == arch:
            return str(name)
    return None


def grid_tables(src: Source) -> list[str]:
    """Markdown lines of a protocol file: the protocol, one table per initialisation, the claims table."""
    pr = src.extra["protocol"]
    recs = [r for r in src.rows if r.get("method")]
    order = list(pr.get("rows") or dict.fromkeys(r["method"] for r in recs))
    inits = [i for i in ("pretrained", "random") if any(r.get("init") == i for r in recs)]
    seeds = pr.get("seeds") or sorted({r.get("seed") for r in recs})
    L: list[str] = []
    add = L.append
    bb = pr.get("cam_backbones") or {}
    fams: dict[str, list[str]] = {}
    for name in order:
        b = bb.get(name, {})
        kw = ", ".join(f"{k} {v}" for k, v in (b.get("backbone_kwargs") or {}).items())
        fams.setdefault(f"`{b.get('backbone', '?')}`" + (f" ({kw})" if kw else ""), []).append(name)
    pre = src.extra.get("pretrained_backbones") or []
    pre_txt = "; ".join(f"`{p['backbone']}` {fmt_num(p.get('eval_exact_match_pct'))} % exact-match on held-out "
                        f"images ({fmt_num(p.get('seconds'))} s)" for p in pre)
    add("Regenerate this table with one command: `python -m benchmarks.quality --jobs 2 && python -m "
        "benchmarks.render_docs` (the presets as they are now, every row, seeds 0-2, both initialisations; "
        "`--methods pmm,ppl --merge` reruns some rows into the table).")
    add("")
    add("**Protocol** (`benchmarks/quality.py`, checked before any run by `check_protocol`):")
    add("")
    add(f"- Data: {pr.get('data', '?')} — the same for every row. `body_evidence` 0.5: half of the creatures' "
        "bodies faintly carry their class hue, so there is class evidence away from the heads for the methods "
        "built to find less discriminative parts.")
    add(f"- CAM stage: {pr.get('cam_images', '?')} training images seen by every row (batch × steps, all "
        "phases). Backbones: " + "; ".join(f"{k} for {', '.join(v)}" for k, v in fams.items()) + ". A "
        "`baseline@<backbone>` row is the plain-CAM baseline on the network of the method after it, with that "
        "method's CAM optimiser, schedule and augmentation.")
    add(f"- Segmentation: {pr.get('seg_stage', '?')}, the same for every row (PMM keeps its PUF loss and one "
        "cyclic round, the segmentation-stage part of PMM). **seg.** is this DeepLab trained on the row's "
        "pseudo masks; **own head** is TSCD's own segmentation head.")
    add(f"- Background score: {pr.get('bg_score', '?')}. Choices on val: {pr.get('val_choices', '?')}.")
    add(f"- Seeds: {', '.join(map(str, seeds))} (`runtime.seed`; the data stay the same); mean ± sample standard "
        "deviation over seeds. **pretrained**: the presets' default, backbones (CAM and segmentation) pretrained "
        "as multi-label classifiers on a disjoint synthetic set (2,000 other images, data seed 1000), the "
        "stand-in for ImageNet weights" + (f" — {pre_txt}" if pre_txt else "") + "; **random**: "
        "`cam.pretrained=null seg.pretrained=null`, everything else equal.")
    add(f"- Mechanism columns: {pr.get('mechanisms', '?')}; in percent. Head and body recall: share of the "
        "creatures' head and body pixels that the pseudo mask gives the right class; bg FP: share of background "
        "pixels labelled as an object.")
    add("")
    cols = ["row", *[c[1] for c in GRID_COLUMNS], "seeds", "wall s"]
    for init in inits:
        add(f"**{init.capitalize()} initialisation**" + (" (the presets' default)" if init == "pretrained" else ""))
        add("")
        add("| " + " | ".join(cols) + " |")
        add("|---|" + "---:|" * (len(cols) - 1))
        for name in order:
            rs = [r for r in recs if r["method"] == name and r.get("init") == init]
            if not rs:
                continue
            ok = [r for r in rs if not r.get("error")]
            cells = [name] + [mean_std([r.get(k) for r in ok]) for k, _ in GRID_COLUMNS]
            cells.append(str(len(ok)) + (f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else ""))
            cells.append(fmt_num(_stats([r.get("seconds") for r in ok])[0]))
            add("| " + " | ".join(_cell(c) for c in cells) + " |")
        add("")
    claims = pr.get("claims") or {}
    lines = []
    for name in order:
        method = name.split("@")[0]
        if name.startswith("baseline") or method not in claims:
            continue
        base = _baseline_of(name, pr)
        for key in claims[method]:
            for init in inits:
                mine = [_value(r, key) for r in recs if r["method"] == name and r.get("init") == init
                        and not r.get("error")]
                theirs = [_value(r, key) for r in recs if r["method"] == base and r.get("init") == init
                          and not r.get("error")]
                m1, s1, n1 = _stats(mine)
                m0, s0, _n0 = _stats(theirs)
                if not n1:
                    continue
                delta = "–" if m0 is None or m1 is None else f"{m1 - m0:+.1f}"
                if m0 is not None and m1 is not None:
                    delta += f" ({claim_verdict(m1, s1, m0, s0, key in _LOWER_IS_BETTER)})"
                lines.append(f"| {name} | {_CLAIM_WORDS.get(key, key)} | {init} | {mean_std(mine)} | "
                             f"{base or '–'} {mean_std(theirs)} | {delta} |")
    if lines:
        add("**What each method claims to improve**, against the baseline on the same network (mean over seeds; "
            "a difference no larger than the larger standard deviation is marked within noise):")
        add("")
        add("| method | claimed quantity | init | method | baseline | difference |")
        add("|---|---|---|---:|---:|---:|")
        L.extend(lines)
        add("")
    fails = [r for r in recs if r.get("error")]
    for r in fails:
        add(f"- failed: {r['method']} ({r.get('init')}, seed {r.get('seed')}): {_cell(r['error'])}")
    if fails:
        add("")
    rounds = [r for r in recs if len(r.get("seg_rounds") or []) > 1 and not r.get("error")]
    if rounds:
        by: dict[tuple[str, str], list[list[float]]] = {}
        for r in rounds:
            by.setdefault((r["method"], r.get("init", "")), []).append(
                [100 * h["last_val"] for h in r["seg_rounds"]])
        for (name, init), vals in sorted(by.items(), key=lambda kv: (order.index(kv[0][0])
                                                                     if kv[0][0] in order else 99, kv[0][1])):
            per_round = list(zip(*vals))
            add(f"{name} ({init}): segmentation val mIoU after each cyclic round: " + "; ".join(
                f"round {i} {mean_std(list(v))}" for i, v in enumerate(per_round)) + " (the table reports the last).")
        add("")
    load = src.extra.get("load_average_1min") or {}
    wall = src.extra.get("wall_s")
    if _finite(wall):
        add(f"Wall time of the whole grid: {fmt_num(wall)} s ({fmt_num(float(wall) / 60)} min; of which data and "
            f"pretraining {fmt_num(src.extra.get('setup_s'))} s), {src.config.get('jobs', 1)} run(s) at a time; "
            f"1-minute load average during the run {fmt_num(load.get('min'))}–{fmt_num(load.get('max'))} "
            f"(mean {fmt_num(load.get('mean'))}; the grid's own runs included) on {src.config.get('cpu_count', '?')} "
            f"cores. Command: "
            f"`{src.extra.get('command', 'python -m benchmarks.quality')}`.")
        add("")
    return L


# ------------------------------------------------------------------------------------------------ chart


def chart_entries(selected: dict[str, dict[str, list[tuple[Source, list[dict[str, Any]]]]]]
                  ) -> list[tuple[str, float, bool | None]]:
    """``(label, ratio, passed)`` for every shown row with a finite positive time ratio, in page order."""
    out = []
    for dev in sorted(selected, key=_dev_key):
        for fam, items in selected[dev].items():
            for src, rows in items:
                for r in rows:
                    ratio = row_ratio(r)
                    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
                        continue
                    label = f"{fam}: {r.get('name', '?')} [{dev}{', quick' if src.quick else ''}]"
                    passed = r.get("passed") if isinstance(r.get("passed"), bool) else None
                    out.append((label, ratio, passed, str(r.get("params", ""))))
    counts: dict[str, int] = {}
    for e in out:
        counts[e[0]] = counts.get(e[0], 0) + 1
    seen: dict[str, int] = {}
    final = []
    for label, ratio, passed, params in out:
        if counts[label] > 1:  # same benchmark at several sizes: say which
            p = params if len(params) <= 32 else params[:31] + "…"
            label = f"{label} {p}" if p else label
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label} #{seen[label]}"
        final.append((label, ratio, passed))
    return final


def render_chart(entries: Sequence[tuple[str, float, bool | None]], path: Path) -> Path:
    """Horizontal bar chart of time ratios (log scale, line at 1 = baseline); deterministic PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"font.size": 8}):
        if not entries:
            fig, ax = plt.subplots(figsize=(7, 1.5))
            ax.axis("off")
            ax.text(0.5, 0.5, "no time ratios measured yet", ha="center", va="center")
        else:
            n = len(entries)
            fig, ax = plt.subplots(figsize=(9, 0.28 * n + 1.4))
            colors = {True: "#2e7d32", False: "#c62828", None: "#78909c"}
            ys = list(range(n))[::-1]
            ratios = [e[1] for e in entries]
            ax.barh(ys, ratios, color=[colors[e[2]] for e in entries], height=0.7)
            ax.set_yticks(ys)
            ax.set_yticklabels([e[0] for e in entries])
            ax.set_xscale("log")
            ax.axvline(1.0, color="black", linewidth=0.8)
            lo, hi = min([*ratios, 1.0]), max([*ratios, 1.0])
            ax.set_xlim(lo / 3, hi * 6)
            for y, r in zip(ys, ratios):
                ax.text(r * 1.08, y, f"{fmt_num(r)}×", va="center", fontsize=7)
            ax.set_xlabel("time / baseline time (log scale; < 1 is faster than the baseline)")
            ax.set_title("Time relative to the baseline: green PASS, red FAIL, grey no target")
            ax.grid(axis="x", which="major", linewidth=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- page


def _dev_key(dev: str) -> tuple[int, str]:
    return ({"cpu": 0, "cuda": 1}.get(dev, 2), dev)


def expected_families() -> list[str]:
    """Families with a ``bench_<family>.py`` script beside this file."""
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def render_page(sources: Sequence[Source], skipped: Sequence[str], img_rel: str,
                families: Sequence[str] | None = None) -> str:
    """The markdown page (pure function of its inputs)."""
    families = expected_families() if families is None else list(families)
    selected = select(sources)
    L: list[str] = []
    add = L.append
    add("# Benchmarks")
    add("")
    add("Generated by `python -m benchmarks.render_docs` from the JSON files in `benchmarks/results/`; do not "
        "edit by hand. Every table states the machine, torch thread count, versions and date of its figures, "
        "read from its file's config header. Times are medians after warm-up (`benchmarks/harness.py`); "
        "**ratio** is our time divided by the baseline's time in the same process (lower is better); peak "
        "memory is `torch.cuda.max_memory_allocated` on GPU and the resident-set high-water mark on CPU "
        "(MiB). Targets are printed as PASS/FAIL; they are never asserted in tests.")
    add("")
    add("Reproduce: `python -m benchmarks.speed --device cpu` (or `--device cuda`, `--quick` for a smoke run), "
        "`python -m benchmarks.gpu` on a GPU (see [GPU suite](#gpu-suite)), `python -m benchmarks.quality --jobs 2` "
        "(the synthetic quality grid: every method, 3 seeds, both initialisations), then "
        "`python -m benchmarks.render_docs`.")
    add("")

    # targets summary
    add("## Targets")
    add("")
    lines = []
    for dev in sorted(selected, key=_dev_key):
        for fam, items in selected[dev].items():
            for src, rows in items:
                for r in rows:
                    if isinstance(r.get("passed"), bool):
                        status = "PASS" if r["passed"] else "FAIL"
                        date = src.config.get("date", "date unknown")
                        lines.append(f"- **{status}** [{dev}/{fam}] {_cell(r.get('name', '?'))}: "
                                     f"{_cell(r.get('target', ''))} (`{src.file}`, {date}"
                                     f"{', quick sizes' if src.quick else ''})")
    L.extend(lines or ["No target was checked in the results shown."])
    L.extend(gpu_target_lines(sources))
    add("")

    # chart
    add("## Time relative to the baselines")
    add("")
    add(f"![time ratio of each block to its baseline]({img_rel})")
    add("")
    add("One bar per row with a baseline, from the tables below (same files, same hardware lines). The "
        "baseline is named in each row's target or parameters: a ResNet-50 forward+backward at the same "
        "batch for training-time overheads, pydensecrf for the CRF, the straightforward implementation of "
        "the released algorithm for PAR/VARM.")
    add("")

    for dev in ("cpu", "cuda", *tuple(sorted(d for d in selected if d not in ("cpu", "cuda")))):
        title = DEVICE_TITLES.get(dev, dev)
        add(f"## {title}")
        add("")
        fams = selected.get(dev, {})
        if not fams:
            add(f"{title}: {NO_GPU}." if dev == "cuda" else f"{title}: not measured (no result file).")
            add("")
            continue
        missing = [f for f in families if f not in fams]
        if missing:
            add(f"Not measured on {title}: {', '.join(missing)}.")
            add("")
        for fam, items in fams.items():
            add(f"### {fam}")
            add("")
            for src, rows in items:
                add(hardware_line(src))
                add("")
                add(speed_table(rows))
                add("")

    L.extend(gpu_section(sources))

    # quality
    add("## Quality")
    add("")
    qual_all = [s for s in sources if s.kind == "quality"]
    full_names = {Path(s.file).stem for s in qual_all if not s.quick}
    qual = sorted((s for s in qual_all
                   if not (s.quick and Path(s.file).stem.removesuffix("_quick") in full_names)),
                  key=lambda s: s.file)
    if not qual:
        add("Not measured yet (run `python -m benchmarks.quality`).")
        add("")
    for src in qual:
        add(f"### {Path(src.file).stem}")
        add("")
        add(hardware_line(src))
        add("")
        if is_grid(src):
            L.extend(grid_tables(src))
            continue
        add("mIoU in percent. CAM and pseudo-mask mIoU on the CAM evaluation split (training images), "
            "segmentation mIoU on the validation split. Each method runs its packaged preset through "
            "`wsss_blocks.train.reproduce` (the code path of `examples/reproduce_voc.py`) with fixed seeds "
            "and the preset's step budget; no per-method tuning. Where a preset sweeps the background score "
            "(\"swept\"), the score is chosen on the CAM evaluation split itself, so that CAM mIoU is the best "
            "of the sweep (as papers report it); the validation split is never used for a choice."
            + (" Synthetic-data numbers are not comparable with the papers' VOC numbers."
               if src.file.startswith("quality_synthetic") else ""))
        add("")
        add(quality_table(src))
        for r in src.rows:
            rounds = r.get("seg_rounds") or []
            if len(rounds) > 1:  # PMM cyclic pseudo-mask rounds: the table shows the last round's model
                parts = [f"round {h['round']} {fmt_num(100 * h['best_val'])} best (step {h['best_step']}), "
                         f"{fmt_num(100 * h['last_val'])} last" for h in rounds]
                add("")
                add(f"{r['method']}: segmentation val mIoU per cyclic round: " + "; ".join(parts)
                    + ". The table reports the last round's last model.")
        secs = [r["seconds"] for r in src.rows if _finite(r.get("seconds"))]
        if secs:
            add("")
            add(f"Total wall time of the runs: {fmt_num(sum(secs))} s.")
        add("")

    # bookkeeping
    shown = {src.file for fams in selected.values() for items in fams.values() for src, _ in items}
    shown |= {s.file for s in qual} | {s.file for s in sources if s.kind == "gpu"}
    unused = sorted(s.file for s in sources if s.file not in shown)
    if unused or skipped:
        add("## Other result files")
        add("")
        for f in unused:
            add(f"- `{f}`: not shown (a fuller or the runner's result for the same families is shown instead)")
        for s in skipped:
            add(f"- skipped `{s.split(':', 1)[0]}`:{s.split(':', 1)[1] if ':' in s else ''}")
        add("")
    return "\n".join(L).rstrip() + "\n"


def render(results: Path | str = RESULTS_DIR, out: Path | str = DEFAULT_OUT,
           img: Path | str | None = None, families: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write the page and the chart; returns their paths."""
    results, out = Path(results), Path(out)
    img_path = Path(img) if img is not None else out.parent / "img" / IMG_NAME
    sources, skipped = load_sources(results)
    render_chart(chart_entries(select(sources)), img_path)
    img_rel = Path(os.path.relpath(img_path.resolve(), out.parent.resolve())).as_posix()
    text = render_page(sources, skipped, img_rel, families)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out, img_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.render_docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS_DIR), help="folder with the JSON results")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="markdown page to write")
    ap.add_argument("--img", default=None, help=f"chart PNG (default <out folder>/img/{IMG_NAME})")
    args = ap.parse_args(argv)
    page, img = render(args.results, args.out, args.img)
    print(f"wrote {page} and {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
