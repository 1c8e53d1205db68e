"""File input/output for VOC-format datasets: the VOC palette, label PNGs, images and atomic writes.

Label PNGs are read with PIL as **indices**, never as RGB (``imageio`` returns RGB for palette PNGs,
a classic pitfall; see ``docs/data.md``). Every write goes through [`atomic_write`][], so an
interrupted run never leaves a half-written file under the final name.

PIL is an optional dependency (the ``train`` extra); it is imported lazily inside the functions.

Examples:
    >>> import numpy as np, tempfile, os
    >>> from wsss_blocks.data.io import save_label_png, load_label_png
    >>> mask = np.array([[0, 1], [15, 255]], dtype=np.uint8)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> save_label_png(path, mask)
    >>> load_label_png(path).tolist()
    [[0, 1], [15, 255]]
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from wsss_blocks._checks import require

__all__ = [
    "voc_palette",
    "atomic_write",
    "DiskFullError",
    "as_disk_full",
    "remove_stale_temporaries",
    "save_label_png",
    "load_label_png",
    "load_image",
    "save_image",
]

PathLike = str | os.PathLike


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map: colour of index ``i`` from the bits of ``i``.

    Bit ``3k`` of the index goes to bit ``7-k`` of red, bit ``3k+1`` to green and bit ``3k+2`` to
    blue, so 0 is black, 1 is (128, 0, 0), 15 (person) is (192, 128, 128) and 255 (void) is
    (224, 224, 192).

    Args:
        num_colors: number of palette entries (256 for a full PNG palette).

    Returns:
        ``np.ndarray`` of shape ``(num_colors, 3)`` and dtype ``uint8``.

    Shape:
        - Output: ``(num_colors, 3)``.

    Examples:
        >>> voc_palette()[[0, 1, 15, 255]].tolist()
        [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    if num_colors < 1 or num_colors > 256:
        raise ValueError(f"num_colors must be in [1, 256], got {num_colors}")
    idx = np.arange(num_colors, dtype=np.int64)
    pal = np.zeros((num_colors, 3), dtype=np.int64)
    for k in range(8):  # 8 bit-triplets of the index; loop over bits, not pixels
        for ch in range(3):
            bit = (idx >> (3 * k + ch)) & 1
            pal[:, ch] |= bit << (7 - k)
    return pal.astype(np.uint8)


class DiskFullError(OSError):
    """A file could not be written because its disk (or the user's quota) is full; the message names the file."""


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# the temporary names of `atomic_write`: ``.<name>.<8 random characters of mkstemp>.tmp``
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means that the disk is full.

    ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail ...] unexpected pos`` with the
    ``OSError`` of the failed write as its context, so the whole chain is searched.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    if isinstance(exc, (OSError, RuntimeError)):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < 2**16
    return False


def _disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free in {str(path.parent)!r}"
    return DiskFullError(errno.ENOSPC, f"could not write {str(path)!r}: the disk is full{free}; free some space "
                                       f"and rerun (finished files are kept)", str(path))


