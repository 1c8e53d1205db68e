"""Tests for wsss_blocks.cam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.cam import (
    CAMNormalize,
    MultiScaleCAM,
    cam_from_features,
    cams_to_mask,
    multiscale_cams,
    multiscale_cams_detailed,
    normalize_cams,
    tokens_to_map,
)


# --------------------------------------------------------------------------- cam_from_features
def test_cam_from_features_matches_pooled_logits():
    """GAP of the CAM equals the classifier logits (the defining CAM identity)."""
    feats = torch.randn(2, 6, 5, 7)
    fc = torch.nn.Linear(6, 4)
    cams = cam_from_features(feats, fc.weight, fc.bias)
    logits = fc(feats.mean((2, 3)))
    torch.testing.assert_close(cams.mean((2, 3)), logits)


def test_cam_from_features_hand_computed():
    feats = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # B=1, D=2, 1×2
    w = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    out = cam_from_features(feats, w.view(2, 2, 1, 1))
    assert out.tolist() == [[[[1.0, 2.0]], [[5.0, 3.0]]]]


def test_cam_from_features_is_differentiable():
    feats = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, ww: cam_from_features(f, ww), (feats, w))


def test_cam_from_features_bad_input():
    with pytest.raises(ValueError, match="weight has 3 input channels but features have 4"):
        cam_from_features(torch.randn(1, 4, 2, 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="features must have shape B×D×h×w"):
        cam_from_features(torch.randn(4, 2, 2), torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"features must be a torch.Tensor"):
        cam_from_features([1, 2], torch.randn(2, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bias has 3 entries, expected 2"):
        cam_from_features(torch.randn(1, 4, 2, 2), torch.randn(2, 4), torch.randn(3))


# --------------------------------------------------------------------------- tokens_to_map
@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_tokens_to_map_roundtrip(prefix):
    B, D, h, w, p = 2, 8, 3, 5, 16
    grid = torch.randn(B, D, h, w)
    seq = grid.flatten(2).transpose(1, 2)
    tokens = torch.cat([torch.randn(B, prefix, D), seq], 1)
    out = tokens_to_map(tokens, (h * p + 7, w * p + 3), p, num_prefix_tokens=prefix)
    torch.testing.assert_close(out, grid)


def test_tokens_to_map_rectangular_patch():
    tokens = torch.arange(2 * 3, dtype=torch.float32).view(1, 6, 1)
    out = tokens_to_map(tokens, (16, 24), (8, 8), num_prefix_tokens=0)
    assert out.shape == (1, 1, 2, 3)
    assert out[0, 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_tokens_to_map_bad_count():
    with pytest.raises(ValueError, match="expected 17 = 1 prefix \\+ 4×4 patches"):
        tokens_to_map(torch.randn(1, 197, 8), (64, 64), 16)


# --------------------------------------------------------------------------- normalize_cams
def test_normalize_max_hand_computed():
    cams = torch.tensor([[[[4.0, -2.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    out = normalize_cams(cams, eps=0.0 + 1e-12)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 0.0], [0.5, 0.25]]))
    assert out[0, 1].abs().max() == 0  # all-zero map stays zero, no NaN


def test_normalize_minmax_hand_computed():
    cams = torch.tensor([[[[3.0, 1.0], [2.0, 1.0]]]])
    out = normalize_cams(cams, mode="minmax", eps=0.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 0.0], [0.5, 0.0]]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.floats(0.1, 100.0))
def test_normalize_properties(b, c, h, w, scale):
    g = torch.Generator().manual_seed(b * 1000 + c * 100 + h * 10 + w)
    cams = torch.randn(b, c, h, w, generator=g)
    out = normalize_cams(cams)
    assert out.min() >= 0
    assert out.max() <= 1
    # positive rescaling invariance (up to eps)
    torch.testing.assert_close(normalize_cams(cams * scale, eps=1e-12), normalize_cams(cams, eps=1e-12),
                               atol=1e-5, rtol=1e-5)
    # maps with a positive value reach ~1
    pos = F.relu(cams).flatten(2).amax(-1) > 1e-3
    assert torch.all(out.flatten(2).amax(-1)[pos] > 0.99)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_normalize_keeps_dtype(dtype):
    assert normalize_cams(torch.randn(1, 2, 3, 3).to(dtype)).dtype == dtype


def test_normalize_bad_input():
    with pytest.raises(ValueError, match="cams contains non-finite values \\(1 NaN"):
        normalize_cams(torch.tensor([[[[float("nan"), 1.0]]]]))
    with pytest.raises(ValueError, match="mode must be one of 'max', 'minmax', 'seam_minmax'"):
        normalize_cams(torch.rand(1, 1, 2, 2), mode="sum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        normalize_cams(torch.ones(1, 1, 2, 2, dtype=torch.long))


def test_cam_normalize_module_equals_function():
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(CAMNormalize("minmax")(x), normalize_cams(x, "minmax"))


# --------------------------------------------------------------------------- cams_to_mask
def test_cams_to_mask_hand_computed():
    cams = torch.tensor([[[[0.9, 0.1, 0.5]], [[0.5, 0.2, 0.6]], [[0.99, 0.99, 0.99]]]])  # C=3, 1×3
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 2 absent: can never win
    out = cams_to_mask(cams, labels, bg_score=0.15)
    assert out.dtype == torch.int64
    assert out.tolist() == [[[1, 2, 2]]]


def test_cams_to_mask_tie_goes_to_background():
    cams = torch.tensor([[[[0.15, 0.16]]]])
    assert cams_to_mask(cams, torch.ones(1, 1), bg_score=0.15).tolist() == [[[0, 1]]]


def test_cams_to_mask_no_present_class_all_background():
    cams = torch.rand(2, 4, 3, 3)
    assert cams_to_mask(cams, torch.zeros(2, 4)).eq(0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_cams_to_mask_absent_never_win(seed, bg):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(2, 5, 4, 4, generator=g)
    labels = (torch.rand(2, 5, generator=g) > 0.5).float()
    m = cams_to_mask(cams, labels, bg)
    present = torch.cat([torch.ones(2, 1), labels], 1).bool()
    for b in range(2):
        assert present[b][m[b].flatten()].all()


def test_cams_to_mask_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be multi-hot with values in \{0, 1\}, got value 0.5"):
        cams_to_mask(torch.rand(1, 2, 2, 2), torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="labels has 3 classes, expected 2"):
        cams_to_mask(torch.rand(1, 2, 2, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="labels has batch size 2, expected 1"):
        cams_to_mask(torch.rand(1, 2, 2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="cams contains non-finite"):
        cams_to_mask(torch.full((1, 1, 2, 2), float("inf")), torch.ones(1, 1))


# --------------------------------------------------------------------------- multiscale_cams
class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


def test_multiscale_identity_scale1_flip_sum_is_twice():
    x = torch.rand(2, 3, 8, 8)
    out = multiscale_cams(_Identity(), x, scales=(1.0,), flip=True)
    torch.testing.assert_close(out, 2 * x)


def test_multiscale_flip_is_undone_on_asymmetric_pattern():
    """A model that marks the left half: fused map must still mark the left half only."""
    x = torch.zeros(1, 3, 4, 6)
    x[..., :2] = 1.0

    def left_detector(im):
        return im[:, :1]  # echoes the pattern, so the flipped run sees it on the right

    out = multiscale_cams(left_detector, x, scales=(1.0,), flip=True, reduce="max")
    assert out[0, 0, :, :2].eq(1).all()
    assert out[0, 0, :, 2:].eq(0).all()


def test_multiscale_hand_computed_sum_over_scales():
    """A model that returns a constant equal to the input width: sum over scales of the widths."""
    x = torch.rand(1, 3, 8, 8)

    def width_map(im):
        return torch.full((im.shape[0], 1, 2, 2), float(im.shape[-1]))

    out = multiscale_cams(width_map, x, scales=(1.0, 0.5, 1.5), flip=True)
    torch.testing.assert_close(out, torch.full((1, 1, 8, 8), 2 * (8 + 4 + 12.0)))
    out_mean = multiscale_cams(width_map, x, scales=(1.0, 0.5, 1.5), flip=True, reduce="mean")
    torch.testing.assert_close(out_mean, torch.full((1, 1, 8, 8), (8 + 4 + 12.0) / 3))
    out_max = multiscale_cams(width_map, x, scales=(1.0, 0.5, 1.5), flip=False, reduce="max")
    torch.testing.assert_close(out_max, torch.full((1, 1, 8, 8), 12.0))


def test_multiscale_flip_reduce_max_then_sum():
    x = torch.zeros(1, 1, 1, 2)
    x[..., 0] = 1.0  # flipped copy has the 1 on the right; after un-flip identical -> max == value
    out = multiscale_cams(lambda im: im, x, scales=(1.0,), flip=True, reduce="sum", flip_reduce="max")
    torch.testing.assert_close(out, x)


def test_multiscale_batched_equals_per_image_loop():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 1))
    x = torch.rand(3, 3, 12, 10)
    full = multiscale_cams(net, x, scales=(1.0, 0.5, 2.0))
    loop = torch.cat([multiscale_cams(net, x[i:i + 1], scales=(1.0, 0.5, 2.0)) for i in range(3)])
    torch.testing.assert_close(full, loop, atol=1e-5, rtol=1e-5)


def test_multiscale_out_size_detailed_and_grad():
    net = torch.nn.Conv2d(3, 2, 1)
    x = torch.rand(1, 3, 8, 8)
    detailed = multiscale_cams_detailed(net, x, scales=(1.0, 0.5), out_size=(4, 6))
    fused, per = detailed.fused, detailed.per_scale
    assert torch.equal(fused, multiscale_cams(net, x, scales=(1.0, 0.5), out_size=(4, 6)))
    module = MultiScaleCAM(net, scales=(1.0, 0.5)).detailed(x, out_size=(4, 6))
    assert torch.equal(module.fused, fused)
    assert all(torch.equal(a, b) for a, b in zip(module.per_scale, per))
    assert fused.shape == (1, 2, 4, 6)
    assert len(per) == 2
    assert per[1].shape == (1, 2, 4, 6)
    torch.testing.assert_close(fused, per[0] + per[1])
    assert not fused.requires_grad
    g = multiscale_cams(net, x, scales=(1.0,), no_grad=False)
    assert g.requires_grad


def test_multiscale_module_and_bad_input():
    net = torch.nn.Conv2d(3, 2, 1)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(MultiScaleCAM(net, scales=(1.0, 0.5))(x),
                               multiscale_cams(net, x, scales=(1.0, 0.5)))
    with pytest.raises(ValueError, match=r"scales must be > 0, got -1.0"):
        multiscale_cams(net, x, scales=(1.0, -1.0))
    with pytest.raises(TypeError, match="fn must be callable"):
        multiscale_cams(3, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fn must return a 2×K×h×w tensor"):
        multiscale_cams(lambda im: im[0], x, scales=(1.0,))
    with pytest.raises(ValueError, match="reduce must be"):
        multiscale_cams(net, x, reduce="median")  # type: ignore[arg-type]


def test_compile_smoke():
    f = torch.compile(normalize_cams, backend="eager")
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(f(x), normalize_cams(x))


def test_multiscale_antialias_only_changes_downscaled_inputs():
    x = torch.rand(1, 3, 16, 16)
    seen = {}

    def record(im):
        seen.setdefault(im.shape[-1], []).append(im[:1].clone())
        return im[:, :1]

    multiscale_cams(record, x, scales=(1.0, 0.5), flip=False, antialias=False)
    multiscale_cams(record, x, scales=(1.0, 0.5), flip=False, antialias=True)
    assert torch.equal(seen[16][0], seen[16][1])  # the unscaled input is untouched
    assert not torch.allclose(seen[8][0], seen[8][1])  # antialiased downscale differs
    # antialiased 2x downscale of a random image is smoother: lower variance than plain bilinear
    assert seen[8][1].var() < seen[8][0].var()
