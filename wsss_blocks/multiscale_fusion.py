"""SMAF: fused multi-scale class-aware attention maps as a self-training target.

Blocks of Yang, Zhu and Zhang, "A Self-Training Framework Based on Multi-Scale Attention Fusion for Weakly
Supervised Semantic Segmentation" (arXiv 2305.05841, 2023; code bupt-ai-cz/SMAF). The method, as released:

1. **Fusion** ([`multiscale_attention_fusion`][], ``gen_fused_cam.py``): run a frozen CAM network at
   scales 0.5/1/1.5/2 and their horizontal flips (8 passes), take the softmax over all classes including
   background *before* upsampling, upsample bilinearly to the image size, zero the channels of absent
   classes, undo the flips, **sum** the 8 maps and divide every class map by its spatial max + 1e-5.
   The network's own background channel is discarded.
2. **Denoising** ([`denoise`][]): prepend a constant background score 0.2.
3. **Reactivation** ([`reactivate`][]): divide by the per-pixel maximum so the winning channel is 1.
4. **Self-training** ([`smaf_loss`][]): 100 × MSE between the student's softmax and the target at 1/4 of
   the crop resolution, the student's logits upsampled bilinearly with ``align_corners=True``.
5. **Pseudo masks** ([`smaf_pseudo_mask`][]): argmax over [0.2, A_0, …, A_{C-1}], optionally refined by
   a dense CRF that starts from the hard labels (pydensecrf ``unary_from_labels``, gt_prob 0.7).

The multi-scale + flip loop is [`wsss_blocks.cam.multiscale_cams`][wsss_blocks.cam.multiscale_cams]; this module only
supplies the per-pass activation (softmax / ReLU / none, background channel dropped, maps upsampled in the released
order), the class-aware masking and the normalisation.

Conventions: ``maps`` are B×C×H×W foreground maps (no background), ``scores``/targets are B×(C+1)×H×W with
**channel 0 = background** (the released code puts background last; use ``bg_channel`` to say where your
network keeps it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_choice,
    check_finite,
    check_labels,
    check_number,
    check_positive,
    check_range,
    check_same_batch,
    check_tensor,
    checks_enabled,
    compute_dtype,
    shape_str,
)
from .cam import cams_to_mask, multiscale_cams, multiscale_cams_detailed
from .crf import DenseCRF, as_dense_crf

__all__ = [
    "multiscale_attention_fusion",
    "multiscale_attention_fusion_detailed",
    "FusionOutput",
    "MultiScaleAttentionFusion",
    "denoise",
    "reactivate",
    "smaf_target",
    "smaf_loss",
    "SMAFLoss",
    "smaf_pseudo_mask",
]

BgChannel = Literal["last", "first", "none"]
Activation = Literal["softmax", "relu", "none"]
Normalize = Literal["max", "minmax", "none"]
Reduce = Literal["sum", "mean", "max"]

SMAF_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
"""Released SMAF defaults (``gen_fused_cam.py`` line 340 and ``gen_pseudo_mask.py``)."""


def _expected_channels(num_classes: int, bg_channel: str) -> int:
    return num_classes if bg_channel == "none" else num_classes + 1


def _drop_background(p: Tensor, bg_channel: str) -> Tensor:
    if bg_channel == "last":
        return p[:, :-1]
    if bg_channel == "first":
        return p[:, 1:]
    return p


def _activate(z: Tensor, activation: str) -> Tensor:
    if activation == "softmax":
        return torch.softmax(z.to(compute_dtype(z)), dim=1)
    if activation == "relu":
        return F.relu(z)
    return z


def _per_pass_maps(
    model: Callable[[Tensor], Tensor],
    num_classes: int,
    bg_channel: str,
    activation: str,
    out_size: tuple[int, int],
    activate_before_resize: bool,
    keep: Tensor | None,
) -> Callable[[Tensor], Tensor]:
    """The callable handed to ``multiscale_cams``: model -> activation -> drop bg -> bilinear upsample.

    The upsampling to ``out_size`` happens here (bilinear, ``align_corners=False``, as released) so that
    ``multiscale_cams`` finds the maps already at the output size and only flips them back and fuses them;
    its own ``interpolation`` then applies to the input images alone. ``keep`` (optional) selects the
    foreground channels to carry on after the activation (the classes present somewhere in the batch).
    """
    expected = _expected_channels(num_classes, bg_channel)

    def fn(x: Tensor) -> Tensor:
        z = model(x)
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[0] != x.shape[0]:
            got = shape_str(z) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"model must return a {x.shape[0]}×K×h×w tensor of per-class maps for a batch of "
                             f"{x.shape[0]} images, got {got}")
        if z.shape[1] != expected:
            extra = "C + 1 (with a background channel)" if bg_channel != "none" else "C (no background)"
            raise ValueError(
                f"model returned {z.shape[1]} channels but labels have C={num_classes} classes and "
                f"bg_channel={bg_channel!r}, so the model must return K = {extra} = {expected} channels "
                f"(model output shape {shape_str(z)})")
        if activate_before_resize:
            p = _drop_background(_activate(z, activation), bg_channel)
            if keep is not None:
                p = p.index_select(1, keep)
            if p.shape[-2:] != out_size:
                p = F.interpolate(p, size=out_size, mode="bilinear", align_corners=False)
        else:
            if z.shape[-2:] != out_size:
                z = F.interpolate(z, size=out_size, mode="bilinear", align_corners=False)
            p = _drop_background(_activate(z, activation), bg_channel)
            if keep is not None:
                p = p.index_select(1, keep)
        return p

    return fn


def _normalize(x: Tensor, mode: str, eps: float) -> Tensor:
    """Per-image, per-class spatial normalisation (no ReLU: the released ``sum_cam / (max + 1e-5)``)."""
    if mode == "none":
        return x
    mx = x.amax(dim=(-2, -1), keepdim=True)
    if mode == "minmax":
        mn = x.amin(dim=(-2, -1), keepdim=True)
        return (x - mn) / (mx - mn + eps)
    return x / (mx + eps)


def multiscale_attention_fusion(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    scales: Sequence[float] = SMAF_SCALES,
    flip: bool = True,
    activation: Activation = "softmax",
    bg_channel: BgChannel = "last",
    reduce: Reduce = "sum",
    normalize: Normalize = "max",
    eps: float = 1e-5,
    out_size: tuple[int, int] | None = None,
    image_interpolation: Literal["bilinear", "bicubic"] = "bicubic",
    activate_before_resize: bool = True,
    no_grad: bool = True,
    eval_mode: bool = True,
    skip_absent: bool = True,
) -> Tensor:
    """Fused multi-scale, class-aware attention maps of any CAM network (SMAF teacher, ``gen_fused_cam.py``).

    For every scale s the batch is resized to ``round(s·H) × round(s·W)`` (with ``flip`` the flipped copy
    runs in the same call), the model's maps Z are activated (softmax over all K channels, background
    included), the background channel is dropped, the maps are upsampled bilinearly to the output size,
    flipped back and combined with ``reduce``; absent classes are zeroed with ``labels`` and each class map
    is divided by its spatial max + ``eps``:

    ``F_c = y_c · Σ_s Σ_φ φ⁻¹(Up(softmax(f(φ(I_s))))_c)``,  ``A_c = F_c / (max_x F_c(x) + eps)``.

    The scale/flip loop is [`wsss_blocks.cam.multiscale_cams`][wsss_blocks.cam.multiscale_cams] (batched: one model call
    per scale). [`multiscale_attention_fusion_detailed`][] also returns the per-scale maps.

    Paper: Yang et al., "A Self-Training Framework Based on Multi-Scale Attention Fusion for WSSS", 2023.

    Args:
        model: callable (e.g. an ``nn.Module``) mapping B'×3×h×w images to B'×K×h'×w' logits, with
            K = C + 1 when ``bg_channel`` is ``"last"``/``"first"`` and K = C for ``"none"``.
        images: normalised input batch.
        labels: multi-hot image labels (C classes, no background); absent classes give zero maps.
        scales: positive scale factors (released: 0.5, 1.0, 1.5, 2.0).
        flip: also run horizontal flips (released: True, 8 passes in all).
        activation: per-pass activation over the K channels: ``"softmax"`` (released EPS path), ``"relu"``
            or ``"none"`` (the released ``cls`` path uses raw maps).
        bg_channel: where the model keeps its background channel (dropped after the activation).
        reduce: fusion over scales and flips (released: ``"sum"``; ``"mean"`` gives the same maps after
            ``normalize="max"`` up to the eps).
        normalize: ``"max"`` (released, per image and class, no ReLU), ``"minmax"`` or ``"none"``.
        eps: added to the normaliser (released 1e-5).
        out_size: (H, W) of the fused maps; default the input size.
        image_interpolation: how the inputs are resized. Released: PIL bicubic on the uint8 image; here
            ``F.interpolate`` bicubic (``align_corners=False``, no antialiasing) on the normalised tensor,
            which differs slightly (see the SMAF docs page).
        activate_before_resize: released order is activation, then upsampling (True).
        no_grad: run the model without autograd (teacher; default).
        eval_mode: put an ``nn.Module`` model (every submodule) into eval mode for the call and restore each
            submodule's previous mode afterwards (released: ``model.eval()``).
        skip_absent: after the activation, upsample and fuse only the classes present somewhere in the
            batch and write zeros for the rest (the released code keeps only present classes too). The maps
            are identical either way; this saves most of the per-pixel work (VOC images hold 1.5 of 20
            classes on average). Set False to carry all C channels (e.g. under ``torch.compile``).

    Returns:
        The fused maps. No gradient with ``no_grad``.

    Shape:
        - images: B×3×H×W
        - labels: B×C
        - model output: B'×K×h'×w'
        - output: B×C×H×W (or ``out_size``), in [0, 1] with ``normalize="max"`` (max ≈ 1 for present
          classes, 0 for absent ones)

    Examples:
        >>> net = torch.nn.Conv2d(3, 21, 1)  # 20 classes + background last, like EPS/SMAF
        >>> labels = torch.zeros(2, 20); labels[0, 3] = 1; labels[1, [5, 7]] = 1
        >>> fused = multiscale_attention_fusion(net, torch.randn(2, 3, 32, 32), labels)
        >>> fused.shape, fused[0, 3].max() > 0.99, fused[0, 4].abs().max().item()
        (torch.Size([2, 20, 32, 32]), tensor(True), 0.0)
    """
    _check_fusion_options(scales, activation, bg_channel, reduce, normalize, image_interpolation, eps)
    return _fusion(model, images, labels, scales, flip, activation, bg_channel, reduce, normalize, eps, out_size,
                   image_interpolation, activate_before_resize, no_grad, eval_mode, skip_absent, None)


@dataclass
class FusionOutput:
    """Result of [`multiscale_attention_fusion_detailed`][].

    Attributes:
        fused: B×C×H×W fused maps, as [`multiscale_attention_fusion`][] returns them.
        per_scale: ``len(scales)`` B×C×H×W maps, one per scale (flip pair combined with ``reduce``, activated,
            masked, upsampled, **not** normalised), for inspection.
    """

    fused: Tensor
    per_scale: list[Tensor]


def multiscale_attention_fusion_detailed(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    scales: Sequence[float] = SMAF_SCALES,
    flip: bool = True,
    activation: Activation = "softmax",
    bg_channel: BgChannel = "last",
    reduce: Reduce = "sum",
    normalize: Normalize = "max",
    eps: float = 1e-5,
    out_size: tuple[int, int] | None = None,
    image_interpolation: Literal["bilinear", "bicubic"] = "bicubic",
    activate_before_resize: bool = True,
    no_grad: bool = True,
    eval_mode: bool = True,
    skip_absent: bool = True,
) -> FusionOutput:
    """[`multiscale_attention_fusion`][] plus the per-scale maps; the arguments are the same.

    Shape:
        - images: B×3×H×W; labels: B×C
        - output: [`FusionOutput`][] (``fused`` B×C×H×W, ``per_scale`` ``len(scales)`` B×C×H×W maps)

    Examples:
        >>> net = torch.nn.Conv2d(3, 3, 1)
        >>> out = multiscale_attention_fusion_detailed(net, torch.randn(1, 3, 8, 8), torch.ones(1, 2), scales=(1.0,))
        >>> out.fused.shape, len(out.per_scale)
        (torch.Size([1, 2, 8, 8]), 1)
    """
    _check_fusion_options(scales, activation, bg_channel, reduce, normalize, image_interpolation, eps)
    per_scale: list[Tensor] = []
    fused = _fusion(model, images, labels, scales, flip, activation, bg_channel, reduce, normalize, eps, out_size,
                    image_interpolation, activate_before_resize, no_grad, eval_mode, skip_absent, per_scale)
    return FusionOutput(fused=fused, per_scale=per_scale)


def _check_fusion_options(scales: Sequence[float], activation: str, bg_channel: str, reduce: str, normalize: str,
                          image_interpolation: str, eps: float) -> None:
    check_choice(activation, "activation", ("softmax", "relu", "none"))
    check_choice(bg_channel, "bg_channel", ("last", "first", "none"))
    check_choice(reduce, "reduce", ("sum", "mean", "max"))
    check_choice(normalize, "normalize", ("max", "minmax", "none"))
    check_choice(image_interpolation, "image_interpolation", ("bilinear", "bicubic"))
    if len(scales) == 0:
        raise ValueError("scales must contain at least one scale, got an empty sequence")
    for s in scales:
        if not float(s) > 0:
            raise ValueError(f"scales must all be > 0, got {tuple(scales)}")
    check_positive(eps, "eps", strict=False)


def _fusion(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, scales: Sequence[float], flip: bool,
            activation: str, bg_channel: str, reduce: Literal["sum", "mean", "max"], normalize: str, eps: float,
            out_size: tuple[int, int] | None, image_interpolation: Literal["bilinear", "bicubic"],
            activate_before_resize: bool, no_grad: bool,
            eval_mode: bool, skip_absent: bool, per_scale: list[Tensor] | None) -> Tensor:
    """The fusion with its options checked; appends the per-scale maps to ``per_scale`` when given."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model).__name__}")
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    lf = check_labels(labels, "labels", batch=images.shape[0])
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {shape_str(images)}")
    check_finite(images, "images")
    H, W = images.shape[-2:]
    osize = (H, W) if out_size is None else (int(out_size[0]), int(out_size[1]))
    if osize[0] < 1 or osize[1] < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")

    C = lf.shape[1]
    keep: Tensor | None = None
    if skip_absent:
        # Absent classes end up zero anyway: carry only the classes present somewhere in the batch (at least
        # one channel, so the model's output is still validated), then scatter back. Bit-identical maps.
        present_any = lf.bool().any(0)
        keep = torch.nonzero(present_any).flatten() if bool(present_any.any()) else torch.zeros(1).long()
        keep = keep.to(images.device)
        if keep.numel() == C:
            keep = None
    fn = _per_pass_maps(model, C, bg_channel, activation, osize, activate_before_resize, keep)
    restore: list[tuple[nn.Module, bool]] = []
    if eval_mode and isinstance(model, nn.Module):
        restore = [(m, m.training) for m in model.modules()]
        model.eval()
    raw: list[Tensor] = []
    sc = tuple(float(s) for s in scales)
    try:
        if per_scale is None:
            fused = multiscale_cams(fn, images, sc, flip=flip, out_size=osize, interpolation=image_interpolation,
                                    reduce=reduce, no_grad=no_grad)
        else:
            out = multiscale_cams_detailed(fn, images, sc, flip=flip, out_size=osize,
                                           interpolation=image_interpolation, reduce=reduce, no_grad=no_grad)
            fused, raw = out.fused, out.per_scale
    finally:
        for m, was_training in restore:
            m.training = was_training
    present = lf.to(device=fused.device, dtype=fused.dtype)[:, :, None, None]
    if keep is not None:
        present = present.index_select(1, keep)
    # Masking after the (linear or max) fusion equals the released per-pass masking with {0, 1} labels.
    fused = _normalize(fused * present, normalize, eps)
    if keep is not None:
        fused = _scatter_classes(fused, keep, C)
    if per_scale is not None:
        for r in raw:
            r = r * present
            per_scale.append(_scatter_classes(r, keep, C) if keep is not None else r)
    return fused


