"""Tests for wsss_blocks.local_global (L2G: LocalPatchSampler, LocalToGlobalTransfer, roi_align)."""

from __future__ import annotations

import doctest
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import wsss_blocks.local_global as lg
from wsss_blocks.local_global import (
    LocalPatchSampler,
    LocalToGlobalTransfer,
    boxes_to_roi_format,
    crop_local_patches,
    l2g_loss,
    l2g_target,
    l2g_transfer,
    sample_patch_boxes,
)
from wsss_blocks.ops import roi_align

ROOT = Path(__file__).resolve().parent.parent
HYP = settings(max_examples=25, deadline=None)


def _tv():
    return pytest.importorskip("torchvision").ops


def _random_rois(gen: torch.Generator, n: int, batch: int, lo: float, hi: float) -> torch.Tensor:
    pts = torch.rand(n, 4, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    xs, ys = pts[:, 0::2].sort(dim=1).values, pts[:, 1::2].sort(dim=1).values  # x1 <= x2, y1 <= y2
    pts = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)
    idx = torch.randint(0, batch, (n, 1), generator=gen).double()
    return torch.cat([idx, pts], dim=1)


# ------------------------------------------------------------------------------------------------
# roi_align
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
    ops = _tv()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 14, 11, generator=g)
    # boxes inside, partly outside, tiny and large, in image pixels (scale 1/4)
    special = [[1, -30.0, -30.0, 80.0, 90.0], [2, 40.0, 50.0, 44.0, 56.0], [0, 52.0, 40.0, 60.0, 60.0]]
    if not aligned:  # a malformed box (x2 < x1): legacy mode treats it as 1×1 (torchvision crashes on it
        special.append([0, 10.0, 12.0, 9.0, 11.0])  # when aligned=True; ours returns zeros there)
    rois = torch.cat([_random_rois(g, 20, 3, -12.0, 70.0), torch.tensor(special, dtype=torch.float64)]).float()
    for out in [(5, 5), (3, 7), (1, 1)]:
        ours = roi_align(x, rois, out, 0.25, sampling_ratio, aligned)
        ref = ops.roi_align(x, rois, out, 0.25, sampling_ratio, aligned)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_roi_align_matches_torchvision_released_l2g_setting():
    ops = _tv()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 21, 56, 56, generator=g)
    boxes = sample_patch_boxes(3, (448, 448), 6, 320, generator=g)
    rois = boxes_to_roi_format(boxes)
    ours = roi_align(x, rois, 40, 1 / 8)
    torch.testing.assert_close(ours, ops.roi_align(x, rois, (40, 40), 1 / 8.0), atol=1e-5, rtol=0)


def test_roi_align_gradient_matches_torchvision():
    ops = _tv()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, generator=g)
    rois = _random_rois(g, 7, 2, -4.0, 44.0)
    w = torch.randn(7, 3, 4, 5, dtype=torch.float64, generator=g)
    grads = []
    for fn in (roi_align, ops.roi_align):
        xr = x.clone().requires_grad_()
        (fn(xr, rois, (4, 5), 0.25, -1, False) * w).sum().backward()
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=0)


@HYP
@given(st.integers(0, 2**31 - 1), st.booleans(), st.sampled_from([-1, 1, 2]))
def test_roi_align_property_matches_torchvision(seed, aligned, sr):
    ops = _tv()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 6, 7, generator=g)
    rois = _random_rois(g, 5, 2, -10.0, 40.0).float()
    torch.testing.assert_close(roi_align(x, rois, (3, 4), 1 / 5, sr, aligned),
                               ops.roi_align(x, rois, (3, 4), 1 / 5, sr, aligned), atol=1e-5, rtol=0)


def test_roi_align_known_function_of_position_gives_expected_crops():
    """A global map that is linear in position: bilinear sampling is exact, so each crop is known."""
    H = W = 56
    ys = torch.arange(H, dtype=torch.float64).view(H, 1).expand(H, W)
    xs = torch.arange(W, dtype=torch.float64).view(1, W).expand(H, W)
    fmap = torch.stack([ys, xs, 3 * ys - 2 * xs + 1]).unsqueeze(0)  # 1×3×56×56, channel 0 = row coordinate
    i = torch.arange(40, dtype=torch.float64)
    box = (40, 96)  # x1, y1 in pixels -> feature coords (5, 12)
    rois = torch.tensor([[0.0, box[0], box[1], box[0] + 320, box[1] + 320]], dtype=torch.float64)
    # released aligned=False: output cell (u, v) samples (y1/8 + u + 0.5, x1/8 + v + 0.5): half a cell off
    crop = roi_align(fmap, rois, 40, 1 / 8, aligned=False)[0]
    exp_y = (12 + i + 0.5).view(40, 1).expand(40, 40)
    exp_x = (5 + i + 0.5).view(1, 40).expand(40, 40)
    torch.testing.assert_close(crop[0], exp_y)
    torch.testing.assert_close(crop[1], exp_x)
    torch.testing.assert_close(crop[2], 3 * exp_y - 2 * exp_x + 1)
    # aligned=True samples the local grid's own cell centres (y1/8 + u, x1/8 + v): a plain slice
    crop_exact = roi_align(fmap, rois, 40, 1 / 8, aligned=True)[0]
    torch.testing.assert_close(crop_exact, fmap[0, :, 12:52, 5:45])
    # bottom-right corner box: the last released sample (16 + 39.5 = 55.5) lies past the last cell and
    # is clamped to row/column 55 by RoIAlign's border rule
    rois_c = torch.tensor([[0.0, 128, 128, 448, 448]], dtype=torch.float64)
    crop_c = roi_align(fmap, rois_c, 40, 1 / 8)[0, 0, :, 0]
    expected = torch.cat([16 + i[:39] + 0.5, torch.tensor([55.0], dtype=torch.float64)])
    torch.testing.assert_close(crop_c, expected)


