"""L2G in the reference trainer: a local and a global ResNet-38 trained jointly by local-to-global transfer.

Jiang, Yang, Hou, Wei, "L2G: A Simple Local-to-Global Knowledge Transfer Framework for Weakly Supervised
Semantic Segmentation", CVPR 2022 (official code PengtaoJiang/L2G).

Per step (``scripts/train_l2g_sal_voc.py``):

1. [`LocalPatchSampler`][wsss_blocks.local_global.LocalPatchSampler] cuts N patches out of every (normalised) global
   view (VOC: the four corners + 2 random 320² crops of 448², COCO: 4 random ones) with replicated labels and
   saliency crops.
2. The **local** network classifies the patches: multi-label soft-margin loss on the spatial mean of its
   foreground maps against the replicated labels. It gets no other loss.
3. The **global** network sees the whole view; it is trained **only** by the transfer loss
   ([`LocalToGlobalTransfer`][wsss_blocks.local_global.LocalToGlobalTransfer]: λ · MSE between the channel softmax of
   its RoIAligned logits and the target built from the detached local maps, with the saliency shape transfer
   when saliency is on). Its classification loss is logged, not optimised (``global_cls_weight = 0``).
4. Total ``L = L_cls(local) + L_kt``.

Both networks are [`L2GNet`][wsss_blocks.models.pcm.L2GNet]: ResNet-38 (conv1a/b2 frozen, frozen BN, output stride 8)
with the PCM head of the release (``models/resnet38.py``): ``F = cam + PCM(cam)`` with K = C + 1 channels, **background
last**; logits = spatial mean of the C foreground channels. CAMs at inference come from the global network
only (`L2GMethod.cam_fn`), as ``test_l2g_voc.py`` does; the pseudo-mask rule is the default constant
background argmax (``gen_gt.py``, ``thr = 0.25``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from wsss_blocks.local_global import LocalPatchSampler, LocalToGlobalTransfer
from wsss_blocks.models import L2GNet, build_frozen_backbone, set_bn_eval

from . import register_method
from .base import CAMMethod

__all__ = ["L2GConfig", "L2GMethod"]

@dataclass
class L2GConfig:
    """Arguments of L2G (defaults = the released VOC setting, ``train_l2g_sal_voc.sh``).

    Attributes:
        num_patches: N local patches per image (VOC 6, COCO 4).
        patch_size: patch side p in global-view pixels (320).
        patch_mode: ``"corners+random"`` (VOC), ``"random"`` (COCO, paper) or ``"grid"`` (ablation).
        kd_weight: λ of the transfer loss (VOC 10, COCO 30).
        fg_threshold: τ, ``bg_thr`` (VOC 0.001, COCO 0.1).
        bg_target: background target ``"binary"`` (VOC) or ``"soft"`` (COCO).
        use_saliency: saliency shape transfer (the released scripts are saliency-only; needs
            ``data.saliency_dir``). False = plain attention transfer (no saliency in the target).
        keep_max: keep only the per-pixel winning target channel (released).
        keep_max_ties: which of several equal maximal channels keep-max keeps: ``"argsort"`` (released: row 0
            of an unstable ``torch.argsort``, device dependent; on CPU mostly the background), ``"lowest"``
            (lowest channel index) or ``"highest"`` (the background wins its ties); see
            `wsss_blocks.local_global.l2g_target`.
        roi_aligned: RoIAlign ``aligned`` flag; False keeps the released half-cell shift,
            True is the geometrically exact deviation.
        empty_saliency_fallback: the paper's L_at target for patches with empty saliency (not in the code).
        global_cls_weight: weight of the global network's classification loss (released 0: logged only).
        pcm: PCM term in both networks (released True).
        frozen: backbone modules without gradient (ResNet-38: conv1a, b2, b2_1, b2_2).
        freeze_bn: BatchNorm in eval mode with frozen affine parameters (released).
        relu_per_scale: apply ReLU to each scale's map in `L2GMethod.cam_fn`. Released False: the
            8 scale/flip maps are averaged raw and clamped afterwards, which
            [`wsss_blocks.cam.normalize_cams`][wsss_blocks.cam.normalize_cams] does.
    """

    num_patches: int = 6
    patch_size: int = 320
    patch_mode: Literal["corners+random", "random", "grid"] = "corners+random"
    kd_weight: float = 10.0
    fg_threshold: float = 0.001
    bg_target: Literal["binary", "soft"] = "binary"
    use_saliency: bool = True
    keep_max: bool = True
    keep_max_ties: Literal["argsort", "lowest", "highest"] = "argsort"
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
    Semantic Segmentation", CVPR 2022. Release: PengtaoJiang/L2G.

    Gradients: ``loss_cls_local`` reaches only ``local_net``; ``loss_kt`` only ``global_net`` (the target is
    built from detached local maps). Both networks use [`L2GNet`][wsss_blocks.models.pcm.L2GNet]; parameter groups
    follow the PSA convention (backbone 1×/2×, fc8 + PCM 10×/20×) for both.

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
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": None, "pseudo_miou": None, "val_miou": 72.1}
    paper_numbers_by_dataset: ClassVar[dict[str, dict[str, float | None]]] = {
        "voc": {"cam_miou": None, "pseudo_miou": None, "val_miou": 72.1},
        "coco": {"cam_miou": None, "pseudo_miou": None, "val_miou": 44.2},
    }
    paper_source = ("L2G (CVPR'22) abstract/README: VOC val 72.1 (test 71.7), COCO val 44.2, DeepLab-v2 R101 with "
                    "saliency and CRF. Pseudo-label mIoU is not verified from the paper (PengtaoJiang/L2G issue #36 "
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
                                              empty_saliency_fallback=c.empty_saliency_fallback,
                                              keep_max_ties=c.keep_max_ties)
        if c.freeze_bn:
            set_bn_eval(self)


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
        kt = self.transfer(global_maps, local_maps, views["boxes"], labels, views["patch_saliency"])
        cls_global = F.multilabel_soft_margin_loss(L2GNet.logits(global_maps), labels)
        return {"cls_local": cls_local, "kt": kt, "cls_global": cls_global}

    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        parts = self.losses(batch)
        loss = parts["cls_local"] + parts["kt"]
        if self.cfg.global_cls_weight > 0:
            loss = loss + self.cfg.global_cls_weight * parts["cls_global"]
        return {"loss": loss, "loss_cls_local": parts["cls_local"].detach(), "loss_kt": parts["kt"].detach(),
                "loss_cls_global": parts["cls_global"].detach()}

    @override
    def cam_fn(self, images: Tensor) -> Tensor:
        cams = self.global_net(images)[:, :-1]
        return F.relu(cams) if self.cfg.relu_per_scale else cams
