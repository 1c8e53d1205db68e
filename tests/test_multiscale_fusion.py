"""Tests for wsss_blocks.multiscale_fusion (SMAF)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.multiscale_fusion import (
    MultiScaleAttentionFusion,
    SMAFLoss,
    denoise,
    multiscale_attention_fusion,
    multiscale_attention_fusion_detailed,
    reactivate,
    smaf_loss,
    smaf_pseudo_mask,
    smaf_target,
)
from wsss_blocks.multiscale_fusion import _hard_label_probs as hard_label_probs


# --------------------------------------------------------------------------- helpers
class PixelNet(torch.nn.Module):
    """A known per-pixel function of the input: 1×1 conv (flip-equivariant), K output channels."""

    def __init__(self, k: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, k, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(k, 3, 1, 1, generator=g) * 2)
            self.conv.bias.copy_(torch.randn(k, generator=g))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class StridedNet(torch.nn.Module):
    """A tiny CAM-like net with output stride 4, BN and dropout (batch-independent in eval mode)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Dropout2d(0.5),
            torch.nn.Conv2d(8, k, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def reference_fusion(model, image, label, scales, flip=True, bg_last=True, eps=1e-5, normalize=True):
    """The released gen_fused_cam.py loop, one image and one pass at a time (8 passes by default)."""
    H, W = image.shape[-2:]
    total = None
    with torch.no_grad():
        for s in scales:
            size = (round(H * s), round(W * s))
            x = image[None] if size == (H, W) else F.interpolate(
                image[None], size=size, mode="bicubic", align_corners=False)
            for flipped in ([False, True] if flip else [False]):
                inp = x.flip(-1) if flipped else x
                cam = torch.softmax(model(inp), dim=1)                      # softmax before upsampling
                cam = F.interpolate(cam, (H, W), mode="bilinear", align_corners=False)[0]
                fg = cam[:-1] if bg_last else cam
                fg = fg * label.view(-1, 1, 1)                              # class-aware masking per pass
                if flipped:
                    fg = fg.flip(-1)
                total = fg if total is None else total + fg
    if normalize:
        total = total / (total.amax((1, 2), keepdim=True) + eps)
    return total


def labels_for(B, C, present):
    y = torch.zeros(B, C)
    for b, cs in enumerate(present):
        y[b, list(cs)] = 1
    return y


# --------------------------------------------------------------------------- fusion: values
def test_fusion_equals_hand_computed_sum_over_scales_and_flips():
    torch.manual_seed(0)
    C = 4
    net = PixelNet(C + 1)
    images = torch.randn(2, 3, 12, 16)
    labels = labels_for(2, C, [{0, 2}, {1}])
    fused = multiscale_attention_fusion(net, images, labels)
    for b in range(2):
        ref = reference_fusion(net, images[b], labels[b], (0.5, 1.0, 1.5, 2.0))
        torch.testing.assert_close(fused[b], ref, atol=1e-6, rtol=1e-5)


def test_fusion_exact_tiny_case_with_flip():
    """1×2 image, one class + background; fg prob = sigmoid(x0 - x1). Flip pass undone -> 2·σ."""
    net = lambda x: x[:, :2]
    image = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]], [[5.0, 5.0]]]])
    out = multiscale_attention_fusion(net, image, torch.ones(1, 1), scales=(1.0,), normalize="none")
    expected = torch.tensor([2 * torch.sigmoid(torch.tensor(2.0)).item(), 1.0])
    torch.testing.assert_close(out[0, 0, 0], expected)
    normed = multiscale_attention_fusion(net, image, torch.ones(1, 1), scales=(1.0,))
    torch.testing.assert_close(normed[0, 0, 0], expected / (expected.max() + 1e-5))


