"""What logged and configured values become: the `Histogram`, `Settings` and
`AlertLevel` of `workbench.compat.wandb`, and the helpers that classify a logged value
(scalar, distribution, kept in the summary only, or skipped) and convert values for the
store (plain JSON, merge patches, config sources, workbench names).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workbench.store import name_from

from .media import _Media


class Histogram:
    """`wandb.Histogram`: logged as a workbench distribution (count, min, max, mean,
    p50/p90/p99 and histogram bins) rather than W&B's bins alone.

    From `sequence` the quantiles are exact. From `np_histogram=(counts, edges)` the
    samples are gone, so each bin's midpoint stands for its samples (at most a million
    of them, counts scaled down past that): quantiles are then approximate.
    """

    MAX_LENGTH = 512

    def __init__(self, sequence: Any = None, np_histogram: tuple[Any, Any] | None = None,
                 num_bins: int = 64) -> None:
        if np_histogram is not None:
            if len(np_histogram) != 2 or len(np_histogram[1]) != len(np_histogram[0]) + 1:
                raise ValueError("Expected np_histogram to be a tuple of (values, bin_edges) "
                                 "or sequence to be specified")
            counts = np.asarray(np_histogram[0], dtype=np.float64)
            edges = np.asarray(np_histogram[1], dtype=np.float64)
            if len(counts) > self.MAX_LENGTH:
                raise ValueError(f"The maximum length of a histogram is {self.MAX_LENGTH}")
            total = float(counts.sum())
            if total > 1_000_000:
                counts = counts * (1_000_000 / total)
            mids = (edges[:-1] + edges[1:]) / 2
            self._values = np.repeat(mids, np.rint(counts).astype(np.int64).clip(min=0))
            self.histogram = [float(c) for c in np_histogram[0]]
            self.bins = edges.tolist()
            self._bins = max(len(counts), 1)
        elif sequence is not None:
            if num_bins > self.MAX_LENGTH:
                raise ValueError(f"The maximum length of a histogram is {self.MAX_LENGTH}")
            values = _to_numpy(sequence).astype(np.float64).ravel()
            finite = values[np.isfinite(values)]
            counts, edges = np.histogram(finite, bins=num_bins) if finite.size else ([], [])
            self._values = values
            self.histogram = [int(c) for c in counts]
            self.bins = [float(e) for e in edges]
            self._bins = num_bins
        else:
            raise ValueError("Expected np_histogram to be a tuple of (values, bin_edges) "
                             "or sequence to be specified")

    def __repr__(self) -> str:
        return f"Histogram(count={self._values.size}, bins={self._bins})"


class Settings:
    """`wandb.Settings(...)`: accepted and ignored (init warns once when given some).

    W&B settings configure W&B's own client: network, console capture, file syncing.
    The workbench has none of those; its store is chosen by WB_STORE.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def update(self, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.__dict__.update(dict(settings or {}), **kwargs)


class AlertLevel(enum.StrEnum):
    """`wandb.AlertLevel`; an alert becomes an event of this severity."""

    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


_SEVERITY = {"INFO": "info", "WARN": "warning", "WARNING": "warning", "ERROR": "error"}

# What one logged value becomes.
_SCALAR, _DIST, _KEEP = 0, 1, 2


def _is_tensor(value: Any) -> bool:
    """A torch tensor, told without importing torch (which takes seconds)."""
    return hasattr(value, "detach") and hasattr(value, "numel")


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        t = value.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:  # bf16/fp16: numpy has no bf16
            t = t.float()
        return t.numpy()
    return np.asarray(value)


def _classify(value: Any) -> tuple[int, Any] | str:
    """(kind, converted value) for one logged value, or a description of what is skipped.

    Mirrors W&B: an array or tensor of one value is that value, of more than 32 a
    histogram, and anything else non-numeric is kept as is (here: in the summary only).
    """
    t = type(value)
    if t is float or t is int or t is bool:
        return _SCALAR, value
    if isinstance(value, Histogram):
        return _DIST, value
    if isinstance(value, _Media):
        return value._what
    if isinstance(value, np.generic):
        if isinstance(value, np.number | np.bool_) and not isinstance(value, np.complexfloating):
            return _SCALAR, value.item()
        return _KEEP, _plain(value)
    if isinstance(value, numbers.Real):
        return _SCALAR, int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, np.ndarray) or _is_tensor(value):
        arr = _to_numpy(value)
        if arr.dtype.kind not in "biuf":
            return _KEEP, arr.tolist()
        if arr.size == 1:
            return _SCALAR, arr.reshape(()).item()
        if arr.size > 32:
            return _DIST, Histogram(arr, num_bins=32)
        return _KEEP, arr.tolist()
    if value is None or isinstance(value, str | list | tuple):
        return _KEEP, _plain(value)
    return f"a {t.__name__}"


def _plain(value: Any) -> Any:
    """A JSON-ready copy: numpy and torch values become Python numbers and lists, so a
    config or summary compares equal to what the store gives back."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return _to_numpy(value).tolist()
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    for base in (bool, int, float, str):  # subclasses of the JSON types
        if isinstance(value, base):
            return base(value)
    return str(value)  # a Path, a class, any object: what json.dumps(default=str) would store


def _json_safe(value: Any) -> Any:
    """NaN and infinities as the strings "nan", "inf", "-inf" at any depth: the store's
    config is strict JSON (json.dumps would write a bare NaN), and a summary whose last
    loss was NaN should say so rather than lose the key (null deletes in a merge patch)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _step_of(step: Any) -> int:
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, not {type(step).__name__} ({step!r})") from None


def _int_step(value: Any) -> int | None:
    """A step metric's value as a workbench step (an integer), or None if it is not one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new`.

    The store merges config updates as merge patches (so processes attached to one run
    keep each other's keys). W&B replaces a key's value wholesale, so keys of a nested
    dict that the new value lacks are deleted explicitly (null). A None inside `new`
    also reads as a delete: merge patches cannot store null.
    """
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    patch.update((k, _merge_patch(old.get(k), v)) for k, v in new.items())
    return patch


def _config_dict(config: Any) -> dict[str, Any]:
    """What W&B accepts as a config: a mapping, an argparse Namespace (or any object
    with attributes), absl/TF flags, or the path of a YAML file."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, str | Path):
        import yaml  # accelerate depends on PyYAML, so it is always installed

        loaded = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise TypeError(f"config file {config} holds a {type(loaded).__name__}, not a mapping")
        loaded.pop("wandb_version", None)
        loaded.pop("_wandb", None)
        return {k: v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"}
                and "value" in v else v for k, v in loaded.items()}
    if hasattr(config, "flag_values_dict"):
        return dict(config.flag_values_dict())
    if hasattr(config, "model_dump"):
        return dict(config.model_dump())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "__dict__"):
        return {k: v for k, v in vars(config).items() if not k.startswith("_")}
    raise TypeError(f"config must be a dict, an argparse.Namespace or the path of a YAML "
                    f"file, not {type(config).__name__}")


def _valid_name(text: str, what: str) -> str | None:
    """A workbench name made from W&B free text (any text there), or None if nothing
    usable is left (store.name_from). `what` names it in the caller's warnings."""
    return name_from(str(text))