@HYP
@given(st.integers(0, 6), st.integers(0, 5), st.integers(1, 4), st.integers(1, 4))
def test_roi_align_integer_box_aligned_is_slice(x0, y0, bw, bh):
    fmap = torch.randn(1, 2, 10, 11, generator=torch.Generator().manual_seed(x0 * 31 + y0))
    rois = torch.tensor([[0.0, x0, y0, x0 + bw, y0 + bh]])
    out = roi_align(fmap, rois, (bh, bw), 1.0, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(out[0], fmap[0, :, y0:y0 + bh, x0:x0 + bw], atol=1e-6, rtol=0)


def test_roi_align_malformed_box_aligned_gives_zeros():
    x = torch.randn(1, 2, 8, 8)
    out = roi_align(x, torch.tensor([[0.0, 20, 20, 4, 4]]), 3, 0.25, aligned=True)
    assert out.shape == (1, 2, 3, 3)
    assert float(out.abs().sum()) == 0.0


def test_roi_align_bad_input():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="boxes must have shape R×5"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="features must have shape"):
        roi_align(x[0], torch.zeros(3, 5), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, torch.zeros(3, 5), (2, 0))


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------


def test_sampler_voc_default_boxes_corners_then_random():
    g = torch.Generator().manual_seed(0)
    boxes = sample_patch_boxes(4, (448, 448), generator=g)
    assert boxes.shape == (4, 6, 4)
    assert boxes.dtype == torch.long
    corners = torch.tensor([[0, 0, 320, 320], [0, 128, 320, 448], [128, 0, 448, 320], [128, 128, 448, 448]])
    assert torch.equal(boxes[:, :4], corners.expand(4, 4, 4))
    rand = boxes[:, 4:]
    assert torch.equal(rand[..., 2:] - rand[..., :2], torch.full((4, 2, 2), 320))
    assert int(rand[..., :2].min()) >= 0
    assert int(rand[..., :2].max()) <= 127
    assert not torch.equal(rand[0], rand[1])  # drawn per image


def test_sampler_offsets_uniform_excluding_last_offset():
    g = torch.Generator().manual_seed(3)
    boxes = sample_patch_boxes(500, (20, 17), num_patches=4, patch_size=12, mode="random", generator=g)
    x1, y1 = boxes[..., 0].flatten(), boxes[..., 1].flatten()
    assert set(y1.tolist()) == set(range(8))  # [0, H - p) = 0..7, never 8
    assert set(x1.tolist()) == set(range(5))  # [0, W - p) = 0..4, never 5
    # roughly uniform: each of the 8 y offsets gets 2000/8 = 250 ± 25 %
    counts = torch.bincount(y1, minlength=8).float()
    assert bool(((counts - 250).abs() < 62).all()), counts


def test_sampler_reproducible_with_generator_and_patch_equals_image_slice():
    imgs = torch.randn(2, 3, 40, 36)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    sal = torch.rand(2, 1, 40, 36) * 0.5
    a = LocalPatchSampler(5, 24, generator=torch.Generator().manual_seed(7))(imgs, labels, sal)
    b = LocalPatchSampler(5, 24, generator=torch.Generator().manual_seed(7))(imgs, labels, sal)
    assert torch.equal(a["boxes"], b["boxes"])
    assert a["patches"].shape == (10, 3, 24, 24)
    assert a["patch_saliency"].shape == (10, 1, 24, 24)
    sal_norm = sal / (sal.amax(dim=(1, 2, 3), keepdim=True) + 1e-10)
    for n in range(10):
        bi, (x1, y1, x2, y2) = n // 5, a["boxes"][n // 5, n % 5].tolist()
        assert torch.equal(a["patches"][n], imgs[bi, :, y1:y2, x1:x2])
        assert torch.equal(a["patch_saliency"][n], sal_norm[bi, :, y1:y2, x1:x2])
        assert torch.equal(a["patch_labels"][n], labels[bi])
        assert boxes_to_roi_format(a["boxes"])[n].tolist() == [float(bi), x1, y1, x2, y2]
    assert float(a["patch_saliency"].max()) > 0.99  # max-normalised per image as released


