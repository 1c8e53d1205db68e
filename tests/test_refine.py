"""Tests for wsss_blocks.refine: PAR (AFA/ToCo), VARM (TSCD), the shared engine and reliable pseudo labels."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.propagation import (
    DEFAULT_DILATIONS,
    _propagate_shifted,
    _sparse_operator,
    dilated_neighbours,
    neighbour_offsets,
    propagate,
    refine_affinity,
)
from wsss_blocks.refine import (
    PixelAdaptiveRefine,
    VariationAwareRefine,
    pixel_adaptive_refine,
    reliable_pseudo_mask,
    variation_aware_refine,
)

# The released-algorithm reference (release cost profile) lives in benchmarks/par_baseline.py.
_spec = importlib.util.spec_from_file_location(
    "par_baseline", Path(__file__).resolve().parents[1] / "benchmarks" / "par_baseline.py")
assert _spec is not None
assert _spec.loader is not None
baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baseline)


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- engine
def test_neighbour_offsets_released_order():
    assert neighbour_offsets((2,)) == [(-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2)]
    offs = neighbour_offsets(DEFAULT_DILATIONS)
    assert len(offs) == 48
    assert (0, 0) not in offs
    assert offs[8 * 5 + 7] == (24, 24)


def test_dilated_neighbours_equals_one_hot_dilated_conv():
    x = _rand(2, 3, 9, 11)
    for dil in [(1,), (1, 3), (2, 12)]:
        torch.testing.assert_close(dilated_neighbours(x, dil), baseline.baseline_neighbours(x, dil), rtol=0, atol=0)


def test_dilated_neighbours_hand_checked_replicate_edge():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    # Corner pixel (0, 0): neighbours clamp to the image (replicate edge).
    assert dilated_neighbours(x, (1,))[0, 0, :, 0, 0].tolist() == [0, 0, 1, 0, 1, 3, 3, 4]


def test_propagate_equals_dense_neighbour_sum():
    maps, dil = _rand(2, 4, 10, 12), (1, 2, 5)
    aff = _rand(2, 24, 10, 12, seed=1) / 24
    expected = maps
    for _ in range(3):
        expected = (dilated_neighbours(expected, dil) * aff[:, None]).sum(2)
    torch.testing.assert_close(propagate(maps, aff, dil, 3), expected, rtol=0, atol=1e-6)
    assert torch.equal(propagate(maps, aff, dil, 0), maps)
    # The shifted-view fallback (devices without sparse CSR) computes the same thing.
    torch.testing.assert_close(_propagate_shifted(maps, aff, neighbour_offsets(dil), 3), expected, rtol=0, atol=1e-6)


def test_sparse_operator_is_a_valid_csr_matrix():
    offsets = sorted(neighbour_offsets((1, 3)))
    values = _rand(2, 5, 7, 16) / 16
    op = _sparse_operator(values, offsets, 3)
    assert op.shape == (2 * 5 * 7, 2 * 11 * 13)
    assert op.layout == torch.sparse_csr
    # Rows hold sorted, distinct columns (the replicate edge lives in the padded columns): a valid CSR matrix.
    torch.sparse_csr_tensor(op.crow_indices(), op.col_indices(), op.values(), op.shape, check_invariants=True)
    assert op.values().data_ptr() == values.data_ptr()  # the weights are used in place


# --------------------------------------------------------------------------- hand-checked cases
def _one_bright_neighbour():
    """3×3 grey image, 0 everywhere except pixel (1, 2) = 1 (the R neighbour of the centre)."""
    img = torch.zeros(1, 3, 3, 3)
    img[:, :, 1, 2] = 1.0
    return img


def _position_softmax_by_hand(w):
    rho = [math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)]
    m = sum(rho) / 8
    sd = math.sqrt(sum((r - m) ** 2 for r in rho) / 7)
    e = [math.exp(-((r / sd / w) ** 2)) for r in rho]
    return [v / sum(e) for v in e]


def test_par_hand_checked_centre_pixel():
    img = _one_bright_neighbour()
    maps = torch.arange(9.0).view(1, 1, 3, 3) / 10
    # Centre: neighbour values (per channel) 0,0,0,0,1,0,0,0 -> unbiased std sqrt(1/8); only R differs by 1.
    logit_r = -((1 / math.sqrt(1 / 8)) / 0.3) ** 2
    app = [1.0] * 8
    app[4] = math.exp(logit_r)
    app = [v / sum(app) for v in app]
    pos = _position_softmax_by_hand(0.3)
    a = [ap + 0.01 * p for ap, p in zip(app, pos)]
    neighbour_vals = [0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8]
    expected = sum(w * v for w, v in zip(a, neighbour_vals))
    aff = refine_affinity(img, (1,))
    assert aff[0, :, 1, 1].tolist() == pytest.approx(a, abs=1e-6)
    out = pixel_adaptive_refine(img, maps, dilations=(1,), num_iter=1)
    assert float(out[0, 0, 1, 1]) == pytest.approx(expected, abs=1e-6)


def test_varm_hand_checked_centre_pixel():
    img = _one_bright_neighbour()
    maps = torch.arange(9.0).view(1, 1, 3, 3) / 10
    logit_r = -(4 * (1 / math.sqrt(1 / 8))) ** 2
    app = [1.0] * 8
    app[4] = math.exp(logit_r)
    app = [v / sum(app) for v in app]
    # Squared forward differences at each neighbour: TR (0,2) sees (1,2) below it, R (1,2) sees (2,2) below it.
    g = [0, 0, 1, 0, 1, 0, 0, 0]
    eg = [math.exp(v) for v in g]
    var = [v / sum(eg) for v in eg]
    a = [ap - 0.01 * v for ap, v in zip(app, var)]
    assert sum(a) == pytest.approx(0.99)
    aff = refine_affinity(img, (1,), appearance_temperature=None, appearance_scale=4.0, pos_weight=0.0,
                          variation_weight=0.01)
    assert aff[0, :, 1, 1].tolist() == pytest.approx(a, abs=1e-6)
    neighbour_vals = [0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8]
    out = variation_aware_refine(img, maps, dilations=(1,), num_iter=1)
    assert float(out[0, 0, 1, 1]) == pytest.approx(sum(w * v for w, v in zip(a, neighbour_vals)), abs=1e-6)


def test_weights_sum_to_released_scale_and_varm_can_be_negative():
    img = _rand(2, 3, 20, 20)
    par = refine_affinity(img)
    varm = refine_affinity(img, appearance_temperature=None, appearance_scale=4.0, pos_weight=0.0,
                           variation_weight=0.01)
    torch.testing.assert_close(par.sum(1), torch.full((2, 20, 20), 1.01))
    torch.testing.assert_close(varm.sum(1), torch.full((2, 20, 20), 0.99))
    assert bool((par > 0).all())
    assert bool((varm < 0).any())  # the release lets VARM weights dip below zero
    clamped = VariationAwareRefine(clamp_negative=True).affinity(img)
    assert bool((clamped >= 0).all())


# --------------------------------------------------------------------------- equality with the released algorithm
@pytest.mark.parametrize(("shape", "map_hw", "dil"), [
    ((1, 3, 24, 24), (24, 24), DEFAULT_DILATIONS),
    ((2, 3, 17, 23), (9, 12), DEFAULT_DILATIONS),
    ((1, 3, 12, 12), (12, 12), (1, 3)),
])
@pytest.mark.parametrize("num_iter", [1, 10])
def test_refiners_equal_released_algorithm(shape, map_hw, dil, num_iter):
    img = _rand(*shape, seed=1)
    maps = _rand(shape[0], 3, *map_hw, seed=2).softmax(1)
    fast_par = PixelAdaptiveRefine(dil, num_iter)(img, maps)
    ref_par = baseline.baseline_par(img, maps, dil, num_iter)
    assert (fast_par - ref_par).abs().max() <= 1e-5
    fast_varm = VariationAwareRefine(dil, num_iter)(img, maps)
    ref_varm = baseline.baseline_varm(img, maps, dil, num_iter)
    assert (fast_varm - ref_varm).abs().max() <= 1e-5
    assert (fast_varm - fast_par).abs().max() > 1e-3  # the two refiners really differ


def test_weights_equal_released_weights_at_every_pixel():
    """Including the border pixels, where neighbours clamp and the variation term has its release quirks."""
    img = _rand(2, 3, 13, 17, seed=6)
    dil = (1, 2, 5)
    neigh = baseline.baseline_neighbours(img, dil)
    below = torch.cat([neigh[:, :, :, 1:, :], neigh[:, :, :, -1:, :]], dim=3)
    right = torch.cat([neigh[:, :, :, :, 1:], neigh[:, :, :, :, -1:]], dim=4)
    variation = ((neigh - below) ** 2 + (neigh - right) ** 2).mean(dim=1)
    logits = baseline._appearance(img, neigh, 4.0, None)[:, 0]
    expected = F.softmax(logits, dim=1) - 0.01 * F.softmax(variation, dim=1)
    ours = refine_affinity(img, dil, appearance_temperature=None, appearance_scale=4.0, pos_weight=0.0,
                           variation_weight=0.01)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_varm_configured_as_par_equals_par():
    """Spec test 3: appearance_scale = 1/0.3, no variation term, plus PAR's position term."""
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-5)]:
        img = _rand(2, 3, 24, 24, seed=3, dtype=dtype)
        maps = _rand(2, 4, 24, 24, seed=4, dtype=dtype)
        par = PixelAdaptiveRefine()(img, maps)
        varm = VariationAwareRefine(appearance_scale=1 / 0.3, variation_weight=0.0, pos_weight=0.01,
                                    pos_temperature=0.3)(img, maps)
        assert (par - varm).abs().max() <= tol


