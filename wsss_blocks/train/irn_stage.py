"""IRN inside the pseudo-mask stage: IR labels from the CAMs, IRNet training, boundary maps for the random walk.

With ``pseudo.refine: irn`` the pseudo stage runs IRN's released semantic pipeline (Ahn et al., CVPR 2019;
jiwoon-ahn/irn) between the CAMs and the mask rule, in its own resumable folder ``<out>/irn``:

1. **IR labels** (``step/cam_to_ir_label.py``): for every image of ``data.train_split`` the CAM stage's fused
   CAMs (after the chain's post steps) go through `wsss_blocks.irn.confident_seed_mask` (confident foreground
   above 0.30, confident background below 0.05, both cuts refined by IRN's label CRF, ignore in between) and are
   written as PNGs to ``<out>/irn/ir_labels`` (atomic; existing files are kept, so an interrupted run resumes).
2. **IRNet** (``step/train_irn.py``): `wsss_blocks.models.irnet.IRNet` (frozen ResNet-50, ImageNet init) trains
   its class-boundary branch with `wsss_blocks.irn.boundary_affinity_loss` on random rescales 0.5-1.5 (image
   bicubic, label nearest), flips and 512 crops, labels downsampled ×0.25 with `wsss_blocks.irn.downsample_mask`,
   pairs within radius 10; SGD lr 0.1 (poly 0.9), weight decay 1e-4, batch 32, 3 epochs. Checkpoints, log and
   the final ``model.pt`` go to ``<out>/irn`` through the trainer's loop (bit-exact resumption).
3. **Boundary maps** (``make_sem_seg_labels.py``): `IRNet.boundary_map` (image and flip, logits averaged) feeds
   the chain's ``irn`` refiner, which walks the CAMs (`wsss_blocks.irn.random_walk`).

``<out>/irn/fingerprint.json`` records the settings IRNet depends on (the CAM stage's, the CAM inference and
post steps of the pseudo stage, and the ``pseudo.args.irn`` training values; the walk's values do not count,
so changing ``beta`` keeps the trained IRNet). A folder made with other settings is refused before anything is
written, unless the run restarts the pseudo stage (``--restart-from pseudo``), which then redoes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wsss_blocks.data.io import atomic_write, remove_stale_temporaries, save_label_png
from wsss_blocks.data.normalization import data_normalization, normalize_images

from .checkpoint import load_checkpoint, resolve_resume, save_model_file, set_aside
from .config import to_dict
from .datasets import _PAD, AugmentedDataset, data_root, iter_inference_batches, open_split
from .distributed import DistEnv, barrier, shard_indices
from .loop import PhaseSpec, run_phase, set_seed
from .optim import total_steps_for
from .paths import absolute
from .pipeline import IRN_WALK_ARGS, IRNArgs, PseudoChain, chain_spec
from .reporting import MetricLogger, track
from .run_folder import _FORMAT, RECORD_NAME, StaleRunError, changed_keys, fingerprint, read_record, stage_settings
from .schema import OptimConfig, RunConfig

__all__ = ["IRN_DIR", "IRN_TAG", "CamsFn", "irn_dir", "irn_settings", "uses_irn", "check_irn_folder",
           "check_irn_weights", "make_ir_labels", "train_irn", "build_irnet", "boundary_fn"]

IRN_DIR = "irn"
"""Sub-folder of the run folder."""
IRN_TAG = "irn/irnet"
"""The ``method`` recorded in IRNet checkpoints."""
_INFERENCE_KEYS = ("scales", "flip", "reduce", "flip_reduce", "interpolation")


def irn_dir(out_dir: str | os.PathLike) -> Path:
    """``<out>/irn``."""
    return Path(out_dir) / IRN_DIR


def uses_irn(cfg: RunConfig) -> bool:
    """True when the config's pseudo-mask chain refines with IRN's random walk."""
    return chain_spec(cfg).refine == "irn"


def _irn_args(cfg: RunConfig) -> IRNArgs:
    args = chain_spec(cfg).args.get("irn")
    if not isinstance(args, IRNArgs):
        raise ValueError("the config's pseudo-mask chain does not refine with 'irn' (pseudo.refine)")
    return args


def irn_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings IRNet's files depend on (dotted key -> value)."""
    spec = chain_spec(cfg)
    out = stage_settings(cfg, "cam")
    for k in _INFERENCE_KEYS:
        v = getattr(cfg.pseudo, k)
        out[f"pseudo.{k}"] = list(v) if isinstance(v, tuple) else v
    out["pseudo.post"] = list(spec.post)
    for name in spec.post:
        a = spec.args.get(name)
        if a is not None:
            for k, v in to_dict(a).items():
                out[f"pseudo.args.{name}.{k}"] = v
    for k, v in to_dict(_irn_args(cfg)).items():
        if k not in IRN_WALK_ARGS:
            out[f"pseudo.args.irn.{k}"] = v
    return out


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "model.pt").is_file() or any((folder / "checkpoints").glob("step_*.pt"))
                                or any((folder / "ir_labels").glob("*.png")))


