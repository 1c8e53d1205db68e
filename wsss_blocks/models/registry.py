"""Name registries of the model package: backbone builders and checkpoint key maps.

A backbone family registers its builder here when its module is imported (``wsss_blocks.models`` imports all
of them), so [`wsss_blocks.models.build_backbone`][wsss_blocks.models.backbones.build_backbone] finds a family by name
without importing the family's module, and a family module may use the loading helpers of
[`wsss_blocks.models.backbones`][wsss_blocks.models.backbones] without an import cycle.

Examples:
    >>> import wsss_blocks.models  # registers the library's families
    >>> backbone_entry("resnet38d").native_freezing, "mit_b1" in registered_backbones()
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

from torch import nn

__all__ = [
    "KeyMap",
    "BackboneEntry",
    "register_backbone",
    "backbone_entry",
    "registered_backbones",
    "register_key_map",
    "get_key_map",
]

KeyMap = Union[None, str, Mapping[str, Union[str, None]], Callable[[str], Union[str, None]]]  # noqa: UP007


@dataclass(frozen=True)
class BackboneEntry:
    """How [`build_backbone`][wsss_blocks.models.backbones.build_backbone] builds one registered backbone name.

    Attributes:
        build: ``build(output_stride=None, **kwargs) -> nn.Module`` (the backbone protocol: ``forward`` returns
            a list of maps, ``out_channels`` and ``strides`` describe them).
        key_map: default checkpoint key map of the family (see [`get_key_map`][]).
        ignore_unexpected: checkpoint-key prefixes dropped silently (ImageNet classifiers).
        native_freezing: the builder takes ``frozen=`` (top-level module names) and ``freeze_bn=`` itself.
        listed: shown by [`registered_backbones`][] (aliases are not).
    """

    build: Callable[..., nn.Module]
    key_map: KeyMap = None
    ignore_unexpected: tuple[str, ...] = ()
    native_freezing: bool = False
    listed: bool = True


_BACKBONES: dict[str, BackboneEntry] = {}
_KEY_MAPS: dict[str, Callable[[str], str | None]] = {}


def register_backbone(name: str, build: Callable[..., nn.Module], *, key_map: KeyMap = None,
                      ignore_unexpected: tuple[str, ...] = (), native_freezing: bool = False,
                      aliases: tuple[str, ...] = ()) -> None:
    """Register a backbone builder under ``name`` (and unlisted ``aliases``); see [`BackboneEntry`][]."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(build):
        raise TypeError(f"build must be callable, got {type(build).__name__}")
    entry = BackboneEntry(build, key_map, tuple(ignore_unexpected), native_freezing)
    _BACKBONES[name] = entry
    for alias in aliases:
        _BACKBONES[alias] = BackboneEntry(build, key_map, tuple(ignore_unexpected), native_freezing, listed=False)


def backbone_entry(name: str) -> BackboneEntry | None:
    """The registered entry of ``name``, or ``None``."""
    return _BACKBONES.get(name)


def registered_backbones() -> list[str]:
    """Registered backbone names (aliases left out), in registration order."""
    return [n for n, e in _BACKBONES.items() if e.listed]


def register_key_map(name: str, fn: Callable[[str], str | None]) -> None:
    """Register a named checkpoint key map (usable as ``key_map="name"`` and from YAML configs)."""
    _KEY_MAPS[name] = fn


def get_key_map(key_map: KeyMap) -> Callable[[str], str | None]:
    """Turn a key map given as ``None``, a registered name, a prefix dict or a callable into a callable.

    A dict maps checkpoint-key **prefixes** to model-key prefixes (the first matching, longest prefix wins);
    a value of ``None`` drops the key. A callable returns the model key or ``None`` to drop it.

    Examples:
        >>> get_key_map({"module.": ""})("module.fc.weight")
        'fc.weight'
    """
    if key_map is None:
        return lambda k: k
    if isinstance(key_map, str):
        if key_map not in _KEY_MAPS:
            raise ValueError(f"key_map {key_map!r} is not a registered key map; known: {sorted(_KEY_MAPS)}")
        return _KEY_MAPS[key_map]
    if isinstance(key_map, Mapping):
        items = sorted(key_map.items(), key=lambda kv: -len(kv[0]))

        def by_prefix(k: str) -> str | None:
            for old, new in items:
                if k.startswith(old):
                    return None if new is None else new + k[len(old):]
            return k

        return by_prefix
    if callable(key_map):
        return key_map
    raise TypeError(f"key_map must be None, a name, a dict or a callable, got {type(key_map).__name__}")
