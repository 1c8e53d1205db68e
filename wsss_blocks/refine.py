"""Local pixel refinement of soft class maps: AFA's PAR and TSCD's VARM, and the reliable pseudo labels built on them.

Both refiners propagate a soft K-channel map over 48 dilated neighbours (8 directions × dilations
(1, 2, 4, 8, 12, 24), centre excluded, replicate padding) for 10 iterations of full replacement
``P_i <- sum_j a_ij P_j`` with image-only weights, computed once per image and applied as sparse-dense products
(the engine is [`wsss_blocks.propagation`][wsss_blocks.propagation]).

* [`PixelAdaptiveRefine`][] — PAR of AFA (Ru et al., CVPR 2022) and ToCo (Ru et al., CVPR 2023):
  ``a = softmax(-mean_c(|dI|/sigma/t)^2) + w * softmax(-(rho/sigma_rho/t)^2)`` (AFA's ``w1`` = t = 0.3,
  ``w2`` = w = 0.01).
* [`VariationAwareRefine`][] — VARM of TSCD (Xu et al., AAAI 2023): sharper colour kernel (x4), no
  position prior, minus ``0.01 * softmax(image variation at the neighbour)``.
* [`reliable_pseudo_mask`][] — the AFA/TSCD high/low background-score pseudo mask with an ignore band.

Released code: AFA ``wetr/PAR.py``, ToCo ``model/PAR.py``, SCD ``network/VARM.py``, SCD ``utils/camutils.py``
``refine_cams_with_bkg_v2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from ._checks import (
    check_finite,
    check_image01,
    check_labels,
    check_number,
    check_same_batch,
    check_tensor,
    checks_enabled,
    compute_dtype,
    shape_str,
)
from .propagation import DEFAULT_DILATIONS, DilatedNeighbourRefine, refine_maps

__all__ = [
    "pixel_adaptive_refine",
    "variation_aware_refine",
    "PixelAdaptiveRefine",
    "VariationAwareRefine",
    "reliable_pseudo_mask",
]


def pixel_adaptive_refine(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                          num_iter: int = 10, appearance_temperature: float = 0.3, pos_weight: float = 0.01,
                          pos_temperature: float | None = None, eps: float = 1e-8) -> Tensor:
    """PAR (AFA/ToCo): refine soft class maps with colour- and distance-aware dilated neighbours.

    Released behaviour (AFA ``wetr/PAR.py`` L64-91, identical in ToCo ``model/PAR.py``):
    ``a = softmax(-mean_c(|dI|/(sigma+1e-8)/t)^2) + w·softmax(-(rho/(sigma_rho+1e-8)/t)^2)`` with the appearance
    temperature t (the release's ``w1`` = 0.3) and the position weight w (``w2`` = 0.01); the weights sum to 1.01.
    Then 10 steps ``P <- sum_k a_k P_k``. Maps are first resized to the image with bilinear
    ``align_corners=True``; the output is not renormalised. See [`PixelAdaptiveRefine`][].

    Args:
        image01: guide image, RGB in [0, 1] (AFA/TSCD pass the crop at half resolution).
        maps: soft class maps (e.g. softmax over background + present classes), any spatial size.
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_temperature: the appearance temperature (AFA's ``w1``, released 0.3); also the position
            temperature unless ``pos_temperature`` is given (as released).
        pos_weight: weight of the position softmax (AFA's ``w2``, released 0.01).
        pos_temperature: a separate position temperature (the paper's); ``None`` reuses
            ``appearance_temperature`` as the release does.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W
        - maps: B×C×h×w
        - output: B×C×H×W, dtype of ``maps``

    Examples:
        >>> image = torch.rand(1, 3, 32, 32)
        >>> probs = torch.rand(1, 3, 16, 16).softmax(1)
        >>> pixel_adaptive_refine(image, probs).shape
        torch.Size([1, 3, 32, 32])
    """
    tp = appearance_temperature if pos_temperature is None else pos_temperature
    return refine_maps(image01, maps, dilations, num_iter, appearance_temperature=appearance_temperature,
                       appearance_scale=None, pos_weight=pos_weight, pos_temperature=tp, variation_weight=0.0,
                       clamp_negative=False, eps=eps)


def variation_aware_refine(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                           num_iter: int = 10, appearance_scale: float = 4.0, variation_weight: float = 0.01,
                           clamp_negative: bool = False, pos_weight: float = 0.0, pos_temperature: float = 0.3,
                           eps: float = 1e-8) -> Tensor:
    """VARM (TSCD): refine soft class maps with a sharp colour kernel minus an image-variation penalty.

    Released behaviour (SCD ``network/VARM.py`` L61-90): ``a = softmax(-mean_c(4·|dI|/(sigma+1e-8))^2)
    - 0.01·softmax(g)``, ``g`` the squared forward differences of the image at each neighbour (mean over RGB),
    no position prior (its attribute ``w1 = 0.3`` is never used), weights summing to 0.99 and possibly
    slightly negative; then 10 steps ``P <- sum_k a_k P_k``. See [`VariationAwareRefine`][].

    Args:
        image01: guide image, RGB in [0, 1] (the variation term's scale depends on it).
        maps: soft class maps, any spatial size (resized bilinearly, ``align_corners=True``).
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_scale: multiplies ``|dI|/sigma`` (released: 4, i.e. PAR with appearance_temperature = 0.25).
        variation_weight: weight of the subtracted variation softmax (released: 0.01).
        clamp_negative: clamp negative weights to 0 (released: False).
        pos_weight: optional PAR-style position term (released VARM: 0). With ``appearance_scale=1/0.3``,
            ``variation_weight=0`` and ``pos_weight=0.01`` VARM equals PAR.
        pos_temperature: temperature of that position term.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W
        - maps: B×C×h×w
        - output: B×C×H×W, dtype of ``maps``

    Examples:
        >>> image = torch.rand(1, 3, 32, 32)
        >>> probs = torch.rand(1, 3, 32, 32).softmax(1)
        >>> variation_aware_refine(image, probs).shape
        torch.Size([1, 3, 32, 32])
    """
    return refine_maps(image01, maps, dilations, num_iter, appearance_temperature=None,
                       appearance_scale=appearance_scale, pos_weight=pos_weight, pos_temperature=pos_temperature,
                       variation_weight=variation_weight, clamp_negative=clamp_negative, eps=eps)


# --------------------------------------------------------------------------- modules
class PixelAdaptiveRefine(DilatedNeighbourRefine):
    """PAR: pixel-adaptive refinement of AFA (Ru et al., CVPR 2022), reused by ToCo (CVPR 2023).

    Weights: ``softmax_k(-mean_c(|I_k - I|/(sigma+1e-8)/t)^2) + w·softmax_k(-(rho_k/(sigma_rho+1e-8)/t)^2)``
    (t = ``appearance_temperature``, AFA's ``w1``; w = ``pos_weight``, AFA's ``w2``) over 48 dilated neighbours
    (sum 1.01), propagated 10 times. Equals the released ``PAR`` to float rounding
    (see ``benchmarks/par_baseline.py``) while never building the B×C×48×H×W tensors; see
    [`pixel_adaptive_refine`][] for the arguments.

    Args:
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_temperature: appearance (and, as released, position) temperature, 0.3 (AFA's ``w1``).
        pos_weight: weight of the position softmax, 0.01 (AFA's ``w2``).
        pos_temperature: a separate position temperature; ``None`` (released) reuses ``appearance_temperature``.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w (resized to H×W, bilinear, ``align_corners=True``)
        - output: B×C×H×W

    Examples:
        >>> par = PixelAdaptiveRefine()
        >>> image = torch.rand(2, 3, 32, 32)
        >>> probs = torch.rand(2, 4, 32, 32).softmax(1)
        >>> refined = par(image, probs)
        >>> refined.shape
        torch.Size([2, 4, 32, 32])
    """

    def __init__(self, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10,
                 appearance_temperature: float = 0.3, pos_weight: float = 0.01, pos_temperature: float | None = None,
                 eps: float = 1e-8):
        super().__init__(dilations, num_iter, eps)
        self.appearance_temperature = check_number(appearance_temperature, "appearance_temperature", 0.0,
                                                   strict=True)
        self.pos_weight = check_number(pos_weight, "pos_weight", 0.0)
        self.pos_temperature = (None if pos_temperature is None
                                else check_number(pos_temperature, "pos_temperature", 0.0, strict=True))

    @override
    def affinity_kwargs(self) -> dict[str, Any]:
        t = self.appearance_temperature
        return {"appearance_temperature": t, "appearance_scale": None, "pos_weight": self.pos_weight,
                "pos_temperature": t if self.pos_temperature is None else self.pos_temperature,
                "variation_weight": 0.0, "clamp_negative": False, "eps": self.eps}

    @override
    def extra_repr(self) -> str:
        return (f"dilations={self.dilations}, num_iter={self.num_iter}, "
                f"appearance_temperature={self.appearance_temperature}, pos_weight={self.pos_weight}, "
                f"pos_temperature={self.pos_temperature}")


class VariationAwareRefine(DilatedNeighbourRefine):
    """VARM: variation-aware refine module of TSCD (Xu et al., "Self Correspondence Distillation", AAAI 2023).

    Weights: ``softmax_k(-mean_c(4·|I_k - I|/(sigma+1e-8))^2) - 0.01·softmax_k(g_k)`` over 48 dilated
    neighbours, ``g_k`` the squared forward image differences at neighbour k (sum 0.99, may be slightly
    negative), no position prior; propagated 10 times. Equals the released ``VARM`` to float rounding
    (see ``benchmarks/par_baseline.py``); see [`variation_aware_refine`][] for the arguments.

    Args:
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_scale: multiplies ``|dI|/sigma`` (released: 4.0; PAR's 1/appearance_temperature = 3.33).
        variation_weight: weight of the subtracted variation softmax (released: 0.01).
        clamp_negative: clamp negative weights at 0 (released: False).
        pos_weight: optional PAR position term (released: 0).
        pos_temperature: its temperature (PAR: 0.3).
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w (resized to H×W, bilinear, ``align_corners=True``)
        - output: B×C×H×W

    Examples:
        >>> varm = VariationAwareRefine()
        >>> image = torch.rand(2, 3, 32, 32)
        >>> probs = torch.rand(2, 4, 16, 16).softmax(1)
        >>> varm(image, probs).shape
        torch.Size([2, 4, 32, 32])
    """

    def __init__(self, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10,
                 appearance_scale: float = 4.0, variation_weight: float = 0.01, clamp_negative: bool = False,
                 pos_weight: float = 0.0, pos_temperature: float = 0.3, eps: float = 1e-8):
        super().__init__(dilations, num_iter, eps)
        self.appearance_scale = check_number(appearance_scale, "appearance_scale", 0.0, strict=True)
        self.variation_weight = check_number(variation_weight, "variation_weight", 0.0)
        self.clamp_negative = bool(clamp_negative)
        self.pos_weight = check_number(pos_weight, "pos_weight", 0.0)
        self.pos_temperature = check_number(pos_temperature, "pos_temperature", 0.0, strict=True)

    @override
    def affinity_kwargs(self) -> dict[str, Any]:
        return {"appearance_temperature": None, "appearance_scale": self.appearance_scale,
                "pos_weight": self.pos_weight, "pos_temperature": self.pos_temperature,
                "variation_weight": self.variation_weight, "clamp_negative": self.clamp_negative, "eps": self.eps}

    @override
    def extra_repr(self) -> str:
        return (f"dilations={self.dilations}, num_iter={self.num_iter}, appearance_scale={self.appearance_scale}, "
                f"variation_weight={self.variation_weight}, clamp_negative={self.clamp_negative}, "
                f"pos_weight={self.pos_weight}")


# --------------------------------------------------------------------------- reliable pseudo labels
def _box_mask(boxes: Tensor | None, b: int, h: int, w: int, device: torch.device) -> Tensor | None:
    if boxes is None:
        return None
    check_tensor(boxes, "boxes", 2, layout="B×4 (x1, y1, x2, y2)")
    if boxes.shape != (b, 4):
        raise ValueError(f"boxes must have shape B×4 = ({b}, 4) with rows (x1, y1, x2, y2), "
                         f"got {shape_str(boxes)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must hold pixel coordinates (an integer tensor), got dtype {boxes.dtype}")
    if boxes.is_floating_point():
        check_finite(boxes, "boxes")
        if checks_enabled() and not bool((boxes == boxes.round()).all()):
            raise ValueError("boxes must hold whole pixel coordinates (x1, y1, x2, y2), got fractional values; "
                             "round them (boxes_from_mask gives int64 boxes)")
    box = boxes.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    x1, y1, x2, y2 = (box[:, i].view(b, 1, 1) for i in range(4))
    return (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)


def reliable_pseudo_mask(
    refiner: DilatedNeighbourRefine,
    image01: Tensor,
    cams: Tensor,
    labels: Tensor,
    boxes: Tensor | None = None,
    high_threshold: float = 0.55,
    low_threshold: float = 0.35,
    scale_factor: float = 0.5,
    ignore_index: int = 255,
) -> Tensor:
    """Refined pseudo mask with an ignore band (AFA/TSCD ``refine_cams_with_bkg_v2``).

    For each constant background score in (``high_threshold``, ``low_threshold``): prepend it to the CAMs,
    resize by ``scale_factor`` (bilinear, ``align_corners=False``), softmax over background + **present** classes only
    (temperature 1), refine with ``refiner`` on the image downsampled the same way, upsample to H×W (bilinear,
    ``align_corners=False``), argmax. Combine: the high label where it is foreground; background only where both
    say background; ``ignore_index`` elsewhere (foreground in the low label only) and outside ``boxes``.
    Absent classes can never be assigned. Both thresholds and all images share one refinement call (the
    affinity is computed once per image, not twice as released); images with fewer present classes get
    zero-padded channels that stay zero.

    Args:
        refiner: a [`VariationAwareRefine`][] (TSCD) or [`PixelAdaptiveRefine`][] (AFA, ToCo).
        image01: the crop, RGB in [0, 1].
        cams: per-channel min-max normalised CAMs in [0, 1] (any spatial size; resized to the refinement size).
        labels: multi-hot image labels, no background entry.
        boxes: optional B×4 ``(x1, y1, x2, y2)`` valid (unpadded) region per image (end exclusive, e.g. from
            [`wsss_blocks.ops.boxes_from_mask`][wsss_blocks.ops.boxes_from_mask]); outside it the label is ignore.
        high_threshold: high background score (AFA/TSCD 0.55; ToCo 0.70; the release's ``bkg_thre_h``).
        low_threshold: low background score (AFA/TSCD 0.35; ToCo 0.25; ``bkg_thre_l``).
        scale_factor: refinement runs at ``(⌊H·scale_factor⌋, ⌊W·scale_factor⌋)`` (released: 0.5, i.e. ``H // 2``).
        ignore_index: label of the ignore band and of pixels outside the box.

    Shape:
        - image01: B×3×H×W
        - cams: B×C×h×w
        - labels: B×C
        - boxes: B×4
        - output: B×H×W int64, 0 = background, c+1 = class c, ``ignore_index`` = ignore

    Examples:
        >>> image = torch.rand(2, 3, 32, 32)
        >>> cams = torch.rand(2, 20, 32, 32)
        >>> labels = torch.zeros(2, 20); labels[0, 3] = 1; labels[1, [5, 7]] = 1
        >>> y = reliable_pseudo_mask(VariationAwareRefine(), image, cams, labels)
        >>> y.shape, y.dtype
        (torch.Size([2, 32, 32]), torch.int64)
    """
    if not isinstance(refiner, DilatedNeighbourRefine):
        raise TypeError(f"refiner must be a DilatedNeighbourRefine (PixelAdaptiveRefine or VariationAwareRefine), "
                        f"got {type(refiner).__name__}")
    check_image01(image01, hint="refiners take raw RGB in [0, 1]; denormalise the network input first")
    check_tensor(cams, "cams", 4, layout="B×C×h×w", floating=True)
    check_finite(cams, "cams")
    check_same_batch(cams, "cams", image01, "image01")
    b, c = cams.shape[:2]
    lab = check_labels(labels, "labels", batch=b, num_classes=c).to(cams.device)
    for name, v in (("high_threshold", high_threshold), ("low_threshold", low_threshold)):
        check_number(v, name, 0.0)
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold must be <= high_threshold, got low_threshold={low_threshold} and "
                         f"high_threshold={high_threshold}")
    check_number(scale_factor, "scale_factor", 0.0, strict=True, maximum=1.0)
    h, w = image01.shape[-2:]
    # floor(H·s) with a guard against float error (s = 1/2 gives exactly H // 2)
    hs, ws = int(h * scale_factor + 1e-6), int(w * scale_factor + 1e-6)
    if hs < 1 or ws < 1:
        raise ValueError(f"image01 of size {h}×{w} is too small for scale_factor={scale_factor}")
    box = _box_mask(boxes, b, h, w, image01.device)
    if b == 0:  # an empty batch
        return torch.zeros(0, h, w, dtype=torch.long, device=image01.device)

    dtype = compute_dtype(image01, cams)
    small_img = F.interpolate(image01.to(dtype), size=(hs, ws), mode="bilinear", align_corners=False)
    small_cams = F.interpolate(cams.to(dtype), size=(hs, ws), mode="bilinear", align_corners=False)

    # Valid keys per image: background (0) and c + 1 for each present class, padded to the largest count.
    keys_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=cams.device), lab > 0.5], dim=1)
    n_keys = int(keys_valid.sum(1).max())
    order = torch.argsort((~keys_valid).to(torch.int8), dim=1, stable=True)[:, :n_keys]  # valid keys first
    slot_valid = torch.gather(keys_valid, 1, order)  # B×n_keys

    maps = []
    for tau in (high_threshold, low_threshold):
        with_bg = torch.cat([small_cams.new_full((b, 1, hs, ws), tau), small_cams], dim=1)
        sel = torch.gather(with_bg, 1, order.view(b, n_keys, 1, 1).expand(b, n_keys, hs, ws))
        sel = sel.masked_fill(~slot_valid.view(b, n_keys, 1, 1), float("-inf")).softmax(dim=1)
        maps.append(sel)
    refined = refiner(small_img, torch.cat(maps, dim=1))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    invalid = ~slot_valid.view(b, n_keys, 1, 1)
    label_h, label_l = (
        torch.gather(order, 1, part.masked_fill(invalid, float("-inf")).argmax(dim=1).view(b, -1)).view(b, h, w)
        for part in refined.split(n_keys, dim=1)
    )
    out = label_h.clone()
    out[label_h == 0] = ignore_index
    out[(label_h == 0) & (label_l == 0)] = 0
    if box is not None:
        out = out.masked_fill(~box, ignore_index)
    return out
