"""IRN: inter-pixel relations from CAM seeds, boundary-based affinities and the random walk.

Ahn, Cho, Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel Relations", CVPR 2019
(arXiv 1904.05044); official code ``jiwoon-ahn/irn`` (commit ``a2ece00``). The semantic half of IRN turns
CAMs into pseudo masks in four steps, each a block here:

1. `confident_seed_mask` — confident foreground (CAM above 0.30 after a label CRF), confident
   background (every CAM below 0.05 after a label CRF), ignore in between (``step/cam_to_ir_label.py``).
2. `affinity_targets` — for every pixel pair within a radius (10 at stride 4, the `PathIndex`
   half-disc), positive pairs (same label; background and foreground apart) and negative pairs (different
   labels), ignoring 255 (``voc12/dataloader.py`` ``GetAffinityLabelFromIndices``).
3. `boundary_to_affinity` and `boundary_affinity_loss` — the affinity of a pair is one minus the
   largest class-boundary probability on the discrete line between them; IRNet's boundary branch
   ([`wsss_blocks.models.irnet.IRNet`][]) is trained so that positive pairs get affinity 1 and negative
   pairs 0 (``misc/indexing.py`` ``edge_to_affinity``, ``net/resnet50_irn.py``, ``step/train_irn.py``).
4. `random_walk` and `random_walk_mask` — the CAMs, damped on boundaries, are propagated with
   the transition matrix ``T = A^beta / colsum`` (radius 5, beta 10) for ``2**exp_times`` = 256 steps, then
   upsampled, normalised by their global maximum and compared with a constant background score 0.25
   (``misc/indexing.py`` ``propagate_to_edge``, ``step/make_sem_seg_labels.py``).

The random walk never builds the dense ``hw × hw`` matrix of the release (552 MB for a VOC image): ``T`` has
``2·34 + 1 = 69`` non-zeros per column at radius 5, so the walk is 256 sparse products with memory linear in
the number of pixels (``method="sparse"``). ``method="dense"`` squares the dense matrix as the release does.
`irn_multiscale_cams` reproduces the two CAM resolutions the steps consume (``step/make_cam.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_number,
    check_range,
    check_same_batch,
    check_tensor,
    checks_enabled,
    compute_dtype,
    shape_str,
)
from .crf import DenseCRF, as_dense_crf

__all__ = [
    "TRAIN_RADIUS",
    "INFER_RADIUS",
    "path_offsets",
    "PathIndex",
    "path_index",
    "strided_size",
    "irn_multiscale_cams",
    "IRNCams",
    "confident_seed_mask",
    "ConfidentSeedMask",
    "downsample_mask",
    "AffinityTargets",
    "affinity_targets",
    "boundary_to_affinity",
    "AffinityLossTerms",
    "boundary_affinity_loss",
    "boundary_affinity_loss_detailed",
    "BoundaryAffinityLoss",
    "random_walk",
    "random_walk_mask",
    "RandomWalk",
]

TRAIN_RADIUS = 10
"""Radius of the pair set used for the affinity targets and the loss (``step/train_irn.py`` line 12)."""
INFER_RADIUS = 5
"""Radius of the random walk (``step/make_sem_seg_labels.py`` line 41)."""


# --------------------------------------------------------------------------------------------------
# path index
# --------------------------------------------------------------------------------------------------
def _search_dirs(radius: int) -> list[tuple[int, int]]:
    """The released half-disc of directions, in the order ``PathIndex.get_search_paths_dst`` visits them."""
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius ** 2]
    return dirs


def _line_path(dy: int, dx: int) -> list[tuple[int, int]]:
    """Grid points within distance 1 of the segment (0, 0)-(dy, dx), destination first (``indexing.py:32-48``)."""
    len_sq = dy * dy + dx * dx
    pts = [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
           if (dy * x - dx * y) ** 2 < len_sq]  # integer form of dist_sq < 1
    pts.sort(key=lambda p: -abs(p[0]) - abs(p[1]))  # stable, as Python's list.sort in the release
    return pts


@lru_cache(maxsize=16)
def _paths(radius: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Released direction order: grouped by path length (ascending), search order within a group."""
    by_len: dict[int, list[tuple[tuple[int, int], ...]]] = {}
    for dy, dx in _search_dirs(radius):
        p = tuple(_line_path(dy, dx))
        by_len.setdefault(len(p), []).append(p)
    return tuple(p for n in sorted(by_len) for p in by_len[n])


