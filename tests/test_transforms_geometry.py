"""Geometry recording of the joint transforms (``RecordGeometry`` / ``Compose(record_geometry=True)``) and
``apply_geometry``: a recorded augmentation cut from the original equals the augmented sample.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.data.transforms import (
    GEOMETRY_FIELDS,
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRescale,
    RandomResizeLong,
    RecordGeometry,
    apply_geometry,
    identity_geometry,
)

PAD = -1.0


def _sample(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(3, h, w, generator=g), "mask": torch.randint(0, 5, (h, w), generator=g),
            "saliency": torch.rand(1, h, w, generator=g), "name": "x"}


def test_hand_case_flip_and_padded_crop():
    # 2×3 image, always flipped, crop 4×2: the canvas is 4×3 (two padded rows), the random draws give
    # (oy, ox, y0, x0); every recorded entry is checked against them by hand.
    img = torch.arange(6.0).view(1, 2, 3).expand(3, 2, 3).clone()
    t = Compose([RandomHorizontalFlip(p=1.0), RandomCrop((4, 2), pad_image_value=PAD)], record_geometry=True)
    gen = torch.Generator().manual_seed(3)
    ref = torch.Generator().manual_seed(3)
    torch.rand((), generator=ref)  # the flip draw
    oy, ox, y0, x0 = (int(torch.randint(n, (), generator=ref)) for n in (3, 1, 1, 2))
    out = t({"image": img}, generator=gen)
    geom = out["geom"].tolist()
    # crop pixel (y, x) = flipped-image pixel (y + y0 - oy, x + x0 - ox): the window (top, left) is given in the
    # coordinates of the flipped (resized) image, which apply_geometry flips before cutting
    assert geom == [2, 3, 2, 3, 1, y0 - oy, x0 - ox, 4, 2]
    cut = apply_geometry(img, out["geom"], mode="bilinear", align_corners=False, pad_value=PAD)
    assert torch.equal(cut, out["image"])
    # and explicitly: the flipped rows [2, 1, 0] / [5, 4, 3], cut at column x0, padded with -1 rows
    flipped = torch.tensor([[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]])
    canvas = torch.full((4, 3), PAD)
    canvas[oy:oy + 2] = flipped
    assert torch.equal(out["image"][0], canvas[y0:y0 + 4, x0:x0 + 2])


def test_apply_geometry_hand_values():
    x = torch.tensor([[[0.0, 2.0], [4.0, 6.0]]])
    # resize 2×2 -> 3×3 with align_corners=True puts the midpoints between the pixels
    g = torch.tensor([2, 2, 3, 3, 0, 0, 0, 3, 3])
    assert apply_geometry(x, g).tolist() == [[[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]]]
    # flipped and shifted one column left out of the image: the first column is padding
    g = torch.tensor([2, 2, 3, 3, 1, 1, -1, 2, 3])
    assert apply_geometry(x, g, pad_value=9.0).tolist() == [[[9.0, 4.0, 3.0], [9.0, 6.0, 5.0]]]
    # a window entirely outside the map is all padding
    assert apply_geometry(x, [2, 2, 2, 2, 0, 5, 5, 2, 2]).abs().sum() == 0
    assert identity_geometry(x).tolist() == [2, 2, 2, 2, 0, 0, 0, 2, 2]
    assert torch.equal(apply_geometry(x, identity_geometry(x)), x)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(3, 20), w=st.integers(3, 20), crop=st.integers(2, 24), seed=st.integers(0, 10_000),
       long_side=st.booleans(), flip_first=st.booleans())
def test_recorded_geometry_reproduces_the_augmentation_exactly(h, w, crop, seed, long_side, flip_first):
    s = _sample(h, w, seed)
    resize = RandomResizeLong(4, 30) if long_side else RandomRescale((0.4, 2.5))
    flip = RandomHorizontalFlip()
    ts = [resize, flip, RandomCrop(crop, pad_image_value=PAD, pad_saliency_value=0.0)]
    if flip_first:  # the segmentation order (resize, crop, flip) is expressible too
        ts = [resize, RandomCrop(crop, pad_image_value=PAD, pad_saliency_value=0.0), flip]
    out = Compose([RecordGeometry(), *ts])(s, generator=torch.Generator().manual_seed(seed))
    g = out["geom"]
    assert g.dtype == torch.long
    assert g.shape == (len(GEOMETRY_FIELDS),)
    assert g[:2].tolist() == [h, w]
    assert g[7:].tolist() == [crop, crop]
    # the transforms' own interpolation (bilinear, half-pixel) and nearest-exact for the mask: bit-exact
    assert torch.equal(apply_geometry(s["image"], g, "bilinear", align_corners=False, pad_value=PAD), out["image"])
    assert torch.equal(apply_geometry(s["saliency"], g, "bilinear", align_corners=False), out["saliency"])
    assert torch.equal(apply_geometry(s["mask"][None], g, "nearest-exact", pad_value=255)[0], out["mask"])


def test_recording_changes_no_output_and_no_random_draw():
    s = _sample(11, 7)
    ts = [RandomRescale((0.5, 2.0)), RandomHorizontalFlip(), ColorJitter(0.3, 0.3, 0.3, 0.1), RandomCrop(9)]
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = Compose(ts)(s, generator=ga)
    b = Compose(ts, record_geometry=True)(s, generator=gb)
    assert "geom" not in a
    assert "geom" in b
    for k in ("image", "mask", "saliency"):
        assert torch.equal(a[k], b[k])
    assert torch.equal(ga.get_state(), gb.get_state())  # the same number of draws
    assert "geom" not in s  # the input sample is not modified


def test_two_resizes_are_recorded_as_one():
    s = _sample(10, 14)
    t = Compose([RecordGeometry(), RandomResizeLong(20, 20), RandomRescale(scales=[0.5])])
    out = t(s)
    assert out["geom"].tolist() == [10, 14, 7, 10, 0, 0, 0, 7, 10]
    assert out["image"].shape[-2:] == (7, 10)


def test_geometry_bad_input():
    s = Compose([RecordGeometry(), RandomCrop(4)])(_sample(6, 6))
    with pytest.raises(ValueError, match="resizing only before cropping"):
        RandomRescale(scales=[2.0])(s)
    RandomRescale(scales=[2.0])({k: v for k, v in s.items() if k != "geom"})  # without recording: fine
    with pytest.raises(ValueError, match="9 entries"):
        RandomHorizontalFlip(p=1.0)({"image": torch.rand(3, 2, 2), "geom": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"original size \(6, 6\)"):
        apply_geometry(torch.rand(1, 5, 6), s["geom"])
    with pytest.raises(ValueError, match="must have 9 entries"):
        apply_geometry(torch.rand(1, 6, 6), [6, 6])
    with pytest.raises(ValueError, match="mode must be"):
        apply_geometry(torch.rand(1, 6, 6), s["geom"], mode="area")
    with pytest.raises(ValueError, match="flip flag"):
        apply_geometry(torch.rand(1, 6, 6), [6, 6, 6, 6, 2, 0, 0, 6, 6])
