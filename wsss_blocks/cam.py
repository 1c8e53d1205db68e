"""Class activation maps: from features, from ViT token grids, normalisation, multi-scale + flip, CAM -> mask.

All functions follow the library's tensor conventions (see the *Conventions* docs page):
``cams`` are B×C×h×w foreground maps (no background channel), ``labels`` are B×C multi-hot image labels,
``masks`` are B×H×W int64 with 0 = background and c+1 = foreground class c.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
    check_positive,
    check_tensor,
    shape_str,
)

__all__ = [
    "cam_from_features",
    "tokens_to_map",
    "normalize_cams",
    "cams_to_mask",
    "multiscale_cams",
    "multiscale_cams_detailed",
    "MultiScaleOutput",
    "MultiScaleCAM",
    "CAMNormalize",
]

Reduce = Literal["sum", "mean", "max"]
NormMode = Literal["max", "minmax", "seam_minmax"]
_NORM_MODES = ("max", "minmax", "seam_minmax")


def cam_from_features(features: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """All class activation maps of a linear classifier in one differentiable pass.

    For a classifier ``logits = W · pool(features) + b`` the CAM of class c is ``W_c · features`` (+ ``b_c``),
    computed for every class at once with one einsum, so gradients flow into both the features and the
    classifier weights (Zhou et al., CVPR 2016).

    Args:
        features: backbone feature maps.
        weight: classifier weights, C×D or C×D×1×1 (a 1×1 convolution's weight).
        bias: optional class biases of length C.

    Shape:
        - features: B×D×h×w
        - weight: C×D or C×D×1×1
        - output: B×C×h×w (raw, not ReLU'd or normalised; see [`normalize_cams`][])

    Examples:
        >>> feats = torch.randn(2, 8, 4, 4)
        >>> head = torch.nn.Conv2d(8, 20, 1, bias=False)
        >>> cam_from_features(feats, head.weight).shape
        torch.Size([2, 20, 4, 4])
    """
    check_tensor(features, "features", 4, layout="B×D×h×w", floating=True)
    check_tensor(weight, "weight", (2, 4), layout="C×D or C×D×1×1", floating=True)
    check_finite(features, "features")
    check_finite(weight, "weight")
    if weight.ndim == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"weight must be C×D×1×1 when 4-D, got {shape_str(weight)}")
        weight = weight.flatten(1)
    if weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but features have "
                         f"{features.shape[1]} (features {shape_str(features)}, weight {shape_str(weight)})")
    if bias is not None:
        check_tensor(bias, "bias", 1, layout="C", floating=True)
        check_finite(bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries, expected {weight.shape[0]}")
    return _cam_from_features(features, weight, bias)


def _cam_from_features(features: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """[`cam_from_features`][] without checks (``weight`` C×D, shapes already matched)."""
    cams = torch.einsum("bdhw,cd->bchw", features, weight.to(features.dtype))
    if bias is not None:
        cams = cams + bias.to(cams.dtype).view(1, -1, 1, 1)
    return cams


def tokens_to_map(
    tokens: Tensor,
    image_hw: tuple[int, int],
    patch_size: int | tuple[int, int],
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Turn a ViT token sequence into a B×D×h×w feature grid.

    The grid size is computed from the image size and the patch size (h = H // p_h, w = W // p_w),
    never hard-coded, and ``num_prefix_tokens`` leading tokens (class, distillation and register
    tokens) are dropped.

    Args:
        tokens: transformer output tokens.
        image_hw: (H, W) of the image fed to the ViT.
        patch_size: patch size p or (p_h, p_w).
        num_prefix_tokens: number of non-patch tokens at the start of the sequence (1 for a class
            token, 2 for DeiT's class + distillation tokens, 1 + R with R register tokens, 0 for none).

    Shape:
        - tokens: B×N×D with N = num_prefix_tokens + h·w
        - output: B×D×h×w

    Examples:
        >>> tokens = torch.randn(2, 1 + 4 * 6, 16)
        >>> tokens_to_map(tokens, (64, 96), 16).shape
        torch.Size([2, 16, 4, 6])
    """
    check_tensor(tokens, "tokens", 3, layout="B×N×D", floating=True)
    check_finite(tokens, "tokens")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    check_int(num_prefix_tokens, "num_prefix_tokens", minimum=0)
    h, w = int(image_hw[0]) // ph, int(image_hw[1]) // pw
    expected = num_prefix_tokens + h * w
    if tokens.shape[1] != expected:
        raise ValueError(
            f"tokens has {tokens.shape[1]} tokens, expected {expected} = {num_prefix_tokens} prefix + "
            f"{h}×{w} patches for image {tuple(image_hw)} and patch size {(ph, pw)}"
        )
    grid = tokens[:, num_prefix_tokens:, :]
    return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def normalize_cams(cams: Tensor, mode: NormMode = "max", eps: float = 1e-5) -> Tensor:
    """ReLU and per-map normalisation of CAMs into [0, 1].

    ``"max"`` (the WSSS default, IRN ``make_cam``): ``relu(cam) / (max(relu(cam)) + eps)`` per image
    and class. ``"minmax"`` (ToCo/AFA ``multi_scale_cam``): ``(relu(cam) - min) / (max - min + eps)``.
    ``"seam_minmax"`` (SEAM/PMM ``tool/visualization.py`` ``max_norm``, a min-max despite its name):
    ``relu(relu(cam) - min - eps) / (max - min + eps)``, min and max of ``relu(cam)``.
    An all-zero (or, for the min-max modes, constant) map becomes zero, also with ``eps=0``; an empty map
    (H·W = 0) is returned as it is. The reduction runs in float32 and the result keeps the input dtype.

    Shape:
        - cams: B×C×H×W (any leading shape …×H×W works)
        - output: same shape as ``cams``

    Examples:
        >>> cams = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]]]])
        >>> normalize_cams(cams, eps=0.0)
        tensor([[[[1.0000, 0.0000],
                  [0.5000, 0.0000]]]])
    """
    check_choice(mode, "mode", _NORM_MODES)
    check_number(eps, "eps", 0.0)
    return _normalize_cams(cams, mode, eps)


def _normalize_cams(cams: Tensor, mode: str, eps: float) -> Tensor:
    """[`normalize_cams`][] with checked options: checks ``cams`` and normalises."""
    check_tensor(cams, "cams", floating=True)
    if cams.ndim < 2:
        raise ValueError(f"cams must have at least 2 dims (…×H×W), got shape {shape_str(cams)}")
    check_finite(cams, "cams")
    if cams.numel() == 0:
        return cams.clone()
    x = F.relu(cams.float())
    flat = x.flatten(-2)
    mx = flat.amax(-1, keepdim=True).unsqueeze(-1)
    if mode == "seam_minmax":
        mn = flat.amin(-1, keepdim=True).unsqueeze(-1)
        return (F.relu(x - mn - eps) / _nonzero(mx - mn + eps)).to(cams.dtype)
    if mode == "minmax":
        mn = flat.amin(-1, keepdim=True).unsqueeze(-1)
        x = x - mn
        mx = mx - mn
    return (x / _nonzero(mx + eps)).to(cams.dtype)


def _nonzero(den: Tensor) -> Tensor:
    """``den`` with zeros replaced by 1: a map whose numerator is 0 everywhere stays 0 (no 0/0 with eps=0)."""
    return torch.where(den > 0, den, torch.ones_like(den))


def cams_to_mask(cams: Tensor, labels: Tensor | None = None, bg_score: float = 0.15) -> Tensor:
    """Seed masks from CAMs with a constant background score (IRN seed rule).

    A constant background plane ``bg_score`` is stacked under the class maps and the argmax is taken;
    classes absent from ``labels`` can never win; ties go to the background (argmax takes the first
    index), so a pixel is foreground class c iff ``cam_c > bg_score`` and c is its largest present map.

    Args:
        cams: foreground CAMs, normally normalised to [0, 1] with [`normalize_cams`][].
        labels: multi-hot image labels; ``None`` treats every class as present.
        bg_score: the constant background score (IRN ``cam_eval_thres`` 0.15).

    Shape:
        - cams: B×C×H×W
        - labels: B×C
        - output: B×H×W int64 with values in 0..C (0 = background, c+1 = class c)

    Examples:
        >>> cams = torch.tensor([[[[0.9, 0.1]], [[0.5, 0.2]]]])  # B=1, C=2, 1×2 pixels
        >>> cams_to_mask(cams, torch.tensor([[0.0, 1.0]]), bg_score=0.15)
        tensor([[[2, 2]]])
    """
    check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
    check_finite(cams, "cams")
    if labels is not None:
        lf = check_labels(labels, "labels", batch=cams.shape[0], num_classes=cams.shape[1])
        present = lf.to(cams.device).bool()[:, :, None, None]
        scores = cams.float().masked_fill(~present, float("-inf"))
    else:
        scores = cams.float()
    fg_val, fg_idx = scores.max(dim=1)
    return torch.where(fg_val > bg_score, fg_idx + 1, torch.zeros_like(fg_idx)).long()


def _reduce(stack: Tensor, how: str) -> Tensor:
    if how == "sum":
        return stack.sum(0)
    if how == "mean":
        return stack.mean(0)
    return stack.amax(0)


@dataclass
class MultiScaleOutput:
    """Result of [`multiscale_cams_detailed`][].

    Attributes:
        fused: B×K×out_H×out_W maps fused over scales (and flips), as [`multiscale_cams`][] returns them.
        per_scale: ``len(scales)`` B×K×out_H×out_W maps, one per scale, aligned to ``out_size``, the flip pair
            already combined (with ``flip_reduce``, or ``reduce`` when it is ``None``).
    """

    fused: Tensor
    per_scale: list[Tensor]


def multiscale_cams(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    out_size: tuple[int, int] | None = None,
    interpolation: Literal["bilinear", "bicubic"] = "bilinear",
    reduce: Reduce = "sum",
    flip_reduce: Reduce | None = None,
    no_grad: bool = True,
    antialias: bool = False,
    size_rounding: Literal["round", "floor"] = "round",
) -> Tensor:
    """Batched multi-scale + flip inference for any callable returning per-class maps.

    For each scale s the images are resized to ``round(s·H) × round(s·W)`` (``size_rounding="floor"``:
    ``int(s·H) × int(s·W)``, as AFA/ToCo/TSCD's ``multi_scale_cam``); with ``flip=True`` the
    horizontally flipped copy is run in the same batch (one call of ``fn`` per scale, batch 2B). The
    flipped output is flipped back, every output is resized to ``out_size`` (default: the input size)
    and the maps are fused. Defaults are IRN's ``make_cam``: scales (1.0, 0.5, 1.5, 2.0), flip,
    bilinear, summed. ToCo/AFA fuse the flip pair by max and the scales by sum:
    ``reduce="sum", flip_reduce="max"``. [`multiscale_cams_detailed`][] also returns the per-scale maps.

    ``fn`` may return raw maps (B×K×h×w); apply ReLU/normalisation/softmax inside ``fn`` if the
    method does that per scale (IRN applies ReLU per scale inside its CAM head).

    Args:
        fn: callable mapping B'×3×h'×w' images to B'×K×h''×w'' maps.
        images: input batch.
        scales: positive scale factors.
        flip: also run the horizontal flip.
        out_size: (H, W) of the fused maps; default the input's size.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (``align_corners=False``) for resizing both the
            inputs and the outputs.
        reduce: how to fuse across scales (and flips unless ``flip_reduce`` is given).
        flip_reduce: how to fuse each flip pair before the scale reduction.
        no_grad: run under ``torch.no_grad()`` (default); set False for a differentiable fusion.
        antialias: antialias the input downscaling (closer to PIL resizing; off as in the releases'
            tensor pipelines).
        size_rounding: ``"round"`` (IRN's ``pil_rescale``) or ``"floor"`` (AFA/ToCo/TSCD) of the scaled size.

    Shape:
        - images: B×3×H×W
        - output: B×K×out_H×out_W

    Examples:
        >>> net = torch.nn.Conv2d(3, 4, 3, padding=1)
        >>> multiscale_cams(net, torch.rand(2, 3, 32, 32), scales=(1.0, 0.5)).shape
        torch.Size([2, 4, 32, 32])
    """
    _check_multiscale_args(fn, images, scales, interpolation, reduce, flip_reduce, size_rounding)
    return _multiscale(fn, images, scales, flip, out_size, interpolation, reduce, flip_reduce, no_grad, antialias,
                       size_rounding, None)


def multiscale_cams_detailed(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
    out_size: tuple[int, int] | None = None,
    interpolation: Literal["bilinear", "bicubic"] = "bilinear",
    reduce: Reduce = "sum",
    flip_reduce: Reduce | None = None,
    no_grad: bool = True,
    antialias: bool = False,
    size_rounding: Literal["round", "floor"] = "round",
) -> MultiScaleOutput:
    """[`multiscale_cams`][] plus the aligned per-scale maps (flip pair combined), for inspection.

    Arguments as in [`multiscale_cams`][].

    Shape:
        - images: B×3×H×W
        - output: [`MultiScaleOutput`][] (``fused`` B×K×out_H×out_W, ``per_scale`` ``len(scales)`` such maps)

    Examples:
        >>> net = torch.nn.Conv2d(3, 4, 1)
        >>> out = multiscale_cams_detailed(net, torch.rand(1, 3, 16, 16), scales=(1.0, 0.5), flip=False)
        >>> len(out.per_scale), torch.allclose(out.fused, out.per_scale[0] + out.per_scale[1])
        (2, True)
    """
    _check_multiscale_args(fn, images, scales, interpolation, reduce, flip_reduce, size_rounding)
    per_scale: list[Tensor] = []
    fused = _multiscale(fn, images, scales, flip, out_size, interpolation, reduce, flip_reduce, no_grad, antialias,
                        size_rounding, per_scale)
    return MultiScaleOutput(fused=fused, per_scale=per_scale)


def _check_multiscale_args(fn: object, images: Tensor, scales: Sequence[float], interpolation: str, reduce: str,
                           flip_reduce: str | None, size_rounding: str) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_images(images)
    _check_multiscale_options(scales, interpolation, reduce, flip_reduce, size_rounding)


def _check_images(images: object) -> None:
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    assert isinstance(images, Tensor)
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {shape_str(images)}")
    check_finite(images, "images")


def _check_multiscale_options(scales: Sequence[float], interpolation: str, reduce: str, flip_reduce: str | None,
                              size_rounding: str) -> None:
    if len(scales) == 0:
        raise ValueError("scales must contain at least one scale, got an empty sequence")
    for s in scales:
        check_positive(float(s), "scales")
    check_choice(interpolation, "interpolation", ("bilinear", "bicubic"))
    check_choice(size_rounding, "size_rounding", ("round", "floor"))
    check_choice(reduce, "reduce", ("sum", "mean", "max"))
    if flip_reduce is not None:
        check_choice(flip_reduce, "flip_reduce", ("sum", "mean", "max"))


def _multiscale(fn: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float], flip: bool,
                out_size: tuple[int, int] | None, interpolation: str, reduce: str, flip_reduce: str | None,
                no_grad: bool, antialias: bool, size_rounding: str, per_scale: list[Tensor] | None) -> Tensor:
    """The unchecked multi-scale loop; appends each scale's aligned map to ``per_scale`` when given."""
    B, _, H, W = images.shape
    oh, ow = (H, W) if out_size is None else (int(out_size[0]), int(out_size[1]))

    ctx = torch.no_grad() if no_grad else torch.enable_grad()
    acc: Tensor | None = None  # running reduction: never stacks all passes
    count = 0

    def accumulate(acc: Tensor | None, x: Tensor) -> Tensor:
        if acc is None:
            return x
        return torch.maximum(acc, x) if reduce == "max" else acc + x

    with ctx:
        for s in scales:
            if size_rounding == "floor":
                size = (max(1, int(H * float(s))), max(1, int(W * float(s))))
            else:
                size = (max(1, round(H * float(s))), max(1, round(W * float(s))))
            x = images if size == (H, W) else F.interpolate(
                images, size=size, mode=interpolation, align_corners=False, antialias=antialias)
            if flip:
                x = torch.cat([x, x.flip(-1)], dim=0)
            out = fn(x)
            if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0]:
                got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"fn must return a {x.shape[0]}×K×h×w tensor for a batch of "
                                 f"{x.shape[0]} images, got {got}")
            if out.shape[-2:] != (oh, ow):
                out = F.interpolate(out, size=(oh, ow), mode=interpolation, align_corners=False)
            if flip:
                a, b = out[:B], out[B:].flip(-1)
                if flip_reduce is None:
                    acc = accumulate(accumulate(acc, a), b)
                    count += 2
                    if per_scale is not None:
                        per_scale.append(_reduce(torch.stack([a, b]), reduce))
                else:
                    pair = _reduce(torch.stack([a, b]), flip_reduce)
                    acc = accumulate(acc, pair)
                    count += 1
                    if per_scale is not None:
                        per_scale.append(pair)
            else:
                acc = accumulate(acc, out)
                count += 1
                if per_scale is not None:
                    per_scale.append(out)
        assert acc is not None
        return acc / count if reduce == "mean" else acc


