"""Tests for PMM's coefficient-of-variation smoothing and proportional pseudo-masks (wsss_blocks.pseudo_mask)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.cam import cams_to_mask
from wsss_blocks.crf import DenseCRF
from wsss_blocks.pseudo_mask import (
    CoVSmooth,
    ProportionalPseudoMask,
    PseudoMaskParts,
    cov_smooth,
    cov_smooth_detailed,
    proportional_pseudo_mask,
    proportional_pseudo_mask_detailed,
)


def _cov(*args, **kwargs):
    """(smoothed, cv) of cov_smooth_detailed; the smoothed maps equal cov_smooth's."""
    out = cov_smooth_detailed(*args, **kwargs)
    assert torch.equal(out.smoothed, cov_smooth(*args, **kwargs))
    return out.smoothed, out.cov

# ------------------------------------------------------------------------------------------ cov_smooth

MAP_3X3 = [[0.0, 0.04, 0.05],
           [0.1, 0.2, 0.4],
           [0.5, 0.8, 1.0]]


def test_cov_hand_computed_3x3():
    """P = {A > 0.05} = {.1,.2,.4,.5,.8,1}: mean .5, population var .1, cv = .3·√.1/.5."""
    a = torch.tensor(MAP_3X3)
    out, cv = _cov(a)
    expected_cv = 0.3 * math.sqrt(0.1) / 0.5  # 0.18973665961
    assert cv.shape == ()
    assert cv.item() == pytest.approx(expected_cv, rel=1e-6)
    e = 1.0 - expected_cv
    expected = [[0.0, 0.0, 0.05 ** e],  # 0.04 < t is zeroed; 0.05 == t is kept (>= t) though not in P (> t)
                [0.1 ** e, 0.2 ** e, 0.4 ** e],
                [0.5 ** e, 0.8 ** e, 1.0]]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_cov_exponent_is_one_minus_cv():
    a = torch.rand(2, 3, 6, 6) * 0.9 + 0.1  # all above the threshold
    out, cv = _cov(a)
    exponent = torch.log(out) / torch.log(a)
    torch.testing.assert_close(exponent, (1 - cv)[..., None, None].expand_as(a), rtol=1e-4, atol=1e-4)


def test_cov_scale_is_folded_in_and_eps_in_denominator():
    a = torch.tensor([[0.2, 0.6]])
    _, cv1 = _cov(a, cv_scale=1.0, eps=0.0)
    _, cv3 = _cov(a, cv_scale=0.3, eps=0.0)
    assert cv1.item() == pytest.approx(0.2 / 0.4, rel=1e-6)  # std .2, mean .4
    assert cv3.item() == pytest.approx(0.3 * 0.5, rel=1e-6)
    _, cve = _cov(a, cv_scale=1.0, eps=0.1)
    assert cve.item() == pytest.approx(0.2 / 0.5, rel=1e-6)


def test_cov_empty_and_all_zero_maps_no_nan():
    cams = torch.zeros(2, 3, 5, 5)
    cams[0, 1] = 0.03  # activated nowhere (all below t)
    cams[1, 2, 2, 2] = 0.7  # a single active pixel: std 0
    out, cv = _cov(cams)
    assert torch.isfinite(out).all()
    assert torch.isfinite(cv).all()
    assert cv.abs().max() == 0
    expected = torch.zeros_like(cams)
    expected[1, 2, 2, 2] = 0.7
    torch.testing.assert_close(out, expected)