def path_offsets(radius: int = TRAIN_RADIUS) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` pair directions of IRN's half-disc, in the released order.

    The directions are ``(0, x)`` for ``0 < x < r`` and ``(y, x)`` for ``0 < y < r``, ``|x| < r``,
    ``x² + y² < r²`` (each unordered pair is enumerated once), re-ordered by the number of points on their
    discrete path, as ``misc/indexing.py`` ``PathIndex.search_dst`` lists them: 34 directions for r = 5 and
    152 for r = 10.

    Args:
        radius: the pair radius (``int >= 2``).

    Returns:
        ``D`` pairs ``(dy, dx)`` with ``dy >= 0``.

    Examples:
        >>> len(path_offsets(5)), len(path_offsets(10))
        (34, 152)
        >>> path_offsets(2)  # two 2-point paths, then two 4-point paths
        [(0, 1), (1, 0), (1, -1), (1, 1)]
    """
    r = check_int(radius, "radius", minimum=2)
    return [p[0] for p in _paths(r)]


class PathIndex:
    """IRN's pixel-pair index on an ``H×W`` grid: sources, destinations and the discrete path between them.

    Ahn et al., CVPR 2019, ``misc/indexing.py`` ``PathIndex``. Sources are the pixels of rows
    ``[0, H - rf)`` and columns ``[rf, W - rf)`` with ``rf = ceil(r) - 1`` (no top margin: every direction
    points down or right), flattened row-major; ``dst_indices[d, s]`` is source ``s`` moved by direction
    ``d`` (`path_offsets` order). The path of a direction is every grid point within distance 1 of the
    segment, destination first, source last. Built with loops over the few directions only; use
    `path_index` for a cached instance.

    Attributes:
        radius: the pair radius ``r``.
        radius_floor: ``rf = r - 1``.
        size: the grid ``(H, W)``.
        offsets: ``(D, 2)`` int64 directions ``(dy, dx)``.
        path_offsets: ``(D, L_max, 2)`` int64 path points of each direction, destination first, padded with
            the destination (which leaves the maximum along the path unchanged).
        path_lengths: ``(D,)`` int64 number of points of each path (source and destination included).
        src_indices: ``(S,)`` int64 flat indices of the sources.
        dst_indices: ``(D, S)`` int64 flat indices of the destinations.

    Examples:
        >>> pi = PathIndex(10, (128, 128))
        >>> tuple(pi.dst_indices.shape)  # the released training grid: 152 directions, 119 * 110 sources
        (152, 13090)
    """

    def __init__(self, radius: int, size: tuple[int, int]) -> None:
        r = check_int(radius, "radius", minimum=2)
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ValueError(f"size must be a pair (H, W), got {size!r}")
        h, w = (check_int(int(s) if not isinstance(s, bool) else s, "size", minimum=1) for s in size)
        rf = r - 1
        if h - rf < 1 or w - 2 * rf < 1:
            raise ValueError(f"size {(h, w)} is too small for radius {r}: need H >= {rf + 1} and W >= {2 * rf + 1}")
        self.radius, self.radius_floor, self.size = r, rf, (h, w)
        paths = _paths(r)
        lmax = max(len(p) for p in paths)
        padded = [list(p) + [p[0]] * (lmax - len(p)) for p in paths]
        self.offsets = torch.tensor([p[0] for p in paths], dtype=torch.int64)
        self.path_offsets = torch.tensor(padded, dtype=torch.int64)
        self.path_lengths = torch.tensor([len(p) for p in paths], dtype=torch.int64)
        self.cropped_size = (h - rf, w - 2 * rf)
        rows = torch.arange(h - rf).view(-1, 1)
        cols = torch.arange(rf, w - rf).view(1, -1)
        self.src_indices = (rows * w + cols).reshape(-1)
        self.dst_indices = self.src_indices.view(1, -1) + self._flat(self.offsets).view(-1, 1)

    def _flat(self, offsets: Tensor) -> Tensor:
        return offsets[..., 0] * self.size[1] + offsets[..., 1]

    @property
    def num_directions(self) -> int:
        """Number of pair directions D."""
        return int(self.offsets.shape[0])

    @property
    def num_sources(self) -> int:
        """Number of source pixels S per image."""
        return int(self.src_indices.numel())

    def path_flat_offsets(self) -> Tensor:
        """``(D, L_max)`` int64 flat offsets of the (padded) path points relative to the source."""
        return self._flat(self.path_offsets)

    def length_groups(self) -> list[tuple[int, int, int]]:
        """``(start, stop, length)`` of each run of equal path lengths in the direction order."""
        lengths = self.path_lengths.tolist()
        groups, start = [], 0
        while start < len(lengths):
            stop = start
            while stop < len(lengths) and lengths[stop] == lengths[start]:
                stop += 1
            groups.append((start, stop, int(lengths[start])))
            start = stop
        return groups

    def path_indices(self) -> list[Tensor]:
        """The released layout: one ``(n_paths, length, S)`` int64 index array per path length.

        This is ``PathIndex.path_indices`` of the release (used there by ``edge_to_affinity``). It holds
        ``sum(length) * S`` indices (191 MB at r = 10 on 128×128); the blocks here never build it.
        """
        flat = self.path_flat_offsets()
        return [self.src_indices.view(1, 1, -1) + flat[a:b, :n, None] for a, b, n in self.length_groups()]

    def to(self, device: torch.device | str) -> PathIndex:
        """A copy with the index tensors on ``device``."""
        new = object.__new__(PathIndex)
        new.__dict__.update(self.__dict__)
        for k in ("offsets", "path_offsets", "path_lengths", "src_indices", "dst_indices"):
            setattr(new, k, getattr(self, k).to(device))
        return new

    def __repr__(self) -> str:
        return (f"PathIndex(radius={self.radius}, size={self.size}, directions={self.num_directions}, "
                f"sources={self.num_sources})")


@lru_cache(maxsize=32)
def _path_index_cached(radius: int, h: int, w: int, device: str) -> PathIndex:
    pi = PathIndex(radius, (h, w))
    return pi if device == "cpu" else pi.to(device)


def path_index(radius: int, size: tuple[int, int], device: torch.device | str = "cpu") -> PathIndex:
    """A cached `PathIndex` for ``(radius, size)`` on ``device`` (built once per process).

    Examples:
        >>> path_index(5, (20, 30)) is path_index(5, (20, 30))
        True
    """
    r = check_int(radius, "radius", minimum=2)
    return _path_index_cached(r, int(size[0]), int(size[1]), str(torch.device(device)))


# --------------------------------------------------------------------------------------------------
# CAM preprocessing (step/make_cam.py)
# --------------------------------------------------------------------------------------------------
def strided_size(size: tuple[int, int], stride: int = 4) -> tuple[int, int]:
    """Feature-grid size of an ``H×W`` image at ``stride``: ``((H - 1) // stride + 1, (W - 1) // stride + 1)``.

    IRN ``misc/imutils.py`` ``get_strided_size`` (note: not ``H // stride``).

    Examples:
        >>> strided_size((375, 500), 4)
        (94, 125)
    """
    s = check_int(stride, "stride", minimum=1)
    return ((int(size[0]) - 1) // s + 1, (int(size[1]) - 1) // s + 1)


@dataclass
class IRNCams:
    """The two CAM resolutions of IRN's ``make_cam``.

    Attributes:
        cams: ``(B, C, h, w)`` at stride 4 (`strided_size`), consumed by the random walk.
        high_res: ``(B, C, H, W)`` at full resolution, consumed by `confident_seed_mask`.
    """

    cams: Tensor
    high_res: Tensor


@torch.no_grad()
def irn_multiscale_cams(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor | None = None,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    *,
    stride: int = 4,
    high_res_stride: int = 16,
    eps: float = 1e-5,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> IRNCams:
    """Multi-scale + flip CAMs at IRN's two resolutions, each class normalised by its maximum.

    IRN ``step/make_cam.py`` lines 30-52. For every scale the image and its horizontal flip are run
    (``fn`` returns raw class maps; ReLU is applied to each pass, as the release's CAM head does). Every
    scale's flip-summed map is resized bilinearly to the stride-4 grid (``cams``) and to the image size
    rounded up to a multiple of 16 (``high_res``, then cropped to ``H×W``), the scales are summed, and each
    class map is divided by its spatial maximum + ``eps``. Classes absent from ``labels`` are zero.

    Args:
        fn: callable mapping ``B'×3×h'×w'`` images to ``B'×C×h''×w''`` raw class maps.
        images: the (normalised) network input.
        labels: multi-hot image labels; ``None`` keeps every class.
        scales: the released scales (1.0, 0.5, 1.5, 2.0); images are resized to
            ``round(s·H) × round(s·W)``.
        stride: stride of ``cams`` (4).
        high_res_stride: ``high_res`` is computed at the size rounded up to this multiple (16), then cropped.
        eps: added to the maximum (1e-5).
        interpolation: image resizing, ``"bicubic"`` (the release resizes the uint8 image with PIL bicubic,
            ``imutils.pil_rescale(img, s, order=3)``, before normalising) or ``"bilinear"``.
        antialias: torch's antialiased kernels, which are PIL's (``a = -0.5`` bicubic with a widened
            support when shrinking); the remaining difference to the release is its uint8 rounding.

    Returns:
        `IRNCams` with ``cams`` ``(B, C, h, w)`` and ``high_res`` ``(B, C, H, W)``, float32, values in
        ``[0, 1)``.

    Shape:
        - images: ``(B, 3, H, W)``
        - labels: ``(B, C)``
        - output: ``cams`` ``(B, C, (H-1)//4+1, (W-1)//4+1)``, ``high_res`` ``(B, C, H, W)``

    Examples:
        >>> net = torch.nn.Conv2d(3, 2, 3, stride=16, padding=1)
        >>> out = irn_multiscale_cams(net, torch.rand(1, 3, 50, 70), torch.tensor([[1.0, 0.0]]))
        >>> tuple(out.cams.shape), tuple(out.high_res.shape), float(out.cams[:, 1].abs().max())
        ((1, 2, 13, 18), (1, 2, 50, 70), 0.0)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    check_finite(images, "images")
    if len(scales) == 0:
        raise ValueError("scales must hold at least one scale, got an empty sequence")
    for s in scales:
        check_number(s, "scales", 0.0, strict=True)
    check_number(eps, "eps", 0.0)
    mode = check_choice(interpolation, "interpolation", ("bicubic", "bilinear"))
    B, _, H, W = images.shape
    small = strided_size((H, W), stride)
    up = tuple(v * high_res_stride for v in strided_size((H, W), high_res_stride))
    acc_small: Tensor | None = None
    acc_up: Tensor | None = None
    for s in scales:
        size = (max(1, round(H * float(s))), max(1, round(W * float(s))))
        x = images if size == (H, W) else F.interpolate(images, size=size, mode=mode, align_corners=False,
                                                        antialias=bool(antialias))
        out = fn(torch.cat([x, x.flip(-1)], dim=0))
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != 2 * B:
            got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"fn must return a {2 * B}×C×h×w tensor for {2 * B} images, got {got}")
        out = F.relu(out.float())
        out = out[:B] + out[B:].flip(-1)
        a = F.interpolate(out, size=small, mode="bilinear", align_corners=False)
        b = F.interpolate(out, size=up, mode="bilinear", align_corners=False)
        acc_small = a if acc_small is None else acc_small + a
        acc_up = b if acc_up is None else acc_up + b
    assert acc_small is not None
    assert acc_up is not None
    acc_up = acc_up[:, :, :H, :W]
    if labels is not None:
        lf = check_labels(labels, "labels", batch=B, num_classes=acc_small.shape[1]).to(acc_small.device)
        acc_small = acc_small * lf[:, :, None, None]
        acc_up = acc_up * lf[:, :, None, None]
    acc_small = acc_small / (acc_small.amax(dim=(2, 3), keepdim=True) + eps)
    acc_up = acc_up / (acc_up.amax(dim=(2, 3), keepdim=True) + eps)
    return IRNCams(cams=acc_small, high_res=acc_up)


# --------------------------------------------------------------------------------------------------
# IR labels (step/cam_to_ir_label.py)
# --------------------------------------------------------------------------------------------------
def _check_cams_labels(cams: Tensor, labels: Tensor) -> Tensor:
    check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
    check_finite(cams, "cams")
    return check_labels(labels, "labels", batch=cams.shape[0], num_classes=cams.shape[1])


@torch.no_grad()
def confident_seed_mask(
    cams: Tensor,
    labels: Tensor,
    image01: Tensor | None = None,
    *,
    high_threshold: float = 0.30,
    low_threshold: float = 0.05,
    crf: DenseCRF | str | Mapping[str, Any] | None = "irn",
    ignore_index: int = 255,
) -> Tensor:
    """IRN's inter-pixel-relation labels: confident foreground, confident background and ignore.

    Ahn et al., CVPR 2019, ``step/cam_to_ir_label.py``. For each image, with ``keys`` = background plus the
    present classes, ``L_t = keys[argmax(t, c_1, …, c_K)]`` for ``t`` in ``{high_threshold,
    low_threshold}`` (ties go to the background), each refined by IRN's label CRF (``misc/imutils.py``
    ``crf_inference_label``: ``unary_from_labels`` with ``gt_prob`` 0.7 over the ``K + 1`` labels of the
    image, Gaussian 3/3, bilateral 50/5/10, 10 iterations: the ``"irn"`` preset of
    [DenseCRF][wsss_blocks.crf.DenseCRF]). With ``F = CRF(L_high)`` and ``G = CRF(L_low)``, the label is
    ``F`` where ``F > 0``, background where ``F = G = 0`` and ``ignore_index`` elsewhere.

    The CRF runs per image (its label count depends on the image's classes) on the pydensecrf backend when
    it is installed (CPU), else on the PyTorch backend; both give the same labels (see the Dense CRF page).

    Args:
        cams: full-resolution CAMs normalised to ``[0, 1]`` per class (IRN ``high_res``,
            `irn_multiscale_cams`).
        labels: multi-hot image labels; absent classes never win.
        image01: RGB images in ``[0, 1]`` for the CRF (rounded to uint8 as the released code reads them);
            required when ``crf`` is on.
        high_threshold: background score of the confident-foreground cut (``conf_fg_thres`` 0.30).
        low_threshold: background score of the confident-background cut (``conf_bg_thres`` 0.05).
        crf: the label CRF: a [DenseCRF][wsss_blocks.crf.DenseCRF] (its ``from_mask`` is used), a preset name
            (``"irn"``, released) or a config mapping
            ([`wsss_blocks.crf.as_dense_crf`][wsss_blocks.crf.dense_crf.as_dense_crf], e.g.
            ``{"preset": "irn", "backend": "torch"}``); ``None`` skips the CRF.
        ignore_index: the label of the unsure band (255).

    Returns:
        ``(B, H, W)`` int64 mask: 0 background, ``c + 1`` class ``c``, ``ignore_index`` unsure.

    Shape:
        - cams: ``(B, C, H, W)``
        - labels: ``(B, C)``
        - image01: ``(B, 3, H, W)``
        - output: ``(B, H, W)``

    Examples:
        >>> cams = torch.tensor([[[[0.9, 0.2, 0.01]]]])  # one class, 1×3 pixels
        >>> confident_seed_mask(cams, torch.ones(1, 1), crf=None)
        tensor([[[  1, 255,   0]]])
    """
    hi, lo, ign = _check_seed_options(high_threshold, low_threshold, ignore_index)
    return _confident_seed_mask(cams, labels, image01, hi, lo, None if crf is None else as_dense_crf(crf), ign)


def _check_seed_options(high_threshold: float, low_threshold: float, ignore_index: int) -> tuple[float, float, int]:
    hi = check_number(high_threshold, "high_threshold")
    lo = check_number(low_threshold, "low_threshold")
    if lo > hi:
        raise ValueError(f"low_threshold must be <= high_threshold, got low_threshold={lo:g} > high_threshold={hi:g}")
    return hi, lo, check_int(ignore_index, "ignore_index", minimum=0)


def _confident_seed_mask(cams: Tensor, labels: Tensor, image01: Tensor | None, hi: float, lo: float,
                         crf_module: DenseCRF | None, ign: int) -> Tensor:
    """`confident_seed_mask` with checked options."""
    lf = _check_cams_labels(cams, labels)
    B, _, H, W = cams.shape
    if crf_module is not None:
        if image01 is None:
            raise ValueError("image01 is required when crf is on (the label CRF needs the RGB image); "
                             "pass crf=None to skip the CRF")
        check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
        if image01.shape[0] != B or image01.shape[1] != 3 or tuple(image01.shape[2:]) != (H, W):
            raise ValueError(f"image01 must have shape ({B}, 3, {H}, {W}) to match cams, got {shape_str(image01)}")
        check_range(image01, "image01", 0.0, 1.0, hint="pass RGB in [0, 1] (uint8 images divided by 255)")
    out = torch.zeros(B, H, W, dtype=torch.int64, device=cams.device)
    present = lf.to(cams.device).bool()
    for b in range(B):  # per image: the CRF's label count is the image's class count + 1
        idx = present[b].nonzero().flatten()
        if idx.numel() == 0:
            continue  # no class: everything is confident background
        keys = torch.cat([idx.new_zeros(1), idx + 1])
        sel = cams[b, idx].float()
        cuts = []
        for t in (hi, lo):
            lab = torch.cat([sel.new_full((1, H, W), t), sel]).argmax(0)
            if crf_module is not None:
                assert image01 is not None
                q = crf_module.from_mask(image01[b:b + 1], lab[None], num_classes=int(keys.numel()))
                lab = q[0].argmax(0).to(cams.device)
            cuts.append(keys[lab])
        fg, bg = cuts
        res = fg.clone()
        res[fg == 0] = ign
        res[(fg == 0) & (bg == 0)] = 0
        out[b] = res
    return out


class ConfidentSeedMask(nn.Module):
    """Module form of [confident_seed_mask][wsss_blocks.irn.confident_seed_mask] (IRN IR labels).

    Args:
        high_threshold: confident-foreground background score (0.30).
        low_threshold: confident-background background score (0.05).
        crf: the label CRF (a [DenseCRF][wsss_blocks.crf.DenseCRF], a preset name, ``"irn"`` released, or a
            config mapping), or ``None``.
        ignore_index: label of the unsure band (255).

    Shape:
        - cams: ``(B, C, H, W)``; labels: ``(B, C)``; image01: ``(B, 3, H, W)``
        - output: ``(B, H, W)`` int64

    Examples:
        >>> seeds = ConfidentSeedMask(crf=None)
        >>> seeds(torch.tensor([[[[0.5, 0.1]]]]), torch.ones(1, 1)).tolist()
        [[[1, 255]]]
    """

    def __init__(self, high_threshold: float = 0.30, low_threshold: float = 0.05,
                 crf: DenseCRF | str | Mapping[str, Any] | None = "irn", ignore_index: int = 255) -> None:
        super().__init__()
        self.high_threshold, self.low_threshold, self.ignore_index = _check_seed_options(
            high_threshold, low_threshold, ignore_index)
        self.crf = None if crf is None else as_dense_crf(crf)

    @override
    def forward(self, cams: Tensor, labels: Tensor, image01: Tensor | None = None) -> Tensor:
        return _confident_seed_mask(cams, labels, image01, self.high_threshold, self.low_threshold, self.crf,
                                    self.ignore_index)

    @override
    def extra_repr(self) -> str:
        return f"high_threshold={self.high_threshold:g}, low_threshold={self.low_threshold:g}"


def downsample_mask(mask: Tensor, scale_factor: float = 0.25) -> Tensor:
    """Nearest-neighbour downsampling of label masks with PIL's sampling grid.

    IRN feeds the IR labels to the affinity targets after ``imutils.pil_rescale(label, 0.25, 0)``: the
    output size is ``round(H · s) × round(W · s)`` and output pixel ``i`` reads input pixel
    ``floor((i + 0.5) · H / H_out)`` (PIL ``Image.NEAREST``), e.g. pixel ``4i + 2`` for an exact factor 4.
    ``F.interpolate(mode="nearest")`` reads ``4i`` instead.

    Args:
        mask: integer label masks.
        scale_factor: ``< 1`` shrinks (0.25 as released).

    Shape:
        - mask: ``(B, H, W)``
        - output: ``(B, round(H·s), round(W·s))``

    Examples:
        >>> downsample_mask(torch.arange(8).view(1, 1, 8), 0.25)
        tensor([[[2, 6]]])
    """
    check_tensor(mask, "mask", 3, layout="B×H×W")
    s = check_number(scale_factor, "scale_factor", 0.0, strict=True)
    H, W = mask.shape[1:]
    oh, ow = max(1, round(H * s)), max(1, round(W * s))
    ys = ((torch.arange(oh, dtype=torch.float64) + 0.5) * (H / oh)).floor().long().clamp_max(H - 1)
    xs = ((torch.arange(ow, dtype=torch.float64) + 0.5) * (W / ow)).floor().long().clamp_max(W - 1)
    return mask[:, ys.to(mask.device)][:, :, xs.to(mask.device)]


# --------------------------------------------------------------------------------------------------
# affinity targets, boundary -> affinity, loss (dataloader.py, indexing.py, resnet50_irn.py, train_irn.py)
# --------------------------------------------------------------------------------------------------
@dataclass
class AffinityTargets:
    """Pair targets of IRN's affinity loss, one entry per (direction, source) of a `PathIndex`.

    Attributes:
        bg_pos: ``(B, D, S)`` bool, both pixels background.
        fg_pos: ``(B, D, S)`` bool, both pixels the same foreground class.
        neg: ``(B, D, S)`` bool, both pixels labelled and different.
    """

    bg_pos: Tensor
    fg_pos: Tensor
    neg: Tensor


def _resolve_index(radius: int | PathIndex, size: tuple[int, int], device: torch.device) -> PathIndex:
    if isinstance(radius, PathIndex):
        if radius.size != tuple(size):
            raise ValueError(f"the PathIndex was built for a {radius.size} grid, but the input grid is {tuple(size)}")
        return radius if radius.src_indices.device == device else radius.to(device)
    r = check_int(radius, "radius", minimum=2)
    return path_index(r, size, device)


def affinity_targets(seed_mask: Tensor, radius: int | PathIndex = TRAIN_RADIUS, *,
                     ignore_index: int = 255) -> AffinityTargets:
    """Positive and negative pixel-pair targets from a seed mask (IRN ``GetAffinityLabelFromIndices``).

    For every pair (source ``s``, destination ``s + d``) of the radius-``r`` `PathIndex`: a pair is
    valid when neither pixel is ``ignore_index``; ``bg_pos`` = valid, equal labels, source background;
    ``fg_pos`` = valid, equal labels, source foreground; ``neg`` = valid, different labels. The release
    tests validity as ``label < 21`` (VOC); ``!= ignore_index`` is the same on VOC masks and also works for
    COCO's 81 labels.

    Args:
        seed_mask: stride-4 seed masks (0 background, ``c + 1`` class, ``ignore_index`` unsure), e.g.
            `confident_seed_mask` cropped and passed through `downsample_mask`.
        radius: the pair radius (10 as released) or a prebuilt `PathIndex` for this grid.
        ignore_index: label of unusable pixels.

    Returns:
        `AffinityTargets` of bool ``(B, D, S)`` tensors (1/4 of the release's float32 memory).

    Shape:
        - seed_mask: ``(B, h, w)``
        - output: three ``(B, D, S)`` with ``S = (h - r + 1)(w - 2r + 2)``

    Examples:
        >>> seeds = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1]]])
        >>> t = affinity_targets(seeds, radius=2)  # sources (0, 1), (0, 2); directions of path_offsets(2)
        >>> t.bg_pos.int()[0].tolist(), t.fg_pos.int()[0].tolist(), t.neg.int()[0].tolist()
        ([[0, 0], [0, 0], [1, 0], [0, 0]], [[0, 1], [0, 1], [0, 0], [0, 1]], [[1, 0], [0, 0], [0, 0], [1, 0]])
    """
    return _affinity_targets(seed_mask, radius, ignore_index, "seed_mask")


def _affinity_targets(seed_mask: Tensor, radius: int | PathIndex, ignore_index: int, name: str) -> AffinityTargets:
    """`affinity_targets`; errors call the seed mask ``name``."""
    check_tensor(seed_mask, name, 3, layout="B×h×w")
    if seed_mask.is_floating_point() or seed_mask.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {seed_mask.dtype}")
    if checks_enabled() and seed_mask.numel() and int(seed_mask.min()) < 0:
        raise ValueError(f"{name} holds class indices (or ignore_index), which cannot be negative; got "
                         f"{int(seed_mask.min())}")
    ign = int(ignore_index)
    pi = _resolve_index(radius, tuple(seed_mask.shape[1:]), seed_mask.device)  # type: ignore[arg-type]
    flat = seed_mask.reshape(seed_mask.shape[0], seed_mask.shape[1] * seed_mask.shape[2])
    src = flat[:, pi.src_indices].unsqueeze(1)  # B×1×S
    dst = flat[:, pi.dst_indices.reshape(-1)].view(flat.shape[0], *pi.dst_indices.shape)  # B×D×S
    valid = (src != ign) & (dst != ign)
    equal = src == dst
    pos = equal & valid
    return AffinityTargets(bg_pos=pos & (src == 0), fg_pos=pos & (src > 0), neg=valid & ~equal)


def boundary_to_affinity(boundary: Tensor, radius: int | PathIndex = TRAIN_RADIUS) -> Tensor:
    """Pair affinities from a class-boundary map: ``a = 1 - max`` of the boundary on the path between the pixels.

    IRN ``misc/indexing.py`` ``edge_to_affinity`` (= ``AffinityDisplacementLoss.to_affinity``). The maximum
    over each path is located without gradient, one path length at a time, then the boundary is gathered
    once at that point, so the gradient reaches exactly the maximising pixel (the first one on the path when
    values tie, as ``max_pool2d`` routes it) and the autograd graph holds ``O(B·D·S)`` instead of the
    release's ``O(B·D·L·S)``.

    Args:
        boundary: boundary probabilities in ``[0, 1]`` (a sigmoid output).
        radius: the pair radius or a `PathIndex` for this grid.

    Returns:
        ``(B, D, S)`` affinities (float32, or float64 for float64 input); differentiable w.r.t. ``boundary``.

    Shape:
        - boundary: ``(B, 1, h, w)`` (or ``(B, h, w)``)
        - output: ``(B, D, S)``, ``D``/``S`` of ``PathIndex(radius, (h, w))``

    Examples:
        >>> b = torch.tensor([[[[0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
        >>> boundary_to_affinity(b, radius=2)[0, 0]  # direction (0, 1) from sources (0, 1) and (0, 2)
        tensor([0.1000, 0.9000])
    """
    check_tensor(boundary, "boundary", (3, 4), layout="B×1×h×w", floating=True)
    if boundary.ndim == 4:
        if boundary.shape[1] != 1:
            raise ValueError(f"boundary must have one channel (B×1×h×w), got shape {shape_str(boundary)}")
        boundary = boundary[:, 0]
    check_range(boundary.detach(), "boundary", 0.0, 1.0, hint="pass boundary probabilities (a sigmoid output)")
    return _boundary_to_affinity(boundary, radius)


def _boundary_to_affinity(boundary: Tensor, radius: int | PathIndex) -> Tensor:
    """`boundary_to_affinity` of a checked ``(B, h, w)`` boundary map."""
    x = boundary.to(compute_dtype(boundary))
    B = x.shape[0]
    pi = _resolve_index(radius, tuple(x.shape[1:]), x.device)  # type: ignore[arg-type]
    flat = x.reshape(B, x.shape[1] * x.shape[2])
    offs = pi.path_flat_offsets()  # D×L
    src = pi.src_indices
    best_idx = torch.empty(B, pi.num_directions, src.numel(), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        fd = flat.detach()
        for start, stop, n in pi.length_groups():  # one path length at a time: transient memory of one group
            g_offs = offs[start:stop, :n]  # G×n
            idx = src.view(1, 1, -1) + g_offs[:, :, None]  # G×n×S
            vals = torch.index_select(fd, 1, idx.reshape(-1)).view(B, *idx.shape)
            # the release's max_pool2d over the path axis, keeping its argmax (first maximum on ties)
            _, where = F.max_pool2d(vals, (n, 1), return_indices=True)  # B×G×1×S, index = k·S + s
            k = torch.div(where.squeeze(2), src.numel(), rounding_mode="floor")
            best_idx[:, start:stop] = g_offs.unsqueeze(0).expand(B, -1, -1).gather(2, k) + src
    return 1.0 - flat.gather(1, best_idx.reshape(B, best_idx.shape[1] * best_idx.shape[2])).view(B, *best_idx.shape[1:])


@dataclass
class AffinityLossTerms:
    """The terms of IRN's boundary affinity loss (all scalars).

    Attributes:
        bg_pos: mean ``-log(a + eps)`` over background-positive pairs.
        fg_pos: mean ``-log(a + eps)`` over foreground-positive pairs.
        neg: mean ``-log(1 + eps - a)`` over negative pairs.
        total: ``(bg_pos / 2 + fg_pos / 2 + neg) / 2``.
    """

    bg_pos: Tensor
    fg_pos: Tensor
    neg: Tensor
    total: Tensor


def _targets_for(targets: AffinityTargets | Tensor, grid: tuple[int, int], radius: int | PathIndex,
                 ignore_index: int, batch: int) -> AffinityTargets:
    if isinstance(targets, AffinityTargets):
        t = targets
    else:
        check_tensor(targets, "targets", 3, layout="B×h×w (a seed mask) or AffinityTargets")
        if tuple(targets.shape[1:]) != tuple(grid):
            raise ValueError(f"targets (seed mask) must have the boundary's spatial size {tuple(grid)}, got "
                             f"{shape_str(targets)}")
        t = _affinity_targets(targets, radius, ignore_index, "targets")
    if t.bg_pos.shape[0] != batch:
        raise ValueError(f"targets have batch size {t.bg_pos.shape[0]}, boundary_logits {batch}")
    return t


def boundary_affinity_loss_detailed(
    boundary_logits: Tensor,
    targets: AffinityTargets | Tensor,
    radius: int | PathIndex = TRAIN_RADIUS,
    *,
    eps: float = 1e-5,
    ignore_index: int = 255,
) -> AffinityLossTerms:
    """The three terms and the total of [boundary_affinity_loss][wsss_blocks.irn.boundary_affinity_loss].

    Examples:
        >>> terms = boundary_affinity_loss_detailed(torch.zeros(1, 1, 2, 4), torch.zeros(1, 2, 4, dtype=torch.long), 2)
        >>> round(float(terms.bg_pos), 4), float(terms.fg_pos), float(terms.neg)  # sigmoid(0) = 0.5: -log 0.5
        (0.6931, 0.0, 0.0)
    """
    return _boundary_affinity_terms(boundary_logits, targets, radius, check_number(eps, "eps", 0.0), ignore_index)


def _boundary_affinity_terms(boundary_logits: Tensor, targets: AffinityTargets | Tensor, radius: int | PathIndex,
                             e: float, ignore_index: int) -> AffinityLossTerms:
    """`boundary_affinity_loss_detailed` with a checked ``eps``."""
    check_tensor(boundary_logits, "boundary_logits", 4, layout="B×1×h×w", floating=True)
    if boundary_logits.shape[1] != 1:
        raise ValueError(f"boundary_logits must have one channel (B×1×h×w), got {shape_str(boundary_logits)}")
    grid = tuple(boundary_logits.shape[2:])
    t = _targets_for(targets, grid, radius, ignore_index, boundary_logits.shape[0])  # type: ignore[arg-type]
    check_finite(boundary_logits, "boundary_logits")
    aff = _boundary_to_affinity(torch.sigmoid(boundary_logits.to(compute_dtype(boundary_logits)))[:, 0], radius)
    if t.bg_pos.shape != aff.shape:
        raise ValueError(f"targets have shape {tuple(t.bg_pos.shape)} but the pairs of radius "
                         f"{radius if isinstance(radius, int) else radius.radius} on a {grid} grid give "
                         f"{tuple(aff.shape)}")
    pos_loss = -torch.log(aff + e)
    neg_loss = -torch.log(1.0 + e - aff)

    def mean_over(mask: Tensor, loss: Tensor) -> Tensor:
        m = mask.to(loss.dtype)
        return (m * loss).sum() / (m.sum() + e)

    bg = mean_over(t.bg_pos, pos_loss)
    fg = mean_over(t.fg_pos, pos_loss)
    neg = mean_over(t.neg, neg_loss)
    return AffinityLossTerms(bg_pos=bg, fg_pos=fg, neg=neg, total=(bg / 2 + fg / 2 + neg) / 2)


def boundary_affinity_loss(
    boundary_logits: Tensor,
    targets: AffinityTargets | Tensor,
    radius: int | PathIndex = TRAIN_RADIUS,
    *,
    eps: float = 1e-5,
    ignore_index: int = 255,
) -> Tensor:
    """IRN's class-boundary loss: pair affinities from the boundary map against the seed-mask pair targets.

    Ahn et al., CVPR 2019, ``net/resnet50_irn.py`` lines 205-213 and ``step/train_irn.py`` lines 58-69.
    With ``a`` = `boundary_to_affinity` of ``sigmoid(boundary_logits)``:

        L_bg+ = sum_{bg_pos} -log(a + eps) / (|bg_pos| + eps)      (likewise L_fg+ over fg_pos)
        L-    = sum_{neg} -log(1 + eps - a) / (|neg| + eps)
        loss  = (L_bg+ / 2 + L_fg+ / 2 + L-) / 2

    Sums and counts run over the whole batch (one normalisation per batch, as released). This is the
    semantic part of IRN's total loss; the displacement terms (instance segmentation only) are left out,
    which does not change the boundary branch's gradients (the branches share no parameters and the
    backbone is frozen).

    Args:
        boundary_logits: logits of IRNet's boundary branch at stride 4.
        targets: `AffinityTargets` (e.g. computed in the data loader, as the release does) or the
            stride-4 seed mask ``(B, h, w)`` to compute them from.
        radius: the pair radius (10) or a `PathIndex` for this grid.
        eps: 1e-5 as released.
        ignore_index: unusable label when ``targets`` is a seed mask.

    Returns:
        Scalar loss with gradient w.r.t. ``boundary_logits``.

    Shape:
        - boundary_logits: ``(B, 1, h, w)``
        - targets: ``(B, h, w)`` or `AffinityTargets` of ``(B, D, S)``
        - output: ``()``

    Examples:
        >>> logits = torch.zeros(1, 1, 2, 4, requires_grad=True)
        >>> seeds = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
        >>> loss = boundary_affinity_loss(logits, seeds, radius=2)
        >>> loss.backward(); round(float(loss.detach()), 4)
        0.6931
    """
    return boundary_affinity_loss_detailed(boundary_logits, targets, radius, eps=eps, ignore_index=ignore_index).total


class BoundaryAffinityLoss(nn.Module):
    """Module form of [boundary_affinity_loss][wsss_blocks.irn.boundary_affinity_loss].

    Args:
        radius: pair radius (10 as released).
        eps: 1e-5 as released.
        ignore_index: unusable label of seed masks (255).

    Shape:
        - boundary_logits: ``(B, 1, h, w)``; targets: ``(B, h, w)`` or `AffinityTargets`
        - output: scalar

    Examples:
        >>> crit = BoundaryAffinityLoss(radius=2)
        >>> round(float(crit(torch.zeros(1, 1, 2, 4), torch.ones(1, 2, 4, dtype=torch.long))), 4)  # fg pairs only
        0.1733
    """

    def __init__(self, radius: int = TRAIN_RADIUS, eps: float = 1e-5, ignore_index: int = 255) -> None:
        super().__init__()
        self.radius = check_int(radius, "radius", minimum=2)
        self.eps = check_number(eps, "eps", 0.0)
        self.ignore_index = int(ignore_index)

    @override
    def forward(self, boundary_logits: Tensor, targets: AffinityTargets | Tensor) -> Tensor:
        return _boundary_affinity_terms(boundary_logits, targets, self.radius, self.eps, self.ignore_index).total

    def detailed(self, boundary_logits: Tensor, targets: AffinityTargets | Tensor) -> AffinityLossTerms:
        """The loss and its three terms (`boundary_affinity_loss_detailed`)."""
        return _boundary_affinity_terms(boundary_logits, targets, self.radius, self.eps, self.ignore_index)

    @override
    def extra_repr(self) -> str:
        return f"radius={self.radius}, eps={self.eps:g}"


# --------------------------------------------------------------------------------------------------
# random walk (indexing.py propagate_to_edge) and semantic labels (make_sem_seg_labels.py)
# --------------------------------------------------------------------------------------------------
def _walk_weights(boundary: Tensor, radius: int, beta: float) -> tuple[Tensor, list[tuple[int, int]]]:
    """Unnormalised symmetric weights ``A^beta`` of every in-image pixel to its full-disc neighbours.

    Returns ``(B, K, h, w)`` weights for the ``K = 2D + 1`` offsets (self included, sorted by (dy, dx)) and
    the offsets; ``weights[b, k, i]`` is ``A[i, i + offset_k]^beta`` (0 when the neighbour is off the image).
    The affinities are those of the release: the boundary map padded with 1.0 (left, right, bottom) by
    ``radius``, a ``PathIndex(radius, padded size)``, ``edge_to_affinity``.
    """
    B, h, w = boundary.shape
    r = radius
    padded = F.pad(boundary, (r, r, 0, r), value=1.0)
    pi = path_index(r, (h + r, w + 2 * r), boundary.device)
    aff = _boundary_to_affinity(padded, pi)  # B×D×S on the padded source rectangle
    hs, ws = pi.cropped_size
    c0 = r - pi.radius_floor
    fwd = aff.view(B, -1, hs, ws)[:, :, :h, c0:c0 + w].pow(beta)  # A[i, i + d]^beta, 0 off-image (padding)
    offsets = [(int(o[0]), int(o[1])) for o in pi.offsets.tolist()]
    # A[i, i - d] = A[i - d, i]: the forward weight of pixel i - d, shifted into place (0 off-image)
    bwd = torch.zeros_like(fwd)
    for k, (dy, dx) in enumerate(offsets):
        if dy >= h or abs(dx) >= w:
            continue  # the pair never fits in the image
        ys, xs = slice(dy, h), slice(max(dx, 0), w + min(dx, 0))
        yt, xt = slice(0, h - dy), slice(max(-dx, 0), w + min(-dx, 0))
        bwd[:, k, ys, xs] = fwd[:, k, yt, xt]
    entries = [((0, 0), torch.ones_like(fwd[:, 0]))]
    entries += [(o, fwd[:, k]) for k, o in enumerate(offsets)]
    entries += [((-o[0], -o[1]), bwd[:, k]) for k, o in enumerate(offsets)]
    entries.sort(key=lambda e: e[0])
    return torch.stack([e[1] for e in entries], dim=1), [e[0] for e in entries]


def _csr_operator(trans: Tensor, offsets: Sequence[tuple[int, int]], pad: int) -> Tensor:
    """Block-diagonal CSR matrix ``y_j = sum_k trans[b, k, j] x_pad[j + offset_k]`` over zero-padded inputs."""
    B, K, h, w = trans.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    dev = trans.device
    rows = torch.arange(h, device=dev).view(h, 1) + pad
    cols = torch.arange(w, device=dev).view(1, w) + pad
    base = (rows * wp + cols).reshape(1, -1)  # 1×N padded index of each pixel
    rel = torch.tensor([dy * wp + dx for dy, dx in offsets], device=dev).view(-1, 1)  # K×1, increasing
    col = (base + rel).t()  # N×K, sorted within each row
    col = col.unsqueeze(0) + (torch.arange(B, device=dev) * hp * wp).view(B, 1, 1)
    n = h * w
    crow = torch.arange(0, B * n * K + 1, K, device=dev)
    values = trans.detach().permute(0, 2, 3, 1).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return torch.sparse_csr_tensor(crow, col.reshape(-1), values, size=(B * n, B * hp * wp),
                                       check_invariants=False)


def _walk_sparse(x: Tensor, trans: Tensor, offsets: Sequence[tuple[int, int]], radius: int, steps: int) -> Tensor:
    B, C, h, w = x.shape
    try:
        op = _csr_operator(trans, offsets, radius)
        y = x
        for _ in range(steps):
            xp = F.pad(y, (radius,) * 4).permute(0, 2, 3, 1).reshape(-1, C)
            y = (op @ xp).view(B, h, w, C).permute(0, 3, 1, 2)
        return y.contiguous()
    except (NotImplementedError, RuntimeError):  # devices / dtypes without sparse CSR products
        return _walk_shifted(x, trans, offsets, radius, steps)


def _walk_shifted(x: Tensor, trans: Tensor, offsets: Sequence[tuple[int, int]], radius: int, steps: int) -> Tensor:
    h, w = x.shape[-2:]
    y = x
    for _ in range(steps):
        xp = F.pad(y, (radius,) * 4)
        acc = torch.zeros_like(y)
        for k, (dy, dx) in enumerate(offsets):
            acc = acc + trans[:, k:k + 1] * xp[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        y = acc
    return y


def _walk_dense(x: Tensor, trans: Tensor, offsets: Sequence[tuple[int, int]], exp_times: int) -> Tensor:
    """The release's computation: dense T, squared ``exp_times`` times, ``x @ T``, per image."""
    B, C, h, w = x.shape
    n = h * w
    out = []
    for b in range(B):
        t = x.new_zeros(n, n)  # t[i, j] = T_ij (column j normalised)
        j = torch.arange(n, device=x.device)
        yy, xx = j // w, j % w
        for k, (dy, dx) in enumerate(offsets):
            iy, ix = yy + dy, xx + dx
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            t[(iy * w + ix)[ok], j[ok]] = trans[b, k].reshape(-1)[ok]
        for _ in range(exp_times):
            t = t @ t
        out.append((x[b].reshape(C, n) @ t).view(C, h, w))
    return torch.stack(out)


def _pack_present(x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Keep only the present classes (at most max-count channels per image) so absent ones are not walked."""
    if labels is None:
        return x, None
    present = labels.to(x.device).bool()
    k = int(present.sum(1).max()) if present.numel() else 0
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :max(k, 1)]  # present first
    packed = x.gather(1, order[:, :, None, None].expand(-1, -1, *x.shape[2:]))
    keep = present.gather(1, order).to(x.dtype)[:, :, None, None]
    return packed * keep, order


def random_walk(
    cams: Tensor,
    boundary: Tensor,
    labels: Tensor | None = None,
    *,
    radius: int = INFER_RADIUS,
    beta: float = 10.0,
    exp_times: int = 8,
    damp_seeds: bool = True,
    method: str = "sparse",
) -> Tensor:
    """IRN's random walk: propagate CAMs over the boundary-aware transition matrix for ``2**exp_times`` steps.

    Ahn et al., CVPR 2019, ``misc/indexing.py`` ``propagate_to_edge`` (called with radius 5, beta 10,
    exp_times 8 by ``step/make_sem_seg_labels.py``). With ``A_ij`` = `boundary_to_affinity` for pixel
    pairs within ``radius`` (full disc, ``A_ii = 1``, the release pads the boundary with 1 so pairs never
    leave the image):

        T = A^beta / colsum(A^beta)        (columns sum to 1)
        x = cams * (1 - boundary)          (damp_seeds)
        out = x @ T^(2**exp_times)         (x as row vectors over the h·w pixels)

    Every output pixel is a convex combination of the (damped) seeds. ``method="sparse"`` applies ``T``
    ``2**exp_times`` times as a sparse product (``2·D + 1`` non-zeros per column, memory linear in
    ``h·w``; equal to the release up to float rounding); ``method="dense"`` builds the dense ``hw × hw``
    matrix and squares it ``exp_times`` times, as the release does (memory ``(hw)²``, for small maps and
    tests). The walk runs in float32 (float64 stays float64). The transition matrix is built without
    gradient (the release runs under ``no_grad``); the output carries gradients w.r.t. ``cams`` (and
    w.r.t. ``boundary`` through the seed damping only).

    Args:
        cams: stride-4 CAMs (IRN ``cam``: `irn_multiscale_cams`), normally in ``[0, 1]``.
        boundary: boundary probabilities of the same grid (IRNet's flip-averaged sigmoid map).
        labels: multi-hot labels; when given, only present classes are walked (absent ones come out 0),
            which is what the release does by storing present classes only.
        radius: neighbourhood radius of ``T`` (5).
        beta: the affinity exponent (10).
        exp_times: ``T`` is squared this many times: ``2**exp_times`` = 256 steps (8).
        damp_seeds: multiply the seeds by ``1 - boundary`` first (released: on).
        method: ``"sparse"`` or ``"dense"``.

    Returns:
        ``(B, C, h, w)`` propagated maps.

    Shape:
        - cams: ``(B, C, h, w)``
        - boundary: ``(B, 1, h, w)``
        - labels: ``(B, C)``
        - output: ``(B, C, h, w)``

    Examples:
        >>> cams = torch.zeros(1, 1, 6, 6); cams[0, 0, 1, 1] = 1.0
        >>> wall = torch.zeros(1, 1, 6, 6); wall[..., :, 3] = 1.0  # a boundary column at x = 3
        >>> out = random_walk(cams, wall, exp_times=4)
        >>> bool(out[0, 0, :, :3].min() > 0), float(out[0, 0, :, 3:].abs().max())  # spreads left, blocked
        (True, 0.0)
    """
    r, b_, e, m = _check_walk_options(radius, beta, exp_times, method)
    return _random_walk(cams, boundary, labels, r, b_, e, bool(damp_seeds), m)


def _check_walk_options(radius: int, beta: float, exp_times: int, method: str) -> tuple[int, float, int, str]:
    return (check_int(radius, "radius", minimum=2), check_number(beta, "beta", 0.0, strict=True),
            check_int(exp_times, "exp_times", minimum=0), check_choice(method, "method", ("sparse", "dense")))


def _random_walk(cams: Tensor, boundary: Tensor, labels: Tensor | None, r: int, b_: float, e: int,
                 damp_seeds: bool, m: str) -> Tensor:
    """`random_walk` with checked options."""
    check_tensor(cams, "cams", 4, layout="B×C×h×w", floating=True)
    check_tensor(boundary, "boundary", 4, layout="B×1×h×w", floating=True)
    check_same_batch(cams, "cams", boundary, "boundary")
    if boundary.shape[1] != 1 or boundary.shape[2:] != cams.shape[2:]:
        raise ValueError(f"boundary must have shape ({cams.shape[0]}, 1, {cams.shape[2]}, {cams.shape[3]}) to "
                         f"match cams {shape_str(cams)}, got {shape_str(boundary)}")
    check_finite(cams, "cams")
    check_range(boundary.detach(), "boundary", 0.0, 1.0, hint="pass boundary probabilities (a sigmoid output)")
    lf = None if labels is None else check_labels(labels, "labels", batch=cams.shape[0], num_classes=cams.shape[1])
    if cams.shape[0] == 0:  # an empty batch walks nothing
        return cams.detach().clone()
    dtype = compute_dtype(cams, boundary)
    with torch.autocast(device_type=cams.device.type, enabled=False):
        x = cams.to(dtype)
        bnd = boundary.to(dtype)
        if damp_seeds:
            x = x * (1.0 - bnd)
        x, order = _pack_present(x, lf)
        with torch.no_grad():
            weights, offsets = _walk_weights(bnd[:, 0], r, b_)
            trans = weights / weights.sum(1, keepdim=True)  # symmetric A: column sum of j = row sum of j
        y = _walk_dense(x, trans, offsets, e) if m == "dense" else _walk_sparse(x, trans, offsets, r, 2 ** e)
        if order is not None:
            assert lf is not None
            full = y.new_zeros(cams.shape[0], cams.shape[1], *y.shape[2:])
            y = full.scatter(1, order[:, :, None, None].expand(-1, -1, *y.shape[2:]), y)
    return y.to(cams.dtype) if cams.dtype in (torch.float16, torch.bfloat16) else y


def random_walk_mask(
    walked: Tensor,
    labels: Tensor,
    image_size: tuple[int, int] | None = None,
    *,
    bg_score: float = 0.25,
    scale_factor: float = 4.0,
    normalize: str = "global",
) -> Tensor:
    """IRN's semantic labels from the random-walk output (``step/make_sem_seg_labels.py`` lines 43-49).

    The walked maps are upsampled by ``scale_factor`` (bilinear, ``align_corners=False``) and cropped to
    ``image_size``, divided by their **global** maximum over the present classes and all pixels of the
    image (``normalize="per_class"``: by each class's own maximum, an option), and a constant background
    plane ``bg_score`` is put first; the argmax (ties to the background) gives the label. Absent classes
    never win. Background is not walked: a pixel is background where every normalised class score is below
    ``bg_score``. An image whose walked maps are all zero becomes background (the release divides 0 by 0
    and labels it with its first class).

    Args:
        walked: `random_walk` output.
        labels: multi-hot image labels.
        image_size: ``(H, W)`` to crop to; default the full upsampled size.
        bg_score: the background score (``sem_seg_bg_thres`` 0.25).
        scale_factor: upsampling factor from the walk grid (4).
        normalize: ``"global"`` (released) or ``"per_class"``.

    Returns:
        ``(B, H, W)`` int64 mask, 0 background and ``c + 1`` for class ``c`` (no ignore label, as released).

    Shape:
        - walked: ``(B, C, h, w)``
        - labels: ``(B, C)``
        - output: ``(B, H, W)``

    Examples:
        >>> walked = torch.tensor([[[[1.0, 0.2]], [[0.5, 0.3]]]])  # 2 classes on 1×2 cells
        >>> random_walk_mask(walked, torch.ones(1, 2), scale_factor=1.0)
        tensor([[[1, 2]]])
    """
    bg, s, norm = _check_mask_options(bg_score, scale_factor, normalize)
    return _random_walk_mask(walked, labels, image_size, bg, s, norm)


def _check_mask_options(bg_score: float, scale_factor: float, normalize: str) -> tuple[float, float, str]:
    return (check_number(bg_score, "bg_score"), check_number(scale_factor, "scale_factor", 0.0, strict=True),
            check_choice(normalize, "normalize", ("global", "per_class")))


def _random_walk_mask(walked: Tensor, labels: Tensor, image_size: tuple[int, int] | None, bg: float, s: float,
                      norm: str) -> Tensor:
    """`random_walk_mask` with checked options."""
    check_tensor(walked, "walked", 4, layout="B×C×h×w", floating=True)
    check_finite(walked, "walked")
    lf = check_labels(labels, "labels", batch=walked.shape[0], num_classes=walked.shape[1])
    x = walked.detach().float()
    if s != 1.0:
        x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    if image_size is not None:
        H, W = int(image_size[0]), int(image_size[1])
        if x.shape[2] < H or x.shape[3] < W or H < 1 or W < 1:
            raise ValueError(f"image_size {(H, W)} must fit in the upsampled grid {tuple(x.shape[2:])}")
        x = x[:, :, :H, :W]
    present = lf.to(x.device).bool()[:, :, None, None]
    x = x * present
    dims = (1, 2, 3) if norm == "global" else (2, 3)
    mx = x.amax(dim=dims, keepdim=True)
    x = torch.where(mx > 0, x / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(x))
    x = x.masked_fill(~present, float("-inf"))
    scores = torch.cat([x.new_full((x.shape[0], 1, *x.shape[2:]), bg), x], dim=1)
    return scores.argmax(1)


class RandomWalk(nn.Module):
    """IRN's random walk and semantic-label step with the released hyperparameters.

    ``forward(cams, boundary, labels, image_size)`` returns the pseudo mask (`random_walk` then
    `random_walk_mask`); `walk` returns the propagated maps only.

    Args:
        radius: neighbourhood radius (5).
        beta: affinity exponent (10).
        exp_times: ``2**exp_times`` steps (8).
        bg_score: background score of the label step (0.25).
        damp_seeds: multiply seeds by ``1 - boundary`` (on).
        method: ``"sparse"`` or ``"dense"``.
        normalize: ``"global"`` or ``"per_class"``.
        scale_factor: upsampling from the walk grid to the image (4).

    Shape:
        - cams: ``(B, C, h, w)``; boundary: ``(B, 1, h, w)``; labels: ``(B, C)``
        - output: ``(B, H, W)`` int64

    Examples:
        >>> rw = RandomWalk(exp_times=2)
        >>> rw(torch.rand(1, 2, 8, 8), torch.zeros(1, 1, 8, 8), torch.tensor([[1.0, 0.0]])).shape
        torch.Size([1, 32, 32])
    """

    def __init__(self, radius: int = INFER_RADIUS, beta: float = 10.0, exp_times: int = 8, bg_score: float = 0.25,
                 damp_seeds: bool = True, method: str = "sparse", normalize: str = "global",
                 scale_factor: float = 4.0) -> None:
        super().__init__()
        self.radius, self.beta, self.exp_times, self.method = _check_walk_options(radius, beta, exp_times, method)
        self.bg_score, self.scale_factor, self.normalize = _check_mask_options(bg_score, scale_factor, normalize)
        self.damp_seeds = bool(damp_seeds)

    def walk(self, cams: Tensor, boundary: Tensor, labels: Tensor | None = None) -> Tensor:
        """The propagated maps ``(B, C, h, w)`` (see `random_walk`)."""
        return _random_walk(cams, boundary, labels, self.radius, self.beta, self.exp_times, self.damp_seeds,
                            self.method)

    @override
    def forward(self, cams: Tensor, boundary: Tensor, labels: Tensor,
                image_size: tuple[int, int] | None = None) -> Tensor:
        walked = self.walk(cams, boundary, labels)
        return _random_walk_mask(walked, labels, image_size, self.bg_score, self.scale_factor, self.normalize)

    @override
    def extra_repr(self) -> str:
        return (f"radius={self.radius}, beta={self.beta:g}, exp_times={self.exp_times}, bg_score={self.bg_score:g}, "
                f"method={self.method!r}")
