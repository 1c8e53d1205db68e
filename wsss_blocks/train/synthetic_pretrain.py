"""Pretrained backbones for synthetic data: the stand-in for ImageNet weights (``pretrained: synthetic``).

Every published WSSS method starts its CAM network from ImageNet weights (and its segmentation network from
ImageNet or COCO weights); a randomly initialised network that sees a few hundred images behaves differently
(it under-fits the targets that local views, patches or multi-scale fusion hand it). On synthetic data the
analogue is a backbone pretrained once as a **multi-label classifier on a disjoint synthetic set**: the run's
generator settings (image size, classes, objects per image, ``body_evidence``) with another data seed
(``data.synthetic.pretrain.seed``) and more images. Its classifier is thrown away, as ImageNet's is.

`pretrain_synthetic_backbone` trains it (global average pooling + a linear classifier, multi-label soft-margin
loss, the family's ImageNet optimiser — SGD for the CNNs, AdamW for MiT, `optimizer_settings` — with a short
warm-up and a poly schedule, random crops and flips) and caches the backbone's weights in
``<cache>/synthetic_pretrained/<backbone>_<key>.pt`` (atomic write, with a ``.json`` record of the settings,
the held-out accuracy and the time), keyed by everything that changes them; a second call returns the cached
file. `resolve_synthetic_pretrained` replaces the value ``synthetic`` of ``cam.pretrained`` /
``seg.pretrained`` by that file, so every network builder loads it like any other checkpoint.

Backbones are pretrained undilated, as ImageNet classifiers are, and load into any output stride: the
``output_stride`` keyword is dropped (a ``tiny`` backbone is pretrained at stride ``2 ** len(widths)``, a
torchvision ResNet at 32), so a CAM network at stride 4 and a DeepLab at stride 8 with the same widths share
one file. Other keywords (widths, MiT ``embed_dims`` and ``strides``) are part of the architecture and of the key.

Example (CPU, seconds; the presets use 2,000 images and 600 steps, about a minute on one core):
    >>> import tempfile
    >>> from wsss_blocks.train.schema import load_run_config
    >>> cfg = load_run_config("baseline_synthetic", [
    ...     f"data.synthetic.cache_dir={tempfile.mkdtemp()}", "data.synthetic.image_size=32",
    ...     "data.synthetic.pretrain.num_images=16", "data.synthetic.pretrain.num_eval=4",
    ...     "data.synthetic.pretrain.steps=2", "data.synthetic.pretrain.batch_size=4", "runtime.progress=false"])
    >>> cfg.cam.pretrained
    'synthetic'
    >>> resolve_synthetic_pretrained(cfg).cam.pretrained.endswith(".pt")
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.data.io import atomic_write
from wsss_blocks.data.normalization import Normalization, data_normalization, normalize_images

from .config import ConfigError
from .distributed import DistEnv, barrier
from .paths import absolute, default_cache_dir
from .reporting import progress_bar
from .schema import SYNTHETIC_PRETRAINED, RunConfig, SyntheticDataConfig

__all__ = ["PRETRAIN_VERSION", "optimizer_settings", "pretrain_key", "pretrain_synthetic_backbone",
           "pretrained_path", "resolve_synthetic_pretrained", "synthetic_backbone_weights"]

PRETRAIN_VERSION = 2
"""Bumped whenever the pretraining procedure changes (part of the cache key)."""

_TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "resnet_tiny")
_RESNET38 = ("resnet38d", "resnet38", "resnet38d_tiny", "wide_resnet38")
# trainer-only keywords that freeze parts of a backbone: not part of what is pretrained
_NOT_ARCHITECTURE = ("output_stride", "frozen", "freeze_bn")


def _plain_kwargs(backbone: str, backbone_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture keywords of the backbone, undilated (the classifier that is pretrained)."""
    if backbone.startswith("timm:") or not (backbone in ("tiny", *_TORCHVISION, *_RESNET38)
                                           or backbone.startswith("mit_")):
        raise ConfigError(f"pretrained: {SYNTHETIC_PRETRAINED!r} supports the library's backbones (tiny, resnet38d*, "
                          f"mit_*, torchvision ResNets), got {backbone!r}")
    kw = {k: v for k, v in backbone_kwargs.items() if k not in _NOT_ARCHITECTURE}
    if backbone in _RESNET38:  # the release freezes conv1a and BatchNorm of *pretrained* weights: train them here
        kw.update(frozen=[], freeze_bn=False)
    if backbone == "tiny":
        kw["output_stride"] = 2 ** len(kw.get("widths", (16, 32, 64)))
    elif backbone in _TORCHVISION:
        kw["output_stride"] = 32
    return kw


