"""Ready networks for the three WSSS stages, and the "×10 lr for new layers" parameter groups.

* [`CAMNet`][] — backbone + [`CAMHead`][wsss_blocks.models.heads.CAMHead] (the classification network of
  the CAM stage); returns ``logits``, ``cams`` and ``features``.
* [`DeepLabV2`][] — ResNet-101 + ASPP (rates 6/12/18/24, summed) at output stride 8, the standard WSSS
  segmentation model (deeplab-pytorch ``DeepLabV2_ResNet101_MSC``); [`msc_forward`][] is its multi-scale
  input wrapper.
* [`SegFormer`][] — MiT encoder + SegFormer MLP decoder, optionally with the AFA/TSCD CAM classifier
  (GMP) and attention-to-affinity projection, with the released module names.
* [`DeepLabV3Plus`][] — backbone + DeepLab-v3+ decoder (optional segmenter).
* [`param_groups`][] — optimizer parameter groups with learning-rate/weight-decay multipliers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import check_batch, check_positive, check_tensor
from wsss_blocks.cam import _cam_from_features

from .backbones import (
    _TV_RESNETS,
    TinyBackbone,
    _building,
    build_backbone,
    deeplab_pytorch_key_map,
    is_random_init,
    load_pretrained,
    set_bn_eval,
)
from .heads import ASPPv2, CAMHead, DeepLabV3PlusHead, SegFormerHead, global_pool
from .mit import MixTransformer

__all__ = ["CAMNet", "SMAFNet", "DeepLabV2", "msc_forward", "SegFormer", "DeepLabV3Plus", "TinyBackbone",
           "param_groups"]

def _channels(bb: nn.Module) -> tuple[int, ...]:
    return tuple(int(c) for c in cast(Any, bb).out_channels)


def _strides(bb: nn.Module) -> tuple[int, ...]:
    return tuple(int(s) for s in cast(Any, bb).strides)


def _resolve_backbone(backbone: str | nn.Module, pretrained: Any, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(backbone, nn.Module):
        if not is_random_init(pretrained):
            raise ValueError("pretrained= applies to a backbone given by name; load weights into your "
                             "module yourself (load_pretrained) when you pass a module")
        bb = backbone
    elif isinstance(backbone, str):
        bb = build_backbone(backbone, pretrained, **kwargs)
    else:
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    for attr in ("out_channels", "strides"):
        if not hasattr(bb, attr):
            raise TypeError(f"backbone {type(bb).__name__} lacks the '{attr}' attribute of the backbone "
                            "protocol (forward -> list of maps, out_channels, strides)")
    return bb


class CAMNet(nn.Module):
    """Classification network for the CAM stage: backbone + bias-free 1×1 classifier + global pooling.

    Args:
        backbone: a name for [`build_backbone`][wsss_blocks.models.backbones.build_backbone] (``"resnet38d"``,
            ``"resnet50"``, ``"mit_b1"``, ``"timm:..."``, ``"tiny"``) or a module following the backbone
            protocol.
        num_classes: classifier outputs K (VOC: 20; 21 where the method keeps a background channel).
        pretrained: backbone checkpoint: a local file or a weights-registry name (only with a backbone name).
        feature_index: which backbone map feeds the head (default the deepest, ``-1``).
        pooling: ``"gap"`` or ``"gmp"``; see [`CAMHead`][wsss_blocks.models.heads.CAMHead].
        dropout: passed to [`CAMHead`][wsss_blocks.models.heads.CAMHead].
        hidden_channels: passed to [`CAMHead`][wsss_blocks.models.heads.CAMHead].
        init: passed to [`CAMHead`][wsss_blocks.models.heads.CAMHead].
        backbone_kwargs: extra arguments for ``build_backbone`` (e.g. ``output_stride=16``).

    Shape:
        - images: B×3×H×W
        - output: dict ``logits`` B×K, ``cams`` B×K×h×w (raw, with gradient), ``features`` B×D×h×w and
          ``feature_maps`` (the backbone's list)

    Examples:
        >>> net = CAMNet("tiny", num_classes=20)
        >>> out = net(torch.randn(2, 3, 32, 32))
        >>> out["logits"].shape, out["cams"].shape
        (torch.Size([2, 20]), torch.Size([2, 20, 4, 4]))
    """

    def __init__(self, backbone: str | nn.Module = "resnet38d", num_classes: int = 20,
                 pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *, feature_index: int = -1,
                 pooling: Literal["gap", "gmp"] = "gap", dropout: float = 0.0,
                 hidden_channels: int | None = None, init: Literal["xavier", "default"] = "xavier",
                 backbone_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        with _building("CAMNet", backbone, **dict(backbone_kwargs or {})):
            self.backbone = _resolve_backbone(backbone, pretrained, dict(backbone_kwargs or {}))
        n = len(_channels(self.backbone))
        if not -n <= feature_index < n:
            raise ValueError(f"feature_index must index the backbone's {n} maps, got {feature_index}")
        self.feature_index = feature_index
        self.num_classes = num_classes
        self.stride = _strides(self.backbone)[feature_index]
        self.head = CAMHead(_channels(self.backbone)[feature_index], num_classes, pooling=pooling,
                            dropout=dropout, hidden_channels=hidden_channels, init=init)

    @override
    def forward(self, images: Tensor) -> dict[str, Any]:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        maps = self.backbone(images)
        out: dict[str, Any] = dict(self.head(maps[self.feature_index]))
        out["feature_maps"] = maps
        return out

    def cams(self, images: Tensor) -> Tensor:
        """Only the raw CAMs (B×K×h×w); handy as the ``fn`` of [`multiscale_cams`][wsss_blocks.cam.multiscale_cams]."""
        return self.forward(images)["cams"]


class SMAFNet(nn.Module):
    """SMAF's classification network (``bupt-ai-cz/SMAF`` ``models/EPS.py``).

    Backbone + ``cov_feat`` (1×1, no bias) → BN → ReLU → ``fc8`` (1×1, no bias) with C + 1 outputs, background
    last; logits = GAP of the maps.

    ``head="eps"`` is the official EPS head (``halbielee/EPS`` ``network/resnet38_eps.py``: a single bias-free 1×1
    conv ``fc8``), for EPS checkpoints. Initialisation as released: Xavier-uniform ``cov_feat`` and ``fc8``.

    Shape:
        - images: B×3×H×W
        - [`cam_logits`][]: B×(C+1)×h×w (raw, background last); ``forward``: dict ``logits`` B×(C+1),
          ``cams`` B×(C+1)×h×w

    Examples:
        >>> from wsss_blocks.models import ResNet38
        >>> out = SMAFNet(ResNet38.tiny(), num_classes=20)(torch.randn(1, 3, 32, 32))
        >>> out["logits"].shape, out["cams"].shape
        (torch.Size([1, 21]), torch.Size([1, 21, 4, 4]))
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: Literal["smaf", "eps"] = "smaf",
                 head_channels: int = 128):
        super().__init__()
        cin = int(backbone.out_channels[-1])  # type: ignore[index]
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        if head == "smaf":
            self.cov_feat = nn.Conv2d(cin, head_channels, 1, bias=False)
            self.bn = nn.BatchNorm2d(head_channels)
            self.fc8 = nn.Conv2d(head_channels, num_classes + 1, 1, bias=False)
            nn.init.xavier_uniform_(self.cov_feat.weight)
        elif head == "eps":
            self.fc8 = nn.Conv2d(cin, num_classes + 1, 1, bias=False)
        else:
            raise ValueError(f"head must be 'smaf' or 'eps', got {head!r}")
        nn.init.xavier_uniform_(self.fc8.weight)

    def cam_logits(self, images: Tensor) -> Tensor:
        """Raw B×(C+1)×h×w class maps, background last."""
        x = self.backbone(images)[-1]
        if self.head == "smaf":
            x = F.relu(self.bn(self.cov_feat(x)))
        return self.fc8(x)

    @override
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_batch(images, "images")
        cams = self.cam_logits(images)
        return {"logits": cams.float().mean(dim=(2, 3)), "cams": cams}