def test_sampler_modes_grid_and_random():
    g = torch.Generator().manual_seed(0)
    rnd = sample_patch_boxes(2, 448, 4, 320, "random", generator=g)
    assert int(rnd[..., :2].max()) <= 127
    grid4 = sample_patch_boxes(1, 448, 4, 320, "grid")[0]
    assert grid4.tolist() == [[0, 0, 320, 320], [128, 0, 448, 320], [0, 128, 320, 448], [128, 128, 448, 448]]
    grid9 = sample_patch_boxes(1, 448, 9, 320, "grid")[0]
    assert sorted({v for v in grid9[:, 0].tolist()}) == [0, 64, 128]
    assert sorted({v for v in grid9[:, 1].tolist()}) == [0, 64, 128]
    grid6 = sample_patch_boxes(2, (100, 130), 6, 40, "grid")
    assert grid6[0, :, 1].tolist() == [0, 0, 0, 60, 60, 60]
    assert grid6[0, :, 0].tolist() == [0, 45, 90] * 2
    assert torch.equal(grid6[0], grid6[1])
    # a patch as large as the image has the single offset 0
    assert sample_patch_boxes(3, 32, 5, 32, "corners+random", generator=g).abs().sum(-1).eq(64).all()


@HYP
@given(st.integers(1, 3), st.integers(8, 40), st.integers(8, 40), st.integers(1, 8),
       st.sampled_from(["corners+random", "random", "grid"]), st.integers(4, 9))
def test_sampler_boxes_always_inside(batch, H, W, p, mode, n):
    boxes = sample_patch_boxes(batch, (H, W), n, p, mode, generator=torch.Generator().manual_seed(H * W))
    assert boxes.shape == (batch, n, 4)
    assert bool((boxes[..., :2] >= 0).all())
    assert bool((boxes[..., 2] <= W).all())
    assert bool((boxes[..., 3] <= H).all())
    assert bool((boxes[..., 2:] - boxes[..., :2] == p).all())


def test_sampler_presets_and_resize():
    s = LocalPatchSampler.coco()
    assert (s.num_patches, s.patch_size, s.mode) == (4, 320, "random")
    d = LocalPatchSampler()
    assert (d.num_patches, d.patch_size, d.mode) == (6, 320, "corners+random")
    r = LocalPatchSampler(4, 16, resize_to=8)(torch.randn(1, 3, 20, 20), torch.ones(1, 2),
                                              torch.rand(1, 1, 20, 20))
    assert r["patches"].shape == (4, 3, 8, 8)
    assert r["patch_saliency"].shape == (4, 1, 8, 8)
    assert r["boxes"][..., 2:].sub(r["boxes"][..., :2]).eq(16).all()  # boxes stay in global pixels


