"""The sections of the GPU suite (``python -m benchmarks.gpu``); each is a generator of result rows.

Every section takes ``(device, quick)`` and yields row dicts as it finishes them (the runner saves each row at
once, so a section stopped by its timeout keeps its finished rows). ``quick`` runs the same code at toy sizes
(the CPU dry run). Rows that carry ``target`` and ``passed`` are the suite's goals; ``passed`` is computed
in quick mode too (to exercise the code), but only full-size GPU figures are the goals' evidence.

Sections (in suite order):

* ``tests``: ``pytest -m cuda`` in a subprocess (the device/dtype parity tests of ``tests/test_cuda_parity.py``
  and the other CUDA-marked tests); off the GPU it runs the parity tests with ``--parity-device=cpu``.
* ``crf``: the PyTorch dense CRF on the device (batch 8 and 1, 375×500, K=21, 10 iterations, ``afa`` and
  ``deeplab`` presets) against pydensecrf on one CPU core per image; argmax agreement on scikit-image photos.
* ``refine``: PAR and VARM against the release-shaped algorithm (``benchmarks/par_baseline.py``) on the same
  device at (2, 21, 224, 224) and (8, 21, 448, 448): time, peak memory, max abs difference.
* ``cams``: multi-scale + flip CAMs of ResNet-38 and ResNet-50 at 375×500, AMP off and on: images/s.
* ``pseudo``: the pseudo-mask pass of each method's VOC config (``wsss_blocks/configs/<method>_voc.yaml``) on
  random weights at VOC image sizes, through the trainer's own per-batch code (``compute_cams`` and the
  method's pseudo-mask chain: CoV/PPMG, SMAF + CRF, VARM, ...): images/s and the projected time of VOC
  train_aug (10,582 images); plus PPL's CAMs followed by IRN's inference (``wsss_blocks.irn``), the step
  ``ppl_voc`` leaves out.
* ``train``: training steps of each method's VOC config at its real batch and crop through the trainer's own
  loop (``run_phase``: data pipeline, AMP as configured, optimizer): steps/s and peak memory.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch

from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent
Row = dict[str, Any]

METHODS = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")
VOC_TRAIN_AUG = 10_582   # IRN voc12/train_aug.txt
VOC_CAM_EVAL = 1_464     # VOC train: the CAM sweep split of the VOC configs
PSEUDO_GOAL_MIN = 15.0   # minutes for the train_aug pseudo masks on one GPU
CRF_SPEEDUP_GOAL = 30.0
CRF_AGREE_GOAL = 99.5
REFINE_SPEED_GOAL = 20.0
REFINE_MEM_GOAL = 1 / 8
REFINE_DIFF_GOAL = 1e-5

#: VOC 2012 image sizes (H, W) in the proportions of the common ones; the pseudo pass groups equal sizes
VOC_SIZES = ((375, 500),) * 5 + ((500, 375),) * 2 + ((333, 500),) * 2 + ((500, 333),)
QUICK_SIZES = ((64, 80), (64, 80), (80, 64), (64, 96))  # MiT-B1 needs >= 32 px at the smallest scale


# ------------------------------------------------------------------------------------------------ helpers
def sync(device: str) -> None:
    harness.sync(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of a region: ``torch.cuda.max_memory_allocated`` (absolute: weights, optimizer state and
    activations) on CUDA; on the CPU the increase of the resident-set high-water mark over the resident set at
    ``start()`` (``benchmarks/harness.py``), after resetting the mark.
    """

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.base_kb = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            harness._reset_hwm()
            self.base_kb = harness._rss_kb()

    def reset_peak(self) -> None:
        """Forget the peak so far (e.g. after warm-up) but keep the baseline of ``start()``."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            harness._reset_hwm()

    def mib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return max(0, harness._vm_hwm_kb() - self.base_kb) / 1024


def photo_pool(sizes: tuple[tuple[int, int], ...]) -> dict[tuple[int, int], torch.Tensor]:
    """{(H, W): 4×3×H×W float images in [0, 1]}: the scikit-image photos of ``bench_crf`` at each size."""
    from benchmarks.bench_crf import photos

    pool = {}
    for hw in sorted(set(sizes)):
        imgs, _ = photos(*hw)
        pool[hw] = imgs.permute(0, 3, 1, 2).float().div(255.0)
    return pool


def voc_like_samples(n: int, quick: bool, num_classes: int = 20, saliency: bool = False, seed: int = 0
                     ) -> list[dict[str, Any]]:
    """``n`` VOC-reader-like samples (``name``, ``image`` 3×H×W in [0, 1], ``labels``, optional ``saliency``) at
    VOC image sizes (toy sizes with ``quick``): photos, flipped and shifted per sample, 1-3 random classes.
    """
    sizes = QUICK_SIZES if quick else VOC_SIZES
    pool = photo_pool(sizes)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        hw = sizes[int(torch.randint(0, len(sizes), (1,), generator=g))]
        img = pool[hw][i % 4]
        if i % 2:
            img = img.flip(-1)
        img = img.roll(int(torch.randint(0, hw[1], (1,), generator=g)), dims=-1).contiguous()
        labels = torch.zeros(num_classes)
        k = int(torch.randint(1, 4, (1,), generator=g))
        labels[torch.randperm(num_classes, generator=g)[:k]] = 1.0
        s: dict[str, Any] = {"name": f"bench_{i:05d}", "image": img, "labels": labels}
        if saliency:
            low = torch.rand(1, 1, max(2, hw[0] // 32), max(2, hw[1] // 32), generator=g)
            s["saliency"] = torch.nn.functional.interpolate(low, size=hw, mode="bilinear", align_corners=False)[0]
        out.append(s)
    return out


class InMemoryVOC(torch.utils.data.Dataset):
    """A list of samples with the ``names`` attribute of the VOC reader (what the trainer's loops read)."""

    def __init__(self, samples: list[dict[str, Any]]):
        self.samples = samples
        self.names = [s["name"] for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}


def bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn`` with its arguments bound now (not looked up when called, as a lambda in a loop would)."""
    return lambda: fn(*args)


def _crf_uint8(crf: Callable[..., Any], images: Any, probs: Any) -> Any:
    """A `DenseCRF` call on uint8 ``B×H×W×3`` photos (passed as ``image_uint8``)."""
    return crf(None, probs, image_uint8=images)


def _interleaved(fns: dict[str, Callable[[], Any]], devices: dict[str, str], repeats: int, warmup: int = 1
                 ) -> dict[str, list[float]]:
    """Wall ms of each function, called interleaved (a, b, c, a, b, c, ...) after a warm-up of each."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(devices[k])
            t0 = time.perf_counter()
            f()
            sync(devices[k])
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


# ------------------------------------------------------------------------------------------------ 1. tests
def section_tests(device: str, quick: bool) -> Iterator[Row]:
    """``pytest -m cuda``: counts from a JUnit XML report. Off the GPU the parity tests run CPU against CPU."""
    tests = ROOT / "tests"
    if not tests.is_dir():
        raise FileNotFoundError(f"{tests} not found: the tests section needs a source checkout")
    parity = "cuda" if torch.device(device).type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               f"--parity-device={parity}", f"--junitxml={xml}", str(tests)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n" + "\n".join(tail))
        suite = ET.parse(xml).getroot()
        suites = [suite] if suite.tag == "testsuite" else list(suite.iter("testsuite"))
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname', '')}::{c.get('name', '')}" for s in suites for c in s.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
    passed_n = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    bad = count["failures"] + count["errors"]
    yield {"name": "pytest -m cuda", "params": f"--parity-device={parity}; exit code {proc.returncode}",
           "median_ms": wall * 1e3, "tests_passed": passed_n, "tests_failed": bad, "tests_skipped": count["skipped"],
           "failed_tests": failed[:20], "target": "no failed test", "passed": bad == 0 and passed_n > 0}


# ------------------------------------------------------------------------------------------------ 2. CRF
def section_crf(device: str, quick: bool) -> Iterator[Row]:
    """Torch dense CRF on ``device`` (batch 8 and batch 1) vs pydensecrf per image on one CPU core."""
    from benchmarks.bench_crf import cam_probs, photos
    from wsss_blocks.crf import DenseCRF, pydensecrf_available

    if not pydensecrf_available():
        raise RuntimeError("the crf section needs pydensecrf as the baseline: pip install 'wsss-blocks[crf]'")
    h, w, k, iters = (48, 64, 21, 10) if quick else (375, 500, 21, 10)
    repeats = 1 if quick else 3
    imgs, img_desc = photos(h, w)
    for preset in ("afa", "deeplab"):
        params = f"{preset} preset, {h}x{w}, K={k}, {iters} iterations"
        ref = DenseCRF.preset(preset, backend="pydensecrf")
        tch = DenseCRF.preset(preset, backend="torch")
        probs = cam_probs(4, k, h, w)
        with torch.no_grad():
            q_ref = ref(None, probs, image_uint8=imgs)
            q_t = tch(None, probs.to(device), image_uint8=imgs.to(device)).cpu()
        agree = 100.0 * float((q_ref.argmax(1) == q_t.argmax(1)).float().mean())
        yield {"name": f"agreement[{preset}]", "params": f"{params}; {img_desc}; torch on {device}",
               "agreement_pct": agree, "max_abs_diff": float((q_ref - q_t).abs().max()),
               "target": f"argmax agreement >= {CRF_AGREE_GOAL} %", "passed": agree >= CRF_AGREE_GOAL}
        nb = 8
        img_b = imgs[torch.arange(nb) % imgs.shape[0]]
        p_b = cam_probs(nb, k, h, w, seed=1)
        img_d, p_d = img_b.to(device), p_b.to(device)
        fns = {"pydensecrf": bind(_crf_uint8, ref, img_b[:1], p_b[:1]), "b8": bind(_crf_uint8, tch, img_d, p_d),
               "b1": bind(_crf_uint8, tch, img_d[:1], p_d[:1])}
        with torch.no_grad():
            t = _interleaved(fns, {"pydensecrf": "cpu", "b8": device, "b1": device}, repeats)
            mem = {key: harness.peak_memory(fns[key], device) for key in ("b8", "b1")}
        base_ms = statistics.median(t["pydensecrf"])
        for key, n in (("b8", nb), ("b1", 1)):
            per_image = statistics.median(t[key]) / n
            speedup = base_ms / per_image
            yield {"name": f"crf[{preset}] {device} batch {n} vs pydensecrf", "params": f"{params}, batch {n}",
                   "median_ms": per_image, "batch_ms": statistics.median(t[key]), "baseline_ms": base_ms,
                   "speedup": speedup, "images_per_s": 1e3 / per_image, "peak_mem_mb": mem[key],
                   "target": f"pydensecrf (1 core) / torch per image >= {CRF_SPEEDUP_GOAL:g}x" if n == nb else "",
                   "passed": speedup >= CRF_SPEEDUP_GOAL if n == nb else None,
                   "samples_ms": {"torch": t[key], "pydensecrf": t["pydensecrf"]}}
        free_memory()


# ------------------------------------------------------------------------------------------------ 3. PAR / VARM
def section_refine(device: str, quick: bool) -> Iterator[Row]:
    """PAR and VARM against the release-shaped algorithm on the same device: time, peak memory, difference."""
    from benchmarks.par_baseline import baseline_par, baseline_varm
    from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine

    # float32 means float32 here: the baseline gathers neighbours with convolutions, which cuDNN runs in TF32 (10
    # mantissa bits) on Ampere and newer GPUs by default; that would make "equal to 1e-5" a test of TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = ((1, 5, 48, 48), (2, 5, 64, 64)) if quick else ((2, 21, 224, 224), (8, 21, 448, 448))
    iters = 3 if quick else 10
    base_repeats, fast_per_base = (1, 2) if quick else (3, 3)
    cases = (("PixelAdaptiveRefine", PixelAdaptiveRefine(num_iter=iters),
              lambda i, m: baseline_par(i, m, num_iter=iters)),
             ("VariationAwareRefine", VariationAwareRefine(num_iter=iters),
              lambda i, m: baseline_varm(i, m, num_iter=iters)))
    for b, c, h, w in shapes:
        g = torch.Generator().manual_seed(0)
        image = torch.rand(b, 3, h, w, generator=g).to(device)
        maps = torch.rand(b, c, h, w, generator=g).softmax(1).to(device)
        for name, fast, base in cases:
            run_f, run_b = bind(fast, image, maps), bind(base, image, maps)
            with torch.no_grad():
                out_f, out_b = run_f(), run_b()  # also the warm-up of both
                diff = float((out_f - out_b).abs().max())
                del out_f, out_b
                free_memory()
                f_ms: list[float] = []
                b_ms: list[float] = []
                for _ in range(base_repeats):  # baseline, fast × fast_per_base, baseline, ...
                    b_ms += _interleaved({"base": run_b}, {"base": device}, 1, warmup=0)["base"]
                    f_ms += _interleaved({"fast": run_f}, {"fast": device}, fast_per_base, warmup=0)["fast"]
                free_memory()
                f_mem = harness.peak_memory(run_f, device)
                free_memory()
                b_mem = harness.peak_memory(run_b, device)
                free_memory()
            f_med, b_med = statistics.median(f_ms), statistics.median(b_ms)
            speedup = b_med / f_med
            mem_ratio = f_mem / b_mem if b_mem > 0 else float("nan")
            yield {"name": f"{name} ({b}, {c}, {h}, {w})", "params": f"B={b} C={c} {h}x{w}, {iters} iterations, "
                   f"dilations (1, 2, 4, 8, 12, 24), {device}, TF32 off", "median_ms": f_med, "baseline_ms": b_med,
                   "peak_mem_mb": f_mem, "baseline_mem_mb": b_mem, "speedup": speedup, "mem_ratio": mem_ratio,
                   "max_abs_diff": diff,
                   "target": f"speedup >= {REFINE_SPEED_GOAL:g}, memory ratio <= 1/8, max abs diff <= "
                             f"{REFINE_DIFF_GOAL:g}",
                   "passed": bool(speedup >= REFINE_SPEED_GOAL and mem_ratio <= REFINE_MEM_GOAL
                                  and diff <= REFINE_DIFF_GOAL),
                   "samples_ms": {"fast": f_ms, "baseline": b_ms}}
        del image, maps
        free_memory()


# ------------------------------------------------------------------------------------------------ 4. CAMs
def _amp_dtype(device: str) -> torch.dtype:
    # the trainer's AMP is float16 on CUDA; the CPU dry run exercises the same autocast path in bfloat16
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def section_cams(device: str, quick: bool) -> Iterator[Row]:
    """Multi-scale (1, 0.5, 1.5, 2) + flip CAMs of ResNet-38 (OS 8) and ResNet-50 (OS 16), AMP off and on."""
    from wsss_blocks.cam import multiscale_cams, normalize_cams
    from wsss_blocks.models import CAMNet

    h, w = (32, 40) if quick else (375, 500)
    batches = (1,) if quick else (1, 8)
    warmup, repeats = (0, 1) if quick else (1, 3)
    scales = (1.0, 0.5, 1.5, 2.0)
    pool = photo_pool(((h, w),))[(h, w)]
    fp32 = "float32" + (" (cuDNN TF32 convolutions, torch's default)" if torch.device(device).type == "cuda" else "")
    for backbone, kwargs in (("resnet38d", {}), ("resnet50", {"output_stride": 16})):
        torch.manual_seed(0)
        net = CAMNet(backbone, 20, None, backbone_kwargs=kwargs).to(device).eval()
        fn = lambda x, net=net: torch.relu(net.cams(x))
        for b in batches:
            x = pool[torch.arange(b) % 4].to(device)
            for amp in (False, True):
                def run(x: torch.Tensor = x, amp: bool = amp, fn: Callable = fn) -> torch.Tensor:
                    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type,
                                                         dtype=_amp_dtype(device), enabled=amp):
                        cams = multiscale_cams(fn, x, scales=scales, flip=True, out_size=(h, w))
                    return normalize_cams(cast(torch.Tensor, cams).float())

                st = harness.time_fn(run, device, warmup=warmup, repeats=repeats)
                mem = harness.peak_memory(run, device)
                per_image = st["median_ms"] / b
                yield {"name": f"{backbone} batch {b} AMP {'on' if amp else 'off'}",
                       "params": f"{b}x3x{h}x{w}, scales {scales} + flip, "
                                 f"{'autocast ' + str(_amp_dtype(device)).replace('torch.', '') if amp else fp32}"
                                 f", random weights",
                       "median_ms": per_image, "batch_ms": st["median_ms"], "images_per_s": 1e3 / per_image,
                       "peak_mem_mb": mem, "samples_ms": st["samples_ms"]}
        del net, fn
        free_memory()


