"""ScaleNet: scale-aggregation blocks with a data-driven channel allocation (PMM's stage-C CAM network).

Li, Kuang, Chen, Zhang, "Data-Driven Neuron Allocation for Scale Aggregation Networks", CVPR 2019
(arXiv 1904.09460); official code ``Eli-YiLi/ScaleNet`` (``pytorch/scalenet.py``, structures in
``structures/scalenet101.json``). PMM (``Eli-YiLi/PMM`` ``network/scalenet.py``, ``network/scalenet_SEAM.py``)
trains its multi-crop CAM network on ScaleNet-101 (stage C; CAM mIoU 57.81 against 53.93 for ResNet-38d
and 54.90 for Res2Net-101, the author's Table 1 quoted in ``Eli-YiLi/PMM`` issue #7), and its segmentation
fork offers it as a PSPNet backbone (``WSSS_MMSeg`` ``mmseg/models/backbones/scalenet.py``).

A scale-aggregation block (`SABlock`) replaces the bottleneck's 3×3 conv by four branches: the 1×1
output itself and its max-pooled versions at factors 2, 4 and 7, each through its own 3×3 conv with a
per-block channel count (the "structure", found by the paper's neuron allocation), upsampled back, batch
normalised and concatenated. The block strides by a max-pool at its input. The ScaleNet-101 structure is
`SCALENET101_STRUCTURE` (33 blocks × ``[c_1, c_2, c_4, c_7, side]``, ``side`` = the block's feature
size at a 224 input, which decides 3×3 or 1×1 per branch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch

from .registry import register_backbone

__all__ = ["SCALENET101_STRUCTURE", "SCALENET_TINY_STRUCTURE", "SABlock", "ScaleNet", "scalenet101"]

SCALENET101_STRUCTURE: tuple[tuple[int, int, int, int, int], ...] = (
    (61, 11, 7, 7, 56), (56, 23, 4, 3, 56), (59, 24, 3, 0, 56),
    (123, 41, 1, 6, 28), (126, 38, 1, 6, 28), (127, 41, 3, 0, 28), (127, 41, 3, 0, 28),
    (220, 86, 35, 0, 14), (186, 64, 55, 36, 14), (156, 25, 53, 107, 14), (191, 44, 52, 54, 14),
    (181, 53, 83, 24, 14), (221, 82, 34, 4, 14), (177, 62, 90, 12, 14), (130, 75, 102, 34, 14),
    (206, 71, 55, 9, 14), (203, 83, 53, 2, 14), (207, 73, 54, 7, 14), (245, 84, 12, 0, 14),
    (221, 103, 17, 0, 14), (221, 100, 20, 0, 14), (158, 99, 84, 0, 14), (220, 106, 15, 0, 14),
    (173, 92, 73, 3, 14), (135, 122, 84, 0, 14), (109, 71, 132, 29, 14), (147, 94, 93, 7, 14),
    (191, 108, 42, 0, 14), (127, 95, 113, 6, 14), (203, 117, 21, 0, 14),
    (282, 377, 23, 0, 7), (279, 388, 15, 0, 7), (84, 442, 155, 1, 7),
)
"""Channel allocation of ScaleNet-101 (``Eli-YiLi/ScaleNet`` ``structures/scalenet101.json``): per block the channels
of the branches at max-pool factors 1, 2, 4, 7 and the block's feature size at a 224 input."""

_SCALES = (None, 2, 4, 7)


