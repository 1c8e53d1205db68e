"""Stage 2: multi-scale + flip CAMs, CAM mIoU sweep, and pseudo masks written atomically and resumably.

1. **CAM evaluation** (``eval_cams``): CAMs of the ``data.cam_eval_split`` images (IRN: VOC *train*, 1,464
   images, against ``SegmentationClass``) with [`wsss_blocks.cam.multiscale_cams`][] (``pseudo.scales``,
   flip, summed), normalised ([`wsss_blocks.cam.normalize_cams`][], the method's mode), absent classes
   zeroed; the constant-background mIoU is accumulated for every ``pseudo.sweep_thresholds`` value in one
   pass ([`wsss_blocks.metrics.BgScoreSweep`][], the streaming form of
   [`wsss_blocks.metrics.sweep_bg_score`][]; counts summed over DDP ranks). Written to
   ``<out>/pseudo/cam_sweep.json``.
2. **Pseudo masks** (``make_pseudo_masks``): the same CAMs for every image of ``pseudo.split`` (default
   ``data.train_split``), turned into masks by the configured chain (`wsss_blocks.train.pipeline`:
   ``pseudo.post`` steps, the ``pseudo.refine`` refiner and the ``pseudo.rule`` rule; the constant background is
   ``pseudo.bg_score``, or the swept best score when it is ``"sweep"``), saved as palette PNGs with
   `wsss_blocks.data.save_label_png` (atomic). Existing PNGs are skipped, so an interrupted run continues where it
   stopped. Pseudo masks of images in the evaluation split are scored against GT. With ``pseudo.refine: irn``
   IRNet is trained first, in ``<out>/irn`` (`wsss_blocks.train.irn_stage`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, cast

import torch

from wsss_blocks.cam import multiscale_cams, normalize_cams
from wsss_blocks.data.io import atomic_write, load_label_png, save_label_png
from wsss_blocks.data.normalization import data_normalization, normalize_images
from wsss_blocks.metrics import BgScoreSweep, SegmentationMetric

from .cam_stage import prepare_env, restore_method, stage_dir
from .checkpoint import check_output_dir
from .datasets import data_root, iter_inference_batches, open_split, preflight_data
from .distributed import DistEnv, all_reduce_sum, barrier, shard_indices
from .methods import CAMMethod
from .paths import absolute, resolve_paths
from .pipeline import PseudoChain
from .reporting import json_float, track
from .run_folder import check_run_folder, fingerprint, prepare_stage_folder, stage_settings
from .schema import RunConfig

__all__ = ["compute_cams", "eval_cams", "make_pseudo_masks", "pseudo_mask_dir"]


def compute_cams(method: CAMMethod, image01: torch.Tensor, labels: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """Fused, normalised CAMs (B×C×H×W in [0, 1], absent classes 0) of a batch of same-sized images."""
    p = cfg.pseudo
    x = normalize_images(image01, data_normalization(cfg.data))
    use_amp = cfg.runtime.amp and image01.device.type == "cuda"
    infer = getattr(method, "infer_cams", None)  # a method's own inference (PMM: multi-crop), already normalised
    with torch.autocast(device_type=image01.device.type, dtype=torch.float16, enabled=use_amp):
        own = infer(x, labels) if infer is not None else None
    if own is not None:
        return own.float() * labels.to(torch.float32)[:, :, None, None]
    with torch.autocast(device_type=image01.device.type, dtype=torch.float16, enabled=use_amp):
        fused = multiscale_cams(method.cam_fn, x, scales=tuple(p.scales), flip=p.flip,
                                out_size=(int(image01.shape[-2]), int(image01.shape[-1])), reduce=p.reduce,
                                flip_reduce=p.flip_reduce, interpolation=p.interpolation)
    cams = normalize_cams(cast(torch.Tensor, fused).float(), mode=method.cam_normalization)  # type: ignore[arg-type]
    return cams * labels.to(cams.dtype)[:, :, None, None]


def _stack(group: list[dict[str, Any]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.stack([s["image"] for s in group]).to(device)
    lab = torch.stack([s["labels"] for s in group]).to(device)
    return img, lab


def _model(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv) -> CAMMethod:
    path = stage_dir(out_dir, "cam") / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no CAM model at {str(path)!r}; run the CAM stage (train-cam) first")
    return restore_method(cfg, path, env)


def _thresholds(cfg: RunConfig) -> list[float]:
    ts = {round(float(t), 6) for t in cfg.pseudo.sweep_thresholds}
    if cfg.pseudo.bg_score != "sweep":
        ts.add(round(float(cfg.pseudo.bg_score), 6))
    return sorted(ts)


def eval_cams(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv | None = None,
              method: CAMMethod | None = None, force: bool = False,
              keep: dict[str, torch.Tensor] | None = None, keep_budget_mb: float = 256.0) -> dict[str, Any]:
    """CAM mIoU on ``data.cam_eval_split`` for every background score; cached in ``cam_sweep.json``.

    With ``keep`` (a dict), the computed CAMs are also stored there by image name (on the CPU, up to
    ``keep_budget_mb``) so that `make_pseudo_masks` does not compute them twice.

    Returns a dict with ``best_threshold``, ``best_miou``, ``miou_at_bg`` (at a numeric ``pseudo.bg_score``),
    ``thresholds``, ``miou`` and ``num_images``.
    """
    cfg = resolve_paths(cfg)
    out_dir = absolute(out_dir)
    env = prepare_env(cfg, env)
    out = stage_dir(out_dir, "pseudo")
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb, create=False)
    check_run_folder(cfg, out_dir, "cam")
    barrier()
    cache = out / "cam_sweep.json"
    model_file = stage_dir(out_dir, "cam") / "model.pt"
    ts = _thresholds(cfg)
    key = {"model_mtime": model_file.stat().st_mtime if model_file.is_file() else None,
           "cam_fingerprint": fingerprint(stage_settings(cfg, "cam")), "thresholds": ts,
           "split": cfg.data.cam_eval_split, "limit": cfg.data.max_eval_images,
           "scales": list(cfg.pseudo.scales), "flip": cfg.pseudo.flip, "reduce": cfg.pseudo.reduce,
           "flip_reduce": cfg.pseudo.flip_reduce, "interpolation": cfg.pseudo.interpolation}
    if cache.is_file() and not force:
        cached: dict[str, Any] = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    method = method if method is not None else _model(cfg, out_dir, env)
    ds = open_split(cfg, cfg.data.cam_eval_split, return_mask=True, limit=cfg.data.max_eval_images,
                    root=data_root(cfg, env))
    sweep = BgScoreSweep(cfg.data.num_classes + 1, ts).to(env.device)
    n = 0
    kept_mb = 0.0
    t0 = time.time()
    with torch.no_grad():
        batches = iter_inference_batches(ds, env, cfg.pseudo.batch_size, num_workers=0)
        share = len(shard_indices(len(ds), env.rank, env.world_size))
        for group in track(batches, share, "eval-cams", env.is_main and cfg.runtime.progress):
            img, lab = _stack(group, env.device)
            cams = compute_cams(method, img, lab, cfg)
            gt = torch.stack([s["mask"] for s in group]).to(env.device)
            sweep.update(cams, lab, gt)
            n += len(group)
            if keep is not None:
                for s, c in zip(group, cams):
                    if kept_mb + c.numel() * 4 / 2**20 <= keep_budget_mb:
                        keep[s["name"]] = c.cpu()
                        kept_mb += c.numel() * 4 / 2**20
    all_reduce_sum(sweep.counts)
    cnt = torch.tensor([n], device=env.device)
    all_reduce_sum(cnt)
    r = sweep.compute()
    res: dict[str, Any] = {"key": key, "best_threshold": r.best_bg_score, "best_miou": r.best_miou,
                           "thresholds": r.bg_scores, "miou": r.miou, "num_images": int(cnt.item()),
                           "split": cfg.data.cam_eval_split, "seconds": round(time.time() - t0, 2)}
    if cfg.pseudo.bg_score != "sweep":
        i = r.bg_scores.index(round(float(cfg.pseudo.bg_score), 6))
        res["miou_at_bg"] = r.miou[i]
        res["bg_score"] = float(cfg.pseudo.bg_score)
    if env.is_main:
        with atomic_write(cache, "w") as f:
            json.dump(res, f, indent=1)
        with atomic_write(out / "cam_sweep.txt", "w") as f:
            f.write(r.table() + "\n")
    barrier()
    return res


def make_pseudo_masks(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv | None = None) -> dict[str, Any]:
    """Run the CAM sweep (if needed) and write ``<out>/pseudo/masks/<name>.png`` for ``pseudo.split``.

    Existing mask files are kept (resumable); delete the folder to regenerate. Returns the summary
    (also written to ``<out>/pseudo/summary.json``): ``cam_miou`` (at the background score in use),
    ``cam_best_miou``/``cam_best_threshold`` (sweep), ``bg_score``, ``pseudo_miou`` (pseudo masks of the
    evaluation-split images against GT; mask pixels equal to 255 count as ``pseudo.pred_ignore`` says),
    ``num_masks``, ``num_written``, ``num_scored``, ``num_eval_written``.

    With ``pseudo.score_eval_split`` the ``data.cam_eval_split`` images that are not in ``pseudo.split`` get
    masks as well (written to ``<out>/pseudo/eval_masks``, not used for training) and are scored, so the
    pseudo-mask mIoU covers the whole evaluation split (PMM reports PPMG on VOC val, outside train_aug).
    """
    cfg = resolve_paths(cfg)
    out_dir = absolute(out_dir)
    env = prepare_env(cfg, env)
    out = stage_dir(out_dir, "pseudo")
    # checks (nothing is written until all of them passed)
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb, create=False)
    root = data_root(cfg, env)
    split = cfg.pseudo.split or cfg.data.train_split
    sal = cfg.data.saliency_dir is not None and "saliency" in PseudoChain(cfg).needs
    ds = open_split(cfg, split, return_mask=False, saliency=sal, limit=cfg.data.max_train_images, root=root)
    ev = open_split(cfg, cfg.data.cam_eval_split, return_mask=True, limit=cfg.data.max_eval_images, root=root)
    check_run_folder(cfg, out_dir, "pseudo")
    from .irn_stage import boundary_fn, check_irn_folder, train_irn, uses_irn

    check_irn_folder(cfg, out_dir)
    preflight_data(cfg, ("pseudo",), env)  # every file the stage reads decoded once (cached), before any write
    method = _model(cfg, out_dir, env)
    if callable(getattr(method, "pseudo_masks", None)):
        raise TypeError(f"method {cfg.method!r} defines pseudo_masks(), which the trainer no longer calls: the "
                        f"pseudo-mask rule is the config's chain (pseudo.post / pseudo.refine / pseudo.rule); "
                        f"register the rule with wsss_blocks.train.pipeline.register_step('rule', name) and set "
                        f"pseudo.rule to it")
    chain = PseudoChain(cfg, method)
    barrier()
    if env.is_main:
        prepare_stage_folder(cfg, out_dir, "pseudo")
    barrier()
    if uses_irn(cfg):
        train_irn(cfg, out_dir, env, lambda img, lab: compute_cams(method, img, lab, cfg), chain)
        chain.context.irn_boundary = boundary_fn(cfg, out_dir, env)
    kept: dict[str, torch.Tensor] = {}
    sweep = eval_cams(cfg, out_dir, env, method=method, keep=kept)
    bg = float(sweep["best_threshold"]) if cfg.pseudo.bg_score == "sweep" else float(cfg.pseudo.bg_score)
    mask_dir = out / "masks"
    metric = SegmentationMetric(cfg.data.num_classes + 1, pred_ignore=cfg.pseudo.pred_ignore).to(env.device)
    t0 = time.time()
    eval_written = 0
    written, scored = _write_and_score(cfg, env, method, chain, bg, ds, ev, mask_dir, kept, metric,
                                       "pseudo-masks")
    if cfg.pseudo.score_eval_split:
        # cam_eval_split images outside pseudo.split get masks too (pseudo/eval_masks), so the pseudo-mask mIoU
        # covers the whole evaluation split (PMM scores its PPMG masks on VOC val)
        train_names = set(ds.names)
        extra = [n for n in ev.names if n not in train_names]
        if extra:
            ev_only = open_split(cfg, cfg.data.cam_eval_split, return_mask=False, saliency=sal,
                                 limit=cfg.data.max_eval_images, root=root)
            ev_only.names = extra
            eval_written, s2 = _write_and_score(cfg, env, method, chain, bg, ev_only, ev, out / "eval_masks", kept,
                                                metric, "eval-masks")
            scored += s2
    all_reduce_sum(metric.confmat)
    counts = torch.tensor([written, scored, eval_written], device=env.device)
    all_reduce_sum(counts)
    pseudo = metric.compute()
    summary = {
        "cam_miou": float(sweep["miou_at_bg"]) if "miou_at_bg" in sweep else float(sweep["best_miou"]),
        "cam_best_miou": float(sweep["best_miou"]), "cam_best_threshold": float(sweep["best_threshold"]),
        "bg_score": bg, "cam_eval_split": cfg.data.cam_eval_split, "cam_eval_images": sweep["num_images"],
        "pseudo_miou": float(pseudo["miou"]) if int(counts[1]) else None,
        "pseudo_per_class_iou": [json_float(v) for v in pseudo["iou"].tolist()] if int(counts[1]) else None,
        "num_masks": len(ds), "num_written": int(counts[0]), "num_scored": int(counts[1]),
        "num_eval_written": int(counts[2]), "pred_ignore": cfg.pseudo.pred_ignore, "chain": chain.spec.describe(),
        "mask_dir": str(mask_dir), "seconds": round(time.time() - t0, 2),
    }
    if env.is_main:
        with atomic_write(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
    barrier()
    return summary


def _write_and_score(cfg: RunConfig, env: DistEnv, method: CAMMethod, chain: PseudoChain, bg: float, ds: Any, ev: Any,
                     mask_dir: Path, kept: dict[str, torch.Tensor], metric: SegmentationMetric, desc: str
                     ) -> tuple[int, int]:
    """Write the missing masks of ``ds`` to ``mask_dir`` (resumable) and score those of ``ev``'s images."""
    eval_index = {n: i for i, n in enumerate(ev.names)}
    norm = data_normalization(cfg.data)
    written = scored = 0
    with torch.no_grad():
        todo: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal written
            if not todo:
                return
            img, lab = _stack(todo, env.device)
            if all(s["name"] in kept for s in todo):
                cams = torch.stack([kept.pop(s["name"]) for s in todo]).to(env.device)
            else:
                cams = compute_cams(method, img, lab, cfg)
            sal = torch.stack([s["saliency"] for s in todo]).to(env.device) if "saliency" in todo[0] else None
            masks = chain.masks(cams, lab, img, bg, images=normalize_images(img, norm), saliency=sal)
            for k, (s, m) in enumerate(zip(todo, masks.cpu())):
                save_label_png(mask_dir / f"{s['name']}.png", m.to(torch.uint8).numpy(), palette=True)
                if cfg.pseudo.save_cams:
                    import numpy as np

                    with atomic_write(mask_dir.parent / "cams" / f"{s['name']}.npy", "wb") as f:
                        np.save(f, cams[k].half().cpu().numpy())
                written += 1
            todo.clear()

        batches = iter_inference_batches(ds, env, cfg.pseudo.batch_size)
        share = len(shard_indices(len(ds), env.rank, env.world_size))
        for group in track(batches, share, desc, env.is_main and cfg.runtime.progress):
            for s in group:
                if not (mask_dir / f"{s['name']}.png").is_file():
                    todo.append(s)
            flush()
            for s in group:
                i = eval_index.get(s["name"])
                if i is not None:
                    pred = torch.from_numpy(load_label_png(mask_dir / f"{s['name']}.png")).to(env.device)
                    gt = ev.load_mask(i)
                    metric.update(pred.long(), torch.from_numpy(gt).to(env.device))
                    scored += 1
    return written, scored


def pseudo_mask_dir(out_dir: str | os.PathLike) -> Path:
    """Where `make_pseudo_masks` writes the masks."""
    return stage_dir(out_dir, "pseudo") / "masks"