def test_flips_are_undone_asymmetric_pattern():
    """Flip-equivariant model on an asymmetric image: the flipped pass, flipped back, equals the plain pass."""
    net = PixelNet(3, seed=1)
    x = torch.zeros(1, 3, 8, 8)
    x[..., :, :3] = 2.0  # left band only
    labels = torch.ones(1, 2)
    with_flip = multiscale_attention_fusion(net, x, labels, scales=(1.0, 0.5), normalize="none")
    without = multiscale_attention_fusion(net, x, labels, scales=(1.0, 0.5), flip=False, normalize="none")
    torch.testing.assert_close(with_flip, 2 * without)
    assert not torch.allclose(without, without.flip(-1))  # the pattern really is asymmetric


def test_flip_of_a_fixed_asymmetric_output_is_mirrored_back():
    """A model ignoring its input returns pattern P for both passes -> fusion = P + flip(P)."""
    C = 2
    pattern = torch.randn(1, C + 1, 4, 6)

    def net(x):
        return pattern.expand(x.shape[0], -1, -1, -1)

    out = multiscale_attention_fusion(net, torch.zeros(1, 3, 4, 6), torch.ones(1, C), scales=(1.0,),
                                      normalize="none")
    p = torch.softmax(pattern, 1)[:, :C]
    torch.testing.assert_close(out, p + p.flip(-1))


def test_absent_classes_are_zero_and_present_max_is_one():
    C = 5
    net = PixelNet(C + 1, seed=3)
    labels = labels_for(3, C, [{0}, {1, 4}, {2, 3, 4}])
    fused = multiscale_attention_fusion(net, torch.randn(3, 3, 10, 10), labels)
    present = labels.bool()
    assert bool((fused[~present] == 0).all())
    mx = fused.amax((2, 3))[present]
    assert bool((mx <= 1).all())
    torch.testing.assert_close(mx, torch.ones_like(mx), atol=1e-4, rtol=0)
    assert float(fused.min()) >= 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(3, 12), w=st.integers(3, 12), c=st.integers(1, 5),
       scales=st.lists(st.sampled_from([0.5, 0.75, 1.0, 1.25, 2.0]), min_size=1, max_size=3, unique=True),
       flip=st.booleans())
def test_fusion_invariants(seed, h, w, c, scales, flip):
    """Any shapes and scales: values in [0, 1], absent classes 0, each present class peaks at M / (M + eps)
    (M = the unnormalised peak, so ≈ 1 unless M is tiny), and the scale order does not matter.
    """
    g = torch.Generator().manual_seed(seed)
    net = PixelNet(c + 1, seed=seed)
    x = torch.randn(2, 3, h, w, generator=g)
    labels = (torch.rand(2, c, generator=g) > 0.5).float()
    out = multiscale_attention_fusion(net, x, labels, scales=scales, flip=flip)
    assert out.shape == (2, c, h, w)
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1
    assert bool((out[~labels.bool()] == 0).all())
    peaks = out.amax((2, 3))[labels.bool()]
    raw = multiscale_attention_fusion(net, x, labels, scales=scales, flip=flip, normalize="none")
    m = raw.amax((2, 3))[labels.bool()]
    torch.testing.assert_close(peaks, m / (m + 1e-5))
    rev = multiscale_attention_fusion(net, x, labels, scales=scales[::-1], flip=flip)
    torch.testing.assert_close(rev, out, atol=1e-6, rtol=1e-5)


def test_per_scale_maps_sum_to_unnormalised_fusion():
    C = 3
    net = PixelNet(C + 1)
    images, labels = torch.randn(2, 3, 8, 8), labels_for(2, C, [{0, 1}, {2}])
    out = multiscale_attention_fusion_detailed(net, images, labels, normalize="none")
    fused, per_scale = out.fused, out.per_scale
    assert torch.equal(fused, multiscale_attention_fusion(net, images, labels, normalize="none"))
    module = MultiScaleAttentionFusion(normalize="none").detailed(net, images, labels)
    assert torch.equal(module.fused, fused)
    assert all(torch.equal(a, b) for a, b in zip(module.per_scale, per_scale))
    assert len(per_scale) == 4
    assert all(p.shape == (2, C, 8, 8) for p in per_scale)
    torch.testing.assert_close(sum(per_scale), fused)
    assert bool((per_scale[0][~labels.bool()] == 0).all())