def _release_cov_float16(v16: np.ndarray, scale: float = 0.3, t: float = 0.05) -> np.floating:
    """PMM ``pipeline/refine_cam.py`` ``get_CoV`` on the stored float16 map (numpy sums float16 in float16)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return v16[v16 > t].std() / (v16[v16 > t] + 0.00000001).mean() * scale


def test_cov_release_float16_overflow_is_fixed():
    """The release's float16 CoV overflows for large objects (whole image one class); the library's does not.

    ``np.std`` of a float16 array accumulates in float16: once the activated mass of a class exceeds 65504
    (about 100k pixels at mean activation 0.65, 54 % of a 375×500 VOC image) the CoV is ``inf``, the power
    ``A ** (1 - inf)`` is ``inf`` everywhere and the class's foreground covers the whole image.
    """
    rng = np.random.default_rng(0)
    H, W = 375, 500
    small = np.zeros((H, W), np.float32)
    small[:150, :250] = rng.uniform(0.3, 1.0, (150, 250))  # 37.5k pixels: no overflow
    large = np.zeros((H, W), np.float32)
    large[:, :330] = rng.uniform(0.3, 1.0, (H, 330))  # 124k pixels, mass ~81k > 65504
    for a, overflows in ((small, False), (large, True)):
        released = _release_cov_float16(a.astype(np.float16))
        ours = float(_cov(torch.from_numpy(a)[None])[1][0])
        assert math.isfinite(ours)
        assert abs(ours - float(a[a > 0.05].std() / a[a > 0.05].mean() * 0.3)) < 1e-4
        if overflows:
            assert np.isinf(released)
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                cvs = a.astype(np.float16)
                cvs[cvs < 0.05] = 0
                cvs = cvs ** (1 - released)  # the release's smoothing: inf (or 1) at every pixel
            assert bool((cvs >= 1).all())  # fg score >= 1 and (1 - max)^11 <= 0 everywhere: all foreground
            # the library keeps the background: PPMG (threshold foreground) claims only the object's columns
            mask = proportional_pseudo_mask(torch.from_numpy(a)[None, None], torch.ones(1, 1), foreground="threshold")
            assert float((mask[0, :, 340:] == 0).float().mean()) == 1.0
            assert float((mask[0, :, :330] == 1).float().mean()) > 0.9
        else:
            assert abs(float(released) - ours) < 1e-3  # float16 rounding only


def test_cov_constant_map_is_unchanged():
    a = torch.full((4, 4), 0.3)
    torch.testing.assert_close(cov_smooth(a), a)


def test_cov_batched_equals_per_image():
    cams = torch.rand(3, 4, 7, 9) ** 3
    batched, cv = _cov(cams)
    for b in range(3):
        for c in range(4):
            o, v = _cov(cams[b, c])
            torch.testing.assert_close(batched[b, c], o)
            torch.testing.assert_close(cv[b, c], v)


def test_cov_any_leading_shape():
    cams = torch.rand(2, 3, 2, 5, 5)
    out = cov_smooth(cams)
    torch.testing.assert_close(out[1, 2, 0], cov_smooth(cams[1, 2, 0]))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.2, 1.0))
def test_cov_scale_invariance(seed, c):
    """CoV is scale invariant: cv(c·A; c·t) = cv(A; t), hence out(c·A; c·t) = c^(1-cv) · out(A; t)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 6, 6, generator=g, dtype=torch.float64) ** 2
    out1, cv1 = _cov(a, fg_threshold=0.05)
    out2, cv2 = _cov(a * c, fg_threshold=0.05 * c, eps=0.0)
    _, cv1e = _cov(a, fg_threshold=0.05, eps=0.0)
    torch.testing.assert_close(cv2, cv1e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out2, (c ** (1 - cv2))[:, None, None] * cov_smooth(a, eps=0.0), rtol=1e-4, atol=1e-6)
    assert torch.isfinite(out1).all()
    assert torch.isfinite(cv1).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_cov_raises_kept_activations(seed):
    """On [0, 1] maps the exponent is in (0, 1], so kept pixels never decrease and stay in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 8, 8, generator=g) ** 4
    out, cv = _cov(a)
    kept = a >= 0.05
    assert (cv >= 0).all()
    assert (cv < 1).all()
    assert (out[kept] >= a[kept] - 1e-7).all()
    assert (out[~kept] == 0).all()
    assert out.max() <= 1.0


def test_cov_min_exponent_guard():
    """Release: no clamp, so a huge scale gives a negative exponent and 0 -> inf; min_exponent floors it."""
    a = torch.tensor([[0.0, 0.1], [0.1, 1.0]])
    out, cv = _cov(a, cv_scale=5.0)
    assert 1 - cv.item() < 0
    assert torch.isinf(out[0, 0])  # 0 ** negative, exactly what the release would compute
    guarded, _ = _cov(a, cv_scale=5.0, min_exponent=0.1)
    assert torch.isfinite(guarded).all()
    torch.testing.assert_close(guarded, a ** 0.1)


def test_cov_dtypes_follow_input():
    a = torch.rand(2, 5, 5)
    for dt in (torch.float16, torch.float64):
        out = cov_smooth(a.to(dt))
        assert out.dtype == dt
        torch.testing.assert_close(out.float(), cov_smooth(a.to(dt).float()), rtol=2e-3, atol=2e-3)


def test_cov_module_matches_function():
    a = torch.rand(2, 3, 4, 4)
    m = CoVSmooth(fg_threshold=0.1, cv_scale=0.5)
    torch.testing.assert_close(m(a), cov_smooth(a, fg_threshold=0.1, cv_scale=0.5))
    assert "fg_threshold=0.1" in repr(m)


@pytest.mark.parametrize("bad", [1.5, -0.5])
def test_cov_rejects_unnormalised_cams(bad):
    a = torch.rand(1, 2, 4, 4)
    a[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="normalize_cams"):
        cov_smooth(a)


def test_cov_tolerates_tiny_negative_values_and_rejects_bad_args():
    a = torch.rand(1, 2, 4, 4)
    a[0, 0, 0, 0] = -1e-5  # PMM's min-max step produces these
    assert cov_smooth(a)[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="scale"):
        cov_smooth(a, cv_scale=-1.0)
    with pytest.raises(TypeError, match="floating"):
        cov_smooth(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        cov_smooth(torch.full((3, 3), float("nan")))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cov_cuda_matches_cpu():
    a = torch.rand(2, 20, 32, 32)
    torch.testing.assert_close(cov_smooth(a.cuda()).cpu(), cov_smooth(a), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- proportional_pseudo_mask


def _weak_small_next_to_strong_large() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 16×16 scene: a large strongly activated class-0 object whose CAM spills over a small class-2 object
    (3×3) that has a weaker CAM; class 1 is absent but strongly activated.
    """
    cams = torch.zeros(1, 3, 16, 16)
    cams[0, 0, 2:14, 1:12] = 0.9           # large object (132 px), strong
    cams[0, 2, 6:9, 9:12] = 0.5             # small object (9 px), weak, inside the big CAM's spill
    cams[0, 1, 0:4, 12:16] = 1.0            # absent class with a strong CAM
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    image = torch.full((1, 3, 16, 16), 0.1)
    image[:, :, 2:14, 1:12] = torch.tensor([0.9, 0.2, 0.2])[:, None, None]  # red large object
    image[:, :, 6:9, 9:12] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]   # blue small object
    return cams, labels, image


