"""What a run folder holds, and when a rerun may reuse it: stage fingerprints.

Before its first file, each stage writes ``<out>/<stage>/fingerprint.json``: the settings its files
depend on and their hash. A rerun into the same folder reuses (or resumes) a stage only when these
settings are unchanged; otherwise it stops before writing anything, with one line that names the changed
keys and the two ways out: ``--restart-from STAGE`` (redo that stage and every stage after it) or a new
``--out``. The settings of a stage include those of the stage before it, so a stage made from a changed
stage never counts as unchanged.

Which settings count (`stage_settings`):

* ``cam``: ``method``, every ``method_args`` value (defaults filled in), the ``data`` section without the
  evaluation-only keys (``cam_eval_split``, ``val_split``, ``max_eval_images``), the ``cam`` section and
  ``runtime.seed``/``amp``/``sync_bn``; with ``seg.source: method`` and ``seg.eval_every`` (the CAM stage keeps
  the best val checkpoint of the method's own head) also ``seg.eval_every``, ``data.val_split`` and
  ``data.max_eval_images``;
* ``pseudo``: the ``cam`` settings and the ``pseudo`` section, including the pseudo-mask chain (``pseudo.post``,
  ``pseudo.refine``, ``pseudo.rule`` and the arguments of the steps in the chain, defaults filled in; arguments of
  steps outside the chain do not count); with ``pseudo.bg_score: sweep`` also the CAM-evaluation split and cap,
  which then choose the background score;
* ``seg``: the ``pseudo`` settings and the ``seg`` section; its evaluation keys (``eval_*``, ``crf``,
  ``crf_params``), ``data.val_split`` and ``data.max_eval_images`` count only when they pick or relabel the
  trained model (``seg.eval_every``, ``seg.cyclic_rounds``).

Never counted, because they change speed, logging or where a stage runs but not its files: ``runtime``
``device``, ``deterministic``, ``num_workers``, ``threads``, ``checkpoint_every``, ``keep_checkpoints``,
``log_every``, ``progress``, ``plots``, ``find_unused_parameters``, ``min_free_mb``; ``cam.overlay_samples``;
the pre-flight data check's ``data.preflight`` and ``data.max_image_pixels``;
``pseudo.batch_size``; which model is reported (``seg.report``: both are kept); how pseudo masks are scored
(``pseudo.pred_ignore``, ``pseudo.score_eval_split``),
which every run recomputes from the mask files; ``description`` and ``quick_overrides``. The
evaluations (CAM sweep, pseudo-mask and segmentation mIoU) are recomputed (or keyed by their own settings)
on every run, so changing an evaluation-only setting never needs a restart.

Example (pure: reads nothing):
    >>> from wsss_blocks.train.schema import load_run_config
    >>> a = stage_settings(load_run_config("baseline_synthetic"), "cam")
    >>> b = stage_settings(load_run_config("baseline_synthetic", ["cam.steps=50", "runtime.progress=false"]), "cam")
    >>> changed_keys(a, b)
    ['cam.steps: 250 -> 50']
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_blocks.data.io import atomic_write, remove_stale_temporaries

from .config import to_dict
from .paths import absolute
from .schema import RunConfig

__all__ = [
    "IGNORED_KEYS",
    "RECORD_NAME",
    "STAGES",
    "StageState",
    "StaleRunError",
    "changed_keys",
    "check_run_folder",
    "fingerprint",
    "inspect_stage",
    "prepare_stage_folder",
    "run_stages",
    "stage_settings",
    "write_record",
]

STAGES = ("cam", "pseudo", "seg")
"""The stages of a run, in order; each one's settings include the previous one's."""
RECORD_NAME = "fingerprint.json"
"""The record each stage writes into its folder before its first file."""
_FORMAT = "wsss-blocks/stage-record/1"

IGNORED_KEYS = frozenset({
    "description", "quick_overrides",
    "runtime.device", "runtime.deterministic", "runtime.num_workers", "runtime.threads", "runtime.checkpoint_every",
    "runtime.keep_checkpoints", "runtime.log_every", "runtime.progress", "runtime.plots",
    "runtime.find_unused_parameters", "runtime.min_free_mb",
    "cam.overlay_samples", "pseudo.batch_size", "pseudo.pred_ignore", "pseudo.score_eval_split",
    "data.preflight", "data.max_image_pixels",
    "seg.report",
})
"""Settings that never count (speed, logging, where a stage runs)."""
_DATA_EVAL = ("data.cam_eval_split", "data.val_split", "data.max_eval_images")
SEG_EVAL_KEYS = ("seg.eval_scales", "seg.eval_flip", "seg.eval_scale_reduce", "seg.eval_flip_reduce",
                 "seg.eval_resize_long", "seg.eval_average", "seg.eval_img_scale", "seg.eval_slide", "seg.crf",
                 "seg.crf_params")
"""Evaluation settings of the segmentation stage (count only when they select or relabel its model)."""


class StaleRunError(ValueError):
    """A run folder holds a stage made with other settings (or of unknown settings); nothing was changed."""


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def _flat_config(cfg: RunConfig) -> dict[str, Any]:
    data = to_dict(cfg)
    data["method_args"] = to_dict(cfg.method_config())  # defaults filled in: writing a default changes nothing
    from .pipeline import chain_settings

    data["pseudo"].update(chain_settings(cfg))  # the chain: canonical names, its steps' arguments with defaults
    flat: dict[str, Any] = {}
    _flatten(data, "", flat)
    return flat


def _seg_selects(cfg: RunConfig) -> bool:
    return cfg.seg.eval_every is not None or cfg.seg.cyclic_rounds > 0


def run_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages that write files for ``cfg``: ``seg.source: method`` trains no segmentation network."""
    return STAGES if cfg.seg.source != "method" else STAGES[:2]


