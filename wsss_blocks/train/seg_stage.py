"""Stage 3: train a segmentation network on the pseudo masks and evaluate it on the validation split.

Training (``train_seg``) follows deeplab-pytorch ``configs/voc12.yaml`` by default (protocol §5): DeepLab-v2
(ResNet-101 + ASPP 6/12/18/24) on ``data.train_split`` with the pseudo masks of stage 2, random scale
(0.5 … 1.5) + crop 321 + flip, MSC inputs (×1, ×0.5, ×0.75 and their max, the loss summed over all four),
cross-entropy with ignore 255 — or PMM's pretended under-fitting loss (``seg.loss: puf``,
:class:`wsss_blocks.losses.PretendedUnderFittingLoss`) — SGD lr 2.5e-4 (ASPP ×10/×20), momentum 0.9,
weight decay 5e-4, poly 0.9, 20k iterations of batch 5 × 2 accumulated.

Evaluation (``eval_seg``): logits at ``seg.eval_scales`` (optionally + flip) resized to the image, fused
(max over scales, as deeplab-pytorch's MSC), softmax, optional dense CRF (:class:`wsss_blocks.crf.DenseCRF`
with ``seg.crf_params``), argmax, mIoU over ``data.val_split``. With ``seg.source: method`` (TSCD) the
method's own segmentation head (:meth:`CAMMethod.seg_fn`) is evaluated and nothing is trained here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cam import multiscale_cams
from ..data.io import atomic_write
from ..metrics import SegmentationMetric
from .cam_stage import prepare_env, restore_method, stage_dir
from .checkpoint import check_output_dir, load_checkpoint, save_model_file
from .config import to_dict
from .datasets import data_root, iter_inference_batches, open_split, seg_train_transform
from .distributed import DistEnv, all_reduce_sum, barrier
from .loop import (
    AugmentedDataset,
    Hook,
    MetricLogger,
    PhaseSpec,
    normalize_images,
    resolve_resume,
    run_phase,
    set_seed,
    total_steps_for,
)
from .pseudo_stage import _progress, pseudo_mask_dir
from .schema import RunConfig


def _num(v: float) -> float | None:
    """JSON-safe float: NaN (class absent from GT and prediction) -> None."""
    return None if v != v else float(v)


__all__ = ["build_seg_model", "seg_logits", "train_seg", "eval_seg"]

_LIBRARY_BACKBONES = ("tiny", "resnet38d", "resnet38", "resnet38d_tiny", "wide_resnet38")


def build_seg_model(cfg: RunConfig) -> nn.Module:
    """The segmentation network of ``cfg.seg`` with C + 1 outputs (channel 0 = background)."""
    from ..models import DeepLabV2, DeepLabV3Plus, SegFormer, build_backbone

    s = cfg.seg
    k = cfg.data.num_classes + 1
    kw = dict(s.model_kwargs)
    if s.model == "deeplabv2":
        if s.backbone in _LIBRARY_BACKBONES or s.backbone.startswith(("timm:", "mit_")):
            bb = build_backbone(s.backbone, s.pretrained, **dict(s.backbone_kwargs))
            return DeepLabV2(k, backbone=bb, **kw)
        return DeepLabV2(k, backbone=s.backbone, pretrained=s.pretrained, style=s.style,
                         backbone_kwargs=dict(s.backbone_kwargs), **kw)
    if s.model == "deeplabv3plus":
        return DeepLabV3Plus(k, backbone=s.backbone, pretrained=s.pretrained, backbone_kwargs=dict(s.backbone_kwargs),
                             **kw)
    if s.model == "segformer":
        kw.setdefault("cam_classes", None)
        return SegFormer(k, encoder=s.backbone, pretrained=s.pretrained, **kw)
    raise ValueError(f"seg.model must be deeplabv2, deeplabv3plus or segformer, got {s.model!r}")


def seg_logits(model: nn.Module, images: Tensor) -> Tensor:
    """B×K×h×w logits of any of the segmentation networks (SegFormer returns a dict)."""
    out = model(images)
    return out["seg"] if isinstance(out, dict) else out


def _resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _make_criterion(cfg: RunConfig) -> Callable[[Tensor, Tensor], Tensor]:
    if cfg.seg.loss == "puf":
        from ..losses import PretendedUnderFittingLoss

        return PretendedUnderFittingLoss(**dict(cfg.seg.loss_args))
    if cfg.seg.loss_args:
        raise ValueError(f"seg.loss_args apply to seg.loss 'puf' only, got {sorted(cfg.seg.loss_args)} with 'ce'")
    return lambda logits, target: F.cross_entropy(logits, target, ignore_index=255)


def _seg_step_fn(cfg: RunConfig, model: nn.Module) -> Callable[[dict[str, Any], int, int], dict[str, Tensor]]:
    crit = _make_criterion(cfg)
    msc = tuple(cfg.seg.msc_train)

    at_logits = cfg.seg.loss_at == "logits"

    def loss_of(logits: Tensor, y: Tensor) -> Tensor:
        logits = logits.float()
        if at_logits:
            return crit(logits, _resize_labels(y, logits.shape[-2:]))
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return crit(logits, y)

    def step(batch: dict[str, Any], step: int, total: int) -> dict[str, Tensor]:
        x, y = batch["image"], batch["mask"].long()
        if cfg.seg.model == "deeplabv2" and msc:
            from ..models import msc_forward

            outs = msc_forward(model, x, msc)
            losses = [loss_of(o, y) for o in outs]
            return {"loss": torch.stack(losses).sum(), "loss_1x": losses[0].detach()}
        return {"loss": loss_of(seg_logits(model, x), y)}

    return step


def train_seg(cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False, hooks: Sequence[Hook] = (),
              env: DistEnv | None = None, evaluate: bool = True) -> Path:
    """Train the segmentation network on ``<out_dir>/pseudo/masks``; return ``<out_dir>/seg/model.pt``.

    With ``seg.source: method`` nothing is trained (the CAM stage's model is returned). Checks before the
    first step: writable output, pseudo masks present for every training image, resumable checkpoint of
    the same network and class count. With ``evaluate`` the val mIoU is computed at the end (``eval_seg``).
    """
    env = prepare_env(cfg, env)
    if cfg.seg.source == "method":
        path = stage_dir(out_dir, "cam") / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no CAM-stage model at {str(path)!r}; run train-cam first")
        return path
    out = stage_dir(out_dir, "seg")
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb)
    barrier()
    masks = pseudo_mask_dir(out_dir)
    if not masks.is_dir():
        raise FileNotFoundError(f"no pseudo masks at {str(masks)!r}; run make-pseudo first")
    tag = f"seg/{cfg.seg.model}"
    k = cfg.data.num_classes + 1
    final = out / "model.pt"
    finished, resume_ck = resolve_resume(out, tag, k, resume, "seg")
    if finished:
        return final
    root = data_root(cfg, env)
    base = open_split(cfg, cfg.pseudo.split or cfg.data.train_split, return_mask=True, mask_dir=masks,
                      limit=cfg.data.max_train_images, root=root)
    open_split(cfg, cfg.data.val_split, return_mask=True, limit=cfg.data.max_eval_images, root=root)
    dataset = AugmentedDataset(base, seg_train_transform(cfg), cfg.runtime.seed + 17)
    set_seed(cfg.runtime.seed + 17)
    model = build_seg_model(cfg).to(env.device)
    from ..models import param_groups

    groups = param_groups(model, cfg.seg.lr, weight_decay=cfg.seg.weight_decay)
    steps = total_steps_for(cfg.seg, len(dataset))
    logger = MetricLogger(out / "log.jsonl", enabled=env.is_main)
    if resume_ck is None:
        set_seed(cfg.runtime.seed + 18 + 1000 * env.rank)
    t0 = time.time()
    spec = PhaseSpec(stage="seg", phase="seg", module=model, step_fn=_seg_step_fn(cfg, model), param_groups=groups,
                     dataset=dataset, optim=cfg.seg, total_steps=steps, ckpt_method=tag, num_classes=k,
                     normalize=cfg.seg.normalize, config=to_dict(cfg))
    run_phase(spec, cfg.runtime, env, out, logger, resume=resume_ck, hooks=hooks)
    if env.is_main:
        save_model_file(final, model.state_dict(), method=tag, num_classes=k, step=steps, config=to_dict(cfg),
                        seconds=round(time.time() - t0, 2))
    barrier()
    if evaluate:
        res = eval_seg(cfg, out_dir, env, model=model)
        logger.log({"stage": "seg", "phase": "eval", "step": steps, "val_miou": res["miou"]})
        if env.is_main and cfg.runtime.plots:
            from ..viz import plot_curves

            plot_curves(out / "log.jsonl", out / "curves.png", title=f"{cfg.method}: segmentation stage")
    return final


def _crf_fn(cfg: RunConfig) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``(image01 B×3×H×W, probs B×K×H×W) -> refined probs`` with :class:`wsss_blocks.crf.DenseCRF`.

    ``seg.crf_params`` holds DenseCRF arguments; a ``preset`` entry names a released parameter set
    (``deeplab``, ``afa``, ``toco``, ...) that the other entries override.
    """
    if not cfg.seg.crf:
        return None
    from ..crf import DenseCRF

    params = dict(cfg.seg.crf_params)
    name = params.pop("preset", None)
    crf = DenseCRF.preset(str(name), **params) if name is not None else DenseCRF(**params)

    def run(image01: Tensor, probs: Tensor) -> Tensor:
        return crf(image01.float().clamp(0, 1), probs.float())

    return run


def eval_seg(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv | None = None, model: nn.Module | None = None,
             split: str | None = None) -> dict[str, Any]:
    """mIoU of the trained segmentation network (or the method's own head) on ``data.val_split``.

    Writes ``<out_dir>/seg/eval_<split>.json`` with ``miou``, per-class ``iou``, ``pixel_acc``, the
    inference settings and the image count.
    """
    env = prepare_env(cfg, env)
    out = stage_dir(out_dir, "seg")
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb)
    barrier()
    split = split or cfg.data.val_split
    k = cfg.data.num_classes + 1
    normalize = cfg.seg.normalize
    if cfg.seg.source == "method":
        method = restore_method(cfg, stage_dir(out_dir, "cam") / "model.pt", env)
        if not method.has_segmentation:
            raise ValueError(f"seg.source is 'method' but method {cfg.method!r} has no segmentation head")
        fn: Callable[[Tensor], Tensor] = method.seg_fn
        normalize = cfg.data.normalize
    else:
        if model is None:
            path = out / "model.pt"
            if not path.is_file():
                raise FileNotFoundError(f"no segmentation model at {str(path)!r}; run train-seg first")
            ck = load_checkpoint(path, method=f"seg/{cfg.seg.model}", num_classes=k)
            model = build_seg_model(cfg).to(env.device)
            model.load_state_dict(ck["model"])
        model.eval()
        net = model

        def fn(x: Tensor) -> Tensor:
            return seg_logits(net, x)

    ds = open_split(cfg, split, return_mask=True, limit=cfg.data.max_eval_images, root=data_root(cfg, env))
    crf = _crf_fn(cfg)
    metric = SegmentationMetric(k).to(env.device)
    s = cfg.seg
    use_amp = cfg.runtime.amp and env.device.type == "cuda"
    t0 = time.time()
    n = 0
    with torch.no_grad():
        for group in _progress(iter_inference_batches(ds, env, 1), len(ds), f"eval-seg:{split}", env, cfg):
            img = torch.stack([g["image"] for g in group]).to(env.device)
            gt = torch.stack([g["mask"] for g in group]).to(env.device)
            x = normalize_images(img, normalize)
            with torch.autocast(device_type=env.device.type, dtype=torch.float16, enabled=use_amp):
                logits = multiscale_cams(fn, x, scales=tuple(s.eval_scales), flip=s.eval_flip,
                                         out_size=(int(img.shape[-2]), int(img.shape[-1])), reduce=s.eval_scale_reduce,
                                         flip_reduce=s.eval_flip_reduce if s.eval_flip else None)
            probs = cast(Tensor, logits).float().softmax(1)
            if crf is not None:
                probs = crf(img, probs)
            metric.update(probs.argmax(1), gt)
            n += len(group)
    all_reduce_sum(metric.confmat)
    cnt = torch.tensor([n], device=env.device)
    all_reduce_sum(cnt)
    sc = metric.compute()
    res = {"split": split, "miou": float(sc["miou"]), "iou": [_num(v) for v in sc["iou"].tolist()],
           "pixel_acc": float(sc["pixel_acc"]), "num_images": int(cnt.item()),
           "scales": list(s.eval_scales), "flip": s.eval_flip, "crf": s.crf, "source": s.source,
           "seconds": round(time.time() - t0, 2)}
    if env.is_main:
        with atomic_write(out / f"eval_{split}.json", "w") as f:
            json.dump(res, f, indent=1)
    barrier()
    return res
