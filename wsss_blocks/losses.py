"""Losses of the WSSS methods, each as a function and an ``nn.Module``.

- [`pretended_underfitting_loss`][] / [`PretendedUnderFittingLoss`][]: PMM's pretended under-fitting
  (PUF) cross-entropy (Li et al., ICCV 2021; ``Eli-YiLi/WSSS_MMSeg``
  ``mmseg/models/losses/cross_entropy_loss.py``).
- [`adaptive_min_pooling_loss`][] / [`AdaptiveMinPoolingLoss`][]: PMM's CAM-stage min-pooling term.
- [`balanced_seg_loss`][] / [`BalancedSegLoss`][]: AFA/TSCD's background/foreground balanced CE.
- [`dense_energy_loss`][] / [`DenseEnergyLoss`][]: Tang et al.'s dense-CRF energy, as TSCD uses it.
- [`eps_saliency_loss`][] / [`EPSSaliencyLoss`][]: EPS's saliency loss (SMAF's first stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_masks,
    check_number,
    check_range,
    check_same_batch,
    check_tensor,
    compute_dtype,
    shape_str,
)

__all__ = [
    "pretended_underfitting_loss",
    "pretended_underfitting_loss_detailed",
    "PUFOutput",
    "PretendedUnderFittingLoss",
    "adaptive_min_pooling_loss",
    "AdaptiveMinPoolingLoss",
    "balanced_seg_loss",
    "BalancedSegLoss",
    "dense_energy_loss",
    "DenseEnergyLoss",
    "eps_saliency_loss",
    "EPSSaliencyLoss",
]

PUFMode = Literal["clamp", "pow", "ignore"]


def _check_puf_args(beta: float, k: float, mode: str | None, denominator: str) -> None:
    check_number(beta, "beta (the PUF gate on the mean CE)", 0.0, strict=True)
    check_number(k, "k (the PUF per-pixel cap/exponent)", 0.0, strict=True)
    check_choice(mode, "mode", ("clamp", "pow", "ignore", None, "none"))
    check_choice(denominator, "denominator", ("all", "valid"))


def pretended_underfitting_loss(
    logits: Tensor,
    target: Tensor,
    beta: float = 0.5,
    k: float = 0.5,
    mode: PUFMode | None = "clamp",
    ignore_index: int = 255,
    class_weight: Tensor | None = None,
    denominator: Literal["all", "valid"] = "all",
) -> Tensor:
    """Pixel cross-entropy with PMM's pretended under-fitting (PUF) gate.

    PMM (Li et al., ICCV 2021), PUF (``WSSS_MMSeg:mmseg/models/losses/cross_entropy_loss.py``):

        ℓ_i = CE(z_i, y_i)            (0 where y_i = ignore_index; times class_weight[y_i] if given)
        L̄   = (1/N) Σ_i ℓ_i           N = all pixels of this call, ignored ones included
        if L̄ < beta:                  (strict, computed on this call's tensors only)
            clamp:  ℓ_i ← min(ℓ_i, k)         zero gradient wherever ℓ_i > k   (every shipped config)
            pow:    ℓ_i ← (ℓ_i + 1e-9) ** k
            ignore: ℓ_i ← ℓ_i · [ℓ_i <= k]     (clamp's gradients, different value)
        loss = (1/N) Σ_i ℓ_i

    Once the network fits the pseudo-masks on average, pixels it still gets badly wrong (CE > k, i.e. the
    probability of the pseudo-label below ``e^-k``) are treated as label noise and stop pulling the
    model. Before that (L̄ ≥ beta) the loss is plain CE, an automatic warm-up. Released values: VOC
    ``beta = k = 0.5``, COCO ``beta = k = 0.8`` (``PretendedUnderFittingLoss.coco()``); PMM applies it to
    the decode head (weight 1) and the auxiliary head (weight 0.4) with one gate per head, and each GPU
    gates on its own local batch. ``mode=None`` gives plain CE.

    ``denominator="all"`` is the release (mmseg 0.8): the gate and the final mean divide by every
    pixel, so ignored/padded pixels dilute both. ``denominator="valid"`` (opt-in deviation) divides both
    by the number of non-ignored pixels instead (0 when there are none). The CE is computed in float32
    (float64 inputs stay float64); the gate uses ``torch.where`` (no host sync, compile-friendly).

    Gradients flow into ``logits`` only.

    Args:
        logits: unnormalised class scores (channel 0 = background).
        target: int64 class indices in ``[0, K)`` or ``ignore_index``.
        beta: gate: PUF is active when the mean CE is below ``beta``.
        k: per-pixel cap (``clamp``/``ignore``) or exponent (``pow``).
        mode: ``"clamp"`` (release configs), ``"pow"``, ``"ignore"`` or ``None`` (plain CE).
        ignore_index: target value that contributes 0.
        class_weight: optional K per-class weights (mmseg ``class_weight``; multiplies ℓ_i, not N).
        denominator: ``"all"`` (release) or ``"valid"``.

    Shape:
        - logits: N×K×H×W (any N×K×… works)
        - target: N×H×W (the logits' shape without dim 1)
        - output: scalar

    Examples:
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # 1×2×1×2, confident
        >>> target = torch.tensor([[[0, 0]]])                        # second pixel disagrees (CE ≈ 8)
        >>> round(pretended_underfitting_loss(logits, target, beta=5.0, k=0.5).item(), 4)  # wrong pixel capped
        0.2502
    """
    return pretended_underfitting_loss_detailed(logits, target, beta, k, mode, ignore_index, class_weight,
                                                denominator).loss


@dataclass
class PUFOutput:
    """Result of [`pretended_underfitting_loss_detailed`][].

    Attributes:
        loss: the scalar loss (with gradient into the logits).
        active: 0-dim bool tensor, whether the PUF gate was on (mean CE below ``beta``).
    """

    loss: Tensor
    active: Tensor


def pretended_underfitting_loss_detailed(
    logits: Tensor,
    target: Tensor,
    beta: float = 0.5,
    k: float = 0.5,
    mode: PUFMode | None = "clamp",
    ignore_index: int = 255,
    class_weight: Tensor | None = None,
    denominator: Literal["all", "valid"] = "all",
) -> PUFOutput:
    """[`pretended_underfitting_loss`][] plus whether its gate was on; the arguments are the same.

    Shape:
        - logits: N×K×H×W; target: N×H×W
        - output: [`PUFOutput`][] (scalar ``loss``, 0-dim bool ``active``)

    Examples:
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> out = pretended_underfitting_loss_detailed(logits, torch.tensor([[[0, 0]]]), beta=5.0, k=0.5)
        >>> bool(out.active), round(out.loss.item(), 4)  # mean CE ≈ 4 < 5: the gate is on
        (True, 0.2502)
    """
    _check_puf_args(beta, k, mode, denominator)
    return _puf(logits, target, beta, k, mode, ignore_index, class_weight, denominator)


def _puf(logits: Tensor, target: Tensor, beta: float, k: float, mode: str | None, ignore_index: int,
         class_weight: Tensor | None, denominator: str) -> PUFOutput:
    """PUF with checked options: checks the tensors and computes."""
    check_tensor(logits, "logits", floating=True)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape N×K×… (at least 2-D), got {shape_str(logits)}")
    check_tensor(target, "target")
    expected = (logits.shape[0], *tuple(logits.shape[2:]))
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} (logits {shape_str(logits)} without the class "
                         f"dim), got {shape_str(target)}")
    check_masks(target, "target", logits.shape[1], ignore_index)
    check_finite(logits, "logits")
    x = logits if logits.dtype == torch.float64 else logits.float()
    w = None
    if class_weight is not None:
        check_tensor(class_weight, "class_weight", 1, layout="K")
        if class_weight.shape[0] != logits.shape[1]:
            raise ValueError(f"class_weight must have {logits.shape[1]} entries, got {shape_str(class_weight)}")
        w = class_weight.to(device=x.device, dtype=x.dtype)
    ce = F.cross_entropy(x, target.long(), weight=w, ignore_index=ignore_index, reduction="none")
    if denominator == "all":
        n = torch.tensor(float(max(ce.numel(), 1)), device=ce.device, dtype=ce.dtype)
    else:
        n = (target != ignore_index).sum().to(ce.dtype).clamp_min(1.0)
    mean_ce = ce.sum() / n
    if mode is None or mode == "none":
        active = torch.zeros((), dtype=torch.bool, device=ce.device)
        out = mean_ce
    else:
        active = mean_ce < beta
        if mode == "clamp":
            puf = ce.clamp(max=k)
        elif mode == "pow":
            puf = (ce + 1e-9).pow(k)
            if denominator == "valid":  # ignored pixels are excluded from the mean entirely
                puf = puf * (target != ignore_index).to(puf.dtype)
        else:  # ignore
            puf = ce * (ce <= k).to(ce.dtype)
        out = torch.where(active, puf.sum() / n, mean_ce)
    return PUFOutput(loss=out, active=active)


class PretendedUnderFittingLoss(nn.Module):
    """PMM's pretended under-fitting cross-entropy as a module (see [`pretended_underfitting_loss`][]).

    Use one instance per head: PMM gates the decode head (``weight=1.0``) and the auxiliary head
    (``weight=0.4``) separately. The non-persistent buffer ``last_active`` records whether the gate was on
    in the latest call (for logging; it is updated without a host sync).

    Args:
        beta: gate on the mean CE (VOC 0.5, COCO 0.8).
        k: per-pixel cap / exponent (VOC 0.5, COCO 0.8).
        mode: ``"clamp"`` (release), ``"pow"``, ``"ignore"`` or ``None`` (plain CE).
        ignore_index: ignored target value.
        weight: loss weight (mmseg ``loss_weight``).
        class_weight: optional per-class weights.
        denominator: ``"all"`` (release: ignored pixels count in N) or ``"valid"``.

    Shape:
        - logits: N×K×H×W
        - target: N×H×W int64
        - output: scalar

    Examples:
        >>> crit = PretendedUnderFittingLoss()          # VOC: beta = k = 0.5
        >>> logits = torch.randn(2, 21, 8, 8, requires_grad=True)
        >>> target = torch.randint(0, 21, (2, 8, 8))
        >>> crit(logits, target).backward()
        >>> PretendedUnderFittingLoss.coco().beta
        0.8
    """

    last_active: Tensor

    def __init__(
        self,
        beta: float = 0.5,
        k: float = 0.5,
        mode: PUFMode | None = "clamp",
        ignore_index: int = 255,
        weight: float = 1.0,
        class_weight: Tensor | None = None,
        denominator: Literal["all", "valid"] = "all",
    ) -> None:
        super().__init__()
        _check_puf_args(beta, k, mode, denominator)
        self.beta = float(beta)
        self.k = float(k)
        self.mode = mode
        self.ignore_index = int(ignore_index)
        self.weight = float(weight)
        self.denominator = denominator
        if class_weight is not None:
            self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32))
        else:
            self.class_weight = None
        self.register_buffer("last_active", torch.zeros((), dtype=torch.bool), persistent=False)

    @classmethod
    def coco(cls, **kwargs: object) -> PretendedUnderFittingLoss:
        """COCO preset of the release: ``beta = k = 0.8`` (``*_40kx32_coco.py`` configs)."""
        params: dict = {"beta": 0.8, "k": 0.8}
        params.update(kwargs)
        return cls(**params)

    @override
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        out = _puf(logits, target, self.beta, self.k, self.mode, self.ignore_index, self.class_weight,
                   self.denominator)
        self.last_active.copy_(out.active.to(self.last_active.device))
        return self.weight * out.loss

    @override
    def extra_repr(self) -> str:
        return (f"beta={self.beta}, k={self.k}, mode={self.mode!r}, ignore_index={self.ignore_index}, "
                f"weight={self.weight}, denominator={self.denominator!r}")


# ----------------------------------------------------------------------------------------------------------------
# AFA/TSCD balanced segmentation cross-entropy
# ----------------------------------------------------------------------------------------------------------------
def balanced_seg_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, empty_is_zero: bool = True
                      ) -> Tensor:
    """AFA/TSCD segmentation loss: ``½ CE(background pixels) + ½ CE(foreground pixels)``, ``ignore_index`` ignored.

    Each cross entropy is averaged over its own pixels (``get_seg_loss`` of AFA's and SCD's
    ``scripts/dist_train_voc.py``). With no background (or no foreground) pixel the released mean is 0/0 = NaN;
    ``empty_is_zero`` (default, a fix) makes that half 0.

    Args:
        logits: segmentation logits, channel 0 = background.
        target: pseudo mask (0 background, c+1 class c, ``ignore_index`` ignored).
        ignore_index: ignored target value.
        empty_is_zero: an empty half contributes 0 instead of NaN (released: NaN).

    Shape:
        - logits: B×K×H×W
        - target: B×H×W int64
        - output: scalar

    Examples:
        >>> y = torch.tensor([[[0, 1], [255, 1]]])
        >>> float(balanced_seg_loss(torch.zeros(1, 3, 2, 2), y)) == float(torch.log(torch.tensor(3.0)))
        True
    """
    return _balanced_seg_loss(logits, target, ignore_index, empty_is_zero)


def _balanced_seg_loss(logits: Tensor, target: Tensor, ignore_index: int, empty_is_zero: bool) -> Tensor:
    check_tensor(logits, "logits", 4, layout="B×K×H×W", floating=True)
    check_tensor(target, "target", 3, layout="B×H×W")
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target must have shape {(logits.shape[0], *logits.shape[2:])} (logits "
                         f"{shape_str(logits)} without the class dim), got {shape_str(target)}")
    check_masks(target, "target", logits.shape[1], ignore_index)
    check_finite(logits, "logits")
    target = target.long()
    bg = target.masked_fill(target != 0, ignore_index)
    fg = target.masked_fill(target == 0, ignore_index)
    out = []
    for part in (bg, fg):
        if empty_is_zero and not bool((part != ignore_index).any()):
            out.append(logits.sum() * 0.0)
        else:
            out.append(F.cross_entropy(logits, part, ignore_index=ignore_index))
    return 0.5 * (out[0] + out[1])


class BalancedSegLoss(nn.Module):
    """Module form of [`balanced_seg_loss`][] (AFA/TSCD ``get_seg_loss``).

    Shape:
        - logits: B×K×H×W; target: B×H×W int64; output: scalar

    Examples:
        >>> BalancedSegLoss()(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [255, 1]]])).item() > 0
        True
    """

    def __init__(self, ignore_index: int = 255, empty_is_zero: bool = True) -> None:
        super().__init__()
        self.ignore_index = check_int(ignore_index, "ignore_index")
        self.empty_is_zero = bool(empty_is_zero)

    @override
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return balanced_seg_loss(logits, target, self.ignore_index, self.empty_is_zero)


# ----------------------------------------------------------------------------------------------------------------
# Dense-CRF energy loss (Tang et al.), as TSCD uses it
# ----------------------------------------------------------------------------------------------------------------
class _DenseEnergy(torch.autograd.Function):
    """Tang et al.'s dense-CRF energy with the released approximate gradient ``−2·g⊙(W S)/B`` (rloss)."""

    @staticmethod
    def forward(ctx: Any, probs: Tensor, image_hwc: Tensor, valid_mask: Tensor, unlabeled: Tensor,
                sigma_rgb: float, sigma_xy: float) -> Tensor:
        from .crf.permutohedral import bilateral_features, build_lattice, lattice_filter

        b, k, h, w = probs.shape
        gate = valid_mask - probs.amax(dim=1)
        gate = gate.masked_fill(unlabeled, 1.0).clamp(min=0.0)
        s = probs * valid_mask[:, None]
        lattice = build_lattice(bilateral_features(image_hwc, sigma_xy, sigma_rgb), pad_like_pydensecrf=False)
        ws = lattice_filter(lattice, s.permute(0, 2, 3, 1).reshape(b * h * w, k))
        ws = ws.view(b, h, w, k).permute(0, 3, 1, 2) * gate[:, None]
        ctx.save_for_backward(ws, valid_mask)
        ctx.batch = b
        return -(s * ws).sum() / b

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        ws, valid_mask = ctx.saved_tensors
        return -2.0 * grad * ws / ctx.batch * valid_mask[:, None], None, None, None, None, None


