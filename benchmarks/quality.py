"""Quality table: CAM, pseudo-mask and segmentation mIoU of every trainer method, baseline first.

Each method runs through `wsss_blocks.train.reproduce` — the code path of
``examples/reproduce_voc.py`` and ``wsss-blocks reproduce`` — with its packaged preset, fixed seeds and
the preset's fixed step budget. Nothing is tuned per method here: every method gets the same extra
overrides (``--set``), and the only data-dependent choice is the one the preset itself makes (``bg_score:
sweep`` picks the background score on the CAM evaluation split, the training images, so the CAM mIoU
reported there is the best of the sweep, as in the papers; the segmentation validation split is never used
for a choice; the table says which score each method used and whether it was swept).

Usage::

    python -m benchmarks.quality                          # synthetic data, every method with a preset
    python -m benchmarks.quality --methods baseline,l2g --quick
    python -m benchmarks.quality --data-root /data/VOCdevkit/VOC2012 --pretrained weights/res38d.pth
    python -m benchmarks.quality --grid                   # ablation grid: methods x refiners x rules (ablation.py)

Without ``--data-root`` the synthetic VOC-format dataset is generated into the cache folder and the
``<method>_synthetic`` presets run; the table goes to ``benchmarks/results/quality_synthetic.json``
(``quality_synthetic_quick.json`` with ``--quick``). With ``--data-root`` the ``<method>_<dataset>``
presets (the released settings) run and the papers' numbers are printed next to ours
(``quality_<dataset>.json``). Runs go to a fresh temporary folder unless ``--out`` is given; ``--merge``
adds the methods run now to an existing table measured on the same hardware with the same settings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS_DIR, config_header, write_json
from wsss_blocks.train.methods import KNOWN_METHODS, available_methods
from wsss_blocks.train.reproduce import preset_name, reproduce
from wsss_blocks.train.schema import load_run_config

#: table order: the plain CAM baseline first, then the papers in the library's order.
METHOD_ORDER: tuple[str, ...] = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")

#: overrides every run gets (no effect on the numbers: no progress bars, no figures).
QUIET_OVERRIDES: tuple[str, ...] = ("runtime.progress=false", "runtime.plots=false")

METRICS = (("cam_miou", "CAM"), ("pseudo_miou", "pseudo-mask"), ("val_miou", "segmentation"))


def _order_key(name: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def has_preset(method: str, dataset: str | None) -> bool:
    """True when ``<method>_<dataset or 'synthetic'>`` is a packaged config."""
    try:
        preset_name(method, dataset)
    except FileNotFoundError:
        return False
    return True


def default_methods(dataset: str | None = None) -> list[str]:
    """Registered methods that have a packaged preset for ``dataset`` (None = synthetic), baseline first."""
    names = set(available_methods()) | set(KNOWN_METHODS)
    return sorted((m for m in names if has_preset(m, dataset)), key=_order_key)


def parse_methods(text: str | None, dataset: str | None = None) -> list[str]:
    """Validate a comma-separated ``--methods`` value; returns the names in table order (baseline first).

    Raises:
        ValueError: an empty list, an unknown method, or a method without a preset for ``dataset``.
    """
    if text is None:
        methods = default_methods(dataset)
        if not methods:
            raise ValueError("no method has a packaged preset for "
                             f"{dataset or 'synthetic'!r} data")
        return methods
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--methods must name at least one method, got {text!r}")
    known = sorted(set(available_methods()) | set(KNOWN_METHODS), key=_order_key)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}; expected a subset of {known}")
    missing = [n for n in names if not has_preset(n, dataset)]
    if missing:
        raise ValueError(f"--methods: no packaged preset for {missing} on {dataset or 'synthetic'!r} data "
                         f"(methods with one: {default_methods(dataset)})")
    return sorted(dict.fromkeys(names), key=_order_key)


def _pct(v: Any) -> float | None:
    """Fractions in [0, 1] (ours) and percentages (papers) both become percentages."""
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    return 100.0 * v if v <= 1.0 else v


def describe_run(method: str, data_root: str | None, dataset: str, quick: bool,
                 overrides: Sequence[str]) -> dict[str, Any]:
    """Budget and data of a method's run, read from the resolved preset (also validates the overrides)."""
    preset = preset_name(method, None if data_root is None else dataset)
    ov = ([f"data.root={data_root}"] if data_root is not None else []) + list(overrides)
    cfg = load_run_config(preset, ov, quick=quick)
    d = cfg.data
    if d.dataset == "synthetic":
        s = d.synthetic
        data = (f"synthetic {s.num_train} train / {s.num_val} val, {s.image_size} px, "
                f"{s.num_classes} classes, data seed {s.seed}")
    else:
        data = f"{d.dataset} {d.train_split} -> {d.val_split}"
    return {"preset": preset + ("_quick" if quick else ""), "data": data, "cam_backbone": cfg.cam.backbone,
            "cam_steps": cfg.cam.steps, "seg_source": cfg.seg.source,
            "seg_steps": None if cfg.seg.source == "method" else cfg.seg.steps, "bg_rule": str(cfg.pseudo.bg_score),
            "seed": cfg.runtime.seed}


