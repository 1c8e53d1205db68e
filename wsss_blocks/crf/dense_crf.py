"""Dense CRF front end: one API over the pydensecrf (C++) backend and the pure-PyTorch permutohedral backend.

The fully connected CRF of Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian
Edge Potentials" (NeurIPS 2011), as WSSS pipelines use it through ``pydensecrf``:

    E(x) = sum_i U_i(x_i) + sum_{i<j} [x_i != x_j] (pos_w k_pos(i, j) + bi_w k_bi(i, j))
    k_pos = exp(-|p_i - p_j|^2 / (2 pos_xy^2)),
    k_bi  = exp(-|p_i - p_j|^2 / (2 bi_xy^2) - |I_i - I_j|^2 / (2 bi_rgb^2))

with the unary ``U = -log(clip(p, 1e-5, 1))`` (pydensecrf ``unary_from_softmax``) or the hard-label unary
of ``unary_from_labels``, ``iterations`` mean-field updates
``Q <- softmax(-U + sum_k w_k n_k K_k(n_k Q))`` and the symmetric kernel normalisation
``n_k = K_k(1)^-1/2`` that ``pydensecrf.DenseCRF2D`` applies by default. Colours are the 0..255 values
of the RGB image (float images in [0, 1] are rounded to uint8 first, so both backends see the same
colours).

Backends:

* ``"pydensecrf"``: the released C++ code (CPU, one image at a time; the ``crf`` extra).
* ``"torch"``: [`wsss_blocks.crf.permutohedral`][wsss_blocks.crf.permutohedral], a PyTorch re-implementation of the same
  lattice and update rule, batched, on CPU or CUDA, no compiled extension. It reproduces pydensecrf's marginals to
  float rounding (about 1e-6).
* ``"auto"``: torch for CUDA tensors; pydensecrf on CPU when it is installed; torch otherwise.

Probabilities that do not sum to 1 over K are rejected by default (``sum_to_one="check"``);
``"renormalize"`` divides by the per-pixel sum and ``"ignore"`` uses them as given, exactly like
``unary_from_softmax`` (PMM's binary CRF relies on that, so its preset sets it). Nothing is differentiable:
the CRF runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from wsss_blocks._checks import (
    check_choice,
    check_finite,
    check_int,
    check_range,
    check_tensor,
    checks_enabled,
    shape_str,
)

from . import permutohedral as _pl
from .pydensecrf_backend import pool_map, pydensecrf_available, pydensecrf_inference

__all__ = [
    "PRESETS",
    "PRESET_SOURCES",
    "BACKENDS",
    "DenseCRF",
    "as_dense_crf",
    "dense_crf",
    "dense_crf_from_unary",
    "unary_from_probs",
    "unary_from_mask",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "pydensecrf")
"""The values of ``backend``; ``"auto"`` means torch on CUDA, pydensecrf on CPU when installed, else torch."""
_SUM_MODES = ("check", "renormalize", "ignore")
_NORMALIZATIONS = ("symmetric", "after", "before", "none")
_PARAM_KEYS = ("iterations", "pos_w", "pos_xy", "bi_w", "bi_xy", "bi_rgb")

PRESETS: dict[str, dict[str, Any]] = {
    "deeplab": dict(iterations=10, pos_w=3.0, pos_xy=1.0, bi_w=4.0, bi_xy=67.0, bi_rgb=3.0),
    "afa": dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=4.0, bi_xy=64.0, bi_rgb=5.0),
    "toco": dict(iterations=10, pos_w=1.0, pos_xy=1.0, bi_w=4.0, bi_xy=121.0, bi_rgb=5.0),
    "toco-label": dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=4.0, bi_xy=36.0, bi_rgb=3.0),
    "psa": dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=10.0, bi_xy=80.0, bi_rgb=13.0),
    "irn": dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=10.0, bi_xy=50.0, bi_rgb=5.0, gt_prob=0.7),
    "pmm-binary": dict(iterations=10, pos_w=10.0, pos_xy=3.0, bi_w=10.0, bi_xy=80.0, bi_rgb=13.0,
                       sum_to_one="ignore"),
    "smaf": dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=10.0, bi_xy=50.0, bi_rgb=5.0, gt_prob=0.7),
    "l2g-test": dict(iterations=10, pos_w=3.0, pos_xy=1.0, bi_w=4.0, bi_xy=67.0, bi_rgb=3.0),
}
"""Released parameter sets. ``pos_*``: ``addPairwiseGaussian(sxy=pos_xy, compat=pos_w)``; ``bi_*``:
``addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, compat=bi_w)``. Sources in [`PRESET_SOURCES`][]."""

PRESET_SOURCES: dict[str, str] = {
    "deeplab": "deeplab-pytorch configs/voc12.yaml and cocostuff configs (also CLIP-ES "
               "eval_cam_with_crf.py)",
    "afa": "AFA scripts/test_msc_flip.py (also WeCLIP test_msc_flip_voc.py; AFA/TSCD utils/dcrf.py "
           "DenseCRF(iter_max=10, pos_xy_std=3, pos_w=3, bi_xy_std=64, bi_rgb_std=5, bi_w=4))",
    "toco": "ToCo tools/infer_seg_voc.py (also DuPL tools/eval_seg_voc.py, SeCo tools/infer_seg_voc.py)",
    "toco-label": "ToCo tools/infer_cam_crf_label.py (CAM -> pseudo label, softmax of [bg; CAM])",
    "psa": "PSA tool/imutils.py crf_inference with scale_factor=1 (same function in ToCo/AFA utils/dcrf.py, "
           "PMM tool/imutils.py for the stage-B joint CRF, SMAF util/imutils.py); "
           "DenseCRF.psa(scale_factor) divides both xy stds",
    "irn": "IRN misc/imutils.py crf_inference_label (unary_from_labels, gt_prob 0.7, zero_unsure=False; "
           "same in ToCo/AFA utils/dcrf.py)",
    "pmm-binary": "PMM pipeline/refine_cam.py local crf_inference for the per-class 2-label CRF of PPMG "
                  "(Gaussian compat 10, probabilities not renormalised)",
    "smaf": "SMAF gen_pseudo_mask.py lines 155-193 (unary_from_labels, gt_prob 0.7, zero_unsure=False)",
    "l2g-test": "L2G segmentation test CRF, the deeplab-pytorch recipe (same values as 'deeplab'; also "
                "PMM's WSSS_MMSeg encoder_decoder.py aug_test CRF)",
}
"""Where each preset comes from (repository and file of each release)."""


# ------------------------------------------------------------------------------------------ input handling
def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, copy=True))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _image_any(image: object, name: str) -> Tensor:
    """An RGB image as (B, H, W, 3) uint8; the layout follows the dtype, never the shape.

    uint8 is channels-last ``H×W×3`` / ``B×H×W×3`` (as loaded), float in [0, 1] is channels-first ``3×H×W`` /
    ``B×3×H×W`` (as a network sees it). Guessing the layout from the shape would be ambiguous (a channels-first
    image 3 pixels wide looks channels-last), so any other layout is refused.
    """
    img = _as_tensor(image, name)
    shape = tuple(img.shape)
    if img.dtype == torch.uint8:
        if img.ndim not in (3, 4) or img.shape[-1] != 3:
            order = "0, 2, 3, 1" if img.ndim == 4 else "1, 2, 0"
            hint = (f"; a channels-first uint8 image needs {name}.permute({order})"
                    if img.ndim in (3, 4) and img.shape[-3] == 3 else "")
            raise ValueError(f"{name} must be a channels-last uint8 image H×W×3 or B×H×W×3 (0..255), got shape "
                             f"{shape}{hint}")
        img = img if img.ndim == 4 else img[None]
    elif img.is_floating_point():
        if img.ndim not in (3, 4) or img.shape[-3] != 3:
            raise ValueError(f"{name} must be a channels-first float image 3×H×W or B×3×H×W in [0, 1], got shape "
                             f"{shape}")
        img = img if img.ndim == 4 else img[None]
        check_range(img, name, 0.0, 1.0, hint="float images must be RGB in [0, 1]")
        img = (img.permute(0, 2, 3, 1).float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    else:
        raise TypeError(f"{name} must be uint8 (0..255) or floating point in [0, 1], got dtype {img.dtype}")
    return img.contiguous()


def _prepare_image(image01: object, image_uint8: object = None) -> Tensor:
    """The guide image as (B, H, W, 3) uint8, from exactly one of ``image01`` and ``image_uint8``.

    ``image01``: float RGB in [0, 1], ``3×H×W`` / ``B×3×H×W``; ``image_uint8``: ``H×W×3`` / ``B×H×W×3`` uint8, as
    loaded.
    """
    if (image01 is None) == (image_uint8 is None):
        raise ValueError("give the image either as image01 (float RGB in [0, 1]) or as image_uint8 (uint8 "
                         "0..255), exactly one of them")
    if image01 is not None:
        t = _as_tensor(image01, "image01")
        if not t.is_floating_point():
            raise TypeError(f"image01 must be floating point RGB in [0, 1], got dtype {t.dtype}; pass uint8 "
                            f"images as image_uint8=")
        return _image_any(t, "image01")
    t = _as_tensor(image_uint8, "image_uint8")
    if t.dtype != torch.uint8:
        raise TypeError(f"image_uint8 must have dtype uint8, got {t.dtype}; pass float RGB in [0, 1] as image01")
    return _image_any(t, "image_uint8")


def _prepare_probs(probs: object, sum_to_one: str, sum_tol: float) -> tuple[Tensor, bool]:
    """Validate probabilities; return (B, K, H, W) float32 and whether the input was 3-D."""
    p = _as_tensor(probs, "probs")
    if p.ndim not in (3, 4):
        raise ValueError(f"probs must have shape B×K×H×W or K×H×W, got {p.ndim}-D tensor of shape {shape_str(p)}")
    if not p.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor of probabilities, got dtype {p.dtype}")
    squeeze = p.ndim == 3
    if squeeze:
        p = p[None]
    if p.shape[1] < 2:
        raise ValueError(f"probs must have at least K = 2 labels (channel dim 1), got K = {p.shape[1]} "
                         f"(shape {shape_str(p)}); a 1-label CRF is the identity")
    check_finite(p, "probs")
    # a float16/bfloat16 softmax rounds each probability to the dtype, so its sum is off by up to ~eps/2
    # (bfloat16: 0.004 > the default 1e-3): the tolerance widens to the dtype's eps
    if p.dtype in (torch.float16, torch.bfloat16):
        sum_tol = max(sum_tol, torch.finfo(p.dtype).eps)
    if p.numel() and checks_enabled():
        lo, hi = float(p.min()), float(p.max())
        if lo < 0.0:
            raise ValueError(f"probs must be non-negative probabilities, got minimum {lo:.4g}; pass softmax "
                             "outputs, not logits")
        if hi > 1.0 + sum_tol:
            raise ValueError(f"probs must lie in [0, 1], got maximum {hi:.4g}; pass softmax outputs, not "
                             "logits or unnormalised scores")
    p = p.float()
    check_choice(sum_to_one, "sum_to_one", _SUM_MODES)
    if sum_to_one != "ignore" and p.numel():
        s = p.sum(1)
        if sum_to_one == "check" and checks_enabled():
            dev = float((s - 1.0).abs().max())
            if dev > sum_tol:
                raise ValueError(f"probs must sum to 1 over the K = {p.shape[1]} channels at every pixel "
                                 f"(max deviation {dev:.4g} > sum_tol={sum_tol:g}); pass "
                                 "sum_to_one='renormalize' to divide by the sum, or sum_to_one='ignore' to use "
                                 "them as given like pydensecrf's unary_from_softmax")
        elif sum_to_one == "renormalize":
            if checks_enabled() and float(s.min()) <= 0.0:
                raise ValueError("probs cannot be renormalised: some pixels have all-zero probabilities")
            p = p / s[:, None]
    return p, squeeze


def _check_params(iterations: int, pos_w: float, pos_xy: float, bi_w: float, bi_xy: float, bi_rgb: float,
                  backend: str, normalization: str) -> None:
    check_int(iterations, "iterations", minimum=0)
    for name, v in (("pos_w", pos_w), ("bi_w", bi_w)):
        if not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"{name} must be a finite weight >= 0 (0 leaves the kernel out), got {v}")
    for name, v in (("pos_xy", pos_xy), ("bi_xy", bi_xy), ("bi_rgb", bi_rgb)):
        if not math.isfinite(float(v)) or v <= 0:
            raise ValueError(f"{name} must be a finite standard deviation > 0, got {v}")
    check_choice(backend, "backend", BACKENDS)
    check_choice(normalization, "normalization", _NORMALIZATIONS)


def _match(image: Tensor, unary: Tensor, image_name: str = "image", other: str = "probs") -> None:
    if image.shape[0] != unary.shape[0]:
        raise ValueError(f"{image_name} and {other} must have the same batch size, got {image_name} as "
                         f"{tuple(image.shape)} (B×H×W×3) and {other} {tuple(unary.shape)} (B×K×H×W)")
    if image.shape[1:3] != unary.shape[2:]:
        raise ValueError(f"{image_name} and {other} must have the same spatial size, got {image_name} H×W = "
                         f"{tuple(image.shape[1:3])} and {other} H×W = {tuple(unary.shape[2:])}")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend ``"auto"`` stands for: torch on CUDA, pydensecrf on CPU when installed, else torch."""
    check_choice(backend, "backend", BACKENDS)
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu":
        return "torch"
    return "pydensecrf" if pydensecrf_available() else "torch"


