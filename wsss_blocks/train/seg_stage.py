"""Stage 3: train a segmentation network on the pseudo masks and evaluate it on the validation split.

Training (``train_seg``) follows deeplab-pytorch ``configs/voc12.yaml`` by default: DeepLab-v2
(ResNet-101 + ASPP 6/12/18/24) on ``data.train_split`` with the pseudo masks of stage 2, random scale
(0.5 … 1.5) + crop 321 + flip, MSC inputs (×1, ×0.5, ×0.75 and their max, the loss summed over all four),
cross-entropy with ignore 255 — or PMM's pretended under-fitting loss (``seg.loss: puf``,
[`wsss_blocks.losses.PretendedUnderFittingLoss`][]) — SGD lr 2.5e-4 (ASPP ×10/×20), momentum 0.9,
weight decay 5e-4, poly 0.9, 20k iterations of batch 5 × 2 accumulated.

Evaluation (``eval_seg``): logits at ``seg.eval_scales`` (optionally + flip) resized to the image, fused
(max over scales, as deeplab-pytorch's MSC), softmax, optional dense CRF
([`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF] with ``seg.crf_params``), argmax, mIoU over
``data.val_split``. With ``seg.source: method`` (TSCD) the method's own segmentation head (`CAMMethod.seg_fn`) is
evaluated and nothing is trained here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_blocks.data.io import atomic_write
from wsss_blocks.data.normalization import Normalization, data_normalization, normalize_images
from wsss_blocks.models.weights import check_run_weights

from .cam_stage import prepare_env, restore_method, stage_dir
from .checkpoint import check_output_dir, load_checkpoint, load_model_state, resolve_resume, save_model_file, set_aside
from .config import to_dict
from .datasets import AugmentedDataset, data_root, open_split, preflight_data, seg_train_transform
from .distributed import DistEnv, all_reduce_sum, barrier, shard_indices
from .evaluation import best_val_hook, evaluate_segmentation
from .loop import Hook, PhaseSpec, run_phase, set_seed
from .optim import total_steps_for
from .paths import absolute, resolve_paths
from .pseudo_stage import pseudo_mask_dir
from .reporting import MetricLogger
from .run_folder import check_run_folder, prepare_stage_folder
from .schema import SYNTHETIC_PRETRAINED, RunConfig
from .synthetic_pretrain import resolve_synthetic_pretrained

__all__ = ["build_seg_model", "eval_seg", "reported_model_paths", "seg_logits", "seg_model_path", "seg_round_dir",
           "train_seg"]

_LIBRARY_BACKBONES = ("tiny", "resnet38d", "resnet38", "resnet38d_tiny", "wide_resnet38")


def build_seg_model(cfg: RunConfig) -> nn.Module:
    """The segmentation network of ``cfg.seg`` with C + 1 outputs (channel 0 = background).

    ``seg.pretrained: synthetic`` loads the backbone pretrained on synthetic data (pretrained and cached first
    if needed, `wsss_blocks.train.synthetic_pretrain`).
    """
    from wsss_blocks.models import DeepLabV2, DeepLabV3Plus, PSPNet, SegFormer, build_backbone

    s = cfg.seg
    if s.pretrained == SYNTHETIC_PRETRAINED:
        if not (s.model == "deeplabv2" and (s.backbone in _LIBRARY_BACKBONES or s.backbone.startswith("mit_"))):
            raise ValueError(f"seg.pretrained: {SYNTHETIC_PRETRAINED!r} needs seg.model deeplabv2 with a library "
                             f"backbone ({', '.join(_LIBRARY_BACKBONES)}, mit_*), got {s.model} / {s.backbone}")
        s = resolve_synthetic_pretrained(cfg, sections=("seg",)).seg
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
    if s.model == "pspnet":
        return PSPNet(k, backbone=s.backbone, pretrained=s.pretrained, backbone_kwargs=dict(s.backbone_kwargs), **kw)
    raise ValueError(f"seg.model must be deeplabv2, deeplabv3plus, segformer or pspnet, got {s.model!r}")


def seg_logits(model: nn.Module, images: Tensor) -> Tensor:
    """B×K×h×w logits of any of the segmentation networks (SegFormer returns a dict)."""
    out = model(images)
    return out["seg"] if isinstance(out, dict) else out


def _upsampled(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[-2:] == labels.shape[-2:]:
        return logits
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


def _resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _make_criterion(cfg: RunConfig, loss: str | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    from .pipeline import make_seg_loss

    loss = cfg.seg.loss if loss is None else loss
    # seg.loss_args belong to seg.loss; a cyclic round's other loss (seg.cyclic_loss) takes none
    return make_seg_loss(loss, cfg.seg.loss_args if loss == cfg.seg.loss else {})


def _seg_step_fn(cfg: RunConfig, model: nn.Module, loss: str | None = None
                 ) -> Callable[[dict[str, Any], int, int], dict[str, Tensor]]:
    crit = _make_criterion(cfg, loss)
    msc = tuple(cfg.seg.msc_train)

    at_logits = cfg.seg.loss_at == "logits"

    def loss_of(logits: Tensor, y: Tensor) -> Tensor:
        logits = logits.float()
        if at_logits:
            return crit(logits, _resize_labels(y, logits.shape[-2:]))
        return crit(_upsampled(logits, y), y)

    aux_crit = _make_criterion(cfg, loss) if cfg.seg.model == "pspnet" else None  # PUF gates per head

    def step(batch: dict[str, Any], step: int, total: int) -> dict[str, Tensor]:
        x, y = batch["image"], batch["mask"].long()
        if aux_crit is not None:  # PSPNet: decode head + aux_weight · auxiliary head (mmseg, PMM weight 0.4)
            pspnet = cast(Any, model)
            decode, aux = pspnet.forward_with_aux(x)
            main = loss_of(decode, y)
            if aux is None:
                return {"loss": main}
            if at_logits:
                aux_loss = aux_crit(aux.float(), _resize_labels(y, aux.shape[-2:]))
            else:
                aux_loss = aux_crit(_upsampled(aux.float(), y), y)
            return {"loss": main + float(pspnet.aux_weight) * aux_loss, "loss_decode": main.detach(),
                    "loss_aux": aux_loss.detach()}
        if cfg.seg.model == "deeplabv2" and msc:
            from wsss_blocks.models import msc_forward

            outs = msc_forward(model, x, msc)
            losses = [loss_of(o, y) for o in outs]
            return {"loss": torch.stack(losses).sum(), "loss_1x": losses[0].detach()}
        return {"loss": loss_of(seg_logits(model, x), y)}

    return step


def _seg_param_groups(cfg: RunConfig, model: nn.Module) -> list[dict[str, Any]]:
    """``seg.param_groups``: the DeepLab convention (backbone 1×/2×, new layers 10×/20×) or one uniform group.

    ``"uniform"`` is mmsegmentation's default optimizer (PMM's PSPNet): every parameter, BatchNorm and biases
    included, at ``seg.lr`` with ``seg.weight_decay``.
    """
    if cfg.seg.param_groups == "uniform":
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr_mult": 1.0, "weight_decay": cfg.seg.weight_decay}]
    from wsss_blocks.models import param_groups

    return param_groups(model, cfg.seg.lr, weight_decay=cfg.seg.weight_decay)


def seg_round_dir(out_dir: str | os.PathLike, round_index: int) -> Path:
    """Folder of segmentation round ``round_index``: ``<out>/seg`` (round 0), ``<out>/seg/round<r>`` after."""
    base = stage_dir(out_dir, "seg")
    return base if round_index == 0 else base / f"round{round_index}"


def seg_model_path(cfg: RunConfig, out_dir: str | os.PathLike) -> Path:
    """The reported segmentation model: ``model.pt`` of the last round (``seg.cyclic_rounds`` + 1 rounds)."""
    return seg_round_dir(out_dir, cfg.seg.cyclic_rounds) / "model.pt"


def _load_seg_model(cfg: RunConfig, path: Path, env: DistEnv) -> nn.Module:
    ck = load_checkpoint(path, method=f"seg/{cfg.seg.model}", num_classes=cfg.data.num_classes + 1)
    if cfg.seg.pretrained == SYNTHETIC_PRETRAINED:  # every weight comes from the checkpoint: nothing to pretrain
        cfg = dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, pretrained=None))
    model = build_seg_model(cfg).to(env.device)
    load_model_state(model, ck["model"], path)
    return model


def _train_round(cfg: RunConfig, out_dir: str | os.PathLike, round_index: int, masks: Path, env: DistEnv,
                 resume: bool, hooks: Sequence[Hook]) -> tuple[Path, nn.Module | None]:
    """Train one segmentation round on ``masks``; returns (``model.pt`` path, the model if trained now)."""
    rdir = seg_round_dir(out_dir, round_index)
    tag = f"seg/{cfg.seg.model}"
    k = cfg.data.num_classes + 1
    final = rdir / "model.pt"
    start = resolve_resume(rdir, tag, k, resume, "seg")
    barrier()
    if env.is_main:
        rdir.mkdir(parents=True, exist_ok=True)
        set_aside(start.unreadable)
    barrier()
    if start.finished:
        return final, None
    resume_ck = start.checkpoint
    root = data_root(cfg, env)
    base = open_split(cfg, cfg.pseudo.split or cfg.data.train_split, return_mask=True, mask_dir=masks,
                      limit=cfg.data.max_train_images, root=root)
    open_split(cfg, cfg.data.val_split, return_mask=True, limit=cfg.data.max_eval_images, root=root)
    dataset = AugmentedDataset(base, seg_train_transform(cfg), cfg.runtime.seed + 17)
    cfg = resolve_synthetic_pretrained(cfg, env, ("seg",))  # pretrains once (main rank) if the cache lacks them
    set_seed(cfg.runtime.seed + 17)
    model = build_seg_model(cfg).to(env.device)
    groups = _seg_param_groups(cfg, model)
    steps = total_steps_for(cfg.seg, len(dataset))
    logger = MetricLogger(rdir / "log.jsonl", enabled=env.is_main)
    if resume_ck is None:
        set_seed(cfg.runtime.seed + 18 + 1000 * env.rank)
    loss = cfg.seg.loss if round_index == 0 else cfg.seg.cyclic_loss
    phase = "seg" if round_index == 0 else f"seg_round{round_index}"
    all_hooks = list(hooks)
    if cfg.seg.eval_every is not None:
        # val every seg.eval_every steps and at the end; the best model ever evaluated here goes to <rdir>/best.pt
        all_hooks.insert(0, best_val_hook(
            cfg, model, _logits_fn(model), cfg.seg.normalize, env, logger, stage="seg", every=int(cfg.seg.eval_every),
            best_path=rdir / "best.pt", tag=tag, num_classes=k,
            is_final=lambda info: info["phase_step"] == info["total"], step_of=lambda info: int(info["phase_step"])))
    t0 = time.time()
    spec = PhaseSpec(stage="seg", phase=phase, module=model, step_fn=_seg_step_fn(cfg, model, loss),
                     param_groups=groups, dataset=dataset, optim=cfg.seg, total_steps=steps, ckpt_method=tag,
                     num_classes=k, normalize=cfg.seg.normalize, config=to_dict(cfg))
    # SyncBatchNorm needs an accelerator: under CPU DDP (tests) each process keeps its own BatchNorm statistics
    sync = cfg.seg.sync_bn and env.device.type != "cpu"
    runtime = dataclasses.replace(cfg.runtime, sync_bn=True) if sync else cfg.runtime
    run_phase(spec, runtime, env, rdir, logger, resume=resume_ck, hooks=all_hooks)
    if env.is_main:
        save_model_file(final, model.state_dict(), method=tag, num_classes=k, step=steps, config=to_dict(cfg),
                        seconds=round(time.time() - t0, 2), round=round_index, loss=loss)
    barrier()
    return final, model


def _relabel(cfg: RunConfig, out_dir: str | os.PathLike, round_index: int, env: DistEnv) -> Path:
    """PMM cyclic pseudo-masks: predict the training split with the previous round's selected model."""
    from wsss_blocks.pseudo_mask import CYCLIC_CRF, CyclicPseudoMask

    from .cyclic import relabel

    s = cfg.seg
    prev = seg_round_dir(out_dir, round_index - 1)
    path = prev / "model.pt"
    if s.cyclic_select == "best":
        path = prev / "best.pt"
        if not path.is_file():
            raise FileNotFoundError(f"seg.cyclic_select is 'best' but {str(path)!r} does not exist (it is written "
                                    f"by the seg.eval_every evaluations)")
    model = _load_seg_model(cfg, path, env).eval()
    norm: Normalization = s.normalize
    cp = CyclicPseudoMask(scales=tuple(s.cyclic_scales if s.cyclic_scales is not None else s.eval_scales),
                          flip=s.eval_flip if s.cyclic_flip is None else s.cyclic_flip, img_scale=s.eval_img_scale,
                          slide=None if s.eval_slide is None else (int(s.eval_slide[0]), int(s.eval_slide[1])),
                          crf=CYCLIC_CRF if (s.crf if s.cyclic_crf is None else s.cyclic_crf) else None,
                          policy=s.cyclic_policy,
                          preprocess=lambda x: normalize_images(x, norm))
    out = stage_dir(out_dir, "seg") / f"cyclic_masks_r{round_index}"
    ds = open_split(cfg, cfg.pseudo.split or cfg.data.train_split, return_mask=False,
                    limit=cfg.data.max_train_images, root=data_root(cfg, env))
    ds.names = [ds.names[i] for i in shard_indices(len(ds.names), env.rank, env.world_size)]
    use_amp = cfg.runtime.amp and env.device.type == "cuda"

    def fn(x: Tensor) -> Tensor:  # AMP for the network only; softmax averaging and the CRF stay in float32
        with torch.autocast(device_type=env.device.type, dtype=torch.float16, enabled=use_amp):
            return seg_logits(model, x)

    with torch.no_grad():
        res = relabel(cp, fn, ds, out, old_root=pseudo_mask_dir(out_dir), device=env.device, palette=True)
    counts = torch.tensor([res.written, res.skipped], device=env.device)
    all_reduce_sum(counts)
    barrier()
    if env.is_main:
        with atomic_write(out.parent / f"cyclic_masks_r{round_index}.json", "w") as f:
            json.dump({"round": round_index, "model": str(path), "written": int(counts[0]),
                       "skipped": int(counts[1]), "policy": s.cyclic_policy}, f, indent=1)
    return out


