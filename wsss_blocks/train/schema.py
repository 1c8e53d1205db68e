"""The run configuration of the reference trainer: one YAML file per method × dataset.

A `RunConfig` has five sections — ``data``, ``cam`` (CAM stage), ``pseudo`` (pseudo-mask stage),
``seg`` (segmentation stage), ``runtime`` — plus ``method`` (a registered method name) and
``method_args`` (a mapping validated by that method's own ``Config`` dataclass). Loading is strict:
unknown keys are rejected with the closest valid key suggested ([`wsss_blocks.train.config`][]).

Examples:
    >>> cfg = load_run_config({"method": "baseline", "cam": {"steps": 5}}, ["cam.lr=0.01"])
    >>> cfg.cam.steps, cfg.cam.lr, type(cfg.method_config()).__name__
    (5, 0.01, 'BaselineConfig')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wsss_blocks.data.normalization import data_normalization

from .config import ConfigError, from_dict, load_config, to_dict
from .paths import resolve_paths

__all__ = [
    "DEFAULT_SWEEP",
    "CAMStageConfig",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "PseudoStageConfig",
    "RunConfig",
    "RuntimeConfig",
    "SegStageConfig",
    "SyntheticDataConfig",
    "SyntheticPretrainConfig",
    "SYNTHETIC_PRETRAINED",
    "dump_run_config",
    "load_run_config",
]

DEFAULT_SWEEP: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(96))
"""Background scores tried by the CAM mIoU sweep (0.00 ... 0.95 in steps of 0.01)."""

SYNTHETIC_PRETRAINED = "synthetic"
"""Value of ``cam.pretrained`` / ``seg.pretrained`` that selects the backbone pretrained on synthetic data.