def dense_energy_loss(probs: Tensor, image01: Tensor, target: Tensor, valid_mask: Tensor | None = None,
                      weight: float = 1e-7, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                      scale_factor: float = 0.5, ignore_index: int = 255) -> Tensor:
    """Dense-CRF energy loss of Tang et al. as TSCD uses it (``DenseEnergyLoss(1e-7, 15, 100, 0.5)``).

    Tang, Perazzi, Djelouah, Ben Ayed, Schroers, Boykov, "On Regularized Losses for Weakly-supervised CNN
    Segmentation", ECCV 2018 (rloss). Downscale (image, valid mask and target nearest; probabilities bilinear)
    by ``scale_factor``, then ``E = −Σ_k ⟨S_k, g ⊙ (W S_k)⟩ / B`` with S the probabilities inside the valid
    region, W the bilateral Gaussian (σ_xy·scale_factor px, σ_rgb on 0–255 colours, computed with the
    library's permutohedral lattice — the same ``Permutohedral::compute`` the released CPU extension calls) and
    the gate ``g = max(0, valid − max_k S_k)``, 1 on pixels whose target is ``ignore_index``. The gradient is
    the released ``−2·g⊙(W S)/B`` (g treated as a constant). Returns ``weight · E``.

    Args:
        probs: softmax probabilities of the segmentation head.
        image01: the crop, RGB in [0, 1] (scaled to 0–255 inside, as released).
        target: pseudo mask; only its ``ignore_index`` pixels matter (gate 1 there).
        valid_mask: {0, 1} unpadded region; ``None`` = every pixel.
        weight: loss weight (released 1e-7).
        sigma_rgb: colour bandwidth on 0–255 colours (released 15).
        sigma_xy: spatial bandwidth in full-resolution pixels (released 100).
        scale_factor: downscaling before the energy (released 0.5).
        ignore_index: the target's ignore value.

    Shape:
        - probs: B×K×H×W; image01: B×3×H×W; target: B×H×W; valid_mask: B×H×W
        - output: scalar

    Examples:
        >>> p = torch.softmax(torch.randn(1, 3, 16, 16), 1).requires_grad_()
        >>> loss = dense_energy_loss(p, torch.rand(1, 3, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long))
        >>> loss.backward(); bool(loss < 0), p.grad.shape
        (True, torch.Size([1, 3, 16, 16]))
    """
    _check_energy_args(weight, sigma_rgb, sigma_xy, scale_factor)
    return _dense_energy_loss(probs, image01, target, valid_mask, weight, sigma_rgb, sigma_xy, scale_factor,
                              ignore_index)