def test_ppmg_small_weak_object_keeps_its_pixels():
    cams, labels, _ = _weak_small_next_to_strong_large()
    mask = proportional_pseudo_mask(cams, labels, foreground="threshold")
    # The usual argmax rule hands the small object to the big class (0.9 > 0.5) ...
    usual = cams_to_mask(cams, labels, bg_score=0.15)
    assert (usual[0, 6:9, 9:12] == 1).all()
    # ... PPMG keeps it: importance 0.5/(1 + 0.5·9) = 0.0909 beats 0.9/(1 + 0.9·132) = 0.0075.
    assert (mask[0, 6:9, 9:12] == 3).all()
    big = torch.zeros(16, 16, dtype=torch.bool)
    big[2:14, 1:12] = True
    big[6:9, 9:12] = False
    assert (mask[0][big] == 1).all()
    assert (mask[0][~big & (cams[0, 2] == 0)] == 0).all()  # unclaimed -> background
    assert 2 not in mask.unique().tolist()  # the absent class never appears


def test_ppmg_importance_uses_raw_cam_and_own_foreground_mass():
    cams, labels, _ = _weak_small_next_to_strong_large()
    cams[0, 0, 2:14, 1:6] = 0.7  # make class 0 non-constant so CVS changes the map
    parts = proportional_pseudo_mask_detailed(cams, labels, foreground="threshold")
    assert isinstance(parts, PseudoMaskParts)
    fg = parts.foreground.float()
    mass = (cams * fg).sum((-2, -1), keepdim=True)
    keep = labels[:, :, None, None]
    torch.testing.assert_close(parts.importance, cams / (1 + mass) * keep)
    assert not parts.foreground[0, 1].any()  # absent class: no foreground, no maps
    assert parts.smoothed[0, 1].abs().max() == 0
    assert parts.cov[0, 1] == 0
    torch.testing.assert_close(parts.smoothed, cov_smooth(cams) * keep)
    _, cv = _cov(cams)
    torch.testing.assert_close(parts.cov, cv * labels)
    assert parts.cov[0, 0] > 0
    assert torch.equal(parts.mask, parts.scores.argmax(1))
    assert torch.isinf(parts.scores[0, 2]).all()  # absent class channel is -inf


