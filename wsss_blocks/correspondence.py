"""Pairwise correspondence losses of TSCD and AFA: self correspondence distillation and affinity from attention.

* [`SelfCorrespondenceDistillation`][] — SCD (Xu et al., "Self Correspondence Distillation for End-to-End
  Weakly-Supervised Semantic Segmentation", AAAI 2023): the cosine correspondence of CAM vectors between two
  views (teacher, no gradient) is distilled into the correspondence of segmentation logits (student), in the
  form of STEGO's correlation loss. Released code: SCD ``utils/corrloss.py`` and
  ``scripts/dist_train_voc.py`` L316-332.
* [`equivariant_regularization`][] — the companion L_ER (inert in the release).
* [`AffinityFromAttentionLoss`][] — the affinity loss of AFA (Ru et al., CVPR 2022), reused by TSCD: a
  sigmoid attention affinity is pulled to 1 on same-label pairs and to 0 on different-label pairs within a
  radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_range,
    check_same_batch,
    check_tensor,
    checks_enabled,
    compute_dtype,
    shape_str,
)

__all__ = [
    "SCD_WEIGHT",
    "SCD_START_ITER",
    "scd_weight",
    "sample_points",
    "self_correspondence_loss",
    "self_correspondence_loss_detailed",
    "SCDOutput",
    "SelfCorrespondenceDistillation",
    "equivariant_regularization",
    "radius_mask",
    "attention_affinity_targets",
    "affinity_from_attention_loss",
    "AffinityFromAttentionLoss",
]

SCD_WEIGHT = 0.1
"""Released TSCD weight of the SCD loss (SCD ``scripts/dist_train_voc.py`` L353)."""
SCD_START_ITER = 2000
"""Released TSCD warm-up: iterations ``0..2000`` (inclusive) train the classifier only (``cam_iters``)."""


def scd_weight(iteration: int, weight: float = SCD_WEIGHT, start_iter: int = SCD_START_ITER) -> float:
    """Weight of the SCD loss at a training step, as released by TSCD.

    The release uses ``n_iter <= cam_iters`` (inclusive) as the classification-only phase, then a constant
    weight: 0 for ``iteration <= start_iter``, ``weight`` afterwards.

    Examples:
        >>> scd_weight(2000), scd_weight(2001)
        (0.0, 0.1)
    """
    return 0.0 if iteration <= start_iter else float(weight)


def sample_points(batch: int, num_samples: int = 40, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform random points in normalised grid coordinates [-1, 1]², as ``torch.rand(...) * 2 - 1``.

    Args:
        batch: number of images.
        num_samples: N; N×N points per image.
        generator: optional generator (its device is used for drawing; the result moves to ``device``).
        device: device of the result (default: the generator's, else CPU).
        dtype: floating dtype of the result.

    Shape:
        - output: batch×N×N×2, last dim (x, y) as ``grid_sample`` reads it

    Examples:
        >>> sample_points(2, 4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 4, 4, 2])
    """
    draw_device = generator.device if generator is not None else (device if device is not None else "cpu")
    pts = torch.rand(batch, num_samples, num_samples, 2, generator=generator, device=draw_device, dtype=dtype)
    pts = pts * 2 - 1
    return pts if device is None else pts.to(device)


def _sample(maps: Tensor, coords: Tensor, align_corners: bool, padding_mode: str) -> Tensor:
    # As released (STEGO ``sample``): the two point axes are swapped before grid_sample.
    return F.grid_sample(maps, coords.permute(0, 2, 1, 3), mode="bilinear", padding_mode=padding_mode,
                         align_corners=align_corners)


def _correlation(a: Tensor, b: Tensor, eps: float) -> Tensor:
    a = F.normalize(a, dim=1, eps=eps)
    b = F.normalize(b, dim=1, eps=eps)
    return torch.einsum("nchw,ncij->nhwij", a, b)


