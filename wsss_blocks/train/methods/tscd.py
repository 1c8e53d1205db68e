"""TSCD in the reference trainer: end-to-end MiT-B1 SegFormer with VARM labels, SCD and affinity from attention.

Xu, Wang, Sun, Xu, Meng, Zhang, "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic
Segmentation", AAAI 2023 (official code Rongtao-Xu/RepresentationLearning ``SCD-AAAI2023``), built on AFA (Ru et
al., "Learning Affinity from Attention", CVPR 2022, rulixiang/afa).

One phase; every step (released ``scripts/dist_train_voc.py`` L296-360):

1. Forward the crop ``x`` (grad): MiT-B1 (strides 4, 2, 2, 1) features, the SegFormer decoder's logits (stride 4,
   C + 1 channels, background 0), the classification logits (bias-free 1×1 classifier on the global-**max**-pooled
   last map) and the attention affinity ``A = sigmoid(attn_proj(cat(raw q·kᵀ of the last two blocks)))`` (TSCD
   does not symmetrise it; AFA does: ``attn_symmetric``).
2. ``T`` = multi-scale CAM of ``x`` (scales 1, 0.5, 1.5; flip pair fused by max; ReLU; summed; per-channel
   min-max), no grad, computed in train mode as released.
3. The SCD view ``x' = ↓0.3(x)`` (bilinear, ``align_corners=True``): a second forward **with grad** (seg logits
   S') and its multi-scale CAM ``T'`` (no grad).
4. ``Y`` = reliable pseudo labels: ``[τ; T]`` softmax over background + present classes, refined by
   [`VariationAwareRefine`][wsss_blocks.refine.VariationAwareRefine] at half resolution, τ_h 0.55 / τ_l 0.35, ignore
   band ([`reliable_pseudo_mask`][wsss_blocks.refine.reliable_pseudo_mask]), padding ignored.
5. Losses: ``L_cls`` (multi-label soft margin); ``L_seg`` (½ CE background + ½ CE foreground on ``Y``, logits
   upsampled to the crop with ``align_corners=True``); ``L_aff``
   ([`affinity_from_attention_loss`][wsss_blocks.correspondence.affinity_from_attention_loss], radius 8 on the /16
   grid); ``L_reg`` (Tang et al.'s dense-CRF energy loss, [`dense_energy_loss`][wsss_blocks.losses.dense_energy_loss]);
   ``L_SCD`` ([`self_correspondence_loss`][wsss_blocks.correspondence.self_correspondence_loss] between ``(T, S)`` and
   ``(T', S')``); ``L_ER`` (``mean |↓0.3(T) − T'|`` over channels 1.., gradient-free as released).
   Steps ``0 … cam_iters`` (inclusive): ``L = L_cls + 0·(L_seg + L_reg + L_aff)``; afterwards
   ``L = L_cls + 0.1 L_seg + 0.01 L_reg + 0.1 L_aff + 0.1 L_SCD + 0.1 L_ER``.

The segmentation head is the method's prediction (`TSCDMethod.has_segmentation`; ``seg.source: method``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from wsss_blocks.cam import multiscale_cams, normalize_cams
from wsss_blocks.correspondence import (
    affinity_from_attention_loss,
    equivariant_regularization,
    self_correspondence_loss,
)
from wsss_blocks.losses import balanced_seg_loss, dense_energy_loss
from wsss_blocks.models import SegFormer, param_groups
from wsss_blocks.models.heads import global_pool
from wsss_blocks.ops import boxes_from_mask
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_mask

from . import register_method
from .base import CAMMethod

__all__ = ["TSCDConfig", "TSCDMethod"]


def _min_input_size(encoder: Any) -> int:
    """Smallest image side for which every MiT stage's grid is at least its spatial-reduction kernel."""
    for size in range(1, 4096):
        s = size
        ok = True
        for i in range(1, 5):
            conv = getattr(encoder, f"patch_embed{i}").proj
            k, st, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            s = (s + 2 * pad - k) // st + 1
            sr = getattr(getattr(encoder, f"block{i}")[0].attn, "sr_ratio", 1)
            if s < max(1, sr):
                ok = False
                break
        if ok:
            return size
    return 4096


