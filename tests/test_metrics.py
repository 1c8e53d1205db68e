"""Tests for wsss_blocks.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.cam import cams_to_mask
from wsss_blocks.metrics import (
    BgScoreSweep,
    SegmentationMetric,
    confusion_matrix,
    scores_from_confusion,
    sweep_bg_score,
)


def _np_confusion(pred, gt, k, ignore=255):
    pred, gt = np.asarray(pred).ravel(), np.asarray(gt).ravel()
    keep = gt != ignore
    return np.bincount(k * gt[keep] + pred[keep], minlength=k * k).reshape(k, k)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 25))
def test_confusion_matches_numpy_bincount(seed, k):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, size=(3, 7, 9))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=gt.shape)
    ours = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), k)
    assert ours.dtype == torch.int64
    np.testing.assert_array_equal(ours.numpy(), _np_confusion(pred, gt, k))


def test_scores_hand_computed():
    # rows = gt, cols = pred
    cm = torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    # class0: tp3 / (4 + 3 - 3) = 0.75; class1: 4 / (4 + 5 - 4) = 0.8; class2 empty union -> excluded
    assert s["iou"][0].item() == pytest.approx(0.75)
    assert s["iou"][1].item() == pytest.approx(0.8)
    assert math.isnan(s["iou"][2].item())
    assert s["miou"].item() == pytest.approx(0.775)
    assert s["pixel_acc"].item() == pytest.approx(7 / 8)
    assert s["mean_acc"].item() == pytest.approx((0.75 + 1.0) / 2)


def test_scores_union_vs_gt_policy():
    # class 2 predicted but never in GT: union policy counts IoU 0, gt policy (ToCo/AFA) drops it
    cm = torch.tensor([[2, 0, 1], [0, 2, 0], [0, 0, 0]])
    assert scores_from_confusion(cm, "union")["miou"].item() == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores_from_confusion(cm, "gt")["miou"].item() == pytest.approx((2 / 3 + 1) / 2)


def test_segmentation_metric_accumulates_dataset_level():
    m = SegmentationMetric(3)
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for _ in range(4):
        g = rng.integers(0, 3, size=(1, 5, 6))
        p = rng.integers(0, 3, size=(1, 5, 6))
        preds.append(p)
        gts.append(g)
        m.update(torch.from_numpy(p), torch.from_numpy(g))
    total = sum(_np_confusion(p, g, 3) for p, g in zip(preds, gts))
    np.testing.assert_array_equal(m.confmat.numpy(), total)
    m.reset()
    assert m.confmat.sum() == 0


def test_pred_ignore_policies():
    pred = torch.tensor([0, 255, 1])
    gt = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="pred has value 255 outside \\[0, 1\\]"):
        confusion_matrix(pred, gt, 2)
    assert confusion_matrix(pred, gt, 2, pred_ignore="drop").tolist() == [[1, 0], [0, 1]]
    assert confusion_matrix(pred, gt, 2, pred_ignore="background").tolist() == [[1, 0], [1, 1]]


def test_confusion_bad_input():
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="target has value 7 outside \\[0, 2\\] and ignore_index 255"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]), 3)
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(3), 3)


def test_threshold_sweep_equals_per_threshold_cams_to_mask():
    g = torch.Generator().manual_seed(1)
    cams = torch.rand(3, 4, 6, 7, generator=g)
    labels = (torch.rand(3, 4, generator=g) > 0.4).float()
    target = torch.randint(0, 5, (3, 6, 7), generator=g)
    target[0, 0, :3] = 255
    ths = (0.0, 0.1, 0.25, 0.5, 0.9)
    res = sweep_bg_score((cams, labels, target), 5, ths)
    for i, t in enumerate(ths):
        ref = confusion_matrix(cams_to_mask(cams, labels, t), target, 5)
        assert torch.equal(res.confmats[i], ref), t
        assert res.miou[i] == pytest.approx(float(scores_from_confusion(ref)["miou"]))
    assert res.best_miou == max(res.miou)
    assert res.best_bg_score == ths[res.miou.index(max(res.miou))]
    assert "<- best" in res.table()


def test_threshold_sweep_streaming_and_exact_values():
    # image 1: pixel values 0.3 (gt bg), 0.9 (gt class 1)
    cams = torch.tensor([[[[0.3, 0.9]]]])
    items = [(cams, torch.ones(1, 1), torch.tensor([[[0, 1]]])),
             (cams * 0 + 0.6, torch.ones(1, 1), torch.tensor([[[1, 1]]]))]
    r = sweep_bg_score(items, 2, (0.2, 0.5, 0.7))
    # t=0.2: all fg -> bg IoU 0/..; t=0.5: preds [0,1],[1,1] -> perfect; t=0.7: preds [0,1],[0,0]
    assert r.miou[1] == pytest.approx(1.0)
    assert r.best_bg_score == 0.5
    assert r.miou[0] == pytest.approx((0.0 + 3 / 4) / 2)
    assert r.miou[2] == pytest.approx((1 / 3 + 1 / 3) / 2)


def test_threshold_sweep_bad_input():
    with pytest.raises(ValueError, match="bg_scores must be strictly increasing"):
        BgScoreSweep(3, (0.5, 0.1))
    sw = BgScoreSweep(3)
    with pytest.raises(ValueError, match="cams has 3 classes, expected 2"):
        sw.update(torch.rand(1, 3, 2, 2), None, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target must have shape"):
        sw.update(torch.rand(1, 2, 2, 2), None, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        sw.update(torch.full((1, 2, 2, 2), float("nan")), None, torch.zeros(1, 2, 2, dtype=torch.long))


def test_metric_module_to_dtype_device_follow():
    m = SegmentationMetric(2).to(torch.device("cpu"))
    m.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert m.compute()["miou"].dtype == torch.float64


@pytest.mark.cuda
def test_metrics_on_cuda():
    pred = torch.randint(0, 21, (2, 64, 64), device="cuda")
    gt = torch.randint(0, 21, (2, 64, 64), device="cuda")
    cm = confusion_matrix(pred, gt, 21)
    assert cm.is_cuda
    np.testing.assert_array_equal(cm.cpu().numpy(), _np_confusion(pred.cpu().numpy(), gt.cpu().numpy(), 21))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.uint8, torch.int64, torch.int32]),
       st.sampled_from(["error", "drop", "background"]))
def test_fast_and_general_paths_agree(seed, dtype, policy):
    """The 8-bit fast path equals the general path (forced with an ignore index outside 0..255)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 22))
    gt = rng.integers(0, k, size=(2, 5, 6))
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, k, size=gt.shape)
    if policy != "error":
        pred[rng.random(gt.shape) < 0.2] = 255
    fast = confusion_matrix(torch.from_numpy(pred).to(dtype), torch.from_numpy(gt).to(dtype), k,
                            pred_ignore=policy)
    gt_general = np.where(gt == 255, 1000, gt)
    pred_general = np.where(pred == 255, 1000, pred)
    general = confusion_matrix(torch.from_numpy(pred_general), torch.from_numpy(gt_general), k,
                               ignore_index=1000, pred_ignore=policy)
    assert torch.equal(fast, general)


