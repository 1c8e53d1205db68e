"""PMM pseudo-mask blocks: coefficient-of-variation smoothing, proportional pseudo-masks, cyclic pseudo-masks.

From "Pseudo-mask Matters in Weakly-supervised Semantic Segmentation" (Li et al., ICCV 2021; official code
``Eli-YiLi/PMM`` for the pseudo-masks and ``Eli-YiLi/WSSS_MMSeg`` for the segmentation stage). Every default
is the released value:

- [`cov_smooth`][] (CVS, ``PMM:pipline/refine_cam.py`` ``get_CoV`` + the power in ``ppmg``) raises each
  class map to the power ``1 - 0.3·CoV``; it is a per-class gamma, not a spatial filter.
- [`proportional_pseudo_mask`][] (PPMG, ``refine_cam.py`` ``ppmg``) gives every present class its own
  binary dense-CRF foreground and resolves overlaps by each pixel's share of its class's CAM mass, so a
  small, weakly activated object is not swallowed by a large, strongly activated one.
- [`CyclicPseudoMask`][] (CP, ``WSSS_MMSeg:tools/run_wsss.sh`` + ``encoder_decoder.py`` ``aug_test``)
  predicts the new pseudo masks of the training set with a trained segmentation model (multi-scale + flip +
  slide + CRF); [`wsss_blocks.train.cyclic.relabel`][wsss_blocks.train.cyclic.relabel] writes them for a whole dataset.

The pretended under-fitting loss (PUF) lives in [`wsss_blocks.losses`][wsss_blocks.losses].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_choice,
    check_finite,
    check_labels,
    check_number,
    check_positive,
    check_range,
    check_tensor,
    checks_enabled,
    shape_str,
)
from .crf import DenseCRF, as_dense_crf

__all__ = [
    "cov_smooth",
    "cov_smooth_detailed",
    "CoVSmoothOutput",
    "CoVSmooth",
    "proportional_pseudo_mask",
    "proportional_pseudo_mask_detailed",
    "ProportionalPseudoMask",
    "PseudoMaskParts",
    "CyclicPseudoMask",
    "PPMG_CRF",
    "CYCLIC_CRF",
]

# CAMs normalised by PMM's multi-crop min-max step can dip a hair below 0 (PMM
# ``pipeline/infer_multi_crop.py``); accept
# that much slack around [0, 1] before calling the input "not normalised".
_RANGE_TOL = 1e-3
_NORMALISE_HINT = ("PMM expects per-class CAMs normalised to [0, 1]; apply "
                   "wsss_blocks.cam.normalize_cams(cams) (or normalize_cams(cams, mode='minmax')) first")
_CRF_CLIP = 1e-5  # pydensecrf unary_from_softmax clip, as used by the release
PPMG_CRF = "pmm-binary"
"""Name of the [`DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF] preset of PPMG's per-class 2-label CRF
(``Eli-YiLi/PMM`` ``pipline/refine_cam.py`` ``crf_inference``: 10 iterations, Gaussian sxy 3 compat 10, bilateral
sxy 80 srgb 13 compat 10, probabilities used as given)."""
CYCLIC_CRF = "deeplab"
"""Name of the preset of the CRF on the averaged softmax of the cyclic relabelling (``Eli-YiLi/WSSS_MMSeg``
``mmseg/models/segmentors/encoder_decoder.py`` ``DenseCRF`` defaults: 10 iterations, Gaussian sxy 1 compat 3,
bilateral sxy 67 srgb 3 compat 4, the deeplab-pytorch values)."""


def _check_range01(x: Tensor, name: str) -> None:
    """One pass (aminmax) range check of CAMs against [0, 1] with PMM's slack; NaN/Inf are rejected."""
    if x.numel() == 0 or not checks_enabled():
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        check_finite(x, name)  # raises with NaN/Inf counts
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; {_NORMALISE_HINT}")


def _check_cams01(cams: object, name: str, ndim: int | None = None, layout: str | None = None) -> Tensor:
    x = check_tensor(cams, name, ndim, layout=layout, floating=True)
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (…×H×W), got shape {shape_str(x)}")
    _check_range01(x, name)
    return x


# ----------------------------------------------------------------------------------------------------
# Coefficient-of-variation smoothing (CVS)
# ----------------------------------------------------------------------------------------------------


def _cov(x: Tensor, fg_threshold: float, cv_scale: float, eps: float) -> Tensor:
    """cv_scale·std/mean over pixels with x > fg_threshold (population std), 0 where none qualifies. x: float32."""
    active = (x > fg_threshold).to(x.dtype)
    n = active.sum(dim=(-2, -1))
    denom = n.clamp_min(1.0)
    mean = (x * active).sum(dim=(-2, -1)) / denom
    var = (((x - mean[..., None, None]) * active) ** 2).sum(dim=(-2, -1)) / denom
    cov = cv_scale * var.sqrt() / (mean + eps)
    return torch.where(n > 0, cov, torch.zeros_like(cov))


def cov_smooth(
    cams: Tensor,
    fg_threshold: float = 0.05,
    cv_scale: float = 0.3,
    min_exponent: float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Coefficient-of-variation smoothing: raise each class map to the power ``1 - cv_scale·CoV``.

    PMM (Li et al., ICCV 2021), CVS. Per image and class, over the activated pixels
    ``P = {x : A(x) > fg_threshold}``:

        cv  = cv_scale · std_P(A) / (mean_P(A) + eps)      (population std; cv = 0 when P is empty)
        out = (A · [A >= fg_threshold]) ** (1 - cv)

    Because ``A`` lies in [0, 1] and the exponent is below 1, the map is *raised*: weak activations are
    lifted more than strong ones, and more so for peaky (high-CoV) maps. Defaults are the release
    (``PMM:pipline/refine_cam.py`` ``get_CoV``, ``--cam_thresh 0.05``, ``--cv_scale 0.3``).

    The release never clamps the exponent. For maps in [0, 1] with ``fg_threshold=0.05`` the CoV cannot exceed
    about 2.2, so ``1 - 0.3·CoV > 0.34`` and nothing goes wrong; with a larger ``cv_scale`` or a smaller
    ``fg_threshold`` the exponent can reach 0 (zeros become 1) or go negative (zeros become ``inf``).
    ``min_exponent`` (e.g. ``0.05``) floors it; ``None`` keeps the released behaviour.

    The statistics are computed in float32 (the release runs them in float16 on its stored CAMs); the
    result has the input dtype. It runs on any device, batched over all leading dims, with no loops.
    Not meant to be differentiated (the power has an infinite slope at 0).

    Args:
        cams: class maps normalised to [0, 1] (see [`wsss_blocks.cam.normalize_cams`][wsss_blocks.cam.normalize_cams]).
        fg_threshold: activation threshold ``t`` for the CoV statistics and for zeroing before the power
            (PMM's ``--cam_thresh``).
        cv_scale: factor folded into the CoV (PMM's ``--cv_scale``).
        min_exponent: optional floor for ``1 - cv``; ``None`` = release (no clamp).
        eps: added to the mean in the CoV denominator (release: 1e-8).

    Shape:
        - cams: …×H×W, e.g. B×C×H×W
        - output: same shape as ``cams``

    Examples:
        >>> cams = torch.tensor([[[0.0, 0.2], [0.4, 0.8]]])
        >>> bool((cov_smooth(cams) >= cams).all())
        True
    """
    return cov_smooth_detailed(cams, fg_threshold, cv_scale, min_exponent, eps).smoothed


@dataclass
class CoVSmoothOutput:
    """Result of [`cov_smooth_detailed`][].

    Attributes:
        smoothed: the smoothed maps, shape and dtype of the input.
        cov: the per-map coefficient of variation with ``cv_scale`` folded in, float32, shape … (e.g. B×C).
    """

    smoothed: Tensor
    cov: Tensor


def cov_smooth_detailed(cams: Tensor, fg_threshold: float = 0.05, cv_scale: float = 0.3,
                        min_exponent: float | None = None, eps: float = 1e-8) -> CoVSmoothOutput:
    """[`cov_smooth`][] plus the per-map ``cv`` (``cv_scale`` folded in); the arguments are the same.

    Shape:
        - cams: …×H×W
        - output: [`CoVSmoothOutput`][] (``smoothed`` like ``cams``, ``cov`` of shape …)

    Examples:
        >>> out = cov_smooth_detailed(torch.tensor([[[0.0, 0.2], [0.4, 0.8]]]))
        >>> round(out.cov.item(), 4)  # 0.3 * std([.2,.4,.8]) / mean([.2,.4,.8])
        0.1604
    """
    _check_cov_options(cv_scale, eps)
    return _cov_smooth_checked(cams, fg_threshold, cv_scale, min_exponent, eps)


def _check_cov_options(cv_scale: float, eps: float) -> None:
    check_number(cv_scale, "cv_scale", 0.0)
    check_number(eps, "eps", 0.0)


def _cov_smooth_checked(cams: Tensor, fg_threshold: float, cv_scale: float, min_exponent: float | None,
                        eps: float) -> CoVSmoothOutput:
    """[`cov_smooth_detailed`][] with checked options."""
    x = _check_cams01(cams, "cams")
    out, cv = _cov_smooth(x.float(), float(fg_threshold), float(cv_scale), min_exponent, float(eps))
    return CoVSmoothOutput(smoothed=out.to(x.dtype), cov=cv)


def _cov_smooth(xf: Tensor, fg_threshold: float, cv_scale: float, min_exponent: float | None,
                eps: float) -> tuple[Tensor, Tensor]:
    """Unchecked CVS on float32 maps: (smoothed, cv)."""
    cv = _cov(xf, fg_threshold, cv_scale, eps)
    exponent = 1.0 - cv
    if min_exponent is not None:
        exponent = exponent.clamp_min(float(min_exponent))
    kept = xf * (xf >= fg_threshold).to(xf.dtype)
    return kept.pow(exponent[..., None, None]), cv


class CoVSmooth(nn.Module):
    """Module form of [`cov_smooth`][] (PMM coefficient-of-variation smoothing).

    Shape:
        - cams: …×H×W in [0, 1]
        - output: same shape

    Examples:
        >>> CoVSmooth()(torch.rand(2, 20, 8, 8)).shape
        torch.Size([2, 20, 8, 8])
    """

    def __init__(self, fg_threshold: float = 0.05, cv_scale: float = 0.3, min_exponent: float | None = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        _check_cov_options(cv_scale, eps)
        self.fg_threshold = fg_threshold
        self.cv_scale = cv_scale
        self.min_exponent = min_exponent
        self.eps = eps

    @override
    def forward(self, cams: Tensor) -> Tensor:
        return self.detailed(cams).smoothed

    def detailed(self, cams: Tensor) -> CoVSmoothOutput:
        """Smoothed maps and the per-map ``cv``; see [`cov_smooth_detailed`][]."""
        return _cov_smooth_checked(cams, self.fg_threshold, self.cv_scale, self.min_exponent, self.eps)

    @override
    def extra_repr(self) -> str:
        return f"fg_threshold={self.fg_threshold}, cv_scale={self.cv_scale}, min_exponent={self.min_exponent}"


# ----------------------------------------------------------------------------------------------------
# Dense CRF glue
# ----------------------------------------------------------------------------------------------------


def _to_uint8_images(image01: Tensor) -> Tensor:
    """B×3×H×W float in [0, 1] -> B×3×H×W uint8 (the colour scale the released sigmas assume)."""
    return (image01.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------
# Proportional pseudo-mask generation (PPMG)
# ----------------------------------------------------------------------------------------------------


@dataclass
class PseudoMaskParts:
    """Result of [`proportional_pseudo_mask_detailed`][]: the mask and its intermediate maps.

    Attributes:
        mask: B×H×W int64 pseudo-masks (0 background, c+1 class c).
        smoothed: B×C×H×W float32 CoV-smoothed maps ``Ã`` of the present classes (0 for absent ones).
        cov: B×C coefficients of variation, scale folded in (0 for absent classes).
        foreground: B×C×H×W bool per-class binary foregrounds ``F_c`` (all False for absent classes).
        importance: B×C×H×W float32 ``A_c / (1 + Σ A_c·F_c)`` (0 for absent classes).
        scores: B×(C+1)×H×W float32 the argmax scores (channel 0 = background; absent classes ``-inf``).
    """

    mask: Tensor
    smoothed: Tensor
    cov: Tensor
    foreground: Tensor
    importance: Tensor
    scores: Tensor


ForegroundFn = Callable[[Tensor, "Tensor | None"], Tensor]


def proportional_pseudo_mask(
    cams: Tensor,
    labels: Tensor,
    image01: Tensor | None = None,
    alpha: float = 11.0,
    fg_threshold: float = 0.05,
    cv_scale: float = 0.3,
    posterior_threshold: float = 0.5,
    foreground: Literal["crf", "threshold"] | ForegroundFn = "crf",
    crf: DenseCRF | str | Mapping[str, Any] = PPMG_CRF,
    min_exponent: float | None = None,
    crf_channel_order: Literal["bgr", "rgb"] = "bgr",
) -> Tensor:
    """Proportional pseudo-masks: per-class CRF foregrounds, overlaps resolved by share of class mass.

    PMM (Li et al., ICCV 2021), PPMG (``Eli-YiLi/PMM`` ``pipline/refine_cam.py`` ``ppmg``). For every class c
    present in ``labels``, independently:

    1. ``Ã_c = cov_smooth(A_c)`` (threshold ``fg_threshold``, scale ``cv_scale``);
    2. per-class background ``B_c = (1 - Ã_c) ** alpha`` (from this class alone, not the max over classes);
    3. binary foreground ``F_c = [Q_c(fg) > posterior_threshold]`` where ``Q_c`` is a 2-label dense CRF on
       ``[B_c, Ã_c]`` (unary ``-log(clip(p, 1e-5))``, released parameters: preset ``"pmm-binary"``);
    4. importance ``I_c = A_c / (1 + Σ_x A_c(x) F_c(x))``, with the **raw** CAM ``A_c``.

    Then ``score_0 = Π_c (1 - F_c)`` (1 where no class claims the pixel), ``score_c = F_c · I_c`` and the
    mask is the argmax with ties to the lowest index: unclaimed pixels are background, a pixel claimed by
    several classes goes to the class for which it carries the largest share of the class's total
    activation, and a claimed pixel whose CAM is 0 becomes background. Absent classes never appear; an
    image with no present class is all background. There is no ignore label.

    ``foreground="threshold"`` skips the CRF and thresholds its initial state,
    ``Ã / (Ã + B)`` (both clipped at 1e-5) ``> posterior_threshold``, i.e. a CRF with zero iterations; it needs
    no image. A callable ``foreground(probs, image_uint8)`` receives the N×2×H×W ``[B_c, Ã_c]`` stacks of the N
    present (image, class) pairs and the matching N×3×H×W uint8 images (``None`` without ``image01``) and
    returns N×H×W foreground probabilities (thresholded at ``posterior_threshold``) or a bool mask.

    Defaults are the release: α = 11 (``run.py`` stages D/E; the argparse default 24 is for the stage-B
    joint CRF), ``fg_threshold`` 0.05 (``--cam_thresh``), ``cv_scale`` 0.3, ``posterior_threshold`` 0.5.

    Args:
        cams: foreground CAMs normalised per image and class to [0, 1] (PMM min-max normalises;
            [`wsss_blocks.cam.normalize_cams`][wsss_blocks.cam.normalize_cams]). Values a hair below 0 (≥ -1e-3) are
            tolerated. Only the maps of present classes are read (and range-checked).
        labels: multi-hot image labels; only present classes get a foreground.
        image01: RGB images, float in [0, 1], at the CAM resolution; required for ``"crf"``.
        alpha: power of the per-class background.
        fg_threshold: CVS threshold on the CAM (PMM's ``--cam_thresh``).
        cv_scale: CVS scale.
        posterior_threshold: threshold on the foreground posterior (PMM's ``fg_thresh``).
        foreground: ``"crf"`` (release), ``"threshold"`` or a callable (see above).
        crf: the dense CRF of ``foreground="crf"``: a [`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF],
            a preset name or a config mapping ([`wsss_blocks.crf.as_dense_crf`][wsss_blocks.crf.dense_crf.as_dense_crf];
            default ``"pmm-binary"``, the release, whose probabilities are used as given like pydensecrf's
            ``unary_from_softmax``). Its sigmas assume a 0..255 colour scale (``image01`` is converted).
        min_exponent: passed to [`cov_smooth`][] (``None`` = release).
        crf_channel_order: the colour order of the image the dense CRF sees: ``"bgr"`` (released: PMM reads the
            image with ``cv2.imread``, ``pipeline/refine_cam.py`` ``work``) or ``"rgb"``. The bilateral kernel is
            symmetric in the channels, but pydensecrf's permutohedral lattice is not exactly, so the order
            changes a few pixels (0.1-1.7 % of the mask pixels on VOC images). A ``foreground`` callable always
            gets RGB.

    Shape:
        - cams: B×C×H×W
        - labels: B×C
        - image01: B×3×H×W
        - output: B×H×W int64 with values in {0} ∪ {c+1 : labels[b, c] = 1}

    Examples:
        >>> cams = torch.zeros(1, 2, 4, 4)
        >>> cams[0, 0, :, :2] = 0.9   # class 0: left half
        >>> cams[0, 1, 1:3, 3] = 0.6  # class 1: a small, weaker blob on the right
        >>> proportional_pseudo_mask(cams, torch.tensor([[1.0, 1.0]]), foreground="threshold")
        tensor([[[1, 1, 0, 0],
                 [1, 1, 0, 2],
                 [1, 1, 0, 2],
                 [1, 1, 0, 0]]])
    """
    return _ppmg(cams, labels, image01, alpha, fg_threshold, cv_scale, posterior_threshold, foreground, crf,
                 min_exponent, crf_channel_order, parts=False).mask


def proportional_pseudo_mask_detailed(
    cams: Tensor,
    labels: Tensor,
    image01: Tensor | None = None,
    alpha: float = 11.0,
    fg_threshold: float = 0.05,
    cv_scale: float = 0.3,
    posterior_threshold: float = 0.5,
    foreground: Literal["crf", "threshold"] | ForegroundFn = "crf",
    crf: DenseCRF | str | Mapping[str, Any] = PPMG_CRF,
    min_exponent: float | None = None,
    crf_channel_order: Literal["bgr", "rgb"] = "bgr",
) -> PseudoMaskParts:
    """[`proportional_pseudo_mask`][] plus its intermediate maps; the arguments are the same.

    Shape:
        - cams: B×C×H×W; labels: B×C; image01: B×3×H×W
        - output: [`PseudoMaskParts`][] (``mask`` B×H×W int64, per-class maps B×C×H×W, ``scores`` B×(C+1)×H×W)

    Examples:
        >>> cams = torch.zeros(1, 2, 4, 4); cams[0, 0, :, :2] = 0.9
        >>> parts = proportional_pseudo_mask_detailed(cams, torch.tensor([[1.0, 0.0]]), foreground="threshold")
        >>> parts.mask[0, 0].tolist(), parts.foreground.shape
        ([1, 1, 0, 0], torch.Size([1, 2, 4, 4]))
    """
    return _ppmg(cams, labels, image01, alpha, fg_threshold, cv_scale, posterior_threshold, foreground, crf,
                 min_exponent, crf_channel_order, parts=True)


def _ppmg(cams: Tensor, labels: Tensor, image01: Tensor | None, alpha: float, fg_threshold: float, cv_scale: float,
          posterior_threshold: float, foreground: Literal["crf", "threshold"] | ForegroundFn,
          crf: DenseCRF | str | Mapping[str, Any], min_exponent: float | None,
          crf_channel_order: Literal["bgr", "rgb"], parts: bool) -> PseudoMaskParts:
    """PPMG; the per-class maps of the result are filled only with ``parts`` (else they are empty)."""
    _check_ppmg_options(alpha, posterior_threshold, foreground, crf_channel_order)
    dense = as_dense_crf(crf) if foreground == "crf" else None
    return _ppmg_checked(cams, labels, image01, alpha, fg_threshold, cv_scale, posterior_threshold, foreground,
                         dense, min_exponent, parts, crf_channel_order)


def _check_ppmg_options(alpha: float, posterior_threshold: float,
                        foreground: Literal["crf", "threshold"] | ForegroundFn,
                        crf_channel_order: str = "bgr") -> None:
    check_positive(float(alpha), "alpha")
    check_choice(crf_channel_order, "crf_channel_order", ("bgr", "rgb"))
    if not 0.0 <= posterior_threshold < 1.0:
        raise ValueError(f"posterior_threshold must lie in [0, 1), got {posterior_threshold}")
    if isinstance(foreground, str):
        if foreground not in ("crf", "threshold"):
            raise ValueError(f"foreground must be 'crf', 'threshold' or a callable, got {foreground!r}")
    elif not callable(foreground):
        raise TypeError(f"foreground must be 'crf', 'threshold' or a callable, got {type(foreground).__name__}")


def _ppmg_checked(cams: Tensor, labels: Tensor, image01: Tensor | None, alpha: float, fg_threshold: float,
                  cv_scale: float, posterior_threshold: float,
                  foreground: Literal["crf", "threshold"] | ForegroundFn, dense: DenseCRF | None,
                  min_exponent: float | None, parts: bool,
                  crf_channel_order: Literal["bgr", "rgb"] = "bgr") -> PseudoMaskParts:
    """PPMG with checked options (``dense`` is the CRF of ``foreground="crf"``)."""
    x = check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
    B, C, H, W = x.shape
    lab = check_labels(labels, "labels", batch=B, num_classes=C).to(x.device)
    check_finite(x, "cams")  # every map, also those of absent classes (only present ones are range-checked)
    img_u8: Tensor | None = None
    if image01 is not None:
        check_tensor(image01, "image01", 4, layout="B×3×H×W")
        if image01.shape[0] != B or image01.shape[1] != 3 or tuple(image01.shape[-2:]) != (H, W):
            raise ValueError(f"image01 must have shape ({B}, 3, {H}, {W}) to match cams {shape_str(x)}, got "
                             f"{shape_str(image01)}; resize the CAMs to the image (or the image to the CAMs)")
        if not image01.is_floating_point():
            raise TypeError(f"image01 must be float RGB in [0, 1], got dtype {image01.dtype}; convert uint8 images "
                            f"with image.float() / 255")
        check_range(image01, "image01", 0.0, 1.0, hint="pass RGB scaled to [0, 1]")
        img_u8 = _to_uint8_images(image01)
    elif foreground == "crf":
        raise ValueError("image01 is required for foreground='crf' (the dense CRF is image-guided); "
                         "pass foreground='threshold' to build pseudo-masks without an image")

    # Everything below runs on the N present (image, class) maps only (VOC: ~1.5 per image, not 20);
    # only those maps are read, so only they are range-checked.
    present = lab.bool()
    bi, ci = present.nonzero(as_tuple=True)  # present pairs, ascending: ties go to the lower class id
    xp = x[bi, ci].float()  # N×H×W raw CAMs A_c
    _check_range01(xp, "cams")
    smoothed, cv = _cov_smooth(xp, float(fg_threshold), float(cv_scale), min_exponent, 1e-8)
    # (1 - Ã)^α; the clamp only matters for inputs within the tolerance above 1 (a no-op on [0, 1]).
    bg = (1.0 - smoothed).clamp_min(0.0).pow(float(alpha))
    fg = torch.zeros(xp.shape, dtype=torch.bool, device=x.device)
    if bi.numel() > 0:
        probs = torch.stack([bg, smoothed], dim=1)  # N×2×H×W, channel 1 = foreground
        if foreground == "threshold":
            pc = probs.clamp(_CRF_CLIP, 1.0)
            fg = (pc[:, 1] / pc.sum(1)) > posterior_threshold
        elif foreground == "crf":
            assert img_u8 is not None
            assert dense is not None
            crf_img = img_u8[bi] if crf_channel_order == "rgb" else img_u8[bi].flip(1)  # released: cv2 BGR
            post = dense(None, probs.float(), image_uint8=crf_img.permute(0, 2, 3, 1))
            fg = post[:, 1].to(x.device) > posterior_threshold
        else:
            res = foreground(probs, None if img_u8 is None else img_u8[bi])
            if not isinstance(res, Tensor) or tuple(res.shape) != (probs.shape[0], H, W):
                got = shape_str(res) if isinstance(res, Tensor) else type(res).__name__
                raise ValueError(f"foreground callable must return a {probs.shape[0]}×{H}×{W} tensor, got {got}")
            fg = res.to(x.device) if res.dtype == torch.bool else res.to(x.device) > posterior_threshold

    fgf = fg.to(torch.float32)
    importance = xp / (1.0 + (xp * fgf).sum(dim=(-2, -1), keepdim=True))  # raw CAM over its own fg mass
    cls_scores = fgf * importance  # N×H×W
    claimed = torch.zeros(B, H, W, dtype=torch.float32, device=x.device).index_add_(0, bi, fgf)
    bg_score = (claimed == 0).to(torch.float32)  # background: claimed by no class
    # argmax over [bg, present classes] with ties to the lowest index, without a B×(C+1)×H×W tensor
    idx = bi[:, None, None].expand(-1, H, W)
    best = bg_score.scatter_reduce(0, idx, cls_scores, "amax", include_self=True)
    big = torch.iinfo(torch.int64).max
    cand = torch.where(cls_scores == best[bi], (ci + 1)[:, None, None], big)
    first = torch.full((B, H, W), big, dtype=torch.int64, device=x.device).scatter_reduce_(
        0, idx, cand, "amin", include_self=True)
    mask = torch.where(bg_score == best, torch.zeros_like(first), first)
    if parts:
        def full(v: Tensor, fill: float | bool = 0.0) -> Tensor:
            out = torch.full((B, C, *tuple(v.shape[1:])), fill, dtype=v.dtype, device=x.device)
            out[bi, ci] = v
            return out

        scores = torch.full((B, C + 1, H, W), float("-inf"), dtype=torch.float32, device=x.device)
        scores[bi, ci + 1] = cls_scores
        scores[:, 0] = bg_score
        return PseudoMaskParts(mask=mask, smoothed=full(smoothed), cov=full(cv), foreground=full(fg, False),
                               importance=full(importance), scores=scores)
    empty = mask.new_empty(0)
    return PseudoMaskParts(mask=mask, smoothed=empty, cov=empty, foreground=empty, importance=empty, scores=empty)


class ProportionalPseudoMask(nn.Module):
    """Module form of [`proportional_pseudo_mask`][] (PMM PPMG) storing the hyper-parameters.

    Shape:
        - cams: B×C×H×W in [0, 1]; labels: B×C; image01: B×3×H×W (optional for ``"threshold"``)
        - output: B×H×W int64

    Examples:
        >>> ppmg = ProportionalPseudoMask(foreground="threshold")
        >>> ppmg(torch.rand(2, 20, 8, 8), torch.eye(20)[:2]).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        alpha: float = 11.0,
        fg_threshold: float = 0.05,
        cv_scale: float = 0.3,
        posterior_threshold: float = 0.5,
        foreground: Literal["crf", "threshold"] | ForegroundFn = "crf",
        crf: DenseCRF | str | Mapping[str, Any] = PPMG_CRF,
        min_exponent: float | None = None,
        crf_channel_order: Literal["bgr", "rgb"] = "bgr",
    ) -> None:
        super().__init__()
        _check_ppmg_options(alpha, posterior_threshold, foreground, crf_channel_order)
        self.crf_channel_order: Literal["bgr", "rgb"] = crf_channel_order
        self.alpha = alpha
        self.fg_threshold = fg_threshold
        self.cv_scale = cv_scale
        self.posterior_threshold = posterior_threshold
        self.foreground = foreground
        self.crf = as_dense_crf(crf)
        self.min_exponent = min_exponent

    @override
    def forward(self, cams: Tensor, labels: Tensor, image01: Tensor | None = None) -> Tensor:
        return self._run(cams, labels, image01, parts=False).mask

    def detailed(self, cams: Tensor, labels: Tensor, image01: Tensor | None = None) -> PseudoMaskParts:
        """The mask and its intermediate maps; see [`proportional_pseudo_mask_detailed`][]."""
        return self._run(cams, labels, image01, parts=True)

    def _run(self, cams: Tensor, labels: Tensor, image01: Tensor | None, parts: bool) -> PseudoMaskParts:
        dense = self.crf if self.foreground == "crf" else None
        return _ppmg_checked(cams, labels, image01, self.alpha, self.fg_threshold, self.cv_scale,
                             self.posterior_threshold, self.foreground, dense, self.min_exponent, parts,
                             self.crf_channel_order)

    @override
    def extra_repr(self) -> str:
        fg = self.foreground if isinstance(self.foreground, str) else "callable"
        return f"alpha={self.alpha}, fg_threshold={self.fg_threshold}, cv_scale={self.cv_scale}, foreground={fg}"


