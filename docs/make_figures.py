"""Draw the method figures of the documentation from the synthetic VOC-format dataset.

Run from the repository root (about a minute on one CPU thread; ``--quick`` for a smoke run)::

    python docs/make_figures.py              # writes docs/img/{l2g,ppl,pmm,smaf,scd}_figure.png

Every figure shows three training images of the synthetic dataset (``wsss_blocks.data.make_synthetic_voc``,
64 px, 6 classes) going through one block: input -> CAM -> the method's own mechanism -> its output.
The CAMs come from tiny networks trained here for seconds, so the figures show what each block *does*, not
how well a method performs (see the method pages and the benchmarks for numbers):

- L2G, PMM, SMAF and SCD/VARM share one EPS-like CAM network with C + 1 outputs, background last
  (``TinyEPS`` and ``train_teacher`` of ``examples/smaf_fusion.py``: multi-label loss + a saliency loss).
- PPL trains the patch-learning network of ``examples/ppl_patch_learning.py`` (``make_stages``, ``train``)
  with its progressive schedule.

The output is deterministic (fixed seeds, one torch thread, no timestamps in the PNGs): rerunning the script
on the same software versions rewrites byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "examples"):  # the library (when not installed) and the examples' helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from ppl_patch_learning import make_stages  # noqa: E402  (examples/ppl_patch_learning.py)
from ppl_patch_learning import train as train_ppl  # noqa: E402
from smaf_fusion import MEAN, STD, TinyEPS, train_teacher  # noqa: E402  (examples/smaf_fusion.py)

from wsss_blocks.cam import cams_to_mask, normalize_cams  # noqa: E402
from wsss_blocks.data import VOCSegmentation, make_synthetic_voc  # noqa: E402
from wsss_blocks.local_global import LocalPatchSampler, boxes_to_roi_format, l2g_target  # noqa: E402
from wsss_blocks.metrics import sweep_bg_score  # noqa: E402
from wsss_blocks.multiscale_fusion import MultiScaleAttentionFusion, smaf_pseudo_mask  # noqa: E402
from wsss_blocks.pseudo_mask import cov_smooth, proportional_pseudo_mask  # noqa: E402
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_mask  # noqa: E402

NUM_CLASSES = 6
FIGURES = ("l2g", "ppl", "pmm", "smaf", "scd")
_ = make_stages  # re-exported for readers: the PPL trunk the figure trains


# ------------------------------------------------------------------------------------------------ data
def load_data(root: Path, num_train: int, size: int) -> dict[str, torch.Tensor]:
    """The synthetic train_aug split: image01 B×3×H×W in [0, 1], labels B×C, masks B×H×W, saliency B×1×H×W."""
    make_synthetic_voc(root, num_train=num_train, num_val=0, image_size=size, seed=0, num_classes=NUM_CLASSES)
    ds = VOCSegmentation(root, split="train_aug", labels_file="cls_labels.npy", saliency_dir="SaliencyMaps")
    samples = [ds[i] for i in range(len(ds))]
    return {"image01": torch.stack([s["image"] for s in samples]),
            "labels": torch.stack([s["labels"][:NUM_CLASSES] for s in samples]),
            "masks": torch.stack([s["mask"] for s in samples]).long(),
            "saliency": torch.stack([s["saliency"] for s in samples])}


def pick_images(labels: torch.Tensor, n: int = 3) -> list[int]:
    """The first images with two classes (then one), so the rows show overlaps and different classes."""
    two = [i for i in range(len(labels)) if int(labels[i].sum()) == 2]
    one = [i for i in range(len(labels)) if int(labels[i].sum()) == 1]
    return sorted((two[:2] + one)[:n])


def normalise(image01: torch.Tensor) -> torch.Tensor:
    return (image01 - MEAN) / STD


def fg_cams(net: torch.nn.Module, image01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Foreground CAMs of the EPS-like network at image size: ReLU, per-class max-normalised, absent classes 0."""
    with torch.no_grad():
        logits = net(normalise(image01))[:, :NUM_CLASSES]
    cams = F.interpolate(F.relu(logits), size=image01.shape[-2:], mode="bilinear", align_corners=False)
    return normalize_cams(cams) * labels[:, :, None, None]


