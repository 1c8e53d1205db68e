"""wsss_blocks.data.prepare on tiny archives in the official layouts, served by a real HTTP server on 127.0.0.1.

The VOC tar has ``VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,ImageSets/Segmentation}``; the
SBD tgz has ``benchmark_RELEASE/dataset/{cls,inst,img}`` with ``.mat`` files written by ``scipy.io.savemat`` in
the ``GTcls`` struct layout; the COCO zips hold ``train2014/*.jpg`` and ``annotations/instances_*2014.json``
with polygons, uncompressed (crowd) and compressed RLE. Expected results are computed here independently:
train_aug from the lists by hand, masks from the ``.mat`` / PNG contents, COCO masks by a NumPy polygon
rasteriser (pixel centres inside the polygon) composited by the documented overlap rules.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

scipy_io = pytest.importorskip("scipy.io")
import scipy.sparse  # noqa: E402

from wsss_blocks import hub  # noqa: E402
from wsss_blocks.cli import main as cli_main  # noqa: E402
from wsss_blocks.data import prepare as P  # noqa: E402
from wsss_blocks.data.coco import COCO_CATEGORY_IDS, contiguous_to_coco_id  # noqa: E402
from wsss_blocks.data.voc import VOC_CLASSES, VOCSegmentation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------
# tiny VOC 2012 + SBD in the official layouts
# ----------------------------------------------------------------------------------------------------------
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
VOC_VAL = ["2007_000033", "2008_000003"]
SBD_TRAIN = ["2008_000002", "2008_000010", "2008_000011", "2007_000033"]
SBD_VAL = ["2008_000012", "2008_000013", "2008_000003"]
OTHER = ["2009_000001"]  # a VOC image in no segmentation split
# (SBD train ∪ SBD val ∪ VOC train) − VOC val, by hand
EXPECTED_TRAIN_AUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000010", "2008_000011", "2008_000012",
                      "2008_000013"]
ALL_NAMES = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL + OTHER))


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _jpeg(h: int, w: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _palette_png(mask: np.ndarray) -> bytes:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[:, 0] = np.arange(256)
    img.putpalette(pal.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _xml(classes: list[str]) -> bytes:
    objs = "".join(f"<object><name>{c}</name><difficult>{i % 2}</difficult><part><name>head</name></part>"
                   f"</object>" for i, c in enumerate(classes))
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>".encode()


def _mat(seg: np.ndarray) -> bytes:
    bounds = np.empty((20, 1), dtype=object)
    for i in range(20):
        bounds[i, 0] = scipy.sparse.csc_matrix(seg == i + 1)
    buf = io.BytesIO()
    scipy_io.savemat(buf, {"GTcls": {"Boundaries": bounds, "Segmentation": seg.astype(np.uint8),
                                     "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8)}})
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_300_000_000
    tf.addfile(info, io.BytesIO(data))


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            _add(tf, name, data)
    return buf.getvalue()


class TinyVOC:
    """The tiny VOC tar and SBD tgz, and what they contain."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.sizes = {n: (10 + i % 3, 14 + 2 * (i % 2)) for i, n in enumerate(ALL_NAMES)}
        self.voc_masks: dict[str, np.ndarray] = {}
        self.sbd_masks: dict[str, np.ndarray] = {}
        self.classes: dict[str, list[str]] = {}
        voc: dict[str, bytes] = {}
        base = "VOCdevkit/VOC2012/"
        for i, n in enumerate(ALL_NAMES):
            h, w = self.sizes[n]
            voc[base + f"JPEGImages/{n}.jpg"] = _jpeg(h, w, i)
            cls = sorted({VOC_CLASSES[(3 * i + k) % 20] for k in range(1 + i % 3)})
            self.classes[n] = cls
            voc[base + f"Annotations/{n}.xml"] = _xml(cls)
            if n in VOC_TRAIN + VOC_VAL:
                m = rng.integers(0, 21, (h, w)).astype(np.uint8)
                m[0, :] = 255  # the void band
                self.voc_masks[n] = m
                voc[base + f"SegmentationClass/{n}.png"] = _palette_png(m)
                voc[base + f"SegmentationObject/{n}.png"] = _palette_png(m // 2)
        seg = base + "ImageSets/Segmentation/"
        voc[seg + "train.txt"] = "".join(n + "\n" for n in VOC_TRAIN).encode()
        voc[seg + "val.txt"] = "".join(n + "\n" for n in VOC_VAL).encode()
        voc[seg + "trainval.txt"] = "".join(n + "\n" for n in VOC_TRAIN + VOC_VAL).encode()
        voc[base + "ImageSets/Main/train.txt"] = b"2009_000001\n"
        self.voc_tar = _tar(voc)
        sbd: dict[str, bytes] = {}
        for n in sorted(set(SBD_TRAIN + SBD_VAL)):
            h, w = self.sizes[n]
            m = rng.integers(0, 21, (h, w)).astype(np.uint8)
            self.sbd_masks[n] = m
            sbd[f"benchmark_RELEASE/dataset/cls/{n}.mat"] = _mat(m)
            sbd[f"benchmark_RELEASE/dataset/inst/{n}.mat"] = b"not needed"
            sbd[f"benchmark_RELEASE/dataset/img/{n}.jpg"] = b"not needed"
        sbd["benchmark_RELEASE/dataset/train.txt"] = "".join(n + "\n" for n in SBD_TRAIN).encode()
        sbd["benchmark_RELEASE/dataset/val.txt"] = "".join(n + "\n" for n in SBD_VAL).encode()
        sbd["benchmark_RELEASE/benchmark_code_RELEASE/README"] = b"code"
        self.sbd_tgz = _tar(sbd, "w:gz")


@pytest.fixture(scope="module")
def tiny_voc() -> TinyVOC:
    return TinyVOC()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in (hub.OFFLINE_ENV, hub.MIRROR_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))