# ----------------------------------------------------------------------------------------------------
# Cyclic pseudo-masks (CP)
# ----------------------------------------------------------------------------------------------------


def _rescale_factor(h: int, w: int, img_scale: tuple[int, int], ratio: float) -> float:
    """Mmcv ``Resize(keep_ratio=True)`` factor for ``img_scale`` times ``ratio`` (MultiScaleFlipAug)."""
    long_edge, short_edge = max(img_scale) * ratio, min(img_scale) * ratio
    return min(long_edge / max(h, w), short_edge / min(h, w))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _slide_logits(model: Callable[[Tensor], Tensor], x: Tensor, crop: tuple[int, int],
                  stride: tuple[int, int]) -> Tensor:
    """Mmseg ``slide_inference``: average the logits of overlapping crops (all crops in one batch)."""
    B, _, H, W = x.shape
    ch, cw = crop
    sh, sw = stride
    hg = max(H - ch + sh - 1, 0) // sh + 1
    wg = max(W - cw + sw - 1, 0) // sw + 1
    boxes = []
    for i in range(hg):  # a handful of windows, not pixels
        for j in range(wg):
            y2, x2 = min(i * sh + ch, H), min(j * sw + cw, W)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in boxes], dim=0)
    out = _resize(model(crops), tuple(crops.shape[-2:]))
    logits = out.new_zeros(B, out.shape[1], H, W)
    count = out.new_zeros(1, 1, H, W)
    for n, (y1, y2, x1, x2) in enumerate(boxes):
        logits[:, :, y1:y2, x1:x2] += out[n * B:(n + 1) * B]
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