def _check_energy_args(weight: float, sigma_rgb: float, sigma_xy: float, scale_factor: float) -> None:
    check_number(weight, "weight", 0.0)
    check_number(sigma_rgb, "sigma_rgb", 0.0, strict=True)
    check_number(sigma_xy, "sigma_xy", 0.0, strict=True)
    check_number(scale_factor, "scale_factor", 0.0, strict=True, maximum=1.0)


def _dense_energy_loss(probs: Tensor, image01: Tensor, target: Tensor, valid_mask: Tensor | None, weight: float,
                       sigma_rgb: float, sigma_xy: float, scale_factor: float, ignore_index: int) -> Tensor:
    check_tensor(probs, "probs", 4, layout="B×K×H×W", floating=True)
    check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
    check_tensor(target, "target", 3, layout="B×H×W")
    b, k, h, w = probs.shape
    if image01.shape[0] != b or image01.shape[1] != 3 or image01.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"image01 must have shape ({b}, 3, {h}, {w}) to match probs {shape_str(probs)}, got "
                         f"{shape_str(image01)}")
    if tuple(target.shape) != (b, h, w):
        raise ValueError(f"target must have shape ({b}, {h}, {w}) to match probs {shape_str(probs)}, got "
                         f"{shape_str(target)}")
    check_masks(target, "target", k, ignore_index)
    check_range(probs.detach(), "probs", 0.0, 1.0, hint="pass softmax probabilities, not logits")
    check_range(image01.detach(), "image01", 0.0, 1.0, hint="pass RGB scaled to [0, 1]")
    if valid_mask is None:
        valid_mask = torch.ones(b, h, w, device=probs.device)
    else:
        check_tensor(valid_mask, "valid_mask", 3, layout="B×H×W")
        if tuple(valid_mask.shape) != (b, h, w):
            raise ValueError(f"valid_mask must have shape ({b}, {h}, {w}) to match probs {shape_str(probs)}, got "
                             f"{shape_str(valid_mask)}")
        check_range(valid_mask.detach().float(), "valid_mask", 0.0, 1.0, hint="a {0, 1} (or bool) mask")
    if b == 0 or h * w == 0:  # an empty batch has no energy (and the lattice needs points)
        return probs.sum() * 0.0
    img = F.interpolate(image01.float(), scale_factor=scale_factor, mode="nearest") * 255.0
    p = F.interpolate(probs.float(), scale_factor=scale_factor, mode="bilinear", align_corners=False)
    r = F.interpolate(valid_mask[:, None].float(), scale_factor=scale_factor, mode="nearest")[:, 0]
    y = F.interpolate(target[:, None].float(), scale_factor=scale_factor, mode="nearest")[:, 0]
    with torch.autocast(device_type=probs.device.type, enabled=False):
        e = _DenseEnergy.apply(p, img.permute(0, 2, 3, 1).contiguous(), r, y.long() == ignore_index,
                               float(sigma_rgb), float(sigma_xy) * scale_factor)
    return weight * e