def test_sampler_bad_input():
    imgs, labels = torch.randn(2, 3, 32, 32), torch.ones(2, 4)
    with pytest.raises(ValueError, match="larger than the image"):
        LocalPatchSampler(4, 40)(imgs, labels)
    with pytest.raises(ValueError, match="larger than the image"):
        sample_patch_boxes(1, (30, 50), 4, 40)
    with pytest.raises(ValueError, match="num_patches must be >= 4 with mode='corners\\+random'"):
        LocalPatchSampler(num_patches=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        LocalPatchSampler(mode="sliding")
    with pytest.raises(ValueError, match=r"saliency must lie in \[0.0, 1.0\]"):
        LocalPatchSampler(4, 16)(imgs, labels, torch.rand(2, 1, 32, 32) * 255)
    with pytest.raises(ValueError, match="saliency must have shape"):
        LocalPatchSampler(4, 16)(imgs, labels, torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="labels has batch size 3"):
        LocalPatchSampler(4, 16)(imgs, torch.ones(3, 4))
    with pytest.raises(ValueError, match="inside the image"):
        crop_local_patches(imgs, torch.tensor([[[20, 20, 36, 36]], [[0, 0, 16, 16]]]), labels)
    with pytest.raises(ValueError, match="squares of the same"):
        crop_local_patches(imgs, torch.tensor([[[0, 0, 16, 8]], [[0, 0, 16, 16]]]), labels)


# ------------------------------------------------------------------------------------------------
# target: every step on hand-built cases
# ------------------------------------------------------------------------------------------------


def _roi(b: int, n: int = 1) -> torch.Tensor:
    r = torch.zeros(n, 5)
    r[:, 0] = b
    r[:, 3:] = 8.0
    return r


def test_target_relu_and_per_map_max_norm():
    cams = torch.tensor([[[[-1.0, 2.0], [4.0, 0.5]], [[3.0, -2.0], [1.5, 6.0]], [[-5.0, -1.0], [-2.0, -3.0]]]])
    t = l2g_target(cams, _roi(0), torch.ones(1, 2), keep_max=False)
    expected = torch.tensor([[[0.0, 0.5], [1.0, 0.125]], [[0.5, 0.0], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(t[0], expected)  # all-negative map -> all zero (eps avoids 0/0)


def test_target_absent_class_zeroing_uses_roi_batch_index_and_never_masks_background():
    cams = torch.ones(2, 4, 1, 1)  # K = 3 fg + bg last
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    rois = torch.cat([_roi(1), _roi(0)])  # patch 0 belongs to image 1, patch 1 to image 0
    t = l2g_target(cams, rois, labels, keep_max=False)
    assert t[0, :, 0, 0].tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0])
    assert t[1, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0])
    t0 = l2g_target(cams[:1], _roi(0), torch.zeros(1, 3), keep_max=False)
    assert t0[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_target_keep_max_keeps_only_the_winner_over_all_channels():
    # after max-norm: class0 [1, .5, .2], class1 [.5, 1, .1], bg [.25, .25, 1]
    cams = torch.tensor([[[[4.0, 2.0, 0.8]], [[1.0, 2.0, 0.2]], [[1.0, 1.0, 4.0]]]])
    t = l2g_target(cams, _roi(0), torch.ones(1, 2))
    assert t[0, :, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # an absent class cannot win: with class0 absent, pixel 0 goes to class1 (0.5 > bg 0.25)
    t2 = l2g_target(cams, _roi(0), torch.tensor([[0.0, 1.0]]))
    assert t2[0, :, 0].tolist() == [[0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # exact ties: "lowest" gives the lowest channel, "highest" the background (last), "argsort" what the
    # release's own call returns (an unstable sort)
    ones = torch.ones(1, 3, 1, 1)
    assert l2g_target(ones, _roi(0), torch.ones(1, 2), keep_max_ties="lowest")[0, :, 0, 0].tolist() == [1, 0, 0]
    assert l2g_target(ones, _roi(0), torch.ones(1, 2), keep_max_ties="highest")[0, :, 0, 0].tolist() == [0, 0, 1]
    first = int(torch.argsort(-ones.reshape(3, 1), dim=0)[0, 0])
    assert l2g_target(ones, _roi(0), torch.ones(1, 2))[0, :, 0, 0].tolist() == [float(k == first) for k in range(3)]


def test_keep_max_tie_rules_on_tie_heavy_maps():
    """Every map whose values saturate normalises to exactly 1 on its plateau: ties are the common case."""
    g = torch.Generator().manual_seed(5)
    cams = torch.randn(6, 21, 10, 10, generator=g).clamp(max=0.3)  # plateaus at the peak
    labels = torch.ones(2, 20)
    rois = torch.tensor([[0.0, 0, 0, 80, 80]] * 3 + [[1.0, 0, 0, 80, 80]] * 3)
    norm = cams.clamp(min=0) / (cams.clamp(min=0).amax(dim=(2, 3), keepdim=True) + 1e-8)
    top = norm.amax(dim=1, keepdim=True)
    tied = ((norm == top) & (top > 0)).sum(1) > 1
    assert float(tied.float().mean()) > 0.2  # many pixels have several maximal channels
    lowest = l2g_target(cams, rois, labels, keep_max_ties="lowest")
    highest = l2g_target(cams, rois, labels, keep_max_ties="highest")
    released = l2g_target(cams, rois, labels)
    # the released rule is the release's call, transcribed
    flat = norm.permute(1, 0, 2, 3).reshape(21, -1)
    win = torch.argsort(-flat, dim=0)[0].reshape(6, 10, 10)
    expected = torch.zeros_like(norm).scatter(1, win[:, None], norm.gather(1, win[:, None]))
    assert torch.equal(released, expected)
    # "lowest" keeps the first maximal channel, "highest" the last one (the background wins its ties)
    assert torch.equal(lowest.argmax(1)[~tied], highest.argmax(1)[~tied])
    first = (norm == top).float().argmax(1)
    last = 20 - (norm == top).float().flip(1).argmax(1)
    assert torch.equal(lowest.gather(1, first[:, None])[:, 0][tied], torch.ones(int(tied.sum())))
    assert torch.equal(highest.gather(1, last[:, None])[:, 0][tied], torch.ones(int(tied.sum())))
    assert bool((highest[:, -1] > 0)[tied].any())
    assert not torch.equal(lowest, highest)
    with pytest.raises(ValueError, match="keep_max_ties"):
        l2g_target(cams, rois, labels, keep_max_ties="first")


def test_target_threshold_and_saliency_fg_and_binary_bg():
    # 1 patch, K = 3 (2 classes + bg last), a 1×4 map. After max-norm and keep-max the winners are
    # px0 class0 = 1, px1 class0 = 0.2, px2 bg = 1, px3 class1 = 1 (class1's max is 2 -> normalised to 1)
    cams = torch.tensor([[[[1.0, 0.2, 0.0, 0.0]], [[0.0, 0.0, 0.0, 2.0]], [[0.0, 0.1, 1.0, 0.0]]]])
    sal = torch.tensor([0.8, 0.9, 0.3, 0.6]).view(1, 1, 1, 4)
    t = l2g_target(cams, _roi(0), torch.ones(1, 2), sal, stride=1)
    # foreground winners -> saliency; background winner -> 1 − saliency (binary bg, VOC)
    torch.testing.assert_close(t[0, :, 0], torch.tensor([[0.8, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6],
                                                         [0.0, 0.0, 0.7, 0.0]]))
    # τ = 0.5 drops the px1 winner (0.2): its target vector becomes all zero
    t_hi = l2g_target(cams, _roi(0), torch.ones(1, 2), sal, stride=1, fg_threshold=0.5)
    torch.testing.assert_close(t_hi[0, :, 0], torch.tensor([[0.8, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6],
                                                            [0.0, 0.0, 0.7, 0.0]]))


def test_target_threshold_is_strict_and_drops_small_winners():
    # class0 map [1, 0.001, 0.0008]: px1 == τ (dropped, strict >), px2 < τ (dropped)
    cams = torch.tensor([[[[1.0, 0.001, 0.0008]], [[0.0, 0.0, 0.0]]]])  # K = 2: 1 class + bg
    t = l2g_target(cams, _roi(0), torch.ones(1, 1), torch.ones(1, 1, 1, 3), stride=1)
    assert t[0, :, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    t_plain = l2g_target(cams, _roi(0), torch.ones(1, 1))  # no saliency: no threshold (plain L_at)
    torch.testing.assert_close(t_plain[0, 0, 0], torch.tensor([1.0, 0.001, 0.0008]))


def test_target_soft_bg_coco():
    # class map normalises to [0.1, 0, 1], bg to [0.5, 1, 0]: bg wins px0 (0.5) and px1 (1), class px2
    cams = torch.tensor([[[[0.1, 0.0, 1.0]], [[0.5, 1.0, 0.0]]]])
    sal = torch.tensor([0.4, 0.1, 0.7]).view(1, 1, 1, 3)
    soft = l2g_target(cams, _roi(0), torch.ones(1, 1), sal, stride=1, bg_target="soft")
    binary = l2g_target(cams, _roi(0), torch.ones(1, 1), sal, stride=1)
    torch.testing.assert_close(soft[0, 1, 0], torch.tensor([0.5 * 0.6, 1.0 * 0.9, 0.0]))  # T·(1 − s)
    torch.testing.assert_close(binary[0, 1, 0], torch.tensor([0.6, 0.9, 0.0]))  # 1[T > τ]·(1 − s)
    torch.testing.assert_close(soft[0, 0, 0], torch.tensor([0.0, 0.0, 0.7]))
    torch.testing.assert_close(binary[0, 0, 0], torch.tensor([0.0, 0.0, 0.7]))


def test_target_nearest_saliency_downsampling_picks_pixel_stride_times_index():
    sal = torch.zeros(1, 1, 16, 16)
    sal[0, 0, 0, 0], sal[0, 0, 0, 8], sal[0, 0, 8, 0], sal[0, 0, 8, 8] = 0.1, 0.2, 0.3, 0.4
    sal[0, 0, 1:8, 1:8] = 1.0  # never sampled by nearest
    cams = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).unsqueeze(0)  # class0 wins everywhere
    t = l2g_target(cams, _roi(0), torch.ones(1, 1), sal, stride=8)
    torch.testing.assert_close(t[0, 0], torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    t_area = l2g_target(cams, _roi(0), torch.ones(1, 1), sal, stride=8, saliency_resize="area")
    assert float(t_area[0, 0, 0, 0]) > 0.5  # area averages the block instead


def test_target_empty_saliency_fallback():
    g = torch.Generator().manual_seed(0)
    cams = torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.ones(1, 3)
    rois = torch.cat([_roi(0), _roi(0)])
    sal = torch.rand(2, 1, 24, 24, generator=g)
    sal[1] = 0.0  # patch 1 has empty saliency
    plain = l2g_target(cams, rois, labels)
    released = l2g_target(cams, rois, labels, sal)
    paper = l2g_target(cams, rois, labels, sal, empty_saliency_fallback=True)
    torch.testing.assert_close(paper[0], released[0])  # non-empty patch unchanged
    torch.testing.assert_close(paper[1], plain[1])  # empty patch -> plain attention target
    assert float(released[1, :3].abs().sum()) == 0.0  # release: foreground target is 0 there
    torch.testing.assert_close(released[1, 3], (plain[1, 3] > 0.001).float())  # bg = M·(1 − 0)


def test_target_bg_channel_first_and_none():
    g = torch.Generator().manual_seed(4)
    cams = torch.randn(3, 5, 4, 4, generator=g)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    rois = torch.stack([_roi(0)[0], _roi(1)[0], _roi(0)[0]])
    sal = torch.rand(3, 1, 32, 32, generator=g)
    last = l2g_target(cams, rois, labels, sal)
    first = l2g_target(torch.roll(cams, 1, dims=1), rois, labels, sal, bg_channel="first")
    torch.testing.assert_close(torch.roll(first, -1, dims=1), last)
    none = l2g_target(cams[:, :4], rois, labels, sal, bg_channel="none")
    assert none.shape == (3, 4, 4, 4)
    # without a bg channel the foreground winner is taken among the classes only
    ref = l2g_target(torch.cat([cams[:, :4], torch.full_like(cams[:, :1], -1.0)], 1), rois, labels, sal)
    torch.testing.assert_close(none, ref[:, :4])


@HYP
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0), st.booleans())
def test_target_invariants(seed, scale, use_sal):
    g = torch.Generator().manual_seed(seed)
    cams = torch.randn(4, 6, 5, 5, generator=g)
    labels = (torch.rand(2, 5, generator=g) > 0.5).float()
    rois = torch.tensor([[0.0, 0, 0, 40, 40], [1, 0, 0, 40, 40], [1, 8, 8, 48, 48], [0, 0, 0, 40, 40]])
    sal = torch.rand(4, 1, 40, 40, generator=g) if use_sal else None
    t = l2g_target(cams, rois, labels, sal)
    assert float(t.min()) >= 0.0
    assert float(t.max()) <= 1.0
    assert int((t > 0).sum(1).max()) <= 1  # keep-max: at most one non-zero channel per pixel
    absent = (1 - labels)[rois[:, 0].long()]  # absent classes get no target
    assert float((t[:, :5] * absent[:, :, None, None]).abs().sum()) == 0.0
    if not use_sal:  # invariant to a positive rescaling of the local maps (max-normalised); keep-max off
        # because exact ties (two maps peaking at one pixel) may break differently after rounding
        torch.testing.assert_close(l2g_target(cams * scale, rois, labels, keep_max=False),
                                   l2g_target(cams, rois, labels, keep_max=False), atol=1e-5, rtol=0)
    perm = torch.tensor([2, 0, 3, 1])  # patches are independent: permuting them permutes the target
    tp = l2g_target(cams[perm], rois[perm], labels, None if sal is None else sal[perm])
    torch.testing.assert_close(tp, t[perm])


def test_target_is_detached():
    cams = torch.randn(2, 3, 2, 2, requires_grad=True)
    t = l2g_target(cams, torch.cat([_roi(0), _roi(0)]), torch.ones(1, 2))
    assert not t.requires_grad


# ------------------------------------------------------------------------------------------------
# loss: against an independent transcription of the release's training step
# ------------------------------------------------------------------------------------------------


def _release_step_loss(feat, feat_local, boxes, label, crop_sals, n_per_img, bg_thr, kd, coco):
    """The released L2G transfer (``scripts/train_l2g_sal_voc.py``) transcribed literally: loop over images,
    argsort keep-max, torchvision RoIAlign.
    """
    ops = _tv()
    t = feat_local.clone().detach()
    t[t < 0] = 0
    t = t / (t.amax(dim=(2, 3), keepdim=True) + 1e-8)
    for i in range(label.shape[0]):
        absent = torch.nonzero(label[i] == 0)[:, 0]
        t[i * n_per_img:(i + 1) * n_per_img, absent] = 0
    n, c, h, w = t.shape
    flat = t.permute(1, 0, 2, 3).reshape(c, -1)
    top = torch.argsort(-flat, dim=0)[0]
    flat = torch.eye(c, dtype=flat.dtype)[top].t() * flat
    t = flat.reshape(c, n, h, w).permute(1, 0, 2, 3).clone()
    keep = (t > bg_thr).float()
    s = F.interpolate(crop_sals, (h, w))
    bg_src = t[:, -1] if coco else keep[:, -1]
    t[:, :-1] = keep[:, :-1] * s.repeat(1, c - 1, 1, 1)
    t[:, -1] = bg_src * (1 - s).squeeze(1)
    probs = F.softmax(ops.roi_align(feat, boxes, (h, w), 1 / 8.0), dim=1)
    return torch.nn.MSELoss()(probs, t) * kd


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("coco", [False, True])
def test_loss_matches_release_transcription(coco, ties):
    g = torch.Generator().manual_seed(11)
    B, N, C = 2, 6 if not coco else 4, 20
    feat = torch.randn(B, C + 1, 56, 56, generator=g)
    feat_local = torch.randn(B * N, C + 1, 40, 40, generator=g) * 3
    if ties:  # saturated maps: plateaus at each map's peak, many pixels with several maximal channels
        feat_local = feat_local.clamp(max=1.0)
    labels = (torch.rand(B, C, generator=g) < 0.2).float()
    labels[:, 0] = 1
    crop_sals = torch.rand(B * N, 1, 320, 320, generator=g)
    mode = "random" if coco else "corners+random"
    rois = boxes_to_roi_format(sample_patch_boxes(B, 448, N, 320, mode, generator=g))
    l2g = LocalToGlobalTransfer.coco(num_classes=C) if coco else LocalToGlobalTransfer(num_classes=C)
    ours = l2g(feat, feat_local, rois, labels, crop_sals)
    ref = _release_step_loss(feat, feat_local, rois, labels, crop_sals, N, 0.1 if coco else 0.001,
                             30 if coco else 10, coco)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    out = l2g.transfer(feat, feat_local, rois, labels, crop_sals)
    torch.testing.assert_close(out.loss, ours)
    assert out.target.shape == out.global_probs.shape == (B * N, C + 1, 40, 40)


def test_loss_hand_values_mean_over_all_elements():
    K = 4
    g_logits = torch.zeros(1, K, 3, 3)  # uniform softmax 1/K everywhere
    cams = torch.full((2, K, 2, 2), -1.0)  # all-negative -> all-zero target
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [0.0, 8, 8, 24, 24]])
    labels = torch.ones(1, K - 1)
    loss = l2g_loss(g_logits, cams, rois, labels)
    torch.testing.assert_close(loss, torch.tensor(10.0 / K**2))  # zero-target pixels still count
    loss3 = l2g_loss(g_logits, cams, rois, labels, weight=3.0)
    torch.testing.assert_close(loss3, torch.tensor(3.0 / K**2))
    # one patch with target 1 on channel 0 everywhere: (1 − 1/K)² on 1/K of its elements
    cams2 = cams.clone()
    cams2[0, 0] = 1.0
    loss2 = l2g_loss(g_logits, cams2, rois, labels, keep_max=False)
    exp = 10.0 * (7 * (1 / K) ** 2 + (1 - 1 / K) ** 2) / 8
    torch.testing.assert_close(loss2, torch.tensor(exp))


def test_loss_gradient_flows_only_into_global_logits():
    g = torch.Generator().manual_seed(5)
    glob = torch.randn(2, 4, 12, 12, generator=g, requires_grad=True)
    cams = torch.randn(4, 4, 5, 5, generator=g, requires_grad=True)
    sal = torch.rand(4, 1, 40, 40, generator=g, requires_grad=True)
    rois = torch.tensor([[0.0, 0, 0, 40, 40], [0, 8, 8, 48, 48], [1, 0, 0, 40, 40], [1, 0, 16, 40, 56]])
    loss = LocalToGlobalTransfer(3)(glob, cams, rois, torch.tensor([[1.0, 0, 1], [0, 1, 0]]), sal)
    loss.backward()
    assert cams.grad is None
    assert sal.grad is None
    assert glob.grad is not None
    assert float(glob.grad.abs().sum()) > 0
    # global cells outside every box get no gradient (aligned=False samples up to +1 cell)
    assert float(glob.grad[0, :, 8:, :].abs().sum()) == 0.0
    assert float(glob.grad[0, :, :, 8:].abs().sum()) == 0.0
    # cells covered by a box's samples (rows/cols 0.5..4.5 and 1.5..5.5) do get gradient
    assert float(glob.grad[0, :, :6, :6].abs().min()) > 0
    assert float(glob.grad[0, :, 1:7, 1:7].abs().min()) > 0


@pytest.mark.parametrize("aligned", [False, True])
def test_loss_gradcheck_float64(aligned):
    g = torch.Generator().manual_seed(6)
    glob = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    cams = torch.randn(3, 3, 2, 2, dtype=torch.float64, generator=g)
    sal = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=g)
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [1, 3, 5, 19, 21], [1, 8, 6, 24, 22]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)

    def fn(x):
        return l2g_loss(x, cams, rois, labels, sal, stride=4, roi_aligned=aligned)

    assert fn(glob).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (glob,), eps=1e-6, atol=1e-7)


