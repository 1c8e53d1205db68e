"""The generic, iteration-based training loop shared by the CAM and segmentation stages.

What it guarantees:

* **Bit-exact resumption.** The sample order of every epoch is a permutation seeded with
  ``seed + epoch`` (:func:`wsss_blocks.train.distributed.epoch_batches`), augmentation draws from a
  per-sample generator seeded with ``(seed, epoch, index)`` (:func:`wsss_blocks.data.transforms.sample_generator`),
  the learning rate is a pure function of the step (poly with optional linear warm-up), and a checkpoint
  holds model, optimizer, AMP scaler, the Python/NumPy/torch RNG states of every rank and the step. A run
  resumed from step ``k`` therefore continues with exactly the batches, augmentations, random draws and
  learning rates of the uninterrupted run (in deterministic mode on the same hardware).
* **Atomic checkpoints** every ``runtime.checkpoint_every`` steps and at the end of each phase
  (:func:`wsss_blocks.train.checkpoint.save_checkpoint`).
* DDP through torchrun (:mod:`wsss_blocks.train.distributed`), AMP on CUDA only, tqdm progress with ETA,
  a JSONL metric log, a loss/mIoU plot and per-epoch callbacks (CAM overlays).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data.io import as_disk_full
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, sample_generator
from .checkpoint import CheckpointError, load_model_state, rng_state, save_checkpoint, set_rng_state
from .distributed import DistEnv, all_gather_object, barrier, epoch_batches, reduce_mean_dict, wrap_ddp
from .schema import OptimConfig, RuntimeConfig

__all__ = ["set_seed", "configure_determinism", "poly_factor", "lr_factor", "data_normalization",
           "build_optimizer", "set_lr", "normalize_images",
           "AugmentedDataset", "MetricLogger", "PhaseSpec", "run_phase", "steps_per_epoch", "to_device",
           "CAFFE_MEAN_BGR"]

#: deeplab-pytorch / caffe mean in BGR order, 0..255 scale
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)

Hook = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------- seeding
def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the trainer owns the global state
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic algorithms (and cuDNN settings) on or off.

    In deterministic mode ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) as CUDA requires; operations
    without a deterministic implementation warn instead of failing.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


# ---------------------------------------------------------------------------------------------- schedule
def poly_factor(step: int, total: int, power: float = 0.9, warmup_steps: int = 0, warmup_ratio: float = 1e-6
                ) -> float:
    """Learning-rate factor at ``step``: linear warm-up from ``warmup_ratio``, then ``(1 - step/total)**power``.

    The poly part is IRN/PSA's ``PolyOptimizer`` (factor computed before the ``step``-th update); the
    warm-up is ToCo/AFA's ``PolyWarmupAdamW`` (linear from ``warmup_ratio`` to 1 over ``warmup_steps``).

    Examples:
        >>> poly_factor(0, 10), round(poly_factor(5, 10, power=1.0), 3)
        (1.0, 0.5)
    """
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return max(0.0, 1.0 - step / total) ** power


def lr_factor(step: int, total: int, optim: OptimConfig, steps_per_epoch: int) -> float:
    """Learning-rate factor of ``optim``'s schedule at ``step`` (before that step's update).

    ``lr_schedule: poly`` is :func:`poly_factor`; ``step`` multiplies by ``lr_decay_gamma`` at the start of each
    epoch in ``lr_decay_epochs`` (0-based; L2G ``--decay_points 5``: ×0.1 from the sixth epoch on). The
    warm-up applies to both. With ``lr_update_every = k`` the factor changes only every k steps
    (deeplab-pytorch recomputes its poly lr every 10 iterations).

    Examples:
        >>> from wsss_blocks.train.schema import OptimConfig
        >>> o = OptimConfig(lr_schedule="step", lr_decay_epochs=(2,), lr_decay_gamma=0.1)
        >>> [round(lr_factor(s, 40, o, steps_per_epoch=10), 3) for s in (0, 19, 20, 39)]
        [1.0, 1.0, 0.1, 0.1]
    """
    every = max(1, int(optim.lr_update_every))
    s = step - step % every
    if optim.lr_schedule == "poly" or s < optim.warmup_steps:  # poly_factor holds the linear warm-up
        return poly_factor(s, total, optim.poly_power, optim.warmup_steps, optim.warmup_ratio)
    if optim.lr_schedule == "step":
        spe = max(1, int(steps_per_epoch))
        passed = sum(1 for e in optim.lr_decay_epochs if s >= int(e) * spe)
        return float(optim.lr_decay_gamma) ** passed
    raise ValueError(f"lr_schedule must be 'poly' or 'step', got {optim.lr_schedule!r}")


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over parameter groups carrying ``lr_mult``.

    Each group keeps its own ``weight_decay``; its ``lr`` is reset by :func:`set_lr` every step.
    """
    groups = [dict(g) for g in groups if list(g["params"])]
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", cfg.weight_decay)
        g["lr"] = cfg.lr * g["lr_mult"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])),
                                 weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's ``lr = base_lr * lr_mult * factor``; return the base group's lr."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * float(g.get("lr_mult", 1.0)) * factor
    return base_lr * factor


