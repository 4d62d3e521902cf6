"""Checkpoint folders for every recipe: the layout, the atomic fsynced write, keep-last.

A run's checkpoints live in `<run dir>/checkpoints/step-NNNNNNNN/`, one folder per
step (pretrain) or policy version (RL); what goes inside is the recipe's
(`write_checkpoint` takes a function that fills a folder). Torch-free, so
`wb export-model` can list checkpoints before anything heavy loads.

The write survives a kill -9 (or a crash) at any point with a loadable checkpoint on
disk, the newest complete one, and a power loss once it has returned:

1. the recipe fills `.tmp-step-N-<pid>/`; a temporary folder never counts;
2. every file in it, then the folder itself, is fsynced;
3. re-saving a step that exists (pretrain after a rollback): the old folder is first
   renamed `.old-step-N-<pid>/` (a directory cannot be renamed over a non-empty one);
4. the temporary folder is renamed `step-N/`, and the parent folder fsynced;
5. the `.old-` copy is deleted, then checkpoints beyond the newest `keep` are pruned,
   each renamed to a `.tmp-` name before its deletion so that a half-deleted
   folder is never listed.

Between 3 and 4 step N exists only as `.old-step-N-*`: `checkpoints_in` lists such an
orphan (complete, and no `step-N` beside it) as step N, and `clean_tmp` renames it back.

`fault_hook` lets a test kill the process at each named point of the write
(`WRITE_POINTS`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
REQUIRED = ("state.pt", "model.safetensors")  # what makes a checkpoint folder complete

# The points of a write, in order, where `fault_hook` is called ("old_moved" only when
# re-saving a step that exists).
WRITE_POINTS = ("tmp_created", "files_written", "files_synced", "old_moved", "renamed",
                "old_removed", "pruned")
fault_hook: Callable[[str], None] | None = None  # tests: called with each point's name


def _reached(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


# ----------------------------------------------------------------------------- layout


def checkpoint_step(path: Path) -> int:
    """The step of a `step-NNNNNNNN` folder (or of its `.old-step-NNNNNNNN-<pid>` copy)."""
    name = path.name.removeprefix(OLD_PREFIX).removeprefix(STEP_PREFIX)
    return int(name.split("-", 1)[0])


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in REQUIRED)


def checkpoints_in(folder: Path | None) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first. Temporary folders never count; an
    `.old-` copy counts only where a kill left no `step-N` of its step (see module doc)."""
    if folder is None or not folder.is_dir():
        return []
    found: dict[int, Path] = {}
    orphans: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(STEP_PREFIX) and is_complete(p):
            found[checkpoint_step(p)] = p
        elif p.name.startswith(OLD_PREFIX + STEP_PREFIX) and is_complete(p):
            orphans.setdefault(checkpoint_step(p), p)
    for step, p in orphans.items():
        found.setdefault(step, p)
    return [found[step] for step in sorted(found)]


# ----------------------------------------------------------------------------- writing


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (its entries: names created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, step: int, write: Callable[[Path], None],
                     keep: int) -> Path:
    """Write `folder/step-NNNNNNNN/` atomically and durably (module doc), `write(tmp)`
    filling it, then keep the newest `keep` checkpoints. Returns the final folder."""
    if keep < 1:
        raise ValueError(f"keep ({keep}) must be >= 1: the checkpoint just written stays")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{STEP_PREFIX}{step:08d}"
    tmp = folder / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _reached("tmp_created")
    write(tmp)
    _reached("files_written")
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    _reached("files_synced")
    old = None
    if final.exists():
        old = folder / f"{OLD_PREFIX}{final.name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        _reached("old_moved")
    os.replace(tmp, final)
    fsync_path(folder)
    _reached("renamed")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _reached("old_removed")
    prune(folder, keep)
    _reached("pruned")
    return final


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, each renamed out of the listing
    first (a kill mid-deletion leaves a `.tmp-` folder, never a partial checkpoint)."""
    for stale in checkpoints_in(folder)[:-keep]:
        doomed = folder / f"{TMP_PREFIX}pruned-{stale.name}-{os.getpid()}"
        try:
            os.replace(stale, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)


def clean_tmp(folder: Path) -> None:
    """Tidy what a killed writer left: temporary folders go; an `.old-` copy goes too,
    unless it is the only copy of its step, which is renamed back into place."""
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(OLD_PREFIX):
            final = folder / p.name.removeprefix(OLD_PREFIX).rsplit("-", 1)[0]
            if p.name.startswith(OLD_PREFIX + STEP_PREFIX) and is_complete(p) \
                    and not is_complete(final):
                shutil.rmtree(final, ignore_errors=True)
                os.replace(p, final)
            else:
                shutil.rmtree(p, ignore_errors=True)