def per_method(methods: tuple[str, ...], run: Callable[[str], list[Row]]) -> Iterator[Row]:
    """Rows of ``run(method)`` for every method; a method that raises (e.g. out of memory) gets an error row and
    the others still run; the section then fails, naming every failed method, with all finished rows kept.
    """
    errors = []
    for m in methods:
        try:
            rows = run(m)
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            errors.append(f"{m}: {msg}")
            rows = [{"name": f"{m}_voc", "error": msg}]
            print(f"{m} failed:", msg, flush=True)
        free_memory()
        yield from rows
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(methods)} methods failed: " + "; ".join(errors))


# ------------------------------------------------------------------------------------------------ 5. pseudo masks
def _bench_overrides(device: str) -> list[str]:
    """Run settings of the benchmark: the device, no progress bars or plots, this process's thread count, and
    no pretrained weights (the configs name local weight files; every figure is on random weights).
    """
    return [f"runtime.device={device}", "runtime.progress=false", "runtime.plots=false",
            f"runtime.threads={torch.get_num_threads()}", "cam.pretrained=null"]


def _restored_method(cfg: Any, env: Any, out_dir: Path) -> Any:
    """What ``restore_method`` builds for the pseudo-mask stage (every phase's structure, eval mode), with the
    random initial weights instead of a checkpoint.
    """
    from wsss_blocks.train.cam_stage import build_method
    from wsss_blocks.train.methods import PhaseContext

    method = build_method(cfg, env)
    for i, phase in enumerate(method.phases):
        method.on_phase_start(PhaseContext(phase=phase, index=i, total_steps=0, out_dir=out_dir, device=env.device,
                                           resuming=True, dataset=None))
    return method.to(env.device).eval()


