"""PASCAL VOC 2012 (+ SBD "train_aug") reader for weakly supervised semantic segmentation.

Reads the standard ``VOCdevkit/VOC2012`` layout:

    root/
      JPEGImages/<name>.jpg
      SegmentationClassAug/<name>.png    greyscale, 0..20 and 255 (train_aug + val)
      SegmentationClass/<name>.png       palette PNGs, VOC only (train + val)
      ImageSets/Segmentation/{train,val,trainval,train_aug}.txt
      Annotations/<name>.xml             optional, image-level labels from <object><name>
      cls_labels.npy                     optional, {name: float32[20]} image labels

Samples are dicts with ``image`` (float 3×H×W in [0, 1]), ``labels`` (float (20,) multi-hot, no
background entry), ``mask`` (int64 H×W: 0 background, c + 1 for class c, 255 ignore), ``name`` and an
optional ``saliency`` (float 1×H×W in [0, 1]). See ``docs/data.md``.

Examples:
    >>> import tempfile
    >>> from wsss_blocks.data import make_synthetic_voc, VOCSegmentation
    >>> root = make_synthetic_voc(tempfile.mkdtemp(), num_train=4, num_val=2, image_size=32)
    >>> ds = VOCSegmentation(root, split="train_aug")
    >>> s = ds[0]
    >>> tuple(s["image"].shape), tuple(s["labels"].shape), s["mask"].dtype
    ((3, 32, 32), (20,), torch.int64)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss_blocks._checks import check_choice, check_int
from wsss_blocks.data.io import _open_image, atomic_write, load_image, load_label_png

__all__ = [
    "VOC_CLASSES",
    "VOC_NUM_CLASSES",
    "IGNORE_INDEX",
    "VOCSegmentation",
    "read_split_list",
    "write_split_list",
    "derive_train_aug",
    "load_cls_labels",
    "save_cls_labels",
    "labels_from_annotation",
    "labels_from_mask",
    "decode_voc_name",
    "class_names_file",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
"""The 20 VOC foreground classes in the standard order (mask value ``i + 1`` is ``VOC_CLASSES[i]``; mask value 0 is
background)."""
VOC_NUM_CLASSES = 20
"""Number of VOC foreground classes (mask values 1..20; 0 is background)."""
IGNORE_INDEX = 255
"""Mask value of void / ignored pixels."""

PathLike = str | os.PathLike
Transform = Callable[[dict[str, Any]], dict[str, Any]]


def class_names_file(dataset: str) -> Path:
    r"""Path of the packaged class-name list (one name per line) for ``"voc"`` or ``"coco"``.

    Examples:
        >>> class_names_file("voc").read_text().split("\n")[0]
        'aeroplane'
    """
    files = {"voc": "voc_classes.txt", "coco": "coco_classes.txt"}
    check_choice(dataset, "dataset", sorted(files))
    return Path(__file__).resolve().parent / "splits" / files[dataset]


def decode_voc_name(token: str | int) -> str:
    """Normalise one entry of a VOC list file to an image name such as ``2007_000032``.

    Accepts plain names, paths (``/JPEGImages/2007_000032.jpg``, the first column of DeepLab-style
    list files), and IRN's integer encoding (``2007000032``: 10 digits, underscore after the year).

    Examples:
        >>> decode_voc_name(2007000032), decode_voc_name("/JPEGImages/2008_000008.jpg")
        ('2007_000032', '2008_000008')
    """
    s = str(token).strip()
    s = s.replace("\\", "/").rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(s)
    if ext.lower() in (".jpg", ".jpeg", ".png"):
        s = stem
    if len(s) == 10 and s.isdigit():
        s = s[:4] + "_" + s[4:]
    return s


def read_split_list(path: PathLike) -> list[str]:
    """Read a split list file: one image per line; the first whitespace-separated column is used.

    Empty lines and lines starting with ``#`` are skipped; entries go through
    [`decode_voc_name`][], so IRN integer lists and DeepLab ``image mask`` pair lists both work.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no names.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split list file {str(p)!r} does not exist")
    names = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names.append(decode_voc_name(line.split()[0]))
    if not names:
        raise ValueError(f"split list file {str(p)!r} holds no image names")
    return names