def _serve(server, monkeypatch, key: str, data: bytes, *, md5: str | None = "match") -> None:
    """Serve ``data`` as archive ``key`` and point the registry at the server (with this md5)."""
    a = P.ARCHIVES[key]
    server.files[f"/official/{a.file_name}"] = data
    h = _md5(data) if md5 == "match" else md5
    monkeypatch.setitem(P.ARCHIVES, key, replace(a, urls=(f"{server.url}/official/{a.file_name}",), md5=h))


def _serve_voc(server, monkeypatch, tiny: TinyVOC) -> None:
    _serve(server, monkeypatch, "voc2012-trainval", tiny.voc_tar)
    _serve(server, monkeypatch, "sbd", tiny.sbd_tgz)


def _snapshot(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in files + dirs:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def _check_voc_result(data_root: Path, tiny: TinyVOC) -> None:
    seg = data_root / "ImageSets" / "Segmentation"
    assert (seg / "train_aug.txt").read_text().split() == EXPECTED_TRAIN_AUG
    aug = data_root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.iterdir()) == sorted(EXPECTED_TRAIN_AUG + VOC_VAL)
    for n in EXPECTED_TRAIN_AUG + VOC_VAL:
        with Image.open(aug / f"{n}.png") as im:
            assert im.mode == "L"
            got = np.array(im)
        if n in tiny.voc_masks:  # VOC's own mask wins, 255 band kept
            np.testing.assert_array_equal(got, tiny.voc_masks[n])
        else:  # the .mat contents, read back independently
            mat = scipy_io.loadmat(str(data_root.parents[1] / "benchmark_RELEASE/dataset/cls" / f"{n}.mat"))
            np.testing.assert_array_equal(got, mat["GTcls"][0]["Segmentation"][0])
            np.testing.assert_array_equal(got, tiny.sbd_masks[n])
    # 2008_000002 is in VOC train and SBD train with different masks: VOC's is used
    assert not np.array_equal(tiny.voc_masks["2008_000002"], tiny.sbd_masks["2008_000002"])
    labels = np.load(data_root / "cls_labels.npy", allow_pickle=True).item()
    assert sorted(labels) == sorted(int(n.replace("_", "")) for n in EXPECTED_TRAIN_AUG + VOC_VAL)
    for n in EXPECTED_TRAIN_AUG + VOC_VAL:
        vec = labels[int(n.replace("_", ""))]
        assert vec.dtype == np.float32
        assert vec.shape == (20,)
        assert [VOC_CLASSES[i] for i in np.flatnonzero(vec)] == [c for c in VOC_CLASSES if c in tiny.classes[n]]
    # the reader and its split resolution accept the result
    ds = VOCSegmentation(data_root, split="train_aug", labels_file="cls_labels.npy")
    assert ds.names == EXPECTED_TRAIN_AUG
    assert ds.mask_dir == aug
    s = ds[EXPECTED_TRAIN_AUG.index("2008_000010")]
    np.testing.assert_array_equal(s["mask"].numpy(), tiny.sbd_masks["2008_000010"])
    assert len(VOCSegmentation(data_root, split="val")) == 2
    # the SBD parts not converted were not extracted
    sbd = data_root.parents[1] / "benchmark_RELEASE"
    assert not (sbd / "dataset" / "inst").exists()
    assert not (sbd / "benchmark_code_RELEASE").exists()


# ----------------------------------------------------------------------------------------------------------
# VOC
# ----------------------------------------------------------------------------------------------------------
def test_voc_from_http_server(http_server, monkeypatch, tmp_path, tiny_voc, capsys):
    _serve_voc(http_server, monkeypatch, tiny_voc)
    res = P.prepare_voc(tmp_path / "data", progress=False)
    out = capsys.readouterr().out
    data_root = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    assert res.data_root == data_root
    assert res.counts == {"train": 3, "val": 2, "train_aug": 7, "masks": 9, "labels": 9}
    assert f"pass --data-root {data_root}" in out
    assert f"md5 {_md5(tiny_voc.voc_tar)} verified" in out
    assert "train_aug.txt: 7 names = (SBD train 4 ∪ SBD val 3 ∪ VOC train 3) − VOC val 2" in out
    assert "(5 written from VOC SegmentationClass, 4 from SBD .mat files)" in out
    _check_voc_result(data_root, tiny_voc)
    assert sorted((e["path"], e["status"]) for e in http_server.log) == [
        ("/official/VOCtrainval_11-May-2012.tar", 200), ("/official/benchmark.tgz", 200)]
    # downloads are kept under ROOT/archives by their official names, with no partial files left
    assert sorted(p.name for p in (tmp_path / "data" / "archives").iterdir() if not p.name.endswith(".lock")) == [
        "VOCtrainval_11-May-2012.tar", "benchmark.tgz"]
    assert P.diagnose_voc_root(data_root) is None
    # --remove-archives on the finished folder deletes the downloads and nothing else
    n = len(http_server.log)
    assert P.prepare_voc(tmp_path / "data", remove_archives=True, progress=False, verbose=False).ran == []
    assert list((tmp_path / "data" / "archives").iterdir()) == []
    assert len(http_server.log) == n
    _check_voc_result(data_root, tiny_voc)


