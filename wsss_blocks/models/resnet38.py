"""ResNet-38 ("resnet38d"), the wide ResNet of PSA, SEAM, L2G, EPS/SMAF and PMM, at output stride 8.

Wu, Shen & van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition", Pattern
Recognition 2019 (model A1), as adapted for WSSS by Ahn & Kwak, "Learning Pixel-level Semantic Affinity with
Image-level Supervision" (PSA, CVPR 2018, ``network/resnet38d.py``), and reused unchanged by L2G
(``models/resnet38_base.py``) and EPS/SMAF.

Layout (channels at ``width=1``; every block is pre-activation, BN -> ReLU -> conv):

| stage | blocks | stride | dilation |
|---|---|---|---|
| conv1a | 3×3 conv 3 -> 64 | 1 | 1 |
| b2 | 3 basic blocks 64 -> 128 | 2 | 1 |
| b3 | 3 basic blocks 128 -> 256 | 4 | 1 |
| b4 | 6 basic blocks 256 -> 512 | 8 | 1 |
| b5 | 3 basic blocks 512 -> 1024 (mid 512) | 8 | 2 (first conv 1) |
| b6 | bottleneck 1024 -> 2048, Dropout2d 0.3 | 8 | 4 |
| b7 | bottleneck 2048 -> 4096, Dropout2d 0.5 | 8 | 4 (SEAM/PMM: 2) |
| bn7 | BN + ReLU -> conv6 (4096) | 8 | |

The returned maps are ``conv3`` (BN-ReLU input of b4, 256 ch, stride 4), ``conv4`` (input of b5, 512 ch),
``conv5`` (input of b6, 1024 ch) and ``conv6`` (4096 ch), as in SEAM/PMM's ``forward_as_dict``.

A downsampling basic block's shortcut is a 1×1 conv on the **BN-ReLU'd** input (pre-activation shortcut);
an identity block adds the raw input. In the released training code conv1a is frozen and every BatchNorm
runs in eval mode with frozen affine parameters (``freeze_bn=True`` here); L2G additionally freezes b2,
b2_1, b2_2 (``frozen=("conv1a", "b2", "b2_1", "b2_2")``).

Module names equal the released ones, so the converted ImageNet checkpoint (``res38d.pth`` /
``resnet38_dict.pth`` / ``ilsvrc-cls_rna-a1_cls1000_ep-0001.pth``) loads directly, and the MXNet names of
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` are translated by [`resnet38_key_map`][].
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch  # noqa: F401  (namespace of the docstring examples)
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch

from .backbones import LoadReport, load_pretrained, set_bn_eval
from .registry import register_backbone, register_key_map

__all__ = ["ResNet38", "resnet38_key_map", "load_resnet38", "mxnet_resnet38_name", "seam_resnet38_key_map",
           "SEAM_LOAD_REASONS"]


class _Block(nn.Module):
    """Pre-activation basic block (two 3×3 convs); names follow PSA's ``ResBlock``."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int = 1, first_dilation: int | None = None,
                 dilation: int = 1):
        super().__init__()
        fd = dilation if first_dilation is None else first_dilation
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, padding=fd, dilation=fd, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        return shortcut + y, pre


