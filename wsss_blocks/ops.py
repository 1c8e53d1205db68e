"""Generic tensor operations used by the blocks: RoIAlign in pure PyTorch and boxes from a validity mask.

Boxes are ``(x1, y1, x2, y2)`` in pixels with the end exclusive (a box of width ``x2 - x1``); the batch form of
[`roi_align`][] prepends the image index, as ``torchvision.ops.roi_align`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_finite, check_pair, check_tensor, checks_enabled, shape_str

__all__ = ["roi_align", "boxes_from_mask"]


def _interp_matrix(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int,
                   max_grid: int) -> Tensor:
    """Averaged bilinear weights along one axis: R×pooled×size.

    Row ``p`` of roi ``r`` holds the weights with which input positions 0..size-1 contribute to output
    bin ``p`` after averaging the ``grid[r]`` samples of that bin (torchvision's sample positions and
    border rules). Because both the sample grid and the bilinear kernel are separable, the 2-D RoIAlign
    output is ``Ay · X · Axᵀ``.
    """
    dtype = start.dtype
    p = torch.arange(pooled, device=start.device, dtype=dtype).view(1, pooled, 1)
    i = torch.arange(max_grid, device=start.device, dtype=dtype).view(1, 1, max_grid)
    g = grid.to(dtype).clamp(min=1).view(-1, 1, 1)
    b = bin_size.view(-1, 1, 1)
    # same operation order as torchvision's kernel: start + p*bin + (i + .5)*bin/grid
    y = start.view(-1, 1, 1) + p * b + (i + 0.5) * b / g  # R×pooled×G
    valid = (i < grid.view(-1, 1, 1)) & (y >= -1.0) & (y <= size)
    y = y.clamp(min=0)
    low = y.floor()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    y = torch.where(at_end, low, y)
    high = torch.where(at_end, low, low + 1)
    ly = y - low
    hy = 1.0 - ly
    pos = torch.arange(size, device=start.device, dtype=dtype)
    w = (hy.unsqueeze(-1) * (pos == low.unsqueeze(-1)).to(dtype)
         + ly.unsqueeze(-1) * (pos == high.unsqueeze(-1)).to(dtype))  # R×pooled×G×size
    w = w * valid.unsqueeze(-1).to(dtype)
    return w.sum(dim=2) / g


def roi_align(features: Tensor, boxes: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (He et al., Mask R-CNN) in pure PyTorch, matching ``torchvision.ops.roi_align``.

    Same sample positions, border handling and averaging as torchvision's kernel: bin ``(i, j)`` of a
    box averages ``g_h × g_w`` bilinear samples at ``start + i·bin + (k + ½)·bin/g``, where
    ``start = x1·spatial_scale`` (``aligned=False``, the legacy mode used by L2G) or
    ``x1·spatial_scale − ½`` (``aligned=True``), samples further than one cell outside the map are 0, and
    ``g = sampling_ratio`` or, when ``sampling_ratio <= 0``, ``ceil(box_size / output_size)`` per box.
    The computation is vectorised over boxes as two small matrix products (the sampling grid and the
    bilinear kernel are separable), so it is differentiable in the features (not in the boxes) and its
    backward is deterministic.

    Args:
        features: feature maps of a batch of ``B`` images.
        boxes: one row ``(batch_index, x1, y1, x2, y2)`` per box, in input-image coordinates (the
            ``Tensor[K, 5]`` form of ``torchvision.ops.roi_align``).
        output_size: ``(h, w)`` of each pooled crop (or one int).
        spatial_scale: feature-map size / image size, e.g. ``1/8`` for a stride-8 network.
        sampling_ratio: samples per bin along each axis; ``<= 0`` picks ``ceil(roi_size / output_size)``
            per box like torchvision (this needs the largest grid on the host, one device sync).
        aligned: ``True`` shifts boxes by half a cell (pixel-exact, Detectron2); ``False`` is the legacy
            behaviour.

    Shape:
        - features: B×K×H×W
        - boxes: R×5
        - output: R×K×h×w

    Examples:
        >>> import torch
        >>> from wsss_blocks.ops import roi_align
        >>> feats = torch.arange(16.0).view(1, 1, 4, 4)
        >>> roi_align(feats, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]]), 2, aligned=True)[0, 0]
        tensor([[0., 1.],
                [4., 5.]])
    """
    check_tensor(features, "features", 4, layout="B×K×H×W", floating=True)
    check_tensor(boxes, "boxes", 2, layout="R×5")
    if boxes.shape[1] != 5:
        raise ValueError(f"boxes must have shape R×5 (batch_index, x1, y1, x2, y2), got {shape_str(boxes)}")
    out_h, out_w = check_pair(output_size, "output_size")
    check_finite(features, "features")
    _check_roi_boxes(boxes, features.shape[0])
    return _roi_align(features, boxes, out_h, out_w, spatial_scale, sampling_ratio, aligned)


