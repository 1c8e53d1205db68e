"""PPL in the reference trainer: progressive patch learning on a single classification network.

Li, Jie, Wang, Zhou, Wei, Ma, "Weakly Supervised Semantic Segmentation via Progressive Patch Learning", IEEE
TMM 2022 (arXiv 2209.07828). The authors released **no code**: the network and schedule are the
reconstruction of [`wsss_blocks.patch_learning`][wsss_blocks.patch_learning] (tags [S] stated, [F] drawn in a figure,
[I] inferred; see the PPL page of the docs), and the training recipe is an inferred "R50-IRN" profile (IRN's ResNet-50
CAM recipe, every value [I]).

- Network ([`PatchLearning`][wsss_blocks.patch_learning.PatchLearning]): the backbone as an ordered list of stages;
  after stage ``s`` the feature map is cut into a 2×2 grid of patches [F], each patch runs through the
  remaining stages with the same weights, the merged patch features are concatenated with the full-map
  features [S] and one bias-free 1×1 classifier + GAP gives the logits; one multi-label soft-margin loss
  [F "cls loss"].
- ``variant="progressive"`` (default, Fig. 2): one insertion point at a time, moved from low to high by
  [`ProgressiveSchedule`][wsss_blocks.patch_learning.ProgressiveSchedule] — ``"sequential"`` (a curriculum: stage k for
  its share ``stage_epochs[k] / sum(stage_epochs)`` of the CAM-stage steps, one poly schedule over the whole
  run) or ``"cyclic"`` (every stage on every batch, PMG-like, reading B). The classifier
  (width 2D) is shared by all stages. ``variant="explicit"`` (Fig. 5): all insertion points at once, each
  patch branch input detached [S], one classifier of width (m+1)·D.
- CAMs (`PPLMethod.cam_fn`) come from the same graph as training (``cam_source="concat"``,
  the default) at the last stage's insertion point (the stage-n model [F]); ``"global"`` uses the full-map part
  only (an ablation). Images are zero-padded (in normalised space) to a multiple of
  ``output stride × grid`` and the CAM is cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks.models import build_backbone, set_bn_eval
from wsss_blocks.patch_learning import PatchLearning, ProgressiveSchedule, backbone_stages

from . import register_method
from .base import CAMMethod

__all__ = ["PPLConfig", "PPLMethod", "stage_list"]


def stage_list(backbone: nn.Module) -> list[nn.Module]:
    """Ordered stages of a backbone ([`backbone_stages`][wsss_blocks.patch_learning.backbone_stages]).

    ``TinyBackbone.stages``, or ``[stem, layer1..layer4]`` of a ResNet / timm ``stem`` + ``stages`` model.
    """
    st = getattr(backbone, "stages", None)
    if isinstance(st, (nn.ModuleList, nn.Sequential)) and not hasattr(backbone, "stem"):
        return list(st)
    return backbone_stages(backbone)


@dataclass
class PPLConfig:
    """Arguments of PPL (no official code: every default is an inference).

    Attributes:
        variant: ``"progressive"`` (implicit, Fig. 2) or ``"explicit"`` (multi-granularity fusion, Fig. 5).
        insert_points: insertion points s, low → high (the number of stages run on the full map before the
            patch operation). For torchvision ResNets (stages ``[stem, layer1, …, layer4]``) the default
            ``(2, 3, 4)`` = after layer1, layer2, layer3; for ``TinyBackbone`` use 1..N−1.
        grid: g of the g×g patch grid (2×2 drawn at every stage [F]).
        schedule: ``"sequential"`` (default, reading A) or ``"cyclic"`` (every stage every batch, reading B:
            the stage losses are summed into **one** optimizer step per batch, where PMG steps once per stage).
        stage_epochs: relative length of each sequential stage (R50 default 5 epochs per stage);
            stage k runs for the fraction ``stage_epochs[k] / sum(stage_epochs)`` of the CAM-stage steps, so
            with ``cam.epochs = sum(stage_epochs)`` these are epochs.
        stage_loss_weights: per-stage loss weights in cyclic mode (default all 1).
        cam_source: ``"concat"`` (CAM of the fused classifier, the default) or ``"global"``.
        detach_branch_input: gradient cut at each patch branch input; ``None`` = False for progressive, True
            for explicit.
        frozen_stages: leading stages without gradient (0: "train everything at every stage").
        freeze_bn: frozen BatchNorm (IRN default; tiles and full maps share a batch).
        head_lr_mult: learning-rate multiplier of the classifier (IRN 10).
    """

    variant: Literal["progressive", "explicit"] = "progressive"
    insert_points: tuple[int, ...] = (2, 3, 4)
    grid: int = 2
    schedule: Literal["sequential", "cyclic"] = "sequential"
    stage_epochs: tuple[int, ...] = (5, 5, 5)
    stage_loss_weights: tuple[float, ...] | None = None
    cam_source: Literal["concat", "global"] = "concat"
    detach_branch_input: bool | None = None
    frozen_stages: int = 0
    freeze_bn: bool = True
    head_lr_mult: float = 10.0


@register_method
class PPLMethod(CAMMethod):
    """PPL: patch learning with a progressive (or explicit multi-granularity) insertion schedule.

    Paper: Li et al., "Weakly Supervised Semantic Segmentation via Progressive Patch Learning", IEEE TMM 2022
    (no released code).

    The current stage is kept in the buffer ``stage_index`` (saved with the weights), so a restored model
    produces its CAMs at the stage it finished with.

    Shape:
        - batch["image"]: B×3×H×W; batch["labels"]: B×C
        - cam_fn output: B×C×⌈H/R⌉×⌈W/R⌉ (R = the backbone's output stride), non-negative

    Examples:
        >>> import torch
        >>> from wsss_blocks.train.schema import load_run_config
        >>> cfg = load_run_config({"method": "ppl", "cam": {"backbone": "tiny", "backbone_kwargs": {
        ...     "widths": [8, 16, 16, 32], "output_stride": 8}}, "method_args": {"insert_points": [1, 2, 3]}})
        >>> m = PPLMethod(cfg, cfg.method_config(), 20)
        >>> out = m.training_step({"image": torch.randn(2, 3, 32, 32), "labels": torch.eye(20)[:2]}, 9, 10)
        >>> int(out["ppl_stage"]), tuple(m.cam_fn(torch.randn(1, 3, 30, 27)).shape)
        (3, (1, 20, 4, 4))
    """

    name = "ppl"
    Config = PPLConfig
    cfg: PPLConfig
    paper_numbers: ClassVar[dict[str, float | None]] = {"cam_miou": None, "pseudo_miou": None, "val_miou": None}
    paper_numbers_by_dataset: ClassVar[dict[str, dict[str, float | None]]] = {
        "voc": {"cam_miou": None, "pseudo_miou": None, "val_miou": None},
    }
    paper_source = ("PPL (TMM'22) abstract: VOC *test* 69.6 mIoU only; val, CAM and pseudo-mask numbers and COCO "
                    "are not public without the PDF. No released code: the recipe is inferred.")
    cam_normalization = "max"

    stage_index: Tensor

    def __init__(self, run_cfg: Any, method_cfg: PPLConfig, num_classes: int):
        super().__init__(run_cfg, method_cfg, num_classes)
        c = method_cfg
        pts = tuple(int(p) for p in c.insert_points)
        if not pts:
            raise ValueError("method_args.insert_points must name at least one insertion point")
        if list(pts) != sorted(set(pts)) and c.variant == "explicit":
            raise ValueError(f"method_args.insert_points must be increasing and distinct for the explicit variant, "
                             f"got {pts}")
        if c.grid < 1:
            raise ValueError(f"method_args.grid must be >= 1, got {c.grid}")
        if c.variant == "progressive":
            if c.schedule == "sequential" and len(c.stage_epochs) != len(pts):
                raise ValueError(f"method_args.stage_epochs needs one entry per insertion point ({len(pts)}), got "
                                 f"{list(c.stage_epochs)}")
            if c.stage_loss_weights is not None and len(c.stage_loss_weights) != len(pts):
                raise ValueError(f"method_args.stage_loss_weights needs one entry per insertion point ({len(pts)}), "
                                 f"got {list(c.stage_loss_weights)}")
        cam = run_cfg.cam if run_cfg is not None else None
        name = cam.backbone if cam is not None else "tiny"
        bb = build_backbone(name, cam.pretrained if cam is not None else None,
                            **(dict(cam.backbone_kwargs) if cam is not None else {}))
        stages = stage_list(bb)
        if not 0 <= c.frozen_stages <= len(stages):
            raise ValueError(f"method_args.frozen_stages must be in [0, {len(stages)}], got {c.frozen_stages}")
        bad = [q for q in pts if not 0 <= q <= len(stages) - 1]
        if bad:
            raise ValueError(f"method_args.insert_points {list(bad)} out of range for a backbone with {len(stages)} "
                             f"stages: expected 0 <= s <= {len(stages) - 1}")
        for m in stages[:c.frozen_stages]:
            for p in m.parameters():
                p.requires_grad_(False)
        feat_dim = int(bb.out_channels[-1])  # type: ignore[index]
        self.out_stride = int(bb.strides[-1])  # type: ignore[index]
        self.points = pts
        self.pad_multiple = self.out_stride * c.grid
        if c.variant == "explicit":
            self.net = PatchLearning(stages, pts, c.grid, num_classes=num_classes, feat_dim=feat_dim,
                                     detach_branch_input=c.detach_branch_input)
            self.schedule: ProgressiveSchedule | None = None
        else:
            self.net = PatchLearning(stages, pts[0], c.grid, num_classes=num_classes, feat_dim=feat_dim,
                                     detach_branch_input=c.detach_branch_input)
            self.schedule = ProgressiveSchedule(list(pts), epochs_per_stage=list(c.stage_epochs)
                                                if c.schedule == "sequential" else 1, mode=c.schedule)
        self.register_buffer("stage_index", torch.zeros((), dtype=torch.long))
        if c.freeze_bn:
            set_bn_eval(self)


    # ------------------------------------------------------------------ helpers
    def _pad(self, x: Tensor) -> Tensor:
        m = self.pad_multiple
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def stage_at(self, step: int, total_steps: int) -> int:
        """Sequential stage index of ``step`` (the schedule's epochs mapped onto the phase's steps)."""
        assert self.schedule is not None
        e = self.schedule.total_epochs
        epoch = min(e - 1, (max(0, step) * e) // max(1, total_steps))
        return self.schedule.stage_index(epoch)

    def current_points(self) -> tuple[int, ...]:
        """Insertion point(s) used by `cam_fn` (the current / final stage)."""
        if self.cfg.variant == "explicit":
            return self.points
        return (self.points[int(self.stage_index)],)

    # ------------------------------------------------------------------ trainer interface
    @override
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        x = self._pad(batch["image"])
        y = batch["labels"].float()
        if self.cfg.variant == "explicit":
            loss = F.multilabel_soft_margin_loss(self.net(x).logits.float(), y)
            return {"loss": loss}
        if self.cfg.schedule == "sequential":
            k = self.stage_at(step, total_steps)
            self.stage_index.fill_(k)
            out = self.net(x, insert_after=self.points[k])
            loss = F.multilabel_soft_margin_loss(out.logits.float(), y)
            return {"loss": loss, "ppl_stage": torch.tensor(float(self.points[k]))}
        weights = self.cfg.stage_loss_weights or (1.0,) * len(self.points)
        parts = [w * F.multilabel_soft_margin_loss(self.net(x, insert_after=p).logits.float(), y)
                 for p, w in zip(self.points, weights)]
        self.stage_index.fill_(len(self.points) - 1)
        out_d: dict[str, Tensor] = {"loss": torch.stack(parts).sum()}
        for p, v in zip(self.points, parts):
            out_d[f"loss_s{p}"] = v.detach()
        return out_d

    @override
    def cam_fn(self, images: Tensor) -> Tensor:
        H, W = images.shape[-2:]
        out = self.net(self._pad(images), insert_after=self.current_points())
        cams = out.cams if self.cfg.cam_source == "concat" else out.full_cams
        assert cams is not None
        h, w = math.ceil(H / self.out_stride), math.ceil(W / self.out_stride)
        return F.relu(cams[..., :h, :w])

    @override
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        from wsss_blocks.models import param_groups

        return param_groups(self, base_lr, weight_decay=weight_decay, head_lr_mult=self.cfg.head_lr_mult,
                            backbone_prefixes=("net.stages.",))