#: extra pseudo-mask rows: ``ppl+irn`` is PPL's CAM network followed by IRN's inference (stride-4 CAMs, IRNet
#: boundary map, random walk; ``wsss_blocks.irn``), the refinement ``ppl_voc`` runs (``pseudo.refine: irn``),
#: timed apart from the ``ppl`` row; the IRNet training it needs is not timed
PSEUDO_EXTRA = ("ppl+irn",)


def section_pseudo(device: str, quick: bool, methods: tuple[str, ...] = METHODS + PSEUDO_EXTRA) -> Iterator[Row]:
    """The pseudo-mask pass of each ``<method>_voc`` config on random weights; projected VOC train_aug time."""
    n, warm = (1, 1) if quick else (24, 2)
    samples = InMemoryVOC(voc_like_samples(n + warm, quick))
    yield from per_method(methods, lambda m: [_pseudo_method(m, device, quick, samples, warm)])


class _IRNPass:
    """IRN's inference on top of a method's CAM network (``docs/irn.md`` step 4), random IRNet weights."""

    def __init__(self, device: str):
        from wsss_blocks.irn import RandomWalk
        from wsss_blocks.models import IRNet

        torch.manual_seed(0)
        self.irnet = IRNet(pretrained=None).to(device).eval()
        self.walk = RandomWalk()

    def cams(self, method: Any, image01: torch.Tensor, labels: torch.Tensor, cfg: Any) -> Any:
        from wsss_blocks.data.normalization import data_normalization, normalize_images
        from wsss_blocks.irn import irn_multiscale_cams

        x = normalize_images(image01, data_normalization(cfg.data))
        use_amp = cfg.runtime.amp and image01.device.type == "cuda"  # as compute_cams
        with torch.autocast(device_type=image01.device.type, dtype=torch.float16, enabled=use_amp):
            return irn_multiscale_cams(method.cam_fn, x, labels, scales=tuple(cfg.pseudo.scales))

    def masks(self, irn_cams: Any, labels: torch.Tensor, image01: torch.Tensor, cfg: Any) -> torch.Tensor:
        from wsss_blocks.data.normalization import data_normalization, normalize_images

        boundary = self.irnet.boundary_map(normalize_images(image01, data_normalization(cfg.data)))
        return self.walk(irn_cams.cams.float(), boundary, labels, image_size=tuple(image01.shape[-2:]))