def _scatter_classes(x: Tensor, keep: Tensor, num_classes: int) -> Tensor:
    full = x.new_zeros((x.shape[0], num_classes, *x.shape[2:]))
    return full.index_copy_(1, keep, x)


class MultiScaleAttentionFusion(nn.Module):
    """SMAF teacher: fused multi-scale, class-aware attention maps (module form of [`multiscale_attention_fusion`][]).

    The module stores the fusion settings; the CAM network is passed at call time, so a student can be
    its own teacher without registering its parameters twice. Defaults are the released VOC setting:
    scales (0.5, 1.0, 1.5, 2.0) with flips (8 passes), softmax over 21 channels with background last,
    sum fusion and per-class max normalisation.

    Paper: Yang et al., "A Self-Training Framework Based on Multi-Scale Attention Fusion for WSSS", 2023.

    The constructor arguments (``scales``, ``flip``, ``activation``, ``bg_channel``, ``reduce``, ``normalize``,
    ``eps``, ``image_interpolation``, ``activate_before_resize``, ``no_grad``, ``eval_mode``, ``skip_absent``)
    and the call arguments (``model``, ``images``, ``labels``, ``out_size``) are those of
    [`multiscale_attention_fusion`][]; [`detailed`][] also returns the per-scale maps.

    Shape:
        - images: B×3×H×W
        - labels: B×C
        - output: B×C×H×W (``out_size`` if given)

    Examples:
        >>> fusion = MultiScaleAttentionFusion()
        >>> net = torch.nn.Conv2d(3, 21, 1)
        >>> labels = torch.zeros(1, 20); labels[0, 0] = 1
        >>> fusion(net, torch.randn(1, 3, 16, 16), labels).shape
        torch.Size([1, 20, 16, 16])
    """

    def __init__(
        self,
        scales: Sequence[float] = SMAF_SCALES,
        flip: bool = True,
        activation: Activation = "softmax",
        bg_channel: BgChannel = "last",
        reduce: Reduce = "sum",
        normalize: Normalize = "max",
        eps: float = 1e-5,
        image_interpolation: Literal["bilinear", "bicubic"] = "bicubic",
        activate_before_resize: bool = True,
        no_grad: bool = True,
        eval_mode: bool = True,
        skip_absent: bool = True,
    ) -> None:
        super().__init__()
        _check_fusion_options(scales, activation, bg_channel, reduce, normalize, image_interpolation, eps)
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.activation: Activation = activation
        self.bg_channel: BgChannel = bg_channel
        self.reduce: Reduce = reduce
        self.normalize: Normalize = normalize
        self.eps = eps
        self.image_interpolation: Literal["bilinear", "bicubic"] = image_interpolation
        self.activate_before_resize = activate_before_resize
        self.no_grad = no_grad
        self.eval_mode = eval_mode
        self.skip_absent = skip_absent

    @property
    def num_passes(self) -> int:
        """Forward passes per image (released: 8)."""
        return len(self.scales) * (2 if self.flip else 1)

    @override
    def forward(self, model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor,
                out_size: tuple[int, int] | None = None) -> Tensor:
        return _fusion(model, images, labels, self.scales, self.flip, self.activation, self.bg_channel, self.reduce,
                       self.normalize, self.eps, out_size, self.image_interpolation, self.activate_before_resize,
                       self.no_grad, self.eval_mode, self.skip_absent, None)

    def detailed(self, model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor,
                 out_size: tuple[int, int] | None = None) -> FusionOutput:
        """Fused and per-scale maps; see [`multiscale_attention_fusion_detailed`][]."""
        per_scale: list[Tensor] = []
        fused = _fusion(model, images, labels, self.scales, self.flip, self.activation, self.bg_channel,
                        self.reduce, self.normalize, self.eps, out_size, self.image_interpolation,
                        self.activate_before_resize, self.no_grad, self.eval_mode, self.skip_absent, per_scale)
        return FusionOutput(fused=fused, per_scale=per_scale)

    @override
    def extra_repr(self) -> str:
        return (f"scales={self.scales}, flip={self.flip}, activation={self.activation!r}, "
                f"bg_channel={self.bg_channel!r}, reduce={self.reduce!r}, normalize={self.normalize!r}")


