"""Plain CAM baseline (Zhou et al., CVPR 2016) with IRN's released training recipe.

IRN (Ahn et al., CVPR 2019, ``jiwoon-ahn/irn``: ``net/resnet50_cam.py``, ``step/train_cam.py``,
``misc/torchutils.py``) trains a ResNet-50 (strides 2, 2, 2, 1: output stride 16) with a bias-free 1×1
classifier on global-average-pooled features and the multi-label soft-margin loss; BatchNorm is frozen
(``FixedBatchNorm``) and the output of stage 2 is detached, so conv1 … layer2 never change. The CAM of
class c is ``relu(w_c · f)`` per scale; the seeds use a constant background score 0.15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks.models import CAMNet, set_bn_eval

from . import register_method
from .base import CAMMethod

__all__ = ["BaselineCAM", "BaselineConfig", "freeze_stages"]


@dataclass
class BaselineConfig:
    """Arguments of the baseline (defaults = IRN release).

    Attributes:
        frozen_stages: leading backbone stages that receive no gradient (IRN detaches after stage 2:
            conv1, layer1 and layer2 are fixed). 0 trains everything (synthetic preset, random init).
        freeze_bn: keep BatchNorm in eval mode with frozen affine parameters (IRN ``FixedBatchNorm``).
        pooling: ``"gap"`` (IRN) or ``"gmp"``.
        head_lr_mult: learning-rate multiplier of the classifier (IRN 10).
    """

    frozen_stages: int = 2
    freeze_bn: bool = True
    pooling: Literal["gap", "gmp"] = "gap"
    head_lr_mult: float = 10.0


def freeze_stages(backbone: nn.Module, n: int) -> int:
    """Set ``requires_grad=False`` on the first ``n`` stages of a backbone; return the number frozen.

    Stages: torchvision ResNets ``[conv1+bn1+layer1, layer2, layer3, layer4]``; backbones with a
    ``stages`` list (``TinyBackbone``) their entries. Other backbones need ``n == 0``.
    """
    if n <= 0:
        return 0
    bb: Any = backbone
    if hasattr(bb, "layer1") and hasattr(bb, "conv1"):
        groups: list[list[nn.Module]] = [[bb.conv1, bb.bn1, bb.layer1], [bb.layer2], [bb.layer3], [bb.layer4]]
    elif isinstance(getattr(bb, "stages", None), nn.ModuleList):
        groups = [[s] for s in bb.stages]
    else:
        raise ValueError(f"frozen_stages={n} is not supported for backbone {type(backbone).__name__}; use 0")
    if n > len(groups):
        raise ValueError(f"frozen_stages={n} exceeds the backbone's {len(groups)} stages")
    for mods in groups[:n]:
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(False)
    return n


@register_method
class BaselineCAM(CAMMethod):
    """Plain CAM: ``CAMNet`` + multi-label soft-margin loss (IRN recipe).

    Paper: Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016; training
    recipe and seed evaluation of Ahn et al., "Weakly Supervised Learning of Instance Segmentation with
    Inter-pixel Relations" (IRN), CVPR 2019.

    Shape:
        - batch["image"]: B×3×H×W; batch["labels"]: B×C
        - cam_fn output: B×C×H/16×W/16 (ResNet-50, output stride 16), non-negative

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"cam": {"backbone": "tiny"},
        ...                        "method_args": {"frozen_stages": 0, "freeze_bn": False}})
        >>> m = BaselineCAM(cfg, cfg.method_config(), 20)
        >>> out = m.training_step({"image": torch.rand(2, 3, 32, 32), "labels": torch.eye(20)[:2]}, 0, 10)
        >>> out["loss"].ndim, tuple(m.cam_fn(torch.rand(1, 3, 32, 32)).shape)
        (0, (1, 20, 4, 4))
    """

    name = "baseline"
    Config = BaselineConfig
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": 48.8, "pseudo_miou": None, "val_miou": None}
    paper_source = ("IRN (CVPR'19) CAM seeds, ResNet-50, VOC train, bg 0.15. IRN's 66.3 pseudo "
                    "/ 63.5 val need its random walk, which this baseline leaves out.")

    def __init__(self, run_cfg: Any, method_cfg: BaselineConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        cam = run_cfg.cam
        self.net = CAMNet(cam.backbone, num_classes, cam.pretrained, pooling=method_cfg.pooling,
                          backbone_kwargs=dict(cam.backbone_kwargs))
        freeze_stages(self.net.backbone, method_cfg.frozen_stages)
        if method_cfg.freeze_bn:
            set_bn_eval(self.net)


    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        logits = self.net(batch["image"])["logits"]
        loss = F.multilabel_soft_margin_loss(logits.float(), batch["labels"].float())
        return {"loss": loss}

    @override
    def cam_fn(self, images: Tensor) -> Tensor:
        return F.relu(self.net.cams(images))

    @override
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from wsss_blocks.models import param_groups

        # IRN: backbone 1x, classifier 10x, weight decay on both (no biases: the classifier is bias-free and
        # BN is frozen); biases of other backbones follow the PSA 2x convention.
        return param_groups(self.net, base_lr, weight_decay=weight_decay, head_lr_mult=self.cfg.head_lr_mult,
                            backbone_prefixes=("backbone.",))
