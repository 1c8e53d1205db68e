"""PPL benchmark: per-training-step overhead of patch learning against the plain CAM network.

Setting (issue 4): torchvision ResNet-50 (``weights=None``), stages ``[stem, layer1, …, layer4]``, 448²
inputs, batch 8, K = 20 classes, a bias-free 1×1 classifier. By default layer4 has stride 1 (output stride
16, the IRN/Puzzle-CAM R50 setting of 28² feature maps); ``--os 32`` keeps torchvision's stride 2.
One training step = forward, multi-label soft-margin loss, backward, SGD step.

Rows (``ratio = median_ms / baseline_ms``, ``baseline_ms`` = the plain CAM network
``PatchLearning(stages, insert_after=())``, i.e. backbone + 1×1 classifier, in the same process):

- ``ppl_s2`` / ``ppl_s3`` / ``ppl_s4``: implicit patch learning with the 2×2 grid after layer1 / layer2 /
  layer3 (the three progressive stages; a sequential schedule pays one of them per step);
- ``ppl_explicit``: explicit multi-granularity fusion with all three branches (detached inputs);
- ``cpu_ms`` / ``cpu_ratio``: median process CPU time per step and its ratio (robust on a shared machine
  when run with ``--threads 1``; with several threads it also counts OpenMP spinning);
- ``mem_ratio``: peak memory ratio (CPU: increase of the RSS high-water mark);
- ``flop_ratio``: forward FLOPs of the same configuration over the baseline's, counted with
  ``torch.utils.flop_counter`` on one image: the ratio an ideal implementation would show.

The patch path re-runs the upper stages u_s on G = 4 patches per image at ¼ area, so its cost is about one
more forward of u_s; no target is set, the factor is reported. Full mode is heavy on CPU (one baseline step is
about 30 s of CPU time), so per configuration it runs one step for peak memory (which is also the warm-up)
and 2 timed repeats; ``--explicit`` adds the explicit row there
(it needs roughly 3× the baseline's activation memory). Quick mode (ResNet-18, 64², batch 2) only checks
that the script works.

Run: ``python -m benchmarks.bench_ppl [--quick] [--device cuda] [--threads 1] [--explicit]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import config_header, peak_memory, print_table, time_fn, write_json
from wsss_blocks.patch_learning import PatchLearning, backbone_stages


class _DualClock:
    """Wall clock for ``time_fn`` that also records process CPU time at every reading."""

    def __init__(self) -> None:
        self.cpu: list[float] = []

    def __call__(self) -> float:
        self.cpu.append(time.process_time())
        return time.perf_counter()

    def cpu_median_ms(self) -> float:
        return statistics.median((b - a) * 1e3 for a, b in zip(self.cpu[0::2], self.cpu[1::2]))


def _flops(net: PatchLearning, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return float(counter.get_total_flops())


def run(device: str = "cpu", quick: bool = False, explicit: bool | None = None, os: int = 16,
        repeats: int | None = None) -> list[dict[str, Any]]:
    from torchvision.models import resnet18, resnet50  # lazy: optional dependency, benchmark only

    torch.manual_seed(0)
    dev = torch.device(device)
    if quick:
        arch, H, B, reps, warmup = "resnet18", 64, 2, 3, 1
    else:
        arch, H, B, reps, warmup = "resnet50", 448, 8, 2, 0
    if repeats is not None:
        reps = repeats
    with_explicit = quick if explicit is None else explicit
    K = 20
    model = (resnet18 if arch == "resnet18" else resnet50)(weights=None)
    if os == 16:  # IRN-style: layer4 stride 1 without dilation
        blk = model.layer4[0]
        blk.conv1.stride = (1, 1)
        if hasattr(blk, "conv2"):
            blk.conv2.stride = (1, 1)
        if blk.downsample is not None:
            blk.downsample[0].stride = (1, 1)
    elif os != 32:
        raise ValueError(f"os must be 16 or 32, got {os}")
    model = model.to(dev).train()
    stages = backbone_stages(model)
    D = model.fc.in_features
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, H, H, generator=g).to(dev)
    labels = (torch.rand(B, K, generator=g) < 0.15).float()
    labels[:, 0] = 1
    labels = labels.to(dev)
    setting = f"{arch} OS{os}, B={B}, {H}², K={K}, grid 2×2, {dev.type}"

    configs: list[tuple[str, tuple[int, ...] | int, str]] = [
        ("baseline_cam", (), "plain CAM network (backbone + 1×1 classifier)"),
        ("ppl_s2", 2, "patch after layer1"),
        ("ppl_s3", 3, "patch after layer2"),
        ("ppl_s4", 4, "patch after layer3"),
    ]
    if with_explicit:
        configs.append(("ppl_explicit", (2, 3, 4), "explicit fusion, branches after layer1/2/3, detached"))

    x1 = images[:1]
    rows: list[dict[str, Any]] = []
    base_ms = base_cpu = base_mem = base_flops = 0.0
    for name, pts, what in configs:
        net = PatchLearning(stages, insert_after=pts, num_classes=K, feat_dim=D).to(dev).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)

        def step(net: PatchLearning = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.multilabel_soft_margin_loss(net(images).logits, labels).backward()
            opt.step()

        mem = peak_memory(step, dev)  # the first step doubles as the warm-up
        clock = _DualClock()
        t = time_fn(step, dev, warmup=warmup, repeats=reps, clock=clock)
        cpu_ms = clock.cpu_median_ms()
        flops = _flops(net, x1)
        row: dict[str, Any] = {"name": name, "params": f"{setting}; {what}", "median_ms": t["median_ms"],
                               "iqr_ms": t["iqr_ms"], "cpu_ms": cpu_ms, "repeats": reps, "peak_mem_mb": mem,
                               "gflops_fwd_per_image": flops / 1e9}
        if not base_ms:
            base_ms, base_cpu, base_mem, base_flops = t["median_ms"], cpu_ms, mem, flops
        else:
            row.update({"baseline_ms": base_ms, "baseline_cpu_ms": base_cpu, "baseline_mem_mb": base_mem,
                        "ratio": t["median_ms"] / base_ms, "cpu_ratio": cpu_ms / base_cpu,
                        "mem_ratio": mem / base_mem if base_mem else None, "flop_ratio": flops / base_flops})
        rows.append(row)
        del net, opt
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="PPL per-step overhead benchmark")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--explicit", action="store_true", help="also time explicit fusion in full mode")
    parser.add_argument("--os", type=int, default=16, choices=[16, 32], help="ResNet output stride")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(config_header(args.device))
    rows = run(args.device, args.quick, explicit=True if args.explicit else None, os=args.os,
               repeats=args.repeats)
    print_table(rows, ["name", "median_ms", "cpu_ms", "peak_mem_mb", "ratio", "cpu_ratio", "mem_ratio",
                       "flop_ratio", "gflops_fwd_per_image"])
    for r in rows:
        if "ratio" in r:
            print(f"{r['name']}: step time ×{r['ratio']:.2f} wall, ×{r['cpu_ratio']:.2f} CPU time of the plain CAM "
                  f"network (forward FLOP ratio ×{r['flop_ratio']:.2f}); {r['params']}")
    suffix = "_quick" if args.quick else ""
    path = write_json(f"bench_ppl_{torch.device(args.device).type}{suffix}", rows, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
