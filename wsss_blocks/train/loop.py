"""The generic, iteration-based training loop shared by the CAM and segmentation stages.

What it guarantees:

* **Bit-exact resumption.** The sample order of every epoch is a permutation seeded with
  ``seed + epoch`` ([`wsss_blocks.train.distributed.epoch_batches`][]), augmentation draws from a per-sample
  generator seeded with ``(seed, epoch, index)`` ([`wsss_blocks.data.transforms.sample_generator`][]), the
  learning rate is a pure function of the step ([`wsss_blocks.train.optim.lr_factor`][]), and a checkpoint
  holds model, optimizer, AMP scaler, the Python/NumPy/torch RNG states of every rank and the step. A run
  resumed from step ``k`` therefore continues with exactly the batches, augmentations, random draws and
  learning rates of the uninterrupted run (in deterministic mode on the same hardware).
* **Atomic checkpoints** every ``runtime.checkpoint_every`` steps and at the end of each phase
  ([`wsss_blocks.train.checkpoint.save_checkpoint`][]).
* DDP through torchrun ([`wsss_blocks.train.distributed`][]), AMP on CUDA only, a tqdm bar with ETA and a
  JSONL metric log ([`wsss_blocks.train.reporting`][]), per-epoch callbacks (CAM overlays).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from wsss_blocks.data.normalization import Normalization, normalize_images
from wsss_blocks.models.weights import missing_init_hint

from .checkpoint import CheckpointError, load_model_state, rng_state, save_checkpoint, set_rng_state
from .datasets import AugmentedDataset
from .distributed import DistEnv, all_gather_object, barrier, epoch_batches, reduce_mean_dict, wrap_ddp
from .optim import build_optimizer, lr_factor, set_lr, steps_per_epoch
from .reporting import MetricLogger, phase_label, progress_bar
from .schema import OptimConfig, RuntimeConfig

__all__ = ["Hook", "PhaseSpec", "configure_determinism", "run_phase", "save_phase_checkpoint", "set_seed",
           "to_device"]

Hook = Callable[[dict[str, Any]], None]
"""Called after every optimizer step with the step's information (see `run_phase`)."""


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


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


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
    """One training phase for `run_phase`.

    Attributes:
        stage: ``"cam"`` or ``"seg"`` (log/checkpoint tag).
        phase: phase name; ``phase_index`` its position; ``step_offset`` the global step at its start
            (checkpoint files are numbered by global step).
        module: the module whose ``state_dict`` is checkpointed (the method or the segmentation net).
        step_fn: ``(batch, step, total) -> dict`` with a ``"loss"`` entry.
        param_groups: optimizer groups (with ``lr_mult``).
        dataset: an `AugmentedDataset`.
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
    desc = phase_label(spec.stage, spec.phase)
    pbar = progress_bar(total, desc, env.is_main and runtime.progress, initial=start, smoothing=0.1)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    step = start
    it = iter(loader)
    try:
        while step < total:
            factor = lr_factor(step, total, optim, spe)
            lr = set_lr(optimizer, optim.lr, factor, optim.min_lr if optim.lr_schedule == "poly" else 0.0)
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
                        raise FloatingPointError(f"{spec.stage}:{spec.phase} loss is {float(loss.detach())} at step "
                                                 f"{step}; lower the learning rate or check the data"
                                                 + missing_init_hint(spec.config, spec.stage))
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
            pbar.update(1)
            if step % runtime.log_every == 0 or step == total:
                mean = {k: sum(v) / len(v) for k, v in window.items()}
                mean = reduce_mean_dict(mean, device)
                last = mean
                window = {}
                el = time.perf_counter() - t0
                logger.log({"stage": spec.stage, "phase": spec.phase, "phase_step": step, "step": gstep,
                            "lr": lr, **mean, "sec_per_step": el / max(1, step - start)})
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