def run_quality(methods: Sequence[str], data_root: str | None = None, dataset: str = "voc", *,
                out: str | Path | None = None, quick: bool = False, overrides: Sequence[str] = (),
                seed: int = 0, device: str = "auto", resume: bool = False,
                paths: dict[str, Any] | None = None,
                reproduce_fn: Callable[..., dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every method in ``methods`` (same overrides for all) and return one row per method.

    A method that fails gets a row with ``error`` and the others still run.
    """
    fn = reproduce_fn if reproduce_fn is not None else reproduce
    ov = [*list(QUIET_OVERRIDES), f"runtime.seed={int(seed)}"]
    if device != "auto":
        ov.append(f"runtime.device={device}")
    ov.extend(overrides)
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="wsss_quality_"))
    info = {m: describe_run(m, data_root, dataset, quick, ov) for m in methods}  # fail before training
    rows: list[dict[str, Any]] = []
    for m in methods:
        row: dict[str, Any] = {"method": m, **info[m]}
        run_dir = root / info[m]["preset"]
        t0 = time.perf_counter()
        try:
            res = fn(m, data_root, dataset=dataset, out=run_dir, quick=quick, overrides=ov, resume=resume,
                     verbose=False, **(paths or {}))
        except Exception as e:
            traceback.print_exc()
            row.update(error=f"{type(e).__name__}: {e}", seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            continue
        ours, paper, rinfo = res.get("ours", {}), res.get("paper", {}), res.get("info", {})
        row.update({
            "cam_miou_pct": _pct(ours.get("cam_miou")),
            "pseudo_miou_pct": _pct(ours.get("pseudo_miou")),
            "seg_miou_pct": _pct(ours.get("val_miou")),
            "bg_score": rinfo.get("bg_score"),
            "cam_eval_split": rinfo.get("cam_eval_split"),
            "cam_eval_images": rinfo.get("cam_eval_images"),
            "val_split": rinfo.get("val_split"),
            "val_images": rinfo.get("val_images"),
            "crf": rinfo.get("crf"),
            "cyclic_rounds": rinfo.get("cyclic_rounds", 0),
            "seg_rounds": rinfo.get("seg_rounds") or [],
            "paper_cam_miou_pct": _pct(paper.get("cam_miou")),
            "paper_pseudo_miou_pct": _pct(paper.get("pseudo_miou")),
            "paper_seg_miou_pct": _pct(paper.get("val_miou")),
            "paper_source": res.get("paper_source", ""),
            "device": res.get("device"),
            "stage_seconds": res.get("stage_seconds"),
            "seconds": res.get("seconds", round(time.perf_counter() - t0, 1)),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "out": str(run_dir),
        })
        rows.append(row)
    return rows


def _cell(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def format_table(rows: Sequence[dict[str, Any]], with_paper: bool = False) -> str:
    """Markdown table of the rows, in table order (the baseline row first); mIoU in percent."""
    rows = sorted(rows, key=lambda r: _order_key(r["method"]))
    cols = ["method", "CAM mIoU", "bg score", "pseudo-mask mIoU", "seg. mIoU"]
    if with_paper:
        cols += ["paper CAM", "paper pseudo", "paper seg."]
    cols += ["CAM steps", "seg. steps", "wall s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for r in rows:
        if r.get("error"):
            cells = [r["method"]] + [f"failed: {r['error']}"] + [""] * (len(cols) - 2)
        else:
            bg = r.get("bg_score")
            bg_txt = _cell(bg, ".2f") + (" (swept)" if r.get("bg_rule") == "sweep" and bg is not None else "")
            cells = [r["method"], _cell(r.get("cam_miou_pct")), bg_txt, _cell(r.get("pseudo_miou_pct")),
                     _cell(r.get("seg_miou_pct"))]
            if with_paper:
                cells += [_cell(r.get("paper_cam_miou_pct")), _cell(r.get("paper_pseudo_miou_pct")),
                          _cell(r.get("paper_seg_miou_pct"))]
            seg = "own head" if r.get("seg_source") == "method" else _cell(r.get("seg_steps"), "d")
            cells += [_cell(r.get("cam_steps"), "d"), seg, _cell(r.get("seconds"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {', '.join(METHOD_ORDER)} (default: all with a preset)")
    p.add_argument("--data-root", default=None, help="VOC2012 (or COCO) folder; omit for synthetic data")
    p.add_argument("--dataset", default="voc", choices=["voc", "coco"], help="with --data-root")
    p.add_argument("--sbd-root", default=None, help="SegmentationClassAug folder when not under --data-root")
    p.add_argument("--pretrained", default=None, help="local CAM-backbone checkpoint (nothing is downloaded)")
    p.add_argument("--seg-pretrained", default=None, help="local segmentation-network checkpoint")
    p.add_argument("--quick", action="store_true", help="the presets' quick_overrides (a short sanity run)")
    p.add_argument("--seed", type=int, default=0, help="runtime.seed of every run (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to EVERY method, e.g. --set pseudo.bg_score=0.3 (repeatable)")
    p.add_argument("--out", default=None, help="folder for the runs (default: a fresh temporary folder)")
    p.add_argument("--resume", action="store_true", help="reuse finished stages found in --out")
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder for the JSON table")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    p.add_argument("--merge", action="store_true",
                   help="keep the other methods' rows of an existing JSON table (same hardware, seed, overrides "
                        "and budget only); rows of the methods run now are replaced")
    args = p.parse_args(argv)
    if args.data_root is None and args.dataset != "voc":
        p.error("--dataset needs --data-root (the synthetic data is VOC-format)")
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        p.error(f"--data-root {args.data_root!r} is not a folder")
    bad = [o for o in args.overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        p.error(f"--set expects KEY=VALUE, got {bad}")
    if args.resume and args.out is None:
        p.error("--resume needs --out (the folder whose finished stages to reuse)")
    dataset = None if args.data_root is None else args.dataset
    try:
        args.methods = parse_methods(args.methods, dataset)
    except ValueError as e:
        p.error(str(e))
    return args


#: what must match for ``--merge`` to combine two runs in one table (one hardware line per table).
MERGE_KEYS = ("device_name", "threads", "torch", "wsss_blocks")


def merge_rows(path: Path, rows: list[dict[str, Any]], header: dict[str, Any],
               extra: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` plus the rows of ``path`` for other methods; ValueError if the runs are not comparable."""
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    old_cfg = old.get("config", {})
    diff = [k for k in MERGE_KEYS if old_cfg.get(k) != header.get(k)]
    diff += [k for k in ("quick", "seed", "overrides") if old.get(k) != extra.get(k)]
    if diff:
        raise ValueError(f"--merge: {path} was measured with different {', '.join(diff)} "
                         f"({ {k: old_cfg.get(k, old.get(k)) for k in diff} }); write to another --results folder")
    now = {r["method"] for r in rows}
    kept = [r for r in old.get("rows", []) if isinstance(r, dict) and r.get("method") not in now]
    return sorted(kept + rows, key=lambda r: _order_key(r["method"]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--grid" in argv:  # the ablation grid (methods x refiners x rules): benchmarks/ablation.py
        from benchmarks.ablation import main as grid_main

        return grid_main([a for a in argv if a != "--grid"])
    args = parse_args(argv)
    data_root = None if args.data_root is None else str(Path(args.data_root).expanduser())
    name = ("quality_synthetic" if data_root is None else f"quality_{args.dataset}") + ("_quick" if args.quick else "")
    extra = {"quick": args.quick, "seed": args.seed, "overrides": list(args.overrides), "unit": "percent",
             "data": "synthetic VOC-format data" if data_root is None else args.dataset}
    if args.merge and not args.no_json:  # refuse before training, not after
        import torch

        dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            merge_rows(Path(args.results) / f"{name}.json", [], config_header(dev), extra)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    paths = {"sbd_root": args.sbd_root, "pretrained": args.pretrained, "seg_pretrained": args.seg_pretrained}
    paths = {k: v for k, v in paths.items() if v is not None}
    t0 = time.perf_counter()
    try:
        rows = run_quality(args.methods, data_root, args.dataset, out=args.out, quick=args.quick,
                           overrides=args.overrides, seed=args.seed, device=args.device, resume=args.resume,
                           paths=paths)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    where = "synthetic VOC-format data" if data_root is None else f"{args.dataset} at {data_root}"
    ok = [r for r in rows if not r.get("error")]
    failed = len(ok) < len(rows)
    device = ok[0]["device"] if ok and ok[0].get("device") else ("cpu" if args.device == "auto" else args.device)
    print(f"\nQuality on {where} ({device}, seed {args.seed}{', quick' if args.quick else ''}; mIoU in %)")
    print(format_table(rows, with_paper=data_root is not None))
    for r in sorted(rows, key=lambda r: _order_key(r["method"])):
        if not r.get("error"):
            print(f"  {r['method']}: {r['data']}; CAM mIoU and pseudo-mask mIoU on {r.get('cam_eval_split')} "
                  f"({r.get('cam_eval_images')} images), segmentation on {r.get('val_split')} "
                  f"({r.get('val_images')} images); run in {r['out']}")
            for h in r.get("seg_rounds") or []:
                print(f"    seg round {h['round']}: val {_cell(_pct(h['best_val']))} best (step {h['best_step']}), "
                      f"{_cell(_pct(h['last_val']))} last (step {h['last_step']})")
    if data_root is None:
        print("note: the papers' numbers are on PASCAL VOC 2012; synthetic-data numbers are not comparable.")
    print(f"wall time: {wall:.0f} s")
    if not args.no_json:
        if args.merge:
            try:
                rows = merge_rows(Path(args.results) / f"{name}.json", rows, config_header(device), extra)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        path = write_json(name, rows, device, args.results, extra={**extra, "wall_s": round(wall, 1)})
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
