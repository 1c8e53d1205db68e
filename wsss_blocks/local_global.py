"""L2G: local patch sampling and local-to-global attention transfer.

Blocks of "L2G: A Simple Local-to-Global Knowledge Transfer Framework for Weakly Supervised Semantic
Segmentation" (Jiang, Yang, Hou, Wei, CVPR 2022, arXiv 2204.03206; official code PengtaoJiang/L2G,
reference commit ``0ec2504``).

A *local* classification network sees N crops of every image and is trained with the usual multi-label
soft-margin loss; a *global* network sees the whole view and is trained **only** to imitate, inside each
crop's box, a target built from the (detached) local CAMs. The pieces:

- [`LocalPatchSampler`][] / [`sample_patch_boxes`][] / [`crop_local_patches`][]: the released crop
  boxes (four fixed corners plus random ones for VOC, all random for COCO, or a uniform grid) and the
  crops, replicated labels, saliency crops and the boxes.
- [`LocalToGlobalTransfer`][] / [`l2g_target`][] / [`l2g_loss`][] / [`l2g_transfer`][]: the
  transfer target (ReLU → per-map max-norm → absent-class zeroing → per-pixel keep-max → threshold →
  saliency shape transfer) and the loss ``λ · MSE(softmax(RoIAlign(global logits)), target)``.
- [`roi_align`][wsss_blocks.ops.roi_align]: a pure-PyTorch, vectorised RoIAlign with the exact sampling of
  ``torchvision.ops.roi_align`` (both ``aligned`` modes, any ``sampling_ratio``), so torchvision is not
  needed.

Channel layout: as in the official network, the background channel is the **last** one by default
(``bg_channel="last"``); ``"first"`` and ``"none"`` (C-channel backbones) are supported too.
Upstream: PengtaoJiang/L2G ``utils/LoadData.py`` (patch sampling) and ``scripts/train_l2g_sal_voc.py`` (target
and loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

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
    check_pair,
    check_range,
    check_tensor,
    checks_enabled,
    compute_dtype,
    shape_str,
)
from .ops import roi_align

__all__ = [
    "sample_patch_boxes",
    "crop_local_patches",
    "boxes_to_roi_format",
    "LocalPatches",
    "LocalPatchSampler",
    "l2g_target",
    "l2g_transfer",
    "l2g_loss",
    "L2GOutput",
    "LocalToGlobalTransfer",
]

SamplerMode = Literal["corners+random", "random", "grid"]
BgChannel = Literal["last", "first", "none"]
BgTarget = Literal["binary", "soft"]
SaliencyResize = Literal["nearest", "bilinear", "area"]
KeepMaxTies = Literal["argsort", "lowest", "highest"]

_MODES = ("corners+random", "random", "grid")
_BG_CHANNELS = ("last", "first", "none")
_BG_TARGETS = ("binary", "soft")
_SAL_RESIZE = ("nearest", "bilinear", "area")
_TIES = ("argsort", "lowest", "highest")


# ---------------------------------------------------------------------------------------------------
# Local patch sampling
# ---------------------------------------------------------------------------------------------------


class LocalPatches(TypedDict):
    """What [`LocalPatchSampler`][] returns (B images, N patches each, patch size p).

    - ``patches``: B·N×3×p×p crops (or ``resize_to``), image-major (patches of image 0 first).
    - ``patch_labels``: B·N×C, each image's label vector replicated N times.
    - ``patch_saliency``: B·N×1×p×p saliency crops, or ``None`` when no saliency was given.
    - ``boxes``: B×N×4 int64 ``(x1, y1, x2, y2)`` in global-view pixels (what [`l2g_transfer`][] takes).
    """

    patches: Tensor
    patch_labels: Tensor
    patch_saliency: Tensor | None
    boxes: Tensor


def _grid_shape(n: int) -> tuple[int, int]:
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return rows, n // rows


def _grid_offsets(count: int, span: int) -> list[int]:
    if count == 1:
        return [span // 2]
    return [round(k * span / (count - 1)) for k in range(count)]


def sample_patch_boxes(batch_size: int, image_hw: int | tuple[int, int] = (448, 448), num_patches: int = 6,
                       patch_size: int = 320, mode: SamplerMode = "corners+random",
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """Sample the L2G local-view boxes for a batch, as the official data loader does.

    Modes:

    - ``"corners+random"`` (released VOC, ``utils/LoadData.py:382-396``): the four corner boxes in the
      release's order (top-left, bottom-left, top-right, bottom-right), then ``num_patches − 4`` random
      ones. Needs ``num_patches >= 4``.
    - ``"random"`` (released COCO and the paper): ``num_patches`` random boxes.
    - ``"grid"`` (the paper's "uniform" ablation; positions are not in the release, inferred here): a
      ``rows × cols`` grid with ``rows`` the largest divisor of N not above √N, offsets evenly spaced from
      0 to ``H − p`` (a single row/column is centred), row-major.

    Random top-left offsets are uniform integers in ``[0, H − p)`` and ``[0, W − p)``: like the release
    (``np.random.randint(0, H − p)``), the last offset ``H − p`` is never drawn (only the corners touch
    the bottom/right border). When ``H == p`` the offset is 0. Every image gets its own boxes.

    Args:
        batch_size: number of images B.
        image_hw: global view size ``(H, W)`` (or one int).
        num_patches: N, boxes per image (released: 6 for VOC, 4 for COCO).
        patch_size: side p of the square boxes (released: 320).
        mode: ``"corners+random"``, ``"random"`` or ``"grid"``.
        generator: optional ``torch.Generator`` for reproducible offsets (its device is used for drawing).
        device: device of the returned tensor (default: CPU).

    Shape:
        - output: B×N×4 int64 ``(x1, y1, x2, y2)`` with ``x2 = x1 + p``, ``y2 = y1 + p``.

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import sample_patch_boxes
        >>> g = torch.Generator().manual_seed(0)
        >>> boxes = sample_patch_boxes(2, (448, 448), num_patches=6, patch_size=320, generator=g)
        >>> boxes.shape
        torch.Size([2, 6, 4])
        >>> boxes[0, :4].tolist()  # the four corners come first
        [[0, 0, 320, 320], [0, 128, 320, 448], [128, 0, 448, 320], [128, 128, 448, 448]]
    """
    _check_sampler_args(num_patches, patch_size, mode)
    return _sample_boxes(batch_size, image_hw, num_patches, patch_size, mode, generator, device)


def _sample_boxes(batch_size: int, image_hw: int | tuple[int, int], num_patches: int, patch_size: int, mode: str,
                  generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """[`sample_patch_boxes`][] with checked sampler options."""
    check_int(batch_size, "batch_size", minimum=0)
    H, W = check_pair(image_hw, "image_hw")
    if patch_size > H or patch_size > W:
        raise ValueError(f"patch_size {patch_size} is larger than the image (H, W) = ({H}, {W}); "
                         f"every patch must fit inside the global view")
    N, p = num_patches, patch_size
    span_y, span_x = H - p, W - p
    if mode == "grid":
        rows, cols = _grid_shape(N)
        ys = torch.tensor(_grid_offsets(rows, span_y), dtype=torch.long)
        xs = torch.tensor(_grid_offsets(cols, span_x), dtype=torch.long)
        y1 = ys.repeat_interleave(cols)
        x1 = xs.repeat(rows)
        tl = torch.stack([x1, y1], dim=-1).expand(batch_size, N, 2)
    else:
        n_fixed = 4 if mode == "corners+random" else 0
        gdev = generator.device if generator is not None else torch.device("cpu")
        n_rand = N - n_fixed
        ry = torch.randint(0, max(span_y, 1), (batch_size, n_rand), generator=generator, device=gdev)
        rx = torch.randint(0, max(span_x, 1), (batch_size, n_rand), generator=generator, device=gdev)
        rand = torch.stack([rx, ry], dim=-1).cpu()
        if n_fixed:
            corners = torch.tensor([[0, 0], [0, span_y], [span_x, 0], [span_x, span_y]], dtype=torch.long)
            tl = torch.cat([corners.expand(batch_size, 4, 2), rand], dim=1)
        else:
            tl = rand
    boxes = torch.cat([tl, tl + p], dim=-1).contiguous()
    return boxes.to(device) if device is not None else boxes


def boxes_to_roi_format(boxes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Flatten B×N×4 boxes to B·N×5 RoIAlign rows ``(batch_index, x1, y1, x2, y2)``.

    Shape:
        - boxes: B×N×4
        - output: B·N×5 (image-major: the N boxes of image 0 first)

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import boxes_to_roi_format
        >>> boxes_to_roi_format(torch.tensor([[[0, 0, 2, 2]], [[1, 1, 3, 3]]])).tolist()
        [[0.0, 0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 3.0, 3.0]]
    """
    check_tensor(boxes, "boxes", 3, layout="B×N×4")
    if boxes.shape[2] != 4:
        raise ValueError(f"boxes must have shape B×N×4 (x1, y1, x2, y2), got {shape_str(boxes)}")
    B, N = boxes.shape[:2]
    idx = torch.arange(B, device=boxes.device).repeat_interleave(N).to(dtype)
    return torch.cat([idx[:, None], boxes.reshape(B * N, 4).to(dtype)], dim=1)


def crop_local_patches(images: Tensor, boxes: Tensor, labels: Tensor, saliency: Tensor | None = None,
                       resize_to: int | None = None, saliency_max_norm: bool = True) -> LocalPatches:
    """Crop the local views given by ``boxes`` (plain slices, no resizing, as released).

    Labels are replicated to every patch of their image (no filtering by class presence).
    Saliency is first divided by its per-image maximum over the global view (+1e-10), as the official
    loader does (``utils/LoadData.py:269,359``), unless ``saliency_max_norm=False``; the division is
    idempotent for maps already normalised this way.

    Args:
        images: global views.
        boxes: square boxes ``(x1, y1, x2, y2)`` of equal size p, inside the image.
        labels: multi-hot image labels (no background entry).
        saliency: optional saliency maps in [0, 1].
        resize_to: optional side to bilinearly resize the crops to (experiments only; not released).
            ``boxes`` stay in global-view pixels.
        saliency_max_norm: per-image max-normalise the saliency before cropping (released behaviour).

    Shape:
        - images: B×3×H×W, boxes: B×N×4, labels: B×C, saliency: B×1×H×W
        - output: see [`LocalPatches`][]

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import crop_local_patches
        >>> imgs = torch.arange(2 * 3 * 4 * 4.0).view(2, 3, 4, 4)
        >>> out = crop_local_patches(imgs, torch.tensor([[[1, 1, 3, 3]]] * 2), torch.ones(2, 5))
        >>> torch.equal(out["patches"][1], imgs[1, :, 1:3, 1:3])
        True
    """
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    check_finite(images, "images")
    B, _, H, W = images.shape
    check_tensor(boxes, "boxes", 3, layout="B×N×4")
    if boxes.shape[0] != B or boxes.shape[2] != 4:
        raise ValueError(f"boxes must have shape B×N×4 = ({B}, N, 4), got {shape_str(boxes)}")
    if boxes.is_floating_point():
        raise TypeError(f"boxes must be an integer tensor, got dtype {boxes.dtype}")
    lab = check_labels(labels, "labels", batch=B)
    sal = _check_global_saliency(saliency, B, H, W)
    N = boxes.shape[1]
    bx = boxes.detach().to(device="cpu", dtype=torch.long).reshape(B * N, 4)  # host copy for slicing
    sizes_w = bx[:, 2] - bx[:, 0]
    sizes_h = bx[:, 3] - bx[:, 1]
    if bx.numel():
        p = int(sizes_w[0])
        if not bool(((sizes_w == p) & (sizes_h == p)).all()) or p <= 0:
            raise ValueError("boxes must all be squares of the same positive size p (x2 - x1 = y2 - y1 = p)")
        if bool((bx[:, :2] < 0).any()) or int(bx[:, 2].max()) > W or int(bx[:, 3].max()) > H:
            raise ValueError(f"boxes must lie inside the image of size (H, W) = ({H}, {W}); "
                             f"got x in [{int(bx[:, 0].min())}, {int(bx[:, 2].max())}], "
                             f"y in [{int(bx[:, 1].min())}, {int(bx[:, 3].max())}]")
    else:
        p = 1
    # a loop over the B·N patches (not pixels) of plain slices: ~30× faster than one advanced-indexing
    # gather on CPU; the box coordinates are read on the host once
    corners = bx[:, :2].tolist()

    def crop(x: Tensor) -> Tensor:
        if not corners:
            return x.new_zeros((0, x.shape[1], p, p))
        return torch.stack([x[i // N, :, y:y + p, x0:x0 + p] for i, (x0, y) in enumerate(corners)])

    patches = crop(images)
    patch_sal = None
    if sal is not None:
        if saliency_max_norm:
            sal = sal / (sal.amax(dim=(1, 2, 3), keepdim=True) + 1e-10)
        patch_sal = crop(sal)
    if resize_to is not None:
        check_int(resize_to, "resize_to", minimum=1)
        patches = F.interpolate(patches, size=(resize_to, resize_to), mode="bilinear", align_corners=False)
        if patch_sal is not None:
            patch_sal = F.interpolate(patch_sal, size=(resize_to, resize_to), mode="bilinear",
                                      align_corners=False)
    patch_labels = lab.to(images.device).repeat_interleave(N, dim=0)
    return LocalPatches(patches=patches, patch_labels=patch_labels, patch_saliency=patch_sal,
                        boxes=boxes.to(images.device))


def _check_global_saliency(saliency: Tensor | None, B: int, H: int, W: int) -> Tensor | None:
    if saliency is None:
        return None
    check_tensor(saliency, "saliency", 4, layout="B×1×H×W", floating=True)
    if tuple(saliency.shape) != (B, 1, H, W):
        raise ValueError(f"saliency must have shape B×1×H×W = ({B}, 1, {H}, {W}) like the images, "
                         f"got {shape_str(saliency)}")
    check_range(saliency.detach(), "saliency", 0.0, 1.0, hint="scale saliency maps to [0, 1]")
    return saliency


def _check_sampler_args(num_patches: int, patch_size: int, mode: str) -> None:
    check_choice(mode, "mode", _MODES)
    check_int(num_patches, "num_patches", minimum=1)
    check_int(patch_size, "patch_size", minimum=1)
    if mode == "corners+random" and num_patches < 4:
        raise ValueError(f"num_patches must be >= 4 with mode='corners+random' (the four corners come "
                         f"first), got {num_patches}; use mode='random' for fewer patches")


class LocalPatchSampler(nn.Module):
    """Sample and crop L2G local views (VOC release: 4 corners + 2 random 320² crops of a 448² view).

    Module form of [`sample_patch_boxes`][] + [`crop_local_patches`][] (L2G, Jiang et al. CVPR 2022,
    ``utils/LoadData.py`` lines 382-396 and 292-300). It has no parameters; the optional ``generator`` makes the
    random offsets reproducible.
    Defaults are the released VOC setting; [`coco`][] gives the released COCO one (4 random patches).

    Args:
        num_patches: N patches per image.
        patch_size: side p of the square patches, in global-view pixels.
        mode: ``"corners+random"`` (VOC release), ``"random"`` (COCO release, paper) or ``"grid"``.
        generator: optional ``torch.Generator`` used for every draw (seed it once for a reproducible run).
        resize_to: optional side to resize patches to (not in the release; default: no resizing).
        saliency_max_norm: per-image max-normalise saliency before cropping (released behaviour).

    Shape:
        - images: B×3×H×W (H, W ≥ p)
        - labels: B×C
        - saliency: B×1×H×W in [0, 1], optional
        - output: dict, see [`LocalPatches`][] (``patches`` B·N×3×p×p, ``patch_labels`` B·N×C,
          ``patch_saliency`` B·N×1×p×p or None, ``boxes`` B×N×4)

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from wsss_blocks.local_global import LocalPatchSampler
        >>> g = torch.Generator().manual_seed(0)
        >>> sampler = LocalPatchSampler(num_patches=6, patch_size=32, generator=g)
        >>> images, labels = torch.randn(2, 3, 48, 48), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
        >>> views = sampler(images, labels)
        >>> views["patches"].shape, views["boxes"].shape
        (torch.Size([12, 3, 32, 32]), torch.Size([2, 6, 4]))
        >>> # the local network is trained with the usual multi-label loss on the replicated labels:
        >>> local_logits = torch.randn(12, 3, requires_grad=True)
        >>> loss_cls = F.multilabel_soft_margin_loss(local_logits, views["patch_labels"])
    """

    def __init__(self, num_patches: int = 6, patch_size: int = 320, mode: SamplerMode = "corners+random",
                 generator: torch.Generator | None = None, resize_to: int | None = None,
                 saliency_max_norm: bool = True) -> None:
        super().__init__()
        _check_sampler_args(num_patches, patch_size, mode)
        if resize_to is not None:
            check_int(resize_to, "resize_to", minimum=1)
        self.num_patches = num_patches
        self.patch_size = patch_size
        self.mode: SamplerMode = mode
        self.generator = generator
        self.resize_to = resize_to
        self.saliency_max_norm = saliency_max_norm

    @classmethod
    def coco(cls, **overrides: Any) -> LocalPatchSampler:
        """Released COCO setting: 4 uniformly random 320² patches (``train_l2g_sal_coco.sh``)."""
        kwargs: dict[str, Any] = {"num_patches": 4, "patch_size": 320, "mode": "random"}
        kwargs.update(overrides)
        return cls(**kwargs)

    def sample_boxes(self, batch_size: int, image_hw: int | tuple[int, int] = (448, 448),
                     device: torch.device | str | None = None) -> Tensor:
        """B×N×4 int64 boxes ``(x1, y1, x2, y2)``; see [`sample_patch_boxes`][]."""
        return _sample_boxes(batch_size, image_hw, self.num_patches, self.patch_size, self.mode, self.generator,
                             device)

    @override
    def forward(self, images: Tensor, labels: Tensor, saliency: Tensor | None = None) -> LocalPatches:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        B, _, H, W = images.shape
        if self.patch_size > H or self.patch_size > W:
            raise ValueError(f"patch_size {self.patch_size} is larger than the images of size (H, W) = "
                             f"({H}, {W}); every patch must fit inside the global view")
        boxes = self.sample_boxes(B, (H, W))  # on the host: the crops are plain slices
        return crop_local_patches(images, boxes, labels, saliency, resize_to=self.resize_to,
                                  saliency_max_norm=self.saliency_max_norm)

    @override
    def extra_repr(self) -> str:
        return (f"num_patches={self.num_patches}, patch_size={self.patch_size}, mode={self.mode!r}, "
                f"resize_to={self.resize_to}")


# ---------------------------------------------------------------------------------------------------
# Local-to-global transfer
# ---------------------------------------------------------------------------------------------------


@dataclass
class L2GOutput:
    """Result of [`l2g_transfer`][].

    Attributes:
        loss: scalar ``weight · mean((global_probs − target)²)``; carries gradient into the global logits.
        target: R×K×h×w detached transfer target (channel order as given by ``bg_channel``).
        global_probs: R×K×h×w channel softmax of the RoIAligned global logits (with gradient).
    """

    loss: Tensor
    target: Tensor
    global_probs: Tensor


def _check_boxes(boxes: object, num_patches: int, batch: int, dtype: torch.dtype) -> Tensor:
    """``boxes`` given as B×N×4 per-image boxes (B·N = R) or as R×5 RoIAlign rows; returns the R×5 rows."""
    boxes = check_tensor(boxes, "boxes", (2, 3), layout="B×N×4 or R×5")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must be a real tensor of pixel coordinates, got dtype {boxes.dtype}")
    if boxes.ndim == 3:
        if boxes.shape[2] != 4 or boxes.shape[0] * boxes.shape[1] != num_patches or boxes.shape[0] != batch:
            raise ValueError(f"boxes must have shape B×N×4 = ({batch}, {num_patches // max(batch, 1)}, 4) for B = "
                             f"{batch} images and {num_patches} patches in local_cams, got {shape_str(boxes)}")
        _check_box_coordinates(boxes.reshape(-1, 4))
        return boxes_to_roi_format(boxes, dtype)
    if boxes.shape[1] != 5:
        raise ValueError(f"boxes must have shape B×N×4 or R×5 (batch_index, x1, y1, x2, y2), got "
                         f"{shape_str(boxes)}")
    if boxes.shape[0] != num_patches:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but local_cams has {num_patches} patches "
                         f"(boxes {shape_str(boxes)}); each patch needs its box")
    check_finite(boxes, "boxes")
    if boxes.shape[0] and checks_enabled():
        idx = boxes[:, 0]
        if not bool((idx == idx.round()).all()) or float(idx.min()) < 0 or float(idx.max()) > batch - 1:
            raise ValueError(f"boxes[:, 0] must hold integer batch indices in [0, {batch - 1}] "
                             f"(batch size {batch}), got values in "
                             f"[{float(idx.min()):g}, {float(idx.max()):g}]")
    _check_box_coordinates(boxes[:, 1:])
    return boxes


def _check_box_coordinates(xyxy: Tensor) -> None:
    """``(x1, y1, x2, y2)`` rows with ``0 <= x1 <= x2`` and ``0 <= y1 <= y2`` (a value check)."""
    if not checks_enabled() or xyxy.numel() == 0:
        return
    check_finite(xyxy, "boxes")
    x1, y1, x2, y2 = xyxy.unbind(1)
    bad = (x1 < 0) | (y1 < 0) | (x2 < x1) | (y2 < y1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"boxes must be (x1, y1, x2, y2) in global-view pixels with 0 <= x1 <= x2 and "
                         f"0 <= y1 <= y2; box {row} is {[round(float(v), 4) for v in xyxy[row]]}")


def _check_target_inputs(local_cams: Tensor, boxes: Tensor, labels: Tensor,
                         patch_saliency: Tensor | None, bg_channel: str, stride: int,
                         num_classes: int | None) -> tuple[Tensor, Tensor, Tensor | None]:
    check_tensor(local_cams, "local_cams", 4, layout="B·N×K×h×w", floating=True)
    check_finite(local_cams, "local_cams")
    lab = check_labels(labels, "labels", num_classes=num_classes)
    C = lab.shape[1]
    K = local_cams.shape[1]
    expect_k = C if bg_channel == "none" else C + 1
    if expect_k != K:
        raise ValueError(f"local_cams has {K} channels but labels has {C} classes; with "
                         f"bg_channel={bg_channel!r} expected K = {expect_k} "
                         f"(local_cams {shape_str(local_cams)}, labels {shape_str(lab)})")
    rois = _check_boxes(boxes, local_cams.shape[0], lab.shape[0], compute_dtype(local_cams))
    if patch_saliency is not None:
        check_tensor(patch_saliency, "patch_saliency", 4, layout="B·N×1×p×p", floating=True)
        R, _, h, w = local_cams.shape
        sh, sw = patch_saliency.shape[-2:]
        if patch_saliency.shape[0] != R or patch_saliency.shape[1] != 1:
            raise ValueError(f"patch_saliency must have shape B·N×1×p×p with B·N = {R}, "
                             f"got {shape_str(patch_saliency)}")
        if (sh, sw) not in ((h, w), (h * stride, w * stride)):
            raise ValueError(f"patch_saliency must be {h * stride}×{w * stride} (stride {stride} × the local "
                             f"map {h}×{w}) or already {h}×{w}, got {sh}×{sw}; resize it yourself if the "
                             f"local network's output size is not patch_size/stride")
        check_range(patch_saliency.detach(), "patch_saliency", 0.0, 1.0, hint="scale saliency maps to [0, 1]")
    return lab, rois, patch_saliency


def _keep_max_winner(t: Tensor, ties: str) -> Tensor:
    """R×1×h×w index of the channel kept at each pixel (step 4), ties broken by ``ties``."""
    if ties == "lowest":
        return t.argmax(dim=1, keepdim=True)
    if ties == "highest":  # the last maximal channel: the background (last) wins its ties
        k = t.shape[1]
        return (k - 1) - t.flip(1).argmax(dim=1, keepdim=True)
    # the released call (train_l2g_sal_voc.py:193-195): row 0 of an unstable argsort of the negated maps over
    # channels, on the K × (R·h·w) matrix; which of several equal channels comes first is up to the sort
    r, k, h, w = t.shape
    order = torch.argsort(-t.permute(1, 0, 2, 3).reshape(k, -1), dim=0)[0]
    return order.reshape(r, h, w).unsqueeze(1)


def _target_bg_last(cams: Tensor, labels_per_roi: Tensor, sal: Tensor | None, has_bg: bool, keep_max: bool,
                    fg_threshold: float, bg_target: str, empty: Tensor | None, eps: float,
                    keep_max_ties: str = "argsort") -> Tensor:
    """Steps 1–5 of on B·N×K×h×w cams with background (if any) in the last channel."""
    C = labels_per_roi.shape[1]
    t = cams.clamp(min=0)  # 1. ReLU
    t = t / (t.amax(dim=(2, 3), keepdim=True) + eps)  # 2. per-map max-norm (bg included)
    mask = labels_per_roi.to(t.dtype)
    if has_bg:  # 3. zero absent foreground classes; the background channel is never masked
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    t = t * mask[:, :, None, None]
    if keep_max:  # 4. keep only the per-pixel winner over all K channels (ties: keep_max_ties)
        win = _keep_max_winner(t, keep_max_ties)
        t = torch.zeros_like(t).scatter(1, win, t.gather(1, win))
    if sal is None:
        return t
    m = (t > fg_threshold).to(t.dtype)  # 5. shape transfer
    out = m[:, :C] * sal
    if has_bg:
        bg = m[:, C:] if bg_target == "binary" else t[:, C:]
        out = torch.cat([out, bg * (1.0 - sal)], dim=1)
    if empty is not None:  # paper: plain attention target where the patch's saliency is empty
        out = torch.where(empty[:, None, None, None], t, out)
    return out


def _resize_saliency(sal: Tensor, hw: tuple[int, int], mode: str) -> Tensor:
    if tuple(sal.shape[-2:]) == hw:
        return sal
    if mode == "nearest":
        return F.interpolate(sal, size=hw, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(sal, size=hw, mode="bilinear", align_corners=False)
    return F.interpolate(sal, size=hw, mode="area")


def l2g_target(local_cams: Tensor, boxes: Tensor, labels: Tensor, patch_saliency: Tensor | None = None,
               *, stride: int = 8, bg_channel: BgChannel = "last", keep_max: bool = True,
               fg_threshold: float = 0.001, bg_target: BgTarget = "binary",
               saliency_resize: SaliencyResize = "nearest", empty_saliency_fallback: bool = False,
               eps: float = 1e-8, num_classes: int | None = None,
               keep_max_ties: KeepMaxTies = "argsort") -> Tensor:
    """The L2G transfer target from local CAMs, detached.

    For every patch n (of image b) and channel k:

    1. ``T = max(F_local, 0)`` (stop-gradient);
    2. ``T[n,k] /= max_uv T[n,k] + eps`` (background channel included);
    3. ``T[n,c] = 0`` for foreground classes c absent from ``labels[b]``;
    4. ``keep_max``: keep only the per-pixel argmax channel over all K channels; ties (frequent: every map's
       peak normalises to exactly 1) are broken by ``keep_max_ties``;
    5. with saliency s (``patch_saliency`` resized to h×w, nearest by default = pixel ``(8u, 8v)``):
       ``A[n,c] = 1[T[n,c] > τ] · s`` for foreground c and ``A[n,bg] = 1[T[n,bg] > τ] · (1 − s)``
       (``bg_target="binary"``, VOC) or ``T[n,bg] · (1 − s)`` (``"soft"``, COCO).

    Without saliency the target is T after step 4 (the paper's plain attention transfer L_at). The
    release has no fallback for patches whose saliency is empty (their foreground target is 0);
    ``empty_saliency_fallback=True`` uses the paper's L_at target for patches whose saliency is all zero
    (``PengtaoJiang/L2G`` issue #7: both give close results).

    Args:
        local_cams: raw local-network maps (logits/CAMs; ReLU and normalisation are applied here).
        boxes: the patch boxes, B×N×4 ``(x1, y1, x2, y2)`` per image (patches image-major, as
            [`LocalPatchSampler`][] gives them), or R×5 rows ``(batch_index, x1, y1, x2, y2)`` (the
            ``Tensor[K, 5]`` form of ``torchvision.ops.roi_align``); the image index selects the labels.
        labels: multi-hot image labels without background.
        patch_saliency: optional saliency crops in [0, 1], at patch resolution (``stride·h``) or h×w.
        stride: output stride of the local network (used for the saliency size check).
        bg_channel: where the background channel is: ``"last"`` (official network), ``"first"`` or
            ``"none"`` (C-channel backbone; foreground channels only).
        keep_max: apply step 4 (released); ``False`` keeps every class map.
        fg_threshold: τ, the binarisation threshold (VOC 0.001, COCO 0.1).
        bg_target: ``"binary"`` (VOC) or ``"soft"`` (COCO) background target.
        saliency_resize: how saliency is resized to h×w: ``"nearest"`` (released), ``"bilinear"``, ``"area"``.
        empty_saliency_fallback: the paper's L_at fallback for patches with empty saliency.
        eps: added to the per-map maximum (1e-8 as released).
        num_classes: optional C to check ``labels`` against.
        keep_max_ties: which of several equal maximal channels step 4 keeps. ``"argsort"`` (released): row 0 of
            ``torch.argsort(-T)`` over the channels, the release's own call (``train_l2g_sal_voc.py:193-195``),
            an unstable sort whose tie order depends on the device and the PyTorch version (on CPU, PyTorch
            2.x: the background wins 60-83 % of the ties it is part of, ties among foreground channels go
            either way); ``"lowest"``: the lowest channel index (``argmax``); ``"highest"``: the highest index,
            so the background (last channel) wins every tie it is part of.

    Shape:
        - local_cams: R×K×h×w with R = B·N, K = C + 1 (or C with ``bg_channel="none"``)
        - boxes: B×N×4 or R×5
        - labels: B×C
        - patch_saliency: R×1×(stride·h)×(stride·w) or R×1×h×w, optional
        - output: R×K×h×w, detached, values in [0, 1], at most one non-zero channel per pixel (keep_max)

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import l2g_target
        >>> cams = torch.tensor([[[[2.0, 1.0]], [[4.0, 0.0]], [[1.0, 3.0]]]])  # 1 patch, K=3 (bg last), 1×2
        >>> t = l2g_target(cams, torch.zeros(1, 5), torch.tensor([[1.0, 0.0]]))  # class 1 absent
        >>> t[0, :, 0].tolist()  # keep-max: class 0 wins pixel 0, background wins pixel 1
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    _check_transfer_options(stride, bg_channel, bg_target, saliency_resize, eps, keep_max_ties)
    return _target(local_cams, boxes, labels, patch_saliency, stride, bg_channel, keep_max, fg_threshold, bg_target,
                   saliency_resize, empty_saliency_fallback, eps, num_classes, keep_max_ties)


def _check_transfer_options(stride: int, bg_channel: str, bg_target: str, saliency_resize: str, eps: float,
                            keep_max_ties: str = "argsort") -> None:
    check_int(stride, "stride", minimum=1)
    check_choice(keep_max_ties, "keep_max_ties", _TIES)
    check_choice(bg_channel, "bg_channel", _BG_CHANNELS)
    check_choice(bg_target, "bg_target", _BG_TARGETS)
    check_choice(saliency_resize, "saliency_resize", _SAL_RESIZE)
    check_number(eps, "eps", 0.0, strict=True)


def _target(local_cams: Tensor, boxes: Tensor, labels: Tensor, patch_saliency: Tensor | None, stride: int,
            bg_channel: str, keep_max: bool, fg_threshold: float, bg_target: str, saliency_resize: str,
            empty_saliency_fallback: bool, eps: float, num_classes: int | None,
            keep_max_ties: str = "argsort") -> Tensor:
    """[`l2g_target`][] with checked options."""
    lab, rois, sal = _check_target_inputs(local_cams, boxes, labels, patch_saliency, bg_channel, stride,
                                          num_classes)
    return _build_target(local_cams, rois, lab, sal, bg_channel, keep_max, fg_threshold, bg_target,
                         saliency_resize, empty_saliency_fallback, eps, keep_max_ties)


def _build_target(local_cams: Tensor, rois: Tensor, lab: Tensor, sal: Tensor | None, bg_channel: str,
                  keep_max: bool, fg_threshold: float, bg_target: str, saliency_resize: str,
                  empty_fallback: bool, eps: float, keep_max_ties: str = "argsort") -> Tensor:
    with torch.no_grad():
        dtype = compute_dtype(local_cams)
        cams = local_cams.detach().to(dtype)
        if bg_channel == "first":
            cams = torch.roll(cams, shifts=-1, dims=1)
        labels_per_roi = lab.to(device=cams.device, dtype=dtype).index_select(
            0, rois[:, 0].detach().long().to(cams.device))
        s = None
        if sal is not None:
            sal = sal.detach().to(device=cams.device, dtype=dtype)
            s = _resize_saliency(sal, (cams.shape[-2], cams.shape[-1]), saliency_resize)
            # "empty" is judged at the saliency's own (patch) resolution, before resizing
            empty = sal.flatten(1).amax(dim=1) <= 0 if empty_fallback else None
        else:
            empty = None
        t = _target_bg_last(cams, labels_per_roi, s, bg_channel != "none", keep_max, fg_threshold,
                            bg_target, empty, eps, keep_max_ties)
        if bg_channel == "first":
            t = torch.roll(t, shifts=1, dims=1)
    return t


def l2g_transfer(global_logits: Tensor, local_cams: Tensor, boxes: Tensor, labels: Tensor,
                 patch_saliency: Tensor | None = None, *, stride: int = 8, weight: float = 10.0,
                 fg_threshold: float = 0.001, bg_channel: BgChannel = "last", keep_max: bool = True,
                 bg_target: BgTarget = "binary", saliency_resize: SaliencyResize = "nearest",
                 roi_aligned: bool = False, sampling_ratio: int = -1, empty_saliency_fallback: bool = False,
                 eps: float = 1e-8, num_classes: int | None = None,
                 keep_max_ties: KeepMaxTies = "argsort") -> L2GOutput:
    """L2G local-to-global transfer: loss, target and global probabilities.

    ``loss = weight · mean_{n,k,u,v} (softmax_k(RoIAlign(global_logits, boxes))[n,k,u,v] − A[n,k,u,v])²``
    with ``A`` = [`l2g_target`][]. RoIAlign pools each patch's box out of the global map to the local
    map's size h×w with ``spatial_scale = 1/stride``; released: torchvision defaults
    (``sampling_ratio=-1``, one sample per bin for 320→40, ``aligned=False``, which samples the global map
    half a cell (≈ stride/2 px) to the bottom-right of the local grid). ``roi_aligned=True`` is the
    geometrically exact alternative (a deliberate deviation from the release). The mean runs over every
    element, zero-target pixels and background included, so those pixels are pushed toward a uniform
    distribution, as released. Overlapping patches are not merged: each contributes its own term.
    Softmax, RoIAlign and the reduction run in float32 (float64 inputs stay float64), also under autocast.

    Gradient flows only into ``global_logits``; the target is built from detached local maps (train the
    local network with ``multilabel_soft_margin_loss(local_logits, patch_labels)``; the global network
    gets no classification loss in the release).

    Args:
        global_logits: global-network output maps (logits; softmax is applied here).
        local_cams: local-network output maps on the patches (raw).
        boxes: the patch boxes in global-view pixels, B×N×4 per image or R×5 rows (see [`l2g_target`][]).
        labels: multi-hot image labels (no background).
        patch_saliency: optional saliency crops (enables the released shape-transfer target).
        stride: output stride of both networks (spatial scale 1/stride).
        weight: λ (VOC 10, COCO 30).
        fg_threshold: see [`l2g_target`][].
        bg_channel: see [`l2g_target`][].
        keep_max: see [`l2g_target`][].
        bg_target: see [`l2g_target`][].
        saliency_resize: see [`l2g_target`][].
        empty_saliency_fallback: see [`l2g_target`][].
        eps: see [`l2g_target`][].
        num_classes: see [`l2g_target`][].
        keep_max_ties: see [`l2g_target`][].
        roi_aligned: ``aligned`` flag of RoIAlign (``False`` = released half-cell shift).
        sampling_ratio: RoIAlign samples per bin (``-1`` = adaptive, released).

    Shape:
        - global_logits: B×K×H'×W' (H' = H/stride)
        - local_cams: R×K×h×w, R = B·N
        - boxes: B×N×4 or R×5; labels: B×C; patch_saliency: R×1×(stride·h)×(stride·w), optional
        - output: [`L2GOutput`][] (scalar ``loss``; ``target`` and ``global_probs`` R×K×h×w)

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import l2g_transfer
        >>> g = torch.zeros(1, 3, 4, 4, requires_grad=True)  # uniform softmax everywhere
        >>> boxes = torch.tensor([[[0, 0, 16, 16]]])  # one image, one patch
        >>> out = l2g_transfer(g, torch.ones(1, 3, 2, 2), boxes, torch.tensor([[1.0, 1.0]]), keep_max=False)
        >>> round(out.loss.item(), 4)  # 10 · mean((1/3 − 1)²)
        4.4444
    """
    _check_transfer_options(stride, bg_channel, bg_target, saliency_resize, eps, keep_max_ties)
    check_number(weight, "weight", 0.0)
    return _transfer(global_logits, local_cams, boxes, labels, patch_saliency, stride, weight, fg_threshold,
                     bg_channel, keep_max, bg_target, saliency_resize, roi_aligned, sampling_ratio,
                     empty_saliency_fallback, eps, num_classes, keep_max_ties)


def _transfer(global_logits: Tensor, local_cams: Tensor, boxes: Tensor, labels: Tensor,
              patch_saliency: Tensor | None, stride: int, weight: float, fg_threshold: float, bg_channel: str,
              keep_max: bool, bg_target: str, saliency_resize: str, roi_aligned: bool, sampling_ratio: int,
              empty_saliency_fallback: bool, eps: float, num_classes: int | None,
              keep_max_ties: str = "argsort") -> L2GOutput:
    """[`l2g_transfer`][] with checked options."""
    lab, rois, sal = _check_target_inputs(local_cams, boxes, labels, patch_saliency, bg_channel, stride,
                                          num_classes)
    check_tensor(global_logits, "global_logits", 4, layout="B×K×H'×W'", floating=True)
    check_finite(global_logits, "global_logits")
    if global_logits.shape[0] != lab.shape[0]:
        raise ValueError(f"global_logits and labels must have the same batch size, got "
                         f"{shape_str(global_logits)} and {shape_str(lab)}")
    if global_logits.shape[1] != local_cams.shape[1]:
        raise ValueError(f"global_logits has {global_logits.shape[1]} channels but local_cams has "
                         f"{local_cams.shape[1]} (global_logits {shape_str(global_logits)}, "
                         f"local_cams {shape_str(local_cams)})")
    target = _build_target(local_cams, rois, lab, sal, bg_channel, keep_max, fg_threshold, bg_target,
                           saliency_resize, empty_saliency_fallback, eps, keep_max_ties)
    h, w = local_cams.shape[-2:]
    with torch.autocast(device_type=global_logits.device.type, enabled=False):
        logits = global_logits.to(compute_dtype(global_logits))
        aligned = roi_align(logits, rois.to(logits.device), (h, w), 1.0 / stride, sampling_ratio, roi_aligned)
        probs = torch.softmax(aligned, dim=1)
        loss = weight * (probs - target.to(probs)).square().mean()
    return L2GOutput(loss=loss, target=target, global_probs=probs)


def l2g_loss(global_logits: Tensor, local_cams: Tensor, boxes: Tensor, labels: Tensor,
             patch_saliency: Tensor | None = None, **kwargs: Any) -> Tensor:
    """Scalar L2G transfer loss; same arguments as [`l2g_transfer`][] (which also returns the target).

    Shape:
        - global_logits: B×K×H'×W'; local_cams: R×K×h×w; boxes: B×N×4 or R×5; labels: B×C
        - output: scalar

    Examples:
        >>> import torch
        >>> from wsss_blocks.local_global import l2g_loss
        >>> g = torch.randn(1, 21, 56, 56, requires_grad=True)
        >>> boxes = torch.tensor([[0.0, 64.0, 0.0, 384.0, 320.0]])  # R×5 rows work too
        >>> labels = torch.zeros(1, 20); labels[0, 3] = 1
        >>> loss = l2g_loss(g, torch.randn(1, 21, 40, 40), boxes, labels, torch.rand(1, 1, 320, 320))
        >>> loss.backward(); g.grad.shape
        torch.Size([1, 21, 56, 56])
    """
    return l2g_transfer(global_logits, local_cams, boxes, labels, patch_saliency, **kwargs).loss


class LocalToGlobalTransfer(nn.Module):
    """L2G local-to-global transfer loss (module form of [`l2g_transfer`][]).

    Jiang et al., "L2G: A Simple Local-to-Global Knowledge Transfer Framework for Weakly Supervised
    Semantic Segmentation", CVPR 2022. Defaults reproduce the released VOC setting
    (``scripts/train_l2g_sal_voc.py:183-210``, ``train_l2g_sal_voc.sh``): λ = 10, τ = 0.001, binary
    background target, keep-max, nearest saliency resizing, RoIAlign ``aligned=False`` with scale
    1/stride, MSE mean over all elements; background is the last channel. [`coco`][] gives the COCO
    release (λ = 30, τ = 0.1, soft background target).

    ``forward`` returns the scalar loss; [`transfer`][] also returns the target and the global
    probabilities; [`build_target`][] returns only the (detached) target.

    Args:
        num_classes: C, number of foreground classes (20 VOC, 80 COCO).
        stride: output stride of both networks (8 for ResNet-38).
        weight: λ.
        fg_threshold: τ.
        bg_channel: ``"last"`` (official), ``"first"`` or ``"none"`` (C-channel maps).
        keep_max: keep only the per-pixel winning channel of the target (released).
        keep_max_ties: tie rule of keep-max (``"argsort"`` released, ``"lowest"``, ``"highest"``; see
            [`l2g_target`][]).
        bg_target: ``"binary"`` (VOC) or ``"soft"`` (COCO).
        roi_aligned: ``False`` = released half-cell shift; ``True`` = exact alignment.
        empty_saliency_fallback: paper's plain-attention target for patches with empty saliency.
        eps: epsilon of the per-map max normalisation.
        saliency_resize: ``"nearest"`` (released), ``"bilinear"`` or ``"area"``.
        sampling_ratio: RoIAlign samples per bin (``-1`` adaptive, released).

    Shape:
        - global_logits: B×K×H'×W'
        - local_cams: B·N×K×h×w, K = C + 1 (C with ``bg_channel="none"``)
        - boxes: B×N×4 (or B·N×5 rows); labels: B×C; patch_saliency: B·N×1×p×p (p = stride·h), optional
        - output: scalar loss (gradient only into ``global_logits``)

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from wsss_blocks.local_global import LocalPatchSampler, LocalToGlobalTransfer
        >>> g = torch.Generator().manual_seed(0)
        >>> sampler = LocalPatchSampler(num_patches=4, patch_size=32, generator=g)
        >>> l2g = LocalToGlobalTransfer(num_classes=3)
        >>> images, sal = torch.randn(2, 3, 48, 48), torch.rand(2, 1, 48, 48)
        >>> labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
        >>> # stand-ins for two independent stride-8 networks with K = C + 1 output maps
        >>> global_net = torch.nn.Conv2d(3, 4, 8, stride=8)
        >>> local_net = torch.nn.Conv2d(3, 4, 8, stride=8)
        >>> views = sampler(images, labels, sal)
        >>> local_maps = local_net(views["patches"])  # 8×4×4×4
        >>> loss_cls = F.multilabel_soft_margin_loss(local_maps[:, :-1].mean((2, 3)), views["patch_labels"])
        >>> loss_kt = l2g(global_net(images), local_maps, views["boxes"], labels, views["patch_saliency"])
        >>> (loss_cls + loss_kt).backward()
    """

    def __init__(self, num_classes: int, stride: int = 8, weight: float = 10.0, fg_threshold: float = 0.001,
                 bg_channel: BgChannel = "last", keep_max: bool = True, bg_target: BgTarget = "binary",
                 roi_aligned: bool = False, empty_saliency_fallback: bool = False, eps: float = 1e-8,
                 saliency_resize: SaliencyResize = "nearest", sampling_ratio: int = -1,
                 keep_max_ties: KeepMaxTies = "argsort") -> None:
        super().__init__()
        check_int(num_classes, "num_classes", minimum=1)
        _check_transfer_options(stride, bg_channel, bg_target, saliency_resize, eps, keep_max_ties)
        self.keep_max_ties: KeepMaxTies = keep_max_ties
        check_number(weight, "weight", 0.0)
        check_int(sampling_ratio, "sampling_ratio")
        self.num_classes = num_classes
        self.stride = stride
        self.weight = float(weight)
        self.fg_threshold = float(fg_threshold)
        self.bg_channel: BgChannel = bg_channel
        self.keep_max = keep_max
        self.bg_target: BgTarget = bg_target
        self.roi_aligned = roi_aligned
        self.empty_saliency_fallback = empty_saliency_fallback
        self.eps = float(eps)
        self.saliency_resize: SaliencyResize = saliency_resize
        self.sampling_ratio = sampling_ratio

    @classmethod
    def coco(cls, num_classes: int = 80, **overrides: Any) -> LocalToGlobalTransfer:
        """Released COCO setting (``train_l2g_sal_coco.sh``/``.py:243``): λ = 30, τ = 0.1, soft bg target."""
        kwargs: dict[str, Any] = {"weight": 30.0, "fg_threshold": 0.1, "bg_target": "soft"}
        kwargs.update(overrides)
        return cls(num_classes, **kwargs)

    def build_target(self, local_cams: Tensor, boxes: Tensor, labels: Tensor,
                     patch_saliency: Tensor | None = None) -> Tensor:
        """Detached R×K×h×w target; see [`l2g_target`][]."""
        return _target(local_cams, boxes, labels, patch_saliency, self.stride, self.bg_channel, self.keep_max,
                       self.fg_threshold, self.bg_target, self.saliency_resize, self.empty_saliency_fallback,
                       self.eps, self.num_classes, self.keep_max_ties)

    def transfer(self, global_logits: Tensor, local_cams: Tensor, boxes: Tensor, labels: Tensor,
                 patch_saliency: Tensor | None = None) -> L2GOutput:
        """Loss plus target and global probabilities; see [`l2g_transfer`][]."""
        return _transfer(global_logits, local_cams, boxes, labels, patch_saliency, self.stride, self.weight,
                         self.fg_threshold, self.bg_channel, self.keep_max, self.bg_target, self.saliency_resize,
                         self.roi_aligned, self.sampling_ratio, self.empty_saliency_fallback, self.eps,
                         self.num_classes, self.keep_max_ties)

    @override
    def forward(self, global_logits: Tensor, local_cams: Tensor, boxes: Tensor, labels: Tensor,
                patch_saliency: Tensor | None = None) -> Tensor:
        return self.transfer(global_logits, local_cams, boxes, labels, patch_saliency).loss

    @override
    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, stride={self.stride}, weight={self.weight}, "
                f"fg_threshold={self.fg_threshold}, bg_channel={self.bg_channel!r}, "
                f"keep_max={self.keep_max}, keep_max_ties={self.keep_max_ties!r}, bg_target={self.bg_target!r}, "
                f"roi_aligned={self.roi_aligned}, "
                f"empty_saliency_fallback={self.empty_saliency_fallback}")