class DeepLabV2(nn.Module):
    """DeepLab-v2: dilated ResNet-101 (output stride 8) + ASPP (6/12/18/24, summed), as in deeplab-pytorch.

    Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution,
    and Fully Connected CRFs", TPAMI 2018; the WSSS recipe of kazuto1011/deeplab-pytorch
    (``configs/voc12.yaml``: init ``deeplabv1_resnet101-coco.pth``, frozen BN, MSC scales 0.5/0.75).

    The backbone is torchvision's ResNet in ``style="caffe"`` by default (stride in the first 1×1 conv,
    ceil-mode max-pool, full dilation in every block of layers 3-4), which is the layout of the caffe
    ResNet-101 the released init was trained with; ``pretrained`` checkpoints from deeplab-pytorch load via
    the ``deeplab_pytorch`` key map automatically (the COCO init's 91-class ``fc`` is dropped, the ASPP
    stays at its N(0, 0.01) init). torchvision ImageNet weights load too (``style="pytorch"`` matches them
    exactly).

    Args:
        num_classes: classes including background (VOC 21, COCO 81).
        backbone: torchvision ResNet name or a backbone module (its deepest map feeds the ASPP).
        pretrained: local checkpoint for the backbone (torchvision or deeplab-pytorch key names) or for the
            whole network (a deeplab-pytorch DeepLab-v2 with ``aspp.*``).
        rates: ASPP dilation rates.
        style: ``"caffe"`` (released layout) or ``"pytorch"``.
        freeze_bn: BatchNorm in eval mode with frozen affine parameters (released: ``freeze_bn()``).
        output_stride: 8 (released) or 16.
        backbone_kwargs: extra arguments of [`TorchvisionResNet`][wsss_blocks.models.backbones.TorchvisionResNet].

    Shape:
        - images: B×3×H×W (released normalisation: BGR, mean subtracted, no std)
        - output: B×K×⌈H/8⌉×⌈W/8⌉ logits (not upsampled, like the release)

    Examples:
        >>> net = DeepLabV2(num_classes=21, backbone="resnet_tiny")
        >>> net(torch.randn(1, 3, 33, 33)).shape
        torch.Size([1, 21, 5, 5])
    """

    def __init__(self, num_classes: int = 21, backbone: str | nn.Module = "resnet101",
                 pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *,
                 rates: Sequence[int] = (6, 12, 18, 24), style: Literal["caffe", "pytorch"] = "caffe",
                 freeze_bn: bool = True, output_stride: int = 8,
                 backbone_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        if isinstance(backbone, str):
            kw = dict(backbone_kwargs or {})
            if backbone in _TV_RESNETS or backbone == "resnet_tiny":  # style and out_indices: torchvision ResNets
                kw.setdefault("style", style)
                kw.setdefault("out_indices", (4,))
            with _building("DeepLabV2", backbone, output_stride=output_stride, **kw):
                self.backbone = build_backbone(backbone, None, output_stride=output_stride, **kw)
        else:
            self.backbone = _resolve_backbone(backbone, None, {})
        self.head = ASPPv2(_channels(self.backbone)[-1], num_classes, rates)
        self.num_classes = num_classes
        self.freeze_bn = bool(freeze_bn)
        if not is_random_init(pretrained):
            if not isinstance(backbone, str):
                raise ValueError("pretrained= needs a backbone given by name")
            self.load_pretrained(cast(Any, pretrained))
        if self.freeze_bn:
            set_bn_eval(self)

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, Any], strict: bool = True) -> Any:
        """Load torchvision or deeplab-pytorch weights (backbone, and ASPP when the checkpoint has it).

        A checkpoint whose ASPP has another class count is rejected with a clear error.
        """

        def key_map(k: str) -> str | None:
            if k.startswith("fc."):
                return None
            new = deeplab_pytorch_key_map(k, prefix="backbone.", head_prefix="head.")
            if new == k or new is None:  # not a deeplab-pytorch name: torchvision / our own names
                if new is None:
                    return None
                if k.startswith(("backbone.", "head.")):
                    return k
                return "backbone." + k
            return new

        return load_pretrained(self, source, key_map, strict=strict, allow_missing=("head.",))

    @override
    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        if self.freeze_bn:
            set_bn_eval(self)
        return self

    @override
    def forward(self, images: Tensor) -> Tensor:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        return self.head(self.backbone(images)[-1])