def denoise(maps: Tensor, labels: Tensor, bg_score: float = 0.2) -> Tensor:
    """Class-aware denoising: zero absent classes and add a constant background score (SMAF).

    The released target (``adaptation_modelv2.py`` ``step``) discards the network's background and uses
    a constant 0.2 instead. Here the background goes to channel 0 (the library's ``scores`` convention).

    Args:
        maps: fused foreground maps, normally from [`multiscale_attention_fusion`][].
        labels: multi-hot image labels.
        bg_score: the constant background score (released 0.2).

    Shape:
        - maps: B×C×H×W
        - labels: B×C
        - output: B×(C+1)×H×W, channel 0 = ``bg_score``, channel c+1 = ``labels[:, c] · maps[:, c]``

    Examples:
        >>> denoise(torch.tensor([[[[0.5]], [[0.9]]]]), torch.tensor([[1.0, 0.0]])).flatten().tolist()
        [0.20000000298023224, 0.5, 0.0]
    """
    check_tensor(maps, "maps", 4, layout="B×C×H×W", floating=True)
    lf = check_labels(labels, "labels", batch=maps.shape[0], num_classes=maps.shape[1])
    check_finite(maps, "maps")
    bg = maps.new_full((maps.shape[0], 1, *maps.shape[-2:]), float(bg_score))
    return torch.cat([bg, maps * lf.to(device=maps.device, dtype=maps.dtype)[:, :, None, None]], dim=1)


