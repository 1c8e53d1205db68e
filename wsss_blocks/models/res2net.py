"""Res2Net v1b (26w×4s) with mmseg-style dilation: the backbone of PMM's released PSPNet.

Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021 (arXiv 1904.01169); the v1b
variant of ``gasvn/Res2Net`` (``res2net_v1b.py``: deep 3×3 stem, average-pool shortcut), as PMM's segmentation
code builds it (``Eli-YiLi/WSSS_MMSeg`` ``mmseg/models/backbones/res2net.py``, commit ``2cbb54e``; configs
``configs/pspnet_wsss/pspnet_res2net_*.py``: layers 3, 4, 23, 3, strides 1, 2, 1, 1, dilations 1, 1, 2, 4,
trainable BatchNorm, init ``res2net101_v1b_26w_4s-0812c246.pth``).

Module names equal gasvn's v1b and timm's ``res2net101d`` (``conv1.0`` … ``conv1.6``, ``layer*.*.convs.*``,
``downsample.1``/``.2``), so both checkpoints load without a key map.

How the library's network relates to timm (``timm.create_model``):

* ``res2net101_26w_4s`` is Res2Net **v1**: a single 7×7 stem conv and a strided 1×1 shortcut conv. Its
  weights do not fit the v1b layout (different stem).
* ``res2net101d`` has the v1b layout (deep stem 32-32-64, average-pool shortcut), and its state dict loads
  here; but timm's ``output_stride=8`` dilates differently from the release: the first block of a dilated
  stage keeps the previous dilation and its shortcut uses a 2×2 stride-1 "same" average pool, whereas the
  release dilates every block of layer3/layer4 by 2/4 and its stride-1 shortcut pool is the identity.

`Res2Net` reproduces the release exactly (tested against a transcription of it) and equals timm's
``res2net101d`` at output stride 32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch

from .registry import register_backbone

__all__ = ["Bottle2neck", "Res2Net", "res2net101_v1b"]


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: the 3×3 stage is split into ``scale`` groups that feed each other.

    ``width = floor(planes · base_width / 64)``; the 1×1 conv gives ``width · scale`` channels split into
    ``scale`` groups; group ``i < scale - 1`` goes through its own 3×3 conv (stride, dilation) after adding
    the previous group's output (not in the first block of a stage, ``stage_first``); the last group passes
    unchanged (or through a 3×3 average pool with the block's stride in the first block of a stage).

    Args:
        inplanes: input channels.
        planes: bottleneck planes (output ``4 · planes``).
        stride: stride of the 3×3 convs.
        downsample: shortcut module, or ``None`` for the identity.
        base_width: 26 for 26w.
        scale: 4 for 4s.
        stage_first: first block of a stage (``stype='stage'``).
        dilation: dilation of the 3×3 convs.

    Shape:
        - x: ``(B, inplanes, H, W)``
        - output: ``(B, 4·planes, H/stride, W/stride)``

    Examples:
        >>> blk = Bottle2neck(64, 16, stage_first=True, downsample=nn.Conv2d(64, 64, 1))
        >>> blk(torch.rand(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 26, scale: int = 4, stage_first: bool = False, dilation: int = 1) -> None:
        super().__init__()
        width = math.floor(planes * (base_width / 64.0))
        if width < 1:
            raise ValueError(f"planes · base_width / 64 must be >= 1 (each of the {scale} branches needs a channel), "
                             f"got planes={planes}, base_width={base_width}")
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.nums = 1 if scale == 1 else scale - 1
        self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if stage_first else None
        self.convs = nn.ModuleList([nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=dilation,
                                              dilation=dilation, bias=False) for _ in range(self.nums)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(self.nums)])
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stage_first = stage_first
        self.scale = scale
        self.width = width

    @override
    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, "x", self.conv1.in_channels)
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        outs = []
        sp = spx[0]
        for i in range(self.nums):
            sp = spx[i] if i == 0 or self.stage_first else sp + spx[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        if self.scale != 1:
            outs.append(self.pool(spx[self.nums]) if self.pool is not None else spx[self.nums])
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + residual)


class Res2Net(nn.Module):
    """Res2Net backbone (v1b by default) with per-stage strides and dilations, as in PMM's mmseg fork.

    Every block of a stage uses that stage's dilation; the shortcut of a block that changes shape is
    ``AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)`` → 1×1 conv → BN (``avg_down``,
    v1b; the pool is the identity for stride 1) or a strided 1×1 conv → BN (v1). The stem is
    ``3×3/2 (32) → 3×3 (32) → 3×3 (64)`` with BN+ReLU between (``deep_stem``, v1b) or one 7×7/2 conv (v1),
    then BN, ReLU and a 3×3/2 max-pool. BatchNorm layers are ordinary trainable ``nn.BatchNorm2d``
    (convert them with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP, as the release uses
    SyncBN). Follows the backbone protocol: ``forward`` returns the maps of ``out_indices``.

    Args:
        layers: blocks per stage ((3, 4, 23, 3) = Res2Net-101).
        base_width: 26.
        scale: 4.
        strides: stride of each stage's first block ((1, 2, 1, 1) as released; (1, 2, 2, 2) = ImageNet).
        dilations: dilation of each stage ((1, 1, 2, 4) as released).
        out_indices: stages to return, 0-based ((0, 1, 2, 3)).
        deep_stem: v1b 3×3 stem (True) or v1 7×7 stem.
        avg_down: v1b average-pool shortcut (True) or v1 strided 1×1 conv.
        stem_width: width of the first stem convs (32).

    Shape:
        - images: ``(B, 3, H, W)``
        - output: list of ``(B, C_i, H/s_i, W/s_i)``; released setting: channels 256, 512, 1024, 2048 at
          strides 4, 8, 8, 8

    Examples:
        >>> net = Res2Net.tiny()
        >>> [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 32, 32))]
        [(256, 8, 8), (512, 4, 4), (1024, 4, 4), (2048, 4, 4)]
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 23, 3), base_width: int = 26, scale: int = 4,
                 strides: Sequence[int] = (1, 2, 1, 1), dilations: Sequence[int] = (1, 1, 2, 4),
                 out_indices: Sequence[int] = (0, 1, 2, 3), deep_stem: bool = True, avg_down: bool = True,
                 stem_width: int = 32) -> None:
        super().__init__()
        layers, strides, dilations = tuple(layers), tuple(strides), tuple(dilations)
        if not (len(layers) == len(strides) == len(dilations) == 4):
            raise ValueError(f"layers, strides and dilations must hold 4 values, got {layers}, {strides}, {dilations}")
        if any(int(s) < 1 for s in strides) or any(int(d) < 1 for d in dilations) or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers, strides and dilations must be positive, got {layers}, {strides}, {dilations}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {out_indices}")
        if scale < 1 or base_width < 1:
            raise ValueError(f"scale and base_width must be >= 1, got {scale} and {base_width}")
        self.base_width, self.scale, self.avg_down = int(base_width), int(scale), bool(avg_down)
        if deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(3, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True), nn.Conv2d(stem_width, 64, 3, 1, 1, bias=False))
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            self.add_module(f"layer{i + 1}", self._make_layer(planes, int(layers[i]), int(strides[i]),
                                                              int(dilations[i])))
        self.out_indices = out_indices
        all_strides, s = [], 4
        for st in strides:
            s *= int(st)
            all_strides.append(s)
        self.out_channels: tuple[int, ...] = tuple((256, 512, 1024, 2048)[i] for i in out_indices)
        self.strides: tuple[int, ...] = tuple(all_strides[i] for i in out_indices)
        self.dilations = tuple(int(d) for d in dilations)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottle2neck.expansion:
            out = planes * Bottle2neck.expansion
            if self.avg_down:
                downsample = nn.Sequential(
                    nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
                    nn.Conv2d(self.inplanes, out, kernel_size=1, stride=1, bias=False), nn.BatchNorm2d(out))
            else:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                                           nn.BatchNorm2d(out))
        blocks_ = [Bottle2neck(self.inplanes, planes, stride, downsample, self.base_width, self.scale,
                               stage_first=True, dilation=dilation)]
        self.inplanes = planes * Bottle2neck.expansion
        blocks_ += [Bottle2neck(self.inplanes, planes, 1, None, self.base_width, self.scale, dilation=dilation)
                    for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    @classmethod
    def tiny(cls, **kwargs: Any) -> Res2Net:
        """One block per stage and ``base_width`` 4 (same stage channels), for CPU tests."""
        kwargs.setdefault("layers", (1, 1, 1, 1))
        kwargs.setdefault("base_width", 4)
        kwargs.setdefault("stem_width", 8)
        return cls(**kwargs)

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        check_batch(images, "images", 3)
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs


def res2net101_v1b(**kwargs: Any) -> Res2Net:
    """Res2Net-101 v1b 26w×4s at output stride 8 (strides 1, 2, 1, 1; dilations 1, 1, 2, 4), as PMM releases it.

    Keyword arguments override `Res2Net`'s. Load ``res2net101_v1b_26w_4s-0812c246.pth`` (gasvn) or
    timm's ``res2net101d`` weights with
    [`wsss_blocks.models.load_pretrained`][wsss_blocks.models.backbones.load_pretrained]
    (``ignore_unexpected=("fc.",)``).

    Examples:
        >>> net = res2net101_v1b(layers=(1, 1, 1, 1), base_width=4)
        >>> net.strides, net.out_channels
        ((4, 8, 8, 8), (256, 512, 1024, 2048))
    """
    return Res2Net(**kwargs)


_RES2NET_OS = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)), 32: ((1, 2, 2, 2), (1, 1, 1, 1))}


def _registry_build(tiny: bool) -> Any:
    def build(output_stride: int | None = None, **kwargs: Any) -> Res2Net:
        if output_stride is not None:
            if output_stride not in _RES2NET_OS:
                raise ValueError(f"Res2Net output_stride must be 8, 16 or 32, got {output_stride}")
            strides, dilations = _RES2NET_OS[output_stride]
            kwargs.setdefault("strides", strides)
            kwargs.setdefault("dilations", dilations)
        return Res2Net.tiny(**kwargs) if tiny else Res2Net(**kwargs)

    return build


# ``build_backbone("res2net101_v1b")``: output stride 8 as PMM releases it (``output_stride`` 16/32 move the dilation
# into strides); the ImageNet classifier ``fc.*`` of the released checkpoint is ignored.
register_backbone("res2net101_v1b", _registry_build(False), ignore_unexpected=("fc.",), aliases=("res2net101",))
register_backbone("res2net_tiny", _registry_build(True), ignore_unexpected=("fc.",))