@dataclass
class TSCDConfig:
    """Arguments of TSCD (defaults = the released VOC setting, SCD ``configs/voc_attn_reg.yaml``).

    Attributes:
        strides: MiT patch-embedding strides (4, 2, 2, 1): last stage at 1/16.
        embed_dim: SegFormer decoder width (256).
        drop_path_rate: MiT stochastic depth (0.1).
        pooling: classifier pooling, ``"gmp"`` (released default) or ``"gap"``.
        attn_symmetric: feed A + Aᵀ to ``attn_proj`` (AFA); TSCD dropped it (False).
        cam_scales: scales of the training CAMs (1, 0.5, 1.5; config ``cam.scales``).
        cam_iters: last classification-only iteration (2000 VOC, ``n_iter <= cam_iters``).
        cls_weight, seg_weight, aff_weight, reg_weight, scd_weight, er_weight: loss weights after ``cam_iters``
            (1.0, 0.1, 0.1, 0.01, 0.1, 0.1; SCD ``dist_train_voc.py`` L353).
        high_threshold, low_threshold: background scores of the reliable pseudo mask (0.55 / 0.35).
        refiner: ``"varm"`` (TSCD) or ``"par"`` (AFA) for the reliable labels.
        refine_num_iter, refine_dilations, refine_scale_factor: 10, (1, 2, 4, 8, 12, 24), 0.5 (the refinement
            runs at half the crop size).
        aff_radius: Chebyshev radius of the affinity pairs on the /16 grid (8).
        scd_view_scale_factor: the SCD view ``x' = ↓s(x)`` (0.3).
        scd_num_samples: N, N×N points per view (40).
        er_grad: give L_ER a gradient through the single-scale CAM of ``x'`` (paper intent); released False
            (inert: both CAMs are no-grad).
        seg_align_corners: upsampling of the seg logits to the crop (TSCD True, AFA False).
        seg_loss_empty_is_zero: a half of the balanced CE with no pixels counts 0 instead of NaN (a fix of the
            released 0/0).
        reg_energy_weight, reg_sigma_rgb, reg_sigma_xy, reg_scale_factor: ``DenseEnergyLoss(1e-7, 15, 100, 0.5)``
            (SCD ``utils/losses.py``).
        cam_pass_runs_decoder: the no-grad CAM passes also run the decoder in train mode, so its BatchNorm
            running statistics see them, as in the release (its ``cam_only`` forward computes ``seg`` too);
            False skips that work.

    The stage-2 masks come from the pseudo-mask chain (``pseudo.refine: varm``, ``pseudo.rule: reliable``: the
    VARM labels the seg head trains on; ``pseudo.rule: argmax`` is the release's ``cam_to_label`` with 0.45).
    """

    strides: tuple[int, int, int, int] = (4, 2, 2, 1)
    embed_dim: int = 256
    drop_path_rate: float = 0.1
    pooling: Literal["gmp", "gap"] = "gmp"
    attn_symmetric: bool = False
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    cam_iters: int = 2000
    cls_weight: float = 1.0
    seg_weight: float = 0.1
    aff_weight: float = 0.1
    reg_weight: float = 0.01
    scd_weight: float = 0.1
    er_weight: float = 0.1
    high_threshold: float = 0.55
    low_threshold: float = 0.35
    refiner: Literal["varm", "par"] = "varm"
    refine_num_iter: int = 10
    refine_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    refine_scale_factor: float = 0.5
    aff_radius: int = 8
    scd_view_scale_factor: float = 0.3
    scd_num_samples: int = 40
    er_grad: bool = False
    seg_align_corners: bool = True
    seg_loss_empty_is_zero: bool = True
    reg_energy_weight: float = 1e-7
    reg_sigma_rgb: float = 15.0
    reg_sigma_xy: float = 100.0
    reg_scale_factor: float = 0.5
    cam_pass_runs_decoder: bool = True


