"""Tests for the COCO 2014 reader and the 80-class id mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCOSegmentation,
    coco_id_to_contiguous,
    contiguous_to_coco_id,
)
from wsss_blocks.data.io import save_image, save_label_png
from wsss_blocks.data.voc import class_names_file, save_cls_labels, write_split_list

pytest.importorskip("PIL")


# ---------------------------------------------------------------- class list and mapping
def test_coco_classes_and_ids():
    assert len(COCO_CLASSES) == 80
    assert len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert COCO_CATEGORY_IDS[0] == 1
    assert COCO_CATEGORY_IDS[-1] == 90
    # the 10 ids the 2014 detection/segmentation annotations never use
    assert sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    named = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES))
    assert named[1] == "person"
    assert named[13] == "stop sign"
    assert named[44] == "bottle"
    assert named[67] == "dining table"
    assert named[72] == "tv"
    assert named[90] == "toothbrush"
    assert tuple(class_names_file("coco").read_text().split("\n")[:-1]) == COCO_CLASSES


def test_coco_id_to_contiguous_values():
    raw = np.array([[0, 1, 11, 13], [44, 67, 90, 255]], dtype=np.uint8)
    out = coco_id_to_contiguous(raw)
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 1, 11, 12], [40, 61, 80, 255]]
    t = coco_id_to_contiguous(torch.from_numpy(raw))
    assert t.dtype == torch.int64
    assert t.tolist() == out.tolist()
    assert coco_id_to_contiguous(90) == 80
    assert coco_id_to_contiguous(np.int64(0)) == 0
    # every raw id lands on its class index + 1
    np.testing.assert_array_equal(coco_id_to_contiguous(np.array(COCO_CATEGORY_IDS)), np.arange(1, 81))


@pytest.mark.parametrize("bad", [12, 26, 83, 91, 254, 256, -1])
def test_coco_id_unknown(bad):
    with pytest.raises(ValueError, match=rf"\[{bad}\] have no class"):
        coco_id_to_contiguous(np.array([0, bad]))
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        coco_id_to_contiguous(torch.tensor([bad, 1]))
    assert coco_id_to_contiguous(np.array([bad, 1]), unknown="ignore").tolist() == [255, 1]
    assert coco_id_to_contiguous(torch.tensor([bad, 1]), unknown="ignore").tolist() == [255, 1]


def test_coco_id_bad_types():
    with pytest.raises(TypeError, match="integer tensor"):
        coco_id_to_contiguous(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="integer array"):
        coco_id_to_contiguous(np.array([1.0]))
    with pytest.raises(TypeError, match="int, numpy array or tensor"):
        coco_id_to_contiguous("1")
    with pytest.raises(ValueError, match="unknown must be"):
        coco_id_to_contiguous(1, unknown="skip")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from((0, 255, *COCO_CATEGORY_IDS)), min_size=1, max_size=30))
def test_coco_mapping_roundtrip(ids):
    raw = np.array(ids, dtype=np.int64)
    cont = coco_id_to_contiguous(raw)
    assert ((cont >= 0) & (cont <= 80) | (cont == 255)).all()
    np.testing.assert_array_equal(contiguous_to_coco_id(cont), raw)
    np.testing.assert_array_equal(contiguous_to_coco_id(torch.from_numpy(cont)).numpy(), raw)


def test_contiguous_to_coco_id_unknown():
    with pytest.raises(ValueError, match=r"\[81\]"):
        contiguous_to_coco_id(np.array([81]))


# ---------------------------------------------------------------- reader
NAMES = {"train2014": ["COCO_train2014_000000000009", "COCO_train2014_000000000025"],
         "val2014": ["COCO_val2014_000000000042"]}


def _raw_mask(name: str) -> np.ndarray:
    m = np.zeros((4, 6), np.uint8)
    if name.endswith("09"):
        m[:2, :2] = 1  # person
        m[2:, 4:] = 90  # toothbrush
    elif name.endswith("25"):
        m[1:3, 1:5] = 25  # giraffe
    else:
        m[:, :3] = 67  # dining table
    return m


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "MSCOCO"
    for folder, names in NAMES.items():
        for n in names:
            save_image(root / "JPEGImages" / folder / f"{n}.jpg", np.full((4, 6, 3), 100, np.uint8))
            save_label_png(root / "SegmentationClass" / folder / f"{n}.png", _raw_mask(n), palette=False)
            save_label_png(root / "Contiguous" / folder / f"{n}.png", coco_id_to_contiguous(_raw_mask(n)),
                           palette=False)
    return root


def test_reader_raw_ids_remapped(coco_root):
    ds = COCOSegmentation(coco_root, "train", raw_category_ids=True)
    assert ds.names == NAMES["train2014"]
    assert ds.num_classes == 80
    s = ds[0]
    assert s["image"].shape == (3, 4, 6)
    assert s["labels"].shape == (80,)
    assert s["mask"].tolist() == coco_id_to_contiguous(_raw_mask(ds.names[0])).tolist()
    assert torch.nonzero(s["labels"]).flatten().tolist() == [0, 79]  # person, toothbrush
    assert torch.nonzero(ds[1]["labels"]).flatten().tolist() == [23]  # giraffe


def test_reader_contiguous_masks_and_alt_layouts(coco_root):
    import shutil
    ds = COCOSegmentation(coco_root, "val", mask_dir="Contiguous/val2014")
    assert int(ds[0]["mask"].max()) == 61
    assert int(ds[0]["labels"].argmax()) == 60
    # AFA-style folder names "train"/"val" and the coco2014 image folder
    shutil.move(coco_root / "JPEGImages" / "val2014", coco_root / "coco2014" / "val")
    shutil.move(coco_root / "SegmentationClass" / "val2014", coco_root / "SegmentationClass" / "val")
    ds = COCOSegmentation(coco_root, "val", raw_category_ids=True)
    assert ds.image_dir == coco_root / "coco2014" / "val"
    assert ds.names == NAMES["val2014"]


def test_reader_list_file_and_labels_file(coco_root):
    write_split_list(coco_root / "ImageSets" / "train.txt", NAMES["train2014"][1:])
    ds = COCOSegmentation(coco_root, "train", raw_category_ids=True)
    assert ds.names == NAMES["train2014"][1:]
    lst = write_split_list(coco_root / "lists" / "val_part.txt", NAMES["val2014"])
    ds = COCOSegmentation(coco_root, str(lst), raw_category_ids=True)  # "val" folders from the name
    assert ds.names == NAMES["val2014"]
    vec = np.zeros(80, np.float32)
    vec[5] = 1
    save_cls_labels(coco_root / "cls_labels_coco.npy", {NAMES["val2014"][0]: vec})
    ds = COCOSegmentation(coco_root, "val", labels_file="cls_labels_coco.npy", return_mask=False)
    s = ds[0]
    assert "mask" not in s
    assert int(s["labels"].argmax()) == 5


def test_raw_ids_without_flag_are_out_of_range(coco_root):
    ds = COCOSegmentation(coco_root, "train")
    with pytest.raises(ValueError, match=r"COCO_train2014_000000000009\.png.*\[90\] outside \[0, 80\]"):
        ds[0]


def test_unknown_raw_id_names_file(coco_root):
    m = _raw_mask("x")
    m[0, 0] = 12  # unused COCO id
    save_label_png(coco_root / "SegmentationClass" / "val2014" / "COCO_val2014_000000000042.png", m, palette=False)
    ds = COCOSegmentation(coco_root, "val", raw_category_ids=True)
    with pytest.raises(ValueError, match=r"COCO_val2014_000000000042\.png.*\[12\] have no class"):
        ds[0]


def test_coco_missing_folders(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO root folder"):
        COCOSegmentation(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no image folder for COCO split 'test'.*JPEGImages/test"):
        COCOSegmentation(coco_root, "test")
    with pytest.raises(FileNotFoundError, match=r"mask folder .*Nope"):
        COCOSegmentation(coco_root, "val", mask_dir="Nope")
    import shutil
    shutil.rmtree(coco_root / "SegmentationClass" / "val2014")
    with pytest.raises(FileNotFoundError, match=r"no list file and no mask folder.*SegmentationClass/val2014"):
        COCOSegmentation(coco_root, "val")
    with pytest.raises(ValueError, match=r"must be a .npy label dict"):
        COCOSegmentation(coco_root, "train", labels_file=coco_root / "JPEGImages")


def test_coco_name_without_image(coco_root):
    (coco_root / "JPEGImages" / "train2014" / "COCO_train2014_000000000025.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"COCO_train2014_000000000025\.jpg"):
        COCOSegmentation(coco_root, "train", raw_category_ids=True)
