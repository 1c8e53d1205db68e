"""Run a method's three stages end to end and print our numbers next to the paper's.

``reproduce("baseline")`` (no data root) generates the synthetic VOC-format dataset in the cache folder
and runs the method's ``<method>_synthetic`` preset on CPU in minutes; ``reproduce("l2g",
data_root="VOC2012")`` runs ``<method>_voc`` with the released settings. Stages already finished in the
output folder are reused and interrupted ones resume from their last checkpoint.

Example (CPU, about a minute):
    >>> res = reproduce("baseline", quick=True, out=__import__("tempfile").mkdtemp(),
    ...                 overrides=["runtime.progress=false"], verbose=False)  # doctest: +SKIP
    >>> sorted(res["ours"])  # doctest: +SKIP
    ['cam_miou', 'pseudo_miou', 'val_miou']
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss_blocks.data.io import atomic_write, remove_stale_temporaries
from wsss_blocks.models.weights import check_run_weights

from .cam_stage import prepare_env, stage_dir, train_cam
from .checkpoint import check_output_dir
from .config import packaged_config
from .datasets import check_splits, preflight_data
from .distributed import DistEnv, barrier
from .irn_stage import check_irn_folder, check_irn_weights, irn_dir
from .paths import absolute
from .pseudo_stage import make_pseudo_masks
from .reporting import MetricLogger
from .run_folder import check_run_folder, run_stages
from .schema import RunConfig, dump_run_config, load_run_config
from .seg_stage import eval_seg, seg_round_dir, train_seg

__all__ = ["format_table", "paper_numbers", "preset_name", "reproduce"]


def preset_name(method: str, dataset: str | None) -> str:
    """``<method>_synthetic`` without a dataset, else ``<method>_<dataset>`` (must be packaged)."""
    name = f"{method}_{dataset or 'synthetic'}"
    packaged_config(name)  # FileNotFoundError with the closest packaged name
    return name


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}" if v <= 1.0 else f"{v:.1f}"


def format_table(result: dict[str, Any]) -> str:
    """The final table: our CAM / pseudo-mask / val mIoU next to the paper's (percent)."""
    ours, paper, info = result["ours"], result["paper"], result["info"]
    rows = [
        ("CAM mIoU", f"{info['cam_eval_split']}, bg {info['bg_score']:.2f}", ours["cam_miou"], paper.get("cam_miou")),
        ("pseudo-mask mIoU", info["cam_eval_split"], ours["pseudo_miou"], paper.get("pseudo_miou")),
        ("segmentation mIoU", info["val_split"] + (" +CRF" if info.get("crf") else "")
         + (f" +{info['cyclic_rounds']} cyclic" if info.get("cyclic_rounds") else "")
         + (", best ckpt" if info.get("seg_report") == "best" else ""), ours["val_miou"], paper.get("val_miou")),
    ]
    if info.get("seg_report") == "best" and info.get("val_miou_last") is not None:
        rows.append(("segmentation mIoU", info["val_split"] + ", last ckpt", info["val_miou_last"], None))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{result['method']} — {result['preset']} ({result['device']}, {result['seconds']:.0f} s)",
             f"{'':{w0}}  {'split':{w1}}  {'ours':>6}  {'paper':>6}"]
    for name, split, o, p in rows:
        lines.append(f"{name:{w0}}  {split:{w1}}  {_fmt(o):>6}  {_fmt(p):>6}")
    if info.get("seg_rounds"):
        parts = [f"{'CAM stage' if r['round'] == 'cam' else 'round ' + str(r['round'])}: best {_fmt(r['best_val'])} at "
                 f"step {r['best_step']}, last {_fmt(r['last_val'])}" for r in info["seg_rounds"]]
        lines.append("(val mIoU during training — " + "; ".join(parts) + ")")
    if info.get("seg_report") == "best" and info.get("best_step") is not None:
        lines.append(f"(reported: the checkpoint with the best in-training val mIoU, step {info['best_step']} of "
                     f"{info.get('last_step')}; the last checkpoint is shown below it)")
    if info.get("cam_best_miou") is not None:
        lines.append(f"(CAM sweep best: {_fmt(info['cam_best_miou'])} at bg {info['cam_best_threshold']:.2f})")
    if result.get("paper_source"):
        lines.append(f"paper: {result['paper_source']}")
    if "_synthetic" in result["preset"]:
        lines.append("note: paper numbers are on PASCAL VOC 2012; synthetic-data numbers are not comparable.")
    elif result.get("paper_dataset") == "coco":
        lines.append("note: paper numbers are on MS-COCO 2014.")
    return "\n".join(lines)


