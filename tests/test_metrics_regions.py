"""Tests for the region-coverage and boundary metrics of wsss_blocks.metrics (values on hand-built masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.metrics import (
    BoundaryMetric,
    RegionCoverage,
    boundary_band,
    boundary_counts,
    confusion_matrix,
    label_boundaries,
    region_coverage_counts,
    scores_from_confusion,
)


def _square(size=12, lo=3, hi=9, value=1):
    m = torch.zeros(size, size, dtype=torch.long)
    m[lo:hi, lo:hi] = value
    return m


# ------------------------------------------------------------------------------------------------ regions
def test_region_coverage_counts_by_hand():
    target = torch.tensor([[0, 0, 2, 2, 2, 255]])
    pred = torch.tensor([[0, 3, 2, 2, 0, 2]])
    region = torch.tensor([[0, 0, 1, 2, 2, 2]])
    c = region_coverage_counts(pred, target, region, 3)
    # region 0: two background pixels, one labelled 3 (a false positive)
    # region 1: one pixel, correct; region 2: two counted pixels (the ignored one is dropped), one correct
    assert c.tolist() == [[2, 1, 1], [1, 1, 1], [2, 1, 1]]
    assert c.dtype == torch.int64


def test_region_coverage_ignore_prediction_is_neither_correct_nor_foreground():
    c = region_coverage_counts(torch.tensor([[255, 255]]), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 2)
    assert c.tolist() == [[1, 0, 0], [1, 0, 0]]
    # without an ignore index 255 is just another (foreground, wrong) label
    c = region_coverage_counts(torch.tensor([[255, 1]]), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 2,
                               ignore_index=None)
    assert c.tolist() == [[1, 0, 1], [1, 1, 1]]


def test_region_coverage_accumulates_and_reports_rates():
    m = RegionCoverage(3)
    target = _square()
    region = _square(value=1)
    region[3:5, 3:5] = 2  # a "head" corner of the square
    pred = torch.zeros_like(target)
    pred[3:6, 3:6] = 1    # covers the head and 5 body pixels
    pred[0, 0] = 1        # one false positive in the background
    m.update(pred, target, region)
    m.update(pred[None], target[None], region[None])  # batched input adds the same counts again
    out = m.compute()
    assert out["pixels"].tolist() == [2 * 108, 2 * 32, 2 * 4]
    assert out["recall"].tolist() == pytest.approx([107 / 108, 5 / 32, 1.0])
    assert out["foreground_rate"].tolist() == pytest.approx([1 / 108, 5 / 32, 1.0])
    m.reset()
    out = m.compute()
    assert out["pixels"].sum() == 0
    assert math.isnan(float(out["recall"][0]))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_region_coverage_sums_to_pixel_accuracy(seed):
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(rng.integers(0, 4, (2, 9, 11)))
    pred = torch.from_numpy(rng.integers(0, 4, (2, 9, 11)))
    region = torch.from_numpy(rng.integers(0, 3, (2, 9, 11)))
    c = region_coverage_counts(pred, target, region, 3)
    assert int(c[:, 0].sum()) == target.numel()
    assert int(c[:, 1].sum()) == int((pred == target).sum())
    assert int(c[:, 2].sum()) == int((pred != 0).sum())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"region_mask": torch.tensor([[0, 3]])}, r"region_mask values must lie in \[0, 2\]"),
    ({"region_mask": torch.tensor([[0, 1, 1]])}, "region_mask must have the shape"),
    ({"num_regions": 0}, "num_regions must be an int >= 1"),
    ({"pred_mask": torch.tensor([[0.0, 1.0]])}, "pred_mask must be an integer tensor"),
    ({"pred_mask": torch.tensor([[0, 1, 1]])}, "same shape"),
])
def test_region_coverage_bad_input(kwargs, match):
    args = {"pred_mask": torch.tensor([[0, 1]]), "target_mask": torch.tensor([[0, 1]]),
            "region_mask": torch.tensor([[0, 1]]), "num_regions": 3, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        region_coverage_counts(**args)


# ------------------------------------------------------------------------------------------------ boundaries
def test_label_boundaries_marks_both_sides_and_skips_ignore():
    m = torch.tensor([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [255, 255, 1, 1]])
    b = label_boundaries(m).int()
    assert b.tolist() == [[0, 1, 1, 0],
                          [0, 1, 1, 0],
                          [0, 0, 0, 0]]
    # without an ignore index the 255 region has a boundary with its neighbours
    assert label_boundaries(m, ignore_index=None)[2].tolist() == [True, True, True, False]
    assert label_boundaries(m[None]).shape == (1, 3, 4)


def test_boundary_band_width():
    m = _square(size=10, lo=4, hi=10)  # boundary pixels: rows 3-4 (top edge) and columns 3-4 (left edge)
    band = boundary_band(m, 2)
    assert not band[0, 5]
    assert band[1, 5]
    assert band[6, 6]
    assert not band[7, 7]
    assert not band[9, 9]
    assert int(band.sum()) == int(boundary_band(m[None], 2).sum())
    assert torch.equal(boundary_band(m, 0), label_boundaries(m))
    ign = m.clone()
    ign[0] = 255
    assert not boundary_band(ign, 3)[0].any()  # ignored pixels are never in the band


def test_boundary_counts_shifted_edge_by_hand():
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])  # the edge is 2 pixels off
    # target boundary pixels 3, 4; prediction boundary pixels 5, 6
    assert boundary_counts(pred, target, tolerance=0).tolist() == [0, 2, 0, 2]
    assert boundary_counts(pred, target, tolerance=1).tolist() == [1, 2, 1, 2]
    assert boundary_counts(pred, target, tolerance=2).tolist() == [2, 2, 2, 2]


def test_boundary_counts_perfect_and_empty():
    t = _square()
    assert boundary_counts(t, t, tolerance=0).tolist() == [20 + 24, 44, 44, 44]
    empty = torch.zeros(1, 6, 6, dtype=torch.long)
    assert boundary_counts(empty, empty).tolist() == [0, 0, 0, 0]
    # prediction boundaries on ignored target pixels are not counted
    t = torch.full((1, 4), 255)
    assert boundary_counts(torch.tensor([[0, 1, 0, 1]]), t).tolist() == [0, 0, 0, 0]


def test_boundary_metric_values():
    m = BoundaryMetric(2, tolerance=1)
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pred = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    m.update(pred, target)
    out = m.compute()
    assert float(out["boundary_precision"]) == 0.5
    assert float(out["boundary_recall"]) == 0.5
    assert float(out["boundary_f"]) == 0.5
    # trimap band (width 1 around target boundary pixels 3, 4): pixels 2..5; pred [0, 0, 0, 0], target [0, 0, 1, 1]
    cm = confusion_matrix(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]), 2)
    assert float(out["trimap_miou"]) == pytest.approx(float(scores_from_confusion(cm)["miou"])) == 0.25
    m.reset()
    assert math.isnan(float(m.compute()["boundary_f"]))


def test_boundary_metric_far_edge_scores_zero_f():
    m = BoundaryMetric(2, tolerance=1)
    m.update(torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]]), torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1]]))
    out = m.compute()
    assert float(out["boundary_precision"]) == 0.0
    assert float(out["boundary_f"]) == 0.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 3))
def test_boundary_recall_grows_with_tolerance_and_is_one_on_identity(seed, tol):
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(rng.integers(0, 3, (1, 8, 8)))
    p = torch.from_numpy(rng.integers(0, 3, (1, 8, 8)))
    a = boundary_counts(p, t, tol)
    b = boundary_counts(p, t, tol + 1)
    assert int(b[0]) >= int(a[0])
    assert int(b[2]) >= int(a[2])
    assert a[1] == b[1]
    assert a[3] == b[3]
    same = boundary_counts(t, t, tol)
    assert int(same[0]) == int(same[1]) == int(same[2]) == int(same[3])


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (boundary_counts, {"tolerance": -1}, "tolerance must be an int >= 0"),
    (boundary_counts, {"tolerance": 1.5}, "tolerance must be an int >= 0"),
    (boundary_band, {"width": True}, "width must be an int >= 0"),
])
def test_boundary_bad_input(fn, kwargs, match):
    m = torch.zeros(1, 4, 4, dtype=torch.long)
    args = {"pred_mask": m, "target_mask": m} if fn is boundary_counts else {"mask": m}
    with pytest.raises((ValueError, TypeError), match=match):
        fn(**args, **kwargs)
    with pytest.raises(ValueError, match="H×W or B×H×W"):
        label_boundaries(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        BoundaryMetric(0)
