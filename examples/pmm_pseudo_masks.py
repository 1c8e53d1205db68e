"""PMM pseudo-masks on the synthetic VOC dataset: the usual CAM argmax rule versus proportional pseudo-masks.

1. writes a small synthetic VOC-format dataset (no download);
2. trains a tiny CAM network on the image labels for a few epochs on CPU;
3. turns its multi-scale CAMs into pseudo-masks with
   - the usual rule: argmax over [background score, CAMs of the present classes]
     (:func:`wsss_blocks.cam.cams_to_mask`), at the common fixed score 0.15 and at the best score of a
     sweep on the same images (an oracle, i.e. optimistic for the baseline), and refined by one joint dense
     CRF over [background, present classes] (PSA / PMM stage B, alpha swept: oracle),
   - PMM's proportional pseudo-masks (:func:`wsss_blocks.pseudo_mask.proportional_pseudo_mask`) with the
     released defaults (alpha = 11) and at the best alpha of a sweep on the same images (oracle), with the
     CRF foreground (the library dense CRF: pydensecrf when installed, else its PyTorch backend) and with
     the CRF-free threshold foreground;
4. prints the pseudo-mask mIoU of each against the ground truth.

Run: ``python examples/pmm_pseudo_masks.py`` (a few minutes on 2 CPU cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Literal

import torch
import torch.nn.functional as F

from wsss_blocks.cam import cams_to_mask, multiscale_cams, normalize_cams
from wsss_blocks.crf import DenseCRF
from wsss_blocks.data import VOCSegmentation, make_synthetic_voc
from wsss_blocks.metrics import SegmentationMetric, sweep_bg_threshold
from wsss_blocks.models.backbones import TinyBackbone
from wsss_blocks.models.heads import CAMHead
from wsss_blocks.pseudo_mask import proportional_pseudo_mask

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


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


def joint_crf_mask(cams: torch.Tensor, labels: torch.Tensor, images01: torch.Tensor, alpha: float) -> torch.Tensor:
    """The usual CAM -> mask rule with a joint CRF: bg = (1 - max A)^alpha stacked on the present classes."""
    crf = DenseCRF.preset("psa", sum_to_one="ignore")
    masks = torch.zeros(cams.shape[0], *cams.shape[-2:], dtype=torch.long)
    for b in range(cams.shape[0]):  # images have different numbers of present classes
        present = labels[b].nonzero()[:, 0]
        if present.numel() == 0:
            continue
        fg = cams[b, present]
        probs = torch.cat([(1 - fg.amax(0, keepdim=True)).pow(alpha), fg])[None]
        q = crf(images01[b:b + 1], probs)[0]
        masks[b] = torch.cat([torch.zeros(1, dtype=torch.long), present + 1])[q.argmax(0)]
    return masks


def miou(pred: torch.Tensor, target: torch.Tensor) -> float:
    metric = SegmentationMetric(num_classes=21)
    metric.update(pred, target)
    return 100.0 * float(metric.compute()["miou"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--root", default=None, help="dataset folder (default: a temporary folder)")
    parser.add_argument("--cache", default=None, help="save the CAMs to this .pt file, or reuse it if it exists")
    args = parser.parse_args()
    if args.quick:
        args.num_train, args.epochs, args.size = 32, 1, 48
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    root = make_synthetic_voc(args.root or tempfile.mkdtemp(prefix="pmm_synth_"), num_train=args.num_train,
                              num_val=8, image_size=args.size, seed=args.seed)
    ds = VOCSegmentation(root, split="train_aug", labels_file="cls_labels.npy")
    images, labels, target = load_all(ds)
    print(f"synthetic VOC: {len(ds)} train_aug images of {args.size}×{args.size} at {root}")

    if args.cache and os.path.exists(args.cache):
        cams = torch.load(args.cache)["cams"]
        print(f"loaded CAMs from {args.cache}")
    else:
        net = TinyCAMNet()
        t0 = time.perf_counter()
        train(net, images, labels, args.epochs, batch=16, gen=gen)
        print(f"trained the CAM network in {time.perf_counter() - t0:.1f} s")
        net.eval()
        with torch.no_grad():
            raw = multiscale_cams(lambda x: F.relu(net(x)["cams"]), images, scales=(1.0, 0.5, 1.5), flip=True)
        assert isinstance(raw, torch.Tensor)
        cams = normalize_cams(raw)  # per image and class, into [0, 1]
        if args.cache:
            torch.save({"cams": cams}, args.cache)

    results: dict[str, float] = {}
    results["usual argmax, bg score 0.15"] = miou(cams_to_mask(cams, labels, bg_score=0.15), target)
    sweep = sweep_bg_threshold((cams, labels, target), num_classes=21)
    results[f"usual argmax, best bg score {sweep.best_threshold:.2f} (oracle)"] = 100.0 * sweep.best_miou

    # The usual rule with a CRF: one joint dense CRF over [(1 - max_c A_c)^alpha, A_present] (PSA / PMM stage B
    # ``crf_with_alpha``, PSA's CRF parameters), argmax; alpha swept on the same images (oracle).
    joint_alphas = (4.0,) if args.quick else (1.0, 2.0, 4.0, 8.0, 24.0)
    joint = {a: miou(joint_crf_mask(cams, labels, images, a), target) for a in joint_alphas}
    best_j = max(joint, key=lambda a: joint[a])
    results[f"usual joint CRF (PSA), best alpha {best_j:g} (oracle)"] = joint[best_j]
    print("usual joint CRF: mIoU per alpha {" + ", ".join(f"{a:g}: {v:.1f}" for a, v in joint.items()) + "}")

    # PMM with the released defaults (alpha = 11), then the same oracle courtesy as for the usual rule:
    # its one free parameter, alpha, swept on the same images.
    alphas = (2.0, 11.0) if args.quick else (1.0, 2.0, 4.0, 8.0, 11.0, 24.0)
    modes: tuple[tuple[Literal["threshold", "crf"], str], ...] = (
        ("threshold", "threshold foreground"), ("crf", "CRF foreground"))
    for fg_mode, name in modes:
        t0 = time.perf_counter()
        image_arg = images if fg_mode == "crf" else None
        per_alpha = {a: miou(proportional_pseudo_mask(cams, labels, image_arg, alpha=a, foreground=fg_mode),
                             target) for a in alphas}
        dt = time.perf_counter() - t0
        best_a = max(per_alpha, key=lambda a: per_alpha[a])
        results[f"PMM proportional, {name}, alpha 11 (release)"] = per_alpha[11.0]
        results[f"PMM proportional, {name}, best alpha {best_a:g} (oracle)"] = per_alpha[best_a]
        table = ", ".join(f"{a:g}: {v:.1f}" for a, v in per_alpha.items())
        print(f"PMM {name}: mIoU per alpha {{{table}}} ({dt / len(alphas):.1f} s per pass over {len(ds)} images)")

    print("\npseudo-mask mIoU on the synthetic train_aug set (21 VOC labels, classes with non-empty union):")
    for name, value in results.items():
        print(f"  {name:<62s} {value:6.2f}")


if __name__ == "__main__":
    main()