def write_split_list(path: PathLike, names: Iterable[str]) -> Path:
    """Write image names one per line (atomically), in the given order; return the path.

    Examples:
        >>> import tempfile, os
        >>> p = write_split_list(os.path.join(tempfile.mkdtemp(), "a.txt"), ["2007_000032"])
        >>> read_split_list(p)
        ['2007_000032']
    """
    names = [str(n) for n in names]
    for n in names:
        if not n or any(c.isspace() for c in n):
            raise ValueError(f"names must be non-empty and contain no whitespace, got {n!r}")
    p = Path(path)
    with atomic_write(p, "w") as f:
        f.write("".join(n + "\n" for n in names))
    return p


def derive_train_aug(root: PathLike, mask_dir: PathLike = "SegmentationClassAug",
                     val_list: PathLike | None = None) -> list[str]:
    """Derive the ``train_aug`` split: all names in ``SegmentationClassAug`` minus the ``val`` list.

    For the real data this gives VOC12 seg-train ∪ SBD (train + val) minus VOC12 seg-val =
    **10,582** names (``SegmentationClassAug`` holds 12,031 = 10,582 + 1,449 val masks). The result
    is sorted, so it is deterministic. Write it with [`write_split_list`][].

    Args:
        root: dataset root (``VOCdevkit/VOC2012``).
        mask_dir: the augmented mask folder, relative to ``root`` or absolute.
        val_list: the val list; default ``root/ImageSets/Segmentation/val.txt``.

    Raises:
        FileNotFoundError: the mask folder or the val list is missing.
    """
    root = Path(root)
    mdir = Path(mask_dir) if Path(mask_dir).is_absolute() else root / mask_dir
    if not mdir.is_dir():
        raise FileNotFoundError(f"mask folder {str(mdir)!r} does not exist; train_aug is derived from "
                                f"the names in SegmentationClassAug")
    vpath = Path(val_list) if val_list is not None else root / "ImageSets" / "Segmentation" / "val.txt"
    val = set(read_split_list(vpath))
    names = sorted(p.stem for p in mdir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    out = [n for n in names if n not in val]
    if not out:
        raise ValueError(f"derived train_aug split is empty: every PNG in {str(mdir)!r} is in {str(vpath)!r}")
    return out


def load_cls_labels(path: PathLike, num_classes: int = VOC_NUM_CLASSES) -> dict[str, np.ndarray]:
    """Load an image-label file ``{name: multi-hot float32[num_classes]}`` saved with ``np.save``.

    Both conventions in use are read: IRN's ``voc12/cls_labels.npy`` (integer keys such as
    ``2007000032``) and ToCo's ``cls_labels_onehot.npy`` (string keys ``'2007_000032'``). Keys are
    normalised with [`decode_voc_name`][]. The file is a pickled dict, so only load files you
    trust.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a dict of ``num_classes``-vectors with values in {0, 1}.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels file {str(p)!r} does not exist")
    try:
        obj = np.load(p, allow_pickle=True)
        data = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0 else obj
    except Exception as exc:  # numpy raises OSError, ValueError or pickle errors for junk files
        raise ValueError(f"cannot read labels file {str(p)!r} ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"labels file {str(p)!r} must hold a dict {{name: multi-hot vector}}, "
                         f"got {type(data).__name__}")
    return _normalise_label_dict(data, num_classes, f"labels file {str(p)!r}")


def _normalise_label_dict(data: Mapping[Any, Any], num_classes: int, what: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in data.items():
        vec = np.asarray(value, dtype=np.float32).reshape(-1)
        if vec.shape != (num_classes,):
            raise ValueError(f"{what}: entry {key!r} has shape {np.shape(value)}, expected ({num_classes},)")
        if not np.all((vec == 0) | (vec == 1)):
            raise ValueError(f"{what}: entry {key!r} must be multi-hot with values in {{0, 1}}")
        out[decode_voc_name(key)] = vec
    return out


def save_cls_labels(path: PathLike, labels: Mapping[str, np.ndarray], int_keys: bool = False) -> Path:
    """Save ``{name: multi-hot vector}`` as ``.npy`` (atomically), ToCo string keys by default.

    With ``int_keys=True`` VOC names are stored as IRN integers (``2007_000032`` -> ``2007000032``).
    """
    data: dict[Any, np.ndarray] = {}
    for name, vec in labels.items():
        key: Any = name
        if int_keys:
            digits = name.replace("_", "")
            if not digits.isdigit():
                raise ValueError(f"int_keys=True needs VOC-style names like '2007_000032', got {name!r}")
            key = int(digits)
        data[key] = np.asarray(vec, dtype=np.float32)
    p = Path(path)
    if p.suffix != ".npy":
        raise ValueError(f"path must end with .npy, got {str(p)!r}")
    with atomic_write(p, "wb") as f:
        np.save(f, np.array(data, dtype=object), allow_pickle=True)
    return p


def labels_from_annotation(xml_path: PathLike, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """Image-level labels from a VOC ``Annotations`` XML file: a 1 for every ``<object><name>``.

    As IRN ``voc12/make_cls_labels.py``, objects flagged difficult or truncated count too.

    Returns:
        ``float32`` vector of length ``len(class_names)``.

    Raises:
        FileNotFoundError: missing file. ValueError: unparsable XML or an unknown class name.
    """
    p = Path(xml_path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file {str(p)!r} does not exist")
    try:
        tree = ET.parse(p)
    except ET.ParseError as exc:
        raise ValueError(f"cannot parse annotation file {str(p)!r} ({exc})") from exc
    index = {n: i for i, n in enumerate(class_names)}
    vec = np.zeros(len(class_names), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name_el = obj.find("name")
        if name_el is None or name_el.text is None:
            continue
        cname = name_el.text.strip()
        if cname not in index:
            raise ValueError(f"annotation file {str(p)!r} names unknown class {cname!r}")
        vec[index[cname]] = 1.0
    return vec


def labels_from_mask(mask: np.ndarray | torch.Tensor, num_classes: int = VOC_NUM_CLASSES) -> np.ndarray:
    """Image-level labels from a mask: classes present = unique values minus 0 and 255, minus 1.

    Every value must be a class (0 background, 1..``num_classes``) or 255 (ignore): a mask with another value
    (a class of another dataset, a negative value, a fractional float) raises ``ValueError`` instead of being
    dropped or truncated.

    Args:
        mask: H×W label mask (integer, or float holding whole numbers).
        num_classes: foreground classes C.

    Returns:
        ``(C,)`` float32 multi-hot vector.

    Examples:
        >>> import numpy as np
        >>> labels_from_mask(np.array([[0, 1], [15, 255]]))[[0, 14]].tolist()
        [1.0, 1.0]
    """
    check_int(num_classes, "num_classes", minimum=1)
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise TypeError(f"mask must be a numpy array or torch.Tensor, got {type(mask).__name__}")
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape H×W (2-D), got {arr.ndim}-D array of shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"mask must hold class indices (an integer array), got dtype {arr.dtype}")
    vals = np.unique(arr)
    if arr.dtype.kind == "f":
        frac = vals[~np.isfinite(vals) | (vals != np.round(vals))]
        if frac.size:
            raise ValueError(f"mask must hold whole class indices, got value {float(frac[0]):g}")
    bad = vals[((vals < 0) | (vals > num_classes)) & (vals != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(f"mask has value {bad[0]:g} outside [0, {num_classes}] and {IGNORE_INDEX} (ignore) for "
                         f"num_classes={num_classes}; values: {[float(v) for v in bad[:5]]}")
    vals = vals[(vals >= 1) & (vals <= num_classes)].astype(np.int64)
    vec = np.zeros(num_classes, dtype=np.float32)
    vec[vals - 1] = 1.0
    return vec


def _resolve(root: Path, p: PathLike) -> Path:
    q = Path(p)
    return q if q.is_absolute() else root / q


class _LabelPNGDataset(Dataset):
    """Shared machinery of the VOC and COCO readers: image + label PNG + labels + saliency."""

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index = IGNORE_INDEX

    def __init__(self, *, names: list[str], image_dir: Path, image_ext: str, mask_dir: Path | None,
                 labels: Mapping[str, np.ndarray] | None, xml_dir: Path | None, saliency_dir: Path | None,
                 transform: Transform | None, return_mask: bool, return_labels: bool,
                 mask_mapper: Callable[[np.ndarray, Path], np.ndarray] | None = None):
        self.names = names
        self.image_dir = image_dir
        self.image_ext = image_ext
        self.mask_dir = mask_dir
        self.labels = labels
        self.xml_dir = xml_dir
        self.saliency_dir = saliency_dir
        self.transform = transform
        self.return_mask = return_mask
        self.return_labels = return_labels
        self._mask_mapper = mask_mapper
        self._mask_tried: list[Path] = []

    def _validate(self, list_desc: str, check_files: bool, root: Path) -> None:
        """Check the label dict covers the names and, optionally, that every file exists."""
        names = self.names
        if self.needs_mask and self.mask_dir is None:
            tried = ", ".join(repr(str(p)) for p in self._mask_tried) or "none"
            raise FileNotFoundError(
                f"no mask folder found under {str(root)!r} (tried {tried}); pass mask_dir, or labels_file "
                f"with return_mask=False")
        if self.labels is not None and self.return_labels:
            missing = [n for n in names if n not in self.labels]
            if missing:
                raise ValueError(f"{len(missing)} of {len(names)} names in {list_desc} have no entry in the "
                                 f"labels file, e.g. {missing[0]!r}")
        if not check_files:
            return
        self._check_exists(names, self.image_dir, self.image_ext, "image", list_desc)
        if self.needs_mask:
            assert self.mask_dir is not None
            self._check_exists(names, self.mask_dir, ".png", "mask", list_desc)
        if self.saliency_dir is not None:
            self._check_exists(names, self.saliency_dir, ".png", "saliency map", list_desc)
        if self.xml_dir is not None and self.labels is None and self.return_labels:
            self._check_exists(names, self.xml_dir, ".xml", "annotation", list_desc)

    @property
    def needs_mask(self) -> bool:
        return self.return_mask or (self.return_labels and self.labels is None and self.xml_dir is None)

    @staticmethod
    def _check_exists(names: list[str], folder: Path, ext: str, what: str, list_desc: str) -> None:
        missing = [n for n in names if not os.path.exists(folder / (n + ext))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(names)} names in {list_desc} have no {what} file in "
                f"{str(folder)!r}, e.g. {str(folder / (missing[0] + ext))!r}")

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.image_dir / (self.names[index] + self.image_ext)

    def mask_path(self, index: int) -> Path:
        if self.mask_dir is None:
            raise ValueError("this dataset has no mask folder")
        return self.mask_dir / (self.names[index] + ".png")

    def load_mask(self, index: int) -> np.ndarray:
        """The validated int64 H×W mask of sample ``index`` (values 0..C and 255)."""
        path = self.mask_path(index)
        mask = load_label_png(path)
        if self._mask_mapper is not None:
            mask = self._mask_mapper(mask, path)
        bad = (mask > self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            vals = np.unique(mask[bad])[:5].tolist()
            raise ValueError(f"mask file {str(path)!r} has values {vals} outside [0, {self.num_classes}] and "
                             f"ignore index {IGNORE_INDEX}")
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        index = index % len(self)
        name = self.names[index]
        img_path = self.image_path(index)
        image = load_image(img_path)
        h, w = image.shape[:2]
        sample: dict[str, Any] = {"name": name}
        sample["image"] = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        mask = None
        if self.needs_mask:
            mask = self.load_mask(index)
            if mask.shape != (h, w):
                raise ValueError(f"mask file {str(self.mask_path(index))!r} has size {mask.shape} but image "
                                 f"{str(img_path)!r} has size {(h, w)}")
        if self.return_labels:
            if self.labels is not None:
                vec = self.labels[name]
            elif self.xml_dir is not None:
                vec = labels_from_annotation(self.xml_dir / (name + ".xml"), self.class_names)
            else:
                assert mask is not None
                vec = labels_from_mask(mask, self.num_classes)
            sample["labels"] = torch.from_numpy(np.asarray(vec, dtype=np.float32).copy())
        if self.return_mask:
            assert mask is not None
            sample["mask"] = torch.from_numpy(mask)
        if self.saliency_dir is not None:
            sal_path = self.saliency_dir / (name + ".png")
            sal = np.asarray(_open_image(sal_path, "saliency map").convert("L"), dtype=np.float32) / 255.0
            if sal.shape != (h, w):
                raise ValueError(f"saliency map {str(sal_path)!r} has size {sal.shape} but image "
                                 f"{str(img_path)!r} has size {(h, w)}")
            sample["saliency"] = torch.from_numpy(sal.copy()).unsqueeze(0)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, images={str(self.image_dir)!r}, "
                f"masks={str(self.mask_dir) if self.mask_dir else None!r})")


def _load_labels_arg(labels_file: PathLike | Mapping[str, Any] | None, root: Path, num_classes: int
                     ) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """Return (labels dict, xml folder) from the ``labels_file`` argument."""
    if labels_file is None:
        return None, None
    if isinstance(labels_file, Mapping):
        return _normalise_label_dict(labels_file, num_classes, "labels_file mapping"), None
    p = Path(labels_file)
    if not p.is_absolute() and not p.exists() and (root / p).exists():
        p = root / p
    if p.is_dir():
        return None, p
    if not p.exists():
        raise FileNotFoundError(f"labels_file {str(p)!r} does not exist (give a .npy label dict or an "
                                f"Annotations folder)")
    return load_cls_labels(p, num_classes), None


class VOCSegmentation(_LabelPNGDataset):
    """PASCAL VOC 2012 (+SBD) dataset for WSSS: images, image-level labels, masks, optional saliency.

    Paper: Everingham et al., "The PASCAL Visual Object Classes Challenge" (IJCV 2010); SBD from
    Hariharan et al., "Semantic Contours from Inverse Detectors" (ICCV 2011).

    Split resolution (``split``):

    1. a path to a list file (anything ending in ``.txt`` or containing a path separator);
    2. ``root/ImageSets/Segmentation/<split>.txt``, then ``root/ImageSets/SegmentationAug/<split>.txt``;
    3. for ``"train_aug"`` only, when no list file exists: derived with [`derive_train_aug`][]
       (names in ``SegmentationClassAug``, or in ``mask_dir`` when given, minus ``val.txt``; 10,582
       names on the real data).

    Image-level labels come from ``labels_file`` when given (a ``.npy`` dict with IRN integer or
    ToCo string keys, a mapping, or a folder of ``Annotations`` XML files; a relative path is tried
    under ``root`` too), otherwise from the mask (unique values minus 0 and 255).

    Args:
        root: dataset root (the folder holding ``JPEGImages``).
        split: split name or list-file path (see above).
        mask_dir: mask folder, relative to ``root`` or absolute; default ``SegmentationClassAug`` if
            it exists, else ``SegmentationClass``.
        labels_file: image-label source, see above; ``None`` derives labels from masks.
        saliency_dir: optional folder of greyscale saliency PNGs ``<name>.png`` (relative to root or
            absolute), returned as ``saliency`` in [0, 1].
        transform: callable applied to the sample dict (see
            [`wsss_blocks.data.transforms`][wsss_blocks.data.transforms]).
        return_mask: include ``mask`` in the sample.
        return_labels: include ``labels`` (set False for the test split, which has neither masks
            nor labels).
        image_dir: image folder, default ``root/JPEGImages``.
        image_ext: image file extension, default ``.jpg``.
        check_files: at construction, check that every listed name has its image (and mask /
            saliency when needed); raises ``FileNotFoundError`` naming the first missing file.

    Shape:
        - ``image``: ``(3, H, W)`` float in [0, 1] (before ``transform``).
        - ``labels``: ``(20,)`` float multi-hot.
        - ``mask``: ``(H, W)`` int64, values 0..20 and 255.
        - ``saliency``: ``(1, H, W)`` float in [0, 1].

    Examples:
        >>> import tempfile
        >>> from wsss_blocks.data import make_synthetic_voc
        >>> root = make_synthetic_voc(tempfile.mkdtemp(), num_train=3, num_val=2, image_size=32)
        >>> ds = VOCSegmentation(root, split="val", labels_file="cls_labels.npy")
        >>> len(ds), sorted(ds[0])
        (2, ['image', 'labels', 'mask', 'name'])
    """

    num_classes = VOC_NUM_CLASSES
    class_names = VOC_CLASSES

    def __init__(self, root: PathLike, split: str = "train_aug", mask_dir: PathLike | None = None,
                 labels_file: PathLike | Mapping[str, Any] | None = None, saliency_dir: PathLike | None = None,
                 transform: Transform | None = None, return_mask: bool = True, *, return_labels: bool = True,
                 image_dir: PathLike | None = None, image_ext: str = ".jpg", check_files: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VOC root folder {str(root)!r} does not exist")
        self.root = root
        idir = _resolve(root, image_dir) if image_dir is not None else root / "JPEGImages"
        if not idir.is_dir():
            raise FileNotFoundError(f"image folder {str(idir)!r} does not exist (expected the VOC2012 layout "
                                    f"root/JPEGImages)")
        labels, xml_dir = _load_labels_arg(labels_file, root, self.num_classes)
        mdir: Path | None
        if mask_dir is not None:
            mdir = _resolve(root, mask_dir)
            if not mdir.is_dir():
                raise FileNotFoundError(f"mask folder {str(mdir)!r} does not exist")
        else:
            cands = [root / "SegmentationClassAug", root / "SegmentationClass"]
            mdir = next((c for c in cands if c.is_dir()), None)
        self.split = split
        names, list_desc = self._resolve_split(root, split, mdir if mask_dir is not None else None)
        sdir = _resolve(root, saliency_dir) if saliency_dir is not None else None
        if sdir is not None and not sdir.is_dir():
            raise FileNotFoundError(f"saliency folder {str(sdir)!r} does not exist")
        super().__init__(names=names, image_dir=idir, image_ext=image_ext, mask_dir=mdir, labels=labels,
                         xml_dir=xml_dir, saliency_dir=sdir, transform=transform, return_mask=return_mask,
                         return_labels=return_labels)
        self._mask_tried = [root / "SegmentationClassAug", root / "SegmentationClass"]
        self._validate(list_desc, check_files, root)

    @staticmethod
    def _resolve_split(root: Path, split: str, mask_dir: Path | None = None) -> tuple[list[str], str]:
        if not isinstance(split, (str, os.PathLike)):
            raise TypeError(f"split must be a split name or a list-file path, got {type(split).__name__}")
        s = os.fspath(split)
        if s.endswith(".txt") or "/" in s or os.sep in s:
            p = _resolve(root, s) if not Path(s).exists() else Path(s)
            return read_split_list(p), f"split list {str(p)!r}"
        tried = [root / "ImageSets" / "Segmentation" / f"{s}.txt", root / "ImageSets" / "SegmentationAug" / f"{s}.txt"]
        for p in tried:
            if p.is_file():
                return read_split_list(p), f"split list {str(p)!r}"
        if s == "train_aug":
            mdir = mask_dir if mask_dir is not None else root / "SegmentationClassAug"
            names = derive_train_aug(root, mdir)
            return names, f"split 'train_aug' (derived: {str(mdir)!r} minus val.txt)"
        raise FileNotFoundError(f"no list file for split {s!r}: tried " + ", ".join(repr(str(p)) for p in tried)
                                + "; pass a list-file path as split")
