"""Pictures for WSSS: palette colouring of masks, CAM heat-map overlays, image grids and training curves.

Everything works on tensors/arrays and returns ``uint8`` H×W×3 arrays; writing files uses PIL (via
[`wsss_blocks.data.save_image`][wsss_blocks.data.io.save_image]) and plotting uses matplotlib with the ``Agg`` backend.
Both are imported lazily, so ``import wsss_blocks`` never needs them.

Examples:
    >>> import torch
    >>> colorize_mask(torch.tensor([[0, 1], [15, 255]])).shape
    (2, 2, 3)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int, check_labels, check_masks, check_tensor, checks_enabled, require, shape_str

__all__ = ["colorize_mask", "heatmap", "cam_overlay", "image_grid", "save_cam_overlays", "plot_curves",
           "to_uint8_image"]


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _finite(a: np.ndarray, name: str) -> None:
    """NaN/Inf would become arbitrary colours (a value check)."""
    if checks_enabled() and a.dtype.kind in "fc" and not bool(np.isfinite(a).all()):
        raise ValueError(f"{name} contains non-finite values ({int(np.isnan(a).sum())} NaN, "
                         f"{int(np.isinf(a).sum())} Inf)")


def to_uint8_image(image01: Tensor | np.ndarray) -> np.ndarray:
    """A 3×H×W (or H×W×3) float image in [0, 1] -> H×W×3 ``uint8``.

    Examples:
        >>> to_uint8_image(torch.ones(3, 2, 2))[0, 0].tolist()
        [255, 255, 255]
    """
    a = _np(image01).astype(np.float32)
    if a.ndim != 3:
        raise ValueError(f"image01 must be 3×H×W or H×W×3, got shape {a.shape}")
    _finite(a, "image01")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_mask(mask: Tensor | np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class-index mask (H×W, values 0..255) -> H×W×3 ``uint8`` colours (VOC palette by default).

    Shape:
        - mask: H×W integer
        - output: H×W×3 uint8

    Examples:
        >>> colorize_mask(np.array([[1]]))[0, 0].tolist()
        [128, 0, 0]
    """
    from .data.io import voc_palette

    m = _np(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {m.shape}")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError(f"mask values must lie in [0, 255], got [{m.min()}, {m.max()}]")
    pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    return pal[m.astype(np.int64)]


def heatmap(cam: Tensor | np.ndarray) -> np.ndarray:
    """A H×W map in [0, 1] -> H×W×3 ``uint8`` "jet"-like colours (blue = 0, red = 1), no matplotlib needed.

    Examples:
        >>> heatmap(np.array([[0.0, 1.0]]))[0].tolist()
        [[0, 0, 128], [128, 0, 0]]
    """
    v = _np(cam).astype(np.float32)
    if v.ndim != 2:
        raise ValueError(f"cam must be H×W, got shape {v.shape}")
    _finite(v, "cam")
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], -1) * 255.0 + 0.5).astype(np.uint8)


