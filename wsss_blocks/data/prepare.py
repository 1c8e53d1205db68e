"""One command per dataset: download, verify, extract and convert VOC 2012 + SBD and COCO 2014 for WSSS.

[`prepare_voc`][] turns nothing (or the official archives) into the layout the VOC reader and the
``*_voc`` configs read:

    ROOT/
      archives/VOCtrainval_11-May-2012.tar, benchmark.tgz        downloads (``--archives`` to use your own)
      benchmark_RELEASE/dataset/{cls/*.mat, train.txt, val.txt} the part of SBD that is converted
      VOCdevkit/VOC2012/                                          <- the data root to pass as --data-root
        JPEGImages/, Annotations/, SegmentationClass/, ...        the official VOC 2012 trainval tree
        SegmentationClassAug/<name>.png                           12,031 greyscale masks (train_aug + val)
        ImageSets/Segmentation/train_aug.txt                      10,582 names
        cls_labels.npy                                            image labels, IRN format (12,031 entries)

[`prepare_coco`][] does the same for COCO 2014 (``ROOT/JPEGImages/{train2014,val2014}``,
``ROOT/SegmentationClass/{train2014,val2014}`` label PNGs with values 0..80, ``ImageSets/Segmentation/
{train,val}.txt``, ``cls_labels.npy``), and [`prepare_saliency`][] installs a released saliency-map set
into the folder the configs read (``Sal`` for L2G's PoolNet maps, ``SALImages`` for the PFAN maps of EPS
and SMAF).

Every step is idempotent and resumable:

* archives come through [`wsss_blocks.hub.download`][wsss_blocks.hub.download] (resume with HTTP ``Range``, the
  published MD5 checked before the file gets its final name, ``WSSS_BLOCKS_MIRROR`` / ``WSSS_BLOCKS_OFFLINE`` honoured);
* an archive is extracted into a hidden sibling folder (``.VOC2012.partial``) that is renamed to its final
  name only when complete, so an interrupted extraction never leaves a half folder under the final name
  (the next run deletes the partial folder and extracts again). Members with absolute paths, ``..`` or
  links are refused;
* converted files are written atomically one by one, so an interrupted conversion resumes where it
  stopped; a manifest (``.wsss_blocks_prepare.json`` in the data root) records finished steps, and a
  second run of a finished preparation returns at once without touching the network or any file.

Examples:
    >>> import tempfile
    >>> diagnose_voc_root(tempfile.mkdtemp()).split(":")[0]
    'VOC 2012 is not prepared in this folder'
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from wsss_blocks import hub
from wsss_blocks._checks import check_choice, check_int

from .coco import COCO_NUM_CLASSES, coco_id_to_contiguous
from .io import atomic_write, load_label_png, save_label_png
from .voc import (
    IGNORE_INDEX,
    VOC_CLASSES,
    VOC_NUM_CLASSES,
    labels_from_annotation,
    read_split_list,
    save_cls_labels,
    write_split_list,
)

__all__ = [
    "Archive",
    "ARCHIVES",
    "SaliencySet",
    "SALIENCY_SETS",
    "Prepared",
    "UnsafeArchiveError",
    "prepare_voc",
    "prepare_coco",
    "prepare_saliency",
    "voc_data_root",
    "diagnose_voc_root",
    "diagnose_coco_root",
    "diagnose_data_root",
    "explain_unprepared",
    "read_sbd_mat",
    "render_coco_mask",
    "VOC_OFFICIAL_COUNTS",
    "COCO_OFFICIAL_COUNTS",
    "IRN_CLASS_COUNTS",
]

PathLike = str | os.PathLike

MANIFEST = ".wsss_blocks_prepare.json"
EXTRACTED_MARKER = ".wsss_blocks_extracted.json"
_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------
# the official sources
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """An official dataset archive: file name, URLs (primary first), the published hash and where it is published.

    ``md5``/``sha256`` are ``None`` where the publisher gives none (then the file is used unverified and the
    output says so).
    """

    key: str
    file_name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    hash_source: str = ""
    size_note: str = ""
    page: str = ""


ARCHIVES: dict[str, Archive] = {
    "voc2012-trainval": Archive(
        key="voc2012-trainval",
        file_name="VOCtrainval_11-May-2012.tar",
        urls=("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
              "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar"),
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        hash_source="torchvision torchvision/datasets/voc.py, DATASET_YEAR_DICT['2012']",
        size_note="about 2 GB (published: '2GB', kazuto1011/deeplab-pytorch scripts/setup_voc12.sh)",
        page="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"),
    "sbd": Archive(
        key="sbd",
        file_name="benchmark.tgz",
        urls=("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
              "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"),
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
        hash_source="torchvision torchvision/datasets/sbd.py, SBDataset.md5",
        size_note="about 1.4 GB (not confirmed)",
        page="http://home.bharathh.info/pubs/codes/SBD/download.html"),
    "coco2014-train": Archive(
        key="coco2014-train",
        file_name="train2014.zip",
        urls=("http://images.cocodataset.org/zips/train2014.zip",),
        size_note="about 13 GB (not confirmed)",
        page="https://cocodataset.org/#download"),
    "coco2014-val": Archive(
        key="coco2014-val",
        file_name="val2014.zip",
        urls=("http://images.cocodataset.org/zips/val2014.zip",),
        size_note="about 6 GB (not confirmed)",
        page="https://cocodataset.org/#download"),
    "coco2014-annotations": Archive(
        key="coco2014-annotations",
        file_name="annotations_trainval2014.zip",
        urls=("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",),
        size_note="about 241 MB (not confirmed)",
        page="https://cocodataset.org/#download"),
}
"""The archives [`prepare_voc`][] and [`prepare_coco`][] read, by key. File names are the official ones, so
copies downloaded by hand (``--archives DIR``) are found under the same names."""


@dataclass(frozen=True)
class SaliencySet:
    """A released set of saliency maps: who released it, where, and the folder the configs read it from."""

    name: str
    dataset: str
    model: str
    used_by: str
    folder: str
    page: str
    source: str
    url: str | None = None
    file_name: str | None = None
    sha256: str | None = None


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}"


SALIENCY_SETS: dict[str, SaliencySet] = {
    "poolnet-voc": SaliencySet(
        name="poolnet-voc", dataset="voc", model="PoolNet", used_by="L2G", folder="Sal",
        page=_drive("1ZBLZ3YFw6yDIRWo0Apd4znOozg-Buj4A"),
        source="PengtaoJiang/L2G README.md (saliency maps: 'Download them and move to a folder named Sal')"),
    "poolnet-coco": SaliencySet(
        name="poolnet-coco", dataset="coco", model="PoolNet", used_by="L2G", folder="Sal",
        page=_drive("1IN6qQK0kL4_x8yzF7jvS6hNIFXsrR6XV"),
        source="PengtaoJiang/L2G README.md (saliency maps: 'Download them and move to a folder named Sal')"),
    "pfan-voc": SaliencySet(
        name="pfan-voc", dataset="voc", model="PFAN", used_by="EPS, SMAF", folder="SALImages",
        page=_drive("19AjSmgdMlIZH4FXVZ5zjlUZcoZZCkwrI"),
        source="halbielee/EPS README.md (saliency maps); SMAF README.md reads them from VOC2012/SALImages"),
    "pfan-coco": SaliencySet(
        name="pfan-coco", dataset="coco", model="PFAN", used_by="EPS", folder="SALImages",
        page=_drive("1d28NKIXQA6lHDt6iIOD8cyySMQ66GoaS"),
        source="halbielee/EPS README.md (saliency maps, COCO link updated 2023-02-22)"),
}
"""Released saliency-map sets. None has a direct download link today (all are Google Drive shares, which need a
browser), so [`prepare_saliency`][] installs a copy you downloaded (``--from``) and otherwise says where to get it."""

VOC_OFFICIAL_COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582, "sbd_train": 8498, "sbd_val": 2857,
                       "masks": 12031}
"""Counts of the official archives (IRN ``voc12/*.txt`` line counts; SBD ``train.txt``/``val.txt``)."""
COCO_OFFICIAL_COUNTS = {"train": (82783, 82081), "val": (40504, 40137)}
"""COCO 2014 images per split, and the WSSS splits (images with at least one annotation; ToCo ``datasets/coco``)."""
IRN_CLASS_COUNTS = (680, 583, 808, 540, 810, 467, 1277, 1124, 1351, 338, 688, 1316, 524, 568, 4600, 607, 357, 739,
                    587, 641)
"""Images per class in jiwoon-ahn/irn ``voc12/cls_labels.npy`` (12,031 entries, ``VOC_CLASSES`` order)."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder, or is a link or a device."""


@dataclass
class Prepared:
    """What a ``prepare_*`` call did: the data root to pass as ``--data-root``, the final counts, the steps run."""

    data_root: Path
    counts: dict[str, int]
    ran: list[str]

    def __str__(self) -> str:
        return str(self.data_root)


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _bar(total: int | None, desc: str, enabled: bool, unit: str = "file") -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            scale = unit == "B"
            return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                        dynamic_ncols=True)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Manifest:
    """The finished steps of one dataset's preparation, in ``<data root>/.wsss_blocks_prepare.json``."""

    def __init__(self, data_root: Path, dataset: str):
        self.path = data_root / MANIFEST
        self.dataset = dataset
        data = _read_json(self.path) or {}
        ok = data.get("dataset") == dataset and data.get("format") == _FORMAT
        self.steps: dict[str, dict[str, Any]] = dict(data.get("steps", {})) if ok else {}
        self.options: dict[str, Any] = dict(data.get("options", {})) if ok else {}
        self.complete: bool = bool(data.get("complete")) if ok else False
        self.counts: dict[str, int] = dict(data.get("counts", {})) if ok else {}
        self.plan: list[str] = list(data.get("plan", [])) if ok else []

    def done(self, step: str) -> bool:
        return step in self.steps

    def mark(self, step: str, **info: Any) -> None:
        self.steps[step] = {"finished": _now(), **info}
        self.save()

    def forget_from(self, steps: Sequence[str]) -> None:
        for s in steps:
            self.steps.pop(s, None)
        self.complete = False

    def save(self) -> None:
        _write_json(self.path, {"dataset": self.dataset, "format": _FORMAT, "steps": self.steps, "plan": self.plan,
                                "options": self.options, "complete": self.complete, "counts": self.counts})


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so that two runs on one root do not interleave (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------
# archives: fetch and verify
# ----------------------------------------------------------------------------------------------------------
def _fetch_archive(key: str, *, archives: Path | None, download_dir: Path, verify: bool, progress: bool,
                   verbose: bool) -> Path:
    """The verified local file of archive ``key``: from ``archives`` (never downloads) or downloaded."""
    a = ARCHIVES[key]
    md5 = a.md5 if verify else None
    sha256 = a.sha256 if verify else None
    if archives is not None:
        path = archives / a.file_name
        if not path.is_file():
            raise FileNotFoundError(f"{a.file_name} is not in --archives folder {str(archives)!r}: put the official "
                                    f"file there under this name (source: {a.urls[0]}), or omit --archives to "
                                    f"download it")
        if md5 or sha256:
            _say(verbose, f"checking {a.file_name} ({'md5' if md5 else 'sha256'}) ...")
            hub.verify_file(path, md5=md5, sha256=sha256, what=str(path))
    else:
        path = hub.download(list(a.urls), download_dir / a.file_name, md5=md5, sha256=sha256, progress=progress,
                            desc=a.file_name)
    if md5 or sha256:
        _say(verbose, f"{a.file_name}: {'md5 ' + md5 if md5 else 'sha256 ' + str(sha256)} verified "
                      f"(published in {a.hash_source})")
    elif verify:
        _say(verbose, f"{a.file_name}: no checksum is published for this file; used as it is")
    else:
        _say(verbose, f"{a.file_name}: checksum not checked (--no-verify)")
    return path


# ----------------------------------------------------------------------------------------------------------
# safe, atomic extraction
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Extract:
    """Extract the members under ``src`` of archive ``archive`` into ``ROOT/dest`` (atomically)."""

    archive: str
    src: str
    dest: str
    required: tuple[str, ...]
    include: tuple[str, ...] | None = None  # member names (or prefixes ending in "/") to extract; None = all

    def wants(self, name: str) -> bool:
        if self.src and not (name == self.src or name.startswith(self.src + "/")):
            return False
        if self.include is None:
            return True
        return any(name == p or (p.endswith("/") and name.startswith(p)) for p in self.include)


def _safe_name(name: str, archive: Path) -> str | None:
    """The normalised relative member name; ``None`` for the archive's root entry; error if it escapes."""
    n = name.replace("\\", "/")
    while n.startswith("./"):
        n = n[2:]
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} would be written outside the extraction "
                                 f"folder (absolute path or '..'); refusing to extract")
    return "/".join(parts) or None


def _copy_member(src: IO[bytes], target: Path) -> None:
    """Write one archive member (the unit an interrupted extraction stops between)."""
    with open(target, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 20)


def _extract_members(archive: Path, spec: _Extract, tmp: Path, progress: bool) -> int:
    """Extract the wanted members into ``tmp`` (``src/`` stripped); return the number of files written."""
    n_files = 0
    strip = len(spec.src) + 1 if spec.src else 0

    def target_of(name: str) -> Path:
        return tmp.joinpath(*name[strip:].split("/"))

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = []
            for info in zf.infolist():
                name = _safe_name(info.filename, archive)
                if name is None or not spec.wants(name):
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; "
                                             f"refusing to extract")
                infos.append((name, info))
            with _bar(sum(i.file_size for _, i in infos), f"extract {archive.name}", progress, "B") as bar:
                for name, info in infos:
                    if name == spec.src:
                        continue
                    target = target_of(name)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fsrc:
                        _copy_member(fsrc, target)
                    n_files += 1
                    bar.update(info.file_size)
        return n_files
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is neither a tar nor a zip archive")
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf, \
            _bar(archive.stat().st_size, f"extract {archive.name}", progress, "B") as bar:
        seen = 0
        for m in tf:
            pos = raw.tell()
            bar.update(pos - seen)
            seen = pos
            name = _safe_name(m.name, archive)
            if name is None or not spec.wants(name) or name == spec.src:
                continue
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a link; refusing to extract")
            target = target_of(name)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                member = tf.extractfile(m)
                assert member is not None
                _copy_member(member, target)
                n_files += 1
            else:
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a device or FIFO; refusing to "
                                         f"extract")
    return n_files


def _partial_dir(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _extract(archive: Path, spec: _Extract, root: Path, *, verified: bool, progress: bool, verbose: bool) -> int:
    """Extract into ``.<name>.partial`` next to the final folder, check it, write the marker, rename."""
    final = root / spec.dest
    tmp = _partial_dir(final)
    if tmp.exists():
        _say(verbose, f"removing {tmp}, the incomplete extraction of an interrupted run")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        n = _extract_members(archive, spec, tmp, progress)
        missing = [r for r in spec.required if not (tmp / r).exists()]
        if missing:
            raise ValueError(f"{archive} holds no {spec.src}/{missing[0]}: is it the official "
                             f"{ARCHIVES[spec.archive].file_name}?")
        _write_json(tmp / EXTRACTED_MARKER, {"archive": archive.name, "md5": ARCHIVES[spec.archive].md5,
                                             "verified": verified, "files": n, "finished": _now()})
        os.replace(tmp, final)
    except BaseException:
        # an error in the archive itself leaves nothing behind; an interrupt (KeyboardInterrupt, a kill) may
        # leave the .partial folder, which the next run deletes
        if not isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(verbose, f"extracted {n} files of {archive.name} into {final}")
    return n


def _is_extracted(root: Path, spec: _Extract, verbose: bool) -> bool:
    """True when ``ROOT/dest`` is finished: our marker, or a complete folder put there by hand (adopted)."""
    final = root / spec.dest
    if not final.is_dir():
        return False
    if (final / EXTRACTED_MARKER).is_file():
        return True
    missing = [r for r in spec.required if not (final / r).exists()]
    if missing:
        raise FileNotFoundError(f"{final} exists but lacks {missing[0]} and was not extracted by wsss-blocks: move "
                                f"it away (or complete it) and run again")
    _say(verbose, f"using the existing folder {final} (not extracted here)")
    return True


# ----------------------------------------------------------------------------------------------------------
# VOC 2012 + SBD
# ----------------------------------------------------------------------------------------------------------
_VOC = _Extract("voc2012-trainval", "VOCdevkit/VOC2012", "VOCdevkit/VOC2012",
                required=("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                          "ImageSets/Segmentation/val.txt"))
_SBD = _Extract("sbd", "benchmark_RELEASE", "benchmark_RELEASE",
                required=("dataset/cls", "dataset/train.txt", "dataset/val.txt"),
                include=("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt",
                         "benchmark_RELEASE/dataset/val.txt"))
_VOC_STEPS = ("masks", "train_aug", "labels", "verify")


def voc_data_root(root: PathLike) -> Path:
    """The VOC data root that [`prepare_voc`][] makes under ``root``: ``root/VOCdevkit/VOC2012``."""
    return Path(root).expanduser().absolute() / "VOCdevkit" / "VOC2012"


def read_sbd_mat(path: PathLike) -> np.ndarray:
    """The class map of an SBD ``cls/<name>.mat`` file (struct ``GTcls``, field ``Segmentation``) as uint8 H×W.

    Values are 0 (background) and 1..20 in ``VOC_CLASSES`` order; SBD has no 255 void band (Hariharan et al.,
    "Semantic Contours from Inverse Detectors", ICCV 2011; read as in torchvision ``datasets/sbd.py``).

    Raises:
        ValueError: the file is not a MATLAB file with ``GTcls.Segmentation``, or holds values outside 0..20, 255.

    Examples:
        >>> import numpy as np, scipy.io, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "2008_000002.mat")
        >>> seg = np.array([[0, 15], [15, 0]], dtype=np.uint8)
        >>> scipy.io.savemat(p, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((20, 1), object)}})
        >>> read_sbd_mat(p).tolist()
        [[0, 15], [15, 0]]
    """
    from wsss_blocks._checks import require

    sio = require("scipy.io", "train", "reading SBD .mat files")
    p = Path(path)
    try:
        mat = sio.loadmat(str(p))
        seg = np.asarray(mat["GTcls"][0, 0]["Segmentation"])
    except FileNotFoundError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, OSError) as exc:
        raise ValueError(f"{p} is not an SBD class file (expected struct GTcls with field Segmentation): "
                         f"{type(exc).__name__}: {exc}") from exc
    if seg.ndim != 2 or seg.dtype.kind not in "iu":
        raise ValueError(f"{p}: GTcls.Segmentation must be a 2-D integer array, got {seg.dtype} of shape {seg.shape}")
    bad = (seg > VOC_NUM_CLASSES) & (seg != IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{p}: GTcls.Segmentation has values {np.unique(seg[bad])[:5].tolist()} outside 0..20")
    return seg.astype(np.uint8)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header."""
    from wsss_blocks._checks import require

    Image = require("PIL.Image", "train", "reading images")
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def _voc_lists(data_root: Path) -> tuple[list[str], list[str]]:
    seg = data_root / "ImageSets" / "Segmentation"
    return read_split_list(seg / "train.txt"), read_split_list(seg / "val.txt")


def _sbd_lists(root: Path) -> tuple[list[str], list[str]]:
    ds = root / _SBD.dest / "dataset"
    return read_split_list(ds / "train.txt"), read_split_list(ds / "val.txt")


def _is_official_voc(n_train: int, n_val: int) -> bool:
    """The expected real-data counts apply when the VOC lists are the official ones (1,464 / 1,449)."""
    return n_train == VOC_OFFICIAL_COUNTS["train"] and n_val == VOC_OFFICIAL_COUNTS["val"]


def _check_count(what: str, got: int, key: str, official: bool) -> None:
    if official and got != VOC_OFFICIAL_COUNTS[key]:
        raise ValueError(f"{what}: {got:,} names, expected {VOC_OFFICIAL_COUNTS[key]:,} with the official VOC 2012 "
                         f"and SBD archives; delete the folder and prepare again")


def prepare_voc(root: PathLike, *, archives: PathLike | None = None, download_dir: PathLike | None = None,
                verify: bool = True, sbd: bool = True, remove_archives: bool = False, progress: bool = True,
                verbose: bool = True) -> Prepared:
    """Download and prepare PASCAL VOC 2012 + SBD (``train_aug``) under ``root``; return the data root.

    Steps (each skipped when already done; an interrupted run resumes):

    1. ``VOCtrainval_11-May-2012.tar`` (MD5 ``6cd6e144…``, as recorded by torchvision) is downloaded
       into ``download_dir`` (default ``root/archives``) or taken from ``archives``, verified and extracted
       to ``root/VOCdevkit/VOC2012``;
    2. SBD ``benchmark.tgz`` (MD5 ``82b4d87c…``): only ``benchmark_RELEASE/dataset/cls/*.mat`` and the
       ``train.txt``/``val.txt`` lists are extracted;
    3. ``SegmentationClassAug/<name>.png`` for every name of train_aug ∪ val (12,031 on the real data),
       greyscale 0..20 and 255: VOC's own ``SegmentationClass`` mask (palette indices, 255 band kept)
       where the image has one, otherwise SBD's ``GTcls.Segmentation`` (no 255 band). This is the
       convention of the widely used ``SegmentationClassAug`` (VOC masks for VOC images);
    4. ``ImageSets/Segmentation/train_aug.txt`` = (SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted
       (10,582 names on the real data);
    5. ``cls_labels.npy``: the image labels of train_aug ∪ val from the ``Annotations`` XML files, every
       ``<object><name>`` counted (also difficult/truncated), saved as jiwoon-ahn/irn
       ``voc12/make_cls_labels.py`` does (dict of integer keys ``2007000032`` → float32[20]);
    6. checks: every listed image has its JPEG, mask and label; with the official archives the counts must be
       1,464 train, 1,449 val, 10,582 train_aug, 12,031 masks (and the per-class label counts are compared
       with IRN's ``cls_labels.npy``).

    Args:
        root: folder to prepare into (created if needed).
        archives: a folder holding the official archives under their official file names; used instead of
            downloading (a missing file is an error, nothing is downloaded).
        download_dir: where downloads go (default ``root/archives``); ignored with ``archives``.
        verify: check the published MD5 of each archive (``False``: use copies as they are).
        sbd: add SBD (``train_aug``). ``False`` prepares VOC 2012 alone (train 1,464 / val 1,449; labels for
            those), which the ``*_voc`` configs cannot train on.
        remove_archives: delete the downloaded archives from ``download_dir`` once everything is prepared.
        progress: tqdm progress bars.
        verbose: print what is done.

    Returns:
        [`Prepared`][] with ``data_root`` (``root/VOCdevkit/VOC2012``, the ``--data-root`` to pass), the
        final counts and the steps run now (empty when everything was already prepared).

    Raises:
        hub.ChecksumError: an archive does not have the published hash (nothing is extracted).
        hub.OfflineError, hub.DownloadError: an archive is missing and cannot be downloaded.
        FileNotFoundError: an archive is not in ``archives``; an image lacks its JPEG / XML / mask.
        ValueError: a corrupt input (named), or counts that differ from the official ones.
    """
    root = Path(root).expanduser().absolute()
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        where = (f"pass --root {root.parent.parent} (the folder holding VOCdevkit)" if root.parent.name == "VOCdevkit"
                 else "move it to <DIR>/VOCdevkit/VOC2012 and pass --root <DIR>")
        raise ValueError(f"root {str(root)!r} is a VOC2012 folder itself; {where}")
    root.mkdir(parents=True, exist_ok=True)
    arch = Path(archives).expanduser().absolute() if archives is not None else None
    if arch is not None and not arch.is_dir():
        raise FileNotFoundError(f"--archives folder {str(arch)!r} does not exist")
    ddir = Path(download_dir).expanduser().absolute() if download_dir is not None else root / "archives"
    if remove_archives and arch is not None:
        raise ValueError("remove_archives deletes downloads in download_dir; it cannot be combined with archives "
                         "(files you provided are never deleted)")
    data_root = root / _VOC.dest
    ran: list[str] = []
    fetch = functools.partial(_fetch_archive, archives=arch, download_dir=ddir, verify=verify, progress=progress,
                              verbose=verbose)

    with _lock(root / ".wsss_blocks_prepare.lock"):
        man = _Manifest(data_root, "voc")
        if man.complete and man.options.get("sbd") == sbd and _voc_outputs_present(data_root, sbd):
            _say(verbose, f"VOC 2012{' + SBD' if sbd else ''} is already prepared: " + _voc_summary(man.counts))
            if remove_archives:
                _remove_downloads(ddir, ("voc2012-trainval", "sbd") if sbd else ("voc2012-trainval",), verbose)
            _say(verbose, f"pass --data-root {data_root}")
            return Prepared(data_root, dict(man.counts), ran)

        # 1. VOC 2012 trainval
        if not _is_extracted(root, _VOC, verbose):
            path = fetch("voc2012-trainval")
            _extract(path, _VOC, root, verified=verify, progress=progress, verbose=verbose)
            ran.append("extract VOCtrainval_11-May-2012.tar")
        man = _Manifest(data_root, "voc")
        if man.options.get("sbd") != sbd:
            man.forget_from(_VOC_STEPS)
            man.options["sbd"] = sbd
        man.complete = False
        man.plan = list(_VOC_STEPS) if sbd else ["labels", "verify"]
        man.save()  # from now on the data root says "preparation unfinished" until the last step
        dirty = bool(ran)
        voc_train, voc_val = _voc_lists(data_root)
        official = _is_official_voc(len(voc_train), len(voc_val))
        seg_dir = data_root / "ImageSets" / "Segmentation"

        if sbd:
            need_sbd = dirty or not (man.done("masks") and (data_root / "SegmentationClassAug").is_dir()
                                     and man.done("train_aug") and (seg_dir / "train_aug.txt").is_file())
            train_aug: list[str]
            if need_sbd:
                # 2. SBD
                if not _is_extracted(root, _SBD, verbose):
                    path = fetch("sbd")
                    _extract(path, _SBD, root, verified=verify, progress=progress, verbose=verbose)
                    ran.append("extract benchmark.tgz")
                sbd_train, sbd_val = _sbd_lists(root)
                _check_count("SBD dataset/train.txt", len(sbd_train), "sbd_train", official)
                _check_count("SBD dataset/val.txt", len(sbd_val), "sbd_val", official)
                val_set = set(voc_val)
                train_aug = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - val_set)
                _check_count("train_aug", len(train_aug), "train_aug", official)
                # 3. SegmentationClassAug
                if dirty or not (man.done("masks") and (data_root / "SegmentationClassAug").is_dir()):
                    info = _convert_masks(data_root, root / _SBD.dest / "dataset" / "cls", train_aug + voc_val,
                                          progress=progress, verbose=verbose)
                    man.mark("masks", **info)
                    ran.append("SegmentationClassAug")
                    dirty = True
                # 4. train_aug.txt
                if dirty or not (man.done("train_aug") and (seg_dir / "train_aug.txt").is_file()):
                    write_split_list(seg_dir / "train_aug.txt", train_aug)
                    man.mark("train_aug", names=len(train_aug))
                    ran.append("train_aug.txt")
                    dirty = True
                    _say(verbose, f"train_aug.txt: {len(train_aug):,} names = (SBD train {len(sbd_train):,} ∪ SBD "
                                  f"val {len(sbd_val):,} ∪ VOC train {len(voc_train):,}) − VOC val {len(voc_val):,}")
            else:
                train_aug = read_split_list(seg_dir / "train_aug.txt")
            label_names = sorted(set(train_aug) | set(voc_val))
        else:
            label_names = sorted(set(voc_train) | set(voc_val))

        # 5. cls_labels.npy
        if dirty or not (man.done("labels") and (data_root / "cls_labels.npy").is_file()):
            _write_voc_labels(data_root, label_names, progress=progress)
            man.mark("labels", entries=len(label_names))
            ran.append("cls_labels.npy")
            dirty = True
            _say(verbose, f"cls_labels.npy: {len(label_names):,} entries from Annotations/*.xml")

        # 6. checks
        if dirty or not man.done("verify"):
            counts = _verify_voc(data_root, voc_train, voc_val, sbd, official, progress=progress)
            man.counts = counts
            man.complete = True
            man.mark("verify", **counts)
            ran.append("verify")
        else:
            man.complete = True
            man.save()
        _say(verbose, f"VOC 2012{' + SBD' if sbd else ''} ready: " + _voc_summary(man.counts))
        if remove_archives:
            _remove_downloads(ddir, ("voc2012-trainval", "sbd") if sbd else ("voc2012-trainval",), verbose)
        _say(verbose, f"pass --data-root {data_root}")
        return Prepared(data_root, dict(man.counts), ran)


def _voc_outputs_present(data_root: Path, sbd: bool) -> bool:
    need = [data_root / "JPEGImages", data_root / "cls_labels.npy"]
    if sbd:
        need += [data_root / "SegmentationClassAug", data_root / "ImageSets" / "Segmentation" / "train_aug.txt"]
    return all(p.exists() for p in need)


def _voc_summary(counts: Mapping[str, int]) -> str:
    keys = [("train", "train"), ("val", "val"), ("train_aug", "train_aug"), ("masks", "SegmentationClassAug masks"),
            ("labels", "cls_labels.npy entries")]
    return ", ".join(f"{label} {counts[k]:,}" for k, label in keys if k in counts)


def _convert_masks(data_root: Path, sbd_cls: Path, names: Sequence[str], *, progress: bool,
                   verbose: bool) -> dict[str, int]:
    """Write ``SegmentationClassAug/<name>.png`` for ``names`` (existing files are kept: resume)."""
    out_dir = data_root / "SegmentationClassAug"
    out_dir.mkdir(parents=True, exist_ok=True)
    voc_dir = data_root / "SegmentationClass"
    jpg_dir = data_root / "JPEGImages"
    n_voc = n_sbd = n_kept = 0
    with _bar(len(names), "SegmentationClassAug", progress) as bar:
        for name in names:
            bar.update(1)
            out = out_dir / f"{name}.png"
            if out.is_file() and out.stat().st_size > 0:
                n_kept += 1
                continue
            voc_png = voc_dir / f"{name}.png"
            if voc_png.is_file():
                mask = load_label_png(voc_png)
                src = voc_png
                n_voc += 1
            else:
                src = sbd_cls / f"{name}.mat"
                if not src.is_file():
                    raise FileNotFoundError(f"no mask for {name}: neither {voc_png} nor {src} exists")
                mask = read_sbd_mat(src)
                n_sbd += 1
            jpg = jpg_dir / f"{name}.jpg"
            if not jpg.is_file():
                raise FileNotFoundError(f"{name} has a mask ({src}) but no image {jpg}")
            if mask.shape != _image_size(jpg):
                raise ValueError(f"{src} has size {mask.shape} but {jpg} has size {_image_size(jpg)}")
            save_label_png(out, mask, palette=False, fsync=False)
    if n_kept:
        _say(verbose, f"SegmentationClassAug: kept {n_kept:,} masks written by an earlier run")
    _say(verbose, f"SegmentationClassAug: {len(names):,} masks ({n_voc:,} written from VOC SegmentationClass, "
                  f"{n_sbd:,} from SBD .mat files)")
    return {"files": len(names), "from_voc": n_voc, "from_sbd": n_sbd, "kept": n_kept}


def _write_voc_labels(data_root: Path, names: Sequence[str], *, progress: bool) -> None:
    labels: dict[str, np.ndarray] = {}
    xml_dir = data_root / "Annotations"
    with _bar(len(names), "cls_labels.npy", progress) as bar:
        for name in names:
            labels[name] = labels_from_annotation(xml_dir / f"{name}.xml", VOC_CLASSES)
            bar.update(1)
    save_cls_labels(data_root / "cls_labels.npy", labels, int_keys=True)


def _verify_voc(data_root: Path, voc_train: list[str], voc_val: list[str], sbd: bool, official: bool, *,
                progress: bool) -> dict[str, int]:
    from .voc import load_cls_labels

    counts = {"train": len(voc_train), "val": len(voc_val)}
    seg = data_root / "ImageSets" / "Segmentation"
    names = set(voc_train) | set(voc_val)
    mask_dir = data_root / "SegmentationClass"
    if sbd:
        train_aug = read_split_list(seg / "train_aug.txt")
        counts["train_aug"] = len(train_aug)
        if set(voc_val) & set(train_aug):
            raise ValueError(f"{seg / 'train_aug.txt'} shares names with val.txt")
        if not set(voc_train) <= set(train_aug):
            raise ValueError(f"{seg / 'train_aug.txt'} lacks names of train.txt")
        names |= set(train_aug)
        mask_dir = data_root / "SegmentationClassAug"
        counts["masks"] = sum(1 for p in mask_dir.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
        _check_count("train_aug.txt", counts["train_aug"], "train_aug", official)
        _check_count(f"{mask_dir}", counts["masks"], "masks", official)
    labels = load_cls_labels(data_root / "cls_labels.npy", VOC_NUM_CLASSES)
    counts["labels"] = len(labels)
    with _bar(len(names), "check", progress) as bar:
        for name in sorted(names):
            bar.update(1)
            for p in (data_root / "JPEGImages" / f"{name}.jpg", mask_dir / f"{name}.png"):
                if not p.is_file() or p.stat().st_size == 0:
                    raise FileNotFoundError(f"{p} is missing or empty after preparation")
            if name not in labels:
                raise ValueError(f"{name} has no entry in {data_root / 'cls_labels.npy'}")
    if official and sbd:
        per_class = np.sum(np.stack([labels[n] for n in sorted(names)]), axis=0).astype(int).tolist()
        if tuple(per_class) != IRN_CLASS_COUNTS:
            diff = [f"{VOC_CLASSES[i]} {a} (IRN {b})" for i, (a, b) in enumerate(zip(per_class, IRN_CLASS_COUNTS))
                    if a != b]
            _warn("images per class in cls_labels.npy differ from jiwoon-ahn/irn voc12/cls_labels.npy: "
                  + ", ".join(diff))
    return counts


def _remove_downloads(ddir: Path, keys: Sequence[str], verbose: bool) -> None:
    for k in keys:
        for suffix in ("", ".part", ".lock"):
            p = ddir / (ARCHIVES[k].file_name + suffix)
            if p.is_file():
                p.unlink()
                if suffix == "":
                    _say(verbose, f"removed {p}")


# ----------------------------------------------------------------------------------------------------------
# COCO 2014
# ----------------------------------------------------------------------------------------------------------
_COCO_IMAGES = {s: _Extract(f"coco2014-{s}", f"{s}2014", f"JPEGImages/{s}2014", required=()) for s in ("train", "val")}
_COCO_ANN = _Extract("coco2014-annotations", "annotations", "annotations",
                     required=("instances_train2014.json", "instances_val2014.json"),
                     include=("annotations/instances_train2014.json", "annotations/instances_val2014.json"))
_CONVENTIONS = ("coco2voc", "recam")


def _mask_utils() -> Any:
    from wsss_blocks._checks import require

    return require("pycocotools.mask", "coco", "rendering COCO masks")


def _ann_to_rle(segm: Any, h: int, w: int, mask_utils: Any) -> Any:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as one RLE (pycocotools' ``annToRLE``)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
        return segm
    raise ValueError(f"unknown COCO segmentation format {type(segm).__name__}")


def render_coco_mask(annotations: Sequence[Mapping[str, Any]], height: int, width: int, *,
                     convention: str = "coco2voc", raw_category_ids: bool = False) -> np.ndarray:
    """The VOC-style label map of one COCO image (uint8 H×W: 0 background, 1..80, or raw ids 1..90).

    Conventions (how the community's COCO label PNGs are made):

    * ``"coco2voc"`` (default; alicranck/coco2voc ``coco2voc_aux.py``, the tool the ToCo/AFA READMEs point to):
      every annotation including crowd regions, sorted by their ``area`` field (smallest first, stable), each
      pixel taking the class of the first annotation covering it, so small objects win overlaps;
    * ``"recam"`` (zhaozhengChen/ReCAM ``mscoco/annToMask.py``): only ``iscrowd == 0`` annotations, in file
      order, later ones overwriting earlier ones (crowd regions stay background).

    Masks are decoded with pycocotools (polygons merged per object, uncompressed and compressed RLE), so the
    pixels equal those of both tools. Values are contiguous 1..80 (``COCO_CLASSES`` order, what the packaged
    COCO configs read); ``raw_category_ids=True`` keeps coco2voc's raw ``category_id`` values instead.

    Args:
        annotations: the image's COCO annotation dicts (``segmentation``, ``category_id``, ``area``, ``iscrowd``).
        height: image height.
        width: image width.
        convention: ``"coco2voc"`` or ``"recam"``.
        raw_category_ids: write raw category ids 1..90 instead of 1..80.

    Shape:
        - Output: ``(height, width)`` uint8.

    Examples:
        >>> ann = {"segmentation": [[1, 1, 5, 1, 5, 3, 1, 3]], "category_id": 90, "area": 8, "iscrowd": 0}
        >>> render_coco_mask([ann], 4, 6).tolist()
        [[0, 0, 0, 0, 0, 0], [0, 80, 80, 80, 80, 0], [0, 80, 80, 80, 80, 0], [0, 0, 0, 0, 0, 0]]
    """
    check_choice(convention, "convention", _CONVENTIONS)
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    mu = _mask_utils()
    out = np.zeros((height, width), dtype=np.int64)
    if convention == "coco2voc":
        for a in sorted(annotations, key=lambda a: a["area"]):
            m = mu.decode(_ann_to_rle(a["segmentation"], height, width, mu)).astype(bool)
            out = np.where(out > 0, out, m * int(a["category_id"]))
    else:
        for a in annotations:
            if a.get("iscrowd", 0):
                continue
            m = mu.decode(_ann_to_rle(a["segmentation"], height, width, mu)).astype(bool)
            out[m] = int(a["category_id"])
    if raw_category_ids:
        return out.astype(np.uint8)
    return coco_id_to_contiguous(out).astype(np.uint8)


def _render_chunk(items: list[tuple[str, int, int, list[dict[str, Any]]]], out_dir: str, convention: str,
                  raw: bool) -> int:
    """Render and write the label PNGs of ``items`` (runs in worker processes too)."""
    for stem, h, w, anns in items:
        mask = render_coco_mask(anns, h, w, convention=convention, raw_category_ids=raw)
        save_label_png(Path(out_dir) / f"{stem}.png", mask, palette=False, fsync=False)
    return len(items)


def _load_instances(path: Path) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path} is not a COCO instances file (no 'images'/'annotations')")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    return list(data["images"]), by_image


def _coco_items(split: str, root: Path, convention: str, cache: dict[str, Any]
                ) -> tuple[list[tuple[str, int, int, list[dict[str, Any]]]], int]:
    """The images to write a mask for (name, H, W, annotations) and the number of images in the file."""
    if split not in cache:
        cache[split] = _load_instances(root / "annotations" / f"instances_{split}2014.json")
    images, by_image = cache[split]
    items = []
    for im in images:
        anns = by_image.get(int(im["id"]), [])
        if convention == "coco2voc" and not anns:
            continue  # coco2voc writes no file for images without annotations (the WSSS splits)
        items.append((Path(im["file_name"]).stem, int(im["height"]), int(im["width"]), anns))
    items.sort(key=lambda t: t[0])
    return items, len(images)


def _coco_labels(items: Sequence[tuple[str, int, int, list[dict[str, Any]]]], convention: str
                 ) -> dict[str, np.ndarray]:
    """Image labels: the classes of the annotations the convention paints (crowd included for coco2voc)."""
    out = {}
    for stem, _, _, anns in items:
        vec = np.zeros(COCO_NUM_CLASSES, dtype=np.float32)
        ids = [int(a["category_id"]) for a in anns if convention == "coco2voc" or not a.get("iscrowd", 0)]
        if ids:
            vec[coco_id_to_contiguous(np.asarray(ids)) - 1] = 1.0
        out[stem] = vec
    return out


def prepare_coco(root: PathLike, *, archives: PathLike | None = None, download_dir: PathLike | None = None,
                 verify: bool = True, splits: Sequence[str] = ("train", "val"), convention: str = "coco2voc",
                 raw_category_ids: bool = False, workers: int = 1, remove_archives: bool = False,
                 progress: bool = True, verbose: bool = True) -> Prepared:
    """Download and prepare MS COCO 2014 for WSSS under ``root`` (which is the data root); return it.

    Steps (each skipped when already done; an interrupted run resumes):

    1. ``train2014.zip`` / ``val2014.zip`` → ``root/JPEGImages/{train2014,val2014}``;
    2. ``annotations_trainval2014.zip`` → ``root/annotations/instances_{train,val}2014.json`` (only these two);
    3. label PNGs ``root/SegmentationClass/<split>2014/<name>.png`` rendered with [`render_coco_mask`][]
       (``convention``), and ``root/ImageSets/Segmentation/<split>.txt`` listing them. With ``"coco2voc"``
       images without annotations get no mask, which gives the WSSS splits (82,081 train / 40,137 val);
    4. ``cls_labels.npy`` (and the same dict as ``cls_labels_onehot.npy``, the AFA/ToCo name the ``tscd_coco``
       config reads): ``{name: float32[80]}`` with string keys such as ``COCO_train2014_000000000009``, the
       classes of the image's annotations;
    5. checks: every listed image has its JPEG and mask; the counts are compared with the WSSS splits.

    COCO publishes no checksums, so the archives cannot be verified (the output says so).

    Args:
        root: the COCO data root to prepare (created if needed).
        archives: a folder holding the official archives under their official names (nothing is downloaded).
        download_dir: where downloads go (default ``root/archives``).
        verify: check published hashes (COCO has none; kept for symmetry with [`prepare_voc`][]).
        splits: ``"train"`` and/or ``"val"``.
        convention: ``"coco2voc"`` (default) or ``"recam"``, see [`render_coco_mask`][].
        raw_category_ids: write raw ids 1..90 (then set ``data.coco_raw_category_ids=true``).
        workers: processes rendering masks (1 = in this process).
        remove_archives: delete the downloaded archives once everything is prepared.
        progress: tqdm progress bars.
        verbose: print what is done.

    Raises:
        ImportError: pycocotools is missing (``pip install "wsss-blocks[coco]"``).
        FileNotFoundError, ValueError, hub.DownloadError, hub.OfflineError: as [`prepare_voc`][].
    """
    splits = tuple(splits)
    if not splits or any(s not in ("train", "val") for s in splits) or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct values of ('train', 'val'), got {splits!r}")
    check_choice(convention, "convention", _CONVENTIONS)
    check_int(workers, "workers", minimum=1)
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    arch = Path(archives).expanduser().absolute() if archives is not None else None
    if arch is not None and not arch.is_dir():
        raise FileNotFoundError(f"--archives folder {str(arch)!r} does not exist")
    ddir = Path(download_dir).expanduser().absolute() if download_dir is not None else root / "archives"
    if remove_archives and arch is not None:
        raise ValueError("remove_archives deletes downloads in download_dir; it cannot be combined with archives")
    fetch = functools.partial(_fetch_archive, archives=arch, download_dir=ddir, verify=verify, progress=progress,
                              verbose=verbose)
    options = {"convention": convention, "raw_category_ids": raw_category_ids}
    split_list = sorted(splits)
    ran: list[str] = []
    with _lock(root / ".wsss_blocks_prepare.lock"):
        man = _Manifest(root, "coco")
        if (man.complete and man.options == options and man.steps.get("verify", {}).get("splits") == split_list
                and _coco_outputs_present(root, splits)):
            _say(verbose, "COCO 2014 is already prepared: " + _coco_summary(man.counts))
            if remove_archives:
                _remove_downloads(ddir, [f"coco2014-{s}" for s in splits] + ["coco2014-annotations"], verbose)
            _say(verbose, f"pass --data-root {root} --dataset coco")
            return Prepared(root, dict(man.counts), ran)
        _mask_utils()  # fail before any download when pycocotools is missing
        if man.options != options:
            for s in ("train", "val"):
                mdir = root / "SegmentationClass" / f"{s}2014"
                if man.options and mdir.is_dir():  # ours, made with other options: render again
                    shutil.rmtree(mdir)
                elif s in splits and mdir.is_dir() and any(mdir.iterdir()):
                    raise FileExistsError(f"{mdir} exists and was not written by wsss-blocks: move it away to "
                                          f"render the masks here, or use it as it is (pass --data-root {root})")
            man.steps, man.options = {}, options
        man.complete = False
        man.plan = [f"masks_{s}" for s in split_list] + ["labels", "verify"]
        man.save()
        for s in splits:
            if not _is_extracted(root, _COCO_IMAGES[s], verbose):
                path = fetch(f"coco2014-{s}")
                _extract(path, _COCO_IMAGES[s], root, verified=verify, progress=progress, verbose=verbose)
                ran.append(f"extract {s}2014.zip")
        cache: dict[str, Any] = {}
        mask_steps = [f"masks_{s}" for s in splits]
        need_ann = not all(man.done(k) for k in mask_steps) or \
            man.steps.get("labels", {}).get("splits") != split_list
        ann_new = False  # the masks of a split depend on the annotations only, the labels on the masks' images
        if need_ann and not _is_extracted(root, _COCO_ANN, verbose):
            path = fetch("coco2014-annotations")
            _extract(path, _COCO_ANN, root, verified=verify, progress=progress, verbose=verbose)
            ran.append("extract annotations_trainval2014.zip")
            ann_new = True
        dirty = ann_new
        for s in splits:
            out_dir = root / "SegmentationClass" / f"{s}2014"
            list_path = root / "ImageSets" / "Segmentation" / f"{s}.txt"
            if not ann_new and man.done(f"masks_{s}") and out_dir.is_dir() and list_path.is_file():
                continue
            items, n_images = _coco_items(s, root, convention, cache)
            _render_split(items, out_dir, convention, raw_category_ids, workers, progress, verbose, s)
            write_split_list(list_path, [t[0] for t in items])
            man.mark(f"masks_{s}", masks=len(items), images=n_images)
            ran.append(f"SegmentationClass/{s}2014")
            dirty = True
        if dirty or not (man.done("labels") and man.steps["labels"].get("splits") == split_list
                         and (root / "cls_labels.npy").is_file()):
            labels: dict[str, np.ndarray] = {}
            for s in splits:
                items, _ = _coco_items(s, root, convention, cache)
                labels.update(_coco_labels(items, convention))
            save_cls_labels(root / "cls_labels.npy", labels)
            save_cls_labels(root / "cls_labels_onehot.npy", labels)
            man.mark("labels", entries=len(labels), splits=split_list)
            ran.append("cls_labels.npy")
            dirty = True
            _say(verbose, f"cls_labels.npy (and cls_labels_onehot.npy): {len(labels):,} entries")
        if ran or man.steps.get("verify", {}).get("splits") != split_list:
            counts = _verify_coco(root, splits, man, convention, progress)
            man.counts, man.complete = counts, True
            man.mark("verify", splits=split_list, **counts)
            ran.append("verify")
        else:  # every step was done (a run stopped after its last step had finished)
            man.complete = True
            man.save()
        _say(verbose, "COCO 2014 ready: " + _coco_summary(man.counts))
        if remove_archives:
            _remove_downloads(ddir, [f"coco2014-{s}" for s in splits] + ["coco2014-annotations"], verbose)
        _say(verbose, f"pass --data-root {root} --dataset coco")
        return Prepared(root, dict(man.counts), ran)


def _render_split(items: list[tuple[str, int, int, list[dict[str, Any]]]], out_dir: Path, convention: str,
                  raw: bool, workers: int, progress: bool, verbose: bool, split: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in items if not (out_dir / f"{t[0]}.png").is_file()]
    if len(todo) < len(items):
        _say(verbose, f"SegmentationClass/{split}2014: kept {len(items) - len(todo):,} masks written by an earlier run")
    with _bar(len(items), f"SegmentationClass/{split}2014", progress) as bar:
        bar.update(len(items) - len(todo))
        chunks = [todo[i:i + 256] for i in range(0, len(todo), 256)]
        if workers == 1 or len(chunks) <= 1:
            for c in chunks:
                bar.update(_render_chunk(c, str(out_dir), convention, raw))
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as ex:
                for n in ex.map(_render_chunk, chunks, [str(out_dir)] * len(chunks), [convention] * len(chunks),
                                [raw] * len(chunks)):
                    bar.update(n)
    _say(verbose, f"SegmentationClass/{split}2014: {len(items):,} label PNGs ({convention} convention)")


def _coco_outputs_present(root: Path, splits: Sequence[str]) -> bool:
    need = [root / "cls_labels.npy"]
    for s in splits:
        need += [root / "JPEGImages" / f"{s}2014", root / "SegmentationClass" / f"{s}2014",
                 root / "ImageSets" / "Segmentation" / f"{s}.txt"]
    return all(p.exists() for p in need)


def _coco_summary(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _verify_coco(root: Path, splits: Sequence[str], man: _Manifest, convention: str, progress: bool
                 ) -> dict[str, int]:
    from .voc import load_cls_labels

    labels = load_cls_labels(root / "cls_labels.npy", COCO_NUM_CLASSES)
    counts: dict[str, int] = {}
    for s in splits:
        names = read_split_list(root / "ImageSets" / "Segmentation" / f"{s}.txt")
        counts[s] = len(names)
        with _bar(len(names), f"check {s}", progress) as bar:
            for n in names:
                bar.update(1)
                for p in (root / "JPEGImages" / f"{s}2014" / f"{n}.jpg", root / "SegmentationClass" / f"{s}2014" /
                          f"{n}.png"):
                    if not p.is_file() or p.stat().st_size == 0:
                        raise FileNotFoundError(f"{p} is missing or empty after preparation")
                if n not in labels:
                    raise ValueError(f"{n} has no entry in {root / 'cls_labels.npy'}")
        n_images = int(man.steps.get(f"masks_{s}", {}).get("images", -1))
        total, wsss = COCO_OFFICIAL_COUNTS[s]
        if n_images == total:
            expected = wsss if convention == "coco2voc" else total
            if len(names) != expected:
                _warn(f"COCO {s}2014: {len(names):,} label PNGs, the WSSS split has {expected:,}")
    counts["labels"] = len(labels)
    return counts


# ----------------------------------------------------------------------------------------------------------
# saliency maps
# ----------------------------------------------------------------------------------------------------------
def _dataset_data_root(root: Path, dataset: str) -> Path:
    return voc_data_root(root) if dataset == "voc" else root


def prepare_saliency(name: str, root: PathLike, *, source: PathLike | None = None,
                     archives: PathLike | None = None, download_dir: PathLike | None = None, progress: bool = True,
                     verbose: bool = True) -> Path:
    """Install a released saliency-map set into the folder the configs read; return that folder.

    The maps go to ``<data root>/<folder>`` (``folder`` of [`SALIENCY_SETS`][]: ``Sal`` for the PoolNet maps of
    L2G, read through ``data.saliency_dir: Sal``; ``SALImages`` for the PFAN maps of EPS/SMAF), where the data
    root is the one of [`prepare_voc`][] / [`prepare_coco`][] for the same ``root``.

    ``source`` is the file you downloaded (zip or tar, any inner layout: the folder holding the most PNGs is
    taken) or a folder of ``<name>.png`` maps. Without ``source`` the set is downloaded when it has a direct link;
    none of the released sets has one (Google Drive), so the error says where to get it and where to put it.
    Installation is atomic (a ``.partial`` folder renamed when complete). When the dataset is already prepared,
    every image of its training split must have a map.

    Raises:
        ValueError: unknown ``name``; maps missing for images of the training split.
        FileNotFoundError: no ``source`` and no direct link (the message gives the page and the target folder).
    """
    if name not in SALIENCY_SETS:
        raise ValueError(f"unknown saliency set {name!r}; known: {', '.join(SALIENCY_SETS)}")
    entry = SALIENCY_SETS[name]
    root = Path(root).expanduser().absolute()
    data_root = _dataset_data_root(root, entry.dataset)
    final = data_root / entry.folder
    if (final / EXTRACTED_MARKER).is_file():
        _say(verbose, f"{name} is already installed in {final}")
        return final
    if final.exists():
        raise FileExistsError(f"{final} exists and was not installed by wsss-blocks; keep it (the configs read it "
                              f"as it is) or move it away to install {name}")
    if source is None:
        arch = Path(archives).expanduser().absolute() if archives is not None else None
        if entry.url is not None and entry.file_name is not None:
            if arch is not None:
                src = arch / entry.file_name
                if not src.is_file():
                    raise FileNotFoundError(f"{entry.file_name} is not in --archives folder {str(arch)!r} "
                                            f"(source: {entry.url})")
                if entry.sha256:
                    hub.verify_file(src, sha256=entry.sha256)
            else:
                ddir = Path(download_dir).expanduser().absolute() if download_dir is not None else root / "archives"
                src = hub.download(entry.url, ddir / entry.file_name, sha256=entry.sha256, progress=progress)
        else:
            raise FileNotFoundError(
                f"the {entry.model} saliency maps for {entry.dataset.upper()} ({name}, used by {entry.used_by}) "
                f"have no direct download link: download them in a browser from {entry.page} (linked in "
                f"{entry.source}), then run `wsss-blocks data prepare saliency {name} --root {root} --from <the "
                f"downloaded file or its unpacked folder>`, or unpack the <image name>.png maps into {final} yourself")
    else:
        src = Path(source).expanduser().absolute()
        if not src.exists():
            raise FileNotFoundError(f"saliency source {str(src)!r} does not exist")
    data_root.mkdir(parents=True, exist_ok=True)
    tmp = _partial_dir(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        n = _install_pngs(src, tmp, progress)
        _check_saliency(tmp, data_root, entry.dataset, name)
        _write_json(tmp / EXTRACTED_MARKER, {"set": name, "source": str(src), "files": n, "finished": _now()})
        os.replace(tmp, final)
    except BaseException:
        if not isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(verbose, f"{name}: {n:,} saliency maps in {final} (data.saliency_dir: {entry.folder})")
    return final


def _install_pngs(src: Path, tmp: Path, progress: bool) -> int:
    """Copy the PNGs of the folder (in ``src``, or in the archive ``src``) that holds the most of them into ``tmp``."""
    if src.is_dir():
        folder = _folder_with_most_pngs(src)
        tmp.mkdir(parents=True)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
        with _bar(len(files), "copy saliency maps", progress) as bar:
            for p in files:
                shutil.copyfile(p, tmp / p.name)
                bar.update(1)
        return len(files)
    unpack = tmp.with_name(tmp.name + "-unpack")
    if unpack.exists():
        shutil.rmtree(unpack)
    unpack.mkdir(parents=True)
    try:
        _extract_members(src, _Extract("", "", "", required=()), unpack, progress)
        folder = _folder_with_most_pngs(unpack)
        os.replace(folder, tmp)
        return sum(1 for p in tmp.iterdir() if p.suffix.lower() == ".png")
    finally:
        shutil.rmtree(unpack, ignore_errors=True)


def _folder_with_most_pngs(top: Path) -> Path:
    best, best_n = None, 0
    for dirpath, _dirs, files in os.walk(top):
        n = sum(1 for f in files if f.lower().endswith(".png") and not f.startswith("."))
        if n > best_n:
            best, best_n = Path(dirpath), n
    if best is None:
        raise ValueError(f"{top} holds no PNG files")
    return best


def _check_saliency(folder: Path, data_root: Path, dataset: str, name: str) -> None:
    """When the dataset's training list exists, every name in it must have a map."""
    if dataset == "voc":
        seg = data_root / "ImageSets" / "Segmentation"
        lists = [seg / "train_aug.txt", seg / "train.txt"]
    else:
        lists = [data_root / "ImageSets" / "Segmentation" / "train.txt"]
    lp = next((p for p in lists if p.is_file()), None)
    if lp is None:
        return
    have = {p.stem for p in folder.iterdir() if p.suffix.lower() == ".png"}
    missing = [n for n in read_split_list(lp) if n not in have]
    if missing:
        raise ValueError(f"{name}: {len(missing):,} images of {lp} have no saliency map, e.g. {missing[0]}.png; is it "
                         f"the {dataset.upper()} set?")


# ----------------------------------------------------------------------------------------------------------
# diagnosis of a data root
# ----------------------------------------------------------------------------------------------------------
def _suggest_voc_root(path: Path) -> tuple[Path, str]:
    """(the --root to prepare into, a note on the --data-root to pass afterwards)."""
    if path.name == "VOC2012" and path.parent.name == "VOCdevkit":
        return path.parent.parent, ""
    return path, f", then pass --data-root {path / 'VOCdevkit' / 'VOC2012'}"


def _incomplete_manifest(path: Path) -> str | None:
    data = _read_json(path / MANIFEST)
    if data is None or data.get("complete"):
        return None
    dataset = data.get("dataset", "voc")
    steps = data.get("steps", {})
    todo = next((s for s in data.get("plan", []) if s not in steps), "verify")
    if dataset == "voc":
        root, _ = _suggest_voc_root(path)
        cmd = f"wsss-blocks data prepare voc --root {root}"
    else:
        cmd = f"wsss-blocks data prepare coco --root {path}"
    return (f"the preparation of {path} was interrupted before step '{todo}' finished; run `{cmd}` again (it "
            f"resumes where it stopped)")


_SALIENCY_HINT = {("voc", "Sal"): "poolnet-voc", ("voc", "SALImages"): "pfan-voc", ("coco", "Sal"): "poolnet-coco",
                  ("coco", "SALImages"): "pfan-coco"}


def _saliency_problem(path: Path, dataset: str, saliency_dir: PathLike | None, root_arg: Path) -> str | None:
    if saliency_dir is None:
        return None
    sdir = Path(saliency_dir)
    sdir = sdir if sdir.is_absolute() else path / sdir
    if sdir.is_dir():
        return None
    hint = _SALIENCY_HINT.get((dataset, Path(saliency_dir).name))
    fix = (f"`wsss-blocks data prepare saliency {hint} --root {root_arg} --from <downloaded file>` (the download "
           f"link: {SALIENCY_SETS[hint].page})" if hint else "put the saliency PNGs there")
    return f"the saliency maps are missing ({sdir}); {fix}"


def diagnose_voc_root(path: PathLike, *, saliency_dir: PathLike | None = None,
                      labels_file: PathLike | None = "cls_labels.npy") -> str | None:
    """Why ``path`` is not a prepared VOC 2012 + SBD data root, with the command that fixes it; ``None`` if it is.

    Checked in order: the folder, the VOC 2012 tree (``JPEGImages``, ``Annotations``, ``SegmentationClass``,
    ``ImageSets/Segmentation/{train,val}.txt``), an interrupted [`prepare_voc`][], ``SegmentationClassAug``,
    the image-label file ``labels_file`` (when it is a bare file name the configs expect under the root) and the
    ``saliency_dir`` (when given). A folder prepared by other means passes as long as these exist.

    Examples:
        >>> import tempfile
        >>> msg = diagnose_voc_root(tempfile.mkdtemp())
        >>> "wsss-blocks data prepare voc --root" in msg
        True
    """
    p = Path(path).expanduser().absolute()
    root, then = _suggest_voc_root(p)
    cmd = f"`wsss-blocks data prepare voc --root {root}`"
    head = "VOC 2012 is not prepared in this folder"
    if not p.is_dir():
        if _partial_dir(p).is_dir():
            return (f"{head}: the extraction of the VOC 2012 archive was interrupted ({_partial_dir(p)} is left); "
                    f"run {cmd} again")
        return f"{head}: {p} does not exist; {cmd} creates it{then}"
    if (p / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir() and not (p / "JPEGImages").is_dir():
        return f"{head}: {p} holds VOCdevkit/VOC2012; pass --data-root {p / 'VOCdevkit' / 'VOC2012'}"
    for r in _VOC.required:
        if not (p / r).exists():
            return f"{head}: {p / r} is missing (step: the VOC 2012 trainval archive); run {cmd}{then}"
    inc = _incomplete_manifest(p)
    if inc is not None:
        return f"{head}: {inc}"
    if not (p / "SegmentationClassAug").is_dir():
        return (f"{head}: {p / 'SegmentationClassAug'} is missing (step: the SBD masks and train_aug); run {cmd}"
                f"{then}")
    if labels_file is not None:
        lf = Path(labels_file)
        if not lf.is_absolute() and len(lf.parts) == 1 and lf.suffix == ".npy" and not (p / lf).is_file():
            return f"{head}: the image labels {p / lf} are missing (step: cls_labels.npy); run {cmd}{then}"
    return _saliency_problem(p, "voc", saliency_dir, root)


def diagnose_coco_root(path: PathLike, *, saliency_dir: PathLike | None = None,
                       labels_file: PathLike | None = "cls_labels.npy") -> str | None:
    """As [`diagnose_voc_root`][] for a COCO 2014 data root (``JPEGImages``, ``SegmentationClass``, labels)."""
    p = Path(path).expanduser().absolute()
    cmd = f"`wsss-blocks data prepare coco --root {p}`"
    head = "COCO 2014 is not prepared in this folder"
    if not p.is_dir():
        return f"{head}: {p} does not exist; {cmd} creates it"
    for sub in ("JPEGImages", "SegmentationClass"):
        have = [d for d in ("train2014", "val2014", "train", "val") if (p / sub / d).is_dir()] \
            if (p / sub).is_dir() else []
        alt = sub == "JPEGImages" and (p / "coco2014").is_dir()
        if not have and not alt:
            step = "the image archives" if sub == "JPEGImages" else "the label PNGs"
            return f"{head}: {p / sub} holds no train2014/val2014 folder (step: {step}); run {cmd}"
    inc = _incomplete_manifest(p)
    if inc is not None:
        return f"{head}: {inc}"
    if labels_file is not None:
        lf = Path(labels_file)
        if not lf.is_absolute() and len(lf.parts) == 1 and lf.suffix == ".npy" and not (p / lf).is_file():
            return f"{head}: the image labels {p / lf} are missing (step: cls_labels.npy); run {cmd}"
    return _saliency_problem(p, "coco", saliency_dir, p)


def diagnose_data_root(path: PathLike, dataset: str, *, saliency_dir: PathLike | None = None,
                       labels_file: PathLike | None = "cls_labels.npy") -> str | None:
    """[`diagnose_voc_root`][] or [`diagnose_coco_root`][] by ``dataset`` (``None`` for other datasets)."""
    if dataset == "voc":
        return diagnose_voc_root(path, saliency_dir=saliency_dir, labels_file=labels_file)
    if dataset == "coco":
        return diagnose_coco_root(path, saliency_dir=saliency_dir, labels_file=labels_file)
    return None


@contextlib.contextmanager
def explain_unprepared(path: PathLike | None, dataset: str, *, saliency_dir: PathLike | None = None,
                       labels_file: PathLike | None = None) -> Iterator[None]:
    """Add the missing preparation step and its ``wsss-blocks data prepare`` command to data errors.

    On entry, a data root whose [`prepare_voc`][] / [`prepare_coco`][] was interrupted is refused at once
    (its partial ``SegmentationClassAug`` would otherwise pass for a smaller dataset). A ``FileNotFoundError`` or
    ``ValueError`` raised inside gets the diagnosis appended when [`diagnose_data_root`][] finds a missing step.
    For ``dataset`` other than ``voc``/``coco``, or ``path`` ``None``, it does nothing.

    Examples:
        >>> import tempfile, os
        >>> missing = os.path.join(tempfile.mkdtemp(), "VOCdevkit", "VOC2012")
        >>> try:
        ...     with explain_unprepared(missing, "voc"):
        ...         raise FileNotFoundError(f"data.root {missing!r} does not exist")
        ... except FileNotFoundError as e:
        ...     print("data prepare voc" in str(e))
        True
    """
    if path is None or dataset not in ("voc", "coco"):
        yield
        return
    p = Path(path).expanduser().absolute()
    inc = _incomplete_manifest(p) if p.is_dir() else None
    if inc is not None:
        raise FileNotFoundError(f"{'VOC 2012' if dataset == 'voc' else 'COCO 2014'} is not ready: {inc}")
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        hint = diagnose_data_root(p, dataset, saliency_dir=saliency_dir, labels_file=labels_file)
        if hint is None:
            raise
        msg = f"{exc}. {hint}"
        try:
            new = type(exc)(msg)
        except TypeError:
            new = FileNotFoundError(msg)
        raise new from exc


# ----------------------------------------------------------------------------------------------------------
# command line (``wsss-blocks data ...``; the parser lives in wsss_blocks/cli.py)
# ----------------------------------------------------------------------------------------------------------
def sources_table() -> str:
    """The archives and the saliency sets as plain text (``wsss-blocks data sources``)."""
    rows = ["Official archives (wsss-blocks data prepare voc|coco):"]
    for a in ARCHIVES.values():
        rows.append(f"  {a.file_name}  ({a.size_note})")
        rows += [f"    url   {u}" for u in a.urls]
        rows.append(f"    md5   {a.md5}  (published in {a.hash_source})" if a.md5 else "    hash  none published")
    rows.append("Saliency sets (wsss-blocks data prepare saliency NAME):")
    for e in SALIENCY_SETS.values():
        rows.append(f"  {e.name}  {e.model} maps for {e.dataset.upper()}, used by {e.used_by}; folder {e.folder}")
        how = f"direct link {e.url}" if e.url else f"manual download {e.page}"
        rows.append(f"    {how}  ({e.source})")
    return "\n".join(rows)


def _check_files(args: argparse.Namespace) -> int:
    """``data check --files``: decode every image and mask; print the report (status 1 with problems)."""
    import hashlib

    from .check import DEFAULT_MAX_IMAGE_PIXELS, check_data_root

    root = Path(args.data_root).expanduser().absolute()
    cache_dir = Path(os.environ.get("WSSS_BLOCKS_CACHE") or Path.home() / ".cache" / "wsss_blocks")
    cache = cache_dir / "data_check" / f"{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.json"
    report = check_data_root(root, args.dataset, args.splits,
                             max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
                             workers=args.workers, cache_file=cache, progress=not args.no_progress)
    if report.problems:
        print(report.message(max_listed=50))
        return 1
    print(f"{args.data_root}: ready; {report.files} files decoded and valid ({report.decoded} decoded now, the "
          f"others unchanged since they were checked; {report.seconds:.1f} s)")
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """Run a parsed ``wsss-blocks data ...`` command; errors go to stderr as one ``error:`` line (status 2)."""
    try:
        if args.data_command == "sources":
            print(sources_table())
            return 0
        if args.data_command == "check":
            msg = diagnose_data_root(args.data_root, args.dataset, saliency_dir=args.saliency_dir,
                                     labels_file=args.labels_file)
            if msg is not None:
                print(msg)
                return 1
            if getattr(args, "files", False):
                return _check_files(args)
            print(f"{args.data_root}: ready")
            return 0
        what = args.prepare_what
        common = dict(progress=not args.no_progress, verbose=not args.quiet)
        if what == "voc":
            prepare_voc(args.root, archives=args.archives, download_dir=args.download_dir, verify=not args.no_verify,
                        sbd=not args.no_sbd, remove_archives=args.remove_archives, **common)
        elif what == "coco":
            prepare_coco(args.root, archives=args.archives, download_dir=args.download_dir,
                         verify=not args.no_verify, splits=args.splits, convention=args.convention,
                         raw_category_ids=args.raw_category_ids, workers=args.workers,
                         remove_archives=args.remove_archives, **common)
        else:
            prepare_saliency(args.name, args.root, source=args.source, archives=args.archives,
                             download_dir=args.download_dir, **common)
        return 0
    except (hub.ChecksumError, hub.DownloadError, OSError, ValueError, ImportError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