class DenseEnergyLoss(nn.Module):
    """Module form of [`dense_energy_loss`][] (defaults: TSCD's ``DenseEnergyLoss(1e-7, 15, 100, 0.5)``).

    Shape:
        - probs: B×K×H×W; image01: B×3×H×W; target: B×H×W; valid_mask: B×H×W (optional); output: scalar

    Examples:
        >>> p = torch.softmax(torch.randn(1, 3, 8, 8), 1)
        >>> DenseEnergyLoss()(p, torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long)).ndim
        0
    """

    def __init__(self, weight: float = 1e-7, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                 scale_factor: float = 0.5, ignore_index: int = 255) -> None:
        super().__init__()
        _check_energy_args(weight, sigma_rgb, sigma_xy, scale_factor)
        self.weight = float(weight)
        self.sigma_rgb = float(sigma_rgb)
        self.sigma_xy = float(sigma_xy)
        self.scale_factor = float(scale_factor)
        self.ignore_index = check_int(ignore_index, "ignore_index")

    @override
    def forward(self, probs: Tensor, image01: Tensor, target: Tensor, valid_mask: Tensor | None = None) -> Tensor:
        return _dense_energy_loss(probs, image01, target, valid_mask, self.weight, self.sigma_rgb, self.sigma_xy,
                                  self.scale_factor, self.ignore_index)


