"""Dense CRF: permutohedral lattice values, parity with pydensecrf, CRF properties and input validation."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.crf import (
    PRESET_SOURCES,
    PRESETS,
    DenseCRF,
    PairwiseOperator,
    build_lattice,
    dense_crf,
    dense_crf_from_unary,
    lattice_filter,
    mean_field,
    pydensecrf_available,
    pydensecrf_inference,
    resolve_backend,
    unary_from_mask,
    unary_from_probs,
)
from wsss_blocks.crf.permutohedral import bilateral_features, grid_features


# ------------------------------------------------------------------------------------------------ helpers
def smooth_probs(b: int, k: int, h: int, w: int, seed: int = 0, scale: float = 8.0) -> torch.Tensor:
    """CAM-like smooth class probabilities: coarse random logits, bilinearly upsampled, softmax."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, max(2, h // 24), max(2, w // 24), generator=g) * scale
    return torch.softmax(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), 1)


def photos(h: int, w: int) -> torch.Tensor:
    """Top-left h×w crops of four scikit-image photographs, (4, h, w, 3) uint8."""
    data = pytest.importorskip("skimage.data")
    crops = [np.ascontiguousarray(getattr(data, n)()[:h, :w, :3]) for n in ("astronaut", "coffee", "chelsea",
                                                                             "rocket")]
    return torch.from_numpy(np.stack(crops))