@register_method
class TSCDMethod(CAMMethod):
    """TSCD: end-to-end SegFormer (MiT-B1) with VARM-refined labels, SCD loss and affinity from attention.

    Paper: Xu et al., "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic Segmentation",
    AAAI 2023; network and recipe of Ru et al., "Learning Affinity from Attention" (AFA), CVPR 2022.

    Gradients: the CAM teachers ``T``/``T'`` and the labels ``Y`` carry none (no-grad CAM passes); ``L_SCD``
    reaches the encoder and decoder through the two segmentation forwards only (never the classifier);
    ``L_cls`` trains encoder + classifier; ``L_aff`` the encoder + ``attn_proj``; ``L_seg``/``L_reg`` encoder +
    decoder. Encoder LayerNorms stay fixed through lr 0 (released param groups).

    Shape:
        - batch["image"]: B×3×S×S (S a multiple of 16); batch["image01"]: B×3×S×S; batch["labels"]: B×C;
          batch["valid"]: B×S×S (optional)
        - cam_fn: B×C×S/16×S/16 (ReLU'd raw CAMs); seg_fn: B×(C+1)×S/4×S/4 logits, channel 0 = background

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "tscd", "cam": {"backbone": "mit_tiny", "crop_size": 32,
        ...                                                    "backbone_kwargs": {"sr_ratios": [1, 1, 1, 1]}},
        ...     "method_args": {"embed_dim": 16, "scd_num_samples": 4, "cam_iters": 0}})
        >>> m = TSCDMethod(cfg, cfg.method_config(), 20)
        >>> x01 = torch.rand(2, 3, 32, 32)
        >>> out = m.training_step({"image": x01 - 0.5, "image01": x01, "labels": torch.eye(20)[:2]}, 1, 10)
        >>> sorted(out)[:4], tuple(m.seg_fn(x01).shape)
        (['loss', 'loss_aff', 'loss_cls', 'loss_er'], (2, 21, 8, 8))
    """

    name = "tscd"
    cfg: TSCDConfig
    Config = TSCDConfig
    cam_normalization = "minmax"
    has_segmentation = True
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": None, "pseudo_miou": None, "val_miou": 67.3}
    paper_numbers_by_dataset: ClassVar[dict[str, dict[str, float | None]]] = {
        "voc": {"cam_miou": None, "pseudo_miou": None, "val_miou": 67.3},
        "coco": {"cam_miou": None, "pseudo_miou": None, "val_miou": 40.1},
    }
    paper_source = ("TSCD (AAAI'23) MiT-B1, VOC val 67.3 (test 67.5), COCO val 40.1, multi-scale + flip + CRF "
                    "(as listed in DuPL, CVPR 2024, Table 2). No CAM or pseudo-label number is reported.")

    def __init__(self, run_cfg: Any, method_cfg: TSCDConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        for name in ("cls_weight", "seg_weight", "aff_weight", "reg_weight", "scd_weight", "er_weight"):
            if getattr(c, name) < 0:
                raise ValueError(f"method_args.{name} must be >= 0, got {getattr(c, name)}")
        if not 0 < c.scd_view_scale_factor < 1:
            raise ValueError(f"method_args.scd_view_scale_factor must lie in (0, 1), got {c.scd_view_scale_factor}")
        if c.low_threshold > c.high_threshold:
            raise ValueError(f"method_args.low_threshold must be <= high_threshold, got {c.low_threshold} > "
                             f"{c.high_threshold}")
        cam = run_cfg.cam if run_cfg is not None else None
        enc = cam.backbone if cam is not None else "mit_tiny"
        if not enc.startswith("mit_"):
            raise ValueError(f"TSCD needs a MiT encoder as cam.backbone (mit_b1 released, mit_tiny for tests), "
                             f"got {enc!r}")
        kw = dict(cam.backbone_kwargs) if cam is not None else {}
        kw.setdefault("drop_path_rate", c.drop_path_rate)
        self.net = SegFormer(num_classes + 1, encoder=enc, pretrained=cam.pretrained if cam is not None else None,
                             strides=tuple(c.strides), embed_dim=c.embed_dim, cam_classes=num_classes,
                             pooling=c.pooling, attn_proj=True, encoder_kwargs=kw)
        self.stride = int(self.net.encoder.strides[-1])
        crop = int(cam.crop_size) if cam is not None else None
        if crop is not None and crop % self.stride:
            raise ValueError(f"cam.crop_size must be a multiple of the encoder's output stride {self.stride} "
                             f"(the affinity labels live on the /{self.stride} token grid), got {crop}")
        if crop is not None:
            smallest = int(int(crop * c.scd_view_scale_factor) * min(c.cam_scales))
            need = _min_input_size(self.net.encoder)
            if smallest < need:
                raise ValueError(
                    f"the smallest CAM pass (crop {crop} x scd_view_scale_factor {c.scd_view_scale_factor} x "
                    f"min(cam_scales) "
                    f"{min(c.cam_scales)} = {smallest} px) is too small for the encoder's spatial-reduction "
                    f"convolutions (needs >= {need} px); use a larger cam.crop_size or smaller sr_ratios "
                    f"(cam.backbone_kwargs)")
        if c.refiner == "varm":
            self.refiner: Any = VariationAwareRefine(tuple(c.refine_dilations), c.refine_num_iter)
        else:
            self.refiner = PixelAdaptiveRefine(tuple(c.refine_dilations), c.refine_num_iter)

    # ----------------------------------------------------------------------------------------- network parts
    def _cam_raw(self, images: Tensor) -> Tensor:
        """Raw CAMs (classifier weights applied pixel-wise to the last map), as the release's ``cam_only``."""
        feats = self.net.encoder(images)
        if self.cfg.cam_pass_runs_decoder and self.training:
            self.net.decoder(feats)  # the release computes seg here too: its BN statistics see these passes
        assert self.net.classifier is not None
        return F.conv2d(feats[-1], self.net.classifier.weight)

    def _training_cams(self, images: Tensor) -> Tensor:
        """The release's ``multi_scale_cam`` (SCD ``utils/camutils.py`` L85-147).

        No-grad CAMs at ``cam_scales`` (``int(s·H)`` sizes) upsampled to the input, flip pair fused by max, ReLU,
        summed, per-channel min-max normalised.
        """
        size = (int(images.shape[-2]), int(images.shape[-1]))

        def cam_at_input_size(z: Tensor) -> Tensor:  # upsampled, then ReLU (released order)
            cam = F.interpolate(self._cam_raw(z).float(), size=size, mode="bilinear", align_corners=False)
            return F.relu(cam)

        fused = multiscale_cams(cam_at_input_size, images, tuple(self.cfg.cam_scales), flip=True, reduce="sum",
                                flip_reduce="max", size_rounding="floor")
        assert isinstance(fused, Tensor)
        return normalize_cams(fused, "minmax")

    def _cls_logits(self, last: Tensor) -> Tensor:
        assert self.net.classifier is not None
        return global_pool(last, self.cfg.pooling) @ self.net.classifier.weight.flatten(1).t()

    def _attn_pred(self, attns: list[Tensor]) -> Tensor:
        a = torch.cat(attns[-2:], dim=1) if len(attns) >= 2 else attns[-1]
        if self.cfg.attn_symmetric:
            a = a + a.transpose(-2, -1)
        assert self.net.attn_proj is not None
        return torch.sigmoid(self.net.attn_proj(a))[:, 0]

    # ----------------------------------------------------------------------------------------- training
    @override
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        # AFA/TSCD get_param_groups: encoder 1x (wd), encoder norms lr 0 / wd 0, classifier + attn_proj 10x (wd),
        # decoder 10x (wd) (SCD dist_train_voc.py L254-284).
        return param_groups(self.net, base_lr, weight_decay=weight_decay, head_lr_mult=10.0, head_bias_mult=10.0,
                            bias_lr_mult=1.0, bias_weight_decay=None, norm_lr_mult=0.0, norm_weight_decay=0.0,
                            backbone_prefixes=("encoder.",))

    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        c = self.cfg
        x = batch["image"]
        img01 = batch["image01"].float()
        labels = batch["labels"].float()
        valid = batch.get("valid")
        boxes = boxes_from_mask(valid) if valid is not None else None

        feats, attns = self.net.encoder.forward_with_attention(x)
        seg = self.net.decoder(feats)
        loss_cls = F.multilabel_soft_margin_loss(self._cls_logits(feats[-1]).float(), labels)
        cams = self._training_cams(x)
        attn_pred = self._attn_pred(attns).float()

        x2 = F.interpolate(x, scale_factor=c.scd_view_scale_factor, mode="bilinear", align_corners=True)
        feats2 = self.net.encoder(x2)
        seg2 = self.net.decoder(feats2)
        cams2 = self._training_cams(x2)
        if c.er_grad:
            assert self.net.classifier is not None
            cam2g = F.relu(F.conv2d(feats2[-1], self.net.classifier.weight)).float()
            cam2g = F.interpolate(cam2g, size=cams2.shape[-2:], mode="bilinear", align_corners=False)
            cam2g = cam2g - cam2g.amin(dim=(-2, -1), keepdim=True)
            cam2g = cam2g / (cam2g.amax(dim=(-2, -1), keepdim=True) + 1e-5)
            loss_er = equivariant_regularization(cams, cam2g, skip_first_channel=True)
        else:
            loss_er = equivariant_regularization(cams, cams2, skip_first_channel=True)

        segs = F.interpolate(seg.float(), size=cams.shape[-2:], mode="bilinear", align_corners=c.seg_align_corners)
        # S' is compared with T' (= the CAM of x', the size of ↓0.3(T)), released L327
        segs2 = F.interpolate(seg2.float(), size=cams2.shape[-2:], mode="bilinear", align_corners=True)
        loss_scd = self_correspondence_loss(cams, cams2, segs, segs2, num_samples=c.scd_num_samples)

        y = reliable_pseudo_mask(self.refiner, img01, cams, labels, boxes=boxes, high_threshold=c.high_threshold,
                                 low_threshold=c.low_threshold, scale_factor=c.refine_scale_factor)
        loss_aff = affinity_from_attention_loss(attn_pred, y, radius=c.aff_radius, stride=self.stride)
        loss_seg = balanced_seg_loss(segs, y, empty_is_zero=c.seg_loss_empty_is_zero)
        roi = valid.float() if valid is not None else None
        loss_reg = dense_energy_loss(torch.softmax(segs, dim=1), img01, y, roi,
                                     weight=c.reg_energy_weight, sigma_rgb=c.reg_sigma_rgb, sigma_xy=c.reg_sigma_xy,
                                     scale_factor=c.reg_scale_factor)
        if step <= c.cam_iters:
            loss = c.cls_weight * loss_cls + 0.0 * (loss_seg + loss_reg + loss_aff)
        else:
            loss = (c.cls_weight * loss_cls + c.seg_weight * loss_seg + c.reg_weight * loss_reg
                    + c.aff_weight * loss_aff + c.scd_weight * loss_scd + c.er_weight * loss_er)
        return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_seg": loss_seg.detach(),
                "loss_aff": loss_aff.detach(), "loss_reg": loss_reg.detach(), "loss_scd": loss_scd.detach(),
                "loss_er": loss_er.detach()}

    # ----------------------------------------------------------------------------------------- inference
    def cam_fn(self, images: Tensor) -> Tensor:
        """ReLU'd raw CAMs at stride 16 (the trainer fuses scales/flips; use ``pseudo.flip_reduce: max``)."""
        return F.relu(self._cam_raw(images))

    def seg_fn(self, images: Tensor) -> Tensor:
        """Segmentation logits B×(C+1)×H/4×W/4 (channel 0 = background)."""
        return self.net.decoder(self.net.encoder(images))

    def attention_affinity(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The learned attention affinity ``sigmoid(attn_proj(...))`` (B×N×N) and its h×w token grid.

        The pseudo-mask chain's ``attn_aff`` refiner (AFA ``propagte_aff_cam_with_bkg``) propagates CAMs with it.
        """
        feats, attns = self.net.encoder.forward_with_attention(images)
        return self._attn_pred(attns), (int(feats[-1].shape[-2]), int(feats[-1].shape[-1]))
