"""Backbones by name, and checkpoint loading that reports what it did.

Every backbone in this package follows one small protocol so that heads compose with any of them:

* ``forward(images)`` returns a **list of feature maps**, shallow to deep (B×C_i×h_i×w_i);
* ``out_channels`` (tuple of int) and ``strides`` (tuple of int) describe those maps.

[`build_backbone`][] builds, by name, the library's own ResNet-38 (``"resnet38d"``) and MiT-B0..B5
(``"mit_b1"`` ...), torchvision ResNets (``"resnet50"``, ``"resnet101"``, ... with
``replace_stride_with_dilation`` for output stride 8 or 16), any timm model (``"timm:<name>"``, built with
``features_only=True``) and a tiny CNN for tests (``"tiny"``). ``pretrained=`` takes a local file, a state
dict, or the name of a released initialisation of the weights registry ([`wsss_blocks.models.weights`][],
e.g. ``"resnet50-imagenet"``), which is downloaded and verified into the cache on first use; ``None`` or
``"none"`` means random initialisation.

[`load_pretrained`][] loads a checkpoint file or state dict into a model through an optional key map. It
refuses, with a message naming the keys, a checkpoint from another architecture (too few keys match), from
another class count (shape mismatch) or with missing/unexpected keys (``strict``), and returns a
[`LoadReport`][] listing what was loaded, missing and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, require

from .registry import KeyMap, backbone_entry, get_key_map, register_key_map, registered_backbones
from .state_dict import is_random_init, read_checkpoint

__all__ = [
    "LoadReport",
    "read_state_dict",
    "load_pretrained",
    "deeplab_pytorch_key_map",
    "build_backbone",
    "build_frozen_backbone",
    "available_backbones",
    "TorchvisionResNet",
    "TimmBackbone",
    "TIMM_PRETRAINED",
    "TinyBackbone",
    "set_bn_eval",
]

logger = logging.getLogger(__name__)

def read_state_dict(source: str | os.PathLike | Mapping[str, Any], *, weights_only: bool = True
                    ) -> dict[str, Tensor]:
    """Read a state dict from a local file or a weights-registry name, or pass a mapping through.

    Files: ``.pth``/``.pt``/``.bin``, ``.safetensors``, MXNet ``.params``. The usual containers are unwrapped
    and DataParallel's ``module.`` is stripped.

    A string that is not an existing file but a registry name (``wsss-blocks weights list``) is resolved to its
    verified file in the cache, which is downloaded first if needed
    ([`wsss_blocks.models.weights.resolve_weights`][]); the file is then read by
    [`wsss_blocks.models.state_dict.read_checkpoint`][] (MXNet ``.params`` with NumPy alone, their names kept,
    e.g. ``arg:res4b5_branch2b1_weight``, for the key maps).

    Args:
        source: a local path, a registry name, or an already loaded (possibly nested) dict.
        weights_only: see [`wsss_blocks.models.state_dict.read_checkpoint`][].

    Returns:
        A flat ``{name: tensor}`` dict on the CPU.

    Examples:
        >>> list(read_state_dict({"state_dict": {"module.fc.weight": torch.ones(2, 3)}}))
        ['fc.weight']
    """
    if not isinstance(source, Mapping) and not os.path.isfile(os.fspath(source)):
        from .weights import resolve_weights

        source = resolve_weights(os.fspath(source))
    return read_checkpoint(source, weights_only=weights_only)


# ----------------------------------------------------------------------------------------------------------
# key maps
# ----------------------------------------------------------------------------------------------------------
_DEEPLAB_BRANCH = {"reduce": "1", "conv3x3": "2", "increase": "3"}


def deeplab_pytorch_key_map(key: str, *, prefix: str = "", head_prefix: str | None = None) -> str | None:
    """Map kazuto1011/deeplab-pytorch ResNet-101 keys to torchvision ResNet keys.

    For ``deeplabv1_resnet101-coco.pth`` and ``deeplabv2_resnet101_msc-vocaug-20000.pth``.

    ``layer1.conv1.{conv,bn}`` -> ``conv1``/``bn1``; ``layer{L}.block{B}.{reduce,conv3x3,increase}.{conv,bn}``
    -> ``layer{L-1}.{B-1}.{conv,bn}{1,2,3}``; ``shortcut`` (older releases: ``proj``) -> ``downsample.{0,1}``;
    ``aspp.c{i}`` -> ``{head_prefix}convs.{i}`` (dropped when ``head_prefix`` is None); the DeepLab-v1 ``fc``
    classifier of the COCO init is dropped. A leading ``base.`` (the MSC wrapper) is removed.

    Examples:
        >>> deeplab_pytorch_key_map("base.layer3.block1.reduce.bn.running_mean")
        'layer2.0.bn1.running_mean'
    """
    if key.startswith("base."):
        key = key[len("base."):]
    m = re.fullmatch(r"layer1\.conv1\.(conv|bn)\.(\w+)", key)
    if m:
        return f"{prefix}{'conv1' if m.group(1) == 'conv' else 'bn1'}.{m.group(2)}"
    m = re.fullmatch(r"layer(\d)\.block(\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv|bn)\.(\w+)", key)
    if m:
        layer, block, branch, kind, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5)
        base = f"{prefix}layer{layer - 1}.{block - 1}."
        if branch in ("shortcut", "proj"):
            return base + f"downsample.{0 if kind == 'conv' else 1}.{param}"
        return base + f"{kind}{_DEEPLAB_BRANCH[branch]}.{param}"
    m = re.fullmatch(r"aspp\.(?:stages\.)?c(\d+)\.(weight|bias)", key)
    if m:
        return None if head_prefix is None else f"{head_prefix}convs.{m.group(1)}.{m.group(2)}"
    if key.startswith("fc.") or key.startswith("layer1.pool"):
        return None
    return key


register_key_map("deeplab_pytorch", deeplab_pytorch_key_map)


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What `load_pretrained` did. ``str(report)`` gives a one-paragraph summary, `lines` one line per key.

    Attributes:
        loaded: model keys that received a checkpoint tensor.
        missing: model keys the checkpoint does not have (kept at their initial values).
        unexpected: checkpoint keys (after mapping) the model does not have (ignored).
        dropped: checkpoint keys the key map dropped.
        source: the checkpoint's path (or ``"<state dict>"``).
        renamed: checkpoint key -> model key, for every key the key map kept.
        reasons: key -> why it was dropped, ignored or left missing (from ``load_pretrained(reasons=...)``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    source: str = "<state dict>"
    renamed: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Every key with what happened to it.

        ``loaded  ck -> model``, ``dropped  ck (reason)``, ``ignored  ck (reason)`` and
        ``missing  model_key (reason)``.
        """
        back = {v: k for k, v in self.renamed.items()}
        out = [f"loaded   {back.get(k, k)} -> {k}" for k in self.loaded]
        out += [f"dropped  {k} ({self.reasons.get(k, 'dropped by the key map')})" for k in self.dropped]
        out += [f"ignored  {back.get(k, k)} ({self.reasons.get(k, 'not in the model')})" for k in self.unexpected]
        out += [f"missing  {k} ({self.reasons.get(k, 'kept at its initial value')})" for k in self.missing]
        return out

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.missing:
            parts.append(f"missing in checkpoint ({len(self.missing)}): {few(self.missing)}")
        if self.unexpected:
            parts.append(f"unused checkpoint keys ({len(self.unexpected)}): {few(self.unexpected)}")
        if self.dropped:
            parts.append(f"dropped by key map ({len(self.dropped)})")
        return "; ".join(parts)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key.startswith(p) or re.fullmatch(p, key) is not None for p in patterns)


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    key_map: KeyMap = None,
    *,
    strict: bool = True,
    allow_missing: Sequence[str] = (),
    ignore_unexpected: Sequence[str] = (),
    min_match: float = 0.5,
    weights_only: bool = True,
    reasons: Mapping[str, str] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` through a key map, with clear errors.

    Steps: read and unwrap the checkpoint ([`read_state_dict`][]), rename every key with ``key_map``
    (``None`` result = drop), then check against ``model.state_dict()``:

    1. fewer than ``min_match`` of the model's tensors found -> ``ValueError`` ("another architecture"),
       listing example keys of both sides;
    2. a key present on both sides with different shapes -> ``ValueError`` naming the keys and shapes (a
       classifier whose first dimension differs is reported as a class-count mismatch);
    3. with ``strict``: model keys missing from the checkpoint (other than ``allow_missing`` prefixes/regexes
       and BatchNorm ``num_batches_tracked``) or checkpoint keys the model does not have (other than
       ``ignore_unexpected``) -> ``ValueError``.

    Values are copied in place (cast to the parameter's dtype and device).

    Args:
        model: the module to fill.
        source: local checkpoint path, weights-registry name (see `read_state_dict`) or a (nested)
            state dict.
        key_map: ``None``, a registered name (e.g. ``"mxnet_resnet38"``, ``"deeplab_pytorch"``), a prefix
            dict or a callable; see [`get_key_map`][wsss_blocks.models.registry.get_key_map].
        strict: fail on missing or unexpected keys (after the allow/ignore lists).
        allow_missing: model-key prefixes or regexes that may stay at their initial values (new heads).
        ignore_unexpected: checkpoint-key prefixes or regexes (after mapping) to drop silently, e.g.
            ``("head.",)`` for an ImageNet classifier.
        min_match: minimum fraction of the model's tensors that must be found in the checkpoint.
        weights_only: see [`read_state_dict`][].
        reasons: prefix or regex -> explanation, recorded in `LoadReport.reasons` for every dropped,
            ignored or missing key it matches (checkpoint keys for dropped ones, model keys otherwise).

    Returns:
        A [`LoadReport`][].

    Examples:
        >>> net = torch.nn.Linear(3, 2)
        >>> report = load_pretrained(net, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
        >>> report.loaded
        ['weight', 'bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0.0 <= min_match <= 1.0:
        raise ValueError(f"min_match must lie in [0, 1], got {min_match}")
    src_name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
    raw = read_state_dict(source, weights_only=weights_only)
    fn = get_key_map(key_map)

    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    renamed: dict[str, str] = {}
    for k, v in raw.items():
        new = fn(k)
        if new is None:
            dropped.append(k)
            continue
        if new in mapped:
            raise ValueError(f"key_map maps two checkpoint keys onto the same model key {new!r}")
        mapped[new] = v
        renamed[k] = new

    target = model.state_dict()
    ignorable_missing = [r".*num_batches_tracked", *allow_missing]
    common = [k for k in target if k in mapped]
    n_needed = sum(1 for k in target if not k.endswith("num_batches_tracked"))
    n_found = sum(1 for k in common if not k.endswith("num_batches_tracked"))
    if n_needed and n_found < min_match * n_needed:
        ex_ckpt = list(mapped)[:5] or list(raw)[:5]
        raise ValueError(
            f"checkpoint {src_name} does not fit {type(model).__name__}: only {n_found} of its {n_needed} "
            f"tensors were found (min_match={min_match}); it looks like a checkpoint of another architecture "
            f"or needs a key_map. Checkpoint keys (after mapping) start with {ex_ckpt}; model keys start "
            f"with {[k for k in target][:5]}.")

    bad = [(k, tuple(mapped[k].shape), tuple(target[k].shape)) for k in common
           if mapped[k].shape != target[k].shape]
    if bad:
        lines = []
        for k, s_ck, s_mod in bad[:8]:
            note = ""
            if len(s_ck) == len(s_mod) and s_ck[1:] == s_mod[1:] and s_ck[:1] != s_mod[:1]:
                note = (f" (checkpoint has {s_ck[0]} output channels/classes, model has {s_mod[0]}: "
                        "another class count?)")
            lines.append(f"  {k}: checkpoint {s_ck} vs model {s_mod}{note}")
        raise ValueError(f"checkpoint {src_name} has {len(bad)} tensors whose shape differs from "
                         f"{type(model).__name__}:\n" + "\n".join(lines))

    missing = [k for k in target if k not in mapped]
    unexpected = [k for k in mapped if k not in target]
    real_missing = [k for k in missing if not _matches(k, ignorable_missing)]
    real_unexpected = [k for k in unexpected if not _matches(k, ignore_unexpected)]
    if strict and (real_missing or real_unexpected):
        msg = [f"checkpoint {src_name} does not match {type(model).__name__} exactly (strict=True):"]
        if real_missing:
            msg.append(f"  missing in checkpoint ({len(real_missing)}): {real_missing[:10]}")
        if real_unexpected:
            msg.append(f"  unexpected in checkpoint ({len(real_unexpected)}): {real_unexpected[:10]}")
        msg.append("  Pass allow_missing=/ignore_unexpected= for keys that are meant to differ, a key_map to "
                   "rename, or strict=False.")
        raise ValueError("\n".join(msg))

    with torch.no_grad():
        for k in common:
            target[k].copy_(mapped[k].to(dtype=target[k].dtype))
    why: dict[str, str] = {}
    for pattern, text in (reasons or {}).items():
        for k in (*dropped, *unexpected, *missing):
            if k not in why and _matches(k, (pattern,)):
                why[k] = text
    report = LoadReport(loaded=common, missing=missing, unexpected=unexpected, dropped=dropped,
                        source=src_name, renamed=renamed, reasons=why)
    if missing or unexpected:
        logger.info("load_pretrained: %s", report)
    return report


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_bn_eval(module: nn.Module, freeze_affine: bool = True) -> nn.Module:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics used, not updated).

    With ``freeze_affine``, gradients to their weight and bias stop too. Call it after ``model.train()``.

    This is the "frozen BN" of PSA/SEAM/L2G/EPS (ResNet-38) and of deeplab-pytorch (``freeze_bn``).

    Examples:
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
        >>> _ = set_bn_eval(m)
        >>> m[1].training, m[1].weight.requires_grad
        (False, False)
    """
    for m in module.modules():
        if isinstance(m, _BN_TYPES):
            m.eval()
            if freeze_affine:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------------------------------------
# tiny CNN
# ----------------------------------------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """A few-layer CNN with the backbone protocol, for CPU tests and the synthetic presets.

    Each stage is ``conv3×3 (stride 2 until output_stride is reached, else dilation 2) -> BN -> ReLU ->
    conv3×3 -> BN -> ReLU``. Not from a paper; it stands in for ResNet-38 / ResNet-101 where minutes of CPU
    must suffice.

    Args:
        widths: output channels of each stage.
        output_stride: total stride of the last stage (a power of two, at most ``2**len(widths)``).
        in_channels: image channels.

    Shape:
        - images: B×in_channels×H×W
        - output: list of B×widths[i]×H/strides[i]×W/strides[i]

    Examples:
        >>> bb = TinyBackbone(widths=(8, 16, 32), output_stride=8)
        >>> [f.shape[1:] for f in bb(torch.randn(2, 3, 32, 32))]
        [torch.Size([8, 16, 16]), torch.Size([16, 8, 8]), torch.Size([32, 4, 4])]
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), output_stride: int = 8, in_channels: int = 3):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        if output_stride < 1 or output_stride & (output_stride - 1) or output_stride > 2 ** len(widths):
            raise ValueError(f"output_stride must be a power of two <= 2**len(widths) = {2 ** len(widths)}, "
                             f"got {output_stride}")
        self.in_channels = int(in_channels)
        stages, strides, stride, dilation, cin = [], [], 1, 1, in_channels
        for w in widths:
            if stride < output_stride:
                s, d = 2, 1
                stride *= 2
            else:
                s, d = 1, 2
                dilation = d
            stages.append(nn.Sequential(
                nn.Conv2d(cin, w, 3, s, padding=dilation if s == 1 else 1,
                          dilation=dilation if s == 1 else 1, bias=False),
                nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)))
            strides.append(stride)
            cin = w
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = widths
        self.strides: tuple[int, ...] = tuple(strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        check_batch(images, "images", self.in_channels)
        feats, x = [], images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


# ----------------------------------------------------------------------------------------------------------
# torchvision ResNets
# ----------------------------------------------------------------------------------------------------------
_TV_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
               "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")


@contextlib.contextmanager
def _building(model: str, backbone: object, **settings: Any) -> Iterator[None]:
    """Name the network, the backbone and its settings when a backbone given by name cannot be built for it.

    Every model × backbone combination either builds or raises this error saying why (e.g. ResNet-38 has output
    stride 8 only, MiT encoders 16 or 32, torchvision cannot dilate the BasicBlocks of ResNet-18/34).
    """
    try:
        yield
    except (ValueError, TypeError, NotImplementedError) as exc:
        if not isinstance(backbone, str):
            raise
        opts = ", ".join(f"{k}={v!r}" for k, v in settings.items() if v is not None)
        msg = f"cannot build {model} with backbone {backbone!r}{f' ({opts})' if opts else ''}: {exc}"
        raise (TypeError if isinstance(exc, TypeError) else ValueError)(msg) from exc


def _dilation_flags(output_stride: int) -> list[bool]:
    flags = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
    if output_stride not in flags:
        raise ValueError(f"output_stride must be 8, 16 or 32 for a ResNet, got {output_stride}")
    return flags[output_stride]


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet as a multi-level feature extractor (``conv1 ... layer4``, no ``fc``).

    Module names equal torchvision's, so torchvision ImageNet checkpoints load without a key map (their
    ``fc.*`` keys are ignored). ``output_stride`` 8 or 16 dilates the last stages through torchvision's
    ``replace_stride_with_dilation``.

    ``style="caffe"`` turns the network into the MSRA/caffe ResNet that DeepLab-v2 (deeplab-pytorch, the
    WSSS segmentation standard) uses, so its ``deeplabv1_resnet101-coco.pth`` init computes the same
    function: the stride-2 of each downsampling block moves from the 3×3 to the first 1×1 conv, the stem
    max-pool uses ``ceil_mode=True``, and every block of a dilated stage uses that stage's dilation
    (torchvision keeps the previous dilation in a stage's first block). Load such checkpoints with
    ``key_map="deeplab_pytorch"``.

    Args:
        name: a torchvision ResNet name (``"resnet50"``, ``"resnet101"``, ...).
        output_stride: 8, 16 or 32.
        style: ``"pytorch"`` (torchvision) or ``"caffe"`` (deeplab-pytorch layout).
        out_indices: which of ``(layer1, layer2, layer3, layer4)`` = ``(1, 2, 3, 4)`` to return.
        layers: override the block counts (used by [`tiny`][]).
        width_per_group: override the width (used by [`tiny`][]).

    Shape:
        - images: B×3×H×W
        - output: list of B×C_i×h_i×w_i for each of ``out_indices``

    Examples:
        >>> bb = TorchvisionResNet.tiny(output_stride=8)
        >>> [tuple(f.shape[1:]) for f in bb(torch.randn(1, 3, 32, 32))]
        [(256, 8, 8), (512, 4, 4), (1024, 4, 4), (2048, 4, 4)]
    """

    def __init__(self, name: str = "resnet101", output_stride: int = 8, style: str = "pytorch",
                 out_indices: Sequence[int] = (1, 2, 3, 4), layers: Sequence[int] | None = None,
                 width_per_group: int = 64):
        super().__init__()
        tvm = require("torchvision.models", "train", "torchvision backbones")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in (1, 2, 3, 4) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (1, 2, 3, 4), got {out_indices}")
        dil = _dilation_flags(output_stride)
        if name in ("resnet18", "resnet34") and any(dil):
            raise ValueError(f"{name} is built of BasicBlocks, which torchvision cannot dilate, so its output stride "
                             f"is 32 only (got output_stride={output_stride}); pass output_stride=32 or use a "
                             f"Bottleneck ResNet (resnet50 and deeper)")
        if layers is not None:
            resnet_mod = require("torchvision.models.resnet", "train")
            block = resnet_mod.Bottleneck if name not in ("resnet18", "resnet34") else resnet_mod.BasicBlock
            net = resnet_mod.ResNet(block, list(layers), replace_stride_with_dilation=dil,
                                    width_per_group=width_per_group)
        else:
            if name not in _TV_RESNETS:
                raise ValueError(f"unknown torchvision ResNet {name!r}; known: {list(_TV_RESNETS)}")
            net = getattr(tvm, name)(weights=None, replace_stride_with_dilation=dil)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.name, self.style, self.output_stride = name, style, output_stride
        self.out_indices = out_indices
        self._dilate = tuple(dil)
        if style == "caffe":
            self._to_caffe_style()
        chans, strides, s = [], [], 4
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            last = layer[-1]
            chans.append(last.conv3.out_channels if hasattr(last, "conv3") else last.conv2.out_channels)
            if i > 1 and not dil[i - 2]:
                s *= 2
            strides.append(s)
        self.out_channels: tuple[int, ...] = tuple(chans[i - 1] for i in out_indices)
        self.strides: tuple[int, ...] = tuple(strides[i - 1] for i in out_indices)

    @classmethod
    def tiny(cls, output_stride: int = 8, style: str = "pytorch", **kwargs: Any) -> TorchvisionResNet:
        """A one-block-per-stage, narrow Bottleneck ResNet (same channels 256..2048) for CPU tests."""
        kwargs.setdefault("layers", (1, 1, 1, 1))
        kwargs.setdefault("width_per_group", 8)
        return cls("resnet_tiny", output_stride=output_stride, style=style, **kwargs)

    def _to_caffe_style(self) -> None:
        self.maxpool.ceil_mode = True
        dilation = 1
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            first = layer[0]
            if not hasattr(first, "conv3"):
                raise ValueError("style='caffe' needs a Bottleneck ResNet (resnet50 and deeper)")
            if first.conv2.stride != (1, 1):
                first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
            if i > 0 and self._dilate[i - 1]:
                dilation *= 2
            for blk in layer:
                blk.conv2.dilation = blk.conv2.padding = (dilation, dilation)

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        check_batch(images, "images", self.conv1.in_channels)
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        feats = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = layer(x)
            if i in self.out_indices:
                feats.append(x)
            if i >= max(self.out_indices):
                break
        return feats


# ----------------------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------------------
TIMM_PRETRAINED = "timm"
"""``pretrained`` value that lets timm fetch the model's own pretrained weights (machines with internet)."""


class TimmBackbone(nn.Module):
    """Any timm model behind the backbone protocol: CNN feature maps or ViT token grids.

    How the maps are taken (``mode``):

    * ``"features"``: ``timm.create_model(..., features_only=True)``, the model's multi-level feature maps (CNNs;
      ViT-style models too in timm >= 1.0, which reshapes their tokens itself).
    * ``"tokens"``: the plain model's ``forward_features`` tokens (B×N×D) turned into one B×D×h×w grid with
      `wsss_blocks.cam.tokens_to_map` (the ``num_prefix_tokens`` class/distillation/register tokens dropped), for
      plain transformers whose timm version has no ``features_only`` for them (ViTs, DINOv2 or CLIP image towers in
      timm 0.9); the input is zero-padded right/bottom to a multiple of the patch size first.
    * ``"auto"`` (default): ``"features"``, and ``"tokens"`` when timm refuses ``features_only``.

    Transformers with a patch embedding get ``dynamic_img_size=True`` (and, in ``"features"`` mode,
    ``dynamic_img_pad=True``) where their timm class takes it, so multi-scale CAM inference can feed any image size;
    a model that only takes its fixed ``img_size`` gets its input resized to that size (its maps then have a fixed
    grid, which the CAM inference resizes to the image).

    Weights: a local file or a weights-registry name is read by `read_state_dict` and handed to timm as an in-memory
    state dict (``pretrained_cfg_overlay``), so timm's own key filters apply and timm downloads nothing;
    ``pretrained="timm"`` lets timm download the model's released weights itself (Hugging Face hub), which is
    refused when ``WSSS_BLOCKS_OFFLINE=1``.

    Args:
        name: a timm model name (``timm.list_models()``), optionally with a tag
            (``"vit_small_patch14_dinov2.lvd142m"``).
        pretrained: local checkpoint path, weights-registry name, ``"timm"``, or ``None``/``"none"``.
        output_stride: passed to timm when given (models that support dilation).
        out_indices: feature levels to return (timm's meaning; ``"features"`` mode); default all.
        mode: ``"auto"``, ``"features"`` or ``"tokens"`` (see above).
        **kwargs: further ``timm.create_model`` arguments (e.g. ``img_size`` of a ViT).

    Shape:
        - images: B×3×H×W
        - output: list of feature maps, ``out_channels``/``strides`` from timm's ``feature_info`` (``"tokens"``:
          one map, ``(embed_dim,)`` and ``(patch_size,)``)

    Examples:
        >>> bb = TimmBackbone("resnet18", out_indices=(3, 4))
        >>> bb.out_channels, bb.strides
        ((256, 512), (16, 32))
        >>> vit = TimmBackbone("vit_tiny_patch16_224", img_size=64, mode="tokens")
        >>> vit.out_channels, vit.strides, tuple(vit(torch.rand(1, 3, 40, 72))[-1].shape)
        ((192,), (16,), (1, 192, 3, 5))
    """

    def __init__(self, name: str, pretrained: str | os.PathLike | None = None, *,
                 output_stride: int | None = None, out_indices: Sequence[int] | None = None, mode: str = "auto",
                 **kwargs: Any):
        super().__init__()
        timm = require("timm", "train", "timm backbones")
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"{name!r} is not a timm model name (timm.list_models() lists them)")
        if mode not in ("auto", "features", "tokens"):
            raise ValueError(f"mode must be 'auto', 'features' or 'tokens', got {mode!r}")
        kw: dict[str, Any] = dict(kwargs)
        if output_stride is not None:
            kw["output_stride"] = output_stride
        if isinstance(pretrained, str) and pretrained == TIMM_PRETRAINED:
            from wsss_blocks.hub import OFFLINE_ENV, is_offline

            if is_offline():
                raise ValueError(f"pretrained='timm' lets timm download {name!r}'s weights, but {OFFLINE_ENV}=1 "
                                 f"forbids downloads: save the weights to a file and pass its path (or a weights-"
                                 f"registry name) instead")
            kw["pretrained"] = True
        elif not is_random_init(pretrained):
            sd = read_state_dict(pretrained)  # type: ignore[arg-type]
            kw.update(pretrained=True,
                      pretrained_cfg_overlay=dict(state_dict=sd, source="", file=None, url=None, hf_hub_id=None))
        else:
            kw["pretrained"] = False
        self.name = name
        self._patch: tuple[int, int] = (1, 1)
        self._prefix = 0
        body: Any = None
        if mode in ("auto", "features"):
            fkw = dict(kw, features_only=True)
            if out_indices is not None:
                fkw["out_indices"] = tuple(out_indices)
            try:
                try:
                    body = self._create(timm, name, fkw, pad=True)
                except AssertionError as exc:  # timm's default levels of a transformer with fewer blocks
                    if out_indices is not None or "out of range" not in str(exc):
                        raise
                    body = self._create(timm, name, dict(fkw, out_indices=(-1,)), pad=True)
            except (RuntimeError, NotImplementedError) as exc:  # timm: "features_only not implemented for ..."
                if mode == "features" or "feature" not in str(exc):
                    raise ValueError(f"timm model {name!r} could not be built with features_only=True: {exc}"
                                     ) from exc
        if body is None:
            body = self._create(timm, name, dict(kw, num_classes=0), pad=False)
            pe = getattr(body, "patch_embed", None)
            if pe is None or not hasattr(body, "forward_features"):
                raise ValueError(f"timm model {name!r} has no patch embedding: mode='tokens' is for transformers")
            ps = pe.patch_size
            self._patch = (int(ps[0]), int(ps[1])) if isinstance(ps, (tuple, list)) else (int(ps), int(ps))
            cls_token = getattr(body, "cls_token", None) is not None
            self._prefix = int(getattr(body, "num_prefix_tokens", 1 if cls_token else 0))
            self.mode = "tokens"
            self.out_channels: tuple[int, ...] = (int(body.num_features),)
            self.strides: tuple[int, ...] = (self._patch[0],)
        else:
            self.mode = "features"
            self.out_channels = tuple(body.feature_info.channels())
            self.strides = tuple(body.feature_info.reduction())
        self.body = body
        self._fixed_size = self._fixed_input_size(body)
        # patch-embedding models without their own padding need sizes divisible by their strides
        model = getattr(body, "model", body)
        pe = getattr(model, "patch_embed", None) or getattr(body, "patch_embed", None)
        self._pad_to = 1 if pe is None or getattr(pe, "dynamic_img_pad", False) else int(max(self.strides))

    @staticmethod
    def _create(timm: Any, name: str, kw: dict[str, Any], pad: bool) -> Any:
        """``timm.create_model`` with a dynamic input size (and padding) where the model's class takes them."""
        tries = [dict(kw, dynamic_img_size=True, dynamic_img_pad=True)] if pad else []
        tries += [dict(kw, dynamic_img_size=True), kw]
        for i, k in enumerate(tries):
            try:
                return timm.create_model(name, **k)
            except TypeError as exc:  # the model's class does not take these arguments: try the next set
                if "dynamic_img" not in str(exc) or i == len(tries) - 1:
                    raise
            except RuntimeError as exc:
                if "feature" in str(exc):
                    raise
                raise ValueError(f"checkpoint does not fit timm model {name!r}: {exc}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _fixed_input_size(body: Any) -> tuple[int, int] | None:
        """The ``img_size`` of a patch-embedding model that takes no other input size (else None)."""
        model = getattr(body, "model", body)  # features_only wrappers keep the model inside
        pe = getattr(model, "patch_embed", None) or getattr(body, "patch_embed", None)
        if pe is None or getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_pad", False):
            return None
        size = getattr(pe, "img_size", None)
        if size is None or not getattr(pe, "strict_img_size", True):
            return None
        return (int(size[0]), int(size[1]))

    @override
    def forward(self, images: Tensor) -> list[Tensor]:
        check_batch(images, "images")
        x = images
        if self._fixed_size is not None and tuple(x.shape[-2:]) != self._fixed_size:
            x = torch.nn.functional.interpolate(x, size=self._fixed_size, mode="bilinear", align_corners=False)
        if self.mode == "tokens":
            from wsss_blocks.cam import tokens_to_map

            ph, pw = self._patch
            H, W = x.shape[-2:]
            x = torch.nn.functional.pad(x, (0, (-W) % pw, 0, (-H) % ph))
            tokens = self.body.forward_features(x)
            if tokens.ndim == 4:  # models that keep a grid (B×h×w×D)
                c = self.out_channels[0]
                return [tokens.permute(0, 3, 1, 2) if tokens.shape[1] != c and tokens.shape[-1] == c else tokens]
            return [tokens_to_map(tokens, (int(x.shape[-2]), int(x.shape[-1])), (ph, pw), self._prefix)]
        if self._pad_to > 1 and self._fixed_size is None:
            H, W = x.shape[-2:]
            x = torch.nn.functional.pad(x, (0, (-W) % self._pad_to, 0, (-H) % self._pad_to))
        out = self.body(x)
        if isinstance(out, Mapping):
            out = list(out.values())
        feats = list(out)
        # NHWC-output models (some ViT/Swin variants) are turned into NCHW
        return [f.permute(0, 3, 1, 2) if f.ndim == 4 and f.shape[1] != c and f.shape[-1] == c else f
                for f, c in zip(feats, self.out_channels)]


# ----------------------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------------------
def available_backbones() -> list[str]:
    """Names [`build_backbone`][] understands besides ``"timm:<any timm model>"``."""
    return ["tiny", *registered_backbones(), *_TV_RESNETS, "resnet_tiny"]


def build_backbone(name: str, pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *,
                   output_stride: int | None = None, key_map: KeyMap = None, strict: bool = True,
                   **kwargs: Any) -> nn.Module:
    """Build a backbone by name and optionally fill it from a local checkpoint.

    Names:

    * ``"resnet38d"`` — the wide ResNet-38 of PSA/SEAM/L2G/EPS ([`ResNet38`][wsss_blocks.models.resnet38.ResNet38],
      output stride 8); checkpoints with the converted ``.pth`` names or the MXNet names of
      ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` load automatically. ``"resnet38d_tiny"``: 1/16 width.
    * ``"mit_b0"`` ... ``"mit_b5"`` — SegFormer MiT encoders ([`wsss_blocks.models.mit`][wsss_blocks.models.mit]); the
      SegFormer release's ``mit_b*.pth`` loads directly (its ImageNet ``head.*`` is ignored). ``"mit_tiny"``: tests.
    * ``"resnet18"`` ... ``"resnet101"``, ``"resnext*"`` — torchvision ([`TorchvisionResNet`][],
      ``output_stride`` 8/16/32, ``style="caffe"`` for the DeepLab layout); ``"resnet_tiny"`` for tests.
    * ``"timm:<name>"`` — any timm model ([`TimmBackbone`][]): CNN feature maps, ViT token grids;
      ``pretrained="timm"`` lets timm download the model's own weights (refused with ``WSSS_BLOCKS_OFFLINE=1``).
    * ``"tiny"`` — [`TinyBackbone`][].
    * any name registered with [`register_backbone`][wsss_blocks.models.registry.register_backbone].

    Args:
        name: backbone name (see above).
        pretrained: local checkpoint path, state dict or weights-registry name (downloaded and verified on
            first use, see [`wsss_blocks.models.weights`][]); ``None`` or ``"none"`` = random init.
        output_stride: total stride of the deepest map where the family allows choosing it.
        key_map: extra key map for the checkpoint (see [`load_pretrained`][]).
        strict: strict loading (classifier keys of ImageNet checkpoints are always ignored).
        **kwargs: passed to the backbone class.

    Returns:
        An ``nn.Module`` whose forward returns a list of feature maps and that has ``out_channels`` and
        ``strides``.

    Examples:
        >>> bb = build_backbone("tiny", widths=(8, 16), output_stride=4)
        >>> bb.out_channels, bb.strides
        ((8, 16), (2, 4))
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if is_random_init(pretrained):
        pretrained = None
    ignore: tuple[str, ...] = ()
    module: nn.Module
    entry = backbone_entry(name)
    if entry is not None:
        module = entry.build(output_stride=output_stride, **kwargs)
        if key_map is None:
            key_map = entry.key_map
        ignore = entry.ignore_unexpected
    elif name == "tiny":
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        module = TinyBackbone(**kwargs)
    elif name in _TV_RESNETS or name == "resnet_tiny":
        os_ = 8 if output_stride is None else output_stride
        if name == "resnet_tiny":
            module = TorchvisionResNet.tiny(output_stride=os_, **kwargs)
        else:
            module = TorchvisionResNet(name, output_stride=os_, **kwargs)
        ignore = ("fc.",)
    elif name.startswith("timm:"):
        path = None if pretrained is None or isinstance(pretrained, Mapping) else pretrained
        if isinstance(pretrained, Mapping):
            raise TypeError("timm backbones take pretrained= as a local file path, a registry name or 'timm'")
        return TimmBackbone(name[len("timm:"):], path, output_stride=output_stride, **kwargs)
    else:
        raise ValueError(f"unknown backbone {name!r}; known: {available_backbones()} or 'timm:<timm model>'")
    if pretrained is not None:
        load_pretrained(module, pretrained, key_map, strict=strict, ignore_unexpected=ignore)
    return module