def test_loss_roi_aligned_flag_changes_sampling():
    g = torch.Generator().manual_seed(8)
    glob = torch.randn(1, 3, 10, 10, generator=g)
    cams = torch.randn(1, 3, 4, 4, generator=g)
    rois = torch.tensor([[0.0, 16, 16, 48, 48]])
    labels = torch.ones(1, 2)
    a = l2g_transfer(glob, cams, rois, labels, roi_aligned=True)
    b = l2g_transfer(glob, cams, rois, labels)
    torch.testing.assert_close(a.global_probs[0], torch.softmax(glob[0, :, 2:6, 2:6], 0))
    assert not torch.allclose(a.global_probs, b.global_probs)


def test_loss_dtype_and_autocast():
    g = torch.Generator().manual_seed(9)
    glob = torch.randn(1, 3, 6, 6, generator=g)
    cams = torch.randn(1, 3, 4, 4, generator=g)
    rois = torch.tensor([[0.0, 0, 0, 32, 32]])
    labels = torch.ones(1, 2)
    ref = l2g_loss(glob, cams, rois, labels)
    lb = l2g_loss(glob.bfloat16(), cams.bfloat16(), rois, labels)
    assert lb.dtype == torch.float32
    torch.testing.assert_close(lb, ref, atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la = l2g_loss(glob, cams, rois, labels)
    assert la.dtype == torch.float32
    torch.testing.assert_close(la, ref)
    l64 = l2g_loss(glob.double(), cams.double(), rois.double(), labels)
    assert l64.dtype == torch.float64
    torch.testing.assert_close(l64.float(), ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(12)
    imgs, sal = torch.randn(2, 3, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    views = LocalPatchSampler(5, 40, generator=torch.Generator().manual_seed(0))(imgs, labels, sal)
    glob = torch.randn(2, 4, 8, 8, generator=g)
    cams = torch.randn(10, 4, 5, 5, generator=g)
    m = LocalToGlobalTransfer(3)
    ref = m(glob, cams, views["boxes"], labels, views["patch_saliency"])
    views_c = LocalPatchSampler(5, 40, generator=torch.Generator().manual_seed(0))(
        imgs.cuda(), labels.cuda(), sal.cuda())
    assert views_c["patches"].is_cuda
    assert views_c["boxes"].is_cuda
    torch.testing.assert_close(views_c["patches"].cpu(), views["patches"])
    out = m(glob.cuda(), cams.cuda(), views_c["boxes"], labels.cuda(), views_c["patch_saliency"])
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-5)


def test_module_defaults_are_released_voc_and_coco_preset():
    m = LocalToGlobalTransfer(20)
    assert (m.stride, m.weight, m.fg_threshold, m.bg_channel, m.keep_max, m.bg_target, m.roi_aligned,
            m.empty_saliency_fallback, m.eps, m.saliency_resize, m.sampling_ratio, m.keep_max_ties) == (
        8, 10.0, 0.001, "last", True, "binary", False, False, 1e-8, "nearest", -1, "argsort")
    c = LocalToGlobalTransfer.coco()
    assert (c.num_classes, c.weight, c.fg_threshold, c.bg_target) == (80, 30.0, 0.1, "soft")
    assert LocalToGlobalTransfer.coco(weight=15.0).weight == 15.0


def test_module_compiles_eager_backend():
    m = LocalToGlobalTransfer(2, stride=4, sampling_ratio=1)
    glob = torch.randn(1, 3, 6, 6, requires_grad=True)
    cams = torch.randn(2, 3, 3, 3)
    rois = torch.tensor([[0.0, 0, 0, 12, 12], [0, 8, 8, 20, 20]])
    labels = torch.tensor([[1.0, 0.0]])
    compiled = torch.compile(m, backend="eager")
    torch.testing.assert_close(compiled(glob, cams, rois, labels), m(glob, cams, rois, labels))


def test_loss_bad_input():
    glob = torch.randn(2, 4, 6, 6)
    cams = torch.randn(3, 4, 2, 2)
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [1, 0, 0, 16, 16], [1, 8, 8, 24, 24]])
    labels = torch.ones(2, 3)
    m = LocalToGlobalTransfer(3)
    bad_rois = rois.clone()
    bad_rois[2, 0] = 2
    with pytest.raises(ValueError, match=r"boxes\[:, 0\] must hold integer batch indices in \[0, 1\]"):
        m(glob, cams, bad_rois, labels)
    bad_rois[2, 0] = 0.5
    with pytest.raises(ValueError, match="integer batch indices"):
        m(glob, cams, bad_rois, labels)
    with pytest.raises(ValueError, match="boxes has 2 rows but local_cams has 3 patches"):
        m(glob, cams, rois[:2], labels)
    with pytest.raises(ValueError, match="local_cams has 4 channels but labels has 5 classes"):
        l2g_loss(glob, cams, rois, torch.ones(2, 5))
    with pytest.raises(ValueError, match="labels has 5 classes, expected 3"):
        m(glob, cams, rois, torch.ones(2, 5))
    with pytest.raises(ValueError, match="global_logits has 5 channels but local_cams has 4"):
        m(torch.randn(2, 5, 6, 6), cams, rois, labels)
    with pytest.raises(ValueError, match="same batch size"):
        m(torch.randn(3, 4, 6, 6), cams, rois, labels)
    with pytest.raises(ValueError, match=r"patch_saliency must lie in \[0.0, 1.0\]"):
        m(glob, cams, rois, labels, torch.rand(3, 1, 16, 16) + 0.5)
    with pytest.raises(ValueError, match="patch_saliency must be 16×16"):
        m(glob, cams, rois, labels, torch.rand(3, 1, 20, 20))
    with pytest.raises(ValueError, match="patch_saliency must have shape"):
        m(glob, cams, rois, labels, torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="multi-hot"):
        m(glob, cams, rois, labels * 0.5)
    nan_cams = cams.clone()
    nan_cams[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="local_cams contains non-finite"):
        m(glob, nan_cams, rois, labels)
    with pytest.raises(ValueError, match="bg_channel must be one of"):
        LocalToGlobalTransfer(3, bg_channel="middle")
    with pytest.raises(ValueError, match="bg_target must be one of"):
        l2g_target(cams, rois, labels, bg_target="hard")
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        LocalToGlobalTransfer(0)
    with pytest.raises(TypeError, match=r"local_cams must be a torch.Tensor"):
        m(glob, cams.numpy(), rois, labels)