def test_ppmg_threshold_mode_is_the_crf_initial_state():
    """Threshold foreground = [clip(Ã)/(clip(Ã)+clip((1-Ã)^α)) > 0.5]; at α=11 that is Ã > s* ≈ 0.155."""
    levels = [0.0, 0.1, 0.15, 0.16, 0.3, 1.0]
    a = torch.tensor(levels).view(1, 6, 1, 1).expand(1, 6, 2, 2).contiguous()  # constant maps: cv = 0, Ã = A
    parts = proportional_pseudo_mask_detailed(a, torch.ones(1, 6), foreground="threshold")
    s = parts.smoothed[0, :, 0, 0]
    torch.testing.assert_close(s, torch.tensor(levels))
    bg = (1 - s).pow(11.0)
    p = s.clamp(1e-5, 1) / (s.clamp(1e-5, 1) + bg.clamp(1e-5, 1))
    assert parts.foreground[0, :, 0, 0].tolist() == (p > 0.5).tolist()
    assert parts.foreground[0, :, 0, 0].tolist() == [False, False, False, True, True, True]
    # the classes 3, 4, 5 all claim every pixel; importance A/(1 + 4A) is largest for class 5 (A = 1)
    assert (parts.mask == 6).all()


def test_ppmg_hand_computed_overlap_and_ties():
    """Two classes claim the whole row via a callable foreground; argmax of F·I with ties to the lowest index."""
    cams = torch.tensor([[[[0.0, 0.2, 0.4, 0.4]],
                          [[0.0, 0.4, 0.2, 0.4]]]])  # B=1, C=2, 1×4
    everything = lambda probs, image: torch.ones(probs.shape[0], 1, 4, dtype=torch.bool)
    mask = proportional_pseudo_mask(cams, torch.ones(1, 2), foreground=everything)
    # both masses are 1.0 -> I = A / 2; pixel 0: all scores 0 -> background (claimed but A = 0);
    # pixel 3: equal importance -> the lower class index wins.
    assert mask.tolist() == [[[0, 2, 1, 1]]]


def test_ppmg_mass_decides_between_equal_cams():
    """Same CAM value at a pixel claimed by both: the class with the smaller total mass wins."""
    cams = torch.zeros(1, 2, 1, 6)
    cams[0, 0, 0, :5] = 0.8  # class 0 has mass 4.0
    cams[0, 1, 0, 4:] = 0.8  # class 1 has mass 1.6; they overlap at pixel 4
    mask = proportional_pseudo_mask(cams, torch.ones(1, 2), foreground="threshold")
    assert mask.tolist() == [[[1, 1, 1, 1, 2, 2]]]


def test_ppmg_no_present_class_gives_all_background():
    cams = torch.rand(2, 4, 5, 5)
    labels = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    mask = proportional_pseudo_mask(cams, labels, foreground="threshold")
    assert mask.dtype == torch.int64
    assert mask.shape == (2, 5, 5)
    assert (mask[0] == 0).all()
    assert set(mask[1].unique().tolist()) <= {0, 2}
    empty = proportional_pseudo_mask(cams, torch.zeros(2, 4), image01=torch.rand(2, 3, 5, 5))  # CRF never runs
    assert (empty == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_ppmg_absent_classes_never_appear(seed):
    g = torch.Generator().manual_seed(seed)
    cams = (torch.rand(2, 5, 6, 6, generator=g) ** 2 * 4).round() / 4  # coarse levels: many exact ties
    labels = (torch.rand(2, 5, generator=g) > 0.5).float()
    mask = proportional_pseudo_mask(cams, labels, foreground="threshold")
    for b in range(2):
        allowed = {0} | {c + 1 for c in range(5) if labels[b, c] == 1}
        assert set(mask[b].unique().tolist()) <= allowed
    # unclaimed pixels (no class fg) are background, claimed ones with positive CAM are foreground
    parts = proportional_pseudo_mask_detailed(cams, labels, foreground="threshold")
    claimed = parts.foreground.any(1)
    assert (parts.mask[~claimed] == 0).all()
    # the mask is the argmax (first maximal index) of the documented score stack
    assert torch.equal(parts.mask, parts.scores.argmax(1))
    assert torch.equal(mask, parts.mask)


def test_ppmg_batched_equals_per_image():
    cams = torch.rand(3, 4, 6, 7) ** 2
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]])
    batched = proportional_pseudo_mask(cams, labels, foreground="threshold")
    for b in range(3):
        single = proportional_pseudo_mask(cams[b:b + 1], labels[b:b + 1], foreground="threshold")
        assert torch.equal(batched[b:b + 1], single)