# ----------------------------------------------------------------------------------------------------------------
# EPS saliency loss
# ----------------------------------------------------------------------------------------------------------------
def eps_saliency_loss(cam_logits: Tensor, saliency: Tensor, labels: Tensor, tau: float = 0.4, lam: float = 0.5
                      ) -> Tensor:
    """EPS saliency loss: the saliency map predicted from the class maps vs the off-the-shelf saliency map.

    Lee et al., "Railroad is not a Train: Saliency as Pseudo-pixel Supervision for Weakly Supervised Semantic
    Segmentation", CVPR 2021 (``halbielee/EPS`` ``eps.py`` ``get_eps_loss``). With ``P = softmax(cam_logits)``
    over the C+1 channels (background **last**) and the saliency ``S`` resized to the map size (nearest):

    * a present class c counts as foreground when ``sum(round(P_c)·round(S)) / sum(round(P_c) + 1e-4) > tau``
      (its rounded map overlaps the saliency; computed without gradient), otherwise its map is added to the
      background;
    * ``fg = Σ_{c fg} P_c``, ``bg = P_bg + Σ_{c present, not fg} P_c``;
    * predicted saliency ``lam·fg + (1 − lam)·(1 − bg)``, loss = MSE to ``S``.

    Args:
        cam_logits: raw class maps with the background channel last.
        saliency: saliency maps in [0, 1] (any size; resized with nearest interpolation as released).
        labels: multi-hot image labels (C classes, no background).
        tau: overlap threshold (EPS VOC script 0.4, ``script/voc12_eps.sh``).
        lam: foreground/background blending (EPS default 0.5; COCO script 0.9).

    Shape:
        - cam_logits: B×(C+1)×h×w
        - saliency: B×1×H×W
        - labels: B×C
        - output: scalar

    Examples:
        >>> cam = torch.randn(2, 4, 8, 8, requires_grad=True)
        >>> loss = eps_saliency_loss(cam, torch.rand(2, 1, 16, 16), torch.tensor([[1., 0, 0], [0, 1, 1]]))
        >>> loss.backward(); loss.ndim, cam.grad is not None
        (0, True)
    """
    check_number(tau, "tau", 0.0, maximum=1.0)
    check_number(lam, "lam", 0.0, maximum=1.0)
    return _eps_saliency_loss(cam_logits, saliency, labels, tau, lam)