def train_seg(cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False, hooks: Sequence[Hook] = (),
              env: DistEnv | None = None, evaluate: bool = True) -> Path:
    """Train the segmentation network on ``<out_dir>/pseudo/masks``; return the reported model's path.

    With ``seg.source: method`` nothing is trained (the CAM stage's model is returned). Checks before the
    first step: writable output, pseudo masks present for every training image, resumable checkpoint of
    the same network and class count. With ``evaluate`` the val mIoU is computed at the end (``eval_seg``).

    ``seg.eval_every``: val mIoU every N steps (logged as ``val_miou``); the best weights go to ``best.pt``.
    ``seg.cyclic_rounds`` (PMM's cyclic pseudo-masks, WSSS_MMSeg ``tools/run_wsss.sh`` and
    ``tools/pick_best_pth.py``): after round 0 (``seg/``, trained with ``seg.loss`` on the pseudo masks) each
    round r relabels the training split with the previous round's
    ``best.pt`` (``seg.cyclic_select: best``, the release's pick_best_pth) or ``model.pt`` using
    [`wsss_blocks.pseudo_mask.CyclicPseudoMask`][] (``seg.cyclic_scales``/``cyclic_flip``/``cyclic_crf``,
    mean of softmaxes, CRF preset [`wsss_blocks.pseudo_mask.CYCLIC_CRF`][]) into ``seg/cyclic_masks_r<r>``
    and trains a fresh network on them with ``seg.cyclic_loss`` (release: plain CE) in ``seg/round<r>``.
    The reported model is the last round's ``model.pt`` (`seg_model_path`).
    """
    cfg = resolve_paths(cfg)
    out_dir = absolute(out_dir)
    env = prepare_env(cfg, env)
    if cfg.seg.source == "method":
        check_run_folder(cfg, out_dir, "cam")
        path = stage_dir(out_dir, "cam") / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no CAM-stage model at {str(path)!r}; run train-cam first")
        return path
    out = stage_dir(out_dir, "seg")
    # checks (nothing is written until all of them passed)
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb, create=False)
    masks = pseudo_mask_dir(out_dir)
    if not masks.is_dir():
        raise FileNotFoundError(f"no pseudo masks at {str(masks)!r}; run make-pseudo first")
    check_run_folder(cfg, out_dir, "seg", fresh=() if resume else ("seg",))
    barrier()
    if env.is_main:
        check_run_weights(cfg, ("seg",), progress=cfg.runtime.progress)  # before the first write and step 1
        preflight_data(cfg, ("seg",), env)  # every file the stage reads decoded once (cached)
        prepare_stage_folder(cfg, out_dir, "seg")
    barrier()
    final, model = _train_round(cfg, out_dir, 0, masks, env, resume, hooks)
    for r in range(1, cfg.seg.cyclic_rounds + 1):
        if resume and (seg_round_dir(out_dir, r) / "model.pt").is_file():
            final, model = seg_round_dir(out_dir, r) / "model.pt", None
            continue
        masks = _relabel(cfg, out_dir, r, env)
        final, model = _train_round(cfg, out_dir, r, masks, env, resume, hooks)
    if evaluate:
        res = eval_seg(cfg, out_dir, env, model=model)
        logger = MetricLogger(final.parent / "log.jsonl", enabled=env.is_main)
        step = int(load_checkpoint(final, map_location="cpu").get("step", 0)) if env.is_main else 0
        logger.log({"stage": "seg", "phase": "eval", "step": step, "val_miou": res["miou"]})
        if env.is_main and cfg.runtime.plots:
            from wsss_blocks.viz import plot_curves

            plot_curves(final.parent / "log.jsonl", final.parent / "curves.png",
                        title=f"{cfg.method}: segmentation stage")
    return final


