"""Segmentation metrics: confusion matrix, IoU / mIoU, accuracy and background-score sweeps.

Diagnostics of *where* a mask is right, for data with part or boundary ground truth: `region_coverage_counts`
/ `RegionCoverage` (recall and foreground rate inside given regions, e.g. the head and the body of the synthetic
creatures, or the background) and `boundary_counts` / `boundary_band` / `BoundaryMetric` (boundary F-score
within a pixel tolerance and the trimap mIoU in a band around the ground-truth boundaries).

Policies (see the *Conventions* docs page):

- one confusion matrix is accumulated over the whole dataset (never a per-image average);
- rows are ground truth, columns are predictions, int64 counts;
- ground-truth pixels equal to ``ignore_index`` (255 on VOC) are dropped;
- ``average="union"`` (default, as torchmetrics ``MulticlassJaccardIndex``) averages IoU over classes
  whose union is non-empty; ``average="gt"`` averages over classes with at least one ground-truth pixel
  (ToCo/AFA ``utils/evaluate.py`` ``scores``). They agree whenever every predicted class is in the GT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ._checks import (
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_masks,
    check_tensor,
    checks_enabled,
    shape_str,
)

__all__ = [
    "confusion_matrix",
    "scores_from_confusion",
    "SegmentationMetric",
    "BgScoreSweep",
    "SweepResult",
    "sweep_bg_score",
    "DEFAULT_BG_SCORES",
    "region_coverage_counts",
    "RegionCoverage",
    "label_boundaries",
    "boundary_band",
    "boundary_counts",
    "BoundaryMetric",
]

PredIgnore = Literal["error", "drop", "background"]

DEFAULT_BG_SCORES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))
"""Background scores swept by default: 0.00, 0.05, ..., 0.95."""


def _bad_value(x: Tensor, name: str, num_classes: int, ignore_index: int | None) -> ValueError:
    valid = (x >= 0) & (x < num_classes)
    if ignore_index is not None:
        valid |= x == ignore_index
    bad = x[~valid]
    extra = f" and ignore_index {ignore_index}" if ignore_index is not None else ""
    return ValueError(f"{name} has value {int(bad[0])} outside [0, {num_classes - 1}]{extra}")


def _check_int_tensor(x: object, name: str) -> Tensor:
    x = check_tensor(x, name)
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x


def _fits_byte(x: Tensor) -> bool:
    if x.dtype == torch.uint8:
        return True
    lo, hi = torch.aminmax(x)
    return int(lo) >= 0 and int(hi) <= 255


def _confusion_small_values(p: Tensor, g: Tensor, K: int, ignore_index: int | None,
                            pred_ignore: PredIgnore) -> Tensor | None:
    """Fast path for label values in [0, 255]: one int32 index ``256·g + p`` and one bincount.

    The 256×256 histogram holds everything: rows ≥ K other than the ignore row are invalid targets,
    columns ≥ K other than a tolerated ignore column are invalid predictions. Returns None when the
    values or the ignore index do not fit the 8-bit layout (the general path then runs).
    """
    if K > 256 or (ignore_index is not None and not K <= ignore_index <= 255):
        return None
    if not (_fits_byte(g) and _fits_byte(p)):
        return None
    hist = torch.bincount(g.int() * 256 + p.int(), minlength=65536).view(256, 256)
    rows = hist.sum(1)
    rows[:K] = 0
    if ignore_index is not None:
        rows[ignore_index] = 0
    if bool(rows.any()):
        raise _bad_value(g, "target", K, ignore_index)
    cols = hist.sum(0)
    cols[:K] = 0
    if ignore_index is not None and pred_ignore != "error":
        cols[ignore_index] = 0
    if bool(cols.any()):
        bad = int(torch.nonzero(cols)[0, 0])
        raise ValueError(f"pred has value {bad} outside [0, {K - 1}]")
    cm = hist[:K, :K].clone().long()
    if ignore_index is not None and pred_ignore == "background":
        cm[:, 0] += hist[:K, ignore_index]
    return cm


def confusion_matrix(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    pred_ignore: PredIgnore = "error",
) -> Tensor:
    """Confusion matrix of integer label maps (rows = target, cols = prediction), int64, on the input device.

    Args:
        pred: predicted labels in ``[0, num_classes)``.
        target: ground-truth labels in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: number of classes including background (21 on VOC).
        ignore_index: ground-truth value that is not scored (``None``: none).
        pred_ignore: what to do with predictions equal to ``ignore_index``: ``"error"`` (default),
            ``"drop"`` (ignore those pixels, AFA ``pseudo_scores``) or ``"background"`` (count them as
            class 0, IRN ``eval_sem_seg``).

    Shape:
        - pred, target: any identical shape, e.g. B×H×W
        - output: num_classes×num_classes int64

    Examples:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]), 2)
        tensor([[1, 0],
                [0, 1]])
    """
    pred = _check_int_tensor(pred, "pred")
    target = _check_int_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {shape_str(pred)} and "
                         f"{shape_str(target)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    check_choice(pred_ignore, "pred_ignore", ("error", "drop", "background"))
    K = num_classes
    if target.numel() == 0:
        return torch.zeros(K, K, dtype=torch.long, device=target.device)
    fast = _confusion_small_values(pred.reshape(-1), target.reshape(-1), K, ignore_index, pred_ignore)
    if fast is not None:
        return fast
    g = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    # ignored ground truth goes to an extra row K that is dropped at the end
    if ignore_index is not None:
        g = torch.where(g == ignore_index, K, g)
    lo, hi = torch.aminmax(g)
    if int(lo) < 0 or int(hi) > K or (ignore_index is None and int(hi) == K):
        raise _bad_value(target, "target", K, ignore_index)
    if ignore_index is not None and pred_ignore != "error":
        p_ign = p == ignore_index
        p = p.masked_fill(p_ign, 0)
        if pred_ignore == "drop":
            g = g.masked_fill(p_ign, K)
    lo, hi = torch.aminmax(p)
    if int(lo) < 0 or int(hi) >= K:
        raise _bad_value(p, "pred", K, None)
    counts = torch.bincount(g * K + p, minlength=(K + 1) * K)
    return counts[: K * K].reshape(K, K)


def scores_from_confusion(confmat: Tensor, average: Literal["union", "gt"] = "union") -> dict[str, Tensor]:
    """IoU per class, mIoU, pixel accuracy and mean accuracy from a confusion matrix.

    Classes excluded from the mean get IoU ``nan`` in the per-class vector. A matrix with a negative count,
    or with no count at all (nothing was scored), raises ``ValueError``.

    Returns:
        dict with ``iou`` (K float64, nan where excluded), ``miou``, ``pixel_acc``, ``mean_acc``
        (0-d float64 tensors, fractions in [0, 1]).

    Examples:
        >>> s = scores_from_confusion(torch.tensor([[3, 1], [0, 4]]))
        >>> round(float(s["miou"]), 4)
        0.775
    """
    check_tensor(confmat, "confmat", 2, layout="K×K")
    if confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be square, got {shape_str(confmat)}")
    if confmat.dtype == torch.bool or confmat.is_complex():
        raise TypeError(f"confmat must hold counts (an integer or floating-point tensor), got dtype {confmat.dtype}")
    check_choice(average, "average", ("union", "gt"))
    check_finite(confmat, "confmat")
    cm = confmat.double()
    # always checked (not a switchable value check), like the class indices of confusion_matrix: a negative
    # count or an empty matrix would give a wrong or NaN score without an error
    if cm.numel() and float(cm.min()) < 0:
        raise ValueError(f"confmat holds counts, which cannot be negative; got min {float(cm.min()):g}")
    if not bool((cm > 0).any()):
        raise ValueError(f"confmat counts no pixel (all {confmat.shape[0]}×{confmat.shape[1]} entries are 0): "
                         f"the scores of an empty evaluation are undefined; check that the split is not empty "
                         f"and not entirely ignore_index")
    tp = cm.diagonal()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    valid = union > 0 if average == "union" else gt > 0
    iou = torch.where(valid, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    has_gt = gt > 0
    acc = torch.where(has_gt, tp / gt.clamp_min(1), torch.full_like(tp, float("nan")))
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=cm.device)
    return {
        "iou": iou,
        "miou": iou[valid].mean() if bool(valid.any()) else nan,
        "pixel_acc": tp.sum() / total if total > 0 else nan,
        "mean_acc": acc[has_gt].mean() if bool(has_gt.any()) else nan,
    }


class SegmentationMetric(nn.Module):
    """Dataset-level segmentation metric accumulated in one confusion matrix (a buffer, so ``.to()`` works).

    Examples:
        >>> m = SegmentationMetric(num_classes=3)
        >>> m.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
        >>> round(float(m.compute()["miou"]), 4)
        0.5
    """

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 average: Literal["union", "gt"] = "union", pred_ignore: PredIgnore = "error") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.average: Literal["union", "gt"] = average
        self.pred_ignore: PredIgnore = pred_ignore
        self.register_buffer("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long))

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions (any shape equal to ``target``'s)."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index, self.pred_ignore)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """Scores over everything seen since the last [`reset`][]."""
        return scores_from_confusion(self.confmat, self.average)

    def reset(self) -> None:
        """Zero the accumulated confusion matrix."""
        self.confmat.zero_()

    def sync(self) -> None:
        """Sum the confusion matrix over processes when ``torch.distributed`` is initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.confmat)