def _check_coords(coords: Tensor, name: str, batch: int, n: int | None) -> None:
    check_tensor(coords, name, 4, layout="B×N×N×2", floating=True)
    check_finite(coords, name)
    if coords.shape[0] != batch or coords.shape[3] != 2 or coords.shape[1] != coords.shape[2] or \
            (n is not None and coords.shape[1] != n):
        raise ValueError(f"{name} must have shape B×N×N×2 with B={batch}"
                         + (f", N={n}" if n is not None else "") + f", got {shape_str(coords)}")


def self_correspondence_loss(
    teacher_a: Tensor,
    teacher_b: Tensor,
    student_a: Tensor,
    student_b: Tensor,
    coords_a: Tensor | None = None,
    coords_b: Tensor | None = None,
    *,
    num_samples: int = 40,
    zero_clamp: bool = True,
    pointwise_center: bool = True,
    shift: float = 0.0,
    eps: float = 1e-10,
    align_corners: bool = True,
    padding_mode: str = "border",
    generator: torch.Generator | None = None,
) -> Tensor:
    """SCD loss (TSCD): distil cross-view CAM correspondence (teacher) into seg-logit correspondence (student).

    For each image, N×N points ``P`` are drawn in view a and N×N points ``Q`` in view b (independently,
    uniform in [-1, 1]², bilinear ``grid_sample`` with ``align_corners=True``, border padding). With
    ``t, s`` the teacher/student vectors at P and ``t', s'`` at Q:

    * ``F_uv = <t_u/|t_u|, t'_v/|t'_v|>`` (no gradient); pointwise centring
      ``F~_uv = F_uv - mean_v F_uv + mean_{b,u,v} F``;
    * ``C_uv = <s_u/|s_u|, s'_v/|s'_v|>``;
    * ``L = -mean_{b,u,v} max(C_uv, 0) · (F~_uv - shift)``.

    Teacher tensors are detached inside; gradients reach only ``student_a``/``student_b`` and only through
    pairs with ``C > 0``. Computed in float32 (or float64 for float64 inputs), outside autocast.

    Args:
        teacher_a: CAMs of view a (TSCD: 20 multi-scale CAMs of the crop, all channels, no background).
        teacher_b: CAMs of view b (TSCD: of the ×0.3 view).
        student_a: seg logits of view a in the same frame (any size; TSCD: 21 channels upsampled to the CAM).
        student_b: seg logits of view b.
        coords_a: optional points for view a in [-1, 1]; drawn with ``generator`` if ``None``.
        coords_b: optional points for view b.
        num_samples: N (released 40) when drawing points.
        zero_clamp: clamp the student correlation at 0 (released True).
        pointwise_center: row-centre F and add back the batch mean (released True).
        shift: STEGO's b, subtracted from F~ (released 0).
        eps: L2-normalisation eps (released 1e-10).
        align_corners: of ``grid_sample`` (released True).
        padding_mode: of ``grid_sample`` (released ``"border"``).
        generator: randomness for the points.

    Returns:
        The scalar loss ([`self_correspondence_loss_detailed`][] also returns ``F~`` and ``C``).

    Shape:
        - teacher_a: B×Ct×Ha×Wa, teacher_b: B×Ct×Hb×Wb
        - student_a: B×Cs×Ha'×Wa', student_b: B×Cs×Hb'×Wb'
        - coords_a, coords_b: B×N×N×2
        - output: scalar

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> cams, cams2 = torch.rand(2, 20, 64, 64), torch.rand(2, 20, 19, 19)
        >>> seg = torch.randn(2, 21, 64, 64, requires_grad=True)
        >>> seg2 = torch.randn(2, 21, 19, 19, requires_grad=True)
        >>> loss = self_correspondence_loss(cams, cams2, seg, seg2, num_samples=8, generator=g)
        >>> loss.backward()
        >>> loss.ndim, seg.grad is not None
        (0, True)
    """
    return self_correspondence_loss_detailed(
        teacher_a, teacher_b, student_a, student_b, coords_a, coords_b, num_samples=num_samples,
        zero_clamp=zero_clamp, pointwise_center=pointwise_center, shift=shift, eps=eps, align_corners=align_corners,
        padding_mode=padding_mode, generator=generator).loss