# --------------------------------------------------------------------------- invariants
def test_uniform_image_is_identity_on_constant_maps_up_to_released_scale():
    img = torch.full((1, 3, 16, 16), 0.4)
    maps = torch.full((1, 2, 16, 16), 0.7)
    torch.testing.assert_close(PixelAdaptiveRefine()(img, maps), maps * 1.01 ** 10)
    torch.testing.assert_close(VariationAwareRefine()(img, maps), maps * 0.99 ** 10)
    torch.testing.assert_close(PixelAdaptiveRefine(num_iter=3)(img, maps), maps * 1.01 ** 3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), value=st.floats(0.0, 5.0), num_iter=st.integers(0, 4))
def test_constant_maps_scale_by_weight_sum_for_any_image(seed, value, num_iter):
    img = _rand(1, 3, 10, 13, seed=seed)
    maps = torch.full((1, 2, 10, 13), value)
    torch.testing.assert_close(PixelAdaptiveRefine(num_iter=num_iter)(img, maps), maps * 1.01 ** num_iter)
    torch.testing.assert_close(VariationAwareRefine(num_iter=num_iter)(img, maps), maps * 0.99 ** num_iter)


def _two_colour_edge(h=24, w=24):
    img = torch.zeros(1, 3, h, w)
    img[:, 0, :, : w // 2] = 1.0  # red left half
    img[:, 2, :, w // 2:] = 1.0  # blue right half
    left = torch.zeros(1, 2, h, w)
    left[:, 0, :, : w // 2] = 1.0
    left[:, 1, :, w // 2:] = 1.0
    return img, left


def test_sharp_two_colour_edge_does_not_leak():
    img, maps = _two_colour_edge()
    w = maps.shape[-1]
    cases = [(PixelAdaptiveRefine(), 1.01 ** 10, 0.06), (VariationAwareRefine(), 0.99 ** 10, 1e-4)]
    for refiner, scale, bound in cases:
        out = refiner(img, maps) / scale
        crossed = torch.cat([out[:, 0, :, w // 2:], out[:, 1, :, : w // 2]])  # mass on the wrong side
        assert crossed.max() < bound
        assert torch.equal(out.argmax(1), maps.argmax(1))
    # VARM's only cross-edge weights are its (negative) variation penalty: the wrong side goes slightly negative.
    varm_crossed = VariationAwareRefine()(img, maps)[:, 0, :, w // 2:]
    assert -0.05 < varm_crossed.min() < 0
    # PAR's only cross-edge mass is its colour-blind position term (<= 1 % per step); with a flat guide the
    # same propagation leaks freely, so the small leak above is the edge at work.
    flat = PixelAdaptiveRefine()(torch.full_like(img, 0.5), maps) / 1.01 ** 10
    assert flat[:, 0, :, w // 2].max() > 0.3


def test_edge_snaps_wrong_labels_back_to_their_colour():
    img, maps = _two_colour_edge()
    w = maps.shape[-1]
    noisy = maps.clone()
    noisy[:, :, :, w // 2: w // 2 + 2] = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)  # two wrong blue columns
    for refiner in (PixelAdaptiveRefine(), VariationAwareRefine()):
        assert torch.equal(refiner(img, noisy).argmax(1), maps.argmax(1))


# --------------------------------------------------------------------------- interface
def test_maps_resized_with_align_corners_true_and_zero_iterations():
    img = _rand(1, 3, 16, 16)
    maps = _rand(1, 2, 5, 7, seed=1)
    out = PixelAdaptiveRefine(num_iter=0)(img, maps)
    torch.testing.assert_close(out, F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=True))
    same = _rand(1, 2, 16, 16, seed=2)
    out_same = VariationAwareRefine(num_iter=0)(img, same)
    assert torch.equal(out_same, same)
    assert out_same.data_ptr() != same.data_ptr()


def test_dtype_follows_maps_and_half_is_refined_in_float32():
    img = _rand(1, 3, 12, 12, dtype=torch.float64)
    maps = _rand(1, 2, 12, 12, seed=1, dtype=torch.float64)
    assert PixelAdaptiveRefine()(img, maps).dtype == torch.float64
    half = PixelAdaptiveRefine()(img.float(), maps.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), PixelAdaptiveRefine()(img.float(), maps.half().float()),
                               rtol=1e-3, atol=1e-3)


def test_gradients_flow_into_maps():
    img = _rand(1, 3, 5, 5, dtype=torch.float64)
    maps = _rand(1, 1, 5, 5, seed=1, dtype=torch.float64).requires_grad_()
    varm = VariationAwareRefine((1, 2), 2)
    affinity = varm.affinity(img)
    assert torch.autograd.gradcheck(lambda m: varm.propagate(affinity, m), (maps,))
    out = varm(img, maps)
    out.sum().backward()
    assert maps.grad is not None
    assert bool(maps.grad.abs().sum() > 0)


@pytest.mark.parametrize("refiner", [PixelAdaptiveRefine, VariationAwareRefine])
def test_gradcheck_through_image_and_maps(refiner):
    """The weights are differentiable in the guide image (VARM used to fail with ``mean(): functions with out=``)."""
    r = refiner((1, 2), 2)
    img = _rand(1, 3, 6, 7, seed=3, dtype=torch.float64).requires_grad_()
    maps = _rand(1, 2, 6, 7, seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: r(a, b), (img, maps))
    (grad,) = torch.autograd.grad(r(img, maps).pow(2).sum(), img)
    assert bool(grad.abs().sum() > 0)  # the image really receives a gradient
    # the differentiable (dense) path computes the same values as the sparse one
    torch.testing.assert_close(r(img, maps), r(img.detach(), maps.detach()), rtol=0, atol=1e-12)


def test_propagate_gradcheck_through_weights():
    maps = _rand(1, 2, 5, 6, seed=1, dtype=torch.float64).requires_grad_()
    aff = _rand(1, 16, 5, 6, seed=2, dtype=torch.float64).div(16).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, a: propagate(m, a, (1, 2), 2), (maps, aff))


@pytest.mark.parametrize("refiner", [PixelAdaptiveRefine, VariationAwareRefine])
def test_cpu_bfloat16_autocast_with_gradients(refiner):
    """Under CPU autocast with maps that need grad (the sparse kernel has no bfloat16 version): float32 inside."""
    r = refiner()
    img = _rand(2, 3, 20, 24, seed=5)
    logits = _rand(2, 3, 10, 12, seed=6).requires_grad_()
    expected = r(img, logits.detach().softmax(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = logits.softmax(1)
        out = r(img, probs)
        out_bf16 = r(img, probs.bfloat16())
    assert out.dtype == probs.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), expected, rtol=2e-2, atol=1e-2)  # bfloat16 has 8 mantissa bits
    out_bf16.float().pow(2).sum().backward()
    assert logits.grad is not None
    assert bool(logits.grad.abs().sum() > 0)
    # a gradient into the image under autocast as well
    img_g = img.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_img = r(img_g, probs.detach().bfloat16())
    out_img.float().sum().backward()
    assert img_g.grad is not None
    assert bool(torch.isfinite(img_g.grad).all())
    # propagate() with half weights and maps that need grad
    aff = r.affinity(img).bfloat16()
    m = _rand(2, 3, 20, 24, seed=7).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prop = r.propagate(aff, m)
    assert prop.dtype == torch.bfloat16
    torch.testing.assert_close(prop.float(), r.propagate(aff.float(), m.detach().float()), rtol=2e-2, atol=1e-2)


def test_module_reprs_and_engine_sharing():
    par, varm = PixelAdaptiveRefine(), VariationAwareRefine()
    assert "appearance_temperature=0.3" in repr(par)
    assert "appearance_scale=4.0" in repr(varm)
    assert par.num_neighbours == varm.num_neighbours == 48
    x = _rand(1, 2, 6, 6)
    assert par.neighbours(x).shape == (1, 2, 48, 6, 6)
    img = _rand(1, 3, 6, 6, seed=1)
    torch.testing.assert_close(par.propagate(par.affinity(img), x), par(img, x))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    img, maps = _rand(1, 3, 24, 24), _rand(1, 3, 24, 24, seed=1)
    for refiner in (PixelAdaptiveRefine(), VariationAwareRefine()):
        torch.testing.assert_close(refiner(img.cuda(), maps.cuda()).cpu(), refiner(img, maps), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    img, maps = _rand(2, 3, 8, 8), _rand(2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"image01 must lie in \[0.0, 1.0\].*denormalise"):
        PixelAdaptiveRefine()(img * 2 - 1, maps)
    with pytest.raises(ValueError, match="maps and image01 must have the same batch size"):
        VariationAwareRefine()(img, maps[:1])
    with pytest.raises(ValueError, match="dilations must be a non-empty sequence"):
        PixelAdaptiveRefine(dilations=())
    with pytest.raises(ValueError, match="dilations must be a non-empty sequence"):
        variation_aware_refine(img, maps, dilations=[])
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an int >= 1, got 0"):
        VariationAwareRefine(dilations=(1, 0))
    with pytest.raises(ValueError, match="num_iter must be an int >= 0, got -1"):
        VariationAwareRefine(num_iter=-1)
    with pytest.raises(ValueError, match="num_iter must be an int >= 0, got -2"):
        pixel_adaptive_refine(img, maps, num_iter=-2)
    with pytest.raises(ValueError, match=r"maps must have shape B×C×h×w"):
        PixelAdaptiveRefine()(img, maps[0])
    with pytest.raises(ValueError, match="maps contains non-finite values"):
        PixelAdaptiveRefine()(img, maps / 0)
    with pytest.raises(ValueError, match="appearance_temperature must be > 0"):
        PixelAdaptiveRefine(appearance_temperature=0.0)
    with pytest.raises(ValueError, match="affinity must have shape"):
        propagate(maps, torch.rand(2, 8, 8, 8), DEFAULT_DILATIONS)
    with pytest.raises(ValueError, match="exactly one of appearance_temperature and appearance_scale"):
        refine_affinity(img, appearance_temperature=0.3, appearance_scale=4.0)


# --------------------------------------------------------------------------- reliable pseudo labels
def _released_reliable_labels(image01, cams, labels, img_box, tau_h, tau_l, refine_fn, ignore=255):
    """Per-image loop of the release (SCD utils/camutils.py refine_cams_with_bkg_v2), with the baseline refiner."""
    b, _, h, w = image01.shape
    small_img = F.interpolate(image01, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    out_h = torch.full((b, h, w), ignore, dtype=torch.long)
    out_l = out_h.clone()
    keys_all = torch.cat([torch.ones(b, 1), labels], 1)
    for tau, out in ((tau_h, out_h), (tau_l, out_l)):
        with_bg = torch.cat([torch.full((b, 1, h, w), tau), cams], 1)
        small = F.interpolate(with_bg, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        for i in range(b):
            keys = torch.nonzero(keys_all[i])[:, 0]
            probs = small[i, keys][None].softmax(1)
            ref = F.interpolate(refine_fn(small_img[[i]], probs), size=(h, w), mode="bilinear", align_corners=False)
            lab = keys[ref.argmax(1)][0]
            r0, r1, c0, c1 = img_box[i].tolist()
            out[i, r0:r1, c0:c1] = lab[r0:r1, c0:c1]
    y = out_h.clone()
    y[out_h == 0] = ignore
    y[(out_h + out_l) == 0] = 0
    return y


def test_reliable_labels_equal_released_per_image_loop():
    g = torch.Generator().manual_seed(5)
    img = torch.rand(3, 3, 32, 36, generator=g)
    cams = torch.rand(3, 6, 32, 36, generator=g)
    labels = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    box = torch.tensor([[0, 32, 0, 36], [2, 30, 4, 36], [0, 20, 0, 10]])  # released img_box: (r0, r1, c0, c1)
    boxes = box[:, [2, 0, 3, 1]]  # the library's (x1, y1, x2, y2)
    ours = reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels, boxes)
    ref = _released_reliable_labels(img, cams, labels, box, 0.55, 0.35, baseline.baseline_varm)
    assert torch.equal(ours, ref)
    ours_par = reliable_pseudo_mask(PixelAdaptiveRefine(), img, cams, labels, boxes, high_threshold=0.7,
                                    low_threshold=0.25)
    ref_par = _released_reliable_labels(img, cams, labels, box, 0.7, 0.25, baseline.baseline_par)
    assert torch.equal(ours_par, ref_par)


def test_reliable_labels_ignore_band_between_thresholds():
    h, w = 24, 36
    img = torch.zeros(1, 3, h, w)
    img[:, 0, :, :12] = 1.0
    img[:, 1, :, 12:24] = 1.0
    img[:, 2, :, 24:] = 1.0
    cams = torch.zeros(1, 4, h, w)
    cams[:, 2, :, :12] = 0.9  # above high_threshold: foreground class 2 -> label 3
    cams[:, 2, :, 12:24] = 0.45  # between the thresholds: ignore
    cams[:, 2, :, 24:] = 0.1  # below low_threshold: background
    labels = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    y = reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels)
    interior = slice(3, 9), slice(15, 21), slice(27, 33)
    assert bool((y[0, :, interior[0]] == 3).all())
    assert bool((y[0, :, interior[1]] == 255).all())
    assert bool((y[0, :, interior[2]] == 0).all())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), present=st.lists(st.booleans(), min_size=5, max_size=5))
def test_reliable_labels_never_assign_absent_classes(seed, present):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, 16, 16, generator=g)
    labels = torch.tensor([present], dtype=torch.float32)
    cams = torch.rand(1, 5, 16, 16, generator=g) * 0.3
    cams[:, ~labels[0].bool()] = 1.0  # absent classes have the strongest CAMs everywhere
    y = reliable_pseudo_mask(PixelAdaptiveRefine(num_iter=3), img, cams, labels)
    allowed = {0, 255} | {c + 1 for c in range(5) if present[c]}
    assert set(y.unique().tolist()) <= allowed
    if not any(present):
        assert bool((y == 0).all())


def test_reliable_labels_box_and_bad_input():
    img, cams = _rand(2, 3, 16, 16), _rand(2, 4, 16, 16, seed=1)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]])
    box = torch.tensor([[0, 0, 16, 8], [2, 4, 10, 16]])  # (x1, y1, x2, y2)
    y = reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels, box)
    assert bool((y[0, 8:] == 255).all())
    assert bool((y[1, :4] == 255).all())
    assert bool((y[1, :, 10:] == 255).all())
    with pytest.raises(ValueError, match="labels has batch size 1, expected 2"):
        reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels[:1])
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels, high_threshold=0.3, low_threshold=0.5)
    with pytest.raises(ValueError, match="boxes must have shape B×4"):
        reliable_pseudo_mask(VariationAwareRefine(), img, cams, labels, box[:1])
    with pytest.raises(TypeError, match="refiner must be a DilatedNeighbourRefine"):
        reliable_pseudo_mask(torch.nn.Identity(), img, cams, labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image01 must lie in \[0.0, 1.0\]"):
        reliable_pseudo_mask(VariationAwareRefine(), img * 255, cams, labels)
