"""Input validation shared by every public block.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong shape or value) with a message
that names the argument, what was expected and what was received, so user errors are readable. Blocks
call these at their public boundary only; internal helpers do not re-check.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_finite",
    "check_range",
    "check_labels",
    "check_masks",
    "check_same_batch",
    "check_positive",
    "check_pair",
    "shape_str",
    "require",
]


def shape_str(x: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def check_tensor(
    x: object,
    name: str,
    ndim: int | Sequence[int] | None = None,
    *,
    layout: str | None = None,
    floating: bool = False,
) -> Tensor:
    """Check that ``x`` is a tensor of the given rank; return it.

    ``layout`` is a human-readable shape such as ``"B×C×H×W"`` used in the message.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            expect = layout or " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must have shape {expect} ({'/'.join(map(str, allowed))}-D), "
                             f"got {x.ndim}-D tensor of shape {shape_str(x)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf)")


def check_range(x: Tensor, name: str, low: float, high: float, hint: str = "") -> None:
    """Raise ``ValueError`` unless every value of ``x`` lies in ``[low, high]``."""
    check_finite(x, name)
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        extra = f"; {hint}" if hint else ""
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]{extra}")


def check_labels(labels: object, name: str = "labels", batch: int | None = None,
                 num_classes: int | None = None) -> Tensor:
    """Check multi-hot image labels of shape B×C with values in {0, 1}; return them as float."""
    labels = check_tensor(labels, name, 2, layout="B×C")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name} has batch size {labels.shape[0]}, expected {batch} "
                         f"(shape {shape_str(labels)})")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"{name} has {labels.shape[1]} classes, expected {num_classes} "
                         f"(shape {shape_str(labels)}); labels hold no background entry")
    lf = labels.float()
    if not bool(((lf == 0) | (lf == 1)).all()):
        bad = lf[(lf != 0) & (lf != 1)]
        raise ValueError(f"{name} must be multi-hot with values in {{0, 1}}, got value {float(bad[0]):.4g}")
    return lf


def check_masks(masks: object, name: str, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Check integer masks with values in ``[0, num_classes)`` ∪ {ignore_index}."""
    masks = check_tensor(masks, name)
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {masks.dtype}")
    if masks.numel() == 0:
        return masks
    valid = (masks >= 0) & (masks < num_classes)
    if ignore_index is not None:
        valid |= masks == ignore_index
    if not bool(valid.all()):
        bad = masks[~valid]
        raise ValueError(f"{name} has value {int(bad[0])} outside [0, {num_classes - 1}]"
                         + (f" and ignore_index {ignore_index}" if ignore_index is not None else ""))
    return masks


def check_same_batch(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} and {b_name} must have the same batch size, got "
                         f"{shape_str(a)} and {shape_str(b)}")


def check_positive(value: float, name: str, strict: bool = True) -> None:
    if strict and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not strict and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``value`` as a positive ``(h, w)`` pair (an int gives a square); ``ValueError`` names ``name``.

    Examples:
        >>> check_pair(3, "size"), check_pair((2, 5), "size")
        ((3, 3), (2, 5))
    """
    if isinstance(value, int):
        out = (value, value)
    else:
        out = tuple(int(v) for v in value)  # type: ignore[assignment]
        if len(out) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out  # type: ignore[return-value]


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional dependency lazily, naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised through monkeypatch in tests
        what = f" for {purpose}" if purpose else ""
        raise ImportError(f"{module} is needed{what}; install it with `pip install \"wsss-blocks[{extra}]\"`"
                          ) from exc