def _pseudo_method(name: str, device: str, quick: bool, samples: InMemoryVOC, warm: int) -> Row:
    from wsss_blocks.train.datasets import iter_inference_batches
    from wsss_blocks.train.distributed import DistEnv
    from wsss_blocks.train.pipeline import PseudoChain
    from wsss_blocks.train.pseudo_stage import compute_cams
    from wsss_blocks.train.schema import load_run_config

    m, _, variant = name.partition("+")
    irn = _IRNPass(device) if variant == "irn" else None
    env = DistEnv(device=torch.device(device))
    # quick: two scales (PMM: one multi-crop scale of small tiles) keep the CPU dry run within seconds
    quick_ov = ["pseudo.scales=[1.0, 0.5]"] + (["method_args.crop_scales=[1.0]", "method_args.crop_size=64",
                                                "method_args.crop_stride=48"] if m == "pmm" else [])
    cfg = load_run_config(f"{m}_voc", _bench_overrides(device) + (["method_args.stage_c_pretrained=none"]
                                                                  if m == "pmm" else []) + (quick_ov if quick else []))
    if cfg.pseudo.refine == "irn":  # the IRN refinement is timed by the '+irn' row (random IRNet weights)
        cfg = load_run_config(f"{m}_voc", _bench_overrides(device) + (["method_args.stage_c_pretrained=none"]
                                                                      if m == "pmm" else [])
                              + (quick_ov if quick else []) + ["pseudo.refine=none"])
    chain = PseudoChain(cfg)
    bg = cfg.pseudo.bg_score
    bg_note = ""
    if bg == "sweep":  # the value does not change the cost; the sweep picks it on the CAM evaluation split
        bg, bg_note = 0.15, " (pseudo.bg_score sweep: 0.15 used)"
    with tempfile.TemporaryDirectory() as tmp:
        t_build = time.perf_counter()
        method = _restored_method(cfg, env, Path(tmp))
        chain.context.method = method
        build_s = time.perf_counter() - t_build
        mem = PeakMemory(device)
        cam_s = mask_s = 0.0
        count = 0
        with torch.no_grad():
            for k, group in enumerate(iter_inference_batches(samples, env, cfg.pseudo.batch_size)):
                img = torch.stack([s["image"] for s in group]).to(device)
                lab = torch.stack([s["labels"] for s in group]).to(device)
                if k < warm:  # warm-up (cuDNN autotuning, allocator, lazy imports)
                    if irn is not None:
                        irn.masks(irn.cams(method, img, lab, cfg), lab, img, cfg).cpu()
                    else:
                        chain.masks(compute_cams(method, img, lab, cfg), lab, img, float(bg)).cpu()
                    if k == warm - 1:
                        mem.start()
                    continue
                sync(device)
                t0 = time.perf_counter()
                cams = irn.cams(method, img, lab, cfg) if irn is not None else compute_cams(method, img, lab, cfg)
                sync(device)
                t1 = time.perf_counter()
                masks = (irn.masks(cams, lab, img, cfg) if irn is not None
                         else chain.masks(cams, lab, img, float(bg)))
                masks.to(torch.uint8).cpu()
                sync(device)
                t2 = time.perf_counter()
                cam_s += t1 - t0
                mask_s += t2 - t1
                count += len(group)
        peak = mem.mib()
        del method
        free_memory()
    per_image = (cam_s + mask_s) / count
    train_aug_min = VOC_TRAIN_AUG * per_image / 60
    stage_min = train_aug_min + VOC_CAM_EVAL * cam_s / count / 60
    crf = (f", chain {chain.spec.describe()}" if irn is None else
           ", IRN inference (stride-4 CAMs, IRNet boundary map with random weights, 256-step random walk, background "
           "0.25); IRNet training not timed")
    title = f"{m}_voc{' + IRN' if irn is not None else ''} pseudo masks"
    del irn
    free_memory()
    return {"name": title, "params": f"{count} images at VOC sizes (batch "
           f"{cfg.pseudo.batch_size}), scales {tuple(cfg.pseudo.scales)}{' + flip' if cfg.pseudo.flip else ''}, "
           f"{cfg.cam.backbone}, AMP {'on' if cfg.runtime.amp and torch.device(device).type == 'cuda' else 'off'}"
           f"{crf}, random weights{bg_note}",
           "median_ms": per_image * 1e3, "cam_ms": cam_s / count * 1e3, "mask_ms": mask_s / count * 1e3,
           "images_per_s": 1.0 / per_image, "projected_train_aug_min": train_aug_min,
           "projected_stage_min": stage_min, "build_s": build_s, "peak_mem_mb": peak,
           "target": f"VOC train_aug ({VOC_TRAIN_AUG:,} images) < {PSEUDO_GOAL_MIN:g} min",
           "passed": train_aug_min < PSEUDO_GOAL_MIN}


