"""Input validation shared by every public block, and the switch for the checks that read tensor values.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong shape or value) with a message
that names the argument, what was expected and what was received, so user errors are readable. Blocks
call these at their public boundary only; Modules check their hyperparameters once in ``__init__`` and
internal helpers do not re-check.

Two kinds of checks:

- **structure** (type, rank, shape, dtype, hyperparameters): free, always on;
- **values** (NaN/Inf, ranges, labels in {0, 1}, mask values): they read the tensor, which on a GPU waits for
  the device (a host sync). They are on by default and can be switched off once a pipeline is debugged, for
  the whole process with [`set_checks`][wsss_blocks.set_checks] or the environment variable ``WSSS_BLOCKS_CHECKS=0``, or
  for a block of code with the [`checks`][wsss_blocks.checks] context manager (as kornia's ``KORNIA_CHECK`` switch).
  With value checks off, bad values propagate (NaN in, NaN out) instead of raising.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "set_checks",
    "checks_enabled",
    "checks",
    "check_tensor",
    "check_finite",
    "check_range",
    "check_labels",
    "check_masks",
    "check_image01",
    "check_batch",
    "check_same_batch",
    "check_positive",
    "check_int",
    "check_number",
    "check_choice",
    "check_pair",
    "compute_dtype",
    "shape_str",
    "require",
]

_T = TypeVar("_T")

_ENV = "WSSS_BLOCKS_CHECKS"
_FALSE = ("0", "false", "no", "off")


def _enabled_by_environment(value: str | None) -> bool:
    """The initial state of the value checks from ``WSSS_BLOCKS_CHECKS`` (unset: on)."""
    return (value or "1").strip().lower() not in _FALSE


_value_checks = _enabled_by_environment(os.environ.get(_ENV))


def set_checks(enabled: bool) -> None:
    """Turn the value checks (NaN/Inf, ranges, label and mask values) on or off for the whole process.

    The structure checks (types, shapes, hyperparameters) stay on. The environment variable
    ``WSSS_BLOCKS_CHECKS=0`` sets the initial state to off.

    Examples:
        >>> set_checks(False); checks_enabled()
        False
        >>> set_checks(True); checks_enabled()
        True
    """
    global _value_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _value_checks = enabled


def checks_enabled() -> bool:
    """Whether the value checks run (see [`set_checks`][wsss_blocks.set_checks])."""
    return _value_checks


@contextlib.contextmanager
def checks(enabled: bool) -> Iterator[None]:
    """Turn the value checks on or off inside a ``with`` block, then restore the previous state.

    Examples:
        >>> with checks(False):
        ...     checks_enabled()
        False
    """
    previous = _value_checks
    set_checks(enabled)
    try:
        yield
    finally:
        set_checks(previous)


def shape_str(x: Tensor) -> str:
    """A tensor's shape as ``(2, 3, 4)`` for error messages."""
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
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (a value check)."""
    if _value_checks and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf)")


def check_range(x: Tensor, name: str, low: float, high: float, hint: str = "") -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and lies in ``[low, high]`` (a value check)."""
    if not _value_checks:
        return
    check_finite(x, name)
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        extra = f"; {hint}" if hint else ""
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]{extra}")


def check_labels(labels: object, name: str = "labels", batch: int | None = None,
                 num_classes: int | None = None) -> Tensor:
    """Check multi-hot image labels of shape B×C with values in {0, 1}; return them as float.

    The shape is always checked, the values only while value checks are on.
    """
    labels = check_tensor(labels, name, 2, layout="B×C")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name} has batch size {labels.shape[0]}, expected {batch} "
                         f"(shape {shape_str(labels)})")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"{name} has {labels.shape[1]} classes, expected {num_classes} "
                         f"(shape {shape_str(labels)}); labels hold no background entry")
    lf = labels.float()
    if _value_checks and not bool(((lf == 0) | (lf == 1)).all()):
        bad = lf[(lf != 0) & (lf != 1)]
        raise ValueError(f"{name} must be multi-hot with values in {{0, 1}}, got value {float(bad[0]):.4g}")
    return lf