class MultiScaleCAM(nn.Module):
    """Module form of [`multiscale_cams`][]: wraps a model and stores the inference options.

    Args:
        model: the callable run at every scale (an ``nn.Module`` is registered as a submodule).
        scales: see [`multiscale_cams`][].
        flip: see [`multiscale_cams`][].
        interpolation: see [`multiscale_cams`][].
        reduce: see [`multiscale_cams`][].
        flip_reduce: see [`multiscale_cams`][].
        no_grad: see [`multiscale_cams`][].
        antialias: see [`multiscale_cams`][].
        size_rounding: see [`multiscale_cams`][].

    Shape:
        - images: B×3×H×W
        - output: B×K×H×W (or ``out_size``)

    Examples:
        >>> msc = MultiScaleCAM(torch.nn.Conv2d(3, 4, 1), scales=(1.0, 0.5), flip=True)
        >>> msc(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
        flip: bool = True,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        reduce: Reduce = "sum",
        flip_reduce: Reduce | None = None,
        no_grad: bool = True,
        antialias: bool = False,
        size_rounding: Literal["round", "floor"] = "round",
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        _check_multiscale_options(scales, interpolation, reduce, flip_reduce, size_rounding)
        self.model = model
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.interpolation: Literal["bilinear", "bicubic"] = interpolation
        self.reduce: Reduce = reduce
        self.flip_reduce: Reduce | None = flip_reduce
        self.no_grad = no_grad
        self.antialias = antialias
        self.size_rounding: Literal["round", "floor"] = size_rounding

    @override
    def forward(self, images: Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
        _check_images(images)
        return _multiscale(self.model, images, self.scales, self.flip, out_size, self.interpolation, self.reduce,
                           self.flip_reduce, self.no_grad, self.antialias, self.size_rounding, None)

    def detailed(self, images: Tensor, out_size: tuple[int, int] | None = None) -> MultiScaleOutput:
        """Fused and per-scale maps; see [`multiscale_cams_detailed`][]."""
        _check_images(images)
        per_scale: list[Tensor] = []
        fused = _multiscale(self.model, images, self.scales, self.flip, out_size, self.interpolation, self.reduce,
                            self.flip_reduce, self.no_grad, self.antialias, self.size_rounding, per_scale)
        return MultiScaleOutput(fused=fused, per_scale=per_scale)


class CAMNormalize(nn.Module):
    """Module form of [`normalize_cams`][].

    Shape:
        - cams: B×C×H×W
        - output: same shape, values in [0, 1]

    Examples:
        >>> CAMNormalize()(torch.randn(1, 3, 4, 4)).amax().item() <= 1.0
        True
    """

    def __init__(self, mode: NormMode = "max", eps: float = 1e-5) -> None:
        super().__init__()
        check_choice(mode, "mode", _NORM_MODES)
        self.mode: NormMode = mode
        self.eps = check_number(eps, "eps", 0.0)

    @override
    def forward(self, cams: Tensor) -> Tensor:
        return _normalize_cams(cams, self.mode, self.eps)
