"""PMM in the reference trainer: SEAM-style ResNet-38 CAM training + proportional pseudo-masks (PPMG with CoV).

Li, Kuang, Liu, Chen, Zhang, "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation", ICCV 2021
(official code Eli-YiLi/PMM and Eli-YiLi/WSSS_MMSeg).

- **CAM stage** = the released stage A (``PMM:pipeline/train_cam.py``): ResNet-38 (b7 dilation
  2, conv1a/b2 frozen, frozen BN) with the SEAM head — fc8 (K = C + 1 channels, **background first**, behind
  Dropout2d 0.5) and the PCM, whose output ``cam_rv`` refines the detached, normalised, arg-max-suppressed
  CAM. Each batch runs at full size and downscaled ×0.3; the loss is
  ``L_cls + L_minpool + L_er + L_ecr`` (classification on GAP of fc8, PMM's adaptive min-pooling on
  ``cam_rv``, the equivariance L1 between the two scales, and the top-20 % equivariant cross regularisation).
- **CAMs** (`PMMMethod.cam_fn`): the PCM output ``cam_rv`` of the foreground channels
  (``pipeline/infer_multi_scale.py``), multi-scale + flip summed and min-max normalised per class
  (``cam_normalization="minmax"``).
- **Pseudo masks** (`PMMMethod.pseudo_masks`):
  [`wsss_blocks.pseudo_mask.proportional_pseudo_mask`][wsss_blocks.pseudo_mask.proportional_pseudo_mask] — CoV
  smoothing, per-class binary dense CRF foregrounds with the background ``(1 − Ã_c)^11`` and overlaps resolved by each
  pixel's share of its class's CAM mass. ``foreground="threshold"`` replaces the CRF by its initial state (no image
  needed).
- **Segmentation options** (seg-stage keys): ``seg.loss: puf`` with ``seg.loss_args``
  (pretended under-fitting: β = k = 0.5 on VOC, 0.8 on COCO); cyclic pseudo-masks are a seg-stage round
  (see ``docs/trainer_methods.md``).

Not reproduced: the release's stage B/C (CRF rough masks and a ScaleNet-101 retrained on multi-crop tiles)
and its multi-crop inference; the CAMs here are those of the stage-A ResNet-38 (``Eli-YiLi/PMM`` issue #7:
ScaleNet gains ~4 CAM points).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from wsss_blocks.cam import normalize_cams
from wsss_blocks.crf import DenseCRF
from wsss_blocks.losses import adaptive_min_pooling_loss
from wsss_blocks.models import SEAMNet, build_frozen_backbone, is_random_init, load_pretrained, set_bn_eval
from wsss_blocks.models.resnet38 import SEAM_LOAD_REASONS
from wsss_blocks.pseudo_mask import PPMG_CRF, proportional_pseudo_mask

from . import register_method
from .base import CAMMethod

__all__ = ["PMMConfig", "PMMMethod"]


def _max_onehot(x: Tensor) -> Tensor:
    """SEAM ``max_onehot``: zero every foreground channel (1..K−1) below the per-pixel foreground max.

    Channel 0 (background) is kept. Ties keep every maximal channel, as released.
    """
    fg = x[:, 1:]
    fg = fg * (fg == fg.amax(dim=1, keepdim=True)).to(fg.dtype)
    return torch.cat([x[:, :1], fg], dim=1)


@dataclass
class PMMConfig:
    """Arguments of PMM (defaults = the release).

    Attributes:
        frozen: backbone modules without gradient (``resnet38_SEAM.py``: conv1a, b2, b2_1, b2_2).
        freeze_bn: frozen BatchNorm (released).
        b7_dilation: dilation of ResNet-38's b7 (SEAM/PMM 2).
        dropout: Dropout2d rate in front of fc8 (0.5).
        view_scale_factor: scale factor of the second, downscaled view (0.3, ``train_cam.py``).
        min_pool_weight, er_weight, ecr_weight: loss weights (all 1 in the release).
        ecr_topk: fraction of the largest ECR entries averaged (0.2).
        cam_source: ``"pcm"`` (``cam_rv``, released) or ``"fc8"`` (plain CAM) for inference.
        alpha: power of the per-class background in PPMG (11 in run.py stages D/E).
        fg_threshold: CoV threshold t on the CAM (``--cam_thresh`` 0.05).
        cv_scale: CoV scale s (0.3).
        posterior_threshold: threshold on the CRF foreground posterior (``fg_thresh`` 0.5).
        foreground: ``"crf"`` (released per-class binary dense CRF) or ``"threshold"`` (its initial state).
        crf_params: the dense CRF of ``foreground: crf``, as everywhere in the configs: a ``preset`` name plus
            [`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF] arguments (``{preset: pmm-binary}``: 10
            iterations, Gaussian sxy 3 compat 10, bilateral sxy 80 srgb 13 compat 10, probabilities used as given).
        min_exponent: floor of the CoV exponent ``1 − cv`` (``None`` = release, no clamp).
        crf_channel_order: colour order of the image PPMG's CRF sees: ``"bgr"`` (released, ``cv2.imread`` in
            ``pipeline/refine_cam.py``) or ``"rgb"``; it changes 0.1-1.7 % of the mask pixels (the lattice
            approximation of the dense CRF is not symmetric in the channels).
    """

    frozen: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")
    freeze_bn: bool = True
    b7_dilation: int = 2
    dropout: float = 0.5
    view_scale_factor: float = 0.3
    min_pool_weight: float = 1.0
    er_weight: float = 1.0
    ecr_weight: float = 1.0
    ecr_topk: float = 0.2
    cam_source: Literal["pcm", "fc8"] = "pcm"
    alpha: float = 11.0
    fg_threshold: float = 0.05
    cv_scale: float = 0.3
    posterior_threshold: float = 0.5
    foreground: Literal["crf", "threshold"] = "crf"
    crf_params: dict[str, Any] = field(default_factory=lambda: {"preset": PPMG_CRF})
    min_exponent: float | None = None
    crf_channel_order: Literal["bgr", "rgb"] = "bgr"


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@register_method
class PMMMethod(CAMMethod):
    """PMM: SEAM-style ResNet-38 CAM training (stage A) and PPMG pseudo-masks with CoV smoothing.

    Paper: Li et al., "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation", ICCV 2021.
    Release: Eli-YiLi/PMM (CAM, PPMG), Eli-YiLi/WSSS_MMSeg (PUF, cyclic pseudo-masks).

    Shape:
        - batch["image"]: B×3×H×W; batch["labels"]: B×C
        - cam_fn output: B×C×H/8×W/8 (``cam_rv`` foreground channels), non-negative
        - pseudo_masks: B×H×W int64 (0 background, c+1 class c; no ignore label)

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "pmm", "cam": {"backbone": "resnet38d_tiny"},
        ...                        "method_args": {"frozen": ["conv1a"], "foreground": "threshold"}})
        >>> m = PMMMethod(cfg, cfg.method_config(), 20)
        >>> out = m.training_step({"image": torch.randn(2, 3, 64, 64), "labels": torch.eye(20)[:2]}, 0, 10)
        >>> sorted(out)
        ['loss', 'loss_cls', 'loss_ecr', 'loss_er', 'loss_minpool']
        >>> tuple(m.cam_fn(torch.randn(1, 3, 64, 64)).shape)
        (1, 20, 8, 8)
    """

    name = "pmm"
    Config = PMMConfig
    cfg: PMMConfig
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": 53.93, "pseudo_miou": 61.49, "val_miou": 70.0}
    paper_numbers_by_dataset: ClassVar[dict[str, dict[str, float | None]]] = {
        "voc": {"cam_miou": 53.93, "pseudo_miou": 61.49, "val_miou": 70.0},
        "coco": {"cam_miou": None, "pseudo_miou": None, "val_miou": 40.2},
    }
    paper_source = ("PMM (ICCV'21): CAM 53.93 = ResNet-38d multi-crop test (Table 1 via Eli-YiLi/PMM issue #7), "
                    "PPMG 61.49 on VOC *val* (Table 2 via Eli-YiLi/PMM issue #13), val 70.0 = Res2Net-101 PSPNet "
                    "(abstract; ResNet-38 PSPNet 68.5); COCO val 40.2")
    cam_normalization = "minmax"

    def __init__(self, run_cfg: Any, method_cfg: PMMConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        if not 0.0 < c.view_scale_factor < 1.0:
            raise ValueError(f"method_args.view_scale_factor must be in (0, 1), got {c.view_scale_factor}")
        if not 0.0 < c.ecr_topk <= 1.0:
            raise ValueError(f"method_args.ecr_topk must be in (0, 1], got {c.ecr_topk}")
        if c.alpha <= 0:
            raise ValueError(f"method_args.alpha must be > 0, got {c.alpha}")
        cam = run_cfg.cam if run_cfg is not None else None
        bb = build_frozen_backbone(cam.backbone if cam is not None else "resnet38d_tiny", None,
                                   dict(cam.backbone_kwargs) if cam is not None else {}, c.frozen, c.freeze_bn,
                                   b7_dilation=c.b7_dilation)
        self.net = SEAMNet(bb, num_classes, dropout=c.dropout)
        # The release loads its init (resnet38_SEAM.pth: backbone, fc8 and the PCM's f8_3/f8_4/f9) with
        # strict=False into the whole SEAM network (PMM pipeline/train_cam.py:91-97), so all of it is used;
        # an ImageNet ResNet-38 fills the backbone only. init_report lists every key.
        pre = cam.pretrained if cam is not None else None
        self.init_report = None if is_random_init(pre) else load_pretrained(
            self.net, cast(Any, pre), "seam_resnet38", allow_missing=("fc8.", "pcm."), reasons=SEAM_LOAD_REASONS)
        self._crf = DenseCRF.from_config(c.crf_params)
        if c.freeze_bn:
            set_bn_eval(self)

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The loss terms of one batch with their gradients: ``cls``, ``minpool``, ``er``, ``ecr`` (unweighted)."""
        c = self.cfg
        x1 = batch["image"]
        y = batch["labels"].float()
        n, _, H, W = x1.shape
        x2 = F.interpolate(x1, scale_factor=c.view_scale_factor, mode="bilinear", align_corners=True)
        lab = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)[:, :, None, None]

        cam1, rv1 = self.net(x1)
        cam1, rv1 = _up(cam1, (H, W)), _up(rv1, (H, W))
        cls1 = F.multilabel_soft_margin_loss(cam1.mean(dim=(2, 3))[:, 1:], y)
        minp1 = adaptive_min_pooling_loss((rv1 * lab)[:, 1:])
        size2 = (int(x2.shape[-2]), int(x2.shape[-1]))
        cam1 = _up(normalize_cams(cam1, "seam_minmax"), size2) * lab
        rv1 = _up(normalize_cams(rv1, "seam_minmax"), size2) * lab

        cam2, rv2 = self.net(x2)
        cam2, rv2 = _up(cam2, size2), _up(rv2, size2)
        cls2 = F.multilabel_soft_margin_loss(cam2.mean(dim=(2, 3))[:, 1:], y)
        minp2 = adaptive_min_pooling_loss((rv2 * lab)[:, 1:])
        cam2 = normalize_cams(cam2, "seam_minmax") * lab
        rv2 = normalize_cams(rv2, "seam_minmax") * lab

        loss_er = (cam1[:, 1:] - cam2[:, 1:]).abs().mean()
        bg1 = 1.0 - cam1[:, 1:].amax(dim=1, keepdim=True)
        bg2 = 1.0 - cam2[:, 1:].amax(dim=1, keepdim=True)
        t1 = _max_onehot(torch.cat([bg1, cam1[:, 1:]], dim=1).detach())
        t2 = _max_onehot(torch.cat([bg2, cam2[:, 1:]], dim=1).detach())
        k = max(1, int(lab.shape[1] * size2[0] * size2[1] * c.ecr_topk))
        ecr1 = torch.topk((t2 - rv1).abs().reshape(n, -1), k=k, dim=-1).values.mean()
        ecr2 = torch.topk((t1 - rv2).abs().reshape(n, -1), k=k, dim=-1).values.mean()

        return {"cls": (cls1 + cls2) / 2, "minpool": (minp1 + minp2) / 2, "er": loss_er, "ecr": ecr1 + ecr2}

    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        c = self.cfg
        p = self.losses(batch)
        loss = p["cls"] + c.min_pool_weight * p["minpool"] + c.er_weight * p["er"] + c.ecr_weight * p["ecr"]
        return {"loss": loss, "loss_cls": p["cls"].detach(), "loss_minpool": p["minpool"].detach(),
                "loss_er": p["er"].detach(), "loss_ecr": p["ecr"].detach()}

    @override
    def cam_fn(self, images: Tensor) -> Tensor:
        cam, rv = self.net(images)
        out = rv if self.cfg.cam_source == "pcm" else cam
        return F.relu(out[:, 1:])

    @override
    def pseudo_masks(self, cams: Tensor, labels: Tensor, image01: Tensor, cfg: Any) -> Tensor:
        c = self.cfg
        return proportional_pseudo_mask(cams.float().clamp(0.0, 1.0), labels, image01.float().clamp(0.0, 1.0),
                                        alpha=c.alpha, fg_threshold=c.fg_threshold, cv_scale=c.cv_scale,
                                        posterior_threshold=c.posterior_threshold, foreground=c.foreground,
                                        crf=self._crf, min_exponent=c.min_exponent,
                                        crf_channel_order=c.crf_channel_order)