def reactivate(scores: Tensor, eps: float = 0.0) -> Tensor:
    """Reactivation: divide every pixel's scores by their maximum over channels, so the winner is exactly 1.

    Released as ``rectified / rectified.max(dim=1)`` with no epsilon: after [`denoise`][] the maximum is
    at least the background score (0.2), so it is never zero. With ``eps=0`` a pixel whose scores are all
    ≤ 0 raises a ``ValueError`` instead of producing NaN/Inf.

    Shape:
        - scores: B×K×H×W (any channel layout)
        - output: same shape; per pixel ``max_k output = 1`` (exactly, for ``eps=0``)

    Examples:
        >>> reactivate(torch.tensor([[[[0.2]], [[0.5]], [[0.1]]]])).flatten().tolist()
        [0.4000000059604645, 1.0, 0.20000000298023224]
    """
    check_tensor(scores, "scores", 4, layout="B×K×H×W", floating=True)
    check_finite(scores, "scores")
    check_positive(eps, "eps", strict=False)
    mx = scores.amax(dim=1, keepdim=True)
    if eps == 0 and scores.numel() > 0 and checks_enabled() and not bool((mx > 0).all()):
        raise ValueError(f"scores must have a positive maximum over channels at every pixel for eps=0, got a "
                         f"minimum per-pixel maximum of {float(mx.min()):.4g}; add a background score "
                         f"(denoise) or pass eps > 0")
    return scores / (mx + eps)