# ------------------------------------------------------------------------------------------------- unaries
def unary_from_probs(probs: Tensor, clip: float = 1e-5) -> Tensor:
    """Unary energies ``-log(clip(p, clip, 1))``, float32 (pydensecrf ``unary_from_softmax``, ``scale=None``).

    Shape:
        probs: ``(B, K, H, W)`` (any shape); output: same shape, float32.

    Examples:
        >>> u = unary_from_probs(torch.tensor([[[[1.0]], [[0.0]]]]))
        >>> tuple(round(float(v), 3) for v in u.flatten())
        (-0.0, 11.513)
    """
    if not 0 < clip <= 1:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    check_tensor(probs, "probs", floating=True)
    check_finite(probs, "probs")
    return -torch.log(probs.float().clamp(clip, 1.0))


def unary_from_mask(mask: Tensor, num_classes: int, gt_prob: float = 0.7, ignore_index: int | None = None) -> Tensor:
    """Hard-label unary energies of pydensecrf ``unary_from_labels(..., zero_unsure=False)`` from a label mask.

    The labelled class gets ``-log(gt_prob)``, every other class ``-log((1 - gt_prob) / (K - 1))``.
    Pixels equal to ``ignore_index`` (an extension; pydensecrf has only ``zero_unsure`` for label 0) get
    the uniform energy ``-log(1 / K)``, as pydensecrf gives its "unsure" pixels.

    Shape:
        mask: ``(B, H, W)`` integer in ``[0, K)`` (or ``ignore_index``); output ``(B, K, H, W)`` float32.

    Examples:
        >>> u = unary_from_mask(torch.tensor([[[0, 1]]]), num_classes=2, gt_prob=0.75)
        >>> tuple(round(v, 4) for v in u[0, :, 0, 0].tolist())  # -log 0.75, -log 0.25
        (0.2877, 1.3863)
    """
    check_int(num_classes, "num_classes", minimum=2)
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    check_tensor(mask, "mask", 3, layout="B×H×W")
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise TypeError(f"mask must be an integer tensor, got dtype {mask.dtype}")
    lab = mask.long()
    valid = (lab >= 0) & (lab < num_classes)
    ign = (lab == ignore_index) if ignore_index is not None else torch.zeros_like(valid)
    if not bool((valid | ign).all()):
        bad = lab[~(valid | ign)][0]
        extra = f" or ignore_index {ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"mask has value {int(bad)} outside [0, {num_classes - 1}]{extra}")
    n_energy = float(np.float32(-math.log((1.0 - gt_prob) / (num_classes - 1))))
    p_energy = float(np.float32(-math.log(gt_prob)))
    u = torch.full((*lab.shape[:1], num_classes, *lab.shape[1:]), n_energy, dtype=torch.float32,
                   device=lab.device)
    u.scatter_(1, lab.clamp(0, num_classes - 1)[:, None], p_energy)
    if ignore_index is not None:
        u.masked_fill_(ign[:, None], float(np.float32(-math.log(1.0 / num_classes))))
    return u


