"""PPL: patch destruction, patch learning, progressive schedule and explicit multi-granularity fusion.

Paper: J. Li, Z. Jie, X. Wang, Y. Zhou, X. Wei, L. Ma, "Weakly Supervised Semantic Segmentation via
Progressive Patch Learning", IEEE Trans. Multimedia 2022 (arXiv 2209.07828). The authors released no
code (GitHub TyroneLi/PPL_WSSS holds a README and two figures), so this is a reconstruction from the
abstract and the figures (Fig. 2: patch learning + progressive stages, Fig. 5: explicit fusion).
Every choice that the abstract and figures do not fix is an explicit, documented parameter; the
``[S]``/``[F]``/``[I]``/``[R]`` tags in the docstrings say where a choice comes from:

- ``[S]`` stated in the abstract or a figure caption;
- ``[F]`` drawn in a figure;
- ``[I]`` inferred by this implementation (ablate it);
- ``[R]`` taken from the nearest public reference, Puzzle-CAM (Jo & Yu, ICIP 2021, OFRIN/PuzzleCAM; its blocks
  are in [`wsss_blocks.puzzle_cam`][wsss_blocks.puzzle_cam]).

Blocks:

- [`split_patches`][] / [`merge_patches`][] and [`PatchDestruction`][]: the P and M operators
  (non-overlapping g_h×g_w grid, patches stacked along the batch axis, exact inverse).
- [`patch_learning`][] and [`PatchLearning`][]: a backbone given as an ordered list of stages; after
  stage ``s`` the feature map is destructed into patches, each patch runs through the remaining stages
  with the **same weights** as the full map, the outputs are merged, concatenated along channels with
  the full-map output and classified by one linear classifier (implicit PPL: one insertion point;
  explicit multi-granularity fusion: several insertion points with a gradient cut at each branch input).
- [`ProgressiveSchedule`][]: moves the insertion point from low to high stages over training
  (stage-by-stage, or PMG-style every stage on every batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from typing_extensions import override

from ._checks import check_choice, check_finite, check_int, check_tensor, shape_str
from .cam import _cam_from_features

__all__ = [
    "split_patches",
    "merge_patches",
    "PatchDestruction",
    "PatchLearningOutput",
    "patch_learning",
    "PatchLearning",
    "backbone_stages",
    "StageSpec",
    "ProgressiveSchedule",
]

Grid = int | tuple[int, int]
PadMode = Literal["error", "constant", "replicate", "reflect"]
Order = Literal["batch_major", "tile_major"]
SizeMismatch = Literal["error", "resize"]
PatchBNStats = Literal["update", "frozen"]

_PAD_MODES = ("error", "constant", "replicate", "reflect")
_ORDERS = ("batch_major", "tile_major")


# --------------------------------------------------------------------------- argument helpers
def _grid_pair(grid: object, name: str = "grid") -> tuple[int, int]:
    if isinstance(grid, bool):
        raise TypeError(f"{name} must be an int or a (g_h, g_w) pair of ints, got {grid!r}")
    if isinstance(grid, int):
        pair = (grid, grid)
    elif isinstance(grid, (tuple, list)) and len(grid) == 2 and all(
            isinstance(g, int) and not isinstance(g, bool) for g in grid):
        pair = (int(grid[0]), int(grid[1]))
    else:
        raise TypeError(f"{name} must be an int or a (g_h, g_w) pair of ints, got {grid!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be >= 1 in both directions, got {pair}")
    return pair


def _pad_amount(size: int, g: int) -> int:
    return (-size) % g


def _pattern(order: str) -> str:
    return "(b gh gw) c h w" if order == "batch_major" else "(gh gw b) c h w"


# --------------------------------------------------------------------------- P and M
def split_patches(
    x: Tensor,
    grid: Grid = 2,
    order: Order = "batch_major",
    pad_mode: PadMode = "error",
    pad_value: float = 0.0,
) -> Tensor:
    """Patch operation P: cut feature maps into a non-overlapping g_h×g_w grid stacked along the batch axis.

    Patch (a, b) (row a, column b, row-major) of image i holds rows ``a·h … (a+1)·h−1`` and columns
    ``b·w … (b+1)·w−1`` with ``h = H/g_h``, ``w = W/g_w``. Each patch becomes a separate sample, so any
    network applied afterwards processes the patches independently (PPL, Li et al., TMM 2022, Fig. 2
    operator "P"; non-overlapping 2×2 grid [F]).

    Args:
        x: feature maps (or images).
        grid: g or (g_h, g_w). PPL's figures draw 2×2 [F].
        order: batch layout of the patches. ``"batch_major"`` (default [I]): index ``i·G + a·g_w + b``
            (all patches of image 0, then image 1, …). ``"tile_major"``: index ``(a·g_w + b)·B + i``
            (all images' patch 0, then patch 1, …), the layout of Puzzle-CAM's ``tile_features`` [R].
        pad_mode: what to do when H or W is not divisible by the grid. ``"error"`` (default) raises;
            ``"constant"`` (with ``pad_value``), ``"replicate"`` or ``"reflect"`` pad the bottom and right
            edges up to the next multiple (``F.pad`` modes); [`merge_patches`][] with ``out_size``
            crops the padding back. (Puzzle-CAM floors the patch size instead, which silently makes
            more than g² patches on indivisible sizes; that behaviour is deliberately not reproduced.)
        pad_value: fill value for ``pad_mode="constant"``.

    Shape:
        - x: B×C×H×W
        - output: (G·B)×C×⌈H/g_h⌉×⌈W/g_w⌉ with G = g_h·g_w

    Examples:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> split_patches(x, 2)[:, 0]
        tensor([[[ 0.,  1.],
                 [ 4.,  5.]],
        <BLANKLINE>
                [[ 2.,  3.],
                 [ 6.,  7.]],
        <BLANKLINE>
                [[ 8.,  9.],
                 [12., 13.]],
        <BLANKLINE>
                [[10., 11.],
                 [14., 15.]]])
    """
    g = _grid_pair(grid)
    check_choice(order, "order", _ORDERS)
    check_choice(pad_mode, "pad_mode", _PAD_MODES)
    return _split(x, g, order, pad_mode, pad_value)


def _split(x: Tensor, grid: tuple[int, int], order: str, pad_mode: str, pad_value: float, name: str = "x"
           ) -> Tensor:
    """[`split_patches`][] with checked options (errors call the input ``name``)."""
    check_tensor(x, name, 4, layout="B×C×H×W")
    gh, gw = grid
    H, W = x.shape[-2:]
    if gh > H or gw > W:
        raise ValueError(f"grid {(gh, gw)} does not fit {name} of spatial size {H}×{W} (shape {shape_str(x)}): "
                         f"every patch needs at least one row and one column")
    ph, pw = _pad_amount(H, gh), _pad_amount(W, gw)
    if ph or pw:
        if pad_mode == "error":
            raise ValueError(
                f"grid {(gh, gw)} does not divide {name} of spatial size {H}×{W} (shape {shape_str(x)}); "
                f"pass pad_mode='constant', 'replicate' or 'reflect' to pad to {H + ph}×{W + pw}, or resize "
                f"the input so that every stage's map is divisible")
        if pad_mode == "constant":
            x = F.pad(x, (0, pw, 0, ph), mode="constant", value=float(pad_value))
        else:
            x = F.pad(x, (0, pw, 0, ph), mode=pad_mode)
    return rearrange(x, "b c (gh h) (gw w) -> " + _pattern(order), gh=gh, gw=gw)


def merge_patches(
    patches: Tensor,
    batch: int,
    grid: Grid = 2,
    order: Order = "batch_major",
    out_size: tuple[int, int] | None = None,
) -> Tensor:
    """Merge operation M: put per-patch maps back at their grid positions (exact inverse of [`split_patches`][]).

    The per-patch maps may have any spatial size and channel count (they are usually the output of the
    remaining network stages run on the patches); the merged map is g_h·h'×g_w·w'. With ``out_size`` the
    merged map is cropped to its top-left ``out_size`` region, which removes the bottom/right padding
    that [`split_patches`][] added (PPL Fig. 2 operator "M" [F]; crop rule [I]).

    Args:
        patches: per-patch maps in the layout produced by [`split_patches`][] with the same ``order``.
        batch: number of images B (``patches.shape[0]`` must equal G·B).
        grid: g or (g_h, g_w), as used for the split.
        order: ``"batch_major"`` or ``"tile_major"``, as used for the split.
        out_size: optional (H_out, W_out) ≤ the merged size: crop to the top-left region.

    Shape:
        - patches: (G·B)×C'×h'×w'
        - output: B×C'×(g_h·h')×(g_w·w'), or B×C'×H_out×W_out with ``out_size``

    Examples:
        >>> x = torch.randn(2, 3, 6, 4)
        >>> torch.equal(merge_patches(split_patches(x, (3, 2)), 2, (3, 2)), x)
        True
    """
    g = _grid_pair(grid)
    check_choice(order, "order", _ORDERS)
    return _merge(patches, batch, g, order, out_size)


def _merge(patches: Tensor, batch: int, grid: tuple[int, int], order: str, out_size: tuple[int, int] | None
           ) -> Tensor:
    """[`merge_patches`][] with checked options."""
    check_tensor(patches, "patches", 4, layout="(G·B)×C×h×w")
    check_int(batch, "batch", minimum=0)
    gh, gw = grid
    G = gh * gw
    if patches.shape[0] != G * batch:
        raise ValueError(f"patches has {patches.shape[0]} samples, expected G·B = {G}·{batch} = {G * batch} "
                         f"for grid {(gh, gw)} (patches shape {shape_str(patches)})")
    if batch == 0:  # an empty batch (einops cannot infer the patch size from zero samples)
        merged = patches.new_zeros(0, patches.shape[1], gh * patches.shape[2], gw * patches.shape[3])
    else:
        merged = rearrange(patches, _pattern(order) + " -> b c (gh h) (gw w)", gh=gh, gw=gw, b=batch)
    if out_size is not None:
        oh, ow = int(out_size[0]), int(out_size[1])
        Hm, Wm = merged.shape[-2:]
        if not (1 <= oh <= Hm and 1 <= ow <= Wm):
            raise ValueError(f"out_size {(oh, ow)} must lie within the merged size {Hm}×{Wm}")
        if (oh, ow) != (Hm, Wm):
            merged = merged[..., :oh, :ow]
    return merged


def _crop_size(size: tuple[int, int], grid: tuple[int, int], in_patch: tuple[int, int],
               out_patch: tuple[int, int]) -> tuple[int, int] | None:
    """Output size of the unpadded region after the patch network, or None when it cannot be inferred.

    Assumes the patch network has one integer stride s = in/out per axis with 'same' padding (ResNet
    convolutions and pools), whose output on an n-pixel input is ⌈n/s⌉; an integer upsampling factor
    u = out/in gives n·u [I]. Other size ratios are ambiguous and return None.
    """
    out: list[int] = []
    for n, g, pi, po in zip(size, grid, in_patch, out_patch):
        if pi % po == 0:
            crop = -(-n // (pi // po))
        elif po % pi == 0:
            crop = n * (po // pi)
        else:
            return None
        out.append(min(g * po, crop))
    return out[0], out[1]


class PatchDestruction(nn.Module):
    """The P (split) and M (merge) operators of PPL as a stateless module.

    ``forward(x, fn)`` computes ``M(fn(P(x)))``: ``fn`` sees every patch as a separate sample, so
    with a per-sample ``fn`` (no train-mode BatchNorm) each patch's output depends only on that patch
    (PPL, Li et al., TMM 2022, Fig. 2). Options are those of [`split_patches`][].

    Args:
        grid: g or (g_h, g_w); PPL draws 2×2 [F].
        pad_mode: ``"error"`` (default), ``"constant"``, ``"replicate"`` or ``"reflect"`` for sizes not
            divisible by the grid (bottom/right padding, cropped back by ``forward``) [I].
        pad_value: fill value for ``pad_mode="constant"``.
        order: ``"batch_major"`` (default [I]) or ``"tile_major"`` (Puzzle-CAM [R]).

    Shape:
        - split: B×C×H×W → (G·B)×C×⌈H/g_h⌉×⌈W/g_w⌉
        - merge: (G·B)×C'×h'×w' → B×C'×(g_h·h')×(g_w·w')
        - forward: B×C×H×W → B×C'×H'×W' (the merge of ``fn``'s output; padding is cropped back assuming
          ``fn`` has an integer stride per axis (output ⌈H/s⌉), else pass ``out_size``; ``fn=None`` returns x)

    Examples:
        >>> pd = PatchDestruction(grid=2)
        >>> x = torch.randn(2, 8, 6, 6)
        >>> pd.split(x).shape
        torch.Size([8, 8, 3, 3])
        >>> torch.equal(pd.merge(pd.split(x), batch=2), x)
        True
        >>> pd(x, torch.nn.Conv2d(8, 4, 3, stride=3)).shape
        torch.Size([2, 4, 2, 2])
    """

    def __init__(self, grid: Grid = 2, pad_mode: PadMode = "error", pad_value: float = 0.0,
                 order: Order = "batch_major") -> None:
        super().__init__()
        self.grid = _grid_pair(grid)
        check_choice(pad_mode, "pad_mode", _PAD_MODES)
        check_choice(order, "order", _ORDERS)
        self.pad_mode: PadMode = pad_mode
        self.pad_value = float(pad_value)
        self.order: Order = order

    @property
    def num_patches(self) -> int:
        """G = g_h·g_w patches per image."""
        return self.grid[0] * self.grid[1]

    def split(self, x: Tensor) -> Tensor:
        """P: B×C×H×W → (G·B)×C×h×w (see [`split_patches`][])."""
        return _split(x, self.grid, self.order, self.pad_mode, self.pad_value)

    def merge(self, patches: Tensor, batch: int, out_size: tuple[int, int] | None = None) -> Tensor:
        """M: (G·B)×C'×h'×w' → B×C'×(g_h·h')×(g_w·w'), optionally cropped to ``out_size``."""
        return _merge(patches, batch, self.grid, self.order, out_size)

    def forward(self, x: Tensor, fn: Callable[[Tensor], Tensor] | None = None,
                out_size: tuple[int, int] | None = None) -> Tensor:
        """M(fn(P(x))). Padding added by the split is cropped back at ``fn``'s output stride (or to ``out_size``)."""
        patches = self.split(x)
        out = patches if fn is None else fn(patches)
        if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != patches.shape[0]:
            got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"fn must return a {patches.shape[0]}×C×h×w tensor for {patches.shape[0]} "
                             f"patches, got {got}")
        H, W = int(x.shape[-2]), int(x.shape[-1])
        if out_size is None and (H % self.grid[0] or W % self.grid[1]):
            out_size = _crop_size((H, W), self.grid, (patches.shape[-2], patches.shape[-1]),
                                  (out.shape[-2], out.shape[-1]))
            if out_size is None:
                raise ValueError(
                    f"cannot infer the crop after padding: patches of {patches.shape[-2]}×{patches.shape[-1]} "
                    f"became {out.shape[-2]}×{out.shape[-1]}, not an integer stride; pass out_size")
        return self.merge(out, x.shape[0], out_size)

    @override
    def extra_repr(self) -> str:
        return f"grid={self.grid}, pad_mode={self.pad_mode!r}, order={self.order!r}"