def _logits_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        return seg_logits(model, x)

    return fn


def _eval_one(cfg: RunConfig, path: Path, env: DistEnv, ds: Any, split: str, model: nn.Module | None = None
              ) -> dict[str, Any]:
    """Evaluate the segmentation model (or the method) stored at ``path``; ``model``: already in memory."""
    normalize: Normalization = cfg.seg.normalize
    if cfg.seg.source == "method":
        method = restore_method(cfg, path, env)
        if not method.has_segmentation:
            raise ValueError(f"seg.source is 'method' but method {cfg.method!r} has no segmentation head")
        fn: Callable[[Tensor], Tensor] = method.seg_fn
        normalize = data_normalization(cfg.data)
    else:
        if model is None:
            model = _load_seg_model(cfg, path, env)
        model.eval()
        fn = _logits_fn(model)
    r = evaluate_segmentation(cfg, fn, normalize, ds, env, f"eval-seg:{split}:{path.stem}")
    ck = load_checkpoint(path, map_location="cpu")
    r["model"] = str(path)
    r["step"] = int(ck.get("step", 0))
    if ck.get("val_miou") is not None:
        r["selection_val_miou"] = float(ck["val_miou"])  # the in-training validation score that selected it
    return r


def reported_model_paths(cfg: RunConfig, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The model files `eval_seg` scores: ``{"last": ...}`` and, with ``seg.report: best``, ``{"best": ...}``.

    Segmentation network: the last round's ``model.pt`` / ``best.pt``; ``seg.source: method``: the CAM stage's
    ``model.pt`` / ``best.pt`` (the in-training validation of the method's own head, ``seg.eval_every``).
    """
    base = stage_dir(out_dir, "cam") if cfg.seg.source == "method" else seg_round_dir(out_dir, cfg.seg.cyclic_rounds)
    out = {"last": base / "model.pt"}
    if cfg.seg.report == "best":
        out["best"] = base / "best.pt"
    return out


def eval_seg(cfg: RunConfig, out_dir: str | os.PathLike, env: DistEnv | None = None, model: nn.Module | None = None,
             split: str | None = None) -> dict[str, Any]:
    """MIoU of the trained segmentation network (or the method's own head) on ``data.val_split``.

    The reported network is chosen by ``seg.report``: ``"last"`` (the last cyclic round's ``model.pt``, or the CAM
    stage's ``model.pt`` with ``seg.source: method``) or ``"best"`` (the ``best.pt`` next to it: the checkpoint with
    the best in-training validation mIoU, ``seg.eval_every``), in which case the last one is evaluated too and
    reported under ``"last"``. ``model`` is the last network when it is already in memory. Writes
    ``<out_dir>/seg/eval_<split>.json`` with ``miou``, per-class ``iou``, ``pixel_acc``, ``report``, the model file
    and its step, the inference settings, the image count and, with ``report: best``, the ``best`` and ``last``
    results.
    """
    cfg = resolve_paths(cfg)
    out_dir = absolute(out_dir)
    env = prepare_env(cfg, env)
    out = stage_dir(out_dir, "seg")
    if env.is_main:
        check_output_dir(out, cfg.runtime.min_free_mb, create=False)
    check_run_folder(cfg, out_dir, "seg" if cfg.seg.source != "method" else "cam", for_eval=True)
    barrier()
    split = split or cfg.data.val_split
    paths = reported_model_paths(cfg, out_dir)
    for name, path in paths.items():
        if not path.is_file():
            what = "run train-cam first" if cfg.seg.source == "method" else "run train-seg first"
            if name == "best":
                what = "it is written by the seg.eval_every evaluations during training"
            raise FileNotFoundError(f"no {'segmentation ' if cfg.seg.source != 'method' else ''}model at "
                                    f"{str(path)!r}; {what}")
    ds = open_split(cfg, split, return_mask=True, limit=cfg.data.max_eval_images, root=data_root(cfg, env))
    results = {name: _eval_one(cfg, path, env, ds, split, model if name == "last" else None)
               for name, path in paths.items()}
    s = cfg.seg
    reported = results[s.report]
    res = {"split": split, **reported, "report": s.report, "scales": list(s.eval_scales), "flip": s.eval_flip,
           "crf": s.crf, "source": s.source, "resize_long": s.eval_resize_long, "img_scale": s.eval_img_scale,
           "slide": s.eval_slide, "average": s.eval_average, "cyclic_rounds": s.cyclic_rounds}
    if s.report == "best":
        res["best"] = results["best"]
        res["last"] = results["last"]
    if env.is_main:
        with atomic_write(out / f"eval_{split}.json", "w") as f:
            json.dump(res, f, indent=1)
    barrier()
    return res
