"""IRNet's class-boundary network: a frozen ResNet-50 and the boundary branch over its five stages.

Ahn, Cho, Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel Relations", CVPR 2019;
official code ``jiwoon-ahn/irn`` ``net/resnet50_irn.py`` (commit ``a2ece00``). The boundary map it predicts
feeds [boundary_affinity_loss][wsss_blocks.irn.boundary_affinity_loss] in training and
[random_walk][wsss_blocks.irn.random_walk] at inference. The displacement branch of the release (instance
segmentation only) is not built: it shares no parameter with the boundary branch and the backbone is frozen,
so the boundary branch trains identically without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, check_int, check_tensor, require, shape_str

from .backbones import LoadReport, load_pretrained, set_bn_eval

__all__ = ["BoundaryHead", "IRNet", "irnet_key_map"]


class BoundaryHead(nn.Module):
    """IRNet's class-boundary branch over five feature maps (``net/resnet50_irn.py`` lines 23-51, 117-122).

    Each map goes through a bias-free 1×1 conv to ``mid_channels``, GroupNorm(``num_groups``), an optional
    bilinear upsampling (``align_corners=False``, placed **before** the ReLU as released) and ReLU; the
    upsampled maps are cropped to the second map's size, concatenated and a 1×1 conv with bias gives one
    boundary logit per pixel. Module names follow the release (``fc_edge1`` … ``fc_edge6``).

    Args:
        in_channels: channels of the five maps (ResNet-50: stem 64, layer1..4 256/512/1024/2048).
        mid_channels: width of each branch (32).
        num_groups: GroupNorm groups (4).
        scale_factors: upsampling of each map to the second map's stride (1, 1, 2, 4, 4 for strides
            4, 4, 8, 16, 16).

    Shape:
        - features: five maps ``(B, C_i, h_i, w_i)``
        - output: ``(B, 1, h_2, w_2)`` logits (stride of the second map)

    Examples:
        >>> head = BoundaryHead((4, 8, 8, 16, 16))
        >>> feats = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 8, 8), torch.rand(1, 8, 4, 4),
        ...          torch.rand(1, 16, 2, 2), torch.rand(1, 16, 2, 2)]
        >>> head(feats).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, in_channels: Sequence[int] = (64, 256, 512, 1024, 2048), mid_channels: int = 32,
                 num_groups: int = 4, scale_factors: Sequence[int] = (1, 1, 2, 4, 4)) -> None:
        super().__init__()
        chans = tuple(int(c) for c in in_channels)
        scales = tuple(int(s) for s in scale_factors)
        if len(chans) != 5 or len(scales) != 5:
            raise ValueError(f"in_channels and scale_factors must hold 5 entries (the five stages), got {chans} "
                             f"and {scales}")
        if mid_channels < 1 or mid_channels % num_groups:
            raise ValueError(f"mid_channels must be a positive multiple of num_groups, got {mid_channels} and "
                             f"{num_groups}")
        for i, (c, s) in enumerate(zip(chans, scales), start=1):
            layers: list[nn.Module] = [nn.Conv2d(c, mid_channels, 1, bias=False),
                                       nn.GroupNorm(num_groups, mid_channels)]
            if s != 1:
                layers.append(nn.Upsample(scale_factor=s, mode="bilinear", align_corners=False))
            layers.append(nn.ReLU(inplace=True))
            self.add_module(f"fc_edge{i}", nn.Sequential(*layers))
        self.fc_edge6 = nn.Conv2d(5 * mid_channels, 1, 1, bias=True)
        self.in_channels = chans

    @override
    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != 5:
            raise ValueError(f"features must hold the 5 stage maps, got {len(features)}")
        for i, f in enumerate(features):
            check_batch(f, f"features[{i}]")
        h, w = features[1].shape[-2:]
        outs = []
        for i, f in enumerate(features, start=1):
            e = getattr(self, f"fc_edge{i}")(f)
            if e.shape[-2] < h or e.shape[-1] < w:
                raise ValueError(f"stage {i} map upsampled to {tuple(e.shape[-2:])} is smaller than the stage-2 "
                                 f"map {(h, w)}; check scale_factors")
            outs.append(e[..., :h, :w])
        return self.fc_edge6(torch.cat(outs, dim=1))


