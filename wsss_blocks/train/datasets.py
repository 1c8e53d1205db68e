"""Dataset plumbing of the reference trainer.

Data root resolution (including the synthetic cache), split readers with early, clear errors, the training
augmentation pipelines with their deterministic per-sample wrapper, and size-grouped inference batches.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from wsss_blocks.data import COCOSegmentation, VOCSegmentation, make_synthetic_voc
from wsss_blocks.data.check import DataCheckReport, _dataset_mask_mapper, check_data_files, dataset_files
from wsss_blocks.data.transforms import (
    ColorJitter,
    Compose,
    PadTo,
    PhotoMetricDistortion,
    RandomCrop,
    RandomCropInside,
    RandomHorizontalFlip,
    RandomRescale,
    RandomResizeLong,
    RandomResizeRatio,
    RandomResizeShort,
    Resize,
    sample_generator,
)

from .config import ConfigError
from .distributed import DistEnv, barrier, shard_indices
from .paths import absolute, default_cache_dir, synthetic_params, synthetic_root
from .schema import RunConfig

__all__ = [
    "cam_train_transform",
    "check_splits",
    "preflight_data",
    "data_root",
    "default_cache_dir",
    "iter_inference_batches",
    "open_split",
    "seg_train_transform",
]

_PAD = -1.0  # sentinel for padded image pixels (images live in [0, 1]); AugmentedDataset turns it into `valid`


def data_root(cfg: RunConfig, env: DistEnv | None = None) -> Path:
    """The dataset root; for ``dataset: synthetic`` without a root, generate (once) into the cache folder.

    With ``env`` (all ranks must call it then), generation happens on the main rank and the others wait at a
    barrier; without ``env`` the caller generates (or finds the cache) itself.
    """
    d = cfg.data
    if d.dataset != "synthetic":
        if d.root is None:
            raise ConfigError(f"data.root is required for dataset {d.dataset!r} (the folder holding JPEGImages)")
        root = absolute(d.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {str(root)!r} does not exist")
        return root
    root = synthetic_root(d)
    if env is None or env.is_main:
        make_synthetic_voc(root, **synthetic_params(d))  # a no-op when the cache already matches
    if env is not None:
        barrier()
    return root


def open_split(cfg: RunConfig, split: str, *, return_mask: bool, mask_dir: str | os.PathLike | None = None,
               saliency: bool = False, limit: int | None = None, return_labels: bool = True,
               root: Path | None = None) -> Any:
    """Open one split as a VOC/COCO reader (files checked now: a missing folder or list fails here)."""
    d = cfg.data
    root = data_root(cfg) if root is None else root
    sal = d.saliency_dir if saliency else None
    labels_file = d.labels_file
    ds: Any
    if d.dataset == "coco":
        ds = COCOSegmentation(root, split, mask_dir=mask_dir, labels_file=labels_file, saliency_dir=sal,
                              return_mask=return_mask, return_labels=return_labels, image_ext=d.image_ext,
                              raw_category_ids=d.coco_raw_category_ids)
    else:
        mdir = mask_dir if mask_dir is not None else (d.mask_dir or d.sbd_root)
        ds = VOCSegmentation(root, split, mask_dir=mdir, labels_file=labels_file, saliency_dir=sal,
                             return_mask=return_mask, return_labels=return_labels, image_ext=d.image_ext)
    if ds.num_classes != d.num_classes:
        raise ConfigError(f"data.num_classes is {d.num_classes} but the {d.dataset} reader has "
                          f"{ds.num_classes} classes")
    if limit is not None:
        ds.names = ds.names[:limit]
    if len(ds) == 0:
        raise ValueError(f"split {split!r} under {str(root)!r} is empty")
    return ds


def check_splits(cfg: RunConfig, stages: Sequence[str] = ("cam", "pseudo", "seg"), env: DistEnv | None = None
                 ) -> None:
    """Open every split the given stages will read, so missing folders/lists fail before any training.

    On VOC/COCO a failure names the missing preparation step and the ``wsss-blocks data prepare`` command.
    """
    from ..data.prepare import explain_unprepared

    d = cfg.data
    with explain_unprepared(d.root, d.dataset, saliency_dir=d.saliency_dir, labels_file=d.labels_file):
        root = data_root(cfg, env)
        if "cam" in stages or "pseudo" in stages:
            open_split(cfg, d.train_split, return_mask=False, saliency=d.saliency_dir is not None,
                       limit=d.max_train_images, root=root)
        if "pseudo" in stages:
            open_split(cfg, d.cam_eval_split, return_mask=True, limit=d.max_eval_images, root=root)
        if "seg" in stages:
            open_split(cfg, d.val_split, return_mask=True, limit=d.max_eval_images, root=root)


def _data_check_cache(cfg: RunConfig, root: Path) -> Path:
    """The pre-flight check's cache: in the cache folder (never in the run folder), one file per data root."""
    d = cfg.data
    base = absolute(d.synthetic.cache_dir) if d.dataset == "synthetic" and d.synthetic.cache_dir else \
        default_cache_dir()
    return base / "data_check" / f"{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.json"