def stage_settings(cfg: RunConfig, stage: str, *, for_eval: bool = False) -> dict[str, Any]:
    """The settings (dotted key -> value) that the files of ``stage`` depend on, the earlier stages' included.

    ``for_eval``: leave out the segmentation evaluation settings even where they select the model (an
    evaluation with other settings is a new evaluation of the same model, not a stale one).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    flat = _flat_config(cfg)

    def pick(prefixes: tuple[str, ...], skip: Sequence[str] = ()) -> dict[str, Any]:
        return {k: v for k, v in flat.items()
                if (k in prefixes or k.startswith(tuple(p + "." for p in prefixes)))
                and k not in IGNORED_KEYS and k not in skip}

    out = pick(("method", "method_args", "data", "cam", "runtime"), _DATA_EVAL)
    if cfg.seg.source == "method" and cfg.seg.eval_every is not None:
        # the CAM stage validates the method's own head and keeps cam/best.pt: val counts for its files
        out.update({k: flat[k] for k in ("seg.eval_every", "data.val_split", "data.max_eval_images")})
    if stage == "cam":
        return out
    sweep = cfg.pseudo.bg_score == "sweep"
    out.update(pick(("pseudo",), () if sweep else ("pseudo.sweep_thresholds",)))
    if sweep:
        out.update({k: flat[k] for k in ("data.cam_eval_split", "data.max_eval_images")})
    if stage == "pseudo":
        return out
    selects = _seg_selects(cfg) and not for_eval
    out.update(pick(("seg",), () if selects else SEG_EVAL_KEYS))
    if selects:
        out.update({k: flat[k] for k in ("data.val_split", "data.max_eval_images")})
    return out


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of a settings mapping (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _show(v: Any) -> str:
    if v is _UNSET:
        return "(unset)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v else '""'
    return json.dumps(v)


_UNSET = object()


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs (or exists on one side only), in ``new``'s order."""
    keys = list(new) + [k for k in old if k not in new]
    out = []
    for k in keys:
        a, b = old.get(k, _UNSET), new.get(k, _UNSET)
        if _normalise(a) != _normalise(b):
            out.append(f"{k}: {_show(a)} -> {_show(b)}")
    return out


def _normalise(v: Any) -> Any:
    # JSON round trip: tuples and lists compare equal, as they do after the record is read back
    return v if v is _UNSET else json.loads(json.dumps(v, default=str))


@dataclass
class StageState:
    """What ``<out>/<stage>`` holds compared with a config (`inspect_stage`)."""

    stage: str
    folder: Path
    has_files: bool                      # weights, checkpoints or masks that a rerun would reuse
    finished: bool                       # the stage's final file exists
    record: dict[str, Any] | None        # the stored fingerprint.json
    changed: list[str] = field(default_factory=list)   # "key: old -> new" against the config


def _stage_files(folder: Path, stage: str) -> tuple[bool, bool]:
    """``(has_files, finished)`` of a stage folder."""
    if not folder.is_dir():
        return False, False
    if stage == "cam":
        finished = (folder / "model.pt").is_file()
        return finished or any((folder / "checkpoints").glob("step_*.pt")), finished
    if stage == "pseudo":
        has = any(any((folder / sub).glob(pat)) for sub in ("masks", "eval_masks", "cams")
                  for pat in ("*.png", "*.npy"))
        return has, has and (folder / "summary.json").is_file()
    has = any(folder.rglob("model.pt")) or any(folder.rglob("best.pt")) or any(folder.rglob("step_*.pt")) \
        or any(folder.glob("cyclic_masks_r*/*.png"))
    return has, has


