"""`wandb.config` and `wandb.summary`: dicts with attribute access, W&B's rules for
changing them, and the stand-ins that refuse use before `wandb.init()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from .errors import ConfigError, Error
from .values import _config_dict, _plain

# The config key that holds what only W&B has a place for (project, tags, summary).
META_KEY = "wandb"


class _AttrDict:
    """A dict with attribute access over `self._items` (config and summary share it).

    Keys starting with '_' are hidden from keys()/items()/values().
    """

    _missing = "object has no attribute"

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __getattr__(self, key: str) -> Any:
        items = self.__dict__.get("_items")  # absent while copy/pickle rebuild the object
        if items is None or key.startswith("__") or key not in items:
            raise AttributeError(f"{type(self).__name__.lower()} {self._missing} {key!r}")
        return items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def keys(self) -> list[str]:
        return [k for k in self._items if not k.startswith("_")]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self._items.items() if not k.startswith("_")]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)


class Config(_AttrDict):
    """`wandb.config`: a dict with attribute access whose changes go to the run's config.

    Leading '-' of a key is stripped, as W&B does (so argparse-style names read back
    the same).
    """

    def __init__(self, items: dict[str, Any], persist: Callable[[dict[str, Any]], None],
                 allow_val_change: bool = False) -> None:
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_persist", persist)
        object.__setattr__(self, "_allow", allow_val_change)

    def __setitem__(self, key: str, value: Any) -> None:
        self._set({key: value}, None)

    __setattr__ = __setitem__

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def update(self, d: Any, allow_val_change: bool | None = None) -> None:
        """Set many keys in one store write. A changed value needs `allow_val_change`."""
        self._set(_config_dict(d), allow_val_change)

    def setdefaults(self, d: Any) -> None:
        """Set only the keys not set yet (a sweep's values win over a script's defaults)."""
        self._set({k: v for k, v in _config_dict(d).items() if k not in self._items}, None)

    def persist(self) -> None:
        """W&B's explicit save: every change is already written."""

    def _set(self, d: Mapping[str, Any], allow_val_change: bool | None) -> None:
        clean: dict[str, Any] = {}
        for key, value in d.items():
            key = key.strip("-") if isinstance(key, str) else str(key)
            if key == META_KEY:
                raise ValueError(f"config key {META_KEY!r} is reserved: the workbench keeps "
                                 "W&B's project, tags and summary there; rename the key")
            value = _plain(value)
            if not (allow_val_change or self._allow) and key in self._items \
                    and self._items[key] != value:
                raise ConfigError(f'Attempted to change value of key "{key}" from '
                                  f"{self._items[key]} to {value}; if you really want to do "
                                  "this, pass allow_val_change=True to config.update()")
            clean[key] = value
        if clean:
            self._items.update(clean)
            self._persist(clean)


class Summary(_AttrDict):
    """`run.summary`: the last value of each logged key (or its define_metric
    aggregates), plus whatever the script assigns. Stored in the run's config under
    `wandb.summary` when the run finishes."""

    _missing = "has no key"

    def __init__(self) -> None:
        object.__setattr__(self, "_items", {})

    def __setitem__(self, key: str, value: Any) -> None:
        self._items[key] = _plain(value)

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    __setattr__ = __setitem__
    __delattr__ = __delitem__

    def update(self, d: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in {**dict(d or {}), **kwargs}.items():
            self[key] = value


class _PreInit:
    """`wandb.config` / `wandb.summary` before init: W&B raises an Error telling you to
    call init first, rather than silently keeping values that go nowhere."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _refuse(self, what: str) -> NoReturn:
        raise Error(f"You must call wandb.init() before {self._name}{what}")

    def __getitem__(self, key: str) -> NoReturn:
        self._refuse(f"[{key!r}]")

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        self._refuse(f"[{key!r}]")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        self._refuse(f".{key}")

    def __setattr__(self, key: str, value: Any) -> NoReturn:
        self._refuse(f".{key}")

    def __contains__(self, key: object) -> bool:
        self._refuse(f" ({key!r} in {self._name})")

    def __iter__(self) -> NoReturn:
        self._refuse(" (iterating it)")

    def __repr__(self) -> str:
        return f"<{self._name} before wandb.init()>"


_PREINIT_CONFIG = _PreInit("wandb.config")
_PREINIT_SUMMARY = _PreInit("wandb.summary")