def test_voc_rerun_is_a_noop(http_server, monkeypatch, tmp_path, tiny_voc, capsys):
    _serve_voc(http_server, monkeypatch, tiny_voc)
    root = tmp_path / "data"
    first = P.prepare_voc(root, progress=False, verbose=False)
    assert "verify" in first.ran
    before, n_requests = _snapshot(root), len(http_server.log)
    second = P.prepare_voc(root, progress=False)
    assert second.ran == []
    assert second.counts == first.counts
    assert len(http_server.log) == n_requests  # no request reached the server
    assert _snapshot(root) == before  # same files, same mtimes
    assert "already prepared" in capsys.readouterr().out
    # a deleted output is rebuilt by the step that makes it (and the steps after it), nothing else
    (root / "VOCdevkit/VOC2012/cls_labels.npy").unlink()
    third = P.prepare_voc(root, progress=False, verbose=False)
    assert third.ran == ["cls_labels.npy", "verify"]
    assert len(http_server.log) == n_requests
    _check_voc_result(root / "VOCdevkit/VOC2012", tiny_voc)


def test_voc_from_archives_folder_without_network(monkeypatch, tmp_path, tiny_voc):
    arch = tmp_path / "mine"
    arch.mkdir()
    (arch / "VOCtrainval_11-May-2012.tar").write_bytes(tiny_voc.voc_tar)
    (arch / "benchmark.tgz").write_bytes(tiny_voc.sbd_tgz)
    for key, data in (("voc2012-trainval", tiny_voc.voc_tar), ("sbd", tiny_voc.sbd_tgz)):
        a = P.ARCHIVES[key]
        monkeypatch.setitem(P.ARCHIVES, key, replace(a, urls=("http://127.0.0.1:9/unreachable",), md5=_md5(data)))
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")  # nothing may be downloaded
    res = P.prepare_voc(tmp_path / "data", archives=arch, progress=False, verbose=False)
    _check_voc_result(res.data_root, tiny_voc)
    assert not (tmp_path / "data" / "archives").exists()
    assert sorted(p.name for p in arch.iterdir()) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]
    # a missing archive in --archives is named with its URL; nothing is downloaded
    (arch / "benchmark.tgz").unlink()
    with pytest.raises(FileNotFoundError, match=r"benchmark.tgz is not in --archives folder .*unreachable"):
        P.prepare_voc(tmp_path / "other", archives=arch, progress=False, verbose=False)


