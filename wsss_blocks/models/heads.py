"""Heads: the CAM classifier head, DeepLab-v2 ASPP, the SegFormer MLP decoder and a DeepLab-v3+ decoder.

* [`CAMHead`][] — bias-free 1×1 classifier over global-pooled features (Zhou et al., CVPR 2016), with
  the pooling of the method: GAP (PSA/L2G/EPS/PPL/PMM) or GMP (AFA/TSCD ``--pooling gmp``); CAMs come from
  [`wsss_blocks.cam.cam_from_features`][wsss_blocks.cam.cam_from_features] with the same weights.
* [`ASPPv2`][] — DeepLab-v2 atrous spatial pyramid pooling (Chen et al., TPAMI 2018): one 3×3 conv per
  rate (6, 12, 18, 24) straight to class scores, **summed** (deeplab-pytorch ``_ASPP``).
* [`SegFormerHead`][] — SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021) as in AFA/TSCD.
* [`DeepLabV3PlusHead`][] — ASPP with image pooling + low-level decoder (Chen et al., ECCV 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, check_tensor, shape_str
from wsss_blocks.cam import _cam_from_features

__all__ = ["global_pool", "CAMHead", "ASPPv2", "SegFormerHead", "DeepLabV3PlusHead"]

Pooling = Literal["gap", "gmp"]


def global_pool(features: Tensor, pooling: Pooling = "gap") -> Tensor:
    """Global average (``"gap"``) or max (``"gmp"``) pooling over the spatial dimensions.

    ``"gmp"`` is AFA/TSCD's ``--pooling gmp`` (``F.adaptive_max_pool2d(x, 1)``); ``"gap"`` is the CAM
    standard. With a bias-free linear classifier, ``gap`` logits equal the spatial mean of the CAMs.

    Shape:
        - features: B×D×h×w
        - output: B×D

    Examples:
        >>> x = torch.arange(8.0).view(1, 2, 2, 2)
        >>> global_pool(x, "gap"), global_pool(x, "gmp")
        (tensor([[1.5000, 5.5000]]), tensor([[3., 7.]]))
    """
    check_tensor(features, "features", 4, layout="B×D×h×w", floating=True)
    if pooling == "gap":
        return features.mean(dim=(2, 3))
    if pooling == "gmp":
        return features.amax(dim=(2, 3))
    raise ValueError(f"pooling must be 'gap' or 'gmp', got {pooling!r}")


class CAMHead(nn.Module):
    """Classification head that also yields class activation maps.

    ``logits = W · pool(dropout(f))`` with a bias-free 1×1 conv ``W`` (``classifier``), and
    ``cams = W · f`` at every pixel (raw, not ReLU'd). With ``hidden_channels`` the features first go through
    a bias-free 1×1 conv -> BatchNorm -> ReLU (the 4096->128 ``cov_feat`` head of SMAF's EPS network), and
    ``features`` returned are those hidden features.

    Args:
        in_channels: backbone channels D.
        num_classes: number of output classes K (20 for VOC foreground; 21 where the method adds a
            background channel, e.g. L2G/EPS put it last).
        pooling: ``"gap"`` (PSA/L2G/EPS default) or ``"gmp"`` (AFA/TSCD default).
        dropout: Dropout2d rate on the features before the classifier (PSA ``dropout7`` 0.5 is defined
            but unused by L2G; SEAM/PMM apply 0.5). Affects ``logits`` only, never the CAMs.
        hidden_channels: optional bottleneck width (SMAF: 128).
        init: ``"xavier"`` (PSA/L2G/EPS ``fc8``, Xavier-uniform) or ``"default"`` (PyTorch conv init, AFA).

    Shape:
        - features: B×D×h×w
        - output: dict ``logits`` B×K, ``cams`` B×K×h×w, ``features`` B×D'×h×w (all carry gradients)

    Examples:
        >>> head = CAMHead(8, 20)
        >>> out = head(torch.randn(2, 8, 4, 4))
        >>> out["logits"].shape, out["cams"].shape
        (torch.Size([2, 20]), torch.Size([2, 20, 4, 4]))
    """

    def __init__(self, in_channels: int, num_classes: int, pooling: Pooling = "gap", dropout: float = 0.0,
                 hidden_channels: int | None = None, init: Literal["xavier", "default"] = "xavier"):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if pooling not in ("gap", "gmp"):
            raise ValueError(f"pooling must be 'gap' or 'gmp', got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if init not in ("xavier", "default"):
            raise ValueError(f"init must be 'xavier' or 'default', got {init!r}")
        self.in_channels, self.num_classes, self.pooling = in_channels, num_classes, pooling
        self.hidden: nn.Module | None = None
        d = in_channels
        if hidden_channels is not None:
            self.hidden = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 1, bias=False),
                                        nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True))
            d = hidden_channels
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(d, num_classes, 1, bias=False)
        if init == "xavier":
            nn.init.xavier_uniform_(self.classifier.weight)

    @override
    def forward(self, features: Tensor) -> dict[str, Tensor]:
        check_tensor(features, "features", 4, layout="B×D×h×w", floating=True)
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features must have {self.in_channels} channels, got {shape_str(features)}")
        f = self.hidden(features) if self.hidden is not None else features
        pooled = global_pool(self.dropout(f), self.pooling)
        logits = pooled @ self.classifier.weight.flatten(1).t()
        cams = _cam_from_features(f, self.classifier.weight.flatten(1), None)  # a layer: values are not checked
        return {"logits": logits, "cams": cams, "features": f}


class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP: parallel 3×3 convs with dilation = padding = rate, straight to class scores, summed.

    Each branch has a bias and is initialised N(0, 0.01) with zero bias, as in deeplab-pytorch
    (``libs/models/deeplabv2.py``). Parameters are named ``convs.{i}.weight/bias``; deeplab-pytorch's
    ``aspp.c{i}`` maps onto them through ``key_map="deeplab_pytorch"``.

    Args:
        in_channels: backbone channels (2048 for ResNet-101).
        num_classes: output classes including background (21 for VOC).
        rates: dilation rates (released 6, 12, 18, 24; "DeepLab-v2-S" uses 3, 6, 9, 12).

    Shape:
        - features: B×D×h×w
        - output: B×K×h×w (same resolution; the network upsamples)

    Examples:
        >>> aspp = ASPPv2(16, 21)
        >>> aspp(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 21, 8, 8])
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"rates must be positive ints, got {rates}")
        self.rates = rates
        self.in_channels = int(in_channels)
        convs = [nn.Conv2d(in_channels, num_classes, 3, 1, padding=r, dilation=r, bias=True) for r in rates]
        for m in convs:
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(cast(Tensor, m.bias))
        self.convs = nn.ModuleList(convs)

    @override
    def forward(self, features: Tensor) -> Tensor:
        check_batch(features, "features", self.in_channels)
        out = self.convs[0](features)
        for conv in self.convs[1:]:
            out = out + conv(features)
        return out


class _ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BN -> ReLU with mmcv ``ConvModule`` names (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class _MLP(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, self.proj.out_features, h, w)


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder, as in AFA/TSCD (``wetr/segformer_head.py``).

    Each stage map is projected by a Linear to ``embed_dim`` (``linear_c{i}.proj``), upsampled bilinearly
    (``align_corners=False``) to the first map's size, concatenated in the order c4, c3, c2, c1, fused by a
    1×1 conv -> BN -> ReLU (``linear_fuse.conv``/``.bn``; the release uses SyncBN — convert with
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP), then Dropout2d(0.1) and a 1×1 conv with bias to
    the classes (``linear_pred``). Names match the release, so AFA/TSCD decoder weights load directly.

    Args:
        in_channels: channels of the four maps (MiT-B1: 64, 128, 320, 512).
        num_classes: classes including background (21 for VOC).
        embed_dim: decoder width (released 256).
        dropout: Dropout2d before the classifier (released 0.1).

    Shape:
        - features: list of four B×C_i×h_i×w_i maps, the first the finest
        - output: B×K×h_1×w_1 (stride 4 for MiT)

    Examples:
        >>> head = SegFormerHead((8, 16, 24, 32), 21, embed_dim=16)
        >>> feats = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip((8, 16, 24, 32), (4, 8, 16, 16))]
        >>> head(feats).shape
        torch.Size([1, 21, 8, 8])
    """

    def __init__(self, in_channels: Sequence[int] = (64, 128, 320, 512), num_classes: int = 21,
                 embed_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must hold 4 stage widths, got {in_channels}")
        self.in_channels = in_channels
        for i, c in enumerate(in_channels, start=1):
            self.add_module(f"linear_c{i}", _MLP(c, embed_dim))
        self.linear_fuse = _ConvBNReLU(4 * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    @override
    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != 4:
            raise ValueError(f"features must be a list of 4 maps, got {len(features)}")
        for i, f in enumerate(features):
            check_batch(f, f"features[{i}]")
        size = features[0].shape[2:]
        outs = []
        for i in (4, 3, 2, 1):
            f = features[i - 1]
            if f.shape[1] != self.in_channels[i - 1]:
                raise ValueError(f"features[{i - 1}] must have {self.in_channels[i - 1]} channels, "
                                 f"got {shape_str(f)}")
            y = getattr(self, f"linear_c{i}")(f)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        x = self.linear_fuse(torch.cat(outs, dim=1))
        return self.linear_pred(self.dropout(x))


class _ImagePool(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


class DeepLabV3PlusHead(nn.Module):
    """DeepLab-v3+ decoder over a high-level and a low-level map (layout of deeplab-pytorch ``deeplabv3plus``).

    ASPP = 1×1 conv + one 3×3 conv per rate + image pooling (each conv-BN-ReLU to ``aspp_channels``),
    concatenated and fused by a 1×1 conv-BN-ReLU (``fc1``); the low-level map is reduced to
    ``low_level_reduced`` channels (``reduce``); the upsampled ASPP output and it are concatenated and
    pass two 3×3 conv-BN-ReLU and a 1×1 classifier (``fc2``).

    Args:
        in_channels: high-level channels (2048 for ResNet-101 layer4).
        low_level_channels: low-level channels (256 for ResNet layer1).
        num_classes: classes including background.
        rates: ASPP rates (6, 12, 18 at output stride 16; 12, 24, 36 at 8).
        aspp_channels: ASPP width (256).
        low_level_reduced: reduced low-level width (48).

    Shape:
        - features: list whose first entry is the low-level map B×C_l×h_l×w_l and last the high-level map
        - output: B×K×h_l×w_l

    Examples:
        >>> head = DeepLabV3PlusHead(32, 8, 21, aspp_channels=16, low_level_reduced=4)
        >>> head([torch.randn(2, 8, 16, 16), torch.randn(2, 32, 4, 4)]).shape
        torch.Size([2, 21, 16, 16])
    """

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 rates: Sequence[int] = (6, 12, 18), aspp_channels: int = 256, low_level_reduced: int = 48):
        super().__init__()
        rates = tuple(int(r) for r in rates)
        self.aspp = nn.ModuleList([_ConvBNReLU(in_channels, aspp_channels, 1)]
                                  + [_ConvBNReLU(in_channels, aspp_channels, 3, r, r) for r in rates]
                                  + [_ImagePool(in_channels, aspp_channels)])
        self.fc1 = _ConvBNReLU(aspp_channels * (len(rates) + 2), aspp_channels, 1)
        self.reduce = _ConvBNReLU(low_level_channels, low_level_reduced, 1)
        self.fc2 = nn.Sequential(_ConvBNReLU(aspp_channels + low_level_reduced, aspp_channels, 3, 1),
                                 _ConvBNReLU(aspp_channels, aspp_channels, 3, 1),
                                 nn.Conv2d(aspp_channels, num_classes, 1))

    @override
    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) < 2:
            raise ValueError(f"features must hold a low-level and a high-level map, got {len(features)}")
        for i, f in enumerate(features):
            check_batch(f, f"features[{i}]")
        low, high = features[0], features[-1]
        h = self.fc1(torch.cat([b(high) for b in self.aspp], dim=1))
        h = F.interpolate(h, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.fc2(torch.cat([h, self.reduce(low)], dim=1))
