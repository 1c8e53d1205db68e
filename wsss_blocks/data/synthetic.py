"""A procedurally generated dataset in the exact VOC2012 format, for tests, examples and CI.

Each image shows a textured background and 1-3 "creatures". A creature is a generic body (a
muted, nearly flat ellipse or rounded box whose colour is drawn from the same distribution for
every class) with a small class-specific **head** (a saturated disc with a class-specific hue and
pattern: stripes, checks, dots, rings). Only the head tells the classes apart, so a classifier
trained on image labels looks at heads and its CAMs cover a fraction of each object: the core WSSS
problem, reproduced in miniature. The ground truth is pixel-exact (body and head both carry the
class), and a part mask says which pixels are head and which are body.

``body_evidence`` (default 0: the bodies carry no class evidence at all) gives that fraction of the
bodies a faint tint of their class hue (saturation 0.15-0.35 against the heads' 0.75-0.95): weak evidence
away from the head, which methods built to find less discriminative parts (L2G's local views, PPL's
patches, SMAF's multi-scale fusion) can learn to use and a plain CAM tends to ignore.

[`make_synthetic_voc`][] writes the same folders, lists and label files as VOC, so the real
[`VOCSegmentation`][wsss_blocks.data.voc.VOCSegmentation] reader loads it unchanged:

    root/
      JPEGImages/<name>.jpg
      SegmentationClass/<name>.png        palette PNGs (train + val), like VOC
      SegmentationClassAug/<name>.png     greyscale PNGs (train_aug + val), like the SBD conversion
      SaliencyMaps/<name>.png             imperfect foreground saliency in 0..255 (optional)
      PartMasks/<name>.png                greyscale: 0 background, 1 body, 2 head (train_aug + val)
      Annotations/<name>.xml              VOC-style XML with one <object> per creature (optional)
      ImageSets/Segmentation/{train,train_aug,val,trainval}.txt
      cls_labels.npy                      {name: float32[20]}, ToCo-style string keys
      synthetic.json                      generation parameters; written last (completion marker)

Names follow the VOC pattern (``2030_000000`` for train_aug, ``2031_000000`` for val), so IRN's
integer name encoding works too. Of the 20 VOC class slots, the first ``num_classes`` are used
(default 6: aeroplane, bicycle, bird, boat, bottle, bus); the others never occur.

Examples:
    >>> import tempfile
    >>> from wsss_blocks.data import make_synthetic_voc, VOCSegmentation
    >>> root = make_synthetic_voc(tempfile.mkdtemp(), num_train=6, num_val=2, image_size=48, seed=0)
    >>> ds = VOCSegmentation(root, split="train")
    >>> s = ds[0]
    >>> labels = s["labels"]
    >>> int(s["mask"].max()) <= 6, float(labels[6:].sum())
    (True, 0.0)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss_blocks._checks import check_int
from wsss_blocks.data.io import atomic_write, save_image, save_label_png
from wsss_blocks.data.voc import VOC_CLASSES, VOC_NUM_CLASSES, save_cls_labels, write_split_list

__all__ = [
    "make_synthetic_voc",
    "render_synthetic_sample",
    "render_synthetic_sample_detailed",
    "synthetic_class_names",
    "SyntheticSample",
    "SYNTHETIC_VERSION",
    "PART_BACKGROUND",
    "PART_BODY",
    "PART_HEAD",
]

SYNTHETIC_VERSION = 2
"""Bumped whenever the generator's output changes (part of the cache key in ``synthetic.json``).