# ---------------------------------------------------------------------------------------------- data
Normalization = str | tuple[tuple[float, float, float], tuple[float, float, float]]


def normalize_images(image01: Tensor, mode: Normalization = "imagenet") -> Tensor:
    """Network input from images in [0, 1]: ``"imagenet"`` (mean/std, RGB), ``"caffe"`` (BGR·255 − mean) or an
    explicit ``(mean, std)`` pair of RGB triples in [0, 1] units (e.g. L2G's COCO statistics).

    Examples:
        >>> [round(v, 3) for v in normalize_images(torch.zeros(1, 3, 1, 1), "caffe").flatten().tolist()]
        [-104.008, -116.669, -122.675]
        >>> normalize_images(torch.full((1, 3, 1, 1), 0.5), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).flatten().tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(mode, tuple):
        if len(mode) != 2 or len(mode[0]) != 3 or len(mode[1]) != 3:
            raise ValueError(f"normalize as (mean, std) needs two RGB triples, got {mode!r}")
        if min(mode[1]) <= 0:
            raise ValueError(f"normalize std must be positive, got {mode[1]!r}")
        mean = torch.tensor(mode[0], dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        std = torch.tensor(mode[1], dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        return (image01 - mean) / std
    if mode == "imagenet":
        return normalize_images(image01, (IMAGENET_MEAN, IMAGENET_STD))  # type: ignore[arg-type]
    if mode == "caffe":
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=image01.dtype, device=image01.device).view(1, 3, 1, 1)
        return image01.flip(1) * 255.0 - mean
    raise ValueError(f"normalize must be 'imagenet', 'caffe' or a (mean, std) pair, got {mode!r}")


def data_normalization(data: Any) -> Normalization:
    """The input normalisation of a :class:`~wsss_blocks.train.schema.DataConfig`: ``data.normalize`` or, when
    ``data.mean`` / ``data.std`` are set (with ``normalize: imagenet``), that ``(mean, std)`` pair."""
    if data.mean is None and data.std is None:
        return str(data.normalize)
    if data.normalize != "imagenet":
        raise ValueError(f"data.mean / data.std replace the ImageNet statistics and need data.normalize: imagenet, "
                         f"got {data.normalize!r}")
    mean = tuple(float(v) for v in (data.mean if data.mean is not None else IMAGENET_MEAN))
    std = tuple(float(v) for v in (data.std if data.std is not None else IMAGENET_STD))
    if min(std) <= 0:
        raise ValueError(f"data.std must be positive, got {list(std)}")
    return (mean, std)  # type: ignore[return-value]


_PAD = -1.0  # sentinel for padded image pixels (images live in [0, 1])


class AugmentedDataset(Dataset):
    """Wraps a VOC-style dataset: per-sample deterministic augmentation and a ``valid`` (not padded) mask.

    Indexed by ``(epoch, index)`` pairs; the transform gets ``sample_generator(seed, index, epoch)``, so
    the augmentation of a sample depends only on (seed, epoch, index) — not on workers, ranks or resumption.
    Random crops pad the image with a sentinel that becomes the ``valid`` mask; after normalisation the
    trainer sets padded pixels to 0 (the mean colour, as PSA/IRN/deeplab pad the normalised image).

    Output keys: ``image01`` (3×h×w in [0, 1], padding 0), ``valid`` (h×w bool), ``index``, ``name``,
    ``labels`` and, when the base dataset gives them, ``mask`` and ``saliency``.
    """

    def __init__(self, base: Dataset, transform: Callable[..., dict[str, Any]] | None, seed: int):
        self.base = base
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        s = dict(self.base[index])
        if self.transform is not None:
            s = self.transform(s, generator=sample_generator(self.seed, index, epoch))
        img = s.pop("image")
        valid = img[0] != _PAD
        s["image01"] = img.clamp(min=0.0)
        s["valid"] = valid
        s["index"] = int(index)
        return s


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def steps_per_epoch(num_samples: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch (the incomplete last batch is dropped, like the releases)."""
    return (num_samples // batch_size) // accumulate


class _BatchStream:
    """Infinite batch sampler over epochs, starting at optimizer step ``start``."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start: int, accumulate: int,
                 shuffle: bool = True):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.shuffle = shuffle
        self.acc = accumulate
        self.spe = steps_per_epoch(n, batch_size, accumulate)
        if self.spe < 1:
            raise ValueError(f"the training set has {n} images, fewer than one step of batch_size {batch_size}"
                             f" × accumulate {accumulate}")
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, pos = divmod(self.start, self.spe)
        while True:
            batches = epoch_batches(self.n, self.bs, epoch, self.seed, self.rank, self.world, shuffle=self.shuffle)
            for b in batches[pos * self.acc: self.spe * self.acc]:
                yield [(epoch, i) for i in b]
            epoch, pos = epoch + 1, 0


# ---------------------------------------------------------------------------------------------- logging
class MetricLogger:
    """Append-only JSONL metric log (one JSON object per line, flushed); only the main rank writes."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {k: (float(v) if isinstance(v, (np.floating, Tensor)) else v) for k, v in record.items()}
        rec.setdefault("time", round(time.time(), 3))
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        except OSError as e:
            full = as_disk_full(e, self.path)
            if full is not None:
                raise full from e
            raise

    def drop_after(self, stage: str, phase: str, step: int) -> None:
        """Remove records of ``stage``/``phase`` beyond ``step`` (written by a run that crashed later)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed run
            if r.get("stage") == stage and r.get("phase") == phase and r.get("phase_step", -1) > step:
                continue
            keep.append(json.dumps(r))
        from ..data.io import atomic_write

        with atomic_write(self.path, "w", fsync=False) as f:
            f.write("".join(line + "\n" for line in keep))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a train dependency
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


# ---------------------------------------------------------------------------------------------- the loop
class _StepModule(nn.Module):
    """Lets DDP wrap an arbitrary ``step_fn(batch, step, total)`` that runs ``inner``'s submodules."""

    def __init__(self, inner: nn.Module, fn: Callable[[dict[str, Any], int, int], dict[str, Tensor]]):
        super().__init__()
        self.inner = inner
        self._fn = fn

    def forward(self, batch: dict[str, Any], step: int, total: int) -> dict[str, Tensor]:
        return self._fn(batch, step, total)


@dataclass
class PhaseSpec:
    """One training phase for :func:`run_phase`.

    Attributes:
        stage: ``"cam"`` or ``"seg"`` (log/checkpoint tag).
        phase: phase name; ``phase_index`` its position; ``step_offset`` the global step at its start
            (checkpoint files are numbered by global step).
        module: the module whose ``state_dict`` is checkpointed (the method or the segmentation net).
        step_fn: ``(batch, step, total) -> dict`` with a ``"loss"`` entry.
        param_groups: optimizer groups (with ``lr_mult``).
        dataset: an :class:`AugmentedDataset`.
        optim: optimizer/schedule settings; ``total_steps`` the phase length.
        normalize: ``"imagenet"`` or ``"caffe"`` for the ``image`` entry of each batch.
        ckpt_method, num_classes: recorded in checkpoints and checked on resume.
        extra_state / load_extra_state: optional callables for non-parameter state.
        on_epoch_end: ``(epoch, global_step) -> None``, main rank only (plots, overlays).
        train_mode: ``(module) -> None`` that puts the module in train mode (default ``module.train()``).
        config: the run config as a dict (stored in checkpoints).
    """

    stage: str
    phase: str
    module: nn.Module
    step_fn: Callable[[dict[str, Any], int, int], dict[str, Tensor]]
    param_groups: list[dict[str, Any]]
    dataset: AugmentedDataset
    optim: OptimConfig
    total_steps: int
    ckpt_method: str
    num_classes: int
    normalize: Normalization = "imagenet"
    phase_index: int = 0
    step_offset: int = 0
    extra_state: Callable[[], dict[str, Any]] | None = None
    load_extra_state: Callable[[dict[str, Any]], None] | None = None
    on_epoch_end: Callable[[int, int], None] | None = None
    train_mode: Callable[[nn.Module], Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _scalar_metrics(out: Mapping[str, Any]) -> dict[str, float]:
    res = {}
    for k, v in out.items():
        if isinstance(v, Tensor) and v.numel() == 1:
            res[k] = float(v.detach())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            res[k] = float(v)
    return res


def run_phase(spec: PhaseSpec, runtime: RuntimeConfig, env: DistEnv, out_dir: str | os.PathLike,
              logger: MetricLogger, resume: Mapping[str, Any] | None = None, hooks: Sequence[Hook] = ()
              ) -> dict[str, float]:
    """Train one phase from step 0 (or from ``resume``, a checkpoint dict of this phase) to ``total_steps``.

    Hooks are called on every rank after each optimizer step (after any checkpoint of that step) with a
    dict: ``stage``, ``phase``, ``phase_step`` (1-based count of finished steps), ``step`` (global),
    ``total``, ``metrics`` (this rank's scalars) and ``indices`` (this rank's dataset indices of the step).
    A hook that raises stops training, which is how the tests simulate a crash.

    Returns the mean of the logged metrics over the last logging window.
    """
    out_dir = Path(out_dir)
    device = env.device
    module = spec.module
    optim = spec.optim
    total = int(spec.total_steps)
    use_amp = bool(runtime.amp) and device.type == "cuda"
    optimizer = build_optimizer(spec.param_groups, optim)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if use_amp else None
    start = 0
    if resume is not None:
        src = resume.get("_file", "the resumed checkpoint")
        load_model_state(module, resume["model"], src)
        try:
            optimizer.load_state_dict(resume["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {src!r} holds the optimizer state of other parameters ({e})") from e
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if spec.load_extra_state is not None and resume.get("extra") is not None:
            spec.load_extra_state(resume["extra"])
        rngs = resume.get("rng") or []
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
        elif rngs:
            import warnings

            warnings.warn(f"checkpoint was written by {len(rngs)} processes, this run has {env.world_size}: "
                          "RNG states are not restored exactly", stacklevel=2)
            set_rng_state(rngs[0])
        start = int(resume["phase_step"])
        logger.drop_after(spec.stage, spec.phase, start)
    if start >= total:
        return {}

    if runtime.sync_bn and env.distributed:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    stepper = wrap_ddp(_StepModule(module, spec.step_fn), env, runtime.find_unused_parameters)
    n = len(spec.dataset)
    data_seed = runtime.seed + 1_000_003 * spec.phase_index
    stream = _BatchStream(n, optim.batch_size, data_seed, env.rank, env.world_size, start, optim.accumulate,
                          shuffle=optim.shuffle)
    spe = stream.spe
    loader = DataLoader(spec.dataset, batch_sampler=stream, num_workers=runtime.num_workers,
                        collate_fn=default_collate, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(data_seed),
                        persistent_workers=False)
    ckpt_dir = out_dir / "checkpoints"
    train_mode = spec.train_mode or (lambda m: m.train())
    train_mode(module)
    desc = spec.stage if spec.phase == spec.stage else f"{spec.stage}:{spec.phase}"
    pbar = _progress(total, start, desc, env.is_main and runtime.progress)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    step = start
    it = iter(loader)
    try:
        while step < total:
            factor = lr_factor(step, total, optim, spe)
            lr = set_lr(optimizer, optim.lr, factor)
            optimizer.zero_grad(set_to_none=True)
            indices: list[int] = []
            metrics: dict[str, float] = {}
            for micro in range(optim.accumulate):
                raw = next(it)
                indices.extend(int(i) for i in raw["index"])
                batch = to_device(raw, device)
                valid = batch["valid"].unsqueeze(1)
                batch["image"] = normalize_images(batch["image01"], spec.normalize) * valid
                no_sync = getattr(stepper, "no_sync", None)
                sync = no_sync() if callable(no_sync) and micro < optim.accumulate - 1 else nullcontext()
                with sync:
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        out = stepper(batch, step, total)
                    if "loss" not in out:
                        raise KeyError(f"{spec.stage} step function must return a dict with 'loss', got "
                                       f"{sorted(out)}")
                    loss = out["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise FloatingPointError(f"{spec.stage}:{spec.phase} loss is {float(loss)} at step "
                                                 f"{step}; lower the learning rate or check the data")
                    scaled = loss.float() / optim.accumulate
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                for k, v in _scalar_metrics(out).items():
                    metrics[k] = metrics.get(k, 0.0) + v / optim.accumulate
            if scaler is not None:
                scaler.unscale_(optimizer)
            if optim.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               optim.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            gstep = spec.step_offset + step
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            if pbar is not None:
                pbar.update(1)
            if step % runtime.log_every == 0 or step == total:
                mean = {k: sum(v) / len(v) for k, v in window.items()}
                mean = reduce_mean_dict(mean, device)
                last = mean
                window = {}
                el = time.perf_counter() - t0
                logger.log({"stage": spec.stage, "phase": spec.phase, "phase_step": step, "step": gstep,
                            "lr": lr, **mean, "sec_per_step": el / max(1, step - start)})
                if pbar is not None:
                    pbar.set_postfix({k: f"{v:.4f}" for k, v in list(mean.items())[:3]} | {"lr": f"{lr:.2e}"})
            if step % runtime.checkpoint_every == 0 or step == total:
                save_phase_checkpoint(spec, module, optimizer, scaler, step, runtime, env, ckpt_dir)
            if spe and step % spe == 0 and spec.on_epoch_end is not None and env.is_main:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    spec.on_epoch_end(step // spe - 1, gstep)
                train_mode(module)
            info = {"stage": spec.stage, "phase": spec.phase, "phase_step": step, "step": gstep, "total": total,
                    "metrics": metrics, "indices": indices}
            for h in hooks:
                h(info)
    finally:
        if pbar is not None:
            pbar.close()
        del it
    return last


def save_phase_checkpoint(spec: PhaseSpec, module: nn.Module, optimizer: torch.optim.Optimizer,
                          scaler: Any, step: int, runtime: RuntimeConfig, env: DistEnv, ckpt_dir: Path) -> None:
    """Gather every rank's RNG state and let the main rank write the checkpoint atomically."""
    rngs = all_gather_object(rng_state())
    if env.is_main:
        state = {
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rngs,
            "stage": spec.stage,
            "phase": spec.phase,
            "phase_index": spec.phase_index,
            "phase_step": step,
            "phase_total": spec.total_steps,
            "extra": spec.extra_state() if spec.extra_state is not None else None,
            "world_size": env.world_size,
            "config": spec.config,
        }
        save_checkpoint(ckpt_dir, state, method=spec.ckpt_method, num_classes=spec.num_classes,
                        step=spec.step_offset + step, keep_last=runtime.keep_checkpoints)
    barrier()


def total_steps_for(optim: OptimConfig, num_samples: int) -> int:
    """``optim.steps`` if set, else ``epochs × steps_per_epoch`` (IRN's ``max_step``)."""
    if optim.steps is not None:
        return int(optim.steps)
    spe = steps_per_epoch(num_samples, optim.batch_size, optim.accumulate)
    if spe < 1:
        raise ValueError(f"the training set has {num_samples} images, fewer than one batch of "
                         f"{optim.batch_size} × accumulate {optim.accumulate}")
    return int(math.prod((optim.epochs, spe)))
