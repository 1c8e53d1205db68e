"""Segmentation evaluation of the reference trainer: test-time augmentation, optional CRF, mIoU over a split.

`evaluate_segmentation` scores any ``fn`` (normalised images -> B×K×h×w logits, channel 0 = background) on a
dataset with the ``seg`` evaluation settings of a run config:

- ``seg.eval_average: logits`` (deeplab-pytorch, AFA/ToCo): the logits of every scale (``seg.eval_scales``,
  ratios of the image size, optionally after resizing its long side to ``seg.eval_resize_long``) and flip are
  fused by ``seg.eval_scale_reduce`` / ``seg.eval_flip_reduce`` at the image size, then softmaxed;
- ``seg.eval_average: probs`` (mmsegmentation ``aug_test``, PMM's PSPNet): every pass is softmaxed at the image
  size and the probabilities are averaged, the scales being ratios of ``seg.eval_img_scale`` (mmseg's keep-ratio
  ``img_scale``) when it is set (`wsss_blocks.pseudo_mask.CyclicPseudoMask` computes exactly this);
- ``seg.eval_slide: [crop, stride]`` runs each pass by sliding windows (mmseg ``slide`` mode, logits averaged
  over overlaps, `wsss_blocks.models.slide_inference`);
- ``seg.crf``: a dense CRF (``seg.crf_params``) on the averaged probabilities; then the argmax.

``single_scale=True`` is the validation the AFA/TSCD releases run during training (``validate`` of
``scripts/dist_train_voc.py``): one pass at the image size, logits resized bilinearly to the label size, argmax,
no flip and no CRF; TSCD selects its best checkpoint by it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_blocks.cam import multiscale_cams
from wsss_blocks.data.normalization import Normalization, normalize_images
from wsss_blocks.metrics import SegmentationMetric

from .checkpoint import load_checkpoint, save_model_file
from .config import to_dict
from .datasets import data_root, iter_inference_batches, open_split
from .distributed import DistEnv, all_reduce_sum, barrier, shard_indices
from .reporting import MetricLogger, json_float, track
from .schema import RunConfig

__all__ = ["best_val_hook", "crf_fn", "evaluate_segmentation", "predict_probs"]


def crf_fn(cfg: RunConfig) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``(image01 B×3×H×W, probs B×K×H×W) -> refined probs`` with `wsss_blocks.crf.DenseCRF`, or None.

    ``seg.crf_params`` holds DenseCRF arguments; a ``preset`` entry names a released parameter set
    (``deeplab``, ``afa``, ``toco``, ...) that the other entries override.
    """
    if not cfg.seg.crf:
        return None
    from wsss_blocks.crf import DenseCRF

    crf = DenseCRF.from_config(cfg.seg.crf_params)

    def run(image01: Tensor, probs: Tensor) -> Tensor:
        return crf(image01.float().clamp(0, 1), probs.float())

    return run


def _resize_long(x: Tensor, long_side: int) -> Tensor:
    h, w = int(x.shape[-2]), int(x.shape[-1])
    s = long_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _sliding(fn: Callable[[Tensor], Tensor], slide: tuple[int, int] | None) -> Callable[[Tensor], Tensor]:
    if slide is None:
        return fn
    from wsss_blocks.models import slide_inference

    crop, stride = int(slide[0]), int(slide[1])

    def run(x: Tensor) -> Tensor:
        return slide_inference(fn, x, crop, stride)

    return run


def predict_probs(cfg: RunConfig, fn: Callable[[Tensor], Tensor], image01: Tensor, normalize: Normalization,
                  *, single_scale: bool = False) -> Tensor:
    """B×K×H×W class probabilities of ``image01`` (B×3×H×W in [0, 1]) with the ``seg`` evaluation settings.

    No CRF (see `crf_fn`). Runs ``fn`` under float16 autocast on CUDA when ``runtime.amp`` is on; the
    averaging is in float32.
    """
    s = cfg.seg
    H, W = int(image01.shape[-2]), int(image01.shape[-1])
    use_amp = cfg.runtime.amp and image01.device.type == "cuda"

    def net(x: Tensor) -> Tensor:
        with torch.autocast(device_type=image01.device.type, dtype=torch.float16, enabled=use_amp):
            return fn(x)

    if single_scale:
        logits = net(normalize_images(image01, normalize)).float()
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False).softmax(1)
    run = _sliding(net, s.eval_slide)
    if s.eval_average == "probs":
        from wsss_blocks.pseudo_mask import CyclicPseudoMask

        cp = CyclicPseudoMask(scales=tuple(s.eval_scales), flip=s.eval_flip, img_scale=s.eval_img_scale, slide=None,
                              crf=None, preprocess=lambda x: normalize_images(x, normalize))
        return cp.predict(run, image01.float())
    x = normalize_images(image01, normalize)
    if s.eval_resize_long is not None:
        x = _resize_long(x, int(s.eval_resize_long))
    scales: tuple[float, ...] = tuple(s.eval_scales)
    if s.eval_img_scale is not None:  # ratios of mmseg's keep-ratio img_scale
        from wsss_blocks.data.transforms import RandomResizeRatio

        h, w = int(x.shape[-2]), int(x.shape[-1])
        scales = tuple(RandomResizeRatio.output_size(h, w, s.eval_img_scale, r)[0] / h for r in scales)
    logits = multiscale_cams(run, x, scales=scales, flip=s.eval_flip, out_size=(H, W), reduce=s.eval_scale_reduce,
                             flip_reduce=s.eval_flip_reduce if s.eval_flip else None)
    return cast(Tensor, logits).float().softmax(1)