def msc_forward(model: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (0.5, 0.75)
                ) -> list[Tensor]:
    """DeepLab-v2 multi-scale inputs (deeplab-pytorch ``MSC``).

    Logits at 1× and at each scale, plus their pixel-wise max.

    Each scaled input is made with bilinear ``F.interpolate(scale_factor=s, align_corners=False)``; the
    scaled logits are bilinearly resized to the 1× logits' size only for the max fusion. Training sums the
    loss over all returned maps (labels nearest-resized to each); testing uses the last one.

    Shape:
        - images: B×3×H×W
        - output: list ``[logits_1x, logits_s1, ..., logits_max]``; each B×K×h_s×w_s, the last at 1× size

    Examples:
        >>> net = DeepLabV2(21, backbone="resnet_tiny")
        >>> [o.shape[-1] for o in msc_forward(net, torch.randn(1, 3, 64, 64))]
        [9, 5, 7, 9]
    """
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    for s in scales:
        check_positive(s, "scales")
    full = model(images)
    pyramid = [model(F.interpolate(images, scale_factor=float(s), mode="bilinear", align_corners=False))
               for s in scales]
    resized = [F.interpolate(p, size=full.shape[2:], mode="bilinear", align_corners=False) for p in pyramid]
    fused = torch.stack([full, *resized]).amax(dim=0)
    return [full, *pyramid, fused]