@dataclass
class SCDOutput:
    """Result of [`self_correspondence_loss_detailed`][].

    Attributes:
        loss: the scalar SCD loss (gradient into the students).
        teacher_corr: ``F~``, the centred teacher correspondence, B×N×N×N×N (detached).
        student_corr: ``C``, the student correspondence, B×N×N×N×N (detached).
    """

    loss: Tensor
    teacher_corr: Tensor
    student_corr: Tensor


def self_correspondence_loss_detailed(
    teacher_a: Tensor,
    teacher_b: Tensor,
    student_a: Tensor,
    student_b: Tensor,
    coords_a: Tensor | None = None,
    coords_b: Tensor | None = None,
    *,
    num_samples: int = 40,
    zero_clamp: bool = True,
    pointwise_center: bool = True,
    shift: float = 0.0,
    eps: float = 1e-10,
    align_corners: bool = True,
    padding_mode: str = "border",
    generator: torch.Generator | None = None,
) -> SCDOutput:
    """[`self_correspondence_loss`][] plus both correspondence maps; the arguments are the same.

    Shape:
        - teacher_a/b, student_a/b: as in [`self_correspondence_loss`][]
        - output: [`SCDOutput`][] (scalar ``loss``; ``teacher_corr``, ``student_corr`` B×N×N×N×N)

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> out = self_correspondence_loss_detailed(torch.rand(1, 4, 8, 8), torch.rand(1, 4, 5, 5),
        ...                                         torch.randn(1, 3, 8, 8), torch.randn(1, 3, 5, 5),
        ...                                         num_samples=3, generator=g)
        >>> out.teacher_corr.shape
        torch.Size([1, 3, 3, 3, 3])
    """
    _check_scd_options(num_samples, padding_mode, shift)
    return _scd(teacher_a, teacher_b, student_a, student_b, coords_a, coords_b, num_samples, zero_clamp,
                pointwise_center, shift, eps, align_corners, padding_mode, generator)


def _check_scd_options(num_samples: int, padding_mode: str, shift: float) -> None:
    check_int(num_samples, "num_samples", minimum=1)
    check_choice(padding_mode, "padding_mode", ("zeros", "border", "reflection"))
    check_number(shift, "shift")


