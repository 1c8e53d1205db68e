"""Mmsegmentation's training transforms (PMM's PSPNet recipe): resize by ratio, crop with cat_max_ratio, pad,
photometric distortion — against transcriptions of ``Eli-YiLi/WSSS_MMSeg`` (mmseg 0.8)
``mmseg/datasets/pipelines/transforms.py`` and mmcv's ``rescale_size``/``imresize``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_blocks.data.transforms import (
    PadTo,
    PhotoMetricDistortion,
    RandomCropInside,
    RandomResizeRatio,
    _hsv_u8_to_rgb,
    _rgb_to_hsv_u8,
    photometric_distortion,
)


def _u8(seed: int, h: int = 37, w: int = 53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[0, :6] = [[0, 0, 0], [255, 255, 255], [10, 10, 10], [255, 0, 0], [0, 255, 0], [3, 7, 7]]  # edge colours
    return img


def _to01(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------------------------------------- resize
@pytest.mark.parametrize(("h", "w", "ratio", "expected"), [
    (375, 500, 1.0, (512, 683)),     # short side bound: 512 / 375
    (375, 500, 0.5, (256, 341)),
    (375, 500, 2.0, (1024, 1365)),
    (100, 3000, 1.0, (68, 2048)),    # long side bound: 2048 / 3000
    (333, 333, 1.5, (768, 768)),
])
def test_resize_ratio_sizes_follow_mmcv_rescale_size(h, w, ratio, expected):
    # mmcv rescale_size: f = min(max_long / long, max_short / short), int(x * f + 0.5)
    f = min(2048 * ratio / max(h, w), 512 * ratio / min(h, w))
    assert (int(h * f + 0.5), int(w * f + 0.5)) == expected
    assert RandomResizeRatio.output_size(h, w, (2048, 512), ratio) == expected
    out = RandomResizeRatio((2048, 512), (ratio, ratio))({"image": torch.rand(3, h, w),
                                                          "mask": torch.zeros(h, w, dtype=torch.long)})
    assert tuple(out["image"].shape[-2:]) == expected == tuple(out["mask"].shape)


def test_resize_ratio_draws_uniform_ratios_and_keeps_labels():
    t = RandomResizeRatio((2048, 512), (0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    shorts = [t({"image": torch.rand(3, 375, 500)}, generator=g)["image"].shape[-2] for _ in range(200)]
    assert 256 <= min(shorts) < 300
    assert 980 < max(shorts) <= 1024
    assert abs(float(np.mean(shorts)) - 640) < 40  # uniform ratio: mean 1.25 · 512
    mask = torch.randint(0, 21, (30, 40), generator=g)
    mask[0, 0] = 255
    out = RandomResizeRatio((40, 30), (1.7, 1.7))({"image": torch.rand(3, 30, 40), "mask": mask})
    assert set(out["mask"].unique().tolist()) <= set(mask.unique().tolist())
    # cv2 INTER_NEAREST picks source pixel floor(i · scale)
    hs, ws = out["mask"].shape
    rows = (torch.arange(hs) * 30 / hs).floor().long()
    cols = (torch.arange(ws) * 40 / ws).floor().long()
    assert torch.equal(out["mask"], mask[rows][:, cols])


# ---------------------------------------------------------------------------------------------- crop + pad
def test_crop_inside_follows_mmseg_cat_max_ratio_loop():
    """The window is redrawn up to 10 times while one class covers >= cat_max_ratio (ignore excluded)."""
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[:, 24:] = 1
    mask[:2] = 255
    for seed in range(20):
        g1 = torch.Generator().manual_seed(seed)
        out = RandomCropInside(8, cat_max_ratio=0.75)({"image": torch.rand(3, 20, 30), "mask": mask}, generator=g1)
        # transcription with the same draws: randint(margin + 1) for y then x, per try
        g2 = torch.Generator().manual_seed(seed)
        _ = torch.rand(3, 20, 30)  # (the image above was drawn from the global RNG, not g1)

        def draw(g=g2):
            return int(torch.randint(13, (), generator=g)), int(torch.randint(23, (), generator=g))

        oy, ox = draw()
        for _ in range(10):
            crop = mask[oy:oy + 8, ox:ox + 8]
            vals, cnt = np.unique(crop.numpy(), return_counts=True)
            cnt = cnt[vals != 255]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < 0.75:
                break
            oy, ox = draw()
        assert torch.equal(out["mask"], mask[oy:oy + 8, ox:ox + 8])


def test_crop_inside_never_pads_and_pad_to_pads_bottom_right():
    s = RandomCropInside((8, 16))({"image": torch.rand(3, 5, 20), "mask": torch.ones(5, 20, dtype=torch.long)},
                                  generator=torch.Generator().manual_seed(0))
    assert tuple(s["image"].shape) == (3, 5, 16)
    p = PadTo((8, 16), pad_image_value=-1.0)(s)
    assert tuple(p["image"].shape) == (3, 8, 16)
    assert torch.equal(p["image"][:, :5], s["image"])
    assert bool((p["image"][:, 5:] == -1).all())
    assert bool((p["mask"][5:] == 255).all())
    assert bool((p["mask"][:5] == 1).all())


# ---------------------------------------------------------------------------------------------- photometric
def test_hsv_conversions_equal_opencv_8bit():
    cv2 = pytest.importorskip("cv2")
    img = _u8(0, 128, 128)
    ours = _rgb_to_hsv_u8(torch.from_numpy(img).permute(2, 0, 1).float()).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32))
    hsv = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    hsv[..., 0] %= 180
    back = _hsv_u8_to_rgb(torch.from_numpy(hsv).permute(2, 0, 1).float()).permute(1, 2, 0).numpy()
    ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    assert np.abs(back - ref).max() <= 1
    assert (back != ref).mean() < 1e-3  # float32 operation order only


def _mmseg_pmd(img_bgr: np.ndarray, delta, alpha, beta, hue, contrast_first):
    """Mmseg 0.8 ``PhotoMetricDistortion.__call__`` with its random draws replaced by given values."""
    cv2 = pytest.importorskip("cv2")

    def convert(img, a=1.0, b=0.0):
        img = img.astype(np.float32) * a + b
        return np.clip(img, 0, 255).astype(np.uint8)

    img = img_bgr
    if delta is not None:
        img = convert(img, b=delta)
    if contrast_first and alpha is not None:
        img = convert(img, a=alpha)
    if beta is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = convert(img[:, :, 1], a=beta)
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if hue is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not contrast_first and alpha is not None:
        img = convert(img, a=alpha)
    return img


@pytest.mark.parametrize(("delta", "alpha", "beta", "hue", "first"), [
    (20.7, None, None, None, False),
    (-31.2, 1.37, None, None, True),
    (None, 0.61, None, None, False),
    (None, None, 1.42, None, False),
    (None, None, 0.55, None, False),
    (None, None, None, 17, False),
    (None, None, None, -18, False),
    (12.5, 1.2, 0.8, -7, True),
    (-5.0, 0.7, 1.3, 11, False),
])
def test_photometric_distortion_equals_mmseg_on_8bit_images(delta, alpha, beta, hue, first):
    pytest.importorskip("cv2")
    # OpenCV's 8-bit HSV2RGB truncates in its vectorised loop and rounds in the scalar tail of each row; this
    # truncates. Rows of 128 pixels are vectorised whole (up to AVX-512), so only float rounding differs.
    img = _u8(3, 37, 128)
    ref = _mmseg_pmd(np.ascontiguousarray(img[..., ::-1]), delta, alpha, beta, hue, first)[..., ::-1]  # BGR
    ours = photometric_distortion(_to01(img), delta, alpha, beta, hue, contrast_first=first)
    ours_u8 = (ours * 255).round().permute(1, 2, 0).numpy()
    diff = np.abs(ours_u8 - ref.astype(np.float32))
    assert (diff > 0).mean() < 2e-3  # a few pixels off by float rounding, which a second HSV pass can double
    assert diff.max() <= 2


def test_photometric_distortion_hand_values_without_opencv():
    x = torch.tensor([10.0, 100.0, 250.0]).view(3, 1, 1) / 255
    # brightness then truncation: 250 + 20.7 clips to 255, 10 + 20.7 -> 30
    assert (photometric_distortion(x, brightness_delta=20.7) * 255).round().flatten().tolist() == [30, 120, 255]
    assert (photometric_distortion(x, contrast=0.5) * 255).round().flatten().tolist() == [5, 50, 125]
    # grey pixels have no saturation or hue to change
    grey = torch.full((3, 2, 2), 77 / 255)
    assert torch.equal(photometric_distortion(grey, saturation=1.5, hue_delta=10), grey)
    # pure red (H 0) shifted by 60 units (120°) is pure green
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert photometric_distortion(red, hue_delta=60).flatten().tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(photometric_distortion(x), (x * 255).round() / 255)  # no step: 8-bit copy


def test_photometric_distortion_random_draws():
    t = PhotoMetricDistortion()
    g = torch.Generator().manual_seed(0)
    draws = [t.draw(g) for _ in range(4000)]
    for key in ("brightness_delta", "contrast", "saturation", "hue_delta"):
        share = np.mean([d[key] is not None for d in draws])
        assert abs(share - 0.5) < 0.03, (key, share)
    assert abs(np.mean([d["contrast_first"] for d in draws]) - 0.5) < 0.03
    b = [d["brightness_delta"] for d in draws if d["brightness_delta"] is not None]
    c = [d["contrast"] for d in draws if d["contrast"] is not None]
    s = [d["saturation"] for d in draws if d["saturation"] is not None]
    hue = {d["hue_delta"] for d in draws if d["hue_delta"] is not None}
    assert -32 <= min(b) < -30
    assert 30 < max(b) <= 32
    assert 0.5 <= min(c) < 0.52
    assert 1.48 < max(c) <= 1.5
    assert 0.5 <= min(s) < 0.52
    assert 1.48 < max(s) <= 1.5
    assert hue == set(range(-18, 18))  # numpy randint(-18, 18): 18 excluded
    sample = {"image": torch.rand(3, 6, 6), "mask": torch.ones(6, 6, dtype=torch.long),
              "saliency": torch.rand(1, 6, 6)}
    out = t(sample, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["mask"], sample["mask"])
    assert torch.equal(out["saliency"], sample["saliency"])


@pytest.mark.parametrize(("make", "match"), [
    (lambda: RandomResizeRatio((2048,), (0.5, 2.0)), "img_scale"),
    (lambda: RandomResizeRatio((2048, 512), (2.0, 0.5)), "ratio_range"),
    (lambda: RandomCropInside(8, cat_max_ratio=0.0), "cat_max_ratio"),
    (lambda: PhotoMetricDistortion(brightness_delta=-1), "brightness_delta"),
    (lambda: PhotoMetricDistortion(contrast_range=(1.5, 0.5)), "contrast_range"),
    (lambda: PhotoMetricDistortion(hue_delta=-2), "hue_delta"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_photometric_distortion_bad_image():
    with pytest.raises(ValueError, match="RGB"):
        photometric_distortion(torch.rand(4, 3, 3))