# --------------------------------------------------------------------------- backbone helpers
def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """Ordered stage list of a torchvision/timm ResNet or a timm ``stem`` + ``stages`` model.

    - ResNet-style (torchvision ``resnet*``/``resnext*``/``wide_resnet*``, timm ``resnet*``):
      ``[Sequential(conv1, bn1, relu/act1, maxpool), layer1, layer2, layer3, layer4]`` (N = 5).
    - timm ``stem`` + ``stages`` models (ConvNeXt, RegNet in timm, …): ``[stem, *stages]``.

    The modules are the model's own (weights shared, not copied). Pooling and the ImageNet head are left
    out. For other backbones build the list by hand: any ordered sequence of ``nn.Module``.

    Examples:
        >>> import torch.nn as nn
        >>> net = nn.Module()
        >>> net.stem, net.stages = nn.Conv2d(3, 8, 2, 2), nn.Sequential(nn.Identity(), nn.Identity())
        >>> len(backbone_stages(net))
        3
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if all(hasattr(model, a) for a in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")):
        act = getattr(model, "relu", None) or getattr(model, "act1", None)
        if not isinstance(act, nn.Module):
            raise ValueError("ResNet-style model has no `relu` or `act1` activation module")
        parts: dict[str, nn.Module] = {}
        for a in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            m = getattr(model, a)
            if not isinstance(m, nn.Module):
                raise ValueError(f"model.{a} must be an nn.Module, got {type(m).__name__}")
            parts[a] = m
        stem = nn.Sequential(parts["conv1"], parts["bn1"], act, parts["maxpool"])
        return [stem, parts["layer1"], parts["layer2"], parts["layer3"], parts["layer4"]]
    if hasattr(model, "stem") and hasattr(model, "stages"):
        stages = model.stages
        if not isinstance(stages, (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"model.stages must be an nn.Sequential or nn.ModuleList, got "
                             f"{type(stages).__name__}")
        return [model.stem, *stages]
    raise ValueError(f"cannot find stages in {type(model).__name__}: expected a ResNet (conv1, bn1, maxpool, "
                     f"layer1..layer4) or a model with `stem` and `stages`; pass an explicit list of stages")


def _backbone_feat_dim(model: nn.Module) -> int:
    nf = getattr(model, "num_features", None)
    if isinstance(nf, int):
        return nf
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.in_features
    raise ValueError(f"cannot infer the feature dimension of {type(model).__name__}; pass feat_dim")


# --------------------------------------------------------------------------- patch learning
@dataclass
class PatchLearningOutput:
    """Outputs of [`patch_learning`][] / [`PatchLearning`][].

    Attributes:
        logits: B×K fused-path logits = GAP of ``cams``; train with these (one ``cls loss`` [F]).
        cams: B×K×h×w raw fused-path CAMs, ``cam_from_features(features, W, b)`` (pre-ReLU; normalise with
            [`wsss_blocks.cam.normalize_cams`][wsss_blocks.cam.normalize_cams]).
        features: B×(P·D)×h×w fused features Z = concat(L_{s_1}, …, L_{s_m}, G), P = m + include_global.
        parts: bias-free CAM contributions of each concatenated block, keyed ``"local@s"`` and
            ``"global"``; ``sum(parts.values()) + b == cams``.
        full_logits: B×K logits of the full (global) path alone, GAP of ``full_cams`` (``None`` without the
            global path).
        full_cams: B×K×h×w CAMs of the full path alone, ``W_G ∗ G + b`` (``None`` without the global path).
        insert_after: the insertion points used, in concatenation order.
    """

    logits: Tensor
    cams: Tensor
    features: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    full_logits: Tensor | None = None
    full_cams: Tensor | None = None
    insert_after: tuple[int, ...] = ()


def _as_stages(stages: object) -> list[nn.Module]:
    if isinstance(stages, nn.Module) and not isinstance(stages, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"stages must be an ordered sequence of nn.Module (list, nn.Sequential or nn.ModuleList), "
                        f"got a single {type(stages).__name__}; use backbone_stages(model) for ResNet/timm models")
    if isinstance(stages, (str, bytes)) or not isinstance(stages, (Sequence, nn.Sequential, nn.ModuleList)):
        raise TypeError(f"stages must be an ordered sequence of nn.Module, got {type(stages).__name__}")
    out = list(stages)
    if len(out) == 0:
        raise ValueError("stages must contain at least one nn.Module, got an empty sequence")
    for i, m in enumerate(out):
        if not isinstance(m, nn.Module):
            raise TypeError(f"stages[{i}] must be an nn.Module, got {type(m).__name__}")
    return out


def _as_points(insert_after: object, num_stages: int, name: str = "insert_after") -> tuple[int, ...]:
    if isinstance(insert_after, bool):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {insert_after!r}")
    if isinstance(insert_after, int):
        pts: tuple[int, ...] = (insert_after,)
    elif isinstance(insert_after, Sequence) and not isinstance(insert_after, (str, bytes)):
        items = list(insert_after)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in items):
            raise TypeError(f"{name} must contain ints, got {insert_after!r}")
        pts = tuple(int(s) for s in items)
    else:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(insert_after).__name__}")
    for s in pts:
        if not 0 <= s <= num_stages - 1:
            raise ValueError(f"{name}={s} is out of range for {num_stages} stages: expected 0 <= {name} <= "
                             f"{num_stages - 1} (the number of stages run on the full map before the patch "
                             f"operation; at least one stage must remain to run on the patches)")
    if len(set(pts)) != len(pts):
        raise ValueError(f"{name} must not repeat an insertion point, got {pts}")
    return pts


def _grids_for(grid: object, points: Sequence[int]) -> dict[int, tuple[int, int]]:
    if isinstance(grid, Mapping):
        missing = [s for s in points if s not in grid]
        if missing:
            raise ValueError(f"grid mapping has no entry for insertion point(s) {missing} "
                             f"(keys {sorted(grid)})")
        return {s: _grid_pair(grid[s], f"grid[{s}]") for s in points}
    pair = _grid_pair(grid)
    return {s: pair for s in points}


def _classifier_params(classifier: nn.Module) -> tuple[Tensor, Tensor | None]:
    if isinstance(classifier, nn.Conv2d):
        if classifier.kernel_size != (1, 1) or classifier.groups != 1 or classifier.stride != (1, 1):
            raise ValueError(f"classifier must be a 1×1, stride-1, ungrouped nn.Conv2d (a linear map per "
                             f"pixel, so that CAMs are defined), got {classifier}")
        return classifier.weight, classifier.bias
    if isinstance(classifier, nn.Linear):
        return classifier.weight, classifier.bias
    raise TypeError(f"classifier must be an nn.Conv2d (1×1) or nn.Linear, got {type(classifier).__name__}")


def _run(stages: Sequence[nn.Module], x: Tensor) -> Tensor:
    for m in stages:
        x = m(x)
    return x


@contextmanager
def _frozen_bn_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Temporarily stop train-mode BatchNorm layers from updating their running statistics.

    Batch statistics are still used for normalisation; only the running mean/var (and the batch counter)
    are left untouched, by setting ``momentum = 0`` for the duration and restoring it afterwards.
    """
    saved: list[tuple[nn.modules.batchnorm._BatchNorm, float | None, Tensor | None]] = []
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
                nbt = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
                saved.append((m, m.momentum, nbt))
                m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(nbt)


