"""Ablation grid: every method's CAMs through every (refiner × rule) pseudo-mask chain, on the synthetic set.

``python -m benchmarks.quality --grid`` (or ``python -m benchmarks.ablation``) trains each method's CAM network once
with its synthetic preset (fixed seed, the preset's step budget), computes its fused CAMs of the evaluation split
(``data.cam_eval_split``, the 200 synthetic training images) once, and then scores the pseudo masks of every chain
``pseudo.refine × pseudo.rule`` on them (the method's own ``pseudo.post`` steps kept; the constant background is the
preset's, swept on the same images where the preset sweeps it). The ``irn`` refiner trains a tiny IRNet per method
(the ``ppl_synthetic`` IRN values). Masks are not written; the mIoU counts ignore (255) pixels as background, the
stage's default scoring. Nothing is tuned per cell: each step runs with its released default arguments, so a chain
built for another method's CAMs may lose, and the table shows it.

Outputs: ``benchmarks/results/ablation/ablation_synthetic.json`` (a sub-folder: the Benchmarks page renders the files
of ``results/`` itself), the heat map ``docs/img/ablation_grid.png`` and the table between the ``ablation-grid``
markers of ``docs/ablations.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS_DIR, config_header, write_json

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "ablations.md"
FIGURE = ROOT / "docs" / "img" / "ablation_grid.png"
MARK_START = "<!-- ablation-grid:start -->"
MARK_END = "<!-- ablation-grid:end -->"

DEFAULT_METHODS = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")
DEFAULT_REFINERS = ("none", "crf:psa", "varm", "irn")
DEFAULT_RULES = ("argmax", "ppmg", "smaf", "reliable")
QUIET = ("runtime.progress=false", "runtime.plots=false")


def _irn_overrides() -> list[str]:
    """``pseudo.args.irn`` of the ``ppl_synthetic`` preset (the tiny IRNet every method gets in the grid)."""
    from wsss_blocks.train.pipeline import chain_spec
    from wsss_blocks.train.schema import load_run_config

    args = chain_spec(load_run_config("ppl_synthetic")).args["irn"]
    from wsss_blocks.train.config import to_dict

    return [f"pseudo.args.irn={json.dumps(to_dict(args))}"]


def released_chain(method: str) -> tuple[str, str]:
    """``(refine, rule)`` of a method's synthetic preset."""
    from wsss_blocks.train.pipeline import chain_spec
    from wsss_blocks.train.schema import load_run_config

    s = chain_spec(load_run_config(f"{method}_synthetic"))
    return s.refine, s.rule