def _scd(teacher_a: Tensor, teacher_b: Tensor, student_a: Tensor, student_b: Tensor, coords_a: Tensor | None,
         coords_b: Tensor | None, num_samples: int, zero_clamp: bool, pointwise_center: bool, shift: float,
         eps: float, align_corners: bool, padding_mode: str, generator: torch.Generator | None) -> SCDOutput:
    """[`self_correspondence_loss_detailed`][] with checked options."""
    names = ("teacher_a", "teacher_b", "student_a", "student_b")
    tensors = (teacher_a, teacher_b, student_a, student_b)
    for name, t in zip(names, tensors):
        check_tensor(t, name, 4, layout="B×C×H×W", floating=True)
        check_finite(t, name)
    for name, t in zip(names[1:], tensors[1:]):
        check_same_batch(teacher_a, "teacher_a", t, name)
    if teacher_a.shape[1] != teacher_b.shape[1]:
        raise ValueError(f"teacher_a and teacher_b must have the same channels, got {shape_str(teacher_a)} and "
                         f"{shape_str(teacher_b)}")
    if student_a.shape[1] != student_b.shape[1]:
        raise ValueError(f"student_a and student_b must have the same channels, got {shape_str(student_a)} and "
                         f"{shape_str(student_b)}")
    b = teacher_a.shape[0]
    dtype = compute_dtype(*tensors)
    device = student_a.device
    if coords_a is None:
        coords_a = sample_points(b, num_samples, generator=generator, device=device, dtype=dtype)
    if coords_b is None:
        coords_b = sample_points(b, num_samples, generator=generator, device=device, dtype=dtype)
    _check_coords(coords_a, "coords_a", b, None)
    _check_coords(coords_b, "coords_b", b, None)
    coords_a = coords_a.to(device=device, dtype=dtype)
    coords_b = coords_b.to(device=device, dtype=dtype)

    with torch.autocast(device_type=device.type, enabled=False):
        with torch.no_grad():
            ta = _sample(teacher_a.detach().to(dtype), coords_a, align_corners, padding_mode)
            tb = _sample(teacher_b.detach().to(dtype), coords_b, align_corners, padding_mode)
            fd = _correlation(ta, tb, eps)
            if pointwise_center:
                old_mean = fd.mean()
                fd = fd - fd.mean(dim=(3, 4), keepdim=True)
                fd = fd - fd.mean() + old_mean
            if shift != 0.0:
                fd = fd - shift
        sa = _sample(student_a.to(dtype), coords_a, align_corners, padding_mode)
        sb = _sample(student_b.to(dtype), coords_b, align_corners, padding_mode)
        cd = _correlation(sa, sb, eps)
        prod = (cd.clamp(min=0) if zero_clamp else cd).mul(fd)
        # an empty batch: zero loss (a mean over nothing would be NaN), still attached to the students' graph
        loss = -prod.mean() if prod.numel() else prod.sum()
    return SCDOutput(loss=loss, teacher_corr=fd, student_corr=cd.detach())


class SelfCorrespondenceDistillation(nn.Module):
    """SCD: self correspondence distillation of TSCD (Xu et al., AAAI 2023).

    Distils the cross-view cosine correspondence of (detached) CAMs into the correspondence of segmentation
    logits with STEGO's correlation loss: ``L = -mean max(C, 0)·F~`` over N×N × N×N random point pairs per
    image (see [`self_correspondence_loss`][]). ``forward`` returns the **unweighted** loss; the release
    multiplies it by 0.1 after a 2000-iteration classification-only warm-up ([`weight_at`][]).

    Args:
        num_samples: N, N×N points per view per image (released 40).
        zero_clamp: clamp the student correlation at 0 (released True).
        pointwise_center: row-centre the teacher correlation and add back the batch mean (released True).
        shift: STEGO's b (released 0).
        eps: L2-normalisation eps (released 1e-10).
        align_corners: of ``grid_sample`` (released True).
        padding_mode: of ``grid_sample`` (released ``"border"``).
        weight: loss weight used by [`weight_at`][] (released 0.1).
        start_iter: last classification-only iteration used by [`weight_at`][] (released 2000).

    Shape:
        - teacher_a: B×Ct×Ha×Wa, teacher_b: B×Ct×Hb×Wb (CAMs, e.g. Ct = 20; detached inside)
        - student_a: B×Cs×Ha'×Wa', student_b: B×Cs×Hb'×Wb' (seg logits, e.g. Cs = 21)
        - coords_a, coords_b: optional B×N×N×2 in [-1, 1]
        - output: scalar

    Examples:
        >>> scd = SelfCorrespondenceDistillation(num_samples=8)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 20, 64, 64); x2 = torch.nn.functional.interpolate(x, scale_factor=0.3)
        >>> seg = torch.randn(2, 21, 64, 64, requires_grad=True)
        >>> seg2 = torch.randn(2, 21, 19, 19, requires_grad=True)
        >>> loss = scd.weight_at(2500) * scd(x, x2, seg, seg2, generator=g)
        >>> loss.backward()
    """

    def __init__(self, num_samples: int = 40, zero_clamp: bool = True, pointwise_center: bool = True,
                 shift: float = 0.0, eps: float = 1e-10, align_corners: bool = True, padding_mode: str = "border",
                 weight: float = SCD_WEIGHT, start_iter: int = SCD_START_ITER):
        super().__init__()
        _check_scd_options(num_samples, padding_mode, shift)
        self.num_samples = num_samples
        self.zero_clamp = zero_clamp
        self.pointwise_center = pointwise_center
        self.shift = float(shift)
        self.eps = float(eps)
        self.align_corners = align_corners
        self.padding_mode = padding_mode
        self.weight = float(weight)
        self.start_iter = int(start_iter)

    def weight_at(self, iteration: int) -> float:
        """The released schedule: 0 for ``iteration <= start_iter``, else ``weight``."""
        return scd_weight(iteration, self.weight, self.start_iter)

    @override
    def forward(self, teacher_a: Tensor, teacher_b: Tensor, student_a: Tensor, student_b: Tensor,
                coords_a: Tensor | None = None, coords_b: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.detailed(teacher_a, teacher_b, student_a, student_b, coords_a, coords_b, generator).loss

    def detailed(self, teacher_a: Tensor, teacher_b: Tensor, student_a: Tensor, student_b: Tensor,
                 coords_a: Tensor | None = None, coords_b: Tensor | None = None,
                 generator: torch.Generator | None = None) -> SCDOutput:
        """Loss and both correspondence maps; see [`self_correspondence_loss_detailed`][]."""
        return _scd(teacher_a, teacher_b, student_a, student_b, coords_a, coords_b, self.num_samples,
                    self.zero_clamp, self.pointwise_center, self.shift, self.eps, self.align_corners,
                    self.padding_mode, generator)

    @override
    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, zero_clamp={self.zero_clamp}, "
                f"pointwise_center={self.pointwise_center}, shift={self.shift}, weight={self.weight}, "
                f"start_iter={self.start_iter}")