def _patch_path(stages: Sequence[nn.Module], feat: Tensor, s: int, grid: tuple[int, int], order: Order,
                pad_mode: PadMode, pad_value: float, target_hw: tuple[int, int] | None,
                size_mismatch: SizeMismatch, patch_bn_stats: PatchBNStats = "update", name: str = "features"
                ) -> Tensor:
    """M(u_s(P(feat))), cropped/resized to ``target_hw`` (the full path's output size)."""
    patches = _split(feat, grid, order, pad_mode, pad_value, name)
    if patch_bn_stats == "frozen":
        with _frozen_bn_stats(stages[s:]):
            out = _run(stages[s:], patches)
    else:
        out = _run(stages[s:], patches)
    if not isinstance(out, Tensor) or out.ndim != 4:
        got = shape_str(out) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the stages after insert_after={s} must return a 4-D N×D×h×w map, got {got}")
    merged = _merge(out, feat.shape[0], grid, order, None)
    Hm, Wm = merged.shape[-2:]
    padded = (feat.shape[-2] % grid[0] != 0) or (feat.shape[-1] % grid[1] != 0)
    if padded:
        crop: tuple[int, int] | None
        if target_hw is not None and target_hw[0] <= Hm and target_hw[1] <= Wm:
            crop = target_hw  # the full path's size: exact
        else:
            crop = _crop_size((feat.shape[-2], feat.shape[-1]), grid, (patches.shape[-2], patches.shape[-1]),
                              (out.shape[-2], out.shape[-1]))
        if crop is not None:
            merged = merged[..., :crop[0], :crop[1]]
    if target_hw is not None and tuple(merged.shape[-2:]) != tuple(target_hw):
        if size_mismatch == "error":
            raise ValueError(
                f"merged patch features at insert_after={s} have spatial size {merged.shape[-2]}×{merged.shape[-1]} "
                f"but the full path gives {target_hw[0]}×{target_hw[1]} (feature map at stage {s}: "
                f"{feat.shape[-2]}×{feat.shape[-1]}, grid {grid}); make the patch size divisible by the remaining "
                f"stride or pass size_mismatch='resize'")
        merged = F.interpolate(merged, size=tuple(target_hw), mode="bilinear", align_corners=False)
    return merged


