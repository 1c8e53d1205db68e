"""BASELINE ONLY — a straightforward implementation of the released PAR (AFA/ToCo) and VARM (TSCD) algorithms.

This file exists to be compared against, not to be used. It is written from the released code (AFA
``wetr/PAR.py`` lines 64-91, SCD ``network/VARM.py`` lines 61-90) with the **released code's cost profile**:

* the neighbours are gathered with one-hot 3×3 kernels dilated by d (``conv2d``) on a replicate-padded input,
  one call per dilation, and concatenated into full B×C×48×H×W tensors — for the image once and for the maps
  at **every** iteration;
* the centre image is repeated 48 times to form the differences;
* the per-pixel weights are built as B×1×48×H×W tensors and multiplied with the B×C×48×H×W neighbour stack,
  then summed over the neighbour axis.

The fast implementation in `wsss_blocks.refine` must match these functions to 1e-5 (max abs) on random
inputs (``tests/test_refine.py``) and beat them in time and peak memory (``benchmarks/bench_refine.py``).
References: AFA ``wetr/PAR.py`` L64-91 (= ToCo ``model/PAR.py``), SCD ``network/VARM.py`` L61-90.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["one_hot_kernels", "baseline_neighbours", "baseline_par", "baseline_varm"]

DILATIONS = (1, 2, 4, 8, 12, 24)


def one_hot_kernels(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """8×1×3×3 one-hot kernels selecting TL, T, TR, L, R, BL, B, BR (the centre is skipped)."""
    kernels = torch.zeros(8, 1, 3, 3, dtype=dtype, device=device)
    cells = [c for c in range(9) if c != 4]
    for k, c in enumerate(cells):
        kernels[k, 0, c // 3, c % 3] = 1.0
    return kernels


def baseline_neighbours(x: Tensor, dilations: Sequence[int] = DILATIONS) -> Tensor:
    """B×C×H×W → B×C×(8·len(dilations))×H×W via one dilated one-hot conv per dilation (release cost profile)."""
    b, c, h, w = x.shape
    kernels = one_hot_kernels(x.dtype, x.device)
    per_dilation = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        per_dilation.append(F.conv2d(padded, kernels, dilation=d).reshape(b, c, 8, h, w))
    return torch.cat(per_dilation, dim=2)


def _distances(dilations: Sequence[int]) -> Tensor:
    # float32 as in the release: sqrt(2) is stored in a float32 tensor, then multiplied by d.
    ring = torch.ones(8, dtype=torch.float32)
    ring[[0, 2, 5, 7]] = math.sqrt(2.0)
    return torch.cat([ring * d for d in dilations])


def _appearance(image: Tensor, neigh: Tensor, scale: float | None, temperature: float | None) -> Tensor:
    k = neigh.shape[2]
    centre = image.unsqueeze(2).repeat(1, 1, k, 1, 1)  # repeated per neighbour, as released
    absdiff = torch.abs(neigh - centre)
    std = torch.std(neigh, dim=2, keepdim=True)
    if temperature is not None:
        logits = -(absdiff / (std + 1e-8) / temperature) ** 2
    else:
        assert scale is not None
        logits = -((absdiff / (std + 1e-8)) * scale) ** 2
    return logits.mean(dim=1, keepdim=True)  # B×1×K×H×W


def baseline_par(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DILATIONS, num_iter: int = 10,
                 w1: float = 0.3, w2: float = 0.01) -> Tensor:
    """Released PAR, straightforwardly: B×3×H×W image in [0,1], B×C×h×w maps → B×C×H×W."""
    maps = F.interpolate(maps, size=image01.shape[-2:], mode="bilinear", align_corners=True)
    b, _, h, w = image01.shape
    neigh = baseline_neighbours(image01, dilations)
    logits = _appearance(image01, neigh, None, w1)
    pos = _distances(dilations).to(image01.device).view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    pos_std = torch.std(pos, dim=2, keepdim=True)
    pos_logits = -(pos / (pos_std + 1e-8) / w1) ** 2
    aff = F.softmax(logits, dim=2) + w2 * F.softmax(pos_logits, dim=2)
    for _ in range(num_iter):
        maps = (baseline_neighbours(maps, dilations) * aff).sum(dim=2)
    return maps


def baseline_varm(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DILATIONS, num_iter: int = 10,
                  scale: float = 4.0, w2: float = 0.01) -> Tensor:
    """Released VARM, straightforwardly: B×3×H×W image in [0,1], B×C×h×w maps → B×C×H×W."""
    maps = F.interpolate(maps, size=image01.shape[-2:], mode="bilinear", align_corners=True)
    neigh = baseline_neighbours(image01, dilations)
    # Squared forward differences of every neighbour map (last row / column compared with itself).
    below = torch.cat([neigh[:, :, :, 1:, :], neigh[:, :, :, -1:, :]], dim=3)
    right = torch.cat([neigh[:, :, :, :, 1:], neigh[:, :, :, :, -1:]], dim=4)
    variation = ((neigh - below) ** 2 + (neigh - right) ** 2).mean(dim=1, keepdim=True)
    logits = _appearance(image01, neigh, scale, None)
    aff = F.softmax(logits, dim=2) - w2 * F.softmax(variation, dim=2)
    for _ in range(num_iter):
        maps = (baseline_neighbours(maps, dilations) * aff).sum(dim=2)
    return maps