class CyclicPseudoMask(nn.Module):
    """PMM cyclic pseudo-masks: the test-time-augmented, CRF-refined prediction that relabels the training set.

    PMM (Li et al., ICCV 2021), CP (``Eli-YiLi/WSSS_MMSeg`` ``tools/run_wsss.sh``, ``*_cp.py`` configs,
    ``mmseg/models/segmentors/encoder_decoder.py`` ``aug_test``). The released cycle is run once: train the
    segmentation model on the PPMG masks with PUF, pick the best checkpoint, predict every training image with
    multi-scale + flip + slide inference and a dense CRF, and train a *fresh* model on those predictions with
    plain cross-entropy. This block is the prediction step (the trainer's
    [`wsss_blocks.train.cyclic.relabel`][wsss_blocks.train.cyclic.relabel] writes it for a whole dataset):

    - per image, for each ratio r the image is resized as mmseg's ``Resize(img_scale·r, keep_ratio)``
      (``img_scale=None``: by r itself), run whole or by sliding windows (``slide=(crop, stride)``, logits
      averaged over overlaps), resized back, softmaxed; the flipped pass is flipped back; all softmaxes
      are averaged (via [`wsss_blocks.cam.multiscale_cams`][wsss_blocks.cam.multiscale_cams] with ``reduce="mean"``);
    - optional dense CRF on the averaged probabilities (preset ``"deeplab"``, the release's values), then argmax;
    - ``policy="replace"`` (release): the prediction replaces the old mask entirely; every pixel gets a
      label, and nothing is intersected with the image labels, fused with the old mask or thresholded.
      ``policy="restrict"`` (opt-in): classes absent from the image labels get probability 0 before the
      CRF and can never win the argmax.

    Defaults are the release's test pipeline: ratios (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) of
    ``img_scale=(2048, 512)``, flip, slide crop 512 stride 480, CRF on. For small images use
    ``img_scale=None, slide=None``. The segmentation model is passed at call time.

    Args:
        scales: test ratios (multiplying ``img_scale``, or the image size when ``img_scale`` is None).
        flip: add horizontally flipped passes.
        img_scale: mmseg ``img_scale`` (long, short) for the keep-ratio resize, or None.
        slide: ``(crop, stride)`` in pixels (ints or (h, w) pairs) for sliding-window inference, or None
            for whole-image inference.
        crf: the dense CRF on the averaged probabilities: a
            [`wsss_blocks.crf.DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF], a preset name, a config mapping (default
            ``"deeplab"``: WSSS_MMSeg's ``DenseCRF`` defaults) or ``None`` for no CRF.
        policy: ``"replace"`` (release) or ``"restrict"`` (to the image labels; needs ``labels``).
        preprocess: callable applied to the B×3×H×W [0, 1] images before the model (e.g. ImageNet
            normalisation); the CRF always sees the raw [0, 1] image.

    Shape:
        - model input: B×3×h×w (after ``preprocess``); model output: B×K×h'×w' logits, channel 0 =
          background, K = C + 1
        - image01: B×3×H×W in [0, 1]; labels: B×C (for ``policy="restrict"``)
        - [`predict`][]: B×K×H×W probabilities; ``forward``: B×H×W int64 mask

    Examples:
        >>> net = torch.nn.Conv2d(3, 3, 1)                       # a "segmentation model", K = 3
        >>> cp = CyclicPseudoMask(scales=(1.0, 0.5), img_scale=None, slide=None, crf=None)
        >>> cp(net, torch.rand(2, 3, 16, 20)).shape
        torch.Size([2, 16, 20])
    """

    def __init__(
        self,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        flip: bool = True,
        img_scale: tuple[int, int] | None = (2048, 512),
        slide: tuple[int | tuple[int, int], int | tuple[int, int]] | None = (512, 480),
        crf: DenseCRF | str | Mapping[str, Any] | None = CYCLIC_CRF,
        policy: Literal["replace", "restrict"] = "replace",
        preprocess: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if len(scales) == 0:
            raise ValueError("scales must contain at least one ratio, got an empty sequence")
        for s in scales:
            check_positive(float(s), "scales")
        if img_scale is not None and (len(img_scale) != 2 or min(img_scale) <= 0):
            raise ValueError(f"img_scale must be a (long, short) pair of positive ints or None, got {img_scale}")
        self._crop: tuple[int, int] | None = None
        self._stride: tuple[int, int] | None = None
        if slide is not None:
            if len(slide) != 2:
                raise ValueError(f"slide must be (crop, stride) or None, got {slide}")
            crop = (slide[0], slide[0]) if isinstance(slide[0], int) else tuple(slide[0])
            stride = (slide[1], slide[1]) if isinstance(slide[1], int) else tuple(slide[1])
            if min(crop) <= 0 or min(stride) <= 0:
                raise ValueError(f"slide crop and stride must be positive, got {slide}")
            self._crop = (int(crop[0]), int(crop[1]))
            self._stride = (int(stride[0]), int(stride[1]))
        if policy not in ("replace", "restrict"):
            raise ValueError(f"policy must be 'replace' (release) or 'restrict', got {policy!r}")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be callable or None, got {type(preprocess).__name__}")
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.img_scale = None if img_scale is None else (int(img_scale[0]), int(img_scale[1]))
        self.slide = slide
        self.crf = None if crf is None else as_dense_crf(crf)
        self.policy = policy
        self.preprocess = preprocess

    # -- inference -----------------------------------------------------------------------------------

    def predict(self, model: Callable[[Tensor], Tensor], image01: Tensor, labels: Tensor | None = None) -> Tensor:
        """Test-time-augmented (and CRF-refined) class probabilities for a batch of same-size images.

        Args:
            model: segmentation model returning B×K×h×w logits (channel 0 = background).
            image01: RGB images in [0, 1].
            labels: B×C image labels (used by ``policy="restrict"``; K must be C + 1).

        Shape:
            - image01: B×3×H×W
            - output: B×K×H×W probabilities (each pixel sums to 1)
        """
        from .cam import multiscale_cams

        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
        if image01.shape[1] != 3:
            raise ValueError(f"image01 must have 3 channels (B×3×H×W), got {shape_str(image01)}")
        check_range(image01, "image01", 0.0, 1.0,
                    hint="pass raw RGB in [0, 1] and put the model's normalisation in preprocess=")
        if image01.shape[0] == 0:
            raise ValueError(f"image01 must hold at least one image, got shape {shape_str(image01)}")
        B, _, H, W = image01.shape
        x = image01 if self.preprocess is None else self.preprocess(image01)
        if self.img_scale is None:
            scales: Sequence[float] = self.scales
        else:
            scales = [_rescale_factor(H, W, self.img_scale, r) for r in self.scales]

        crop, stride = self._crop, self._stride

        def fn(z: Tensor) -> Tensor:
            if crop is not None and stride is not None:
                logits = _slide_logits(model, z, crop, stride)
            else:
                logits = _resize(model(z), tuple(z.shape[-2:]))
            return torch.softmax(_resize(logits.float(), (H, W)), dim=1)

        probs = multiscale_cams(fn, x, scales=scales, flip=self.flip, out_size=(H, W), reduce="mean")
        assert isinstance(probs, Tensor)
        if self.policy == "restrict":
            if labels is None:
                raise ValueError("policy='restrict' needs the image labels (labels=None given)")
            lab = check_labels(labels, "labels", batch=B, num_classes=probs.shape[1] - 1).to(probs.device)
            keep = torch.cat([torch.ones_like(lab[:, :1]), lab], dim=1)[:, :, None, None]
            probs = probs * keep
            probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        if self.crf is not None:
            probs = self.crf(None, probs.float(), image_uint8=_to_uint8_images(image01).permute(0, 2, 3, 1)
                             ).to(probs.device)
            if self.policy == "restrict":
                probs = probs * keep
                probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return probs

    def forward(self, model: Callable[[Tensor], Tensor], image01: Tensor, labels: Tensor | None = None) -> Tensor:
        """The pseudo mask: argmax of [`predict`][] (with ``policy="restrict"`` absent classes can never win).

        Shape:
            - image01: B×3×H×W
            - output: B×H×W int64
        """
        probs = self.predict(model, image01, labels)
        if self.policy == "restrict":
            assert labels is not None
            lab = labels.to(probs.device).bool()
            keep = torch.cat([torch.ones_like(lab[:, :1]), lab], dim=1)[:, :, None, None]
            probs = probs.masked_fill(~keep, float("-inf"))
        return probs.argmax(dim=1)

    @override
    def extra_repr(self) -> str:
        return (f"scales={self.scales}, flip={self.flip}, img_scale={self.img_scale}, slide={self.slide}, "
                f"crf={self.crf is not None}, policy={self.policy!r}")