def patch_learning(
    stages: Sequence[nn.Module],
    images: Tensor,
    classifier_weight: Tensor,
    insert_after: int | Sequence[int],
    grid: Grid | Mapping[int, Grid] = 2,
    classifier_bias: Tensor | None = None,
    detach_branch_input: bool | None = None,
    include_global: bool = True,
    pad_mode: PadMode = "error",
    pad_value: float = 0.0,
    order: Order = "batch_major",
    size_mismatch: SizeMismatch = "error",
    patch_bn_stats: PatchBNStats = "update",
) -> PatchLearningOutput:
    """Patch learning forward pass: full path + patch path(s) with shared stages, concatenated, classified.

    With stages f_1 … f_N, F_j = f_j(F_{j−1}), F_0 = images, and u_s = f_N ∘ … ∘ f_{s+1}:

    - global (full-map) path: G = F_N [F];
    - patch path at s: L_s = M(u_s(P(F_s))) with the **same** stage modules [S/F]; with
      ``detach_branch_input`` the branch input is sg(F_s) (explicit fusion, Fig. 5 "×") [S];
    - fusion: Z = concat_channels(L_{s_1}, …, L_{s_m}, G) [S "feature concatenation"; order I];
    - classifier: CAMs A = W ∗ Z (+ b) via [`wsss_blocks.cam.cam_from_features`][wsss_blocks.cam.cam_from_features],
      logits z = GAP(A) (a 1×1 conv / linear classifier after global average pooling, the standard CAM head [I]).

    One insertion point is PPL's implicit patch learning (Fig. 2); several are the explicit
    multi-granularity fusion (Fig. 5). An empty ``insert_after`` gives the plain CAM network (a baseline
    with the same code path). The full-map trunk F_1 … F_N is computed once and shared by every branch.

    Args:
        stages: ordered backbone stages f_1 … f_N (``nn.Module``; see [`backbone_stages`][]).
        images: network input.
        classifier_weight: K×(P·D) or K×(P·D)×1×1 weights, P = number of insertion points + include_global.
        insert_after: s or a sequence of s: the number of stages run on the full map before the patch
            operation, 0 ≤ s ≤ N−1 (s = 0 tiles the input image, Puzzle-CAM style). With torchvision
            ResNet stages ``[stem, layer1, …, layer4]``, s = 2 patches the output of layer1.
        grid: g, (g_h, g_w), or a mapping {s: grid} per insertion point. Default 2×2 [F].
        classifier_bias: optional K biases (the default classifier has none [I, as Puzzle-CAM/IRN]).
        detach_branch_input: cut the gradient where each patch branch takes its input. ``None``
            (default) means False for a single insertion point (Fig. 2 draws no cut [F]) and True for
            several (Fig. 5 "× denotes detaching gradient back-propagation towards lower layers" [S]).
        include_global: concatenate the full-map output G (always on in the paper [F]).
        pad_mode: patch padding for sizes not divisible by the grid, see [`split_patches`][].
        pad_value: fill value for ``pad_mode="constant"``.
        order: patch batch layout, see [`split_patches`][].
        size_mismatch: what to do when the merged patch map differs in size from G (the patch size is not
            divisible by the remaining stride): ``"error"`` (default) or bilinear ``"resize"`` to G's size [I].
        patch_bn_stats: ``"update"`` (default: plain PyTorch behaviour) lets train-mode BatchNorm layers in
            the upper stages update their running statistics from the patch batches too (two updates per
            step, with patch statistics that differ from full-map ones); ``"frozen"`` keeps the running
            statistics to the full path only (patches are still normalised with their batch statistics) [I].
            Irrelevant with frozen/eval BN or without BN.

    Returns:
        [`PatchLearningOutput`][]. ``logits``, ``cams``, ``full_*`` and ``parts`` all carry gradients.

    Shape:
        - images: B×3×H×W
        - logits, full_logits: B×K
        - cams, full_cams, parts[…]: B×K×h×w with h×w = F_N's size
        - features: B×(P·D)×h×w

    Examples:
        >>> stages = [torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 16, 3, 2, 1)]
        >>> w = torch.randn(5, 2 * 16)
        >>> out = patch_learning(stages, torch.randn(2, 3, 32, 32), w, insert_after=1)
        >>> out.logits.shape, out.cams.shape, out.features.shape
        (torch.Size([2, 5]), torch.Size([2, 5, 8, 8]), torch.Size([2, 32, 8, 8]))
    """
    stage_list = _as_stages(stages)
    points = _as_points(insert_after, len(stage_list))
    grids = _grids_for(grid, points)
    _check_patch_options(pad_mode, order, size_mismatch, patch_bn_stats)
    if not include_global and not points:
        raise ValueError("include_global=False needs at least one insertion point (nothing to classify)")
    detach = (len(points) > 1) if detach_branch_input is None else bool(detach_branch_input)
    if isinstance(classifier_weight, Tensor):
        check_finite(classifier_weight, "classifier_weight")
    if isinstance(classifier_bias, Tensor):
        check_finite(classifier_bias, "classifier_bias")
    return _patch_learning(stage_list, images, classifier_weight, points, grids, classifier_bias, detach,
                           include_global, pad_mode, pad_value, order, size_mismatch, patch_bn_stats)