def _method_cells(method: str, refiners: Sequence[str], rules: Sequence[str], out: Path, seed: int,
                  overrides: Sequence[str], limit: int | None, log: Any) -> dict[str, Any]:
    from wsss_blocks.data.normalization import data_normalization, normalize_images
    from wsss_blocks.metrics import BgScoreSweep, SegmentationMetric
    from wsss_blocks.train.cam_stage import prepare_env, restore_method, stage_dir, train_cam
    from wsss_blocks.train.config import ConfigError
    from wsss_blocks.train.datasets import data_root, iter_inference_batches, open_split
    from wsss_blocks.train.irn_stage import boundary_fn, train_irn
    from wsss_blocks.train.pipeline import PseudoChain
    from wsss_blocks.train.pseudo_stage import compute_cams
    from wsss_blocks.train.schema import load_run_config

    base_ov = [*QUIET, f"runtime.seed={seed}"]
    cfg = load_run_config(f"{method}_synthetic", [*base_ov, *overrides])
    run = out / method
    env = prepare_env(cfg)
    t0 = time.time()
    train_cam(cfg, run, resume=True, env=env)
    cam_s = time.time() - t0
    m = restore_method(cfg, stage_dir(run, "cam") / "model.pt", env)
    ds = open_split(cfg, cfg.data.cam_eval_split, return_mask=True, limit=limit or cfg.data.max_eval_images,
                    root=data_root(cfg, env))
    k = cfg.data.num_classes + 1
    sweep_ts = sorted({round(float(t), 6) for t in cfg.pseudo.sweep_thresholds})
    sweep = BgScoreSweep(k, sweep_ts)
    batches: list[tuple[torch.Tensor, ...]] = []
    t0 = time.time()
    with torch.no_grad():
        for group in iter_inference_batches(ds, env, 16):
            img = torch.stack([s["image"] for s in group])
            lab = torch.stack([s["labels"] for s in group])
            gt = torch.stack([s["mask"] for s in group])
            cams = compute_cams(m, img, lab, cfg)
            sweep.update(cams, lab, gt)
            batches.append((img, lab, gt, cams))
    res = sweep.compute()
    bg = res.best_bg_score if cfg.pseudo.bg_score == "sweep" else float(cfg.pseudo.bg_score)
    cam_miou = res.miou[res.bg_scores.index(round(bg, 6))] if round(bg, 6) in res.bg_scores else None
    log(f"{method}: CAM stage {cam_s:.0f} s, CAMs {time.time() - t0:.0f} s, CAM mIoU {100 * (cam_miou or 0):.1f} "
        f"at bg {bg:.2f}")
    own = released_chain(method)
    cells: list[dict[str, Any]] = []
    boundary = None
    for refiner in refiners:
        if refiner == "irn":
            icfg = load_run_config(f"{method}_synthetic", [*base_ov, "pseudo.refine=irn", *_irn_overrides(),
                                                           *overrides])
            t1 = time.time()
            chain0 = PseudoChain(icfg, m)
            train_irn(icfg, run, env, lambda x, y, _c=icfg: compute_cams(m, x, y, _c), chain0)
            boundary = boundary_fn(icfg, run, env)
            log(f"{method}: IRNet (IR labels + training) {time.time() - t1:.0f} s")
        for rule in rules:
            cell: dict[str, Any] = {"method": method, "refine": refiner, "rule": rule,
                                    "released": (refiner, rule) == own, "miou_pct": None, "seconds": None}
            ov = [*base_ov, f"pseudo.refine={refiner}", f"pseudo.rule={rule}",
                  *(_irn_overrides() if refiner == "irn" else []), *overrides]
            try:
                ccfg = load_run_config(f"{method}_synthetic", ov)
            except ConfigError as e:  # an incompatible combination is refused, and shown as such
                cell["refused"] = str(e)
                cells.append(cell)
                continue
            chain = PseudoChain(ccfg, m, irn_boundary=boundary if refiner == "irn" else None)
            metric = SegmentationMetric(k, pred_ignore="background")
            t1 = time.time()
            for img, lab, gt, cams in batches:
                masks = chain.masks(cams, lab, img, bg, images=normalize_images(img, data_normalization(ccfg.data)))
                metric.update(masks, gt)
            cell["seconds"] = round(time.time() - t1, 1)
            cell["miou_pct"] = round(100 * float(metric.compute()["miou"]), 2)
            log(f"  {method:8s} {refiner:8s} {rule:9s} {cell['miou_pct']:5.1f}  ({cell['seconds']} s)")
            cells.append(cell)
    return {"method": method, "cam_miou_pct": None if cam_miou is None else round(100 * cam_miou, 2),
            "bg_score": bg, "bg_rule": "sweep" if cfg.pseudo.bg_score == "sweep" else "fixed",
            "cam_stage_seconds": round(cam_s, 1), "images": len(ds), "released": list(own), "cells": cells}


