"""What a run reports while it runs: the JSONL metric log, tqdm progress bars and JSON-safe numbers.

One progress helper serves every stage: `progress_bar` (a bar updated by hand, e.g. per optimizer step)
and `track` (an iterable shown as it is consumed). Both return no-op stand-ins when the bar is disabled
(``runtime.progress: false``, ranks other than 0) or tqdm is missing, so callers never branch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from torch import Tensor

from wsss_blocks.data.io import as_disk_full, atomic_write

__all__ = ["MetricLogger", "ProgressBar", "json_float", "phase_label", "progress_bar", "track"]

T = TypeVar("T")


class ProgressBar(Protocol):
    """The part of tqdm's interface the trainer uses."""

    def update(self, n: float = 1) -> bool | None:
        """Advance by ``n``."""

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool | None = True) -> None:
        """Show values after the bar."""

    def close(self) -> None:
        """Finish the bar."""


class _NoBar:
    """A disabled progress bar: every call does nothing."""

    def update(self, n: float = 1) -> bool | None:
        return None

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool | None = True) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, smoothing: float = 0.3
                 ) -> ProgressBar:
    """A tqdm bar (with ETA) of ``total`` units starting at ``initial``, or a no-op bar when not ``enabled``.

    Examples:
        >>> bar = progress_bar(10, "cam", enabled=False)
        >>> bar.update(3), bar.close()
        (None, None)
    """
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a train dependency
        return _NoBar()
    bar: ProgressBar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0,
                            smoothing=smoothing)
    return bar


def track(items: Iterable[T], total: int, desc: str, enabled: bool = True,
          size: Callable[[T], int] = lambda item: len(item) if isinstance(item, Sized) else 1) -> Iterator[T]:
    """Yield ``items`` and advance a bar of ``total`` units by ``size(item)`` after each one.

    The default size of an item is its length (a batch of samples counts as that many), else 1.

    Examples:
        >>> list(track([[1, 2], [3]], total=3, desc="eval", enabled=False))
        [[1, 2], [3]]
    """
    bar = progress_bar(total, desc, enabled)
    try:
        for item in items:
            yield item
            bar.update(size(item))
    finally:
        bar.close()


def phase_label(stage: str, phase: str) -> str:
    """The name a bar shows for a training phase: ``stage`` when the phase is named after it, else ``stage:phase``.

    Examples:
        >>> phase_label("cam", "cam"), phase_label("cam", "self_train")
        ('cam', 'cam:self_train')
    """
    return stage if phase == stage else f"{stage}:{phase}"


def json_float(v: float) -> float | None:
    """JSON-safe float: NaN (e.g. the IoU of a class absent from ground truth and prediction) becomes None.

    Examples:
        >>> json_float(float("nan")), json_float(0.5)
        (None, 0.5)
    """
    return None if math.isnan(v) else float(v)


class MetricLogger:
    """Append-only JSONL metric log (one JSON object per line, flushed); only the main rank writes."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True):
        """Log to ``path`` (its folder is created); ``enabled=False`` makes `log` a no-op (ranks other than 0)."""
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` with a ``time`` stamp; NumPy and one-element tensor values become floats.

        A full disk raises [`wsss_blocks.data.io.DiskFullError`][] naming the log file.
        """
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
        with atomic_write(self.path, "w", fsync=False) as f:
            f.write("".join(line + "\n" for line in keep))

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, in order (a torn last line of a killed run is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
