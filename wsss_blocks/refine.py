"""Local pixel refinement of soft class maps: AFA's PAR and TSCD's VARM, and the reliable pseudo labels built on them.

Both refiners propagate a soft K-channel map over a fixed set of 48 dilated neighbours (8 directions ×
dilations (1, 2, 4, 8, 12, 24), centre excluded, replicate padding) for 10 iterations of full replacement
``P_i <- sum_j a_ij P_j``. The per-pixel neighbour weights ``a_ij`` depend only on the guide image (RGB in
[0, 1]), so they are computed **once per image** (from the image's own 3×48×H×W neighbour stack, one image at a
time) and stored as one sparse matrix with 48 entries per row; each iteration is then a single sparse-dense
product with the channels-last, replicate-padded maps. The B×C×48×H×W neighbour tensor of the released code
is never built and nothing is repeated per neighbour or per class.

* :class:`PixelAdaptiveRefine` — PAR of AFA (Ru et al., CVPR 2022) and ToCo (Ru et al., CVPR 2023):
  ``a = softmax(-mean_c(|dI|/sigma/w1)^2) + w2 * softmax(-(rho/sigma_rho/w1)^2)``.
* :class:`VariationAwareRefine` — VARM of TSCD (Xu et al., AAAI 2023): sharper colour kernel (x4), no
  position prior, minus ``0.01 * softmax(image variation at the neighbour)``.
* :func:`reliable_pseudo_labels` — the AFA/TSCD high/low background-threshold labels with an ignore band.

Spec: ``spec_scd.md`` §2 (released code: AFA ``wetr/PAR.py``, ToCo ``model/PAR.py``, SCD ``network/VARM.py``,
SCD ``utils/camutils.py`` ``refine_cams_with_bkg_v2``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_finite, check_labels, check_range, check_same_batch, check_tensor, shape_str

__all__ = [
    "DEFAULT_DILATIONS",
    "neighbour_offsets",
    "dilated_neighbours",
    "refine_affinity",
    "propagate",
    "pixel_adaptive_refine",
    "variation_aware_refine",
    "DilatedNeighbourRefine",
    "PixelAdaptiveRefine",
    "VariationAwareRefine",
    "reliable_pseudo_labels",
]

#: Dilations of the released PAR/VARM (AFA ``scripts/dist_train_voc.py``, SCD ``scripts/dist_train_voc.py`` L241).
DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)

# Position of each of the 8 neighbours inside the released one-hot 3×3 kernels: TL, T, TR, L, R, BL, B, BR.
_RING: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# --------------------------------------------------------------------------- validation helpers
def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
        raise TypeError(f"dilations must be a sequence of positive ints, got {type(dilations).__name__}")
    dil = tuple(dilations)
    if len(dil) == 0:
        raise ValueError("dilations must be a non-empty sequence of positive ints, got an empty sequence")
    for d in dil:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"dilations must hold positive ints, got {d!r} in {dil}")
    return dil


def _check_num_iter(num_iter: int) -> int:
    if isinstance(num_iter, bool) or not isinstance(num_iter, int):
        raise TypeError(f"num_iter must be an int >= 0, got {type(num_iter).__name__}")
    if num_iter < 0:
        raise ValueError(f"num_iter must be >= 0, got {num_iter}")
    return num_iter


def _check_number(value: float, name: str, *, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if strict and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not strict and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _check_image01(image01: Tensor) -> None:
    check_tensor(image01, "image01", 4, layout="B×3×H×W", floating=True)
    check_range(image01.detach(), "image01", 0.0, 1.0,
                hint="refiners take raw RGB in [0, 1]; denormalise the network input first "
                     "(e.g. x * std + mean with ImageNet statistics, then / 255)")


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    # Half-precision inputs are refined in float32 (the spec's "refinement in fp32 under AMP").
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --------------------------------------------------------------------------- the dilated-neighbour engine
def neighbour_offsets(dilations: Sequence[int] = DEFAULT_DILATIONS) -> list[tuple[int, int]]:
    """Row/column offsets of the dilated neighbours, in the released order.

    For each dilation d: TL, T, TR, L, R, BL, B, BR at distance d (the centre is never a neighbour), so
    neighbour ``k`` of pixel (i, j) is pixel ``(i + dy_k, j + dx_k)`` clamped to the image (replicate edge).

    Args:
        dilations: positive ints.

    Returns:
        ``8 * len(dilations)`` pairs ``(dy, dx)``.

    Examples:
        >>> neighbour_offsets((1,))
        [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    """
    dil = _check_dilations(dilations)
    return [(dy * d, dx * d) for d in dil for dy, dx in _RING]


def _shifted_views(padded: Tensor, pad: int, offsets: Sequence[tuple[int, int]], h: int, w: int
                   ) -> Iterator[Tensor]:
    """Views ``x[..., i + dy, j + dx]`` (edge-replicated) of a tensor padded by ``pad``, one per offset."""
    for dy, dx in offsets:
        yield padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def dilated_neighbours(x: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS) -> Tensor:
    """Stack the dilated neighbours of every pixel (replicate edge), as the released ``get_dilated_neighbors``.

    This materialises a K-times larger tensor; it is provided for inspection and tests. The refiners never
    call it.

    Args:
        x: maps to gather from.
        dilations: positive ints; K = 8 × len(dilations).

    Shape:
        - x: B×C×H×W
        - output: B×C×K×H×W, neighbour order of :func:`neighbour_offsets`

    Examples:
        >>> x = torch.arange(9.0).view(1, 1, 3, 3)
        >>> dilated_neighbours(x, (1,))[0, 0, :, 1, 1].tolist()  # the 8 neighbours of the centre pixel
        [0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]
    """
    check_tensor(x, "x", 4, layout="B×C×H×W")
    offsets = neighbour_offsets(dilations)
    h, w = x.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    return torch.stack(list(_shifted_views(padded, pad, offsets, h, w)), dim=2)


def _position_softmax(offsets: Sequence[tuple[int, int]], temperature: float, eps: float,
                      dtype: torch.dtype, device: torch.device) -> Tensor:
    """softmax_k(-(rho_k / (std(rho) + eps) / temperature)^2), rho = d (axial) or sqrt(2)·d (diagonal)."""
    diag = torch.tensor([1.0 if dy and dx else 0.0 for dy, dx in offsets], dtype=torch.bool)
    d = torch.tensor([float(max(abs(dy), abs(dx))) for dy, dx in offsets], dtype=torch.float32)
    rho = torch.where(diag, d * torch.tensor(math.sqrt(2.0), dtype=torch.float32), d)
    rho = rho.to(dtype)
    std = rho.std()
    logits = -(rho / (std + eps) / temperature) ** 2
    return torch.softmax(logits, dim=0).to(device)


def refine_affinity(
    image01: Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    *,
    appearance_temperature: float | None = 0.3,
    appearance_scale: float | None = None,
    pos_weight: float = 0.01,
    pos_temperature: float = 0.3,
    variation_weight: float = 0.0,
    clamp_negative: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """The per-pixel weights of the 8·len(dilations) neighbours, shared by PAR and VARM.

    ``a_k = softmax_k(-mean_c(z_k)^2) + pos_weight·softmax_k(-(rho_k/(sigma_rho+eps)/pos_temperature)^2)
    - variation_weight·softmax_k(g_k)`` with ``z_k = |I(j_k) - I(i)| / (sigma_i + eps) / appearance_temperature``
    (PAR) or ``... * appearance_scale`` (VARM). ``sigma_i`` is the unbiased std of the K neighbour values of
    each channel (centre excluded); ``rho_k`` is the neighbour's distance (d or sqrt(2)·d); ``g_k`` is the
    squared forward difference of the image at the neighbour, taken on the stacked neighbour maps exactly as
    SCD ``network/VARM.py`` L67-70 does (so it is 0 on the last row/column of the output grid). Each term is
    computed once per image from that image's C×K×H×W neighbour stack (one image at a time).

    Args:
        image01: guide image, RGB in [0, 1].
        dilations: positive ints; K = 8 × len(dilations).
        appearance_temperature: divides ``|dI|/sigma`` (PAR's ``w1`` = 0.3). Give either this or
            ``appearance_scale``.
        appearance_scale: multiplies ``|dI|/sigma`` (VARM's hard-coded 4).
        pos_weight: weight of the position softmax (PAR ``w2`` = 0.01; VARM 0).
        pos_temperature: temperature of the position kernel (PAR reuses ``w1`` = 0.3).
        variation_weight: weight of the subtracted variation softmax (VARM 0.01; PAR 0).
        clamp_negative: clamp the weights at 0 (VARM's can dip slightly below 0; released: False).
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W (any number of channels works)
        - output: B×K×H×W (a view of pixel-major B×H×W×K storage)

    Examples:
        >>> a = refine_affinity(torch.rand(1, 3, 16, 16))
        >>> a.shape, round(float(a.sum(1).mean()), 4)
        (torch.Size([1, 48, 16, 16]), 1.01)
    """
    _check_image01(image01)
    if (appearance_temperature is None) == (appearance_scale is None):
        raise ValueError("give exactly one of appearance_temperature and appearance_scale, got "
                         f"{appearance_temperature!r} and {appearance_scale!r}")
    return _affinity(image01, _check_dilations(dilations), appearance_temperature, appearance_scale,
                     pos_weight, pos_temperature, variation_weight, clamp_negative, eps,
                     _work_dtype(image01)).permute(0, 3, 1, 2)


def _gather_neighbours(x: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """B×C×K×H×W neighbours of a (small, few-channel) tensor in one indexing op, replicate edge.

    Used for the guide image, one image at a time; never for maps.
    """
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    return _gather_padded(padded, pad, offsets, x.shape[-2], x.shape[-1])


def _gather_padded(padded: Tensor, pad: int, offsets: Sequence[tuple[int, int]], h: int, w: int) -> Tensor:
    """Index a tensor padded by ``pad`` at the K offsets of every pixel: B×C×K×H×W.

    The padded input is viewed (zero-copy, overlapping strides) as B×C×(2P+1)×(2P+1)×H×W, the full stencil of
    every pixel, and indexed at the offsets in one op.
    """
    padded = padded.contiguous()
    b, c = padded.shape[:2]
    sb, sc, sh, sw = padded.stride()
    span = 2 * pad + 1
    stencil = padded.as_strided((b, c, span, span, h, w), (sb, sc, sh, sw, sh, sw))
    rows = torch.tensor([dy + pad for dy, _ in offsets], device=padded.device)
    cols = torch.tensor([dx + pad for _, dx in offsets], device=padded.device)
    return stencil[:, :, rows, cols]


def _affinity(image: Tensor, dilations: tuple[int, ...], temperature: float | None, scale: float | None,
              pos_weight: float, pos_temperature: float, variation_weight: float, clamp_negative: bool,
              eps: float, dtype: torch.dtype, sorted_order: bool = False) -> Tensor:
    """B×H×W×K weights (pixel-major), neighbours in the released order or, with ``sorted_order``, sorted by (dy, dx).

    The weights do not depend on the neighbour order (softmaxes are over all K); the sorted, pixel-major layout is
    exactly the value array of the sparse propagation matrix, so it is built without any further copy.
    """
    image = image.to(dtype)
    offsets = neighbour_offsets(dilations)
    if sorted_order:
        offsets = sorted(offsets)
    n = len(offsets)
    b, c, h, w = image.shape
    aff = image.new_empty(b, h, w, n)
    pos = _position_softmax(offsets, pos_temperature, eps, dtype, image.device) if pos_weight != 0.0 else None
    # One image at a time: its C×K×H×W neighbour stack (C = 3) is the only large temporary; maps are never stacked.
    for i in range(b):
        aff[i:i + 1].copy_(_affinity_one(image[i:i + 1], offsets, temperature, scale, pos, pos_weight,
                                         variation_weight, eps).permute(0, 2, 3, 1))
    if clamp_negative:
        aff.clamp_(min=0)
    return aff


def _variation(image: Tensor, offsets: Sequence[tuple[int, int]]) -> Tensor:
    """1×K×H×W VARM variation ``g_k``: mean over channels of the squared forward differences at each neighbour.

    The release takes the differences on its stacked neighbour maps: for output pixel (i, j) and neighbour k
    the vertical term is ``(I(cy(i+dy), cx(j+dx)) - I(cy(i+1+dy), cx(j+dx)))^2`` (``cy``/``cx`` clamp to the
    image) and 0 on the last output row; likewise horizontally. That is the image's own vertical difference map
    (zero outside rows 0..H-2, replicate across columns) read at the neighbour, so both maps are computed once
    and gathered like the image itself.
    """
    _, _, h, w = image.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    vert = image.new_zeros(1, 1, h, w)
    torch.mean((image[..., :-1, :] - image[..., 1:, :]).pow_(2), dim=1, keepdim=True, out=vert[..., :-1, :])
    horiz = image.new_zeros(1, 1, h, w)
    torch.mean((image[..., :, :-1] - image[..., :, 1:]).pow_(2), dim=1, keepdim=True, out=horiz[..., :, :-1])
    # Out-of-image rows (columns) of the vertical (horizontal) map are 0: both neighbours clamp to one pixel.
    vert_pad = F.pad(F.pad(vert, [pad, pad, 0, 0], mode="replicate"), [0, 0, pad, pad])
    horiz_pad = F.pad(F.pad(horiz, [0, 0, pad, pad], mode="replicate"), [pad, pad, 0, 0])
    g = _gather_padded(vert_pad, pad, offsets, h, w)[:, 0]
    g[..., -1, :] = 0  # the last output row compares each neighbour map with itself
    gh = _gather_padded(horiz_pad, pad, offsets, h, w)[:, 0]
    gh[..., :, -1] = 0
    return g.add_(gh)


def _affinity_one(image: Tensor, offsets: Sequence[tuple[int, int]], temperature: float | None,
                  scale: float | None, pos: Tensor | None, pos_weight: float, variation_weight: float,
                  eps: float) -> Tensor:
    """1×K×H×W weights of a single image (its temporaries are freed on return)."""
    _, c, h, w = image.shape
    n = len(offsets)
    nb = _gather_neighbours(image, offsets)  # 1×C×K×H×W
    # Unbiased std over the K neighbours (centre excluded), two-pass (torch.std over a non-innermost dim is
    # several times slower than this on CPU).
    std = (nb - nb.sum(dim=2, keepdim=True).div_(n)).pow_(2).sum(dim=2, keepdim=True).div_(n - 1).sqrt_()
    var_soft = torch.softmax(_variation(image, offsets), dim=1) if variation_weight != 0.0 else None
    # Appearance logits in the released operation order: -(|dI| / (std + eps) / w1)^2 (or * 4), mean over RGB.
    z = nb.sub_(image.unsqueeze(2)).abs_().div_(std.add_(eps))
    if temperature is not None:
        z = z.div_(temperature)
    else:
        assert scale is not None
        z = z.mul_(scale)
    out = z.pow_(2).mean(dim=1)
    del nb, z
    out = torch.softmax(out.neg_(), dim=1)
    if pos is not None:
        out.add_(pos.view(1, n, 1, 1), alpha=pos_weight)
    if var_soft is not None:
        out.sub_(var_soft, alpha=variation_weight)
    return out


def propagate(maps: Tensor, affinity: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
              num_iter: int = 10) -> Tensor:
    """Iterate ``P_i <- sum_k a_ik P_(i + offset_k)`` (replicate edge) ``num_iter`` times, all channels at once.

    The weights become one sparse B·H·W × B·(H+2P)·(W+2P) matrix (P = largest dilation; the replicate edge is
    handled by padding the maps, so every row has K distinct columns); each iteration pads the channels-last
    maps once and multiplies. Working memory: the matrix (K values + K int32 indices per pixel) and a few
    copies of ``maps``. Gradients flow into ``maps``; the weights are treated as constants.

    Args:
        maps: soft class maps at the affinity's resolution.
        affinity: neighbour weights from :func:`refine_affinity` (or any B×K×H×W weights).
        dilations: the dilations the affinity was built with.
        num_iter: number of propagation steps (0 returns ``maps``).

    Shape:
        - maps: B×C×H×W
        - affinity: B×K×H×W, K = 8 × len(dilations)
        - output: B×C×H×W

    Examples:
        >>> maps = torch.rand(1, 2, 8, 8)
        >>> uniform = torch.full((1, 8, 8, 8), 1 / 8)  # dilation 1 only: average of the 8 neighbours
        >>> propagate(torch.ones(1, 2, 8, 8), uniform, (1,), 3).allclose(torch.ones(1, 2, 8, 8))
        True
    """
    check_tensor(maps, "maps", 4, layout="B×C×H×W", floating=True)
    check_tensor(affinity, "affinity", 4, layout="B×K×H×W", floating=True)
    offsets = neighbour_offsets(dilations)
    if affinity.shape[0] != maps.shape[0] or affinity.shape[1] != len(offsets) or \
            affinity.shape[2:] != maps.shape[2:]:
        raise ValueError(f"affinity must have shape B×K×H×W = ({maps.shape[0]}, {len(offsets)}, "
                         f"{maps.shape[2]}, {maps.shape[3]}) for maps {shape_str(maps)} and {len(offsets) // 8} "
                         f"dilations, got {shape_str(affinity)}")
    return _propagate(maps, affinity, offsets, _check_num_iter(num_iter))


def _propagate(maps: Tensor, affinity: Tensor, offsets: Sequence[tuple[int, int]], num_iter: int) -> Tensor:
    """``affinity``: B×K×H×W in the order of ``offsets``."""
    if num_iter == 0:
        return maps
    if maps.device.type not in ("cpu", "cuda"):  # pragma: no cover - devices without sparse CSR
        return _propagate_shifted(maps, affinity, offsets, num_iter)
    order = sorted(range(len(offsets)), key=lambda k: offsets[k])
    values = affinity.detach().permute(0, 2, 3, 1)[..., order]  # B×H×W×K, sorted neighbours
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    return _iterate_sparse(maps, _sparse_operator(values, sorted(offsets), pad), pad, num_iter)


def _propagate_shifted(maps: Tensor, affinity: Tensor, offsets: Sequence[tuple[int, int]], num_iter: int) -> Tensor:
    """Reference / fallback: per iteration, pad once and accumulate one shifted view per neighbour."""
    h, w = maps.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    for _ in range(num_iter):
        padded = F.pad(maps, [pad] * 4, mode="replicate")
        out: Tensor | None = None
        for k, v in enumerate(_shifted_views(padded, pad, offsets, h, w)):
            a_k = affinity[:, k:k + 1]
            out = v * a_k if out is None else out.addcmul_(v, a_k)
        assert out is not None
        maps = out
    return maps


def _sparse_operator(values: Tensor, offsets: Sequence[tuple[int, int]], pad: int) -> Tensor:
    """The propagation as one sparse matrix: rows = output pixels, columns = pixels of the replicate-padded grid.

    ``values`` is B×H×W×K (pixel-major) with the neighbours in ``offsets`` order, which must be sorted by
    (dy, dx). Row (b, i, j) holds its K weights at columns (b, i + pad + dy_k, j + pad + dx_k): sorted and
    distinct (a valid CSR matrix), because the padding turns the replicate edge into ordinary columns, so border
    pixels need no duplicate entries. ``values`` is used as the value array without a copy.
    """
    b, h, w, k = values.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    lin = [dy * wp + dx for dy, dx in offsets]
    if lin != sorted(lin):
        raise ValueError("offsets must be sorted by (dy, dx)")  # pragma: no cover - internal invariant
    idx_dtype = torch.int32 if max(b * hp * wp, b * h * w * k) < 2**31 - 1 else torch.int64
    dev = values.device
    base = ((torch.arange(b, device=dev, dtype=idx_dtype) * (hp * wp)).view(b, 1, 1)
            + ((torch.arange(h, device=dev, dtype=idx_dtype) + pad) * wp).view(1, h, 1)
            + (torch.arange(w, device=dev, dtype=idx_dtype) + pad).view(1, 1, w))
    cols = (base.unsqueeze(-1) + torch.tensor(lin, device=dev, dtype=idx_dtype).view(1, 1, 1, k)).view(-1)
    crow = torch.arange(0, b * h * w * k + 1, k, device=dev, dtype=idx_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta state"
        return torch.sparse_csr_tensor(crow, cols, values.detach().reshape(-1), size=(b * h * w, b * hp * wp),
                                       check_invariants=False)


def _iterate_sparse(maps: Tensor, op: Tensor, pad: int, num_iter: int) -> Tensor:
    """``num_iter`` sparse-dense products on pixel-major (B×H×W×C) maps: one pad and one product per iteration."""
    b, c, h, w = maps.shape
    x = maps.permute(0, 2, 3, 1).contiguous()  # B×H×W×C
    flat = x.view(-1, c)
    # In place (no allocation, no zero-fill) on CPU when no gradient is needed; otherwise a plain product.
    in_place = maps.device.type == "cpu" and not (maps.requires_grad and torch.is_grad_enabled())
    for _ in range(num_iter):
        # Replicate-pad H and W of the pixel-major maps (a 3-D pad of B×1×H×W×C), giving the matrix's columns.
        padded = F.pad(x.unsqueeze(1), [0, 0, pad, pad, pad, pad], mode="replicate").view(-1, c)
        if in_place:
            torch.addmm(flat, op, padded, beta=0, out=flat)
        else:
            flat = op @ padded
            x = flat.view(b, h, w, c)
    return x.permute(0, 3, 1, 2).contiguous()


def _refine(image01: Tensor, maps: Tensor, dilations: Sequence[int], num_iter: int, **affinity_kw) -> Tensor:
    _check_image01(image01)
    check_tensor(maps, "maps", 4, layout="B×C×h×w", floating=True)
    check_finite(maps, "maps")
    check_same_batch(maps, "maps", image01, "image01")
    dil = _check_dilations(dilations)
    n_iter = _check_num_iter(num_iter)
    dtype = _work_dtype(image01, maps)
    work = maps.to(dtype)
    # The release always interpolates; at equal size (align_corners=True) that is the identity, so skip it.
    if work.shape[-2:] != image01.shape[-2:]:
        work = F.interpolate(work, size=image01.shape[-2:], mode="bilinear", align_corners=True)
    if n_iter == 0:
        return work.to(maps.dtype, copy=True)
    if work.device.type not in ("cpu", "cuda"):  # pragma: no cover - devices without sparse CSR
        aff = _affinity(image01, dil, dtype=dtype, **affinity_kw).permute(0, 3, 1, 2)
        return _propagate_shifted(work, aff, neighbour_offsets(dil), n_iter).to(maps.dtype)
    # Weights in sorted neighbour order and pixel-major layout are the sparse matrix's value array as they are.
    pad = max(dil)
    values = _affinity(image01, dil, dtype=dtype, sorted_order=True, **affinity_kw)
    op = _sparse_operator(values, sorted(neighbour_offsets(dil)), pad)
    del values
    return _iterate_sparse(work, op, pad, n_iter).to(maps.dtype)


def pixel_adaptive_refine(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                          num_iter: int = 10, w1: float = 0.3, w2: float = 0.01, w_pos: float | None = None,
                          eps: float = 1e-8) -> Tensor:
    """PAR (AFA/ToCo): refine soft class maps with colour- and distance-aware dilated neighbours.

    Released behaviour (AFA ``wetr/PAR.py`` L64-91, identical in ToCo ``model/PAR.py``):
    ``a = softmax(-mean_c(|dI|/(sigma+1e-8)/w1)^2) + w2·softmax(-(rho/(sigma_rho+1e-8)/w1)^2)`` (weights
    sum to 1.01), then 10 steps ``P <- sum_k a_k P_k``. Maps are first resized to the image with bilinear
    ``align_corners=True``; the output is not renormalised. See :class:`PixelAdaptiveRefine`.

    Args:
        image01: guide image, RGB in [0, 1] (AFA/TSCD pass the crop at half resolution).
        maps: soft class maps (e.g. softmax over background + present classes), any spatial size.
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        w1: appearance temperature; also the position temperature unless ``w_pos`` is given (as released).
        w2: weight of the position softmax (released: 0.01).
        w_pos: separate position temperature (paper's w2); ``None`` reuses ``w1`` as the release does.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W
        - maps: B×C×h×w
        - output: B×C×H×W, dtype of ``maps``

    Examples:
        >>> image = torch.rand(1, 3, 32, 32)
        >>> probs = torch.rand(1, 3, 16, 16).softmax(1)
        >>> pixel_adaptive_refine(image, probs).shape
        torch.Size([1, 3, 32, 32])
    """
    _check_number(w1, "w1", strict=True)
    _check_number(w2, "w2", strict=False)
    wp = _check_number(w1 if w_pos is None else w_pos, "w_pos", strict=True)
    return _refine(image01, maps, dilations, num_iter, temperature=w1, scale=None, pos_weight=w2,
                   pos_temperature=wp, variation_weight=0.0, clamp_negative=False, eps=eps)


def variation_aware_refine(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                           num_iter: int = 10, appearance_scale: float = 4.0, variation_weight: float = 0.01,
                           clamp_negative: bool = False, pos_weight: float = 0.0, pos_temperature: float = 0.3,
                           eps: float = 1e-8) -> Tensor:
    """VARM (TSCD): refine soft class maps with a sharp colour kernel minus an image-variation penalty.

    Released behaviour (SCD ``network/VARM.py`` L61-90): ``a = softmax(-mean_c(4·|dI|/(sigma+1e-8))^2)
    - 0.01·softmax(g)``, ``g`` the squared forward differences of the image at each neighbour (mean over RGB),
    no position prior (its attribute ``w1 = 0.3`` is never used), weights summing to 0.99 and possibly
    slightly negative; then 10 steps ``P <- sum_k a_k P_k``. See :class:`VariationAwareRefine`.

    Args:
        image01: guide image, RGB in [0, 1] (the variation term's scale depends on it).
        maps: soft class maps, any spatial size (resized bilinearly, ``align_corners=True``).
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_scale: multiplies ``|dI|/sigma`` (released: 4, i.e. PAR with w1 = 0.25).
        variation_weight: weight of the subtracted variation softmax (released: 0.01).
        clamp_negative: clamp negative weights to 0 (released: False).
        pos_weight: optional PAR-style position term (released VARM: 0). With ``appearance_scale=1/0.3``,
            ``variation_weight=0`` and ``pos_weight=0.01`` VARM equals PAR.
        pos_temperature: temperature of that position term.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W
        - maps: B×C×h×w
        - output: B×C×H×W, dtype of ``maps``

    Examples:
        >>> image = torch.rand(1, 3, 32, 32)
        >>> probs = torch.rand(1, 3, 32, 32).softmax(1)
        >>> variation_aware_refine(image, probs).shape
        torch.Size([1, 3, 32, 32])
    """
    _check_number(appearance_scale, "appearance_scale", strict=True)
    _check_number(variation_weight, "variation_weight", strict=False)
    _check_number(pos_weight, "pos_weight", strict=False)
    _check_number(pos_temperature, "pos_temperature", strict=True)
    return _refine(image01, maps, dilations, num_iter, temperature=None, scale=appearance_scale,
                   pos_weight=pos_weight, pos_temperature=pos_temperature, variation_weight=variation_weight,
                   clamp_negative=clamp_negative, eps=eps)


# --------------------------------------------------------------------------- modules
class DilatedNeighbourRefine(nn.Module):
    """Shared engine of PAR and VARM: image-only neighbour weights, then linear propagation of the maps.

    Subclasses only choose the weights (:meth:`affinity`). ``forward(image01, maps)`` resizes ``maps`` to the
    image (bilinear, ``align_corners=True``, as released), builds the K = 8·len(dilations) weights once per
    image and runs ``num_iter`` propagation steps as sparse-dense products (see :func:`propagate`); no
    K-stacked map tensor is ever built. Gradients flow into ``maps`` only: the weights are constants of the
    image (AFA/TSCD run the refiners under ``no_grad`` anyway).

    Args:
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w
        - output: B×C×H×W (same scale as ``maps``; not renormalised)
    """

    def __init__(self, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10, eps: float = 1e-8):
        super().__init__()
        self.dilations = _check_dilations(dilations)
        self.num_iter = _check_num_iter(num_iter)
        self.eps = _check_number(eps, "eps", strict=False)

    @property
    def num_neighbours(self) -> int:
        return 8 * len(self.dilations)

    def neighbours(self, x: Tensor) -> Tensor:
        """B×C×H×W → B×C×K×H×W stacked neighbours (for inspection; the refinement never builds this)."""
        return dilated_neighbours(x, self.dilations)

    def _affinity_kwargs(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def affinity(self, image01: Tensor) -> Tensor:
        """B×3×H×W guide image in [0, 1] → B×K×H×W neighbour weights (independent of the maps)."""
        _check_image01(image01)
        return _affinity(image01, self.dilations, dtype=_work_dtype(image01),
                         **self._affinity_kwargs()).permute(0, 3, 1, 2)

    def propagate(self, affinity: Tensor, maps: Tensor) -> Tensor:
        """Run ``num_iter`` steps of ``P_i <- sum_k a_ik P_k`` with precomputed weights (maps at their size)."""
        return propagate(maps, affinity, self.dilations, self.num_iter)

    def forward(self, image01: Tensor, maps: Tensor) -> Tensor:
        return _refine(image01, maps, self.dilations, self.num_iter, **self._affinity_kwargs())


class PixelAdaptiveRefine(DilatedNeighbourRefine):
    """PAR: pixel-adaptive refinement of AFA (Ru et al., CVPR 2022), reused by ToCo (CVPR 2023).

    Weights: ``softmax_k(-mean_c(|I_k - I|/(sigma+1e-8)/w1)^2) + w2·softmax_k(-(rho_k/(sigma_rho+1e-8)/w1)^2)``
    over 48 dilated neighbours (sum 1.01), propagated 10 times. Equals the released ``PAR`` to float rounding
    (see ``benchmarks/par_baseline.py``) while never building the B×C×48×H×W tensors; see
    :func:`pixel_adaptive_refine` for the arguments.

    Args:
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        w1: appearance (and, as released, position) temperature, 0.3.
        w2: weight of the position softmax, 0.01.
        w_pos: separate position temperature; ``None`` (released) reuses ``w1``.
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w (resized to H×W, bilinear, ``align_corners=True``)
        - output: B×C×H×W

    Examples:
        >>> par = PixelAdaptiveRefine()
        >>> image = torch.rand(2, 3, 32, 32)
        >>> probs = torch.rand(2, 4, 32, 32).softmax(1)
        >>> refined = par(image, probs)
        >>> refined.shape
        torch.Size([2, 4, 32, 32])
    """

    def __init__(self, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10, w1: float = 0.3,
                 w2: float = 0.01, w_pos: float | None = None, eps: float = 1e-8):
        super().__init__(dilations, num_iter, eps)
        self.w1 = _check_number(w1, "w1", strict=True)
        self.w2 = _check_number(w2, "w2", strict=False)
        self.w_pos = None if w_pos is None else _check_number(w_pos, "w_pos", strict=True)

    def _affinity_kwargs(self) -> dict:
        return {"temperature": self.w1, "scale": None, "pos_weight": self.w2,
                "pos_temperature": self.w1 if self.w_pos is None else self.w_pos, "variation_weight": 0.0,
                "clamp_negative": False, "eps": self.eps}

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w1={self.w1}, w2={self.w2}, w_pos={self.w_pos}"


class VariationAwareRefine(DilatedNeighbourRefine):
    """VARM: variation-aware refine module of TSCD (Xu et al., "Self Correspondence Distillation", AAAI 2023).

    Weights: ``softmax_k(-mean_c(4·|I_k - I|/(sigma+1e-8))^2) - 0.01·softmax_k(g_k)`` over 48 dilated
    neighbours, ``g_k`` the squared forward image differences at neighbour k (sum 0.99, may be slightly
    negative), no position prior; propagated 10 times. Equals the released ``VARM`` to float rounding
    (see ``benchmarks/par_baseline.py``); see :func:`variation_aware_refine` for the arguments.

    Args:
        dilations: positive ints (released: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps (released: 10).
        appearance_scale: multiplies ``|dI|/sigma`` (released: 4.0; PAR's 1/w1 = 3.33).
        variation_weight: weight of the subtracted variation softmax (released: 0.01).
        clamp_negative: clamp negative weights at 0 (released: False).
        pos_weight: optional PAR position term (released: 0).
        pos_temperature: its temperature (PAR: 0.3).
        eps: added to the standard deviations.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w (resized to H×W, bilinear, ``align_corners=True``)
        - output: B×C×H×W

    Examples:
        >>> varm = VariationAwareRefine()
        >>> image = torch.rand(2, 3, 32, 32)
        >>> probs = torch.rand(2, 4, 16, 16).softmax(1)
        >>> varm(image, probs).shape
        torch.Size([2, 4, 32, 32])
    """

    def __init__(self, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10,
                 appearance_scale: float = 4.0, variation_weight: float = 0.01, clamp_negative: bool = False,
                 pos_weight: float = 0.0, pos_temperature: float = 0.3, eps: float = 1e-8):
        super().__init__(dilations, num_iter, eps)
        self.appearance_scale = _check_number(appearance_scale, "appearance_scale", strict=True)
        self.variation_weight = _check_number(variation_weight, "variation_weight", strict=False)
        self.clamp_negative = bool(clamp_negative)
        self.pos_weight = _check_number(pos_weight, "pos_weight", strict=False)
        self.pos_temperature = _check_number(pos_temperature, "pos_temperature", strict=True)

    def _affinity_kwargs(self) -> dict:
        return {"temperature": None, "scale": self.appearance_scale, "pos_weight": self.pos_weight,
                "pos_temperature": self.pos_temperature, "variation_weight": self.variation_weight,
                "clamp_negative": self.clamp_negative, "eps": self.eps}

    def extra_repr(self) -> str:
        return (f"dilations={self.dilations}, num_iter={self.num_iter}, appearance_scale={self.appearance_scale}, "
                f"variation_weight={self.variation_weight}, clamp_negative={self.clamp_negative}, "
                f"pos_weight={self.pos_weight}")


# --------------------------------------------------------------------------- reliable pseudo labels
def _box_mask(img_box: Tensor | None, b: int, h: int, w: int, device: torch.device) -> Tensor | None:
    if img_box is None:
        return None
    check_tensor(img_box, "img_box", 2, layout="B×4 (r0, r1, c0, c1)")
    if img_box.shape != (b, 4):
        raise ValueError(f"img_box must have shape B×4 = ({b}, 4) with rows (r0, r1, c0, c1), "
                         f"got {shape_str(img_box)}")
    box = img_box.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    r0, r1, c0, c1 = (box[:, i].view(b, 1, 1) for i in range(4))
    return (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)


def reliable_pseudo_labels(
    refiner: DilatedNeighbourRefine,
    image01: Tensor,
    cams: Tensor,
    labels: Tensor,
    img_box: Tensor | None = None,
    tau_high: float = 0.55,
    tau_low: float = 0.35,
    down_scale: int = 2,
    ignore_index: int = 255,
) -> Tensor:
    """Refined pseudo labels with an ignore band (AFA/TSCD ``refine_cams_with_bkg_v2``).

    For each background constant tau in (``tau_high``, ``tau_low``): prepend tau to the CAMs, downsample by
    ``down_scale`` (bilinear, ``align_corners=False``), softmax over background + **present** classes only
    (temperature 1), refine with ``refiner`` on the image downsampled the same way, upsample to H×W (bilinear,
    ``align_corners=False``), argmax. Combine: the high label where it is foreground; background only where both
    say background; ``ignore_index`` elsewhere (foreground in the low label only) and outside ``img_box``.
    Absent classes can never be assigned. Both thresholds and all images share one refinement call (the
    affinity is computed once per image, not twice as released); images with fewer present classes get
    zero-padded channels that stay zero.

    Args:
        refiner: a :class:`VariationAwareRefine` (TSCD) or :class:`PixelAdaptiveRefine` (AFA, ToCo).
        image01: the crop, RGB in [0, 1].
        cams: per-channel min-max normalised CAMs in [0, 1] (any spatial size; resized to H/down_scale).
        labels: multi-hot image labels, no background entry.
        img_box: optional B×4 (r0, r1, c0, c1) valid (unpadded) region; outside it the label is ignore.
        tau_high: high background score (AFA/TSCD 0.55; ToCo 0.70).
        tau_low: low background score (AFA/TSCD 0.35; ToCo 0.25).
        down_scale: refinement runs at (H // down_scale, W // down_scale) (released: 2).
        ignore_index: label of the ignore band and of pixels outside the box.

    Shape:
        - image01: B×3×H×W
        - cams: B×C×h×w
        - labels: B×C
        - img_box: B×4
        - output: B×H×W int64, 0 = background, c+1 = class c, ``ignore_index`` = ignore

    Examples:
        >>> image = torch.rand(2, 3, 32, 32)
        >>> cams = torch.rand(2, 20, 32, 32)
        >>> labels = torch.zeros(2, 20); labels[0, 3] = 1; labels[1, [5, 7]] = 1
        >>> y = reliable_pseudo_labels(VariationAwareRefine(), image, cams, labels)
        >>> y.shape, y.dtype
        (torch.Size([2, 32, 32]), torch.int64)
    """
    if not isinstance(refiner, DilatedNeighbourRefine):
        raise TypeError(f"refiner must be a DilatedNeighbourRefine (PixelAdaptiveRefine or VariationAwareRefine), "
                        f"got {type(refiner).__name__}")
    _check_image01(image01)
    check_tensor(cams, "cams", 4, layout="B×C×h×w", floating=True)
    check_finite(cams, "cams")
    check_same_batch(cams, "cams", image01, "image01")
    b, c = cams.shape[:2]
    lab = check_labels(labels, "labels", batch=b, num_classes=c).to(cams.device)
    for name, v in (("tau_high", tau_high), ("tau_low", tau_low)):
        _check_number(v, name, strict=False)
    if tau_low > tau_high:
        raise ValueError(f"tau_low must be <= tau_high, got tau_low={tau_low} and tau_high={tau_high}")
    if isinstance(down_scale, bool) or not isinstance(down_scale, int) or down_scale < 1:
        raise ValueError(f"down_scale must be an int >= 1, got {down_scale!r}")
    h, w = image01.shape[-2:]
    hs, ws = h // down_scale, w // down_scale
    if hs < 1 or ws < 1:
        raise ValueError(f"image01 of size {h}×{w} is too small for down_scale={down_scale}")
    box = _box_mask(img_box, b, h, w, image01.device)

    dtype = _work_dtype(image01, cams)
    small_img = F.interpolate(image01.to(dtype), size=(hs, ws), mode="bilinear", align_corners=False)
    small_cams = F.interpolate(cams.to(dtype), size=(hs, ws), mode="bilinear", align_corners=False)

    # Valid keys per image: background (0) and c + 1 for each present class, padded to the largest count.
    keys_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=cams.device), lab > 0.5], dim=1)
    n_keys = int(keys_valid.sum(1).max())
    order = torch.argsort((~keys_valid).to(torch.int8), dim=1, stable=True)[:, :n_keys]  # valid keys first
    slot_valid = torch.gather(keys_valid, 1, order)  # B×n_keys

    maps = []
    for tau in (tau_high, tau_low):
        with_bg = torch.cat([small_cams.new_full((b, 1, hs, ws), tau), small_cams], dim=1)
        sel = torch.gather(with_bg, 1, order.view(b, n_keys, 1, 1).expand(b, n_keys, hs, ws))
        sel = sel.masked_fill(~slot_valid.view(b, n_keys, 1, 1), float("-inf")).softmax(dim=1)
        maps.append(sel)
    refined = refiner(small_img, torch.cat(maps, dim=1))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    invalid = ~slot_valid.view(b, n_keys, 1, 1)
    label_h, label_l = (
        torch.gather(order, 1, part.masked_fill(invalid, float("-inf")).argmax(dim=1).view(b, -1)).view(b, h, w)
        for part in refined.split(n_keys, dim=1)
    )
    out = label_h.clone()
    out[label_h == 0] = ignore_index
    out[(label_h == 0) & (label_l == 0)] = 0
    if box is not None:
        out = out.masked_fill(~box, ignore_index)
    return out
