"""Pre-flight data check: decode every image and mask a run will read, once, before training starts.

A run that reads a corrupt file fails when it reaches it: a truncated JPEG of the val split after all three
stages have trained, a 6000×4000 photo in the middle of the pseudo-mask stage with an allocator traceback.
[`check_data_files`][wsss_blocks.data.check.check_data_files] opens and fully decodes each file in a thread
pool (PIL decodes outside the GIL) with a progress bar, and checks:

* **decodability**: the whole file decodes (a truncated or corrupt file names PIL's error);
* **bit depth / mode**: images and masks have 8 bits per channel (a 16-bit PNG is named, not read white or
  silently rescaled); label PNGs are indexed (``P``) or greyscale (``L``), never RGB colours;
* **mask values**: within ``[0, C]`` and 255 (ignore) for ``C`` foreground classes;
* **sizes**: a mask (and a saliency map) has its image's size;
* **image size**: at most ``max_image_pixels`` (default 16 MP: VOC and COCO images are below 0.5 MP, and
  multi-scale inference at scale 2 of a 16 MP image already holds 64 MP maps per class).

All problems are collected and raised together as one [`DataCheckError`][wsss_blocks.data.check.DataCheckError]
(file, problem), capped at ``max_listed`` lines plus a count. What was learnt about each file is cached by
path, size and modification time in a JSON file, so a rerun decodes only new or changed files (a rerun of an
unchanged dataset only stats the files). The reference trainer runs it before its first write (config key
``data.preflight``, command-line flag ``--skip-data-check``); ``wsss-blocks data check ROOT --files`` runs it
on a data root.

Examples:
    >>> import tempfile
    >>> from wsss_blocks.data import VOCSegmentation, make_synthetic_voc
    >>> root = make_synthetic_voc(tempfile.mkdtemp(), num_train=2, num_val=2, image_size=16)
    >>> ds = VOCSegmentation(root, split="val", labels_file="cls_labels.npy")
    >>> report = check_data_files(dataset_files(ds), num_classes=ds.num_classes, progress=False)
    >>> report.files, report.problems
    (4, [])
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss_blocks._checks import check_int, require
from wsss_blocks.data.io import _image_bit_depth, atomic_write

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "SampleFiles",
    "DataProblem",
    "DataCheckReport",
    "DataCheckError",
    "check_data_files",
    "check_data_root",
    "dataset_files",
]

DEFAULT_MAX_IMAGE_PIXELS = 16_000_000
"""Largest image (width × height) a run accepts by default: 16 MP, 40 times a VOC image, below 6000×4000."""

_FORMAT = "wsss-blocks/data-check/1"
_IGNORE = 255
_MASK_MODES = ("P", "L", "1")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample: its image, and the mask and saliency map the run reads with it (if any)."""

    image: Path
    mask: Path | None = None
    saliency: Path | None = None


