"""Reading checkpoint files into flat state dicts, and the ``none`` initialisation.

`read_checkpoint` reads a local file (or unwraps a loaded mapping) and knows nothing of the weights
registry; [`wsss_blocks.models.backbones.read_state_dict`][] adds registry names on top of it, and the
registry itself ([`wsss_blocks.models.weights`][]) reads its cached files with it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_checkpoint", "is_random_init"]

# Container keys that wrap a state dict in released checkpoints (PSA/L2G ``state_dict``, timm ``model``,
# EPS/SMAF ``['Net']['model_state']``, mmcv ``state_dict``, DeepLab ``model``).
_WRAPPER_KEYS = ("state_dict", "model_state", "model_state_dict", "model", "net", "Net", "params", "module")


def _unwrap(obj: Any) -> dict[str, Tensor]:
    """Descend through wrapper dicts until a flat name -> tensor mapping is reached."""
    depth = 0
    while isinstance(obj, Mapping) and depth < 4:
        if obj and all(isinstance(v, (Tensor, np.ndarray)) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj, depth = inner, depth + 1
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint must hold a state dict (name -> tensor), got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Tensor):
            out[str(k)] = v
        elif isinstance(v, np.ndarray):
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
    if not out:
        raise ValueError("checkpoint holds no tensors; top-level keys were "
                         f"{sorted(map(str, obj.keys()))[:10]}")
    return out


def _require_package(module: str, package: str, purpose: str) -> Any:
    """Import an optional dependency that no wsss-blocks extra installs; the error names the pip package.

    (`wsss_blocks._checks.require` points to an extra, which would be wrong advice here.)
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for {purpose} and no wsss-blocks extra installs it; "
                          f"install it with `pip install {package}`") from exc


def is_random_init(pretrained: Any) -> bool:
    """True for ``None`` and the string ``"none"`` (any case): no initialisation, random weights.

    Examples:
        >>> is_random_init(None), is_random_init("none"), is_random_init("resnet50-imagenet")
        (True, True, False)
    """
    return pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower() in ("none", ""))


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any], *, weights_only: bool = True
                    ) -> dict[str, Tensor]:
    """Read a state dict from a local file or pass a mapping through.

    Files: ``.pth``/``.pt``/``.bin``, ``.safetensors``, MXNet ``.params``. The usual containers are unwrapped
    and DataParallel's ``module.`` is stripped.

    MXNet ``.params`` files are read with NumPy alone ([`wsss_blocks.models.converters.read_mxnet_params`][]);
    their names are kept (``arg:res4b5_branch2b1_weight``) for the key maps.

    Args:
        source: a local path, or an already loaded (possibly nested) dict.
        weights_only: passed to `torch.load`. Keep ``True`` unless you trust the file; some old
            checkpoints pickle extra Python objects and need ``False``.

    Returns:
        A flat ``{name: tensor}`` dict on the CPU.

    Examples:
        >>> sd = read_checkpoint({"model": {"module.fc.weight": torch.ones(2, 3)}})
        >>> list(sd)
        ['fc.weight']
    """
    if isinstance(source, Mapping):
        sd = _unwrap(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path!r}")
        lower = path.lower()
        if lower.endswith(".safetensors"):
            st = _require_package("safetensors.torch", "safetensors", "reading .safetensors checkpoints")
            sd = _unwrap(st.load_file(path, device="cpu"))
        elif lower.endswith(".params") or _is_mxnet_file(path):
            from .converters import read_mxnet_params

            sd = _unwrap(read_mxnet_params(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=weights_only)
            except Exception as exc:  # pickle errors come in many types
                hint = (" The file pickles Python objects besides tensors; if you trust it, pass "
                        "weights_only=False." if weights_only else "")
                raise ValueError(f"could not read checkpoint {path!r}: {exc}.{hint}") from exc
            sd = _unwrap(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd




def _is_mxnet_file(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and int.from_bytes(head, "little") == 0x112