def _eps_saliency_loss(cam_logits: Tensor, saliency: Tensor, labels: Tensor, tau: float, lam: float) -> Tensor:
    check_tensor(cam_logits, "cam_logits", 4, layout="B×(C+1)×h×w", floating=True)
    check_tensor(saliency, "saliency", 4, layout="B×1×H×W", floating=True)
    check_tensor(labels, "labels", 2, layout="B×C")
    if cam_logits.ndim != 4 or saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"cam_logits must be B×(C+1)×h×w and saliency B×1×H×W, got {tuple(cam_logits.shape)} "
                         f"and {tuple(saliency.shape)}")
    b, k, h, w = cam_logits.shape
    if labels.shape != (b, k - 1):
        raise ValueError(f"labels must have shape B×C = ({b}, {k - 1}) for cam_logits {tuple(cam_logits.shape)} "
                         f"(background last), got {tuple(labels.shape)}")
    check_same_batch(cam_logits, "cam_logits", saliency, "saliency")
    check_labels(labels, "labels")
    check_finite(cam_logits, "cam_logits")
    check_range(saliency.detach(), "saliency", 0.0, 1.0, hint="scale saliency maps to [0, 1]")
    if b == 0:  # an empty batch: zero loss (a mean over nothing would be NaN)
        return cam_logits.sum() * 0.0
    dtype = compute_dtype(cam_logits)  # float32 under AMP, float64 stays float64
    sal = F.interpolate(saliency.to(dtype), size=(h, w), mode="nearest")
    probs = torch.softmax(cam_logits.to(dtype), dim=1)
    fg_probs, bg_prob = probs[:, :-1], probs[:, -1:]
    with torch.no_grad():
        hard = torch.round(fg_probs)
        overlap = (hard * torch.round(sal)).flatten(2).sum(-1) / (hard + 1e-4).flatten(2).sum(-1)
        present = labels.to(probs.device) > 0.5
        fg_sel = (present & (overlap > tau)).to(probs.dtype)[:, :, None, None]
        bg_sel = (present & ~(overlap > tau)).to(probs.dtype)[:, :, None, None]
    fg_map = (fg_probs * fg_sel).sum(1, keepdim=True)
    bg_map = bg_prob + (fg_probs * bg_sel).sum(1, keepdim=True)
    pred = fg_map * lam + (1.0 - bg_map) * (1.0 - lam)
    return F.mse_loss(pred, sal)


