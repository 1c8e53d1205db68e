"""The ``pydensecrf`` backend: Krähenbühl's C++ dense CRF through the ``pydensecrf`` module (CPU only).

``pydensecrf`` (the ``crf`` extra installs the ``pydensecrf2`` fork, which builds on Python 3.11+) is
imported lazily, inside the functions, so ``import wsss_blocks`` never needs it. The calls reproduce the
usual WSSS recipe line for line: ``DenseCRF2D(W, H, K)``, ``setUnaryEnergy(U)``,
``addPairwiseGaussian(sxy=pos_xy, compat=pos_w)``, ``addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb,
rgbim=image, compat=bi_w)``, ``inference(iterations)``.

[`pool_map`][] runs many images in a process pool (what ToCo/AFA do with ``joblib``), for datasets.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from wsss_blocks._checks import checks_enabled, require

__all__ = ["pydensecrf_available", "pydensecrf_inference", "pool_map", "NORMALIZATION_NAMES"]

NORMALIZATION_NAMES = {
    "symmetric": "NORMALIZE_SYMMETRIC",
    "after": "NORMALIZE_AFTER",
    "before": "NORMALIZE_BEFORE",
    "none": "NO_NORMALIZATION",
}
"""Our normalisation names -> pydensecrf ``NormalizationType`` attribute names."""


def pydensecrf_available() -> bool:
    """True when the ``pydensecrf`` module can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("pydensecrf") is not None
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        return False


def _dcrf() -> Any:
    require("pydensecrf", "crf", "the pydensecrf dense-CRF backend")
    return require("pydensecrf.densecrf", "crf", "the pydensecrf dense-CRF backend")


def pydensecrf_inference(image: np.ndarray, unary: np.ndarray, *, iterations: int = 10, pos_w: float = 3.0,
                         pos_xy: float = 3.0, bi_w: float = 4.0, bi_xy: float = 64.0, bi_rgb: float = 5.0,
                         normalization: str = "symmetric") -> np.ndarray:
    """Mean-field marginals of one image with pydensecrf.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        unary: ``(K, H, W)`` or ``(K, H*W)`` float32 unary energies (``-log p``).
        iterations: mean-field iterations.
        pos_w: Potts weight of the Gaussian (position) kernel; 0 leaves the kernel out.
        pos_xy: its standard deviation in pixels.
        bi_w: Potts weight of the bilateral kernel; 0 leaves the kernel out.
        bi_xy: bilateral position standard deviation in pixels.
        bi_rgb: bilateral colour standard deviation (0..255 units).
        normalization: ``"symmetric"`` (pydensecrf's default), ``"after"``, ``"before"`` or ``"none"``.

    Returns:
        ``(K, H, W)`` float32 marginals.
    """
    dcrf = _dcrf()
    image, unary = _check_arrays(image, unary)
    h, w = image.shape[:2]
    k = unary.shape[0]
    ntype = getattr(dcrf, NORMALIZATION_NAMES[normalization])
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, h * w), dtype=np.float32))
    if pos_w != 0:
        d.addPairwiseGaussian(sxy=float(pos_xy), compat=float(pos_w), normalization=ntype)
    if bi_w != 0:
        d.addPairwiseBilateral(sxy=float(bi_xy), srgb=float(bi_rgb), rgbim=np.ascontiguousarray(image),
                               compat=float(bi_w), normalization=ntype)
    q = d.inference(int(iterations))
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def _check_arrays(image: object, unary: object) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8 and ``unary`` (K, H, W) / (K, H·W) finite floats; errors name the argument."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3) uint8, got {type(image).__name__}")
    if not isinstance(unary, np.ndarray):
        raise TypeError(f"unary must be a numpy array (K, H, W) float32, got {type(unary).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must have shape (H, W, 3) with H, W >= 1, got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (0..255, as the released sigmas assume), got {image.dtype}")
    h, w = image.shape[:2]
    if unary.dtype.kind != "f":
        raise TypeError(f"unary must hold floating-point energies, got dtype {unary.dtype}")
    if unary.ndim not in (2, 3) or unary.shape[0] < 1 or unary.shape[1:] not in ((h, w), (h * w,)):
        raise ValueError(f"unary must have shape (K, {h}, {w}) or (K, {h * w}) to match image {image.shape}, got "
                         f"{unary.shape}")
    if checks_enabled() and not bool(np.isfinite(unary).all()):
        raise ValueError(f"unary contains non-finite values ({int(np.isnan(unary).sum())} NaN, "
                         f"{int(np.isinf(unary).sum())} Inf)")
    return image, unary


def _pool_job(args: tuple[np.ndarray, np.ndarray, Mapping[str, Any], bool]) -> np.ndarray:
    image, unary, params, labels_only = args
    q = pydensecrf_inference(image, unary, **params)
    return q.argmax(0).astype(np.uint8 if q.shape[0] <= 256 else np.int64) if labels_only else q


def pool_map(jobs: Iterable[tuple[np.ndarray, np.ndarray]], params: Mapping[str, Any] | None = None, *,
             processes: int | None = None, chunksize: int = 1, labels_only: bool = False,
             start_method: str | None = None) -> Iterator[np.ndarray]:
    """Run pydensecrf over many ``(image, unary)`` pairs in a process pool, yielding results in order.

    Args:
        jobs: iterable of ``(image (H, W, 3) uint8, unary (K, H, W) float32)`` pairs; it is consumed
            lazily, so a dataset can stream through.
        params: keyword arguments of [`pydensecrf_inference`][] (``iterations``, ``pos_w``, ...).
        processes: worker processes; default ``max(1, int(0.8 * os.cpu_count()))`` as in ToCo's
            ``joblib`` call. ``processes=0`` runs in this process (no pool).
        chunksize: jobs handed to a worker at a time.
        labels_only: yield the argmax label map (uint8 for K <= 256) instead of the ``(K, H, W)``
            marginals, which keeps the inter-process traffic small.
        start_method: multiprocessing start method (default: the platform's).

    Yields:
        ``(K, H, W)`` float32 marginals, or ``(H, W)`` label maps with ``labels_only``.
    """
    _dcrf()  # fail early, in the parent, when pydensecrf is missing
    p = dict(params or {})
    stream = ((img, un, p, labels_only) for img, un in jobs)
    n = max(1, int(0.8 * (os.cpu_count() or 1))) if processes is None else int(processes)
    if n <= 0:
        for job in stream:
            yield _pool_job(job)
        return
    ctx = mp.get_context(start_method) if start_method else mp.get_context()
    with ctx.Pool(n) as pool:
        yield from pool.imap(_pool_job, stream, chunksize=chunksize)
