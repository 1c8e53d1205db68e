"""The dilated-neighbour propagation engine shared by PAR (AFA) and VARM (TSCD).

A soft K-channel map is propagated over a fixed set of dilated neighbours (8 directions × the dilations,
centre excluded, replicate padding) by ``num_iter`` full replacements ``P_i <- sum_j a_ij P_j``. The per-pixel
neighbour weights ``a_ij`` depend only on the guide image (RGB in [0, 1]), so they are computed **once per
image** (from the image's own 3×K×H×W neighbour stack, one image at a time) and stored as one sparse matrix with
K entries per row; each iteration is then a single sparse-dense product with the channels-last,
replicate-padded maps. The B×C×K×H×W neighbour tensor of the released code (AFA ``wetr/PAR.py``
``get_dilated_neighbors``) is never built and nothing is repeated per neighbour or per class.

- [`neighbour_offsets`][], [`dilated_neighbours`][]: the neighbour layout (for inspection and tests);
- [`refine_affinity`][]: the weights, parameterised to give PAR's or VARM's;
- [`propagate`][]: the iterations with precomputed weights; [`refine_maps`][]: resize, weights, iterations;
- [`DilatedNeighbourRefine`][]: the module base of
  [`wsss_blocks.refine.PixelAdaptiveRefine`][wsss_blocks.refine.PixelAdaptiveRefine] and
  [`wsss_blocks.refine.VariationAwareRefine`][wsss_blocks.refine.VariationAwareRefine].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ._checks import (
    check_finite,
    check_image01,
    check_int,
    check_number,
    check_same_batch,
    check_tensor,
    compute_dtype,
    shape_str,
)

__all__ = [
    "DEFAULT_DILATIONS",
    "neighbour_offsets",
    "dilated_neighbours",
    "refine_affinity",
    "propagate",
    "refine_maps",
    "DilatedNeighbourRefine",
]

DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
"""Dilations of the released PAR/VARM (AFA ``scripts/dist_train_voc.py``, SCD ``scripts/dist_train_voc.py`` L241)."""

# Position of each of the 8 neighbours inside the released one-hot 3×3 kernels: TL, T, TR, L, R, BL, B, BR.
_RING: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# --------------------------------------------------------------------------- validation helpers
def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
        raise TypeError(f"dilations must be a sequence of positive ints, got {type(dilations).__name__}")
    dil = tuple(dilations)
    if len(dil) == 0:
        raise ValueError("dilations must be a non-empty sequence of positive ints, got an empty sequence")
    return tuple(check_int(d, f"dilations[{i}]", minimum=1) for i, d in enumerate(dil))


_IMAGE01_HINT = ("refiners take raw RGB in [0, 1]; denormalise the network input first (e.g. x * std + mean "
                 "with ImageNet statistics, then / 255)")


def _check_image01(image01: Tensor) -> None:
    check_image01(image01, hint=_IMAGE01_HINT)


def _check_weights(appearance_temperature: float | None, appearance_scale: float | None, pos_weight: float,
                   pos_temperature: float, variation_weight: float, eps: float) -> None:
    if (appearance_temperature is None) == (appearance_scale is None):
        raise ValueError("give exactly one of appearance_temperature and appearance_scale, got "
                         f"{appearance_temperature!r} and {appearance_scale!r}")
    if appearance_temperature is not None:
        check_number(appearance_temperature, "appearance_temperature", 0.0, strict=True)
    if appearance_scale is not None:
        check_number(appearance_scale, "appearance_scale", 0.0, strict=True)
    check_number(pos_weight, "pos_weight", 0.0)
    check_number(pos_temperature, "pos_temperature", 0.0, strict=True)
    check_number(variation_weight, "variation_weight", 0.0)
    check_number(eps, "eps", 0.0)


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
        - output: B×C×K×H×W, neighbour order of [`neighbour_offsets`][]

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
    _check_weights(appearance_temperature, appearance_scale, pos_weight, pos_temperature, variation_weight, eps)
    return _affinity_map(image01, _check_dilations(dilations), appearance_temperature=appearance_temperature,
                         appearance_scale=appearance_scale, pos_weight=pos_weight, pos_temperature=pos_temperature,
                         variation_weight=variation_weight, clamp_negative=clamp_negative, eps=eps)


def _internal(kw: dict[str, Any]) -> dict[str, Any]:
    """The [`refine_affinity`][] weight arguments under the names of `_affinity`."""
    return {"temperature": kw["appearance_temperature"], "scale": kw["appearance_scale"],
            "pos_weight": kw["pos_weight"], "pos_temperature": kw["pos_temperature"],
            "variation_weight": kw["variation_weight"], "clamp_negative": kw["clamp_negative"], "eps": kw["eps"]}


def _affinity_map(image01: Tensor, dilations: tuple[int, ...], **weights: Any) -> Tensor:
    """[`refine_affinity`][] with checked options."""
    _check_image01(image01)
    return _affinity(image01, dilations, dtype=compute_dtype(image01), **_internal(weights)).permute(0, 3, 1, 2)


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
    b, _, h, w = image.shape
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
    # Zero-padded difference maps; F.pad instead of writing into a preallocated buffer (``out=``) keeps this
    # differentiable with respect to the image.
    vert = F.pad((image[..., :-1, :] - image[..., 1:, :]).pow(2).mean(dim=1, keepdim=True), [0, 0, 0, 1])
    horiz = F.pad((image[..., :, :-1] - image[..., :, 1:]).pow(2).mean(dim=1, keepdim=True), [0, 1, 0, 0])
    # Out-of-image rows (columns) of the vertical (horizontal) map are 0: both neighbours clamp to one pixel.
    vert_pad = F.pad(F.pad(vert, [pad, pad, 0, 0], mode="replicate"), [0, 0, pad, pad])
    horiz_pad = F.pad(F.pad(horiz, [0, 0, pad, pad], mode="replicate"), [pad, pad, 0, 0])
    # the last output row (column) compares each neighbour map with itself: 0 there
    g = _gather_padded(vert_pad, pad, offsets, h, w)[:, 0] * _keep_mask(h, w, image, last_row=True)
    gh = _gather_padded(horiz_pad, pad, offsets, h, w)[:, 0] * _keep_mask(h, w, image, last_row=False)
    return g + gh


def _keep_mask(h: int, w: int, like: Tensor, last_row: bool) -> Tensor:
    """1×1×H×W ones with the last row (or column) zeroed, in ``like``'s dtype and device."""
    m = like.new_ones(1, 1, h, w)
    if last_row:
        m[..., -1, :] = 0
    else:
        m[..., :, -1] = 0
    return m