class EPSSaliencyLoss(nn.Module):
    """Module form of [`eps_saliency_loss`][] (EPS, Lee et al., CVPR 2021; VOC release tau 0.4, lam 0.5).

    Shape:
        - cam_logits: B×(C+1)×h×w (background last); saliency: B×1×H×W; labels: B×C; output: scalar

    Examples:
        >>> crit = EPSSaliencyLoss()
        >>> crit(torch.randn(1, 3, 4, 4), torch.rand(1, 1, 8, 8), torch.tensor([[1.0, 0.0]])).ndim
        0
    """

    def __init__(self, tau: float = 0.4, lam: float = 0.5) -> None:
        super().__init__()
        self.tau = check_number(tau, "tau", 0.0, maximum=1.0)
        self.lam = check_number(lam, "lam", 0.0, maximum=1.0)

    @override
    def forward(self, cam_logits: Tensor, saliency: Tensor, labels: Tensor) -> Tensor:
        return _eps_saliency_loss(cam_logits, saliency, labels, self.tau, self.lam)


# ----------------------------------------------------------------------------------------------------------------
# PMM adaptive min-pooling loss
# ----------------------------------------------------------------------------------------------------------------
def adaptive_min_pooling_loss(cams: Tensor) -> Tensor:
    """PMM's adaptive min-pooling loss on label-masked foreground maps.

    ``Eli-YiLi/PMM`` ``pipeline/train_cam.py`` lines 12–20.

    Per image: the per-pixel max over the channels of ``cams`` (PMM passes the label-masked foreground PCM maps
    ``cam_rv``), the ``k = ⌊HW/4⌋`` smallest of those values, ReLU, summed; divided by ``k·N``. It pushes the
    quarter of each image that the network considers least foreground towards zero.

    Shape:
        - cams: N×C×H×W
        - output: scalar

    Examples:
        >>> cams = torch.zeros(1, 2, 2, 2); cams[0, 0, 0, 0] = 4.0; cams[0, 1] = 1.0
        >>> adaptive_min_pooling_loss(cams)  # the smallest quarter (1 of 4 pixels) of max = [4, 1, 1, 1]
        tensor(1.)
    """
    check_tensor(cams, "cams", 4, layout="N×C×H×W", floating=True)
    check_finite(cams, "cams")
    n, c, h, w = cams.shape
    if n * c * h * w == 0:  # an empty batch (or map): zero loss
        return cams.sum() * 0.0
    k = max(1, (h * w) // 4)
    m = cams.amax(dim=1).reshape(n, -1)
    low = torch.topk(m, k=k, dim=-1, largest=False).values
    return F.relu(low).sum() / (k * n)


class AdaptiveMinPoolingLoss(nn.Module):
    """Module form of [`adaptive_min_pooling_loss`][] (PMM, Li et al., ICCV 2021).

    Shape:
        - cams: N×C×H×W; output: scalar

    Examples:
        >>> AdaptiveMinPoolingLoss()(torch.ones(2, 3, 4, 4))
        tensor(1.)
    """

    @override
    def forward(self, cams: Tensor) -> Tensor:
        return adaptive_min_pooling_loss(cams)