def as_disk_full(exc: BaseException, path: PathLike) -> DiskFullError | None:
    """The `DiskFullError` naming ``path`` when ``exc`` means that the disk is full, else None.

    For writers that cannot use `atomic_write` (appending to a log): ``raise err from exc`` when not None.
    """
    path = Path(path)
    if isinstance(exc, DiskFullError):
        return exc
    return _disk_full_error(path, exc) if _disk_full(exc, path.parent) else None


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, make_parents: bool = True,
                 fsync: bool = True) -> Iterator[IO[Any]]:
    r"""Open a temporary file next to ``path``; on success fsync it and rename it to ``path``.

    The temporary file lives in the same folder (same file system), so the final ``os.replace`` is
    atomic: readers see either the old file or the complete new one, never a partial write. If the
    ``with`` body raises, the temporary file is removed and ``path`` is left untouched. A process killed
    in the middle leaves the temporary file ``.<name>.<random>.tmp`` behind;
    `remove_stale_temporaries` deletes such files.

    Args:
        path: final file name.
        mode: ``"wb"`` (binary) or ``"w"`` (text, UTF-8).
        make_parents: create missing parent folders.
        fsync: flush the data to disk before the rename (durable against power loss); False is
            faster for bulk writes that can be regenerated (the rename stays atomic).

    Yields:
        The open temporary file object.

    Raises:
        DiskFullError: the disk is full (an ``OSError`` whose message names ``path``).

    Examples:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "list.txt")
        >>> with atomic_write(p, "w") as f:
        ...     _ = f.write("2007_000032\n")
        >>> open(p).read()
        '2007_000032\n'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if make_parents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if _disk_full(exc, path.parent):
                raise _disk_full_error(path, exc) from exc
            raise
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} for {str(path)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        if _disk_full(exc, path.parent):
            raise _disk_full_error(path, exc) from exc
        raise
    try:
        # mkstemp creates 0600 files; give the result the usual umask-based permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        f: IO[Any]
        with (os.fdopen(fd, "w", encoding="utf-8") if mode == "w" else os.fdopen(fd, "wb")) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and _disk_full(exc, path.parent):
            raise _disk_full_error(path, exc) from exc
        raise


def remove_stale_temporaries(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that interrupted `atomic_write` calls left in ``folder``; return them.

    Only names of the form ``.<name>.<8 random characters>.tmp`` are touched. Call it when no other
    process writes into ``folder`` (a resuming run does, before its first write).

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".a.png.k3j_x9q2.tmp").write_bytes(b""), (d / "a.png").write_bytes(b"x")
        >>> [p.name for p in remove_stale_temporaries(d)], sorted(p.name for p in d.iterdir())
        (['.a.png.k3j_x9q2.tmp'], ['a.png'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for p in found:
        if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return sorted(removed)


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")


def _pil_format(path: Path) -> str:
    Image = require("PIL.Image", "train", "image files")
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"cannot infer an image format from the file name {str(path)!r} "
                         f"(extension {ext!r}); use .png or .jpg")
    return str(fmt)


def save_label_png(path: PathLike, mask: np.ndarray | torch.Tensor, palette: bool = True, *,
                   fsync: bool = True) -> None:
    """Write a label mask as a PNG, atomically.

    With ``palette=True`` the file is an indexed ("P"-mode) PNG carrying [`voc_palette`][], like
    VOC ``SegmentationClass``; with ``palette=False`` it is a plain greyscale PNG, like
    ``SegmentationClassAug``. Either way the stored pixel values are the class indices.

    Args:
        path: output file (``.png``).
        mask: integer array or tensor of shape H×W with values in ``[0, 255]``.
        palette: write a palette PNG (True) or greyscale (False).
        fsync: passed to [`atomic_write`][].

    Shape:
        - mask: ``(H, W)``.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> save_label_png(p, np.zeros((4, 5), dtype=np.uint8))
        >>> load_label_png(p).shape
        (4, 5)
    """
    Image = require("PIL.Image", "train", "writing label PNGs")
    arr = _to_numpy(mask, "mask")
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape H×W (2-D), got {arr.ndim}-D array of shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise TypeError(f"mask must have an integer dtype, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise ValueError(f"mask values must lie in [0, 255] for a PNG label file, got values in "
                         f"[{int(arr.min())}, {int(arr.max())}]")
    if 0 in arr.shape:
        raise ValueError(f"mask must have a positive size H×W, got shape {arr.shape}")
    arr8 = np.ascontiguousarray(arr.astype(np.uint8))
    h, w = arr8.shape
    if palette:
        img = Image.frombytes("P", (w, h), arr8.tobytes())
        img.putpalette(voc_palette().reshape(-1).tolist())
    else:
        img = Image.frombytes("L", (w, h), arr8.tobytes())
    path = Path(path)
    with atomic_write(path, "wb", fsync=fsync) as f:
        img.save(f, format="PNG")


def _open_image(path: Path, what: str) -> Any:
    """Open and fully decode an image with PIL; errors name the file."""
    Image = require("PIL.Image", "train", f"reading {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        img = Image.open(path)
        img.load()  # force decoding, so truncated files fail here and not later
    except (OSError, SyntaxError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {what} file {str(path)!r}: corrupt or not an image ({exc})") from exc
    return img


def _is_16bit_grey(img: Any) -> bool:
    """A 16-bit greyscale image: PIL mode ``I;16*``, or ``I`` for a PNG (whose samples have at most 16 bits)."""
    return str(img.mode).startswith("I;16") or (img.mode == "I" and getattr(img, "format", None) == "PNG")


def _image_bit_depth(img: Any) -> int:
    """Bits per channel of an opened PIL image (1, 8, 16 or 32); the data check refuses what is not 8 (or 1)."""
    mode = str(img.mode)
    if _is_16bit_grey(img):
        return 16
    if mode in ("I", "F"):
        return 32
    return 1 if mode == "1" else 8


def load_label_png(path: PathLike) -> np.ndarray:
    """Read a label PNG as class indices (never as RGB colours).

    Palette ("P") and greyscale ("L", 16-bit "I;16"/"I") PNGs are accepted; the pixel values are
    returned unchanged.

    Args:
        path: label PNG.

    Returns:
        ``np.ndarray`` of dtype ``int64`` and shape H×W.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, or it is an RGB(A) image (colours, not indices).

    Shape:
        - Output: ``(H, W)``.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "b.png")
        >>> save_label_png(p, np.full((2, 2), 20, dtype=np.uint8), palette=False)
        >>> load_label_png(p).tolist()
        [[20, 20], [20, 20]]
    """
    path = Path(path)
    img = _open_image(path, "label PNG")
    if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        raise ValueError(f"label PNG {str(path)!r} has mode {img.mode!r}; expected an indexed ('P') or "
                         f"greyscale ('L') PNG whose pixel values are class indices, not colours")
    return np.asarray(img).astype(np.int64)


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB ``uint8``.

    Args:
        path: image file (JPEG, PNG, ...). Greyscale and palette images are converted to RGB; 16-bit greyscale
            images are scaled to 8 bits (``round(v / 257)``), never clipped.

    Returns:
        ``np.ndarray`` of dtype ``uint8`` and shape H×W×3.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt or not an image, or a 32-bit integer / floating-point image without a
            0..255 scale (the message names the file).

    Shape:
        - Output: ``(H, W, 3)``.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.png")
        >>> save_image(p, np.zeros((3, 4, 3), dtype=np.uint8))
        >>> load_image(p).shape
        (3, 4, 3)
    """
    path = Path(path)
    img = _open_image(path, "image")
    if _is_16bit_grey(img):
        # PIL's convert("RGB") clips 16-bit values at 255 (a 16-bit photo turns white): scale 0..65535 to 0..255
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"cannot read image file {str(path)!r}: mode {img.mode!r} holds values outside the "
                             f"16-bit range [0, 65535] ({a.min():g}..{a.max():g})")
        grey = np.rint(a / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(f"cannot read image file {str(path)!r}: it is a {kind} image (PIL mode {img.mode!r}) with no "
                         f"standard 0..255 scale; convert it to 8-bit RGB (or 8/16-bit greyscale) first")
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:  # pragma: no cover - PIL rarely fails after load()
        raise ValueError(f"cannot convert image file {str(path)!r} to RGB ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def save_image(path: PathLike, array: np.ndarray | torch.Tensor, quality: int = 95, *,
               fsync: bool = True) -> None:
    """Write an RGB or greyscale ``uint8`` image, atomically; the format follows the extension.

    Args:
        path: output file; ``.jpg``/``.jpeg`` (JPEG with ``quality``), ``.png`` and other PIL formats.
        array: ``uint8`` array or tensor of shape H×W×3 (RGB) or H×W (greyscale).
        quality: JPEG quality (ignored for other formats).
        fsync: passed to [`atomic_write`][].

    Shape:
        - array: ``(H, W, 3)`` or ``(H, W)``.

    Examples:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "d.png")
        >>> save_image(p, np.full((2, 2, 3), 7, dtype=np.uint8))
        >>> int(load_image(p)[0, 0, 1])
        7
    """
    Image = require("PIL.Image", "train", "writing images")
    arr = _to_numpy(array, "array")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"array must have shape H×W×3 or H×W, got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise TypeError(f"array must have dtype uint8, got {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"array must have a positive size H×W, got shape {tuple(arr.shape)}")
    path = Path(path)
    fmt = _pil_format(path)
    img = Image.fromarray(np.ascontiguousarray(arr))
    kwargs: dict[str, Any] = {"quality": int(quality)} if fmt == "JPEG" else {}
    with atomic_write(path, "wb", fsync=fsync) as f:
        img.save(f, format=fmt, **kwargs)
