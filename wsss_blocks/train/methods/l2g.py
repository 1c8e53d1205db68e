"""L2G in the reference trainer: a local and a global ResNet-38 trained jointly by local-to-global transfer.

Jiang, Yang, Hou, Wei, "L2G: A Simple Local-to-Global Knowledge Transfer Framework for Weakly Supervised
Semantic Segmentation", CVPR 2022 (official code PengtaoJiang/L2G; ``shared/specs/spec_l2g.md``).

Per step (``scripts/train_l2g_sal_voc.py``, spec §2–§4):

1. :class:`~wsss_blocks.local_global.LocalPatchSampler` cuts N patches out of every (normalised) global view
   (VOC: the four corners + 2 random 320² crops of 448², COCO: 4 random ones) with replicated labels and
   saliency crops.
2. The **local** network classifies the patches: multi-label soft-margin loss on the spatial mean of its
   foreground maps against the replicated labels. It gets no other loss.
3. The **global** network sees the whole view; it is trained **only** by the transfer loss
   (:class:`~wsss_blocks.local_global.LocalToGlobalTransfer`: λ · MSE between the channel softmax of its
   RoIAligned logits and the target built from the detached local maps, with the saliency shape transfer
   when saliency is on). Its classification loss is logged, not optimised (``global_cls_weight = 0``).
4. Total ``L = L_cls(local) + L_kt``.

Both networks are :class:`L2GNet`: ResNet-38 (conv1a/b2 frozen, frozen BN, output stride 8) with the PCM
head of the release (``models/resnet38.py``): ``F = cam + PCM(cam)`` with K = C + 1 channels, **background
last**; logits = spatial mean of the C foreground channels. CAMs at inference come from the global network
only (:meth:`L2GMethod.cam_fn`), as ``test_l2g_voc.py`` does; the pseudo-mask rule is the default constant
background argmax (``gen_gt.py``, ``thr = 0.25``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...local_global import LocalPatchSampler, LocalToGlobalTransfer
from ...models import build_backbone, set_bn_eval
from . import register_method
from .base import CAMMethod

__all__ = ["L2GConfig", "L2GMethod", "L2GNet", "PixelCorrelation", "build_frozen_backbone", "RESNET38_NAMES"]

#: backbone names that build the library's ResNet-38 (``frozen``/``freeze_bn`` go to its constructor)
RESNET38_NAMES = ("resnet38d", "resnet38", "resnet38d_tiny", "wide_resnet38")


def build_frozen_backbone(name: str, pretrained: Any, backbone_kwargs: dict[str, Any], frozen: Sequence[str],
                          freeze_bn: bool, **resnet38_defaults: Any) -> nn.Module:
    """Build a backbone and freeze the named top-level modules and (optionally) every BatchNorm.

    For ResNet-38 the names go to its constructor (``frozen=``, ``freeze_bn=``, plus ``resnet38_defaults``
    such as ``b7_dilation``) unless ``backbone_kwargs`` sets them; for other backbones each name must be a
    top-level submodule (e.g. ``"stages"`` is not useful, ``TinyBackbone`` has only ``stages``).

    Raises:
        ValueError: a name in ``frozen`` that the backbone does not have.
    """
    kw = dict(backbone_kwargs)
    if name in RESNET38_NAMES:
        kw.setdefault("frozen", tuple(frozen))
        kw.setdefault("freeze_bn", bool(freeze_bn))
        for k, v in resnet38_defaults.items():
            kw.setdefault(k, v)
        return build_backbone(name, pretrained, **kw)
    bb = build_backbone(name, pretrained, **kw)
    for f in frozen:
        mod = getattr(bb, f, None)
        if not isinstance(mod, nn.Module):
            names = [n for n, _ in bb.named_children()]
            raise ValueError(f"frozen module {f!r} does not exist in backbone {name!r} (top-level modules: {names})")
        for p in mod.parameters():
            p.requires_grad_(False)
    if freeze_bn:
        set_bn_eval(bb)
    return bb


class PixelCorrelation(nn.Module):
    """SEAM's pixel correlation module (PCM) as used by L2G and PMM: an image-guided affinity over the map.

    Features ``f = f9([image↓ ; f8_3(mid) ; f8_4(high)])`` (``mid``/``high`` detached, image bilinearly
    resized with ``align_corners=True``), L2-normalised per pixel (ε 1e-5); affinity ``A = ReLU(fᵀf)`` with
    every column divided by its sum (+1e-5); output ``x·A`` for a B×K×h×w input ``x``. The convolutions have
    no bias; init as released (f8_3/f8_4 Kaiming normal, f9 Xavier uniform with gain 4). ``relu_features``:
    SEAM/PMM apply a ReLU after f8_3 and f8_4, L2G does not. The affinity is computed in float32.

    Shape:
        - x: B×K×h×w; image: B×3×H×W; mid: B×C_mid×h'×w'; high: B×C_high×h''×w'' (resized to h×w if needed)
        - output: B×K×h×w
    """

    def __init__(self, mid_channels: int, high_channels: int, relu_features: bool = False):
        super().__init__()
        self.f8_3 = nn.Conv2d(mid_channels, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(high_channels, 128, 1, bias=False)
        self.f9 = nn.Conv2d(192 + 3, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.relu_features = relu_features

    def affinity(self, image: Tensor, mid: Tensor, high: Tensor, hw: tuple[int, int]) -> Tensor:
        """Column-normalised B×hw×hw affinity (float32)."""
        a = self.f8_3(mid.detach())
        b = self.f8_4(high.detach())
        if self.relu_features:
            a, b = F.relu(a), F.relu(b)
        if tuple(a.shape[-2:]) != hw:
            a = F.interpolate(a, size=hw, mode="bilinear", align_corners=True)
        if tuple(b.shape[-2:]) != hw:
            b = F.interpolate(b, size=hw, mode="bilinear", align_corners=True)
        xs = F.interpolate(image, size=hw, mode="bilinear", align_corners=True)
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

    def forward(self, x: Tensor, image: Tensor, mid: Tensor, high: Tensor) -> Tensor:
        return self.propagate(x, self.affinity(image, mid, high, (int(x.shape[-2]), int(x.shape[-1]))))


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

    def forward(self, images: Tensor) -> Tensor:
        maps = self.backbone(images)
        cam = self.fc8(maps[-1])
        if self.pcm is None:
            return cam.float()
        return cam.float() + self.pcm(cam, images, maps[self.pcm_indices[0]], maps[self.pcm_indices[1]])

    @staticmethod
    def logits(maps: Tensor) -> Tensor:
        """B×C logits: spatial mean of the foreground channels (all but the last)."""
        return maps[:, :-1].mean(dim=(2, 3))


@dataclass
class L2GConfig:
    """Arguments of L2G (defaults = the released VOC setting, ``train_l2g_sal_voc.sh``; spec_l2g.md).

    Attributes:
        num_patches: N local patches per image (VOC 6, COCO 4; spec §2).
        patch_size: patch side p in global-view pixels (320; spec §2).
        patch_mode: ``"corners+random"`` (VOC), ``"random"`` (COCO, paper) or ``"grid"`` (ablation).
        kd_weight: λ of the transfer loss (VOC 10, COCO 30; spec §6).
        fg_threshold: τ, ``bg_thr`` (VOC 0.001, COCO 0.1; spec §4 step 5).
        bg_target: background target ``"binary"`` (VOC) or ``"soft"`` (COCO; spec §4 step 5).
        use_saliency: saliency shape transfer (the released scripts are saliency-only; needs
            ``data.saliency_dir``). False = plain attention transfer (§4 without step 5).
        keep_max: keep only the per-pixel winning target channel (released).
        roi_aligned: RoIAlign ``aligned`` flag; False keeps the released half-cell shift (spec §4 step 6),
            True is the geometrically exact deviation.
        empty_saliency_fallback: the paper's L_at target for patches with empty saliency (not in the code).
        global_cls_weight: weight of the global network's classification loss (released 0: logged only).
        pcm: PCM term in both networks (released True).
        frozen: backbone modules without gradient (ResNet-38: conv1a, b2, b2_1, b2_2; spec §3).
        freeze_bn: BatchNorm in eval mode with frozen affine parameters (released; spec §3).
        relu_per_scale: apply ReLU to each scale's map in :meth:`L2GMethod.cam_fn`. Released False: the
            8 scale/flip maps are averaged raw and clamped afterwards (spec §7), which
            :func:`wsss_blocks.cam.normalize_cams` does.
    """

    num_patches: int = 6
    patch_size: int = 320
    patch_mode: Literal["corners+random", "random", "grid"] = "corners+random"
    kd_weight: float = 10.0
    fg_threshold: float = 0.001
    bg_target: Literal["binary", "soft"] = "binary"
    use_saliency: bool = True
    keep_max: bool = True
    roi_aligned: bool = False
    empty_saliency_fallback: bool = False
    global_cls_weight: float = 0.0
    pcm: bool = True
    frozen: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")
    freeze_bn: bool = True
    relu_per_scale: bool = False


@register_method
class L2GMethod(CAMMethod):
    """L2G: local network (classification on patches) + global network (transfer loss only).

    Paper: Jiang et al., "L2G: A Simple Local-to-Global Knowledge Transfer Framework for Weakly Supervised
    Semantic Segmentation", CVPR 2022. Release: PengtaoJiang/L2G (spec_l2g.md).

    Gradients: ``loss_cls_local`` reaches only ``local_net``; ``loss_kt`` only ``global_net`` (the target is
    built from detached local maps). Both networks use :class:`L2GNet`; parameter groups follow the PSA
    convention (backbone 1×/2×, fc8 + PCM 10×/20×) for both.

    Shape:
        - batch["image"]: B×3×H×W (H, W ≥ ``patch_size``); batch["labels"]: B×C; batch["saliency"]:
          B×1×H×W (with ``use_saliency``)
        - cam_fn output: B×C×H/8×W/8 foreground maps of the global network (raw unless ``relu_per_scale``)

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "l2g", "cam": {"backbone": "resnet38d_tiny"},
        ...     "method_args": {"patch_size": 16, "use_saliency": False, "frozen": ["conv1a"]}})
        >>> m = L2GMethod(cfg, cfg.method_config(), 20)
        >>> out = m.training_step({"image": torch.randn(2, 3, 32, 32), "labels": torch.eye(20)[:2]}, 0, 10)
        >>> sorted(out), tuple(m.cam_fn(torch.randn(1, 3, 32, 32)).shape)
        (['loss', 'loss_cls_global', 'loss_cls_local', 'loss_kt'], (1, 20, 4, 4))
    """

    name = "l2g"
    Config = L2GConfig
    cfg: L2GConfig
    paper_numbers = {"cam_miou": None, "pseudo_miou": None, "val_miou": 72.1}
    paper_numbers_by_dataset = {"voc": {"cam_miou": None, "pseudo_miou": None, "val_miou": 72.1},
                                "coco": {"cam_miou": None, "pseudo_miou": None, "val_miou": 44.2}}
    paper_source = ("L2G (CVPR'22) abstract/README: VOC val 72.1 (test 71.7), COCO val 44.2, DeepLab-v2 R101 with "
                    "saliency and CRF (spec_l2g.md §9). Pseudo-label mIoU is not verified from the paper (issue #36 "
                    "reproduces 71.7 on VOC train at bg 0.25), so it is not listed.")
    cam_normalization = "max"

    def __init__(self, run_cfg: Any, method_cfg: L2GConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        if c.kd_weight < 0 or c.global_cls_weight < 0:
            raise ValueError(f"kd_weight and global_cls_weight must be >= 0, got {c.kd_weight}, {c.global_cls_weight}")
        if c.use_saliency and run_cfg is not None and getattr(run_cfg.data, "saliency_dir", None) is None:
            raise ValueError("L2G with method_args.use_saliency=true needs saliency maps: set data.saliency_dir "
                             "(PoolNet maps in the release), or method_args.use_saliency=false for plain transfer")
        cam = run_cfg.cam if run_cfg is not None else None
        name = cam.backbone if cam is not None else "resnet38d_tiny"
        pre = cam.pretrained if cam is not None else None
        kwargs = dict(cam.backbone_kwargs) if cam is not None else {}

        def net() -> L2GNet:
            bb = build_frozen_backbone(name, pre, kwargs, c.frozen, c.freeze_bn)
            return L2GNet(bb, num_classes, pcm=c.pcm)

        self.global_net = net()
        self.local_net = net()
        self.stride = self.global_net.stride
        if c.patch_size % self.stride:
            raise ValueError(f"method_args.patch_size must be a multiple of the output stride {self.stride}, "
                             f"got {c.patch_size}")
        self.sampler = LocalPatchSampler(c.num_patches, c.patch_size, c.patch_mode)
        self.transfer = LocalToGlobalTransfer(num_classes, stride=self.stride, weight=c.kd_weight,
                                              fg_threshold=c.fg_threshold, bg_channel="last", keep_max=c.keep_max,
                                              bg_target=c.bg_target, roi_aligned=c.roi_aligned,
                                              empty_saliency_fallback=c.empty_saliency_fallback)
        if c.freeze_bn:
            set_bn_eval(self)

    def train(self, mode: bool = True) -> L2GMethod:
        super().train(mode)
        if self.cfg.freeze_bn:
            set_bn_eval(self)
        return self

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The loss terms of one batch, **with** their gradients (``training_step`` sums and detaches them).

        Returns ``cls_local`` (local network, multi-label soft margin on the patches), ``kt`` (transfer loss,
        λ included; gradient only into the global network) and ``cls_global`` (global classification loss,
        optimised only with ``global_cls_weight > 0``).
        """
        images = batch["image"]
        labels = batch["labels"].float()
        sal = None
        if self.cfg.use_saliency:
            sal = batch.get("saliency")
            if sal is None:
                raise ValueError("L2G with use_saliency=true got a batch without 'saliency'; set data.saliency_dir "
                                 "or method_args.use_saliency=false")
            sal = sal.float()
        views = self.sampler(images, labels, sal)  # random offsets from the global torch RNG (checkpointed)
        local_maps = self.local_net(views["patches"])
        cls_local = F.multilabel_soft_margin_loss(L2GNet.logits(local_maps), views["patch_labels"].float())
        global_maps = self.global_net(images)
        kt = self.transfer(global_maps, local_maps, views["rois"], labels, views["patch_saliency"])
        cls_global = F.multilabel_soft_margin_loss(L2GNet.logits(global_maps), labels)
        return {"cls_local": cls_local, "kt": kt, "cls_global": cls_global}

    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        parts = self.losses(batch)
        loss = parts["cls_local"] + parts["kt"]
        if self.cfg.global_cls_weight > 0:
            loss = loss + self.cfg.global_cls_weight * parts["cls_global"]
        return {"loss": loss, "loss_cls_local": parts["cls_local"].detach(), "loss_kt": parts["kt"].detach(),
                "loss_cls_global": parts["cls_global"].detach()}

    def cam_fn(self, images: Tensor) -> Tensor:
        cams = self.global_net(images)[:, :-1]
        return F.relu(cams) if self.cfg.relu_per_scale else cams
