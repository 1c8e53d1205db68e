"""The method interface of the reference trainer: one [`CAMMethod`][] subclass per paper.

A method owns its networks and losses and tells the generic loop three things: how to compute the
training loss of a batch (`CAMMethod.training_step`), which parameters get which learning rate
(`CAMMethod.param_groups`), and how to turn an image batch into class activation maps at inference
(`CAMMethod.cam_fn`, used with `wsss_blocks.cam.multiscale_cams`). Optionally it trains in several
phases (`CAMMethod.phases`, `CAMMethod.on_phase_start`) or predicts segmentation itself
(`CAMMethod.seg_fn`, TSCD). The pseudo-mask rule is not the method's: the config's ``pseudo`` chain
(post steps, refiner, rule; `wsss_blocks.train.pipeline`) turns any method's CAMs into masks.

Everything else (data, optimizer, poly schedule, AMP, DDP, checkpoints, logging) is the loop's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsss_blocks._checks import check_int
from wsss_blocks.models import set_bn_eval

__all__ = ["CAMMethod", "PhaseContext", "NoConfig"]


@dataclass
class NoConfig:
    """Method-specific arguments of a method that has none."""


@dataclass
class PhaseContext:
    """What [`CAMMethod.on_phase_start`][] gets to know about the run.

    Attributes:
        phase: the phase's name (an entry of `CAMMethod.phases`).
        index: its position in `CAMMethod.phases`.
        total_steps: the number of optimizer steps this phase will run.
        out_dir: the CAM stage's output folder (write phase artefacts here, atomically).
        device: the device the method lives on.
        resuming: True when the loop re-enters an already started phase to restore a checkpoint; the
            hook must then only rebuild structure (the checkpoint's weights are loaded right after).
        dataset: the (un-augmented) training dataset, for methods that precompute something over it.
    """

    phase: str
    index: int
    total_steps: int
    out_dir: Path
    device: torch.device
    resuming: bool = False
    dataset: Any = None


class CAMMethod(nn.Module):
    """Base class of a WSSS method in the reference trainer (subclass it and register it).

    Attributes:
        name: registry name (``"baseline"``, ``"l2g"``, ...).
        Config: dataclass of the method's own arguments; its defaults are the released values. The run
            config's ``method_args`` mapping is validated against it (unknown keys are rejected).
        paper_numbers: the paper's reported numbers, keys ``cam_miou``, ``pseudo_miou``, ``val_miou``
            (``None`` where not reported), for the final table of
            [`wsss_blocks.train.reproduce`][wsss_blocks.train.reproduce.reproduce].
        paper_source: one line saying where ``paper_numbers`` come from (paper table, split, backbone).
        phases: names of the training phases, run in order, each with a fresh optimizer and poly
            schedule (SMAF: ``("eps", "self_train")``). Default one phase ``("cam",)``. A method whose phases
            depend on its arguments sets it on the instance in ``__init__`` (PMM).
        cam_normalization: ``"max"`` (IRN) or ``"minmax"`` (ToCo/AFA) normalisation of the fused CAMs
            before the threshold sweep and the pseudo-mask chain.
        has_segmentation: True if `seg_fn` predicts segmentation (TSCD); the segmentation stage then
            may evaluate the method directly (``seg.source: method``) instead of training DeepLab.

    Constructor: ``__init__(run_cfg, method_cfg, num_classes)`` — ``run_cfg`` is the whole
    [`RunConfig`][wsss_blocks.train.schema.RunConfig] (read ``run_cfg.model``, ``run_cfg.data`` ...),
    ``method_cfg`` an instance of `Config`, ``num_classes`` the foreground class count C.

    Tensor conventions (the Conventions page of the docs): a batch is a dict with ``image`` (B×3×H×W,
    normalised), ``image01`` (B×3×H×W in [0, 1]), ``labels`` (B×C multi-hot float), ``index`` (B int64 dataset
    indices), ``name`` (list of str) and, when the data config names a saliency folder, ``saliency``
    (B×1×H×W in [0, 1]).
    Training batches never contain ground-truth masks.

    Examples:
        >>> from dataclasses import dataclass
        >>> import torch.nn.functional as F
        >>> class Tiny(CAMMethod):
        ...     name = "tiny_example"
        ...     def __init__(self, run_cfg, method_cfg, num_classes):
        ...         super().__init__(run_cfg, method_cfg, num_classes)
        ...         self.net = nn.Conv2d(3, num_classes, 1)
        ...     def training_step(self, batch, step, total_steps):
        ...         logits = self.net(batch["image"]).mean((2, 3))
        ...         return {"loss": F.multilabel_soft_margin_loss(logits, batch["labels"])}
        ...     def cam_fn(self, images):
        ...         return F.relu(self.net(images))
        >>> m = Tiny(None, NoConfig(), 3)
        >>> out = m.training_step({"image": torch.rand(2, 3, 8, 8), "labels": torch.ones(2, 3)}, 0, 1)
        >>> sorted(out), m.cam_fn(torch.rand(1, 3, 8, 8)).shape
        (['loss'], torch.Size([1, 3, 8, 8]))
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    paper_numbers: ClassVar[dict[str, float | None]] = {}
    paper_source: ClassVar[str] = ""
    phases: tuple[str, ...] = ("cam",)
    cam_normalization: ClassVar[str] = "max"
    has_segmentation: ClassVar[bool] = False

    def __init__(self, run_cfg: Any, method_cfg: Any, num_classes: int):
        super().__init__()
        check_int(num_classes, "num_classes", minimum=1)
        if not isinstance(method_cfg, self.Config):
            raise TypeError(f"method_cfg of {type(self).__name__} must be a {self.Config.__name__}, "
                            f"got {type(method_cfg).__name__}")
        pre = getattr(getattr(run_cfg, "cam", None), "pretrained", None)
        if pre == "synthetic":
            raise ValueError("cam.pretrained is 'synthetic' (a backbone pretrained on synthetic data, made and cached "
                             "on first use): build the method with wsss_blocks.train.cam_stage.build_method, or pass "
                             "wsss_blocks.train.synthetic_pretrain.resolve_synthetic_pretrained(cfg)")
        self.run_cfg: Any = run_cfg
        self.cfg: Any = method_cfg
        self.num_classes = num_classes

    @property
    def freeze_bn(self) -> bool:
        """Whether every BatchNorm stays in eval mode with frozen affine parameters (``cfg.freeze_bn``)."""
        return bool(getattr(self.cfg, "freeze_bn", False))

    def train(self, mode: bool = True) -> CAMMethod:
        """Set train/eval mode, keeping BatchNorm frozen with [`freeze_bn`][].

        With [`freeze_bn`][] every BatchNorm stays in eval mode (running statistics used, not updated) with
        frozen affine parameters, the "frozen BN" of PSA/SEAM/IRN.
        """
        super().train(mode)
        if self.freeze_bn:
            set_bn_eval(self)
        return self

    # ------------------------------------------------------------------ required
    def training_step(self, batch: dict[str, Any], step: int, total_steps: int) -> dict[str, Tensor]:
        """Loss of one batch. ``step`` counts optimizer steps within the current phase (0-based).

        Returns a dict that must contain ``"loss"`` (scalar tensor with gradient); every other scalar
        entry is logged (detach them). Called in train mode, under autocast when AMP is on.
        """
        raise NotImplementedError

    def cam_fn(self, images: Tensor) -> Tensor:
        """Non-negative B×C×h×w CAMs of (normalised) images, for inference and pseudo-mask generation.

        Called in eval mode under ``torch.no_grad``, possibly on a flipped and rescaled batch of 2B
        images (see [`wsss_blocks.cam.multiscale_cams`][wsss_blocks.cam.multiscale_cams]). Apply the method's per-scale
        ReLU here.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ optional
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (each with ``params``, ``lr``, ``weight_decay``, ``lr_mult``).

        The default applies [`wsss_blocks.models.param_groups`][wsss_blocks.models.networks.param_groups] with the
        PSA/IRN convention (pretrained backbone 1×, backbone biases 2×, new layers 10×/20×); every submodule named
        ``backbone`` or ``encoder`` (at any depth) counts as pretrained. The poly schedule multiplies each
        group's ``lr_mult`` by ``base_lr * (1 - step/total) ** power``.
        """
        from wsss_blocks.models import param_groups

        prefixes = tuple(f"{n}." for n, _ in self.named_modules()
                         if n and n.rsplit(".", 1)[-1] in ("backbone", "encoder"))
        return param_groups(self, base_lr, weight_decay=weight_decay, backbone_prefixes=prefixes or ("backbone.",))

    def phase_steps(self, phase: str, default_steps: int) -> int:
        """Optimizer steps of ``phase``; default: the CAM stage's ``steps`` for every phase.

        ``default_steps`` is computed from [`CAMMethod.phase_optim`][]'s ``steps`` / ``epochs`` / ``batch_size``.
        """
        return default_steps

    def phase_optim(self, phase: str, optim: Any) -> Any:
        """The optimizer and schedule settings of ``phase`` (an ``OptimConfig``); default: the ``cam`` section.

        A method whose phases train different networks returns a modified copy (``dataclasses.replace``), e.g.
        PMM's stage C with its own batch size, epochs and learning rate.
        """
        return optim

    def phase_dataset(self, phase: str, base: Any, default: Any) -> Any:
        """The training dataset of ``phase``, called after [`CAMMethod.on_phase_start`][]; default: ``default``.

        ``base`` is the un-augmented training split, ``default`` the CAM stage's augmented dataset
        (`wsss_blocks.train.datasets.AugmentedDataset`); a replacement must be indexed like it, by ``(epoch,
        index)`` over the same images, and give the same keys (PMM's stage C: tiles with re-derived labels).
        """
        return default

    def infer_cams(self, images: Tensor, labels: Tensor) -> Tensor | None:
        """The method's own CAM inference, or ``None`` for the default (multi-scale + flip [`CAMMethod.cam_fn`][]).

        Args:
            images: B×3×H×W normalised images.
            labels: B×C multi-hot labels.

        Returns:
            B×C×H×W CAMs at the image size, already normalised (``pseudo.scales``/``flip``/``reduce`` and
            `CAMMethod.cam_normalization` are then not applied), or ``None``. PMM's multi-crop inference is one.
        """
        return None

    @classmethod
    def phases_for(cls, method_cfg: Any) -> tuple[str, ...]:
        """The phases a method with arguments ``method_cfg`` trains, without building it; default `phases`."""
        return tuple(cls.phases)

    @classmethod
    def uses_cam_backbone(cls, method_cfg: Any) -> bool:
        """Whether the method builds the ``cam.backbone`` network (and so needs ``cam.pretrained``); default yes."""
        return True

    @classmethod
    def extra_weights(cls, method_cfg: Any) -> list[tuple[str, str | None, str]]:
        """Initialisations the method loads besides ``cam.pretrained``: ``(field, weights, backbone)`` triples.

        `wsss_blocks.models.weights.check_run_weights` fetches and verifies them before the first step, like
        ``cam.pretrained`` (``field`` names the ``method_args`` key in its messages).
        """
        return []

    def on_phase_start(self, ctx: PhaseContext) -> None:
        """Hook run before each phase's optimizer is built (e.g. freeze a teacher, build a student).

        Must be deterministic and must only build structure when ``ctx.resuming`` is True (the loop
        calls it for every phase up to the resumed one, then loads the checkpoint's weights).
        """

    def seg_fn(self, images: Tensor) -> Tensor:
        """Segmentation logits B×(C+1)×h×w, channel 0 = background (only if `has_segmentation`)."""
        raise NotImplementedError(f"method {self.name!r} does not predict segmentation")

    # ------------------------------------------------------------------ helpers
    @classmethod
    def make_config(cls, args: Mapping[str, Any] | None = None) -> Any:
        """Validate a ``method_args`` mapping against `Config` (unknown keys -> ConfigError)."""
        from wsss_blocks.train.config import from_dict

        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        return from_dict(cls.Config, dict(args or {}), path="method_args")

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (e.g. a progressive schedule's position); default none."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what [`extra_state_for_checkpoint`][] returned."""
