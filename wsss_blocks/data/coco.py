"""MS COCO 2014 reader for WSSS, over the usual "COCO as VOC-style label PNGs" layout.

Layout (ToCo, SeCo, DuPL):

    root/
      JPEGImages/{train2014,val2014}/<name>.jpg          (or coco2014/{train2014,val2014}/)
      SegmentationClass/{train2014,val2014}/<name>.png   greyscale label PNGs

AFA and WeCLIP name the sub-folders ``train`` and ``val``; both spellings are found. Names look like
``COCO_train2014_000000000009``.

Label PNGs made by ``alicranck/coco2voc`` store the **raw COCO category id** (1..90, not
contiguous); the masks distributed with ToCo/AFA are already contiguous 1..80. Pass
``raw_category_ids=True`` for the former: values are remapped with [`coco_id_to_contiguous`][].

Examples:
    >>> import numpy as np
    >>> coco_id_to_contiguous(np.array([0, 1, 13, 90, 255])).tolist()
    [0, 1, 12, 80, 255]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from wsss_blocks.data.voc import (
    IGNORE_INDEX,
    PathLike,
    Transform,
    _LabelPNGDataset,
    _load_labels_arg,
    _resolve,
    read_split_list,
)

__all__ = [
    "COCO_CLASSES",
    "COCO_CATEGORY_IDS",
    "COCO_NUM_CLASSES",
    "coco_id_to_contiguous",
    "contiguous_to_coco_id",
    "COCOSegmentation",
]

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
"""The 80 COCO object classes in the standard order (official COCO API names); mask value ``i + 1`` is
``COCO_CLASSES[i]`` and 0 is background."""
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
    *range(84, 91),
)
"""The raw COCO ``category_id`` of each class in [`COCO_CLASSES`][] (1..90 with gaps)."""
COCO_NUM_CLASSES = 80
"""Number of COCO object classes (mask values 1..80; 0 is background)."""

_INVALID = -1
_ID_LUT = np.full(256, _INVALID, dtype=np.int64)
_ID_LUT[0] = 0
_ID_LUT[IGNORE_INDEX] = IGNORE_INDEX
_ID_LUT[np.asarray(COCO_CATEGORY_IDS)] = np.arange(1, COCO_NUM_CLASSES + 1)
_INV_LUT = np.full(256, _INVALID, dtype=np.int64)
_INV_LUT[0] = 0
_INV_LUT[IGNORE_INDEX] = IGNORE_INDEX
_INV_LUT[1:COCO_NUM_CLASSES + 1] = np.asarray(COCO_CATEGORY_IDS)


@overload
def coco_id_to_contiguous(ids: int, unknown: str = "error") -> int: ...
@overload
def coco_id_to_contiguous(ids: np.ndarray, unknown: str = "error") -> np.ndarray: ...
@overload
def coco_id_to_contiguous(ids: torch.Tensor, unknown: str = "error") -> torch.Tensor: ...
def coco_id_to_contiguous(ids: Any, unknown: str = "error") -> Any:
    """Map raw COCO category ids (1..90, with gaps) to contiguous mask values 1..80.

    0 (background) stays 0 and 255 (ignore) stays 255. Any other value (an unused id such as 12,
    26, 83, or anything outside [0, 255]) raises ``ValueError`` with ``unknown="error"`` (default),
    or becomes 255 (ignored) with ``unknown="ignore"``.

    Args:
        ids: an int, an integer numpy array or an integer tensor (any shape, any device).
        unknown: ``"error"`` or ``"ignore"``.

    Returns:
        Same kind as the input; arrays/tensors come back as int64.

    Shape:
        - Input: any. Output: same as input.

    Examples:
        >>> import torch
        >>> coco_id_to_contiguous(torch.tensor([[1, 90], [0, 44]])).tolist()
        [[1, 80], [0, 40]]
    """
    return _apply_lut(ids, _ID_LUT, unknown, "COCO category id", "ids")


def contiguous_to_coco_id(values: Any, unknown: str = "error") -> Any:
    """Inverse of [`coco_id_to_contiguous`][]: mask values 0..80 (and 255) to raw category ids.

    Examples:
        >>> contiguous_to_coco_id(80)
        90
    """
    return _apply_lut(values, _INV_LUT, unknown, "contiguous COCO class value", "values")


def _apply_lut(ids: Any, lut: np.ndarray, unknown: str, what: str, name: str = "ids") -> Any:
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
    if isinstance(ids, bool):
        raise TypeError(f"{name} must be an int, numpy array or tensor, got {type(ids).__name__}")
    if isinstance(ids, (int, np.integer)):
        return int(_apply_lut(np.asarray([ids]), lut, unknown, what, name)[0])
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
        x = ids.long()
        in_range = (x >= 0) & (x <= 255)
        t_lut = torch.as_tensor(lut, device=x.device)
        out = t_lut[x.clamp(0, 255)]
        bad = (~in_range) | (out == _INVALID)
        if bool(bad.any()):
            if unknown == "error":
                vals = torch.unique(x[bad])[:5].tolist()
                raise ValueError(f"{what}s {vals} have no class (valid: 0, 255 and the 80 COCO ids)")
            out = torch.where(bad, torch.full_like(out, IGNORE_INDEX), out)
        return out
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {ids.dtype}")
        xa = ids.astype(np.int64)
        outa = lut[np.clip(xa, 0, 255)]
        bada = (xa < 0) | (xa > 255) | (outa == _INVALID)
        if bada.any():
            if unknown == "error":
                vals = np.unique(xa[bada])[:5].tolist()
                raise ValueError(f"{what}s {vals} have no class (valid: 0, 255 and the 80 COCO ids)")
            outa = np.where(bada, IGNORE_INDEX, outa)
        return outa
    raise TypeError(f"{name} must be an int, numpy array or tensor, got {type(ids).__name__}")


_SPLIT_FOLDERS = {"train": ("train2014", "train"), "val": ("val2014", "val")}


class COCOSegmentation(_LabelPNGDataset):
    """MS COCO 2014 dataset for WSSS (80 classes): images, image-level labels, label PNG masks.

    Paper: Lin et al., "Microsoft COCO: Common Objects in Context" (ECCV 2014).

    Names come from, in order: ``split`` given as a list-file path; ``root/ImageSets/<split>.txt``,
    ``root/ImageSets/Segmentation/<split>.txt`` or ``root/<split>.txt``; else every PNG in the mask
    folder (sorted). With coco2voc masks that is exactly the images with at least one annotation
    (82,081 train / 40,137 val, the WSSS splits), because coco2voc skips unannotated images;
    converters that write a PNG for every image (ReCAM) give all 82,783 / 40,504 instead.

    Args:
        root: dataset root (``MSCOCO``).
        split: ``"train"`` or ``"val"`` (folders ``train2014``/``val2014``, or ``train``/``val``), or
            a list-file path (then ``image_dir`` and ``mask_dir`` are needed unless the list's
            basename starts with ``train``/``val``).
        image_dir: image folder (relative to ``root`` or absolute); default
            ``JPEGImages/<folder>`` or ``coco2014/<folder>``.
        mask_dir: mask folder; default ``SegmentationClass/<folder>``.
        labels_file: ``.npy`` dict ``{name: float32[80]}`` (or a mapping); default: from masks.
        saliency_dir: optional folder of greyscale saliency PNGs.
        transform: callable applied to the sample dict.
        return_mask: include ``mask``.
        return_labels: include ``labels``.
        raw_category_ids: masks hold raw COCO ids 1..90 (coco2voc output); remap them to 1..80.
            An id with no class raises ``ValueError`` naming the file.
        image_ext: image extension, default ``.jpg``.
        check_files: check at construction that all listed files exist.

    Shape:
        - ``image``: ``(3, H, W)`` float in [0, 1]; ``labels``: ``(80,)``; ``mask``: ``(H, W)``
          int64 in 0..80 and 255; ``saliency``: ``(1, H, W)``.

    Examples:
        >>> import tempfile, os, numpy as np
        >>> from wsss_blocks.data.io import save_image, save_label_png
        >>> root = tempfile.mkdtemp()
        >>> save_image(os.path.join(root, "JPEGImages/val2014/a.jpg"), np.zeros((8, 8, 3), np.uint8))
        >>> save_label_png(os.path.join(root, "SegmentationClass/val2014/a.png"),
        ...                np.full((8, 8), 90, np.uint8), palette=False)
        >>> ds = COCOSegmentation(root, split="val", raw_category_ids=True)
        >>> s = ds[0]
        >>> int(s["mask"].max()), int(s["labels"].argmax())
        (80, 79)
    """

    num_classes = COCO_NUM_CLASSES
    class_names = COCO_CLASSES

    def __init__(self, root: PathLike, split: str = "train", image_dir: PathLike | None = None,
                 mask_dir: PathLike | None = None, labels_file: PathLike | Mapping[str, Any] | None = None,
                 saliency_dir: PathLike | None = None, transform: Transform | None = None,
                 return_mask: bool = True, *, return_labels: bool = True, raw_category_ids: bool = False,
                 image_ext: str = ".jpg", check_files: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"COCO root folder {str(root)!r} does not exist")
        self.root = root
        self.split = split
        self.raw_category_ids = raw_category_ids
        s = os.fspath(split)
        list_path: Path | None = None
        if s.endswith(".txt") or "/" in s or os.sep in s:
            list_path = Path(s) if Path(s).exists() else _resolve(root, s)
            stem = list_path.stem
            key = "train" if stem.startswith("train") else "val" if stem.startswith("val") else None
        else:
            key = s
        folders = _SPLIT_FOLDERS.get(key, (key,)) if key is not None else ()

        if image_dir is not None:
            idir = _resolve(root, image_dir)
            if not idir.is_dir():
                raise FileNotFoundError(f"image folder {str(idir)!r} does not exist")
        else:
            tried = [root / top / f for f in folders for top in ("JPEGImages", "coco2014")]
            found = next((p for p in tried if p.is_dir()), None)
            if found is None:
                raise FileNotFoundError(f"no image folder for COCO split {s!r}: tried "
                                        + (", ".join(repr(str(p)) for p in tried) or "nothing")
                                        + "; pass image_dir")
            idir = found
        mdir: Path | None = None
        mtried: list[Path] = []
        if mask_dir is not None:
            mdir = _resolve(root, mask_dir)
            if not mdir.is_dir():
                raise FileNotFoundError(f"mask folder {str(mdir)!r} does not exist")
        else:
            mtried = [root / "SegmentationClass" / f for f in folders]
            mdir = next((p for p in mtried if p.is_dir()), None)

        if list_path is not None:
            names, list_desc = read_split_list(list_path), f"split list {str(list_path)!r}"
        else:
            cands = [root / "ImageSets" / f"{s}.txt", root / "ImageSets" / "Segmentation" / f"{s}.txt",
                     root / f"{s}.txt"]
            lp = next((p for p in cands if p.is_file()), None)
            if lp is not None:
                names, list_desc = read_split_list(lp), f"split list {str(lp)!r}"
            elif mdir is not None:
                names = sorted(p.stem for p in mdir.iterdir()
                               if p.suffix.lower() == ".png" and not p.name.startswith("."))
                if not names:
                    raise ValueError(f"mask folder {str(mdir)!r} holds no PNG files")
                list_desc = f"mask folder {str(mdir)!r}"
            else:
                raise FileNotFoundError(f"no list file and no mask folder for COCO split {s!r}: tried "
                                        + ", ".join(repr(str(p)) for p in cands + mtried))
        labels, xml_dir = _load_labels_arg(labels_file, root, self.num_classes)
        if xml_dir is not None:
            raise ValueError(f"labels_file for COCO must be a .npy label dict, got folder {str(xml_dir)!r}")
        sdir = _resolve(root, saliency_dir) if saliency_dir is not None else None
        if sdir is not None and not sdir.is_dir():
            raise FileNotFoundError(f"saliency folder {str(sdir)!r} does not exist")
        super().__init__(names=names, image_dir=idir, image_ext=image_ext, mask_dir=mdir, labels=labels,
                         xml_dir=None, saliency_dir=sdir, transform=transform, return_mask=return_mask,
                         return_labels=return_labels,
                         mask_mapper=self._remap if raw_category_ids else None)
        self._mask_tried = mtried
        self._validate(list_desc, check_files, root)

    @staticmethod
    def _remap(mask: np.ndarray, path: Path) -> np.ndarray:
        try:
            return coco_id_to_contiguous(mask, unknown="error")
        except ValueError as exc:
            raise ValueError(f"mask file {str(path)!r}: {exc}") from exc
