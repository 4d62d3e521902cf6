"""TensorBoard event files, both ways: `wb import tensorboard DIR`, `wb export -f tensorboard`.

Why: most training code already logs to TensorBoard; importing its logs puts those runs
next to ours (compare, charts, export), and exporting ours lets a TensorBoard user open
our runs with the tool they know.

Import (through tensorboard's EventAccumulator, keeping every event):
- one run per folder that holds event files (the usual layout DIR/run_a/events...,
  DIR/run_b/...; DIR itself may hold some too), named after the folder's path under
  DIR (`run_a`, `sweep-lr3`; DIR's own name for DIR itself), NAME-N when taken;
- scalars -> scalars, the tag kept as the key, with the event's step and wall time;
  both the legacy `simple_value` form (torch's add_scalar, float32) and the tensor
  form of the scalars plugin (TF2, torch with new_style=True) are read;
- histograms -> distributions: count, min, max, mean from the histogram, edges and
  counts from the buckets, p50/p90/p99 interpolated within the buckets (approximate:
  the values themselves are gone). Legacy histogram protos (torch's add_histogram)
  and the histograms plugin's [k, 3] tensors (TF2) are both read;
- other tags (images, text, graphs, hparams) are skipped;
- a run is kind `tensorboard`, launcher `import`, status `finished`, its timestamps the
  first and last event's; its config records where it came from.

Export (through torch.utils.tensorboard.SummaryWriter, into one folder: point
`tensorboard --logdir` at it or at its parent):
- scalars in double precision (add_scalar new_style, so nothing is rounded to float32)
  with their step and wall time;
- distributions as histograms (add_histogram_raw) from our edges and counts, with an
  empty first bucket carrying the left edge (TensorBoard buckets store right edges
  only; torch's add_histogram does the same), so an import gives the same edges and
  counts back; sum_squares, which we don't keep, is estimated from bucket centres;
- events as text under `events/<kind>` (the JSON payload); the run's config as text
  under `config`; matrices are not written (TensorBoard has no matching type).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.io import (
    BadInput,
    Imported,
    all_or_nothing,
    explicit_name,
    require,
    safe_name,
    start_run,
    taken_names,
    unique_name,
)
from workbench.records import DistRecord, EventRecord, MatrixRecord, Record, ScalarRecord
from workbench.run_record import RunRecord
from workbench.store import NAN, Batch, Store, flag_of

BATCH = 10_000  # records per transaction
PAGE = 10_000  # records read at once when exporting
KIND = "tensorboard"


# -- reading --------------------------------------------------------------------------


@dataclass
class Folder:
    """One folder's events, read and converted before anything is written."""

    path: Path
    name: str
    scalars: list[tuple] = field(default_factory=list)  # Batch.scalars rows
    dists: list[tuple] = field(default_factory=list)  # Batch.dists rows
    skipped: set[str] = field(default_factory=set)  # tags of other kinds


def event_folders(root: Path) -> list[Path]:
    """Folders under `root` (itself included) that directly hold event files, sorted."""
    io_wrapper = require("tensorboard.backend.event_processing.io_wrapper", "tb")
    if root.is_file():
        if not io_wrapper.IsSummaryEventsFile(str(root)):
            raise BadInput(f"{root} is not a TensorBoard event file (events.out.tfevents.*)")
        return [root]
    if not root.is_dir():
        raise BadInput(f"no folder {root}")
    found = [Path(d) for d, _, files in os.walk(root)
             if any(io_wrapper.IsSummaryEventsFile(os.path.join(d, f)) for f in files)]
    if not found:
        raise BadInput(f"no TensorBoard event files (events.out.tfevents.*) in {root} or "
                       "its subfolders")
    return sorted(found)


def read_folder(path: Path) -> Folder:
    """Every scalar and histogram of one folder (or one event file), as store rows.

    size_guidance 0 keeps every event (the default samples them down), and orphan
    purging is off: an import must not silently drop a restarted run's earlier steps.
    """
    ea = require("tensorboard.backend.event_processing.event_accumulator", "tb")
    tensor_util = require("tensorboard.util.tensor_util", "tb")
    keep_all = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 1,
                ea.IMAGES: 1, ea.AUDIO: 1}
    acc = ea.EventAccumulator(str(path), size_guidance=keep_all, purge_orphaned_data=False)
    try:
        acc.Reload()
    except Exception as exc:  # a truncated or foreign file: tensorboard's own errors vary
        raise BadInput(f"cannot read the event files in {path}: {exc}") from None
    folder = Folder(path, "")
    tags = acc.Tags()
    for tag in tags[ea.SCALARS]:
        for ev in acc.Scalars(tag):
            folder.scalars.append(_scalar(ev.step, tag, ev.value, ev.wall_time))
    for tag in tags[ea.HISTOGRAMS]:
        for ev in acc.Histograms(tag):
            h = ev.histogram_value
            folder.dists.append((ev.step, tag, *dist_of_buckets(
                h.min, h.max, h.num, h.sum, h.bucket_limit, h.bucket), ev.wall_time))
    for tag in tags[ea.TENSORS]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        if plugin not in ("scalars", "histograms"):
            folder.skipped.add(tag)
            continue
        for ev in acc.Tensors(tag):
            arr = tensor_util.make_ndarray(ev.tensor_proto)
            if plugin == "scalars":
                folder.scalars.append(_scalar(ev.step, tag, float(arr.item()), ev.wall_time))
            else:
                folder.dists.append((ev.step, tag, *dist_of_ranges(arr), ev.wall_time))
    folder.skipped |= {t for kind in (ea.IMAGES, ea.AUDIO) for t in tags[kind]}
    return folder


