"""PSPNet as PMM releases it (mmsegmentation 0.8 layout) and mmseg's sliding-window inference.

Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (arXiv 1612.01105). PMM's segmentation stage
(``Eli-YiLi/WSSS_MMSeg`` commit ``2cbb54e``, ``configs/_base_/models/pspnet_r50_wsss.py`` and
``configs/pspnet_wsss/pspnet_res2net_*.py``) trains an mmseg ``EncoderDecoder`` with

* a Res2Net-101 v1b backbone at output stride 8 ([`wsss_blocks.models.res2net.Res2Net`][]), trainable
  BatchNorm (SyncBN under DDP);
* a `PSPHead` on the last stage: pooling pyramid (1, 2, 3, 6) of 512-channel 1×1 ConvModules,
  3×3 ConvModule bottleneck to 512, Dropout2d 0.1, 1×1 classifier;
* an auxiliary `FCNHead` on the third stage (one 3×3 ConvModule to 256, Dropout2d 0.1, classifier),
  weighted 0.4 in the loss;
* sliding-window test inference, crop 512 stride 480 (`slide_inference`).

Module names follow mmseg (``backbone``, ``decode_head.psp_modules.{i}.1.conv``, ``decode_head.bottleneck``,
``decode_head.conv_seg``, ``auxiliary_head.convs.0``, ...) so mmseg checkpoints of this model load as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, check_int, check_pair, check_tensor, shape_str

__all__ = ["ConvModule", "PSPHead", "FCNHead", "PSPNet", "slide_inference"]


class ConvModule(nn.Module):
    """mmcv ``ConvModule``: bias-free conv → BatchNorm → ReLU, Kaiming-normal (fan-out) conv init.

    Attribute names ``conv``/``bn``/``activate`` are mmcv's, so mmseg checkpoints map one to one.

    Examples:
        >>> ConvModule(8, 4, 3, padding=1)(torch.rand(1, 8, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    @override
    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, "x", self.conv.in_channels)
        return self.activate(self.bn(self.conv(x)))


def _classifier(channels: int, num_classes: int, dropout: float) -> tuple[nn.Module | None, nn.Conv2d]:
    conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
    nn.init.normal_(conv_seg.weight, 0.0, 0.01)  # mmseg BaseDecodeHead.init_weights
    nn.init.zeros_(cast(Tensor, conv_seg.bias))
    return (nn.Dropout2d(dropout) if dropout > 0 else None), conv_seg


class PSPHead(nn.Module):
    """PSPNet's pyramid pooling head (mmseg 0.8 ``PSPHead``).

    ``x`` and its adaptive average pools at ``pool_scales`` (each through a 1×1 ConvModule to ``channels``,
    upsampled back bilinearly, ``align_corners=False``) are concatenated, a 3×3 ConvModule reduces them to
    ``channels``, Dropout2d and a 1×1 conv give the class logits at the input's resolution.

    Args:
        in_channels: channels of the input map (2048).
        num_classes: classes including background (21).
        channels: width of the pyramid branches and the bottleneck (512).
        pool_scales: (1, 2, 3, 6).
        dropout: Dropout2d rate before the classifier (0.1).
        align_corners: of the pyramid upsampling (False).

    Shape:
        - x: ``(B, in_channels, h, w)``
        - output: ``(B, num_classes, h, w)``

    Examples:
        >>> PSPHead(16, 3, channels=8)(torch.rand(2, 16, 12, 12)).shape
        torch.Size([2, 3, 12, 12])
    """

    def __init__(self, in_channels: int = 2048, num_classes: int = 21, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, align_corners: bool = False) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.align_corners = bool(align_corners)
        self.psp_modules = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1))
                                          for s in self.pool_scales])
        self.bottleneck = ConvModule(in_channels + len(self.pool_scales) * channels, channels, 3, padding=1)
        self.dropout, self.conv_seg = _classifier(channels, num_classes, dropout)

    @override
    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, "x", self.in_channels)
        outs = [x] + [F.interpolate(m(x), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)
                      for m in self.psp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv_seg(out)


class FCNHead(nn.Module):
    """mmseg 0.8 ``FCNHead`` (the auxiliary head of PMM's PSPNet: ``num_convs=1``, ``concat_input=False``).

    Args:
        in_channels: channels of the input map (1024, the third stage).
        num_classes: classes including background.
        channels: width of the convs (256).
        num_convs: number of 3×3 ConvModules (1).
        dropout: Dropout2d rate before the classifier (0.1).

    Shape:
        - x: ``(B, in_channels, h, w)``
        - output: ``(B, num_classes, h, w)``

    Examples:
        >>> FCNHead(16, 3, channels=8)(torch.rand(1, 16, 6, 6)).shape
        torch.Size([1, 3, 6, 6])
    """

    def __init__(self, in_channels: int = 1024, num_classes: int = 21, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_channels = int(in_channels)
        self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(num_convs)])
        self.dropout, self.conv_seg = _classifier(channels, num_classes, dropout)

    @override
    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, "x", self.in_channels)
        out = self.convs(x)
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv_seg(out)