def evaluate_segmentation(cfg: RunConfig, fn: Callable[[Tensor], Tensor], normalize: Normalization, ds: Any,
                          env: DistEnv, desc: str, *, single_scale: bool = False) -> dict[str, Any]:
    """MIoU of ``fn`` (normalised images -> B×K×h×w logits) on ``ds`` (all ranks take part; counts are summed).

    Returns ``miou``, per-class ``iou``, ``pixel_acc``, ``num_images`` and ``seconds``. ``single_scale``: the
    released in-training validation of AFA/TSCD (one pass, no flip, no CRF, no long-side resize).
    """
    crf = None if single_scale else crf_fn(cfg)
    k = cfg.data.num_classes + 1
    metric = SegmentationMetric(k).to(env.device)
    t0 = time.time()
    n = 0
    with torch.no_grad():
        share = len(shard_indices(len(ds), env.rank, env.world_size))
        for group in track(iter_inference_batches(ds, env, 1), share, desc, env.is_main and cfg.runtime.progress):
            img = torch.stack([g["image"] for g in group]).to(env.device)
            gt = torch.stack([g["mask"] for g in group]).to(env.device)
            probs = predict_probs(cfg, fn, img, normalize, single_scale=single_scale)
            if crf is not None:
                probs = crf(img, probs)
            metric.update(probs.argmax(1), gt)
            n += len(group)
    all_reduce_sum(metric.confmat)
    cnt = torch.tensor([n], device=env.device)
    all_reduce_sum(cnt)
    sc = metric.compute()
    return {"miou": float(sc["miou"]), "iou": [json_float(v) for v in sc["iou"].tolist()],
            "pixel_acc": float(sc["pixel_acc"]), "num_images": int(cnt.item()), "seconds": round(time.time() - t0, 2)}


def best_val_hook(cfg: RunConfig, module: torch.nn.Module, fn: Callable[[Tensor], Tensor], normalize: Normalization,
                  env: DistEnv, logger: MetricLogger, *, stage: str, every: int, best_path: Path, tag: str,
                  num_classes: int, is_final: Callable[[dict[str, Any]], bool],
                  step_of: Callable[[dict[str, Any]], int],
                  checkpoint_meta: Callable[[], dict[str, Any]] | None = None,
                  single_scale: bool = False) -> Callable[[dict[str, Any]], None]:
    """A training-loop hook: val mIoU every ``every`` phase steps (and when ``is_final(info)``), best model kept.

    ``module`` is put in eval mode for the evaluation (and back), the RNG state is forked so that training continues
    bit-exactly; each mIoU is logged as ``val_miou`` (``stage``, ``phase``, ``phase_step`` and ``step_of(info)``);
    ``best_path`` holds the best model ever evaluated in this folder (an earlier run's too; ties keep the earlier
    one) with ``val_miou`` and ``checkpoint_meta()``, written by the main process (``tag`` and ``num_classes`` are
    the checkpoint's ``method`` and class count). All ranks take part.
    """
    state: dict[str, Any] = {}
    k = num_classes

    def hook(info: dict[str, Any]) -> None:
        step = int(info["phase_step"])
        if step % every != 0 and not is_final(info):
            return
        if "ds" not in state:
            state["ds"] = open_split(cfg, cfg.data.val_split, return_mask=True, limit=cfg.data.max_eval_images,
                                     root=data_root(cfg, env))
        was_training = module.training
        module.eval()
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
            res = evaluate_segmentation(cfg, fn, normalize, state["ds"], env, f"val@{step_of(info)}",
                                        single_scale=single_scale)
        module.train(was_training)
        miou = float(res["miou"])
        logger.log({"stage": stage, "phase": info["phase"], "phase_step": step, "step": step_of(info),
                    "val_miou": miou})
        if env.is_main:
            if "best" not in state:  # the best mIoU evaluated so far in this folder (an earlier run's too)
                state["best"] = float("-inf")
                if best_path.is_file():
                    prev = load_checkpoint(best_path, method=tag, num_classes=k, map_location="cpu")
                    state["best"] = float(prev.get("val_miou", float("-inf")))
            if miou > state["best"]:
                save_model_file(best_path, module.state_dict(), method=tag, num_classes=k, step=step_of(info),
                                val_miou=miou, config=to_dict(cfg), **(checkpoint_meta() if checkpoint_meta else {}))
                state["best"] = miou
        barrier()

    return hook