def _reference_sweep(cams, labels, target, num_classes, thresholds, ignore_index=255):
    """Straightforward reference: one cams_to_mask + confusion_matrix per threshold."""
    return torch.stack([confusion_matrix(cams_to_mask(cams, labels, t), target, num_classes, ignore_index)
                        for t in thresholds])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64, torch.float16]),
       st.sampled_from([torch.uint8, torch.int32, torch.int64]))
def test_threshold_sweep_fast_path_matches_reference(seed, cam_dtype, target_dtype):
    """Every threshold's confusion matrix equals cams_to_mask + confusion_matrix: ties exactly at a threshold,
    ties between classes, values outside [0, 1], ignore pixels, absent classes, images with no class.
    """
    rng = np.random.default_rng(seed)
    B, C = int(rng.integers(1, 4)), int(rng.integers(1, 7))
    H, W = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    K = C + 1
    thresholds = np.unique(np.round(rng.uniform(-0.2, 1.2, size=int(rng.integers(1, 12))), 2)).tolist()
    # values on a coarse grid so that many pixels tie with a threshold and classes tie with each other
    grid = np.array([*thresholds, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5], dtype=np.float32)
    cams = torch.from_numpy(rng.choice(grid, size=(B, C, H, W))).to(cam_dtype)
    noisy = torch.from_numpy(rng.random((B, C, H, W)) < 0.3)
    cams = torch.where(noisy, torch.from_numpy(rng.uniform(-0.3, 1.3, (B, C, H, W))).to(cam_dtype), cams)
    labels = torch.from_numpy(rng.random((B, C)) < 0.5).float()
    labels[0] = 0.0  # an image with no present class: every pixel is background
    if B > 1:
        labels[1] = 1.0  # an image with every class present
    target = rng.integers(0, K, size=(B, H, W))
    target[rng.random(target.shape) < 0.25] = 255
    target = torch.from_numpy(target).to(target_dtype)
    sw = BgScoreSweep(K, thresholds)
    sw.update(cams, labels, target)
    sw.update(cams, None, target)  # labels=None: every class present
    expected = (_reference_sweep(cams, labels, target, K, thresholds)
                + _reference_sweep(cams, None, target, K, thresholds))
    assert torch.equal(sw.confmats(), expected)
    res = sw.compute()
    for i, cm in enumerate(expected):
        ref = float(scores_from_confusion(cm)["miou"])
        assert (res.miou[i] == ref) or (math.isnan(res.miou[i]) and math.isnan(ref))


