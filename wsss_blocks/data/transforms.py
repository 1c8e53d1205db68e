"""Joint data augmentation for WSSS sample dicts (``image``, ``mask``, ``saliency``), pure PyTorch.

Every transform takes a sample dict and returns a new dict; geometric transforms move ``image``
(float C×H×W), ``mask`` (int64 H×W) and ``saliency`` (float 1×H×W) together, other keys pass through
unchanged. Leading batch dimensions are allowed (one set of random parameters for the whole batch).

Randomness comes from a ``torch.Generator``: pass ``generator=`` at construction or per call (the
call argument wins); with neither, torch's global RNG is used, which ``DataLoader`` seeds per worker.
[`sample_generator`][] makes a generator seeded per (seed, epoch, index) for fully reproducible
per-sample augmentation independent of worker count.

Geometry recording (opt-in): a sample carrying a ``geom`` entry (put there by [`RecordGeometry`][], or
by ``Compose(..., record_geometry=True)``) gets it updated by every geometric transform, so that any
full-image map (e.g. SMAF's offline fused teacher maps) can later be cut exactly like the image with
[`apply_geometry`][]. Recording changes neither the outputs nor the random draws of any transform.

Examples:
    >>> import torch
    >>> from wsss_blocks.data.transforms import Compose, RandomRescale, RandomCrop, RandomHorizontalFlip
    >>> from wsss_blocks.data.transforms import Normalize
    >>> t = Compose([RandomRescale((0.5, 2.0)), RandomHorizontalFlip(), Normalize(), RandomCrop(64)])
    >>> s = {"image": torch.rand(3, 50, 40), "mask": torch.zeros(50, 40, dtype=torch.long)}
    >>> out = t(s, generator=torch.Generator().manual_seed(0))
    >>> tuple(out["image"].shape), tuple(out["mask"].shape)
    ((3, 64, 64), (64, 64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from wsss_blocks._checks import check_finite, check_pair, check_positive, check_tensor, checks_enabled, shape_str

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JointTransform",
    "Compose",
    "RandomRescale",
    "RandomResizeLong",
    "RandomResizeShort",
    "Resize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ColorJitter",
    "Normalize",
    "sample_generator",
    "RecordGeometry",
    "GEOMETRY_FIELDS",
    "identity_geometry",
    "apply_geometry",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "RandomResizeRatio",
    "RandomCropInside",
    "PadTo",
    "PhotoMetricDistortion",
    "photometric_distortion",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict[str, Any]


def sample_generator(seed: int, index: int, epoch: int = 0, device: str | torch.device = "cpu"
                     ) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)``: reproducible per-sample augmentation.

    Examples:
        >>> a = torch.rand(2, generator=sample_generator(0, index=5, epoch=1))
        >>> b = torch.rand(2, generator=sample_generator(0, index=5, epoch=1))
        >>> bool(torch.equal(a, b))
        True
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


def _check_sample(sample: object, name: str = "sample") -> Sample:
    if not isinstance(sample, dict):
        raise TypeError(f"{name} must be a dict with an 'image' entry, got {type(sample).__name__}")
    if "image" not in sample:
        raise ValueError(f"{name} must contain an 'image' entry, got keys {sorted(sample)}")
    img = check_tensor(sample["image"], f"{name}['image']", (3, 4), layout="C×H×W or B×C×H×W", floating=True)
    hw = tuple(img.shape[-2:])
    if 0 in hw:
        raise ValueError(f"{name}['image'] has an empty spatial size {hw[0]}×{hw[1]} (shape {shape_str(img)}); "
                         f"an image needs at least one pixel")
    check_finite(img, f"{name}['image']")
    for key, ndim in (("mask", img.ndim - 1), ("saliency", img.ndim)):
        if key in sample and sample[key] is not None:
            t = check_tensor(sample[key], f"{name}[{key!r}]")
            if t.ndim != ndim or tuple(t.shape[-2:]) != hw or (key == "saliency" and t.shape[-3] != 1):
                want = "H×W" if key == "mask" else "1×H×W"
                if img.ndim == 4:
                    want = "B×" + want
                raise ValueError(f"{name}[{key!r}] must have shape {want} with H×W = {hw[0]}×{hw[1]} (the image's, "
                                 f"{shape_str(img)}), got {shape_str(t)}")
            if key == "mask":
                if t.is_floating_point() or t.dtype == torch.bool:
                    raise TypeError(f"{name}['mask'] must hold class indices (an integer tensor), got dtype {t.dtype}")
                if checks_enabled() and t.numel() and int(t.min()) < 0:
                    raise ValueError(f"{name}['mask'] holds class indices and 255 (ignore), which cannot be "
                                     f"negative; got {int(t.min())}")
            else:
                if not t.is_floating_point():
                    raise TypeError(f"{name}['saliency'] must be a floating-point map in [0, 1], got dtype {t.dtype}")
                check_finite(t, f"{name}['saliency']")
    return sample


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


class JointTransform:
    """Base class: ``__call__(sample, generator=None)`` with a construction-time default generator."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def _gen(self, generator: torch.Generator | None) -> torch.Generator | None:
        return generator if generator is not None else self.generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Apply the transform to a copy of ``sample`` (``generator`` overrides the one given at construction)."""
        _check_sample(sample)
        return self.apply(dict(sample), self._gen(generator))

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:  # pragma: no cover
        """Transform ``sample`` in place and return it (subclasses implement this)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({args})"


GEOMETRY_FIELDS = ("orig_h", "orig_w", "resized_h", "resized_w", "flipped", "top", "left", "crop_h", "crop_w")
"""The entries of a recorded ``geom`` vector, in order (see [`RecordGeometry`][])."""


def identity_geometry(image: Tensor) -> Tensor:
    """The geometry of an untouched image: resized = original size, not flipped, the whole image as the crop.

    Examples:
        >>> identity_geometry(torch.zeros(3, 4, 5)).tolist()
        [4, 5, 4, 5, 0, 0, 0, 4, 5]
    """
    check_tensor(image, "image")
    if image.ndim < 2:
        raise ValueError(f"image must have shape (*, H, W), got shape {shape_str(image)}")
    h, w = (int(v) for v in image.shape[-2:])
    return torch.tensor([h, w, h, w, 0, 0, 0, h, w], dtype=torch.long)