class _Bottleneck(nn.Module):
    """Pre-activation bottleneck with Dropout2d (PSA's ``ResBlock_bot``): 1×1 -> 3×3 (dilated) -> 1×1."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(pre) + y, pre


class ResNet38(nn.Module):
    """Wide ResNet-38 ("resnet38d") feature extractor, output stride 8 (PSA/SEAM/L2G/EPS backbone).

    Args:
        width: channel multiplier (1.0 = the released 64...4096 channels; ``tiny`` uses 1/16).
        depths: number of blocks in b2, b3, b4, b5 (released: 3, 3, 6, 3). b6 and b7 are single blocks.
        b7_dilation: dilation of b7 (4 in PSA/L2G/EPS, 2 in SEAM/PMM).
        dropout: Dropout2d rates inside b6 and b7 (released 0.3, 0.5).
        frozen: top-level modules whose parameters get ``requires_grad=False`` (released: ``("conv1a",)``;
            L2G: ``("conv1a", "b2", "b2_1", "b2_2")``).
        freeze_bn: keep every BatchNorm in eval mode with frozen affine parameters, also after
            ``train()`` (the released behaviour).
        in_channels: image channels.

    Attributes:
        out_channels: channels of ``(conv3, conv4, conv5, conv6)``.
        strides: ``(4, 8, 8, 8)``.

    Shape:
        - images: B×3×H×W
        - output: list ``[conv3, conv4, conv5, conv6]`` of B×C_i×⌈H/s_i⌉×⌈W/s_i⌉

    Examples:
        >>> net = ResNet38.tiny()
        >>> [tuple(f.shape[1:]) for f in net(torch.randn(1, 3, 32, 32))]
        [(16, 8, 8), (32, 4, 4), (64, 4, 4), (256, 4, 4)]
    """

    def __init__(self, *, width: float = 1.0, depths: Sequence[int] = (3, 3, 6, 3), b7_dilation: int = 4,
                 dropout: Sequence[float] = (0.3, 0.5), frozen: Sequence[str] = ("conv1a",),
                 freeze_bn: bool = True, in_channels: int = 3):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        depths = tuple(int(d) for d in depths)
        if len(depths) != 4 or any(d < 1 for d in depths):
            raise ValueError(f"depths must hold 4 positive block counts (b2, b3, b4, b5), got {depths}")
        if len(dropout) != 2:
            raise ValueError(f"dropout must hold the two rates of b6 and b7, got {tuple(dropout)}")

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.width, self.depths = width, depths
        self.conv1a = nn.Conv2d(in_channels, c(64), 3, padding=1, bias=False)
        self._blocks: list[str] = []
        specs = [  # stage, cin, cmid, cout, stride, first_dilation, dilation
            (2, c(64), c(128), c(128), 2, None, 1),
            (3, c(128), c(256), c(256), 2, None, 1),
            (4, c(256), c(512), c(512), 2, None, 1),
            (5, c(512), c(512), c(1024), 1, 1, 2),
        ]
        for (stage, cin, cmid, cout, stride, fd, dil), depth in zip(specs, depths):
            for i in range(depth):
                name = f"b{stage}" if i == 0 else f"b{stage}_{i}"
                blk = (_Block(cin, cmid, cout, stride, fd, dil) if i == 0
                       else _Block(cout, cmid, cout, 1, None, dil))
                self.add_module(name, blk)
                self._blocks.append(name)
        self.b6 = _Bottleneck(c(1024), c(2048), 1, dilation=4, dropout=float(dropout[0]))
        self.b7 = _Bottleneck(c(2048), c(4096), 1, dilation=int(b7_dilation), dropout=float(dropout[1]))
        self._blocks += ["b6", "b7"]
        self.bn7 = nn.BatchNorm2d(c(4096))
        self.out_channels: tuple[int, ...] = (c(256), c(512), c(1024), c(4096))
        self.strides: tuple[int, ...] = (4, 8, 8, 8)
        self.freeze_bn = bool(freeze_bn)
        unknown = [f for f in frozen if not hasattr(self, f)]
        if unknown:
            raise ValueError(f"frozen names unknown modules {unknown}; top-level modules are "
                             f"{['conv1a', *self._blocks, 'bn7']}")
        self.frozen = tuple(frozen)
        for f in self.frozen:
            for p in getattr(self, f).parameters():
                p.requires_grad_(False)
        if self.freeze_bn:
            set_bn_eval(self)

    @classmethod
    def tiny(cls, **kwargs: Any) -> ResNet38:
        """1/16 width, one block per stage: same topology and names, ~0.2 M parameters, for CPU tests."""
        kwargs.setdefault("width", 1 / 16)
        kwargs.setdefault("depths", (1, 1, 1, 1))
        return cls(**kwargs)

    @override
    def train(self, mode: bool = True) -> ResNet38:
        super().train(mode)
        if self.freeze_bn:
            set_bn_eval(self)
        return self

    def forward_dict(self, images: Tensor) -> dict[str, Tensor]:
        """Return ``{"conv3", "conv4", "conv5", "conv6"}`` as in the released ``forward_as_dict``."""
        check_batch(images, "images", self.conv1a.in_channels)
        x = self.conv1a(images)
        out: dict[str, Tensor] = {}
        for name in self._blocks:
            x, pre = getattr(self, name)(x)
            if name == "b4":
                out["conv3"] = pre
            elif name == "b5":
                out["conv4"] = pre
            elif name == "b6":
                out["conv5"] = pre
        out["conv6"] = F.relu(self.bn7(x))
        return out

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        d = self.forward_dict(images)
        return [d["conv3"], d["conv4"], d["conv5"], d["conv6"]]


# ----------------------------------------------------------------------------------------------------------
# checkpoint names
# ----------------------------------------------------------------------------------------------------------
_MX_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var",
          "mean": "running_mean", "var": "running_var"}
_MX_RE = re.compile(r"(?:arg:|aux:)?(res|bn)(\d)([a-z])(\d*)_(branch\w+?)_"
                    r"(weight|gamma|beta|moving_mean|moving_var|mean|var)")


def mxnet_resnet38_name(key: str) -> str | None:
    """Translate one MXNet name of ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` to the PyTorch name.

    ``[arg:|aux:]res4b5_branch2b1_weight`` -> ``b4_5.conv_branch2b1.weight``;
    ``bn5a_branch2a_gamma`` -> ``b5.bn_branch2a.weight``; ``bn7_moving_var`` -> ``bn7.running_var``;
    ``conv1a_weight`` -> ``conv1a.weight``; the ImageNet classifier ``linear1000_*`` -> ``None`` (dropped).
    Names that are not MXNet-style are returned unchanged.

    Examples:
        >>> mxnet_resnet38_name("aux:bn6a_branch2b2_moving_mean")
        'b6.bn_branch2b2.running_mean'
    """
    k = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
    if k.startswith("linear1000"):
        return None
    if k.startswith("conv1a_"):
        return "conv1a.weight"
    m = re.fullmatch(r"bn7_(gamma|beta|moving_mean|moving_var|mean|var)", k)
    if m:
        return f"bn7.{_MX_BN[m.group(1)]}"
    m = _MX_RE.fullmatch(key)
    if m:
        kind, stage, letter, idx, branch, param = m.groups()
        block = f"b{stage}" if letter == "a" else f"b{stage}_{idx}"
        if kind == "res":
            return f"{block}.conv_{branch}.weight"
        return f"{block}.bn_{branch}.{_MX_BN[param]}"
    return key


def resnet38_key_map(key: str) -> str | None:
    """Key map for ResNet-38 checkpoints.

    MXNet names are translated (see [`mxnet_resnet38_name`][]), converted ``.pth`` names
    (``b4_5.conv_branch2b1.weight``) pass through unchanged.
    """
    return mxnet_resnet38_name(key)


register_key_map("resnet38", resnet38_key_map)
register_key_map("mxnet_resnet38", resnet38_key_map)


def seam_resnet38_key_map(key: str) -> str | None:
    """Key map of SEAM / PMM CAM checkpoints (``resnet38_SEAM.pth``).

    Into a network with ``backbone`` (ResNet-38), ``fc8`` and ``pcm`` (``f8_3``, ``f8_4``, ``f9``), such as
    PMM's ``SEAMNet``.

    The release (Eli-YiLi/PMM ``pipeline/train_cam.py:91-97``) loads the file with ``strict=False`` into
    ``network/resnet38_SEAM.py``'s ``Net``, whose ``fc8``, ``f8_3``, ``f8_4`` and ``f9`` have the same names
    and shapes as in the file, so all of them start from the checkpoint; this map keeps that. ImageNet
    ResNet-38 weights (MXNet or converted names) map to the backbone; their classifier is dropped.

    Examples:
        >>> seam_resnet38_key_map("f9.weight"), seam_resnet38_key_map("b4_5.conv_branch2a.weight")
        ('pcm.f9.weight', 'backbone.b4_5.conv_branch2a.weight')
        >>> seam_resnet38_key_map("fc8.weight"), seam_resnet38_key_map("arg:linear1000_bias") is None
        ('fc8.weight', True)
    """
    k = mxnet_resnet38_name(key)
    if k is None or k.startswith(("fc.", "head.")):
        return None
    if k.startswith("fc8."):
        return k
    if k.startswith(("f8_3.", "f8_4.", "f9.")):
        return "pcm." + k
    return "backbone." + k


register_key_map("seam_resnet38", seam_resnet38_key_map)

SEAM_LOAD_REASONS = {
    "arg:linear1000": "ImageNet classifier of the MXNet model, not part of the CAM network",
    "linear1000": "ImageNet classifier of the MXNet model, not part of the CAM network",
    "fc.": "ImageNet classifier, not part of the CAM network",
    "head.": "ImageNet classifier, not part of the CAM network",
    "fc8.": "the checkpoint has no SEAM classifier (an ImageNet model): fc8 keeps its initialisation",
    "pcm.": "the checkpoint has no PCM (an ImageNet model): f8_3/f8_4/f9 keep their initialisation",
    r".*num_batches_tracked": "BatchNorm step counter, unused (frozen BatchNorm)",
}
"""Reasons recorded in the load report of a SEAM/PMM network (``load_pretrained(..., reasons=...)``)."""


def _build(output_stride: int | None = None, *, tiny: bool = False, **kwargs: Any) -> ResNet38:
    if output_stride not in (None, 8):
        raise ValueError(f"ResNet-38 has output stride 8 only, got output_stride={output_stride}")
    return ResNet38.tiny(**kwargs) if tiny else ResNet38(**kwargs)


def _build_tiny(output_stride: int | None = None, **kwargs: Any) -> ResNet38:
    return _build(output_stride, tiny=True, **kwargs)


_RESNET38_IGNORE = ("linear1000", "fc8.", "fc.", "head.")
register_backbone("resnet38d", _build, key_map=resnet38_key_map, ignore_unexpected=_RESNET38_IGNORE,
                  native_freezing=True, aliases=("resnet38", "wide_resnet38"))
register_backbone("resnet38d_tiny", _build_tiny, key_map=resnet38_key_map, ignore_unexpected=_RESNET38_IGNORE,
                  native_freezing=True)


def load_resnet38(model: ResNet38, source: str | os.PathLike | Mapping[str, Any], *, strict: bool = True
                  ) -> LoadReport:
    """Load ImageNet ResNet-38 weights (converted ``.pth`` or MXNet names) into a [`ResNet38`][].

    Classifier keys (``linear1000``, ``fc8``) are ignored; everything else must match (``strict``).

    Examples:
        >>> net = ResNet38.tiny()
        >>> sd = {k: v.clone() for k, v in net.state_dict().items()}
        >>> load_resnet38(net, sd).missing
        []
    """
    return load_pretrained(model, source, resnet38_key_map, strict=strict,
                           ignore_unexpected=("fc8.", "fc.", "head."))

