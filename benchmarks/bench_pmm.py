"""PMM benchmarks: proportional pseudo-mask throughput, CoV smoothing and the PUF loss.

Rows (VOC-like setting: 20 foreground classes + background = 21 labels, 375×500 images):

- ``cov_smooth``: one image's 20 class maps.
- ``ppmg_threshold``: `proportional_pseudo_mask` with the CRF-free threshold foreground.
- ``ppmg_crf_pydensecrf``: the release pipeline (per present class a 2-label pydensecrf CRF, 10
  iterations) through the library; ``baseline`` is a straight numpy transcription of the release's
  per-class loop (``refine_cam.py`` ``ppmg``) on the same inputs, so ``ratio = baseline / ours``.
- ``ppmg_crf_library``: the same through `wsss_blocks.crf.DenseCRF` (when that module exists; on
  ``--device cuda`` its PyTorch backend).
- ``puf_loss``: forward + backward of `PretendedUnderFittingLoss` vs plain ``F.cross_entropy``.

Throughput is reported as images/s for 1 and 3 present classes per image (VOC train_aug averages about
1.5 classes per image). Run: ``python benchmarks/bench_pmm.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import config_header, peak_memory, print_table, time_fn, write_json
from wsss_blocks.losses import PretendedUnderFittingLoss
from wsss_blocks.pseudo_mask import cov_smooth, proportional_pseudo_mask


def _inputs(h: int, w: int, present: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(1, 20, h // 8, w // 8, generator=g)
    cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False) ** 3  # smooth blobs
    cams = cams / cams.amax(dim=(-2, -1), keepdim=True)
    labels = torch.zeros(1, 20)
    labels[0, torch.randperm(20, generator=g)[:present]] = 1
    image = torch.rand(1, 3, h // 4, w // 4, generator=g)
    image = F.interpolate(image, size=(h, w), mode="nearest")
    return cams.to(device), labels.to(device), image.to(device)


def _release_profile_ppmg(img_u8: np.ndarray, cams: np.ndarray, present: list[int]) -> np.ndarray:
    """Baseline: the release's per-class numpy loop (CVS, per-class background, 2-label CRF, importance)."""
    import pydensecrf.densecrf as dcrf

    h, w = img_u8.shape[:2]
    fg_all = [np.ones((h, w), dtype=np.float32)]
    imp_all = [fg_all[0]]
    for c in present:
        a = cams[c]
        act = a[a > 0.05]
        cv = 0.0 if act.size == 0 else 0.3 * act.std() / (act.mean() + 1e-8)
        s = np.where(a >= 0.05, a, 0.0) ** (1 - cv)
        probs = np.concatenate([(1 - s[None]) ** 11.0, s[None]], 0).astype(np.float32)
        d = dcrf.DenseCRF2D(w, h, 2)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(2, -1)))
        d.addPairwiseGaussian(sxy=3, compat=10)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(img_u8), compat=10)
        q = np.array(d.inference(10)).reshape(2, h, w)[1]
        f = (q > 0.5).astype(np.float32)
        fg_all.append(f)
        imp_all.append(a / (1 + (a * f).sum()))
        fg_all[0] = fg_all[0] * (f == 0)
        imp_all[0] = fg_all[0]
    return np.argmax(np.stack(fg_all) * np.stack(imp_all), 0)