# ------------------------------------------------------------------------------------------------
# docs: docstring examples and the training-loop example
# ------------------------------------------------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(lg, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10
    assert result.failed == 0


def test_example_training_step_runs():
    ns = runpy.run_path(str(ROOT / "examples" / "l2g_in_your_loop.py"), run_name="l2g_example")
    history = ns["main"](steps=3)
    assert len(history) == 3
    for rec in history:
        assert torch.isfinite(torch.tensor([rec["loss_cls"], rec["loss_kt"]])).all()
        assert rec["loss_kt"] > 0
    # the transfer loss trains only the global network, the classification loss only the local one
    assert history[-1]["global_grad_from_kt"] > 0
    assert history[-1]["local_grad_from_kt"] == 0.0


def test_boxes_per_image_equal_roi_rows():
    """B×N×4 per-image boxes (what the sampler gives) and the R×5 RoIAlign rows are the same boxes."""
    g = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[[0, 0, 16, 16], [8, 8, 24, 24]], [[4, 0, 20, 16], [0, 8, 16, 24]]])
    glob, cams = torch.randn(2, 4, 6, 6, generator=g), torch.randn(4, 4, 2, 2, generator=g)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    m = LocalToGlobalTransfer(3)
    a = m.transfer(glob, cams, boxes, labels)
    b = m.transfer(glob, cams, boxes_to_roi_format(boxes), labels)
    assert torch.equal(a.target, b.target)
    assert torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError, match=r"boxes must have shape B×N×4 = \(2, 2, 4\)"):
        m(glob, cams, boxes[:, :1], labels)