def test_checksum_mismatch_one_line_nothing_extracted(http_server, monkeypatch, tmp_path, tiny_voc, capsys):
    expected = "0123456789abcdef0123456789abcdef"
    _serve(http_server, monkeypatch, "voc2012-trainval", tiny_voc.voc_tar, md5=expected)
    root = tmp_path / "data"
    rc = cli_main(["data", "prepare", "voc", "--root", str(root), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error: VOCtrainval_11-May-2012.tar")
    assert f"expected md5 {expected}" in err
    assert f"has md5 {_md5(tiny_voc.voc_tar)}" in err
    # nothing half-extracted, the wrong download deleted
    leftovers = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert leftovers == [".wsss_blocks_prepare.lock", "archives", "archives/VOCtrainval_11-May-2012.tar.lock"]
    # the same through --archives: the file is named, nothing is extracted, the user's file is kept
    arch = tmp_path / "mine"
    arch.mkdir()
    (arch / "VOCtrainval_11-May-2012.tar").write_bytes(tiny_voc.voc_tar)
    with pytest.raises(hub.ChecksumError, match=f"mine/VOCtrainval_11-May-2012.tar has md5 .*expected md5 {expected}"):
        P.prepare_voc(tmp_path / "d2", archives=arch, progress=False, verbose=False)
    assert not (tmp_path / "d2" / "VOCdevkit").exists()
    assert (arch / "VOCtrainval_11-May-2012.tar").is_file()
    # --no-verify uses the copy as it is
    res = P.prepare_voc(tmp_path / "d3", archives=arch, verify=False, sbd=False, progress=False, verbose=False)
    assert res.counts == {"train": 3, "val": 2, "labels": 5}


def test_partial_download_of_an_earlier_run_is_resumed(http_server, monkeypatch, tmp_path, tiny_voc):
    _serve_voc(http_server, monkeypatch, tiny_voc)
    arch = tmp_path / "data" / "archives"
    arch.mkdir(parents=True)
    half = len(tiny_voc.voc_tar) // 2
    (arch / "VOCtrainval_11-May-2012.tar.part").write_bytes(tiny_voc.voc_tar[:half])
    http_server.drop_after["/official/benchmark.tgz"] = 1000  # and a dropped connection mid-way
    res = P.prepare_voc(tmp_path / "data", progress=False, verbose=False)
    _check_voc_result(res.data_root, tiny_voc)
    log = [(e["path"].rsplit("/", 1)[1], e["range"], e["status"]) for e in http_server.log]
    assert log == [("VOCtrainval_11-May-2012.tar", f"bytes={half}-", 206), ("benchmark.tgz", None, 200),
                   ("benchmark.tgz", "bytes=1000-", 206)]


def test_interrupted_extraction_resumes(http_server, monkeypatch, tmp_path, tiny_voc):
    _serve_voc(http_server, monkeypatch, tiny_voc)
    real = P._copy_member
    calls = {"n": 0}

    def crash_after_five(src, target):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the process dies mid-extraction
        real(src, target)

    monkeypatch.setattr(P, "_copy_member", crash_after_five)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        P.prepare_voc(root, progress=False, verbose=False)
    assert not (root / "VOCdevkit" / "VOC2012").exists()  # never a half folder under the final name
    partial = root / "VOCdevkit" / ".VOC2012.partial"
    assert sum(1 for p in partial.rglob("*") if p.is_file()) == 5
    msg = P.diagnose_voc_root(root / "VOCdevkit" / "VOC2012")
    assert "the extraction of the VOC 2012 archive was interrupted" in msg
    assert f"`wsss-blocks data prepare voc --root {root}` again" in msg
    monkeypatch.setattr(P, "_copy_member", real)
    n_requests = len(http_server.log)
    res = P.prepare_voc(root, progress=False, verbose=False)
    assert not partial.exists()
    _check_voc_result(res.data_root, tiny_voc)
    assert [e["path"] for e in http_server.log[n_requests:]] == ["/official/benchmark.tgz"]  # the tar was kept


def test_interrupted_conversion_is_refused_then_resumed(http_server, monkeypatch, tmp_path, tiny_voc):
    from wsss_blocks.train.datasets import check_splits
    from wsss_blocks.train.schema import load_run_config

    _serve_voc(http_server, monkeypatch, tiny_voc)
    real = P.save_label_png
    calls = {"n": 0}

    def crash_after_three(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        real(*a, **k)

    monkeypatch.setattr(P, "save_label_png", crash_after_three)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        P.prepare_voc(root, progress=False, verbose=False)
    data_root = root / "VOCdevkit" / "VOC2012"
    assert len(list((data_root / "SegmentationClassAug").iterdir())) == 3
    # the half-converted root would pass for a smaller train_aug (derived from the PNGs): it is refused up front,
    # also for a config that reads no labels file
    cfg = load_run_config("baseline_voc", [f"data.root={data_root}"])
    with pytest.raises(FileNotFoundError, match=r"interrupted before step 'masks'.*data prepare voc --root "):
        check_splits(cfg)
    monkeypatch.setattr(P, "save_label_png", real)
    res = P.prepare_voc(root, progress=False, verbose=False)
    assert P._Manifest(data_root, "voc").steps["masks"]["kept"] == 3
    _check_voc_result(res.data_root, tiny_voc)
    check_splits(cfg)


def test_unprepared_roots_are_diagnosed(http_server, monkeypatch, tmp_path, tiny_voc):
    from wsss_blocks.train.datasets import check_splits
    from wsss_blocks.train.schema import load_run_config

    def l2g(root):
        return load_run_config("l2g_voc", [f"data.root={root}"])

    nowhere = tmp_path / "nothing" / "VOCdevkit" / "VOC2012"
    with pytest.raises(FileNotFoundError) as ei:
        check_splits(l2g(nowhere))
    assert str(ei.value).startswith(f"data.root {str(nowhere)!r} does not exist. VOC 2012 is not prepared")
    assert f"`wsss-blocks data prepare voc --root {tmp_path / 'nothing'}` creates it" in str(ei.value)
    other = tmp_path / "myvoc"
    assert (f"`wsss-blocks data prepare voc --root {other}` creates it, then pass --data-root "
            f"{other / 'VOCdevkit' / 'VOC2012'}") in P.diagnose_voc_root(other)

    _serve_voc(http_server, monkeypatch, tiny_voc)
    root = tmp_path / "data"
    P.prepare_voc(root, sbd=False, progress=False, verbose=False)  # VOC only: no SegmentationClassAug
    data_root = root / "VOCdevkit" / "VOC2012"
    with pytest.raises(FileNotFoundError, match=r"SegmentationClassAug is missing \(step: the SBD masks and "
                                                 r"train_aug\); run `wsss-blocks data prepare voc --root "):
        check_splits(l2g(data_root))
    assert "holds VOCdevkit/VOC2012; pass --data-root" in P.diagnose_voc_root(root)
    with pytest.raises(ValueError, match=f"is a VOC2012 folder itself; pass --root {root} "):
        P.prepare_voc(data_root, progress=False, verbose=False)  # the data root given as --root
    P.prepare_voc(root, progress=False, verbose=False)  # now with SBD
    assert P.diagnose_voc_root(data_root) is None
    # L2G reads PoolNet saliency maps from Sal: the message names the set, its page and the command
    with pytest.raises(FileNotFoundError) as ei:
        check_splits(l2g(data_root))
    msg = str(ei.value)
    assert "saliency folder" in msg
    assert f"the saliency maps are missing ({data_root / 'Sal'})" in msg
    assert f"wsss-blocks data prepare saliency poolnet-voc --root {root} --from" in msg
    assert P.SALIENCY_SETS["poolnet-voc"].page in msg
    # install the maps the user downloaded (a zip with its own inner folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in ALL_NAMES:
            h, w = tiny_voc.sizes[n]
            png = io.BytesIO()
            Image.fromarray(np.full((h, w), 200, np.uint8)).save(png, format="PNG")
            zf.writestr(f"voc_sal/Sal/{n}.png", png.getvalue())
        zf.writestr("voc_sal/readme.txt", "maps")
    (tmp_path / "sal.zip").write_bytes(buf.getvalue())
    final = P.prepare_saliency("poolnet-voc", root, source=tmp_path / "sal.zip", progress=False, verbose=False)
    assert final == data_root / "Sal"
    assert len(list(final.glob("*.png"))) == len(ALL_NAMES)
    check_splits(l2g(data_root))  # prepared, saliency installed: every split of the l2g_voc config opens
    assert P.prepare_saliency("poolnet-voc", root, progress=False, verbose=False) == final  # no-op


def test_official_counts_are_enforced_on_the_official_lists(monkeypatch, tmp_path, tiny_voc):
    # VOC lists with the official lengths make the real-data counts apply: a wrong SBD is refused before any
    # conversion
    train = [f"2007_{i:06d}" for i in range(1464)]
    val = [f"2008_{i:06d}" for i in range(1449)]
    base = "VOCdevkit/VOC2012/"
    voc = {base + "JPEGImages/2007_000000.jpg": _jpeg(8, 8, 0), base + "Annotations/2007_000000.xml": _xml(["cat"]),
           base + "SegmentationClass/2007_000000.png": _palette_png(np.zeros((8, 8), np.uint8)),
           base + "ImageSets/Segmentation/train.txt": "\n".join(train).encode(),
           base + "ImageSets/Segmentation/val.txt": "\n".join(val).encode()}
    arch = tmp_path / "a"
    arch.mkdir()
    (arch / "VOCtrainval_11-May-2012.tar").write_bytes(_tar(voc))
    (arch / "benchmark.tgz").write_bytes(tiny_voc.sbd_tgz)
    with pytest.raises(ValueError, match=r"SBD dataset/train.txt: 4 names, expected 8,498 with the official"):
        P.prepare_voc(tmp_path / "d", archives=arch, verify=False, progress=False, verbose=False)
    assert not (tmp_path / "d/VOCdevkit/VOC2012/SegmentationClassAug").exists()


def test_unsafe_archive_members_are_refused(tmp_path):
    spec = P._VOC
    for members, kind in (({"VOCdevkit/VOC2012/../../evil.txt": b"x"}, "outside"),
                          ({"/etc/evil": b"x"}, "outside")):
        path = tmp_path / "bad.tar"
        path.write_bytes(_tar(members))
        with pytest.raises(P.UnsafeArchiveError, match=kind):
            P._extract(path, spec, tmp_path / "root", verified=False, progress=False, verbose=False)
        assert not (tmp_path / "evil.txt").exists()
        assert not (tmp_path / "root" / "VOCdevkit" / "VOC2012").exists()
        assert not (tmp_path / "root" / "VOCdevkit" / ".VOC2012.partial").exists()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("VOCdevkit/VOC2012/JPEGImages/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    (tmp_path / "link.tar").write_bytes(buf.getvalue())
    with pytest.raises(P.UnsafeArchiveError, match="is a link"):
        P._extract(tmp_path / "link.tar", spec, tmp_path / "root", verified=False, progress=False, verbose=False)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("train2014/../../x.jpg"), b"x")
    (tmp_path / "bad.zip").write_bytes(zbuf.getvalue())
    with pytest.raises(P.UnsafeArchiveError, match="outside"):
        P._extract(tmp_path / "bad.zip", P._COCO_IMAGES["train"], tmp_path / "root", verified=False, progress=False,
                   verbose=False)
    # an archive without the official content is named, and leaves nothing
    (tmp_path / "other.tar").write_bytes(_tar({"VOCdevkit/VOC2012/JPEGImages/a.jpg": b"x"}))
    with pytest.raises(ValueError, match="holds no VOCdevkit/VOC2012/Annotations: is it the official"):
        P._extract(tmp_path / "other.tar", spec, tmp_path / "root", verified=False, progress=False, verbose=False)
    assert sorted(p.name for p in (tmp_path / "root" / "VOCdevkit").iterdir()) == []


def test_mirror_and_offline_variables(http_server, monkeypatch, tmp_path, tiny_voc):
    for key, data in (("voc2012-trainval", tiny_voc.voc_tar), ("sbd", tiny_voc.sbd_tgz)):
        a = P.ARCHIVES[key]
        http_server.files[f"/mirror/{a.file_name}"] = data
        monkeypatch.setitem(P.ARCHIVES, key, replace(a, urls=(f"{http_server.url}/gone/{a.file_name}",),
                                                     md5=_md5(data)))
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(hub.OfflineError, match=r"VOCtrainval_11-May-2012.tar is not at .*archives.*OFFLINE"):
        P.prepare_voc(tmp_path / "data", progress=False, verbose=False)
    assert http_server.log == []
    monkeypatch.delenv(hub.OFFLINE_ENV)
    monkeypatch.setenv(hub.MIRROR_ENV, f"{http_server.url}/mirror")
    res = P.prepare_voc(tmp_path / "data", progress=False, verbose=False)
    _check_voc_result(res.data_root, tiny_voc)
    assert [e["path"] for e in http_server.log] == ["/mirror/VOCtrainval_11-May-2012.tar", "/mirror/benchmark.tgz"]


def test_read_sbd_mat_and_bad_files(tmp_path):
    seg = np.array([[0, 1, 20], [15, 15, 0]], np.uint8)
    (tmp_path / "a.mat").write_bytes(_mat(seg))
    np.testing.assert_array_equal(P.read_sbd_mat(tmp_path / "a.mat"), seg)
    scipy_io.savemat(str(tmp_path / "b.mat"), {"other": np.zeros(3)})
    with pytest.raises(ValueError, match=r"b.mat is not an SBD class file \(expected struct GTcls"):
        P.read_sbd_mat(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(_mat(np.array([[0, 21]], np.uint8)))
    with pytest.raises(ValueError, match=r"values \[21\] outside 0..20"):
        P.read_sbd_mat(tmp_path / "c.mat")
    with pytest.raises(FileNotFoundError):
        P.read_sbd_mat(tmp_path / "missing.mat")


@pytest.mark.slow
def test_cli_subprocess_with_archives(tmp_path, tiny_voc):
    arch = tmp_path / "mine"
    arch.mkdir()
    (arch / "VOCtrainval_11-May-2012.tar").write_bytes(tiny_voc.voc_tar)
    (arch / "benchmark.tgz").write_bytes(tiny_voc.sbd_tgz)
    env = {**os.environ, "PYTHONPATH": str(REPO), hub.OFFLINE_ENV: "1"}
    root = tmp_path / "data"
    cmd = [sys.executable, "-m", "wsss_blocks.cli", "data", "prepare", "voc", "--root", str(root), "--archives",
           str(arch), "--no-verify", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    data_root = root / "VOCdevkit" / "VOC2012"
    assert r.stdout.strip().splitlines()[-1] == f"pass --data-root {data_root}"
    assert "VOC 2012 + SBD ready: train 3, val 2, train_aug 7, SegmentationClassAug masks 9" in r.stdout
    _check_voc_result(data_root, tiny_voc)
    chk = [sys.executable, "-m", "wsss_blocks.cli", "data", "check"]
    r = subprocess.run([*chk, str(data_root)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0
    assert r.stdout.strip() == f"{data_root}: ready"
    r = subprocess.run([*chk, str(data_root), "--saliency-dir", "SALImages"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1
    assert "wsss-blocks data prepare saliency pfan-voc" in r.stdout


# ----------------------------------------------------------------------------------------------------------
# saliency sets
# ----------------------------------------------------------------------------------------------------------
def test_saliency_without_direct_link_says_where_to_get_it(tmp_path, capsys):
    rc = cli_main(["data", "prepare", "saliency", "pfan-voc", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    s = P.SALIENCY_SETS["pfan-voc"]
    assert s.page in err
    assert "halbielee/EPS" in err
    assert str(tmp_path / "VOCdevkit" / "VOC2012" / "SALImages") in err
    assert f"wsss-blocks data prepare saliency pfan-voc --root {tmp_path} --from" in err
    with pytest.raises(ValueError, match="unknown saliency set 'poolnet'; known: poolnet-voc"):
        P.prepare_saliency("poolnet", tmp_path)


def test_saliency_with_direct_link_is_fetched_and_checked(http_server, monkeypatch, tmp_path):
    names = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for n in names:
            png = io.BytesIO()
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(png, format="PNG")
            _add(tf, f"maps/{n}.png", png.getvalue())
    data = buf.getvalue()
    http_server.files["/sal/pfan_coco.tar.gz"] = data
    entry = replace(P.SALIENCY_SETS["pfan-coco"], url=f"{http_server.url}/sal/pfan_coco.tar.gz",
                    file_name="pfan_coco.tar.gz", sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(P.SALIENCY_SETS, "pfan-coco", entry)
    root = tmp_path / "coco"
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("\n".join([*names, "COCO_train2014_000000000030"]) + "\n")
    with pytest.raises(ValueError, match=r"1 images of .*train.txt have no saliency map, e.g. "
                                         r"COCO_train2014_000000000030.png"):
        P.prepare_saliency("pfan-coco", root, progress=False, verbose=False)
    assert not (root / "SALImages").exists()
    assert not (root / ".SALImages.partial").exists()
    (seg / "train.txt").write_text("\n".join(names) + "\n")
    final = P.prepare_saliency("pfan-coco", root, progress=False, verbose=False)
    assert final == root / "SALImages"
    assert sorted(p.stem for p in final.glob("*.png")) == names
    assert [e["path"] for e in http_server.log] == ["/sal/pfan_coco.tar.gz"]  # the second call used the download


# ----------------------------------------------------------------------------------------------------------
# COCO 2014
# ----------------------------------------------------------------------------------------------------------
def _poly_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (even-odd rule), by NumPy alone."""
    ys, xs = np.mgrid[0:h, 0:w]
    X, Y = xs + 0.5, ys + 0.5
    px, py = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
    inside = np.zeros((h, w), bool)
    for i in range(len(px)):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % len(px)], py[(i + 1) % len(px)]
        if y0 == y1:
            continue
        cross = (y0 > Y) != (y1 > Y)
        xint = x0 + (Y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= cross & (xint > X)
    return inside


def _uncompressed_rle(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with a run of zeros), by NumPy alone."""
    flat = m.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat) != 0) + 1
    counts = [int(c) for c in np.diff(np.concatenate([[0], edges, [flat.size]]))]
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


class TinyCOCO:
    """Two tiny COCO 2014 splits with polygons, multi-part polygons, crowd RLE and compressed RLE."""

    def __init__(self) -> None:
        from pycocotools import mask as mask_utils

        self.images: dict[str, list[dict]] = {"train": [], "val": []}
        self.anns: dict[str, list[dict]] = {"train": [], "val": []}
        self.truth: dict[int, np.ndarray] = {}  # annotation id -> boolean mask (NumPy)
        self.files: dict[str, dict[str, bytes]] = {"train": {}, "val": {}}
        ann_id = 100
        h, w = 24, 32
        # train image 9: a big rectangle (person) overlapped by a smaller diamond (dog, raw id 18 -> 17), a
        # two-part polygon (car, id 3), and a crowd RLE (raw id 90 -> 80) overlapping the rectangle
        specs = {
            ("train", 9): [
                (1, [[2, 2, 20, 2, 20, 16, 2, 16]], 0),
                (18, [[11.5, 4, 16, 8.5, 11.5, 13, 7, 8.5]], 0),
                (3, [[22, 1, 30, 1, 30, 5, 22, 5], [24, 18, 31, 18, 31, 23, 24, 23]], 0),
                (90, "crowd", 1),
            ],
            ("train", 25): [(44, "compressed", 0), (62, [[0, 0, 10, 0, 10, 10, 0, 10]], 0)],
            ("train", 30): [],  # no annotation: no mask with coco2voc, an empty one with recam
            ("val", 42): [(5, [[4, 4, 28, 4, 28, 20, 4, 20]], 0), (5, [[6, 6, 9, 6, 9, 9, 6, 9]], 0)],
            ("val", 73): [(90, [[1, 1, 31, 1, 31, 23, 1, 23]], 0)],
        }
        for (split, img_id), anns in specs.items():
            name = f"COCO_{split}2014_{img_id:012d}"
            self.images[split].append({"id": img_id, "file_name": f"{name}.jpg", "height": h, "width": w})
            self.files[split][f"{split}2014/{name}.jpg"] = _jpeg(h, w, img_id)
            for cat, seg, crowd in anns:
                if seg == "crowd":
                    m = np.zeros((h, w), bool)
                    m[10:22, 12:26] = True
                    segmentation: object = _uncompressed_rle(m)
                elif seg == "compressed":
                    m = np.zeros((h, w), bool)
                    m[3:9, 5:30] = True
                    m[12:20, 20:22] = True
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:
                    m = np.zeros((h, w), bool)
                    for poly in seg:
                        m |= _poly_mask(poly, h, w)
                    segmentation = seg
                self.truth[ann_id] = m
                self.anns[split].append({"id": ann_id, "image_id": img_id, "category_id": cat, "iscrowd": crowd,
                                         "segmentation": segmentation, "area": float(m.sum()),
                                         "bbox": [0, 0, 1, 1]})
                ann_id += 1
        # shuffle annotation order in the file: the overlap rules must not depend on it (coco2voc sorts by area)
        for split in ("train", "val"):
            self.anns[split] = self.anns[split][::-1]
        cats = [{"id": i, "name": str(i), "supercategory": "x"} for i in COCO_CATEGORY_IDS]
        self.zips: dict[str, bytes] = {}
        for split in ("train", "val"):
            self.zips[split] = self._zip(self.files[split])
        self.zips["annotations"] = self._zip({
            f"annotations/instances_{s}2014.json": json.dumps(
                {"images": self.images[s], "annotations": self.anns[s], "categories": cats}).encode()
            for s in ("train", "val")} | {"annotations/captions_train2014.json": b"{}"})

    @staticmethod
    def _zip(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for d in sorted({n.split("/")[0] + "/" for n in members}):
                zf.writestr(d, b"")
            for n, b in members.items():
                zf.writestr(n, b)
        return buf.getvalue()

    def expected(self, split: str, img_id: int, convention: str) -> np.ndarray:
        """The label map by the documented rules, from the NumPy masks (contiguous ids)."""
        anns = [a for a in self.anns[split] if a["image_id"] == img_id]
        out = np.zeros((24, 32), np.int64)
        if convention == "coco2voc":
            for a in sorted(anns, key=lambda a: a["area"]):
                m = self.truth[a["id"]] & (out == 0)
                out[m] = COCO_CATEGORY_IDS.index(a["category_id"]) + 1
        else:  # file order, later annotations overwrite earlier ones, crowd regions stay background
            for a in anns:
                if not a["iscrowd"]:
                    out[self.truth[a["id"]]] = COCO_CATEGORY_IDS.index(a["category_id"]) + 1
        return out


@pytest.fixture(scope="module")
def tiny_coco():
    pytest.importorskip("pycocotools")
    return TinyCOCO()


def _serve_coco(server, monkeypatch, tiny):
    for key, z in (("coco2014-train", "train"), ("coco2014-val", "val"), ("coco2014-annotations", "annotations")):
        _serve(server, monkeypatch, key, tiny.zips[z], md5=None)


def test_coco_masks_equal_numpy_rendering(http_server, monkeypatch, tmp_path, tiny_coco, capsys):
    from wsss_blocks.data.coco import COCOSegmentation

    _serve_coco(http_server, monkeypatch, tiny_coco)
    root = tmp_path / "coco"
    res = P.prepare_coco(root, progress=False)
    out = capsys.readouterr().out
    assert "train2014.zip: no checksum is published for this file" in out
    assert res.data_root == root
    assert res.counts == {"train": 2, "val": 2, "labels": 4}
    assert (root / "ImageSets/Segmentation/train.txt").read_text().split() == [
        "COCO_train2014_000000000009", "COCO_train2014_000000000025"]  # image 30 has no annotation
    for split, img_id in (("train", 9), ("train", 25), ("val", 42), ("val", 73)):
        png = root / "SegmentationClass" / f"{split}2014" / f"COCO_{split}2014_{img_id:012d}.png"
        with Image.open(png) as im:
            assert im.mode == "L"
            got = np.array(im)
        np.testing.assert_array_equal(got, tiny_coco.expected(split, img_id, "coco2voc"))
    m9 = np.array(Image.open(root / "SegmentationClass/train2014/COCO_train2014_000000000009.png"))
    assert m9[8, 11] == 17  # the dog diamond (smaller) wins over the person rectangle
    assert m9[14, 15] == 80  # the crowd region (smaller than the person) is foreground and wins where they overlap
    assert m9[20, 27] == 3
    assert m9[2, 25] == 3
    m42 = np.array(Image.open(root / "SegmentationClass/val2014/COCO_val2014_000000000042.png"))
    assert set(np.unique(m42)) == {0, 5}
    labels = np.load(root / "cls_labels.npy", allow_pickle=True).item()
    assert sorted(labels) == ["COCO_train2014_000000000009", "COCO_train2014_000000000025",
                              "COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    assert np.flatnonzero(labels["COCO_train2014_000000000009"]).tolist() == [0, 2, 16, 79]
    assert np.flatnonzero(labels["COCO_train2014_000000000025"]).tolist() == [39, 56]
    onehot = np.load(root / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert all(np.array_equal(onehot[k], labels[k]) for k in labels)
    ds = COCOSegmentation(root, split="train", labels_file="cls_labels.npy")
    s = ds[0]
    assert s["name"] == "COCO_train2014_000000000009"
    np.testing.assert_array_equal(s["mask"].numpy(), tiny_coco.expected("train", 9, "coco2voc"))
    assert np.flatnonzero(s["labels"].numpy()).tolist() == [0, 2, 16, 79]
    assert P.diagnose_coco_root(root) is None
    # a rerun does nothing
    before, n = _snapshot(root), len(http_server.log)
    assert P.prepare_coco(root, progress=False, verbose=False).ran == []
    assert _snapshot(root) == before
    assert len(http_server.log) == n


def test_coco_recam_convention_and_raw_ids(monkeypatch, tmp_path, tiny_coco):
    arch = tmp_path / "a"
    arch.mkdir()
    for z, fname in (("train", "train2014.zip"), ("val", "val2014.zip"), ("annotations",
                                                                         "annotations_trainval2014.zip")):
        (arch / fname).write_bytes(tiny_coco.zips[z])
    root = tmp_path / "coco"
    res = P.prepare_coco(root, archives=arch, convention="recam", splits=["train"], workers=2, progress=False,
                         verbose=False)
    assert res.counts == {"train": 3, "labels": 3}
    for img_id in (9, 25, 30):
        got = np.array(Image.open(root / f"SegmentationClass/train2014/COCO_train2014_{img_id:012d}.png"))
        np.testing.assert_array_equal(got, tiny_coco.expected("train", img_id, "recam"))
    m9 = np.array(Image.open(root / "SegmentationClass/train2014/COCO_train2014_000000000009.png"))
    assert m9[14, 15] == 1  # crowd is background in ReCAM's rules: the person shows there
    assert not (root / "SegmentationClass" / "val2014").exists()
    # changing the options redoes the masks; raw ids keep coco2voc's raw category ids
    res = P.prepare_coco(root, archives=arch, splits=["train"], raw_category_ids=True, progress=False, verbose=False)
    assert res.counts == {"train": 2, "labels": 2}
    raw = np.array(Image.open(root / "SegmentationClass/train2014/COCO_train2014_000000000009.png"))
    want = tiny_coco.expected("train", 9, "coco2voc")
    np.testing.assert_array_equal(raw, contiguous_to_coco_id(want))


def test_coco_interrupted_render_resumes_and_splits_extend(monkeypatch, tmp_path, tiny_coco):
    arch = tmp_path / "a"
    arch.mkdir()
    for z, fname in (("train", "train2014.zip"), ("val", "val2014.zip"), ("annotations",
                                                                         "annotations_trainval2014.zip")):
        (arch / fname).write_bytes(tiny_coco.zips[z])
    root = tmp_path / "coco"
    real = P.save_label_png
    calls = {"n": 0}

    def crash_after_one(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        real(*a, **k)

    monkeypatch.setattr(P, "save_label_png", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_coco(root, archives=arch, splits=["val"], progress=False, verbose=False)
    assert len(list((root / "SegmentationClass" / "val2014").iterdir())) == 1
    with pytest.raises(FileNotFoundError, match="interrupted before step 'masks_val'"), \
            P.explain_unprepared(root, "coco"):
        pass
    monkeypatch.setattr(P, "save_label_png", real)
    res = P.prepare_coco(root, archives=arch, splits=["val"], progress=False, verbose=False)
    assert res.counts == {"val": 2, "labels": 2}
    val_png = root / "SegmentationClass/val2014/COCO_val2014_000000000073.png"
    np.testing.assert_array_equal(np.array(Image.open(val_png)), tiny_coco.expected("val", 73, "coco2voc"))
    before = _snapshot(root / "SegmentationClass" / "val2014")
    # adding the train split renders train only
    res = P.prepare_coco(root, archives=arch, progress=False, verbose=False)
    assert res.counts == {"train": 2, "val": 2, "labels": 4}
    assert "SegmentationClass/val2014" not in res.ran
    assert "SegmentationClass/train2014" in res.ran
    assert _snapshot(root / "SegmentationClass" / "val2014") == before


def test_coco_needs_pycocotools_named_before_download(http_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    rc = cli_main(["data", "prepare", "coco", "--root", str(tmp_path / "coco"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert 'pip install "wsss-blocks[coco]"' in err
    assert "rendering COCO masks" in err
    assert http_server.log == []


def test_coco_diagnosis(tmp_path):
    root = tmp_path / "coco"
    assert "does not exist; `wsss-blocks data prepare coco --root" in P.diagnose_coco_root(root)
    (root / "JPEGImages" / "train2014").mkdir(parents=True)
    assert "SegmentationClass holds no train2014/val2014 folder (step: the label PNGs)" in P.diagnose_coco_root(root)
    (root / "SegmentationClass" / "train2014").mkdir(parents=True)
    assert "cls_labels.npy are missing" in P.diagnose_coco_root(root)
    assert P.diagnose_coco_root(root, labels_file=None) is None


def test_render_coco_mask_bad_input():
    with pytest.raises(ValueError, match="convention must be one of"):
        P.render_coco_mask([], 4, 4, convention="voc")
    with pytest.raises(ValueError, match="height and width must be positive"):
        P.render_coco_mask([], 0, 4)
    with pytest.raises(ValueError, match="splits must be distinct values"):
        P.prepare_coco("/nonexistent", splits=["test"])


def test_sources_list_the_published_hashes(capsys):
    assert cli_main(["data", "sources"]) == 0
    out = capsys.readouterr().out
    # the MD5s torchvision records for the official archives (datasets/voc.py, datasets/sbd.py)
    assert "md5   6cd6e144f989b92b3379bac3b3de84fd" in out
    assert "md5   82b4d87ceb2ed10f6038a1cba92111cb" in out
    assert out.count("hash  none published") == 3  # the COCO zips
    for name in ("poolnet-voc", "poolnet-coco", "pfan-voc", "pfan-coco"):
        assert f"  {name}  " in out
        assert P.SALIENCY_SETS[name].page in out