def _check_roi_boxes(boxes: Tensor, batch: int, name: str = "boxes") -> None:
    """Check the R×5 RoIAlign rows of a batch of ``batch`` images (a value check, see `wsss_blocks.set_checks`).

    The batch index (column 0) must be an integer in ``[0, batch)``: a negative index would silently crop another
    image, a fractional one would be truncated. The coordinates must be finite.
    """
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must be a real tensor of (batch_index, x1, y1, x2, y2) rows, got dtype {boxes.dtype}")
    if not checks_enabled() or boxes.numel() == 0:
        return
    check_finite(boxes, name)
    idx = boxes[:, 0]
    bad = (idx < 0) | (idx >= batch) | (idx != idx.round() if boxes.is_floating_point() else idx != idx)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}[:, 0] holds the batch index of each row, an integer in [0, {batch - 1}] for a "
                         f"batch of {batch} images; row {row} has {float(idx[row]):g}")


def _roi_align(features: Tensor, boxes: Tensor, out_h: int, out_w: int, spatial_scale: float,
               sampling_ratio: int, aligned: bool) -> Tensor:
    H, W = features.shape[-2:]
    # coordinates in float32 (like torchvision) or float64 when the features are float64
    cdtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    r = boxes.detach()
    offset = 0.5 if aligned else 0.0
    # torchvision computes ``x * spatial_scale - offset`` in double, then stores it as the input dtype
    start_x = (r[:, 1].double() * spatial_scale - offset).to(cdtype)
    start_y = (r[:, 2].double() * spatial_scale - offset).to(cdtype)
    end_x = (r[:, 3].double() * spatial_scale - offset).to(cdtype)
    end_y = (r[:, 4].double() * spatial_scale - offset).to(cdtype)
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:  # the legacy mode forces malformed rois to be 1×1
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_w = roi_w / out_w
    bin_h = roi_h / out_h
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.long)
        max_gh = max_gw = sampling_ratio
    else:
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
        max_gh = max(int(grid_h.max()), 1) if grid_h.numel() else 1
        max_gw = max(int(grid_w.max()), 1) if grid_w.numel() else 1
    ay = _interp_matrix(start_y, bin_h, grid_h, out_h, H, max_gh)  # R×h×H
    ax = _interp_matrix(start_x, bin_w, grid_w, out_w, W, max_gw)  # R×w×W
    wdtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    ay = ay.to(wdtype)
    ax = ax.to(wdtype)
    batch_idx = r[:, 0].long()
    x = features[batch_idx].to(wdtype)  # R×K×H×W (plain indexing: index_select is slow on CPU)
    out = torch.matmul(torch.matmul(ay.unsqueeze(1), x), ax.transpose(1, 2).unsqueeze(1))
    return out.to(features.dtype)




def boxes_from_mask(mask: Tensor) -> Tensor:
    """The bounding box ``(x1, y1, x2, y2)`` (end exclusive) of the true pixels of each mask.

    TSCD/AFA use it for the unpadded region of each training crop (the release's ``img_box``, stored there as
    ``(row0, row1, col0, col1)``). An all-false mask gives the whole image ``(0, 0, W, H)``.

    Shape:
        - mask: B×H×W bool (or {0, 1})
        - output: B×4 int64

    Examples:
        >>> m = torch.zeros(1, 4, 5, dtype=torch.bool); m[:, 1:3, 0:4] = True
        >>> boxes_from_mask(m).tolist()
        [[0, 1, 4, 3]]
    """
    check_tensor(mask, "mask", 3, layout="B×H×W")
    if mask.dtype != torch.bool:
        check_finite(mask, "mask")
        if checks_enabled() and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            bad = mask[(mask != 0) & (mask != 1)][0]
            raise ValueError(f"mask must be bool or hold only 0 and 1, got value {float(bad):g}")
    rows = mask.bool().any(dim=2).to(torch.int8)
    cols = mask.bool().any(dim=1).to(torch.int8)
    h, w = mask.shape[-2:]
    y1 = rows.argmax(dim=1)
    y2 = h - rows.flip(1).argmax(dim=1)
    x1 = cols.argmax(dim=1)
    x2 = w - cols.flip(1).argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1)