# ------------------------------------------------------------------------------------------------ backends
def _torch_backend(image: Tensor, unary: Tensor, iterations: int, pos_w: float, pos_xy: float, bi_w: float,
                   bi_xy: float, bi_rgb: float, normalization: str) -> Tensor:
    b, k, h, w = unary.shape
    device = unary.device
    lattices, weights = [], []
    if pos_w != 0:
        pos = _pl.build_lattice(_pl.grid_features(h, w, pos_xy, device))
        lattices.append(pos.repeat(b) if b > 1 else pos)
        weights.append(float(pos_w))
    if bi_w != 0:
        lattices.append(_pl.build_lattice(_pl.bilateral_features(image.to(device), bi_xy, bi_rgb)))
        weights.append(float(bi_w))
    u = unary.permute(0, 2, 3, 1).reshape(b * h * w, k).contiguous()
    if lattices:
        q = _pl.mean_field(u, _pl.PairwiseOperator(lattices, weights, normalization), iterations)
    else:
        q = torch.softmax(-u, dim=1)
    return q.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()


def _pydensecrf_backend(image: Tensor, unary: Tensor, iterations: int, pos_w: float, pos_xy: float,
                        bi_w: float, bi_xy: float, bi_rgb: float, normalization: str) -> Tensor:
    imgs = image.cpu().numpy()
    un = unary.detach().cpu().numpy()
    out = np.empty(un.shape, dtype=np.float32)
    for i in range(un.shape[0]):
        out[i] = pydensecrf_inference(imgs[i], un[i], iterations=iterations, pos_w=pos_w, pos_xy=pos_xy,
                                      bi_w=bi_w, bi_xy=bi_xy, bi_rgb=bi_rgb, normalization=normalization)
    return torch.from_numpy(out).to(unary.device)