def _seg_round_history(cfg: RunConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Per segmentation round, the best and last val mIoU logged by ``seg.eval_every`` (empty without it).

    With ``seg.source: method`` the one "round" is the CAM stage, whose method head was validated.
    """
    if cfg.seg.eval_every is None:
        return []
    out = []
    logs = [stage_dir(out_dir, "cam") / "log.jsonl"] if cfg.seg.source == "method" else [
        seg_round_dir(out_dir, r) / "log.jsonl" for r in range(cfg.seg.cyclic_rounds + 1)]
    for r, log in enumerate(logs):
        recs = [x for x in MetricLogger(log, enabled=False).records()
                if "val_miou" in x and "phase_step" in x]
        if not recs:
            continue
        best = max(recs, key=lambda x: (float(x["val_miou"]), -int(x["phase_step"])))
        out.append({"round": "cam" if cfg.seg.source == "method" else r, "best_val": float(best["val_miou"]),
                    "best_step": int(best["phase_step"]),
                    "last_val": float(recs[-1]["val_miou"]), "last_step": int(recs[-1]["phase_step"])})
    return out


def _paper_dataset(cls: Any, dataset: str) -> str:
    by = getattr(cls, "paper_numbers_by_dataset", None) or {}
    return dataset if dataset in by else "voc"


def paper_numbers(cls: Any, dataset: str) -> dict[str, float | None]:
    """The paper's numbers for ``dataset`` (``paper_numbers_by_dataset``), VOC's for synthetic data.

    A method without numbers for ``dataset`` gets ``None`` entries (never another dataset's numbers), except
    for ``synthetic``, whose runs are shown next to the VOC numbers with a note that they do not compare.

    Examples:
        >>> from wsss_blocks.train.methods import get_method
        >>> paper_numbers(get_method("pmm"), "coco")["val_miou"], paper_numbers(get_method("pmm"), "voc")["val_miou"]
        (40.2, 70.0)
    """
    by = getattr(cls, "paper_numbers_by_dataset", None) or {}
    if dataset in by:
        return dict(by[dataset])
    if dataset in ("voc", "synthetic"):
        return dict(cls.paper_numbers)
    return {"cam_miou": None, "pseudo_miou": None, "val_miou": None}


def reproduce(method: str = "baseline", data_root: str | os.PathLike | None = None, *, dataset: str = "voc",
              sbd_root: str | os.PathLike | None = None, pretrained: str | os.PathLike | None = None,
              seg_pretrained: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              quick: bool = False, config: str | os.PathLike | None = None, overrides: Sequence[str] = (),
              resume: bool = True, restart_from: str | None = None, env: DistEnv | None = None,
              verbose: bool = True) -> dict[str, Any]:
    """All stages of ``method`` and the final table; returns a dict (also written to ``<out>/results.json``).

    Every check runs before the first write, so a refused run leaves ``out`` as it was: the output folder
    is writable, every split exists, every image and mask the run reads decodes and is valid (the pre-flight
    data check, `wsss_blocks.data.check`; ``data.preflight: false`` skips it), and each stage already in
    ``out`` was made with the settings it depends
    on now (its ``fingerprint.json``, see [`wsss_blocks.train.run_folder`][]). A finished stage with unchanged
    settings is reused, an interrupted one resumes; a stage made with other settings stops the run with one
    line naming the changed keys, unless ``restart_from`` redoes it.

    Args:
        method: registered method name (``baseline``, ``l2g``, ``ppl``, ``pmm``, ``smaf``, ``tscd``).
        data_root: VOC2012 (or COCO) root; ``None`` = synthetic data and the ``_synthetic`` preset.
        dataset: ``"voc"`` or ``"coco"`` (with ``data_root``).
        sbd_root: folder of SBD masks (``SegmentationClassAug``) when not under ``data_root``.
        pretrained: CAM-network backbone weights (``cam.pretrained``): a weights-registry name, a file, or
            ``"none"`` (random; real-data presets name their released weights already).
        seg_pretrained: segmentation-network weights (``seg.pretrained``), as ``pretrained``.
        out: run folder (default ``runs/<preset>[_quick]``); relative paths (here and in every path
            argument) are taken from the working directory.
        quick: apply the preset's ``quick_overrides`` (a short sanity run).
        config: a YAML file or packaged name to use instead of the preset.
        overrides: extra ``section.key=value`` overrides (applied last).
        resume: reuse finished stages and continue interrupted ones in ``out``; False refuses a folder
            that holds any stage.
        restart_from: ``"cam"``, ``"pseudo"`` or ``"seg"``: delete that stage and the stages after it in ``out``
            and redo them (the stages before it must match the config).
        env: an initialised `DistEnv` (default: detect torchrun).
        verbose: print the table.

    Returns:
        ``{"method", "preset", "ours": {cam_miou, pseudo_miou, val_miou}, "paper": {...}, "info": {...},
        "stage_seconds": {...}, "seconds", "device", "out"}`` (mIoU as fractions in [0, 1]).
    """
    preset = str(absolute(config)) if config is not None and Path(config).suffix else (
        str(config) if config is not None else preset_name(method, None if data_root is None else dataset))
    ov: list[str] = []
    if data_root is not None:
        ov.append(f"data.root={absolute(data_root)}")
    if sbd_root is not None:
        ov.append(f"data.sbd_root={absolute(sbd_root)}")
    if pretrained is not None:
        ov.append(f"cam.pretrained={os.fspath(pretrained)}")  # names stay names; paths made absolute on load
    if seg_pretrained is not None:
        ov.append(f"seg.pretrained={os.fspath(seg_pretrained)}")
    ov.extend(overrides)
    cfg: RunConfig = load_run_config(preset, ov, quick=quick)
    if cfg.method != method and config is None:
        raise ValueError(f"preset {preset!r} is for method {cfg.method!r}, not {method!r}")
    tag = Path(preset).stem + ("_quick" if quick else "")
    out_dir = absolute(out if out is not None else Path("runs") / tag)
    env = prepare_env(cfg, env)
    # every check that can fail does so before the first write
    stages = run_stages(cfg)
    if restart_from is not None and restart_from not in stages:
        raise ValueError(f"restart_from must be one of {list(stages)} for this config, got {restart_from!r}")
    states = check_run_folder(cfg, out_dir, stages[-1], restart_from=restart_from,
                              fresh=() if resume else stages, hint="reproduce")
    # IRNet (pseudo.refine: irn) lives in <out>/irn with its own record: redone with the CAM stage, or with the
    # pseudo stage when its settings changed; otherwise reused
    redo_irn = restart_from == "cam" or check_irn_folder(cfg, out_dir, redo=restart_from == "pseudo")
    if env.is_main:
        check_output_dir(out_dir, cfg.runtime.min_free_mb, create=False)
    check_splits(cfg, ("cam", "pseudo", "seg"), env)
    if env.is_main:  # every initialisation is fetched and verified before the first write and step
        check_run_weights(cfg, ("cam", "seg"), progress=cfg.runtime.progress)
        check_irn_weights(cfg)
    preflight_data(cfg, stages, env)  # every image and mask of the run decoded once (cached), listed together
    cls = cfg.method_class()
    barrier()
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir, recursive=False)
        for name in ("results.json", "results.txt"):  # rewritten at the end; never left over from another run
            (out_dir / name).unlink(missing_ok=True)
        if restart_from is not None:
            for st in states[stages.index(restart_from):]:
                if st.folder.exists():
                    shutil.rmtree(st.folder)
        if redo_irn and irn_dir(out_dir).exists():
            shutil.rmtree(irn_dir(out_dir))
        dump_run_config(cfg, out_dir / "config.yaml")
    barrier()

    t0 = time.time()
    times: dict[str, float] = {}
    t = time.time()
    train_cam(cfg, out_dir, resume=resume, env=env)
    times["cam"] = time.time() - t
    t = time.time()
    pseudo = make_pseudo_masks(cfg, out_dir, env=env)
    times["pseudo"] = time.time() - t
    t = time.time()
    train_seg(cfg, out_dir, resume=resume, env=env, evaluate=False)
    seg = eval_seg(cfg, out_dir, env=env)
    times["seg"] = time.time() - t
    rounds = _seg_round_history(cfg, out_dir) if env.is_main else []
    result = {
        "method": cfg.method, "preset": tag, "out": str(out_dir), "device": str(env.device),
        "world_size": env.world_size,
        "ours": {"cam_miou": pseudo["cam_miou"], "pseudo_miou": pseudo["pseudo_miou"], "val_miou": seg["miou"]},
        "paper": paper_numbers(cls, cfg.data.dataset), "paper_dataset": _paper_dataset(cls, cfg.data.dataset),
        "paper_source": getattr(cls, "paper_source", ""),
        "info": {"cam_eval_split": cfg.data.cam_eval_split, "bg_score": pseudo["bg_score"],
                 "cam_best_miou": pseudo["cam_best_miou"], "cam_best_threshold": pseudo["cam_best_threshold"],
                 "val_split": cfg.data.val_split, "crf": cfg.seg.crf, "cyclic_rounds": cfg.seg.cyclic_rounds,
                 "cam_eval_images": pseudo["cam_eval_images"],
                 "val_images": seg["num_images"], "seg_rounds": rounds, "seg_report": cfg.seg.report,
                 "seg_model": seg.get("model"), "seg_step": seg.get("step"),
                 "val_miou_last": seg["last"]["miou"] if "last" in seg else None,
                 "val_miou_best": seg["best"]["miou"] if "best" in seg else None,
                 "best_step": seg["best"]["step"] if "best" in seg else None,
                 "last_step": seg["last"]["step"] if "last" in seg else None},
        "stage_seconds": {k: round(v, 1) for k, v in times.items()},
        "seconds": round(time.time() - t0, 1),
    }
    if env.is_main:
        with atomic_write(out_dir / "results.json", "w") as f:
            json.dump(result, f, indent=1)
        table = format_table(result)
        with atomic_write(out_dir / "results.txt", "w") as f:
            f.write(table + "\n")
        if verbose:
            print(table, flush=True)
    barrier()
    return result
