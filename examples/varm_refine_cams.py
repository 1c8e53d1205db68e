"""VARM (TSCD) and PAR (AFA) refining the CAMs of a tiny network on the synthetic VOC dataset.

1. writes a small synthetic VOC-format dataset (no download);
2. trains a tiny CAM network on the image labels on CPU;
3. computes TSCD-style CAMs: scales (1, 0.5, 1.5), flip pair fused by max, scales summed, per-channel min-max;
4. scores CAM masks against the ground truth, before and after refinement:
   - before: argmax over [background score tau, CAMs of the present classes] (`wsss_blocks.cam.cams_to_mask`);
   - after: the same [tau; CAMs] map, softmaxed over the valid keys and refined at half resolution by
     `VariationAwareRefine` (and, for comparison, `PixelAdaptiveRefine`),
     i.e. `reliable_pseudo_mask` with ``high_threshold = low_threshold = tau``;
   each at the released background score and at the best score of a sweep on the same images (an oracle
   for every row alike);
5. scores the reliable labels with the ignore band (released thresholds 0.55 / 0.35 and the band around the
   best tau): mIoU on the pixels they keep and the share they ignore;
6. optionally saves an overlay figure (``--figure docs/img/varm_overlay.png``).

Run: ``python examples/varm_refine_cams.py`` (a few minutes on 2 CPU cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss_blocks.cam import cams_to_mask, multiscale_cams, normalize_cams
from wsss_blocks.metrics import SegmentationMetric
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_mask

if str(Path(__file__).resolve().parent) not in sys.path:  # run via runpy/importlib rather than as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_cam import common_parser, prepare_run, train_tiny_cam

TAUS = [round(0.05 * i, 2) for i in range(1, 20)]


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MIoU (%) over the pixels ``pred`` keeps, and the share (%) of GT-labelled pixels it ignores."""
    keep = pred != 255
    metric = SegmentationMetric(num_classes=21)
    metric.update(torch.where(keep, pred, torch.zeros_like(pred)), torch.where(keep, target, 255))
    labelled = target != 255
    ignored = 100.0 * float((~keep & labelled).sum()) / max(1, int(labelled.sum()))
    return {"miou": 100.0 * float(metric.compute()["miou"]), "ignored": ignored}


def refined_masks(refiner, images, cams, labels, high_threshold, low_threshold, batch=32) -> torch.Tensor:
    outs = [reliable_pseudo_mask(refiner, images[i:i + batch], cams[i:i + batch], labels[i:i + batch],
                                 high_threshold=high_threshold, low_threshold=low_threshold)
            for i in range(0, len(images), batch)]
    return torch.cat(outs)


def save_figure(path: str, images, target, rows: dict[str, torch.Tensor], picks: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsss_blocks.data.io import voc_palette

    pal = torch.from_numpy(voc_palette(256).astype("float32") / 255.0)
    pal[255] = 1.0  # ignore = white
    cols = {"image": None, "ground truth": target, **rows}
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.0 * len(cols), 2.0 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        for c, (title, masks) in enumerate(cols.items()):
            ax = axes[r][c]
            img = images[i].permute(1, 2, 0)
            if masks is None:
                ax.imshow(img.numpy())
            else:
                colour = pal[masks[i].long()]
                blend = torch.where((masks[i] == 0)[..., None], img * 0.6, 0.35 * img + 0.65 * colour)
                ax.imshow(blend.clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0], num_train=200, size=96)
    parser.add_argument("--figure", default=None, help="save an overlay figure (PNG) here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, images, labels, target = prepare_run(args, quick=(24, 1, 48), prefix="varm_synth_")  # seeds torch
    net = train_tiny_cam(images, labels, args.epochs, gen, batch=16)  # in eval mode
    with torch.no_grad():
        cams = multiscale_cams(lambda x: net(x)["cams"], images, scales=(1.0, 0.5, 1.5), flip=True,
                               reduce="sum", flip_reduce="max")
    assert isinstance(cams, torch.Tensor)
    cams = normalize_cams(F.relu(cams), mode="minmax")  # TSCD: per-channel min-max into [0, 1]

    varm, par = VariationAwareRefine(), PixelAdaptiveRefine()
    t0 = time.perf_counter()
    sweep: dict[str, dict[float, float]] = {"CAM": {}, "CAM + PAR": {}, "CAM + VARM": {}}
    masks: dict[str, dict[float, torch.Tensor]] = {k: {} for k in sweep}
    with torch.no_grad():
        for tau in TAUS:
            masks["CAM"][tau] = cams_to_mask(cams, labels, bg_score=tau)
            masks["CAM + PAR"][tau] = refined_masks(par, images, cams, labels, tau, tau)
            masks["CAM + VARM"][tau] = refined_masks(varm, images, cams, labels, tau, tau)
            for k in sweep:
                sweep[k][tau] = scores(masks[k][tau], target)["miou"]
    print(f"refined {len(TAUS)} background scores × 2 refiners in {time.perf_counter() - t0:.1f} s")

    print("\nCAM mIoU (%) on the training images against the pixel ground truth")
    print("| masks | bg score 0.45 (TSCD bkg_score) | best bg score (sweep) |")
    print("|---|---|---|")
    for k, res in sweep.items():
        best = max(res, key=res.__getitem__)
        print(f"| {k} | {res[0.45]:.1f} | {res[best]:.1f} (at {best:.2f}) |")

    best_varm = max(sweep["CAM + VARM"], key=sweep["CAM + VARM"].__getitem__)
    print("\nReliable labels (VARM, ignore band): mIoU on the kept pixels, share of labelled pixels ignored")
    print("| thresholds (high / low) | mIoU kept | ignored |")
    print("|---|---|---|")
    reliable = {}
    bands = [(0.55, 0.35), (round(min(best_varm + 0.1, 0.95), 2), round(max(best_varm - 0.1, 0.05), 2))]
    bands = list(dict.fromkeys(bands))
    with torch.no_grad():
        for th, tl in bands:
            reliable[(th, tl)] = refined_masks(varm, images, cams, labels, th, tl)
            s = scores(reliable[(th, tl)], target)
            print(f"| {th:.2f} / {tl:.2f} | {s['miou']:.1f} | {s['ignored']:.1f} % |")

    if args.figure:
        best_cam = max(sweep["CAM"], key=sweep["CAM"].__getitem__)
        rows = {f"CAM (bg {best_cam:.2f})": masks["CAM"][best_cam],
                f"CAM + VARM (bg {best_varm:.2f})": masks["CAM + VARM"][best_varm],
                f"reliable {bands[-1][0]:.2f}/{bands[-1][1]:.2f}": reliable[bands[-1]]}
        save_figure(args.figure, images, target, rows, picks=list(range(min(4, len(images)))))


if __name__ == "__main__":
    main()