@torch.no_grad()
def dense_crf_from_unary(image01: Tensor | None, unary: Tensor, *, image_uint8: Tensor | None = None,
                         iterations: int = 10, pos_w: float = 3.0, pos_xy: float = 3.0, bi_w: float = 4.0,
                         bi_xy: float = 64.0, bi_rgb: float = 5.0, backend: str = "auto",
                         normalization: str = "symmetric") -> Tensor:
    """Dense-CRF marginals from unary energies (``-log p`` or [`unary_from_mask`][]).

    Args:
        image01: RGB image(s), float in [0, 1], ``3×H×W`` / ``B×3×H×W``; ``None`` when ``image_uint8`` is given.
        unary: ``(B, K, H, W)`` float unary energies (finite), K >= 2.
        iterations: mean-field iterations.
        pos_w: Potts weight of the Gaussian position kernel (0 leaves it out).
        pos_xy: its standard deviation in pixels.
        bi_w: Potts weight of the bilateral kernel (0 leaves it out).
        bi_xy: bilateral position standard deviation in pixels.
        bi_rgb: bilateral colour standard deviation (0..255 units).
        backend: ``"auto"``, ``"torch"`` or ``"pydensecrf"``.
        normalization: ``"symmetric"``, ``"after"``, ``"before"`` or ``"none"`` (see [`dense_crf`][]).
        image_uint8: the image as loaded instead: uint8, channels-last ``H×W×3`` / ``B×H×W×3``. The layout
            follows the dtype (uint8 channels-last, float channels-first) and is never guessed from the shape.

    Returns:
        ``(B, K, H, W)`` float32 marginals on ``unary``'s device.

    Examples:
        >>> img = torch.zeros(8, 8, 3, dtype=torch.uint8)
        >>> q = dense_crf_from_unary(None, torch.zeros(1, 2, 8, 8), image_uint8=img, backend="torch")
        >>> torch.allclose(q, torch.full_like(q, 0.5))
        True
    """
    _check_params(iterations, pos_w, pos_xy, bi_w, bi_xy, bi_rgb, backend, normalization)
    return _from_unary(image01, unary, image_uint8, iterations, pos_w, pos_xy, bi_w, bi_xy, bi_rgb, backend,
                       normalization, "unary")


