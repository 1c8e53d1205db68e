"""SMAF on the synthetic VOC data: single-scale vs fused multi-scale CAMs, then one self-training round.

1. Train a tiny EPS-like CAM network (C + 1 outputs, background last) for a few hundred steps on the synthetic
   VOC-format dataset: multi-label loss on the pooled class logits + a saliency loss on 1 - p(background)
   (a simplified EPS objective), with random flips and random rescaling (0.5-1.5x) as EPS/SMAF train.
2. Compare CAM mIoU on the val split (best background threshold from ``sweep_bg_score``) of the
   single-scale softmax maps and of the SMAF fusion (scales 0.5/1/1.5/2 + flips, sum, per-class max).
3. Self-train a copy of the network for a few hundred steps against the SMAF target
   (``smaf_target`` + ``smaf_loss``, released weight 100) and report its single-scale mIoU.

Run: ``python examples/smaf_fusion.py [--quick]`` (one CPU thread; see the SMAF docs page for timings).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.data import make_synthetic_voc
from wsss_blocks.data.voc import VOCSegmentation
from wsss_blocks.metrics import sweep_bg_score
from wsss_blocks.multiscale_fusion import MultiScaleAttentionFusion, smaf_loss, smaf_pseudo_mask, smaf_target

NUM_CLASSES = 6  # synthetic data uses the first 6 VOC class slots
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TinyEPS(nn.Module):
    """A 4-conv CAM network with output stride 4 and C + 1 outputs (background last, as EPS/SMAF)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*block(3, width // 2, 2), *block(width // 2, width, 2), *block(width, width, 1),
                                  *block(width, width, 1))
        self.head = nn.Conv2d(width, num_classes + 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # CAM logits, B×(C+1)×H/4×W/4
        return self.head(self.body(x))


def load_split(root, split: str, saliency: bool):
    ds = VOCSegmentation(root, split=split, labels_file="cls_labels.npy",
                         saliency_dir="SaliencyMaps" if saliency else None)
    samples = [ds[i] for i in range(len(ds))]
    images = (torch.stack([s["image"] for s in samples]) - MEAN) / STD
    labels = torch.stack([s["labels"][:NUM_CLASSES] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    sal = torch.stack([s["saliency"] for s in samples]) if saliency else None
    return images, labels, masks, sal


def random_rescale(gen, x, *maps, low=0.5, high=1.5):
    """Random rescale of a batch and its aligned maps (EPS/SMAF train with random resizing; images bicubic,
    maps bilinear with align_corners=True as the released SMAF loader). Keeps the multi-scale teacher honest:
    a network that has only seen one scale gives poor maps at the others.
    """
    s = low + (high - low) * torch.rand(1, generator=gen).item()
    size = (max(16, round(x.shape[-2] * s / 4) * 4), max(16, round(x.shape[-1] * s / 4) * 4))
    out = [F.interpolate(x, size=size, mode="bicubic", align_corners=False)]
    out += [F.interpolate(m, size=size, mode="bilinear", align_corners=True) for m in maps]
    return out


def train_teacher(net, images, labels, sal, steps, batch, gen):
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x, y, s = images[idx], labels[idx], sal[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            x, s = x.flip(-1), s.flip(-1)
        x, s = random_rescale(gen, x, s)
        z = net(x)
        cls_loss = F.multilabel_soft_margin_loss(z[:, :-1].mean((2, 3)), y)
        p_fg = 1 - torch.softmax(z, 1)[:, -1:]  # saliency prediction = 1 - p(background)
        sal_loss = F.mse_loss(p_fg, F.interpolate(s, size=z.shape[-2:], mode="bilinear", align_corners=False))
        loss = cls_loss + sal_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 0.05 * (1 - (step + 1) / steps) ** 0.9
    return net.eval()


def self_train(student, teacher_maps, images, labels, steps, batch, gen):
    """SMAF stage 2: MSE between the student's softmax and the denoised, reactivated fused maps.

    Optimiser as released (PolyOptimizer inherited from PSA/EPS): SGD lr 0.01, poly 0.9, weight decay 5e-4,
    10× lr on the head, and effectively no momentum (the released quirk passes 5e-4 into the momentum slot).
    """
    opt = torch.optim.SGD([{"params": student.body.parameters(), "lr": 0.01},
                           {"params": student.head.parameters(), "lr": 0.1}],
                          lr=0.01, momentum=5e-4, weight_decay=5e-4)
    base = [g["lr"] for g in opt.param_groups]
    student.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x, maps, y = images[idx], teacher_maps[idx], labels[idx]
        if torch.rand(1, generator=gen).item() < 0.5:  # the target follows the image's geometry exactly
            x, maps = x.flip(-1), maps.flip(-1)
        x, maps = random_rescale(gen, x, maps)
        target = smaf_target(maps, y, scale_factor=0.5)  # released: 1/4 of the crop; here 1/2 of a 64 px image
        loss = smaf_loss(student(x), target)  # 100 × MSE, background last
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * (1 - (step + 1) / steps) ** 0.9
    return student.eval()


def evaluate(name, maps, labels, masks):
    r = sweep_bg_score((maps, labels, masks), num_classes=NUM_CLASSES + 1)
    at_02 = r.miou[r.bg_scores.index(0.2)]
    print(f"{name:<38} best mIoU {100 * r.best_miou:5.2f} (bg {r.best_bg_score:.2f})   "
          f"mIoU at bg 0.20 {100 * at_02:5.2f}")
    return r.best_miou, r.best_bg_score, at_02


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--root", default=None, help="where to write the synthetic dataset (default: a temp dir)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny network: one thread is as fast, and the numbers are reproducible
    gen = torch.Generator().manual_seed(0)
    n_train, n_val, steps = (120, 40, 150) if args.quick else (400, 100, 600)
    root = make_synthetic_voc(args.root or tempfile.mkdtemp(prefix="smaf_synth_"), num_train=n_train,
                              num_val=n_val, image_size=64, seed=0, num_classes=NUM_CLASSES)
    tr_img, tr_lab, _, tr_sal = load_split(root, "train_aug", saliency=True)
    va_img, va_lab, va_mask, _ = load_split(root, "val", saliency=False)
    print(f"synthetic VOC: {len(tr_img)} train_aug / {len(va_img)} val images, 64×64, {NUM_CLASSES} classes")

    t0 = time.perf_counter()
    teacher = train_teacher(TinyEPS(NUM_CLASSES), tr_img, tr_lab, tr_sal, steps, 16, gen)
    print(f"teacher trained: {steps} steps in {time.perf_counter() - t0:.1f} s")

    single = MultiScaleAttentionFusion(scales=(1.0,), flip=False)  # the same maps, one pass
    fusion = MultiScaleAttentionFusion()  # released: (0.5, 1, 1.5, 2) × flip, softmax, bg last, sum, max
    res = {"single": evaluate("teacher, single scale", single(teacher, va_img, va_lab), va_lab, va_mask)}
    res["fused"] = evaluate("teacher, SMAF fusion (8 passes)", fusion(teacher, va_img, va_lab), va_lab, va_mask)

    t0 = time.perf_counter()
    tr_maps = torch.cat([fusion(teacher, tr_img[i:i + 50], tr_lab[i:i + 50]) for i in range(0, len(tr_img), 50)])
    student = self_train(copy.deepcopy(teacher), tr_maps, tr_img, tr_lab, steps // 2, 16, gen)
    print(f"student self-trained: {steps // 2} steps in {time.perf_counter() - t0:.1f} s")
    res["student"] = evaluate("student, single scale", single(student, va_img, va_lab), va_lab, va_mask)
    res["student_fused"] = evaluate("student, SMAF fusion", fusion(student, va_img, va_lab), va_lab, va_mask)
    pseudo = smaf_pseudo_mask(fusion(student, va_img, va_lab), va_lab)  # threshold 0.2, no CRF
    print(f"pseudo masks (student fused, bg 0.2): {pseudo.shape[0]} maps, classes {pseudo.unique().tolist()}")


if __name__ == "__main__":
    main()
