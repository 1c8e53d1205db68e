"""Registry of trainer methods (baseline CAM, L2G, PPL, PMM, SMAF, TSCD).

A method is a [`CAMMethod`][wsss_blocks.train.methods.base.CAMMethod] subclass registered under its ``name``
with [`register_method`][]. [`get_method`][] imports ``wsss_blocks.train.methods.<name>`` on first use,
so a method module registers itself when it is imported.

Examples:
    >>> get_method("baseline").name
    'baseline'
"""

from __future__ import annotations

import difflib
import importlib
from typing import TypeVar

from .base import CAMMethod, NoConfig, PhaseContext

__all__ = ["CAMMethod", "NoConfig", "PhaseContext", "register_method", "get_method", "available_methods",
           "KNOWN_METHODS"]

KNOWN_METHODS = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")
"""Methods shipped with the library (each in ``wsss_blocks/train/methods/<name>.py``)."""

_REGISTRY: dict[str, type[CAMMethod]] = {}

M = TypeVar("M", bound=type[CAMMethod])


def register_method(cls: M) -> M:
    """Class decorator: register a [`CAMMethod`][] subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, CAMMethod)):
        raise TypeError(f"register_method needs a CAMMethod subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    old = _REGISTRY.get(cls.name)
    if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Registered names plus the shipped ones that import successfully."""
    for n in KNOWN_METHODS:
        _try_import(n)
    return sorted(_REGISTRY)


def _try_import(name: str) -> None:
    if name in _REGISTRY or not name.isidentifier():
        return
    try:
        importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise


def get_method(name: str) -> type[CAMMethod]:
    """The method class registered as ``name``; unknown names raise ``ValueError`` with the closest name."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a string, got {type(name).__name__}")
    _try_import(name)
    if name not in _REGISTRY:
        names = sorted(set(_REGISTRY) | set(KNOWN_METHODS))
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}{hint} (available: {', '.join(available_methods())})")
    return _REGISTRY[name]