def equivariant_regularization(cams: Tensor, cams_small: Tensor, skip_first_channel: bool = True) -> Tensor:
    """TSCD's L_ER: mean |resize(cams) - cams_small| between the full and the downscaled view's CAMs.

    ``cams`` is resized to ``cams_small``'s size (bilinear, ``align_corners=True``, as the release's ×0.3
    ``scale_factor`` resize). Released behaviour: both CAMs are computed without gradient, so the term is a
    constant, and ``[:, 1:]`` drops CAM channel 0 (a foreground class, not background):
    ``skip_first_channel=True`` keeps that. For the paper's intent pass a grad-carrying CAM for one view and
    ``skip_first_channel=False``.

    Shape:
        - cams: B×C×H×W, cams_small: B×C×h×w
        - output: scalar

    Examples:
        >>> cams = torch.rand(1, 20, 32, 32)
        >>> small = torch.nn.functional.interpolate(cams, size=(10, 10), mode="bilinear", align_corners=True)
        >>> float(equivariant_regularization(cams, small))
        0.0
    """
    check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
    check_tensor(cams_small, "cams_small", 4, layout="B×C×h×w", floating=True)
    if cams.shape[:2] != cams_small.shape[:2]:
        raise ValueError(f"cams and cams_small must agree in batch and channels, got {shape_str(cams)} and "
                         f"{shape_str(cams_small)}")
    check_finite(cams, "cams")
    check_finite(cams_small, "cams_small")
    if cams.numel() == 0 or cams_small.numel() == 0:  # an empty batch: zero loss, not the NaN of an empty mean
        return cams.sum() * 0.0 + cams_small.sum() * 0.0
    resized = F.interpolate(cams, size=cams_small.shape[-2:], mode="bilinear", align_corners=True)
    if skip_first_channel:
        resized, cams_small = resized[:, 1:], cams_small[:, 1:]
    return (resized - cams_small).abs().mean()


