"""Atomic, validated checkpoints and the RNG state needed for bit-exact resumption.

A checkpoint is a dict saved with ``torch.save`` to a temporary file in the same folder and renamed
into place, so a crash never leaves half a file. It records the method, the class count and the step,
and :func:`load_checkpoint` refuses a checkpoint from another method or class count before any weights
are touched.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state",
           "check_output_dir", "CheckpointError", "save_model_file"]

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that does not belong to this run (method, class count) or is unreadable."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002 - global state is what we restore
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any], *, method: str, num_classes: int,
                    step: int, keep_last: int = 2) -> Path:
    """Write ``folder/step_<step>.pt`` atomically and keep only the ``keep_last`` newest; return the path.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = save_checkpoint(d, {"model": {}}, method="baseline", num_classes=20, step=5)
        >>> load_checkpoint(p, method="baseline", num_classes=20)["step"]
        5
    """
    folder = Path(folder)
    payload = dict(state, method=method, num_classes=num_classes, step=step, format="wsss-blocks/1")
    path = folder / f"step_{step:08d}.pt"
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    if keep_last > 0:
        ckpts = sorted(_list(folder))
        for _, old in ckpts[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def _list(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None."""
    ckpts = _list(Path(folder))
    return max(ckpts)[1] if ckpts else None


def load_checkpoint(path: str | os.PathLike, *, method: str | None = None, num_classes: int | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint and check that it belongs to ``method`` with ``num_classes`` classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling error means a corrupt file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != "wsss-blocks/1":
        raise CheckpointError(f"{str(path)!r} is not a wsss-blocks trainer checkpoint")
    if method is not None and ck["method"] != method:
        raise CheckpointError(f"checkpoint {str(path)!r} was written by method {ck['method']!r}, "
                              f"this run is {method!r}")
    if num_classes is not None and ck["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {str(path)!r} has {ck['num_classes']} classes, "
                              f"this run has {num_classes}")
    return ck


def check_output_dir(folder: str | os.PathLike, min_free_mb: float = 100.0) -> Path:
    """Create ``folder`` if needed and fail early if it is not writable or its disk is nearly full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {str(folder)!r} is not writable ({e.strerror or e})") from e
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(f"output folder {str(folder)!r} has only {free_mb:.0f} MiB free; "
                      f"need at least {min_free_mb:.0f} MiB")
    return folder


def save_model_file(path: str | os.PathLike, model_state: dict[str, Any], *, method: str, num_classes: int,
                    step: int, **meta: Any) -> Path:
    """Write a stage's final weights (``{"model": state_dict, ...}``) atomically in the checkpoint format.

    :func:`load_checkpoint` reads it back with the same method / class-count checks.

    Examples:
        >>> import tempfile, os
        >>> p = save_model_file(os.path.join(tempfile.mkdtemp(), "model.pt"), {}, method="baseline",
        ...                     num_classes=20, step=3)
        >>> load_checkpoint(p, method="baseline", num_classes=20)["step"]
        3
    """
    path = Path(path)
    payload = dict(meta, model=model_state, method=method, num_classes=num_classes, step=step,
                   format="wsss-blocks/1")
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path