def preflight_data(cfg: RunConfig, stages: Sequence[str] = ("cam", "pseudo", "seg"), env: DistEnv | None = None
                   ) -> DataCheckReport | None:
    """Decode every image and mask the given stages will read, once, and list every problem together.

    The files: the CAM stage's ``data.train_split`` images (with saliency maps and, when labels come from masks,
    masks), the pseudo-mask split's images and the ``data.cam_eval_split`` images with masks (pseudo stage), the
    segmentation training images and the ``data.val_split`` images with masks (segmentation stage). See
    `wsss_blocks.data.check` for what is checked; results are cached per file (path, size, mtime) in the cache
    folder, so a rerun decodes nothing that did not change. Runs on the main process only; ``data.preflight:
    false`` (``--skip-data-check``) skips it.

    Raises:
        wsss_blocks.data.check.DataCheckError: the problems, one ``file: problem`` line each.
    """
    d = cfg.data
    if not d.preflight or (env is not None and not env.is_main):
        return None
    root = data_root(cfg)
    pseudo_split = cfg.pseudo.split or d.train_split
    specs: list[tuple[str, bool, bool, int | None]] = []  # (split, masks, saliency, limit)
    if "cam" in stages:
        specs.append((d.train_split, False, d.saliency_dir is not None, d.max_train_images))
    if "pseudo" in stages or "seg" in stages:
        specs.append((pseudo_split, False, False, d.max_train_images))
    if "pseudo" in stages:
        specs.append((d.cam_eval_split, True, False, d.max_eval_images))
    if "seg" in stages:
        specs.append((d.val_split, True, False, d.max_eval_images))
    samples = []
    mapper = None
    for split, masks, saliency, limit in specs:
        ds = open_split(cfg, split, return_mask=masks, saliency=saliency, limit=limit, root=root)
        samples += dataset_files(ds)
        mapper = mapper or _dataset_mask_mapper(ds)
    report = check_data_files(samples, num_classes=d.num_classes, max_image_pixels=d.max_image_pixels,
                              cache_file=_data_check_cache(cfg, root), progress=cfg.runtime.progress,
                              desc="data check", mask_mapper=mapper)
    report.raise_if_problems(hint="(data.preflight: false, or --skip-data-check on the command line, skips "
                                  "this check)")
    return report


class AugmentedDataset(Dataset):
    """Wraps a VOC-style dataset: per-sample deterministic augmentation and a ``valid`` (not padded) mask.

    Indexed by ``(epoch, index)`` pairs; the transform gets ``sample_generator(seed, index, epoch)``, so
    the augmentation of a sample depends only on (seed, epoch, index) — not on workers, ranks or resumption.
    Random crops pad the image with a sentinel that becomes the ``valid`` mask; after normalisation the
    trainer sets padded pixels to 0 (the mean colour, as PSA/IRN/deeplab pad the normalised image).

    Output keys: ``image01`` (3×h×w in [0, 1], padding 0), ``valid`` (h×w bool), ``index``, ``name``,
    ``labels`` and, when the base dataset gives them, ``mask`` and ``saliency``.
    """

    def __init__(self, base: Dataset, transform: Callable[..., dict[str, Any]] | None, seed: int):
        self.base = base
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        s = dict(self.base[index])
        if self.transform is not None:
            s = self.transform(s, generator=sample_generator(self.seed, index, epoch))
        img = s.pop("image")
        valid = img[0] != _PAD
        s["image01"] = img.clamp(min=0.0)
        s["valid"] = valid
        s["index"] = int(index)
        return s