# --------------------------------------------------------------------------- affinity from attention
def radius_mask(h: int, w: int, radius: int = 8, device: torch.device | str | None = None) -> Tensor:
    """Boolean (h·w)×(h·w) mask of pairs within a Chebyshev radius (|dr| <= r and |dc| <= r), self-pairs included.

    Equals the release's ``get_mask_by_radius`` (AFA/SCD ``scripts/dist_train_voc.py``), built without loops.

    Examples:
        >>> radius_mask(2, 2, 0).int().tolist()
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    """
    check_int(radius, "radius", minimum=0)
    if h < 1 or w < 1:
        raise ValueError(f"h and w must be >= 1, got {h} and {w}")
    r = torch.arange(h, device=device).repeat_interleave(w)
    c = torch.arange(w, device=device).repeat(h)
    return ((r[:, None] - r[None, :]).abs() <= radius) & ((c[:, None] - c[None, :]).abs() <= radius)


def attention_affinity_targets(pseudo_mask: Tensor, radius: int = 8, stride: int = 16,
                               ignore_index: int = 255) -> Tensor:
    """Pairwise affinity targets from a pseudo mask (AFA/TSCD ``cams_to_refine_label``).

    The mask is downsampled by nearest interpolation to (H // stride, W // stride); a pair is 1 if both labels
    are equal (background-background pairs count as positive, self-pairs included), 0 otherwise, and
    ``ignore_index`` outside the radius window or if either pixel is ignored.

    Shape:
        - pseudo_mask: B×H×W integer
        - output: B×n×n int64, n = (H // stride)·(W // stride)

    Examples:
        >>> y = torch.tensor([[[0, 0, 1, 1]] * 2])  # 2×4, stride 1
        >>> attention_affinity_targets(y, radius=1, stride=1)[0, 0].tolist()
        [1, 1, 255, 255, 1, 1, 255, 255]
    """
    check_tensor(pseudo_mask, "pseudo_mask", 3, layout="B×H×W")
    if pseudo_mask.is_floating_point() or pseudo_mask.dtype == torch.bool:
        raise TypeError(f"pseudo_mask must be an integer tensor, got dtype {pseudo_mask.dtype}")
    check_int(stride, "stride", minimum=1)
    _check_label_values(pseudo_mask, "pseudo_mask")
    b, h, w = pseudo_mask.shape
    hs, ws = h // stride, w // stride
    if hs < 1 or ws < 1:
        raise ValueError(f"pseudo_mask of size {h}×{w} is smaller than stride {stride}")
    small = F.interpolate(pseudo_mask[:, None].float(), size=(hs, ws), mode="nearest").view(b, hs * ws).long()
    same = small[:, :, None] == small[:, None, :]
    out = same.long()
    ignored = (small == ignore_index)
    bad = ~radius_mask(hs, ws, radius, device=pseudo_mask.device)[None] | ignored[:, :, None] | ignored[:, None, :]
    return out.masked_fill_(bad, ignore_index)


def _check_label_values(mask: Tensor, name: str) -> None:
    """Labels are class indices or the ignore value: never negative (a value check)."""
    if checks_enabled() and mask.numel() and int(mask.min()) < 0:
        raise ValueError(f"{name} holds class indices (or the ignore index), which cannot be negative; got "
                         f"{int(mask.min())}")


def affinity_from_attention_loss(aff_pred: Tensor, pseudo_mask: Tensor, radius: int = 8, stride: int = 16,
                                 ignore_index: int = 255) -> Tensor:
    """AFA/TSCD affinity loss: ``0.5·sum_pos(1 - A)/(N+ + 1) + 0.5·sum_neg A/(N- + 1)`` (counts over the batch).

    An L1 loss on the sigmoid affinity (not BCE), with the targets of [`attention_affinity_targets`][] (released
    ``get_aux_loss`` with ``cams_to_refine_label`` and ``get_mask_by_radius``). Gradients flow into
    ``aff_pred`` only.

    Args:
        aff_pred: predicted affinity in [0, 1] (sigmoid of the projected attention).
        pseudo_mask: refined pseudo mask at crop resolution (255 = ignore).
        radius: Chebyshev radius of the pair window on the /stride grid (released 8).
        stride: downsampling of the label to the token grid (released 16).
        ignore_index: ignored label value.

    Shape:
        - aff_pred: B×n×n with n = (H // stride)·(W // stride)
        - pseudo_mask: B×H×W integer
        - output: scalar

    Examples:
        >>> y = torch.zeros(1, 64, 64, dtype=torch.long); y[:, :, 32:] = 1
        >>> perfect = attention_affinity_targets(y).clamp(max=1).float()  # 4×4 grid, n = 16
        >>> float(affinity_from_attention_loss(perfect, y))
        0.0
    """
    _check_affinity_options(radius, stride)
    return _affinity_loss(aff_pred, pseudo_mask, radius, stride, ignore_index)