def _from_unary(image01: Tensor | None, unary: Tensor, image_uint8: Tensor | None, iterations: int, pos_w: float,
                pos_xy: float, bi_w: float, bi_xy: float, bi_rgb: float, backend: str, normalization: str,
                value_name: str = "probs") -> Tensor:
    """[`dense_crf_from_unary`][] with checked parameters (errors name the caller's ``value_name``)."""
    img = _prepare_image(image01, image_uint8)
    u = _as_tensor(unary, "unary")
    if u.ndim != 4 or not u.is_floating_point():
        raise ValueError(f"unary must be a float B×K×H×W tensor, got dtype {u.dtype} and shape {shape_str(u)}")
    if u.shape[1] < 2:
        raise ValueError(f"unary must have at least K = 2 labels, got shape {shape_str(u)}")
    check_finite(u, "unary")
    _match(img, u, "image01" if image01 is not None else "image_uint8", value_name)
    u = u.float()
    if u.numel() == 0:
        return torch.softmax(-u, dim=1)
    be = resolve_backend(backend, u.device)
    args = (iterations, float(pos_w), float(pos_xy), float(bi_w), float(bi_xy), float(bi_rgb), normalization)
    if be == "torch":
        return _torch_backend(img, u, *args)
    return _pydensecrf_backend(img, u, *args)


@torch.no_grad()
def dense_crf(image01: Tensor | None, probs: Tensor, *, image_uint8: Tensor | None = None, iterations: int = 10,
              pos_w: float = 3.0, pos_xy: float = 3.0, bi_w: float = 4.0, bi_xy: float = 64.0, bi_rgb: float = 5.0,
              backend: str = "auto", sum_to_one: str = "check", sum_tol: float = 1e-3, clip: float = 1e-5,
              normalization: str = "symmetric") -> Tensor:
    """Refine class probabilities with a fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011).

    The defaults are the AFA/TSCD test-time setting (the ``"afa"`` preset); see [`PRESETS`][].

    Args:
        image01: RGB image(s), float in [0, 1], ``3×H×W`` / ``B×3×H×W`` (rounded to 0..255, as the released
            sigmas assume); ``None`` when ``image_uint8`` is given.
        probs: ``(B, K, H, W)`` or ``(K, H, W)`` probabilities (e.g. a softmax), K >= 2, in [0, 1].
        iterations: mean-field iterations.
        pos_w: Potts weight of the Gaussian position kernel (``compat`` of ``addPairwiseGaussian``);
            0 leaves the kernel out.
        pos_xy: its standard deviation in pixels (``sxy``).
        bi_w: weight of the bilateral kernel (``compat`` of ``addPairwiseBilateral``); 0 leaves it out.
        bi_xy: bilateral position standard deviation in pixels (``sxy``).
        bi_rgb: bilateral colour standard deviation in 0..255 units (``srgb``).
        backend: ``"auto"``, ``"torch"`` or ``"pydensecrf"`` (see the module docstring).
        sum_to_one: ``"check"`` (default: raise unless every pixel sums to 1 within ``sum_tol``),
            ``"renormalize"`` (divide by the per-pixel sum) or ``"ignore"`` (use as given; pydensecrf
            behaviour).
        sum_tol: tolerance of the sum check (and slack above 1 for the value range); for float16/bfloat16
            ``probs`` it is at least the dtype's eps (a bfloat16 softmax sums to 1 only within ~0.004).
        clip: the unary is ``-log(clip(p, clip, 1))`` (pydensecrf ``unary_from_softmax`` default 1e-5).
        normalization: kernel normalisation, ``"symmetric"`` (pydensecrf's default), ``"after"``,
            ``"before"`` or ``"none"``.
        image_uint8: the image as loaded instead: uint8, channels-last ``H×W×3`` / ``B×H×W×3``. The layout
            follows the dtype (uint8 channels-last, float channels-first) and is never guessed from the shape.

    Returns:
        Refined marginals, float32 (or ``probs``' floating dtype), same shape and device as ``probs``.
        No gradients flow.

    Shape:
        - image01: ``(B, 3, H, W)`` float (or ``(3, H, W)``); image_uint8: ``(B, H, W, 3)`` (or ``(H, W, 3)``).
        - probs: ``(B, K, H, W)`` or ``(K, H, W)``.
        - output: same as ``probs``; rows sum to 1 over K.

    Examples:
        >>> img = torch.zeros(1, 3, 16, 16); img[..., 8:] = 1.0
        >>> p = torch.full((1, 2, 16, 16), 0.5); p[:, 0, :, :8] = 0.6; p[:, 1, :, :8] = 0.4
        >>> q = dense_crf(img, p, backend="torch")
        >>> q.shape, bool(torch.allclose(q.sum(1), torch.ones(1, 16, 16)))
        (torch.Size([1, 2, 16, 16]), True)
    """
    _check_params(iterations, pos_w, pos_xy, bi_w, bi_xy, bi_rgb, backend, normalization)
    check_choice(sum_to_one, "sum_to_one", _SUM_MODES)
    return _dense_crf(image01, probs, image_uint8, iterations, pos_w, pos_xy, bi_w, bi_xy, bi_rgb, backend,
                      sum_to_one, sum_tol, clip, normalization)


