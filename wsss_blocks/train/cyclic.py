"""PMM's cyclic pseudo-mask round around the [`CyclicPseudoMask`][wsss_blocks.pseudo_mask.CyclicPseudoMask] block.

The released cycle (``Eli-YiLi/WSSS_MMSeg`` ``tools/run_wsss.sh``): train the segmentation model on the PPMG masks
with PUF, pick the checkpoint with the best val mIoU ([`select_checkpoint`][], ``tools/pick_best_pth.py``),
relabel every training image with it ([`relabel`][]) and train a *fresh* model on the new masks with plain
cross-entropy ([`loss_for_round`][]).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wsss_blocks._checks import shape_str
from wsss_blocks.pseudo_mask import CyclicPseudoMask

__all__ = ["RelabelResult", "relabel", "select_checkpoint", "loss_for_round"]


@dataclass
class RelabelResult:
    """What [`relabel`][] did.

    Attributes:
        out_root: the folder holding the new masks.
        written: masks written by this call.
        skipped: masks that existed already (resume) and were kept.
    """

    out_root: Path
    written: int = 0
    skipped: int = 0


def relabel(
    cyclic: CyclicPseudoMask,
    model: Callable[[Tensor], Tensor],
    dataset: Iterable[Mapping[str, Any]],
    out_root: str | os.PathLike | None = None,
    old_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    *,
    palette: bool = False,
    overwrite: bool = False,
    result: RelabelResult | None = None,
) -> RelabelResult:
    """Predict every sample with ``cyclic`` and write ``<out_root>/<name>.png``.

    Masks are uint8 class indices (greyscale like the release unless ``palette=True``), written through
    [`wsss_blocks.data.io.save_label_png`][wsss_blocks.data.io.save_label_png], which writes a temporary file and
    renames it, so a crash never leaves a partial mask. A finished mask is never recomputed: rerunning after an
    interruption resumes where it stopped (``overwrite=True`` redoes all). When ``dataset`` has a ``names`` list and
    integer indexing (like [`wsss_blocks.data.VOCSegmentation`][wsss_blocks.data.voc.VOCSegmentation]), finished samples
    are not even loaded. ``out_root`` must differ from the old mask folder: new masks go next to the old ones, never
    over them.

    Args:
        cyclic: the prediction block (scales, flip, slide, CRF, policy).
        model: segmentation model (B×3×h×w -> B×K×h'×w' logits). An ``nn.Module`` in training mode is
            switched to eval for the pass and restored afterwards.
        dataset: samples with ``name``, ``image`` (3×H×W in [0, 1]; or ``image01``) and, for
            ``policy="restrict"``, ``labels``.
        out_root: folder for the new masks; default ``<old_root>_cyclic`` next to ``old_root``.
        old_root: the current pseudo-mask folder (only used to refuse writing over it and to name the
            default ``out_root``).
        device: where to run the model (default: the images' device, i.e. CPU for a dataset).
        palette: write palette PNGs instead of greyscale (same pixel values).
        overwrite: recompute masks that already exist.
        result: a [`RelabelResult`][] to count into as masks are written (returned); its counts are what an
            interrupted call did when it raises. Default: a new one.

    Returns:
        A [`RelabelResult`][] (folder and counts).

    Examples:
        >>> import tempfile
        >>> net = torch.nn.Conv2d(3, 3, 1)                       # a "segmentation model", K = 3
        >>> data = [{"name": "img0", "image": torch.rand(3, 16, 20)}]
        >>> cp = CyclicPseudoMask(scales=(1.0, 0.5), img_scale=None, slide=None, crf=None)
        >>> res = relabel(cp, net, data, tempfile.mkdtemp() + "/cyclic_mask")
        >>> sorted(p.name for p in res.out_root.iterdir()), res.written
        (['img0.png'], 1)
    """
    from wsss_blocks.data.io import save_label_png

    if out_root is None:
        if old_root is None:
            raise ValueError("give out_root (the folder for the new masks) or old_root (then the new "
                             "masks go to '<old_root>_cyclic' next to it)")
        old = Path(old_root)
        out = old.parent / f"{old.name}_cyclic"
    else:
        out = Path(out_root)
    if old_root is not None and out.resolve() == Path(old_root).resolve():
        raise ValueError(f"out_root {str(out)!r} is the old mask folder; cyclic pseudo-masks are written "
                         f"next to the old ones, never over them: choose another folder")
    out.mkdir(parents=True, exist_ok=True)

    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    res = result if result is not None else RelabelResult(out_root=out)
    res.out_root, res.written, res.skipped = out, 0, 0
    try:
        for sample in _iter_pending(dataset, out, overwrite):
            if sample is None:
                res.skipped += 1
                continue
            name = sample.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"each sample needs a non-empty string 'name', got {name!r}")
            path = out / f"{name}.png"
            if path.exists() and not overwrite:
                res.skipped += 1
                continue
            img = sample.get("image01", sample.get("image"))
            if not isinstance(img, Tensor) or img.ndim != 3:
                got = shape_str(img) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"sample {name!r}: 'image' must be a 3×H×W tensor in [0, 1], got {got}")
            img = img[None].float()
            if device is not None:
                img = img.to(device)
            lab = sample.get("labels")
            lab_t = None
            if lab is not None and cyclic.policy == "restrict":
                lab_t = torch.as_tensor(lab, dtype=torch.float32, device=img.device)[None]
            mask = cyclic(model, img, lab_t)[0]
            if int(mask.max()) > 255:
                raise ValueError(f"model predicts {int(mask.max()) + 1} classes; PNG masks hold at most 256")
            save_label_png(path, mask.to(torch.uint8).cpu().numpy(), palette=palette)
            res.written += 1
    finally:
        if module is not None:
            module.train(was_training)
    return res


def _iter_pending(dataset: Iterable[Mapping[str, Any]], out: Path, overwrite: bool
                  ) -> Iterator[Mapping[str, Any] | None]:
    """The samples still to write; ``None`` for one whose mask exists (not loaded when the dataset has names)."""
    names = getattr(dataset, "names", None)
    if (not overwrite and isinstance(names, Sequence) and hasattr(dataset, "__getitem__")
            and hasattr(dataset, "__len__") and len(names) == len(dataset)):  # type: ignore[arg-type]
        for i, name in enumerate(names):
            if (out / f"{name}.png").exists():
                yield None
            else:
                yield dataset[i]
    else:
        yield from dataset


def select_checkpoint(history: Iterable[Mapping[str, Any]], key: str = "miou") -> Mapping[str, Any]:
    """The evaluation record with the highest ``key`` (PMM ``tools/pick_best_pth.py``: best VOC val mIoU).

    Args:
        history: records such as ``{"iter": 2000, "miou": 0.61, "path": "iter_2000.pth"}``.
        key: the score to maximise; ties keep the earliest record, NaN scores are passed over.

    Examples:
        >>> select_checkpoint([{"iter": 2, "miou": .5}, {"iter": 4, "miou": .6}])["iter"]
        4
    """
    best: Mapping[str, Any] | None = None
    for rec in history:
        if key not in rec:
            raise ValueError(f"history record {dict(rec)!r} has no {key!r} entry")
        score = float(rec[key])
        if math.isnan(score):
            continue
        if best is None or score > float(best[key]):
            best = rec
    if best is None:
        raise ValueError("history holds no record with a finite score to select from")
    return best


def loss_for_round(round_index: int, dataset: Literal["voc", "coco"] = "voc", weight: float = 1.0,
                   ignore_index: int = 255) -> nn.Module:
    """The released loss per round: PUF on the PPMG masks (round 0), plain CE on cyclic masks (1+).

    Examples:
        >>> loss_for_round(1).mode is None
        True
    """
    from wsss_blocks.losses import PretendedUnderFittingLoss

    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    if dataset not in ("voc", "coco"):
        raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}")
    preset = {"voc": 0.5, "coco": 0.8}[dataset]
    mode: Literal["clamp"] | None = "clamp" if round_index == 0 else None
    return PretendedUnderFittingLoss(beta=preset, k=preset, mode=mode, weight=weight, ignore_index=ignore_index)