def _check_affinity_options(radius: int, stride: int) -> None:
    check_int(radius, "radius", minimum=0)
    check_int(stride, "stride", minimum=1)


def _affinity_loss(aff_pred: Tensor, pseudo_mask: Tensor, radius: int, stride: int, ignore_index: int) -> Tensor:
    """[`affinity_from_attention_loss`][] with checked options."""
    check_tensor(aff_pred, "aff_pred", 3, layout="B×n×n", floating=True)
    check_range(aff_pred.detach(), "aff_pred", 0.0, 1.0, hint="pass the sigmoid of the attention projection")
    check_tensor(pseudo_mask, "pseudo_mask", 3, layout="B×H×W")
    check_same_batch(aff_pred, "aff_pred", pseudo_mask, "pseudo_mask")
    h, w = pseudo_mask.shape[-2:]
    n = (h // stride) * (w // stride)
    if aff_pred.shape[1:] != (n, n):
        raise ValueError(f"aff_pred must have shape B×n×n with n = ({h}//{stride})·({w}//{stride}) = {n} for "
                         f"pseudo_mask {shape_str(pseudo_mask)}, got {shape_str(aff_pred)}")
    target = attention_affinity_targets(pseudo_mask, radius, stride, ignore_index)
    pos = (target == 1).to(aff_pred.dtype)
    neg = (target == 0).to(aff_pred.dtype)
    pos_loss = (pos * (1 - aff_pred)).sum() / (pos.sum() + 1)
    neg_loss = (neg * aff_pred).sum() / (neg.sum() + 1)
    return 0.5 * pos_loss + 0.5 * neg_loss


class AffinityFromAttentionLoss(nn.Module):
    """Affinity-from-attention loss of AFA (Ru et al., CVPR 2022), TSCD's ``aux_loss``.

    Pulls the predicted pairwise affinity to 1 on same-label pairs and to 0 on different-label pairs of the
    pseudo mask downsampled (nearest) to the token grid, within a Chebyshev radius; see
    [`affinity_from_attention_loss`][].

    Args:
        radius: pair window radius on the token grid (released 8).
        stride: label-to-token downsampling (released 16).
        ignore_index: ignored label value (255).

    Shape:
        - aff_pred: B×n×n in [0, 1], n = (H // stride)·(W // stride)
        - pseudo_mask: B×H×W integer
        - output: scalar

    Examples:
        >>> loss_fn = AffinityFromAttentionLoss()
        >>> aff = torch.rand(2, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 64, 64))
        >>> loss_fn(aff, y).backward()
    """

    def __init__(self, radius: int = 8, stride: int = 16, ignore_index: int = 255):
        super().__init__()
        _check_affinity_options(radius, stride)
        self.radius = radius
        self.stride = stride
        self.ignore_index = ignore_index

    @override
    def forward(self, aff_pred: Tensor, pseudo_mask: Tensor) -> Tensor:
        return _affinity_loss(aff_pred, pseudo_mask, self.radius, self.stride, self.ignore_index)

    @override
    def extra_repr(self) -> str:
        return f"radius={self.radius}, stride={self.stride}, ignore_index={self.ignore_index}"