def _affinity_one(image: Tensor, offsets: Sequence[tuple[int, int]], temperature: float | None,
                  scale: float | None, pos: Tensor | None, pos_weight: float, variation_weight: float,
                  eps: float) -> Tensor:
    """1×K×H×W weights of a single image (its temporaries are freed on return)."""
    n = len(offsets)
    nb = _gather_neighbours(image, offsets)  # 1×C×K×H×W
    var_soft = torch.softmax(_variation(image, offsets), dim=1) if variation_weight != 0.0 else None
    if image.requires_grad and torch.is_grad_enabled():  # the same weights, differentiable in the image
        std = (nb - nb.mean(dim=2, keepdim=True)).pow(2).sum(dim=2, keepdim=True).div(n - 1).sqrt()
        z = (nb - image.unsqueeze(2)).abs() / (std + eps)
        z = z / temperature if temperature is not None else z * cast(float, scale)
        out = torch.softmax(-z.pow(2).mean(dim=1), dim=1)
        if pos is not None:
            out = out + pos_weight * pos.view(1, n, 1, 1)
        return out - variation_weight * var_soft if var_soft is not None else out
    # Unbiased std over the K neighbours (centre excluded), two-pass (torch.std over a non-innermost dim is
    # several times slower than this on CPU).
    std = (nb - nb.sum(dim=2, keepdim=True).div_(n)).pow_(2).sum(dim=2, keepdim=True).div_(n - 1).sqrt_()
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
    copies of ``maps``. Gradients flow into ``maps``; when ``affinity`` requires grad the iterations run as
    dense shifted products instead, so gradients reach the weights too. Any float dtype is accepted (autocast
    included): the work runs in float32 (float64 for float64 inputs) and the result has the dtype of ``maps``.

    Args:
        maps: soft class maps at the affinity's resolution.
        affinity: neighbour weights from [`refine_affinity`][] (or any B×K×H×W weights).
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
    check_finite(maps, "maps")
    check_finite(affinity, "affinity")
    offsets = neighbour_offsets(dilations)
    if affinity.shape[0] != maps.shape[0] or affinity.shape[1] != len(offsets) or \
            affinity.shape[2:] != maps.shape[2:]:
        raise ValueError(f"affinity must have shape B×K×H×W = ({maps.shape[0]}, {len(offsets)}, "
                         f"{maps.shape[2]}, {maps.shape[3]}) for maps {shape_str(maps)} and {len(offsets) // 8} "
                         f"dilations, got {shape_str(affinity)}")
    return _propagate(maps, affinity, offsets, check_int(num_iter, "num_iter", minimum=0))