def check_masks(masks: object, name: str, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Check integer masks with values in ``[0, num_classes)`` ∪ {ignore_index} (values: a value check)."""
    masks = check_tensor(masks, name)
    if masks.is_floating_point() or masks.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {masks.dtype}")
    if masks.numel() == 0 or not _value_checks:
        return masks
    valid = (masks >= 0) & (masks < num_classes)
    if ignore_index is not None:
        valid |= masks == ignore_index
    if not bool(valid.all()):
        bad = masks[~valid]
        raise ValueError(f"{name} has value {int(bad[0])} outside [0, {num_classes - 1}]"
                         + (f" and ignore_index {ignore_index}" if ignore_index is not None else ""))
    return masks


def check_image01(image01: object, name: str = "image01", hint: str = "pass raw RGB scaled to [0, 1]") -> Tensor:
    """Check a B×C×H×W floating image batch (RGB: C = 3) with values in [0, 1] (values: a value check)."""
    x = check_tensor(image01, name, 4, layout="B×3×H×W", floating=True)
    check_range(x.detach(), name, 0.0, 1.0, hint=hint)
    return x


def check_batch(x: object, name: str, channels: int | None = None) -> Tensor:
    """A 4-D floating-point B×C×H×W batch (a network's input or a feature map) with ``channels`` channels if given.

    A structure check only: networks read no values (NaN in the input gives NaN out, as in any ``nn.Module``).
    """
    c = "C" if channels is None else str(channels)
    t = check_tensor(x, name, 4, layout=f"B×{c}×H×W", floating=True)
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (B×{channels}×H×W), got shape {shape_str(t)}")
    return t


def check_same_batch(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same first dimension."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} and {b_name} must have the same batch size, got "
                         f"{shape_str(a)} and {shape_str(b)}")


def check_positive(value: float, name: str, strict: bool = True) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (``>= 0`` with ``strict=False``); NaN fails."""
    if strict and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not strict and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (``bool`` is rejected), optionally within ``[minimum, maximum]``.

    Examples:
        >>> check_int(3, "num_iter", minimum=0)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, (bool, torch.Tensor)) or not hasattr(value, "__index__"):
            bounds = _bounds_str(minimum, maximum)
            raise TypeError(f"{name} must be an int{bounds}, got {type(value).__name__} {value!r}")
        value = int(value.__index__())  # numpy integers
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_bounds_str(minimum, maximum)}, got {value}")
    return value


def check_number(value: object, name: str, minimum: float | None = None, *, strict: bool = False,
                 maximum: float | None = None) -> float:
    """``value`` as a finite float, optionally ``>= minimum`` (``> minimum`` with ``strict``) and ``<= maximum``.

    Examples:
        >>> check_number(0.3, "appearance_temperature", 0.0, strict=True)
        0.3
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value}")
    return v


def check_choice(value: _T, name: str, choices: Sequence[object]) -> _T:
    """``value``, unless it is not one of ``choices``: then ``ValueError`` (the message lists them).

    Examples:
        >>> check_choice("max", "reduce", ("sum", "mean", "max"))
        'max'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a positive ``(h, w)`` pair of ints (an int gives a square); ``ValueError`` names ``name``.

    Examples:
        >>> check_pair(3, "size"), check_pair((2, 5), "size")
        ((3, 3), (2, 5))
    """
    items: tuple[object, ...] = (value, value) if isinstance(value, int) else tuple(value)
    pair = tuple(v for v in items if isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    if len(items) != 2 or len(pair) != 2:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, got {value!r}")
    return pair[0], pair[1]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype reductions and softmaxes run in: float32, or float64 when an input is float64.

    Half and bfloat16 inputs (autocast) are computed in float32; the caller casts the result back.

    Examples:
        >>> compute_dtype(torch.zeros(1, dtype=torch.float16)), compute_dtype(torch.zeros(1, dtype=torch.float64))
        (torch.float32, torch.float64)
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _bounds_str(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional dependency lazily, naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised through monkeypatch in tests
        what = f" for {purpose}" if purpose else ""
        raise ImportError(f"{module} is needed{what}; install it with `pip install \"wsss-blocks[{extra}]\"`"
                          ) from exc