def smaf_target(
    maps: Tensor,
    labels: Tensor,
    bg_score: float = 0.2,
    size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
    align_corners: bool = True,
) -> Tensor:
    """The SMAF self-training target: (resize →) [`denoise`][] → [`reactivate`][], detached.

    Released (``adaptation_modelv2.py`` ``step``): the fused maps, already aligned with the training crop
    (resized with bilinear ``align_corners=True``, flipped, cropped with zero padding — padding becomes a
    one-hot background target), are downsampled by ``scale_factor=0.25`` (bilinear, ``align_corners=True``;
    a 448 crop gives 112×112), then masked, given the 0.2 background and divided by the per-pixel max.
    Resizing happens before the reactivation, which is non-linear.

    Args:
        maps: fused foreground maps aligned with the student's input crop.
        labels: multi-hot image labels.
        bg_score: constant background score (released 0.2).
        size: optional output (H, W).
        scale_factor: optional scale factor instead of ``size`` (released 0.25).
        align_corners: bilinear resize mode (released True).

    Shape:
        - maps: B×C×H×W
        - labels: B×C
        - output: B×(C+1)×H'×W', channel 0 = background; per pixel the max is 1. Pixels where every
          foreground value is below ``bg_score`` get background 1 and ``A_c / bg_score`` elsewhere.

    Examples:
        >>> t = smaf_target(torch.full((1, 2, 8, 8), 0.1), torch.ones(1, 2), scale_factor=0.25)
        >>> t.shape, t[0, :, 0, 0].tolist()
        (torch.Size([1, 3, 2, 2]), [1.0, 0.5, 0.5])
    """
    check_tensor(maps, "maps", 4, layout="B×C×H×W", floating=True)
    check_finite(maps, "maps")
    if size is not None and scale_factor is not None:
        raise ValueError(f"give size or scale_factor, not both (got size={size}, scale_factor={scale_factor})")
    with torch.no_grad():
        m = maps.detach()
        if size is not None:
            if (int(size[0]), int(size[1])) != tuple(m.shape[-2:]):
                m = F.interpolate(m, size=(int(size[0]), int(size[1])), mode="bilinear",
                                  align_corners=align_corners)
        elif scale_factor is not None:
            check_positive(float(scale_factor), "scale_factor")
            m = F.interpolate(m, scale_factor=float(scale_factor), mode="bilinear", align_corners=align_corners)
        return reactivate(denoise(m, labels, bg_score))