def _needs_dense(t: Tensor) -> bool:
    """Whether a gradient must flow through ``t`` (the sparse operator holds detached values)."""
    return t.requires_grad and torch.is_grad_enabled()


def _propagate(maps: Tensor, affinity: Tensor, offsets: Sequence[tuple[int, int]], num_iter: int) -> Tensor:
    """``affinity``: B×K×H×W in the order of ``offsets``.

    Runs in float32 (float64 for float64 inputs) with autocast off, whatever the input dtypes: the sparse CSR
    kernels have no half/bfloat16 versions. The result has the dtype of ``maps``.
    """
    if num_iter == 0:
        return maps
    dtype = compute_dtype(maps, affinity)
    with torch.autocast(device_type=maps.device.type, enabled=False):
        work, aff = maps.to(dtype), affinity.to(dtype)
        if maps.device.type not in ("cpu", "cuda") or _needs_dense(aff):
            # devices without sparse CSR, or a gradient into the weights: the dense, differentiable path
            return _propagate_shifted(work, aff, offsets, num_iter).to(maps.dtype)
        order = sorted(range(len(offsets)), key=lambda k: offsets[k])
        values = aff.detach().permute(0, 2, 3, 1)[..., order]  # B×H×W×K, sorted neighbours
        pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
        return _iterate_sparse(work, _sparse_operator(values, sorted(offsets), pad), pad, num_iter).to(maps.dtype)


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


def refine_maps(image01: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, num_iter: int = 10,
                *, appearance_temperature: float | None = 0.3, appearance_scale: float | None = None,
                pos_weight: float = 0.01, pos_temperature: float = 0.3, variation_weight: float = 0.0,
                clamp_negative: bool = False, eps: float = 1e-8) -> Tensor:
    """Resize ``maps`` to the image, build the [`refine_affinity`][] weights and [`propagate`][] them.

    The maps are resized with bilinear ``align_corners=True`` (as released; skipped at equal size, where it is
    the identity) and propagated ``num_iter`` times as sparse-dense products; the weight arguments are those of
    [`refine_affinity`][] (the defaults give PAR). Gradients flow into ``maps`` and, when ``image01`` requires
    grad, into the image through the weights (then a dense path replaces the sparse products). The work runs in
    float32 (float64 for float64 inputs) with autocast off; the result has the dtype of ``maps``.

    Shape:
        - image01: B×3×H×W in [0, 1]
        - maps: B×C×h×w
        - output: B×C×H×W, dtype of ``maps``

    Examples:
        >>> maps = torch.rand(1, 2, 8, 8).softmax(1)
        >>> refine_maps(torch.rand(1, 3, 16, 16), maps).shape
        torch.Size([1, 2, 16, 16])
    """
    _check_weights(appearance_temperature, appearance_scale, pos_weight, pos_temperature, variation_weight, eps)
    return _refine_maps(image01, maps, _check_dilations(dilations), check_int(num_iter, "num_iter", minimum=0),
                        appearance_temperature=appearance_temperature, appearance_scale=appearance_scale,
                        pos_weight=pos_weight, pos_temperature=pos_temperature, variation_weight=variation_weight,
                        clamp_negative=clamp_negative, eps=eps)