def reference_filter(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Direct loop transcription of the permutohedral filter (Adams et al.

    2010 as in densecrf's permutohedral.cpp, SSE rounding): dict hash table, per-pixel splat, d+1 blur passes, slice.
    """
    f = np.asarray(features, np.float32)
    n, d = f.shape
    d1 = d + 1
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * d1))
    sf = [np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std) for i in range(d)]
    down = np.float32(1.0) / np.float32(d1)
    table: dict[tuple[int, ...], int] = {}
    verts = []
    for p in range(n):
        el = np.zeros(d1, np.float32)
        sm = np.float32(0)
        for j in range(d, 0, -1):
            cf = f[p, j - 1] * sf[j - 1]
            el[j] = sm - np.float32(j) * cf
            sm = sm + cf
        el[0] = sm
        v = np.rint(el * down)
        rem0 = v * d1
        s = int(v.sum())
        di = el - rem0
        rank = np.zeros(d1, np.int64)
        for i in range(d1):
            for j in range(i + 1, d1):
                if di[i] < di[j]:
                    rank[i] += 1
                else:
                    rank[j] += 1
        rank += s
        for i in range(d1):
            if rank[i] < 0:
                rank[i] += d1
                rem0[i] += d1
            elif rank[i] > d:
                rank[i] -= d1
                rem0[i] -= d1
        bary = np.zeros(d + 2, np.float32)
        for i in range(d1):
            t = (el[i] - rem0[i]) * down
            bary[d - rank[i]] += t
            bary[d - rank[i] + 1] -= t
        bary[0] += 1 + bary[d1]
        vs = []
        for r in range(d1):
            key = tuple(int(rem0[i]) + (r if rank[i] <= d - r else r - d1) for i in range(d))
            vs.append((table.setdefault(key, len(table)), float(bary[r])))
        verts.append(vs)
    vals = np.zeros((len(table), values.shape[1]))
    for p in range(n):
        for idx, w in verts[p]:
            vals[idx] += w * values[p]
    for j in range(d1):
        new = vals.copy()
        for key, idx in table.items():
            n1 = [k - 1 for k in key]
            n2 = [k + 1 for k in key]
            if j < d:
                n1[j] = key[j] + d
                n2[j] = key[j] - d
            for nb in (table.get(tuple(n1)), table.get(tuple(n2))):
                if nb is not None:
                    new[idx] += 0.5 * vals[nb]
        vals = new
    alpha = 1.0 / (1.0 + 2.0 ** -d)
    return np.stack([sum(w * vals[idx] for idx, w in verts[p]) * alpha for p in range(n)])


# --------------------------------------------------------------------------------------- lattice values
def test_single_point_filter_hand_computed():
    # d = 1, f = 0: vertices (0) w=1 and (1) w=0; blur dir 0: [1, 0.5], dir 1: [1.25, 1]; slice 1.25 * 2/3.
    for pad in (False, True):
        lat = build_lattice(torch.zeros(1, 1), pad_like_pydensecrf=pad)
        assert lat.num_points == 2
        out = lattice_filter(lat, torch.tensor([[1.0, -2.0]]))
        torch.testing.assert_close(out, torch.tensor([[5 / 6, -10 / 6]]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_lattice_filter_matches_loop_reference(d):
    g = torch.Generator().manual_seed(d)
    f = torch.rand(37, d, generator=g) * 4.0
    v = torch.randn(37, 3, generator=g)
    ref = reference_filter(f.numpy(), v.numpy().astype(np.float64))
    out = lattice_filter(build_lattice(f, pad_like_pydensecrf=False), v)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_lattice_batch_equals_separate_and_repeat():
    g = torch.Generator().manual_seed(3)
    f = torch.rand(2, 30, 3, generator=g) * 3.0
    v = torch.randn(60, 2, generator=g)
    joint = lattice_filter(build_lattice(f), v)
    sep = torch.cat([lattice_filter(build_lattice(f[i]), v[30 * i:30 * i + 30]) for i in range(2)])
    torch.testing.assert_close(joint, sep, rtol=1e-6, atol=1e-6)
    rep = build_lattice(f[0]).repeat(3)
    v3 = torch.randn(90, 2, generator=g)
    torch.testing.assert_close(lattice_filter(rep, v3),
                               lattice_filter(build_lattice(f[0].expand(3, 30, 3)), v3), rtol=1e-6, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 5), spread=st.floats(0.1, 6.0), seed=st.integers(0, 10_000))
def test_lattice_filter_is_linear_positive_and_order_independent(n, d, spread, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, d, generator=g) * spread
    lat = build_lattice(f)
    a, b = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
    fa, fb = lattice_filter(lat, a), lattice_filter(lat, b)
    torch.testing.assert_close(lattice_filter(lat, a + 2 * b), fa + 2 * fb, rtol=1e-4, atol=1e-4)
    assert bool((lattice_filter(lat, torch.ones(n, 1)) > 0).all())
    torch.testing.assert_close(lat.weights.sum(1), torch.ones(n), rtol=0, atol=1e-5)
    # the lattice is a set: the pixel order does not change any pixel's result (the released code's
    # blur passes do not commute at the lattice boundary, so the filter is not symmetric in general)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(lattice_filter(build_lattice(f[perm]), a[perm]), fa[perm], rtol=1e-5, atol=1e-5)


def test_neighbour_lookup_join_equals_table(monkeypatch):
    from wsss_blocks.crf import permutohedral as pl

    uniq = torch.tensor([2, 5, 9, 10, 40], dtype=torch.int32)
    query = torch.tensor([5, 6, 40, 2, 0, 10, 10, 41], dtype=torch.int32)
    assert pl._lookup_sorted(uniq, query).tolist() == [1, 5, 4, 0, 5, 3, 3, 5]
    img = photos(21, 27)[:2]
    feats = bilateral_features(img, 8.0, 4.0)
    table = build_lattice(feats)
    monkeypatch.setattr(pl, "_TABLE_MAX", 0)  # force the sort-merge join
    calls = []
    orig = pl._lookup_sorted
    monkeypatch.setattr(pl, "_lookup_sorted", lambda u, q: calls.append(1) or orig(u, q))
    join = build_lattice(feats)
    assert calls
    assert torch.equal(table.blur_neighbors, join.blur_neighbors)
    assert torch.equal(table.offsets, join.offsets)


def test_lattice_rejects_huge_key_space():
    with pytest.raises(ValueError, match="key space too large"):
        build_lattice(torch.tensor([[0.0] * 5, [1e7] * 5]))


# -------------------------------------------------------------------------------- CRF values (torch)
def test_zero_iterations_and_zero_weights_return_the_clipped_normalised_probs():
    img = photos(20, 24)[:1]
    p = smooth_probs(1, 4, 20, 24)
    clipped = p.clamp(1e-5, 1.0)
    expected = clipped / clipped.sum(1, keepdim=True)  # softmax(-U) with U = -log(clip(p))
    torch.testing.assert_close(dense_crf(None, p, iterations=0, backend="torch", image_uint8=img), expected,
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dense_crf(None, p, pos_w=0, bi_w=0, image_uint8=img), expected, rtol=1e-5, atol=1e-7)


def test_mean_field_single_kernel_hand_check():
    # One kernel, one iteration: Q1 = softmax(-U + w n K(n Q0)) with the filter computed independently.
    g = torch.Generator().manual_seed(0)
    f = torch.rand(12, 2, generator=g) * 2
    lat = build_lattice(f)
    u = torch.rand(12, 3, generator=g)
    q0 = torch.softmax(-u, 1)
    n = lattice_filter(lat, torch.ones(12, 1)).rsqrt()
    expected = torch.softmax(-u + 2.5 * n * lattice_filter(lat, n * q0), 1)
    torch.testing.assert_close(mean_field(u, PairwiseOperator([lat], [2.5]), 1), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(2, 6), b=st.integers(1, 2),
       seed=st.integers(0, 1000), preset=st.sampled_from(sorted(PRESETS)))
def test_output_rows_sum_to_one(h, w, k, b, seed, preset):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    p = torch.softmax(torch.randn(b, k, h, w, generator=g) * 3, 1)
    q = DenseCRF.preset(preset, backend="torch")(None, p, image_uint8=img)
    assert q.shape == p.shape
    assert bool((q >= 0).all())
    torch.testing.assert_close(q.sum(1), torch.ones(b, h, w), rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["afa", "deeplab", "toco"])
def test_uniform_image_with_confident_unaries_keeps_labels(preset):
    h, w, k = 40, 56, 5
    img = torch.full((1, h, w, 3), 120, dtype=torch.uint8)
    lab = torch.zeros(1, h, w, dtype=torch.long)
    lab[:, :, 20:] = 1
    lab[:, 25:, 40:] = 2
    lab[:, :10, :10] = 3
    p = torch.full((1, k, h, w), 0.05 / (k - 1)).scatter_(1, lab[:, None], 0.95)
    q = DenseCRF.preset(preset, backend="torch")(None, p, image_uint8=img)
    assert torch.equal(q.argmax(1), lab)


@pytest.mark.parametrize("preset", ["afa", "deeplab", "psa"])
def test_labels_snap_to_a_strong_colour_edge(preset):
    h, w = 32, 64
    img = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    img[:, :, : w // 2, 0] = 220
    img[:, :, w // 2:, 2] = 220
    truth = torch.zeros(1, h, w, dtype=torch.long)
    truth[:, :, w // 2:] = 1
    p1 = torch.sigmoid((torch.arange(w).float() - (w / 2 + 6)) / 4).expand(1, h, w)  # edge 6 px off
    p = torch.stack([1 - p1, p1], 1)
    before = (p.argmax(1) == truth).float().mean()
    after = (DenseCRF.preset(preset, backend="torch")(None, p, image_uint8=img).argmax(1) == truth).float().mean()
    assert float(before) < 0.9
    assert float(after) == 1.0


def test_batch_equals_single_images_and_input_layouts_agree():
    img = photos(23, 31)[:2]
    p = smooth_probs(2, 6, 23, 31, seed=1)
    crf = DenseCRF.deeplab(backend="torch")
    batched = crf(None, p, image_uint8=img)
    single = torch.cat([crf(None, p[i], image_uint8=img[i])[None] for i in range(2)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    as_float = crf(img.permute(0, 3, 1, 2).float() / 255, p)
    torch.testing.assert_close(as_float, batched)
    channel_first = img.permute(0, 3, 1, 2).contiguous()
    with pytest.raises(ValueError, match=r"image_uint8 must be a channels-last uint8 image.*permute\(0, 2, 3, 1\)"):
        crf(None, p, image_uint8=channel_first)  # the layout follows the dtype; it is never guessed
    torch.testing.assert_close(crf(None, p.numpy(), image_uint8=img.numpy()), batched)
    q64 = crf(None, p.double(), image_uint8=img)
    assert q64.dtype == torch.float64
    assert crf(None, p[0], image_uint8=img[0]).shape == (6, 23, 31)


def test_renormalize_and_ignore_modes():
    img = photos(16, 20)[:1]
    p = smooth_probs(1, 3, 16, 20, seed=2)
    ref = dense_crf(None, p, backend="torch", image_uint8=img)
    renorm = dense_crf(None, 0.5 * p, backend="torch", sum_to_one="renormalize", image_uint8=img)
    torch.testing.assert_close(renorm, ref)
    # "ignore" = pydensecrf unary_from_softmax: -log(clip(p)) without renormalising
    half = dense_crf(None, 0.5 * p, backend="torch", sum_to_one="ignore", image_uint8=img)
    torch.testing.assert_close(half, dense_crf_from_unary(None, unary_from_probs(0.5 * p), backend="torch",
                                                          image_uint8=img))
    assert not torch.allclose(half, ref)


def test_unaries_match_pydensecrf_formulas():
    p = torch.tensor([[[[1.0, 0.0, 0.3]], [[0.0, 1.0, 0.7]]]])
    expected = -np.log(np.clip(p.numpy(), 1e-5, 1.0)).astype(np.float32)
    np.testing.assert_allclose(unary_from_probs(p).numpy(), expected, rtol=1e-6)
    u = unary_from_mask(torch.tensor([[[0, 2, 255]]]), num_classes=3, gt_prob=0.7, ignore_index=255)
    n_e, p_e = -np.log(0.3 / 2), -np.log(0.7)
    np.testing.assert_allclose(u[0, :, 0, 0].numpy(), [p_e, n_e, n_e], rtol=1e-7)
    np.testing.assert_allclose(u[0, :, 0, 1].numpy(), [n_e, n_e, p_e], rtol=1e-7)
    np.testing.assert_allclose(u[0, :, 0, 2].numpy(), [np.log(3)] * 3, rtol=1e-7)


def test_from_labels_keeps_a_label_map_on_a_matching_image():
    img = torch.zeros(1, 20, 30, 3, dtype=torch.uint8)
    img[:, :, 15:] = 200
    lab = torch.zeros(1, 20, 30, dtype=torch.long)
    lab[:, :, 15:] = 1
    noisy = lab.clone()
    noisy[:, 5:8, 3:6] = 1  # a small wrong blob inside a uniform region is removed
    out = DenseCRF.irn(backend="torch").from_mask(None, noisy, num_classes=2, image_uint8=img).argmax(1)
    assert torch.equal(out, lab)


def test_presets_hold_the_released_values():
    assert PRESETS["deeplab"] == dict(iterations=10, pos_w=3.0, pos_xy=1.0, bi_w=4.0, bi_xy=67.0, bi_rgb=3.0)
    assert PRESETS["afa"] == dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=4.0, bi_xy=64.0, bi_rgb=5.0)
    assert PRESETS["toco"] == dict(iterations=10, pos_w=1.0, pos_xy=1.0, bi_w=4.0, bi_xy=121.0, bi_rgb=5.0)
    assert PRESETS["psa"] == dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=10.0, bi_xy=80.0, bi_rgb=13.0)
    assert PRESETS["irn"] == PRESETS["smaf"] == dict(iterations=10, pos_w=3.0, pos_xy=3.0, bi_w=10.0,
                                                     bi_xy=50.0, bi_rgb=5.0, gt_prob=0.7)
    assert PRESETS["pmm-binary"] == dict(iterations=10, pos_w=10.0, pos_xy=3.0, bi_w=10.0, bi_xy=80.0,
                                         bi_rgb=13.0, sum_to_one="ignore")
    assert PRESETS["l2g-test"] == PRESETS["deeplab"]
    assert set(PRESET_SOURCES) == set(PRESETS)
    default = DenseCRF()
    assert (default.pos_w, default.pos_xy, default.bi_w, default.bi_xy, default.bi_rgb) == (3, 3, 4, 64, 5)
    psa = DenseCRF.psa(scale_factor=2.0)
    assert (psa.pos_xy, psa.bi_xy, psa.bi_rgb) == (1.5, 40.0, 13.0)
    assert DenseCRF.preset("pmm_binary").sum_to_one == "ignore"
    for name in ("deeplab", "afa", "toco", "toco_label", "psa", "irn", "pmm_binary", "smaf", "l2g_test"):
        assert isinstance(getattr(DenseCRF, name)(), DenseCRF)
    assert "bi_xy=64" in repr(DenseCRF())


def test_auto_backend_resolution():
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == ("pydensecrf" if pydensecrf_available() else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", "cpu")


def test_missing_pydensecrf_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r"wsss-blocks\[crf\]"):
        pydensecrf_inference(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 16), np.float32))


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    img = torch.zeros(1, 8, 10, 3, dtype=torch.uint8)
    p = torch.full((1, 3, 8, 10), 1 / 3)
    with pytest.raises(ValueError, match="same spatial size"):
        dense_crf(None, torch.full((1, 3, 8, 11), 1 / 3), backend="torch", image_uint8=img)
    with pytest.raises(ValueError, match="same batch size"):
        dense_crf(None, torch.full((2, 3, 8, 10), 1 / 3), backend="torch", image_uint8=img)
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(None, p * 0.9, backend="torch", image_uint8=img)
    with pytest.raises(ValueError, match="non-negative"):
        dense_crf(None, p - 0.5, backend="torch", sum_to_one="ignore", image_uint8=img)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        dense_crf(None, p * 4, backend="torch", sum_to_one="ignore", image_uint8=img)
    nan = p.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        dense_crf(None, nan, backend="torch", image_uint8=img)
    with pytest.raises(ValueError, match="at least K = 2"):
        dense_crf(None, torch.ones(1, 1, 8, 10), backend="torch", image_uint8=img)
    with pytest.raises(ValueError, match="renormalised"):
        dense_crf(None, torch.zeros(1, 3, 8, 10), backend="torch", sum_to_one="renormalize", image_uint8=img)
    with pytest.raises(ValueError, match="sum_to_one must be"):
        dense_crf(None, p, sum_to_one="yes", image_uint8=img)
    with pytest.raises(ValueError, match="B×K×H×W or K×H×W"):
        dense_crf(None, p[0, 0], image_uint8=img)
    with pytest.raises(TypeError, match="floating-point"):
        dense_crf(None, torch.ones(1, 3, 8, 10, dtype=torch.long), image_uint8=img)
    with pytest.raises(TypeError, match=r"torch.Tensor or numpy"):
        dense_crf([[0]], p)
    with pytest.raises(ValueError, match=r"channels-last uint8 image H×W×3 or B×H×W×3"):
        dense_crf(None, p, image_uint8=torch.zeros(1, 8, 10, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"image01 must lie in \[0.0, 1.0\]"):
        dense_crf(torch.full((1, 3, 8, 10), 2.0), p)
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(torch.zeros(1, 8, 10, 3, dtype=torch.int32), p)
    with pytest.raises(TypeError, match="pass uint8 images as image_uint8="):
        dense_crf(img, p)
    with pytest.raises(TypeError, match="image_uint8 must have dtype uint8"):
        dense_crf(None, p, image_uint8=img.float())
    with pytest.raises(ValueError, match="exactly one of them"):
        dense_crf(None, p)
    with pytest.raises(ValueError, match="exactly one of them"):
        dense_crf(img.permute(0, 3, 1, 2).float() / 255, p, image_uint8=img)
    with pytest.raises(ValueError, match="pos_xy must be"):
        dense_crf(None, p, pos_xy=0, image_uint8=img)
    with pytest.raises(ValueError, match="bi_w must be"):
        DenseCRF(bi_w=-1)
    with pytest.raises(ValueError, match="iterations must be"):
        DenseCRF(iterations=-1)
    with pytest.raises(ValueError, match="normalization must be"):
        DenseCRF(normalization="l2")
    with pytest.raises(ValueError, match="unknown CRF preset"):
        DenseCRF.preset("crfasrnn")
    with pytest.raises(ValueError, match="gt_prob must be"):
        DenseCRF(gt_prob=1.0)
    with pytest.raises(ValueError, match="unary must have at least K = 2"):
        dense_crf_from_unary(None, torch.zeros(1, 1, 8, 10), image_uint8=img)
    crf = DenseCRF(backend="torch")
    with pytest.raises(ValueError, match=r"mask has value 3 outside \[0, 2\]"):
        crf.from_mask(None, torch.full((1, 8, 10), 3), num_classes=3, image_uint8=img)
    with pytest.raises(TypeError, match="integer tensor"):
        crf.from_mask(None, torch.zeros(1, 8, 10), num_classes=3, image_uint8=img)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        crf.from_mask(None, torch.zeros(1, 8, 10, dtype=torch.long), num_classes=1, image_uint8=img)


# -------------------------------------------------------------------------------- parity with pydensecrf
pydensecrf_mark = [pytest.mark.crf]


def _dcrf():
    return pytest.importorskip("pydensecrf.densecrf")


@pytest.mark.crf
@pytest.mark.parametrize("preset", ["deeplab", "afa", "toco", "psa"])
def test_torch_matches_pydensecrf_on_photographs(preset):
    _dcrf()
    img = photos(45, 61)  # 45*61 is not a multiple of 4: exercises pydensecrf's phantom lattice points
    p = smooth_probs(4, 21, 45, 61, seed=5)
    ref = DenseCRF.preset(preset, backend="pydensecrf")(None, p, image_uint8=img)
    out = DenseCRF.preset(preset, backend="torch")(None, p, image_uint8=img)
    agree = (ref.argmax(1) == out.argmax(1)).float().mean()
    assert float(agree) >= 0.995
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


@pytest.mark.crf
@pytest.mark.parametrize(("n", "seed", "spread"), [(6, 3, 2.0), (5, 3, 1.5), (7, 0, 1.0), (8, 0, 1.0)])
def test_lattice_mean_field_matches_pydensecrf_on_raw_features(n, seed, spread):
    dcrf = _dcrf()
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, 5, generator=g) * spread + 0.3
    u = torch.rand(n, 3, generator=g) * 2
    d = dcrf.DenseCRF(n, 3)
    d.setUnaryEnergy(np.ascontiguousarray(u.T.numpy()))
    d.addPairwiseEnergy(np.ascontiguousarray(f.T.numpy()), compat=5.0)
    ref = torch.from_numpy(np.asarray(d.inference(5))).T
    q = mean_field(u, PairwiseOperator([build_lattice(f)], [5.0]), 5)
    torch.testing.assert_close(q, ref, rtol=0, atol=2e-6)
    if n % 4:  # pydensecrf's zero-feature padding points matter on sparse sets: without them, no match
        q_nopad = mean_field(u, PairwiseOperator([build_lattice(f, pad_like_pydensecrf=False)], [5.0]), 5)
        assert float((q_nopad - ref).abs().max()) > 1e-3


@pytest.mark.crf
def test_pydensecrf_backend_is_the_usual_recipe():
    dcrf = _dcrf()
    img = photos(30, 40)[1]
    p = smooth_probs(1, 5, 30, 40, seed=4)[0]
    d = dcrf.DenseCRF2D(40, 30, 5)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p.numpy(), 1e-5, 1.0)).reshape(5, -1)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=64, srgb=5, rgbim=np.ascontiguousarray(img.numpy()), compat=4)
    expected = np.asarray(d.inference(10)).reshape(5, 30, 40)
    out = DenseCRF(backend="pydensecrf")(None, p, image_uint8=img)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.crf
@pytest.mark.parametrize("preset", ["irn", "smaf"])
def test_from_labels_matches_pydensecrf(preset):
    _dcrf()
    img = photos(41, 53)
    lab = smooth_probs(4, 21, 41, 53, seed=6).argmax(1)
    ref = DenseCRF.preset(preset, backend="pydensecrf").from_mask(None, lab, num_classes=21, image_uint8=img)
    out = DenseCRF.preset(preset, backend="torch").from_mask(None, lab, num_classes=21, image_uint8=img)
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.995
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


@pytest.mark.crf
@pytest.mark.parametrize("normalization", ["after", "before", "none"])
def test_other_normalizations_and_pmm_binary_match_pydensecrf(normalization):
    _dcrf()
    img = photos(33, 47)[:2]
    p = smooth_probs(2, 4, 33, 47, seed=7)
    ref = DenseCRF(backend="pydensecrf", normalization=normalization)(None, p, image_uint8=img)
    out = DenseCRF(backend="torch", normalization=normalization)(None, p, image_uint8=img)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-3)
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.995
    two = torch.stack([p[:, 0] ** 2, p[:, 1].sqrt()], 1)  # PPMG stack [B_c, A_c]: does not sum to 1
    torch.testing.assert_close(DenseCRF.pmm_binary(backend="torch")(None, two, image_uint8=img),
                               DenseCRF.pmm_binary(backend="pydensecrf")(None, two, image_uint8=img),
                               rtol=0, atol=1e-4)


@pytest.mark.crf
def test_pool_map_equals_forward():
    _dcrf()
    img = photos(24, 28)
    p = smooth_probs(4, 3, 24, 28, seed=8)
    crf = DenseCRF.afa(backend="pydensecrf")
    expected = crf(None, p, image_uint8=img)
    jobs = [(img[i], p[i]) for i in range(4)]
    inline = list(crf.pool_map(jobs, processes=0))
    pooled = list(crf.pool_map(iter(jobs), processes=2))
    labels = list(crf.pool_map(jobs, processes=0, labels_only=True))
    for i in range(4):
        np.testing.assert_allclose(inline[i], expected[i].numpy(), atol=1e-6)
        np.testing.assert_allclose(pooled[i], expected[i].numpy(), atol=1e-6)
        np.testing.assert_array_equal(labels[i], expected[i].argmax(0).numpy())


# ------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_cuda_torch_backend_matches_cpu():
    img = photos(45, 57)
    p = smooth_probs(4, 21, 45, 57, seed=9)
    for preset in ("afa", "deeplab"):
        crf = DenseCRF.preset(preset, backend="auto")
        gpu = crf(None, p.cuda(), image_uint8=img.cuda())
        assert gpu.is_cuda
        cpu = DenseCRF.preset(preset, backend="torch")(None, p, image_uint8=img)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


def test_grid_and_bilateral_features_match_pydensecrf_definition():
    f = grid_features(2, 3, 2.0)
    torch.testing.assert_close(f, torch.tensor([[0, 0], [0.5, 0], [1, 0], [0, 0.5], [0.5, 0.5], [1, 0.5]]))
    img = torch.arange(18, dtype=torch.uint8).reshape(1, 2, 3, 3)
    bf = bilateral_features(img, 4.0, 2.0)
    assert bf.shape == (1, 6, 5)
    torch.testing.assert_close(bf[0, 4], torch.tensor([0.25, 0.25, 6.0, 6.5, 7.0]))


def test_layout_follows_the_dtype_never_the_shape():
    """A channels-first image 3 pixels wide is not mistaken for a channels-last one (issue 19)."""
    img = photos(23, 3)[:1]  # 1×23×3×3 uint8, channels-last: as loaded
    p = smooth_probs(1, 2, 23, 3, seed=4)
    ref = dense_crf(img.permute(0, 3, 1, 2).float() / 255, p, backend="torch")
    torch.testing.assert_close(dense_crf(None, p, image_uint8=img, backend="torch"), ref)
    chw = img.permute(0, 3, 1, 2).contiguous()  # 1×3×23×3: channels-first, width 3 (the ambiguous shape)
    with pytest.raises(ValueError, match="image_uint8 must be a channels-last"):
        dense_crf(None, p, image_uint8=chw[:, :, :, :2].contiguous(), backend="torch")
    # the documented layout wins: 1×3×23×3 uint8 is read as B×H×W×3 (H = 3, W = 23), which does not match probs
    with pytest.raises(ValueError, match=r"image_uint8 and probs must have the same spatial size"):
        dense_crf(None, p, image_uint8=chw, backend="torch")
    with pytest.raises(ValueError, match="image01 must be a channels-first float image"):
        dense_crf(img.float() / 255, p, backend="torch")  # channels-last float: refused, not permuted


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_softmax_passes_the_sum_check(dtype):
    """A bfloat16 softmax sums to 1 only within ~0.004 (above the default sum_tol 1e-3): accepted (issue 19)."""
    img = photos(16, 20)[:2]
    logits = 3 * torch.randn(2, 21, 16, 20, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits.to(dtype), dim=1)
    dev = float((probs.float().sum(1) - 1).abs().max())
    if dtype == torch.bfloat16:
        assert dev > 1e-3  # the case that was refused
    q = dense_crf(None, probs, image_uint8=img, backend="torch", iterations=2)
    assert q.dtype == dtype
    ref = dense_crf(None, probs.float() / probs.float().sum(1, keepdim=True), image_uint8=img, backend="torch",
                    iterations=2)
    assert float((q.float() - ref).abs().max()) < 0.02
    with pytest.raises(ValueError, match="must sum to 1"):  # unnormalised scores are still refused
        dense_crf(None, (0.9 * probs.float()).to(dtype), image_uint8=img, backend="torch")
