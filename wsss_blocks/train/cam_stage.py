"""Stage 1: train the method's classification network (all of its phases) and write ``<out>/cam/model.pt``.

Layout of ``<out>/cam``: ``checkpoints/step_*.pt`` (atomic, every ``runtime.checkpoint_every`` steps),
``log.jsonl`` (metrics), ``curves.png`` (loss plot), ``overlays/<phase>_epoch_*.png`` (CAMs of a few
fixed training images per epoch) and ``model.pt`` (final weights, method and class count recorded).

Example (CPU, a few seconds):
    >>> import tempfile
    >>> from wsss_blocks.train.schema import load_run_config
    >>> cfg = load_run_config("baseline_synthetic", ["cam.steps=2", "runtime.progress=false",
    ...                       "data.synthetic.num_train=8", "data.synthetic.num_val=2", "cam.batch_size=4"])
    >>> path = train_cam(cfg, tempfile.mkdtemp())
    >>> path.name
    'model.pt'
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsss_blocks.cam import normalize_cams
from wsss_blocks.data.io import atomic_write
from wsss_blocks.data.normalization import data_normalization, normalize_images
from wsss_blocks.models.weights import check_run_weights

from .checkpoint import check_output_dir, load_checkpoint, load_model_state, resolve_resume, save_model_file, set_aside
from .config import to_dict
from .datasets import AugmentedDataset, cam_train_transform, check_splits, data_root, open_split, preflight_data
from .distributed import DistEnv, barrier, init_distributed
from .evaluation import best_val_hook
from .loop import Hook, PhaseSpec, configure_determinism, run_phase, set_seed
from .methods import CAMMethod, PhaseContext
from .optim import total_steps_for
from .paths import absolute, resolve_paths
from .reporting import MetricLogger
from .run_folder import check_run_folder, prepare_stage_folder
from .schema import SYNTHETIC_PRETRAINED, RunConfig, dump_run_config
from .synthetic_pretrain import resolve_synthetic_pretrained

__all__ = ["build_method", "prepare_env", "restore_method", "stage_dir", "train_cam"]


def stage_dir(out_dir: str | os.PathLike, stage: str) -> Path:
    """The folder of ``stage`` (``cam``, ``pseudo``, ``seg``) in run folder ``out_dir``."""
    return Path(out_dir) / stage


def prepare_env(cfg: RunConfig, env: DistEnv | None = None) -> DistEnv:
    """Initialise (or reuse) the process group, determinism flags and CPU thread count."""
    env = env if env is not None else init_distributed(cfg.runtime.device)
    configure_determinism(cfg.runtime.deterministic)
    if cfg.runtime.threads:
        torch.set_num_threads(int(cfg.runtime.threads))
    return env


def build_method(cfg: RunConfig, env: DistEnv) -> CAMMethod:
    """Seed with ``runtime.seed`` and construct the configured method on the run's device.

    ``cam.pretrained: synthetic`` is replaced by the backbone pretrained on synthetic data (pretrained and cached
    first if needed, `wsss_blocks.train.synthetic_pretrain`).
    """
    cfg = resolve_synthetic_pretrained(cfg, sections=("cam",))
    set_seed(cfg.runtime.seed)
    cls = cfg.method_class()
    method = cls(cfg, cfg.method_config(), cfg.data.num_classes)
    return method.to(env.device)


def _phase_ctx(method: CAMMethod, i: int, steps: int, out: Path, env: DistEnv, resuming: bool,
               dataset: Any) -> PhaseContext:
    return PhaseContext(phase=method.phases[i], index=i, total_steps=steps, out_dir=out, device=env.device,
                        resuming=resuming, dataset=dataset)


def restore_method(cfg: RunConfig, model_path: str | os.PathLike, env: DistEnv) -> CAMMethod:
    """Rebuild the method (all phases' structure) and load the CAM stage's final weights; eval mode.

    Raises ``CheckpointError`` if the file belongs to another method or class count.
    """
    ck = load_checkpoint(model_path, method=cfg.method, num_classes=cfg.data.num_classes, map_location="cpu")
    if cfg.cam.pretrained == SYNTHETIC_PRETRAINED:  # every weight comes from the checkpoint: nothing to pretrain
        cfg = dataclasses.replace(cfg, cam=dataclasses.replace(cfg.cam, pretrained=None))
    method = build_method(cfg, env)
    steps = ck.get("phase_steps") or [0] * len(method.phases)
    for i in range(len(method.phases)):
        method.on_phase_start(_phase_ctx(method, i, int(steps[i]) if i < len(steps) else 0,
                                         Path(model_path).parent, env, True, None))
    method.to(env.device)
    load_model_state(method, ck["model"], model_path)
    if ck.get("extra") is not None:
        method.load_extra_state(ck["extra"])
    return method.eval()


def _overlay_callback(method: CAMMethod, cfg: RunConfig, out: Path, phase: str, env: DistEnv) -> Any:
    if not cfg.runtime.plots or cfg.cam.overlay_samples <= 0:
        return None
    samples: list[dict[str, Any]] = []
    last_plot = [time.time()]

    def draw(epoch: int, gstep: int) -> None:
        from wsss_blocks.viz import plot_curves, save_cam_overlays

        if not samples:
            ds = open_split(cfg, cfg.data.train_split, return_mask=False, limit=cfg.cam.overlay_samples)
            samples.extend(ds[i] for i in range(min(len(ds), cfg.cam.overlay_samples)))
        method.eval()
        imgs, cams, labels = [], [], []
        with torch.no_grad():
            for s in samples:
                img = s["image"]
                h, w = img.shape[-2:]
                if max(h, w) > 320:
                    sc = 320 / max(h, w)
                    img = F.interpolate(img[None], size=(round(h * sc), round(w * sc)), mode="bilinear",
                                        align_corners=False)[0]
                x = normalize_images(img[None].to(env.device), data_normalization(cfg.data))
                cam = method.cam_fn(x).float()
                cam = F.interpolate(cam, size=img.shape[-2:], mode="bilinear", align_corners=False)
                imgs.append(img)
                cams.append(normalize_cams(cam)[0].cpu())
                labels.append(s["labels"])
        path = out / "overlays" / f"{phase}_epoch_{epoch + 1:03d}.png"
        _save_rows(path, imgs, cams, labels, save_cam_overlays)
        if time.time() - last_plot[0] > 60.0:  # matplotlib is slow: redraw the curves at most once a minute
            plot_curves(out / "log.jsonl", out / "curves.png", title=f"{cfg.method}: CAM stage")
            last_plot[0] = time.time()

    return draw


def _method_val_hook(cfg: RunConfig, method: CAMMethod, out: Path, env: DistEnv, logger: MetricLogger,
                     phase_steps: list[int], every: int) -> Hook:
    """``seg.eval_every`` with ``seg.source: method``: validate the method's own segmentation head during training.

    As the AFA/TSCD releases do (``validate`` in ``scripts/dist_train_voc.py``, every 2,000 iterations): the
    single-scale val mIoU of `CAMMethod.seg_fn` without flip or CRF, logged as ``val_miou``; the best model ever
    evaluated in this folder (ties keep the earlier one) is kept in ``<cam>/best.pt`` for ``seg.report: best``.
    """
    return best_val_hook(
        cfg, method, method.seg_fn, data_normalization(cfg.data), env, logger, stage="cam", every=every,
        best_path=out / "best.pt", tag=cfg.method, num_classes=cfg.data.num_classes,
        is_final=lambda info: len(phase_steps) == len(method.phases) and info["phase_step"] == info["total"],
        step_of=lambda info: int(info["step"]),
        checkpoint_meta=lambda: {"phase_steps": list(phase_steps), "extra": method.extra_state_for_checkpoint()},
        single_scale=True)


def _save_rows(path: Path, imgs: list[torch.Tensor], cams: list[torch.Tensor], labels: list[torch.Tensor],
               save: Any) -> None:
    # images may differ in size: write one grid row per sample via save_cam_overlays' tiling
    from wsss_blocks.data.io import save_image
    from wsss_blocks.viz import cam_overlay, image_grid, to_uint8_image

    if len({tuple(i.shape) for i in imgs}) == 1:
        save(path, torch.stack(imgs), torch.stack(cams), torch.stack(labels))
        return
    rows = []
    for im, cm, lb in zip(imgs, cams, labels):
        row = [to_uint8_image(im)]
        for c in torch.nonzero(lb > 0).flatten().tolist()[:3]:
            row.append(cam_overlay(im, cm[c]))
        rows.append(row)
    save_image(path, image_grid(rows), fsync=False)


def train_cam(cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False, hooks: Sequence[Hook] = (),
              env: DistEnv | None = None) -> Path:
    """Train the CAM stage of ``cfg.method``; return the path of ``<out_dir>/cam/model.pt``.

    Everything that can be checked is checked before the first step: the output folder is writable and
    has free space, every split exists, ``method_args`` fit the method, and with ``resume=True`` the latest
    checkpoint belongs to this method and class count. Without ``resume``, an output folder that already
    holds checkpoints is refused (pass ``resume=True`` or another folder).

    Args:
        cfg: the run config.
        out_dir: run folder (the stage writes into ``out_dir/cam``).
        resume: continue from the newest checkpoint (a finished stage is skipped).
        hooks: called after every optimizer step (see [`wsss_blocks.train.loop.run_phase`][]).
        env: an already initialised `DistEnv` (default: detect torchrun).
    """
    cfg = resolve_paths(cfg)
    out_dir = absolute(out_dir)
    env = prepare_env(cfg, env)
    out = stage_dir(out_dir, "cam")
    # checks (nothing is written until all of them passed)
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb, create=False)
    cfg.method_config()
    root = data_root(cfg, env)
    check_splits(cfg, ("cam",), env)
    final = out / "model.pt"
    start = resolve_resume(out, cfg.method, cfg.data.num_classes, resume, "cam")
    if env.is_main and not start.finished:  # every initialisation fetched and verified before the first step
        check_run_weights(cfg, ("cam",), progress=cfg.runtime.progress)
    if not start.finished:  # every file the stage reads decoded once (cached) before the first write
        preflight_data(cfg, ("cam",), env)
    check_run_folder(cfg, out_dir, "cam")
    barrier()
    if env.is_main:
        prepare_stage_folder(cfg, out_dir, "cam")
        set_aside(start.unreadable)
    barrier()
    if start.finished:
        return final
    resume_ck = start.checkpoint
    if env.is_main:
        dump_run_config(cfg, out / "config.yaml")

    base = open_split(cfg, cfg.data.train_split, return_mask=False, saliency=cfg.data.saliency_dir is not None,
                      limit=cfg.data.max_train_images, root=root)
    dataset = AugmentedDataset(base, cam_train_transform(cfg), cfg.runtime.seed)
    resolve_synthetic_pretrained(cfg, env, ("cam",))  # pretrains once (main rank) when the cache lacks the weights
    method = build_method(cfg, env)
    logger = MetricLogger(out / "log.jsonl", enabled=env.is_main)
    rp = int(resume_ck["phase_index"]) if resume_ck is not None else -1
    offset = 0
    phase_steps: list[int] = []
    t0 = time.time()
    for i, phase in enumerate(method.phases):
        optim = method.phase_optim(phase, cfg.cam)
        steps = int(method.phase_steps(phase, total_steps_for(optim, len(dataset))))
        phase_steps.append(steps)
        resuming = i <= rp
        method.on_phase_start(_phase_ctx(method, i, steps, out, env, resuming, base))
        method.to(env.device)
        if i < rp:
            offset += steps
            continue
        phase_data = method.phase_dataset(phase, base, dataset)
        if not resuming:
            set_seed(cfg.runtime.seed + 1 + i + 1000 * env.rank)
        phase_hooks = list(hooks)
        if cfg.seg.source == "method" and cfg.seg.eval_every is not None:
            phase_hooks.insert(0, _method_val_hook(cfg, method, out, env, logger, phase_steps,
                                                   int(cfg.seg.eval_every)))
        spec = PhaseSpec(
            stage="cam", phase=phase, module=method, step_fn=method.training_step,
            param_groups=method.param_groups(optim.lr, optim.weight_decay), dataset=phase_data, optim=optim,
            total_steps=steps, ckpt_method=cfg.method, num_classes=cfg.data.num_classes,
            normalize=data_normalization(cfg.data), phase_index=i, step_offset=offset,
            extra_state=method.extra_state_for_checkpoint, load_extra_state=method.load_extra_state,
            on_epoch_end=_overlay_callback(method, cfg, out, phase, env), config=to_dict(cfg))
        run_phase(spec, cfg.runtime, env, out, logger, resume=resume_ck if i == rp else None, hooks=phase_hooks)
        offset += steps
    if env.is_main:
        save_model_file(final, method.state_dict(), method=cfg.method, num_classes=cfg.data.num_classes,
                        step=offset, phase_steps=phase_steps, extra=method.extra_state_for_checkpoint(),
                        config=to_dict(cfg))
        if cfg.runtime.plots:
            from wsss_blocks.viz import plot_curves

            plot_curves(out / "log.jsonl", out / "curves.png", title=f"{cfg.method}: CAM stage")
        summary = {"steps": offset, "phase_steps": phase_steps, "seconds": round(time.time() - t0, 2),
                   "world_size": env.world_size, "device": str(env.device)}
        with atomic_write(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=1)
    barrier()
    return final