def _refine_maps(image01: Tensor, maps: Tensor, dil: tuple[int, ...], n_iter: int, **weights: Any) -> Tensor:
    """[`refine_maps`][] with checked options."""
    affinity_kw = _internal(weights)
    _check_image01(image01)
    check_tensor(maps, "maps", 4, layout="B×C×h×w", floating=True)
    check_finite(maps, "maps")
    check_same_batch(maps, "maps", image01, "image01")
    # float32 (float64 for float64 inputs) with autocast off: the weights are softmaxes of squared ratios, and the
    # sparse CSR kernels have no half/bfloat16 versions; the result is cast back to the dtype of ``maps``.
    dtype = compute_dtype(image01, maps)
    with torch.autocast(device_type=maps.device.type, enabled=False):
        work = maps.to(dtype)
        # The release always interpolates; at equal size (align_corners=True) that is the identity, so skip it.
        if work.shape[-2:] != image01.shape[-2:]:
            work = F.interpolate(work, size=image01.shape[-2:], mode="bilinear", align_corners=True)
        if n_iter == 0:
            return work.to(maps.dtype, copy=True)
        if work.device.type not in ("cpu", "cuda") or _needs_dense(image01):
            # devices without sparse CSR, or a gradient into the guide image: the dense, differentiable path
            aff = _affinity(image01, dil, dtype=dtype, **affinity_kw).permute(0, 3, 1, 2)
            return _propagate_shifted(work, aff, neighbour_offsets(dil), n_iter).to(maps.dtype)
        # Weights in sorted neighbour order and pixel-major layout are the sparse matrix's value array as they are.
        pad = max(dil)
        values = _affinity(image01, dil, dtype=dtype, sorted_order=True, **affinity_kw)
        op = _sparse_operator(values, sorted(neighbour_offsets(dil)), pad)
        del values
        return _iterate_sparse(work, op, pad, n_iter).to(maps.dtype)


# --------------------------------------------------------------------------- module base
class DilatedNeighbourRefine(nn.Module):
    """Shared engine of PAR and VARM: image-only neighbour weights, then linear propagation of the maps.

    Subclasses only choose the weights ([`affinity`][]). ``forward(image01, maps)`` resizes ``maps`` to the
    image (bilinear, ``align_corners=True``, as released), builds the K = 8·len(dilations) weights once per
    image and runs ``num_iter`` propagation steps as sparse-dense products (see [`propagate`][]); no
    K-stacked map tensor is ever built. Gradients flow into ``maps``, and into ``image01`` through the weights
    when it requires grad (a dense path then replaces the sparse products; AFA/TSCD run the refiners under
    ``no_grad``). Under autocast or with half inputs the work runs in float32 and the output has the dtype of
    ``maps``.

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
        self.num_iter = check_int(num_iter, "num_iter", minimum=0)
        self.eps = check_number(eps, "eps", 0.0)

    @property
    def num_neighbours(self) -> int:
        """K = 8 neighbours per dilation."""
        return 8 * len(self.dilations)

    def neighbours(self, x: Tensor) -> Tensor:
        """B×C×H×W → B×C×K×H×W stacked neighbours (for inspection; the refinement never builds this)."""
        return dilated_neighbours(x, self.dilations)

    def affinity_kwargs(self) -> dict[str, Any]:
        """The [`refine_affinity`][] weight arguments of this refiner (subclasses choose them)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def affinity(self, image01: Tensor) -> Tensor:
        """B×3×H×W guide image in [0, 1] → B×K×H×W neighbour weights (independent of the maps)."""
        return _affinity_map(image01, self.dilations, **self.affinity_kwargs())

    def propagate(self, affinity: Tensor, maps: Tensor) -> Tensor:
        """Run ``num_iter`` steps of ``P_i <- sum_k a_ik P_k`` with precomputed weights (maps at their size)."""
        return propagate(maps, affinity, self.dilations, self.num_iter)

    @override
    def forward(self, image01: Tensor, maps: Tensor) -> Tensor:
        return _refine_maps(image01, maps, self.dilations, self.num_iter, **self.affinity_kwargs())
