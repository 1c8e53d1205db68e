"""SEAM's pixel correlation module (PCM) and the two ResNet-38 CAM networks built on it (L2G, PMM/SEAM).

- [`PixelCorrelation`][]: the PCM of Wang et al., "Self-supervised Equivariant Attention Mechanism for Weakly
  Supervised Semantic Segmentation" (SEAM, CVPR 2020, ``YudeWang/SEAM`` ``network/resnet38_SEAM.py``), an
  image-guided affinity that propagates a map over itself.
- [`L2GNet`][]: one network of L2G (Jiang et al., CVPR 2022, ``PengtaoJiang/L2G`` ``models/resnet38.py``
  ``Net``): backbone + bias-free fc8 with background last + the PCM term added to the CAM.
- [`SEAMNet`][] and [`seam_pcm_input`][]: the SEAM head as PMM trains it (Li et al., ICCV 2021,
  ``Eli-YiLi/PMM`` ``network/resnet38_SEAM.py``): fc8 behind Dropout2d with background first, and the PCM
  applied to the detached, normalised, argmax-suppressed CAM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, check_same_batch

__all__ = ["PixelCorrelation", "L2GNet", "SEAMNet", "seam_pcm_input"]


class PixelCorrelation(nn.Module):
    """SEAM's pixel correlation module (PCM) as used by L2G and PMM: an image-guided affinity over the map.

    Features ``f = f9([image↓ ; f8_3(mid) ; f8_4(high)])`` (``mid``/``high`` detached, image bilinearly
    resized with ``align_corners=True``), L2-normalised per pixel (ε 1e-5); affinity ``A = ReLU(fᵀf)`` with
    every column divided by its sum (+1e-5); output ``x·A`` for a B×K×h×w input ``x``. The convolutions have
    no bias; init as released (f8_3/f8_4 Kaiming normal, f9 Xavier uniform with gain 4). ``relu_features``:
    SEAM/PMM apply a ReLU after f8_3 and f8_4, L2G does not. The affinity is computed in float32.

    Shape:
        - x: B×K×h×w; images: B×3×H×W; mid: B×C_mid×h'×w'; high: B×C_high×h''×w'' (resized to h×w if needed)
        - output: B×K×h×w

    Examples:
        >>> pcm = PixelCorrelation(mid_channels=8, high_channels=16)
        >>> x, images = torch.rand(2, 21, 4, 4), torch.randn(2, 3, 32, 32)
        >>> pcm(x, images, torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 21, 4, 4])
    """

    def __init__(self, mid_channels: int, high_channels: int, relu_features: bool = False):
        super().__init__()
        self.mid_channels, self.high_channels = int(mid_channels), int(high_channels)
        self.f8_3 = nn.Conv2d(mid_channels, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(high_channels, 128, 1, bias=False)
        self.f9 = nn.Conv2d(192 + 3, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.relu_features = relu_features

    def affinity(self, images: Tensor, mid: Tensor, high: Tensor, hw: tuple[int, int]) -> Tensor:
        """Column-normalised B×hw×hw affinity (float32)."""
        a = self.f8_3(mid.detach())
        b = self.f8_4(high.detach())
        if self.relu_features:
            a, b = F.relu(a), F.relu(b)
        if tuple(a.shape[-2:]) != hw:
            a = F.interpolate(a, size=hw, mode="bilinear", align_corners=True)
        if tuple(b.shape[-2:]) != hw:
            b = F.interpolate(b, size=hw, mode="bilinear", align_corners=True)
        xs = F.interpolate(images, size=hw, mode="bilinear", align_corners=True)
        f = self.f9(torch.cat([xs.to(a.dtype), a, b], dim=1))
        with torch.autocast(device_type=f.device.type, enabled=False):
            f = f.float().flatten(2)
            f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
            aff = F.relu(torch.bmm(f.transpose(1, 2), f))
            return aff / (aff.sum(dim=1, keepdim=True) + 1e-5)

    def propagate(self, x: Tensor, aff: Tensor) -> Tensor:
        """``x · A`` for B×K×h×w maps and a B×hw×hw affinity (float32 result)."""
        b, k, h, w = x.shape
        return torch.bmm(x.float().flatten(2), aff).view(b, k, h, w)

    @override
    def forward(self, x: Tensor, images: Tensor, mid: Tensor, high: Tensor) -> Tensor:
        check_batch(x, "x")
        check_batch(images, "images", 3)
        check_batch(mid, "mid", self.mid_channels)
        check_batch(high, "high", self.high_channels)
        for name, t in (("images", images), ("mid", mid), ("high", high)):
            check_same_batch(x, "x", t, name)
        return self.propagate(x, self.affinity(images, mid, high, (int(x.shape[-2]), int(x.shape[-1]))))


class L2GNet(nn.Module):
    """One L2G network (``models/resnet38.py`` ``Net``): backbone + bias-free fc8 (K = C + 1, bg last) + PCM.

    ``forward`` returns ``F = fc8(conv6) + PCM(fc8(conv6))`` (B×K×h×w, float32). The release propagates the
    4096-d conv6 features and applies fc8 afterwards; fc8 is linear and bias-free, so propagating its
    output is the same function at K/4096 of the cost. ``logits`` = spatial mean of the foreground
    channels (the background row of fc8 gets no classification signal, as released).

    Args:
        backbone: module with the backbone protocol (list of maps, ``out_channels``, ``strides``).
        num_classes: C (foreground classes).
        pcm: add the PCM term (released: True).
        pcm_indices: which backbone maps feed f8_3 and f8_4 (ResNet-38: conv4, conv5 = maps 1 and 2).

    Shape:
        - images: B×3×H×W
        - output: B×(C+1)×H/8×W/8 float32 (ResNet-38), background last

    Examples:
        >>> from wsss_blocks.models import ResNet38
        >>> net = L2GNet(ResNet38.tiny(), num_classes=20)
        >>> maps = net(torch.randn(1, 3, 32, 32))
        >>> maps.shape, L2GNet.logits(maps).shape
        (torch.Size([1, 21, 4, 4]), torch.Size([1, 20]))
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pcm: bool = True,
                 pcm_indices: tuple[int, int] = (-3, -2)):
        super().__init__()
        chans = tuple(int(c) for c in backbone.out_channels)  # type: ignore[union-attr]
        strides = tuple(int(s) for s in backbone.strides)  # type: ignore[union-attr]
        if len(chans) < 3:
            raise ValueError(f"L2GNet needs a backbone with at least 3 feature maps (PCM uses two mid-level maps), "
                             f"got {len(chans)}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.stride = strides[-1]
        self.fc8 = nn.Conv2d(chans[-1], num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.pcm_indices = pcm_indices
        self.pcm = PixelCorrelation(chans[pcm_indices[0]], chans[pcm_indices[1]]) if pcm else None

    @override
    def forward(self, images: Tensor) -> Tensor:
        check_batch(images, "images")
        maps = self.backbone(images)
        cam = self.fc8(maps[-1])
        if self.pcm is None:
            return cam.float()
        return cam.float() + self.pcm(cam, images, maps[self.pcm_indices[0]], maps[self.pcm_indices[1]])

    @staticmethod
    def logits(maps: Tensor) -> Tensor:
        """B×C logits: spatial mean of the foreground channels (all but the last)."""
        return maps[:, :-1].mean(dim=(2, 3))


@torch.no_grad()
def seam_pcm_input(cam: Tensor) -> Tensor:
    """The detached map the SEAM PCM propagates.

    ReLU, divide by the per-map max (+1e-5) after subtracting 1e-5, background channel 0 := 1 − max over the
    foreground, non-max foreground channels := 0 (``Eli-YiLi/PMM`` ``network/resnet38_SEAM.py`` ``forward``, as
    SEAM).

    Shape:
        - cam: B×K×h×w (channel 0 = background); output: same, in [0, 1]

    Examples:
        >>> [round(v, 4) for v in seam_pcm_input(torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])).flatten().tolist()]
        [0.0, 1.0, 0.0]
    """
    check_batch(cam, "cam")
    if cam.shape[1] < 2:
        raise ValueError(f"cam must hold a background and at least one class map (K >= 2), got shape "
                         f"{tuple(cam.shape)}")
    c = F.relu(cam.detach().float())
    mx = c.amax(dim=(2, 3), keepdim=True) + 1e-5
    c = F.relu(c - 1e-5) / mx
    fg = c[:, 1:]
    top = fg.amax(dim=1, keepdim=True)
    fg = torch.where(fg < top, torch.zeros_like(fg), fg)
    return torch.cat([1.0 - top, fg], dim=1)


class SEAMNet(nn.Module):
    """ResNet-38 + SEAM head as in ``Eli-YiLi/PMM`` ``network/resnet38_SEAM.py``.

    ``forward`` returns ``(cam, cam_rv)`` at the feature resolution (B×K×h×w, K = C + 1, channel 0 =
    background): ``cam = fc8(Dropout2d(conv6))`` and ``cam_rv = PCM(seam_pcm_input(cam))`` (ReLU after
    f8_3/f8_4, as SEAM/PMM). ``cam_rv`` carries gradient only into the PCM convolutions.

    Shape:
        - images: B×3×H×W
        - output: two B×(C+1)×H/8×W/8 float32 maps (ResNet-38), background first

    Examples:
        >>> from wsss_blocks.models import ResNet38
        >>> cam, cam_rv = SEAMNet(ResNet38.tiny(), num_classes=20)(torch.randn(1, 3, 32, 32))
        >>> cam.shape, cam_rv.shape
        (torch.Size([1, 21, 4, 4]), torch.Size([1, 21, 4, 4]))
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5):
        super().__init__()
        chans = tuple(int(c) for c in backbone.out_channels)  # type: ignore[union-attr]
        if len(chans) < 3:
            raise ValueError(f"SEAMNet needs a backbone with at least 3 feature maps, got {len(chans)}")
        self.backbone = backbone
        self.dropout7 = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(chans[-1], num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.pcm = PixelCorrelation(chans[-3], chans[-2], relu_features=True)

    @override
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        check_batch(images, "images")
        maps = self.backbone(images)
        cam = self.fc8(self.dropout7(maps[-1])).float()
        cam_rv = self.pcm(seam_pcm_input(cam), images, maps[-3], maps[-2])
        return cam, cam_rv
