"""Quality tables: the synthetic benchmark protocol (every method, seeds, both initialisations) and real data.

**Synthetic data** (the default) runs the *protocol* of the synthetic presets (``<method>_synthetic.yaml``):

- the same data for every method (``data.synthetic``: 200 train / 50 val images of 64 px, 6 classes, data
  seed 0, ``body_evidence`` 0.5 — half of the bodies faintly carry their class hue);
- the same number of images seen in the CAM stage (batch × steps summed over the method's phases);
- the same CAM backbone (the tiny CNN 16-32-64) wherever the method allows; a method that needs its own
  architecture (TSCD: a tiny MiT, its SegFormer) gets a ``baseline@<backbone>`` row beside it: the plain-CAM
  baseline on that network with that method's CAM-stage optimiser, schedule and augmentation;
- the same segmentation stage (DeepLab-v2 on the tiny CNN, the baseline preset's ``seg`` section; PMM keeps its
  released PUF loss and cyclic round, the segmentation-stage part of its method). TSCD's own segmentation head
  is reported in an extra column, next to the DeepLab trained on TSCD's pseudo masks;
- no choice on the validation split anywhere: the background score is swept on the CAM evaluation split (the
  training images), no checkpoint is picked by val mIoU (PMM relabels with its last model);
- ``--seeds`` (default 0, 1, 2: ``runtime.seed``; the data seed stays fixed) and ``--init`` (default both:
  ``pretrained`` = backbones pretrained on a disjoint synthetic set, the presets' default, see
  `wsss_blocks.train.synthetic_pretrain`; ``random`` = ``cam.pretrained=null seg.pretrained=null``).

`check_protocol` refuses, before any training, a set of rows that breaks one of these rules (e.g. a preset
edited to another budget). Every run goes through `wsss_blocks.train.reproduce` with config overrides only, so
a changed preset or pipeline is measured by rerunning this command. Besides CAM, pseudo-mask and segmentation
mIoU, each record holds the quantities the methods claim to improve, measured on the pseudo masks of the
training images against the generator's ground truth (`wsss_blocks.metrics.RegionCoverage`,
`wsss_blocks.metrics.BoundaryMetric`): head and body recall, background false-positive rate, boundary F-score
(2 px) and trimap mIoU (2 px band).

Usage::

    python -m benchmarks.quality --jobs 2                     # the full grid (both inits, 3 seeds), then:
    python -m benchmarks.render_docs                          # regenerate docs/benchmarks.md
    python -m benchmarks.quality --methods baseline,pmm --seeds 0 --init pretrained --no-json   # a check
    python -m benchmarks.quality --methods pmm,ppl --merge --jobs 2   # rerun two methods into the table
    python -m benchmarks.quality --data-root /data/VOCdevkit/VOC2012 --pretrained weights/res38d.pth
    python -m benchmarks.quality --grid                   # ablation grid: methods x refiners x rules (ablation.py)

The grid goes to ``benchmarks/results/quality_synthetic.json`` (``quality_synthetic_quick.json`` with
``--quick``): a header with the protocol, the pretrained backbones' records, the hardware, the wall time and
the load average seen during the run, and one record per row × init × seed. ``--jobs N`` runs N runs at a time
(separate processes, ``runtime.threads`` each, ``--threads`` to change it); the synthetic data and the
pretrained backbones are prepared first, once.

**Real data** (``--data-root``) runs the ``<method>_<dataset>`` presets (the released settings), one seed, and
prints the papers' numbers next to ours (``quality_<dataset>.json``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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


# ============================================================================================== synthetic grid
#: what each method claims to improve, as record keys (the mechanism columns its row is read by)
CLAIMS: dict[str, tuple[str, ...]] = {
    "l2g": ("body_recall",),            # local views transfer less discriminative evidence to the global network
    "ppl": ("body_recall",),            # patch learning at several depths spreads the activation
    "pmm": ("pseudo_miou", "bg_fp", "seg_minus_pseudo"),  # proportional masks + CoV + CRF; PUF on noisy labels
    "smaf": ("body_recall", "boundary_f"),  # multi-scale attention fusion (completeness) + CRF (boundaries)
    "tscd": ("body_recall", "boundary_f"),  # self-correspondence distillation (completeness) + VARM (boundaries)
}
#: segmentation-stage keys that are part of a method (PMM's PUF loss and cyclic round), not of the protocol
METHOD_SEG_KEYS = ("loss", "loss_args", "cyclic_rounds", "cyclic_loss", "cyclic_select", "cyclic_scales",
                   "cyclic_flip", "cyclic_crf", "cyclic_policy")
#: record keys in percent
PCT_KEYS = ("cam_miou", "pseudo_miou", "seg_miou", "seg_own_miou", "head_recall", "body_recall", "bg_fp",
            "boundary_f", "trimap_miou")
INITS = ("pretrained", "random")
#: boundary tolerance and trimap band of the mechanism figures, pixels (of 64-px images)
BOUNDARY_PX = 2
#: rough relative cost of a run, to start the long ones first when running in parallel
_COST = {"tscd": 5.0, "pmm": 4.0, "l2g": 3.0, "smaf": 2.5, "ppl": 1.5, "baseline": 1.0}


@dataclass(frozen=True)
class Row:
    """One row of the grid: a registered method with extra overrides (``baseline@<backbone>`` rows)."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    arch: str = ""


