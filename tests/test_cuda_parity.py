"""Device and dtype parity of every block that claims CUDA support.

Each case computes a block on the CPU (float64 where the block supports it, else float32: the reference)
and on the parity device (float32; half precision where the block claims AMP support) and compares the
values, and for losses the gradients, with stated tolerances. The device is ``--parity-device`` (default
``cuda``, skipped without a GPU); ``--parity-device=cpu`` (or ``WSSS_PARITY_DEVICE=cpu``) runs the very same
comparisons CPU against CPU, which checks that the tests themselves are right before a GPU ever runs them::

    pytest -m cuda                                    # on a GPU machine
    pytest tests/test_cuda_parity.py --parity-device=cpu

Half-precision modes: ``float16`` and ``bfloat16`` feed half-precision inputs (and run networks under
``torch.autocast``) where a block documents that it accepts them, computing internally in float32. Where a
block promises float32 internals, the reference is computed from the *rounded* half-precision inputs, so the
tolerance tests the internal precision and not the input rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

F64 = torch.float64
F32 = torch.float32
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HALF = ("float16", "bfloat16")

#: name -> (case function, the modes it is tested in)
CASES: dict[str, tuple[Callable[[torch.device, torch.dtype], None], tuple[str, ...]]] = {}


def case(*modes: str) -> Callable:
    """Register a parity case; float32 always, plus the half-precision ``modes`` the block claims."""

    def deco(fn: Callable[[torch.device, torch.dtype], None]) -> Callable:
        CASES[fn.__name__.removeprefix("case_")] = (fn, ("float32", *modes))
        return fn

    return deco


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=_gen(seed), dtype=F64)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def dev(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None = F32) -> torch.Tensor:
    """``x`` on ``device``; floating tensors cast to ``dtype``."""
    if dtype is not None and x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device)


def rounded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` after a round trip through ``dtype`` (float64 again): the reference sees the rounded inputs."""
    return x.to(dtype).to(F64)