def smaf_loss(
    student_logits: Tensor,
    target: Tensor,
    weight: float = 100.0,
    bg_channel: Literal["last", "first"] = "last",
    align_corners: bool = True,
) -> Tensor:
    """SMAF self-training loss: ``weight · MSE(softmax(Up(student_logits)), target)``.

    Released (``adaptation_modelv2.py`` ``step``): the student's CAM logits (K = C + 1 channels, output
    stride 8) are upsampled to the target's size (bilinear, ``align_corners=True``; 56×56 → 112×112 for a
    448 crop), the softmax over K is taken and ``100 · MSELoss()`` (mean over all elements) is applied.
    The target is detached; gradients flow only into ``student_logits``.

    Args:
        student_logits: the student's raw per-class maps with a background channel.
        target: from [`smaf_target`][], background in channel 0.
        weight: loss weight (released 100).
        bg_channel: where the student keeps background (released ``"last"``); the target is reordered to
            match, the softmax is order-independent.
        align_corners: bilinear upsampling mode of the logits (released True).

    Shape:
        - student_logits: B×(C+1)×h×w
        - target: B×(C+1)×H×W
        - output: scalar

    Examples:
        >>> target = smaf_target(torch.rand(2, 20, 16, 16), torch.ones(2, 20))
        >>> logits = torch.randn(2, 21, 8, 8, requires_grad=True)
        >>> loss = smaf_loss(logits, target)
        >>> loss.backward(); loss.ndim, logits.grad is not None
        (0, True)
    """
    check_choice(bg_channel, "bg_channel", ("last", "first"))
    check_number(weight, "weight", 0.0)
    return _smaf_loss(student_logits, target, weight, bg_channel, align_corners)