# ------------------------------------------------------------------------------------------------ drawing
def _palette() -> torch.Tensor:
    from wsss_blocks.data.io import voc_palette

    pal = torch.from_numpy(voc_palette(256).astype("float32") / 255.0)
    pal[255] = 1.0  # ignore = white
    return pal


def heat(image01: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """H×W×3 overlay of a [0, 1] map (jet colours) on the image."""
    from matplotlib import colormaps

    colour = torch.from_numpy(colormaps["jet"](m.clamp(0, 1).numpy())[..., :3]).float()
    return (0.35 * image01.permute(1, 2, 0) + 0.65 * colour).clamp(0, 1)


def overlay(image01: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """H×W×3 overlay of a label mask (VOC colours, background dimmed, ignore white) on the image."""
    img = image01.permute(1, 2, 0)
    colour = _palette()[mask.long()]
    return torch.where((mask == 0)[..., None], 0.6 * img, 0.35 * img + 0.65 * colour).clamp(0, 1)


def draw_grid(path: Path, panels: list[list[torch.Tensor]], titles: list[str],
              boxes: list[list[tuple[float, float, float, float]]] | None = None,
              grid_lines: int | None = None) -> int:
    """Save rows × columns of H×W×3 panels as a PNG without metadata that changes between runs; bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows, cols = len(panels), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.7 * rows + 0.25), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = panels[r][c]
            ax.imshow(img.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and boxes is not None:
                for i, (x1, y1, x2, y2) in enumerate(boxes[r]):
                    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=0.8,
                                           edgecolor=plt.get_cmap("tab10")(i % 10)))
            if c == 0 and grid_lines:
                h, w = img.shape[:2]
                for k in range(1, grid_lines):
                    ax.axhline(k * h / grid_lines - 0.5, color="white", lw=1.0)
                    ax.axvline(k * w / grid_lines - 0.5, color="white", lw=1.0)
            if r == 0:
                ax.set_title(titles[c], fontsize=8.5)
    fig.tight_layout(pad=0.3, h_pad=0.3, w_pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    # 256-colour palette PNG: a third of the RGBA size, and no metadata that changes between runs
    from PIL import Image

    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)  # atomic: a crash never leaves half a PNG under the final name
    return path.stat().st_size


# ------------------------------------------------------------------------------------------------ figures
def figure_l2g(net: torch.nn.Module, d: dict[str, torch.Tensor], picks: list[int], out: Path) -> int:
    """Global-view CAM vs the local views' CAMs (each normalised inside its own box) and the L2G target."""
    x, y, sal = d["image01"][picks], d["labels"][picks], d["saliency"][picks]
    size = x.shape[-1]
    sampler = LocalPatchSampler(num_patches=6, patch_size=size * 320 // 448 // 4 * 4,
                                generator=torch.Generator().manual_seed(0))  # the released 320/448 ratio
    views = sampler(x, y, sal)
    with torch.no_grad():
        local = net(normalise(views["patches"]))  # B·N×(C+1)×p/4×p/4, background last
    target = l2g_target(local, views["boxes"], y, views["patch_saliency"], stride=4)  # released VOC rule
    local_fg = normalize_cams(F.relu(local[:, :NUM_CLASSES])) * views["patch_labels"][:, :, None, None]

    def paste(maps: torch.Tensor) -> torch.Tensor:  # B·N×h×w patch maps -> B×H×W, max over the patches
        canvas = torch.zeros(len(picks), size, size)
        for n, (b, x1, y1, x2, y2) in enumerate(boxes_to_roi_format(views["boxes"]).round().long().tolist()):
            m = F.interpolate(maps[n][None, None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            canvas[b, y1:y2, x1:x2] = torch.maximum(canvas[b, y1:y2, x1:x2], m[0, 0])
        return canvas

    glob = fg_cams(net, x, y).amax(1)
    loc = paste(local_fg.amax(1))
    tgt = paste(target[:, :NUM_CLASSES].amax(1))
    panels = [[x[r].permute(1, 2, 0), heat(x[r], glob[r]), heat(x[r], loc[r]), heat(x[r], tgt[r]),
               heat(x[r], sal[r, 0])] for r in range(len(picks))]
    boxes = [[tuple(map(float, b)) for b in views["boxes"][r].tolist()] for r in range(len(picks))]
    return draw_grid(out, panels, ["input + 6 local views", "global-view CAM", "local views' CAMs",
                                   "L2G target (fg)", "saliency"], boxes=boxes)


def figure_ppl(ppl_net: Any, point: int, d: dict[str, torch.Tensor], picks: list[int], out: Path) -> int:
    """The fused CAM of PPL is the sum of a full-path CAM and a patch-path CAM (2×2 patches, no context),
    at ``point``, the insertion point of the last progressive stage.
    """
    x, y = d["image01"][picks], d["labels"][picks]
    with torch.no_grad():
        o = ppl_net((x - 0.5) / 0.25, insert_after=point)  # the example's input normalisation

    def up(m: torch.Tensor) -> torch.Tensor:
        m = F.interpolate(F.relu(m), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (normalize_cams(m) * y[:, :, None, None]).amax(1)

    full, local, fused = up(o.full_cams), up(o.parts[f"local@{point}"]), up(o.cams)
    panels = [[x[r].permute(1, 2, 0), heat(x[r], full[r]), heat(x[r], local[r]), heat(x[r], fused[r])]
              for r in range(len(picks))]
    return draw_grid(out, panels, ["input (2×2 patches)", "full-path CAM", "patch-path CAM",
                                   "fused CAM (sum)"], grid_lines=2)


def figure_pmm(net: torch.nn.Module, d: dict[str, torch.Tensor], picks: list[int], out: Path) -> int:
    """CAM -> CoV-smoothed CAM -> proportional pseudo mask (released α, binary CRF), next to the ground truth."""
    x, y = d["image01"][picks], d["labels"][picks]
    cams = fg_cams(net, x, y)
    smoothed = cov_smooth(cams)
    mask = proportional_pseudo_mask(cams, y, x)  # released: α 11, CoV t 0.05 s 0.3, binary CRF per class
    assert isinstance(mask, torch.Tensor)
    panels = [[x[r].permute(1, 2, 0), heat(x[r], cams[r].amax(0)), heat(x[r], smoothed[r].amax(0)),
               overlay(x[r], mask[r]), overlay(x[r], d["masks"][picks][r])] for r in range(len(picks))]
    return draw_grid(out, panels, ["input", "CAM", "CoV-smoothed CAM", "PPMG pseudo mask", "ground truth"])


def figure_smaf(net: torch.nn.Module, d: dict[str, torch.Tensor], picks: list[int], out: Path) -> int:
    """Softmax maps at single scales, their SMAF fusion (4 scales × flip) and the pseudo mask from it."""
    x, y = d["image01"][picks], d["labels"][picks]
    fusion = MultiScaleAttentionFusion()  # released: scales (0.5, 1, 1.5, 2) × flip, softmax, sum, max
    detailed = fusion.detailed(net, normalise(x), y)
    fused, per_scale = detailed.fused, detailed.per_scale
    mask = smaf_pseudo_mask(fused, y, image01=x, crf="smaf")  # threshold 0.2 + the released hard-label CRF

    def one(m: torch.Tensor) -> torch.Tensor:
        return (m / m.amax((2, 3), keepdim=True).clamp_min(1e-5)).amax(1)

    s05, s2 = one(per_scale[0]), one(per_scale[3])
    panels = [[x[r].permute(1, 2, 0), heat(x[r], s05[r]), heat(x[r], s2[r]), heat(x[r], fused[r].amax(0)),
               overlay(x[r], mask[r])] for r in range(len(picks))]
    return draw_grid(out, panels, ["input", "scale 0.5", "scale 2", "fused (8 passes)", "pseudo mask"])


def figure_scd(net: torch.nn.Module, d: dict[str, torch.Tensor], picks: list[int], out: Path) -> int:
    """CAM mask vs the same map refined by PAR and by VARM, and VARM's reliable labels with the ignore band."""
    x, y = d["image01"][picks], d["labels"][picks]
    cams_all = fg_cams(net, d["image01"], d["labels"])
    tau = sweep_bg_score((cams_all, d["labels"], d["masks"]), num_classes=NUM_CLASSES + 1).best_bg_score
    cams = cams_all[picks]
    with torch.no_grad():
        cam_mask = cams_to_mask(cams, y, bg_score=tau)
        par = reliable_pseudo_mask(PixelAdaptiveRefine(), x, cams, y, high_threshold=tau, low_threshold=tau)
        varm = reliable_pseudo_mask(VariationAwareRefine(), x, cams, y, high_threshold=tau, low_threshold=tau)
        band = reliable_pseudo_mask(VariationAwareRefine(), x, cams, y, high_threshold=min(tau + 0.1, 0.95),
                                    low_threshold=max(tau - 0.1, 0.05))
    gt = d["masks"][picks]
    panels = [[x[r].permute(1, 2, 0), overlay(x[r], gt[r]), overlay(x[r], cam_mask[r]), overlay(x[r], par[r]),
               overlay(x[r], varm[r]), overlay(x[r], band[r])] for r in range(len(picks))]
    return draw_grid(out, panels, ["input", "ground truth", f"CAM (bg {tau:.2f})", "CAM + PAR", "CAM + VARM",
                                   "VARM reliable labels"])


# ------------------------------------------------------------------------------------------------ main
def make_figures(out_dir: Path, quick: bool = False, only: tuple[str, ...] = FIGURES,
                 data_root: Path | None = None) -> dict[str, Any]:
    """Write the figures; returns ``{"files": {name: bytes}, "seconds": {...}}``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    num_train, steps, ppl_epochs = (48, 20, 3) if quick else (240, 600, 9)
    t0 = time.perf_counter()
    d = load_data(Path(data_root or tempfile.mkdtemp(prefix="wsss_figures_")), num_train, 64)
    picks = pick_images(d["labels"])
    timings: dict[str, float] = {}
    files: dict[str, int] = {}
    net = None
    if set(only) & {"l2g", "pmm", "smaf", "scd"}:
        t = time.perf_counter()
        torch.manual_seed(0)
        net = train_teacher(TinyEPS(NUM_CLASSES), normalise(d["image01"]), d["labels"], d["saliency"], steps, 16,
                            torch.Generator().manual_seed(0))
        timings["train EPS-like CAM network"] = time.perf_counter() - t
    if "ppl" in only:
        t = time.perf_counter()
        args = SimpleNamespace(width=24, norm="bn", grid=2, patch_bn_stats="update", epochs=ppl_epochs,
                               batch_size=16, lr=2e-3, verbose=False)
        ppl_net, _, _, schedule = train_ppl("ppl", d["image01"], d["labels"], args, seed=0)
        ppl_net.eval()
        last = schedule.step(ppl_epochs - 1)[0].insert_after  # the last stage: patches after stage 3
        timings["train PPL network"] = time.perf_counter() - t
        files["ppl"] = figure_ppl(ppl_net, last, d, picks, out_dir / "ppl_figure.png")
    draw = {"l2g": figure_l2g, "pmm": figure_pmm, "smaf": figure_smaf, "scd": figure_scd}
    for name in FIGURES:
        if name in only and name in draw:
            t = time.perf_counter()
            files[name] = draw[name](net, d, picks, out_dir / f"{name}_figure.png")
            timings[f"figure {name}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return {"files": files, "seconds": timings, "picks": picks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="output folder (default docs/img)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 48 images, a few steps (figures are noise)")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument("--data-root", type=Path, default=None, help="synthetic dataset folder (default: a temp dir)")
    args = ap.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        ap.error(f"--only: unknown figure(s) {unknown}; expected a subset of {list(FIGURES)}")
    res = make_figures(args.out, quick=args.quick, only=only, data_root=args.data_root)
    for name, size in res["files"].items():
        print(f"wrote {args.out / (name + '_figure.png')} ({size / 1024:.0f} KiB)")
    print("seconds (1 torch thread): " + ", ".join(f"{k} {v:.1f}" for k, v in res["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