_DROPPED_PREFIXES = ("stage", "fc_dp", "mean_shift", "path_indices", "disp_target", "fc.")


def irnet_key_map(key: str) -> str | None:
    """Map released IRN checkpoint keys (``res50_irn.pth``) and torchvision ResNet-50 keys to `IRNet`.

    ``fc_edge*`` -> ``edge.fc_edge*``; the release's ``resnet50.*`` stays; torchvision's ``conv1``/``bn1``/
    ``layer*`` get the ``resnet50.`` prefix; the release's duplicate ``stage*`` aliases, the displacement
    branch (``fc_dp*``, ``mean_shift``), the saved path-index buffers and torchvision's ``fc`` are dropped.

    Examples:
        >>> irnet_key_map("fc_edge3.1.weight"), irnet_key_map("layer1.0.conv1.weight"), irnet_key_map("fc_dp7.0.weight")
        ('edge.fc_edge3.1.weight', 'resnet50.layer1.0.conv1.weight', None)
    """
    if key.startswith("fc_edge"):
        return "edge." + key
    if key.startswith(_DROPPED_PREFIXES):
        return None
    if key.startswith(("conv1.", "bn1.", "layer")):
        return "resnet50." + key
    return key


class IRNet(nn.Module):
    """IRNet for semantic pseudo masks: a frozen ResNet-50 (strides 2, 2, 2, 1) and the boundary branch.

    Ahn et al., CVPR 2019, ``net/resnet50_irn.py`` + ``net/resnet50.py``. The backbone is torchvision's
    ResNet-50 (the release's layout: stride in the 3×3 conv) with the last stage at stride 1 and no dilation,
    so the deepest maps have stride 16. It is **frozen** as released: every BatchNorm uses its running
    statistics (``FixedBatchNorm``), the backbone stays in eval mode in ``train()``, its parameters take no
    gradient and its stage outputs are detached. Only `edge` (the `BoundaryHead`) trains. The
    release initialises the backbone from torchvision's ImageNet ResNet-50 (``resnet50-19c8e357.pth``), not
    from the CAM network.

    Args:
        pretrained: local checkpoint: torchvision ImageNet ResNet-50 weights, or a released IRN checkpoint
            (``res50_irn.pth``), see `load_pretrained`. Nothing downloads.
        layers: blocks per stage ((3, 4, 6, 3) = ResNet-50).
        width_per_group: torchvision's bottleneck width (64; smaller for tests).
        strides: strides of the stem conv and of layers 2, 3, 4 ((2, 2, 2, 1) as released).

    Shape:
        - images: ``(B, 3, H, W)`` normalised with the ImageNet mean/std
        - output: ``(B, 1, ⌈H/4⌉, ⌈W/4⌉)`` boundary logits

    Examples:
        >>> net = IRNet.tiny()
        >>> net(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(self, pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *,
                 layers: Sequence[int] = (3, 4, 6, 3), width_per_group: int = 64,
                 strides: Sequence[int] = (2, 2, 2, 1)) -> None:
        super().__init__()
        tv = require("torchvision.models.resnet", "train", "IRNet's ResNet-50 backbone")
        st = tuple(int(s) for s in strides)
        if len(st) != 4 or any(s not in (1, 2) for s in st):
            raise ValueError(f"strides must be 4 values in {{1, 2}} (stem, layer2, layer3, layer4), got {strides}")
        net = tv.ResNet(tv.Bottleneck, list(layers), width_per_group=width_per_group)
        net.conv1.stride = (st[0], st[0])
        for layer, s in zip((net.layer2, net.layer3, net.layer4), st[1:]):
            layer[0].conv2.stride = (s, s)
            if layer[0].downsample is not None:
                layer[0].downsample[0].stride = (s, s)
        net.fc = nn.Identity()
        net.avgpool = nn.Identity()
        self.resnet50 = net
        self.edge = BoundaryHead()
        self.strides = st
        if pretrained is not None:
            self.load_pretrained(pretrained)
        self.resnet50.requires_grad_(False)
        set_bn_eval(self.resnet50)

    @classmethod
    def tiny(cls, **kwargs: Any) -> IRNet:
        """One block per stage with narrow bottlenecks (same stage channels), for CPU tests."""
        kwargs.setdefault("layers", (1, 1, 1, 1))
        kwargs.setdefault("width_per_group", 8)
        return cls(**kwargs)

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, Any], strict: bool = True) -> LoadReport:
        """Load torchvision ResNet-50 ImageNet weights (backbone only) or a released IRN checkpoint.

        Keys go through `irnet_key_map`; with backbone-only weights the boundary branch keeps its
        initialisation. Returns the [LoadReport][wsss_blocks.models.backbones.LoadReport].
        """
        return load_pretrained(self, source, irnet_key_map, strict=strict, allow_missing=("edge.",))

    @override
    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.resnet50.eval()  # FixedBatchNorm and a frozen backbone, as released
        return self

    def features(self, images: Tensor) -> list[Tensor]:
        """The five detached stage maps (stem incl. max-pool, layer1..layer4)."""
        r = self.resnet50
        with torch.no_grad():
            x1 = r.maxpool(r.relu(r.bn1(r.conv1(images))))
            x2 = r.layer1(x1)
            x3 = r.layer2(x2)
            x4 = r.layer3(x3)
            x5 = r.layer4(x4)
        return [x.detach() for x in (x1, x2, x3, x4, x5)]

    @override
    def forward(self, images: Tensor) -> Tensor:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels, got shape {shape_str(images)}")
        return self.edge(self.features(images))

    @torch.no_grad()
    def boundary_map(self, images: Tensor, flip: bool = True, pad_to: int | None = 512) -> Tensor:
        """The inference boundary map of IRN's ``EdgeDisplacement`` (``resnet50_irn.py`` lines 216-234).

        Each image and (with ``flip``) its horizontal mirror are zero-padded right/bottom to
        ``pad_to × pad_to`` (512 as released), the logits are cropped to the stride-4 grid
        ``((H - 1) // 4 + 1, (W - 1) // 4 + 1)``, the mirror's logits are flipped back, and
        ``sigmoid((logit + logit_mirror) / 2)`` is returned (logits averaged before the sigmoid). An image
        larger than ``pad_to`` is padded to the next multiple of 16 instead (the release fails on such
        images, e.g. COCO's 640 px); ``pad_to=None`` always pads to a multiple of 16.

        Args:
            images: normalised images of one size.
            flip: average with the mirrored image (released: on).
            pad_to: square size to pad to (512), or ``None``.

        Returns:
            ``(B, 1, (H - 1) // 4 + 1, (W - 1) // 4 + 1)`` boundary probabilities, float32.
        """
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        if pad_to is not None:
            check_int(pad_to, "pad_to", minimum=1)
        H, W = images.shape[-2:]
        h, w = (H - 1) // 4 + 1, (W - 1) // 4 + 1
        ph, pw = -(-H // 16) * 16, -(-W // 16) * 16
        if pad_to is not None:
            ph, pw = max(ph, pad_to), max(pw, pad_to)
        x = torch.cat([images, images.flip(-1)]) if flip else images
        x = F.pad(x, [0, pw - W, 0, ph - H])
        logits = self.forward(x)[..., :h, :w].float()
        if flip:
            B = images.shape[0]
            logits = logits[:B] / 2 + logits[B:].flip(-1) / 2
        return torch.sigmoid(logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The boundary branch's parameters (the release trains them at lr 0.1, weight decay 1e-4)."""
        return list(self.edge.parameters())