See `wsss_blocks.train.synthetic_pretrain`: the synthetic presets' stand-in for ImageNet weights.
"""


@dataclass
class SyntheticPretrainConfig:
    """How ``pretrained: synthetic`` backbones are made: a multi-label classifier on a disjoint synthetic set.

    The set has the run's generator settings (``image_size``, ``num_classes``, ``max_objects``,
    ``body_evidence``) but its own data ``seed`` and size; the weights are cached, keyed by these values and the
    backbone (`wsss_blocks.train.synthetic_pretrain.pretrain_synthetic_backbone`).
    """

    num_images: int = 2000               # training images of the pretraining set
    num_eval: int = 200                  # held-out images (accuracy recorded next to the weights)
    seed: int = 1000                     # data seed (must differ from data.synthetic.seed) and init seed
    steps: int = 800
    batch_size: int = 32
    optimizer: Literal["auto", "sgd", "adamw"] = "auto"   # auto: each family's ImageNet recipe, SGD (momentum 0.9,
    #                                     Nesterov) for CNNs as torchvision, AdamW for MiT as SegFormer; 5 % warm-up,
    #                                     poly 0.9
    lr: float | None = None              # None: 0.1 (SGD) / 2e-3 (AdamW)
    weight_decay: float | None = None    # None: 1e-4 (SGD) / 0.05 (AdamW); never on biases and norm weights


@dataclass
class SyntheticDataConfig:
    """Arguments of [`make_synthetic_voc`][wsss_blocks.data.synthetic.make_synthetic_voc] (``dataset: synthetic``)."""

    num_train: int = 200
    num_val: int = 50
    image_size: int = 96
    num_classes: int = 6
    seed: int = 0
    max_objects: int = 3
    body_evidence: float = 0.0    # fraction of bodies tinted with their class hue (0: evidence only in the heads)
    cache_dir: str | None = None  # default $WSSS_BLOCKS_CACHE or ~/.cache/wsss_blocks
    pretrain: SyntheticPretrainConfig = field(default_factory=SyntheticPretrainConfig)


@dataclass
class DataConfig:
    """Where the data is and which splits play which role (VOC layout, see [`wsss_blocks.data`][])."""

    dataset: Literal["voc", "coco", "synthetic"] = "voc"
    root: str | None = None              # VOC2012 root (JPEGImages, ...); synthetic: generated when None
    mask_dir: str | None = None          # GT masks (in root), default SegmentationClassAug then SegmentationClass
    sbd_root: str | None = None          # folder of SBD-converted masks (SegmentationClassAug) outside root
    labels_file: str | None = "cls_labels.npy"  # image labels; None = derived from masks
    saliency_dir: str | None = None      # saliency PNGs (in root; L2G, SMAF/EPS)
    image_ext: str = ".jpg"
    train_split: str = "train_aug"       # CAM training and pseudo masks
    cam_eval_split: str = "train"        # CAM / pseudo-mask mIoU (IRN: VOC train, 1,464 images)
    val_split: str = "val"               # segmentation evaluation
    num_classes: int = 20                # foreground classes (VOC 20, COCO 80)
    max_train_images: int | None = None  # cap for quick runs (first N names of each split)
    max_eval_images: int | None = None
    normalize: Literal["imagenet", "caffe"] = "imagenet"
    mean: tuple[float, float, float] | None = None   # RGB mean in [0, 1] replacing ImageNet's (normalize: imagenet)
    std: tuple[float, float, float] | None = None    # RGB std replacing ImageNet's (normalize: imagenet)
    coco_raw_category_ids: bool = False  # COCO masks hold raw category ids 1..90 (coco2voc output)
    preflight: bool = True               # decode every image/mask the run reads before its first write (cached)
    max_image_pixels: int | None = 16_000_000  # the pre-flight check refuses larger images (None: no limit)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


@dataclass
class OptimConfig:
    """Optimizer and poly schedule, shared by the CAM and segmentation stages."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["poly", "step"] = "poly"   # "step": lr × lr_decay_gamma at each of lr_decay_epochs
    poly_power: float = 0.9
    min_lr: float = 0.0                  # poly floor (mmcv PolyLrUpdaterHook): (lr_group - min_lr)·(1 - t/T)^p + min_lr
    lr_decay_epochs: tuple[int, ...] = ()  # step schedule: epochs (0-based) at whose start the lr is multiplied
    lr_decay_gamma: float = 0.1
    lr_update_every: int = 1             # recompute the lr every N steps (deeplab-pytorch: 10)
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6           # lr factor at step 0 of a linear warm-up
    grad_clip: float | None = None
    batch_size: int = 16                 # global batch (split over DDP ranks)
    steps: int | None = None             # optimizer steps; None = epochs × (len(train) // batch_size)
    epochs: int = 5
    accumulate: int = 1                  # gradient accumulation (deeplab-pytorch iter_size)
    shuffle: bool = True                 # a new seeded sample order every epoch (false: dataset order, L2G's release)


@dataclass
class CAMStageConfig(OptimConfig):
    """CAM-stage network and augmentation (see [`wsss_blocks.train.cam_stage`][])."""

    backbone: str = "resnet50"
    pretrained: str | None = None        # weights-registry name, file or "none" (models/weights.py); "synthetic":
    #                                     pretrained on a disjoint synthetic set (data.synthetic.pretrain)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    resize_long: tuple[int, int] | None = (320, 640)
    resize_short: tuple[int, int] | None = None   # random short side in [lo, hi] (L2G VOC: [512, 512])
    resize: tuple[int, int] | None = None         # warp to a fixed (H, W), aspect not kept (L2G COCO: [448, 448])
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"   # image resizing in the augmentation
    saliency_interpolation: Literal["bilinear", "nearest"] = "bilinear"   # saliency resizing (L2G VOC: nearest)
    scale_range: tuple[float, float] | None = None
    crop_size: int = 512
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    overlay_samples: int = 4             # fixed samples drawn as CAM overlays each epoch


