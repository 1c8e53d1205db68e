"""Progressive Patch Learning (PPL) vs a plain CAM network on the synthetic VOC-format dataset.

For every training seed (default 0, 1, 2), trains from scratch with the same data, initialisation,
optimiser, batch order and number of epochs (default 18):

1. ``baseline``: the plain CAM network (``PatchLearning(stages, insert_after=())``: stages -> 1×1 classifier);
2. ``ppl``: the same stages with patch learning; the insertion point moves low -> high with
   `ProgressiveSchedule` (sequential, one third of the epochs per stage);
3. ``explicit`` (optional): explicit multi-granularity fusion, all insertion points at once, detached inputs.

It prints the train-set CAM mIoU of each at the best background threshold (IRN-style evaluation with
ground-truth masks, so an upper bound on what a fixed threshold gives), per seed and as mean ± std, with
the training CPU time. For the patch models it reports the CAM of the fused classifier (the default)
and of the full path alone.

Run (about two minutes of CPU time for the two default variants × 3 seeds; one thread by default)::

    python examples/ppl_patch_learning.py
    python examples/ppl_patch_learning.py --variants baseline,ppl,explicit
    python examples/ppl_patch_learning.py --quick          # smoke run, seconds

No pretrained weights are used and the toy network is tiny, so the numbers say how the blocks behave
on toy data, not how PPL performs on PASCAL VOC.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.cam import normalize_cams
from wsss_blocks.data import VOCSegmentation, make_synthetic_voc
from wsss_blocks.metrics import sweep_bg_score
from wsss_blocks.patch_learning import PatchLearning, ProgressiveSchedule


def make_stages(width: int = 32, norm: str = "bn") -> list[nn.Module]:
    """A small ResNet-like trunk of 4 stages, overall stride 4 (64 px -> 16×16 CAMs)."""

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        def n(c: int) -> nn.Module:
            return nn.GroupNorm(8, c) if norm == "gn" else nn.BatchNorm2d(c)

        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), n(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), n(cout), nn.ReLU(inplace=True))

    return [block(3, width, 2), block(width, width, 2), block(width, 2 * width, 1), block(2 * width, 4 * width, 1)]


def load_split(root: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ds = VOCSegmentation(root, split=split, labels_file="cls_labels.npy")
    samples = [ds[i] for i in range(len(ds))]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.stack([s["labels"][:num_classes] for s in samples])
    masks = torch.stack([s["mask"] for s in samples]).long()
    return images, labels, masks


@torch.no_grad()
def evaluate(net: PatchLearning, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
             num_classes: int, insert_after: int | tuple[int, ...] | None = None) -> dict[str, float]:
    """Train-set CAM mIoU (best bg threshold) of the fused CAM and of the full-path CAM (flip-averaged)."""
    net.eval()
    fused, full = [], []
    for i in range(0, len(images), 64):
        x = (images[i:i + 64] - 0.5) / 0.25
        o, of = net(x, insert_after), net(x.flip(-1), insert_after)
        fused.append(F.relu(o.cams) + F.relu(of.cams).flip(-1))
        if o.full_cams is not None and of.full_cams is not None:
            full.append(F.relu(o.full_cams) + F.relu(of.full_cams).flip(-1))
    out = {}
    for name, maps in (("fused", fused), ("full_path", full)):
        if not maps:
            continue
        cams = F.interpolate(torch.cat(maps), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        cams = normalize_cams(cams) * labels[:, :, None, None]
        res = sweep_bg_score((cams, labels, masks), num_classes + 1)
        out[name] = 100 * res.best_miou
        out[name + "_thr"] = res.best_bg_score
    net.train()
    return out


def train(variant: str, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace, seed: int
          ) -> tuple[PatchLearning, float, float, ProgressiveSchedule | None]:
    torch.manual_seed(seed)
    stages = make_stages(args.width, args.norm)
    feat = 4 * args.width
    K = labels.shape[1]
    points = (1, 2, 3)  # after stem, stage1, stage2: every point that leaves at least one stage to run
    schedule = None
    if variant == "baseline":
        net = PatchLearning(stages, insert_after=(), num_classes=K, feat_dim=feat)
    elif variant == "ppl":
        net = PatchLearning(stages, insert_after=points[0], grid=args.grid, num_classes=K, feat_dim=feat,
                            patch_bn_stats=args.patch_bn_stats)
        per = max(1, args.epochs // len(points))
        schedule = ProgressiveSchedule(points, epochs_per_stage=[per] * (len(points) - 1)
                                       + [args.epochs - per * (len(points) - 1)])
    elif variant == "explicit":
        net = PatchLearning(stages, insert_after=points, grid=args.grid, num_classes=K, feat_dim=feat,
                            patch_bn_stats=args.patch_bn_stats)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(images) + args.batch_size - 1) // args.batch_size)
    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        specs = schedule.step(epoch) if schedule is not None else [None]
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), args.batch_size):
            idx = perm[i:i + args.batch_size]
            x = (images[idx] - 0.5) / 0.25
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            for spec in specs:  # one stage per batch (sequential); several in "cyclic" mode
                out = net(x) if spec is None else net(x, insert_after=spec.insert_after, grid=spec.grid)
                loss = F.multilabel_soft_margin_loss(out.logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched_lr.step()
        if args.verbose:
            pts = [s.insert_after for s in specs if s is not None]
            print(f"  [{variant}] epoch {epoch + 1}/{args.epochs} insert_after={pts or net.insert_after} "
                  f"loss={loss.item():.4f}")
    return net, time.perf_counter() - t0, time.process_time() - c0, schedule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "wsss_blocks_synthetic_ppl")
    p.add_argument("--num-train", type=int, default=240)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--norm", choices=["bn", "gn"], default="bn")
    p.add_argument("--patch-bn-stats", choices=["update", "frozen"], default="update",
                   help="whether the patch batches update BatchNorm running statistics")
    p.add_argument("--variants", default="baseline,ppl")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (same data, init and batch order per seed)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is robust on a shared machine; oversubscribed OpenMP threads thrash)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds): 32 images of 48², 3 epochs")
    args = p.parse_args()
    if args.quick:
        args.num_train, args.image_size, args.epochs, args.seeds = 32, 48, 3, "0"
        args.root = args.root.with_name(args.root.name + "_quick")
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    variants = args.variants.split(",")

    root = make_synthetic_voc(args.root, num_train=args.num_train, num_val=0, image_size=args.image_size,
                              seed=args.data_seed, num_classes=args.num_classes, saliency=False, annotations=False)
    images, labels, masks = load_split(root, "train", args.num_classes)
    print(f"synthetic VOC: {len(images)} train images {args.image_size}px, {args.num_classes} classes; "
          f"{args.epochs} epochs, batch {args.batch_size}, seeds {seeds}, {torch.get_num_threads()} thread(s)")

    results: dict[str, list[tuple[dict[str, float], float, float]]] = {v: [] for v in variants}
    descs: dict[str, str] = {}
    for seed in seeds:
        for variant in variants:
            net, secs, cpu, schedule = train(variant, images, labels, args, seed)
            res = evaluate(net, images, labels, masks, args.num_classes)
            descs[variant] = {"baseline": "plain CAM",
                              "ppl": f"PPL sequential, insert_after per epoch {[s[0] for s in schedule.sequence]}"
                              if schedule else "",
                              "explicit": "explicit fusion (1,2,3), detached"}[variant]
            results[variant].append((res, secs, cpu))
            print(f"seed {seed} {variant:9s} fused CAM mIoU {res['fused']:.2f}% (bg {res['fused_thr']:.2f})"
                  + (f" | full-path CAM {res['full_path']:.2f}% (bg {res['full_path_thr']:.2f})"
                     if variant != "baseline" and "full_path" in res else "")
                  + f" | train {secs:.1f}s wall, {cpu:.1f}s CPU")

    def mean_std(v: list[float]) -> str:
        t = torch.tensor(v, dtype=torch.float64)
        return f"{t.mean():.2f} ± {t.std():.2f}" if len(v) > 1 else f"{t.mean():.2f}"

    print(f"\nTrain-set CAM mIoU (%), best bg threshold, mean ± std over seeds {seeds}:\n")
    print("| variant | training | CAM mIoU (fused) | CAM mIoU (full path) | per seed (fused) | CPU s / run |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        rs = results[variant]
        fused = [r["fused"] for r, _, _ in rs]
        full = [r.get("full_path", float("nan")) for r, _, _ in rs]
        cpu = sum(c for _, _, c in rs) / len(rs)
        print(f"| {variant} | {descs[variant]} | {mean_std(fused)} | {mean_std(full)} | "
              f"{', '.join(f'{f:.2f}' for f in fused)} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