def _yaml(v: Any) -> str:
    import yaml

    if isinstance(v, tuple):
        v = list(v)
    return str(yaml.safe_dump(v, default_flow_style=True, width=10_000)).strip().removesuffix("...").strip()


def section_overrides(cfg: Any, section: str, skip: Sequence[str] = ()) -> list[str]:
    """``section.key=value`` overrides that set every key of a config section to ``cfg``'s value."""
    from wsss_blocks.train.config import to_dict

    return [f"{section}.{k}={_yaml(v)}" for k, v in to_dict(getattr(cfg, section)).items() if k not in skip]


def architecture(cfg: Any) -> tuple[str, dict[str, Any]]:
    """The CAM network's backbone and its keywords (TSCD's MiT strides live in ``method_args.strides``)."""
    kw = dict(cfg.cam.backbone_kwargs)
    if cfg.method == "tscd":
        kw.setdefault("strides", list(cfg.method_config().strides))
    return cfg.cam.backbone, {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def cam_images(cfg: Any) -> int:
    """Images the CAM stage trains on: batch × optimizer steps, summed over the method's phases."""
    from types import SimpleNamespace

    cls = cfg.method_class()
    mcfg = cfg.method_config()
    stub = SimpleNamespace(cfg=mcfg)  # phase_optim and phase_steps read only the method's arguments
    total = 0
    for ph in cls.phases_for(mcfg):
        o = cls.phase_optim(cast(Any, stub), ph, cfg.cam)  # a phase's own batch and steps (PMM's stage C)
        steps = o.steps if o.steps is not None else o.epochs * (cfg.data.synthetic.num_train // o.batch_size)
        total += int(cls.phase_steps(cast(Any, stub), ph, int(steps))) * int(o.batch_size) * int(o.accumulate)
    return total


def protocol_rows(methods: Sequence[str], quick: bool = False, overrides: Sequence[str] = ()) -> list[Row]:
    """The rows for ``methods``: each method's preset, and a ``baseline@<backbone>`` row before a method whose
    CAM network is not the baseline's (with that method's CAM section, so only the method differs).
    """
    base_cfg = reference_config(quick, overrides)
    base_arch = architecture(base_cfg)
    rows: list[Row] = []
    for m in methods:
        cfg = load_run_config(preset_name(m, None), list(overrides), quick=quick)
        arch = architecture(cfg)
        if m != "baseline" and arch != base_arch:
            steps = cam_images(cfg) // (cfg.cam.batch_size * cfg.cam.accumulate)
            ov = section_overrides(cfg, "cam", skip=("backbone_kwargs", "steps"))
            ov += [f"cam.backbone_kwargs={_yaml(arch[1])}", f"cam.steps={steps}"]
            rows.append(Row(f"baseline@{arch[0]}", "baseline", tuple(ov), arch[0]))
        rows.append(Row(m, m, (), arch[0]))
    return rows


def reference_config(quick: bool = False, overrides: Sequence[str] = ()) -> Any:
    """The baseline preset with the run's overrides: the protocol's reference (data, budget, backbone, seg stage)."""
    return load_run_config(preset_name("baseline", None), list(overrides), quick=quick)


def row_config(row: Row, quick: bool, overrides: Sequence[str]) -> Any:
    """The resolved config of a row (its preset, its own overrides, then the run's)."""
    return load_run_config(preset_name(row.method, None), [*row.overrides, *overrides], quick=quick)


def select_rows(rows: Sequence[Row], names: Sequence[str]) -> list[Row]:
    """Rows named in ``names``; a method's name also selects the ``baseline@<backbone>`` row on its network."""
    want = set(names)
    owners = {r.arch for r in rows if r.method in want and r.name == r.method and r.method != "baseline"}
    return [r for r in rows if r.name in want or (r.name.startswith("baseline@") and r.arch in owners)]


def check_protocol(configs: dict[str, Any], ref: Any | None = None) -> None:
    """Refuse rows that break the protocol (see the module docstring); ValueError listing every breach.

    ``configs`` maps row names to resolved configs (with the run's overrides); ``ref`` (default: the
    ``baseline`` row, else the first) is the reference for the data, the budget, the backbone and the
    segmentation stage.
    """
    from wsss_blocks.train.config import to_dict

    errors: list[str] = []
    names = list(configs)
    ref_name = "the baseline preset" if ref is not None else ("baseline" if "baseline" in configs else names[0])
    ref = ref if ref is not None else configs["baseline" if "baseline" in configs else names[0]]

    def syn(c: Any) -> dict[str, Any]:
        d = to_dict(c.data.synthetic)
        d.pop("cache_dir", None)
        return d

    def arch_of(c: Any) -> str:
        return json.dumps(architecture(c), sort_keys=True)

    archs = {n: arch_of(c) for n, c in configs.items()}
    ref_arch = arch_of(ref)
    borrowed = {archs[n] for n in names if n.startswith("baseline@")}
    for n, c in configs.items():
        if c.data.dataset != "synthetic":
            errors.append(f"{n}: data.dataset is {c.data.dataset!r}, the protocol is for synthetic data")
            continue
        if syn(c) != syn(ref):
            errors.append(f"{n}: data.synthetic {syn(c)} differs from {ref_name}'s {syn(ref)}")
        for key in ("train_split", "cam_eval_split", "val_split", "max_train_images", "max_eval_images"):
            if getattr(c.data, key) != getattr(ref.data, key):
                errors.append(f"{n}: data.{key} {getattr(c.data, key)!r} differs from {ref_name}'s "
                              f"{getattr(ref.data, key)!r}")
        if cam_images(c) != cam_images(ref):
            errors.append(f"{n}: the CAM stage sees {cam_images(c)} images, {ref_name} {cam_images(ref)}")
        if archs[n] != ref_arch and archs[n] not in borrowed:
            errors.append(f"{n}: CAM backbone {archs[n]} differs from {ref_name}'s {ref_arch} and no "
                          f"baseline@{c.cam.backbone} row runs beside it")
        for sec in ("cam", "seg") if c.seg.source != "method" else ("cam",):
            if getattr(c, sec).pretrained != getattr(ref, sec).pretrained:
                errors.append(f"{n}: {sec}.pretrained {getattr(c, sec).pretrained!r} differs from {ref_name}'s "
                              f"{getattr(ref, sec).pretrained!r}")
        if c.pseudo.bg_score == "sweep" and c.data.cam_eval_split == c.data.val_split:
            errors.append(f"{n}: pseudo.bg_score is swept on data.cam_eval_split = the validation split")
        if c.seg.eval_every is not None:
            errors.append(f"{n}: seg.eval_every evaluates val during training (set it to null)")
        if c.seg.cyclic_rounds > 0 and c.seg.cyclic_select != "last":
            errors.append(f"{n}: seg.cyclic_select {c.seg.cyclic_select!r} picks a model by val mIoU (use 'last')")
        if c.seg.source != "method":
            a = {k: v for k, v in to_dict(c.seg).items() if k not in METHOD_SEG_KEYS}
            b = {k: v for k, v in to_dict(ref.seg).items() if k not in METHOD_SEG_KEYS}
            diff = sorted(k for k in a if a[k] != b.get(k))
            if diff:
                errors.append(f"{n}: segmentation stage differs from {ref_name}'s in " + ", ".join(
                    f"seg.{k} ({a[k]!r} vs {b.get(k)!r})" for k in diff))
    if errors:
        raise ValueError("the rows break the benchmark protocol:\n  " + "\n  ".join(errors))


def mechanism_figures(cfg: Any, run_dir: str | Path) -> dict[str, float]:
    """Head/body recall, background false positives and boundary figures of a run's pseudo masks (percent).

    The pseudo masks of the CAM evaluation split (the training images) are compared with the generator's
    class masks and part masks (``PartMasks``: 0 background, 1 body, 2 head); ignore labels (255) in a pseudo
    mask count as background, as in the pseudo-mask mIoU.
    """
    import numpy as np
    import torch

    from wsss_blocks.data.io import load_label_png
    from wsss_blocks.data.synthetic import PART_BACKGROUND, PART_BODY, PART_HEAD
    from wsss_blocks.metrics import BoundaryMetric, RegionCoverage
    from wsss_blocks.train.datasets import data_root, open_split
    from wsss_blocks.train.pseudo_stage import pseudo_mask_dir

    root = data_root(cfg)
    ev = open_split(cfg, cfg.data.cam_eval_split, return_mask=True, limit=cfg.data.max_eval_images, root=root)
    masks = pseudo_mask_dir(run_dir)
    cover = RegionCoverage(3)
    bound = BoundaryMetric(cfg.data.num_classes + 1, tolerance=BOUNDARY_PX)
    for i, name in enumerate(ev.names):
        pred = torch.from_numpy(load_label_png(masks / f"{name}.png").astype(np.int64))
        pred = pred.masked_fill(pred == 255, 0)
        gt = torch.from_numpy(ev.load_mask(i).astype(np.int64))
        part = torch.from_numpy(load_label_png(root / "PartMasks" / f"{name}.png").astype(np.int64))
        cover.update(pred, gt, part)
        bound.update(pred, gt)
    c, b = cover.compute(), bound.compute()
    return {"head_recall": 100 * float(c["recall"][PART_HEAD]), "body_recall": 100 * float(c["recall"][PART_BODY]),
            "bg_fp": 100 * float(c["foreground_rate"][PART_BACKGROUND]),
            "boundary_f": 100 * float(b["boundary_f"]), "trimap_miou": 100 * float(b["trimap_miou"])}


def _task_key(t: dict[str, Any]) -> tuple[float, int]:
    return (-_COST.get(t["method"], 1.0), t["index"])


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One row × init × seed through `wsss_blocks.train.reproduce`; returns its record (``error`` on failure).

    A TSCD run is two calls into one folder: its own head (the preset), then the protocol's DeepLab on its
    pseudo masks (the CAM and pseudo-mask stages are reused).
    """
    import torch

    rec: dict[str, Any] = {"method": task["row"], "trainer_method": task["method"], "arch": task["arch"],
                           "init": task["init"], "seed": task["seed"]}
    fn = task.get("reproduce_fn") or reproduce
    out = Path(task["out"])
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(int(task["threads"]))
        ov = list(task["overrides"])
        cfg = load_run_config(preset_name(task["method"], None), ov, quick=task["quick"])
        res = fn(task["method"], None, out=out, quick=task["quick"], overrides=ov, resume=False, verbose=False)
        ours, info = res.get("ours", {}), res.get("info", {})
        rec.update(cam_miou=_pct(ours.get("cam_miou")), pseudo_miou=_pct(ours.get("pseudo_miou")),
                   seg_miou=_pct(ours.get("val_miou")), seg_own_miou=None, bg_score=info.get("bg_score"),
                   cam_images=cam_images(cfg), seg_rounds=info.get("seg_rounds") or [],
                   stage_seconds=dict(res.get("stage_seconds") or {}))
        if cfg.seg.source == "method":  # the own head's score, then the protocol's DeepLab on the same masks
            rec["seg_own_miou"] = rec["seg_miou"]
            ov2 = ov + list(task["seg_overrides"])
            res2 = fn(task["method"], None, out=out, quick=task["quick"], overrides=ov2, resume=True, verbose=False)
            rec["seg_miou"] = _pct(res2.get("ours", {}).get("val_miou"))
            rec["stage_seconds"]["seg_deeplab"] = (res2.get("stage_seconds") or {}).get("seg")
        if task.get("mechanisms", True):
            rec.update(mechanism_figures(cfg, out))
    except Exception as e:
        traceback.print_exc()
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["out"] = str(out)
    return rec


class LoadMonitor:
    """Samples the 1-minute load average every ``every`` seconds in a thread (min / mean / max at the end)."""

    def __init__(self, every: float = 20.0):
        import os
        import threading

        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import os

        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import os

        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2),
                "samples": len(s)}


def prepare_shared(configs: Sequence[Any]) -> list[dict[str, Any]]:
    """Generate the synthetic data and pretrain the backbones the runs need (once, before parallel runs).

    Returns the pretrained backbones' records (the ``.json`` next to each cached file).
    """
    from wsss_blocks.train.datasets import data_root
    from wsss_blocks.train.synthetic_pretrain import resolve_synthetic_pretrained

    records: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        data_root(cfg)
        resolved = resolve_synthetic_pretrained(cfg)
        for sec in ("cam", "seg"):
            if getattr(cfg, sec).pretrained == "synthetic":
                path = Path(getattr(resolved, sec).pretrained)
                rec = json.loads(path.with_suffix(".json").read_text())
                records[path.name] = {"file": path.name, "backbone": rec["key"]["backbone"],
                                      "backbone_kwargs": rec["key"]["backbone_kwargs"],
                                      "eval_exact_match_pct": 100 * rec.get("eval_exact_match", float("nan")),
                                      "eval_label_accuracy_pct": 100 * rec.get("eval_label_accuracy", float("nan")),
                                      "seconds": rec.get("seconds"), "torch_threads": rec.get("torch_threads")}
    return list(records.values())


def protocol_header(rows: Sequence[Row], configs: dict[str, Any], ref: Any, seeds: Sequence[int],
                    inits: Sequence[str], quick: bool, overrides: Sequence[str]) -> dict[str, Any]:
    """The settings every row shares, in words and values (the table's header); ``ref``: `reference_config`."""
    from wsss_blocks.train.config import to_dict

    s = ref.data.synthetic
    seg = ref.seg
    syn = to_dict(s)
    syn.pop("cache_dir", None)
    return {
        "data": (f"synthetic {s.num_train} train / {s.num_val} val images of {s.image_size} px, {s.num_classes} "
                 f"classes, data seed {s.seed}, body_evidence {s.body_evidence}"),
        "synthetic": syn,
        "cam_images": cam_images(ref),
        "cam_backbones": {r.name: {"backbone": architecture(configs[r.name])[0],
                                   "backbone_kwargs": architecture(configs[r.name])[1]} for r in rows},
        "seg_stage": (f"{seg.model} on {seg.backbone} {dict(seg.backbone_kwargs)}, {seg.steps} steps of batch "
                      f"{seg.batch_size}, crop {seg.crop_size}, lr {seg.lr}, eval scales {list(seg.eval_scales)}"
                      f"{', CRF' if seg.crf else ''}"),
        "bg_score": ("swept on the CAM evaluation split (the training images, GT masks), best score for CAM mIoU "
                     "and the pseudo masks; never on val"),
        "val_choices": "none (no checkpoint or threshold is picked on val; PMM relabels with its last model)",
        "mechanisms": (f"pseudo masks of the {ref.data.cam_eval_split} images vs the generator's class and part "
                       f"masks: head/body recall, background false-positive rate, boundary F-score within "
                       f"{BOUNDARY_PX} px, trimap mIoU in a {BOUNDARY_PX}-px band"),
        "claims": {k: list(v) for k, v in CLAIMS.items()},
        "rows": [r.name for r in rows],
        "seeds": list(seeds),
        "inits": list(inits),
        "quick": quick,
        "overrides": list(overrides),
    }


def build_tasks(rows: Sequence[Row], seeds: Sequence[int], inits: Sequence[str], out: Path, quick: bool,
                overrides: Sequence[str], threads: int | None, device: str
                ) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """The runs of the grid (one per row × init × seed), the resolved config of each row (as its preset
    initialises it) and the reference config (`reference_config`).
    """
    base_ov = list(QUIET_OVERRIDES)
    if device != "auto":
        base_ov.append(f"runtime.device={device}")
    if threads is not None:
        base_ov.append(f"runtime.threads={int(threads)}")
    configs = {r.name: row_config(r, quick, [*base_ov, *overrides]) for r in rows}
    ref = reference_config(quick, [*base_ov, *overrides])
    seg_ov = ["seg.source=deeplab", *section_overrides(ref, "seg", skip=("source",))]
    tasks = []
    for init in inits:
        init_ov = ["cam.pretrained=null", "seg.pretrained=null"] if init == "random" else []
        for r in rows:
            for sd in seeds:
                ov = [*r.overrides, *base_ov, *overrides, *init_ov, f"runtime.seed={int(sd)}"]
                thr = configs[r.name].runtime.threads or 1
                tasks.append({"index": len(tasks), "row": r.name, "method": r.method, "arch": r.arch, "init": init,
                              "seed": int(sd), "overrides": ov, "seg_overrides": [*seg_ov, *init_ov],
                              "quick": quick, "threads": int(threads or thr),
                              "out": str(out / init / r.name / f"seed{sd}")})
    return tasks, configs, ref


def run_grid(tasks: Sequence[dict[str, Any]], jobs: int = 1) -> list[dict[str, Any]]:
    """Run the tasks (``jobs`` at a time in separate processes), most expensive first; records in task order."""
    order = sorted(tasks, key=_task_key)
    done: dict[int, dict[str, Any]] = {}
    if jobs <= 1:
        for t in order:
            done[t["index"]] = run_task(t)
            _progress(done[t["index"]], len(done), len(tasks))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(run_task, t): t for t in order}
            for f in as_completed(futs):
                t = futs[f]
                try:
                    done[t["index"]] = f.result()
                except Exception as e:
                    done[t["index"]] = {"method": t["row"], "trainer_method": t["method"], "arch": t["arch"],
                                        "init": t["init"], "seed": t["seed"], "error": f"{type(e).__name__}: {e}"}
                _progress(done[t["index"]], len(done), len(tasks))
    return [done[t["index"]] for t in tasks]


def _progress(rec: dict[str, Any], n: int, total: int) -> None:
    what = f"{rec['method']} [{rec['init']}, seed {rec['seed']}]"
    if rec.get("error"):
        print(f"[{n}/{total}] {what}: failed: {rec['error']}", flush=True)
    else:
        print(f"[{n}/{total}] {what}: CAM {_cell(rec.get('cam_miou'))}, pseudo {_cell(rec.get('pseudo_miou'))}, "
              f"seg {_cell(rec.get('seg_miou'))}, body recall {_cell(rec.get('body_recall'))} "
              f"({rec.get('seconds', 0):.0f} s)", flush=True)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n − 1) of the finite values, and their count."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, sd, len(v)


def format_mean_std(values: Sequence[float | None]) -> str:
    m, sd, _ = mean_std(values)
    if m is None:
        return "–"
    return f"{m:.1f}" if sd is None else f"{m:.1f} ± {sd:.1f}"


GRID_COLUMNS = (("cam_miou", "CAM"), ("pseudo_miou", "pseudo"), ("seg_miou", "seg."), ("seg_own_miou", "own head"),
                ("head_recall", "head rec."), ("body_recall", "body rec."), ("bg_fp", "bg FP"),
                ("boundary_f", "bound. F"), ("trimap_miou", "trimap"))


def format_grid(records: Sequence[dict[str, Any]], row_order: Sequence[str], init: str) -> str:
    """Markdown table of one initialisation: mean ± std over seeds per row (percent)."""
    cols = ["row", *[c[1] for c in GRID_COLUMNS], "seeds", "wall s"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for name in row_order:
        recs = [r for r in records if r["method"] == name and r["init"] == init]
        if not recs:
            continue
        ok = [r for r in recs if not r.get("error")]
        cells = [name] + [format_mean_std([r.get(k) for r in ok]) for k, _ in GRID_COLUMNS]
        failed = len(recs) - len(ok)
        cells.append(f"{len(ok)}" + (f" ({failed} failed)" if failed else ""))
        m, _, _ = mean_std([r.get("seconds") for r in ok])
        cells.append(_cell(m, ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_records(path: Path, records: list[dict[str, Any]], header: dict[str, Any],
                  protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """``records`` plus those of ``path`` for other (row, init, seed); ValueError when not comparable."""
    if not path.is_file():
        return records
    old = json.loads(path.read_text())
    old_cfg = old.get("config", {})
    diff = [k for k in MERGE_KEYS if old_cfg.get(k) != header.get(k)]
    op = dict(old.get("protocol") or {})
    new = dict(protocol)
    for d in (op, new):
        for k in ("rows", "seeds", "inits", "cam_backbones"):
            d.pop(k, None)
    if op != new:
        diff.append("protocol (" + ", ".join(sorted(k for k in set(op) | set(new) if op.get(k) != new.get(k)))
                    + ")")
    if diff:
        raise ValueError(f"--merge: {path} was measured with different {', '.join(diff)}; "
                         f"write to another --results folder or rerun the whole grid")
    now = {(r["method"], r["init"], r["seed"]) for r in records}
    kept = [r for r in old.get("rows", []) if isinstance(r, dict)
            and (r.get("method"), r.get("init"), r.get("seed")) not in now]
    return kept + records


def _write_payload(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def main_synthetic(args: argparse.Namespace) -> int:
    """The synthetic protocol grid (see the module docstring)."""
    out = Path(args.out) if args.out is not None else Path(tempfile.mkdtemp(prefix="wsss_quality_"))
    name = "quality_synthetic" + ("_quick" if args.quick else "")
    try:
        rows = select_rows(protocol_rows(default_methods(None), args.quick, args.overrides), args.methods)
        tasks, configs, ref = build_tasks(rows, args.seeds, args.init, out, args.quick, args.overrides, args.threads,
                                          args.device)
        check_protocol(configs, ref)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    protocol = protocol_header(rows, configs, ref, args.seeds, args.init, args.quick, args.overrides)
    device = "cpu" if args.device in ("auto", "cpu") else args.device
    header = config_header(device)
    header["threads"] = max(t["threads"] for t in tasks)
    header["jobs"] = args.jobs
    path = Path(args.results) / f"{name}.json"
    if args.merge and not args.no_json:  # refuse before training, not after
        try:
            merge_records(path, [], header, protocol)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"{len(tasks)} runs: {len(rows)} rows ({', '.join(r.name for r in rows)}) x inits {list(args.init)} x "
          f"seeds {list(args.seeds)}; {args.jobs} at a time, {header['threads']} torch thread(s) each; runs in "
          f"{out}", flush=True)
    import torch

    torch.set_num_threads(header["threads"])  # the pretraining in this process runs like the runs do
    t0 = time.perf_counter()
    with LoadMonitor() as load:
        pre = prepare_shared([configs[r.name] for r in rows]) if "pretrained" in args.init else []
        setup_s = time.perf_counter() - t0
        records = run_grid(tasks, args.jobs)
    wall = time.perf_counter() - t0
    order = [r.name for r in rows]
    for init in args.init:
        print(f"\n{init} initialisation (mean ± std over seeds {list(args.seeds)}; percent)")
        print(format_grid(records, order, init))
    print(f"wall time: {wall:.0f} s (of which data + pretraining {setup_s:.0f} s); 1-minute load average "
          f"{load.summary()}")
    failed = any(r.get("error") for r in records)
    if not args.no_json:
        if args.merge:
            try:
                records = merge_records(path, records, header, protocol)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            old = json.loads(path.read_text()) if path.is_file() else {}
            protocol["cam_backbones"] = {**(old.get("protocol") or {}).get("cam_backbones", {}),
                                         **protocol["cam_backbones"]}
            names = {r["method"] for r in records}
            protocol["rows"] = [n for n in [r.name for r in protocol_rows(default_methods(None), args.quick,
                                                                          args.overrides)] if n in names]
            protocol["seeds"] = sorted({int(r["seed"]) for r in records})
            protocol["inits"] = [i for i in INITS if any(r["init"] == i for r in records)]
        payload = {"config": header, "rows": records, "protocol": protocol, "pretrained_backbones": pre,
                   "unit": "percent", "quick": args.quick, "wall_s": round(wall, 1), "setup_s": round(setup_s, 1),
                   "load_average_1min": load.summary(),
                   "command": "python -m benchmarks.quality " + " ".join(args.argv)}
        print(f"wrote {_write_payload(path, payload)}")
    return 1 if failed else 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{flag} must name at least one value, got {text!r}")
    return list(dict.fromkeys(vals))


def parse_rows(text: str | None) -> list[str]:
    """``--methods`` on synthetic data: method names and/or ``baseline@<backbone>`` row names (default: all)."""
    rows = [r.name for r in protocol_rows(default_methods(None))]
    if text is None:
        return rows
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--methods must name at least one method, got {text!r}")
    bad = [n for n in names if n not in rows]
    if bad:
        raise ValueError(f"--methods: unknown method(s) or row(s) {bad}; expected a subset of {rows}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {', '.join(METHOD_ORDER)} (synthetic data: also "
                        "baseline@<backbone> rows; a method brings the baseline row on its network) "
                        "(default: all with a preset)")
    p.add_argument("--data-root", default=None, help="VOC2012 (or COCO) folder; omit for synthetic data")
    p.add_argument("--dataset", default="voc", choices=["voc", "coco"], help="with --data-root")
    p.add_argument("--sbd-root", default=None, help="SegmentationClassAug folder when not under --data-root")
    p.add_argument("--pretrained", default=None, help="local CAM-backbone checkpoint (nothing is downloaded)")
    p.add_argument("--seg-pretrained", default=None, help="local segmentation-network checkpoint")
    p.add_argument("--quick", action="store_true", help="the presets' quick_overrides (a short sanity run)")
    p.add_argument("--seeds", default="0,1,2", help="synthetic: runtime.seed values, comma-separated (default 0,1,2)")
    p.add_argument("--init", default="pretrained,random",
                   help="synthetic: pretrained (the presets' synthetic-pretrained backbones) and/or random "
                        "(cam.pretrained=null seg.pretrained=null); default both")
    p.add_argument("--jobs", type=int, default=1, help="synthetic: runs at a time, in separate processes (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each run (runtime.threads; default: the presets' value, 1)")
    p.add_argument("--seed", type=int, default=0, help="real data: runtime.seed of every run (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to EVERY run, e.g. --set cam.steps=100 (repeatable)")
    p.add_argument("--out", default=None, help="folder for the runs (default: a fresh temporary folder)")
    p.add_argument("--resume", action="store_true", help="real data: reuse finished stages found in --out")
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder for the JSON table")
    p.add_argument("--no-json", action="store_true", help="print the table only")
    p.add_argument("--merge", action="store_true",
                   help="keep the other records of an existing JSON table (same hardware and protocol only); "
                        "the records of the runs made now are replaced")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw)
    args.argv = raw
    if args.data_root is None and args.dataset != "voc":
        p.error("--dataset needs --data-root (the synthetic data is VOC-format)")
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        p.error(f"--data-root {args.data_root!r} is not a folder")
    bad = [o for o in args.overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        p.error(f"--set expects KEY=VALUE, got {bad}")
    if args.resume and args.out is None:
        p.error("--resume needs --out (the folder whose finished stages to reuse)")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    try:
        args.seeds = _int_list(args.seeds, "--seeds")
        inits = [s.strip() for s in args.init.split(",") if s.strip()]
        if not inits or any(i not in INITS for i in inits):
            raise ValueError(f"--init expects pretrained and/or random, got {args.init!r}")
        args.init = [i for i in INITS if i in inits]
        if args.data_root is None:
            args.methods = parse_rows(args.methods)
        else:
            args.methods = parse_methods(args.methods, args.dataset)
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
    if args.data_root is None:
        return main_synthetic(args)
    data_root = str(Path(args.data_root).expanduser())
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