def cam_train_transform(cfg: RunConfig) -> Compose:
    """IRN-style CAM augmentation (image resizing with ``cam.interpolation``).

    A fixed warp, random long- or short-side resize and/or rescale, flip, colour jitter, crop.
    """
    c = cfg.cam
    ts: list[Any] = []
    interp = c.interpolation
    sal = c.saliency_interpolation
    if c.resize is not None:
        ts.append(Resize((int(c.resize[0]), int(c.resize[1])), interpolation=interp, saliency_interpolation=sal))
    if c.resize_long is not None:
        ts.append(RandomResizeLong(int(c.resize_long[0]), int(c.resize_long[1]), interpolation=interp,
                                   saliency_interpolation=sal))
    if c.resize_short is not None:
        ts.append(RandomResizeShort(int(c.resize_short[0]), int(c.resize_short[1]), interpolation=interp,
                                    saliency_interpolation=sal))
    if c.scale_range is not None:
        ts.append(RandomRescale((float(c.scale_range[0]), float(c.scale_range[1])), interpolation=interp,
                                saliency_interpolation=sal))
    if c.hflip:
        ts.append(RandomHorizontalFlip())
    if c.color_jitter is not None:
        b, ct, s, h = c.color_jitter
        ts.append(ColorJitter(b, ct, s, h))
    ts.append(RandomCrop(c.crop_size, pad_image_value=_PAD))
    return Compose(ts, record_geometry=True)  # batch["geom"]: crop geometry (SMAF offline targets)


def seg_train_transform(cfg: RunConfig) -> Compose:
    """Segmentation augmentation: ``seg.augment`` ``deeplab`` or ``mmseg``.

    ``deeplab`` (deeplab-pytorch): discrete random scale, crop (mask padded with 255), flip. ``mmseg``
    (mmsegmentation, PMM's PSPNet, ``configs/_base_/datasets/pascal_voc12.py``): resize to a random ratio of
    ``seg.img_scale`` keeping the aspect ratio, a crop inside the image redrawn while one class covers
    ``seg.cat_max_ratio``, flip, photometric distortion, then padding at the bottom right (image: the mean
    colour after normalisation, mask: 255).
    """
    s = cfg.seg
    if s.augment == "mmseg":
        mm: list[Any] = [RandomResizeRatio((int(s.img_scale[0]), int(s.img_scale[1])),
                                           (float(s.ratio_range[0]), float(s.ratio_range[1]))),
                         RandomCropInside(s.crop_size, cat_max_ratio=s.cat_max_ratio)]
        if s.hflip:
            mm.append(RandomHorizontalFlip())
        if s.photometric_distortion:
            mm.append(PhotoMetricDistortion())
        mm.append(PadTo(s.crop_size, pad_image_value=_PAD, pad_mask_value=255))
        return Compose(mm)
    ts: list[Any] = []
    if s.scales:
        ts.append(RandomRescale(scales=list(s.scales)))
    ts.append(RandomCrop(s.crop_size, pad_image_value=_PAD, pad_mask_value=255))
    if s.hflip:
        ts.append(RandomHorizontalFlip())
    return Compose(ts)


def iter_inference_batches(ds: Dataset, env: DistEnv, batch_size: int = 1, indices: Sequence[int] | None = None,
                           num_workers: int = 0) -> Iterator[list[dict[str, Any]]]:
    """This rank's share of ``ds`` (every ``world_size``-th sample), in lists of same-sized samples.

    Consecutive samples of equal image size are grouped up to ``batch_size`` (VOC images differ in
    size; synthetic ones do not). Yields lists of raw sample dicts.
    """
    idx = list(indices) if indices is not None else list(range(len(ds)))  # type: ignore[arg-type]
    mine = [idx[i] for i in shard_indices(len(idx), env.rank, env.world_size)]
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=None,
                                             num_workers=num_workers)
        source: Any = iter(loader)
    else:
        source = (ds[i] for i in mine)
    group: list[dict[str, Any]] = []
    for s in source:
        if group and (len(group) >= batch_size or s["image"].shape != group[0]["image"].shape):
            yield group
            group = []
        group.append(s)
    if group:
        yield group