def test_ppmg_module_matches_function_and_float16():
    cams, labels, _ = _weak_small_next_to_strong_large()
    m = ProportionalPseudoMask(foreground="threshold")
    assert torch.equal(m(cams, labels), proportional_pseudo_mask(cams, labels, foreground="threshold"))
    assert torch.equal(m(cams.half(), labels), m(cams, labels))  # the release stores CAMs as float16
    assert "alpha=11.0" in repr(m)


def test_ppmg_bad_inputs():
    cams, labels, image = _weak_small_next_to_strong_large()
    with pytest.raises(ValueError, match="normalize_cams"):
        proportional_pseudo_mask(cams * 3, labels, foreground="threshold")
    unused = cams.clone()
    unused[0, 1] = 7.0  # an absent class's map is never read, so it is not checked either
    assert torch.equal(proportional_pseudo_mask(unused, labels, foreground="threshold"),
                       proportional_pseudo_mask(cams, labels, foreground="threshold"))
    nan = cams.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        proportional_pseudo_mask(nan, labels, foreground="threshold")
    with pytest.raises(ValueError, match="image01 must have shape"):
        proportional_pseudo_mask(cams, labels, image[:, :, :8])
    with pytest.raises(ValueError, match="image01 is required"):
        proportional_pseudo_mask(cams, labels)
    with pytest.raises(ValueError, match="image01 must lie in"):
        proportional_pseudo_mask(cams, labels, image * 255)
    with pytest.raises(ValueError, match="labels has 2 classes"):
        proportional_pseudo_mask(cams, labels[:, :2], foreground="threshold")
    with pytest.raises(ValueError, match="multi-hot"):
        proportional_pseudo_mask(cams, labels * 0.5, foreground="threshold")
    with pytest.raises(ValueError, match="alpha"):
        proportional_pseudo_mask(cams, labels, alpha=0.0, foreground="threshold")
    with pytest.raises(ValueError, match="foreground must be"):
        proportional_pseudo_mask(cams, labels, foreground="otsu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="B×C×H×W"):
        proportional_pseudo_mask(cams[0], labels, foreground="threshold")
    with pytest.raises(ValueError, match="unknown CRF preset"):
        proportional_pseudo_mask(cams, labels, image, crf="pmm")
    with pytest.raises(TypeError, match=r"crf must be a wsss_blocks.crf.DenseCRF, a preset name or a config mapping"):
        proportional_pseudo_mask(cams, labels, image, crf=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="image01 must be float RGB in"):
        proportional_pseudo_mask(cams, labels, (image * 255).round().to(torch.uint8))
    with pytest.raises(ValueError, match="foreground callable"):
        proportional_pseudo_mask(cams, labels, foreground=lambda p, i: torch.ones(3))


def test_ppmg_callable_receives_uint8_images():
    cams, labels, image = _weak_small_next_to_strong_large()
    seen = {}

    def fg(probs, img):
        seen["img"] = img
        return probs[:, 1] > 0.3

    proportional_pseudo_mask(cams, labels, image, foreground=fg)
    assert seen["img"].dtype == torch.uint8
    assert seen["img"].shape == (2, 3, 16, 16)
    assert seen["img"][0, 0, 5, 5].item() == round(0.9 * 255)


# ------------------------------------------------------------------------------------------- with a CRF


def _reference_ppmg(img_u8: np.ndarray, cams: np.ndarray, present: list[int]) -> np.ndarray:
    """Straight numpy transcription of PMM ``pipeline/refine_cam.py`` (one image), with pydensecrf for the CRF."""
    import pydensecrf.densecrf as dcrf

    h, w = img_u8.shape[:2]
    fgs, imps = [], []
    claimed = np.zeros((h, w), dtype=bool)
    for c in present:
        a = cams[c].astype(np.float32)
        act = a[a > 0.05]
        cv = 0.0 if act.size == 0 else 0.3 * act.std() / (act.mean() + 1e-8)
        s = np.where(a >= 0.05, a, 0.0) ** (1 - cv)
        probs = np.stack([(1 - s) ** 11.0, s]).astype(np.float32)
        d = dcrf.DenseCRF2D(w, h, 2)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(2, -1)))
        d.addPairwiseGaussian(sxy=3, compat=10)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(img_u8), compat=10)
        q = np.array(d.inference(10)).reshape(2, h, w)
        f = (q[1] > 0.5).astype(np.float32)
        fgs.append(f)
        imps.append(a / (1 + (a * f).sum()))
        claimed |= f > 0
    scores = [(~claimed).astype(np.float32)] + [f * i for f, i in zip(fgs, imps)]
    idx = np.argmax(np.stack(scores), 0)
    out = np.zeros((h, w), dtype=np.int64)
    for j, c in enumerate(present):
        out[idx == j + 1] = c + 1
    return out