class SegFormer(nn.Module):
    """MiT encoder + SegFormer MLP decoder; with ``cam_classes`` also the AFA/TSCD classifier and affinity.

    With the defaults this is TSCD/AFA's network (``TSCD_model.py`` / ``wetr/model_attn_aff.py``): MiT-B1 with
    patch strides (4, 2, 2, 1), decoder width 256, a bias-free 1×1 ``classifier`` (512 -> 20) on the
    global-**max**-pooled last map, and ``attn_proj`` (1×1 conv, bias, Kaiming-normal a=√5 fan-out) over the
    raw attention logits of the last two blocks, symmetrised (A + Aᵀ) and passed through a sigmoid. Module
    names (``encoder``, ``decoder``, ``classifier``, ``attn_proj``) equal the release, so AFA/TSCD
    checkpoints load with [`load_pretrained`][wsss_blocks.models.backbones.load_pretrained] and no key map.
    ``SegFormer(cam_classes=None, strides=(4, 2, 2, 2))`` is plain SegFormer.

    Args:
        num_classes: segmentation classes including background (21).
        encoder: MiT name (``"mit_b0"``...``"mit_b5"``, ``"mit_tiny"``) or a
            [`MixTransformer`][wsss_blocks.models.mit.MixTransformer].
        pretrained: local encoder checkpoint (SegFormer ``mit_b*.pth``; its ``head.*`` is ignored).
        strides: MiT patch strides when the encoder is built by name.
        embed_dim: decoder width (256).
        cam_classes: classifier outputs (20 for VOC) or ``None`` for no classifier.
        pooling: ``"gmp"`` (AFA/TSCD default) or ``"gap"``.
        attn_proj: build AFA's attention -> affinity projection (only together with a classifier,
            i.e. when ``cam_classes`` is set).
        encoder_kwargs: extra arguments for the MiT builder.

    Shape:
        - images: B×3×H×W
        - output: dict ``seg`` B×num_classes×H/4×W/4; ``feature_maps`` (4 maps); with a classifier
          ``logits`` B×C and ``cams`` B×C×h×w (raw, with gradient; AFA detaches them for its targets); with
          ``return_attn=True`` ``attns`` (one raw-logit map per block) and, with ``attn_proj``,
          ``attn_pred`` B×N×N in (0, 1) (N = h·w of the last stage)

    Examples:
        >>> net = SegFormer(21, encoder="mit_tiny", embed_dim=16, cam_classes=20)
        >>> out = net(torch.randn(1, 3, 32, 32), return_attn=True)
        >>> out["seg"].shape, out["logits"].shape, out["attn_pred"].shape
        (torch.Size([1, 21, 8, 8]), torch.Size([1, 20]), torch.Size([1, 4, 4]))
    """

    def __init__(self, num_classes: int = 21, encoder: str | MixTransformer = "mit_b1",
                 pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *,
                 strides: Sequence[int] = (4, 2, 2, 1), embed_dim: int = 256, cam_classes: int | None = 20,
                 pooling: Literal["gap", "gmp"] = "gmp", attn_proj: bool = True,
                 encoder_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        if isinstance(encoder, str):
            kw = dict(encoder_kwargs or {})
            kw.setdefault("strides", tuple(strides))
            with _building("SegFormer", encoder, **kw):
                enc = build_backbone(encoder, pretrained, **kw)
            if not isinstance(enc, MixTransformer):
                raise ValueError(f"encoder must name a MiT (mit_b0..mit_b5, mit_tiny), got {encoder!r}")
            self.encoder: MixTransformer = enc
        elif isinstance(encoder, MixTransformer):
            if not is_random_init(pretrained):
                raise ValueError("pretrained= needs an encoder given by name")
            self.encoder = encoder
        else:
            raise TypeError(f"encoder must be a MiT name or a MixTransformer, got {type(encoder).__name__}")
        if pooling not in ("gap", "gmp"):
            raise ValueError(f"pooling must be 'gap' or 'gmp', got {pooling!r}")
        self.num_classes, self.cam_classes, self.pooling = num_classes, cam_classes, pooling
        dims = self.encoder.out_channels
        self.decoder = SegFormerHead(dims, num_classes, embed_dim=embed_dim)
        self.classifier: nn.Conv2d | None = None
        self.attn_proj: nn.Conv2d | None = None
        if cam_classes is not None:
            self.classifier = nn.Conv2d(dims[-1], cam_classes, 1, bias=False)
            if attn_proj:
                n_attn = self.encoder.num_heads[-1] * min(2, self.encoder.depths[-1])
                self.attn_proj = nn.Conv2d(n_attn, 1, 1, bias=True)
                nn.init.kaiming_normal_(self.attn_proj.weight, a=5 ** 0.5, mode="fan_out")

    @override
    def forward(self, images: Tensor, return_attn: bool = False) -> dict[str, Any]:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        want_attn = bool(return_attn)
        if want_attn:
            feats, attns = self.encoder.forward_with_attention(images)
        else:
            feats, attns = self.encoder(images), []
        out: dict[str, Any] = {"seg": self.decoder(feats), "feature_maps": feats}
        if self.classifier is not None:
            pooled = global_pool(feats[-1], self.pooling)
            out["logits"] = pooled @ self.classifier.weight.flatten(1).t()
            out["cams"] = _cam_from_features(feats[-1], self.classifier.weight.flatten(1), None)
        if want_attn:
            out["attns"] = attns
            if self.attn_proj is not None:
                a = torch.cat(attns[-2:], dim=1) if len(attns) >= 2 else attns[-1]
                a = a + a.transpose(-2, -1)
                out["attn_pred"] = torch.sigmoid(self.attn_proj(a))[:, 0]
        return out


class DeepLabV3Plus(nn.Module):
    """Backbone + DeepLab-v3+ decoder (first and last backbone maps), upsampled to the input size.

    Args:
        num_classes: classes including background.
        backbone: name (default torchvision ``"resnet101"``, output stride 16) or backbone module.
        pretrained: local backbone checkpoint.
        output_stride: 16 (rates 6/12/18) or 8 (rates 12/24/36) when ``rates`` is not given.
        rates: ASPP rates.
        backbone_kwargs: extra ``build_backbone`` arguments.

    Shape:
        - images: B×3×H×W
        - output: B×K×H×W

    Examples:
        >>> net = DeepLabV3Plus(21, backbone="tiny", output_stride=8, aspp_channels=16)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 21, 32, 32])
    """

    def __init__(self, num_classes: int = 21, backbone: str | nn.Module = "resnet101",
                 pretrained: str | os.PathLike | Mapping[str, Any] | None = None, *, output_stride: int = 16,
                 rates: Sequence[int] | None = None, aspp_channels: int = 256,
                 backbone_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        kw = dict(backbone_kwargs or {})
        if isinstance(backbone, str):
            kw.setdefault("output_stride", output_stride)
        with _building("DeepLabV3Plus", backbone, **kw):
            self.backbone = _resolve_backbone(backbone, pretrained, kw)
        if rates is None:
            rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.head = DeepLabV3PlusHead(_channels(self.backbone)[-1], _channels(self.backbone)[0],
                                      num_classes, rates, aspp_channels=aspp_channels,
                                      low_level_reduced=max(4, aspp_channels * 48 // 256))

    @override
    def forward(self, images: Tensor) -> Tensor:
        check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# parameter groups
# ----------------------------------------------------------------------------------------------------------
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
               nn.InstanceNorm2d)


def param_groups(model: nn.Module, base_lr: float, *, weight_decay: float = 0.0, head_lr_mult: float = 10.0,
                 head_bias_mult: float | None = None, bias_lr_mult: float = 2.0,
                 bias_weight_decay: float | None = 0.0, norm_lr_mult: float | None = None,
                 norm_weight_decay: float | None = 0.0,
                 backbone_prefixes: Sequence[str] = ("backbone.", "encoder.")) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the "new layers learn ×10 faster" convention.

    Parameters under ``backbone_prefixes`` are the pretrained part; every other trainable parameter is
    "head" (new layers). Parameters with ``requires_grad=False`` (frozen BN, frozen conv1a) are left out.
    Up to five groups, each a dict with ``params``, ``lr``, ``weight_decay``, ``lr_mult`` (for poly
    schedulers: ``lr = base_lr * lr_mult * decay``) and ``name``; empty groups are omitted.

    | group | lr | weight decay |
    |---|---|---|
    | backbone_weight | base_lr | weight_decay |
    | backbone_bias | base_lr·bias_lr_mult | bias_weight_decay (None: same as wd) |
    | backbone_norm | base_lr·norm_lr_mult | norm_weight_decay (None: same as wd) |
    | head_weight | base_lr·head_lr_mult | weight_decay |
    | head_bias | base_lr·head_bias_mult | bias_weight_decay |

    Normalisation parameters (BatchNorm/LayerNorm/GroupNorm weight and bias) of the backbone form their own
    group only when ``norm_lr_mult`` is given; otherwise, like those of the head, they are sorted into the
    weight/bias groups by name.

    Presets: PSA/L2G/EPS/PMM and deeplab-pytorch — the defaults (1×/2×/10×/20×, no decay on biases; their
    BN is frozen, so it is left out). AFA/TSCD (AdamW) — ``head_lr_mult=10, head_bias_mult=10,
    bias_lr_mult=1, bias_weight_decay=None, norm_lr_mult=0, norm_weight_decay=0`` (encoder norms frozen
    through lr 0 as in AFA's ``"norm" in name`` rule; the decoder's BN at 10× with decay).

    Args:
        model: the network (``backbone``/``encoder`` submodule = pretrained part).
        base_lr: base learning rate (> 0).
        weight_decay: decay of weights.
        head_lr_mult: lr multiplier of head weights (10).
        head_bias_mult: lr multiplier of head biases; ``None`` = ``2 * head_lr_mult`` when
            ``bias_lr_mult == 2`` else ``head_lr_mult``.
        bias_lr_mult: lr multiplier of backbone biases (2, caffe convention).
        bias_weight_decay: decay of biases; ``None`` = ``weight_decay``.
        norm_lr_mult: lr multiplier of backbone normalisation parameters; ``None`` = no separate group.
        norm_weight_decay: decay of the backbone norm group; ``None`` = ``weight_decay``.
        backbone_prefixes: name prefixes of the pretrained part.

    Examples:
        >>> net = CAMNet("tiny", num_classes=3)
        >>> [(g["name"], g["lr"]) for g in param_groups(net, 0.01)]
        [('backbone_weight', 0.01), ('backbone_bias', 0.02), ('head_weight', 0.1)]
    """
    check_positive(base_lr, "base_lr")
    check_positive(weight_decay, "weight_decay", strict=False)
    if head_bias_mult is None:
        head_bias_mult = 2.0 * head_lr_mult if bias_lr_mult == 2.0 else head_lr_mult
    bias_wd = weight_decay if bias_weight_decay is None else bias_weight_decay
    norm_wd = weight_decay if norm_weight_decay is None else norm_weight_decay
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    spec = {
        "backbone_weight": (1.0, weight_decay),
        "backbone_bias": (bias_lr_mult, bias_wd),
        "backbone_norm": (1.0 if norm_lr_mult is None else norm_lr_mult, norm_wd),
        "head_weight": (head_lr_mult, weight_decay),
        "head_bias": (head_bias_mult, bias_wd),
    }
    buckets: dict[str, list[nn.Parameter]] = {k: [] for k in spec}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith(tuple(backbone_prefixes)) else "head"
        if part == "backbone" and norm_lr_mult is not None and id(p) in norm_params:
            kind = "norm"
        elif name.endswith("bias"):
            kind = "bias"
        else:
            kind = "weight"
        buckets[f"{part}_{kind}"].append(p)
    groups = []
    for key, params in buckets.items():
        if not params:
            continue
        mult, wd = spec[key]
        groups.append({"params": params, "lr": base_lr * mult, "weight_decay": wd, "lr_mult": mult,
                       "name": key})
    return groups
