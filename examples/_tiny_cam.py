"""Shared helper of the examples: a tiny CAM network trained on the synthetic VOC-format dataset on CPU.

Used by ``pmm_pseudo_masks.py`` and ``varm_refine_cams.py``; not an example itself (the leading underscore).
`common_parser` holds their shared options, `prepare_run` applies ``--quick``, seeds torch and
writes and loads a small synthetic dataset (`load_synthetic_train_aug`), and `train_tiny_cam`
trains a `TinyBackbone` + `CAMHead` on
the image labels with the multi-label soft-margin loss: Adam, lr 2e-3, weight decay 1e-4, random horizontal
flips; the batch order and the flips come from ``gen``, the initialisation from torch's global generator.

The examples import it as ``from _tiny_cam import ...``: ``python examples/x.py`` puts ``examples/`` on
``sys.path``, and each example adds its own folder when it is run another way (``runpy``, ``importlib``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss_blocks.data import VOCSegmentation, make_synthetic_voc
from wsss_blocks.models.backbones import TinyBackbone
from wsss_blocks.models.heads import CAMHead

__all__ = ["MEAN", "STD", "TinyCAMNet", "common_parser", "load_all", "load_synthetic_train_aug", "prepare_run",
           "train_tiny_cam"]

#: ImageNet normalisation the network applies to its [0, 1] input images
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TinyCAMNet(torch.nn.Module):
    """TinyBackbone (widths 32/64/128, output stride 8) + CAMHead; takes [0, 1] images, normalises them."""

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.backbone = TinyBackbone(widths=(32, 64, 128), output_stride=8)
        self.head = CAMHead(128, num_classes)

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone((images01 - MEAN.to(images01)) / STD.to(images01))[-1])


def common_parser(description: str, num_train: int, size: int, epochs: int = 12) -> argparse.ArgumentParser:
    """Command line options both examples take: --num-train, --size, --epochs, --seed, --quick, --root."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--num-train", type=int, default=num_train)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--root", default=None, help="dataset folder (default: a temporary folder)")
    return parser


def load_all(ds: VOCSegmentation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sample of ``ds`` stacked: images B×3×H×W in [0, 1], labels B×20, masks B×H×W."""
    samples = [ds[i] for i in range(len(ds))]
    return (torch.stack([s["image"] for s in samples]), torch.stack([s["labels"] for s in samples]),
            torch.stack([s["mask"] for s in samples]))


def load_synthetic_train_aug(root: str | None, num_train: int, size: int, seed: int, prefix: str
                             ) -> tuple[Path, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write the synthetic VOC dataset (8 val images) to ``root`` (default: a new temporary folder named
    ``prefix*``) and load its whole ``train_aug`` split; prints one line. Returns root, images, labels, masks.
    """
    path = make_synthetic_voc(root or tempfile.mkdtemp(prefix=prefix), num_train=num_train, num_val=8,
                              image_size=size, seed=seed)
    ds = VOCSegmentation(path, split="train_aug", labels_file="cls_labels.npy")
    images, labels, target = load_all(ds)
    print(f"synthetic VOC: {len(ds)} train_aug images of {size}×{size} at {path}")
    return path, images, labels, target


def prepare_run(args: argparse.Namespace, quick: tuple[int, int, int], prefix: str
                ) -> tuple[torch.Generator, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start a run from `common_parser` options: with ``--quick`` set ``(num_train, epochs, size)``
    to ``quick``; seed torch's global generator with ``--seed`` and make ``gen`` from it; load the data.

    Returns:
        ``gen`` (for `train_tiny_cam`), images, labels and masks of the synthetic train_aug split.
    """
    if args.quick:
        args.num_train, args.epochs, args.size = quick
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    _, images, labels, masks = load_synthetic_train_aug(args.root, args.num_train, args.size, args.seed, prefix)
    return gen, images, labels, masks


def train_tiny_cam(images: torch.Tensor, labels: torch.Tensor, epochs: int, gen: torch.Generator,
                   batch: int = 16) -> TinyCAMNet:
    """Train a new `TinyCAMNet` on image labels; returns it in eval mode.

    Prints the mean classification loss of every epoch and the training time.

    Args:
        images: B×3×H×W training images in [0, 1].
        labels: B×20 multi-hot image labels.
        epochs: passes over the images, each in a new random order.
        gen: the generator of the batch order and of the flips.
        batch: images per step.
    """
    net = TinyCAMNet()
    t0 = time.perf_counter()
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
    print(f"trained the CAM network in {time.perf_counter() - t0:.1f} s")
    return net.eval()
