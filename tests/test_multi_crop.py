"""PMM stages B/C (wsss_blocks.multi_crop) against transcriptions of the released functions of Eli-YiLi/PMM
(``tool/data.py`` get_multi_crop_params / update_label / the tile sampling of VOC12ClsHeatCropDataset,
``pipeline/infer_multi_crop.py`` merge, ``pipeline/infer_multi_scale.py`` normalisation and _crf_with_alpha).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.crf import DenseCRF, pydensecrf_available
from wsss_blocks.multi_crop import (
    PMM_CROP_SCALES,
    ROUGH_MASK_CRF,
    MultiCropCAM,
    multi_crop_boxes,
    multi_crop_cams,
    rough_mask_cams,
    rough_masks,
    sample_multi_crop_tile,
    tile_labels,
)


# --------------------------------------------------------------------------------------------------
# transcriptions of the release (for comparison only)
# --------------------------------------------------------------------------------------------------
def _rel_multi_crop_params(width, height, crop_scales, crop_size, stride):
    params_list = []
    for s in crop_scales:
        s_list = []
        w, h = int(width * s), int(height * s)
        w_num = 1 + math.ceil(max(0.0, float(w - crop_size)) / stride)
        h_num = 1 + math.ceil(max(0.0, float(h - crop_size)) / stride)
        for w_idx in range(w_num):
            for h_idx in range(h_num):
                if w_idx == (w_num - 1):
                    x2 = w
                    x1 = max(0, x2 - crop_size)
                else:
                    x2 = min(w, (w_idx + 1) * stride)
                    x1 = w_idx * stride
                if h_idx == (h_num - 1):
                    y2 = h
                    y1 = max(0, y2 - crop_size)
                else:
                    y2 = min(h, (h_idx + 1) * stride)
                    y1 = h_idx * stride
                s_list.append([int(float(x1) / s), int(float(y1) / s), int(float(x2) / s), int(float(y2) / s)])
        params_list.append(s_list)
    return params_list


def _rel_update_label(label, heat, param, label_thresh=0.1):
    new_label = np.zeros_like(label)
    k_first = next(iter(heat))
    selected = np.zeros_like(heat[k_first])
    selected[int(param[1]):int(param[3]), int(param[0]):int(param[2])] = 1
    for i in range(label.shape[0]):
        if int(i + 1) not in heat:
            continue
        mask = heat[int(i) + 1]
        if (mask > 0.9).sum() == 0:
            continue
        intersection = float(((mask > 0.9) * selected).sum())
        if (intersection / (mask > 0.9).sum()) > label_thresh or (intersection / selected.sum()) > label_thresh:
            new_label[i] = 1
    return new_label


def _rel_sample(label, heat, width, height, crop_scales, crop_size, stride, g):
    params = _rel_multi_crop_params(width, height, crop_scales, crop_size, stride)
    scale_idx = int(torch.rand(1, generator=g) * len(crop_scales))
    ins_len = len(params[scale_idx])
    for _ in range(ins_len):
        ins_idx = int(torch.rand(1, generator=g) * ins_len)
        param = params[scale_idx][ins_idx]
        new_label = _rel_update_label(label, heat, param)
        if new_label.sum() > 0:
            break
    return param, new_label


def _rel_multi_crop_merge(cam_fn, img, label, scales, crop_size, stride, num_cls):
    """``infer_multi_crop``: tiles (as VOC12ClsDatasetMultiCrop lists them) -> per-tile CAMs -> merge."""
    _, H, W = img.shape
    img_list, location = [], []
    for s in scales:
        for x1, y1, x2, y2 in _rel_multi_crop_params(W, H, [s], crop_size, stride)[0]:
            t = F.interpolate(img[None, :, y1:y2, x1:x2], size=(crop_size, crop_size), mode="bilinear",
                              align_corners=False, antialias=True)
            img_list += [t, t.flip(-1)]
            location += [[x1, y1, x2 - x1, y2 - y1]] * 2
    cam_list = []
    for i, (im, loc) in enumerate(zip(img_list, location)):
        cam = F.interpolate(cam_fn(im), (loc[3], loc[2]), mode="bilinear", align_corners=False)[0]
        cam = cam.numpy() * label.view(num_cls, 1, 1).numpy()
        if i % 2 == 1:
            cam = np.flip(cam, axis=-1)
        cam_list.append([cam, loc])
    sum_cam = np.zeros((num_cls, H, W))
    sum_counter = np.zeros_like(sum_cam)
    for crop, (x, y, w, h) in ((c, l) for c, l in cam_list):
        sum_cam[:, y:y + h, x:x + w] += crop
        sum_counter[:, y:y + h, x:x + w] += 1
    sum_counter[sum_counter < 1] = 1
    sum_cam = sum_cam / sum_counter
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    return (sum_cam - cam_min) / (cam_max - cam_min + 1e-5)


def _rel_multi_scale(cam_fn, img, label, num_cls, scales=(0.5, 1.0, 1.5, 2.0)):
    _, H, W = img.shape
    cam_list = []
    for s in scales:
        size = (round(H * s), round(W * s))
        x = img[None] if size == (H, W) else F.interpolate(img[None], size=size, mode="bicubic", align_corners=False,
                                                          antialias=True)
        for i, im in enumerate((x, x.flip(-1))):
            cam = F.interpolate(cam_fn(im), (H, W), mode="bilinear", align_corners=False)[0]
            cam = cam.numpy() * label.view(num_cls, 1, 1).numpy()
            cam_list.append(np.flip(cam, axis=-1) if i == 1 else cam)
    sum_cam = np.sum(cam_list, axis=0)
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    norm_cam = (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)
    return {i: norm_cam[i] for i in range(num_cls) if label[i] > 1e-5}


def _rel_crf_with_alpha(orig_img, cam_dict, alpha):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    v = np.array(list(cam_dict.values()))
    bg_score = np.power(1 - np.max(v, axis=0, keepdims=True), alpha)
    bgcam_score = np.concatenate((bg_score, v), axis=0)
    h, w = orig_img.shape[:2]
    n_labels = bgcam_score.shape[0]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(bgcam_score)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(orig_img), compat=10)
    crf_score = np.array(d.inference(10)).reshape((n_labels, h, w))
    out = {0: crf_score[0]}
    for i, key in enumerate(cam_dict.keys()):
        out[key + 1] = crf_score[i + 1]
    return out


def _rough(seed, C=4, H=40, W=56, present=(0, 2)):
    g = torch.Generator().manual_seed(seed)
    probs = torch.zeros(C + 1, H, W)
    probs[[0] + [c + 1 for c in present]] = torch.softmax(
        F.interpolate(torch.randn(1, len(present) + 1, 5, 7, generator=g) * 6, size=(H, W), mode="bilinear",
                      align_corners=False)[0], 0)
    labels = torch.zeros(C)
    labels[list(present)] = 1
    heat = {0: probs[0].numpy()}
    for c in present:
        heat[c + 1] = probs[c + 1].numpy()
    return probs, labels, heat


# --------------------------------------------------------------------------------------------------
# geometry, labels, sampling
# --------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(h=st.integers(20, 700), w=st.integers(20, 700), crop=st.integers(10, 500), stride=st.integers(5, 400))
def test_multi_crop_boxes_equal_release(h, w, crop, stride):
    ours = multi_crop_boxes(h, w, PMM_CROP_SCALES, crop, stride)
    ref = _rel_multi_crop_params(w, h, PMM_CROP_SCALES, crop, stride)
    assert [[list(b) for b in s] for s in ours] == ref
    for per_scale in ours:
        for x1, y1, x2, y2 in per_scale:
            assert 0 <= x1 < x2 <= w
            assert 0 <= y1 < y2 <= h


def test_multi_crop_boxes_released_voc_image():
    boxes = multi_crop_boxes(375, 500)
    assert [len(b) for b in boxes] == [1, 2, 4, 6, 6, 9, 12, 12, 15, 20]  # 87 tiles for a 375×500 image
    # at scale 3 every grid tile covers 100 px of the image and the border tile 149
    xs = sorted({(x1, x2) for x1, _, x2, _ in boxes[-1]})
    assert xs[0] == (0, 100)
    assert xs[-1] == (350, 500)


@pytest.mark.parametrize("seed", range(4))
def test_tile_labels_equal_release_update_label(seed):
    probs, labels, heat = _rough(seed)
    boxes = [b for s in multi_crop_boxes(40, 56, (0.75, 1.0, 2.0, 3.0), 24, 16) for b in s]
    ours = tile_labels(probs, labels, boxes)
    ref = np.stack([_rel_update_label(labels.numpy(), heat, b) for b in boxes])
    np.testing.assert_array_equal(ours.numpy(), ref)
    assert 0 < ours.sum() < ours.numel()


def test_tile_labels_hand_checked_thresholds():
    probs = torch.zeros(3, 10, 20)
    probs[1, :, :10] = 0.95  # class 0: left half, 100 px
    probs[2, :2, 18:] = 0.95  # class 1: a 4-px corner blob
    labels = torch.ones(2)
    boxes = [(0, 0, 1, 10),   # 10 px of class 0 = 10 % of it, 100 % of the tile: positive (tile filled)
             (10, 0, 20, 10),  # no class 0; all 4 px of class 1 = 100 % of the object: positive
             (9, 0, 18, 10)]   # 10 px of class 0 (10 %, 10/90 = 11 % of the tile): positive; class 1 none
    assert tile_labels(probs, labels, boxes).tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    # exactly 10 % is not enough (strict >)
    assert tile_labels(probs, labels, [(0, 0, 20, 10)], match_threshold=0.5).tolist() == [[1.0, 1.0]]
    only0 = torch.tensor([1.0, 0.0])  # 10 of class 0's 100 px in a 100-px tile: 10 % both ways
    assert tile_labels(probs, only0, [(9, 0, 19, 10)], match_threshold=0.1).tolist() == [[0.0, 0.0]]
    # absent classes never appear, whatever their posterior
    assert tile_labels(probs, torch.tensor([0.0, 1.0]), [(0, 0, 1, 10)]).tolist() == [[0.0, 0.0]]
    # posteriors must be above 0.9
    assert tile_labels(probs * 0.9, labels, [(0, 0, 1, 10)]).tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("seed", range(6))
def test_sample_tile_equals_release_draws(seed):
    probs, labels, heat = _rough(seed % 3, H=70, W=90)
    if seed >= 3:  # nothing confident: every draw fails, the last drawn tile comes back with an empty label
        probs[1:] *= 0.5
        heat = {k: (v * 0.5 if k else v) for k, v in heat.items()}
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    box, lab = sample_multi_crop_tile(probs, labels, (0.75, 1.0, 2.0, 3.0), crop_size=40, stride=25, generator=g1)
    ref_box, ref_lab = _rel_sample(labels.numpy(), heat, 90, 70, (0.75, 1.0, 2.0, 3.0), 40, 25, g2)
    assert list(box) == ref_box
    np.testing.assert_array_equal(lab.numpy(), ref_lab)
    assert torch.rand(1, generator=g1).item() == torch.rand(1, generator=g2).item()  # same number of draws


# --------------------------------------------------------------------------------------------------
# multi-crop and multi-scale CAM inference
# --------------------------------------------------------------------------------------------------
def _cam_net(C=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(6, C, 3, stride=4, padding=1)).eval()


def test_multi_crop_cams_equal_release_merge():
    net = _cam_net()
    img = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    scales = (0.75, 1.0, 1.5, 3.0)
    ours = multi_crop_cams(net, img, labels, scales, crop_size=32, stride=20, batch_size=3)
    with torch.no_grad():
        for b in range(2):
            ref = _rel_multi_crop_merge(net, img[b], labels[b], scales, 32, 20, 3)
            np.testing.assert_allclose(ours[b].numpy(), ref, rtol=1e-4, atol=1e-5)
    assert float(ours[0, 1].abs().max()) == 0.0
    assert float(ours[0, 0].max()) == pytest.approx(1.0, abs=1e-4)
    assert float(ours.min()) < 0  # the released normalisation: minimum pixels of a class with min > 0
    torch.testing.assert_close(MultiCropCAM(net, scales, 32, 20, 100)(img, labels), ours, rtol=1e-5, atol=1e-6)


def test_multi_crop_cams_position_only_model_recovers_the_image_map():
    # a per-pixel model on a constant-per-row image: every tile reproduces its part, the average is exact
    net = torch.nn.Conv2d(3, 1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    rows = torch.linspace(0, 1, 30).view(1, 1, 30, 1).expand(1, 3, 30, 40)
    out = multi_crop_cams(net, rows.contiguous(), torch.ones(1, 1), (1.0,), crop_size=16, stride=12,
                          antialias=False)
    # upsampling a tile of constant rows and back gives back the rows up to interpolation at the tile edges
    expected = (3 * rows[:, :1] - 3 * rows.min()) / (3 * rows.max() - 3 * rows.min() + 1e-5)
    assert float((out[0, 0, 2:-2] - expected[0, 0, 2:-2]).abs().max()) < 0.03


def test_rough_mask_cams_equal_release_normalisation():
    net = _cam_net(seed=3)
    img = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([[0.0, 1.0, 1.0]])
    ours = rough_mask_cams(net, img, labels)
    with torch.no_grad():
        ref = _rel_multi_scale(net, img[0], labels[0], 3)
    for c, v in ref.items():
        np.testing.assert_allclose(ours[0, c].numpy(), v, rtol=1e-4, atol=1e-5)
    assert float(ours[0, 0].abs().max()) == 0.0


@pytest.mark.skipif(not pydensecrf_available(), reason="needs pydensecrf (the crf extra)")
def test_rough_masks_equal_release_crf_with_alpha():
    g = torch.Generator().manual_seed(5)
    C, H, W = 4, 32, 44
    cams = torch.rand(1, C, 4, 6, generator=g)
    cams = F.interpolate(cams, size=(H, W), mode="bilinear", align_corners=False)
    cams = cams / cams.amax(dim=(2, 3), keepdim=True) * 0.99
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    cams = cams * labels[:, :, None, None]
    img = (F.interpolate(torch.rand(1, 3, 4, 5, generator=g), size=(H, W), mode="nearest") * 255).round() / 255
    ours = rough_masks(cams, labels, img, crf={"preset": "psa", "backend": "pydensecrf"})
    img_u8 = np.ascontiguousarray((img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    ref = _rel_crf_with_alpha(img_u8, {0: cams[0, 0].numpy(), 3: cams[0, 3].numpy()}, 24)
    for k, v in ref.items():
        np.testing.assert_allclose(ours[0, k].numpy(), v, rtol=0, atol=1e-6)
    assert float(ours[0, [2, 3]].abs().max()) == 0.0
    torch_backend = rough_masks(cams, labels, img, crf={"preset": "psa", "backend": "torch"})
    assert float((torch_backend - ours).abs().max()) < 1e-4
    rough_crf = DenseCRF.preset(ROUGH_MASK_CRF)
    assert {k: getattr(rough_crf, k) for k in ("iterations", "pos_w", "pos_xy", "bi_w", "bi_xy", "bi_rgb")} == {
        "iterations": 10, "pos_w": 3.0, "pos_xy": 3.0, "bi_w": 10.0, "bi_xy": 80.0, "bi_rgb": 13.0}


def test_rough_masks_no_class_is_background():
    out = rough_masks(torch.zeros(1, 2, 6, 6), torch.zeros(1, 2), torch.zeros(1, 3, 6, 6),
                      crf={"preset": "psa", "backend": "torch"})
    assert torch.equal(out[0, 0], torch.ones(6, 6))
    assert float(out[0, 1:].abs().max()) == 0.0


def test_bad_inputs_name_the_argument():
    probs, labels, _ = _rough(0)
    with pytest.raises(ValueError, match="height must be an int >= 1"):
        multi_crop_boxes(0, 10)
    with pytest.raises(ValueError, match="scales must be a non-empty"):
        multi_crop_boxes(10, 10, ())
    with pytest.raises(ValueError, match="scales must be > 0"):
        multi_crop_boxes(10, 10, (0.0,))
    with pytest.raises(ValueError, match="rough_probs must have shape"):
        tile_labels(probs[None], labels, [(0, 0, 2, 2)])
    with pytest.raises(ValueError, match="labels has 3 classes, expected 4"):
        tile_labels(probs, labels[:3], [(0, 0, 2, 2)])
    with pytest.raises(ValueError, match="fg_threshold must be a finite number"):
        tile_labels(probs, labels, [(0, 0, 2, 2)], fg_threshold=float("nan"))
    net = torch.nn.Conv2d(3, 2, 1)
    with pytest.raises(ValueError, match="fn must return a 2×2×h×w tensor"):
        multi_crop_cams(lambda x: x[:, :1], torch.rand(1, 3, 8, 8), torch.ones(1, 2), (1.0,), crop_size=8)
    with pytest.raises(ValueError, match="labels has batch size 1, expected 2"):
        multi_crop_cams(net, torch.rand(2, 3, 8, 8), torch.ones(1, 2), (1.0,), crop_size=8)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        multi_crop_cams(net, torch.rand(1, 3, 8, 8), torch.ones(1, 2), (1.0,), crop_size=8, batch_size=0)
    with pytest.raises(TypeError, match="model must be callable"):
        MultiCropCAM(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image01 must have shape \\(1, 3, 6, 6\\)"):
        rough_masks(torch.zeros(1, 2, 6, 6), torch.ones(1, 2), torch.zeros(1, 3, 5, 6))
    with pytest.raises(ValueError, match="image01 must lie in"):
        rough_masks(torch.zeros(1, 2, 6, 6), torch.ones(1, 2), torch.full((1, 3, 6, 6), 2.0))
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        rough_masks(torch.zeros(1, 2, 6, 6), torch.ones(1, 2), torch.zeros(1, 3, 6, 6), alpha=-1)
    assert "crop_size=448, stride=300" in repr(MultiCropCAM(net))
