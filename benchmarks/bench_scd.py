"""SCD loss benchmark: SelfCorrespondenceDistillation forward + backward at the TSCD working size.

TSCD (MiT-B1, crop 512, batch 4 over 2 GPUs, i.e. 2 per GPU): CAMs and segmentation logits at stride 4
(128×128) for the full view and a 0.3× view (38×38); 40 sample points. The overhead is reported relative
to a ResNet-50 forward + backward at the same batch and crop, as for the other training-time blocks.

Run: ``python -m benchmarks.bench_scd [--device cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.harness import peak_memory, print_table, time_fn, write_json
from wsss_blocks.correspondence import SelfCorrespondenceDistillation


def run(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    B, C = 2, 20
    crop = 128 if quick else 512
    h, h2 = crop // 4, max(1, round(crop * 0.3 / 4))
    g = torch.Generator().manual_seed(0)
    ta = torch.rand(B, C, h, h, generator=g).to(device)
    tb = torch.rand(B, C, h2, h2, generator=g).to(device)
    sa = torch.randn(B, C + 1, h, h, generator=g).to(device).requires_grad_(True)
    sb = torch.randn(B, C + 1, h2, h2, generator=g).to(device).requires_grad_(True)
    scd = SelfCorrespondenceDistillation().to(device)
    gen = torch.Generator(device=device).manual_seed(1)

    def step() -> None:
        loss = scd(ta, tb, sa, sb, generator=gen)
        loss.backward()

    t = time_fn(step, device, warmup=2, repeats=5)["median_ms"]
    row: dict[str, Any] = {"name": "scd_loss_fwd_bwd", "params": f"B={B}, C={C}+1, {h}^2 and {h2}^2 views, 40 points",
                           "median_ms": t, "peak_mem_mb": peak_memory(step, device)}
    if not quick:
        from wsss_blocks._checks import require

        tv = require("torchvision", "train", "the ResNet-50 baseline")
        r50 = tv.models.resnet50(weights=None).to(device)
        x = torch.rand(B, 3, crop, crop, device=device)

        def base() -> None:
            r50(x).sum().backward()

        tb_ms = time_fn(base, device, warmup=1, repeats=3)["median_ms"]
        row.update(baseline_ms=tb_ms, ratio=t / tb_ms, target="overhead <= 10% of a ResNet-50 fwd+bwd step",
                   passed=t / tb_ms <= 0.10)
    return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = run(args.device, args.quick)
    print_table(rows)
    print("wrote", write_json(f"scd_{args.device}{'_quick' if args.quick else ''}", rows, args.device))


if __name__ == "__main__":
    main()