def check_irn_folder(cfg: RunConfig, out_dir: str | os.PathLike, *, redo: bool = False) -> bool:
    """Check ``<out>/irn`` against ``cfg`` before anything is written; True when it must be redone.

    A folder with files and a record of other settings (or no record) raises `StaleRunError`, unless ``redo``
    (the run restarts the pseudo stage), in which case True is returned and the caller deletes it.
    """
    if not uses_irn(cfg):
        return False
    folder = irn_dir(absolute(out_dir))
    if not _has_files(folder):
        return False
    rec = read_record(folder)
    changed = ["(no record)"] if rec is None else changed_keys(dict(rec.get("settings") or {}), irn_settings(cfg))
    if not changed:
        return False
    if redo:
        return True
    shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
    raise StaleRunError(f"run folder {str(absolute(out_dir))!r}: IRNet in {str(folder)!r} was made with other settings "
                        f"({shown}); rerun with --restart-from pseudo to redo it, delete that folder, or choose a new "
                        f"--out")


def check_irn_weights(cfg: RunConfig, download: bool = True) -> Path | None:
    """Resolve (fetch and verify) IRNet's backbone weights before the run's first write; None without IRN."""
    if not uses_irn(cfg):
        return None
    from wsss_blocks.models.state_dict import is_random_init
    from wsss_blocks.models.weights import resolve_weights

    pre = _irn_args(cfg).pretrained
    if is_random_init(pre):
        return None
    return resolve_weights(str(pre), download=download, progress=cfg.runtime.progress,
                           field_name="pseudo.args.irn.pretrained")


def _write_record(cfg: RunConfig, folder: Path) -> None:
    settings = irn_settings(cfg)
    rec = {"format": _FORMAT, "stage": IRN_DIR, "fingerprint": fingerprint(settings), "upstream": {
        "stage": "cam", "fingerprint": fingerprint(stage_settings(cfg, "cam"))}, "settings": settings}
    with atomic_write(folder / RECORD_NAME, "w") as f:
        json.dump(rec, f, indent=1, default=str)


def _prepare_folder(cfg: RunConfig, out_dir: Path, env: DistEnv) -> Path:
    folder = irn_dir(out_dir)
    if env.is_main:
        if check_irn_folder(cfg, out_dir, redo=True):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        rec = read_record(folder)
        if rec is None or changed_keys(dict(rec.get("settings") or {}), irn_settings(cfg)):
            _write_record(cfg, folder)
    barrier()
    return folder


CamsFn = Callable[[Tensor, Tensor], Tensor]
"""``cams_fn(image01, labels) -> B×C×H×W`` fused, normalised CAMs (the pseudo stage's ``compute_cams``)."""


def make_ir_labels(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv, cams_fn: CamsFn,
                   chain: PseudoChain) -> int:
    """Write the IR label of every ``data.train_split`` image to ``<out>/irn/ir_labels`` (resumable).

    Returns the number of labels this rank wrote.
    """
    from wsss_blocks.irn import confident_seed_mask

    args = _irn_args(cfg)
    folder = irn_dir(out_dir) / "ir_labels"
    sal = "saliency" in chain.needs
    ds = open_split(cfg, cfg.data.train_split, return_mask=False, saliency=sal, limit=cfg.data.max_train_images,
                    root=data_root(cfg, env))
    norm = data_normalization(cfg.data)
    written = 0
    todo_idx = [i for i, n in enumerate(ds.names) if not (folder / f"{n}.png").is_file()]
    share = len(shard_indices(len(todo_idx), env.rank, env.world_size))
    with torch.no_grad():
        batches = iter_inference_batches(ds, env, cfg.pseudo.batch_size, indices=todo_idx)
        for group in track(batches, share, "irn-labels", env.is_main and cfg.runtime.progress):
            img = torch.stack([s["image"] for s in group]).to(env.device)
            lab = torch.stack([s["labels"] for s in group]).to(env.device)
            s_map = torch.stack([s["saliency"] for s in group]).to(env.device) if sal else None
            cams = cams_fn(img, lab)
            cams = chain.post_cams(cams, lab, img, images=normalize_images(img, norm), saliency=s_map)
            seeds = confident_seed_mask(cams, lab, img, high_threshold=args.high_threshold,
                                        low_threshold=args.low_threshold, crf=dict(args.crf_params))
            for s, m in zip(group, seeds.cpu()):
                save_label_png(folder / f"{s['name']}.png", m.to(torch.uint8).numpy(), palette=True)
                written += 1
    barrier()
    return written