def test_threshold_sweep_exact_ties_and_dense_thresholds():
    # ties at a threshold are background (cams_to_mask uses a strict >), also for -0.0 vs 0.0
    cams = torch.tensor([[[[0.0, -0.0, 0.3, 0.30000001, 0.7, 0.2]]]])
    target = torch.tensor([[[0, 0, 1, 1, 1, 255]]])
    sw = BgScoreSweep(2, (-0.0, 0.3, 0.7))
    sw.update(cams, torch.ones(1, 1), target)
    cms = sw.confmats()
    # t=-0.0: the two zeros are background; t=0.3: 0.3 and float32(0.30000001) == float32(0.3) tie -> bg
    assert cms[0].tolist() == [[2, 0], [0, 3]]
    assert cms[1].tolist() == [[2, 0], [2, 1]]
    assert cms[2].tolist() == [[2, 0], [3, 0]]
    assert torch.equal(cms, _reference_sweep(cams, torch.ones(1, 1), target, 2, (-0.0, 0.3, 0.7)))
    # thresholds packed closer than the float32 lookup resolves (the binary-search fallback)
    g = torch.Generator().manual_seed(3)
    dense = [0.5 + 1e-5 * i for i in range(12)]
    cams = 0.5 + 1.3e-4 * torch.rand(2, 3, 5, 12, generator=g)
    cams[0, :, 0, :len(dense)] = torch.tensor(dense)  # exact ties
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    target = torch.randint(0, 4, (2, 5, 12), generator=g)
    sw = BgScoreSweep(4, dense)
    assert sw._most > 4
    sw.update(cams, labels, target)
    assert torch.equal(sw.confmats(), _reference_sweep(cams, labels, target, 4, dense))


@pytest.mark.parametrize("ignore_index", [-1, 255, 1000, None])
def test_threshold_sweep_ignore_index_values(ignore_index):
    g = torch.Generator().manual_seed(5)
    cams = torch.rand(2, 3, 4, 5, generator=g)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    target = torch.randint(0, 4, (2, 4, 5), generator=g)
    if ignore_index is not None:
        target[0, 0] = ignore_index
    ths = (0.1, 0.4, 0.6)
    sw = BgScoreSweep(4, ths, ignore_index=ignore_index)
    sw.update(cams, labels, target)
    ref = torch.stack([confusion_matrix(cams_to_mask(cams, labels, t), target, 4,
                                        ignore_index if ignore_index is not None else None) for t in ths])
    assert torch.equal(sw.confmats(), ref)
    assert int(ref[0].sum()) == 40 - (5 if ignore_index is not None else 0)