@pytest.mark.crf
def test_ppmg_crf_matches_numpy_reference():
    pytest.importorskip("pydensecrf")
    g = torch.Generator().manual_seed(3)
    H, W = 24, 32
    cams = torch.zeros(2, 4, H, W)
    cams[0, 0, 4:18, 3:20] = torch.rand(14, 17, generator=g) * 0.5 + 0.5
    cams[0, 2, 8:12, 16:24] = torch.rand(4, 8, generator=g) * 0.4 + 0.2
    cams[1, 3, 2:22, 5:30] = torch.rand(20, 25, generator=g)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    image = torch.rand(2, 3, H, W, generator=g) * 0.3
    image[0, 0, 4:18, 3:20] += 0.6
    image[0, 2, 8:12, 16:24] += 0.6
    image[1, 1, 2:22, 5:30] += 0.6
    mask = proportional_pseudo_mask(cams, labels, image)
    img_u8 = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for b in range(2):
        present = [c for c in range(4) if labels[b, c] == 1]
        ref = _reference_ppmg(np.ascontiguousarray(img_u8[b][..., ::-1]), cams[b].numpy(), present)  # cv2: BGR
        agree = (mask[b].numpy() == ref).mean()
        assert agree >= 0.999, agree  # identical up to float32 rounding at fg ≈ 0.5
    assert (mask[0, 9:11, 17:23] == 3).all()  # the weak small object survives the CRF too


@pytest.mark.crf
def test_ppmg_crf_small_object_and_zero_iterations():
    pytest.importorskip("pydensecrf")
    cams, labels, image = _weak_small_next_to_strong_large()
    mask = proportional_pseudo_mask(cams, labels, image)
    assert (mask[0, 6:9, 9:12] == 3).all()
    assert 2 not in mask.unique().tolist()
    # a CRF with zero mean-field iterations returns its initialisation: the threshold mode
    zero = DenseCRF.pmm_binary(iterations=0)
    torch.manual_seed(0)
    cams2 = torch.rand(1, 3, 12, 12) ** 2
    lab2 = torch.ones(1, 3)
    img2 = torch.rand(1, 3, 12, 12)
    assert torch.equal(proportional_pseudo_mask(cams2, lab2, img2, crf=zero),
                       proportional_pseudo_mask(cams2, lab2, foreground="threshold"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ppmg_cuda_threshold_matches_cpu():
    cams = torch.rand(2, 20, 40, 50) ** 3
    labels = (torch.rand(2, 20) > 0.7).float()
    out = proportional_pseudo_mask(cams.cuda(), labels.cuda(), foreground="threshold")
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), proportional_pseudo_mask(cams, labels, foreground="threshold"))