def read_record(folder: Path) -> dict[str, Any] | None:
    """The stage record of ``folder`` (None when absent or unreadable)."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == _FORMAT else None


def inspect_stage(cfg: RunConfig, out_dir: str | os.PathLike, stage: str, *, for_eval: bool = False) -> StageState:
    """Compare ``<out_dir>/<stage>`` with ``cfg`` (reads only)."""
    folder = absolute(out_dir) / stage
    has, finished = _stage_files(folder, stage)
    rec = read_record(folder)
    changed: list[str] = []
    if rec is not None:
        now = stage_settings(cfg, stage, for_eval=for_eval)
        old = dict(rec.get("settings") or {})
        if for_eval:
            old = {k: v for k, v in old.items() if k not in SEG_EVAL_KEYS and k not in _DATA_EVAL}
            now = {k: v for k, v in now.items() if k not in _DATA_EVAL}
        changed = changed_keys(old, now)
    return StageState(stage, folder, has, finished, rec, changed)


def _list_changes(changed: list[str], limit: int = 6) -> str:
    shown = "; ".join(changed[:limit])
    return shown + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def _way_out(stage: str, folder: Path, hint: str) -> str:
    if hint == "reproduce":
        return f"rerun with --restart-from {stage} to redo it and the stages after it, or choose a new --out"
    return (f"to redo it, delete {str(folder)!r} and the stage folders after it (or run reproduce with "
            f"--restart-from {stage}), or choose a new --out")


def check_run_folder(cfg: RunConfig, out_dir: str | os.PathLike, upto: str, *, restart_from: str | None = None,
                     fresh: Sequence[str] = (), for_eval: bool = False, hint: str = "stage") -> list[StageState]:
    """Check the stages up to ``upto`` in ``out_dir`` against ``cfg`` before anything is written.

    Raises `StaleRunError` (one line: the run folder, the stage, the changed keys and the ways out) when a
    stage that holds files was made with other settings, holds files but no record (written by an older
    version), or holds files although the stage before it is unfinished (so they were made from something
    else); ``FileExistsError`` when ``resume`` is False and a stage holds files. Stages from ``restart_from``
    on are not checked: they will be redone. Returns the states of all stages of the run.
    """
    stages = run_stages(cfg)
    if upto not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {upto!r}")
    if restart_from is not None and restart_from not in stages:
        raise ValueError(f"restart_from must be one of {list(stages)}, got {restart_from!r}")
    states = [inspect_stage(cfg, out_dir, s, for_eval=for_eval and s == "seg") for s in stages]
    stop = stages.index(restart_from) if restart_from is not None else len(stages)
    last = STAGES.index(upto)
    where = f"run folder {str(absolute(out_dir))!r}"
    for i, st in enumerate(states[:stop]):
        later = [x for x in states[i + 1:stop] if x.has_files]
        if i <= last and st.has_files:
            if st.record is None:
                raise StaleRunError(f"{where}: the {st.stage} stage holds files but no {RECORD_NAME} (written by an "
                                    f"older version?), so it cannot be checked against this config; "
                                    + _way_out(st.stage, st.folder, hint))
            if st.changed:
                raise StaleRunError(f"{where}: the {st.stage} stage was made with other settings ("
                                    f"{_list_changes(st.changed)}); " + _way_out(st.stage, st.folder, hint))
            if st.stage in fresh:
                raise FileExistsError(f"{where}: the {st.stage} stage already holds files and resuming is off; "
                                      + _way_out(st.stage, st.folder, hint))
        if not st.finished and later:
            raise StaleRunError(f"{where}: the {later[0].stage} stage holds files but the {st.stage} stage before it "
                                f"is {'unfinished' if st.has_files else 'missing'}, so they were made from "
                                f"something else; " + _way_out(st.stage, st.folder, hint))
    return states


def write_record(cfg: RunConfig, out_dir: str | os.PathLike, stage: str) -> Path:
    """Write ``<out_dir>/<stage>/fingerprint.json`` (atomically) for ``cfg``."""
    settings = stage_settings(cfg, stage)
    i = STAGES.index(stage)
    upstream = None
    if i > 0:
        prev = STAGES[i - 1]
        upstream = {"stage": prev, "fingerprint": fingerprint(stage_settings(cfg, prev))}
    rec = {"format": _FORMAT, "stage": stage, "fingerprint": fingerprint(settings), "upstream": upstream,
           "settings": settings}
    path = absolute(out_dir) / stage / RECORD_NAME
    with atomic_write(path, "w") as f:
        json.dump(rec, f, indent=1, default=str)
    return path


def prepare_stage_folder(cfg: RunConfig, out_dir: str | os.PathLike, stage: str) -> Path:
    """After the checks: create ``<out_dir>/<stage>``, remove temporaries of interrupted writes, write the record."""
    folder = absolute(out_dir) / stage
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    if read_record(folder) is None or inspect_stage(cfg, out_dir, stage).changed:
        write_record(cfg, out_dir, stage)
    return folder