def build_frozen_backbone(name: str, pretrained: str | os.PathLike | Mapping[str, Any] | None,
                          backbone_kwargs: Mapping[str, Any], frozen: Sequence[str], freeze_bn: bool,
                          **native_defaults: Any) -> nn.Module:
    """Build a backbone and freeze the named top-level modules and (optionally) every BatchNorm.

    Families that freeze natively (ResNet-38: ``native_freezing`` in the registry) get ``frozen=`` and
    ``freeze_bn=`` (plus ``native_defaults`` such as ``b7_dilation``) as constructor arguments unless
    ``backbone_kwargs`` sets them; for other backbones each name must be a top-level submodule, whose
    parameters stop receiving gradients, and ``freeze_bn`` applies [`set_bn_eval`][].

    Raises:
        ValueError: a name in ``frozen`` that the backbone does not have.

    Examples:
        >>> bb = build_frozen_backbone("tiny", None, {"widths": (4, 8, 8)}, ("stages",), freeze_bn=False)
        >>> any(p.requires_grad for p in bb.parameters())
        False
    """
    kw = dict(backbone_kwargs)
    entry = backbone_entry(name)
    if entry is not None and entry.native_freezing:
        kw.setdefault("frozen", tuple(frozen))
        kw.setdefault("freeze_bn", bool(freeze_bn))
        for k, v in native_defaults.items():
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