def optimizer_settings(backbone: str, pretrain: Any) -> tuple[str, float, float]:
    """``(optimizer, lr, weight_decay)`` of the pretraining: the family's ImageNet recipe unless set.

    ``optimizer: auto`` is SGD (lr 0.1, weight decay 1e-4; torchvision's ResNet recipe) for the CNNs and AdamW
    (lr 2e-3, weight decay 0.05; SegFormer's MiT recipe) for MiT; ``lr`` / ``weight_decay`` left ``None`` take
    that optimizer's value.

    Examples:
        >>> from wsss_blocks.train.schema import SyntheticPretrainConfig
        >>> pre = SyntheticPretrainConfig()
        >>> optimizer_settings("tiny", pre), optimizer_settings("mit_tiny", pre)
        (('sgd', 0.1, 0.0001), ('adamw', 0.002, 0.05))
    """
    opt = pretrain.optimizer if pretrain.optimizer != "auto" else ("adamw" if backbone.startswith("mit_") else "sgd")
    lr = pretrain.lr if pretrain.lr is not None else (0.1 if opt == "sgd" else 2e-3)
    wd = pretrain.weight_decay if pretrain.weight_decay is not None else (1e-4 if opt == "sgd" else 0.05)
    return opt, float(lr), float(wd)


def pretrain_key(backbone: str, backbone_kwargs: Mapping[str, Any], synthetic: SyntheticDataConfig,
                 normalize: Normalization = "imagenet") -> dict[str, Any]:
    """Everything the pretrained weights depend on (their cache key), as a JSON-able dict."""
    p = synthetic.pretrain
    norm: Any = normalize if isinstance(normalize, str) else [list(map(float, v)) for v in normalize]
    opt, lr, wd = optimizer_settings(backbone, p)
    return {"version": PRETRAIN_VERSION, "backbone": backbone,
            "backbone_kwargs": json.loads(json.dumps(_plain_kwargs(backbone, backbone_kwargs))),
            "image_size": synthetic.image_size, "num_classes": synthetic.num_classes,
            "max_objects": synthetic.max_objects, "body_evidence": synthetic.body_evidence,
            "normalize": norm, **dataclasses.asdict(p), "optimizer": opt, "lr": lr, "weight_decay": wd}


