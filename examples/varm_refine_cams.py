"""VARM (TSCD) and PAR (AFA) refining the CAMs of a tiny network on the synthetic VOC dataset.

1. writes a small synthetic VOC-format dataset (no download);
2. trains a tiny CAM network on the image labels on CPU;
3. computes TSCD-style CAMs: scales (1, 0.5, 1.5), flip pair fused by max, scales summed, per-channel min-max;
4. scores CAM masks against the ground truth, before and after refinement:
   - before: argmax over [background score tau, CAMs of the present classes] (:func:`wsss_blocks.cam.cams_to_mask`);
   - after: the same [tau; CAMs] map, softmaxed over the valid keys and refined at half resolution by
     :class:`~wsss_blocks.refine.VariationAwareRefine` (and, for comparison, :class:`PixelAdaptiveRefine`),
     i.e. :func:`~wsss_blocks.refine.reliable_pseudo_labels` with ``tau_high = tau_low = tau``;
   each at the released background score and at the best score of a sweep on the same images (an oracle
   for every row alike);
5. scores the reliable labels with the ignore band (released thresholds 0.55 / 0.35 and the band around the
   best tau): mIoU on the pixels they keep and the share they ignore;
6. optionally saves an overlay figure (``--figure docs/img/varm_overlay.png``).

Run: ``python examples/varm_refine_cams.py`` (a few minutes on 2 CPU cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from wsss_blocks.cam import cams_to_mask, multiscale_cams, normalize_cams
from wsss_blocks.data import VOCSegmentation, make_synthetic_voc
from wsss_blocks.metrics import SegmentationMetric
from wsss_blocks.models.backbones import TinyBackbone
from wsss_blocks.models.heads import CAMHead
from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_labels

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TAUS = [round(0.05 * i, 2) for i in range(1, 20)]


class TinyCAMNet(torch.nn.Module):
    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.backbone = TinyBackbone(widths=(32, 64, 128), output_stride=8)
        self.head = CAMHead(128, num_classes)

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone((images01 - MEAN.to(images01)) / STD.to(images01))[-1])


def load_all(ds: VOCSegmentation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    samples = [ds[i] for i in range(len(ds))]
    return (torch.stack([s["image"] for s in samples]), torch.stack([s["labels"] for s in samples]),
            torch.stack([s["mask"] for s in samples]))


def train(net: TinyCAMNet, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int,
          gen: torch.Generator) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    net.train()
    for ep in range(epochs):
        perm = torch.randperm(images.shape[0], generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            x, y = images[idx], labels[idx]
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.multilabel_soft_margin_loss(net(x)["logits"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * x.shape[0]
        print(f"  epoch {ep + 1}/{epochs}: classification loss {total / images.shape[0]:.4f}")


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """mIoU (%) over the pixels ``pred`` keeps, and the share (%) of GT-labelled pixels it ignores."""
    keep = pred != 255
    metric = SegmentationMetric(num_classes=21)
    metric.update(torch.where(keep, pred, torch.zeros_like(pred)), torch.where(keep, target, 255))
    labelled = target != 255
    ignored = 100.0 * float((~keep & labelled).sum()) / max(1, int(labelled.sum()))
    return {"miou": 100.0 * float(metric.compute()["miou"]), "ignored": ignored}


def refined_labels(refiner, images, cams, labels, tau_high, tau_low, batch=32) -> torch.Tensor:
    outs = [reliable_pseudo_labels(refiner, images[i:i + batch], cams[i:i + batch], labels[i:i + batch],
                                   tau_high=tau_high, tau_low=tau_low) for i in range(0, len(images), batch)]
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--root", default=None, help="dataset folder (default: a temporary folder)")
    parser.add_argument("--figure", default=None, help="save an overlay figure (PNG) here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num_train, args.epochs, args.size = 24, 1, 48
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    root = make_synthetic_voc(args.root or tempfile.mkdtemp(prefix="varm_synth_"), num_train=args.num_train,
                              num_val=8, image_size=args.size, seed=args.seed)
    ds = VOCSegmentation(root, split="train_aug", labels_file="cls_labels.npy")
    images, labels, target = load_all(ds)
    print(f"synthetic VOC: {len(ds)} train_aug images of {args.size}×{args.size} at {root}")

    net = TinyCAMNet()
    t0 = time.perf_counter()
    train(net, images, labels, args.epochs, batch=16, gen=gen)
    print(f"trained the CAM network in {time.perf_counter() - t0:.1f} s")

    net.eval()
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
            masks["CAM + PAR"][tau] = refined_labels(par, images, cams, labels, tau, tau)
            masks["CAM + VARM"][tau] = refined_labels(varm, images, cams, labels, tau, tau)
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
            reliable[(th, tl)] = refined_labels(varm, images, cams, labels, th, tl)
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
