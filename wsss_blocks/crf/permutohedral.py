"""Permutohedral-lattice Gaussian filtering and dense-CRF mean field in pure PyTorch.

This is the algorithm of Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice" (Eurographics 2010), in the variant that Krähenbühl & Koltun ship with their dense CRF
("Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NeurIPS 2011) and that
``pydensecrf`` wraps (``densecrf/src/permutohedral.cpp``, ``pairwise.cpp``, ``densecrf.cpp``). It is a
re-implementation from the algorithm description, written to reproduce that code's numbers to float
rounding:

* **Embedding.** A d-dimensional feature ``f`` (already divided by its standard deviations) is scaled per
  axis by ``sqrt(2/3) (d+1) / sqrt((i+1)(i+2))`` and elevated onto the hyperplane ``sum = 0`` of R^(d+1).
  The enclosing simplex is found by rounding to the nearest multiple of ``d+1`` (ties to even, like the
  SSE code) and ranking the remainders; barycentric weights follow.
* **Lattice keys.** A lattice point's key coordinates are all congruent to its remainder ``r`` modulo
  ``d+1``, so the point is encoded exactly as ``r + (d+1) * mixed_radix((key - r) / (d+1))`` with the
  image index as the top digit: an int32 code when it fits (an int64 one otherwise). **One stable sort**
  of the ``P (d+1)`` vertex codes gives the lattice points, each pixel's vertex indices and the row
  structure of the splat. Neighbours along the d+1 lattice directions are looked up for one direction
  sign (the other is its inverse) in a direct table when the key space is small (the position kernel) or
  by a sort-merge join. Points are renumbered by first appearance in pixel order, as the released hash
  table numbers them, which keeps memory access local.
* **Filtering.** Splat, blur and slice are weighted row gathers done with ``embedding_bag(mode="sum")``:
  the splat sums each lattice point's pixels with their barycentric weights (no ``P (d+1) K`` temporary),
  the blur applies ``[1/2, 1, 1/2]`` along each of the d+1 directions in turn (a missing neighbour adds
  0), the slice reads the d+1 vertices with the weights times ``1 / (1 + 2^-d)``. The self-contribution
  is kept, as in the released code.
* **Mean field.** ``Q <- softmax(-U + sum_k w_k n_k * K_k(n_k * Q))`` with Potts weights ``w_k`` and the
  ``NORMALIZE_SYMMETRIC`` normalisation ``n_k = 1 / sqrt(K_k(1) + 1e-20)`` that
  ``pydensecrf.DenseCRF2D.addPairwise*`` uses by default (the other three modes are available).

Several images are filtered together: their lattices share one index space, so each mean-field iteration
runs one splat, blur and slice per kernel for the whole batch, on CPU or CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_blocks._checks import check_choice, check_finite, check_int, check_tensor, shape_str

__all__ = [
    "PermutohedralLattice",
    "build_lattice",
    "grid_features",
    "bilateral_features",
    "lattice_filter",
    "PairwiseOperator",
    "mean_field",
]

# pydensecrf's SSE lattice builder processes pixels in blocks of 4 and fills the tail of the last block with
# zero feature vectors; their simplex vertices are inserted into the hash table (they then relay values
# during the blur) although nothing is splatted onto or sliced from them. We add the same phantom points.
_SSE_BLOCK = 4
# Neighbour lookup by a direct table when the key space has at most max(_TABLE_MAX, 4 * entries) codes.
_TABLE_MAX = 1 << 22
_NORMALIZATIONS = ("symmetric", "after", "before", "none")


@dataclass
class PermutohedralLattice:
    """A permutohedral lattice over the pixels of one or more images (built by [`build_lattice`][]).

    Attributes:
        offsets: ``(P, d+1)`` int64, lattice point of each vertex of each pixel's enclosing simplex
            (``P`` = pixels of all images, image-major).
        weights: ``(P, d+1)`` float32 barycentric weights (they sum to 1 per pixel).
        splat_crow: ``(M+1,)`` int64 row pointers: the entries of lattice point ``m`` are
            ``splat_entries[splat_crow[m]:splat_crow[m+1]]``.
        splat_entries: ``(P*(d+1),)`` int64 flat indices ``p*(d+1)+r`` into ``offsets``/``weights``,
            grouped by lattice point, in pixel order inside a group (like the released splat loop).
        blur_neighbors: ``(d+1, 2, M)`` int64, the two neighbours of each lattice point along each lattice
            direction (``n1``: key - 1 + (d+1) e_j, ``n2``: key + 1 - (d+1) e_j); ``M`` = missing.
        num_points: ``M``, the number of lattice points.
        dim: ``d``, the feature dimension.
    """

    offsets: Tensor
    weights: Tensor
    splat_crow: Tensor
    splat_entries: Tensor
    blur_neighbors: Tensor
    num_points: int
    dim: int

    @property
    def num_pixels(self) -> int:
        """Number of pixels (feature vectors) splatted onto the lattice."""
        return int(self.offsets.shape[0])

    def repeat(self, n: int) -> PermutohedralLattice:
        """The lattice of ``n`` copies of the same feature set (image-major), e.g.

        one position grid for a batch; identical to building it from the repeated features, without redoing the work.
        """
        if n == 1:
            return self
        m, p = self.num_points, self.num_pixels
        dev = self.offsets.device
        shift_m = (torch.arange(n, device=dev) * m)
        offsets = (self.offsets[None] + shift_m[:, None, None]).reshape(n * p, -1)
        nnz = int(self.splat_entries.numel())
        crow = torch.cat([(self.splat_crow[:-1][None] + (torch.arange(n, device=dev) * nnz)[:, None]).reshape(-1),
                          torch.tensor([n * nnz], device=dev)])
        entries = (self.splat_entries[None] + (torch.arange(n, device=dev) * nnz)[:, None]).reshape(-1)
        nb = self.blur_neighbors[None] + shift_m[:, None, None, None]  # (n, d+1, 2, m)
        nb = torch.where(self.blur_neighbors[None] >= m, n * m, nb).permute(1, 2, 0, 3).reshape(
            self.dim + 1, 2, n * m)
        return PermutohedralLattice(offsets=offsets, weights=self.weights.repeat(n, 1), splat_crow=crow,
                                    splat_entries=entries, blur_neighbors=nb.contiguous(), num_points=n * m,
                                    dim=self.dim)

    @property
    def alpha(self) -> float:
        """The slicing constant ``1 / (1 + 2^-d)`` of the released code."""
        return float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-self.dim)))


def _scale_factors(d: int) -> list[float]:
    # Same arithmetic as the C++: a float inv_std_dev, a double product, stored as float32.
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return [float(np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev)) for i in range(d)]


def grid_features(height: int, width: int, sxy: float, device: torch.device | str = "cpu") -> Tensor:
    """Position features ``(x / sxy, y / sxy)`` of an H×W grid, row-major, float32, shape ``(H*W, 2)``.

    Same values as ``DenseCRF2D.addPairwiseGaussian`` (float32 division of the integer coordinates).
    """
    s = torch.tensor(sxy, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device) / s
    ys = torch.arange(height, dtype=torch.float32, device=device) / s
    return torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)], dim=-1).reshape(-1, 2)


def bilateral_features(image_hwc: Tensor, sxy: float, srgb: float) -> Tensor:
    """Bilateral features ``(x/sxy, y/sxy, r/srgb, g/srgb, b/srgb)`` of ``(B, H, W, 3)`` images.

    ``image_hwc`` holds 0..255 colour values (uint8 or float). Returns ``(B, H*W, 5)`` float32: the
    values ``DenseCRF2D.addPairwiseBilateral`` computes.
    """
    b, h, w, _ = image_hwc.shape
    xy = grid_features(h, w, sxy, image_hwc.device).expand(b, h * w, 2)
    rgb = image_hwc.reshape(b, h * w, 3).to(torch.float32) / torch.tensor(
        srgb, dtype=torch.float32, device=image_hwc.device)
    return torch.cat([xy, rgb], dim=-1)


def _elevate(f: Tensor) -> Tensor:
    """Elevate ``(n, d)`` features onto the hyperplane ``sum = 0`` of R^(d+1); returns ``(d+1, n)``."""
    n, d = f.shape
    sf = _scale_factors(d)
    ft = f.t()
    elevated = torch.empty(d + 1, n, dtype=torch.float32, device=f.device)
    sm = torch.zeros(n, dtype=torch.float32, device=f.device)
    for j in range(d, 0, -1):
        cf = ft[j - 1] * sf[j - 1]
        torch.sub(sm, float(j) * cf, out=elevated[j])
        sm += cf
    elevated[0] = sm
    return elevated


def _lookup_sorted(uniq: Tensor, query: Tensor) -> Tensor:
    """Index of each ``query`` value in the sorted unique ``uniq`` (``len(uniq)`` where absent).

    A sort-merge join (one stable sort of both arrays), several times faster than ``searchsorted`` on CPU.
    """
    m = uniq.numel()
    sv, sp = torch.sort(torch.cat([uniq, query]), stable=True)
    pos = torch.arange(sv.numel(), device=sv.device)
    last_u = torch.where(sp < m, pos, -1).cummax(0).values  # latest uniq element at or before
    lu = last_u.clamp(min=0)
    match = (last_u >= 0) & (sv.index_select(0, lu) == sv)
    res = torch.where(match, sp.index_select(0, lu), m)
    out = torch.empty(sv.numel(), dtype=torch.int64, device=sv.device)
    out.scatter_(0, sp, res)
    return out[m:]


def build_lattice(features: Tensor, pad_like_pydensecrf: bool = True) -> PermutohedralLattice:
    """Build the permutohedral lattice of a batch of feature sets.

    Args:
        features: ``(B, N, d)`` features (already divided by their standard deviations), or ``(N, d)``
            for a single set. Computed in float32.
        pad_like_pydensecrf: add the zero-feature phantom points that pydensecrf's SSE builder inserts
            when ``N`` is not a multiple of 4 (they only relay values during the blur), so that results
            match the released code to float rounding.

    Returns:
        The lattice; pixel ``b * N + n`` is ``features[b, n]``.

    Shape:
        features: ``(B, N, d)`` or ``(N, d)``; the lattice covers ``P = B * N`` pixels.

    Examples:
        >>> lat = build_lattice(torch.zeros(1, 1), pad_like_pydensecrf=False)  # one point, d = 1
        >>> lat.num_points, lat.weights.tolist()
        (2, [[1.0, 0.0]])
    """
    check_tensor(features, "features", (2, 3), layout="(B, N, d) or (N, d)")
    if features.dtype == torch.bool or features.is_complex():
        raise TypeError(f"features must be a real tensor, got dtype {features.dtype}")
    if features.ndim == 2:
        features = features[None]
    if features.shape[1] == 0 or features.shape[2] == 0:
        raise ValueError(f"features must have shape (B, N, d) with N, d > 0, got {tuple(features.shape)}")
    # always checked (not only with the value checks on): a NaN/Inf feature has no lattice position and would
    # fail deep in the index arithmetic
    if features.is_floating_point() and not bool(torch.isfinite(features).all()):
        bad = ~torch.isfinite(features)
        raise ValueError(f"features contains non-finite values ({int(torch.isnan(features).sum())} NaN, "
                         f"{int(bad.sum()) - int(torch.isnan(features).sum())} Inf): every pixel needs a finite "
                         f"position in the lattice")
    features = features.to(torch.float32)
    nb, n, d = features.shape
    device = features.device
    d1 = d + 1
    i64 = torch.int64
    n_real = nb * n
    n_pad = (-n) % _SSE_BLOCK if pad_like_pydensecrf else 0
    f = features.reshape(n_real, d)
    batch = torch.arange(nb, device=device).repeat_interleave(n) if nb > 1 else None
    if n_pad:  # phantom pixels go after all real pixels (one block per image)
        f = torch.cat([f, f.new_zeros(nb * n_pad, d)])
        if batch is not None:
            batch = torch.cat([batch, torch.arange(nb, device=device).repeat_interleave(n_pad)])
    npts = f.shape[0]

    el = _elevate(f)  # (d+1, P')
    inv_d1 = float(np.float32(1.0) / np.float32(d1))
    # Nearest remainder-0 point: round(y / (d+1)); torch.round rounds half to even like the SSE code.
    qbase = torch.round(el * inv_d1)
    diff = el - qbase * d1
    csum = qbase.sum(0).to(i64)  # exact: small integers
    # Ranks with the released tie-breaking: for i < j, rank[i] += diff_i < diff_j, else rank[j] += 1.
    rank = csum.expand(d1, npts).clone()
    for i in range(d1):
        for j in range(i + 1, d1):
            c = diff[i] < diff[j]
            rank[i] += c
            rank[j] += ~c
    under = rank < 0
    over = rank >= d1
    rank += d1 * under
    rank -= d1 * over
    qbase += under.to(torch.float32)
    qbase -= over.to(torch.float32)

    # Barycentric coordinates.
    vb = (el - qbase * d1) * inv_d1
    bary = torch.zeros(d + 2, npts, dtype=torch.float32, device=device)
    bary.scatter_add_(0, d - rank, vb)
    bary.scatter_add_(0, d - rank + 1, -vb)
    bary[0] += 1.0 + bary[d + 1]
    weights = bary[:d1, :n_real].t().contiguous()
    del bary, vb, el, diff

    # Vertex r has key_i = (d+1) qbase_i + r - (d+1) [rank_i > d - r], i.e. q_i = qbase_i - [rank_i >= d+1-r]
    # and code = r + (d+1) * (sum_i (q_i - lo_i) stride_i + image * total). Vertex and neighbour q_i lie in
    # [min qbase_i - 2, max qbase_i + 1], so every code used below is in [0, max_code).
    qb = qbase[:d].to(i64)
    lo = qb.amin(1) - 2
    sizes = (qb.amax(1) - lo + 2).tolist()
    strides = []
    total = 1
    for s in sizes:
        strides.append(total)
        total *= int(s)
    max_code = d1 * total * nb
    if max_code >= 2**62:
        raise ValueError(f"permutohedral lattice key space too large ({float(max_code):.3g} codes): the "
                         "features span too many lattice cells; use larger standard deviations")
    code_dtype = torch.int32 if max_code < 2**31 - 1 else i64
    stride_t = torch.tensor(strides, dtype=i64, device=device)
    base = ((qb - lo[:, None]) * stride_t[:, None]).sum(0)
    if batch is not None:
        base += batch * total
    base *= d1
    # inv_rank[t] = coordinate with rank t; vertex r drops (d+1) stride_i for the coordinates i (< d)
    # with rank >= d+1-r.
    inv_rank = torch.empty_like(rank)
    inv_rank.scatter_(0, rank, torch.arange(d1, device=device)[:, None].expand(d1, npts))
    stride_ext = torch.cat([stride_t * d1, stride_t.new_zeros(1)])
    drop = stride_ext.index_select(0, inv_rank[1:].flip(0).reshape(-1)).view(d, npts).cumsum_(0)
    codes = torch.empty(npts, d1, dtype=code_dtype, device=device)
    codes[:, 0] = base
    codes[:, 1:] = (base + torch.arange(1, d1, device=device)[:, None] - drop).t()
    del drop, inv_rank, rank, qb, qbase, base

    # One stable sort: lattice points, pixel -> point indices, splat groups.
    sorted_codes, perm = torch.sort(codes.view(-1), stable=True)
    del codes
    n_entries = sorted_codes.numel()
    is_new = torch.ones(n_entries, dtype=torch.bool, device=device)
    torch.ne(sorted_codes[1:], sorted_codes[:-1], out=is_new[1:])
    starts = torch.nonzero(is_new).squeeze(1)
    m = int(starts.numel())
    uniq = sorted_codes.index_select(0, starts)
    first_entry = perm.index_select(0, starts)
    n_real_entries = n_real * d1
    if n_pad:
        point = torch.cumsum(is_new, 0) - 1
        real = perm < n_real_entries
        splat_entries = perm[real]
        point_real = point[real]
        counts = torch.bincount(point_real, minlength=m)
        del point, real
    else:
        splat_entries = perm
        point_real = torch.cumsum(is_new, 0) - 1
        counts = torch.diff(starts, append=starts.new_full((1,), n_entries))
    inv = torch.empty(n_real_entries, dtype=i64, device=device)
    inv.scatter_(0, splat_entries, point_real)
    del sorted_codes, is_new, point_real, perm

    # Renumber points by first appearance in pixel order (the released hash-table order): neighbouring
    # points then sit close in memory during the blur.
    src = torch.arange(m, device=device)
    order = torch.argsort(first_entry)  # new id -> old id
    new_id = torch.empty(m + 1, dtype=i64, device=device)
    new_id.scatter_(0, order, src)
    new_id[m] = m
    offsets = new_id.index_select(0, inv).view(n_real, d1)
    counts_new = counts.index_select(0, order)
    crow = torch.zeros(m + 1, dtype=i64, device=device)
    torch.cumsum(counts_new, 0, out=crow[1:])
    old_crow = torch.zeros(m + 1, dtype=i64, device=device)
    torch.cumsum(counts, 0, out=old_crow[1:])
    shift = torch.repeat_interleave(old_crow.index_select(0, order) - crow[:-1], counts_new,
                                    output_size=n_real_entries)
    shift += torch.arange(n_real_entries, device=device)
    splat_entries = splat_entries.index_select(0, shift)
    del shift, inv, counts, counts_new, old_crow

    # Blur neighbours: n1 = key - 1 + (d+1) e_j (j < d) or key - 1 (j = d); in (r, q): for r >= 1,
    # r - 1 and q_j + 1; for r == 0, r = d and q - 1 except q_j. n2 (the opposite direction) is n1's
    # inverse. Missing neighbours are m.
    codes_new = uniq.index_select(0, order).to(i64)
    r0 = (codes_new % d1) == 0
    s_sum = int(sum(strides))
    delta = torch.tensor([[d1 * strides[j] - 1 if j < d else -1 for j in range(d1)],
                          [d + d1 * ((strides[j] if j < d else 0) - s_sum) for j in range(d1)]],
                         dtype=i64, device=device)  # (2, d+1): [r >= 1, r == 0]
    query = (codes_new[None, :] + delta[r0.to(i64)].t()).reshape(-1)  # (d+1) * m
    if max_code <= max(_TABLE_MAX, 4 * n_entries):  # small key space: direct table lookup
        table = torch.full((max_code,), m, dtype=i64, device=device)
        table.scatter_(0, uniq.to(i64), src)
        n1_old = table.index_select(0, query)
        del table
    else:
        n1_old = _lookup_sorted(uniq, query.to(code_dtype))
    n1 = new_id.index_select(0, n1_old).view(d1, m)
    n2 = torch.full((d1, m + 1), m, dtype=i64, device=device)
    n2.scatter_(1, n1, src.expand(d1, m))
    nbr = torch.stack([n1, n2[:, :m]], dim=1)  # (d+1, 2, m)
    return PermutohedralLattice(offsets=offsets, weights=weights, splat_crow=crow,
                                splat_entries=splat_entries, blur_neighbors=nbr, num_points=m, dim=d)


class _KernelPlan:
    """Weighted-gather plans for one lattice: splat, d+1 blur steps, slice (``embedding_bag`` sums).

    ``set_scaling(pre, post, scale)`` folds a per-pixel pre-scaling (before splat), a per-pixel
    post-scaling (after slice) and a constant into the splat and slice weights.
    """

    def __init__(self, lat: PermutohedralLattice) -> None:
        d1 = lat.dim + 1
        m = lat.num_points
        e = lat.splat_entries
        device = e.device
        self.dim = lat.dim
        self.num_points = m
        self.splat_idx = torch.div(e, d1, rounding_mode="floor")
        self.splat_crow = lat.splat_crow
        self._splat_w0 = lat.weights.view(-1).index_select(0, e)
        nb = lat.blur_neighbors  # (d1, 2, m); m = missing -> read self with weight 0
        missing = nb >= m
        selfidx = torch.arange(m, device=device).expand(d1, 1, m)
        idx = torch.cat([selfidx, torch.where(missing, selfidx, nb)], dim=1)
        w = torch.cat([torch.ones(d1, 1, m, device=device), (~missing).to(torch.float32) * 0.5], dim=1)
        self.blur_idx = idx.transpose(1, 2).contiguous()  # (d1, m, 3)
        self.blur_w = w.transpose(1, 2).contiguous()
        self.slice_idx = lat.offsets
        self._slice_w0 = lat.weights * lat.alpha
        self.splat_w = self._splat_w0
        self.slice_w = self._slice_w0

    def set_scaling(self, pre: Tensor | None, post: Tensor | None, scale: float) -> None:
        self.splat_w = self._splat_w0 * pre.index_select(0, self.splat_idx) if pre is not None \
            else self._splat_w0
        post_s = post * scale if post is not None else None
        if post_s is not None:
            self.slice_w = self._slice_w0 * post_s[:, None]
        else:
            self.slice_w = self._slice_w0 * scale

    def splat(self, values: Tensor) -> Tensor:
        return F.embedding_bag(self.splat_idx, values, self.splat_crow, mode="sum",
                               per_sample_weights=self.splat_w, include_last_offset=True)

    def blur(self, buf: Tensor) -> Tensor:
        for j in range(self.dim + 1):
            buf = F.embedding_bag(self.blur_idx[j], buf, mode="sum", per_sample_weights=self.blur_w[j])
        return buf

    def slice(self, buf: Tensor) -> Tensor:
        return F.embedding_bag(self.slice_idx, buf, mode="sum", per_sample_weights=self.slice_w)

    def __call__(self, values: Tensor) -> Tensor:
        return self.slice(self.blur(self.splat(values)))


def lattice_filter(lattice: PermutohedralLattice, values: Tensor) -> Tensor:
    """Gaussian-filter ``(P, K)`` pixel values through one lattice (splat, blur, slice), unnormalised.

    This is ``Permutohedral::compute`` of the released code: the output includes each pixel's own
    contribution and the ``1 / (1 + 2^-d)`` slicing constant.

    Shape:
        values: ``(P, K)`` with ``P = lattice.num_pixels``; output ``(P, K)`` float32.

    Examples:
        >>> lat = build_lattice(torch.zeros(1, 1), pad_like_pydensecrf=False)
        >>> round(float(lattice_filter(lat, torch.ones(1, 1))), 4)  # 1.25 after the blur, times 2/3
        0.8333
    """
    _check_values(values, "values", lattice.num_pixels, "lattice.num_pixels")
    return _KernelPlan(lattice)(values.to(torch.float32))


def _check_values(values: object, name: str, num_pixels: int, what: str) -> None:
    """``values`` must be a real ``(P, K)`` tensor with one row per lattice pixel: extra rows are not dropped."""
    check_tensor(values, name, 2, layout="(P, K)")
    assert isinstance(values, Tensor)
    if values.dtype == torch.bool or values.is_complex():
        raise TypeError(f"{name} must be a real tensor, got dtype {values.dtype}")
    if values.shape[0] != num_pixels:
        raise ValueError(f"{name} must have one row per lattice pixel: {num_pixels} rows ({what}), got "
                         f"{shape_str(values)}")
    check_finite(values, name)


class PairwiseOperator:
    """The mean-field message ``Q -> sum_k w_k n_k K_k(n_k Q)`` over one or more lattices.

    The normalisation, the slicing constant and the Potts weights are folded into the splat and slice
    weights once, so an application costs one splat, d_k + 1 blur steps and one slice per kernel.

    Args:
        lattices: lattices over the same ``P`` pixels (one per pairwise kernel).
        weights: Potts weight of each kernel (``compat`` in pydensecrf).
        normalization: ``"symmetric"`` (pydensecrf ``NORMALIZE_SYMMETRIC``, the default of
            ``DenseCRF2D``), ``"after"`` (``NORMALIZE_AFTER``: divide by ``K(1)`` after filtering),
            ``"before"`` (``NORMALIZE_BEFORE``) or ``"none"`` (``NO_NORMALIZATION``: the raw filter; the
            released code computes a mean factor for it but never applies it).
    """

    def __init__(self, lattices: Sequence[PermutohedralLattice], weights: Sequence[float],
                 normalization: str = "symmetric") -> None:
        if not lattices or len(lattices) != len(weights):
            raise ValueError(f"need one weight per lattice, got {len(lattices)} lattices and "
                             f"{len(weights)} weights")
        check_choice(normalization, "normalization", _NORMALIZATIONS)
        p = lattices[0].num_pixels
        self.plans: list[_KernelPlan] = []
        for lat, w in zip(lattices, weights):
            if lat.num_pixels != p:
                raise ValueError(f"all lattices must cover the same pixels, got {lat.num_pixels} and {p}")
            plan = _KernelPlan(lat)
            pre: Tensor | None = None
            post: Tensor | None = None
            if normalization != "none":  # NO_NORMALIZATION: the released code computes a factor, unused
                k1 = plan(torch.ones(p, 1, device=lat.offsets.device))[:, 0].double() + 1e-20
                if normalization == "symmetric":
                    pre = post = torch.rsqrt(k1).float()
                elif normalization == "after":
                    post = (1.0 / k1).float()
                else:
                    pre = (1.0 / k1).float()
            plan.set_scaling(pre, post, float(w))
            self.plans.append(plan)
        self.num_pixels = p

    def __call__(self, q: Tensor) -> Tensor:
        """Messages ``(P, K)`` for marginals ``q`` ``(P, K)`` (float32)."""
        out = self.plans[0](q)
        for plan in self.plans[1:]:
            out += plan(q)
        return out


def mean_field(unary: Tensor, operator: PairwiseOperator, iterations: int) -> Tensor:
    """Mean-field inference of pydensecrf ``DenseCRF.inference`` (Potts compatibility).

    ``Q0 = softmax(-U)``, then ``iterations`` times ``Q = softmax(-U + operator(Q))``.

    Args:
        unary: ``(P, K)`` float32 unary energies (negative log probabilities).
        operator: the pairwise operator over the same ``P`` pixels.
        iterations: number of mean-field updates (0 returns ``softmax(-U)``).

    Returns:
        ``(P, K)`` float32 marginals.

    Examples:
        >>> lat = build_lattice(torch.rand(6, 2))
        >>> q = mean_field(torch.rand(6, 3), PairwiseOperator([lat], [3.0]), iterations=5)
        >>> q.shape, bool(torch.allclose(q.sum(1), torch.ones(6)))
        (torch.Size([6, 3]), True)
    """
    if not isinstance(operator, PairwiseOperator):
        raise TypeError(f"operator must be a PairwiseOperator, got {type(operator).__name__}")
    check_int(iterations, "iterations", minimum=0)
    _check_values(unary, "unary", operator.num_pixels, "operator.num_pixels")
    if not unary.is_floating_point():
        raise TypeError(f"unary must be a floating-point tensor of energies, got dtype {unary.dtype}")
    if unary.shape[1] == 0:
        raise ValueError(f"unary must have at least one label (K >= 1), got shape {shape_str(unary)}")
    neg_u = -unary.to(torch.float32)
    q = torch.softmax(neg_u, dim=1)
    for _ in range(iterations):
        msg = operator(q)
        msg += neg_u
        q = torch.softmax(msg, dim=1)
    return q