@pytest.mark.parametrize("bg", ["last", "none"])
def test_skip_absent_is_bit_identical(bg):
    C = 6
    net = StridedNet(C + (bg != "none")).eval()
    images, labels = torch.randn(3, 3, 16, 12), labels_for(3, C, [{1}, {1, 4}, set()])
    fast_out = multiscale_attention_fusion_detailed(net, images, labels, bg_channel=bg, skip_absent=True)
    full_out = multiscale_attention_fusion_detailed(net, images, labels, bg_channel=bg, skip_absent=False)
    fast, fast_per, full, full_per = fast_out.fused, fast_out.per_scale, full_out.fused, full_out.per_scale
    assert torch.equal(fast, full)
    assert all(torch.equal(a, b) for a, b in zip(fast_per, full_per))
    assert bool((fast[2] == 0).all())
    assert bool((fast[:, [0, 2, 3, 5]] == 0).all())
    none = multiscale_attention_fusion(net, images, torch.zeros(3, C), bg_channel=bg)
    assert none.shape == (3, C, 16, 12)
    assert bool((none == 0).all())


def test_eight_passes_per_image_batched_by_scale():
    calls: list[tuple[int, ...]] = []
    net = PixelNet(4)

    def counting(x):
        calls.append(tuple(x.shape))
        return net(x)

    fusion = MultiScaleAttentionFusion()
    assert fusion.num_passes == 8
    fusion(counting, torch.randn(3, 3, 20, 30), torch.ones(3, 3))
    assert [c[0] for c in calls] == [6, 6, 6, 6]  # one call per scale, image + flip in one batch of 2B
    assert [c[2:] for c in calls] == [(10, 15), (20, 30), (30, 45), (40, 60)]


@pytest.mark.parametrize("bg", ["first", "none"])
def test_bg_channel_positions_agree(bg):
    C = 3
    net_last = PixelNet(C + 1, seed=5)
    images, labels = torch.randn(2, 3, 8, 8), labels_for(2, C, [{0, 2}, {1}])
    ref = multiscale_attention_fusion(net_last, images, labels, bg_channel="last")
    if bg == "first":
        net = lambda x: net_last(x).roll(1, dims=1)
        out = multiscale_attention_fusion(net, images, labels, bg_channel="first")
        torch.testing.assert_close(out, ref)
    else:  # no background channel: softmax over the C classes only
        net = lambda x: net_last(x)[:, :C]
        out = multiscale_attention_fusion(net, images, labels, bg_channel="none", scales=(1.0,), flip=False,
                                          normalize="none")
        torch.testing.assert_close(out, torch.softmax(net(images), 1) * labels[:, :, None, None])


def test_relu_and_none_activation():
    C = 2
    net = PixelNet(C, seed=2)
    x, y = torch.randn(1, 3, 6, 6), torch.ones(1, C)
    kw = dict(bg_channel="none", scales=(1.0,), flip=False, normalize="none")
    torch.testing.assert_close(multiscale_attention_fusion(net, x, y, activation="relu", **kw), F.relu(net(x)))
    torch.testing.assert_close(multiscale_attention_fusion(net, x, y, activation="none", **kw), net(x))


def test_activate_before_resize_order_matters():
    """Released order (softmax, then upsample) differs from upsample-then-softmax at stride > 1."""
    net = StridedNet(3).eval()
    x, y = torch.randn(1, 3, 16, 16), torch.ones(1, 2)
    a = multiscale_attention_fusion(net, x, y, scales=(1.0,), flip=False, normalize="none")
    b = multiscale_attention_fusion(net, x, y, scales=(1.0,), flip=False, normalize="none",
                                    activate_before_resize=False)
    expected = F.interpolate(torch.softmax(net(x), 1), (16, 16), mode="bilinear", align_corners=False)[:, :2]
    torch.testing.assert_close(a, expected.detach())
    assert not torch.allclose(a, b)