def _geometry(sample: Sample) -> list[int] | None:
    g = sample.get("geom")
    if g is None:
        return None
    if not isinstance(g, Tensor) or g.shape != (len(GEOMETRY_FIELDS),):
        got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(f"sample['geom'] must be a tensor of {len(GEOMETRY_FIELDS)} entries {GEOMETRY_FIELDS} "
                         f"(from RecordGeometry), got {got}")
    return [int(v) for v in g.tolist()]


def _set_geometry(sample: Sample, values: list[int]) -> None:
    sample["geom"] = torch.tensor(values, dtype=torch.long)


def _geom_resize(sample: Sample, size: tuple[int, int]) -> None:
    """Record a resize of the current image to ``size``.

    Only before any crop: a crop followed by a resize is not expressible as one resize + flip + crop of the
    original.
    """
    g = _geometry(sample)
    if g is None:
        return
    oh, ow, rh, rw, fl, top, left, ch, cw = g
    if (top, left, ch, cw) != (0, 0, rh, rw):
        raise ValueError(f"geometry recording supports resizing only before cropping, but sample['geom'] already "
                         f"records a crop (top={top}, left={left}, crop {ch}×{cw} of {rh}×{rw}); put the resize "
                         f"before the crop in the pipeline")
    _set_geometry(sample, [oh, ow, size[0], size[1], fl, 0, 0, size[0], size[1]])


def _geom_flip(sample: Sample) -> None:
    """Record a horizontal flip of the current crop window (= the mirrored window of the mirrored image)."""
    g = _geometry(sample)
    if g is None:
        return
    oh, ow, rh, rw, fl, top, left, ch, cw = g
    _set_geometry(sample, [oh, ow, rh, rw, 1 - fl, top, rw - left - cw, ch, cw])


def _geom_crop(sample: Sample, dy: int, dx: int, size: tuple[int, int]) -> None:
    """Record a crop whose pixel (0, 0) is pixel (dy, dx) of the current image (negative = padding)."""
    g = _geometry(sample)
    if g is None:
        return
    oh, ow, rh, rw, fl, top, left, _, _ = g
    _set_geometry(sample, [oh, ow, rh, rw, fl, top + dy, left + dx, size[0], size[1]])


def apply_geometry(x: Tensor, geom: Tensor | Sequence[int], mode: str = "bilinear", align_corners: bool | None = True,
                   pad_value: float = 0.0) -> Tensor:
    """Cut a full-image map exactly like a recorded augmentation: resize, optional flip, crop with padding.

    ``geom`` is the vector recorded by [`RecordGeometry`][] (entries [`GEOMETRY_FIELDS`][]): the map,
    of the original image size, is resized to ``resized_h × resized_w`` with ``mode`` (released SMAF:
    bilinear, ``align_corners=True``, ``data/VOC_dataset.py``), flipped left-right if ``flipped``, and the window
    ``[top, top + crop_h) × [left, left + crop_w)`` is taken, positions outside the resized map filled with
    ``pad_value`` (released: 0, which the SMAF target turns into pure background).

    With ``mode="bilinear", align_corners=False`` (the transforms' own image interpolation) the result equals
    the augmented image of a resize → flip → crop pipeline exactly; two successive resizes are recorded as
    one (the map is resized once, from the original size to the final size).

    Args:
        x: map(s) at the original image size.
        geom: the recorded geometry (9 integers).
        mode: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"nearest-exact"``.
        align_corners: for bilinear/bicubic (ignored for nearest modes).
        pad_value: value of the padded positions.

    Shape:
        - x: ``(*, H, W)`` with (H, W) = (orig_h, orig_w) and at least one leading dimension
        - output: ``(*, crop_h, crop_w)``

    Examples:
        >>> g = torch.tensor([2, 2, 2, 2, 1, -1, 0, 3, 2])  # flipped, one padded row on top
        >>> apply_geometry(torch.tensor([[[1., 2.], [3., 4.]]]), g).tolist()
        [[[0.0, 0.0], [2.0, 1.0], [4.0, 3.0]]]
    """
    g = [int(v) for v in (geom.tolist() if isinstance(geom, Tensor) else geom)]
    if len(g) != len(GEOMETRY_FIELDS):
        raise ValueError(f"geom must have {len(GEOMETRY_FIELDS)} entries {GEOMETRY_FIELDS}, got {len(g)}")
    oh, ow, rh, rw, fl, top, left, ch, cw = g
    if min(oh, ow, rh, rw, ch, cw) < 1 or fl not in (0, 1):
        raise ValueError(f"geom has non-positive sizes or a flip flag other than 0/1: {dict(zip(GEOMETRY_FIELDS, g))}")
    check_tensor(x, "x", None)
    if x.ndim < 3 or tuple(x.shape[-2:]) != (oh, ow):
        raise ValueError(f"x must be (*, H, W) at the recorded original size ({oh}, {ow}) with a leading "
                         f"dimension, got shape {tuple(x.shape)}")
    if mode not in ("bilinear", "bicubic", "nearest", "nearest-exact"):
        raise ValueError(f"mode must be 'bilinear', 'bicubic', 'nearest' or 'nearest-exact', got {mode!r}")
    if (rh, rw) != (oh, ow):
        lead = x.shape[:-2]
        x4 = x.reshape(-1, 1, oh, ow) if x.ndim != 4 else x
        kw: dict[str, Any] = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
        y = F.interpolate(x4.float() if not x4.is_floating_point() else x4, size=(rh, rw), mode=mode, **kw)
        x = y.to(x.dtype).reshape(*lead, rh, rw)
    if fl:
        x = x.flip(-1)
    out = x.new_full((*x.shape[:-2], ch, cw), float(pad_value))
    y0, y1 = max(top, 0), min(top + ch, rh)
    x0, x1 = max(left, 0), min(left + cw, rw)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top:y1 - top, x0 - left:x1 - left] = x[..., y0:y1, x0:x1]
    return out


