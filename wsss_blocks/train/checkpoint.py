"""Atomic, validated checkpoints and the RNG state needed for bit-exact resumption.

A checkpoint is a dict saved with ``torch.save`` to a temporary file in the same folder and renamed
into place, so a crash never leaves half a file. It records the method, the class count and the step,
and `load_checkpoint` refuses a checkpoint from another method or class count before any weights
are touched.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_blocks.data.io import atomic_write

__all__ = [
    "CheckpointError",
    "ResumePoint",
    "UnreadableCheckpointError",
    "check_output_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_state",
    "resolve_resume",
    "rng_state",
    "save_checkpoint",
    "save_model_file",
    "set_aside",
    "set_rng_state",
]

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that does not belong to this run (method, class count, network) or is unreadable."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that cannot be unpickled (truncated or corrupt)."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002 - global state is what we restore
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states of `rng_state`."""
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


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``step_*.pt`` checkpoints of ``folder``, newest (highest step) first."""
    return [p for _, p in sorted(_list(Path(folder)), reverse=True)]


def load_checkpoint(path: str | os.PathLike, *, method: str | None = None, num_classes: int | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint and check that it belongs to ``method`` with ``num_classes`` classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # any unpickling error means a corrupt file
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UnreadableCheckpointError(f"checkpoint {str(path)!r} cannot be read (truncated or corrupt: "
                                        f"{type(e).__name__}: {msg})") from e
    if not isinstance(ck, dict) or ck.get("format") != "wsss-blocks/1":
        raise CheckpointError(f"{str(path)!r} is not a wsss-blocks trainer checkpoint")
    if method is not None and ck["method"] != method:
        raise CheckpointError(f"checkpoint {str(path)!r} was written by method {ck['method']!r}, "
                              f"this run is {method!r}")
    if num_classes is not None and ck["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {str(path)!r} has {ck['num_classes']} classes, "
                              f"this run has {num_classes}")
    return ck


def _existing_ancestor(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(folder: str | os.PathLike, min_free_mb: float = 100.0, create: bool = True) -> Path:
    """Fail early if ``folder`` cannot be written or its disk is nearly full; with ``create``, create it.

    With ``create=False`` nothing is written: the folder (or, when it does not exist yet, the folder that
    would hold it) must be a writable directory. Runs check with ``create=False`` first, so that a run
    refused later changes nothing.
    """
    folder = Path(folder)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write_probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise PermissionError(f"output folder {str(folder)!r} is not writable ({e.strerror or e})") from e
        where = folder
    else:
        where = _existing_ancestor(folder)
        if not where.is_dir():
            raise PermissionError(f"output folder {str(folder)!r} is not writable ({str(where)!r} is a file)")
        if not os.access(where, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder {str(folder)!r} is not writable (no write permission in "
                                  f"{str(where)!r})")
    free_mb = shutil.disk_usage(where).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(f"output folder {str(folder)!r} has only {free_mb:.0f} MiB free; "
                      f"need at least {min_free_mb:.0f} MiB")
    return folder


def load_model_state(module: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """``module.load_state_dict(state)`` after checking keys and shapes; a mismatch is one ``CheckpointError``.

    The message names the checkpoint file and the first key (in the network's order) that is missing or
    has another shape, plus how many keys differ in all, instead of PyTorch's multi-line report.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and isinstance(own[k], torch.Tensor) and isinstance(state[k], torch.Tensor)
              and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shaped:
        first = next((k for k in own if k in missing or k in shaped), None)
        if first is None:
            what = f"key {unexpected[0]!r} is not in the network"
        elif first in missing:
            what = f"key {first!r} is missing from the checkpoint"
        else:
            what = (f"key {first!r} has shape {list(state[first].shape)} in the checkpoint, "
                    f"{list(own[first].shape)} in the network")
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this network: {what} ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(shaped)} of another shape); was it "
                              f"written with other network settings?")
    module.load_state_dict(state)


def save_model_file(path: str | os.PathLike, model_state: dict[str, Any], *, method: str, num_classes: int,
                    step: int, **meta: Any) -> Path:
    """Write a stage's final weights (``{"model": state_dict, ...}``) atomically in the checkpoint format.

    `load_checkpoint` reads it back with the same method / class-count checks.

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


@dataclass
class ResumePoint:
    """Where a stage starts (`resolve_resume`).

    Attributes:
        finished: ``model.pt`` exists and is valid: nothing to train.
        checkpoint: the checkpoint dict to resume from (its file under ``"_file"``), or None to start fresh.
        unreadable: truncated or corrupt files that were passed over (renamed aside once the run starts).
    """

    finished: bool
    checkpoint: dict[str, Any] | None = None
    unreadable: list[Path] = field(default_factory=list)


def resolve_resume(out: Path, method: str, num_classes: int, resume: bool, stage: str) -> ResumePoint:
    """Decide how a stage in folder ``out`` starts; reads only.

    * ``out/model.pt`` exists: with ``resume`` the stage is finished (the file is validated); without it
      a ``FileExistsError`` is raised (no silent overwrite).
    * checkpoints exist: with ``resume`` the newest readable one is loaded and validated (method, class
      count, stage); without it a ``FileExistsError``.
    * nothing: start fresh.

    A truncated or corrupt ``model.pt`` or checkpoint (a disk that filled up, a copy that stopped) is passed
    over with a warning for the next older checkpoint; ``UnreadableCheckpointError`` when none is readable.
    A checkpoint of another method, class count or stage is an error, not passed over.
    """
    final = out / "model.pt"
    unreadable: list[Path] = []
    if final.is_file():
        if not resume:
            raise FileExistsError(f"{str(final)!r} exists: this stage already finished; pass resume=True (--resume) "
                                  f"to reuse it, or choose another output folder")
        try:
            load_checkpoint(final, method=method, num_classes=num_classes)
            return ResumePoint(True)
        except UnreadableCheckpointError as e:
            warnings.warn(f"{e}; resuming from the newest readable checkpoint instead", stacklevel=2)
            unreadable.append(final)
    ckpts = list_checkpoints(out / "checkpoints")
    if ckpts and not resume:
        raise FileExistsError(f"output folder {str(out)!r} holds checkpoints of an earlier run; pass "
                              f"resume=True (--resume) to continue it, or choose another output folder")
    for path in ckpts:
        try:
            ck = load_checkpoint(path, method=method, num_classes=num_classes, map_location="cpu")
        except UnreadableCheckpointError as e:
            warnings.warn(f"{e}; trying the checkpoint before it", stacklevel=2)
            unreadable.append(path)
            continue
        if ck.get("stage") != stage:
            raise ValueError(f"{str(path)!r} is a {ck.get('stage')!r}-stage checkpoint, not a {stage!r} one")
        ck["_file"] = str(path)
        return ResumePoint(False, ck, unreadable)
    if unreadable:
        raise UnreadableCheckpointError(f"no readable checkpoint to resume from in {str(out)!r} ("
                                        f"{', '.join(repr(p.name) for p in unreadable)} cannot be read); delete "
                                        f"the stage folder to redo the stage, or choose another output folder")
    return ResumePoint(False)


def set_aside(paths: list[Path]) -> None:
    """Rename unreadable files to ``<name>.unreadable`` so that later runs neither load nor prune them."""
    for p in paths:
        if p.is_file():
            os.replace(p, p.with_name(p.name + ".unreadable"))
