"""Tests for the synthetic VOC-format dataset generator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_blocks.data.io import load_image, load_label_png, voc_palette
from wsss_blocks.data.synthetic import (
    PART_BACKGROUND,
    PART_BODY,
    PART_HEAD,
    SYNTHETIC_VERSION,
    make_synthetic_voc,
    render_synthetic_sample,
    render_synthetic_sample_detailed,
    synthetic_class_names,
)
from wsss_blocks.data.transforms import rgb_to_hsv
from wsss_blocks.data.voc import (
    VOC_CLASSES,
    VOCSegmentation,
    derive_train_aug,
    labels_from_annotation,
    load_cls_labels,
    read_split_list,
)

Image = pytest.importorskip("PIL.Image")

KW = {"num_train": 24, "num_val": 8, "image_size": 48, "seed": 3, "num_train_seg": 16}


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", **KW)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_lists(syn_root):
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "SaliencyMaps", "Annotations", "PartMasks"):
        assert (syn_root / d).is_dir(), d
    sets = syn_root / "ImageSets" / "Segmentation"
    train, train_aug, val = (read_split_list(sets / f"{s}.txt") for s in ("train", "train_aug", "val"))
    assert len(train_aug) == 24
    assert len(train) == 16
    assert len(val) == 8
    assert set(train) <= set(train_aug)
    assert not set(train_aug) & set(val)
    assert read_split_list(sets / "trainval.txt") == train + val
    assert train_aug[0] == "2030_000000"
    assert val[0] == "2031_000000"
    # the documented derivation reproduces train_aug exactly
    assert derive_train_aug(syn_root) == train_aug
    # SegmentationClass (palette) only for train + val, like VOC; Aug for everything
    assert len(list((syn_root / "SegmentationClass").iterdir())) == 24
    assert len(list((syn_root / "SegmentationClassAug").iterdir())) == 32
    meta = json.loads((syn_root / "synthetic.json").read_text())
    assert meta["params"]["seed"] == 3
    assert meta["classes_used"]["1"] == "aeroplane"


def test_real_reader_loads_every_split(syn_root):
    for split, n in (("train", 16), ("train_aug", 24), ("val", 8)):
        ds = VOCSegmentation(syn_root, split=split, saliency_dir="SaliencyMaps")
        assert len(ds) == n
        s = ds[0]
        assert s["image"].shape == (3, 48, 48)
        assert s["mask"].shape == (48, 48)
        assert s["saliency"].shape == (1, 48, 48)
    ds = VOCSegmentation(syn_root, split="train", mask_dir="SegmentationClass")
    ref = VOCSegmentation(syn_root, split="train")
    for i in range(3):
        assert torch.equal(ds[i]["mask"], ref[i]["mask"])  # palette and greyscale copies agree


def test_png_modes_and_palette(syn_root):
    p = Image.open(syn_root / "SegmentationClass" / "2030_000000.png")
    assert p.mode == "P"
    np.testing.assert_array_equal(np.array(p.getpalette()[:768], np.uint8).reshape(-1, 3), voc_palette())
    assert Image.open(syn_root / "SegmentationClassAug" / "2030_000000.png").mode == "L"
    assert Image.open(syn_root / "JPEGImages" / "2030_000000.jpg").format == "JPEG"


def test_label_sources_agree(syn_root):
    labels = load_cls_labels(syn_root / "cls_labels.npy")
    assert len(labels) == 32
    for name in ("2030_000000", "2030_000005", "2031_000003"):
        mask = load_label_png(syn_root / "SegmentationClassAug" / f"{name}.png")
        from_mask = np.zeros(20, np.float32)
        present = [v for v in np.unique(mask) if 0 < v < 255]
        from_mask[np.array(present, dtype=int) - 1] = 1
        np.testing.assert_array_equal(labels[name], from_mask)
        np.testing.assert_array_equal(labels_from_annotation(syn_root / "Annotations" / f"{name}.xml"), from_mask)


def test_classes_objects_and_slots(tmp_path):
    root = make_synthetic_voc(tmp_path / "v", num_train=60, num_val=0, image_size=48, seed=0, saliency=False,
                              annotations=False)
    labels = load_cls_labels(root / "cls_labels.npy")
    mat = np.stack(list(labels.values()))
    assert (mat[:, 6:] == 0).all()  # only the first 6 VOC slots are used by default
    assert (mat[:, :6].sum(0) >= 5).all()  # every used class occurs
    per_image = mat.sum(1)
    assert per_image.min() >= 1
    assert per_image.max() <= 3
    assert synthetic_class_names() == VOC_CLASSES[:6]
    assert not (root / "SaliencyMaps").exists()
    assert not (root / "Annotations").exists()


def test_deterministic_and_seed_dependent(tmp_path):
    kw = {"num_train": 5, "num_val": 2, "image_size": 32}
    a = _digest(make_synthetic_voc(tmp_path / "a", seed=1, **kw))
    b = _digest(make_synthetic_voc(tmp_path / "b", seed=1, **kw))
    c = _digest(make_synthetic_voc(tmp_path / "c", seed=2, **kw))
    assert a == b
    assert a["JPEGImages/2030_000000.jpg"] != c["JPEGImages/2030_000000.jpg"]
    # image i does not depend on how many images are generated
    d = _digest(make_synthetic_voc(tmp_path / "d", seed=1, num_train=3, num_val=1, image_size=32))
    for k in ("JPEGImages/2030_000002.jpg", "SegmentationClassAug/2031_000000.png"):
        assert d[k] == a[k]


def test_cache_and_overwrite(tmp_path):
    root = make_synthetic_voc(tmp_path / "r", num_train=3, num_val=1, image_size=32)
    f = root / "JPEGImages" / "2030_000000.jpg"
    f.write_bytes(b"tampered")
    make_synthetic_voc(root, num_train=3, num_val=1, image_size=32)  # same params: cached, untouched
    assert f.read_bytes() == b"tampered"
    make_synthetic_voc(root, num_train=3, num_val=1, image_size=32, overwrite=True)
    assert load_image(f).shape == (32, 32, 3)
    f.write_bytes(b"tampered")
    make_synthetic_voc(root, num_train=3, num_val=1, image_size=32, seed=9)  # new params: regenerated
    assert load_image(f).shape == (32, 32, 3)
    assert json.loads((root / "synthetic.json").read_text())["params"]["seed"] == 9


def test_png_images_and_pixel_exact_heads(tmp_path):
    """Saturated head pixels are all inside the GT and make up a minority of each object."""
    root = make_synthetic_voc(tmp_path / "p", num_train=30, num_val=0, image_size=64, seed=0, image_format="png")
    ds = VOCSegmentation(root, split="train_aug", image_ext=".png")
    head_frac = []
    for i in range(len(ds)):
        s = ds[i]
        hsv = rgb_to_hsv(s["image"])
        head = hsv[1] > 0.6  # heads are saturated (>= 0.75); bodies <= 0.3; backgrounds <= 0.4
        fg = s["mask"] > 0
        assert not (head & ~fg).any()  # no head pixel outside the GT: the GT is pixel-exact
        for c in torch.nonzero(s["labels"]).flatten().tolist():
            obj = s["mask"] == c + 1
            head_frac.append(float((head & obj).sum()) / float(obj.sum()))
    head_frac_t = torch.tensor(head_frac)
    # class evidence concentrated in a part: heads cover 10-45% of an object on average
    assert 0.10 < float(head_frac_t.mean()) < 0.45
    assert float((head_frac_t > 0).float().mean()) > 0.9  # nearly every object shows its head


def test_class_hue_is_the_class_evidence():
    """Head hue identifies the class; body colour carries no class information."""
    rng = np.random.default_rng(0)
    hue_by_class: dict[int, list[float]] = {}
    for _ in range(40):
        img, mask, _ = render_synthetic_sample(rng, 64, num_classes=6, max_objects=1)
        cls = int(mask.max())
        hsv = rgb_to_hsv(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        head = (hsv[1] > 0.6) & torch.from_numpy(mask > 0)
        if head.sum() > 0:
            hue_by_class.setdefault(cls, []).append(float(hsv[0][head].median()))
    centres = {c: float(np.median(v)) for c, v in hue_by_class.items()}
    assert len(centres) >= 5
    vals = sorted(centres.values())
    gaps = np.diff([*vals, vals[0] + 1.0])
    assert gaps.min() > 0.08  # distinct hue per class


def test_saliency_tracks_foreground(syn_root):
    ds = VOCSegmentation(syn_root, split="val", saliency_dir="SaliencyMaps")
    fg_vals, bg_vals = [], []
    for i in range(len(ds)):
        s = ds[i]
        fg = s["mask"] > 0
        fg_vals.append(float(s["saliency"][0][fg].mean()))
        bg_vals.append(float(s["saliency"][0][~fg].mean()))
    assert np.mean(fg_vals) > np.mean(bg_vals) + 0.4
    assert np.mean(fg_vals) < 0.99  # imperfect on purpose


def test_render_sample_shapes_and_dtypes():
    img, mask, sal = render_synthetic_sample(np.random.default_rng(1), 40, num_classes=20)
    assert img.shape == (40, 40, 3)
    assert img.dtype == np.uint8
    assert mask.shape == (40, 40)
    assert mask.dtype == np.uint8
    assert mask.max() <= 20
    assert sal.shape == (40, 40)
    assert sal.dtype == np.uint8


@pytest.mark.parametrize(("kw", "match"), [
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 21}, "num_classes"),
    ({"image_size": 8}, "image_size"),
    ({"num_train": 0}, "num_train"),
    ({"image_format": "bmp"}, "image_format"),
    ({"num_train_seg": 0}, "num_train_seg"),
    ({"max_objects": 0}, "max_objects"),
    ({"body_evidence": 1.5}, "body_evidence"),
    ({"body_evidence": -0.1}, "body_evidence"),
    ({"body_evidence": True}, "body_evidence"),
])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_voc(tmp_path / "x", **{"num_train": 2, "num_val": 1, "image_size": 32, **kw})


# ------------------------------------------------------------------------------------------ parts, body evidence
def test_default_images_equal_generator_version_1():
    """``body_evidence=0`` draws exactly the arrays of generator version 1 (digest recorded before version 2)."""
    h = hashlib.sha1()
    for i in range(6):
        img, mask, sal = render_synthetic_sample(np.random.default_rng([7, 0, i]), 48, 6, 3)
        h.update(img.tobytes())
        h.update(mask.tobytes())
        h.update(sal.tobytes())
    assert h.hexdigest() == "b218a27d5610bdab35478ff723ab8affe588dd68"
    assert SYNTHETIC_VERSION == 2


def test_part_mask_matches_the_class_mask_and_the_heads():
    for i in range(20):
        s = render_synthetic_sample_detailed(np.random.default_rng([1, 0, i]), 64, body_evidence=0.5)
        assert set(np.unique(s.part_mask).tolist()) <= {PART_BACKGROUND, PART_BODY, PART_HEAD}
        np.testing.assert_array_equal(s.part_mask > 0, s.mask > 0)  # a part wherever there is an object
        hsv = rgb_to_hsv(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255)
        sat = hsv[1].numpy()
        head, body = s.part_mask == PART_HEAD, s.part_mask == PART_BODY
        assert head.any()
        assert body.any()
        assert np.median(sat[head]) > 0.6
        assert sat[body].max() < 0.4
        assert len(s.body_tinted) >= 1


def _circular_distance(a, b):
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


@pytest.mark.parametrize("evidence", [0.0, 1.0])
def test_body_evidence_tints_the_body_with_the_class_hue(evidence):
    near = []
    for i in range(30):
        s = render_synthetic_sample_detailed(np.random.default_rng([2, 0, i]), 64, max_objects=1,
                                             body_evidence=evidence)
        assert s.body_tinted == (bool(evidence),)
        hsv = rgb_to_hsv(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255)
        body = torch.from_numpy(s.part_mask == PART_BODY)
        head = torch.from_numpy(s.part_mask == PART_HEAD)
        body_hue, head_hue = float(hsv[0][body].median()), float(hsv[0][head & (hsv[1] > 0.6)].median())
        near.append(_circular_distance(body_hue, head_hue) < 0.06)
        if evidence:
            assert 0.12 < float(hsv[1][body].median()) < 0.38  # faint: far below the heads' 0.75-0.95
    frac = float(np.mean(near))
    assert (frac == 1.0) if evidence else (frac < 0.4)  # random body hues land near the head's rarely


def test_body_evidence_fraction_and_files(tmp_path):
    tinted = [t for i in range(200)
              for t in render_synthetic_sample_detailed(np.random.default_rng([3, 0, i]), 32,
                                                        body_evidence=0.5).body_tinted]
    assert 0.4 < float(np.mean(tinted)) < 0.6
    root = make_synthetic_voc(tmp_path / "e", num_train=4, num_val=2, image_size=32, body_evidence=0.5)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["params"]["body_evidence"] == 0.5
    assert meta["params"]["version"] == 2
    assert meta["parts"] == {"0": "background", "1": "body", "2": "head"}
    for name in ("2030_000003", "2031_000001"):
        part = load_label_png(root / "PartMasks" / f"{name}.png")
        mask = load_label_png(root / "SegmentationClassAug" / f"{name}.png")
        np.testing.assert_array_equal(part > 0, mask > 0)
    plain = make_synthetic_voc(tmp_path / "p", num_train=4, num_val=2, image_size=32)
    assert _digest(root)["JPEGImages/2030_000000.jpg"] != _digest(plain)["JPEGImages/2030_000000.jpg"]