def _smaf_loss(student_logits: Tensor, target: Tensor, weight: float, bg_channel: str, align_corners: bool
               ) -> Tensor:
    """[`smaf_loss`][] with checked options."""
    check_tensor(student_logits, "student_logits", 4, layout="B×(C+1)×h×w", floating=True)
    check_tensor(target, "target", 4, layout="B×(C+1)×H×W", floating=True)
    check_same_batch(student_logits, "student_logits", target, "target")
    if student_logits.shape[1] != target.shape[1]:
        raise ValueError(f"student_logits has {student_logits.shape[1]} channels but target has "
                         f"{target.shape[1]} (shapes {shape_str(student_logits)} and {shape_str(target)}); "
                         f"both need C + 1 channels including background")
    check_finite(student_logits, "student_logits")
    check_range(target.detach(), "target", 0.0, 1.0, hint="the target of smaf_target is in [0, 1]")
    if student_logits.shape[0] == 0:  # an empty batch: zero loss (a mean over nothing would be NaN)
        return student_logits.sum() * 0.0
    t = target.detach()
    if bg_channel == "last":
        t = t.roll(-1, dims=1)  # channel 0 (background) -> last, classes -> 0..C-1
    z = student_logits
    if z.shape[-2:] != t.shape[-2:]:
        z = F.interpolate(z, size=tuple(t.shape[-2:]), mode="bilinear", align_corners=align_corners)
    p = torch.softmax(z.to(compute_dtype(z)), dim=1)
    return weight * F.mse_loss(p, t.to(p.dtype))


class SMAFLoss(nn.Module):
    """Module form of [`smaf_loss`][] (released: weight 100, background last, ``align_corners=True``).

    Shape:
        - student_logits: B×(C+1)×h×w
        - target: B×(C+1)×H×W (background first)
        - output: scalar

    Examples:
        >>> crit = SMAFLoss()
        >>> target = smaf_target(torch.rand(1, 2, 8, 8), torch.ones(1, 2))
        >>> crit(torch.randn(1, 3, 4, 4), target).ndim
        0
    """

    def __init__(self, weight: float = 100.0, bg_channel: Literal["last", "first"] = "last",
                 align_corners: bool = True) -> None:
        super().__init__()
        check_choice(bg_channel, "bg_channel", ("last", "first"))
        self.weight = check_number(weight, "weight", 0.0)
        self.bg_channel: Literal["last", "first"] = bg_channel
        self.align_corners = align_corners

    @override
    def forward(self, student_logits: Tensor, target: Tensor) -> Tensor:
        return _smaf_loss(student_logits, target, self.weight, self.bg_channel, self.align_corners)


def _hard_label_probs(masks: Tensor, num_labels: int, gt_prob: float = 0.7) -> Tensor:
    """Probabilities whose ``-log`` is pydensecrf's ``unary_from_labels(zero_unsure=False)``.

    The label gets ``gt_prob``, every other label ``(1 - gt_prob) / (num_labels - 1)``. B×H×W -> B×num_labels×H×W.
    """
    onehot = F.one_hot(masks.long(), num_labels).permute(0, 3, 1, 2).bool()
    other = (1.0 - gt_prob) / (num_labels - 1)
    return torch.where(onehot, torch.tensor(gt_prob), torch.tensor(other)).to(device=masks.device)


