"""The pre-flight data check (wsss_blocks.data.check) and its hook in the reference trainer.

A tiny VOC-layout folder with five broken files (a truncated JPEG, a 16-bit PNG, a mask holding 37, a mask of
the wrong size, a 6000×4000 photo) is refused in one error naming all of them, before anything is written
into the run folder; a rerun reads every verdict from the cache without decoding a file.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import TRAINER_TINY
from PIL import Image

import wsss_blocks.data.check as check_mod
from wsss_blocks.data import (
    DataCheckError,
    SampleFiles,
    check_data_files,
    load_label_png,
    make_synthetic_voc,
    read_split_list,
    save_label_png,
)


def _broken_voc(tmp_path):
    """A 20-class VOC-layout root (synthetic pictures) with five broken files; returns (root, {what: file})."""
    root = make_synthetic_voc(tmp_path / "VOC2012", num_train=6, num_val=3, image_size=16, num_classes=20,
                              num_train_seg=3)
    train = read_split_list(root / "ImageSets" / "Segmentation" / "train.txt")
    aug = [n for n in read_split_list(root / "ImageSets" / "Segmentation" / "train_aug.txt") if n not in train]
    val = read_split_list(root / "ImageSets" / "Segmentation" / "val.txt")
    bad = {
        "truncated": root / "JPEGImages" / f"{aug[0]}.jpg",
        "16bit": root / "JPEGImages" / f"{aug[1]}.jpg",
        "oversized": root / "JPEGImages" / f"{aug[2]}.jpg",
        "value37": root / "SegmentationClassAug" / f"{val[0]}.png",
        "size": root / "SegmentationClassAug" / f"{val[1]}.png",
    }
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    ramp = (np.arange(256, dtype=np.int64).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(ramp).save(bad["16bit"], format="PNG")  # a 16-bit greyscale PNG under its .jpg name
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(bad["oversized"], format="JPEG", quality=50)
    m = load_label_png(bad["value37"])
    m[3, 4] = 37
    save_label_png(bad["value37"], m)
    save_label_png(bad["size"], np.zeros((15, 16), np.uint8))
    return root, bad


def _cfg_overrides(root, cache):
    return [*TRAINER_TINY, "data.dataset=voc", f"data.root={root}", "data.num_classes=20",
            "data.labels_file=cls_labels.npy", f"data.synthetic.cache_dir={cache}"]


def test_all_problems_in_one_error_before_any_write(tmp_path, monkeypatch):
    from wsss_blocks.train.reproduce import reproduce

    monkeypatch.setenv("WSSS_BLOCKS_CACHE", str(tmp_path / "cache"))
    root, bad = _broken_voc(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(DataCheckError) as info:
        reproduce("baseline", config="baseline_synthetic", overrides=_cfg_overrides(root, tmp_path / "c"), out=out,
                  verbose=False)
    msg = str(info.value)
    assert not out.exists()  # refused before the first write
    lines = {p.path: p.problem for p in info.value.report.problems}
    assert set(lines) == {str(p) for p in bad.values()}, msg
    assert "truncated" in lines[str(bad["truncated"])].lower()
    assert "16-bit image (PIL mode 'I;16')" in lines[str(bad["16bit"])]
    assert "6000×4000 = 24.0 MP exceeds data.max_image_pixels = 16,000,000" in lines[str(bad["oversized"])]
    assert "mask values [37] outside [0, 20] and 255" in lines[str(bad["value37"])]
    assert f"mask is 16×15 but its image {bad['size'].stem}.jpg is 16×16" in lines[str(bad["size"])]
    assert msg.startswith("the data check found 5 problem(s) in 5 of ")
    for p in bad.values():
        assert str(p) in msg
    assert "--skip-data-check" in msg


def test_rerun_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    root, bad = _broken_voc(tmp_path)
    from wsss_blocks.data import VOCSegmentation, dataset_files

    samples = []
    for split in ("train_aug", "train", "val"):
        samples += dataset_files(VOCSegmentation(root, split, return_mask=True, return_labels=False))
    decodes = []
    real = check_mod._decode
    monkeypatch.setattr(check_mod, "_decode", lambda img: decodes.append(1) or real(img))
    cache = tmp_path / "cache.json"
    first = check_data_files(samples, num_classes=20, cache_file=cache, progress=False, workers=2)
    assert first.decoded == first.files > 0
    # every file but the oversized image (named by its size, never decoded) and the truncated one (its header is
    # cut: PIL fails while opening it)
    assert len(decodes) == first.files - 2
    n = len(first.problems)
    assert n == 6  # the five, and the oversized image's mask, read here, which no longer matches its size
    decodes.clear()
    again = check_data_files(samples, num_classes=20, cache_file=cache, progress=False)
    assert decodes == []  # nothing decoded: every verdict comes from the cache
    assert again.decoded == 0
    assert again.problems == first.problems
    bad["value37"].touch()  # a changed file (new mtime) is decoded again, alone
    mask = load_label_png(bad["value37"])
    mask[3, 4] = 5
    save_label_png(bad["value37"], mask)
    third = check_data_files(samples, num_classes=20, cache_file=cache, progress=False)
    assert third.decoded == 1
    assert len(decodes) == 1
    assert len(third.problems) == n - 1


def test_the_config_key_and_the_flag_skip_it(tmp_path, monkeypatch):
    from wsss_blocks.cli import build_parser
    from wsss_blocks.train.datasets import preflight_data
    from wsss_blocks.train.schema import load_run_config

    monkeypatch.setenv("WSSS_BLOCKS_CACHE", str(tmp_path / "cache"))
    root, _ = _broken_voc(tmp_path)
    cfg = load_run_config("baseline_synthetic", [*_cfg_overrides(root, tmp_path / "c"), "data.preflight=false"])
    assert preflight_data(cfg) is None
    cfg = load_run_config("baseline_synthetic", _cfg_overrides(root, tmp_path / "c"))
    with pytest.raises(DataCheckError):
        preflight_data(cfg, ("seg",))  # the segmentation stage alone reads the broken train_aug and val files
    for cmd in (["reproduce"], ["train-cam", "-c", "x", "-o", "y"], ["make-pseudo", "-c", "x", "-o", "y"],
                ["train-seg", "-c", "x", "-o", "y"]):
        assert build_parser().parse_args([*cmd, "--skip-data-check"]).skip_data_check


def test_a_clean_dataset_passes_and_limits_are_configurable(tmp_path):
    root = make_synthetic_voc(tmp_path / "VOC", num_train=3, num_val=2, image_size=16, num_classes=20, num_train_seg=2)
    from wsss_blocks.data import check_data_root

    report = check_data_root(root, progress=False)
    assert report.problems == []
    assert report.files == (3 + 2) * 2  # train_aug and val, images and masks; train ⊂ train_aug is read once
    small = check_data_root(root, max_image_pixels=100, progress=False)
    assert len(small.problems) == 5  # each of the 5 images (16×16 = 256 pixels) is over 100
    assert all("exceeds data.max_image_pixels = 100" in p.problem for p in small.problems)
    missing = check_data_files([SampleFiles(tmp_path / "nope.jpg")], progress=False)
    assert "does not exist" in missing.problems[0].problem
    many = check_data_files([SampleFiles(tmp_path / f"n{i}.jpg") for i in range(30)], progress=False)
    msg = many.message(max_listed=20)
    assert "... and 10 more" in msg
    assert msg.count("does not exist") == 20


@pytest.mark.slow
def test_data_check_command(tmp_path):
    root, bad = _broken_voc(tmp_path)
    env = {"WSSS_BLOCKS_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    cmd = [sys.executable, "-m", "wsss_blocks.cli", "data", "check", str(root), "--files", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 1, res.stderr
    for p in bad.values():
        assert str(p) in res.stdout
