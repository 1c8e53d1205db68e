"""L2G benchmarks: cost of the patch sampler + transfer loss per training step.

Released VOC setting: batch 3 global views of 448², 6 patches of 320² per image (18 patches), K = 21
maps (20 classes + background), stride 8 (global map 56², local maps 40²), with saliency.

Rows:

- ``l2g_sampler``: `LocalPatchSampler` on images, labels and saliency (boxes + crops).
- ``l2g_loss_fwd_bwd``: `LocalToGlobalTransfer` forward + backward into the global logits
  (target build, RoIAlign, softmax, MSE and its gradient).
- ``l2g_step_overhead``: sampler + loss forward + backward, against ``baseline_ms`` = a torchvision
  ``resnet50(weights=None)`` forward + backward on the same batch of global views (3×3×448×448) on the same
  device, ``ratio = median_ms / baseline_ms``; target ratio ≤ 0.10 (issue 3). The real L2G step also runs
  two backbones (global + local on 18 patches), so this baseline is the conservative one.
- ``roi_align_ours`` vs ``baseline_ms`` = ``torchvision.ops.roi_align`` on the same inputs (forward + backward),
  for information.

Quick mode uses tiny sizes (batch 2, 4 patches of 64² from 96², K = 6) and only checks that the script
works; its ratio is not the target figure. Run: ``python -m benchmarks.bench_l2g [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.harness import check_target, config_header, peak_memory, print_table, time_fn, write_json
from wsss_blocks.local_global import LocalPatchSampler, LocalToGlobalTransfer, boxes_to_roi_format
from wsss_blocks.ops import roi_align

TARGET_RATIO = 0.10


def run(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    if quick:
        B, N, H, p, C, repeats, warmup = 2, 4, 96, 64, 5, 2, 1
    else:
        B, N, H, p, C, repeats, warmup = 3, 6, 448, 320, 20, 5, 1
    K, s = C + 1, 8
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, H, H, generator=g).to(dev)
    saliency = torch.rand(B, 1, H, H, generator=g).to(dev)
    labels = (torch.rand(B, C, generator=g) < 0.15).float()
    labels[:, 0] = 1
    labels = labels.to(dev)
    global_logits = torch.randn(B, K, H // s, H // s, generator=g).to(dev).requires_grad_()
    local_maps = torch.randn(B * N, K, p // s, p // s, generator=g).to(dev)
    sampler = LocalPatchSampler(N, p, generator=torch.Generator().manual_seed(1))
    l2g = LocalToGlobalTransfer(C)
    views = sampler(images, labels, saliency)
    setting = f"B={B}, N={N}, {p}² of {H}², K={K}, {dev.type}"

    def sample() -> None:
        sampler(images, labels, saliency)

    def loss_fwd_bwd() -> None:
        global_logits.grad = None
        l2g(global_logits, local_maps, views["boxes"], labels, views["patch_saliency"]).backward()

    def step() -> None:
        v = sampler(images, labels, saliency)
        global_logits.grad = None
        l2g(global_logits, local_maps, v["boxes"], labels, v["patch_saliency"]).backward()

    from torchvision.models import resnet50  # lazy: optional dependency, benchmark only

    net = resnet50(weights=None).to(dev).train()

    def resnet_fwd_bwd() -> None:
        net.zero_grad(set_to_none=True)
        net(images).sum().backward()

    rows: list[dict[str, Any]] = []
    t_s = time_fn(sample, dev, warmup=warmup, repeats=repeats)
    rows.append({"name": "l2g_sampler", "params": setting, "median_ms": t_s["median_ms"],
                 "peak_mem_mb": peak_memory(sample, dev)})
    t_l = time_fn(loss_fwd_bwd, dev, warmup=warmup, repeats=repeats)
    rows.append({"name": "l2g_loss_fwd_bwd", "params": setting, "median_ms": t_l["median_ms"],
                 "peak_mem_mb": peak_memory(loss_fwd_bwd, dev)})
    t_step = time_fn(step, dev, warmup=warmup, repeats=repeats)
    t_base = time_fn(resnet_fwd_bwd, dev, warmup=warmup, repeats=repeats if quick else 3)
    ratio = t_step["median_ms"] / t_base["median_ms"]
    rows.append({"name": "l2g_step_overhead", "params": setting + (" (quick: sizes not the target's)"
                                                                   if quick else ""),
                 "median_ms": t_step["median_ms"], "peak_mem_mb": peak_memory(step, dev),
                 "baseline_ms": t_base["median_ms"],
                 "baseline_mem_mb": None if quick else peak_memory(resnet_fwd_bwd, dev),
                 "ratio": ratio, "target": f"ratio <= {TARGET_RATIO} vs resnet50 fwd+bwd",
                 "passed": None if quick else check_target(ratio, TARGET_RATIO, higher_is_better=False)})

    from torchvision.ops import roi_align as tv_roi_align

    feats = global_logits.detach().clone().requires_grad_()
    rois = boxes_to_roi_format(views["boxes"])  # R×5 rows (batch index, x1, y1, x2, y2), as torchvision takes
    hw = p // s

    def ours() -> None:
        feats.grad = None
        roi_align(feats, rois, hw, 1 / s).square().sum().backward()

    def tv() -> None:
        feats.grad = None
        tv_roi_align(feats, rois, hw, 1 / s).square().sum().backward()

    t_o = time_fn(ours, dev, warmup=warmup, repeats=repeats)
    t_t = time_fn(tv, dev, warmup=warmup, repeats=repeats)
    rows.append({"name": "roi_align_ours_fwd_bwd", "params": f"{B}x{K}x{H // s}² -> {B * N}x{K}x{hw}²",
                 "median_ms": t_o["median_ms"], "peak_mem_mb": peak_memory(ours, dev),
                 "baseline_ms": t_t["median_ms"], "ratio": t_o["median_ms"] / t_t["median_ms"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="L2G benchmarks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(config_header(args.device))
    rows = run(args.device, args.quick)
    print_table(rows, ["name", "params", "median_ms", "peak_mem_mb", "baseline_ms", "baseline_mem_mb", "ratio"])
    for r in rows:
        if r.get("passed") is not None:
            status = "PASS" if r["passed"] else "FAIL"
            print(f"{status}  {r['name']}: ratio {r['ratio']:.4f} (target <= {TARGET_RATIO})")
        elif "target" in r:
            print(f"(quick mode) {r['name']}: ratio {r['ratio']:.4f}; run without --quick for the target check")
    suffix = "_quick" if args.quick else ""
    path = write_json(f"bench_l2g_{torch.device(args.device).type}{suffix}", rows, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