def cam_overlay(image01: Tensor | np.ndarray, cam: Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a CAM heat map (H×W in [0, 1], resized to the image if needed) over an image in [0, 1].

    Shape:
        - image01: 3×H×W float in [0, 1]; cam: h×w in [0, 1]
        - output: H×W×3 uint8

    Examples:
        >>> cam_overlay(torch.zeros(3, 4, 4), torch.ones(2, 2)).shape
        (4, 4, 3)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = to_uint8_image(image01)
    c = torch.as_tensor(_np(cam), dtype=torch.float32)
    if c.ndim != 2:
        raise ValueError(f"cam must be h×w, got shape {tuple(c.shape)}")
    if tuple(c.shape) != img.shape[:2]:
        c = torch.nn.functional.interpolate(c[None, None], size=img.shape[:2], mode="bilinear",
                                            align_corners=False)[0, 0]
    hm = heatmap(c).astype(np.float32)
    return (img.astype(np.float32) * (1.0 - alpha) + hm * alpha + 0.5).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile H×W×3 ``uint8`` tiles into a grid (rows may differ in length; tiles are top-left aligned).

    Examples:
        >>> image_grid([[np.zeros((2, 2, 3), np.uint8)] * 2]).shape
        (6, 10, 3)
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("image_grid needs at least one tile")
    th = max(t.shape[0] for r in rows for t in r)
    tw = max(t.shape[1] for r in rows for t in r)
    ncol = max(len(r) for r in rows)
    out = np.full((pad + len(rows) * (th + pad), pad + ncol * (tw + pad), 3), fill, dtype=np.uint8)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            y, x = pad + i * (th + pad), pad + j * (tw + pad)
            out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def save_cam_overlays(path: str | os.PathLike, images01: Tensor, cams: Tensor, labels: Tensor,
                      masks: Tensor | None = None, max_classes: int = 3) -> Path:
    """Write one PNG: per sample a row ``image | CAM overlay of each present class ... | mask``.

    Args:
        path: output PNG (written atomically).
        images01: B×3×H×W in [0, 1].
        cams: B×C×h×w CAMs normalised to [0, 1].
        labels: B×C multi-hot labels (which classes to draw).
        masks: optional B×H×W masks (ground truth or pseudo) drawn in the palette: values 0..C and 255.
        max_classes: at most this many class overlays per row.

    Raises:
        ValueError: shapes that do not agree (batch, class count, mask size), labels outside {0, 1}, mask
            values outside [0, C] ∪ {255}, or NaN/Inf in the images or CAMs.
    """
    from .data.io import save_image

    check_tensor(images01, "images01", 4, layout="B×3×H×W", floating=True)
    if images01.shape[1] != 3:
        raise ValueError(f"images01 must have 3 (RGB) channels, got shape {shape_str(images01)}")
    check_tensor(cams, "cams", 4, layout="B×C×h×w", floating=True)
    B, C = cams.shape[:2]
    if images01.shape[0] != B:
        raise ValueError(f"images01 and cams must have the same batch size, got {shape_str(images01)} and "
                         f"{shape_str(cams)}")
    if B == 0:
        raise ValueError(f"images01 and cams hold no sample (shapes {shape_str(images01)} and {shape_str(cams)}); "
                         f"there is nothing to draw")
    check_labels(labels, "labels", batch=B, num_classes=C)
    _finite(_np(images01), "images01")
    _finite(_np(cams), "cams")
    if masks is not None:
        check_tensor(masks, "masks", 3, layout="B×H×W")
        if tuple(masks.shape) != (B, *images01.shape[-2:]):
            raise ValueError(f"masks must have shape {(B, *images01.shape[-2:])} to match images01 "
                             f"{shape_str(images01)}, got {shape_str(masks)}")
        check_masks(masks, "masks", C + 1, 255)  # 0 background, c + 1 class c, 255 ignore
    check_int(max_classes, "max_classes", minimum=0)
    rows = []
    for b in range(images01.shape[0]):
        row = [to_uint8_image(images01[b])]
        present = torch.nonzero(labels[b] > 0).flatten().tolist()[:max_classes]
        for c in present:
            row.append(cam_overlay(images01[b], cams[b, c]))
        if masks is not None:
            row.append(colorize_mask(masks[b]))
        rows.append(row)
    path = Path(path)
    save_image(path, image_grid(rows), fsync=False)
    return path


def plot_curves(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path | None:
    """Plot every ``loss*`` series and every ``*miou`` value of a JSONL metric log into one PNG.

    Records are dicts with ``step`` and numeric entries (as written by the trainer); records with a
    ``phase`` get one curve per phase. Returns the PNG path, or None if the log holds nothing to plot.
    """
    log_path, png_path = Path(log_path), Path(png_path)
    if not log_path.is_file():
        return None
    recs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    losses: dict[str, list[tuple[float, float]]] = {}
    mious: dict[str, list[tuple[float, float]]] = {}
    for r in recs:
        step = r.get("step")
        if not isinstance(step, (int, float)):
            continue
        tag = r.get("phase") or r.get("stage") or ""
        for k, v in r.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            key = f"{tag}/{k}" if tag else k
            if k.startswith("loss"):
                losses.setdefault(key, []).append((step, float(v)))
            elif k.endswith("miou"):
                mious.setdefault(key, []).append((step, float(v)))
    if not losses and not mious:
        return None
    matplotlib = require("matplotlib", "train", "training plots")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if mious else 1, figsize=(11 if mious else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for k, pts in losses.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=k, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(y > 0 for pts in losses.values() for _, y in pts) and losses else "linear")
    if losses:
        ax.legend(fontsize=7)
    if mious:
        ax2 = axes[0, 1]
        for k, pts in mious.items():
            xs, ys = zip(*pts)
            ax2.plot(xs, [100 * y if y <= 1 else y for y in ys], marker="o", label=k)
        ax2.set_xlabel("step")
        ax2.set_ylabel("mIoU (%)")
        ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