class RecordGeometry(JointTransform):
    """Start recording the geometry of the following transforms in ``sample["geom"]`` (no randomness).

    Sets ``geom`` to the identity geometry of the current image ([`identity_geometry`][]);
    [`RandomRescale`][], [`RandomResizeLong`][], [`RandomHorizontalFlip`][] and [`RandomCrop`][]
    then update it, so that [`apply_geometry`][] cuts any map of the original image exactly like the image.
    The vector (int64, entries [`GEOMETRY_FIELDS`][]) says: resize the original ``orig_h × orig_w`` to
    ``resized_h × resized_w``, flip left-right if ``flipped``, take the ``crop_h × crop_w`` window at
    ``(top, left)`` (negative or overflowing = padding). Resizes must come before crops.

    Shape:
        - adds ``geom``: ``(9,)`` int64

    Examples:
        >>> t = Compose([RecordGeometry(), RandomHorizontalFlip(p=1.0), RandomCrop(4)])
        >>> s = t({"image": torch.rand(3, 2, 3)}, generator=torch.Generator().manual_seed(0))
        >>> len(s["geom"]), s["geom"][:5].tolist()
        (9, [2, 3, 2, 3, 1])
    """

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        sample["geom"] = identity_geometry(sample["image"])
        return sample


class Compose(JointTransform):
    """Apply transforms in order, passing one generator through all of them.

    Plain callables ``f(sample) -> sample`` may be mixed in; they get no generator. With
    ``record_geometry=True`` the sample's ``geom`` entry is started first (as [`RecordGeometry`][] does),
    so the geometric transforms record what they did (see [`apply_geometry`][]).

    Examples:
        >>> t = Compose([RandomHorizontalFlip(p=1.0), Normalize(mean=(0, 0, 0), std=(1, 1, 1))])
        >>> out = t({"image": torch.arange(2.).view(1, 1, 2).expand(3, 1, 2)})
        >>> out["image"].tolist()[0] == [[1.0, 0.0]]
        True
    """

    def __init__(self, transforms: Sequence[Callable[..., Sample]], generator: torch.Generator | None = None,
                 record_geometry: bool = False):
        super().__init__(generator)
        self.transforms = list(transforms)
        self.record_geometry = bool(record_geometry)

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        if self.record_geometry and sample.get("geom") is None:
            sample["geom"] = identity_geometry(sample["image"])
        for t in self.transforms:
            sample = t(sample, generator=generator) if isinstance(t, JointTransform) else t(sample)
        return sample


_SAL_MODES = ("bilinear", "nearest")


def _check_saliency_interpolation(mode: str) -> str:
    if mode not in _SAL_MODES:
        raise ValueError(f"saliency_interpolation must be 'bilinear' or 'nearest', got {mode!r}")
    return mode


def _resize(sample: Sample, size: tuple[int, int], interpolation: str, antialias: bool,
            saliency_interpolation: str = "bilinear") -> Sample:
    def run(x: Tensor, mode: str, aa: bool) -> Tensor:
        lead = x.shape[:-2]
        x4 = x.reshape(-1, 1, *x.shape[-2:]) if x.ndim < 4 else x
        kwargs: dict[str, Any] = {}
        if mode in ("bilinear", "bicubic"):
            kwargs = {"align_corners": False, "antialias": aa}
        y = F.interpolate(x4, size=size, mode=mode, **kwargs)
        return y.reshape(*lead, *size) if x.ndim < 4 else y

    _geom_resize(sample, size)
    img = sample["image"]
    out = run(img, interpolation, antialias)
    if interpolation == "bicubic":
        out = out.clamp(float(img.min()), float(img.max())) if img.numel() else out
    sample["image"] = out
    if sample.get("mask") is not None:
        m = sample["mask"]
        sample["mask"] = run(m.float(), "nearest-exact", False).round().to(m.dtype)
    if sample.get("saliency") is not None:
        if saliency_interpolation == "nearest":  # PIL's NEAREST (pixel centres): nearest-exact
            sample["saliency"] = run(sample["saliency"], "nearest-exact", False)
        else:
            sample["saliency"] = run(sample["saliency"], "bilinear", antialias)
    return sample