def pretrained_path(key: Mapping[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of the weights with settings ``key`` (`pretrain_key`)."""
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    base = absolute(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "synthetic_pretrained" / f"{str(key['backbone']).replace(':', '_')}_{tag}.pt"


def _cached(path: Path, key: Mapping[str, Any]) -> bool:
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("key") == json.loads(json.dumps(key))
    except (OSError, ValueError):
        return False


def _load_images(root: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    from wsss_blocks.data import VOCSegmentation

    ds = VOCSegmentation(root, split, labels_file="cls_labels.npy", return_mask=False)
    samples = [ds[i] for i in range(len(ds))]
    images = torch.stack([(s["image"] * 255).round().to(torch.uint8) for s in samples])
    labels = torch.stack([s["labels"][:num_classes] for s in samples]).float()
    return images, labels


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crops of the images padded by 1/8 of their side (reflection) and random horizontal flips."""
    b, _, h, w = images.shape
    pad = max(1, h // 8)
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    flip = (torch.rand(b, generator=gen) < 0.5).tolist()
    out = [x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)]
    return torch.stack([o.flip(-1) if f else o for o, f in zip(out, flip)])


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(int(backbone.out_channels[-1]), num_classes)  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def pretrain_synthetic_backbone(backbone: str, backbone_kwargs: Mapping[str, Any] | None = None,
                                synthetic: SyntheticDataConfig | None = None, *,
                                normalize: Normalization = "imagenet", progress: bool = True) -> Path:
    """Pretrain ``backbone`` as a multi-label classifier on a disjoint synthetic set; return the cached weights.

    The pretraining set is `wsss_blocks.data.make_synthetic_voc` with ``synthetic``'s generator settings,
    ``synthetic.pretrain.seed`` and ``num_images + num_eval`` images (cached next to the run's data); the
    network is the backbone (undilated, see the module docstring), global average pooling and a linear layer,
    trained for ``pretrain.steps`` steps (`optimizer_settings`; 5 % linear warm-up, then poly 0.9) on random crops
    and flips, seeded by ``pretrain.seed``. The file holds the backbone's ``state_dict`` (under ``"state_dict"``); a
    ``.json`` next to it records the key, the held-out exact-match accuracy and mean per-class accuracy, and the
    seconds.

    Args:
        backbone: a library backbone name (``tiny``, ``resnet38d_tiny``, ``mit_tiny``, torchvision ResNets).
        backbone_kwargs: its keywords (``output_stride``, ``frozen``, ``freeze_bn`` are ignored).
        synthetic: generator, pretraining and cache settings (default `SyntheticDataConfig()`).
        normalize: the input normalisation of the networks that will load the weights.
        progress: show a progress bar.

    Returns:
        Path of the ``.pt`` file (reused when it exists with the same key).

    Raises:
        ConfigError: a backbone outside the supported families, or ``pretrain.seed`` equal to the data seed.
    """
    from wsss_blocks.data import make_synthetic_voc
    from wsss_blocks.models import build_backbone

    syn = synthetic if synthetic is not None else SyntheticDataConfig()
    p = syn.pretrain
    if p.seed == syn.seed:
        raise ConfigError(f"the pretraining seed must differ from the data seed (disjoint sets), both are {syn.seed}")
    key = pretrain_key(backbone, dict(backbone_kwargs or {}), syn, normalize)
    path = pretrained_path(key, syn.cache_dir)
    if _cached(path, key):
        return path
    t0 = time.time()
    base = absolute(syn.cache_dir) if syn.cache_dir else default_cache_dir()
    gen_params: dict[str, Any] = {"num_train": p.num_images, "num_val": p.num_eval, "image_size": syn.image_size,
                                  "seed": p.seed, "num_classes": syn.num_classes, "max_objects": syn.max_objects,
                                  "body_evidence": syn.body_evidence}
    tag = hashlib.sha1(json.dumps(gen_params, sort_keys=True).encode()).hexdigest()[:10]
    root = make_synthetic_voc(base / f"synthetic_pretrain_{tag}", **gen_params, saliency=False, annotations=False)
    images, labels = _load_images(root, "train_aug", syn.num_classes)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        net = _Classifier(build_backbone(backbone, **key["backbone_kwargs"]), syn.num_classes)
    gen = torch.Generator().manual_seed(p.seed)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, prm in net.named_parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)
    opt_name, base_lr, wd = optimizer_settings(backbone, p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    opt: torch.optim.Optimizer = (torch.optim.AdamW(groups, lr=base_lr) if opt_name == "adamw"
                                  else torch.optim.SGD(groups, lr=base_lr, momentum=0.9, nesterov=True))
    n = images.shape[0]
    order = torch.randperm(n, generator=gen)
    pos = 0
    net.train()
    bar = progress_bar(p.steps, f"pretrain {backbone}", progress)
    losses: list[float] = []
    for step in range(p.steps):
        warm = min(1.0, (step + 1) / max(1, p.steps // 20))  # linear warm-up over the first 5 % of the steps
        for g in opt.param_groups:
            g["lr"] = base_lr * warm * (1 - step / p.steps) ** 0.9
        if pos + p.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + min(p.batch_size, n)]
        pos += p.batch_size
        x = normalize_images(_augment(images[idx].float() / 255.0, gen), normalize)
        loss = F.multilabel_soft_margin_loss(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
    bar.close()
    record: dict[str, Any] = {"key": key, "train_loss_last_50": sum(losses[-50:]) / len(losses[-50:])}
    if p.num_eval:
        ev_images, ev_labels = _load_images(root, "val", syn.num_classes)
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(normalize_images(ev_images[i:i + 64].float() / 255.0, normalize))
                              for i in range(0, len(ev_images), 64)]) > 0
        hit = pred == (ev_labels > 0.5)
        record.update(eval_images=len(ev_images), eval_exact_match=float(hit.all(1).float().mean()),
                      eval_label_accuracy=float(hit.float().mean()))
    record["seconds"] = round(time.time() - t0, 1)
    record["torch_threads"] = torch.get_num_threads()
    state = {k: v.detach().cpu().clone() for k, v in net.backbone.state_dict().items()}
    with atomic_write(path, "wb") as f:
        torch.save({"state_dict": state, "key": key}, f)
    with atomic_write(path.with_suffix(".json"), "w") as f:  # written last: marks the weights as complete
        json.dump(record, f, indent=1)
    return path


def _normalization_of(cfg: RunConfig, section: str) -> Normalization:
    return data_normalization(cfg.data) if section == "cam" else cfg.seg.normalize


def synthetic_backbone_weights(cfg: RunConfig, backbone: str, backbone_kwargs: Mapping[str, Any],
                               normalize: Normalization, setting: str, env: DistEnv | None = None) -> Path:
    """The cached weights of ``backbone`` pretrained on the run's synthetic data, pretrained first if needed.

    ``setting`` names the config value that asked for them (for the error on real data). With ``env`` the main rank
    pretrains and every rank waits at a barrier before reading the path (every rank must call this); without, this
    process pretrains, which is a cache hit once the file exists.

    Raises:
        ConfigError: ``data.dataset`` is not ``synthetic``.
    """
    if cfg.data.dataset != "synthetic":
        raise ConfigError(f"{setting}: {SYNTHETIC_PRETRAINED!r} needs data.dataset: synthetic")
    kwargs = dict(backbone_kwargs)
    if env is None or env.is_main:
        path = pretrain_synthetic_backbone(backbone, kwargs, cfg.data.synthetic, normalize=normalize,
                                           progress=cfg.runtime.progress)
    if env is not None:
        barrier()
        path = pretrained_path(pretrain_key(backbone, kwargs, cfg.data.synthetic, normalize),
                               cfg.data.synthetic.cache_dir)
    return path


def resolve_synthetic_pretrained(cfg: RunConfig, env: DistEnv | None = None,
                                 sections: tuple[str, ...] = ("cam", "seg")) -> RunConfig:
    """``cfg`` with ``cam.pretrained`` / ``seg.pretrained`` equal to ``synthetic`` replaced by the cached weights.

    The weights are pretrained first when they are not in the cache yet (on the main rank; with ``env`` every
    rank must call this and the others wait at a barrier). Other values, and sections not in ``sections``, are
    returned unchanged.
    """
    bad = [s for s in sections if s not in ("cam", "seg")]
    if bad:
        raise ValueError(f"sections must be 'cam' and/or 'seg', got {bad}")
    sections = tuple(s for s in sections if getattr(cfg, s).pretrained == SYNTHETIC_PRETRAINED)
    out = cfg
    for sec in sections:
        c = getattr(cfg, sec)
        path = synthetic_backbone_weights(cfg, c.backbone, c.backbone_kwargs, _normalization_of(cfg, sec),
                                          f"{sec}.pretrained", env)
        out = dataclasses.replace(out, **{sec: dataclasses.replace(getattr(out, sec), pretrained=str(path))})
    return out