def _check_patch_options(pad_mode: str, order: str, size_mismatch: str, patch_bn_stats: str) -> None:
    check_choice(pad_mode, "pad_mode", _PAD_MODES)
    check_choice(order, "order", _ORDERS)
    check_choice(size_mismatch, "size_mismatch", ("error", "resize"))
    check_choice(patch_bn_stats, "patch_bn_stats", ("update", "frozen"))


def _patch_learning(stage_list: list[nn.Module], images: Tensor, classifier_weight: Tensor, points: tuple[int, ...],
                    grids: dict[int, tuple[int, int]], classifier_bias: Tensor | None, detach: bool,
                    include_global: bool, pad_mode: PadMode, pad_value: float, order: Order,
                    size_mismatch: SizeMismatch, patch_bn_stats: PatchBNStats) -> PatchLearningOutput:
    """[`patch_learning`][] with checked options (stages, insertion points, grids, choices)."""
    check_tensor(images, "images", 4, layout="B×3×H×W", floating=True)
    check_tensor(classifier_weight, "classifier_weight", (2, 4), layout="K×(P·D) or K×(P·D)×1×1", floating=True)
    if classifier_weight.ndim == 4 and classifier_weight.shape[2:] != (1, 1):
        raise ValueError(f"classifier_weight must be K×(P·D)×1×1 when 4-D, got {shape_str(classifier_weight)}")
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {shape_str(images)}")
    check_finite(images, "images")

    # trunk once: keep F_s for every insertion point
    need = set(points)
    feats: dict[int, Tensor] = {}
    x = images
    if 0 in need:
        feats[0] = x
    for j, m in enumerate(stage_list, start=1):
        x = m(x)
        if j in need:
            feats[j] = x
    G = x
    if not isinstance(G, Tensor) or G.ndim != 4:
        got = shape_str(G) if isinstance(G, Tensor) else type(G).__name__
        raise ValueError(f"the last stage must return a 4-D B×D×h×w feature map, got {got}")
    target_hw = (int(G.shape[-2]), int(G.shape[-1]))

    ordered = sorted(points)  # concatenation order: branches by increasing s, then global [I]
    blocks: list[tuple[str, Tensor]] = []
    for s in ordered:
        inp = feats[s].detach() if detach else feats[s]
        L = _patch_path(stage_list, inp, s, grids[s], order, pad_mode, pad_value, target_hw, size_mismatch,
                        patch_bn_stats, f"the stage-{s} features of images {images.shape[-2]}×{images.shape[-1]}")
        if L.shape[1] != G.shape[1]:  # pragma: no cover - same stages give the same channel count
            raise ValueError(f"patch branch at {s} has {L.shape[1]} channels, full path {G.shape[1]}")
        blocks.append((f"local@{s}", L))
    if include_global:
        blocks.append(("global", G))
    Z = torch.cat([b for _, b in blocks], dim=1) if len(blocks) > 1 else blocks[0][1]

    W = classifier_weight.flatten(1) if classifier_weight.ndim == 4 else classifier_weight
    if classifier_bias is not None:
        check_tensor(classifier_bias, "classifier_bias", 1, layout="K", floating=True)
        if classifier_bias.shape[0] != W.shape[0]:
            raise ValueError(f"classifier_bias has {classifier_bias.shape[0]} entries, expected {W.shape[0]} (one per "
                             f"class of classifier_weight {shape_str(classifier_weight)})")
    D = G.shape[1]
    if W.shape[1] != Z.shape[1]:
        raise ValueError(
            f"classifier_weight has {W.shape[1]} input channels, expected {len(blocks)}·{D} = {Z.shape[1]} "
            f"({len(ordered)} patch branch(es){' + global path' if include_global else ''} × {D} feature "
            f"channels; weight shape {shape_str(classifier_weight)})")
    cams = _cam_from_features(Z, W, classifier_bias)
    parts: dict[str, Tensor] = {}
    for i, (name, feat) in enumerate(blocks):
        parts[name] = _cam_from_features(feat, W[:, i * D:(i + 1) * D], None)
    full_cams = full_logits = None
    if include_global:
        full_cams = parts["global"]
        if classifier_bias is not None:
            full_cams = full_cams + classifier_bias.to(full_cams.dtype).view(1, -1, 1, 1)
        full_logits = full_cams.float().mean((2, 3)).to(full_cams.dtype)
    logits = cams.float().mean((2, 3)).to(cams.dtype)
    return PatchLearningOutput(logits=logits, cams=cams, features=Z, parts=parts, full_logits=full_logits,
                               full_cams=full_cams, insert_after=tuple(ordered))


