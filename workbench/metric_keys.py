"""Metric keys as people read them: natural order, prefix groups, a filter, pages, the
run summary, and the common names a script logs for the Overview's small charts.

No Textual here: the Metrics tab, the Overview, `wb show --summary` and the tests
share it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from workbench.store import Store

_DIGITS = re.compile(r"(\d+)")

# What a custom script calls the Overview's small charts (nanoGPT, HF Trainer,
# Lightning, accelerate examples), our own names first.
SMALL_CHARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lr", ("train/lr", "lr", "learning_rate", "train/learning_rate", "lr-AdamW", "optim/lr")),
    ("grad norm", ("train/grad_norm", "rl/grad_norm", "grad_norm", "train/gradient_norm",
                   "gradient_norm", "grad-norm")),
    ("tokens/s", ("perf/tokens_per_s", "perf/gen_tokens_per_s", "tokens_per_s",
                  "tokens_per_sec", "throughput", "train/tokens_per_second", "mfu",
                  "perf/mfu")),
)
MAIN_CHARTS = ("train/loss", "loss", "train_loss", "train/loss_step", "eval/loss")


def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key: digits compare as numbers (layer2 before layer10), case ignored."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(key))


def group_of(key: str) -> str:
    """The prefix group: "train/loss" -> "train", a key without a slash -> "" ."""
    return key.split("/", 1)[0] if "/" in key else ""


def ordered(keys: Iterable[str]) -> list[str]:
    """Grouped by prefix (ungrouped keys first), then in natural order."""
    return sorted(set(keys), key=lambda k: (group_of(k) != "", natural_key(group_of(k)),
                                            natural_key(k)))


def matches(key: str, pattern: str) -> bool:
    """A glob (with * ? [) or else a substring, case-insensitive; "" matches all."""
    if not pattern:
        return True
    p, k = pattern.lower(), key.lower()
    return fnmatch.fnmatchcase(k, p) if any(c in p for c in "*?[") else p in k


def filtered(keys: Iterable[str], pattern: str) -> list[str]:
    return [k for k in ordered(keys) if matches(k, pattern)]


def pages(n: int, per_page: int) -> int:
    return max(1, math.ceil(n / max(1, per_page)))


def page_of(keys: Sequence[str], per_page: int, page: int) -> list[str]:
    """Page `page` (clamped into range) of `keys`."""
    page = min(max(page, 0), pages(len(keys), per_page) - 1)
    return list(keys[page * per_page:(page + 1) * per_page])


def first_present(present: Iterable[str], names: Sequence[str]) -> str | None:
    have = set(present)
    return next((n for n in names if n in have), None)


def run_summary(st: Store, run_id: str) -> dict[str, Any]:
    """Every scalar's last value (and its step), min, max and point count, plus the
    W&B drop-in's `wandb.summary` when the run has one."""
    stats = st.scalar_stats(run_id)
    latest = st.latest(run_id)
    metrics = {key: {"last": latest[key][1] if key in latest else None,
                     "step": latest[key][0] if key in latest else None,
                     "min": s["min"], "max": s["max"], "count": s["count"]}
               for key, s in stats.items()}
    out: dict[str, Any] = {"metrics": {k: metrics[k] for k in ordered(metrics)}}
    wandb = st.get_run(run_id).config.get("wandb")
    if isinstance(wandb, dict) and isinstance(wandb.get("summary"), dict):
        out["wandb_summary"] = wandb["summary"]
    return out
