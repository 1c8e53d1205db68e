"""PMM stages B and C: rough masks, multi-crop tiles with re-derived labels, and multi-crop CAM inference.

Li et al., "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation", ICCV 2021; official code
``Eli-YiLi/PMM`` (commit ``134ad33``). Between the first CAM network and PPMG the release

* **stage B** — runs the stage-A network at scales 0.5/1/1.5/2 with flips (`rough_mask_cams`) and turns
  the CAMs into "rough masks": the posteriors of a joint dense CRF over ``[(1 - max_c A_c)^24, A_present]``
  (`rough_masks`; ``pipeline/infer_multi_scale.py``);
* **stage C** — trains its final CAM network (ScaleNet-101) on **tiles**: a grid of crops at ten scales
  (`multi_crop_boxes`), each tile labelled with the classes whose confident rough-mask region it
  covers enough of (`tile_labels`), one tile drawn per image and step (`sample_multi_crop_tile`;
  ``tool/data.py`` ``VOC12ClsHeatCropDataset``);
* **stages D/E** — infers CAMs on every tile of every scale and averages them back into the image
  (`multi_crop_cams` / `MultiCropCAM`; ``pipeline/infer_multi_crop.py``), the input of PPMG
  ([proportional_pseudo_mask][wsss_blocks.pseudo_mask.proportional_pseudo_mask]).

The author reports multi-crop CAM mIoU 53.93 (ResNet-38d), 54.90 (Res2Net-101) and 57.81 (ScaleNet-101)
(Table 1, quoted in ``Eli-YiLi/PMM`` issue #7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import check_finite, check_int, check_labels, check_number, check_range, check_tensor, shape_str
from .crf import DenseCRF, as_dense_crf, unary_from_probs

__all__ = [
    "PMM_CROP_SCALES",
    "ROUGH_MASK_CRF",
    "multi_crop_boxes",
    "tile_labels",
    "sample_multi_crop_tile",
    "multi_crop_cams",
    "MultiCropCAM",
    "rough_mask_cams",
    "rough_masks",
]

PMM_CROP_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)
"""Tile scales of the release (``run.py`` ``--scales`` default ``0.75,1,1.25,...,3``)."""

ROUGH_MASK_CRF = "psa"
"""The stage-B joint CRF (``PMM:tool/imutils.py`` ``crf_inference``, scale_factor 1): 10 iterations, Gaussian sxy 3
compat 3, bilateral sxy 80 srgb 13 compat 10 -- the ``"psa"`` preset of
[`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF]."""






def _scales_arg(scales: Sequence[float]) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or len(scales) == 0:
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    return tuple(check_number(s, "scales", 0.0, strict=True) for s in scales)


# --------------------------------------------------------------------------------------------------
# tile geometry and labels (tool/data.py)
# --------------------------------------------------------------------------------------------------
def multi_crop_boxes(height: int, width: int, scales: Sequence[float] = PMM_CROP_SCALES, crop_size: int = 448,
                     stride: int = 300) -> list[list[tuple[int, int, int, int]]]:
    """PMM's tile grid: for each scale, the ``(x1, y1, x2, y2)`` boxes of the tiles in image coordinates.

    ``tool/data.py`` ``get_multi_crop_params`` (= ``VOC12ClsDatasetMultiCrop``): on the image rescaled by
    ``s`` (``int(W·s) × int(H·s)``) a grid with step ``stride``; every tile but the last of a row/column is
    ``stride`` wide, the last one ends at the border and is ``crop_size`` wide (or the whole side when that
    is shorter); coordinates are mapped back with ``int(v / s)``. Order: columns outer, rows inner.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        scales: the released ten scales 0.75 … 3.
        crop_size: the edge tile size (448).
        stride: the grid step (300).

    Returns:
        One list of boxes per scale.

    Examples:
        >>> multi_crop_boxes(375, 500, scales=(1.0,))  # a 300-px column, then 448 px at the border; 375 < 448
        [[(0, 0, 300, 375), (52, 0, 500, 375)]]
        >>> multi_crop_boxes(375, 500, scales=(2.0,))[0][:3]  # at scale 2 a 300-px tile covers 150 px
        [(0, 0, 150, 150), (0, 150, 150, 300), (0, 151, 150, 375)]
    """
    h = check_int(height, "height", minimum=1)
    w = check_int(width, "width", minimum=1)
    sc = _scales_arg(scales)
    crop = check_int(crop_size, "crop_size", minimum=1)
    step = check_int(stride, "stride", minimum=1)
    out = []
    for s in sc:
        ws, hs = int(w * s), int(h * s)
        w_num = 1 + math.ceil(max(0.0, float(ws - crop)) / step)
        h_num = 1 + math.ceil(max(0.0, float(hs - crop)) / step)
        boxes = []
        for wi in range(w_num):  # a handful of tiles, not pixels
            for hi in range(h_num):
                if wi == w_num - 1:
                    x2 = ws
                    x1 = max(0, x2 - crop)
                else:
                    x2, x1 = min(ws, (wi + 1) * step), wi * step
                if hi == h_num - 1:
                    y2 = hs
                    y1 = max(0, y2 - crop)
                else:
                    y2, y1 = min(hs, (hi + 1) * step), hi * step
                boxes.append((int(float(x1) / s), int(float(y1) / s), int(float(x2) / s), int(float(y2) / s)))
        out.append(boxes)
    return out


def _check_rough(rough_probs: Tensor, labels: Tensor) -> Tensor:
    check_tensor(rough_probs, "rough_probs", 3, layout="(C+1)×H×W", floating=True)
    check_finite(rough_probs, "rough_probs")
    check_tensor(labels, "labels", (1, 2), layout="C or 1×C")
    lf = check_labels(labels if labels.ndim == 2 else labels.reshape(1, -1), "labels", batch=1,
                      num_classes=rough_probs.shape[0] - 1)
    return lf[0]


def tile_labels(rough_probs: Tensor, labels: Tensor, boxes: Sequence[Sequence[int]] | Tensor, *,
                fg_threshold: float = 0.9, match_threshold: float = 0.1) -> Tensor:
    """Image labels of tiles, re-derived from the rough masks (``tool/data.py`` ``update_label``).

    With ``R_c = {rough_probs[c + 1] > fg_threshold}`` (the confident region of present class ``c``), class
    ``c`` is positive for a tile ``T`` iff it is in ``labels``, ``R_c`` is not empty and
    ``|R_c ∩ T| / |R_c| > match_threshold`` (the tile holds enough of the object) or
    ``|R_c ∩ T| / |T| > match_threshold`` (the object fills enough of the tile). All boxes are scored at once
    from a summed-area table.

    Args:
        rough_probs: the stage-B CRF posteriors of one image, background first
            (`rough_masks`; absent classes are ignored whatever they hold).
        labels: the image's multi-hot labels.
        boxes: ``(N, 4)`` tiles ``(x1, y1, x2, y2)``, e.g. one scale of `multi_crop_boxes`.
        fg_threshold: posterior threshold of the confident region (0.9).
        match_threshold: ``label_match_thresh`` (0.1).

    Returns:
        ``(N, C)`` float multi-hot tile labels.

    Shape:
        - rough_probs: ``(C + 1, H, W)``
        - labels: ``(C,)`` or ``(1, C)``
        - output: ``(N, C)``

    Examples:
        >>> probs = torch.zeros(3, 10, 10); probs[1, :, :3] = 1.0; probs[2, :, 8:] = 1.0
        >>> tile_labels(probs, torch.tensor([1.0, 1.0]), [(0, 0, 5, 10), (5, 0, 10, 10), (4, 0, 7, 10)])
        tensor([[1., 0.],
                [0., 1.],
                [0., 0.]])
    """
    present = _check_rough(rough_probs, labels).to(rough_probs.device).bool()
    thr = check_number(fg_threshold, "fg_threshold")
    match = check_number(match_threshold, "match_threshold")
    b = torch.as_tensor(boxes, dtype=torch.int64, device=rough_probs.device).reshape(-1, 4)
    H, W = rough_probs.shape[1:]
    region = (rough_probs[1:] > thr).to(torch.float64)
    sat = F.pad(region.cumsum(1).cumsum(2), (1, 0, 1, 0))  # C×(H+1)×(W+1)
    x1, y1 = b[:, 0].clamp(0, W), b[:, 1].clamp(0, H)
    x2, y2 = b[:, 2].clamp(0, W), b[:, 3].clamp(0, H)
    inter = sat[:, y2, x2] - sat[:, y1, x2] - sat[:, y2, x1] + sat[:, y1, x1]  # C×N
    total = sat[:, H, W][:, None]
    area = ((y2 - y1).clamp_min(0) * (x2 - x1).clamp_min(0)).to(torch.float64)[None]
    hit = (total > 0) & ((inter / total.clamp_min(1) > match) | (inter / area.clamp_min(1) > match))
    hit &= present[:, None]
    return hit.t().to(torch.float32)


def sample_multi_crop_tile(rough_probs: Tensor, labels: Tensor, scales: Sequence[float] = PMM_CROP_SCALES, *,
                           crop_size: int = 448, stride: int = 300, fg_threshold: float = 0.9,
                           match_threshold: float = 0.1, generator: torch.Generator | None = None
                           ) -> tuple[tuple[int, int, int, int], Tensor]:
    """Draw one training tile as PMM's ``VOC12ClsHeatCropDataset`` does, with its re-derived labels.

    One scale is drawn uniformly, then tiles of that scale are drawn uniformly (with replacement, as many
    draws as the scale has tiles) until one has a non-empty `tile_labels` label; if none does, the last
    drawn tile is kept with an all-zero label (released behaviour). The dataset then crops the tile from the
    image, flips, colour-jitters and resizes it to 448×448.

    Args:
        rough_probs: stage-B posteriors of one image, background first.
        labels: the image's multi-hot labels.
        scales: tile scales (the released ten).
        crop_size: edge tile size (448).
        stride: grid step (300).
        fg_threshold: confident-region threshold (0.9).
        match_threshold: overlap threshold (0.1).
        generator: random generator for the draws.

    Returns:
        ``((x1, y1, x2, y2), tile labels (C,))``.

    Examples:
        >>> probs = torch.zeros(2, 60, 80); probs[1, 10:30, 10:40] = 1.0
        >>> box, lab = sample_multi_crop_tile(probs, torch.ones(1), (1.0,), crop_size=40, stride=30,
        ...                                   generator=torch.Generator().manual_seed(0))
        >>> box, lab.tolist()
        ((0, 0, 30, 30), [1.0])
    """
    _check_rough(rough_probs, labels)
    grid = multi_crop_boxes(rough_probs.shape[1], rough_probs.shape[2], scales, crop_size, stride)
    g = generator
    scale_idx = int(float(torch.rand(1, generator=g)) * len(grid))
    boxes = grid[scale_idx]
    labs = tile_labels(rough_probs, labels, boxes, fg_threshold=fg_threshold, match_threshold=match_threshold)
    idx = 0
    for _ in range(len(boxes)):
        idx = int(float(torch.rand(1, generator=g)) * len(boxes))
        if bool(labs[idx].any()):
            break
    return boxes[idx], labs[idx]


# --------------------------------------------------------------------------------------------------
# multi-crop CAM inference (pipeline/infer_multi_crop.py)
# --------------------------------------------------------------------------------------------------
def _check_fn_out(out: object, n: int, c: int | None) -> Tensor:
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != n or (c is not None and out.shape[1] != c):
        got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
        want = f"{n}×{c if c is not None else 'C'}×h×w"
        raise ValueError(f"fn must return a {want} tensor of foreground class maps, got {got}")
    return out


@torch.no_grad()
def multi_crop_cams(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    scales: Sequence[float] = PMM_CROP_SCALES,
    *,
    crop_size: int = 448,
    stride: int = 300,
    batch_size: int = 16,
    antialias: bool = True,
) -> Tensor:
    """PMM's multi-crop CAMs: every tile of every scale (and its mirror) through ``fn``, averaged back.

    ``pipeline/infer_multi_crop.py``. Each tile of `multi_crop_boxes` is cut from the image, resized
    to ``crop_size × crop_size`` (bilinear; the release resizes the PIL image, ``antialias`` gives PIL's
    kernel when shrinking), run with its horizontal mirror, and each output (foreground maps, e.g. the PCM
    output ``cam_rv[:, 1:]``) is resized bilinearly (``align_corners=False``) back to the tile's box,
    multiplied by the labels, unflipped and added into the box; a counter counts the tiles per pixel. Then
    ``S = sum / max(count, 1)`` and per class, with ``m = min S`` and ``M = max S``: values below
    ``m + 1e-5`` become 0 and ``A = (S - m) / (M - m + 1e-5)``. This is the release's normalisation, kept
    as is: a class whose minimum is above 0 gets negative values at its minimum pixels, and a class that is
    negative everywhere gets values above 1 there. The release stores the maps as float16; they are returned
    in float32 here.

    Args:
        fn: callable mapping ``(N, 3, crop, crop)`` tiles to ``(N, C, h, w)`` foreground class maps.
        images: ``(B, 3, H, W)`` normalised images of one size.
        labels: ``(B, C)`` multi-hot labels.
        scales: tile scales (the released ten, 0.75 … 3).
        crop_size: tile size after resizing and edge tile size (448).
        stride: grid step (300).
        batch_size: tiles (with their mirrors: ``2 · B · batch_size`` images) per call of ``fn``.
        antialias: PIL-like antialiasing when a tile is shrunk.

    Returns:
        ``(B, C, H, W)`` normalised CAMs (absent classes 0).

    Shape:
        - images: ``(B, 3, H, W)``
        - labels: ``(B, C)``
        - output: ``(B, C, H, W)``

    Examples:
        >>> net = torch.nn.Conv2d(3, 2, 1)
        >>> _ = torch.nn.init.constant_(net.weight, 0.5), torch.nn.init.zeros_(net.bias)  # positive maps
        >>> cams = multi_crop_cams(net, torch.rand(1, 3, 40, 50), torch.tensor([[1.0, 0.0]]), (1.0, 2.0),
        ...                        crop_size=32, stride=24)
        >>> tuple(cams.shape), round(float(cams[0, 0].max()), 4), float(cams[0, 1].abs().max())
        ((1, 2, 40, 50), 1.0, 0.0)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return _multi_crop_cams(fn, images, labels, _scales_arg(scales), check_int(crop_size, "crop_size", minimum=1),
                            check_int(stride, "stride", minimum=1), check_int(batch_size, "batch_size", minimum=1),
                            bool(antialias))


def _multi_crop_cams(fn: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, scales: tuple[float, ...],
                     crop: int, stride: int, bs: int, antialias: bool) -> Tensor:
    """`multi_crop_cams` with checked options."""
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    check_finite(images, "images")
    B, _, H, W = images.shape
    lf = check_labels(labels, "labels", batch=B).to(images.device)
    C = lf.shape[1]
    boxes = [box for per_scale in multi_crop_boxes(H, W, scales, crop, stride) for box in per_scale]
    acc = images.new_zeros(B, C, H, W, dtype=torch.float32)
    count = images.new_zeros(1, 1, H, W, dtype=torch.float32)
    for start in range(0, len(boxes), bs):
        chunk = boxes[start:start + bs]
        tiles = []
        for x1, y1, x2, y2 in chunk:
            t = images[:, :, y1:y2, x1:x2]
            if t.shape[-2:] != (crop, crop):
                t = F.interpolate(t, size=(crop, crop), mode="bilinear", align_corners=False, antialias=antialias)
            tiles.append(t)
        x = torch.cat(tiles, dim=0)  # tile-major: n·B + b
        out = _check_fn_out(fn(torch.cat([x, x.flip(-1)], dim=0)), 2 * x.shape[0], C).float()
        n = x.shape[0]
        for j, (x1, y1, x2, y2) in enumerate(chunk):
            for part, flipped in ((out[j * B:(j + 1) * B], False), (out[n + j * B:n + (j + 1) * B], True)):
                cam = F.interpolate(part, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
                cam = cam * lf[:, :, None, None]
                acc[:, :, y1:y2, x1:x2] += cam.flip(-1) if flipped else cam
            count[:, :, y1:y2, x1:x2] += 2
    s = acc / count.clamp_min(1.0)
    mn = s.amin(dim=(2, 3), keepdim=True)
    mx = s.amax(dim=(2, 3), keepdim=True)
    s = torch.where(s < mn + 1e-5, torch.zeros_like(s), s)
    return (s - mn) / (mx - mn + 1e-5)


class MultiCropCAM(nn.Module):
    """Module form of [multi_crop_cams][wsss_blocks.multi_crop.multi_crop_cams] around a CAM network.

    Args:
        model: callable returning ``(N, C, h, w)`` foreground class maps for ``(N, 3, crop, crop)`` tiles.
        scales: tile scales (the released ten).
        crop_size: 448.
        stride: 300.
        batch_size: tiles per call.
        antialias: PIL-like antialiasing when a tile is shrunk (see `multi_crop_cams`).

    Shape:
        - images: ``(B, 3, H, W)``; labels: ``(B, C)``
        - output: ``(B, C, H, W)``

    Examples:
        >>> mc = MultiCropCAM(torch.nn.Conv2d(3, 2, 1), scales=(1.0,), crop_size=16, stride=12)
        >>> mc(torch.rand(2, 3, 20, 30), torch.ones(2, 2)).shape
        torch.Size([2, 2, 20, 30])
    """

    def __init__(self, model: Callable[[Tensor], Tensor], scales: Sequence[float] = PMM_CROP_SCALES,
                 crop_size: int = 448, stride: int = 300, batch_size: int = 16, antialias: bool = True) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.scales = _scales_arg(scales)
        self.crop_size = check_int(crop_size, "crop_size", minimum=1)
        self.stride = check_int(stride, "stride", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.antialias = bool(antialias)

    @override
    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return _multi_crop_cams(self.model, images, labels, self.scales, self.crop_size, self.stride, self.batch_size,
                                self.antialias)

    @override
    def extra_repr(self) -> str:
        return f"scales={self.scales}, crop_size={self.crop_size}, stride={self.stride}"


# --------------------------------------------------------------------------------------------------
# stage B: multi-scale CAMs and the rough-mask CRF (pipeline/infer_multi_scale.py)
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def rough_mask_cams(fn: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor,
                    scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0), *, antialias: bool = True) -> Tensor:
    """PMM's stage-B CAMs: multi-scale + flip, summed, ReLU, per-class min-max normalisation.

    ``pipeline/infer_multi_scale.py``: the image is resized bicubically to ``round(s·W) × round(s·H)`` for
    each scale (the release uses PIL ``CUBIC`` on the uint8 image; ``antialias`` gives PIL's kernel) and run
    with its mirror; each output (foreground maps, the PCM ``cam_rv[:, 1:]``) is resized bilinearly
    (``align_corners=False``) to the image size, multiplied by the labels and unflipped; the eight maps are
    summed, negative values set to 0, and per class (``m``, ``M`` = min, max) values below ``m + 1e-5`` set
    to 0 and ``A = (S - m - 1e-5) / (M - m + 1e-5)`` (note the ``- 1e-5``, unlike `multi_crop_cams`).
    Absent classes are 0.

    Args:
        fn: callable mapping images to ``(N, C, h, w)`` foreground class maps.
        images: ``(B, 3, H, W)`` normalised images.
        labels: ``(B, C)`` multi-hot labels.
        scales: (0.5, 1.0, 1.5, 2.0) as released.
        antialias: PIL-like antialiasing when shrinking.

    Returns:
        ``(B, C, H, W)`` normalised CAMs.

    Examples:
        >>> cams = rough_mask_cams(torch.nn.Conv2d(3, 2, 1), torch.rand(1, 3, 16, 20), torch.tensor([[1.0, 0.0]]))
        >>> tuple(cams.shape), float(cams[0, 1].abs().max())
        ((1, 2, 16, 20), 0.0)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    check_finite(images, "images")
    B, _, H, W = images.shape
    lf = check_labels(labels, "labels", batch=B).to(images.device)
    acc: Tensor | None = None
    for s in _scales_arg(scales):
        size = (round(H * s), round(W * s))
        x = images if size == (H, W) else F.interpolate(images, size=size, mode="bicubic", align_corners=False,
                                                        antialias=bool(antialias))
        out = _check_fn_out(fn(torch.cat([x, x.flip(-1)], dim=0)), 2 * B, lf.shape[1]).float()
        out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False) * lf.repeat(2, 1)[:, :, None, None]
        pair = out[:B] + out[B:].flip(-1)
        acc = pair if acc is None else acc + pair
    assert acc is not None
    s_ = acc.clamp_min(0.0)
    mn = s_.amin(dim=(2, 3), keepdim=True)
    mx = s_.amax(dim=(2, 3), keepdim=True)
    s_ = torch.where(s_ < mn + 1e-5, torch.zeros_like(s_), s_)
    norm = (s_ - mn - 1e-5) / (mx - mn + 1e-5)
    return norm * lf[:, :, None, None]


@torch.no_grad()
def rough_masks(cams: Tensor, labels: Tensor, image01: Tensor, *, alpha: float = 24.0,
                crf: DenseCRF | str | Mapping[str, Any] = ROUGH_MASK_CRF) -> Tensor:
    """PMM's stage-B rough masks: joint dense-CRF posteriors over ``[(1 - max_c A_c)^alpha, A_present]``.

    ``pipeline/infer_multi_scale.py`` ``_crf_with_alpha`` (``--crf_threshs`` 24): per image, the background
    score ``(1 - max over present classes)^alpha`` is stacked over the present classes' CAMs and refined by
    ``crf_inference`` (``tool/imutils.py``: 10 iterations, Gaussian 3/3, bilateral 80/13/10,
    `ROUGH_MASK_CRF`, the ``"psa"`` CRF preset) with the pydensecrf unary ``-log(clip(p, 1e-5, 1))`` of
    the stacked scores as they are (they do not sum to 1). The CRF runs over the image's present classes only,
    as released. These posteriors label the tiles of stage C (`tile_labels`).

    Args:
        cams: ``(B, C, H, W)`` normalised CAMs (`rough_mask_cams`).
        labels: ``(B, C)`` multi-hot labels.
        image01: ``(B, 3, H, W)`` RGB in ``[0, 1]`` (rounded to uint8 for the CRF).
        alpha: background exponent (24 in stage B; PPMG uses 11).
        crf: the CRF: a [DenseCRF][wsss_blocks.crf.DenseCRF], a preset name (``"psa"``, released) or a config
            mapping ([`wsss_blocks.crf.as_dense_crf`][wsss_blocks.crf.dense_crf.as_dense_crf], e.g.
            ``{"preset": "psa", "backend": "torch"}``).

    Returns:
        ``(B, C + 1, H, W)`` float32 posteriors: channel 0 background, ``c + 1`` class ``c``, absent classes 0.

    Examples:
        >>> cams = torch.zeros(1, 2, 12, 12); cams[0, 1, :, 6:] = 0.9
        >>> crf = {"preset": "psa", "backend": "torch"}
        >>> post = rough_masks(cams, torch.tensor([[0.0, 1.0]]), torch.zeros(1, 3, 12, 12), crf=crf)
        >>> post.shape, bool(post[0, 2, :, 8:].min() > 0.9), float(post[0, 1].abs().max())
        (torch.Size([1, 3, 12, 12]), True, 0.0)
    """
    check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
    check_finite(cams, "cams")
    B, C, H, W = cams.shape
    lf = check_labels(labels, "labels", batch=B, num_classes=C)
    check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
    if tuple(image01.shape) != (B, 3, H, W):
        raise ValueError(f"image01 must have shape ({B}, 3, {H}, {W}) to match cams, got {shape_str(image01)}")
    check_range(image01, "image01", 0.0, 1.0, hint="pass RGB in [0, 1] (uint8 images divided by 255)")
    a = check_number(alpha, "alpha", 0.0)
    dense = as_dense_crf(crf)
    out = cams.new_zeros(B, C + 1, H, W, dtype=torch.float32)
    for b in range(B):  # the CRF's label set is the image's present classes
        idx = lf[b].nonzero().flatten().to(cams.device)
        v = cams[b, idx].float()
        bg = (1.0 - (v.amax(0, keepdim=True) if idx.numel() else v.new_zeros(1, H, W))).pow(a)
        probs = torch.cat([bg, v])[None]
        if idx.numel() == 0:
            out[b, 0] = 1.0
            continue
        q = dense.from_unary(image01[b:b + 1], unary_from_probs(probs))[0]
        out[b, 0] = q[0].to(out.device)
        out[b, idx + 1] = q[1:].to(out.device)
    return out
