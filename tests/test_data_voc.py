"""Tests for the VOC 2012 reader, split lists and image-level label sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_blocks.data.io import save_image, save_label_png
from wsss_blocks.data.transforms import Compose, Normalize, RandomCrop
from wsss_blocks.data.voc import (
    VOC_CLASSES,
    VOCSegmentation,
    class_names_file,
    decode_voc_name,
    derive_train_aug,
    labels_from_annotation,
    labels_from_mask,
    load_cls_labels,
    read_split_list,
    save_cls_labels,
    write_split_list,
)

pytest.importorskip("PIL")

TRAIN = ["2007_000032", "2007_000039"]
VAL = ["2007_000033"]
SBD_ONLY = ["2008_000002", "2008_000003"]  # in SegmentationClassAug only (like SBD)
SIZES = {"2007_000032": (6, 8), "2007_000039": (5, 5), "2007_000033": (7, 4), "2008_000002": (4, 6),
         "2008_000003": (5, 7)}


def _mask_for(name: str) -> np.ndarray:
    h, w = SIZES[name]
    m = np.zeros((h, w), np.uint8)
    k = int(name[-1])
    m[1:3, 1:3] = k  # class k - 1 (names end in 2, 3, 9 -> classes 1, 2, 8)
    m[0, :] = 255  # a void band
    if name == "2007_000039":
        m[3:, 3:] = 15  # person as well
    return m


def _image_for(name: str) -> np.ndarray:
    h, w = SIZES[name]
    rng = np.random.default_rng(int(name.replace("_", "")))
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _xml(objs: list[str]) -> str:
    body = "".join(f"<object><name>{o}</name><difficult>1</difficult></object>" for o in objs)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


@pytest.fixture
def voc_root(tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    for name in TRAIN + VAL + SBD_ONLY:
        save_image(root / "JPEGImages" / f"{name}.png", _image_for(name))
        save_label_png(root / "SegmentationClassAug" / f"{name}.png", _mask_for(name), palette=False)
        if name not in SBD_ONLY:
            save_label_png(root / "SegmentationClass" / f"{name}.png", _mask_for(name), palette=True)
        objs = [VOC_CLASSES[v - 1] for v in np.unique(_mask_for(name)) if 0 < v < 255]
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(_xml(objs))
        sal = np.zeros(SIZES[name], np.uint8)
        sal[1:3, 1:3] = 255
        save_image(root / "Sal" / f"{name}.png", sal)
    write_split_list(root / "ImageSets" / "Segmentation" / "train.txt", TRAIN)
    write_split_list(root / "ImageSets" / "Segmentation" / "val.txt", VAL)
    return root


def _ds(root, split="train", **kw):
    return VOCSegmentation(root, split=split, image_ext=".png", **kw)


# ---------------------------------------------------------------- constants
def test_voc_classes_standard_order_and_package_file():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane"
    assert VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[19] == "tvmonitor"
    assert VOC_CLASSES.index("diningtable") == 10
    assert VOC_CLASSES.index("pottedplant") == 15
    assert tuple(class_names_file("voc").read_text().split("\n")[:-1]) == VOC_CLASSES
    with pytest.raises(ValueError, match="dataset must be one of"):
        class_names_file("cityscapes")


@pytest.mark.parametrize(("token", "name"), [
    ("2007_000032", "2007_000032"), ("2007000032", "2007_000032"), (2011003276, "2011_003276"),
    ("/JPEGImages/2007_000032.jpg", "2007_000032"), ("SegmentationClassAug\\2008_000008.png", "2008_000008"),
    ("COCO_train2014_000000000009", "COCO_train2014_000000000009"),
])
def test_decode_voc_name(token, name):
    assert decode_voc_name(token) == name


# ---------------------------------------------------------------- samples
def test_sample_values_exact(voc_root):
    ds = _ds(voc_root)
    assert len(ds) == 2
    assert ds.names == TRAIN
    s = ds[1]
    assert s["name"] == "2007_000039"
    img = s["image"]
    assert img.dtype == torch.float32
    assert img.shape == (3, 5, 5)
    torch.testing.assert_close(img, torch.from_numpy(_image_for("2007_000039")).permute(2, 0, 1).float() / 255)
    assert s["mask"].dtype == torch.int64
    np.testing.assert_array_equal(s["mask"].numpy(), _mask_for("2007_000039"))
    expected = torch.zeros(20)
    expected[[8, 14]] = 1  # cat (mask 9) and person (mask 15)
    assert torch.equal(s["labels"], expected)
    assert ds[-1]["name"] == "2007_000039"
    with pytest.raises(IndexError):
        ds[2]


def test_default_mask_dir_prefers_aug_then_segmentationclass(voc_root):
    assert _ds(voc_root).mask_dir == voc_root / "SegmentationClassAug"
    import shutil
    shutil.rmtree(voc_root / "SegmentationClassAug")
    ds = _ds(voc_root)
    assert ds.mask_dir == voc_root / "SegmentationClass"
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), _mask_for("2007_000032"))  # palette PNG -> indices


def test_labels_sources_agree(voc_root):
    from_mask = _ds(voc_root, "val")
    vec = {n: np.asarray(from_mask[i]["labels"]) for i, n in enumerate(from_mask.names)}
    # ToCo string keys
    save_cls_labels(voc_root / "str.npy", vec)
    # IRN integer keys
    save_cls_labels(voc_root / "int.npy", vec, int_keys=True)
    raw = np.load(voc_root / "int.npy", allow_pickle=True).item()
    assert list(raw) == [2007000033]
    for lf in ("str.npy", voc_root / "int.npy", "Annotations", {"2007_000033": vec["2007_000033"]}):
        ds = _ds(voc_root, "val", labels_file=lf)
        assert torch.equal(ds[0]["labels"], from_mask[0]["labels"]), lf


def test_labels_file_without_masks(voc_root):
    import shutil
    save_cls_labels(voc_root / "cls_labels.npy", {"2007_000033": np.eye(20, dtype=np.float32)[3]})
    shutil.rmtree(voc_root / "SegmentationClassAug")
    shutil.rmtree(voc_root / "SegmentationClass")
    ds = _ds(voc_root, "val", labels_file="cls_labels.npy", return_mask=False)
    s = ds[0]
    assert "mask" not in s
    assert int(s["labels"].argmax()) == 3
    # test split style: neither masks nor labels
    s = _ds(voc_root, "val", return_mask=False, return_labels=False)[0]
    assert sorted(s) == ["image", "name"]
    with pytest.raises(FileNotFoundError, match=r"no mask folder found.*SegmentationClassAug"):
        _ds(voc_root, "val")


def test_saliency_and_transform(voc_root):
    t = Compose([Normalize(), RandomCrop(8)])
    ds = _ds(voc_root, saliency_dir="Sal", transform=t)
    s = ds[0]
    assert s["saliency"].shape == (1, 8, 8)
    assert s["image"].shape == (3, 8, 8)
    raw = _ds(voc_root, saliency_dir=voc_root / "Sal")[0]
    assert raw["saliency"].shape == (1, 6, 8)
    assert raw["saliency"].dtype == torch.float32
    assert float(raw["saliency"][0, 1, 1]) == 1.0
    assert float(raw["saliency"][0, 0, 0]) == 0.0


def test_dataloader_batches_with_crop(voc_root):
    from torch.utils.data import DataLoader
    ds = _ds(voc_root, "train_aug", transform=RandomCrop(6))
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 6, 6)
    assert batch["mask"].shape == (4, 6, 6)
    assert batch["labels"].shape == (4, 20)
    assert len(batch["name"]) == 4


# ---------------------------------------------------------------- splits
def test_train_aug_derived_from_aug_minus_val(voc_root):
    names = derive_train_aug(voc_root)
    assert names == sorted(TRAIN + SBD_ONLY)
    ds = _ds(voc_root, "train_aug")
    assert ds.names == names
    assert "derived" in repr(ds._resolve_split(voc_root, "train_aug")[1])
    assert set(TRAIN) <= set(ds.names)
    assert not set(VAL) & set(ds.names)
    # SegmentationClassAug kept elsewhere (an "SBD root"): derived from the given mask_dir
    import shutil
    sbd = voc_root.parent / "sbd" / "SegmentationClassAug"
    shutil.copytree(voc_root / "SegmentationClassAug", sbd)
    shutil.rmtree(voc_root / "SegmentationClassAug")
    assert _ds(voc_root, "train_aug", mask_dir=sbd).names == names
    # once written, the list file is used (here a subset, to prove it is read)
    write_split_list(voc_root / "ImageSets" / "SegmentationAug" / "train_aug.txt", names[:2])
    assert _ds(voc_root, "train_aug").names == names[:2]


def test_split_list_formats(voc_root, tmp_path):
    p = tmp_path / "lists" / "mine.txt"
    p.parent.mkdir()
    # IRN integer names, DeepLab "image mask" pairs, comments and blank lines
    p.write_text("# comment\n2007000032\n\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n")
    assert read_split_list(p) == TRAIN
    assert _ds(voc_root, str(p)).names == TRAIN
    assert _ds(voc_root, "ImageSets/Segmentation/val.txt").names == VAL  # relative to root


def test_write_split_list_atomic_and_validates(tmp_path):
    p = write_split_list(tmp_path / "a.txt", ["x", "y"])
    assert p.read_text() == "x\ny\n"
    with pytest.raises(ValueError, match="whitespace"):
        write_split_list(tmp_path / "b.txt", ["a b"])
    assert not (tmp_path / "b.txt").exists()


# ---------------------------------------------------------------- label helpers
def test_labels_from_mask_and_annotation(tmp_path):
    m = np.array([[0, 1, 255], [20, 20, 0]])
    lab = labels_from_mask(m)
    assert lab.dtype == np.float32
    assert lab.tolist() == [1.0] + [0.0] * 18 + [1.0]
    assert labels_from_mask(torch.from_numpy(m)).tolist() == lab.tolist()
    assert labels_from_mask(np.zeros((2, 2), int)).sum() == 0
    x = tmp_path / "a.xml"
    x.write_text(_xml(["person", "dog", "person"]))
    v = labels_from_annotation(x)
    assert np.flatnonzero(v).tolist() == [11, 14]
    x.write_text(_xml(["unicorn"]))
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        labels_from_annotation(x)
    x.write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"cannot parse annotation file .*a.xml"):
        labels_from_annotation(x)


def test_load_cls_labels_validation(tmp_path):
    p = tmp_path / "l.npy"
    np.save(p, np.array({"a": np.ones(19)}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"entry 'a' has shape \(19,\), expected \(20,\)"):
        load_cls_labels(p)
    np.save(p, np.array({"a": np.full(20, 0.5)}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="multi-hot"):
        load_cls_labels(p)
    np.save(p, np.zeros(3))
    with pytest.raises(ValueError, match="must hold a dict"):
        load_cls_labels(p)
    p.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read labels file"):
        load_cls_labels(p)
    with pytest.raises(FileNotFoundError, match=r"nothere.npy"):
        load_cls_labels(tmp_path / "nothere.npy")
    with pytest.raises(ValueError, match=r"\.npy"):
        save_cls_labels(tmp_path / "x.pkl", {})
    with pytest.raises(ValueError, match="VOC-style names"):
        save_cls_labels(tmp_path / "x.npy", {"abc": np.zeros(20)}, int_keys=True)


# ---------------------------------------------------------------- bad input
def test_missing_root_and_image_folder(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOC root folder .*nowhere"):
        VOCSegmentation(tmp_path / "nowhere")
    import shutil
    shutil.rmtree(voc_root / "JPEGImages")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        _ds(voc_root)


def test_missing_split_list(voc_root):
    with pytest.raises(FileNotFoundError, match=r"no list file for split 'trainval'.*Segmentation/trainval.txt"):
        _ds(voc_root, "trainval")
    with pytest.raises(FileNotFoundError, match=r"split list file .*missing.txt"):
        _ds(voc_root, "lists/missing.txt")
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val.txt"):
        _ds(voc_root, "train_aug")  # derivation needs the val list


def test_empty_split_list(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="holds no image names"):
        _ds(voc_root)


def test_missing_folders_named(voc_root):
    with pytest.raises(FileNotFoundError, match=r"mask folder .*NoMasks"):
        _ds(voc_root, mask_dir="NoMasks")
    with pytest.raises(FileNotFoundError, match=r"saliency folder .*NoSal"):
        _ds(voc_root, saliency_dir="NoSal")
    with pytest.raises(FileNotFoundError, match=r"labels_file .*none.npy"):
        _ds(voc_root, labels_file="none.npy")


def test_name_without_image_names_the_path(voc_root):
    (voc_root / "JPEGImages" / "2007_000039.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 names .*train.txt.*JPEGImages/2007_000039\.png"):
        _ds(voc_root)
    ds = _ds(voc_root, check_files=False)  # lazily: fails when the sample is read
    with pytest.raises(FileNotFoundError, match=r"2007_000039.png"):
        ds[1]


def test_name_without_mask_or_label(voc_root):
    (voc_root / "SegmentationClassAug" / "2007_000032.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask file.*2007_000032.png"):
        _ds(voc_root)
    save_cls_labels(voc_root / "l.npy", {"2007_000039": np.zeros(20)})
    with pytest.raises(ValueError, match=r"no entry in the labels file, e.g. '2007_000032'"):
        _ds(voc_root, labels_file="l.npy", return_mask=False)


def test_corrupt_image_names_file(voc_root):
    (voc_root / "JPEGImages" / "2007_000032.png").write_bytes(b"\x89PNG garbage")
    ds = _ds(voc_root)
    with pytest.raises(ValueError, match=r"2007_000032\.png.*corrupt"):
        ds[0]


@pytest.mark.parametrize("bad", [21, 100, 254])
def test_mask_values_out_of_range(voc_root, bad):
    m = _mask_for("2007_000032")
    m[4, 4] = bad
    save_label_png(voc_root / "SegmentationClassAug" / "2007_000032.png", m, palette=False)
    ds = _ds(voc_root)
    with pytest.raises(ValueError, match=rf"2007_000032\.png.*\[{bad}\] outside \[0, 20\]"):
        ds[0]


def test_mask_image_size_mismatch(voc_root):
    save_label_png(voc_root / "SegmentationClassAug" / "2007_000032.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"size \(3, 3\).*\(6, 8\)"):
        _ds(voc_root)[0]


def test_bad_split_type(voc_root):
    with pytest.raises(TypeError, match="split must be"):
        _ds(voc_root, 3)