def smaf_pseudo_mask(
    maps: Tensor,
    labels: Tensor,
    bg_score: float = 0.2,
    image01: Tensor | None = None,
    crf: DenseCRF | str | Mapping[str, Any] | Callable[[Tensor, Tensor], Tensor] | None = None,
    gt_prob: float = 0.7,
    *,
    image_uint8: Tensor | None = None,
) -> Tensor:
    """SMAF pseudo masks: constant background score, optionally refined by the released dense CRF.

    Released (``gen_pseudo_mask.py``): ``argmax([0.2, A_0, …, A_{C-1}])`` over the fused, max-normalised
    maps of the present classes (ties go to background), then a DenseCRF whose unary comes from these hard
    labels (pydensecrf ``unary_from_labels``, gt_prob 0.7, zero_unsure False, all C + 1 labels), Gaussian term
    sxy 3 / compat 3, bilateral term sxy 50 / srgb 5 / compat 10 on the original RGB, 10 mean-field iterations,
    and the argmax of Q (``crf="smaf"``: [`wsss_blocks.crf.DenseCRF.smaf`][wsss_blocks.crf.dense_crf.DenseCRF.smaf] +
    ``from_mask``).

    Args:
        maps: fused foreground maps ([`multiscale_attention_fusion`][]), normally in [0, 1].
        labels: multi-hot image labels; absent classes never win.
        bg_score: background score (released 0.2).
        image01: the RGB image for the CRF, float in [0, 1] (or give ``image_uint8``); needed with ``crf``.
        crf: ``None`` (no CRF); a [`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF] (or a preset name
            such as ``"smaf"``, the release, or a config mapping, see
            [`wsss_blocks.crf.as_dense_crf`][wsss_blocks.crf.dense_crf.as_dense_crf]) refining the hard labels with its
            ``from_mask``; or any callable ``crf(image01, probs) -> probs`` receiving the hard-label probabilities
            (label ``gt_prob``, the other C labels ``(1 - gt_prob) / C`` each).
        gt_prob: confidence given to the hard labels in the CRF unary (released 0.7).
        image_uint8: the image as loaded instead of ``image01``: B×H×W×3 uint8.

    Shape:
        - maps: B×C×H×W
        - labels: B×C
        - image01: B×3×H×W; image_uint8: B×H×W×3
        - output: B×H×W int64, 0 = background, c + 1 = class c

    Examples:
        >>> maps = torch.tensor([[[[0.9, 0.1]], [[0.5, 0.3]]]])
        >>> smaf_pseudo_mask(maps, torch.tensor([[1.0, 1.0]])).tolist()
        [[[1, 2]]]
    """
    check_tensor(maps, "maps", 4, layout="B×C×H×W", floating=True)
    check_labels(labels, "labels", batch=maps.shape[0], num_classes=maps.shape[1])
    check_finite(maps, "maps")
    hard = cams_to_mask(maps, labels, bg_score=bg_score)
    if crf is None:
        return hard
    B, _, H, W = maps.shape
    if image01 is None and image_uint8 is None:
        raise ValueError("an image is required when crf is set: pass image01 (B×3×H×W float in [0, 1]) or "
                         "image_uint8 (B×H×W×3 uint8)")
    if image01 is not None and image_uint8 is not None:
        raise ValueError("give the image either as image01 or as image_uint8, not both")
    if image01 is not None:
        check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
        if tuple(image01.shape) != (B, 3, H, W):
            raise ValueError(f"image01 must have shape {(B, 3, H, W)} to match maps, got {shape_str(image01)}")
    elif image_uint8 is not None:
        check_tensor(image_uint8, "image_uint8", 4, layout="B×H×W×3")
        if tuple(image_uint8.shape) != (B, H, W, 3):
            raise ValueError(f"image_uint8 must have shape {(B, H, W, 3)} to match maps, got "
                             f"{shape_str(image_uint8)}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    K = maps.shape[1] + 1
    if isinstance(crf, (str, Mapping)):
        crf = as_dense_crf(crf)
    if hasattr(crf, "from_mask"):
        q = crf.from_mask(image01, hard, gt_prob=gt_prob, num_classes=K, image_uint8=image_uint8)
    elif callable(crf):
        image = image01 if image01 is not None else image_uint8
        assert image is not None
        q = crf(image, _hard_label_probs(hard, K, gt_prob))
    else:
        raise TypeError(f"crf must be None, a DenseCRF, a preset name or a callable crf(image01, probs), got "
                        f"{type(crf).__name__}")
    if not isinstance(q, Tensor) or tuple(q.shape) != (B, K, H, W):
        got = shape_str(q) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"crf must return probabilities of shape {(B, K, H, W)}, got {got}")
    return q.argmax(dim=1).long().to(hard.device)