class RandomRescale(JointTransform):
    """Rescale image, mask and saliency by one random factor (ToCo/AFA ``random_scaling``).

    The factor is uniform in ``scale_range`` or, with ``scales``, drawn uniformly from that list
    (DeepLab-style discrete scales). Image and saliency use ``interpolation``; masks use
    nearest-exact, so no new label values appear. Output size = ``round(H·s) × round(W·s)``.

    Args:
        scale_range: ``(low, high)`` bounds of the uniform factor; default ``(0.5, 2.0)`` (ToCo).
        scales: optional list of discrete factors; overrides ``scale_range``.
        interpolation: ``"bilinear"`` (default) or ``"bicubic"``.
        antialias: antialias when downscaling (PIL-like); default False.
        saliency_interpolation: ``"bilinear"`` (default) or ``"nearest"`` (PIL's, as L2G's VOC loader
            resizes saliency).
        generator: default ``torch.Generator``.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, H', W')``; mask ``(*, H, W)``; saliency ``(*, 1, H, W)``.

    Examples:
        >>> s = RandomRescale(scales=[2.0])({"image": torch.rand(3, 4, 5)})
        >>> tuple(s["image"].shape)
        (3, 8, 10)
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), scales: Sequence[float] | None = None,
                 interpolation: str = "bilinear", antialias: bool = False,
                 generator: torch.Generator | None = None, saliency_interpolation: str = "bilinear"):
        super().__init__(generator)
        self.saliency_interpolation = _check_saliency_interpolation(saliency_interpolation)
        if scales is not None:
            scales = [float(s) for s in scales]
            if not scales:
                raise ValueError("scales must be a non-empty list of positive factors, got []")
            for s in scales:
                check_positive(s, "scales")
        lo, hi = (float(v) for v in scale_range)
        check_positive(lo, "scale_range[0]")
        if hi < lo:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {scale_range}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.scale_range = (lo, hi)
        self.scales = scales
        self.interpolation = interpolation
        self.antialias = antialias

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        if self.scales is not None:
            i = int(torch.randint(len(self.scales), (), generator=generator))
            s = self.scales[i]
        else:
            s = _uniform(*self.scale_range, generator)
        h, w = sample["image"].shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return sample
        return _resize(sample, size, self.interpolation, self.antialias, self.saliency_interpolation)


class _RandomResizeSide(JointTransform):
    """Resize so that one side (``"long"`` or ``"short"``) is a random integer in ``[low, high]``.

    The aspect ratio is kept (shared by [`RandomResizeLong`][] and [`RandomResizeShort`][]).
    """

    side = "long"

    def _setup(self, low: int, high: int, interpolation: str, antialias: bool,
               saliency_interpolation: str = "bilinear") -> None:
        name = f"min_{self.side}", f"max_{self.side}"
        if not (1 <= low <= high):
            raise ValueError(f"need 1 <= {name[0]} <= {name[1]}, got {name[0]}={low}, {name[1]}={high}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self._low, self._high = int(low), int(high)
        self.interpolation = interpolation
        self.antialias = antialias
        self.saliency_interpolation = _check_saliency_interpolation(saliency_interpolation)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        target = int(torch.randint(self._low, self._high + 1, (), generator=generator))
        h, w = sample["image"].shape[-2:]
        s = target / (max(h, w) if self.side == "long" else min(h, w))
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return sample
        return _resize(sample, size, self.interpolation, self.antialias, self.saliency_interpolation)


class RandomResizeLong(_RandomResizeSide):
    """Resize so the long side is a random integer in ``[min_long, max_long]`` (IRN/PSA style).

    IRN trains its CAM network with ``resize_long=(320, 640)``.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, H', W')`` with ``max(H', W')`` in the range.

    Examples:
        >>> s = RandomResizeLong(10, 10)({"image": torch.rand(3, 4, 5)})
        >>> tuple(s["image"].shape)
        (3, 8, 10)
    """

    side = "long"

    def __init__(self, min_long: int = 320, max_long: int = 640, interpolation: str = "bilinear",
                 antialias: bool = False, generator: torch.Generator | None = None,
                 saliency_interpolation: str = "bilinear"):
        super().__init__(generator)
        self._setup(min_long, max_long, interpolation, antialias, saliency_interpolation)
        self.min_long, self.max_long = self._low, self._high


class RandomCrop(JointTransform):
    """Random crop to ``size``; smaller inputs are padded first, at a random position.

    As ToCo/AFA ``random_crop``: the image is placed at a random offset inside a canvas of
    ``max(H, h) × max(W, w)`` filled with the pad values, then a random ``h × w`` window is taken.
    Padded mask pixels get ``pad_mask_value`` (255 = ignore), so they never count in a loss.
    Apply after [`Normalize`][] to pad with the mean colour (``pad_image_value=0``), as ToCo does.

    Args:
        size: crop size, int or ``(h, w)``.
        pad_image_value: value for padded image pixels.
        pad_mask_value: value for padded mask pixels (ignore index).
        pad_saliency_value: value for padded saliency pixels.
        generator: default ``torch.Generator``.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, h, w)``; mask ``(*, h, w)``; saliency ``(*, 1, h, w)``.

    Examples:
        >>> s = RandomCrop(4)({"image": torch.ones(3, 2, 2), "mask": torch.ones(2, 2, dtype=torch.long)})
        >>> int((s["mask"] == 255).sum()), float(s["image"].sum())
        (12, 12.0)
    """

    def __init__(self, size: int | tuple[int, int], pad_image_value: float = 0.0, pad_mask_value: int = 255,
                 pad_saliency_value: float = 0.0, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.size = check_pair(size, "size")
        self.pad_image_value = float(pad_image_value)
        self.pad_mask_value = int(pad_mask_value)
        self.pad_saliency_value = float(pad_saliency_value)

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        ch, cw = self.size
        h, w = sample["image"].shape[-2:]
        H, W = max(h, ch), max(w, cw)
        oy = int(torch.randint(H - h + 1, (), generator=generator))
        ox = int(torch.randint(W - w + 1, (), generator=generator))
        y0 = int(torch.randint(H - ch + 1, (), generator=generator))
        x0 = int(torch.randint(W - cw + 1, (), generator=generator))
        pad = (ox, W - w - ox, oy, H - h - oy)
        _geom_crop(sample, y0 - oy, x0 - ox, (ch, cw))
        values = {"image": self.pad_image_value, "mask": self.pad_mask_value, "saliency": self.pad_saliency_value}
        for key, value in values.items():
            x = sample.get(key)
            if x is None:
                continue
            if any(pad):
                x = F.pad(x, pad, mode="constant", value=value)
            sample[key] = x[..., y0:y0 + ch, x0:x0 + cw]
        return sample


class RandomHorizontalFlip(JointTransform):
    """Flip image, mask and saliency left-right with probability ``p``.

    Examples:
        >>> out = RandomHorizontalFlip(p=1.0)({"image": torch.tensor([[[1., 2.]]] * 3)})
        >>> out["image"].tolist()[0] == [[2.0, 1.0]]
        True
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__(generator)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        if float(torch.rand((), generator=generator)) >= self.p:
            return sample
        _geom_flip(sample)
        for key in ("image", "mask", "saliency"):
            if sample.get(key) is not None:
                sample[key] = sample[key].flip(-1)
        return sample