def close(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float = 0.0, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    torch.testing.assert_close(out.detach().cpu().to(F64), ref.detach().cpu().to(F64), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def half_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Maps in [0, 1] computed by a network under autocast: a bound on the largest and on the mean error
    (half-precision convolutions keep 11 (fp16) or 8 (bf16) mantissa bits per layer).
    """
    max_tol, mean_tol = (2e-2, 2e-3) if dtype == torch.float16 else (1e-1, 1e-2)
    err = (out.detach().cpu().to(F64) - ref.detach().cpu().to(F64)).abs()
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    message = (f"{what} {dtype}: max error {float(err.max()):.3g} (<= {max_tol}), mean {float(err.mean()):.3g} "
               f"(<= {mean_tol})")
    assert float(err.max()) <= max_tol, message
    assert float(err.mean()) <= mean_tol, message


def same(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.equal(out.cpu(), ref.cpu()), f"{what}: {int((out.cpu() != ref.cpu()).sum())} elements differ"


def agree(out: torch.Tensor, ref: torch.Tensor, min_fraction: float, what: str = "") -> None:
    """Integer maps agreeing on at least ``min_fraction`` of the elements (threshold decisions may flip where
    float32 and float64 values straddle a threshold).
    """
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    frac = float((out.cpu() == ref.cpu()).double().mean())
    assert frac >= min_fraction, f"{what}: agreement {frac:.5f} < {min_fraction}"


def on_device(x: torch.Tensor, device: torch.device) -> None:
    assert x.device.type == device.type, f"output on {x.device}, expected {device}"


def tiny_net(out_channels: int = 4, seed: int = 0) -> nn.Module:
    """A strided conv net (output stride 2) for the multi-scale blocks."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, out_channels, 1)).eval()


def smooth_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """B×3×H×W in [0, 1]: low-frequency colours (piecewise smooth, like photos) plus a little noise."""
    low = rand(b, 3, max(2, h // 8), max(2, w // 8), seed=seed)
    img = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (img + 0.02 * rand(b, 3, h, w, seed=seed + 1)).clamp(0, 1)


def labels_multi_hot(b: int, c: int, seed: int = 0) -> torch.Tensor:
    y = (rand(b, c, seed=seed) > 0.6).to(F64)
    y[:, 0] = 1.0  # every image has at least one class
    return y


def grad_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, d value / d x) of a scalar function."""
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (g,) = torch.autograd.grad(y, x)
    return y.detach(), g


# ================================================================================================ CAM core
@case()
def case_cam_from_features(device, dtype):
    from wsss_blocks.cam import cam_from_features

    f, w, b = randn(2, 16, 9, 11), randn(5, 16), randn(5, seed=1)
    out = cam_from_features(dev(f, device), dev(w, device), dev(b, device))
    on_device(out, device)
    close(out, cam_from_features(f, w, b), atol=1e-5, rtol=1e-5, what="cam_from_features")


@case()
def case_tokens_to_map(device, dtype):
    from wsss_blocks.cam import tokens_to_map

    tokens = randn(2, 2 + 4 * 6, 8)
    out = tokens_to_map(dev(tokens, device), (64, 96), 16, num_prefix_tokens=2)
    on_device(out, device)
    same(out.cpu().to(F64), rounded(tokens_to_map(tokens, (64, 96), 16, num_prefix_tokens=2), F32), "tokens_to_map")


@case()
def case_normalize_cams(device, dtype):
    from wsss_blocks.cam import normalize_cams

    x = randn(2, 5, 17, 19)
    for mode in ("max", "minmax"):
        close(normalize_cams(dev(x, device), mode=mode), normalize_cams(x, mode=mode), atol=1e-6,
              what=f"normalize_cams[{mode}]")


@case()
def case_cams_to_mask(device, dtype):
    from wsss_blocks.cam import cams_to_mask

    cams, y = rand(3, 6, 21, 23), labels_multi_hot(3, 6)
    out = cams_to_mask(dev(cams, device), dev(y, device), bg_score=0.3)
    on_device(out, device)
    same(out, cams_to_mask(cams, y, bg_score=0.3), "cams_to_mask")


@case(*HALF)
def case_multiscale_cams(device, dtype):
    """Multi-scale + flip CAMs of a conv net; the trainer runs it under autocast on CUDA."""
    from wsss_blocks.cam import multiscale_cams, normalize_cams

    net = tiny_net(5)
    x = smooth_image(2, 30, 38)
    kw = dict(scales=(1.0, 0.5, 1.5), flip=True, out_size=(30, 38))
    net64 = net.double()
    ref = normalize_cams(multiscale_cams(lambda im: torch.relu(net64(im)), x, **kw))
    net_d = net.float().to(device)
    fn = lambda im: torch.relu(net_d(im))
    if dtype == F32:
        out = multiscale_cams(fn, dev(x, device), **kw)
        close(normalize_cams(out.float()), ref, atol=1e-5, what="multiscale_cams float32")
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = multiscale_cams(fn, dev(x, device), **kw)
        # half-precision convolutions: 8 (bf16) / 11 (fp16) mantissa bits through two layers and 6 passes
        half_close(normalize_cams(out.float()), ref, dtype, "multiscale_cams autocast")
    on_device(out, device)


# ================================================================================================ metrics
@case()
def case_confusion_matrix_and_metric(device, dtype):
    from wsss_blocks.metrics import SegmentationMetric, confusion_matrix

    g = _gen(3)
    pred = torch.randint(0, 21, (2, 40, 50), generator=g)
    gt = torch.randint(0, 21, (2, 40, 50), generator=g)
    gt[:, :5] = 255
    cm = confusion_matrix(pred.to(device), gt.to(device), 21)
    on_device(cm, device)
    same(cm, confusion_matrix(pred, gt, 21), "confusion_matrix")
    m_cpu, m_dev = SegmentationMetric(21), SegmentationMetric(21).to(device)
    m_cpu.update(pred, gt)
    m_dev.update(pred.to(device), gt.to(device))
    close(m_dev.compute()["miou"], m_cpu.compute()["miou"], atol=1e-12, what="SegmentationMetric miou")


@case()
def case_bg_score_sweep(device, dtype):
    """The one-pass sweep bins float32 CAM values by bit pattern: identical counts on every device."""
    from wsss_blocks.metrics import BgScoreSweep

    cams, y = rand(2, 6, 24, 30).float(), labels_multi_hot(2, 6).float()
    gt = torch.randint(0, 7, (2, 24, 30), generator=_gen(4))
    ts = tuple(i / 20 for i in range(20))
    s_cpu, s_dev = BgScoreSweep(7, ts), BgScoreSweep(7, ts).to(device)
    s_cpu.update(cams, y, gt)
    s_dev.update(cams.to(device), y.to(device), gt.to(device))
    same(s_dev.counts, s_cpu.counts, "BgScoreSweep counts")
    assert s_dev.compute().miou == s_cpu.compute().miou


# ================================================================================================ dense CRF
@case()
def case_dense_crf_torch_backend(device, dtype):
    """The PyTorch permutohedral backend on the device against the same backend on the CPU (both float32)."""
    from wsss_blocks.crf import DenseCRF

    img = (smooth_image(2, 45, 57, seed=5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    probs = torch.softmax(F.interpolate(randn(2, 6, 4, 5, seed=6) * 4, size=(45, 57), mode="bilinear",
                                        align_corners=False), 1).float()
    for preset in ("afa", "deeplab"):
        crf = DenseCRF.preset(preset, backend="torch")
        out = crf(None, probs.to(device), image_uint8=img.to(device))
        on_device(out, device)
        close(out, crf(None, probs, image_uint8=img), atol=1e-4, what=f"DenseCRF[{preset}]")
    hard = probs.argmax(1)
    crf = DenseCRF.preset("smaf", backend="torch")
    close(crf.from_mask(None, hard.to(device), gt_prob=0.7, num_classes=6, image_uint8=img.to(device)),
          crf.from_mask(None, hard, gt_prob=0.7, num_classes=6, image_uint8=img), atol=1e-4,
          what="DenseCRF.from_mask")


# ================================================================================================ PAR / VARM
@case(*HALF)
def case_pixel_adaptive_refine(device, dtype):
    """PAR (AFA/ToCo): half inputs are refined in float32."""
    from wsss_blocks.refine import PixelAdaptiveRefine

    img, maps = smooth_image(2, 30, 34, seed=7), rand(2, 4, 15, 17, seed=8).softmax(1)
    m = PixelAdaptiveRefine()
    out = m(dev(img, device, dtype), dev(maps, device, dtype))
    on_device(out, device)
    ref = m(rounded(img, dtype), rounded(maps, dtype))
    close(out, ref, atol=1e-5 if dtype == F32 else 5e-3, what=f"PixelAdaptiveRefine {dtype}")


@case(*HALF)
def case_variation_aware_refine(device, dtype):
    """VARM (TSCD): half inputs are refined in float32."""
    from wsss_blocks.refine import VariationAwareRefine

    img, maps = smooth_image(2, 30, 34, seed=9), rand(2, 4, 30, 34, seed=10).softmax(1)
    m = VariationAwareRefine()
    out = m(dev(img, device, dtype), dev(maps, device, dtype))
    on_device(out, device)
    ref = m(rounded(img, dtype), rounded(maps, dtype))
    close(out, ref, atol=1e-5 if dtype == F32 else 5e-3, what=f"VariationAwareRefine {dtype}")


@case()
def case_reliable_pseudo_mask(device, dtype):
    from wsss_blocks.refine import VariationAwareRefine, reliable_pseudo_mask

    img, cams, y = smooth_image(2, 32, 40, seed=11), rand(2, 5, 32, 40, seed=12), labels_multi_hot(2, 5, seed=13)
    m = VariationAwareRefine()
    out = reliable_pseudo_mask(m, dev(img, device), dev(cams, device), dev(y, device))
    on_device(out, device)
    agree(out, reliable_pseudo_mask(m, img, cams, y), 0.999, "reliable_pseudo_mask")


# ================================================================================================ SCD losses
@case(*HALF)
def case_self_correspondence_loss(device, dtype):
    """SCD loss: value and gradient; half inputs are computed in float32 outside autocast."""
    from wsss_blocks.correspondence import sample_points, self_correspondence_loss

    ta, tb = rand(2, 5, 24, 24, seed=14), rand(2, 5, 11, 11, seed=15)
    sa, sb = randn(2, 6, 24, 24, seed=16), randn(2, 6, 11, 11, seed=17)
    ca, cb = sample_points(2, 12, generator=_gen(18), dtype=F64), sample_points(2, 12, generator=_gen(19), dtype=F64)
    if dtype != F32:
        ta, tb, sb = rounded(ta, dtype), rounded(tb, dtype), rounded(sb, dtype)
        sa = rounded(sa, dtype)

    def loss(s_a: torch.Tensor, *, d: torch.device, dt: torch.dtype) -> torch.Tensor:
        return self_correspondence_loss(dev(ta, d, dt), dev(tb, d, dt), s_a, dev(sb, d, dt), dev(ca, d, F32 if
                                        dt != F64 else F64), dev(cb, d, F32 if dt != F64 else F64))

    ref, g_ref = grad_of(lambda s: loss(s, d=torch.device("cpu"), dt=F64), sa)
    out, g = grad_of(lambda s: loss(s, d=device, dt=dtype), dev(sa, device, dtype))
    on_device(out, device)
    close(out, ref, atol=1e-6, rtol=1e-4, what=f"self_correspondence_loss {dtype}")
    scale = float(g_ref.abs().max())
    close(g, g_ref, atol=1e-6 if dtype == F32 else 1e-2 * scale, rtol=1e-3 if dtype == F32 else 1e-2,
          what=f"self_correspondence_loss grad {dtype}")


@case()
def case_equivariant_regularization(device, dtype):
    from wsss_blocks.correspondence import equivariant_regularization

    cams = rand(2, 6, 20, 20, seed=20)
    small = F.interpolate(cams, size=(9, 9), mode="bilinear", align_corners=True) + 0.05 * randn(2, 6, 9, 9)
    ref, g_ref = grad_of(lambda s: equivariant_regularization(cams, s), small)
    out, g = grad_of(lambda s: equivariant_regularization(dev(cams, device), s), dev(small, device))
    on_device(out, device)
    close(out, ref, atol=1e-7, rtol=1e-5, what="equivariant_regularization")
    close(g, g_ref, atol=1e-7, rtol=1e-4, what="equivariant_regularization grad")


@case()
def case_affinity_from_attention_loss(device, dtype):
    from wsss_blocks.correspondence import affinity_from_attention_loss

    y = torch.randint(0, 4, (2, 64, 64), generator=_gen(21))
    y[:, :8, :8] = 255
    aff = rand(2, 16, 16, seed=22) * 0.98 + 0.01
    ref, g_ref = grad_of(lambda a: affinity_from_attention_loss(a, y), aff)
    out, g = grad_of(lambda a: affinity_from_attention_loss(a, y.to(device)), dev(aff, device))
    on_device(out, device)
    close(out, ref, atol=1e-7, rtol=1e-5, what="affinity_from_attention_loss")
    close(g, g_ref, atol=1e-7, rtol=1e-4, what="affinity_from_attention_loss grad")


# ================================================================================================ L2G
@case()
def case_roi_align(device, dtype):
    from wsss_blocks.local_global import roi_align

    feats = randn(2, 4, 16, 20, seed=23)
    rois = torch.tensor([[0, 1.5, 2.0, 13.0, 11.0], [1, 0.0, 0.0, 19.0, 15.0], [1, 4.2, 3.3, 9.9, 8.1]], dtype=F64)
    for aligned in (False, True):
        out = roi_align(dev(feats, device), dev(rois, device), (5, 6), spatial_scale=1.0, aligned=aligned)
        on_device(out, device)
        close(out, roi_align(feats, rois, (5, 6), aligned=aligned), atol=1e-5, rtol=1e-5,
              what=f"roi_align aligned={aligned}")
        try:
            from torchvision.ops import roi_align as tv_roi_align
        except ImportError:  # pragma: no cover - torchvision is a [train] dependency
            continue
        tv = tv_roi_align(dev(feats, device), dev(rois, device), (5, 6), 1.0, -1, aligned)
        close(out, tv, atol=1e-5, rtol=1e-5, what=f"roi_align vs torchvision aligned={aligned}")


@case()
def case_crop_local_patches(device, dtype):
    from wsss_blocks.local_global import crop_local_patches, sample_patch_boxes

    imgs, sal, y = rand(2, 3, 48, 56, seed=24), rand(2, 1, 48, 56, seed=25), labels_multi_hot(2, 5)
    boxes = sample_patch_boxes(2, (48, 56), num_patches=4, patch_size=24, generator=_gen(26))
    ref = crop_local_patches(imgs.float(), boxes, y.float(), sal.float(), resize_to=20)
    out = crop_local_patches(dev(imgs, device), boxes.to(device), dev(y, device), dev(sal, device), resize_to=20)
    for k in ("patches", "patch_saliency", "boxes"):
        on_device(out[k], device)  # type: ignore[literal-required]
        close(out[k], ref[k], atol=1e-5, what=f"crop_local_patches[{k}]")  # type: ignore[literal-required]


@case(*HALF)
def case_l2g_transfer(device, dtype):
    """L2G's transfer loss: value and gradient; softmax, RoIAlign and reduction in float32 under autocast."""
    from wsss_blocks.local_global import l2g_transfer

    glob, cams = randn(2, 6, 12, 14, seed=27), randn(5, 6, 6, 6, seed=28)
    rois = torch.tensor([[0, 0, 0, 47, 47], [0, 40, 30, 95, 88], [1, 10, 8, 60, 70], [1, 50, 0, 111, 60],
                         [1, 0, 40, 50, 95]], dtype=F32)
    y = torch.tensor([[1.0, 0, 1, 0, 1], [0, 1, 1, 0, 0]], dtype=F64)
    sal = rand(5, 1, 48, 48, seed=29)
    if dtype != F32:
        glob, cams = rounded(glob, dtype), rounded(cams, dtype)

    def run(gl: torch.Tensor, d: torch.device, dt: torch.dtype) -> torch.Tensor:
        return l2g_transfer(gl, dev(cams, d, dt), rois.to(d), dev(y, d), dev(sal, d)).loss

    ref, g_ref = grad_of(lambda gl: run(gl, torch.device("cpu"), F64), glob)
    if dtype == F32:
        out, g = grad_of(lambda gl: run(gl, device, F32), dev(glob, device))
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            out, g = grad_of(lambda gl: run(gl, device, dtype), dev(glob, device, dtype))
    on_device(out, device)
    close(out, ref, atol=1e-6, rtol=1e-4, what=f"l2g_transfer loss {dtype}")
    # the gradient arrives in the input dtype: half rounding relative to the gradient's scale
    scale = float(g_ref.abs().max())
    close(g, g_ref, atol=1e-6 if dtype == F32 else 1e-2 * scale, rtol=1e-3 if dtype == F32 else 1e-2,
          what=f"l2g_transfer grad {dtype}")


# ================================================================================================ PMM
@case(*HALF)
def case_cov_smooth(device, dtype):
    """PMM's CoV smoothing: statistics in float32 also for half inputs."""
    from wsss_blocks.pseudo_mask import cov_smooth

    cams = rand(2, 8, 24, 28, seed=30) ** 2
    cams[:, 3] = 0.0  # an all-zero (absent) class
    if dtype != F32:
        cams = rounded(cams, dtype)
    out = cov_smooth(dev(cams, device, dtype))
    on_device(out, device)
    # float32 statistics, output in the input dtype: the half output rounding dominates
    close(out, cov_smooth(cams), atol=1e-5 if dtype == F32 else 1e-2, rtol=1e-5 if dtype == F32 else 1e-2,
          what=f"cov_smooth {dtype}")


@case()
def case_proportional_pseudo_mask(device, dtype):
    """PPMG with the threshold foreground (exact) and with the per-class binary CRF (PyTorch backend)."""
    from wsss_blocks.pseudo_mask import PPMG_CRF, proportional_pseudo_mask

    cams = (rand(2, 6, 30, 36, seed=31) ** 3).float()
    y, img = labels_multi_hot(2, 6, seed=32).float(), smooth_image(2, 30, 36, seed=33).float()
    ref = proportional_pseudo_mask(cams, y, foreground="threshold")
    out = proportional_pseudo_mask(cams.to(device), y.to(device), foreground="threshold")
    on_device(out, device)
    same(out, ref, "proportional_pseudo_mask threshold")
    crf = {"preset": PPMG_CRF, "backend": "torch"}
    ref = proportional_pseudo_mask(cams, y, img, crf=crf)
    out = proportional_pseudo_mask(cams.to(device), y.to(device), img.to(device), crf=crf)
    on_device(out, device)
    agree(out, ref, 0.999, "proportional_pseudo_mask crf")


# ================================================================================================ SMAF
@case(*HALF)
def case_multiscale_attention_fusion(device, dtype):
    """SMAF's fused maps of a conv net: float32, and under autocast (softmaxes and sums in float32)."""
    from wsss_blocks.multiscale_fusion import multiscale_attention_fusion

    net = tiny_net(6, seed=1)
    x, y = smooth_image(2, 32, 32, seed=34), labels_multi_hot(2, 5, seed=35)
    ref = multiscale_attention_fusion(net.double(), x, y)
    net_d = net.float().to(device)
    if dtype == F32:
        out = multiscale_attention_fusion(net_d, dev(x, device), dev(y, device))
        close(out, ref, atol=1e-5, what="multiscale_attention_fusion float32")
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = multiscale_attention_fusion(net_d, dev(x, device), dev(y, device))
        half_close(out, ref, dtype, "multiscale_attention_fusion autocast")
    on_device(out, device)


@case()
def case_smaf_target_and_loss(device, dtype):
    from wsss_blocks.multiscale_fusion import smaf_loss, smaf_target

    maps, y = rand(2, 5, 32, 32, seed=36), labels_multi_hot(2, 5, seed=37)
    t_ref = smaf_target(maps, y, scale_factor=0.25)
    t = smaf_target(dev(maps, device), dev(y, device), scale_factor=0.25)
    on_device(t, device)
    close(t, t_ref, atol=1e-5, rtol=1e-4, what="smaf_target")
    logits = randn(2, 6, 8, 8, seed=38)
    ref, g_ref = grad_of(lambda z: smaf_loss(z, t_ref), logits)
    out, g = grad_of(lambda z: smaf_loss(z, t), dev(logits, device))
    close(out, ref, atol=1e-5, rtol=1e-5, what="smaf_loss")
    close(g, g_ref, atol=1e-6, rtol=1e-4, what="smaf_loss grad")


@case()
def case_smaf_pseudo_mask(device, dtype):
    from wsss_blocks.crf import DenseCRF
    from wsss_blocks.multiscale_fusion import smaf_pseudo_mask

    maps, y = rand(2, 5, 40, 44, seed=39).float(), labels_multi_hot(2, 5, seed=40).float()
    img = smooth_image(2, 40, 44, seed=41).float()
    same(smaf_pseudo_mask(maps.to(device), y.to(device), 0.2), smaf_pseudo_mask(maps, y, 0.2),
         "smaf_pseudo_mask without CRF")
    crf = DenseCRF.preset("smaf", backend="torch")
    out = smaf_pseudo_mask(maps.to(device), y.to(device), 0.2, image01=img.to(device), crf=crf)
    on_device(out, device)
    agree(out, smaf_pseudo_mask(maps, y, 0.2, image01=img, crf=crf), 0.999, "smaf_pseudo_mask with CRF")


# ================================================================================================ PPL
@case()
def case_split_merge_tile_patches(device, dtype):
    from wsss_blocks.patch_learning import merge_patches, split_patches
    from wsss_blocks.puzzle_cam import tile_images

    x = randn(2, 3, 12, 10, seed=42).float()
    p = split_patches(x.to(device), (3, 2))
    on_device(p, device)
    same(p, split_patches(x, (3, 2)), "split_patches")
    same(merge_patches(p, 2, (3, 2)), x, "merge_patches round trip")
    same(tile_images(x.to(device), 2), tile_images(x, 2), "tile_images")


@case()
def case_patch_learning(device, dtype):
    from wsss_blocks.patch_learning import patch_learning

    torch.manual_seed(3)
    stages = [nn.Conv2d(3, 8, 3, 2, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1))]
    w = randn(5, 32, seed=43)
    x = randn(2, 3, 32, 32, seed=44)
    ref = patch_learning([s.double() for s in stages], x, w, insert_after=1)
    out = patch_learning([s.float().to(device) for s in stages], dev(x, device), dev(w, device), insert_after=1)
    on_device(out.logits, device)
    close(out.logits, ref.logits, atol=1e-5, rtol=1e-5, what="patch_learning logits")
    close(out.cams, ref.cams, atol=1e-5, rtol=1e-5, what="patch_learning cams")


@case()
def case_puzzle_reconstruction_loss(device, dtype):
    from wsss_blocks.puzzle_cam import puzzle_reconstruction_loss

    a, b, y = randn(2, 5, 8, 8, seed=45), randn(2, 5, 8, 8, seed=46), labels_multi_hot(2, 5, seed=47)
    ref, g_ref = grad_of(lambda m: puzzle_reconstruction_loss(a, m, y), b)
    out, g = grad_of(lambda m: puzzle_reconstruction_loss(dev(a, device), m, dev(y, device)), dev(b, device))
    on_device(out, device)
    close(out, ref, atol=1e-6, rtol=1e-5, what="puzzle_reconstruction_loss")
    close(g, g_ref, atol=1e-7, rtol=1e-4, what="puzzle_reconstruction_loss grad")


@case()
def case_pretended_underfitting_loss(device, dtype):
    from wsss_blocks.losses import pretended_underfitting_loss

    logits = randn(2, 6, 10, 12, seed=48) * 3
    target = torch.randint(0, 6, (2, 10, 12), generator=_gen(49))
    target[:, 0] = 255
    for mode in ("clamp", "pow", "ignore"):
        fn_ref = lambda z, m=mode: pretended_underfitting_loss(z, target, beta=2.0, k=0.5, mode=m)
        fn = lambda z, m=mode: pretended_underfitting_loss(z, target.to(device), beta=2.0, k=0.5, mode=m)
        ref, g_ref = grad_of(fn_ref, logits)
        out, g = grad_of(fn, dev(logits, device))
        on_device(out, device)
        close(out, ref, atol=1e-6, rtol=1e-5, what=f"pretended_underfitting_loss[{mode}]")
        close(g, g_ref, atol=1e-7, rtol=1e-4, what=f"pretended_underfitting_loss[{mode}] grad")


# ================================================================================================ the test
@pytest.fixture
def no_tf32():
    """float32 means float32: cuDNN convolutions default to TF32 on Ampere and newer GPUs (10 mantissa bits), a
    speed setting the float32 tolerances here are not meant for; restored afterwards.
    """
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


PARAMS = [pytest.param(name, mode, id=f"{name}-{mode}") for name, (_, modes) in CASES.items() for mode in modes]


@pytest.mark.cuda
@pytest.mark.parity
@pytest.mark.parametrize(("name", "mode"), PARAMS)
def test_parity(name: str, mode: str, parity_device: torch.device, no_tf32: None) -> None:
    if parity_device.type == "cuda" and not torch.cuda.is_available():  # pragma: no cover - conftest skips
        pytest.skip("needs a CUDA device")
    dtype = DTYPES[mode]
    if parity_device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")  # pragma: no cover - pre-Ampere GPUs
    fn, _ = CASES[name]
    fn(parity_device, dtype)


def test_every_claimed_block_has_a_case():
    """The blocks whose docs claim CUDA (and AMP) support are all covered; half modes where AMP is claimed.

    (Runs everywhere: it checks the case table, not a device.)
    """
    must = {"cam_from_features", "tokens_to_map", "normalize_cams", "cams_to_mask", "multiscale_cams",
            "confusion_matrix_and_metric", "bg_score_sweep",
            "dense_crf_torch_backend", "pixel_adaptive_refine", "variation_aware_refine", "self_correspondence_loss",
            "affinity_from_attention_loss", "roi_align", "l2g_transfer", "cov_smooth", "proportional_pseudo_mask",
            "multiscale_attention_fusion", "smaf_pseudo_mask", "split_merge_tile_patches", "patch_learning"}
    assert must <= set(CASES), sorted(must - set(CASES))
    for name in ("multiscale_cams", "pixel_adaptive_refine", "variation_aware_refine", "self_correspondence_loss",
                 "l2g_transfer", "cov_smooth", "multiscale_attention_fusion"):
        assert set(HALF) <= set(CASES[name][1]), name