def test_batched_equals_per_image_loop():
    torch.manual_seed(1)
    C = 4
    net = StridedNet(C + 1)
    with torch.no_grad():
        net.body[1].running_mean.uniform_(-0.5, 0.5)
        net.body[1].running_var.uniform_(0.5, 2.0)
    images = torch.randn(3, 3, 24, 20)
    labels = labels_for(3, C, [{0}, {1, 2}, {3}])
    batched = multiscale_attention_fusion(net, images, labels)
    looped = torch.cat([multiscale_attention_fusion(net, images[i:i + 1], labels[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)


def test_eval_mode_is_applied_and_restored():
    net = StridedNet(3)
    net.train()
    net.body[1].eval()  # a custom mix of modes (e.g. frozen BN) must survive the call
    x, y = torch.randn(1, 3, 16, 16), torch.ones(1, 2)
    a = multiscale_attention_fusion(net, x, y)
    b = multiscale_attention_fusion(net, x, y)
    torch.testing.assert_close(a, b)  # dropout off during the call
    assert net.training
    assert net.body[3].training
    assert not net.body[1].training


def test_out_size_and_module_repr():
    fusion = MultiScaleAttentionFusion(scales=(1.0, 0.5))
    out = fusion(PixelNet(3), torch.randn(1, 3, 16, 16), torch.ones(1, 2), out_size=(8, 4))
    assert out.shape == (1, 2, 8, 4)
    assert "scales=(1.0, 0.5)" in repr(fusion)


def test_no_grad_by_default_and_differentiable_on_request():
    net = PixelNet(3)
    x, y = torch.randn(1, 3, 8, 8), torch.ones(1, 2)
    assert not multiscale_attention_fusion(net, x, y).requires_grad
    out = multiscale_attention_fusion(net, x, y, no_grad=False)
    out.sum().backward()
    assert net.conv.weight.grad is not None
    assert net.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_reduce_variants(reduce):
    net = PixelNet(3)
    x, y = torch.randn(1, 3, 8, 8), torch.ones(1, 2)
    s = multiscale_attention_fusion(net, x, y, reduce="sum", normalize="none")
    detailed = multiscale_attention_fusion_detailed(net, x, y, reduce=reduce, normalize="none")
    out, per = detailed.fused, detailed.per_scale
    if reduce == "mean":
        torch.testing.assert_close(out, s / 8)
        torch.testing.assert_close(multiscale_attention_fusion(net, x, y, reduce="mean"),
                                   multiscale_attention_fusion(net, x, y), atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(out, torch.stack(per).amax(0))


def test_minmax_normalisation():
    net = PixelNet(3)
    x, y = torch.randn(1, 3, 8, 8), torch.tensor([[1.0, 0.0]])
    out = multiscale_attention_fusion(net, x, y, normalize="minmax")
    assert abs(float(out[0, 0].min())) < 1e-6
    assert abs(float(out[0, 0].max()) - 1) < 1e-4
    assert bool((out[0, 1] == 0).all())


def test_float64_follows_input():
    net = PixelNet(3, dtype=torch.float64)
    x = torch.randn(1, 3, 8, 10, dtype=torch.float64)
    out = multiscale_attention_fusion(net, x, torch.tensor([[1.0, 0.0]]))
    assert out.dtype == torch.float64
    ref = reference_fusion(net, x[0], torch.tensor([1.0, 0.0], dtype=torch.float64), (0.5, 1.0, 1.5, 2.0))
    torch.testing.assert_close(out[0], ref, atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------- fusion: bad input
def test_fusion_bad_input():
    net = PixelNet(21)
    x, y = torch.randn(1, 3, 8, 8), torch.zeros(1, 20)
    with pytest.raises(ValueError, match=r"scales must all be > 0, got \(1.0, 0.0\)"):
        multiscale_attention_fusion(net, x, y, scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="scales must all be > 0"):
        multiscale_attention_fusion(net, x, y, scales=(-0.5,))
    with pytest.raises(ValueError, match="scales must contain at least one scale"):
        multiscale_attention_fusion(net, x, y, scales=())
    with pytest.raises(ValueError, match=r"scales must all be > 0, got \(0.5, 0.0\)"):
        MultiScaleAttentionFusion(scales=(0.5, 0.0))
    with pytest.raises(ValueError, match=r"model returned 21 channels but labels have C=19 classes.*= 20"):
        multiscale_attention_fusion(net, x, torch.zeros(1, 19))
    with pytest.raises(ValueError, match=r"model returned 21 channels.*bg_channel='none'.*= 20"):
        multiscale_attention_fusion(net, x, y, bg_channel="none")
    with pytest.raises(TypeError, match=r"model must be callable.*got Tensor"):
        multiscale_attention_fusion(torch.zeros(3), x, y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be callable"):
        MultiScaleAttentionFusion()("net", x, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model must return a 2×K×h×w tensor"):
        multiscale_attention_fusion(lambda t: t.mean(1), x, y)
    with pytest.raises(ValueError, match="labels has batch size 2, expected 1"):
        multiscale_attention_fusion(net, x, torch.zeros(2, 20))
    with pytest.raises(ValueError, match=r"labels must be multi-hot"):
        multiscale_attention_fusion(net, x, torch.full((1, 20), 0.5))
    with pytest.raises(ValueError, match="images must have shape B×3×H×W"):
        multiscale_attention_fusion(net, x[0], y)
    with pytest.raises(ValueError, match="bg_channel must be one of 'last', 'first', 'none', got 'middle'"):
        MultiScaleAttentionFusion(bg_channel="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation must be one of"):
        multiscale_attention_fusion(net, x, y, activation="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize must be one of"):
        multiscale_attention_fusion(net, x, y, normalize="l2")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- denoise / reactivate
def test_denoise_background_value_and_masking():
    maps = torch.tensor([[[[0.5, 0.1]], [[0.9, 0.3]]]])
    out = denoise(maps, torch.tensor([[1.0, 0.0]]), bg_score=0.2)
    assert out.shape == (1, 3, 1, 2)
    assert out[0, 0].tolist() == [[pytest.approx(0.2), pytest.approx(0.2)]]
    assert bool((out[:, 0] == torch.tensor(0.2)).all())
    assert out[0, 1].tolist() == [[0.5, pytest.approx(0.1)]]
    assert out[0, 2].tolist() == [[0.0, 0.0]]
    assert bool((denoise(maps, torch.ones(1, 2), bg_score=0.35)[:, 0] == torch.tensor(0.35)).all())


def test_reactivate_exact_small_case():
    s = torch.tensor([[[[0.2, 0.2]], [[0.5, 0.1]], [[0.0, 0.05]]]])
    out = reactivate(s)
    assert out[0, :, 0, 0].tolist() == [pytest.approx(0.4), 1.0, 0.0]
    assert out[0, :, 0, 1].tolist() == [1.0, pytest.approx(0.5), pytest.approx(0.25)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 6), bg=st.floats(0.01, 0.9))
def test_reactivate_winner_is_exactly_one(seed, c, bg):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, c, 5, 4, generator=g)
    labels = (torch.rand(2, c, generator=g) > 0.5).float()
    out = reactivate(denoise(maps, labels, bg))
    assert bool((out.amax(1) == 1.0).all())  # exact, not approximate
    assert bool((out <= 1.0).all())
    assert bool((out >= 0).all())
    # the winner keeps its place
    assert torch.equal(out.argmax(1), denoise(maps, labels, bg).argmax(1))


def test_reactivate_bad_input():
    with pytest.raises(ValueError, match="positive maximum over channels"):
        reactivate(torch.zeros(1, 3, 2, 2))
    assert torch.isfinite(reactivate(torch.zeros(1, 3, 2, 2), eps=1e-6)).all()
    with pytest.raises(ValueError, match="scores contains non-finite values"):
        reactivate(torch.full((1, 2, 1, 1), float("nan")))
    with pytest.raises(ValueError, match=r"maps has 3 classes|labels has 2 classes, expected 3"):
        denoise(torch.rand(1, 3, 2, 2), torch.ones(1, 2))


# --------------------------------------------------------------------------- smaf_target
def test_target_below_background_gives_bg_one_and_five_times_fg():
    maps = torch.tensor([[[[0.1, 0.6]], [[0.15, 0.3]]]])
    t = smaf_target(maps, torch.ones(1, 2))
    torch.testing.assert_close(t[0, :, 0, 0], torch.tensor([1.0, 0.5, 0.75]))  # 5·A_c, bg = 1
    torch.testing.assert_close(t[0, :, 0, 1], torch.tensor([0.2 / 0.6, 1.0, 0.5]))


def test_target_padding_is_one_hot_background_and_detached():
    maps = torch.zeros(1, 3, 8, 8)
    maps[..., :4, :4] = torch.rand(4, 4) * 0.5 + 0.5
    maps.requires_grad_(True)
    t = smaf_target(maps, torch.ones(1, 3))
    assert not t.requires_grad
    pad = t[0, :, 4:, 4:]
    assert bool((pad[0] == 1).all())
    assert bool((pad[1:] == 0).all())


def test_target_released_resolution_handling():
    """Released: 0.25 scale factor, bilinear align_corners=True, before denoise and reactivate (448 -> 112)."""
    torch.manual_seed(0)
    maps = torch.rand(1, 5, 448, 448)
    labels = labels_for(1, 5, [{1, 3}])
    t = smaf_target(maps, labels, scale_factor=0.25)
    assert t.shape == (1, 6, 112, 112)
    small = F.interpolate(maps, scale_factor=0.25, mode="bilinear", align_corners=True)
    fg = small * labels[:, :, None, None]
    rect = torch.cat([fg, torch.full_like(fg[:, :1], 0.2)], 1)  # released layout: bg last
    rect = rect / rect.max(1, keepdim=True)[0]
    torch.testing.assert_close(t, rect.roll(1, dims=1))
    torch.testing.assert_close(smaf_target(maps, labels, size=(112, 112)), t)
    with pytest.raises(ValueError, match="give size or scale_factor, not both"):
        smaf_target(maps, labels, size=(112, 112), scale_factor=0.25)


# --------------------------------------------------------------------------- smaf_loss
def _released_loss(logits_bg_last, target_bg_first):
    cam = F.interpolate(logits_bg_last, size=target_bg_first.shape[-2:], mode="bilinear", align_corners=True)
    cam = torch.softmax(cam, 1)
    return 100 * torch.nn.MSELoss()(cam, target_bg_first.roll(-1, dims=1))


def test_loss_matches_released_computation():
    torch.manual_seed(0)
    target = smaf_target(torch.rand(2, 20, 32, 32), labels_for(2, 20, [{1}, {2, 5}]))
    logits = torch.randn(2, 21, 16, 16)
    torch.testing.assert_close(smaf_loss(logits, target), _released_loss(logits, target))
    # hand-computed 1-pixel case: softmax([0, 0]) = [0.5, 0.5], target [1 (bg), 0] -> 100·(0.25+0.25)/2
    t1 = torch.tensor([[[[1.0]], [[0.0]]]])
    assert smaf_loss(torch.zeros(1, 2, 1, 1), t1).item() == pytest.approx(25.0)
    assert smaf_loss(torch.zeros(1, 2, 1, 1), t1, weight=1.0).item() == pytest.approx(0.25)


def test_loss_bg_first_student_agrees():
    target = smaf_target(torch.rand(1, 4, 8, 8), torch.ones(1, 4))
    logits = torch.randn(1, 5, 4, 4)
    a = smaf_loss(logits, target, bg_channel="last")
    b = smaf_loss(logits.roll(1, dims=1), target, bg_channel="first")
    torch.testing.assert_close(a, b)
    assert SMAFLoss(weight=100.0)(logits, target).item() == pytest.approx(a.item())


def test_loss_gradient_only_into_student():
    maps = torch.rand(1, 3, 8, 8, requires_grad=True)
    target_in = reactivate(denoise(maps, torch.ones(1, 3)))  # a target that still carries a graph
    assert target_in.requires_grad
    logits = torch.randn(1, 4, 4, 4, requires_grad=True)
    smaf_loss(logits, target_in).backward()
    assert maps.grad is None
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


def test_loss_gradcheck_float64():
    target = smaf_target(torch.rand(1, 3, 6, 6, dtype=torch.float64), torch.tensor([[1.0, 0.0, 1.0]]))
    logits = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: smaf_loss(z, target), (logits,))


def test_loss_zero_at_perfect_match_only_when_target_is_distribution():
    t = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]])
    big = torch.tensor([[[[50.0]], [[0.0]], [[0.0]]]])  # bg last: channel 2 is bg -> roll
    assert smaf_loss(big.roll(-1, 1), t).item() < 1e-10


def test_loss_bad_input():
    t = torch.rand(1, 21, 8, 8)
    with pytest.raises(ValueError, match="student_logits has 20 channels but target has 21"):
        smaf_loss(torch.randn(1, 20, 4, 4), t)
    with pytest.raises(ValueError, match="same batch size"):
        smaf_loss(torch.randn(2, 21, 4, 4), t)
    with pytest.raises(ValueError, match="bg_channel must be one of 'last', 'first'"):
        smaf_loss(torch.randn(1, 21, 4, 4), t, bg_channel="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="student_logits must have shape"):
        smaf_loss(torch.randn(21, 4, 4), t)


def test_loss_compiles_eager():
    target = smaf_target(torch.rand(1, 3, 8, 8), torch.ones(1, 3))
    logits = torch.randn(1, 4, 4, 4)
    compiled = torch.compile(smaf_loss, backend="eager")
    torch.testing.assert_close(compiled(logits, target), smaf_loss(logits, target))


# --------------------------------------------------------------------------- pseudo labels
def test_pseudo_labels_threshold_and_ties():
    maps = torch.tensor([[[[0.9, 0.1, 0.2, 0.5]], [[0.5, 0.3, 0.2, 0.5]], [[1.0, 1.0, 1.0, 1.0]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 2 absent: never wins
    out = smaf_pseudo_mask(maps, labels)
    assert out.tolist() == [[[1, 2, 0, 1]]]  # 0.2 == threshold -> background; fg tie -> lower class
    assert out.dtype == torch.int64
    assert smaf_pseudo_mask(maps, labels, bg_score=0.6).tolist() == [[[1, 0, 0, 0]]]


def test_hard_label_probs_values():
    p = hard_label_probs(torch.tensor([[[0, 2]]]), 3, 0.7)
    assert p.shape == (1, 3, 1, 2)
    torch.testing.assert_close(p[0, :, 0, 0], torch.tensor([0.7, 0.15, 0.15]))
    torch.testing.assert_close(p.sum(1), torch.ones(1, 1, 2))


def test_pseudo_labels_with_a_crf_callable():
    seen = {}

    def fake_crf(image, probs):
        seen["image"], seen["probs"] = image, probs
        return probs.flip(1)  # a "CRF" that reverses the labels, to check the plumbing

    maps = torch.tensor([[[[0.9, 0.1]], [[0.1, 0.6]]]])
    image = torch.rand(1, 3, 1, 2)
    out = smaf_pseudo_mask(maps, torch.ones(1, 2), image01=image, crf=fake_crf)
    assert seen["image"] is image
    torch.testing.assert_close(seen["probs"], hard_label_probs(torch.tensor([[[1, 2]]]), 3, 0.7))
    assert out.tolist() == [[[1, 0]]]  # reversed: label 1 -> 1, label 2 -> 0
    with pytest.raises(ValueError, match="an image is required when crf is set"):
        smaf_pseudo_mask(maps, torch.ones(1, 2), crf=fake_crf)
    with pytest.raises(ValueError, match=r"image01 must have shape \(1, 3, 1, 2\)"):
        smaf_pseudo_mask(maps, torch.ones(1, 2), image01=torch.rand(1, 3, 2, 2), crf=fake_crf)
    with pytest.raises(ValueError, match=r"image_uint8 must have shape \(1, 1, 2, 3\)"):
        smaf_pseudo_mask(maps, torch.ones(1, 2), image_uint8=torch.zeros(1, 3, 1, 2, dtype=torch.uint8), crf=fake_crf)
    with pytest.raises(ValueError, match="not both"):
        smaf_pseudo_mask(maps, torch.ones(1, 2), image01=image, image_uint8=torch.zeros(1, 1, 2, 3, dtype=torch.uint8),
                         crf=fake_crf)
    with pytest.raises(ValueError, match="crf must return probabilities"):
        smaf_pseudo_mask(maps, torch.ones(1, 2), image01=image, crf=lambda i, p: p[:, :2])


@pytest.mark.crf
def test_hard_label_unary_matches_pydensecrf():
    utils = pytest.importorskip("pydensecrf.utils")
    import numpy as np

    masks = torch.tensor([[[0, 1, 2], [2, 0, 1]]])
    ref = utils.unary_from_labels(masks[0].numpy(), 3, gt_prob=0.7, zero_unsure=False)
    ours = -torch.log(hard_label_probs(masks, 3, 0.7))[0].reshape(3, -1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def _two_region_case():
    image = torch.zeros(1, 3, 24, 24)
    image[..., :, 12:] = 1.0  # two flat regions
    maps = torch.zeros(1, 2, 24, 24)
    maps[0, 0, :, 9:] = 0.9  # noisy seed: class 0 spills three columns into the dark half
    return image, maps, torch.tensor([[1.0, 0.0]])


def test_pseudo_labels_crf_torch_backend():
    """The released SMAF CRF (DenseCRF.smaf, hard-label unary) snaps the seed to the colour edge."""
    crf_mod = pytest.importorskip("wsss_blocks.crf")
    image, maps, labels = _two_region_case()
    crf = crf_mod.DenseCRF.smaf(backend="torch")
    out = smaf_pseudo_mask(maps, labels, image01=image, crf=crf)
    assert out.shape == (1, 24, 24)
    assert out.dtype == torch.int64
    assert smaf_pseudo_mask(maps, labels).eq(1).sum() == 24 * 15  # before: 15 columns
    assert bool((out[0, :, 12:] == 1).all())
    assert bool((out[0, :, :12] == 0).all())
    u = crf_mod.unary_from_mask(torch.tensor([[[0, 1, 2]]]), 3, 0.7)
    torch.testing.assert_close(-torch.log(hard_label_probs(torch.tensor([[[0, 1, 2]]]), 3, 0.7)), u)


@pytest.mark.crf
def test_pseudo_labels_released_crf_pydensecrf():
    pytest.importorskip("pydensecrf")
    crf_mod = pytest.importorskip("wsss_blocks.crf")
    image, maps, labels = _two_region_case()
    out = smaf_pseudo_mask(maps, labels, image01=image, crf="smaf")
    ref = crf_mod.DenseCRF.smaf(backend="pydensecrf").from_mask(
        None, smaf_pseudo_mask(maps, labels), num_classes=3,
        image_uint8=(image[0].permute(1, 2, 0) * 255).round().to(torch.uint8)).argmax(1)
    assert torch.equal(out, ref)
    assert bool((out[0, :, 12:] == 1).all())
    assert bool((out[0, :, :12] == 0).all())


# --------------------------------------------------------------------------- device
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net = StridedNet(4).eval()
    x, y = torch.randn(2, 3, 32, 32), labels_for(2, 3, [{0}, {1, 2}])
    cpu = multiscale_attention_fusion(net, x, y)
    gpu = multiscale_attention_fusion(net.cuda(), x.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    t = smaf_target(gpu, y.cuda(), scale_factor=0.25)
    loss = smaf_loss(torch.randn(2, 4, 4, 4, device="cuda", requires_grad=True), t)
    assert loss.device.type == "cuda"
    assert math.isfinite(loss.item())