def build_irnet(cfg: RunConfig, *, load_weights: bool = True) -> Any:
    """IRNet with ``pseudo.args.irn``'s layout; ``load_weights`` fills the backbone from ``pretrained``."""
    from wsss_blocks.models.irnet import IRNet
    from wsss_blocks.models.state_dict import is_random_init

    args = _irn_args(cfg)
    pre: Any = None
    if load_weights and not is_random_init(args.pretrained):
        from wsss_blocks.models.weights import resolve_weights

        pre = resolve_weights(str(args.pretrained), progress=cfg.runtime.progress,
                              field_name="pseudo.args.irn.pretrained")
    return IRNet(pre, layers=tuple(args.layers), width_per_group=int(args.width_per_group))


def _optim(args: IRNArgs) -> OptimConfig:
    return OptimConfig(optimizer="sgd", lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                       poly_power=args.poly_power, batch_size=args.batch_size, epochs=args.epochs, steps=args.steps)


def train_irn(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv, cams_fn: CamsFn, chain: PseudoChain,
              resume: bool = True) -> Path:
    """IR labels, then IRNet training in ``<out>/irn``; returns ``<out>/irn/model.pt`` (reused when finished)."""
    from wsss_blocks.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomRescale
    from wsss_blocks.irn import boundary_affinity_loss, downsample_mask

    args = _irn_args(cfg)
    out_dir = absolute(out_dir)
    folder = _prepare_folder(cfg, out_dir, env)
    final = folder / "model.pt"
    start = resolve_resume(folder, IRN_TAG, 1, resume, "irn")
    barrier()
    if env.is_main:
        set_aside(start.unreadable)
    barrier()
    if start.finished:
        return final
    t0 = time.time()
    make_ir_labels(cfg, out_dir, env, cams_fn, chain)
    base = open_split(cfg, cfg.data.train_split, return_mask=True, mask_dir=folder / "ir_labels",
                      limit=cfg.data.max_train_images, root=data_root(cfg, env))
    lo, hi = (float(v) for v in args.scale_range)
    # IRN imutils.pil_rescale: PIL bicubic (antialiased when shrinking) for the image, nearest for the label
    ts: list[Any] = [RandomRescale((lo, hi), interpolation="bicubic", antialias=True)]
    if args.hflip:
        ts.append(RandomHorizontalFlip())
    ts.append(RandomCrop(int(args.crop_size), pad_image_value=_PAD, pad_mask_value=255))
    dataset = AugmentedDataset(base, Compose(ts), cfg.runtime.seed + 29)
    set_seed(cfg.runtime.seed + 29)
    net = build_irnet(cfg).to(env.device)
    optim = _optim(args)
    steps = total_steps_for(optim, len(dataset))
    groups = [{"params": net.trainable_parameters(), "lr": args.lr, "weight_decay": args.weight_decay,
               "lr_mult": 1.0}]
    radius = int(args.train_radius)

    def step_fn(batch: dict[str, Any], step: int, total: int) -> dict[str, Tensor]:
        logits = net(batch["image"])
        target = downsample_mask(batch["mask"].long(), 0.25)
        target = target[:, :logits.shape[-2], :logits.shape[-1]]
        loss = boundary_affinity_loss(logits.float(), target, radius)
        return {"loss": loss}

    logger = MetricLogger(folder / "log.jsonl", enabled=env.is_main)
    spec = PhaseSpec(stage="irn", phase="irn", module=net, step_fn=step_fn, param_groups=groups, dataset=dataset,
                     optim=optim, total_steps=steps, ckpt_method=IRN_TAG, num_classes=1, normalize="imagenet",
                     config=to_dict(cfg), train_mode=lambda m: m.train())
    run_phase(spec, cfg.runtime, env, folder, logger, resume=start.checkpoint)
    if env.is_main:
        save_model_file(final, net.state_dict(), method=IRN_TAG, num_classes=1, step=steps, config=to_dict(cfg),
                        seconds=round(time.time() - t0, 2))
    barrier()
    return final


def boundary_fn(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv) -> Callable[[Tensor], Tensor]:
    """``image01 -> B×1×h×w`` boundary probabilities of the trained IRNet in ``<out>/irn`` (eval mode)."""
    from wsss_blocks.train.checkpoint import load_model_state

    args = _irn_args(cfg)
    path = irn_dir(absolute(out_dir)) / "model.pt"
    ck = load_checkpoint(path, method=IRN_TAG, num_classes=1, map_location="cpu")
    net = build_irnet(cfg, load_weights=False)
    load_model_state(net, ck["model"], path)
    net = net.to(env.device).eval()

    def fn(image01: Tensor) -> Tensor:
        x = normalize_images(image01.to(env.device).float(), "imagenet")  # IRN TorchvisionNormalize
        return net.boundary_map(x, flip=True, pad_to=args.pad_to)

    return fn