@dataclass
class PseudoStageConfig:
    """Multi-scale CAM inference, CAM mIoU sweep and pseudo-mask rule parameters."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    reduce: Literal["sum", "mean", "max"] = "sum"
    flip_reduce: Literal["sum", "mean", "max"] | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"   # resizing of each pass's input and maps (L2G: bicubic)
    bg_score: float | Literal["sweep"] = 0.15   # constant background score, or the swept best one
    sweep_thresholds: tuple[float, ...] = DEFAULT_SWEEP
    split: str | None = None             # which split gets pseudo masks; None = data.train_split
    save_cams: bool = False              # also write float16 .npy CAMs next to the masks
    batch_size: int = 1                  # images of equal size are batched up to this many
    pred_ignore: Literal["error", "drop", "background"] = "background"  # scoring masks holding 255 (ignore):
    #                                     "background" counts them as background, "drop" leaves them out
    score_eval_split: bool = False       # also write (pseudo/eval_masks) and score masks of cam_eval_split images
    #                                     outside pseudo.split (PMM reports its PPMG mIoU on VOC val)
    # the pseudo-mask chain (wsss_blocks.train.pipeline): post steps on the CAMs, one refiner, one rule
    post: tuple[str, ...] = ()           # e.g. [cov], [smaf_fusion], [saliency]
    refine: str = "none"                 # none | crf:<preset> (or a bare preset name) | par | varm | irn | attn_aff
    rule: str = "argmax"                 # argmax | ppmg | smaf | reliable
    args: dict[str, dict[str, Any]] = field(default_factory=dict)   # step name -> its arguments (released defaults)


@dataclass
class SegStageConfig(OptimConfig):
    """Segmentation network on pseudo masks and its evaluation (see [`wsss_blocks.train.seg_stage`][])."""

    source: Literal["deeplab", "method"] = "deeplab"   # "method": evaluate the method's own seg head (TSCD)
    model: Literal["deeplabv2", "deeplabv3plus", "segformer", "pspnet"] = "deeplabv2"
    backbone: str = "resnet101"
    pretrained: str | None = None        # as cam.pretrained (registry name, file, "none" or "synthetic")
    style: Literal["caffe", "pytorch"] = "caffe"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: Literal["imagenet", "caffe"] = "caffe"
    crop_size: int = 321
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    hflip: bool = True
    augment: Literal["deeplab", "mmseg"] = "deeplab"   # "mmseg": resize by ratio of img_scale, crop inside the
    #                                     image (cat_max_ratio), flip, photometric distortion, pad (PMM's PSPNet)
    img_scale: tuple[int, int] = (2048, 512)          # augment mmseg: (long, short) target scale
    ratio_range: tuple[float, float] = (0.5, 2.0)     # augment mmseg: uniform ratio of img_scale
    cat_max_ratio: float = 1.0                        # augment mmseg: redraw crops where one class covers this much
    photometric_distortion: bool = False              # augment mmseg: mmseg's PhotoMetricDistortion
    param_groups: Literal["deeplab", "uniform"] = "deeplab"   # "uniform": one lr and weight decay for every
    #                                     parameter (mmseg's optimizer); "deeplab": backbone 1x, new layers 10x/20x
    sync_bn: bool = False                 # SyncBatchNorm under DDP (PMM's PSPNet)
    msc_train: tuple[float, ...] = (0.5, 0.75)   # DeepLab-v2 MSC inputs during training (() = off)
    loss: str = "ce"                     # ce | puf | balanced (wsss_blocks.train.pipeline registry)
    loss_at: Literal["logits", "labels"] = "logits"  # "logits": nearest-resize masks to each output
    #                                                  (deeplab-pytorch); "labels": upsample logits (ToCo/AFA)
    loss_args: dict[str, Any] = field(default_factory=dict)   # arguments of seg.loss (puf: beta, k, mode)
    eval_scales: tuple[float, ...] = (1.0, 0.5, 0.75)
    eval_flip: bool = False
    eval_scale_reduce: Literal["max", "sum", "mean"] = "max"
    eval_flip_reduce: Literal["max", "sum", "mean"] = "mean"
    eval_resize_long: int | None = None  # resize the image's long side to this before multi-scale eval
    #                                      (ToCo/TSCD: 512); logits are resized back to the original size
    eval_average: Literal["logits", "probs"] = "logits"   # "probs": softmax per pass, mean over all passes
    #                                      (mmseg aug_test); "logits": fuse logits by eval_*_reduce, then softmax
    eval_img_scale: tuple[int, int] | None = None   # eval_scales are ratios of this (long, short) keep-ratio scale
    #                                      (mmseg MultiScaleFlipAug img_scale); None: ratios of the image size
    eval_slide: tuple[int, int] | None = None       # sliding-window inference [crop, stride] (mmseg mode "slide")
    crf: bool = False
    crf_params: dict[str, Any] = field(default_factory=dict)  # DenseCRF arguments (preset or values)
    eval_every: int | None = None        # evaluate val every N steps and keep the best model (best.pt); with
    #                                      source: method, the method's head every N CAM-stage steps
    report: Literal["last", "best"] = "last"   # which model the segmentation mIoU is reported for: the last
    #                                      one, or the best val checkpoint (needs eval_every; the last is shown too)
    cyclic_rounds: int = 0               # PMM cyclic pseudo-masks: relabel train with the best model, retrain
    cyclic_loss: Literal["ce", "puf"] = "ce"    # loss of the cyclic rounds (release: plain CE)
    cyclic_select: Literal["best", "last"] = "best"   # which model of a round relabels (release: best val)
    cyclic_scales: tuple[float, ...] | None = None    # relabelling scales (None = eval_scales)
    cyclic_flip: bool | None = None                   # relabelling flip (None = eval_flip)
    cyclic_crf: bool | None = None                    # relabelling CRF (None = crf), with crf_params
    cyclic_policy: Literal["replace", "restrict"] = "replace"   # release: replace (no label restriction)


@dataclass
class RuntimeConfig:
    """Seeds, device, precision, checkpointing and logging."""

    seed: int = 0
    device: str = "auto"                 # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    amp: bool = True                     # mixed precision, CUDA only (ignored on CPU)
    deterministic: bool = False
    num_workers: int = 2
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    progress: bool = True                # tqdm bars
    plots: bool = True                   # loss / mIoU PNG and CAM overlays
    sync_bn: bool = False                # convert BatchNorm to SyncBatchNorm under DDP
    find_unused_parameters: bool = True  # DDP option
    threads: int | None = None           # torch.set_num_threads on CPU
    min_free_mb: float = 100.0           # refuse to start when the output disk has less free space


@dataclass
class RunConfig:
    """Everything a run needs. ``method_args`` is validated by the method's ``Config`` dataclass."""

    method: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    cam: CAMStageConfig = field(default_factory=CAMStageConfig)
    pseudo: PseudoStageConfig = field(default_factory=PseudoStageConfig)
    seg: SegStageConfig = field(default_factory=SegStageConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method_args: dict[str, Any] = field(default_factory=dict)
    quick_overrides: list[str] = field(default_factory=list)   # applied by ``--quick``
    description: str = ""

    def method_class(self) -> Any:
        """The registered [`wsss_blocks.train.methods.base.CAMMethod`][] subclass."""
        from .methods import get_method

        return get_method(self.method)

    def method_config(self) -> Any:
        """``method_args`` validated into the method's ``Config`` dataclass."""
        return self.method_class().make_config(self.method_args)

    @property
    def num_classes(self) -> int:
        """Foreground classes (``data.num_classes``)."""
        return self.data.num_classes


def _validate(cfg: RunConfig) -> RunConfig:
    from .pipeline import check_chain, check_moved_method_args

    check_moved_method_args(cfg.method, cfg.method_args)
    cfg.method_config()  # raises ConfigError for unknown/wrongly typed method_args, ValueError for method
    if cfg.data.num_classes < 1:
        raise ConfigError(f"data.num_classes must be >= 1, got {cfg.data.num_classes}")
    for sec in ("cam", "seg"):
        o = getattr(cfg, sec)
        if o.batch_size < 1:
            raise ConfigError(f"{sec}.batch_size must be >= 1, got {o.batch_size}")
        if o.steps is not None and o.steps < 1:
            raise ConfigError(f"{sec}.steps must be >= 1 or null, got {o.steps}")
        if o.epochs < 1:
            raise ConfigError(f"{sec}.epochs must be >= 1, got {o.epochs}")
        if o.lr <= 0:
            raise ConfigError(f"{sec}.lr must be > 0, got {o.lr}")
        if o.accumulate < 1:
            raise ConfigError(f"{sec}.accumulate must be >= 1, got {o.accumulate}")
        if o.lr_update_every < 1:
            raise ConfigError(f"{sec}.lr_update_every must be >= 1, got {o.lr_update_every}")
        if o.lr_schedule == "step" and not o.lr_decay_epochs:
            raise ConfigError(f"{sec}.lr_schedule 'step' needs {sec}.lr_decay_epochs (e.g. [5]), got []")
        if any(e < 1 for e in o.lr_decay_epochs):
            raise ConfigError(f"{sec}.lr_decay_epochs must be >= 1 (0-based epoch starts), got {o.lr_decay_epochs}")
    resizes = [k for k in ("resize", "resize_long", "resize_short") if getattr(cfg.cam, k) is not None]
    if len(resizes) > 1:
        raise ConfigError(f"set at most one of cam.resize, cam.resize_long, cam.resize_short; got {resizes} "
                          f"(set the others to null)")
    for k in ("resize_long", "resize_short"):
        v = getattr(cfg.cam, k)
        if v is not None and not 1 <= v[0] <= v[1]:
            raise ConfigError(f"cam.{k} must be [low, high] with 1 <= low <= high, got {list(v)}")
    try:
        data_normalization(cfg.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _validate_synthetic(cfg)
    s = cfg.seg
    if s.cyclic_rounds < 0:
        raise ConfigError(f"seg.cyclic_rounds must be >= 0, got {s.cyclic_rounds}")
    if s.eval_every is not None and s.eval_every < 1:
        raise ConfigError(f"seg.eval_every must be >= 1 or null, got {s.eval_every}")
    if s.cyclic_rounds > 0 and s.source == "method":
        raise ConfigError("seg.cyclic_rounds needs a trained segmentation network (seg.source: deeplab), "
                          "got seg.source: method")
    if s.cyclic_rounds > 0 and s.cyclic_select == "best" and s.eval_every is None:
        raise ConfigError("seg.cyclic_select 'best' picks the best val checkpoint and needs seg.eval_every (release: "
                          "2000); set seg.eval_every or seg.cyclic_select: last")
    if s.report == "best" and s.eval_every is None:
        raise ConfigError("seg.report 'best' reports the best val checkpoint and needs seg.eval_every; set "
                          "seg.eval_every or seg.report: last")
    if s.eval_every is not None and s.source == "method" and not getattr(cfg.method_class(), "has_segmentation",
                                                                         False):
        raise ConfigError(f"seg.eval_every with seg.source: method validates the method's segmentation head, but "
                          f"method {cfg.method!r} has none")
    if s.eval_slide is not None and min(s.eval_slide) < 1:
        raise ConfigError(f"seg.eval_slide must be [crop, stride] of positive ints, got {list(s.eval_slide)}")
    if s.eval_img_scale is not None and min(s.eval_img_scale) < 1:
        raise ConfigError(f"seg.eval_img_scale must be [long, short] of positive ints, got {list(s.eval_img_scale)}")
    if s.eval_average == "probs" and (s.eval_scale_reduce != "mean" or s.eval_flip_reduce != "mean"):
        raise ConfigError("seg.eval_average 'probs' averages every pass (mmseg aug_test); set seg.eval_scale_reduce "
                          "and seg.eval_flip_reduce to mean")
    if not 0.0 < s.cat_max_ratio <= 1.0:
        raise ConfigError(f"seg.cat_max_ratio must lie in (0, 1], got {s.cat_max_ratio}")
    for sec in ("cam", "seg"):
        if getattr(cfg, sec).min_lr < 0:
            raise ConfigError(f"{sec}.min_lr must be >= 0, got {getattr(cfg, sec).min_lr}")
    if s.eval_resize_long is not None and s.eval_resize_long < 1:
        raise ConfigError(f"seg.eval_resize_long must be >= 1 or null, got {s.eval_resize_long}")
    if not cfg.pseudo.scales or any(s <= 0 for s in cfg.pseudo.scales):
        raise ConfigError(f"pseudo.scales must be positive, got {cfg.pseudo.scales}")
    if cfg.runtime.checkpoint_every < 1 or cfg.runtime.log_every < 1:
        raise ConfigError("runtime.checkpoint_every and runtime.log_every must be >= 1")
    check_chain(cfg)  # unknown steps, bad arguments, needs the run cannot meet: refused before any write
    from .pipeline import make_seg_loss

    make_seg_loss(cfg.seg.loss, cfg.seg.loss_args)  # seg.loss_args that do not fit seg.loss
    return cfg


def _validate_synthetic(cfg: RunConfig) -> None:
    syn = cfg.data.synthetic
    if not 0.0 <= syn.body_evidence <= 1.0:
        raise ConfigError(f"data.synthetic.body_evidence must lie in [0, 1], got {syn.body_evidence}")
    users = [f"{sec}.pretrained" for sec in ("cam", "seg") if getattr(cfg, sec).pretrained == SYNTHETIC_PRETRAINED]
    users += [name for name, value, _ in cfg.method_class().extra_weights(cfg.method_config())
              if value == SYNTHETIC_PRETRAINED]  # e.g. PMM's method_args.stage_c_pretrained
    if not users:
        return
    if cfg.data.dataset != "synthetic":
        raise ConfigError(f"{' and '.join(users)}: {SYNTHETIC_PRETRAINED!r} (weights pretrained on synthetic data) "
                          f"needs data.dataset: synthetic, got {cfg.data.dataset!r}; give a checkpoint path instead")
    pre = syn.pretrain
    if pre.seed == syn.seed:
        raise ConfigError(f"data.synthetic.pretrain.seed must differ from data.synthetic.seed (the pretraining set "
                          f"must be disjoint from the run's images), both are {syn.seed}")
    for key in ("num_images", "steps", "batch_size"):
        if getattr(pre, key) < 1:
            raise ConfigError(f"data.synthetic.pretrain.{key} must be >= 1, got {getattr(pre, key)}")
    if pre.num_eval < 0 or (pre.lr is not None and pre.lr <= 0):
        raise ConfigError(f"data.synthetic.pretrain needs num_eval >= 0 and lr > 0, got num_eval={pre.num_eval}, "
                          f"lr={pre.lr}")


def load_run_config(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (),
                    quick: bool = False) -> RunConfig:
    """Load a `RunConfig` from a YAML path, a packaged config name or a mapping.

    Every path in the result is absolute ([`wsss_blocks.train.paths.resolve_paths`][]): relative ones are
    taken from the working directory, and dataset-internal ones (``data.mask_dir``, ``data.saliency_dir``,
    ``data.labels_file``) from ``data.root``.

    Args:
        source: YAML file, packaged name (``"baseline_synthetic"``) or mapping.
        overrides: ``section.key=value`` strings (values parsed as YAML), applied after the file.
        quick: also apply the config's ``quick_overrides`` (before ``overrides``).

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, bad ``method_args``.
        ValueError: unknown method name.
        FileNotFoundError: missing config file.
    """
    src: str | Path | Mapping[str, Any] = source if isinstance(source, (str, Path, Mapping)) else Path(source)
    cfg = load_config(RunConfig, src, overrides)
    if quick and cfg.quick_overrides:
        data = to_dict(cfg)
        from .config import apply_overrides

        apply_overrides(data, list(cfg.quick_overrides) + list(overrides))
        cfg = from_dict(RunConfig, data)
    return resolve_paths(_validate(cfg))


def dump_run_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) — the record of what a run used."""
    from wsss_blocks._checks import require
    from wsss_blocks.data.io import atomic_write

    yaml = require("yaml", "train", "YAML configs")
    path = Path(path)
    with atomic_write(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path


def replace(cfg: RunConfig, **sections: Any) -> RunConfig:
    """Shallow ``dataclasses.replace`` helper for the top level."""
    return dataclasses.replace(cfg, **sections)
