"""Optimisation of the reference trainer: optimizers, learning-rate schedules and step counts.

The learning rate is a pure function of the step (which is what makes a resumed run continue with the
uninterrupted run's learning rates): `lr_factor` gives the factor of the configured schedule and `set_lr`
applies it to every parameter group with its ``lr_mult``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .schema import OptimConfig

__all__ = ["build_optimizer", "lr_factor", "poly_factor", "set_lr", "steps_per_epoch", "total_steps_for"]


def poly_factor(step: int, total: int, power: float = 0.9, warmup_steps: int = 0, warmup_ratio: float = 1e-6
                ) -> float:
    """Learning-rate factor at ``step``: linear warm-up from ``warmup_ratio``, then ``(1 - step/total)**power``.

    The poly part is IRN's ``PolyOptimizer`` (irn ``misc/torchutils.py``: the factor is computed before the
    ``step``-th update); the warm-up is AFA/ToCo's ``PolyWarmupAdamW`` (linear from ``warmup_ratio`` to 1 over
    ``warmup_steps``).

    Examples:
        >>> poly_factor(0, 10), round(poly_factor(5, 10, power=1.0), 3)
        (1.0, 0.5)
    """
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return float(max(0.0, 1.0 - step / total) ** power)


def lr_factor(step: int, total: int, optim: OptimConfig, steps_per_epoch: int) -> float:
    """Learning-rate factor of ``optim``'s schedule at ``step`` (before that step's update).

    ``lr_schedule: poly`` is `poly_factor`; ``step`` multiplies by ``lr_decay_gamma`` at the start of each
    epoch in ``lr_decay_epochs`` (0-based; L2G ``--decay_points 5``: ×0.1 from the sixth epoch on). The
    warm-up applies to both. With ``lr_update_every = k`` the factor changes only every k steps
    (deeplab-pytorch recomputes its poly lr every 10 iterations).

    Examples:
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

    Each group keeps its own ``weight_decay``; its ``lr`` is reset by `set_lr` every step.
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


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float, min_lr: float = 0.0) -> float:
    """Set every group's ``lr = (base_lr * lr_mult - min_lr) * factor + min_lr``; return the base group's lr.

    ``min_lr`` is mmcv's ``PolyLrUpdaterHook(min_lr=...)`` floor (PMM's PSPNet: 1e-4); 0 gives
    ``base_lr * lr_mult * factor``.

    Examples:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> round(set_lr(opt, 0.005, 0.5, min_lr=1e-4), 6)  # halfway between 0.005 and the floor
        0.00255
    """
    for g in optimizer.param_groups:
        g["lr"] = (base_lr * float(g.get("lr_mult", 1.0)) - min_lr) * factor + min_lr
    return (base_lr - min_lr) * factor + min_lr


def steps_per_epoch(num_samples: int, batch_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch (the incomplete last batch is dropped, like the releases)."""
    return (num_samples // batch_size) // accumulate


def total_steps_for(optim: OptimConfig, num_samples: int) -> int:
    """``optim.steps`` if set, else ``epochs × steps_per_epoch`` (IRN's ``max_step``)."""
    if optim.steps is not None:
        return int(optim.steps)
    spe = steps_per_epoch(num_samples, optim.batch_size, optim.accumulate)
    if spe < 1:
        raise ValueError(f"the training set has {num_samples} images, fewer than one batch of "
                         f"{optim.batch_size} × accumulate {optim.accumulate}")
    return int(math.prod((optim.epochs, spe)))
