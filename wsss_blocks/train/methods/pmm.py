"""PMM in the reference trainer: stages A, B and C of the release, multi-crop CAMs and proportional pseudo-masks.

Li, Kuang, Liu, Chen, Zhang, "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation", ICCV 2021
(official code Eli-YiLi/PMM and Eli-YiLi/WSSS_MMSeg).

The CAM stage runs the release's ``run.py`` stages as phases (``method_args.stages``; VOC ``"ABC"``, COCO ``"C"``):

- **stage A** (phase ``"stage_a"``, ``pipeline/train_cam.py`` with ``network/resnet38_SEAM.py``): ResNet-38 (b7
  dilation 2, conv1a/b2 frozen, frozen BN) with the SEAM head — fc8 (K = C + 1 channels, **background first**,
  behind Dropout2d 0.5) and the PCM, whose output ``cam_rv`` refines the detached, normalised, arg-max-suppressed
  CAM. Each batch runs at full size and downscaled ×0.3; the loss is ``L_cls + L_minpool + L_er + L_ecr``
  (classification on GAP of fc8, PMM's adaptive min-pooling on ``cam_rv``, the equivariance L1 between the two
  scales, and the top-20 % equivariant cross regularisation).
- **stage B** (start of phase ``"stage_c"``, ``pipeline/infer_multi_scale.py``): the stage-A network's multi-scale
  + flip CAMs of every training image (`wsss_blocks.multi_crop.rough_mask_cams`) and the joint dense CRF over
  ``[(1 - max A)^24, A_present]`` (`wsss_blocks.multi_crop.rough_masks`); the confident regions (posterior > 0.9)
  are stored once per image under ``<cam>/rough_masks`` (atomic, resumable, each DDP rank its share).
- **stage C** (phase ``"stage_c"``, ``tool/data.py`` ``VOC12ClsHeatCropDataset``): a new SEAM network (the release:
  ScaleNet-101, ``network/scalenet_SEAM.py``; conv1/bn1/layer1 frozen, frozen BN, no dropout) trained with the same
  loss on **tiles**: per image and step one scale of `wsss_blocks.multi_crop.multi_crop_boxes` is drawn, then
  tiles until one has a non-empty label re-derived from the rough masks (`wsss_blocks.multi_crop.tile_labels`); the
  tile is flipped, colour-jittered and resized to 448×448. With ``stages: "C"`` (COCO) stage C trains on the
  stage-A augmentation's random crops instead, as released.
- **CAMs** (`PMMMethod.infer_cams`): multi-crop inference of the stage-C network
  (`wsss_blocks.multi_crop.multi_crop_cams`, ``pipeline/infer_multi_crop.py``: every tile of every scale and its
  mirror, averaged back into the image, per-class min-max) with ``cam_inference: multi_crop``; the PCM output
  ``cam_rv`` of the foreground channels in both cases.
- **Pseudo masks**: the configs' chain ``pseudo.post: [cov]``, ``pseudo.rule: ppmg``
  (`wsss_blocks.pseudo_mask.proportional_pseudo_mask`, `wsss_blocks.train.pipeline`) — CoV smoothing, per-class
  binary dense CRF foregrounds (on the BGR image, as released) with the background ``(1 − Ã_c)^11`` and overlaps
  resolved by each pixel's share of its class's CAM mass.
- **Segmentation** (seg-stage keys): PSPNet with Res2Net-101 and ``seg.loss: puf`` (pretended under-fitting:
  β = k = 0.5 on VOC, 0.8 on COCO), cyclic pseudo-masks as a seg-stage round (see ``docs/trainer_methods.md``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks.cam import normalize_cams
from wsss_blocks.crf import DenseCRF
from wsss_blocks.data.normalization import data_normalization, normalize_images
from wsss_blocks.data.transforms import ColorJitter, Compose, JointTransform, RandomHorizontalFlip, Resize
from wsss_blocks.losses import adaptive_min_pooling_loss
from wsss_blocks.models import (
    LoadReport,
    SEAMNet,
    build_frozen_backbone,
    is_random_init,
    load_pretrained,
    set_bn_eval,
)
from wsss_blocks.models.resnet38 import SEAM_LOAD_REASONS
from wsss_blocks.multi_crop import (
    PMM_CROP_SCALES,
    ROUGH_MASK_CRF,
    multi_crop_cams,
    rough_mask_cams,
    rough_masks,
    sample_multi_crop_tile,
)

from . import register_method
from .base import CAMMethod, PhaseContext

__all__ = ["PMMConfig", "PMMMethod", "RoughMaskStore", "MultiCropTile"]


def _max_onehot(x: Tensor) -> Tensor:
    """SEAM ``max_onehot``: zero every foreground channel (1..K−1) below the per-pixel foreground max.

    Channel 0 (background) is kept. Ties keep every maximal channel, as released.
    """
    fg = x[:, 1:]
    fg = fg * (fg == fg.amax(dim=1, keepdim=True)).to(fg.dtype)
    return torch.cat([x[:, :1], fg], dim=1)


@dataclass
class PMMConfig:
    """Arguments of PMM (defaults = the release).

    Attributes:
        frozen: backbone modules without gradient (``resnet38_SEAM.py``: conv1a, b2, b2_1, b2_2).
        freeze_bn: frozen BatchNorm (released).
        b7_dilation: dilation of ResNet-38's b7 (SEAM/PMM 2).
        dropout: Dropout2d rate in front of fc8 (0.5).
        view_scale_factor: scale factor of the second, downscaled view (0.3, ``train_cam.py``).
        min_pool_weight, er_weight, ecr_weight: loss weights (all 1 in the release).
        ecr_topk: fraction of the largest ECR entries averaged (0.2).
        cam_source: ``"pcm"`` (``cam_rv``, released) or ``"fc8"`` (plain CAM) for inference.
        stages: which ``run.py`` stages the CAM stage runs: ``"ABC"`` (VOC release: stage A, rough masks, stage C on
            tiles), ``"C"`` (COCO release: only stage C, on the random crops of the ``cam`` augmentation; the
            ``cam.backbone`` network is not built) or ``"A"`` (stage A only).
        cam_inference: ``"multi_crop"`` (released, stages D/E) or ``"multi_scale"`` (``pseudo.scales`` + flip).
        rough_mask_scales: stage-B inference scales (0.5, 1, 1.5, 2 with flips; ``infer_multi_scale.py``).
        rough_mask_alpha: background power of the stage-B joint CRF (``--crf_threshs`` 24).
        rough_mask_crf: that CRF (``{preset: psa}``: ``tool/imutils.py`` ``crf_inference``, Gaussian 3/3,
            bilateral 80/13/10).
        tile_fg_threshold: a class's confident rough-mask region is posterior > 0.9 (``update_label``).
        tile_match_threshold: ``label_match_thresh`` 0.1.
        crop_scales: tile scales (``--scales`` 0.75 … 3, step 0.25), for stage-C training and multi-crop inference.
        crop_size: edge tile and network input size (448).
        crop_stride: tile grid step (``--stride`` 300).
        tile_hflip, tile_color_jitter: the tile augmentation (flip, ColorJitter 0.3/0.3/0.3/0.1; ``train_cam.py``).
        multi_crop_batch_size: tiles per network call in multi-crop inference (speed only).
        stage_c_backbone: the stage-C network's backbone (``scalenet101``; ``network/scalenet_SEAM.py``).
        stage_c_pretrained: its initialisation (``scalenet101-imagenet``, ``run.py:125``); ``none`` = random.
        stage_c_backbone_kwargs: backbone arguments (ScaleNet's CAM network: dilations 1, 1, 1, 1).
        stage_c_frozen: backbone modules without gradient (``not_training``: conv1, bn1, layer1).
        stage_c_freeze_bn: frozen BatchNorm (released).
        stage_c_dropout: Dropout2d before fc8 (ScaleNet SEAM: none).
        stage_c_batch_size: 16 (VOC, ``run.py:123``; COCO 8).
        stage_c_epochs: 20 (``run.py:124``).
        stage_c_steps: optimizer steps of stage C (``null`` = ``stage_c_epochs`` epochs).
        stage_c_lr: stage-C learning rate (``null`` = ``cam.lr``; released 0.02 VOC, 0.01 COCO).

    PPMG's arguments live in the pseudo-mask chain: ``pseudo.args.cov`` and ``pseudo.args.ppmg``.
    """

    frozen: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")
    freeze_bn: bool = True
    b7_dilation: int = 2
    dropout: float = 0.5
    view_scale_factor: float = 0.3
    min_pool_weight: float = 1.0
    er_weight: float = 1.0
    ecr_weight: float = 1.0
    ecr_topk: float = 0.2
    cam_source: Literal["pcm", "fc8"] = "pcm"
    stages: Literal["ABC", "C", "A"] = "ABC"
    cam_inference: Literal["multi_crop", "multi_scale"] = "multi_crop"
    rough_mask_scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    rough_mask_alpha: float = 24.0
    rough_mask_crf: dict[str, Any] = field(default_factory=lambda: {"preset": ROUGH_MASK_CRF})
    tile_fg_threshold: float = 0.9
    tile_match_threshold: float = 0.1
    crop_scales: tuple[float, ...] = PMM_CROP_SCALES
    crop_size: int = 448
    crop_stride: int = 300
    tile_hflip: bool = True
    tile_color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)
    multi_crop_batch_size: int = 16
    stage_c_backbone: str = "scalenet101"
    stage_c_pretrained: str | None = "scalenet101-imagenet"
    stage_c_backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    stage_c_frozen: tuple[str, ...] = ("conv1", "bn1", "layer1")
    stage_c_freeze_bn: bool = True
    stage_c_dropout: float = 0.0
    stage_c_batch_size: int = 16
    stage_c_epochs: int = 20
    stage_c_steps: int | None = None
    stage_c_lr: float | None = None


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


ROUGH_MASK_DIR = "rough_masks"


class RoughMaskStore:
    """PMM's stage-B rough masks on disk: per training image, its confident regions as a label PNG.

    ``<folder>/<name>.png`` holds ``c + 1`` where the stage-B CRF posterior of present class ``c`` exceeds
    ``fg_threshold`` (0.9) and 0 elsewhere (the posteriors sum to 1, so at most one class is confident at a
    pixel); that is all `wsss_blocks.multi_crop.tile_labels` reads of them. ``<folder>/meta.json`` records the
    settings; a later run with other settings is refused instead of training on stale masks. Files are written
    atomically and existing ones kept, so an interrupted stage B resumes; under DDP every rank writes its share.

    Args:
        folder: where the masks live (``<cam stage>/rough_masks``).
        meta: the settings they are made with.

    Examples:
        >>> import tempfile
        >>> store = RoughMaskStore(tempfile.mkdtemp(), {"alpha": 24})
        >>> make = lambda image01, labels: torch.ones(image01.shape[0], *image01.shape[-2:], dtype=torch.uint8)
        >>> data = [{"name": "a", "image": torch.rand(3, 4, 5), "labels": torch.tensor([1.0])}]
        >>> store.precompute(data, make, torch.device("cpu"))
        1
        >>> store.load("a").shape
        torch.Size([4, 5])
    """

    def __init__(self, folder: str | Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = json.loads(json.dumps(meta))

    def path(self, name: str) -> Path:
        """The file of image ``name``."""
        return self.folder / f"{name}.png"

    def check_meta(self) -> None:
        """Raise ``ValueError`` if ``meta.json`` exists and records other settings."""
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            found = json.loads(meta_path.read_text())
            if found != self.meta:
                diff = {k: (found.get(k), self.meta.get(k)) for k in sorted(set(found) | set(self.meta))
                        if found.get(k) != self.meta.get(k)}
                raise ValueError(f"the PMM rough masks in {str(self.folder)!r} were made with other settings "
                                 f"(stored, now): {diff}; delete that folder or restore the settings")

    def precompute(self, dataset: Any, make: Any, device: torch.device, show_progress: bool = False) -> int:
        """Write the masks of ``dataset``'s images that are missing (each DDP rank its share, then a barrier).

        ``make(image01 B×3×H×W, labels B×C) -> B×H×W`` uint8 confident-region maps. Returns the number this rank
        wrote.
        """
        from wsss_blocks.data.io import atomic_write, save_label_png
        from wsss_blocks.train.datasets import iter_inference_batches
        from wsss_blocks.train.distributed import DistEnv, barrier, shard_indices
        from wsss_blocks.train.reporting import progress_bar

        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.check_meta()
        if rank == 0 and not (self.folder / "meta.json").is_file():
            with atomic_write(self.folder / "meta.json", "w", fsync=False) as f:
                f.write(json.dumps(self.meta, indent=1))
        mine = shard_indices(len(dataset), rank, world)
        names = getattr(dataset, "names", None)
        if names is not None:  # skip finished images without loading them
            mine = [i for i in mine if not self.path(str(names[i])).is_file()]
        written = 0
        pbar = progress_bar(len(mine), "pmm:rough_masks", show_progress and rank == 0 and bool(mine))
        try:
            for batch in iter_inference_batches(dataset, DistEnv(), 1, indices=mine):
                group = [g for g in batch if not self.path(str(g["name"])).is_file()]
                if not group:
                    continue
                image01 = torch.stack([g["image"] for g in group]).to(device).float()
                labels = torch.stack([g["labels"] for g in group]).float().to(device)
                maps = make(image01, labels)
                for g, m in zip(group, maps):
                    save_label_png(self.path(str(g["name"])), m.to(torch.uint8).cpu().numpy(), palette=False,
                                   fsync=False)
                written += len(group)
                pbar.update(len(group))
        finally:
            pbar.close()
        barrier()
        return written

    def load(self, name: str) -> Tensor:
        """The H×W int64 confident-region map of image ``name``."""
        from wsss_blocks.data.io import load_label_png

        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"PMM rough mask {str(path)!r} is missing; rerun stage B (delete the CAM stage's "
                                    f"stage_c checkpoints, or the whole CAM stage)")
        return torch.from_numpy(load_label_png(path))


class MultiCropTile(JointTransform):
    """Replace a training sample by one PMM tile with its re-derived labels (``VOC12ClsHeatCropDataset``).

    Loads the image's rough mask from ``store``, draws a tile with
    `wsss_blocks.multi_crop.sample_multi_crop_tile` (one scale uniformly, then tiles until one has a non-empty
    label; released rule), and crops the image to it; ``labels`` become the tile's labels. Flip, colour jitter and
    the resize to the network input follow in the pipeline, as released.

    Shape:
        - image ``(3, H, W)`` -> ``(3, y2 - y1, x2 - x1)``; ``labels`` ``(C,)`` -> ``(C,)``
    """

    def __init__(self, store: RoughMaskStore, scales: Sequence[float], crop_size: int, stride: int,
                 fg_threshold: float, match_threshold: float) -> None:
        super().__init__(None)
        self.store = store
        self.scales = tuple(float(v) for v in scales)
        self.crop_size, self.stride = int(crop_size), int(stride)
        self.fg_threshold, self.match_threshold = float(fg_threshold), float(match_threshold)

    @override
    def apply(self, sample: dict[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        labels = sample["labels"].float()
        region = self.store.load(str(sample["name"]))
        img = sample["image"]
        if tuple(region.shape) != tuple(img.shape[-2:]):
            raise ValueError(f"the rough mask of {sample['name']!r} is {tuple(region.shape)}, the image "
                             f"{tuple(img.shape[-2:])}; the rough masks belong to other images (delete them)")
        present = labels.nonzero().flatten()
        # tile_labels reads the present classes' regions only: build the probabilities of those alone (an image
        # without classes gets one empty channel, so its tiles keep an all-zero label, as released)
        regions = (region[None] == (present + 1)[:, None, None]).float() if present.numel() else \
            torch.zeros(1, *region.shape)
        probs = torch.cat([torch.zeros(1, *region.shape), regions])
        (x1, y1, x2, y2), sub = sample_multi_crop_tile(
            probs, torch.ones(regions.shape[0]), self.scales, crop_size=self.crop_size, stride=self.stride,
            fg_threshold=self.fg_threshold, match_threshold=self.match_threshold, generator=generator)
        tile_labels = torch.zeros_like(labels)
        if present.numel():
            tile_labels[present] = sub
        sample["image"] = img[..., y1:y2, x1:x2]
        sample["labels"] = tile_labels
        for key in ("mask", "saliency", "geom"):
            sample.pop(key, None)
        return sample


@register_method
class PMMMethod(CAMMethod):
    """PMM: stages A (SEAM ResNet-38), B (rough masks) and C (multi-crop SEAM network), multi-crop CAMs, PPMG.

    Paper: Li et al., "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation", ICCV 2021.
    Release: Eli-YiLi/PMM (CAM, PPMG), Eli-YiLi/WSSS_MMSeg (PUF, cyclic pseudo-masks).

    Phases (`PMMMethod.phases`): ``("stage_a", "stage_c")`` with ``stages: "ABC"``, ``("stage_c",)`` with ``"C"``,
    ``("stage_a",)`` with ``"A"``. Stage B runs at the start of ``"stage_c"`` (the rough masks are stored once).
    ``net`` is the stage-A network (``cam.backbone``, ``cam.pretrained``), ``net_c`` the stage-C network
    (``method_args.stage_c_*``), built when its phase starts; CAMs come from the last network trained.

    Shape:
        - batch["image"]: B×3×H×W; batch["labels"]: B×C
        - cam_fn output: B×C×H/8×W/8 (``cam_rv`` foreground channels), non-negative
        - infer_cams output (multi-crop): B×C×H×W, per-class min-max normalised

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "pmm", "cam": {"backbone": "resnet38d_tiny"},
        ...                        "method_args": {"frozen": ["conv1a"], "stages": "A"}})
        >>> m = PMMMethod(cfg, cfg.method_config(), 20)
        >>> out = m.training_step({"image": torch.randn(2, 3, 64, 64), "labels": torch.eye(20)[:2]}, 0, 10)
        >>> sorted(out), m.phases
        (['loss', 'loss_cls', 'loss_ecr', 'loss_er', 'loss_minpool'], ('stage_a',))
        >>> tuple(m.cam_fn(torch.randn(1, 3, 64, 64)).shape)
        (1, 20, 8, 8)
    """

    name = "pmm"
    Config = PMMConfig
    cfg: PMMConfig
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": 57.81, "pseudo_miou": 61.49, "val_miou": 70.0}
    paper_numbers_by_dataset: ClassVar[dict[str, dict[str, float | None]]] = {
        "voc": {"cam_miou": 57.81, "pseudo_miou": 61.49, "val_miou": 70.0},
        "coco": {"cam_miou": None, "pseudo_miou": None, "val_miou": 40.2},
    }
    paper_source = ("PMM (ICCV'21): CAM 57.81 = ScaleNet-101 multi-crop test (Table 1 via Eli-YiLi/PMM issue #7; "
                    "ResNet-38d 53.93), PPMG 61.49 on VOC *val* (Table 2 via Eli-YiLi/PMM issue #13), val 70.0 = "
                    "Res2Net-101 PSPNet (abstract; ResNet-38 PSPNet 68.5); COCO val 40.2")
    cam_normalization = "minmax"

    def __init__(self, run_cfg: Any, method_cfg: PMMConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        if not 0.0 < c.view_scale_factor < 1.0:
            raise ValueError(f"method_args.view_scale_factor must be in (0, 1), got {c.view_scale_factor}")
        if not 0.0 < c.ecr_topk <= 1.0:
            raise ValueError(f"method_args.ecr_topk must be in (0, 1], got {c.ecr_topk}")
        if c.rough_mask_alpha <= 0:
            raise ValueError(f"method_args.rough_mask_alpha must be > 0, got {c.rough_mask_alpha}")
        for key in ("crop_size", "crop_stride", "multi_crop_batch_size", "stage_c_batch_size", "stage_c_epochs"):
            if int(getattr(c, key)) < 1:
                raise ValueError(f"method_args.{key} must be >= 1, got {getattr(c, key)}")
        if not c.crop_scales or min(c.crop_scales) <= 0 or not c.rough_mask_scales or min(c.rough_mask_scales) <= 0:
            raise ValueError(f"method_args.crop_scales and rough_mask_scales must be positive, got "
                             f"{list(c.crop_scales)} and {list(c.rough_mask_scales)}")
        self.phases = self.phases_for(c)
        self._phase = self.phases[0]
        self.net: SEAMNet | None = None
        self.net_c: SEAMNet | None = None
        self.init_report: LoadReport | None = None
        self.stage_c_init_report: LoadReport | None = None
        self._rough: RoughMaskStore | None = None
        if "stage_a" in self.phases:
            cam = run_cfg.cam if run_cfg is not None else None
            bb = build_frozen_backbone(cam.backbone if cam is not None else "resnet38d_tiny", None,
                                       dict(cam.backbone_kwargs) if cam is not None else {}, c.frozen, c.freeze_bn,
                                       b7_dilation=c.b7_dilation)
            self.net = SEAMNet(bb, num_classes, dropout=c.dropout)
            # The release loads its init (resnet38_SEAM.pth: backbone, fc8 and the PCM's f8_3/f8_4/f9) with
            # strict=False into the whole SEAM network (PMM pipeline/train_cam.py:91-97), so all of it is used;
            # an ImageNet ResNet-38 fills the backbone only. init_report lists every key.
            pre = cam.pretrained if cam is not None else None
            self.init_report = None if is_random_init(pre) else load_pretrained(
                self.net, cast(Any, pre), "seam_resnet38", allow_missing=("fc8.", "pcm."), reasons=SEAM_LOAD_REASONS)
        self._rough_crf = DenseCRF.from_config(c.rough_mask_crf)
        self.train()

    # ------------------------------------------------------------------ structure
    @classmethod
    @override
    def phases_for(cls, method_cfg: Any) -> tuple[str, ...]:
        return {"ABC": ("stage_a", "stage_c"), "C": ("stage_c",), "A": ("stage_a",)}[str(method_cfg.stages)]

    @classmethod
    @override
    def uses_cam_backbone(cls, method_cfg: Any) -> bool:
        return "A" in str(method_cfg.stages)

    @classmethod
    @override
    def extra_weights(cls, method_cfg: Any) -> list[tuple[str, str | None, str]]:
        if "C" not in str(method_cfg.stages):
            return []
        return [("method_args.stage_c_pretrained", method_cfg.stage_c_pretrained, method_cfg.stage_c_backbone)]

    def _build_stage_c(self, load_init: bool) -> SEAMNet:
        c = self.cfg
        bb = build_frozen_backbone(c.stage_c_backbone, None, dict(c.stage_c_backbone_kwargs), c.stage_c_frozen,
                                   c.stage_c_freeze_bn)
        net = SEAMNet(bb, self.num_classes, dropout=c.stage_c_dropout)
        if load_init and not is_random_init(c.stage_c_pretrained):
            init: Any = c.stage_c_pretrained
            if init == "synthetic":  # synthetic presets: the backbone pretrained on a disjoint synthetic set (cached)
                import torch.distributed as dist

                from wsss_blocks.data.normalization import data_normalization
                from wsss_blocks.train.distributed import DistEnv
                from wsss_blocks.train.synthetic_pretrain import synthetic_backbone_weights

                if self.run_cfg is None:
                    raise ValueError("method_args.stage_c_pretrained: 'synthetic' needs the run config")
                # every rank starts stage C together: the main rank pretrains, the others wait (DDP)
                env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size()) \
                    if dist.is_available() and dist.is_initialized() else None
                init = synthetic_backbone_weights(self.run_cfg, c.stage_c_backbone, c.stage_c_backbone_kwargs,
                                                  data_normalization(self.run_cfg.data),
                                                  "method_args.stage_c_pretrained", env)
            # network/scalenet_SEAM.py loads the ImageNet ScaleNet with strict=False: the backbone is filled, fc8
            # and the PCM keep their initialisation, the ImageNet classifier is unused
            self.stage_c_init_report = load_pretrained(net.backbone, init, ignore_unexpected=("fc.",))
        return net

    @property
    def active_net(self) -> SEAMNet:
        """The network the current phase trains (stage C's once it exists)."""
        net = self.net_c if self._phase == "stage_c" and self.net_c is not None else self.net
        if net is None:
            raise RuntimeError("PMM's stage-C network is built when phase 'stage_c' starts (on_phase_start)")
        return net

    @property
    def cam_net(self) -> SEAMNet:
        """The network CAMs are inferred with: the last one trained (stage C's when the run has it)."""
        net = self.net_c if self.net_c is not None else self.net
        assert net is not None
        return net

    @override
    def train(self, mode: bool = True) -> PMMMethod:
        nn.Module.train(self, mode)
        if self.net is not None and self.cfg.freeze_bn:
            set_bn_eval(self.net)
        if self.net_c is not None and self.cfg.stage_c_freeze_bn:
            set_bn_eval(self.net_c)
        return self

    @override
    def phase_optim(self, phase: str, optim: Any) -> Any:
        if phase != "stage_c":
            return optim
        c = self.cfg
        return dataclasses.replace(optim, batch_size=c.stage_c_batch_size, epochs=c.stage_c_epochs,
                                   steps=c.stage_c_steps, lr=optim.lr if c.stage_c_lr is None else c.stage_c_lr)

    def _rough_store(self, out_dir: Path) -> RoughMaskStore:
        c = self.cfg
        return RoughMaskStore(out_dir / ROUGH_MASK_DIR, {
            "format": "confident regions: c + 1 where the stage-B CRF posterior of present class c > fg_threshold",
            "scales": list(c.rough_mask_scales), "alpha": c.rough_mask_alpha, "crf": dict(c.rough_mask_crf),
            "fg_threshold": c.tile_fg_threshold})

    @override
    def on_phase_start(self, ctx: PhaseContext) -> None:
        """Stage C: stage B (the rough masks, unless resuming), then the stage-C network, with the stage-A one frozen.

        All ranks take part in stage B (each writes its share of the images, then a barrier).
        """
        self._phase = ctx.phase
        if ctx.phase != "stage_c":
            return
        if self.net is not None:  # stage A is done: its network only made the rough masks
            self.net.requires_grad_(False)
        tiles = self.cfg.stages == "ABC"
        if tiles and ctx.out_dir is not None:
            self._rough = self._rough_store(Path(ctx.out_dir))
            self._rough.check_meta()
            if not ctx.resuming:
                if ctx.dataset is None:
                    raise ValueError("PMM's stage B needs the training dataset in the 'stage_c' PhaseContext (train "
                                     "the CAM stage through train_cam)")
                self._rough.precompute(ctx.dataset, self.make_rough_masks, ctx.device,
                                       show_progress=bool(getattr(getattr(self.run_cfg, "runtime", None),
                                                                  "progress", False)))
        if self.net_c is None:
            self.net_c = self._build_stage_c(load_init=not ctx.resuming).to(ctx.device)
        self.train(self.training)

    @torch.no_grad()
    def make_rough_masks(self, image01: Tensor, labels: Tensor) -> Tensor:
        """PMM's stage B for a batch: B×H×W uint8 confident regions (``c + 1`` where posterior_c > 0.9, else 0).

        Multi-scale + flip CAMs of the stage-A network (`wsss_blocks.multi_crop.rough_mask_cams`), then the
        joint dense CRF over ``[(1 - max A)^alpha, A_present]`` (`wsss_blocks.multi_crop.rough_masks`).
        """
        if self.net is None:
            raise RuntimeError("PMM's stage B needs the stage-A network (method_args.stages 'ABC')")
        c = self.cfg
        was_training = self.training
        self.eval()
        try:
            x = normalize_images(image01, data_normalization(self.run_cfg.data) if self.run_cfg is not None
                                 else "imagenet")
            cams = rough_mask_cams(lambda z: self._maps(self.net, z), x, labels, tuple(c.rough_mask_scales))
            post = rough_masks(cams, labels, image01.clamp(0, 1), alpha=c.rough_mask_alpha, crf=self._rough_crf)
        finally:
            self.train(was_training)
        conf = post[:, 1:] > c.tile_fg_threshold  # at most one class per pixel (the posteriors sum to 1)
        region = (conf.float() * torch.arange(1, conf.shape[1] + 1, device=conf.device)[None, :, None, None]).amax(1)
        return region.to(torch.uint8)

    @override
    def phase_dataset(self, phase: str, base: Any, default: Any) -> Any:
        if phase != "stage_c" or self.cfg.stages != "ABC":
            return default  # COCO: stage C on the stage-A augmentation's random crops
        from wsss_blocks.train.datasets import AugmentedDataset

        c = self.cfg
        if self._rough is None:
            raise RuntimeError("PMM's tile dataset needs the rough masks of stage B (on_phase_start)")
        ts: list[Any] = [MultiCropTile(self._rough, c.crop_scales, c.crop_size, c.crop_stride, c.tile_fg_threshold,
                                       c.tile_match_threshold)]
        if c.tile_hflip:
            ts.append(RandomHorizontalFlip())
        if c.tile_color_jitter is not None:
            ts.append(ColorJitter(*c.tile_color_jitter[:3], hue=c.tile_color_jitter[3]))
        ts.append(Resize((c.crop_size, c.crop_size), interpolation="bilinear", antialias=True))  # PIL's resize
        return AugmentedDataset(base, Compose(ts), default.seed)

    @override
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The PolyOptimizer groups of the current phase's network only (``get_parameter_groups``).

        Backbone weights 1×, backbone biases 2×, fc8 and the PCM (new layers) 10× / 20×.
        """
        from wsss_blocks.models import param_groups

        return param_groups(self.active_net, base_lr, weight_decay=weight_decay, backbone_prefixes=("backbone.",))

    # ------------------------------------------------------------------ training
    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The loss terms of one batch with their gradients: ``cls``, ``minpool``, ``er``, ``ecr`` (unweighted).

        Computed with the network of the current phase ([`PMMMethod.active_net`][]).
        """
        c = self.cfg
        net = self.active_net
        x1 = batch["image"]
        y = batch["labels"].float()
        n, _, H, W = x1.shape
        x2 = F.interpolate(x1, scale_factor=c.view_scale_factor, mode="bilinear", align_corners=True)
        lab = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)[:, :, None, None]

        cam1, rv1 = net(x1)
        cam1, rv1 = _up(cam1, (H, W)), _up(rv1, (H, W))
        cls1 = F.multilabel_soft_margin_loss(cam1.mean(dim=(2, 3))[:, 1:], y)
        minp1 = adaptive_min_pooling_loss((rv1 * lab)[:, 1:])
        size2 = (int(x2.shape[-2]), int(x2.shape[-1]))
        cam1 = _up(normalize_cams(cam1, "seam_minmax"), size2) * lab
        rv1 = _up(normalize_cams(rv1, "seam_minmax"), size2) * lab

        cam2, rv2 = net(x2)
        cam2, rv2 = _up(cam2, size2), _up(rv2, size2)
        cls2 = F.multilabel_soft_margin_loss(cam2.mean(dim=(2, 3))[:, 1:], y)
        minp2 = adaptive_min_pooling_loss((rv2 * lab)[:, 1:])
        cam2 = normalize_cams(cam2, "seam_minmax") * lab
        rv2 = normalize_cams(rv2, "seam_minmax") * lab

        loss_er = (cam1[:, 1:] - cam2[:, 1:]).abs().mean()
        bg1 = 1.0 - cam1[:, 1:].amax(dim=1, keepdim=True)
        bg2 = 1.0 - cam2[:, 1:].amax(dim=1, keepdim=True)
        t1 = _max_onehot(torch.cat([bg1, cam1[:, 1:]], dim=1).detach())
        t2 = _max_onehot(torch.cat([bg2, cam2[:, 1:]], dim=1).detach())
        k = max(1, int(lab.shape[1] * size2[0] * size2[1] * c.ecr_topk))
        ecr1 = torch.topk((t2 - rv1).abs().reshape(n, -1), k=k, dim=-1).values.mean()
        ecr2 = torch.topk((t1 - rv2).abs().reshape(n, -1), k=k, dim=-1).values.mean()

        return {"cls": (cls1 + cls2) / 2, "minpool": (minp1 + minp2) / 2, "er": loss_er, "ecr": ecr1 + ecr2}

    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        c = self.cfg
        p = self.losses(batch)
        loss = p["cls"] + c.min_pool_weight * p["minpool"] + c.er_weight * p["er"] + c.ecr_weight * p["ecr"]
        return {"loss": loss, "loss_cls": p["cls"].detach(), "loss_minpool": p["minpool"].detach(),
                "loss_er": p["er"].detach(), "loss_ecr": p["ecr"].detach()}

    # ------------------------------------------------------------------ inference
    def _maps(self, net: SEAMNet | None, images: Tensor) -> Tensor:
        assert net is not None
        cam, rv = net(images)
        out = rv if self.cfg.cam_source == "pcm" else cam
        return F.relu(out[:, 1:])

    @override
    def cam_fn(self, images: Tensor) -> Tensor:
        return self._maps(self.cam_net, images)

    @override
    def infer_cams(self, images: Tensor, labels: Tensor) -> Tensor | None:
        """Multi-crop CAMs (``cam_inference: multi_crop``; ``pipeline/infer_multi_crop.py``), else ``None``."""
        c = self.cfg
        if c.cam_inference != "multi_crop":
            return None
        return multi_crop_cams(self.cam_fn, images, labels, tuple(c.crop_scales), crop_size=c.crop_size,
                               stride=c.crop_stride, batch_size=c.multi_crop_batch_size)
