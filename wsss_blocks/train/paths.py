"""Path handling of the reference trainer: every path a run receives is made absolute once, at the boundary.

A run changes no working directory, but the paths it receives travel: the segmentation stage hands the
pseudo-mask folder to a dataset reader that resolves relative folders against the dataset root, and a
``config.yaml`` is read again from another folder. So `resolve_paths` turns every path of a
`RunConfig` into an absolute one when the config is loaded, and the run
folder is made absolute by the stage functions. The rules:

* ``data.root``, ``data.sbd_root``, ``data.synthetic.cache_dir``, ``cam.pretrained``, ``seg.pretrained`` (and
  the run folder, the config file): relative to the caller's working directory; ``~`` is expanded. A
  ``pretrained`` value that is a bare name (no folder, no file of that name in the working directory) stays
  as it is: a weights-registry name such as ``resnet38-imagenet``, ``none``, or ``synthetic`` (weights
  pretrained on synthetic data, `wsss_blocks.train.synthetic_pretrain`).
* ``data.mask_dir``, ``data.saliency_dir``, ``data.labels_file``: folders and files *inside the dataset*,
  relative to ``data.root`` (the generated dataset for ``dataset: synthetic``), as the dataset readers have
  always read them; ``labels_file`` is taken from the working directory when it exists there, as the
  readers do. Without a ``data.root`` (a VOC/COCO config before the root is given) they stay relative.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema import DataConfig, RunConfig

__all__ = ["absolute", "default_cache_dir", "resolve_paths", "synthetic_params", "synthetic_root"]


def absolute(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """``path`` with ``~`` expanded, made absolute against ``base`` (default: the working directory).

    ``..`` is collapsed but symbolic links are kept (``os.path.abspath``, not ``Path.resolve``).

    Examples:
        >>> str(absolute("runs/a/../b", "/home/me"))
        '/home/me/runs/b'
        >>> str(absolute("/data/VOC2012", "/home/me"))
        '/data/VOC2012'
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base if base is not None else os.getcwd()) / p
    return Path(os.path.abspath(p))


def default_cache_dir() -> Path:
    """``$WSSS_BLOCKS_CACHE`` or ``~/.cache/wsss_blocks``, absolute."""
    env = os.environ.get("WSSS_BLOCKS_CACHE")
    return absolute(env) if env else Path.home() / ".cache" / "wsss_blocks"


def synthetic_params(data: DataConfig) -> dict[str, Any]:
    """The [`make_synthetic_voc`][wsss_blocks.data.synthetic.make_synthetic_voc] arguments of ``data.synthetic``."""
    s = data.synthetic
    params: dict[str, Any] = {"num_train": s.num_train, "num_val": s.num_val, "image_size": s.image_size,
                              "num_classes": s.num_classes, "seed": s.seed, "max_objects": s.max_objects}
    if s.body_evidence:  # only when set, so the cache folders of data without it keep their names
        params["body_evidence"] = s.body_evidence
    return params


def synthetic_root(data: DataConfig) -> Path:
    """Where the synthetic dataset of ``data`` lives: ``data.root``, or a cache folder named by its parameters."""
    if data.root is not None:
        return absolute(data.root)
    tag = hashlib.sha1(json.dumps(synthetic_params(data), sort_keys=True).encode()).hexdigest()[:10]
    base = absolute(data.synthetic.cache_dir) if data.synthetic.cache_dir else default_cache_dir()
    return base / f"synthetic_voc_{tag}"


def _opt(path: str | None, base: str | os.PathLike[str] | None = None) -> str | None:
    return None if path is None else str(absolute(path, base))


def _weights(value: str | None, base: Path) -> str | None:
    """A ``pretrained`` value: a path made absolute, a bare name (registry name, ``none``) kept."""
    if value is None:
        return None
    bare = os.sep not in value and "/" not in value and not value.startswith("~")
    if bare and not absolute(value, base).exists():
        return value
    return str(absolute(value, base))


def resolve_paths(cfg: RunConfig, cwd: str | os.PathLike[str] | None = None) -> RunConfig:
    """A copy of ``cfg`` whose paths are absolute (rules in the module docstring); idempotent.

    Args:
        cfg: the run config.
        cwd: the folder relative paths are taken from (default: the working directory).

    Examples:
        >>> from wsss_blocks.train.schema import RunConfig, DataConfig
        >>> cfg = resolve_paths(RunConfig(data=DataConfig(root="VOC2012", saliency_dir="Sal")), cwd="/home/me")
        >>> cfg.data.root, cfg.data.saliency_dir
        ('/home/me/VOC2012', '/home/me/VOC2012/Sal')
    """
    base = absolute(cwd) if cwd is not None else absolute(".")
    d = cfg.data
    synthetic = dataclasses.replace(d.synthetic, cache_dir=_opt(d.synthetic.cache_dir, base))
    d = dataclasses.replace(d, root=_opt(d.root, base), sbd_root=_opt(d.sbd_root, base), synthetic=synthetic)
    root: Path | None = None
    if d.root is not None:
        root = Path(d.root)
    elif d.dataset == "synthetic":
        root = synthetic_root(d)
    if root is not None:
        labels = d.labels_file
        if labels is not None and not Path(labels).expanduser().is_absolute():
            here = absolute(labels, base)
            labels = str(here if here.exists() else absolute(labels, root))
        d = dataclasses.replace(d, mask_dir=_opt(d.mask_dir, root), saliency_dir=_opt(d.saliency_dir, root),
                                labels_file=labels)
    cam = dataclasses.replace(cfg.cam, pretrained=_weights(cfg.cam.pretrained, base))
    seg = dataclasses.replace(cfg.seg, pretrained=_weights(cfg.seg.pretrained, base))
    return dataclasses.replace(cfg, data=d, cam=cam, seg=seg)