@pytest.mark.parametrize("backend", ["torch", pytest.param("pydensecrf", marks=pytest.mark.crf)])
def test_ppmg_crf_sees_bgr_as_released_and_rgb_on_request(backend):
    if backend == "pydensecrf":
        pytest.importorskip("pydensecrf")
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(2, 3, 48, 64, generator=g) ** 2
    labels = torch.tensor([[1.0, 1, 0], [0, 1, 1]])
    image = torch.rand(2, 3, 48, 64, generator=g)
    crf = {"preset": "pmm-binary", "backend": backend}
    bgr = proportional_pseudo_mask(cams, labels, image, crf=crf)
    rgb = proportional_pseudo_mask(cams, labels, image, crf=crf, crf_channel_order="rgb")
    # "bgr" is the CRF on the channel-reversed image, i.e. the release's cv2.imread copy
    assert torch.equal(bgr, proportional_pseudo_mask(cams, labels, image.flip(1), crf=crf, crf_channel_order="rgb"))
    # the lattice approximation is not symmetric in the channels: a few pixels change
    changed = float((bgr != rgb).float().mean())
    assert 0.0 < changed < 0.05
    module = ProportionalPseudoMask(crf=crf, crf_channel_order="rgb")
    assert torch.equal(module(cams, labels, image), rgb)
    assert torch.equal(ProportionalPseudoMask(crf=crf)(cams, labels, image), bgr)
    with pytest.raises(ValueError, match="crf_channel_order"):
        proportional_pseudo_mask(cams, labels, image, crf=crf, crf_channel_order="bgra")  # type: ignore[arg-type]


def test_crf_parameter_sets_match_the_library_presets():
    from wsss_blocks.crf import PRESETS
    from wsss_blocks.pseudo_mask import CYCLIC_CRF, PPMG_CRF

    keys = ("iterations", "pos_w", "pos_xy", "bi_w", "bi_xy", "bi_rgb")
    assert PPMG_CRF == "pmm-binary"
    assert PRESETS[PPMG_CRF]["sum_to_one"] == "ignore"
    assert {k: PRESETS[PPMG_CRF][k] for k in keys} == {"iterations": 10, "pos_w": 10.0, "pos_xy": 3.0, "bi_w": 10.0,
                                                      "bi_xy": 80.0, "bi_rgb": 13.0}
    assert CYCLIC_CRF == "deeplab"
    assert {k: PRESETS[CYCLIC_CRF][k] for k in keys} == {
        "iterations": 10, "pos_w": 3.0, "pos_xy": 1.0, "bi_w": 4.0, "bi_xy": 67.0, "bi_rgb": 3.0}


@pytest.mark.crf
def test_ppmg_library_crf_backends_agree_with_direct_pydensecrf():
    pytest.importorskip("pydensecrf")
    crf = pytest.importorskip("wsss_blocks.crf")
    if not hasattr(crf, "DenseCRF"):
        pytest.skip("wsss_blocks.crf.DenseCRF not available")
    cams, labels, image = _weak_small_next_to_strong_large()
    g = torch.Generator().manual_seed(5)
    image = (image + 0.05 * torch.rand(image.shape, generator=g)).clamp(0, 1)
    cams = (cams * (0.8 + 0.2 * torch.rand(cams.shape, generator=g))).clamp(0, 1)
    direct = proportional_pseudo_mask(cams, labels, image, foreground=_direct_pydensecrf_foreground)
    lib = proportional_pseudo_mask(cams, labels, image, crf=DenseCRF.pmm_binary(backend="pydensecrf"))
    assert torch.equal(direct, lib)
    torch_be = proportional_pseudo_mask(cams, labels, image, crf=DenseCRF.pmm_binary(backend="torch"))
    assert (torch_be == direct).float().mean() >= 0.98


def _direct_pydensecrf_foreground(probs, image_u8):
    """The released per-class CRF called directly (``Eli-YiLi/PMM`` ``pipline/refine_cam.py`` ``crf_inference``):
    one pydensecrf ``DenseCRF2D`` per N×2×H×W ``[B_c, Ã_c]`` stack, foreground posterior out.
    """
    import pydensecrf.densecrf as dcrf

    n, k, h, w = probs.shape
    imgs = image_u8.flip(1).permute(0, 2, 3, 1).contiguous().numpy()  # the release reads BGR (cv2.imread)
    p = probs.float().numpy()
    out = np.empty((n, h, w), dtype=np.float32)
    for i in range(n):
        d = dcrf.DenseCRF2D(w, h, k)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p[i], 1e-5, 1.0)).reshape(k, -1), dtype=np.float32))
        d.addPairwiseGaussian(sxy=3.0, compat=10.0)
        d.addPairwiseBilateral(sxy=80.0, srgb=13.0, rgbim=np.ascontiguousarray(imgs[i]), compat=10.0)
        out[i] = np.asarray(d.inference(10), dtype=np.float32).reshape(k, h, w)[1]
    return torch.from_numpy(out)