Version 2 adds ``PartMasks/`` and ``body_evidence``; with ``body_evidence=0`` images and masks equal version 1's.
"""

PART_BACKGROUND, PART_BODY, PART_HEAD = 0, 1, 2
"""Values of the part masks (``PartMasks/<name>.png``, `SyntheticSample.part_mask`)."""

_TRAIN_PREFIX = "2030"
_VAL_PREFIX = "2031"
# head patterns: 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 dots, 5 rings
_N_PATTERNS = 6


def synthetic_class_names(num_classes: int = 6) -> tuple[str, ...]:
    """VOC class names of the slots the synthetic data uses (the first ``num_classes``).

    Examples:
        >>> synthetic_class_names(5)
        ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle')
    """
    _check_num_classes(num_classes)
    return VOC_CLASSES[:num_classes]


def _check_num_classes(num_classes: int) -> None:
    check_int(num_classes, "num_classes", minimum=1, maximum=VOC_NUM_CLASSES)


def _class_style(k: int, num_classes: int) -> tuple[float, int, float]:
    """(hue, pattern, pattern period in head radii) of class slot ``k``: hues evenly spread."""
    hue = (k / num_classes + 0.03) % 1.0 if num_classes <= 8 else (k * 0.618034 + 0.03) % 1.0
    pattern = k % _N_PATTERNS
    period = 0.9 + 0.35 * ((k // _N_PATTERNS) % 3)
    return hue, pattern, period


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1] (low-frequency blotches), size×size."""
    grid = rng.random((cells + 1, cells + 1))
    x = np.linspace(0, cells, size)
    i0 = np.minimum(np.floor(x).astype(np.int64), cells - 1)
    f = x - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # size×(cells+1)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _background(rng: np.random.Generator, S: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    hue = rng.random()
    sat = rng.uniform(0.08, 0.35)
    val = rng.uniform(0.35, 0.8)
    blot = _smooth_noise(rng, S, int(rng.integers(2, 6)))
    h = hue + 0.12 * (blot - 0.5)
    v = val + 0.25 * (_smooth_noise(rng, S, int(rng.integers(3, 8))) - 0.5)
    # oriented grating + fine noise: a texture, unlike the flat creature bodies
    theta = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.5)
    grating = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
    v = v + rng.uniform(0.03, 0.09) * grating + 0.035 * rng.standard_normal((S, S))
    s = np.clip(sat + 0.1 * (blot - 0.5), 0, 1)
    return _hsv_to_rgb(h, s, np.clip(v, 0, 1))


def _head_pattern(pattern: int, u: np.ndarray, w: np.ndarray, dist: np.ndarray, period: float) -> np.ndarray:
    """Pattern in {0, 1} over head coordinates (u, w in head radii, aligned with the body axis)."""
    k = 2 * np.pi / (0.5 * period)
    if pattern == 0:
        return np.ones_like(u)
    if pattern == 1:
        return (np.sin(k * w) > 0).astype(np.float64)
    if pattern == 2:
        return (np.sin(k * u) > 0).astype(np.float64)
    if pattern == 3:
        return ((np.sin(k * u) > 0) ^ (np.sin(k * w) > 0)).astype(np.float64)
    if pattern == 4:
        cu = np.round(u / (0.5 * period)) * 0.5 * period
        cw = np.round(w / (0.5 * period)) * 0.5 * period
        return (((u - cu) ** 2 + (w - cw) ** 2) > (0.13 * period) ** 2).astype(np.float64)
    return (np.sin(k * dist) > 0).astype(np.float64)


@dataclass
class SyntheticSample:
    """One rendered synthetic image with its ground truth (see `render_synthetic_sample_detailed`).

    Attributes:
        image: ``S×S×3`` uint8 RGB.
        mask: ``S×S`` uint8 class mask, 0 background, ``c + 1`` for class slot ``c``.
        saliency: ``S×S`` uint8 imperfect foreground saliency in 0..255.
        part_mask: ``S×S`` uint8, `PART_BACKGROUND` (0), `PART_BODY` (1) or `PART_HEAD` (2) — the part of the
            object that is visible at each pixel (the class-specific head, or the generic body).
        body_tinted: per object, in drawing order, whether its body carries its class hue (``body_evidence``).
    """

    image: np.ndarray
    mask: np.ndarray
    saliency: np.ndarray
    part_mask: np.ndarray
    body_tinted: tuple[bool, ...]


def _check_body_evidence(body_evidence: float) -> float:
    if isinstance(body_evidence, bool) or not isinstance(body_evidence, (int, float)) \
            or not 0.0 <= float(body_evidence) <= 1.0:
        raise ValueError(f"body_evidence must be a number in [0, 1], got {body_evidence!r}")
    return float(body_evidence)