class PatchLearning(nn.Module):
    """PPL patch learning around a backbone given as ordered stages (implicit PPL or explicit fusion).

    Li et al., "Weakly Supervised Semantic Segmentation via Progressive Patch Learning", TMM 2022.
    See [`patch_learning`][] for the computation and the source of each choice. The module stores the
    stages (shared by every path: one set of weights) and one classifier whose input width is
    P·D, P = number of insertion points + 1 (global path). Because P is constant when the single
    insertion point moves, the same classifier serves every progressive stage; move
    it with [`set_insertion`][] or pass ``insert_after`` to [`forward`][] (as
    [`ProgressiveSchedule`][] does).

    Args:
        stages: ordered ``nn.Module`` stages f_1 … f_N (list, ``nn.Sequential`` or ``nn.ModuleList``).
        insert_after: s (implicit PPL, Fig. 2) or a sequence of s (explicit multi-granularity fusion,
            Fig. 5); 0 ≤ s ≤ N−1; ``()`` gives the plain CAM network (baseline).
        grid: g, (g_h, g_w) or {s: grid}; default 2×2 [F].
        classifier: an ``nn.Conv2d`` 1×1 or ``nn.Linear`` with P·D inputs; default
            ``nn.Conv2d(P·D, num_classes, 1, bias=False)`` with PyTorch's default init [I].
        num_classes: K, needed when ``classifier`` is None.
        feat_dim: D (channels of the last stage), needed when ``classifier`` is None.
        detach_branch_input: gradient cut at each branch input; None = False for one insertion point,
            True for several [S/F].
        include_global: concatenate the full-map path (the paper always does) [F].
        pad_mode: see [`patch_learning`][].
        pad_value: see [`patch_learning`][].
        order: see [`patch_learning`][].
        size_mismatch: see [`patch_learning`][].
        patch_bn_stats: ``"update"`` or ``"frozen"``, see [`patch_learning`][].

    Shape:
        - images: B×3×H×W
        - output: [`PatchLearningOutput`][] (logits B×K, cams B×K×h×w, …)

    Examples:
        >>> stages = [torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 16, 3, 2, 1)]
        >>> net = PatchLearning(stages, insert_after=1, num_classes=5, feat_dim=16)
        >>> out = net(torch.randn(2, 3, 32, 32))
        >>> out.logits.shape, out.full_cams.shape
        (torch.Size([2, 5]), torch.Size([2, 5, 8, 8]))
        >>> net(torch.randn(2, 3, 32, 32), insert_after=0).cams.shape  # another progressive stage
        torch.Size([2, 5, 8, 8])
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        insert_after: int | Sequence[int],
        grid: Grid | Mapping[int, Grid] = 2,
        classifier: nn.Module | None = None,
        *,
        num_classes: int | None = None,
        feat_dim: int | None = None,
        detach_branch_input: bool | None = None,
        include_global: bool = True,
        pad_mode: PadMode = "error",
        pad_value: float = 0.0,
        order: Order = "batch_major",
        size_mismatch: SizeMismatch = "error",
        patch_bn_stats: PatchBNStats = "update",
    ) -> None:
        super().__init__()
        stage_list = _as_stages(stages)
        self.stages = nn.ModuleList(stage_list)
        points = _as_points(insert_after, len(stage_list))
        self.insert_after: tuple[int, ...] = tuple(sorted(points))
        if isinstance(grid, Mapping):
            self.grid: dict[int, tuple[int, int]] | tuple[int, int] = {
                int(k): _grid_pair(v, f"grid[{k}]") for k, v in grid.items()}
            _grids_for(self.grid, points)
        else:
            self.grid = _grid_pair(grid)
        _check_patch_options(pad_mode, order, size_mismatch, patch_bn_stats)
        if not include_global and not points:
            raise ValueError("include_global=False needs at least one insertion point (nothing to classify)")
        self.detach_branch_input = detach_branch_input
        self.include_global = bool(include_global)
        self.pad_mode: PadMode = pad_mode
        self.pad_value = float(pad_value)
        self.order: Order = order
        self.size_mismatch: SizeMismatch = size_mismatch
        self.patch_bn_stats: PatchBNStats = patch_bn_stats
        n_blocks = len(points) + int(include_global)
        if classifier is None:
            if num_classes is None or feat_dim is None:
                raise ValueError("pass a classifier, or num_classes and feat_dim to build the default "
                                 f"1×1 conv classifier (got num_classes={num_classes}, feat_dim={feat_dim})")
            if num_classes < 1 or feat_dim < 1:
                raise ValueError(f"num_classes and feat_dim must be >= 1, got {num_classes} and {feat_dim}")
            classifier = nn.Conv2d(n_blocks * feat_dim, num_classes, 1, bias=False)
        weight, _ = _classifier_params(classifier)
        if feat_dim is not None and weight.shape[1] != n_blocks * feat_dim:
            raise ValueError(f"classifier has {weight.shape[1]} input channels, expected {n_blocks}·{feat_dim} = "
                             f"{n_blocks * feat_dim} ({len(points)} patch branch(es)"
                             f"{' + global path' if include_global else ''} × feat_dim {feat_dim})")
        self.classifier = classifier
        self.num_classes = int(weight.shape[0])

    @classmethod
    def from_backbone(cls, model: nn.Module, insert_after: int | Sequence[int], num_classes: int,
                      grid: Grid | Mapping[int, Grid] = 2, **kwargs: object) -> PatchLearning:
        """Build from a torchvision/timm ResNet or a timm ``stem`` + ``stages`` model ([`backbone_stages`][]).

        ``feat_dim`` is read from ``model.num_features`` (timm) or ``model.fc.in_features`` (torchvision).
        """
        stages = backbone_stages(model)
        feat_dim = kwargs.pop("feat_dim", None)
        if feat_dim is None:
            feat_dim = _backbone_feat_dim(model)
        return cls(stages, insert_after, grid, num_classes=num_classes, feat_dim=feat_dim,  # type: ignore[arg-type]
                   **kwargs)  # type: ignore[arg-type]

    @property
    def num_stages(self) -> int:
        """Number of backbone stages."""
        return len(self.stages)

    def set_insertion(self, insert_after: int | Sequence[int]) -> None:
        """Move the insertion point(s) (progressive training); the number of branches must stay the same."""
        pts = _as_points(insert_after, len(self.stages))
        if len(pts) != len(self.insert_after):
            raise ValueError(f"insert_after must keep {len(self.insert_after)} insertion point(s) (the classifier "
                             f"width depends on it), got {pts}")
        if isinstance(self.grid, dict):
            _grids_for(self.grid, pts)
        self.insert_after = tuple(sorted(pts))

    def _detach(self) -> bool:
        if self.detach_branch_input is not None:
            return bool(self.detach_branch_input)
        return len(self.insert_after) > 1

    def forward(self, images: Tensor, insert_after: int | Sequence[int] | None = None,
                grid: Grid | Mapping[int, Grid] | None = None) -> PatchLearningOutput:
        """Run the full path and the patch path(s); ``insert_after``/``grid`` override the stored ones for this call."""
        pts = self.insert_after
        if insert_after is not None:
            pts = _as_points(insert_after, len(self.stages))
            if len(pts) != len(self.insert_after):
                raise ValueError(f"insert_after must give {len(self.insert_after)} insertion point(s) (the "
                                 f"classifier width depends on it), got {insert_after!r}")
        grids = _grids_for(self.grid if grid is None else grid, pts)
        weight, bias = _classifier_params(self.classifier)
        return _patch_learning(list(self.stages), images, weight, pts, grids, bias, self._detach(),
                               self.include_global, self.pad_mode, self.pad_value, self.order, self.size_mismatch,
                               self.patch_bn_stats)

    def patch_path(self, features: Tensor, insert_after: int, grid: Grid | None = None,
                   out_size: tuple[int, int] | None = None) -> Tensor:
        """L_s = M(u_s(P(F_s))) for a given stage-s feature map (no classifier); for inspection and tests.

        Shape:
            - features: B×C_s×H_s×W_s (the output of stage ``insert_after``)
            - output: B×D×h×w
        """
        check_tensor(features, "features", 4, layout="B×C×H×W")
        (s,) = _as_points(insert_after, len(self.stages))
        g = _grid_pair(grid) if grid is not None else _grids_for(self.grid, (s,))[s]
        return _patch_path(list(self.stages), features, s, g, self.order, self.pad_mode, self.pad_value,
                           out_size, self.size_mismatch, self.patch_bn_stats)

    @override
    def extra_repr(self) -> str:
        return (f"insert_after={self.insert_after}, grid={self.grid}, detach_branch_input={self._detach()}, "
                f"include_global={self.include_global}, pad_mode={self.pad_mode!r}, "
                f"patch_bn_stats={self.patch_bn_stats!r}")


# --------------------------------------------------------------------------- progressive schedule
@dataclass(frozen=True)
class StageSpec:
    """One progressive stage: where to destruct, with which grid, and the weight of its loss.

    Attributes:
        insert_after: insertion point s (see [`PatchLearning`][]).
        grid: grid for this stage; ``None`` keeps the model's grid (PPL draws 2×2 at every stage [F]).
        loss_weight: multiplier for this stage's loss (1.0; PMG weights its last step ×2, an option).
    """

    insert_after: int
    grid: Grid | None = None
    loss_weight: float = 1.0


class ProgressiveSchedule:
    """Which insertion point(s) to train at each epoch: PPL's multi-stage optimisation.

    PPL trains "only one single classification model which is progressively trained" with patch
    learning applied at increasingly high positions of the network [S, Fig. 2 caption]; stage 1 patches
    the lowest point [F]. How the stages interleave is not stated, so both readings are offered [I]:

    - ``mode="sequential"`` (default, a curriculum): ``epochs_per_stage[k]`` epochs at stage k, then the
      next stage, starting from the current weights; [`step`][] returns one stage.
    - ``mode="cyclic"`` (PMG, Du et al. ECCV 2020): every stage on every batch, in order (one
      forward/backward/step per stage); [`step`][] returns all stages for every epoch.

    Epochs at or beyond `total_epochs` stay at the last stage (sequential). Give the stages low → high
    for the paper's order; any order is accepted so that high → low can be ablated.

    Args:
        stages: insertion points (ints) or [`StageSpec`][] in training order, e.g. ``(2, 3, 4)`` for
            torchvision ResNet stages ``[stem, layer1, …, layer4]`` = after layer1, layer2, layer3 [I].
        epochs_per_stage: int for every stage or one int per stage (sequential mode).
        mode: ``"sequential"`` or ``"cyclic"``.
        total_epochs: length of the schedule; default ``sum(epochs_per_stage)``.

    Examples:
        >>> sched = ProgressiveSchedule([2, 3, 4], epochs_per_stage=2)
        >>> points = [sched.step(e)[0].insert_after for e in range(6)]
        >>> points
        [2, 2, 3, 3, 4, 4]
        >>> cyclic = ProgressiveSchedule([2, 3], mode="cyclic", total_epochs=3)
        >>> cyclic.sequence
        [(2, 3), (2, 3), (2, 3)]
    """

    def __init__(self, stages: Sequence[int | StageSpec], epochs_per_stage: int | Sequence[int] = 1,
                 mode: Literal["sequential", "cyclic"] = "sequential", total_epochs: int | None = None) -> None:
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or len(stages) == 0:
            raise ValueError(f"stages must be a non-empty sequence of insertion points, got {stages!r}")
        specs: list[StageSpec] = []
        for i, st in enumerate(stages):
            if isinstance(st, StageSpec):
                specs.append(st)
            elif isinstance(st, int) and not isinstance(st, bool):
                specs.append(StageSpec(int(st)))
            else:
                raise TypeError(f"stages[{i}] must be an int or a StageSpec, got {type(st).__name__}")
            if specs[-1].insert_after < 0:
                raise ValueError(f"stages[{i}].insert_after must be >= 0, got {specs[-1].insert_after}")
            if specs[-1].grid is not None:
                _grid_pair(specs[-1].grid, f"stages[{i}].grid")
        check_choice(mode, "mode", ("sequential", "cyclic"))
        if isinstance(epochs_per_stage, int) and not isinstance(epochs_per_stage, bool):
            epochs = [int(epochs_per_stage)] * len(specs)
        else:
            epochs = [int(e) for e in cast(Sequence[int], epochs_per_stage)]
            if len(epochs) != len(specs):
                raise ValueError(f"epochs_per_stage has {len(epochs)} entries, expected one per stage "
                                 f"({len(specs)})")
        if any(e < 1 for e in epochs):
            raise ValueError(f"epochs_per_stage must be >= 1, got {epochs}")
        self.stages: tuple[StageSpec, ...] = tuple(specs)
        self.mode = mode
        self.epochs_per_stage: tuple[int, ...] = tuple(epochs)
        self.total_epochs = int(sum(epochs) if total_epochs is None else total_epochs)
        if self.total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        bounds, acc = [], 0
        for e in epochs:
            acc += e
            bounds.append(acc)
        self._bounds = tuple(bounds)

    def stage_index(self, epoch: int) -> int:
        """Index of the current stage (sequential; the last stage in cyclic mode)."""
        check_int(epoch, "epoch", minimum=0)
        if self.mode == "cyclic":
            return len(self.stages) - 1
        for k, b in enumerate(self._bounds):
            if epoch < b:
                return k
        return len(self.stages) - 1

    def step(self, epoch: int) -> list[StageSpec]:
        """Stages to run at ``epoch``: ``[current stage]`` (sequential) or every stage in order (cyclic)."""
        k = self.stage_index(epoch)
        return list(self.stages) if self.mode == "cyclic" else [self.stages[k]]

    def is_stage_start(self, epoch: int) -> bool:
        """True on the first epoch of a stage (sequential): the moment to evaluate CAMs or restart the LR."""
        k = self.stage_index(epoch)
        if self.mode == "cyclic":
            return epoch == 0
        return epoch == (0 if k == 0 else self._bounds[k - 1])

    @property
    def sequence(self) -> list[tuple[int, ...]]:
        """Insertion points per epoch over ``total_epochs`` (for logging and tests)."""
        return [tuple(st.insert_after for st in self.step(e)) for e in range(self.total_epochs)]

    def __iter__(self) -> Iterator[tuple[int, list[StageSpec]]]:
        for e in range(self.total_epochs):
            yield e, self.step(e)

    def __len__(self) -> int:
        return self.total_epochs

    def __repr__(self) -> str:
        pts = [st.insert_after for st in self.stages]
        return (f"ProgressiveSchedule(stages={pts}, epochs_per_stage={list(self.epochs_per_stage)}, "
                f"mode={self.mode!r}, total_epochs={self.total_epochs})")
