"""Network-input normalisation of images in [0, 1]: ImageNet statistics, caffe's BGR mean, or a given pair.

Examples:
    >>> import torch
    >>> normalize_images(torch.full((1, 3, 1, 1), 0.5), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).flatten().tolist()
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import torch
from torch import Tensor

from wsss_blocks.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CAFFE_MEAN_BGR", "Normalization", "NormalizationSettings", "data_normalization", "normalize_images"]

CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
"""The deeplab-pytorch / caffe mean in BGR order, 0..255 scale."""

RGB: TypeAlias = tuple[float, float, float]
Normalization: TypeAlias = str | tuple[RGB, RGB]
"""``"imagenet"``, ``"caffe"`` or an explicit ``(mean, std)`` pair of RGB triples in [0, 1] units."""


class NormalizationSettings(Protocol):
    """What `data_normalization` reads (the trainer's ``data`` config section has these fields)."""

    @property
    def normalize(self) -> str:
        """``"imagenet"`` or ``"caffe"``."""

    @property
    def mean(self) -> tuple[float, ...] | None:
        """RGB mean in [0, 1] replacing ImageNet's, or None."""

    @property
    def std(self) -> tuple[float, ...] | None:
        """RGB std replacing ImageNet's, or None."""


def normalize_images(image01: Tensor, mode: Normalization = "imagenet") -> Tensor:
    """Network input from images in [0, 1].

    ``"imagenet"`` subtracts the ImageNet mean and divides by its std (RGB); ``"caffe"`` gives BGR·255 − mean
    (deeplab-pytorch's caffe-converted weights); a ``(mean, std)`` pair of RGB triples in [0, 1] units
    normalises with those statistics (e.g. L2G's COCO statistics).

    Args:
        image01: B×3×H×W images in [0, 1].
        mode: the normalisation.

    Returns:
        B×3×H×W tensor of the same dtype and device.

    Shape:
        - image01: ``(B, 3, H, W)``; output the same.

    Examples:
        >>> [round(v, 3) for v in normalize_images(torch.zeros(1, 3, 1, 1), "caffe").flatten().tolist()]
        [-104.008, -116.669, -122.675]
        >>> normalize_images(torch.full((1, 3, 1, 1), 0.5), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).flatten().tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(mode, tuple):
        if len(mode) != 2 or len(mode[0]) != 3 or len(mode[1]) != 3:
            raise ValueError(f"normalize as (mean, std) needs two RGB triples, got {mode!r}")
        if min(mode[1]) <= 0:
            raise ValueError(f"normalize std must be positive, got {mode[1]!r}")
        mean = torch.tensor(mode[0], dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        std = torch.tensor(mode[1], dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        return (image01 - mean) / std
    if mode == "imagenet":
        return normalize_images(image01, (IMAGENET_MEAN, IMAGENET_STD))
    if mode == "caffe":
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        return image01.flip(1) * 255.0 - mean
    raise ValueError(f"normalize must be 'imagenet', 'caffe' or a (mean, std) pair, got {mode!r}")


def _rgb(values: tuple[float, ...], name: str) -> RGB:
    if len(values) != 3:
        raise ValueError(f"{name} must hold 3 values (RGB), got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def data_normalization(data: NormalizationSettings) -> Normalization:
    """The input normalisation of a data config: ``data.normalize``, or the ``(mean, std)`` pair it sets.

    ``data.mean`` / ``data.std`` replace the ImageNet statistics and need ``normalize: imagenet``; one of them
    alone keeps ImageNet's value for the other.

    Examples:
        >>> from types import SimpleNamespace
        >>> data_normalization(SimpleNamespace(normalize="caffe", mean=None, std=None))
        'caffe'
        >>> data_normalization(SimpleNamespace(normalize="imagenet", mean=None, std=(0.5, 0.5, 0.5)))[1]
        (0.5, 0.5, 0.5)
    """
    if data.mean is None and data.std is None:
        return str(data.normalize)
    if data.normalize != "imagenet":
        raise ValueError(f"data.mean / data.std replace the ImageNet statistics and need data.normalize: imagenet, "
                         f"got {data.normalize!r}")
    mean = _rgb(tuple(data.mean) if data.mean is not None else IMAGENET_MEAN, "data.mean")
    std = _rgb(tuple(data.std) if data.std is not None else IMAGENET_STD, "data.std")
    if min(std) <= 0:
        raise ValueError(f"data.std must be positive, got {list(std)}")
    return (mean, std)