@dataclass(frozen=True)
class DataProblem:
    """One problem of one file."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class DataCheckReport:
    """What [`check_data_files`][wsss_blocks.data.check.check_data_files] found.

    Attributes:
        files: distinct files checked (images, masks and saliency maps).
        decoded: files decoded now (the others came from the cache, unchanged since they were decoded).
        problems: every problem found, in sample order.
        seconds: wall time of the check.
        cache_file: the cache written, or ``None``.
    """

    files: int
    decoded: int
    problems: list[DataProblem] = field(default_factory=list)
    seconds: float = 0.0
    cache_file: Path | None = None

    def message(self, max_listed: int = 20, hint: str = "") -> str:
        """The problems as one message: a header line, then ``file: problem`` lines (at most ``max_listed``)."""
        n_files = len({p.path for p in self.problems})
        lines = [f"the data check found {len(self.problems)} problem(s) in {n_files} of {self.files} files; "
                 f"fix or remove them before training:"]
        lines += [f"  {p}" for p in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more")
        if hint:
            lines.append(hint)
        return "\n".join(lines)

    def raise_if_problems(self, max_listed: int = 20, hint: str = "") -> None:
        """Raise [`DataCheckError`][wsss_blocks.data.check.DataCheckError] listing the problems, if any."""
        if self.problems:
            raise DataCheckError(self.message(max_listed, hint), self)


class DataCheckError(ValueError):
    """Files a run would read are unusable; the message lists them (file, problem), ``report`` has them all."""

    def __init__(self, message: str, report: DataCheckReport):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------------------------------
# facts about one file (what is cached) and the verdicts drawn from them
# ----------------------------------------------------------------------------------------------------------
def _open(path: Path) -> Any:
    Image = require("PIL.Image", "train", "the data check")
    return Image.open(path)


def _decode(img: Any) -> None:
    """Decode the whole file (PIL reads lazily: a truncated file fails only here)."""
    img.load()


def _facts(path: Path, kind: str, max_image_pixels: int | None) -> dict[str, Any]:
    """What the check needs to know about one file; the decoding is skipped for an image over the size limit."""
    out: dict[str, Any] = {"error": None, "decoded": False}
    try:
        with _open(path) as img:
            w, h = (int(v) for v in img.size)
            out.update(w=w, h=h, mode=str(img.mode), bits=_image_bit_depth(img))
            if kind == "image" and max_image_pixels is not None and w * h > max_image_pixels:
                return out  # named by its size; decoding it could exhaust the memory that the check protects
            _decode(img)
            out["decoded"] = True
            if kind == "mask" and out["mode"] in (*_MASK_MODES, "I;16", "I;16L", "I;16B", "I"):
                arr = np.asarray(img)
                if arr.dtype == np.uint8 or arr.dtype == bool:
                    counts = np.bincount(arr.reshape(-1).astype(np.uint8), minlength=256)
                    out["values"] = np.nonzero(counts)[0].tolist()
                else:
                    out["values"] = np.unique(arr).tolist()
    except Exception as exc:  # any failure to read the file is the finding (PIL raises many types)
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _mb(w: int, h: int) -> str:
    return f"{w}×{h} = {w * h / 1e6:.1f} MP"


def _verdict(kind: str, f: dict[str, Any], num_classes: int | None, max_image_pixels: int | None,
             mask_mapper: Callable[[np.ndarray], np.ndarray] | None) -> list[str]:
    """The problems of one file from its facts."""
    if f.get("error"):
        return [f"cannot be read: {f['error']}"]
    out = []
    w, h, mode, bits = f["w"], f["h"], f["mode"], f["bits"]
    if kind == "image":
        if max_image_pixels is not None and w * h > max_image_pixels:
            out.append(f"image of {_mb(w, h)} exceeds data.max_image_pixels = {max_image_pixels:,} "
                       f"({max_image_pixels / 1e6:g} MP); downscale it, or raise the limit if the machine has the "
                       f"memory for it")
        if bits not in (1, 8):
            out.append(f"{bits}-bit image (PIL mode {mode!r}); the run expects 8 bits per channel (VOC/COCO "
                       f"JPEGs): convert it to 8-bit RGB")
    elif kind == "mask":
        if mode not in _MASK_MODES:
            if bits == 16:
                out.append(f"16-bit label PNG (PIL mode {mode!r}); label PNGs are 8-bit indexed ('P') or greyscale "
                           f"('L') images of class indices")
            else:
                out.append(f"label PNG of mode {mode!r}: label PNGs hold class indices (indexed 'P' or greyscale "
                           f"'L'), not colours")
        values = f.get("values")
        if values is not None and num_classes is not None:
            vals = np.asarray(values, dtype=np.int64)
            if mask_mapper is not None and vals.size:
                try:
                    vals = np.asarray(mask_mapper(vals.reshape(1, -1))).reshape(-1)
                except ValueError as exc:
                    out.append(str(exc))
                    vals = np.zeros(0, dtype=np.int64)
            bad = sorted({int(v) for v in vals if (v < 0 or v > num_classes) and v != _IGNORE})
            if bad:
                out.append(f"mask values {bad[:8]}{' ...' if len(bad) > 8 else ''} outside [0, {num_classes}] and "
                           f"{_IGNORE} (ignore) for {num_classes} classes")
    elif bits not in (1, 8):  # saliency
        out.append(f"{bits}-bit saliency map (PIL mode {mode!r}); saliency PNGs are 8-bit greyscale")
    return out


# ----------------------------------------------------------------------------------------------------------
# the cache: facts by path, valid while the file's size and modification time are unchanged
# ----------------------------------------------------------------------------------------------------------
def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _load_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # an unreadable cache is rebuilt
    return data.get("files", {}) if isinstance(data, dict) and data.get("format") == _FORMAT else {}


def _save_cache(path: Path, entries: dict[str, Any]) -> None:
    with contextlib.suppress(OSError), atomic_write(path, "w", fsync=False) as f:
        json.dump({"format": _FORMAT, "files": entries}, f)


# ----------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------
def _bar(total: int, desc: str, enabled: bool) -> Any:
    if enabled:
        with contextlib.suppress(ImportError):
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True)
    return None


def _entries(samples: Sequence[SampleFiles]) -> Iterator[tuple[str, Path]]:
    for s in samples:
        yield "image", Path(s.image)
        if s.mask is not None:
            yield "mask", Path(s.mask)
        if s.saliency is not None:
            yield "saliency", Path(s.saliency)


def check_data_files(samples: Iterable[SampleFiles], *, num_classes: int | None = None,
                     max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None,
                     cache_file: PathLike | None = None, progress: bool = True, desc: str = "data check",
                     mask_mapper: Callable[[np.ndarray], np.ndarray] | None = None) -> DataCheckReport:
    """Decode every file of ``samples`` once (in a thread pool) and collect all problems; raise nothing.

    Args:
        samples: the images with the masks and saliency maps read with them.
        num_classes: C foreground classes; masks may hold 0..C and 255 (``None``: values are not checked).
        max_image_pixels: largest accepted width × height (``None``: no limit).
        workers: decoding threads (default ``min(8, CPU count)``).
        cache_file: JSON cache of what was learnt per file (path, size, modification time); ``None`` = no cache.
        progress: show a tqdm progress bar.
        desc: the progress bar's label.
        mask_mapper: maps raw mask values to class values before the range check (COCO's raw category ids).

    Returns:
        A [`DataCheckReport`][wsss_blocks.data.check.DataCheckReport]; call its ``raise_if_problems()`` to fail.
    """
    if max_image_pixels is not None:
        check_int(max_image_pixels, "max_image_pixels", minimum=1)
    if num_classes is not None:
        check_int(num_classes, "num_classes", minimum=1)
    t0 = time.time()
    samples = list(samples)
    cache_path = Path(cache_file) if cache_file is not None else None
    cache = _load_cache(cache_path)
    # each distinct file once, in sample order
    order: dict[tuple[str, str], Path] = {}
    for kind, p in _entries(samples):
        order.setdefault((kind, str(Path(p).absolute())), p)
    facts: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[tuple[tuple[str, str], Path, tuple[int, int] | None]] = []
    for key, p in order.items():
        st = _stat_key(p)
        if st is None:
            facts[key] = {"error": "the file does not exist (or cannot be read)"}
            continue
        hit = cache.get(f"{key[0]}:{key[1]}")
        if hit is not None and tuple(hit.get("stat", ())) == st:
            f = hit["facts"]
            too_big = (key[0] == "image" and max_image_pixels is not None and f.get("w") is not None
                       and f["w"] * f["h"] > max_image_pixels)
            if f.get("error") or f.get("decoded") or too_big:
                facts[key] = f
                continue
        todo.append((key, p, st))
    bar = _bar(len(todo), desc, progress and bool(todo))
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    check_int(n_workers, "workers", minimum=1)
    try:
        with cf.ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = {pool.submit(_facts, p, key[0], max_image_pixels): (key, st) for key, p, st in todo}
            for fut in cf.as_completed(futures):
                key, st = futures[fut]
                facts[key] = fut.result()
                cache[f"{key[0]}:{key[1]}"] = {"stat": list(st) if st else None, "facts": facts[key]}
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if cache_path is not None and todo:
        _save_cache(cache_path, cache)

    problems: list[DataProblem] = []
    seen: set[tuple[str, str]] = set()
    for s in samples:
        img_key = ("image", str(Path(s.image).absolute()))
        img = facts[img_key]
        for kind, p in _entries([s]):
            key = (kind, str(Path(p).absolute()))
            if key in seen:
                continue
            seen.add(key)
            f = facts[key]
            for prob in _verdict(kind, f, num_classes, max_image_pixels, mask_mapper):
                problems.append(DataProblem(str(p), prob))
            if kind != "image" and not f.get("error") and not img.get("error") and img.get("w") is not None \
                    and (f["w"], f["h"]) != (img["w"], img["h"]):
                problems.append(DataProblem(str(p), f"{kind} is {f['w']}×{f['h']} but its image "
                                                    f"{Path(s.image).name} is {img['w']}×{img['h']}"))
    return DataCheckReport(files=len(order), decoded=len(todo), problems=problems, seconds=time.time() - t0,
                           cache_file=cache_path if cache_path is not None and cache_path.is_file() else None)


def dataset_files(ds: Any) -> list[SampleFiles]:
    """The files a VOC/COCO reader (`VOCSegmentation`, `COCOSegmentation`) reads for its samples.

    The mask is listed when the reader reads it (``return_mask``, or labels derived from masks), the saliency map
    when it has a ``saliency_dir``.
    """
    needs_mask = bool(getattr(ds, "needs_mask", False))
    sal_dir = getattr(ds, "saliency_dir", None)
    out = []
    for i, name in enumerate(ds.names):
        out.append(SampleFiles(image=Path(ds.image_path(i)), mask=Path(ds.mask_path(i)) if needs_mask else None,
                               saliency=Path(sal_dir) / (name + ".png") if sal_dir is not None else None))
    return out


def _dataset_mask_mapper(ds: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The reader's mapping of raw mask values to class values (COCO raw category ids), if it has one."""
    mapper = getattr(ds, "_mask_mapper", None)
    if mapper is None:
        return None
    return lambda values: mapper(values, Path("<mask values>"))


def check_data_root(root: PathLike, dataset: str = "voc", splits: Sequence[str] | None = None, *,
                    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, workers: int | None = None,
                    cache_file: PathLike | None = None, progress: bool = True,
                    raw_category_ids: bool = False) -> DataCheckReport:
    """[`check_data_files`][wsss_blocks.data.check.check_data_files] on every image and mask of a prepared data root.

    Args:
        root: a VOC 2012 root (``JPEGImages``, ``SegmentationClass[Aug]``, ``ImageSets``) or a COCO 2014 root.
        dataset: ``"voc"`` or ``"coco"``.
        splits: the splits to check; default VOC ``train_aug`` (when its masks exist), ``train``, ``val``; COCO
            ``train``, ``val``.
        max_image_pixels: see `check_data_files`.
        workers: see `check_data_files`.
        cache_file: see `check_data_files`.
        progress: see `check_data_files`.
        raw_category_ids: COCO masks hold raw category ids 1..90.

    Returns:
        The report (``raise_if_problems()`` raises [`DataCheckError`][wsss_blocks.data.check.DataCheckError]).
    """
    from wsss_blocks.data.coco import COCOSegmentation
    from wsss_blocks.data.voc import VOCSegmentation

    root = Path(root)
    samples: list[SampleFiles] = []
    mapper = None
    if dataset == "voc":
        if splits is None:
            aug = (root / "SegmentationClassAug").is_dir() and (root / "ImageSets" / "Segmentation" /
                                                                  "train_aug.txt").is_file()
            splits = (("train_aug",) if aug else ()) + ("train", "val")
        for split in splits:
            ds: Any = VOCSegmentation(root, split, return_mask=True, return_labels=False)
            samples += dataset_files(ds)
        num_classes = 20
    elif dataset == "coco":
        for split in splits or ("train", "val"):
            ds = COCOSegmentation(root, split, return_mask=True, return_labels=False,
                                  raw_category_ids=raw_category_ids)
            samples += dataset_files(ds)
            mapper = mapper or _dataset_mask_mapper(ds)
        num_classes = 80
    else:
        raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}")
    return check_data_files(samples, num_classes=num_classes, max_image_pixels=max_image_pixels, workers=workers,
                            cache_file=cache_file, progress=progress, desc=f"data check {root.name}",
                            mask_mapper=mapper)