# ------------------------------------------------------------------------------------------------ 6. training
class _Stop(Exception):
    """Raised by the timing hook to end a phase after the measured steps (no checkpoint is written)."""


def _train_overrides(m: str, device: str, quick: bool) -> list[str]:
    # the learning rate does not change a step's cost; random weights can diverge at the released rates, and a
    # non-finite loss stops the loop, so the benchmark trains at 1e-6
    ov = [*_bench_overrides(device), "runtime.checkpoint_every=1000000000", "runtime.log_every=1000000000",
          "cam.lr=1.0e-6"]
    if m == "tscd":
        ov.append("method_args.cam_iters=0")  # every loss on from step 0 (the release's steps after 2,000)
    if m == "pmm":  # random weights for the stage-C network too; with frozen BN (identity statistics) a random
        # ScaleNet-101's activations grow to ~1e9 in its 23-block stage and the loss overflows, so its BN uses batch
        # statistics here (same layers and cost)
        ov += ["method_args.stage_c_pretrained=none", "method_args.stage_c_freeze_bn=false"]
    if quick:  # toy sizes: ResNet-38 steps cost seconds on one CPU thread even at 32 px
        ov += ["cam.batch_size=2", "runtime.num_workers=0"]
        toy = {"baseline": ["cam.crop_size=32", "cam.resize_long=[32, 48]"],
               "ppl": ["cam.crop_size=32", "cam.resize_long=[32, 48]"],
               "pmm": ["cam.crop_size=32", "cam.resize_long=[32, 48]", "method_args.stage_c_batch_size=2",
                       "method_args.crop_size=64", "method_args.crop_stride=48", "method_args.crop_scales=[1.0]",
                       "method_args.rough_mask_scales=[1.0]"],
               "smaf": ["cam.crop_size=32", "cam.resize_long=[32, 48]", "method_args.target_scales=[1.0]"],
               "l2g": ["cam.crop_size=32", "cam.resize_short=[32, 32]", "method_args.patch_size=16"],
               # MiT-B1's spatial reduction needs >= 29 px in TSCD's smallest view (crop x 0.3 x 0.5)
               "tscd": ["cam.crop_size=224"]}
        ov += toy[m]
    return ov


