"""PMM pseudo-masks on the synthetic VOC dataset: the usual CAM argmax rule versus proportional pseudo-masks.

1. writes a small synthetic VOC-format dataset (no download);
2. trains a tiny CAM network on the image labels for a few epochs on CPU;
3. turns its multi-scale CAMs into pseudo-masks with
   - the usual rule: argmax over [background score, CAMs of the present classes]
     (`wsss_blocks.cam.cams_to_mask`), at the common fixed score 0.15 and at the best score of a
     sweep on the same images (an oracle, i.e. optimistic for the baseline), and refined by one joint dense
     CRF over [background, present classes] (PSA / PMM stage B, alpha swept: oracle),
   - PMM's proportional pseudo-masks (`wsss_blocks.pseudo_mask.proportional_pseudo_mask`) with the
     released defaults (alpha = 11) and at the best alpha of a sweep on the same images (oracle), with the
     CRF foreground (the library dense CRF: pydensecrf when installed, else its PyTorch backend) and with
     the CRF-free threshold foreground;
4. prints the pseudo-mask mIoU of each against the ground truth.

Run: ``python examples/pmm_pseudo_masks.py`` (a few minutes on 2 CPU cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from wsss_blocks.cam import cams_to_mask, multiscale_cams, normalize_cams
from wsss_blocks.crf import DenseCRF
from wsss_blocks.metrics import SegmentationMetric, sweep_bg_score
from wsss_blocks.pseudo_mask import proportional_pseudo_mask

if str(Path(__file__).resolve().parent) not in sys.path:  # run via runpy/importlib rather than as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_cam import common_parser, prepare_run, train_tiny_cam


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
    parser = common_parser(__doc__.splitlines()[0], num_train=240, size=64)
    parser.add_argument("--cache", default=None, help="save the CAMs to this .pt file, or reuse it if it exists")
    args = parser.parse_args()
    gen, images, labels, target = prepare_run(args, quick=(32, 1, 48), prefix="pmm_synth_")  # seeds torch

    if args.cache and os.path.exists(args.cache):
        cams = torch.load(args.cache)["cams"]
        print(f"loaded CAMs from {args.cache}")
    else:
        net = train_tiny_cam(images, labels, args.epochs, gen, batch=16)  # in eval mode
        with torch.no_grad():
            raw = multiscale_cams(lambda x: F.relu(net(x)["cams"]), images, scales=(1.0, 0.5, 1.5), flip=True)
        assert isinstance(raw, torch.Tensor)
        cams = normalize_cams(raw)  # per image and class, into [0, 1]
        if args.cache:
            torch.save({"cams": cams}, args.cache)

    results: dict[str, float] = {}
    results["usual argmax, bg score 0.15"] = miou(cams_to_mask(cams, labels, bg_score=0.15), target)
    sweep = sweep_bg_score((cams, labels, target), num_classes=21)
    results[f"usual argmax, best bg score {sweep.best_bg_score:.2f} (oracle)"] = 100.0 * sweep.best_miou

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
        print(f"PMM {name}: mIoU per alpha {{{table}}} ({dt / len(alphas):.1f} s per pass over {len(images)} images)")

    print("\npseudo-mask mIoU on the synthetic train_aug set (21 VOC labels, classes with non-empty union):")
    for name, value in results.items():
        print(f"  {name:<62s} {value:6.2f}")


if __name__ == "__main__":
    main()