def render_synthetic_sample_detailed(rng: np.random.Generator, image_size: int = 96, num_classes: int = 6,
                                     max_objects: int = 3, *, body_evidence: float = 0.0) -> SyntheticSample:
    """Draw one synthetic image with its class mask, saliency and head/body part mask.

    Args:
        rng: numpy random generator (all randomness comes from it).
        image_size: side S of the square image.
        num_classes: number of VOC class slots used (the first ``num_classes``).
        max_objects: at most this many creatures (at least 1).
        body_evidence: probability that a creature's body is tinted with its class hue (hue within ±0.03 of
            the head's, saturation 0.15-0.35); 0 (default) draws exactly the images of generator version 1,
            whose bodies carry no class evidence.

    Returns:
        A `SyntheticSample`.

    Shape:
        - image: ``(S, S, 3)``; mask, saliency, part_mask: ``(S, S)``.

    Examples:
        >>> import numpy as np
        >>> s = render_synthetic_sample_detailed(np.random.default_rng(0), 32, body_evidence=1.0)
        >>> sorted(np.unique(s.part_mask).tolist()), all(s.body_tinted)
        ([0, 1, 2], True)
    """
    _check_num_classes(num_classes)
    evidence = _check_body_evidence(body_evidence)
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    img = _background(rng, S, yy, xx)
    mask = np.zeros((S, S), dtype=np.uint8)
    parts = np.zeros((S, S), dtype=np.uint8)
    tinted: list[bool] = []
    n = int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        cls = int(rng.integers(num_classes))
        a = rng.uniform(0.15, 0.25) * S  # body semi-major axis
        b = a * rng.uniform(0.5, 0.75)
        # centre: keep objects apart so heads stay mostly visible (a few tries, then accept)
        for _try in range(25):
            cy, cx = rng.uniform(0.22 * S, 0.78 * S, size=2)
            if all(np.hypot(cy - py, cx - px) > 0.75 * (a + pa) for py, px, pa in placed):
                break
        placed.append((cy, cx, a))
        theta = rng.uniform(0, 2 * np.pi)
        ct, st = np.cos(theta), np.sin(theta)
        u = (xx - cx) * ct + (yy - cy) * st  # along the body axis
        w = -(xx - cx) * st + (yy - cy) * ct
        power = 2.0 if rng.random() < 0.5 else 4.0  # ellipse or rounded box
        body = (np.abs(u / a) ** power + np.abs(w / b) ** power) <= 1.0
        r = b * rng.uniform(0.55, 0.7)
        hu, hw_ = u - 0.95 * a, w  # head centre on the axis, near the body's end
        hdist = np.hypot(hu, hw_)
        head = hdist <= r
        # generic body: muted colour (same distribution for every class), mild shading, little texture
        bh, bs, bv = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.85)
        hue, pattern, period = _class_style(cls, num_classes)
        tint = False
        if evidence > 0.0:  # no extra draws at 0: the version-1 images stay reproducible
            tint = bool(rng.random() < evidence)
            if tint:  # weak class evidence on the body: its class hue, faintly saturated
                bh, bs = hue + rng.uniform(-0.03, 0.03), rng.uniform(0.15, 0.35)
        tinted.append(tint)
        shade = 0.08 * (u / a) + 0.015 * rng.standard_normal((S, S))
        body_rgb = _hsv_to_rgb(np.array(bh), np.array(bs), np.array(1.0)) * np.clip(bv + shade, 0, 1)[..., None]
        # class-specific head: saturated hue + pattern
        pat = _head_pattern(pattern, hu / r, hw_ / r, hdist / r, period)
        hv = np.where(pat > 0, rng.uniform(0.8, 0.95), rng.uniform(0.25, 0.4))
        head_rgb = _hsv_to_rgb(np.array(hue + rng.uniform(-0.015, 0.015)),
                               np.array(rng.uniform(0.75, 0.95)), np.array(1.0)) * hv[..., None]
        obj = body | head
        img = np.where(body[..., None], body_rgb, img)
        img = np.where(head[..., None], head_rgb, img)
        mask[obj] = cls + 1
        parts[body] = PART_BODY
        parts[head] = PART_HEAD
    image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    # imperfect saliency: blurred foreground with a soft low-frequency error
    fg = (mask > 0).astype(np.float64)
    k = max(1, S // 24)
    pad = np.pad(fg, k, mode="edge")
    c = pad.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    box = (c[2 * k + 1:, 2 * k + 1:] - c[:-2 * k - 1, 2 * k + 1:] - c[2 * k + 1:, :-2 * k - 1]
           + c[:-2 * k - 1, :-2 * k - 1]) / (2 * k + 1) ** 2
    sal = np.clip(0.85 * box + 0.3 * (_smooth_noise(rng, S, 3) - 0.5), 0, 1)
    saliency = np.round(sal * 255).astype(np.uint8)
    return SyntheticSample(image, mask, saliency, parts, tuple(tinted))


def render_synthetic_sample(rng: np.random.Generator, image_size: int = 96, num_classes: int = 6,
                            max_objects: int = 3, *, body_evidence: float = 0.0
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic image (`render_synthetic_sample_detailed` without the part mask).

    Args:
        rng: numpy random generator (all randomness comes from it).
        image_size: side S of the square image.
        num_classes: number of VOC class slots used (the first ``num_classes``).
        max_objects: at most this many creatures (at least 1).
        body_evidence: probability that a body carries a faint tint of its class hue (default 0: none).

    Returns:
        ``(image uint8 S×S×3, mask uint8 S×S with values 0..num_classes, saliency uint8 S×S)``.

    Shape:
        - image: ``(S, S, 3)``; mask: ``(S, S)``; saliency: ``(S, S)``.

    Examples:
        >>> import numpy as np
        >>> img, mask, sal = render_synthetic_sample(np.random.default_rng(0), 32)
        >>> img.shape, mask.dtype.name, int(mask.max()) <= 6
        ((32, 32, 3), 'uint8', True)
    """
    s = render_synthetic_sample_detailed(rng, image_size, num_classes, max_objects, body_evidence=body_evidence)
    return s.image, s.mask, s.saliency


def _annotation_xml(name: str, size: int, classes: list[int]) -> str:
    objs = "".join(f"  <object>\n    <name>{VOC_CLASSES[c]}</name>\n    <difficult>0</difficult>\n  </object>\n"
                   for c in classes)
    return (f"<annotation>\n  <folder>VOC2012</folder>\n  <filename>{name}.jpg</filename>\n"
            f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>\n"
            f"  <segmented>1</segmented>\n{objs}</annotation>\n")


def make_synthetic_voc(root: str | os.PathLike, num_train: int = 200, num_val: int = 50, image_size: int = 96,
                       seed: int = 0, num_classes: int = 6, *, num_train_seg: int | None = None,
                       max_objects: int = 3, body_evidence: float = 0.0, image_format: str = "jpg",
                       jpeg_quality: int = 95, saliency: bool = True, annotations: bool = True,
                       overwrite: bool = False) -> Path:
    """Write a synthetic VOC-format dataset under ``root`` and return ``root`` as a ``Path``.

    The output is a deterministic function of the arguments: the same call gives byte-identical
    files (each image draws from its own ``numpy`` generator seeded with ``(seed, split, index)``,
    so image ``i`` does not depend on ``num_train``). If ``root/synthetic.json`` already records the
    same parameters, nothing is regenerated (a cache) unless ``overwrite=True``.

    Args:
        root: output folder (created).
        num_train: number of ``train_aug`` images.
        num_val: number of ``val`` images.
        image_size: side of the square images (>= 16).
        seed: random seed.
        num_classes: VOC class slots in use, the first ``num_classes`` (5..20 recommended; default 6).
        num_train_seg: how many of the ``train_aug`` images also form ``train`` (and get a palette
            PNG in ``SegmentationClass``), mirroring VOC's train ⊂ train_aug; default all.
        max_objects: at most this many objects per image (1..3 by default).
        body_evidence: fraction of the bodies tinted with their class hue, a weak class cue away from the
            head (default 0: class evidence only in the heads, the images of generator version 1).
        image_format: ``"jpg"`` (like VOC) or ``"png"`` (lossless; read with ``image_ext=".png"``).
        jpeg_quality: JPEG quality.
        saliency: also write ``SaliencyMaps/``.
        annotations: also write ``Annotations/*.xml``.
        overwrite: regenerate even if a matching dataset exists.

    Returns:
        The dataset root, ready for ``VOCSegmentation(root, split=...)``.

    Examples:
        >>> import tempfile
        >>> root = make_synthetic_voc(tempfile.mkdtemp(), num_train=2, num_val=1, image_size=32)
        >>> sorted(p.name for p in (root / "ImageSets" / "Segmentation").iterdir())
        ['train.txt', 'train_aug.txt', 'trainval.txt', 'val.txt']
    """
    _check_num_classes(num_classes)
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got num_train={num_train}, num_val={num_val}")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    body_evidence = _check_body_evidence(body_evidence)
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    n_seg = num_train if num_train_seg is None else int(num_train_seg)
    if not 1 <= n_seg <= num_train:
        raise ValueError(f"num_train_seg must be in [1, num_train={num_train}], got {num_train_seg}")
    root = Path(root)
    params: dict[str, Any] = {
        "version": SYNTHETIC_VERSION, "num_train": num_train, "num_val": num_val, "image_size": int(image_size),
        "seed": int(seed), "num_classes": num_classes, "num_train_seg": n_seg, "max_objects": max_objects,
        "body_evidence": body_evidence, "image_format": image_format, "jpeg_quality": jpeg_quality,
        "saliency": saliency, "annotations": annotations,
    }
    meta = root / "synthetic.json"
    if meta.is_file() and not overwrite:
        try:
            if json.loads(meta.read_text())["params"] == params:
                return root
        except (ValueError, KeyError):
            pass
    if meta.exists():
        meta.unlink()  # invalidate while (re)writing

    train = [f"{_TRAIN_PREFIX}_{i:06d}" for i in range(num_train)]
    val = [f"{_VAL_PREFIX}_{i:06d}" for i in range(num_val)]
    seg_train = set(train[:n_seg])
    labels: dict[str, np.ndarray] = {}
    counts = np.zeros(VOC_NUM_CLASSES, dtype=np.int64)
    for split_code, names in ((0, train), (1, val)):
        for i, name in enumerate(names):
            rng = np.random.default_rng([int(seed), split_code, i])
            sample = render_synthetic_sample_detailed(rng, int(image_size), num_classes, max_objects,
                                                      body_evidence=body_evidence)
            image, mask, sal = sample.image, sample.mask, sample.saliency
            save_image(root / "JPEGImages" / f"{name}.{image_format}", image, quality=jpeg_quality, fsync=False)
            save_label_png(root / "SegmentationClassAug" / f"{name}.png", mask, palette=False, fsync=False)
            save_label_png(root / "PartMasks" / f"{name}.png", sample.part_mask, palette=False, fsync=False)
            if split_code == 1 or name in seg_train:
                save_label_png(root / "SegmentationClass" / f"{name}.png", mask, palette=True, fsync=False)
            if saliency:
                save_image(root / "SaliencyMaps" / f"{name}.png", sal, fsync=False)
            present = sorted(int(v) - 1 for v in np.unique(mask) if 0 < v <= num_classes)
            vec = np.zeros(VOC_NUM_CLASSES, dtype=np.float32)
            vec[present] = 1.0
            labels[name] = vec
            counts += vec.astype(np.int64)
            if annotations:
                with atomic_write(root / "Annotations" / f"{name}.xml", "w", fsync=False) as f:
                    f.write(_annotation_xml(name, int(image_size), present))
    sets = root / "ImageSets" / "Segmentation"
    write_split_list(sets / "train_aug.txt", train)
    write_split_list(sets / "train.txt", [n for n in train if n in seg_train])
    write_split_list(sets / "val.txt", val)
    write_split_list(sets / "trainval.txt", [n for n in train if n in seg_train] + val)
    save_cls_labels(root / "cls_labels.npy", labels)
    info = {
        "params": params,
        "classes_used": {str(k + 1): VOC_CLASSES[k] for k in range(num_classes)},
        "images_per_class": {VOC_CLASSES[k]: int(counts[k]) for k in range(num_classes)},
        "parts": {"0": "background", "1": "body", "2": "head"},
        "description": "wsss-blocks synthetic VOC-format dataset; class evidence sits in each object's head"
                       + (f" (and, faintly, in {body_evidence:.0%} of the bodies)" if body_evidence else ""),
    }
    with atomic_write(meta, "w") as f:
        json.dump(info, f, indent=1)
    return root