def _grayscale(img: Tensor) -> Tensor:
    r, g, b = img.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rgb_to_hsv(img: Tensor) -> Tensor:
    """RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn), channel dim -3.

    Examples:
        >>> rgb_to_hsv(torch.tensor([0., 1., 1.]).view(3, 1, 1)).flatten().tolist()
        [0.5, 1.0, 1.0]
    """
    r, g, b = img.unbind(-3)
    maxc, argmax = img.max(dim=-3)
    minc = img.amin(dim=-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hr = ((g - b) / safe) % 6
    hg = (b - r) / safe + 2
    hb = (r - g) / safe + 4
    h = torch.where(argmax == 0, hr, torch.where(argmax == 1, hg, hb))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of [`rgb_to_hsv`][].

    Examples:
        >>> hsv_to_rgb(torch.tensor([0.5, 1., 1.]).view(3, 1, 1)).flatten().tolist()
        [0.0, 1.0, 1.0]
    """
    h, s, v = hsv.unbind(-3)
    h6 = (h % 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    # rows: sector i -> (r, g, b)
    choices = torch.stack([
        torch.stack([v, t, p], -1), torch.stack([q, v, p], -1), torch.stack([p, v, t], -1),
        torch.stack([p, q, v], -1), torch.stack([t, p, v], -1), torch.stack([v, p, q], -1)], dim=-2)
    idx = i.unsqueeze(-1).unsqueeze(-1).expand(*i.shape, 1, 3)
    rgb = choices.gather(-2, idx).squeeze(-2)
    return rgb.movedim(-1, -3)


class ColorJitter(JointTransform):
    """Random brightness, contrast, saturation (and hue) on the image only, in random order.

    Factors are uniform in ``[max(0, 1 - x), 1 + x]`` (hue shift uniform in ``[-hue, hue]`` turns),
    applied in a random order like torchvision's ``ColorJitter``; the image must be in [0, 1] (put
    this before [`Normalize`][]). Defaults 0.3/0.3/0.3/0 are PSA/IRN-family values; ToCo adds hue 0.1.

    Shape:
        - image ``(*, 3, H, W)`` in [0, 1]; unchanged shape.

    Examples:
        >>> img = torch.full((3, 2, 2), 0.5)
        >>> out = ColorJitter(brightness=(2.0, 2.0), contrast=0, saturation=0)({"image": img})["image"]
        >>> float(out.max())
        1.0
    """

    def __init__(self, brightness: float | tuple[float, float] = 0.3, contrast: float | tuple[float, float] = 0.3,
                 saturation: float | tuple[float, float] = 0.3, hue: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(generator)
        self.brightness = self._range(brightness, "brightness")
        self.contrast = self._range(contrast, "contrast")
        self.saturation = self._range(saturation, "saturation")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
        self.hue = float(hue)

    @staticmethod
    def _range(x: float | tuple[float, float], name: str) -> tuple[float, float]:
        if isinstance(x, (tuple, list)):
            lo, hi = float(x[0]), float(x[1])
        else:
            if x < 0:
                raise ValueError(f"{name} must be >= 0, got {x}")
            lo, hi = max(0.0, 1.0 - float(x)), 1.0 + float(x)
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} range must satisfy 0 <= low <= high, got ({lo}, {hi})")
        return lo, hi

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        img = sample["image"]
        if not img.is_floating_point() or img.shape[-3] != 3:
            raise ValueError(f"ColorJitter needs a float RGB image (3 channels) in [0, 1], got dtype {img.dtype} "
                             f"and shape {tuple(img.shape)}")
        order = torch.randperm(4, generator=generator).tolist()
        b = _uniform(*self.brightness, generator)
        c = _uniform(*self.contrast, generator)
        s = _uniform(*self.saturation, generator)
        hshift = _uniform(-self.hue, self.hue, generator)
        for op in order:
            if op == 0 and self.brightness != (1.0, 1.0):
                img = (img * b).clamp(0, 1)
            elif op == 1 and self.contrast != (1.0, 1.0):
                mean = _grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
                img = (c * img + (1 - c) * mean).clamp(0, 1)
            elif op == 2 and self.saturation != (1.0, 1.0):
                img = (s * img + (1 - s) * _grayscale(img)).clamp(0, 1)
            elif op == 3 and self.hue > 0:
                hsv = rgb_to_hsv(img)
                hsv = torch.cat([(hsv[..., :1, :, :] + hshift) % 1.0, hsv[..., 1:, :, :]], dim=-3)
                img = hsv_to_rgb(hsv)
        sample["image"] = img
        return sample


class Normalize(JointTransform):
    """Subtract ``mean`` and divide by ``std`` per channel (ImageNet statistics by default).

    Shape:
        - image ``(*, C, H, W)``; unchanged shape. Mask and saliency are untouched.

    Examples:
        >>> out = Normalize()({"image": torch.ones(3, 1, 1)})["image"].flatten()
        >>> tuple(round(v, 3) for v in out.tolist())
        (2.249, 2.429, 2.64)
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__(None)
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        for v in std:
            check_positive(float(v), "std")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        img = sample["image"]
        if img.shape[-3] != len(self.mean):
            raise ValueError(f"image has {img.shape[-3]} channels but mean/std have {len(self.mean)} entries")
        if not img.is_floating_point():
            raise TypeError(f"Normalize needs a floating-point image, got dtype {img.dtype}")
        mean = torch.tensor(self.mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
        sample["image"] = (img - mean) / std
        return sample



class RandomResizeShort(_RandomResizeSide):
    """Resize so the short side is a random integer in ``[min_short, max_short]``, keeping the aspect ratio.

    L2G's VOC global view: the short side to 512 (bicubic; the saliency map nearest,
    ``saliency_interpolation="nearest"``) before the random 448 crop (``PengtaoJiang/L2G``
    ``utils/LoadData.py`` lines 351-356, ``utils/imutils.py`` ``ResizeShort``).

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, H', W')`` with ``min(H', W')`` in the range.

    Examples:
        >>> s = RandomResizeShort(8, 8)({"image": torch.rand(3, 4, 5)})
        >>> tuple(s["image"].shape)
        (3, 8, 10)
    """

    side = "short"

    def __init__(self, min_short: int = 512, max_short: int = 512, interpolation: str = "bilinear",
                 antialias: bool = False, generator: torch.Generator | None = None,
                 saliency_interpolation: str = "bilinear"):
        super().__init__(generator)
        self._setup(min_short, max_short, interpolation, antialias, saliency_interpolation)
        self.min_short, self.max_short = self._low, self._high


class Resize(JointTransform):
    """Warp image, mask and saliency to a fixed ``(H, W)``; the aspect ratio is not kept.

    L2G's COCO global view: the whole image warped to 448×448 (``L2G:utils/transforms/transforms.py``
    lines 138-147). Masks use nearest-exact, so no new label values appear.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, size[0], size[1])``.

    Examples:
        >>> s = Resize((6, 6))({"image": torch.rand(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long)})
        >>> tuple(s["image"].shape), tuple(s["mask"].shape)
        ((3, 6, 6), (6, 6))
    """

    def __init__(self, size: int | tuple[int, int], interpolation: str = "bilinear", antialias: bool = False,
                 saliency_interpolation: str = "bilinear"):
        super().__init__(None)
        self.saliency_interpolation = _check_saliency_interpolation(saliency_interpolation)
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(hw) < 1:
            raise ValueError(f"size must be positive, got {size}")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.size = hw
        self.interpolation = interpolation
        self.antialias = antialias

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        if tuple(sample["image"].shape[-2:]) == self.size:
            return sample
        return _resize(sample, self.size, self.interpolation, self.antialias, self.saliency_interpolation)


# --------------------------------------------------------------------------------------------------
# mmsegmentation's training pipeline (PMM's PSPNet: Resize -> RandomCrop -> RandomFlip ->
# PhotoMetricDistortion -> Normalize -> Pad)
# --------------------------------------------------------------------------------------------------
def _resize_cv2_like(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize image (bilinear, no antialias), mask and saliency like mmcv's cv2 calls (INTER_LINEAR/NEAREST)."""
    def run(x: Tensor, mode: str) -> Tensor:
        x4 = x.reshape(-1, 1, *x.shape[-2:]) if x.ndim < 4 else x
        kw: dict[str, Any] = {"align_corners": False} if mode == "bilinear" else {}
        y = F.interpolate(x4, size=size, mode=mode, **kw)
        return y.reshape(*x.shape[:-2], *size) if x.ndim < 4 else y

    _geom_resize(sample, size)
    sample["image"] = run(sample["image"], "bilinear")
    if sample.get("mask") is not None:
        m = sample["mask"]
        sample["mask"] = run(m.float(), "nearest").round().to(m.dtype)  # cv2 INTER_NEAREST: floor(x·scale)
    if sample.get("saliency") is not None:
        sample["saliency"] = run(sample["saliency"], "bilinear")
    return sample


class RandomResizeRatio(JointTransform):
    """Mmsegmentation's ``Resize(img_scale, ratio_range, keep_ratio=True)``: a random multiple of a target scale.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the image is rescaled, keeping its aspect ratio,
    by the largest factor with long side <= ``r·max(img_scale)`` and short side <= ``r·min(img_scale)``
    (mmcv ``rescale_size``), to ``int(W·f + 0.5) × int(H·f + 0.5)``; the image bilinearly (cv2
    ``INTER_LINEAR``: no antialiasing), the mask nearest (cv2 ``INTER_NEAREST``). PMM's PSPNet trains with
    ``img_scale=(2048, 512)``, ``ratio_range=(0.5, 2.0)`` (``Eli-YiLi/WSSS_MMSeg``
    ``configs/_base_/datasets/pascal_voc12.py:10``): a VOC image's short side becomes 256 … 1024.

    Args:
        img_scale: ``(long, short)`` target scale.
        ratio_range: ``(low, high)`` bounds of the ratio.
        generator: default ``torch.Generator``.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, H', W')``; mask ``(*, H, W)``; saliency ``(*, 1, H, W)``.

    Examples:
        >>> t = RandomResizeRatio((2048, 512), (1.0, 1.0))
        >>> tuple(t({"image": torch.rand(3, 375, 500)})["image"].shape)  # short side 375 -> 512
        (3, 512, 683)
    """

    def __init__(self, img_scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 generator: torch.Generator | None = None):
        super().__init__(generator)
        if len(img_scale) != 2 or min(int(v) for v in img_scale) < 1:
            raise ValueError(f"img_scale must be a (long, short) pair of positive ints, got {img_scale}")
        lo, hi = (float(v) for v in ratio_range)
        check_positive(lo, "ratio_range[0]")
        if hi < lo:
            raise ValueError(f"ratio_range must be (low, high) with low <= high, got {ratio_range}")
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.ratio_range = (lo, hi)

    @staticmethod
    def output_size(h: int, w: int, img_scale: tuple[int, int], ratio: float) -> tuple[int, int]:
        """``(H', W')`` of an ``h × w`` image at ``ratio`` (mmcv ``rescale_size`` with ``int(x + 0.5)``)."""
        long_edge, short_edge = max(img_scale) * ratio, min(img_scale) * ratio
        f = min(long_edge / max(h, w), short_edge / min(h, w))
        return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        r = _uniform(*self.ratio_range, generator)
        h, w = sample["image"].shape[-2:]
        size = self.output_size(int(h), int(w), self.img_scale, r)
        if size == (h, w):
            return sample
        return _resize_cv2_like(sample, size)


class RandomCropInside(JointTransform):
    """Mmsegmentation's ``RandomCrop(crop_size, cat_max_ratio)``: a window inside the image, never padded.

    The window's offset is uniform in ``[0, max(H - h, 0)]`` (and likewise horizontally); an image smaller than
    the crop keeps its size along that side (pad it afterwards with [`PadTo`][], as mmseg's ``Pad`` does
    after flip and colour distortion). With ``cat_max_ratio < 1`` and a mask, a window is redrawn (up to 10
    times, then the last draw is kept) while a single class (``ignore_index`` excluded) covers at least
    ``cat_max_ratio`` of its labelled pixels or only one class is present (``mmseg/datasets/pipelines/
    transforms.py`` ``RandomCrop``; PMM: 512, 0.75).

    Args:
        size: crop size, int or ``(h, w)``.
        cat_max_ratio: largest share of one class in an accepted window (1.0 = no check).
        ignore_index: mask value left out of the class count.
        generator: default ``torch.Generator``.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, min(H, h), min(W, w))``; mask and saliency alike.

    Examples:
        >>> mask = torch.zeros(8, 8, dtype=torch.long); mask[:, 4:] = 1  # only windows at x = 2 are accepted
        >>> s = RandomCropInside(4, cat_max_ratio=0.75)({"image": torch.rand(3, 8, 8), "mask": mask},
        ...                                              generator=torch.Generator().manual_seed(1))
        >>> s["image"].shape[-2:], s["mask"].float().mean().item()  # half of each class
        (torch.Size([4, 4]), 0.5)
    """

    def __init__(self, size: int | tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = 255,
                 generator: torch.Generator | None = None):
        super().__init__(generator)
        self.size = check_pair(size, "size")
        if not 0.0 < float(cat_max_ratio) <= 1.0:
            raise ValueError(f"cat_max_ratio must lie in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def _accept(self, mask: Tensor, oy: int, ox: int) -> bool:
        ch, cw = self.size
        crop = mask[..., oy:oy + ch, ox:ox + cw]
        _, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
        return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        ch, cw = self.size
        h, w = (int(v) for v in sample["image"].shape[-2:])

        def draw() -> tuple[int, int]:
            return (int(torch.randint(max(h - ch, 0) + 1, (), generator=generator)),
                    int(torch.randint(max(w - cw, 0) + 1, (), generator=generator)))

        oy, ox = draw()
        mask = sample.get("mask")
        if self.cat_max_ratio < 1.0 and mask is not None:
            for _ in range(10):
                if self._accept(mask, oy, ox):
                    break
                oy, ox = draw()
        size = (min(ch, h), min(cw, w))
        _geom_crop(sample, oy, ox, size)
        for key in ("image", "mask", "saliency"):
            if sample.get(key) is not None:
                sample[key] = sample[key][..., oy:oy + ch, ox:ox + cw]
        return sample


class PadTo(JointTransform):
    """Pad image, mask and saliency at the bottom and right to at least ``size`` (mmsegmentation's ``Pad``).

    Args:
        size: target size, int or ``(h, w)``; larger inputs are left as they are.
        pad_image_value: value for padded image pixels (mmseg pads the normalised image with 0).
        pad_mask_value: value for padded mask pixels (255 = ignore).
        pad_saliency_value: value for padded saliency pixels.

    Shape:
        - image ``(*, C, H, W)`` -> ``(*, C, max(H, h), max(W, w))``; mask and saliency alike.

    Examples:
        >>> s = PadTo(4)({"image": torch.ones(3, 2, 3), "mask": torch.zeros(2, 3, dtype=torch.long)})
        >>> s["mask"].tolist()
        [[0, 0, 0, 255], [0, 0, 0, 255], [255, 255, 255, 255], [255, 255, 255, 255]]
    """

    def __init__(self, size: int | tuple[int, int], pad_image_value: float = 0.0, pad_mask_value: int = 255,
                 pad_saliency_value: float = 0.0):
        super().__init__(None)
        self.size = check_pair(size, "size")
        self.pad_image_value = float(pad_image_value)
        self.pad_mask_value = int(pad_mask_value)
        self.pad_saliency_value = float(pad_saliency_value)

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        h, w = (int(v) for v in sample["image"].shape[-2:])
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph == 0 and pw == 0:
            return sample
        g = _geometry(sample)
        if g is not None:  # the window grows to the bottom right (the new pixels are padding)
            _set_geometry(sample, [*g[:7], h + ph, w + pw])
        values = {"image": self.pad_image_value, "mask": self.pad_mask_value, "saliency": self.pad_saliency_value}
        for key, value in values.items():
            x = sample.get(key)
            if x is not None:
                sample[key] = F.pad(x, (0, pw, 0, ph), mode="constant", value=value)
        return sample


def _rgb_to_hsv_u8(x: Tensor) -> Tensor:
    """OpenCV's 8-bit ``RGB2HSV`` on integer-valued floats in [0, 255]: H in [0, 180) (2° units), S and V in [0, 255].

    ``color_hsv.simd.hpp`` ``RGB2HSV_b``: V = max, S = round(255·(V − min)/V) and H from the max channel (red
    first, then green), all in 12-bit fixed point, rounded half up; negative hues wrap by 180.
    """
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    diff = v - vmin
    shift = 4096.0
    sdiv = torch.where(v > 0, torch.round(255.0 * shift / v.clamp_min(1.0)), torch.zeros_like(v))
    s = torch.floor((diff * sdiv + shift / 2) / shift)
    hdiv = torch.where(diff > 0, torch.round(180.0 * shift / (6.0 * diff.clamp_min(1.0))), torch.zeros_like(diff))
    num = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = torch.floor((num * hdiv + shift / 2) / shift)
    h = torch.where(h < 0, h + 180.0, h)
    return torch.stack([h, s, v], dim=-3)


def _hsv_u8_to_rgb(hsv: Tensor) -> Tensor:
    """OpenCV's 8-bit ``HSV2RGB`` on integer-valued floats (float32, truncated).

    ``H·(6/180)`` sectors, ``S/255``, ``V/255``, the six-sector formula, ×255 and truncated, as OpenCV's vectorised
    loop does (``v_trunc``; its scalar loop for the last pixels of a row rounds instead, so OpenCV itself differs
    by 1 there).
    """
    h, s, v = hsv.float().unbind(-3)
    hh = h * (6.0 / 180.0)
    sector = torch.floor(hh)
    f = hh - sector
    s1, v1 = s * (1.0 / 255.0), v * (1.0 / 255.0)
    p = v1 * (1 - s1)
    q = v1 * (1 - s1 * f)
    t = v1 * (1 - s1 * (1 - f))
    sec = (sector.long() % 6).unsqueeze(-1)
    r = torch.stack([v1, q, p, p, t, v1], -1).gather(-1, sec).squeeze(-1)
    g = torch.stack([t, v1, v1, q, p, p], -1).gather(-1, sec).squeeze(-1)
    b = torch.stack([p, p, t, v1, v1, q], -1).gather(-1, sec).squeeze(-1)
    rgb = torch.stack([r, g, b], dim=-3)
    return torch.floor(rgb * 255.0).clamp(0, 255)


def photometric_distortion(image01: Tensor, brightness_delta: float | None = None, contrast: float | None = None,
                           saturation: float | None = None, hue_delta: int | None = None,
                           contrast_first: bool = False) -> Tensor:
    """Mmsegmentation's ``PhotoMetricDistortion`` with given parameters (``None`` skips a step), on uint8 values.

    The image is taken to 8 bits (``round(255·x)``) and, as mmseg 0.8 does on its uint8 array:
    brightness ``x + δ``; contrast ``x·α`` (first when ``contrast_first``, else last); saturation: S of the
    8-bit HSV image times ``β``; hue: H (2° units) plus ``hue_delta`` modulo 180. Each step clips to [0, 255]
    and truncates to uint8 (``np.clip(...).astype(np.uint8)``); the HSV conversions follow OpenCV's 8-bit
    formulas. Returns the image in [0, 1] (multiples of 1/255).

    Args:
        image01: RGB in [0, 1].
        brightness_delta: δ in 8-bit units (mmseg draws it from [-32, 32]).
        contrast: α (mmseg: [0.5, 1.5]).
        saturation: β (mmseg: [0.5, 1.5]).
        hue_delta: integer hue shift in OpenCV units of 2° (mmseg: -18 … 17).
        contrast_first: contrast before saturation and hue (mmseg's ``mode == 1``) instead of after them.

    Shape:
        - image01: ``(*, 3, H, W)``; output: same

    Examples:
        >>> x = torch.full((3, 1, 1), 100 / 255)
        >>> round(float(photometric_distortion(x, brightness_delta=20.7)[0, 0, 0]) * 255)  # 100 + 20.7 -> 120
        120
    """
    check_tensor(image01, "image01", None)
    if image01.shape[-3] != 3 or not image01.is_floating_point():
        raise ValueError(f"image01 must be a float RGB image (*, 3, H, W), got dtype {image01.dtype} and shape "
                         f"{tuple(image01.shape)}")
    x = torch.round(image01.float().clamp(0, 1) * 255.0)  # float32 arithmetic throughout, as OpenCV's

    def convert(v: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
        return torch.floor((v * alpha + beta).clamp(0, 255))

    if brightness_delta is not None:
        x = convert(x, beta=float(brightness_delta))
    if contrast is not None and contrast_first:
        x = convert(x, alpha=float(contrast))
    if saturation is not None:
        hsv = _rgb_to_hsv_u8(x)
        hsv = torch.stack([hsv[..., 0, :, :], convert(hsv[..., 1, :, :], alpha=float(saturation)),
                           hsv[..., 2, :, :]], dim=-3)
        x = _hsv_u8_to_rgb(hsv)
    if hue_delta is not None:
        hsv = _rgb_to_hsv_u8(x)
        hsv = torch.stack([torch.remainder(hsv[..., 0, :, :] + int(hue_delta), 180.0), hsv[..., 1, :, :],
                           hsv[..., 2, :, :]], dim=-3)
        x = _hsv_u8_to_rgb(hsv)
    if contrast is not None and not contrast_first:
        x = convert(x, alpha=float(contrast))
    return (x / 255.0).to(image01.dtype)


class PhotoMetricDistortion(JointTransform):
    """Mmsegmentation's random photometric distortion (``PhotoMetricDistortion``, mmseg 0.8), image only.

    Each step is applied with probability 1/2, with mmseg's ranges: brightness δ ~ U(−32, 32) (8-bit units),
    contrast α ~ U(0.5, 1.5), first or last with probability 1/2 each, saturation β ~ U(0.5, 1.5), hue shift
    an integer in [−18, 18) (OpenCV's 2° units, so ±36°). The values are computed on the 8-bit image like
    mmseg's uint8 arithmetic ([`photometric_distortion`][]). PMM's PSPNet uses the defaults
    (``Eli-YiLi/WSSS_MMSeg`` ``configs/_base_/datasets/pascal_voc12.py:13``,
    ``mmseg/datasets/pipelines/transforms.py:637-743``). The random draws come from the generator, not from
    NumPy, so the sequence of parameters differs from mmseg's while their distribution is the same.

    Args:
        brightness_delta: largest |δ| (32).
        contrast_range: (0.5, 1.5).
        saturation_range: (0.5, 1.5).
        hue_delta: hue shifts are integers in ``[-hue_delta, hue_delta)`` (18).
        generator: default ``torch.Generator``.

    Shape:
        - image ``(*, 3, H, W)`` in [0, 1]; unchanged shape; mask and saliency untouched.

    Examples:
        >>> img = torch.rand(3, 4, 4)
        >>> out = PhotoMetricDistortion()({"image": img}, generator=torch.Generator().manual_seed(0))["image"]
        >>> out.shape, bool((out * 255 - (out * 255).round()).abs().max() < 1e-4)  # 8-bit values
        (torch.Size([3, 4, 4]), True)
    """

    def __init__(self, brightness_delta: float = 32.0, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18,
                 generator: torch.Generator | None = None):
        super().__init__(generator)
        if brightness_delta < 0:
            raise ValueError(f"brightness_delta must be >= 0, got {brightness_delta}")
        for name, rng in (("contrast_range", contrast_range), ("saturation_range", saturation_range)):
            if len(rng) != 2 or not 0 <= float(rng[0]) <= float(rng[1]):
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {rng}")
        if int(hue_delta) < 0:
            raise ValueError(f"hue_delta must be >= 0, got {hue_delta}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def draw(self, generator: torch.Generator | None = None) -> dict[str, Any]:
        """One set of parameters for [`photometric_distortion`][] (``None`` = step skipped)."""
        def coin() -> bool:
            return bool(torch.randint(2, (), generator=generator))

        p: dict[str, Any] = {"brightness_delta": None, "contrast": None, "saturation": None, "hue_delta": None}
        if coin():
            p["brightness_delta"] = _uniform(-self.brightness_delta, self.brightness_delta, generator)
        p["contrast_first"] = coin()
        if p["contrast_first"] and coin():
            p["contrast"] = _uniform(*self.contrast_range, generator)
        if coin():
            p["saturation"] = _uniform(*self.saturation_range, generator)
        if coin() and self.hue_delta > 0:
            p["hue_delta"] = int(torch.randint(-self.hue_delta, self.hue_delta, (), generator=generator))
        if not p["contrast_first"] and coin():
            p["contrast"] = _uniform(*self.contrast_range, generator)
        return p

    @override
    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        img = sample["image"]
        if not img.is_floating_point() or img.shape[-3] != 3:
            raise ValueError(f"PhotoMetricDistortion needs a float RGB image (3 channels) in [0, 1], got dtype "
                             f"{img.dtype} and shape {tuple(img.shape)}")
        sample["image"] = photometric_distortion(img, **self.draw(generator))
        return sample