def _dense_crf(image01: Tensor | None, probs: Tensor, image_uint8: Tensor | None, iterations: int, pos_w: float,
               pos_xy: float, bi_w: float, bi_xy: float, bi_rgb: float, backend: str, sum_to_one: str,
               sum_tol: float, clip: float, normalization: str) -> Tensor:
    """[`dense_crf`][] with checked parameters."""
    p, squeeze = _prepare_probs(probs, sum_to_one, sum_tol)
    out_dtype = probs.dtype if isinstance(probs, Tensor) else torch.float32
    q = _from_unary(image01, unary_from_probs(p, clip), image_uint8, iterations, pos_w, pos_xy, bi_w, bi_xy,
                    bi_rgb, backend, normalization)
    q = q.to(out_dtype) if out_dtype.is_floating_point else q
    return q[0] if squeeze else q


# -------------------------------------------------------------------------------------------------- module
class DenseCRF(nn.Module):
    """Fully connected CRF post-processing with named released presets and two backends.

    Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
    NeurIPS 2011. Holds the hyperparameters; [`forward`][] refines probabilities
    ([`dense_crf`][]), [`from_mask`][] refines hard label masks (IRN/SMAF style),
    [`from_unary`][] takes unary energies, [`pool_map`][] runs a dataset through pydensecrf in a
    process pool. Presets: ``DenseCRF.preset(name)`` or the classmethods ``deeplab``, ``afa``, ``toco``,
    ``toco_label``, ``psa``, ``irn``, ``pmm_binary``, ``smaf``, ``l2g_test`` (values and sources in
    [`PRESETS`][] / [`PRESET_SOURCES`][]); [`from_config`][] builds one from a config mapping (a
    ``preset`` name plus overrides, as the trainer's ``crf_params``). Default values = the ``"afa"`` preset.

    Args:
        iterations: mean-field iterations.
        pos_w: Potts weight of the Gaussian position kernel (0 leaves it out).
        pos_xy: its standard deviation in pixels.
        bi_w: Potts weight of the bilateral kernel (0 leaves it out).
        bi_xy: bilateral position standard deviation in pixels.
        bi_rgb: bilateral colour standard deviation (0..255 units).
        backend: ``"auto"``, ``"torch"`` or ``"pydensecrf"``.
        sum_to_one: ``"check"``, ``"renormalize"`` or ``"ignore"`` (see [`dense_crf`][]).
        sum_tol: tolerance of the sum check.
        clip: lower clip of the probabilities in the unary.
        normalization: ``"symmetric"``, ``"after"``, ``"before"`` or ``"none"``.
        gt_prob: confidence of the labelled class in [`from_mask`][] (pydensecrf ``gt_prob``).

    Shape:
        - image01: ``(B, 3, H, W)`` float in [0, 1]; or image_uint8: ``(B, H, W, 3)`` uint8 (or unbatched).
        - probs: ``(B, K, H, W)`` or ``(K, H, W)``; output: same shape as ``probs``.

    Examples:
        >>> crf = DenseCRF.preset("deeplab", backend="torch")
        >>> img = torch.rand(1, 3, 12, 10)
        >>> probs = torch.softmax(torch.randn(1, 3, 12, 10), dim=1)
        >>> crf(img, probs).shape
        torch.Size([1, 3, 12, 10])
    """

    def __init__(self, iterations: int = 10, pos_w: float = 3.0, pos_xy: float = 3.0, bi_w: float = 4.0,
                 bi_xy: float = 64.0, bi_rgb: float = 5.0, backend: str = "auto", sum_to_one: str = "check",
                 sum_tol: float = 1e-3, clip: float = 1e-5, normalization: str = "symmetric",
                 gt_prob: float = 0.7) -> None:
        super().__init__()
        _check_params(iterations, pos_w, pos_xy, bi_w, bi_xy, bi_rgb, backend, normalization)
        check_choice(sum_to_one, "sum_to_one", _SUM_MODES)
        if not 0.0 < gt_prob < 1.0:
            raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
        self.iterations = int(iterations)
        self.pos_w, self.pos_xy = float(pos_w), float(pos_xy)
        self.bi_w, self.bi_xy, self.bi_rgb = float(bi_w), float(bi_xy), float(bi_rgb)
        self.backend = backend
        self.sum_to_one = sum_to_one
        self.sum_tol = float(sum_tol)
        self.clip = float(clip)
        self.normalization = normalization
        self.gt_prob = float(gt_prob)

    # presets ------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DenseCRF:
        """A CRF with the released parameters ``PRESETS[name]``; keyword ``overrides`` win."""
        key = name.lower().replace("_", "-")
        if key not in PRESETS:
            raise ValueError(f"unknown CRF preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def from_config(cls, params: Mapping[str, Any] | None = None) -> DenseCRF:
        """A CRF from a config mapping (the trainer's ``crf_params`` keys).

        The mapping holds an optional ``preset`` name plus [`DenseCRF`][] arguments that override it (no
        ``preset``: the arguments alone).

        Examples:
            >>> DenseCRF.from_config({"preset": "smaf", "backend": "torch"}).bi_xy
            50.0
        """
        kw = dict(params or {})
        name = kw.pop("preset", None)
        return cls.preset(str(name), **kw) if name is not None else cls(**kw)

    @classmethod
    def deeplab(cls, **overrides: Any) -> DenseCRF:
        """deeplab-pytorch / CLIP-ES: 10 it., Gaussian 1 px w 3, bilateral 67 px / 3 w 4."""
        return cls.preset("deeplab", **overrides)

    @classmethod
    def afa(cls, **overrides: Any) -> DenseCRF:
        """AFA / WeCLIP / TSCD test time: 10 it., Gaussian 3 px w 3, bilateral 64 px / 5 w 4."""
        return cls.preset("afa", **overrides)

    @classmethod
    def toco(cls, **overrides: Any) -> DenseCRF:
        """ToCo / DuPL / SeCo test time: 10 it., Gaussian 1 px w 1, bilateral 121 px / 5 w 4."""
        return cls.preset("toco", **overrides)

    @classmethod
    def toco_label(cls, **overrides: Any) -> DenseCRF:
        """ToCo CAM -> pseudo-label CRF: 10 it., Gaussian 3 px w 3, bilateral 36 px / 3 w 4."""
        return cls.preset("toco-label", **overrides)

    @classmethod
    def psa(cls, scale_factor: float = 1.0, **overrides: Any) -> DenseCRF:
        """PSA ``crf_inference``: 10 it., Gaussian 3/scale px w 3, bilateral 80/scale px / 13 w 10."""
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
        p = dict(PRESETS["psa"])
        p["pos_xy"] = p["pos_xy"] / scale_factor
        p["bi_xy"] = p["bi_xy"] / scale_factor
        return cls(**{**p, **overrides})

    @classmethod
    def irn(cls, **overrides: Any) -> DenseCRF:
        """IRN ``crf_inference_label`` (use [`from_mask`][]): Gaussian 3/3, bilateral 50/5/10, gt 0.7."""
        return cls.preset("irn", **overrides)

    @classmethod
    def pmm_binary(cls, **overrides: Any) -> DenseCRF:
        """PMM PPMG 2-label CRF: Gaussian 3 px w 10, bilateral 80/13 w 10, unnormalised probabilities."""
        return cls.preset("pmm-binary", **overrides)

    @classmethod
    def smaf(cls, **overrides: Any) -> DenseCRF:
        """SMAF pseudo-mask CRF (use [`from_mask`][]): same values as IRN's label CRF."""
        return cls.preset("smaf", **overrides)

    @classmethod
    def l2g_test(cls, **overrides: Any) -> DenseCRF:
        """L2G segmentation test CRF (deeplab-pytorch recipe): same values as [`deeplab`][]."""
        return cls.preset("l2g-test", **overrides)

    # inference ----------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return dict(iterations=self.iterations, pos_w=self.pos_w, pos_xy=self.pos_xy, bi_w=self.bi_w,
                    bi_xy=self.bi_xy, bi_rgb=self.bi_rgb, normalization=self.normalization)

    def forward(self, image01: Tensor | None, probs: Tensor, *, image_uint8: Tensor | None = None) -> Tensor:
        """Refined probabilities (same shape as ``probs``); see [`dense_crf`][]."""
        return _dense_crf(image01, probs, image_uint8, self.iterations, self.pos_w, self.pos_xy, self.bi_w, self.bi_xy,
                          self.bi_rgb, self.backend, self.sum_to_one, self.sum_tol, self.clip, self.normalization)

    def from_unary(self, image01: Tensor | None, unary: Tensor, *, image_uint8: Tensor | None = None) -> Tensor:
        """Marginals ``(B, K, H, W)`` from unary energies; see [`dense_crf_from_unary`][]."""
        return _from_unary(image01, unary, image_uint8, self.iterations, self.pos_w, self.pos_xy, self.bi_w, self.bi_xy,
                           self.bi_rgb, self.backend, self.normalization, "unary")

    def from_mask(self, image01: Tensor | None, mask: Tensor, gt_prob: float | None = None,
                  num_classes: int | None = None, ignore_index: int | None = None, *,
                  image_uint8: Tensor | None = None) -> Tensor:
        """Refine hard label masks (pydensecrf ``unary_from_labels``, ``zero_unsure=False``).

        Args:
            image01: as in [`forward`][] (``None`` when ``image_uint8`` is given).
            mask: ``(B, H, W)`` or ``(H, W)`` integer labels in ``[0, K)``.
            gt_prob: confidence of the given label (default: this module's ``gt_prob``, 0.7 as in IRN
                and SMAF).
            num_classes: K; default ``mask.max() + 1`` (pass it explicitly when a label can be absent:
                K changes the energies).
            ignore_index: label value that gets a uniform unary (not in pydensecrf; optional).
            image_uint8: the image as loaded instead, uint8 channels-last ``(B, H, W, 3)`` or ``(H, W, 3)``.

        Returns:
            ``(B, K, H, W)`` float32 marginals (``argmax(1)`` gives IRN's/SMAF's refined labels).

        Examples:
            >>> img = torch.zeros(6, 6, 3, dtype=torch.uint8)
            >>> DenseCRF.irn(backend="torch").from_mask(None, torch.zeros(6, 6, dtype=torch.long), num_classes=3,
            ...                                          image_uint8=img).argmax(1).unique().tolist()
            [0]
        """
        lab = _as_tensor(mask, "mask")
        if lab.ndim not in (2, 3):
            raise ValueError(f"mask must have shape B×H×W or H×W, got {lab.ndim}-D tensor of shape "
                             f"{shape_str(lab)}")
        if lab.ndim == 2:
            lab = lab[None]
        if num_classes is None:
            valid = lab[lab != ignore_index] if ignore_index is not None else lab
            num_classes = int(valid.max()) + 1 if valid.numel() else 2
        unary = unary_from_mask(lab, num_classes, self.gt_prob if gt_prob is None else gt_prob,
                                ignore_index=ignore_index)
        return _from_unary(image01, unary, image_uint8, self.iterations, self.pos_w, self.pos_xy, self.bi_w, self.bi_xy,
                           self.bi_rgb, self.backend, self.normalization, "mask")

    def pool_map(self, jobs: Iterable[tuple[Any, Any]], *, processes: int | None = None, chunksize: int = 1,
                 labels_only: bool = False) -> Iterator[np.ndarray]:
        """Refine a stream of ``(image, probs)`` pairs with pydensecrf in a process pool (for datasets).

        ``image``: ``(H, W, 3)`` uint8 as loaded, or ``(3, H, W)`` float RGB in [0, 1] (told apart by dtype);
        ``probs``:
        ``(K, H, W)``. Probabilities are checked per item with this module's ``sum_to_one`` rule. Yields
        ``(K, H, W)`` float32 numpy marginals in input order (``(H, W)`` label maps with
        ``labels_only``). See
        [`wsss_blocks.crf.pydensecrf_backend.pool_map`][wsss_blocks.crf.pydensecrf_backend.pool_map].
        """

        def prepared() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for image, probs in jobs:
                p, _ = _prepare_probs(probs, self.sum_to_one, self.sum_tol)
                img = _image_any(image, "image")
                _match(img, p)
                yield img[0].cpu().numpy(), unary_from_probs(p[0], self.clip).cpu().numpy()

        return pool_map(prepared(), self._params(), processes=processes, chunksize=chunksize,
                        labels_only=labels_only)

    @override
    def extra_repr(self) -> str:
        return (f"iterations={self.iterations}, pos_w={self.pos_w:g}, pos_xy={self.pos_xy:g}, bi_w={self.bi_w:g}, "
                f"bi_xy={self.bi_xy:g}, bi_rgb={self.bi_rgb:g}, backend={self.backend!r}, "
                f"sum_to_one={self.sum_to_one!r}")