@dataclass
class SweepResult:
    """Result of a background-score sweep ([`sweep_bg_score`][], [`BgScoreSweep`][]).

    Attributes:
        bg_scores: the constant background scores tried, increasing.
        miou: the mIoU at each score.
        best_bg_score: the score with the highest mIoU (the first on ties).
        best_miou: that mIoU.
        confmats: T×K×K int64 confusion matrices, one per score.
    """

    bg_scores: list[float]
    miou: list[float]
    best_bg_score: float
    best_miou: float
    confmats: Tensor

    def table(self) -> str:
        """A printable two-column table with the best row marked."""
        lines = ["bg_score  mIoU(%)"]
        for t, m in zip(self.bg_scores, self.miou):
            mark = "  <- best" if t == self.best_bg_score else ""
            lines.append(f"{t:8.2f}  {100 * m:7.2f}{mark}")
        return "\n".join(lines)


def _check_finite_fast(x: Tensor, name: str) -> None:
    """`check_finite` at the cost of one sum.

    A finite sum proves every value finite (NaN and Inf propagate); only a non-finite sum (or an overflow) runs
    the full check, which raises or passes.
    """
    if checks_enabled() and x.is_floating_point() and x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(x, name)


def _present_max(cams: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Largest float32 CAM value over the present classes and its class, per pixel.

    Equal to ``cams.float().masked_fill(~present, -inf).max(1)`` (values, and the first maximal class) but
    reads only the present channels: each image's present classes in increasing order, padded with its
    first present class (a repeat changes neither the max nor the first maximal class), scanned with a
    strict ``>`` so ties keep the earlier class. Images with no present class get ``-inf`` and class 0,
    as the masked max does.

    Shape:
        - cams: B×C×H×W; present: B×C bool
        - output: B×H×W float32 values and B×H×W int32 classes
    """
    B, C = present.shape
    n_present = present.sum(1)
    P = max(1, int(n_present.max()))
    order = torch.arange(C, device=present.device)
    idx = torch.where(present, order, order + C).argsort(1)[:, :P]  # present classes first, in class order
    idx = torch.where(order[:P] < n_present[:, None], idx, idx[:, :1]).int()
    rows = (torch.arange(B, device=idx.device, dtype=torch.int32)[:, None] * C + idx).flatten()
    sel = cams.reshape(B * C, *cams.shape[2:]).index_select(0, rows).view(B, P, *cams.shape[2:]).float()
    m, a = sel[:, 0], idx[:, :1, None].expand(B, *sel.shape[2:])
    for k in range(1, P):  # arithmetic updates: much faster than torch.where on the CPU
        v = sel[:, k]
        upd = (v > m).int()
        m = torch.maximum(m, v)  # = where(v > m, v, m) for finite values, but for the sign of a zero
        a = a + upd * (idx[:, k, None, None] - a)
    empty = n_present == 0
    if bool(empty.any()):
        m = m.masked_fill(empty[:, None, None], float("-inf"))
        a = a.masked_fill(empty[:, None, None], 0)
    return m, a


def _order_bucket(x: Tensor) -> Tensor:
    """The top 16 bits of an order-preserving integer key of float32 values, as int32 in [0, 65535].

    Float32 bit patterns read as int32 grow with the value for x >= 0 and shrink for x < 0; flipping the
    31 low bits of negative patterns makes the key monotone (``x + 0.0`` first maps -0.0 to +0.0). So
    ``x < y`` implies ``bucket(x) <= bucket(y)``.
    """
    bits = (x.float() + 0.0).view(torch.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key >> 16) + 32768


def _bucket_table(t: Tensor) -> tuple[Tensor, Tensor, int]:
    """Lookup tables for `_count_below`.

    Per bucket the number of thresholds in lower buckets, the thresholds padded with +inf, and the most
    thresholds any one bucket holds.
    """
    tb = _order_bucket(t).long()
    below = torch.searchsorted(tb, torch.arange(65536, device=t.device), right=False).int()
    most = int(torch.bincount(tb, minlength=65536).max())
    return below, torch.cat([t, t.new_full((most,), float("inf"))]), most


def _count_below(table: tuple[Tensor, Tensor, int], m: Tensor) -> Tensor:
    """``torch.searchsorted(t, m, right=False)``, i.e.

    how many thresholds ``t`` lie strictly below each float32 value ``m``, as int32, given ``table = _bucket_table(t)``.

    A lookup on the value's 16-bit order bucket gives the number of thresholds in lower buckets (all below
    ``m``; those in higher buckets are all above), then the few thresholds in its own bucket are compared
    exactly. Exact for every finite or infinite value, at a fraction of the binary search's cost.
    """
    below, padded, most = table
    base = below.index_select(0, _order_bucket(m).flatten())
    flat = m.flatten()
    j = base
    for r in range(most):
        j = j + (padded.index_select(0, base + r) < flat)
    return j.view(m.shape)


class BgScoreSweep(nn.Module):
    """Accumulates one confusion matrix per background score in a single pass over the data.

    For each pixel the largest present-class CAM value ``m`` and its class ``a`` are computed once; the
    prediction for background score ``t`` is ``a + 1`` if ``m > t`` and 0 otherwise (exactly
    [`wsss_blocks.cam.cams_to_mask`][wsss_blocks.cam.cams_to_mask]). Counts are binned by how many scores lie below
    ``m``, so all T confusion matrices cost O(pixels + T·K²) instead of T passes, and every one is exact.
    An update reads only the present classes' maps, finds the score bin with a table lookup on the
    value's float32 bit pattern, and counts with one int32 index and one ``bincount`` (a few ms for a
    375×500 image with 21 classes on one CPU thread, whatever the number of scores).

    Examples:
        >>> sw = BgScoreSweep(num_classes=2, bg_scores=(0.1, 0.5))
        >>> cams = torch.tensor([[[[0.3, 0.9]]]])
        >>> sw.update(cams, torch.ones(1, 1), torch.tensor([[[0, 1]]]))
        >>> sw.compute().best_bg_score
        0.5
    """

    counts: Tensor

    def __init__(self, num_classes: int, bg_scores: Sequence[float] = DEFAULT_BG_SCORES,
                 ignore_index: int | None = 255, average: Literal["union", "gt"] = "union") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        if len(bg_scores) == 0:
            raise ValueError("bg_scores must not be empty")
        ts = [float(t) for t in bg_scores]
        if sorted(ts) != ts or len(set(ts)) != len(ts):
            raise ValueError(f"bg_scores must be strictly increasing, got {ts}")
        self.num_classes = num_classes
        self.bg_scores = ts
        self.ignore_index = ignore_index
        self.average: Literal["union", "gt"] = average
        T, K = len(ts), num_classes
        self.register_buffer("_t", torch.tensor(ts, dtype=torch.float32), persistent=False)
        below, padded, most = _bucket_table(self.get_buffer("_t"))
        self.register_buffer("_below", below, persistent=False)  # lookup tables of the threshold binning
        self.register_buffer("_padded", padded, persistent=False)
        self._most = most  # thresholds per 16-bit value bucket, at most (1 for any 0.01-spaced grid in [0, 1])
        # counts[g, a, j]: GT class g, best present fg class a (0..K-2), j = #thresholds strictly below m
        self.register_buffer("counts", torch.zeros(K, K - 1, T + 1, dtype=torch.long))

    def update(self, cams: Tensor, labels: Tensor | None, target: Tensor) -> None:
        """Add a batch: ``cams`` B×C×H×W (C = num_classes - 1), ``labels`` B×C, ``target`` B×H×W."""
        check_tensor(cams, "cams", 4, layout="B×C×H×W", floating=True)
        _check_finite_fast(cams, "cams")
        C = self.num_classes - 1
        if cams.shape[1] != C:
            raise ValueError(f"cams has {cams.shape[1]} classes, expected {C} (num_classes - 1)")
        check_tensor(target, "target", 3, layout="B×H×W")
        if target.shape != (cams.shape[0], *cams.shape[2:]):
            raise ValueError(f"target must have shape {(cams.shape[0], *cams.shape[2:])} to match cams, "
                             f"got {shape_str(target)}")
        check_masks(target, "target", self.num_classes, self.ignore_index)
        if labels is not None:
            present = check_labels(labels, "labels", batch=cams.shape[0], num_classes=C).to(cams.device).bool()
        else:
            present = torch.ones(cams.shape[0], C, dtype=torch.bool, device=cams.device)
        if cams.numel() == 0:
            return
        m, a = _present_max(cams, present)  # B×H×W: largest present-class value, its class
        if self._most <= 4:  # j = how many thresholds lie strictly below m
            table = (self.get_buffer("_below").to(cams.device), self.get_buffer("_padded").to(cams.device),
                     self._most)
            j = _count_below(table, m)
        else:  # thresholds packed closer than the 16-bit buckets resolve: binary search
            t = self.get_buffer("_t").to(cams.device)
            j = torch.searchsorted(t, m.contiguous().flatten(), right=False).view_as(m)
        K, T1 = self.num_classes, len(self.bg_scores) + 1
        # one index and one bincount; pixels whose GT is not a class (ignore) go to an extra row K, dropped
        n_bins = (K + 1) * C * T1
        itype = torch.int32 if n_bins < 2**31 else torch.int64
        g = target if target.dtype == torch.int64 else target.to(torch.int32)
        g = g.clamp(-1, K).to(itype)
        g = g + (g < 0).to(itype) * (K + 1)  # rows: the class, or K for every value outside [0, K)
        idx = (g * C + a.to(itype)) * T1 + j.to(itype)
        binc = torch.bincount(idx.flatten(), minlength=n_bins)[: K * C * T1]
        self.counts += binc.view(K, C, T1).to(self.counts.device)

    def confmats(self) -> Tensor:
        """T×K×K confusion matrices, one per background score."""
        K, T = self.num_classes, len(self.bg_scores)
        # a pixel is foreground for threshold i iff j > i: suffix sums over j
        suffix = self.counts.flip(-1).cumsum(-1).flip(-1)  # suffix[..., i] = sum_{j >= i}
        fg = suffix[:, :, 1:].permute(2, 0, 1)  # T×K×C: pixels predicted as class a+1
        total = self.counts.sum(-1)  # K×C
        out = torch.zeros(T, K, K, dtype=torch.long, device=self.counts.device)
        out[:, :, 1:] = fg
        out[:, :, 0] = (total.unsqueeze(0) - fg).sum(-1)
        return out

    def compute(self) -> SweepResult:
        """MIoU of every background score and the best one (see `SweepResult`)."""
        cms = self.confmats()
        mious = [float(scores_from_confusion(cm, self.average)["miou"]) for cm in cms]
        finite = [m if m == m else -1.0 for m in mious]
        best = max(range(len(mious)), key=lambda i: finite[i])
        return SweepResult(self.bg_scores, mious, self.bg_scores[best], mious[best], cms)

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self.counts.zero_()


def sweep_bg_score(
    data: Iterable[tuple[Tensor, Tensor | None, Tensor]] | tuple[Tensor, Tensor | None, Tensor],
    num_classes: int,
    bg_scores: Sequence[float] = DEFAULT_BG_SCORES,
    ignore_index: int | None = 255,
    average: Literal["union", "gt"] = "union",
) -> SweepResult:
    """Evaluate CAMs against ground truth for every background score in one pass; return the table and the best.

    Args:
        data: either one ``(cams, labels, target)`` triple of batched tensors or an iterable of such
            triples (e.g. one per image, so CAMs of different sizes can be streamed). ``cams`` should be
            normalised to [0, 1] ([`wsss_blocks.cam.normalize_cams`][wsss_blocks.cam.normalize_cams]).
        num_classes: number of classes including background (21 on VOC).
        bg_scores: constant background scores to try, strictly increasing.
        ignore_index: ground-truth label left out of the scores (255).
        average: ``"union"`` (mean over classes with a non-empty union) or ``"gt"`` (over classes with a
            ground-truth pixel); see the module docstring.

    Shape:
        - cams: B×C×H×W with C = num_classes - 1; labels: B×C; target: B×H×W

    Examples:
        >>> cams = torch.tensor([[[[0.3, 0.9]]]])
        >>> r = sweep_bg_score((cams, torch.ones(1, 1), torch.tensor([[[0, 1]]])), 2, (0.1, 0.5))
        >>> r.best_bg_score, r.best_miou
        (0.5, 1.0)
    """
    sweep = BgScoreSweep(num_classes, bg_scores, ignore_index, average)
    if isinstance(data, tuple) and len(data) == 3 and isinstance(data[0], Tensor):
        items: Iterable[tuple[Tensor, Tensor | None, Tensor]] = [data]
    else:
        items = data
    moved = False
    for cams, labels, target in items:
        if not moved:
            sweep.to(cams.device)
            moved = True
        sweep.update(cams, labels, target)
    return sweep.compute()


# ------------------------------------------------------------------------------------------------------------
# where a mask is right: coverage of given regions, boundaries
# ------------------------------------------------------------------------------------------------------------
def _check_label_map(x: object, name: str) -> Tensor:
    """An integer label map that is not empty and holds no negative label (labels and ignore are >= 0)."""
    m = _check_int_tensor(x, name)
    if m.numel() == 0:
        raise ValueError(f"{name} is empty (shape {shape_str(m)})")
    if checks_enabled() and int(m.min()) < 0:
        raise ValueError(f"{name} has negative value {int(m.min())}; labels and ignore_index are >= 0")
    return m


def _check_pair(pred: object, target: object) -> tuple[Tensor, Tensor]:
    p = _check_label_map(pred, "pred_mask")
    t = _check_label_map(target, "target_mask")
    if p.shape != t.shape:
        raise ValueError(f"pred_mask and target_mask must have the same shape, got {shape_str(p)} and {shape_str(t)}")
    if p.ndim not in (2, 3):
        raise ValueError(f"pred_mask must be H×W or B×H×W, got {shape_str(p)}")
    return (p[None], t[None]) if p.ndim == 2 else (p, t)


def region_coverage_counts(pred_mask: Tensor, target_mask: Tensor, region_mask: Tensor, num_regions: int,
                           ignore_index: int | None = 255) -> Tensor:
    """Per region: pixels, pixels labelled correctly, pixels labelled foreground; int64 ``num_regions×3``.

    A region map splits the image into parts (e.g. ``0`` background, ``1`` body, ``2`` head of the synthetic
    creatures: `wsss_blocks.data.synthetic.PART_HEAD`); for each region value r the counts are taken over its
    pixels whose target is not ``ignore_index``. *Correct* means ``pred == target``; *foreground* means a
    prediction in ``1 ... 254`` (neither background 0 nor ``ignore_index``). Recall of a region is
    ``correct / pixels``; inside the background region, ``foreground / pixels`` is the false-positive rate.
    Counts add up over images (`RegionCoverage`).

    Args:
        pred_mask: predicted labels (0 background, ``c + 1`` class c, ``ignore_index`` allowed).
        target_mask: ground-truth labels.
        region_mask: region value per pixel in ``[0, num_regions)``.
        num_regions: number of region values.
        ignore_index: target value that is not counted (and prediction value that is neither correct nor
            foreground); None for none.

    Shape:
        - pred_mask, target_mask, region_mask: H×W or B×H×W (identical)
        - output: num_regions×3 int64 (pixels, correct, foreground)

    Examples:
        >>> pred = torch.tensor([[0, 1, 1, 0]])
        >>> target = torch.tensor([[0, 1, 1, 1]])
        >>> region_coverage_counts(pred, target, torch.tensor([[0, 1, 2, 2]]), 3)
        tensor([[1, 1, 0],
                [1, 1, 1],
                [2, 1, 1]])
    """
    p, t = _check_pair(pred_mask, target_mask)
    r = _check_int_tensor(region_mask, "region_mask")
    r = r[None] if r.ndim == 2 else r
    if r.shape != p.shape:
        raise ValueError(f"region_mask must have the shape of pred_mask {shape_str(p)}, got {shape_str(r)}")
    num_regions = check_int(num_regions, "num_regions", minimum=1)
    if checks_enabled() and r.numel() and (int(r.min()) < 0 or int(r.max()) >= num_regions):
        raise ValueError(f"region_mask values must lie in [0, {num_regions - 1}], got "
                         f"[{int(r.min())}, {int(r.max())}]")
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    fg = (p != 0) if ignore_index is None else (p != 0) & (p != ignore_index)
    rk = r[keep].long()
    return torch.stack([torch.bincount(rk, minlength=num_regions),
                       torch.bincount(rk, weights=(p == t)[keep].double(), minlength=num_regions).round().long(),
                       torch.bincount(rk, weights=fg[keep].double(), minlength=num_regions).round().long()], 1)


class RegionCoverage(nn.Module):
    """Accumulated `region_coverage_counts`: recall and foreground rate per region over a dataset.

    Examples:
        >>> m = RegionCoverage(3)
        >>> m.update(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 1, 2, 2]]))
        >>> out = m.compute()
        >>> out["recall"].tolist(), out["foreground_rate"].tolist()
        ([1.0, 1.0, 0.5], [0.0, 1.0, 0.5])
    """

    counts: Tensor

    def __init__(self, num_regions: int, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.num_regions = check_int(num_regions, "num_regions", minimum=1)
        self.ignore_index = ignore_index
        self.register_buffer("counts", torch.zeros(num_regions, 3, dtype=torch.long))

    def update(self, pred_mask: Tensor, target_mask: Tensor, region_mask: Tensor) -> None:
        """Add one image or a batch (see `region_coverage_counts`)."""
        c = region_coverage_counts(pred_mask, target_mask, region_mask, self.num_regions, self.ignore_index)
        self.counts += c.to(self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        """``pixels`` (int64), ``recall`` and ``foreground_rate`` (float64, nan for an empty region)."""
        n = self.counts[:, 0].double()
        nan = torch.full_like(n, float("nan"))
        return {"pixels": self.counts[:, 0].clone(),
                "recall": torch.where(n > 0, self.counts[:, 1] / n.clamp_min(1), nan),
                "foreground_rate": torch.where(n > 0, self.counts[:, 2] / n.clamp_min(1), nan)}

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.counts.zero_()


def label_boundaries(mask: Tensor, ignore_index: int | None = 255) -> Tensor:
    """Boundary pixels of a label map: a 4-neighbour holds another label (both sides of an edge count).

    Pixels equal to ``ignore_index`` are never boundary pixels and never make their neighbours ones.

    Shape:
        - mask: H×W or B×H×W integer
        - output: bool, same shape

    Examples:
        >>> label_boundaries(torch.tensor([[0, 0, 1, 1]])).int()
        tensor([[0, 1, 1, 0]], dtype=torch.int32)
    """
    m = _check_label_map(mask, "mask")
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must be H×W or B×H×W, got {shape_str(m)}")
    x = m[None] if m.ndim == 2 else m
    valid = torch.ones_like(x, dtype=torch.bool) if ignore_index is None else x != ignore_index
    out = torch.zeros_like(x, dtype=torch.bool)
    dv = (x[:, 1:, :] != x[:, :-1, :]) & valid[:, 1:, :] & valid[:, :-1, :]
    dh = (x[:, :, 1:] != x[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    out[:, 1:, :] |= dv
    out[:, :-1, :] |= dv
    out[:, :, 1:] |= dh
    out[:, :, :-1] |= dh
    return out if m.ndim == 3 else out[0]


def _dilate(b: Tensor, radius: int) -> Tensor:
    """Square (chessboard-distance) dilation of a B×H×W bool map by ``radius`` pixels."""
    if radius == 0:
        return b
    k = 2 * radius + 1
    return torch.nn.functional.max_pool2d(b[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0


def _check_width(width: object, name: str) -> int:
    return check_int(width, name, minimum=0)


def boundary_band(mask: Tensor, width: int, ignore_index: int | None = 255) -> Tensor:
    """Pixels within ``width`` pixels (chessboard distance) of a boundary of ``mask`` (`label_boundaries`).

    The band where a trimap IoU is measured (Kohli et al., "Robust Higher Order Potentials for Enforcing Label
    Consistency", IJCV 2009; DeepLab, Chen et al., TPAMI 2018, Fig. 5). ``ignore_index`` pixels are outside.

    Shape:
        - mask: H×W or B×H×W integer
        - output: bool, same shape

    Examples:
        >>> boundary_band(torch.tensor([[0, 0, 0, 1, 1, 1]]), 1).int()
        tensor([[0, 1, 1, 1, 1, 0]], dtype=torch.int32)
    """
    w = _check_width(width, "width")
    b = label_boundaries(mask, ignore_index)
    x = b[None] if b.ndim == 2 else b
    band = _dilate(x, w)
    if ignore_index is not None:
        band &= (mask[None] if mask.ndim == 2 else mask) != ignore_index
    return band if b.ndim == 3 else band[0]


def boundary_counts(pred_mask: Tensor, target_mask: Tensor, tolerance: int = 2,
                    ignore_index: int | None = 255) -> Tensor:
    """Counts of the boundary F-score: int64 ``[pred matched, pred total, target matched, target total]``.

    Boundary pixels (`label_boundaries`) of the prediction that lie within ``tolerance`` pixels (chessboard
    distance) of a target boundary pixel are matched, and vice versa; precision = pred matched / pred total,
    recall = target matched / target total, F = 2PR / (P + R). This is the tolerance-band boundary F-measure of
    Perazzi et al. (DAVIS, CVPR 2016) and Csurka et al. (BMVC 2013) with a square structuring element;
    prediction boundary pixels on ``ignore_index`` target pixels are not counted. Counts add up over images
    (`BoundaryMetric`).

    Shape:
        - pred_mask, target_mask: H×W or B×H×W integer
        - output: (4,) int64

    Examples:
        >>> target = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
        >>> boundary_counts(torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]]), target, tolerance=1)
        tensor([1, 2, 1, 2])
    """
    p, t = _check_pair(pred_mask, target_mask)
    tol = _check_width(tolerance, "tolerance")
    pb = label_boundaries(p, None)
    if ignore_index is not None:
        pb &= t != ignore_index
    tb = label_boundaries(t, ignore_index)
    pm = pb & _dilate(tb, tol)
    tm = tb & _dilate(pb, tol)
    return torch.stack([pm.sum(), pb.sum(), tm.sum(), tb.sum()]).long()


class BoundaryMetric(nn.Module):
    """Boundary F-score (`boundary_counts`) and trimap mIoU (`boundary_band`) accumulated over a dataset.

    Args:
        num_classes: classes including background (for the trimap confusion matrix).
        tolerance: boundary match tolerance in pixels.
        band_width: half-width of the trimap band in pixels (default: ``tolerance``).
        ignore_index: target value that is not scored.
        pred_ignore: predictions equal to ``ignore_index`` in the trimap confusion matrix (`confusion_matrix`);
            in the boundary F-score they are one more label.

    Examples:
        >>> m = BoundaryMetric(2, tolerance=1)
        >>> m.update(torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]]), torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]))
        >>> {k: round(float(v), 3) for k, v in m.compute().items()}
        {'boundary_precision': 0.5, 'boundary_recall': 0.5, 'boundary_f': 0.5, 'trimap_miou': 0.25}
    """

    counts: Tensor
    confmat: Tensor

    def __init__(self, num_classes: int, tolerance: int = 2, band_width: int | None = None,
                 ignore_index: int | None = 255, pred_ignore: PredIgnore = "background") -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.tolerance = _check_width(tolerance, "tolerance")
        self.band_width = _check_width(tolerance if band_width is None else band_width, "band_width")
        self.ignore_index = ignore_index
        self.pred_ignore: PredIgnore = pred_ignore
        self.register_buffer("counts", torch.zeros(4, dtype=torch.long))
        self.register_buffer("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long))

    def update(self, pred_mask: Tensor, target_mask: Tensor) -> None:
        """Add one image or a batch."""
        p, t = _check_pair(pred_mask, target_mask)
        if checks_enabled():
            check_masks(p, "pred_mask", self.num_classes, self.ignore_index)
            check_masks(t, "target_mask", self.num_classes, self.ignore_index)
        self.counts += boundary_counts(p, t, self.tolerance, self.ignore_index).to(self.counts.device)
        band = boundary_band(t, self.band_width, self.ignore_index)
        cm = confusion_matrix(p[band], t[band], self.num_classes, self.ignore_index, self.pred_ignore)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """``boundary_precision``, ``boundary_recall``, ``boundary_f`` and ``trimap_miou`` (float64, nan if empty)."""
        c = self.counts.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=c.device)
        prec = c[0] / c[1] if c[1] > 0 else nan
        rec = c[2] / c[3] if c[3] > 0 else nan
        f = 2 * prec * rec / (prec + rec) if bool(prec + rec > 0) else (nan if bool(torch.isnan(prec + rec))
                                                                        else torch.zeros_like(c[0]))
        # an empty band (nothing seen, or no boundary in the targets) has no trimap mIoU
        trimap = scores_from_confusion(self.confmat)["miou"] if bool(self.confmat.sum() > 0) else nan
        return {"boundary_precision": prec, "boundary_recall": rec, "boundary_f": f, "trimap_miou": trimap}

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.counts.zero_()
        self.confmat.zero_()