def run_grid(methods: Sequence[str] = DEFAULT_METHODS, refiners: Sequence[str] = DEFAULT_REFINERS,
             rules: Sequence[str] = DEFAULT_RULES, *, out: str | Path | None = None, seed: int = 0,
             overrides: Sequence[str] = (), limit: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the grid and return its JSON-ready result (see the module docstring)."""
    def log(s: str) -> None:
        if verbose:
            print(s, flush=True)

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        rows = [_method_cells(m, refiners, rules, root, seed, overrides, limit, log) for m in methods]
    return {"config": config_header("cpu"), "threads": torch.get_num_threads(), "seed": seed,
            "overrides": list(overrides), "methods": list(methods), "refiners": list(refiners), "rules": list(rules),
            "unit": "percent", "metric": "pseudo-mask mIoU on the synthetic cam_eval_split (ignore counted as "
            "background)", "rows": rows, "wall_s": round(time.time() - t0, 1)}


# ------------------------------------------------------------------------------------------------ rendering
def markdown_table(result: dict[str, Any]) -> str:
    """One row per method × refiner, one column per rule; the released chain in bold; '—' where refused."""
    rules = result["rules"]
    lines = ["| method (CAM mIoU) | refiner | " + " | ".join(rules) + " |",
             "|---|---|" + "---:|" * len(rules)]
    for row in result["rows"]:
        by = {(c["refine"], c["rule"]): c for c in row["cells"]}
        for i, refiner in enumerate(result["refiners"]):
            head = f"{row['method']} ({row['cam_miou_pct']:.1f})" if i == 0 else ""
            vals = []
            for rule in rules:
                c = by.get((refiner, rule))
                if c is None or c["miou_pct"] is None:
                    vals.append("—")
                    continue
                v = f"{c['miou_pct']:.1f}"
                vals.append(f"**{v}**" if c["released"] else v)
            lines.append(f"| {head} | {refiner} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def render_figure(result: dict[str, Any], path: Path = FIGURE) -> Path:
    """One heat map per method (refiner × rule, pseudo-mask mIoU), the released chain outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, refiners, rules = result["rows"], result["refiners"], result["rules"]
    vals = [c["miou_pct"] for r in rows for c in r["cells"] if c["miou_pct"] is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(rows), figsize=(2.3 * len(rows) + 0.8, 2.6), squeeze=False)
    im = None
    for ax, row in zip(axes[0], rows):
        grid = np.full((len(refiners), len(rules)), np.nan)
        for c in row["cells"]:
            if c["miou_pct"] is not None:
                grid[refiners.index(c["refine"]), rules.index(c["rule"])] = c["miou_pct"]
        im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for i in range(len(refiners)):
            for j in range(len(rules)):
                v = grid[i, j]
                ax.text(j, i, "—" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < (lo + hi) / 2 else "black")
        for c in row["cells"]:
            if c["released"]:
                i, j = refiners.index(c["refine"]), rules.index(c["rule"])
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(f"{row['method']} (CAM {row['cam_miou_pct']:.0f})", fontsize=8)
        ax.set_xticks(range(len(rules)), rules, rotation=45, fontsize=7)
        ax.set_yticks(range(len(refiners)), refiners if ax is axes[0][0] else [""] * len(refiners), fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="pseudo-mask mIoU (%)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def update_docs(result: dict[str, Any], page: Path = DOCS_PAGE) -> bool:
    """Replace the table between the markers of the docs page; False when the page has no markers."""
    if not page.is_file():
        return False
    text = page.read_text()
    if MARK_START not in text or MARK_END not in text:
        return False
    cfg = result["config"]
    head = (f"Measured {cfg['date'][:10]} on {cfg['device_name']} ({cfg['cpu_count']} cores, {result['threads']} "
            f"thread(s)), wsss-blocks {cfg['wsss_blocks']}, torch {cfg['torch']}, seed {result['seed']}, "
            f"{result['rows'][0]['images']} images, wall time {result['wall_s'] / 60:.1f} min. Bold: the method's "
            f"released chain.")
    block = f"{MARK_START}\n{head}\n\n{markdown_table(result)}\n{MARK_END}"
    start, end = text.index(MARK_START), text.index(MARK_END) + len(MARK_END)
    page.write_text(text[:start] + block + text[end:])
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality --grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--refiners", default=",".join(DEFAULT_REFINERS))
    p.add_argument("--rules", default=",".join(DEFAULT_RULES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="evaluation images per method (default all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--out", default=None, help="folder for the CAM runs (default a temporary folder)")
    p.add_argument("--results", default=str(RESULTS_DIR / "ablation"), help="folder for the JSON")
    p.add_argument("--no-docs", action="store_true", help="do not write the picture and the docs table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods, refiners, rules = ([x.strip() for x in s.split(",") if x.strip()]
                                for s in (args.methods, args.refiners, args.rules))
    result = run_grid(methods, refiners, rules, out=args.out, seed=args.seed, overrides=args.overrides,
                      limit=args.limit)
    extra = {k: v for k, v in result.items() if k not in ("config", "rows")}
    path = write_json("ablation_synthetic", result["rows"], out_dir=args.results, extra=extra)
    print(markdown_table(result))
    print(f"wrote {path} (wall time {result['wall_s'] / 60:.1f} min)")
    if not args.no_docs:
        fig = render_figure(result)
        updated = update_docs(result)
        print(f"wrote {fig} ({fig.stat().st_size // 1024} kB)" + ("; docs table updated" if updated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
