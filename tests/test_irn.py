"""Tests for wsss_blocks.irn: parity with the released IRN functions, hand-computed cases, invariants, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.crf import pydensecrf_available
from wsss_blocks.irn import (
    AffinityTargets,
    BoundaryAffinityLoss,
    ConfidentSeedMask,
    PathIndex,
    RandomWalk,
    _walk_weights,
    affinity_targets,
    boundary_affinity_loss,
    boundary_affinity_loss_detailed,
    boundary_to_affinity,
    confident_seed_mask,
    downsample_mask,
    irn_multiscale_cams,
    path_index,
    path_offsets,
    random_walk,
    random_walk_mask,
    strided_size,
)

# The transcription of the released functions lives in benchmarks/irn_baseline.py (shared with the benchmark).
_spec = importlib.util.spec_from_file_location(
    "irn_baseline", Path(__file__).resolve().parents[1] / "benchmarks" / "irn_baseline.py")
assert _spec is not None
assert _spec.loader is not None
release = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(release)

needs_pydensecrf = pytest.mark.skipif(not pydensecrf_available(), reason="needs pydensecrf (the crf extra)")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _voc_mask(shape, seed=0, classes=(0, 3, 7), ignore_frac=0.2):
    """Blocky VOC-like masks (few classes, 255 patches) so that every pair kind occurs."""
    g = _gen(seed)
    b, h, w = shape
    coarse = torch.tensor(classes)[torch.randint(0, len(classes), (b, 1, (h + 3) // 4, (w + 3) // 4), generator=g)]
    m = F.interpolate(coarse.float(), size=(h, w), mode="nearest").long()[:, 0]
    ign = torch.rand(b, h, w, generator=g) < ignore_frac
    return m.masked_fill(ign, 255)


# --------------------------------------------------------------------------------------------------
# path index
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("radius", "size"), [(5, (20, 30)), (10, (40, 48)), (3, (7, 9))])
def test_path_index_equals_release(radius, size):
    ref = release.ReleasePathIndex(radius, size)
    pi = PathIndex(radius, size)
    assert pi.radius_floor == ref.radius_floor
    np.testing.assert_array_equal(pi.offsets.numpy(), ref.search_dst)
    np.testing.assert_array_equal(pi.src_indices.numpy(), ref.src_indices)
    np.testing.assert_array_equal(pi.dst_indices.numpy(), ref.dst_indices)
    ours = pi.path_indices()
    assert len(ours) == len(ref.path_indices)
    for a, b in zip(ours, ref.path_indices):
        np.testing.assert_array_equal(a.numpy(), b)
    # the padded path table: each path's own points, then the destination repeated
    flat_paths = [p for g in ref.search_paths for p in g]
    for d, p in enumerate(flat_paths):
        n = int(pi.path_lengths[d])
        assert n == len(p)
        np.testing.assert_array_equal(pi.path_offsets[d, :n].numpy(), p)
        assert (pi.path_offsets[d, n:] == pi.path_offsets[d, 0]).all()


def test_path_counts_and_destination_first():
    assert len(path_offsets(5)) == 34
    assert len(path_offsets(10)) == 152
    pi = PathIndex(10, (128, 128))
    assert tuple(pi.dst_indices.shape) == (152, 13090)
    assert pi.num_sources == 119 * 110
    lengths = sorted(set(pi.path_lengths.tolist()))
    assert len(lengths) == 20
    assert lengths[0] == 2
    assert lengths[-1] == 22
    lengths5 = sorted(set(PathIndex(5, (20, 20)).path_lengths.tolist()))
    assert len(lengths5) == 9
    assert lengths5[0] == 2
    assert lengths5[-1] == 11
    # first path point is the destination, the last real point is the source (0, 0)
    for d in range(pi.num_directions):
        n = int(pi.path_lengths[d])
        assert pi.path_offsets[d, 0].tolist() == pi.offsets[d].tolist()
        assert pi.path_offsets[d, n - 1].tolist() == [0, 0]
    # the half disc: dy >= 0, every unordered pair once
    offs = {tuple(o) for o in pi.offsets.tolist()}
    assert all(dy > 0 or dx > 0 for dy, dx in offs)
    assert not any((-dy, -dx) in offs for dy, dx in offs)


def test_path_index_cache_and_device_copy():
    assert path_index(5, (12, 20)) is path_index(5, (12, 20))
    pi = PathIndex(4, (9, 11)).to("cpu")
    assert "directions=" in repr(pi)


def test_path_lengths_hand_checked():
    # r = 2: (0,1),(1,0) are 2-point paths; the diagonals (1,-1),(1,1) pass through 4 grid points
    pi = PathIndex(2, (3, 4))
    assert pi.offsets.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert pi.path_lengths.tolist() == [2, 2, 4, 4]
    assert pi.path_offsets[3].tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]


# --------------------------------------------------------------------------------------------------
# affinity targets
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("radius", "size"), [(10, (32, 36)), (5, (16, 21))])
def test_affinity_targets_equal_release(radius, size):
    masks = _voc_mask((3, *size), seed=radius)
    ref_pi = release.ReleasePathIndex(radius, size)
    t = affinity_targets(masks, radius)
    for b in range(3):
        bg, fg, neg = release.release_affinity_labels(masks[b].numpy().astype(np.uint8), ref_pi.src_indices,
                                                      ref_pi.dst_indices)
        assert torch.equal(t.bg_pos[b].float(), bg)
        assert torch.equal(t.fg_pos[b].float(), fg)
        assert torch.equal(t.neg[b].float(), neg)
    assert t.bg_pos.any()
    assert t.fg_pos.any()
    assert t.neg.any()
    assert not (t.bg_pos & t.fg_pos).any()
    assert not ((t.bg_pos | t.fg_pos) & t.neg).any()


def test_affinity_targets_accept_path_index_and_coco_labels():
    m = torch.full((1, 4, 6), 80, dtype=torch.long)
    m[:, :, 3:] = 0
    t = affinity_targets(m, PathIndex(2, (4, 6)))
    # labels >= 21 are valid here (the release's "< 21" would drop them): direction (0, 1) crosses 80 | 0
    assert bool(t.fg_pos.any())
    assert bool(t.neg.any())
    with pytest.raises(ValueError, match="PathIndex was built for"):
        affinity_targets(m, PathIndex(2, (5, 6)))


# --------------------------------------------------------------------------------------------------
# boundary -> affinity and the loss
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("radius", "size"), [(10, (24, 30)), (5, (13, 17))])
def test_boundary_to_affinity_equals_release_values_and_gradients(radius, size):
    edge = torch.rand(2, 1, *size, generator=_gen(1), dtype=torch.float64)
    ref_pi = release.ReleasePathIndex(radius, size)
    e1 = edge.clone().requires_grad_(True)
    e2 = edge.clone().requires_grad_(True)
    ours = boundary_to_affinity(e1, radius)
    ref = release.release_edge_to_affinity(e2, ref_pi.path_indices)
    assert torch.equal(ours, ref)  # a max of the same values: exact
    w = torch.rand(ref.shape, generator=_gen(2), dtype=torch.float64)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    # gradient routed to the same argmax pixels (accumulated in another order: float rounding only)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-13, atol=1e-13)


def test_boundary_to_affinity_ties_take_first_path_point_like_max_pool():
    edge = torch.zeros(1, 1, 4, 6, dtype=torch.float64)
    edge[0, 0, 1, 2:5] = 0.5  # equal values along a horizontal path
    e1, e2 = edge.clone().requires_grad_(True), edge.clone().requires_grad_(True)
    boundary_to_affinity(e1, 3).sum().backward()
    release.release_edge_to_affinity(e2, release.ReleasePathIndex(3, (4, 6)).path_indices).sum().backward()
    assert torch.equal(e1.grad, e2.grad)


def test_boundary_affinity_loss_equals_release():
    size, radius = (24, 28), 10
    logits = torch.randn(3, 1, *size, generator=_gen(3), dtype=torch.float64) * 2
    masks = _voc_mask((3, *size), seed=4)
    ref_pi = release.ReleasePathIndex(radius, size)
    labs = [release.release_affinity_labels(m.numpy().astype(np.uint8), ref_pi.src_indices, ref_pi.dst_indices)
            for m in masks]
    bg, fg, neg = (torch.stack([x[i] for x in labs]).double() for i in range(3))
    l1 = logits.clone().requires_grad_(True)
    l2 = logits.clone().requires_grad_(True)
    ours = boundary_affinity_loss(l1, masks, radius)
    ref = release.release_affinity_loss(l2, ref_pi, bg, fg, neg)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(l1.grad, l2.grad, rtol=1e-10, atol=1e-14)
    # precomputed targets give the same loss; the module too
    t = affinity_targets(masks, radius)
    torch.testing.assert_close(boundary_affinity_loss(logits, t, radius), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(BoundaryAffinityLoss()(logits, masks), ref.detach(), rtol=1e-12, atol=1e-12)


def test_loss_terms_hand_checked():
    # 2×4 grid, r = 2: boundary logit 0 everywhere -> every affinity is 0.5
    seeds = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    terms = boundary_affinity_loss_detailed(torch.zeros(1, 1, 2, 4, dtype=torch.float64), seeds, 2)
    # pairs from sources (0, 1), (0, 2): bg (0,1)->(1,1), (0,1)->(1,0); fg (0,2)->(0,3), (1,2), (1,3);
    # neg (0,1)->(0,2), (0,2)->(1,1), (0,1)->(1,2)
    assert float(terms.bg_pos) == pytest.approx(-np.log(0.5 + 1e-5) * 2 / (2 + 1e-5), rel=1e-9)
    assert float(terms.neg) == pytest.approx(-np.log(0.5 + 1e-5) * 3 / (3 + 1e-5), rel=1e-9)
    assert float(terms.fg_pos) == pytest.approx(-np.log(0.5 + 1e-5) * 3 / (3 + 1e-5), rel=1e-9)
    assert float(terms.total) == pytest.approx((float(terms.bg_pos) / 2 + float(terms.fg_pos) / 2
                                                + float(terms.neg)) / 2)
    # a perfect boundary: affinity 1 inside regions and 0 across -> loss near 0
    b = torch.full((1, 1, 2, 4), -30.0, dtype=torch.float64)
    b[..., 1] = 30.0  # boundary column between the regions (on the background side)
    t2 = boundary_affinity_loss_detailed(b, seeds, 2)
    assert float(t2.neg) < 1e-4


def test_boundary_affinity_loss_gradcheck():
    logits = torch.randn(2, 1, 5, 7, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    masks = _voc_mask((2, 5, 7), seed=6, ignore_frac=0.1)
    t = affinity_targets(masks, 3)
    assert torch.autograd.gradcheck(lambda x: boundary_affinity_loss(x, t, 3), (logits,), eps=1e-6, atol=1e-6)


def test_loss_dtype_and_half_inputs():
    logits = torch.randn(1, 1, 8, 10, generator=_gen(7))
    seeds = _voc_mask((1, 8, 10), seed=8)
    full = boundary_affinity_loss(logits, seeds, 3)
    half = boundary_affinity_loss(logits.bfloat16(), seeds, 3)
    assert full.dtype == torch.float32
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), rel=2e-2)


# --------------------------------------------------------------------------------------------------
# random walk
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_random_walk_equals_release(method, dtype, tol):
    h, w = 12, 16
    cams = torch.rand(2, 3, h, w, generator=_gen(9), dtype=dtype)
    edge = torch.rand(2, 1, h, w, generator=_gen(10), dtype=dtype) ** 3
    ours = random_walk(cams, edge, method=method)
    for b in range(2):
        ref = release.release_propagate_to_edge(cams[b], edge[b])[:, 0]
        scale = float(ref.abs().max())
        assert float((ours[b] - ref).abs().max()) <= tol * max(scale, 1.0)


def test_random_walk_labels_pack_present_classes_only():
    cams = torch.rand(3, 5, 9, 11, generator=_gen(11))
    edge = torch.rand(3, 1, 9, 11, generator=_gen(12)) ** 2
    labels = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    full = random_walk(cams, edge, exp_times=3)
    packed = random_walk(cams, edge, labels, exp_times=3)
    torch.testing.assert_close(packed, full * labels[:, :, None, None], rtol=0, atol=1e-6)


def test_random_walk_exp_times_zero_is_one_local_average_hand_checked():
    # zero boundary, beta = 1: one step of T averages each pixel's disc neighbourhood (self included)
    h, w, r = 11, 11, 3
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[0, 0, 5, 5] = 1.0
    out = random_walk(x, torch.zeros(1, 1, h, w, dtype=torch.float64), radius=r, beta=1.0, exp_times=0)
    disc = [(dy, dx) for dy in range(-r + 1, r) for dx in range(-r + 1, r) if dy * dy + dx * dx < r * r]
    assert len(disc) == 2 * len(path_offsets(r)) + 1 == 25
    for y in range(h):
        for xx in range(w):
            nb = sum(1 for dy, dx in disc if 0 <= y + dy < h and 0 <= xx + dx < w)
            near = (y - 5) ** 2 + (xx - 5) ** 2 < r * r
            assert float(out[0, 0, y, xx]) == pytest.approx(1.0 / nb if near else 0.0, abs=1e-15)


def test_random_walk_boundary_wall_blocks_propagation():
    cams = torch.zeros(1, 2, 10, 12)
    cams[0, 0, 2, 1] = 1.0
    cams[0, 1, 7, 10] = 1.0
    wall = torch.zeros(1, 1, 10, 12)
    wall[..., :, 5] = 1.0
    out = random_walk(cams, wall)
    assert float(out[0, 0, :, 5:].abs().max()) == 0.0
    assert float(out[0, 0, :, :5].min()) > 0
    assert float(out[0, 1, :, :6].abs().max()) == 0.0
    assert float(out[0, 1, :, 6:].min()) > 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(3, 9), w=st.integers(3, 9), radius=st.integers(2, 5),
       beta=st.floats(0.5, 12.0))
def test_transition_matrix_is_column_stochastic_and_walk_is_convex(seed, h, w, radius, beta):
    g = _gen(seed)
    edge = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    weights, offsets = _walk_weights(edge[:, 0], radius, beta)
    assert len(offsets) == 2 * len(path_offsets(radius)) + 1
    assert (0, 0) in offsets
    colsum = weights.sum(1)
    # symmetry of A: the weight of (j -> j + d) equals that of (j + d -> j)
    k_of = {o: k for k, o in enumerate(offsets)}
    for (dy, dx), k in k_of.items():
        kb = k_of[(-dy, -dx)]
        if abs(dy) >= h or abs(dx) >= w:
            assert float(weights[0, k].abs().max()) == 0.0  # the pair never fits
            continue
        a = weights[0, k, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        b = weights[0, kb, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    trans = weights / colsum[:, None]
    torch.testing.assert_close(trans.sum(1), torch.ones(1, h, w, dtype=torch.float64), rtol=0, atol=1e-12)
    # constants are fixed points (damping off); outputs stay in the seeds' convex hull
    const = torch.full((1, 2, h, w), 0.37, dtype=torch.float64)
    out = random_walk(const, edge, radius=radius, beta=beta, exp_times=2, damp_seeds=False)
    torch.testing.assert_close(out, const, rtol=0, atol=1e-12)
    x = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64)
    out = random_walk(x, edge, radius=radius, beta=beta, exp_times=3)
    damped = x * (1 - edge)
    lo, hi = damped.amin(dim=(2, 3)), damped.amax(dim=(2, 3))
    assert bool((out.amin(dim=(2, 3)) >= lo - 1e-12).all() and (out.amax(dim=(2, 3)) <= hi + 1e-12).all())


def test_random_walk_sparse_equals_dense_and_shifted_fallback():
    from wsss_blocks.irn import _walk_shifted, _walk_sparse

    cams = torch.rand(2, 2, 7, 9, generator=_gen(13), dtype=torch.float64)
    edge = torch.rand(2, 1, 7, 9, generator=_gen(14), dtype=torch.float64)
    sp = random_walk(cams, edge, exp_times=5, method="sparse")
    de = random_walk(cams, edge, exp_times=5, method="dense")
    torch.testing.assert_close(sp, de, rtol=0, atol=1e-12)
    weights, offsets = _walk_weights(edge[:, 0], 5, 10.0)
    trans = weights / weights.sum(1, keepdim=True)
    x = cams * (1 - edge)
    torch.testing.assert_close(_walk_shifted(x, trans, offsets, 5, 4), _walk_sparse(x, trans, offsets, 5, 4),
                               rtol=0, atol=1e-12)


def test_random_walk_sparse_gradients_equal_dense_gradients():
    cams = torch.rand(1, 2, 6, 7, generator=_gen(21), dtype=torch.float64)
    edge = torch.rand(1, 1, 6, 7, generator=_gen(22), dtype=torch.float64)
    w = torch.rand(1, 2, 6, 7, generator=_gen(23), dtype=torch.float64)
    grads = []
    for method in ("sparse", "dense"):
        x = cams.clone().requires_grad_(True)
        (random_walk(x, edge, exp_times=3, method=method) * w).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    cams = torch.rand(2, 3, 12, 16, generator=_gen(24))
    edge = torch.rand(2, 1, 12, 16, generator=_gen(25)) ** 2
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(random_walk(cams.cuda(), edge.cuda(), labels.cuda()).cpu(),
                               random_walk(cams, edge, labels), rtol=1e-4, atol=1e-5)
    logits = torch.randn(2, 1, 24, 28, generator=_gen(26))
    seeds = _voc_mask((2, 24, 28), seed=27)
    torch.testing.assert_close(boundary_affinity_loss(logits.cuda(), seeds.cuda()).cpu(),
                               boundary_affinity_loss(logits, seeds), rtol=1e-5, atol=1e-6)


def test_random_walk_gradients_and_dtypes():
    cams = torch.rand(1, 2, 6, 7, generator=_gen(15), requires_grad=True)
    edge = torch.rand(1, 1, 6, 7, generator=_gen(16))
    out = random_walk(cams, edge, exp_times=2)
    out.sum().backward()
    assert cams.grad is not None
    assert float(cams.grad.abs().sum()) > 0
    assert random_walk(cams.detach().half(), edge.half(), exp_times=1).dtype == torch.float16
    assert random_walk(cams.detach().double(), edge.double(), exp_times=1).dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# semantic labels
# --------------------------------------------------------------------------------------------------
def test_random_walk_mask_equals_release_make_sem_seg_labels():
    H, W = 45, 61  # strided 12 × 16
    h, w = strided_size((H, W), 4)
    C = 6
    labels = torch.zeros(2, C)
    labels[0, [1, 4]] = 1
    labels[1, [2]] = 1
    cams = torch.rand(2, C, h, w, generator=_gen(17)) * labels[:, :, None, None]
    edge = torch.rand(2, 1, h, w, generator=_gen(18)) ** 2
    ours = RandomWalk()(cams, edge, labels, (H, W))
    for b in range(2):
        idx = labels[b].nonzero()[:, 0]
        keys = np.pad(idx.numpy() + 1, (1, 0), mode="constant")
        ref = release.release_sem_seg_labels(cams[b, idx], keys, edge[b], (H, W))
        np.testing.assert_array_equal(ours[b].numpy(), ref)
    assert set(ours.unique().tolist()) <= {0, 2, 5, 3}


def test_random_walk_mask_hand_checked_and_edge_cases():
    walked = torch.tensor([[[[1.0, 0.2]], [[0.5, 0.3]]]])
    both = torch.ones(1, 2)
    assert random_walk_mask(walked, both, scale_factor=1.0).tolist() == [[[1, 2]]]  # 0.3 >= 0.25 wins over bg
    assert random_walk_mask(walked, both, scale_factor=1.0, bg_score=0.31).tolist() == [[[1, 0]]]
    # absent class 0 can never win, and is not part of the global maximum (0.5 becomes 1.0)
    only1 = torch.tensor([[0.0, 1.0]])
    assert random_walk_mask(walked, only1, scale_factor=1.0, bg_score=0.61).tolist() == [[[2, 0]]]
    # per-class normalisation: class 1 divided by its own max 0.5 (0.3 -> 0.6), class 0 by 1.0
    assert random_walk_mask(walked, both, scale_factor=1.0, bg_score=0.5).tolist() == [[[1, 0]]]
    assert random_walk_mask(walked, both, scale_factor=1.0, bg_score=0.5, normalize="per_class").tolist() == [
        [[1, 2]]]
    # all-zero walk: background (the release divides 0 by 0)
    assert random_walk_mask(torch.zeros(1, 2, 1, 2), both, scale_factor=1.0).tolist() == [[[0, 0]]]
    out = random_walk_mask(walked, both, (3, 5))
    assert out.shape == (1, 3, 5)
    assert out.dtype == torch.int64


# --------------------------------------------------------------------------------------------------
# IR labels (confident seed masks)
# --------------------------------------------------------------------------------------------------
def test_confident_seed_mask_without_crf_hand_checked():
    cams = torch.tensor([[[[0.9, 0.2, 0.01, 0.31]], [[0.4, 0.25, 0.04, 0.31]], [[0.99, 0.99, 0.99, 0.99]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 2 is absent: never wins
    out = confident_seed_mask(cams, labels, crf=None)
    # px0: class 0 (0.9) > 0.3; px1: max 0.25 < 0.3 but > 0.05 -> ignore; px2: < 0.05 -> bg;
    # px3: tie 0.31 / 0.31 -> first class
    assert out.tolist() == [[[1, 255, 0, 1]]]
    assert ConfidentSeedMask(crf=None, ignore_index=254)(cams, labels).tolist() == [[[1, 254, 0, 1]]]
    # no class at all: confident background everywhere
    assert confident_seed_mask(cams, torch.zeros(1, 3), crf=None).tolist() == [[[0, 0, 0, 0]]]


def _smooth_cams_and_image(seed, C, H, W):
    g = _gen(seed)
    cams = torch.rand(1, C, 4, 5, generator=g) ** 3  # mostly low scores: all three bands occur
    cams = F.interpolate(cams, size=(H, W), mode="bilinear", align_corners=False)
    cams = cams / cams.amax(dim=(2, 3), keepdim=True) * 0.9
    img = F.interpolate(torch.rand(1, 3, 5, 6, generator=g), size=(H, W), mode="nearest")
    img = (img * 255).round() / 255
    return cams, img


@needs_pydensecrf
def test_confident_seed_mask_equals_release_cam_to_ir_label():
    C, H, W = 5, 30, 38
    for seed in range(3):
        cams, img = _smooth_cams_and_image(seed, C, H, W)
        labels = torch.zeros(1, C)
        labels[0, [0, 3]] = 1
        ours = confident_seed_mask(cams, labels, img, crf={"preset": "irn", "backend": "pydensecrf"})
        idx = labels[0].nonzero()[:, 0]
        keys = np.pad(idx.numpy() + 1, (1, 0), mode="constant")
        img_u8 = (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        ref = release.release_ir_label(img_u8, cams[0, idx].numpy(), keys)
        np.testing.assert_array_equal(ours[0].numpy(), ref)
        assert set(np.unique(ref).tolist()) == {0, 1, 4, 255}


def test_confident_seed_mask_torch_crf_backend():
    cams, img = _smooth_cams_and_image(0, 3, 20, 24)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    out = confident_seed_mask(cams, labels, img, crf={"preset": "irn", "backend": "torch"})
    assert set(out.unique().tolist()) == {0, 1, 3, 255}
    nocrf = confident_seed_mask(cams, labels, crf=None)
    assert not torch.equal(out, nocrf)  # the CRF moved some labels
    if pydensecrf_available():  # the PyTorch backend gives pydensecrf's labels
        ref = confident_seed_mask(cams, labels, img, crf={"preset": "irn", "backend": "pydensecrf"})
        assert float((out == ref).float().mean()) >= 0.995


def test_downsample_mask_equals_pil_nearest():
    m = torch.randint(0, 256, (2, 37, 50), generator=_gen(19))
    for s in (0.25, 0.5, 0.3):
        ours = downsample_mask(m, s)
        for b in range(2):
            ref = release.release_pil_rescale_nearest(m[b].numpy().astype(np.uint8), s)
            np.testing.assert_array_equal(ours[b].numpy(), ref)


def test_irn_multiscale_cams_equal_release_make_cam():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 6, 3, stride=4, padding=1)).double()
    H, W = 45, 58
    img = torch.randn(1, 3, H, W, generator=_gen(20), dtype=torch.float64)
    label = torch.tensor([0, 1, 0, 0, 1, 1], dtype=torch.float64)
    scales = (1.0, 0.5, 1.5, 2.0)
    with torch.no_grad():
        ours = irn_multiscale_cams(net, img, label[None], scales)
        pairs = []
        for s in scales:
            size = (round(H * s), round(W * s))
            x = img if s == 1.0 else F.interpolate(img, size=size, mode="bicubic", align_corners=False,
                                                   antialias=True)
            pairs.append(torch.cat([x, x.flip(-1)]))
        small, high = release.release_make_cam(net, pairs, label, (H, W))
    idx = label.nonzero()[:, 0]
    torch.testing.assert_close(ours.cams[0, idx].double(), small, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.high_res[0, idx].double(), high, rtol=1e-6, atol=1e-6)
    assert float(ours.cams[0, [0, 2, 3]].abs().max()) == 0.0
    assert ours.cams.shape[-2:] == strided_size((H, W), 4) == (12, 15)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="radius must be an int >= 2"):
        path_offsets(1)
    with pytest.raises(TypeError, match="radius must be an int"):
        path_offsets(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small for radius 10"):
        PathIndex(10, (8, 40))
    with pytest.raises(ValueError, match="seed_mask must have shape"):
        affinity_targets(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="seed_mask must be an integer tensor"):
        affinity_targets(torch.zeros(1, 4, 6))
    with pytest.raises(ValueError, match="boundary must have one channel"):
        boundary_to_affinity(torch.zeros(1, 2, 6, 6), 2)
    with pytest.raises(ValueError, match="targets \\(seed mask\\) must have the boundary's spatial size"):
        boundary_affinity_loss(torch.zeros(1, 1, 6, 6), torch.zeros(1, 5, 6, dtype=torch.long), 2)
    t = affinity_targets(torch.zeros(2, 6, 6, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="targets have batch size 2"):
        boundary_affinity_loss(torch.zeros(1, 1, 6, 6), t, 2)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        BoundaryAffinityLoss(eps=-1.0)
    cams, edge = torch.rand(1, 2, 6, 6), torch.rand(1, 1, 6, 6)
    with pytest.raises(ValueError, match="boundary must have shape \\(1, 1, 6, 6\\)"):
        random_walk(cams, torch.rand(1, 1, 5, 6))
    with pytest.raises(ValueError, match=r"boundary must lie in \[0.0, 1.0\]"):
        random_walk(cams, edge * 3)
    with pytest.raises(ValueError, match="cams contains non-finite"):
        random_walk(cams * float("nan"), edge)
    with pytest.raises(ValueError, match="method must be one of"):
        random_walk(cams, edge, method="fast")
    with pytest.raises(ValueError, match="beta must be > 0"):
        RandomWalk(beta=0.0)
    with pytest.raises(ValueError, match="exp_times must be an int >= 0"):
        random_walk(cams, edge, exp_times=-1)
    with pytest.raises(ValueError, match="labels has 3 classes, expected 2"):
        random_walk(cams, edge, torch.ones(1, 3))
    with pytest.raises(ValueError, match="normalize must be one of"):
        random_walk_mask(cams, torch.ones(1, 2), normalize="local")
    with pytest.raises(ValueError, match="image_size \\(30, 30\\) must fit"):
        random_walk_mask(cams, torch.ones(1, 2), (30, 30))
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        confident_seed_mask(cams, torch.ones(1, 2), crf=None, high_threshold=0.1, low_threshold=0.2)
    with pytest.raises(ValueError, match="image01 is required when crf is on"):
        confident_seed_mask(cams, torch.ones(1, 2))
    with pytest.raises(ValueError, match="image01 must have shape \\(1, 3, 6, 6\\)"):
        confident_seed_mask(cams, torch.ones(1, 2), torch.rand(1, 3, 5, 6))
    with pytest.raises(ValueError, match="image01 must lie in"):
        confident_seed_mask(cams, torch.ones(1, 2), torch.rand(1, 3, 6, 6) * 255)
    with pytest.raises(TypeError, match=r"crf must be a wsss_blocks.crf.DenseCRF, a preset name or a config mapping"):
        confident_seed_mask(cams, torch.ones(1, 2), crf=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels must be multi-hot"):
        confident_seed_mask(cams, torch.full((1, 2), 0.5), crf=None)
    with pytest.raises(ValueError, match="scale_factor must be > 0"):
        downsample_mask(torch.zeros(1, 4, 4, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="fn must return a 2×C×h×w tensor"):
        irn_multiscale_cams(lambda x: x[0], torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        irn_multiscale_cams(lambda x: x, torch.rand(1, 3, 16, 16), interpolation="nearest")


def test_module_reprs():
    assert "radius=5, beta=10, exp_times=8, bg_score=0.25" in repr(RandomWalk())
    assert "radius=10" in repr(BoundaryAffinityLoss())
    assert "high_threshold=0.3, low_threshold=0.05" in repr(ConfidentSeedMask())
    assert isinstance(affinity_targets(torch.zeros(1, 3, 4, dtype=torch.long), 2), AffinityTargets)