def as_dense_crf(crf: DenseCRF | str | Mapping[str, Any], name: str = "crf") -> DenseCRF:
    """The `DenseCRF` a block's ``crf`` argument names: a module as is, a preset name, or a config mapping.

    Every block that runs a CRF takes ``crf`` in one of these forms (``None``, where allowed, means no CRF and
    is handled by the block).

    Examples:
        >>> as_dense_crf("irn").bi_xy, as_dense_crf({"preset": "irn", "bi_xy": 40.0}).bi_xy
        (50.0, 40.0)
    """
    if isinstance(crf, DenseCRF):
        return crf
    if isinstance(crf, str):
        return DenseCRF.preset(crf)
    if isinstance(crf, Mapping):
        return DenseCRF.from_config(crf)
    raise TypeError(f"{name} must be a wsss_blocks.crf.DenseCRF, a preset name or a config mapping, "
                    f"got {type(crf).__name__}")


def _preset_table(presets: Mapping[str, Mapping[str, Any]] = PRESETS) -> str:  # pragma: no cover - docs helper
    keys = list(_PARAM_KEYS)
    rows = ["| preset | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, p in presets.items():
        rows.append(f"| {name} | " + " | ".join(f"{p[k]:g}" for k in keys) + " |")
    return "\n".join(rows)