def _interleaved(fn: Any, baseline: Any, warmup: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """CPU timing of two functions alternated run by run, so load changes hit both alike (median ms)."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
        baseline()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        a.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        baseline()
        b.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(a)}, {"median_ms": statistics.median(b)}


def _has_library_crf() -> bool:
    try:
        from wsss_blocks.crf import DenseCRF  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


def _ppmg_rows(h: int, w: int, present: int, device: str, warmup: int, repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    res = f"{h}x{w}"
    cams, labels, image = _inputs(h, w, present, device, seed=present)

    def thr() -> torch.Tensor:
        out = proportional_pseudo_mask(cams, labels, foreground="threshold")
        assert isinstance(out, torch.Tensor)
        return out

    t = time_fn(thr, device, warmup=warmup, repeats=repeats)
    rows.append({"name": "ppmg_threshold", "params": f"{res}, C=20, present={present}, {device}",
                 "median_ms": t["median_ms"], "images_per_s": 1e3 / t["median_ms"],
                 "peak_mem_mb": peak_memory(thr, device)})

    if importlib.util.find_spec("pydensecrf") is not None:
        from wsss_blocks.crf import DenseCRF

        direct = DenseCRF.pmm_binary(backend="pydensecrf")
        cams_c, labels_c, image_c = cams.cpu(), labels.cpu(), image.cpu()

        def crf_direct() -> torch.Tensor:
            out = proportional_pseudo_mask(cams_c, labels_c, image_c, crf=direct)
            assert isinstance(out, torch.Tensor)
            return out

        img_u8 = (image_c[0] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        cams_np = cams_c[0].numpy()
        pres = [int(c) for c in labels_c[0].nonzero()[:, 0]]
        t, tb = _interleaved(crf_direct, lambda: _release_profile_ppmg(img_u8, cams_np, pres), warmup, repeats)
        ours = crf_direct()[0].numpy()
        ref = _release_profile_ppmg(img_u8, cams_np, pres)
        ref_vals = np.zeros_like(ref)
        for j, c in enumerate(pres):
            ref_vals[ref == j + 1] = c + 1
        rows.append({"name": "ppmg_crf_pydensecrf", "params": f"{res}, C=20, present={present}, cpu",
                     "median_ms": t["median_ms"], "images_per_s": 1e3 / t["median_ms"],
                     "peak_mem_mb": peak_memory(crf_direct, "cpu"), "baseline_ms": tb["median_ms"],
                     "ratio": tb["median_ms"] / t["median_ms"],
                     "agreement_with_baseline": float((ours == ref_vals).mean())})
    if _has_library_crf():
        def crf_lib() -> torch.Tensor:
            out = proportional_pseudo_mask(cams, labels, image)
            assert isinstance(out, torch.Tensor)
            return out

        t = time_fn(crf_lib, device, warmup=warmup, repeats=repeats)
        rows.append({"name": "ppmg_crf_library", "params": f"{res}, C=20, present={present}, {device}",
                     "median_ms": t["median_ms"], "images_per_s": 1e3 / t["median_ms"],
                     "peak_mem_mb": peak_memory(crf_lib, device)})
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    h, w = (94, 125) if quick else (375, 500)
    repeats, warmup = (1, 1) if quick else (5, 1)
    rows: list[dict[str, Any]] = []
    res = f"{h}x{w}"

    cams, _, _ = _inputs(h, w, 3, device)
    t = time_fn(lambda: cov_smooth(cams), device, warmup=warmup, repeats=repeats)
    rows.append({"name": "cov_smooth", "params": f"1x20x{res}", "median_ms": t["median_ms"],
                 "peak_mem_mb": peak_memory(lambda: cov_smooth(cams), device)})

    for present in (1, 3):
        rows.extend(_ppmg_rows(h, w, present, device, warmup, repeats))

    b, hw = (2, 64) if quick else (8, 256)
    logits = torch.randn(b, 21, hw, hw, device=device, requires_grad=True)
    target = torch.randint(0, 21, (b, hw, hw), device=device)
    target[:, :8] = 255
    crit = PretendedUnderFittingLoss(beta=10.0)  # gate on: the clamp path is what runs

    def puf() -> None:
        crit(logits, target).backward()

    def ce() -> None:
        F.cross_entropy(logits, target, ignore_index=255).backward()

    tp = time_fn(puf, device, warmup=warmup, repeats=repeats)
    tc = time_fn(ce, device, warmup=warmup, repeats=repeats)
    rows.append({"name": "puf_loss_fwd_bwd", "params": f"{b}x21x{hw}x{hw}", "median_ms": tp["median_ms"],
                 "peak_mem_mb": peak_memory(puf, device), "baseline_ms": tc["median_ms"],
                 "ratio": tc["median_ms"] / tp["median_ms"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="PMM benchmarks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(config_header(args.device))
    rows = run(args.device, args.quick)
    print_table(rows, ["name", "params", "median_ms", "images_per_s", "peak_mem_mb", "baseline_ms", "ratio",
                       "agreement_with_baseline"])
    suffix = "_quick" if args.quick else ""
    path = write_json(f"bench_pmm_{torch.device(args.device).type}{suffix}", rows, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