def _scalar(step: int, tag: str, value: float, wall: float) -> tuple:
    flag = flag_of(value)
    return (step, tag, None if flag == NAN else float(value), wall, flag)


def dist_of_buckets(lo: float, hi: float, num: float, total: float, limits: Sequence[float],
                    buckets: Sequence[float]) -> tuple:
    """A legacy histogram proto -> (count, min, max, mean, p50, p90, p99, edges, counts,
    nonfinite), edges and counts as JSON text like the store keeps them.

    Bucket i holds the values in (limit[i-1], limit[i]]; bucket 0 reaches down to -inf,
    so its left edge is the histogram's min (writers put an empty bucket first to
    carry the leftmost edge, and then it costs nothing).
    """
    limits, counts = [float(x) for x in limits], [int(round(c)) for c in buckets]
    if not counts or num <= 0:
        return _dist([], [], 0, None, None, None)
    edges = [min(float(lo), limits[0]), *limits]
    return _dist(edges, counts, int(num), float(lo), float(hi), float(total) / num)


def dist_of_ranges(arr: Any) -> tuple:
    """A histograms-plugin tensor, rows of (left, right, count) -> the same as above."""
    rows = [(float(a), float(b), int(round(c))) for a, b, c in arr.reshape(-1, 3).tolist()]
    counts = [c for _, _, c in rows]
    num = sum(counts)
    if num <= 0:
        return _dist([], [], 0, None, None, None)
    edges = [rows[0][0], *(b for _, b, _ in rows)]
    total = sum((a + b) / 2 * c for a, b, c in rows)
    return _dist(edges, counts, num, edges[0], edges[-1], total / num)


def _dist(edges: list[float], counts: list[int], num: int, lo: float | None,
          hi: float | None, mean: float | None) -> tuple:
    """Trim empty outer buckets (TF's default has ~1500, nearly all empty); quantiles."""
    first = next((i for i, c in enumerate(counts) if c), len(counts))
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    counts = counts[first:last + 1]
    edges = edges[first:last + 2] if counts else []
    p50, p90, p99 = (quantile(edges, counts, q, lo, hi) for q in (0.5, 0.9, 0.99))
    return (num, lo, hi, mean, p50, p90, p99, json.dumps(edges), json.dumps(counts), 0)


def quantile(edges: Sequence[float], counts: Sequence[int], q: float, lo: float | None,
             hi: float | None) -> float | None:
    """The q-quantile of a histogram, linear within its bucket, kept inside [min, max]."""
    total = sum(counts)
    if not total:
        return None
    target, seen = q * total, 0
    for i, c in enumerate(counts):
        if c and seen + c >= target:
            value = edges[i] + (edges[i + 1] - edges[i]) * (target - seen) / c
            break
        seen += c
    else:
        value = edges[-1]
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


# -- import -----------------------------------------------------------------------------


def import_tensorboard(st: Store, root: Path, *, name: str | None = None) -> list[Imported]:
    """One new run per event folder under `root`; all of them or none (BadInput).

    Every folder is read before the first run is created, so unreadable input leaves
    the store untouched; a failure while writing deletes the runs made so far.
    """
    paths = event_folders(root)
    taken = taken_names(st)
    folders = []
    for path in paths:
        folder = read_folder(path)
        folder.name = _name_for(root, path, name, len(paths), taken)
        taken.add(folder.name)
        folders.append(folder)
    results = []
    with all_or_nothing(st) as created:
        for folder in folders:
            row = start_run(st, kind=KIND, name=folder.name, created=created)
            results.append(_write_folder(st, row.id, folder))
    return results


def _name_for(root: Path, path: Path, name: str | None, n: int, taken: set[str]) -> str:
    """NAME alone (one folder), NAME-<folder> (several), or the folder's path under DIR."""
    folder = path.parent if path.is_file() else path
    rel = "-".join(folder.relative_to(root).parts) if folder != root and root.is_dir() else ""
    if name:
        return explicit_name(f"{name}-{safe_name(rel)}" if n > 1 and rel else name, taken)
    return unique_name(safe_name(rel or folder.resolve().name, fallback="tensorboard"), taken)