class SABlock(nn.Module):
    """ScaleNet's scale-aggregation bottleneck (``scalenet.py`` ``SABlock``).

    Input max-pooled by ``stride``; shortcut = identity or 1×1 conv + BN; ``1×1 conv → BN → ReLU`` to
    ``planes``; four branches (max-pool factor 1, 2, 4, 7; a map smaller than the factor is pooled with
    ``max_pool2d(x, H, W)`` as released), each a conv with ``channels[i]`` outputs (3×3 with ``dilation``
    when ``side / 2**i > 1``, else 1×1; a branch with 0 channels is absent), upsampled to the block's size
    (nearest when the size divides, else bilinear), BN; concatenated, ReLU, ``1×1 conv → BN`` to
    ``4 · planes``, plus the shortcut, ReLU.

    Args:
        inplanes: input channels.
        planes: bottleneck width (output ``4 · planes``).
        channels: the four branch widths.
        side: the block's feature size at a 224 input (from the structure).
        stride: input max-pool stride.
        downsample: build the 1×1 conv + BN shortcut.
        dilation: dilation of the 3×3 branch convs.
        bias: conv biases (released: False).

    Shape:
        - x: ``(B, inplanes, H, W)``
        - output: ``(B, 4·planes, H/stride, W/stride)``

    Examples:
        >>> blk = SABlock(16, 4, (4, 2, 1, 1), side=14, downsample=True)
        >>> blk(torch.rand(1, 16, 14, 14)).shape
        torch.Size([1, 16, 14, 14])
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, channels: Sequence[int], side: int, stride: int = 1,
                 downsample: bool = False, dilation: int = 1, bias: bool = False) -> None:
        super().__init__()
        ch = tuple(int(c) for c in channels)
        if len(ch) != 4 or any(c < 0 for c in ch) or sum(ch) == 0:
            raise ValueError(f"channels must be 4 non-negative ints with a positive sum, got {tuple(channels)}")
        self.stride = int(stride)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * self.expansion, 1, bias=bias),
                                         nn.BatchNorm2d(planes * self.expansion)) if downsample else None)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        convs: list[nn.Module | None] = []
        bns: list[nn.Module | None] = []
        for i in range(4):
            if ch[i] == 0:
                convs.append(None)
                bns.append(None)
                continue
            big = side / 2 ** i > 1
            convs.append(nn.Conv2d(planes, ch[i], kernel_size=3 if big else 1, padding=dilation if big else 0,
                                   dilation=dilation if big else 1, bias=bias))
            bns.append(nn.BatchNorm2d(ch[i]))
        # None entries keep the released indices (conv2.0 ... conv2.3)
        self.conv2 = nn.ModuleList(convs)  # type: ignore[arg-type]
        self.bn2 = nn.ModuleList(bns)  # type: ignore[arg-type]
        self.conv3 = nn.Conv2d(sum(ch), planes * self.expansion, kernel_size=1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    @override
    def forward(self, x: Tensor) -> Tensor:
        check_batch(x, "x", self.conv1.in_channels)
        if self.stride > 1:
            x = F.max_pool2d(x, self.stride, self.stride)
        residual = self.downsample(x) if self.downsample is not None else x
        out1 = F.relu(self.bn1(self.conv1(x)))
        size = out1.shape[-2:]
        branches = []
        for i, scale in enumerate(_SCALES):
            conv, bn = self.conv2[i], self.bn2[i]
            if bn is None:
                continue
            o = out1
            if scale is not None:
                if o.shape[3] < scale or o.shape[2] < scale:
                    h_, w_ = int(o.shape[2]), int(o.shape[3])
                    # released: kernel H, stride W; where that H×H window does not fit (W < H, where the release
                    # crashes) the window is the whole map, H×W
                    o = F.max_pool2d(o, h_, w_) if w_ >= h_ else F.max_pool2d(o, (h_, w_), w_)
                else:
                    o = F.max_pool2d(o, scale, scale)
            if conv is not None:
                o = conv(o)
            if scale is not None:
                mode = "nearest" if size[0] % o.shape[2] == 0 and size[1] % o.shape[3] == 0 else "bilinear"
                o = F.interpolate(o, size=size, mode=mode, align_corners=False if mode == "bilinear" else None)
            branches.append(bn(o))
        out = self.bn3(self.conv3(F.relu(torch.cat(branches, 1))))
        return F.relu(out + residual)


def _load_structure(structure: str | os.PathLike | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(structure, (str, os.PathLike)):
        with open(structure) as f:
            structure = json.load(f)
    rows = [list(int(v) for v in row) for row in structure]  # type: ignore[union-attr]
    if any(len(r) != 5 for r in rows):
        raise ValueError("structure rows must be [c_1, c_2, c_4, c_7, side] (5 ints each)")
    return rows


class ScaleNet(nn.Module):
    """ScaleNet backbone with per-stage strides and dilations (backbone protocol).

    Stem ``7×7/2 conv → BN → ReLU → 3×3/2 max-pool``, then four stages of `SABlock` (planes 64, 128,
    256, 512); the ``structure`` gives each block's branch widths in order. The defaults are PMM's: strides
    (1, 2, 1, 1), so the output stride is 8; the CAM network uses dilations (1, 1, 1, 1)
    (``--dilations 1_1_1_1``), the segmentation backbone (1, 1, 2, 4). Initialisation as released:
    conv weights ``N(0, sqrt(2 / (k·k·out)))``, BN weight 1 and bias 0.

    Args:
        structure: per-block ``[c_1, c_2, c_4, c_7, side]`` rows, or a path to the released JSON.
        layers: blocks per stage ((3, 4, 23, 3) for ScaleNet-101); ``sum(layers)`` rows are needed.
        strides: stride of each stage's first block.
        dilations: dilation of each stage.
        out_indices: stages to return, 0-based.

    Shape:
        - images: ``(B, 3, H, W)``
        - output: list of ``(B, C_i, h_i, w_i)`` (channels 256, 512, 1024, 2048)

    Examples:
        >>> tiny = [[4, 2, 1, 1, 56], [8, 4, 2, 2, 28], [8, 4, 2, 2, 14], [8, 8, 0, 0, 7]]
        >>> net = ScaleNet(tiny, layers=(1, 1, 1, 1))
        >>> [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 64, 64))]
        [(256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]
    """

    def __init__(self, structure: str | os.PathLike | Sequence[Sequence[int]] = SCALENET101_STRUCTURE,
                 layers: Sequence[int] = (3, 4, 23, 3), strides: Sequence[int] = (1, 2, 1, 1),
                 dilations: Sequence[int] = (1, 1, 1, 1), out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        rows = _load_structure(structure)
        layers, strides, dilations = tuple(int(v) for v in layers), tuple(strides), tuple(dilations)
        if not (len(layers) == len(strides) == len(dilations) == 4):
            raise ValueError(f"layers, strides and dilations must hold 4 values, got {layers}, {strides}, {dilations}")
        if len(rows) != sum(layers):
            raise ValueError(f"structure has {len(rows)} rows but layers {layers} need {sum(layers)}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {out_indices}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.inplanes = 64
        it = iter(rows)
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for j in range(layers[i]):
                row = next(it)
                stride = int(strides[i]) if j == 0 else 1
                down = j == 0 and (stride != 1 or self.inplanes != planes * SABlock.expansion)
                blocks.append(SABlock(self.inplanes, planes, row[:4], row[4], stride, down, int(dilations[i])))
                self.inplanes = planes * SABlock.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_indices = out_indices
        s, all_strides = 4, []
        for st in strides:
            s *= int(st)
            all_strides.append(s)
        self.out_channels: tuple[int, ...] = tuple((256, 512, 1024, 2048)[i] for i in out_indices)
        self.strides: tuple[int, ...] = tuple(all_strides[i] for i in out_indices)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        check_batch(images, "images", 3)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(images))), 3, 2, 1)
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs


def scalenet101(dilations: Sequence[int] = (1, 1, 1, 1), **kwargs: Any) -> ScaleNet:
    """ScaleNet-101 with the released structure.

    PMM's CAM network uses dilations (1, 1, 1, 1), its segmentation backbone (1, 1, 2, 4). Weights
    (``scalenet101.pth``, ``Eli-YiLi/ScaleNet``) load with
    [`wsss_blocks.models.load_pretrained`][wsss_blocks.models.backbones.load_pretrained] without a key map.

    Examples:
        >>> net = scalenet101()
        >>> len(net.layer3), net.strides
        (23, (4, 8, 8, 8))
    """
    return ScaleNet(SCALENET101_STRUCTURE, (3, 4, 23, 3), dilations=dilations, **kwargs)


SCALENET_TINY_STRUCTURE: tuple[tuple[int, int, int, int, int], ...] = (
    (8, 4, 2, 2, 56), (16, 8, 4, 4, 28), (32, 16, 8, 8, 14), (64, 32, 16, 0, 7))
"""A 4-block ScaleNet (one block per stage) for CPU tests and the synthetic presets."""


def _registry_build(tiny: bool) -> Any:
    def build(output_stride: int | None = None, **kwargs: Any) -> ScaleNet:
        if output_stride not in (None, 8):
            raise ValueError(f"ScaleNet has output stride 8 (strides 1, 2, 1, 1), got output_stride={output_stride}")
        if tiny:
            kwargs.setdefault("layers", (1, 1, 1, 1))
            return ScaleNet(kwargs.pop("structure", SCALENET_TINY_STRUCTURE), **kwargs)
        return scalenet101(**kwargs)

    return build


# ``build_backbone("scalenet101")``: PMM's CAM network backbone (dilations 1, 1, 1, 1; pass dilations=(1, 1, 2, 4)
# for the segmentation backbone); the ImageNet classifier ``fc.*`` of the released checkpoint is ignored.
register_backbone("scalenet101", _registry_build(False), ignore_unexpected=("fc.",))
register_backbone("scalenet_tiny", _registry_build(True), ignore_unexpected=("fc.",))
