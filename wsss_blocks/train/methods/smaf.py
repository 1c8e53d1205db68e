"""SMAF in the reference trainer: an EPS-style first stage, then self-training on fused multi-scale attention.

Yang, Zhu, Zhang, "A Self-Training Framework Based on Multi-Scale Attention Fusion for Weakly Supervised
Semantic Segmentation", arXiv 2305.05841, 2023 (official code bupt-ai-cz/SMAF).
The first stage is EPS (Lee et al., "Railroad is not a Train: Saliency as Pseudo-pixel Supervision for Weakly
Supervised Semantic Segmentation", CVPR 2021; official code halbielee/EPS), which the SMAF release expects as a
pre-trained checkpoint.

Two phases (`SMAFMethod.phases`), each with a fresh optimizer and poly schedule:

1. ``"eps"`` — the classification network (ResNet-38 + SMAF's head ``4096 → 128 → BN → ReLU → C+1``, background
   **last**) trained with the multi-label soft-margin loss on the GAP of the foreground maps plus, when
   ``eps_saliency`` is on, EPS's saliency loss ([`eps_saliency_loss`][wsss_blocks.losses.eps_saliency_loss]; EPS
   ``eps.py``, ``module/train.py`` ``train_eps``; ``script/voc12_eps.sh``: tau 0.4, lambda 0.5, 20k iterations, batch 8,
   crop 448). Without saliency (``eps_saliency: false``) the phase is EPS's own classification-only path (``train_cls``)
   on the same C+1 network — an **inferred** fallback: the background channel then gets no direct signal.
2. ``"self_train"`` — a frozen copy of the phase-1 network is the teacher; the student (the phase-1 network
   itself, so it starts from the same weights as released) learns ``100 · MSE(softmax(student), T)`` at 1/4 of
   the crop resolution ([`smaf_loss`][wsss_blocks.multiscale_fusion.smaf_loss]), where T is the denoised, reactivated
   fused multi-scale map of the teacher
   ([`multiscale_attention_fusion`][wsss_blocks.multiscale_fusion.multiscale_attention_fusion],
   [`smaf_target`][wsss_blocks.multiscale_fusion.smaf_target]; scales 0.5/1/1.5/2 + flips, softmax before upsampling,
   class-aware sum, per-class max, background 0.2).

Pseudo masks (the configs' chain ``pseudo.rule: smaf``, `wsss_blocks.train.pipeline`): the trainer's multi-scale
CAMs of `SMAFMethod.cam_fn` (per-pass softmax over C+1, background dropped, summed, per-class max) thresholded
at 0.2 with [`smaf_pseudo_mask`][wsss_blocks.multiscale_fusion.smaf_pseudo_mask], refined by the released
hard-label dense CRF (`wsss_blocks.crf.DenseCRF.smaf`).

Teacher targets (``target_mode``):

* ``"offline"`` (default, released): at the start of the self-training phase the frozen teacher fuses its maps
  once per **full** training image (``gen_fused_cam.py``) and [`SMAFMethod.precompute_fused_maps`][]
  stores them under ``<cam stage>/fused_cams/<name>.npy`` (present classes only, ascending class order,
  ``C_present × H × W``; existing files are kept, so an interrupted run resumes). Each training crop's target is
  cut from its image's stored map with the crop's recorded geometry (``batch["geom"]``, see
  [`wsss_blocks.data.transforms.RecordGeometry`][wsss_blocks.data.transforms.RecordGeometry]): bilinear resize with
  ``align_corners=True`` to the image's random-resized size, flip, crop with zero padding (``VOC_dataset.py``
  ``transform_with_mask``), then denoised and reactivated at 1/4 of the crop; padding becomes pure background.
* ``"online"``: the approximation of earlier versions — the teacher fuses its maps on each training crop
  itself (padded pixels masked to background before the per-class max, which runs over the valid region).
  No files, no geometry needed, but 8 teacher passes per crop and step and a per-crop (not per-image) max.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks.data.normalization import Normalization, data_normalization
from wsss_blocks.losses import eps_saliency_loss
from wsss_blocks.models import SMAFNet, build_frozen_backbone, param_groups, set_bn_eval
from wsss_blocks.multiscale_fusion import multiscale_attention_fusion, smaf_loss, smaf_target
from wsss_blocks.train.smaf_store import FusedMapStore

from . import register_method
from .base import CAMMethod, PhaseContext

__all__ = ["SMAFConfig", "SMAFMethod", "FUSED_DIR"]

FUSED_DIR = "fused_cams"
"""Sub-folder of the CAM stage folder holding the offline fused teacher maps (``target_mode: offline``)."""

@dataclass
class SMAFConfig:
    """Arguments of SMAF (defaults = the released VOC setting, EPS ``script/voc12_eps.sh``).

    Attributes:
        head: ``"smaf"`` (released SMAF head, 4096 → 128 → BN → ReLU → C+1) or ``"eps"`` (official EPS
            single 1×1 conv; load EPS weights with it).
        head_channels: width of the SMAF head (128).
        frozen: backbone modules without gradient (EPS/SMAF: conv1a, b2, b2_1, b2_2).
        freeze_bn: every BatchNorm (also the head's) in eval mode with frozen affine parameters.
        eps_saliency: phase 1 adds EPS's saliency loss (released; needs ``data.saliency_dir``). ``false`` =
            **inferred** fallback: classification loss only (EPS's ``train_cls`` loss on the C+1 network).
        eps_tau: EPS overlap threshold (``voc12_eps.sh`` ``--tau 0.4``).
        eps_lambda: EPS blending ratio (``main.py`` default ``--lam 0.5``; COCO script 0.9).
        eps_color_jitter: colour jitter (brightness, contrast, saturation, hue) of phase 1 (EPS
            ``metadata/dataset.py``: 0.3, 0.3, 0.3, 0.1), applied by the method to each training crop; the SMAF
            phase has none, so ``cam.color_jitter`` stays off. ``null`` disables it.
        eps_steps: phase-1 iterations (``voc12_eps.sh`` ``--max_iters 20000``); ``null`` = ``cam.steps``.
        self_train_steps: phase-2 iterations (SMAF ``parser_train.py`` 20,000); ``null`` = ``cam.steps``.
        target_mode: ``"offline"`` (released): the teacher's maps are fused once per full training image at the
            start of the self-training phase, stored, and cut to each crop with its recorded geometry
            (``gen_fused_cam.py``, ``VOC_dataset.py``). ``"online"``: fused on each training crop at every step
            (an approximation).
        offline_dtype: storage type of the offline maps: ``"float32"`` (released ``np.save`` of float32 arrays;
            about 10-12 GB for VOC train_aug) or ``"float16"`` (half the disk; max error 2.4e-4).
        offline_batch_size: images per teacher call while precomputing (consecutive images of equal size are
            batched; released 1). Larger values only change speed (and float rounding).
        offline_align_corners: the map resize to the crop's random-resized size uses bilinear with
            ``align_corners=True`` as released (``VOC_dataset.py``), although the image itself is
            resized with half-pixel centres; ``false`` aligns the map exactly with the trainer's image resize.
        offline_cache_mb: keep loaded offline maps in memory up to this many MB (0 = read each batch from disk).
        target_scales: teacher scales (0.5, 1.0, 1.5, 2.0).
        target_flip: teacher flips (8 passes in all).
        target_image_interpolation: how the teacher's inputs are resized (released PIL bicubic).
        target_bg_score: constant background of the target (0.2).
        target_scale_factor: the target and loss resolution relative to the crop (0.25, 112 for 448).
        loss_weight: weight of the MSE (100).

    The pseudo-mask CRF lives in the chain: ``pseudo.args.smaf`` (``crf``, ``crf_params``).
    """

    head: Literal["smaf", "eps"] = "smaf"
    head_channels: int = 128
    frozen: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")
    freeze_bn: bool = True
    eps_saliency: bool = True
    eps_tau: float = 0.4
    eps_lambda: float = 0.5
    eps_color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)
    eps_steps: int | None = None
    self_train_steps: int | None = None
    target_mode: Literal["offline", "online"] = "offline"
    offline_dtype: Literal["float32", "float16"] = "float32"
    offline_batch_size: int = 1
    offline_align_corners: bool = True
    offline_cache_mb: float = 256.0
    target_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    target_flip: bool = True
    target_image_interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    target_bg_score: float = 0.2
    target_scale_factor: float = 0.25
    loss_weight: float = 100.0


def _build_backbone(run_cfg: Any, c: SMAFConfig) -> nn.Module:
    cam = run_cfg.cam if run_cfg is not None else None
    return build_frozen_backbone(cam.backbone if cam is not None else "resnet38d_tiny",
                                 cam.pretrained if cam is not None else None,
                                 dict(cam.backbone_kwargs) if cam is not None else {}, c.frozen, c.freeze_bn)


@register_method
class SMAFMethod(CAMMethod):
    """SMAF: EPS pre-training (phase ``"eps"``) + self-training on fused multi-scale attention (``"self_train"``).

    Paper: Yang et al., "A Self-Training Framework Based on Multi-Scale Attention Fusion for Weakly Supervised
    Semantic Segmentation", arXiv 2305.05841, 2023; first stage: Lee et al., EPS, CVPR 2021.

    Gradients: phase ``"eps"`` trains ``net`` (minus the frozen layers); phase ``"self_train"`` trains ``net``
    (the student) only — ``teacher`` is a frozen copy made at the start of the phase and its fused maps are
    computed without autograd (offline: once per training image, stored under ``<cam>/fused_cams``).

    Shape:
        - batch["image"]: B×3×H×W; batch["labels"]: B×C; batch["saliency"]: B×1×H×W (``eps_saliency``);
          batch["valid"]: B×H×W (unpadded pixels, optional); ``target_mode: offline`` also needs
          batch["geom"]: B×9 (crop geometry,
          [`wsss_blocks.data.transforms.RecordGeometry`][wsss_blocks.data.transforms.RecordGeometry]) and batch["name"]
          (B image names)
        - cam_fn output: B×C×H/8×W/8 foreground softmax probabilities (background dropped)

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "smaf", "cam": {"backbone": "resnet38d_tiny"},
        ...     "method_args": {"eps_saliency": False, "frozen": ["conv1a"], "target_scales": [1.0],
        ...                     "target_mode": "online"}})
        >>> m = SMAFMethod(cfg, cfg.method_config(), 20)
        >>> m.on_phase_start(PhaseContext("eps", 0, 10, None, torch.device("cpu")))
        >>> batch = {"image": torch.randn(2, 3, 32, 32), "labels": torch.eye(20)[:2]}
        >>> sorted(m.training_step(batch, 0, 10))
        ['loss', 'loss_cls']
        >>> m.on_phase_start(PhaseContext("self_train", 1, 10, None, torch.device("cpu")))
        >>> sorted(m.training_step(batch, 0, 10)), tuple(m.cam_fn(torch.randn(1, 3, 32, 32)).shape)
        (['loss', 'loss_smaf'], (1, 20, 4, 4))
    """

    name = "smaf"
    cfg: SMAFConfig
    Config = SMAFConfig
    phases = ("eps", "self_train")
    cam_normalization = "max"
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": None, "pseudo_miou": 73.88, "val_miou": 72.4}
    paper_source = ("SMAF (arXiv'23) abstract: VOC val 72.4 (test 72.4), DeepLab-v2 R101, EPS saliency; pseudo "
                    "masks 73.88 on VOC train (1,464) with thr 0.2 + CRF from the authors' log (bupt-ai-cz/SMAF "
                    "SMAF/smaf/evalue_crf.out). No CAM-only number is reported.")

    def __init__(self, run_cfg: Any, method_cfg: SMAFConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        if c.loss_weight < 0 or not 0 < c.target_scale_factor <= 1 or c.target_bg_score <= 0:
            raise ValueError(f"need loss_weight >= 0, 0 < target_scale_factor <= 1 and target_bg_score > 0, got "
                             f"{c.loss_weight}, {c.target_scale_factor}, {c.target_bg_score}")
        if not c.target_scales or any(s <= 0 for s in c.target_scales):
            raise ValueError(f"method_args.target_scales must be positive, got {c.target_scales}")
        if c.eps_saliency and run_cfg is not None and getattr(run_cfg.data, "saliency_dir", None) is None:
            raise ValueError("SMAF with method_args.eps_saliency=true (the released EPS first stage) needs saliency "
                             "maps: set data.saliency_dir (PFAN maps in EPS), or method_args.eps_saliency=false for "
                             "the classification-only first stage (an inferred fallback, see the docs)")
        for name, v in (("eps_steps", c.eps_steps), ("self_train_steps", c.self_train_steps)):
            if v is not None and v < 1:
                raise ValueError(f"method_args.{name} must be >= 1 or null, got {v}")
        if c.target_mode not in ("offline", "online"):
            raise ValueError(f"method_args.target_mode must be 'offline' or 'online', got {c.target_mode!r}")
        if c.offline_dtype not in ("float32", "float16"):
            raise ValueError(f"method_args.offline_dtype must be 'float32' or 'float16', got {c.offline_dtype!r}")
        if c.offline_batch_size < 1 or c.offline_cache_mb < 0:
            raise ValueError(f"need method_args.offline_batch_size >= 1 and offline_cache_mb >= 0, got "
                             f"{c.offline_batch_size} and {c.offline_cache_mb}")
        self.net = SMAFNet(_build_backbone(run_cfg, c), num_classes, c.head, c.head_channels)
        self.teacher: SMAFNet | None = None
        self._phase = "eps"
        self._jitter: Any = None
        if c.eps_color_jitter is not None:
            from wsss_blocks.data.transforms import ColorJitter

            bri, con, sat, hue = c.eps_color_jitter
            self._jitter = ColorJitter(bri, con, sat, hue)
        data_cfg = getattr(run_cfg, "data", None)
        self._normalize: Normalization = data_normalization(data_cfg) if data_cfg is not None else "imagenet"
        self._progress = bool(getattr(getattr(run_cfg, "runtime", None), "progress", False))
        # offline targets: the stored maps, the un-augmented training set (to rebuild a missing map)
        self._fused_store: FusedMapStore | None = None
        self._fused_dataset: Any = None
        if c.freeze_bn:
            set_bn_eval(self.net)

    # ----------------------------------------------------------------------------------------- structure
    @override
    def train(self, mode: bool = True) -> SMAFMethod:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @override
    def phase_steps(self, phase: str, default_steps: int) -> int:
        v = self.cfg.eps_steps if phase == "eps" else self.cfg.self_train_steps
        return default_steps if v is None else int(v)

    def on_phase_start(self, ctx: PhaseContext) -> None:
        """``"eps"``: nothing to build.

        ``"self_train"``: freeze a copy of the network as the teacher and, with ``target_mode: offline`` on a fresh (not
        resuming) phase, store its fused map of every training image ([`precompute_fused_maps`][]; all ranks take part
        under DDP).
        """
        self._phase = ctx.phase
        if ctx.phase == "self_train":
            teacher = copy.deepcopy(self.net)
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = teacher.eval()
            if self.cfg.target_mode != "offline":
                return
            self._fused_store = self._store_at(Path(ctx.out_dir) / FUSED_DIR) if ctx.out_dir is not None else None
            self._fused_dataset = ctx.dataset
            if ctx.resuming:
                # the checkpoint's teacher weights are loaded after this hook: a map that is missing (deleted
                # files) is rebuilt from ctx.dataset when a batch needs it (_load_fused)
                if self._fused_store is not None and ctx.dataset is not None:  # training, not restore_method
                    self._fused_store.check_meta()
                return
            if ctx.dataset is None or self._fused_store is None:
                raise ValueError("SMAF with method_args.target_mode='offline' needs the training dataset and the "
                                 "CAM stage folder in the 'self_train' PhaseContext (dataset, out_dir) to store the "
                                 "teacher's fused maps; use target_mode='online' to fuse on each crop instead")
            self._fused_store.precompute(ctx.dataset, self._fuse_full_images, self._teacher_device(),
                                         self.cfg.offline_batch_size, show_progress=self._progress)

    @override
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        # PSA/EPS PolyOptimizer groups: backbone weights 1x (wd), biases 2x (no wd), cov_feat + fc8 10x (wd),
        # their (absent) biases 20x; BN is not optimised (frozen). The teacher is never optimised.
        return param_groups(self.net, base_lr, weight_decay=weight_decay, head_lr_mult=10.0,
                            backbone_prefixes=("backbone.",))

    # ----------------------------------------------------------------------------------------- training
    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        if self._phase == "self_train":
            return self._self_train_step(batch)
        return self._eps_step(batch)

    def _eps_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = batch["image"]
        if self._jitter is not None and "image01" in batch:
            images = self._jittered(batch)
        labels = batch["labels"].float()
        out = self.net(images)
        loss_cls = F.multilabel_soft_margin_loss(out["logits"][:, :-1], labels)
        if not self.cfg.eps_saliency:
            return {"loss": loss_cls, "loss_cls": loss_cls.detach()}
        sal = batch.get("saliency")
        if sal is None:
            raise ValueError("SMAF with eps_saliency=true got a batch without 'saliency'; set data.saliency_dir or "
                             "method_args.eps_saliency=false")
        loss_sal = eps_saliency_loss(out["cams"], sal, labels, self.cfg.eps_tau, self.cfg.eps_lambda)
        return {"loss": loss_cls + loss_sal, "loss_cls": loss_cls.detach(), "loss_sal": loss_sal.detach()}

    def _jittered(self, batch: dict[str, Any]) -> Tensor:
        """EPS colour jitter on each crop (global torch RNG, checkpointed by the loop), padding kept at 0."""
        from wsss_blocks.data.normalization import normalize_images

        img01 = batch["image01"].float()
        out = torch.stack([self._jitter({"image": im})["image"] for im in img01])
        x = normalize_images(out, self._normalize)
        valid = batch.get("valid")
        if valid is not None:
            x = x * valid[:, None].to(x.dtype)
        return x.to(batch["image"].dtype)

    def _teacher_fused(self, images: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """Released fusion with the teacher.

        Per-pass softmax over C+1, background dropped, bilinear upsampling, class mask, sum over scales and flips;
        ``valid`` zeroes padded pixels; per-class max + 1e-5.
        """
        if self.teacher is None:
            raise RuntimeError("the SMAF teacher exists only in the 'self_train' phase")
        c = self.cfg
        fused = multiscale_attention_fusion(
            self.teacher.cam_logits, images, labels, scales=tuple(c.target_scales), flip=c.target_flip,
            activation="softmax", bg_channel="last", reduce="sum", normalize="none",
            image_interpolation=c.target_image_interpolation, no_grad=True, eval_mode=False)
        fused = fused.float()
        if valid is not None:
            fused = fused * valid[:, None].to(fused.dtype)
        return fused / (fused.amax(dim=(-2, -1), keepdim=True) + 1e-5)

    def fused_target(self, images: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """``target_mode: online``: the teacher's denoised, reactivated target fused on the crop itself.

        At ``target_scale_factor`` of the crop (background first).

        Fusion on the crop (see the module docstring): per-pass softmax over C+1, background dropped, bilinear
        upsampling, class mask, sum over scales and flips; padded pixels zeroed; per-class max over the crop.
        """
        fused = self._teacher_fused(images, labels, valid)
        c = self.cfg
        return smaf_target(fused, labels, bg_score=c.target_bg_score, scale_factor=c.target_scale_factor,
                           align_corners=True)

    # ----------------------------------------------------------------------------------------- offline maps
    def _fused_meta(self) -> dict[str, Any]:
        c = self.cfg
        return {"format": "present classes (ascending), C_present x H x W, per-class max normalised",
                "num_classes": int(self.num_classes), "scales": [float(v) for v in c.target_scales],
                "flip": bool(c.target_flip), "image_interpolation": c.target_image_interpolation,
                "normalize": json.loads(json.dumps(self._normalize)), "dtype": c.offline_dtype}

    def _store_at(self, folder: str | Path) -> FusedMapStore:
        return FusedMapStore(folder, self._fused_meta(), self.cfg.offline_dtype, self.cfg.offline_cache_mb)

    def _fuse_full_images(self, image01: Tensor, labels: Tensor) -> Tensor:
        """The teacher's fused maps of un-augmented images in [0, 1] (float32, also inside an AMP step)."""
        from wsss_blocks.data.normalization import normalize_images

        with torch.autocast(device_type=image01.device.type, enabled=False):
            return self._teacher_fused(normalize_images(image01, self._normalize), labels)

    def _teacher_device(self) -> torch.device:
        if self.teacher is None:
            raise RuntimeError("the SMAF teacher exists only in the 'self_train' phase")
        return next(self.teacher.parameters()).device

    def precompute_fused_maps(self, dataset: Any, folder: str | Path) -> int:
        """Store the teacher's fused map of every image of ``dataset`` under ``folder`` (released offline step).

        For each image (full resolution, not augmented): the released multi-scale fusion (scales
        ``target_scales`` × flips, softmax before upsampling, class mask, sum) and the per-class max over the
        **whole image** (SMAF ``gen_fused_cam.py`` lines 195–206); the present classes (ascending) are written
        as one ``C_present × H × W`` array of ``offline_dtype`` to ``folder/<name>.npy`` (atomic), see
        [`wsss_blocks.train.smaf_store.FusedMapStore`][wsss_blocks.train.smaf_store.FusedMapStore]. Existing files are
        skipped, so an interrupted run resumes. Under DDP every rank does its share and all wait at a barrier.
        ``folder/meta.json`` records the settings and is checked on later runs.

        Returns:
            The number of maps this rank wrote.
        """
        store = self._store_at(folder)
        return store.precompute(dataset, self._fuse_full_images, self._teacher_device(),
                                self.cfg.offline_batch_size, show_progress=self._progress)

    def _load_fused(self, name: str, index: int | None) -> Tensor:
        """The stored map of one image (C_present × H × W, float32, CPU); rebuilt if the file is missing."""
        store = self._fused_store
        if store is None:
            raise ValueError("SMAF offline targets need the stored fused maps, but the 'self_train' phase started "
                             "without an output folder (PhaseContext.out_dir); use target_mode='online' or start "
                             "the phase through train_cam")
        rebuild = None
        if self._fused_dataset is not None and index is not None:
            dataset, i = self._fused_dataset, int(index)

            def rebuild() -> int:
                return store.fill(dataset, [i], self._fuse_full_images, self._teacher_device(),
                                  self.cfg.offline_batch_size)

        return store.load(name, rebuild)

    def offline_target(self, labels: Tensor, geom: Tensor, names: Sequence[str],
                       indices: Sequence[int] | None = None) -> Tensor:
        """``target_mode: offline``: each crop's target cut from its image's stored full-image map.

        The map (present classes) is resized to the crop's random-resized size (bilinear,
        ``align_corners=offline_align_corners``, released True), flipped, cropped with zero padding
        ([`wsss_blocks.data.transforms.apply_geometry`][wsss_blocks.data.transforms.apply_geometry]), then denoised and
        reactivated at ``target_scale_factor`` of the crop: padded pixels get a one-hot background target.

        Shape:
            - labels: B×C; geom: B×9 (``batch["geom"]``); names: B strings
            - output: B×(C+1)×h×w (background first), h×w = ``target_scale_factor`` × the crop size
        """
        from wsss_blocks.data.transforms import GEOMETRY_FIELDS, apply_geometry

        if geom.ndim != 2 or geom.shape[1] != len(GEOMETRY_FIELDS) or geom.shape[0] != labels.shape[0]:
            raise ValueError(f"batch['geom'] must be B×{len(GEOMETRY_FIELDS)} {GEOMETRY_FIELDS} for B = "
                             f"{labels.shape[0]}, got shape {tuple(geom.shape)}")
        if len(names) != labels.shape[0]:
            raise ValueError(f"batch['name'] must hold {labels.shape[0]} names, got {len(names)}")
        g = geom.detach().cpu().long()
        sizes = {(int(r[7]), int(r[8])) for r in g}
        if len(sizes) != 1:
            raise ValueError(f"the crops of one batch must have one size, got {sorted(sizes)}")
        ch, cw = sizes.pop()
        C = labels.shape[1]
        lab = labels.detach().float().cpu()
        maps = torch.zeros(labels.shape[0], C, ch, cw)
        for b in range(labels.shape[0]):
            present = torch.nonzero(lab[b] > 0.5).flatten()
            arr = self._load_fused(str(names[b]), None if indices is None else int(indices[b]))
            oh, ow = int(g[b, 0]), int(g[b, 1])
            if arr.ndim != 3 or arr.shape[0] != present.numel() or tuple(arr.shape[1:]) != (oh, ow):
                raise ValueError(f"stored SMAF fused map of {names[b]!r} has shape {tuple(arr.shape)}, but the "
                                 f"image has {present.numel()} present classes and size ({oh}, {ow}); the map "
                                 f"folder belongs to another dataset or run")
            if present.numel():
                maps[b, present] = apply_geometry(arr, g[b], mode="bilinear",
                                                  align_corners=self.cfg.offline_align_corners, pad_value=0.0)
        c = self.cfg
        maps = maps.to(labels.device)
        return smaf_target(maps, labels.float(), bg_score=c.target_bg_score, scale_factor=c.target_scale_factor,
                           align_corners=True)

    def _self_train_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = batch["image"]
        labels = batch["labels"].float()
        if self.cfg.target_mode == "offline":
            geom = batch.get("geom")
            if geom is None or "name" not in batch:
                raise ValueError("SMAF with method_args.target_mode='offline' needs batch['geom'] (the crop "
                                 "geometry recorded by the CAM augmentation: Compose(..., record_geometry=True) or "
                                 "RecordGeometry) and batch['name']; got keys " + str(sorted(batch)) +
                                 "; use target_mode='online' for batches without geometry")
            index = batch.get("index")
            idx = [int(i) for i in index] if index is not None else None
            names = list(batch["name"]) if not isinstance(batch["name"], str) else [batch["name"]]
            target = self.offline_target(labels, geom, names, idx)
        else:
            target = self.fused_target(images, labels, batch.get("valid"))
        logits = self.net.cam_logits(images)
        loss = smaf_loss(logits.float(), target, weight=self.cfg.loss_weight, bg_channel="last", align_corners=True)
        return {"loss": loss, "loss_smaf": loss.detach()}

    # ----------------------------------------------------------------------------------------- inference
    def cam_fn(self, images: Tensor) -> Tensor:
        """Per-pass softmax over the C+1 channels with the background (last) dropped (SMAF fusion order)."""
        return torch.softmax(self.net.cam_logits(images).float(), dim=1)[:, :-1]