def _write_folder(st: Store, run_id: str, folder: Folder) -> Imported:
    # In time order across tags (the accumulator groups by tag): a reader resuming by id
    # then sees the run grow as it did.
    rows = sorted([(r[3], r[0], 0, r) for r in folder.scalars]
                  + [(r[-1], r[0], 1, r) for r in folder.dists], key=lambda x: x[:3])
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        st.write_batch(Batch(run_id, [r for *_, kind, r in chunk if kind == 0],
                             [r for *_, kind, r in chunk if kind == 1]))
    walls = [w for w, *_ in rows]
    steps = [s for _, s, *_ in rows if s is not None]
    config = {"import": {"format": "tensorboard", "path": str(folder.path.resolve())}}
    if folder.skipped:
        config["import"]["skipped_tags"] = sorted(folder.skipped)
    st.update_run(run_id, status="finished", pid=None, config=config,
                  created=min(walls, default=None) or st.get_run(run_id).created,
                  started=min(walls, default=None), ended=max(walls, default=None),
                  heartbeat=max(walls, default=None), last_step=max(steps, default=None),
                  exit_code=0)
    return Imported(run_id, folder.name, str(folder.path), scalars=len(folder.scalars),
                    dists=len(folder.dists))


# -- export -----------------------------------------------------------------------------


@dataclass
class Written:
    """What an export wrote (and skipped), for the one line `wb export` prints."""

    path: Path
    scalars: int = 0
    dists: int = 0
    events: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def export_tensorboard(st: Store, row: RunRecord, out: Path, *,
                       keys: Sequence[str] = (), since: int = 0) -> Written:
    """Write a run's records into event files in `out` (made if missing).

    A folder that already holds event files is refused: TensorBoard would merge the
    two into one run. On failure the event file written so far is removed.
    """
    require("tensorboard", "tb")
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out} is a file; give a folder for the event files")
    if out.is_dir() and any("tfevents" in p.name for p in out.iterdir()):
        raise BadInput(f"{out} already holds TensorBoard event files; give an empty or new "
                       "folder (TensorBoard would mix the two)")
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    written = Written(out)
    writer = SummaryWriter(log_dir=str(out), max_queue=1000, flush_secs=3600)
    try:
        if row.config and not keys:
            text = json.dumps(dict(row.config), default=str)  # as the run line has it
            writer.add_text("config", f"`{text}`", 0, walltime=row.created)
        for rec in _records(st, row.id, keys, since):
            _write_record(writer, rec, written)
        writer.close()
    except BaseException:
        writer.close()
        for path in set(out.iterdir()) - before:
            path.unlink(missing_ok=True)
        raise
    return written


def _records(st: Store, run_id: str, keys: Sequence[str], since: int) -> Iterator[Record]:
    cursor = since
    while True:
        page = list(st.records(run_id, since=cursor, keys=keys, limit=PAGE))
        yield from page
        if len(page) < PAGE:
            return
        cursor = page[-1].id


def _write_record(writer: Any, rec: Record, written: Written) -> None:
    if isinstance(rec, ScalarRecord):
        writer.add_scalar(rec.key, rec.value, rec.step, walltime=rec.wall,
                          new_style=True, double_precision=True)
        written.scalars += 1
    elif isinstance(rec, DistRecord) and rec.counts and rec.count:
        edges, counts = rec.edges, rec.counts
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
        mean = rec.mean if rec.mean is not None else 0.0
        writer.add_histogram_raw(
            rec.key, min=_finite(rec.min, edges[0]), max=_finite(rec.max, edges[-1]),
            num=rec.count, sum=mean * rec.count,
            sum_squares=sum(c * x * x for c, x in zip(counts, centres, strict=False)),
            bucket_limits=list(edges), bucket_counts=[0, *counts],
            global_step=rec.step, walltime=rec.wall)
        written.dists += 1
    elif isinstance(rec, EventRecord):
        payload = rec.payload
        body = {"severity": rec.severity,
                **(payload if isinstance(payload, dict) else {"payload": payload})}
        writer.add_text(f"events/{rec.kind}", f"`{json.dumps(body)}`", rec.step,
                        walltime=rec.wall)
        written.events += 1
    else:  # matrices, empty distributions
        what = "matrices" if isinstance(rec, MatrixRecord) else "empty dists"
        written.skipped[what] = written.skipped.get(what, 0) + 1


def _finite(value: float | None, default: float) -> float:
    return value if value is not None and math.isfinite(value) else default


__all__ = ["Written", "dist_of_buckets", "dist_of_ranges", "event_folders", "export_tensorboard",
           "import_tensorboard", "quantile", "read_folder"]