def section_train(device: str, quick: bool, methods: tuple[str, ...] = METHODS) -> Iterator[Row]:
    """Training steps of each ``<method>_voc`` config (every phase) through ``run_phase``: steps/s, peak memory."""
    # _train_method returns its rows: the method's networks and optimizer are garbage before the next one
    yield from per_method(methods, lambda m: _train_method(m, device, quick))


def _train_method(m: str, device: str, quick: bool) -> list[Row]:
    """Every phase of ``m``'s VOC config as ``train_cam`` runs it, stopped after warm-up + measured steps."""
    from wsss_blocks.data.normalization import data_normalization
    from wsss_blocks.train.cam_stage import build_method, prepare_env
    from wsss_blocks.train.datasets import AugmentedDataset, cam_train_transform
    from wsss_blocks.train.distributed import DistEnv
    from wsss_blocks.train.loop import PhaseSpec, run_phase
    from wsss_blocks.train.methods import PhaseContext
    from wsss_blocks.train.optim import total_steps_for
    from wsss_blocks.train.reporting import MetricLogger
    from wsss_blocks.train.schema import load_run_config

    warmup, repeats = (1, 1) if quick else (2, 5)
    env = DistEnv(device=torch.device(device))
    cfg = load_run_config(f"{m}_voc", _train_overrides(m, device, quick))
    prepare_env(cfg, env)
    c = cfg.cam
    mc = cfg.method_config()
    n = c.batch_size * c.accumulate * (1 if quick else 2)
    base = InMemoryVOC(voc_like_samples(n, quick, cfg.data.num_classes, cfg.data.saliency_dir is not None))
    dataset = AugmentedDataset(base, cam_train_transform(cfg), cfg.runtime.seed)
    amp = bool(cfg.runtime.amp) and torch.device(device).type == "cuda"
    mem = PeakMemory(device)
    mem.start()
    method = build_method(cfg, env)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i, phase in enumerate(method.phases):
            optim = method.phase_optim(phase, c)  # a phase's own batch size / epochs / lr (PMM's stage C)
            steps = int(method.phase_steps(phase, total_steps_for(optim, VOC_TRAIN_AUG)))
            t0 = time.perf_counter()
            method.on_phase_start(PhaseContext(phase=phase, index=i, total_steps=steps, out_dir=out,
                                               device=env.device, resuming=False, dataset=base))
            method.to(env.device)
            phase_data = method.phase_dataset(phase, base, dataset)  # PMM's stage C: multi-crop tiles
            setup_s = time.perf_counter() - t0
            stamps: list[float] = []

            def hook(info: dict[str, Any], stamps: list[float] = stamps) -> None:
                sync(device)
                stamps.append(time.perf_counter())
                if len(stamps) == warmup:
                    mem.reset_peak()
                if len(stamps) >= warmup + repeats:
                    raise _Stop

            spec = PhaseSpec(stage="cam", phase=phase, module=method, step_fn=method.training_step,
                             param_groups=method.param_groups(optim.lr, optim.weight_decay), dataset=phase_data,
                             optim=optim,
                             total_steps=steps, ckpt_method=cfg.method, num_classes=cfg.data.num_classes,
                             normalize=data_normalization(cfg.data), phase_index=i,
                             extra_state=method.extra_state_for_checkpoint, load_extra_state=method.load_extra_state)
            t_first = time.perf_counter()
            with contextlib.suppress(_Stop):
                run_phase(spec, cfg.runtime, env, out, MetricLogger(out / "log.jsonl", enabled=False), hooks=[hook])
            del spec
            if len(stamps) < warmup + repeats:
                raise RuntimeError(f"{m}:{phase} stopped after {len(stamps)} steps")
            durations = [(b - a) * 1e3 for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
            step_ms = statistics.median(durations)
            rows.append({
                "name": f"{m}_voc {phase} step",
                "params": f"batch {optim.batch_size}"
                + (f" x {optim.accumulate} accumulated" if optim.accumulate > 1 else "")
                + (f", tile {mc.crop_size}, {mc.stage_c_backbone} (BN batch statistics)"
                   if m == "pmm" and phase == "stage_c" else f", crop {c.crop_size}, {c.backbone}")
                + f", AMP {'on' if amp else 'off'}"
                + (", all TSCD losses (cam_iters 0)" if m == "tscd" else "") + ", random weights, lr 1e-6",
                "median_ms": step_ms, "steps_per_s": 1e3 / step_ms,
                "images_per_s": 1e3 * optim.batch_size * optim.accumulate / step_ms, "peak_mem_mb": mem.mib(),
                "first_steps_s": stamps[warmup - 1] - t_first, "phase_setup_s": setup_s,
                "phase_steps": steps, "projected_phase_h": steps * step_ms / 3.6e6, "samples_ms": durations})
            mem.reset_peak()
    return rows


SECTIONS: dict[str, tuple[str, Callable[[str, bool], Iterator[Row]]]] = {
    "tests": ("pytest -m cuda (device/dtype parity tests)", section_tests),
    "crf": ("Dense CRF: torch on the device vs pydensecrf", section_crf),
    "refine": ("PAR / VARM vs the release-shaped algorithm", section_refine),
    "cams": ("Multi-scale + flip CAMs", section_cams),
    "pseudo": ("Pseudo-mask pass of each VOC config", section_pseudo),
    "train": ("Training steps of each VOC config", section_train),
}