def _build_backbone(backbone: str | nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(backbone, nn.Module):
        module = backbone
    elif backbone in ("res2net101_v1b", "res2net101"):
        from .res2net import Res2Net

        module = Res2Net(**kwargs)
    elif backbone == "res2net_tiny":
        from .res2net import Res2Net

        module = Res2Net.tiny(**kwargs)
    elif backbone == "scalenet101":
        from .scalenet import scalenet101

        kwargs.setdefault("dilations", (1, 1, 2, 4))
        module = scalenet101(**kwargs)
    elif isinstance(backbone, str):
        from .backbones import build_backbone

        kwargs.setdefault("output_stride", 8)
        module = build_backbone(backbone, **kwargs)
    else:
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    for attr in ("out_channels", "strides"):
        if not hasattr(module, attr):
            raise TypeError(f"backbone {type(module).__name__} lacks '{attr}' (the backbone protocol)")
    return module


class PSPNet(nn.Module):
    """PMM's segmentation network: backbone + `PSPHead` (+ auxiliary `FCNHead`), mmseg layout.

    Defaults are the released VOC model (``pspnet_res2net_20k_voc12aug*.py``): Res2Net-101 v1b at output
    stride 8, PSP head on the last map (2048 → 512, pool scales 1/2/3/6, dropout 0.1), FCN auxiliary head on
    the third map (1024 → 256, one conv, dropout 0.1) with loss weight `aux_weight` = 0.4, trainable
    BatchNorm. The released recipe around it (batch 16, crop 512, PhotoMetricDistortion, SGD lr 0.005,
    momentum 0.9, weight decay 5e-4, poly 0.9 to 1e-4, 20k iterations, PUF loss on both heads, slide
    inference 512/480) belongs to the training loop.

    Args:
        num_classes: classes including background (VOC 21).
        backbone: ``"res2net101_v1b"`` (released), ``"scalenet101"`` (the release's other backbone),
            ``"res2net_tiny"`` (tests), any [`wsss_blocks.models.backbones.build_backbone`][] name
            (``"timm:res2net101_26w_4s"``, ``"resnet101"``, ... built at output stride 8), or a module
            following the backbone protocol with at least two maps.
        pretrained: local checkpoint for the **backbone** (e.g. ``res2net101_v1b_26w_4s-0812c246.pth``);
            its ImageNet ``fc`` is ignored. Nothing downloads. Use `load_pretrained` for a whole model.
        channels: PSP head width (512).
        aux_channels: auxiliary head width (256); ``None`` builds no auxiliary head.
        pool_scales: (1, 2, 3, 6).
        dropout: of both heads (0.1).
        aux_weight: weight of the auxiliary loss (0.4), used by the training loop.
        backbone_kwargs: arguments for the backbone (e.g. ``layers=(1, 1, 1, 1)``).

    Shape:
        - images: ``(B, 3, H, W)``
        - output: ``(B, num_classes, h, w)`` logits at the backbone's output stride (not upsampled);
          `forward_with_aux` also returns the auxiliary logits

    Examples:
        >>> net = PSPNet(21, backbone="res2net_tiny", channels=16, aux_channels=8).eval()
        >>> net(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 21, 8, 8])
    """

    def __init__(self, num_classes: int = 21, backbone: str | nn.Module = "res2net101_v1b",
                 pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *, channels: int = 512,
                 aux_channels: int | None = 256, pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 aux_weight: float = 0.4, backbone_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", minimum=1)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        from .backbones import _building

        with _building("PSPNet", backbone, **dict(backbone_kwargs or {})):
            self.backbone = _build_backbone(backbone, dict(backbone_kwargs or {}))
        chans = tuple(int(c) for c in cast(Any, self.backbone).out_channels)
        if len(chans) < (2 if aux_channels is not None else 1):
            raise ValueError(f"the backbone must return at least two maps for the auxiliary head, got {chans}")
        self.decode_head = PSPHead(chans[-1], num_classes, channels, pool_scales, dropout)
        self.auxiliary_head = (FCNHead(chans[-2], num_classes, aux_channels, 1, dropout)
                               if aux_channels is not None else None)
        self.num_classes = num_classes
        self.aux_weight = float(aux_weight)
        if pretrained is not None:
            from .backbones import load_pretrained

            load_pretrained(self.backbone, pretrained, ignore_unexpected=("fc.",))

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, Any], strict: bool = True) -> Any:
        """Load a whole model (mmseg ``state_dict`` layout) or a backbone-only checkpoint (heads kept)."""
        from .backbones import load_pretrained, read_state_dict

        sd = read_state_dict(source)
        if any(k.startswith(("backbone.", "decode_head.")) for k in sd):
            return load_pretrained(self, sd, strict=strict, allow_missing=("auxiliary_head.",))
        return load_pretrained(self.backbone, sd, strict=strict, ignore_unexpected=("fc.",))

    def forward_with_aux(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Decode-head and auxiliary-head logits (``None`` without an auxiliary head), not upsampled."""
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        feats = self.backbone(images)
        aux = self.auxiliary_head(feats[-2]) if self.auxiliary_head is not None else None
        return self.decode_head(feats[-1]), aux

    @override
    def forward(self, images: Tensor) -> Tensor:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        return self.decode_head(self.backbone(images)[-1])

    def encode_decode(self, images: Tensor) -> Tensor:
        """Logits upsampled to the input size (bilinear, ``align_corners=False``), mmseg ``encode_decode``."""
        return F.interpolate(self.forward(images), size=images.shape[2:], mode="bilinear", align_corners=False)


def _window_starts(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    n = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


@torch.no_grad()
def slide_inference(model: Callable[[Tensor], Tensor], images: Tensor, crop_size: int | Sequence[int] = 512,
                    stride: int | Sequence[int] = 480, num_classes: int | None = None, *,
                    batch_size: int | None = None) -> Tensor:
    """Mmseg's sliding-window inference: average the logits of overlapping crops (``EncoderDecoder.slide_inference``).

    Windows of ``crop_size`` start every ``stride`` pixels; the last window of a row/column is shifted back to
    end at the image border, and an image smaller than the crop is one window of its own size (no padding).
    Each crop's logits are resized bilinearly (``align_corners=False``) to the crop size, summed into place
    and divided by the number of windows covering each pixel. PMM tests with crop 512 and stride 480
    (``WSSS_MMSeg`` ``configs/_base_/models/pspnet_r50_wsss.py``); softmax, flip and multi-scale averaging
    come after this (mmseg ``inference``/``aug_test``).

    Args:
        model: callable mapping ``(N, 3, h, w)`` crops to ``(N, K, h', w')`` logits (any resolution).
        images: ``(B, 3, H, W)`` batch.
        crop_size: window size (int or ``(h, w)``), 512.
        stride: window step (int or ``(h, w)``), 480.
        num_classes: expected K; inferred from the first output when ``None``.
        batch_size: crops per model call (default: all crops of the batch in one call).

    Returns:
        ``(B, K, H, W)`` averaged logits (no softmax).

    Shape:
        - images: ``(B, 3, H, W)``
        - output: ``(B, K, H, W)``

    Examples:
        >>> net = torch.nn.Conv2d(3, 2, 1)  # per-pixel model: the windows reproduce the full-image output
        >>> x = torch.rand(1, 3, 40, 50)
        >>> torch.allclose(slide_inference(net, x, 16, 12), net(x), atol=1e-6)
        True
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    ch, cw = check_pair(crop_size, "crop_size")
    sh, sw = check_pair(stride, "stride")
    if batch_size is not None:
        check_int(batch_size, "batch_size", minimum=1)
    B, _, H, W = images.shape
    boxes = [(y1, y2, x1, x2) for (y1, y2) in _window_starts(H, ch, sh) for (x1, x2) in _window_starts(W, cw, sw)]
    crops = [images[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in boxes]
    step = len(crops) if batch_size is None else max(1, batch_size // B)
    logits: Tensor | None = None
    count = images.new_zeros(1, 1, H, W)
    for start in range(0, len(crops), step):
        chunk = crops[start:start + step]
        out = model(torch.cat(chunk, dim=0))
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != B * len(chunk):
            got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model must return a {B * len(chunk)}×K×h×w tensor for {B * len(chunk)} crops, got {got}")
        if logits is None:
            k = int(out.shape[1])
            if num_classes is not None and k != num_classes:
                raise ValueError(f"model returned {k} channels, expected num_classes={num_classes}")
            logits = out.new_zeros(B, k, H, W)
        for n, (y1, y2, x1, x2) in enumerate(boxes[start:start + step]):
            o = out[n * B:(n + 1) * B]
            if o.shape[2:] != (y2 - y1, x2 - x1):
                o = F.interpolate(o, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            logits[:, :, y1:y2, x1:x2] += o
            count[:, :, y1:y2, x1:x2] += 1
    assert logits is not None
    return logits / count
