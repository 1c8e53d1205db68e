"""Tests for the joint (image, mask, saliency) transforms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRescale,
    RandomResizeLong,
    RandomResizeShort,
    Resize,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_generator,
)


def _coded_sample(h=6, w=9, classes=21):
    """Image channel 0 holds the mask value / 255, so joint geometry can be checked exactly."""
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, classes, (h, w), generator=g)
    mask[0, 0] = 255
    image = torch.stack([mask.float() / 255, torch.rand(h, w, generator=g), torch.rand(h, w, generator=g)])
    sal = (mask.float() / 255).unsqueeze(0)
    return {"image": image, "mask": mask, "saliency": sal, "name": "x", "labels": torch.ones(20)}


def _consistent(s):
    assert torch.equal(torch.round(s["image"][0] * 255).long(), s["mask"])
    assert torch.equal(s["saliency"][0], s["image"][0])


# ---------------------------------------------------------------- flip
def test_flip_p1_flips_everything_p0_identity():
    s = _coded_sample()
    out = RandomHorizontalFlip(p=1.0)(s)
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["mask"], s["mask"].flip(-1))
    assert torch.equal(out["saliency"], s["saliency"].flip(-1))
    assert out["name"] == "x"
    assert out["labels"] is s["labels"]
    assert torch.equal(s["mask"], _coded_sample()["mask"])  # the input dict is not modified
    same = RandomHorizontalFlip(p=0.0)(s)
    assert torch.equal(same["image"], s["image"])


def test_flip_probability_and_generator():
    t = RandomHorizontalFlip(p=0.3)
    g = torch.Generator().manual_seed(0)
    s = {"image": torch.arange(2.0).view(1, 1, 2).expand(3, 1, 2)}
    flips = sum(float(t(s, generator=g)["image"][0, 0, 0]) == 1.0 for _ in range(400))
    assert 80 < flips < 160  # ~120 expected


# ---------------------------------------------------------------- crop
def test_crop_is_a_window_of_the_input():
    s = _coded_sample(10, 12)
    out = RandomCrop((4, 5))(s, generator=torch.Generator().manual_seed(3))
    assert out["image"].shape == (3, 4, 5)
    assert out["mask"].shape == (4, 5)
    _consistent(out)
    # find the window: it must be an exact sub-array of the input
    found = [(y, x) for y in range(7) for x in range(8)
             if torch.equal(s["image"][:, y:y + 4, x:x + 5], out["image"])]
    assert len(found) >= 1
    y, x = found[0]
    assert torch.equal(s["mask"][y:y + 4, x:x + 5], out["mask"])


def test_crop_pads_with_ignore_and_pad_values():
    s = {"image": torch.ones(3, 3, 2), "mask": torch.full((3, 2), 7), "saliency": torch.ones(1, 3, 2)}
    out = RandomCrop(5, pad_image_value=-1.0, pad_mask_value=255)(s, generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 5, 5)
    assert int((out["mask"] == 7).sum()) == 6
    assert int((out["mask"] == 255).sum()) == 19
    assert torch.equal(out["image"][0] == 1, out["mask"] == 7)
    assert float(out["image"][out["image"] != 1].unique()) == -1.0
    assert float(out["saliency"].sum()) == 6.0


def test_crop_padding_position_is_random():
    s = {"image": torch.ones(3, 1, 1), "mask": torch.ones(1, 1, dtype=torch.long)}
    g = torch.Generator().manual_seed(0)
    positions = {int(torch.nonzero(RandomCrop(3)(s, generator=g)["mask"] == 1)[0].sum()) for _ in range(60)}
    assert len(positions) >= 4


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), st.integers(0, 10_000))
def test_crop_joint_consistency_property(h, w, ch, cw, seed):
    s = _coded_sample(h, w)
    out = RandomCrop((ch, cw), pad_image_value=1.0, pad_mask_value=255, pad_saliency_value=1.0)(
        s, generator=torch.Generator().manual_seed(seed))
    assert out["mask"].shape == (ch, cw)
    _consistent(out)  # pad 1.0 -> 255 in channel 0, matching the mask pad
    kept = int((out["mask"] != 255).sum())
    assert kept <= min(h, ch) * min(w, cw)


# ---------------------------------------------------------------- rescale
def test_rescale_discrete_scales_and_sizes():
    s = _coded_sample(6, 9)
    out = RandomRescale(scales=[2.0])(s)
    assert out["image"].shape == (3, 12, 18)
    assert out["mask"].shape == (12, 18)
    assert out["saliency"].shape == (1, 12, 18)
    # nearest-exact upsampling by 2 repeats each label exactly
    assert torch.equal(out["mask"], s["mask"].repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert out["mask"].dtype == torch.int64
    g = torch.Generator().manual_seed(0)
    sizes = {RandomRescale(scales=[0.5, 1.0, 1.5])(s, generator=g)["image"].shape[-1] for _ in range(50)}
    assert sizes == {4, 9, 14}  # round(9 * s) (banker's rounding: 4.5 -> 4, 13.5 -> 14)


def test_rescale_identity_scale_returns_same_tensors():
    s = _coded_sample()
    out = RandomRescale(scale_range=(1.0, 1.0))(s)
    assert out["image"] is s["image"]
    assert out["mask"] is s["mask"]


@settings(max_examples=30, deadline=None)
@given(st.floats(0.3, 2.5), st.integers(0, 1000))
def test_rescale_never_invents_labels(scale, seed):
    s = _coded_sample(7, 5)
    out = RandomRescale(scale_range=(scale, scale))(s, generator=torch.Generator().manual_seed(seed))
    assert set(out["mask"].unique().tolist()) <= set(s["mask"].unique().tolist())
    h, w = out["mask"].shape
    assert (h, w) == (max(1, round(7 * scale)), max(1, round(5 * scale)))
    assert out["image"].shape[-2:] == (h, w)


def test_rescale_uniform_range_covers_range():
    t = RandomRescale((0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    s = {"image": torch.rand(3, 100, 100)}
    sides = [t(s, generator=g)["image"].shape[-1] for _ in range(40)]
    assert 50 <= min(sides) < 70
    assert 180 < max(sides) <= 200


def test_resize_long():
    g = torch.Generator().manual_seed(0)
    s = _coded_sample(6, 9)
    for _ in range(10):
        out = RandomResizeLong(12, 20)(s, generator=g)
        assert 12 <= max(out["image"].shape[-2:]) <= 20
        assert out["mask"].shape == out["image"].shape[-2:]
    with pytest.raises(ValueError, match="min_long <= max_long"):
        RandomResizeLong(20, 10)


# ---------------------------------------------------------------- colour
def test_color_jitter_identity_and_known_factors():
    img = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    s = {"image": img, "mask": torch.zeros(4, 4, dtype=torch.long)}
    assert torch.equal(ColorJitter(0, 0, 0, 0)(s)["image"], img)
    out = ColorJitter(brightness=(0.5, 0.5), contrast=0, saturation=0)(s)["image"]
    torch.testing.assert_close(out, img * 0.5)
    grey = ColorJitter(brightness=0, contrast=0, saturation=(0.0, 0.0))(s)["image"]
    expected = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand(3, 4, 4)
    torch.testing.assert_close(grey, expected)
    flat = ColorJitter(brightness=0, contrast=(0.0, 0.0), saturation=0)(s)["image"]
    torch.testing.assert_close(flat, expected.mean().expand(3, 4, 4))


def test_color_jitter_range_and_mask_untouched():
    s = _coded_sample()
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = ColorJitter(0.8, 0.8, 0.8, 0.2)(s, generator=g)
        assert out["image"].min() >= 0
        assert out["image"].max() <= 1
        assert out["mask"] is s["mask"]
        assert out["saliency"] is s["saliency"]


def test_hue_shift_known_colours():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    hsv = rgb_to_hsv(red)
    assert hsv.flatten().tolist() == [0.0, 1.0, 1.0]
    green = hsv_to_rgb(torch.cat([hsv[:1] + 1 / 3, hsv[1:]]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_rgb_hsv_roundtrip(rgb):
    x = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-9, rtol=0)


# ---------------------------------------------------------------- normalise / compose / generators
def test_normalize_values():
    img = torch.rand(3, 2, 2)
    out = Normalize()({"image": img})["image"]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (img - mean) / std)
    with pytest.raises(ValueError, match="same length"):
        Normalize(mean=(0.5,), std=(1.0, 1.0))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="channels"):
        Normalize()({"image": torch.rand(4, 2, 2)})
    with pytest.raises(TypeError, match="floating-point"):
        Normalize()({"image": torch.ones(3, 2, 2, dtype=torch.uint8)})


def _pipeline():
    return Compose([RandomRescale((0.5, 2.0)), RandomHorizontalFlip(), ColorJitter(0.3, 0.3, 0.3, 0.05),
                    Normalize(), RandomCrop(8)])


def test_compose_reproducible_with_generator():
    s = _coded_sample(10, 10)
    a = _pipeline()(s, generator=torch.Generator().manual_seed(5))
    b = _pipeline()(s, generator=torch.Generator().manual_seed(5))
    c = _pipeline()(s, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    # a construction-time generator works the same way
    d = Compose(_pipeline().transforms, generator=torch.Generator().manual_seed(5))(s)
    assert torch.equal(a["image"], d["image"])


def test_compose_geometry_stays_joint():
    s = _coded_sample(9, 7)
    t = Compose([RandomHorizontalFlip(), RandomCrop((5, 11), pad_image_value=1.0, pad_saliency_value=1.0)])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        _consistent(t(s, generator=g))


def test_compose_accepts_plain_callables():
    def tag(sample):
        return {**sample, "tag": 1}
    out = Compose([tag, RandomHorizontalFlip(p=1.0)])({"image": torch.rand(3, 2, 2)})
    assert out["tag"] == 1


def test_sample_generator_per_sample_seeding():
    a = torch.rand(3, generator=sample_generator(7, index=3, epoch=0))
    b = torch.rand(3, generator=sample_generator(7, index=3, epoch=0))
    c = torch.rand(3, generator=sample_generator(7, index=4, epoch=0))
    d = torch.rand(3, generator=sample_generator(7, index=3, epoch=1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)


def test_batched_samples_share_parameters():
    s = {"image": torch.rand(2, 3, 6, 6), "mask": torch.randint(0, 3, (2, 6, 6)),
         "saliency": torch.rand(2, 1, 6, 6)}
    out = Compose([RandomRescale(scales=[1.5]), RandomHorizontalFlip(p=1.0), RandomCrop(4)])(s)
    assert out["image"].shape == (2, 3, 4, 4)
    assert out["mask"].shape == (2, 4, 4)
    assert out["saliency"].shape == (2, 1, 4, 4)


# ---------------------------------------------------------------- bad input
def test_bad_samples():
    t = RandomHorizontalFlip()
    with pytest.raises(TypeError, match="sample must be a dict"):
        t(torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="'image' entry"):
        t({"mask": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"C×H×W.*got 2-D"):
        t({"image": torch.rand(2, 2)})
    with pytest.raises(ValueError, match=r"sample\['mask'\] must have shape H×W with H×W = 2×2 .* got \(3, 2\)"):
        t({"image": torch.rand(3, 2, 2), "mask": torch.zeros(3, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"sample\['mask'\] must have shape H×W .* got \(1, 2, 2\)"):
        t({"image": torch.rand(3, 2, 2), "mask": torch.zeros(1, 2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"sample\['saliency'\] must have shape 1×H×W .* got \(2, 2\)"):
        t({"image": torch.rand(3, 2, 2), "saliency": torch.rand(2, 2)})
    with pytest.raises(TypeError, match=r"sample\['image'\] must be a floating-point tensor"):
        t({"image": torch.zeros(3, 2, 2, dtype=torch.uint8)})
    with pytest.raises(TypeError, match=r"sample\['mask'\] must hold class indices"):
        t({"image": torch.rand(3, 2, 2), "mask": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"sample\['mask'\] .* cannot be negative; got -1"):
        t({"image": torch.rand(3, 2, 2), "mask": torch.full((2, 2), -1)})
    nan = torch.rand(3, 2, 2)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"sample\['image'\] contains non-finite values"):
        t({"image": nan})
    with pytest.raises(ValueError, match="float RGB"):
        ColorJitter()({"image": torch.rand(1, 2, 2)})


@pytest.mark.parametrize("make", [lambda: Resize((4, 4)), lambda: RandomResizeLong(4, 8),
                                  lambda: RandomResizeShort(4, 8), lambda: RandomRescale(scales=[2.0]),
                                  lambda: RandomCrop(4)])
@pytest.mark.parametrize("hw", [(0, 0), (0, 5), (5, 0)])
def test_empty_images_are_refused_not_divided_by_zero(make, hw):
    """A 0×0 image raised ZeroDivisionError in the resize transforms (issue 19)."""
    sample = {"image": torch.rand(3, *hw), "mask": torch.zeros(hw, dtype=torch.long)}
    with pytest.raises(ValueError, match=rf"sample\['image'\] has an empty spatial size {hw[0]}×{hw[1]}"):
        make()(sample, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("make", "match"), [
    (lambda: RandomHorizontalFlip(p=1.5), "p must lie in"),
    (lambda: RandomRescale((2.0, 1.0)), "low <= high"),
    (lambda: RandomRescale((0.0, 1.0)), "scale_range"),
    (lambda: RandomRescale(scales=[]), "non-empty"),
    (lambda: RandomRescale(scales=[1.0, -1.0]), "scales must be > 0"),
    (lambda: RandomRescale(interpolation="nearest"), "interpolation"),
    (lambda: RandomResizeShort(8, 8, saliency_interpolation="bicubic"), "saliency_interpolation"),
    (lambda: Resize(8, saliency_interpolation="area"), "saliency_interpolation"),
    (lambda: RandomCrop(0), "size must be"),
    (lambda: RandomCrop((3, 2, 1)), "size must be"),
    (lambda: ColorJitter(brightness=-0.1), "brightness must be >= 0"),
    (lambda: ColorJitter(hue=0.7), "hue must lie"),
    (lambda: ColorJitter(contrast=(2.0, 1.0)), "contrast range"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_saliency_nearest_resize_equals_pil_nearest():
    """L2G's VOC loader resizes the saliency map with PIL NEAREST (utils/imutils.py ResizeShort, isimg=False)."""
    Image = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(3)
    sal_u8 = torch.randint(0, 256, (37, 53), generator=g, dtype=torch.uint8)
    sample = {"image": torch.rand(3, 37, 53, generator=g), "saliency": sal_u8.float().div(255)[None]}
    out = RandomResizeShort(64, 64, interpolation="bicubic", saliency_interpolation="nearest")(sample)
    h, w = out["saliency"].shape[-2:]
    ref = np.array(Image.fromarray(sal_u8.numpy()).resize((w, h), resample=Image.NEAREST))
    assert torch.equal((out["saliency"][0] * 255).round().to(torch.uint8), torch.from_numpy(ref))
    # no new values appear; the default (bilinear) does make new ones
    assert set(torch.unique(out["saliency"]).tolist()) <= set(torch.unique(sample["saliency"]).tolist())
    bil = RandomResizeShort(64, 64)(sample)["saliency"]
    assert not set(torch.unique(bil).tolist()) <= set(torch.unique(sample["saliency"]).tolist())
    for t in (RandomResizeLong(80, 80, saliency_interpolation="nearest"),
              Resize((50, 70), saliency_interpolation="nearest"),
              RandomRescale(scales=[1.7], saliency_interpolation="nearest")):
        o = t(sample)
        hh, ww = o["saliency"].shape[-2:]
        r = np.array(Image.fromarray(sal_u8.numpy()).resize((ww, hh), resample=Image.NEAREST))
        assert torch.equal((o["saliency"][0] * 255).round().to(torch.uint8), torch.from_numpy(r))
