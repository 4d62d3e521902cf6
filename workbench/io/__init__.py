"""Moving runs between the store and other formats: `wb import ...`, `wb export -f ...`.

One module per format, each with one job:
  jsonl_import.py  a `wb export` JSONL stream back into a NEW run (exact round trip)
  tensorboard.py   TensorBoard event files into runs, and a run out to event files
  parquet.py       a run out to Parquet files (pandas / polars)

What they share lives here: the error the CLI prints as its one line (exit 2), the
optional-dependency check, naming imported runs, and the all-or-nothing guard that
deletes half-imported runs. Nothing here imports torch, tensorboard or pyarrow at
module level: `import workbench.cli` must stay light (tests/test_layout.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from workbench.run_record import RunRecord
from workbench.store import Store, StoreError, name_from, validate_name

IMPORT_LAUNCHER = "import"  # runs.launcher of an imported run: no process behind it


class BadInput(Exception):
    """Input the user can fix (not JSONL, no event files, a taken name, a missing extra).

    The CLI prints the message as one line and exits 2; by then nothing is left behind.
    """


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it (not a traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise BadInput(f"this needs the {top} package: pip install 'workbench-lab[{extra}]' "
                       f"(or pip install {top})") from None


@dataclass
class Imported:
    """What one imported run received; printed by `wb import` (and as --json)."""

    id: str
    name: str
    source: str
    scalars: int = 0
    dists: int = 0
    matrices: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in (
            ("scalars", self.scalars), ("dists", self.dists), ("matrices", self.matrices),
            ("events", self.events)) if n) or "no records"
        return f"imported {self.source} as {self.name} ({self.id}): {counts}"


def safe_name(text: str, fallback: str = "run") -> str:
    """A folder path or foreign name made into a valid run name (run_a/seed 1 -> run_a-seed-1).

    Foreign characters are replaced rather than refused (store.name_from); 60
    characters leave room for -N.
    """
    return name_from(text, limit=60) or fallback


def taken_names(st: Store) -> set[str]:
    return {r.name for r in st.runs()}


def unique_name(base: str, taken: set[str]) -> str:
    """BASE when free, else BASE-N past the largest N in use, as create_run numbers runs.

    An import never silently shares a name with another run: `wb show NAME` resolves a
    name to its newest run, so a duplicate would hide the older one.
    """
    if base not in taken:
        return base
    base = base[:60]  # a 64-character name plus -N would not be a valid name
    prefix = f"{base}-"
    used = [int(t[len(prefix):]) for t in taken
            if t.startswith(prefix) and t[len(prefix):].isdigit()]
    return f"{base}-{1 + max(used, default=0)}"


def explicit_name(name: str, taken: set[str]) -> str:
    """A --name given by the user: valid and free, or refused before anything is written."""
    try:
        validate_name(name)
    except StoreError as exc:
        raise BadInput(str(exc)) from None
    if name in taken:
        raise BadInput(f"a run named {name!r} already exists; pick another --name "
                       "(or leave it out for a free one)")
    return name


@contextmanager
def all_or_nothing(st: Store) -> Iterator[list[str]]:
    """Yield a list the caller appends created run ids to; on any failure (bad line,
    ctrl-c, disk full) every one of them is deleted, rows and folder, before re-raising.

    Imports write in batches (one transaction per 10k records, so other writers are not
    blocked for the whole file): the guard is what keeps a failed import from leaving a
    half run behind. While an import runs, its run is `running` with the importer's pid,
    so if the importer is killed outright (SIGKILL) the run reads as `lost`, never as a
    complete run.
    """
    created: list[str] = []
    try:
        yield created
    except BaseException:
        for run_id in created:
            try:
                st.delete_run(run_id)
            except Exception:  # the original error is the one to report
                pass
        raise


def start_run(st: Store, *, kind: str, name: str, created: list[str]) -> RunRecord:
    """Create an imported run, marked running by this process until `finish_run`."""
    row = st.create_run(kind=kind, name=name, status="running", launcher=IMPORT_LAUNCHER,
                        pid=os.getpid())
    created.append(row.id)
    return row


__all__ = ["BadInput", "IMPORT_LAUNCHER", "Imported", "all_or_nothing", "explicit_name",
           "require", "safe_name", "start_run", "taken_names", "unique_name"]
