"""Rich renderings and JSON summaries of runs for the headless CLI."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Group
from rich.control import strip_control_codes
from rich.table import Table
from rich.text import Span, Text

from workbench.export import strict_json
from workbench.kinds import declared
from workbench.records import EventRecord
from workbench.run_record import RunRecord
from workbench.store import Store

STATUS_STYLE = {
    "queued": "cyan", "running": "bold green", "finished": "blue", "failed": "bold red",
    "stopped": "yellow", "lost": "bold magenta",
}
SEVERITY_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def key_metric(kind: str) -> str:
    """The metric run tables show for `kind`, as its recipe declares (kinds.py); a kind
    without a recipe gets the default declaration's."""
    return declared(kind).key_metric


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return duration(time.time() - ts)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value or math.isinf(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def eta(row: RunRecord) -> float | None:
    """Seconds left, from the rate since start; None when unknown."""
    step, total, started = row.last_step, row.total_steps, row.started
    if row.status != "running" or not (step and total and started) or step >= total:
        return None
    return (time.time() - started) / step * (total - step)


def summarize_run(st: Store, row: RunRecord, full: bool = False) -> dict[str, Any]:
    """`wb ls --json` / `wb show --json`: the run's columns under their table names
    (`RunRecord.to_dict`, the shape these outputs have always had), plus figures."""
    out = {k: v for k, v in row.to_dict().items() if k not in ("spec", "config")}
    out["eta_s"] = eta(row)
    out["event_counts"] = st.event_counts(row.id)
    metric = key_metric(row.kind)
    point = st.latest_value(row.id, metric)
    out["key_metric"] = {"key": metric, "value": point[1] if point else None}
    if row.is_remote:
        out["mirror"] = st.mirror(row.id)
    if full:
        out["latest"] = {k: {"step": s, "value": v} for k, (s, v) in st.latest(row.id).items()}
        out["spec"] = row.spec  # TOML text
        out["config"] = dict(row.config)  # an object, not JSON in a string
    return strict_json(out)


def summary_table(row: RunRecord, data: dict[str, Any]) -> Table:
    """`wb show RUN --summary`: one row per scalar, then the W&B summary's keys."""
    table = Table(title=f"{row.name} ({row.id}) summary", box=None,
                  header_style="bold", pad_edge=False, title_justify="left")
    for col in ("key", "last", "step", "min", "max", "points"):
        table.add_column(col, justify="left" if col == "key" else "right")

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    for key, m in data["metrics"].items():
        table.add_row(key, num(m["last"]), num(m["step"]), num(m["min"]), num(m["max"]),
                      num(m["count"]))
    for key, value in (data.get("wandb_summary") or {}).items():
        table.add_row(f"wandb.summary.{key}", num(value) if isinstance(value, int | float)
                      else str(value)[:40], "", "", "", "")
    if not data["metrics"] and not data.get("wandb_summary"):
        table.add_row("no metrics logged", "", "", "", "", "")
    return table


def mirror_text(mirror: dict[str, Any]) -> str:
    """A remote run's mirror in one line: its state, when, and its last error."""
    state = mirror["state"] or "not started"
    since = f" ({duration(time.time() - mirror['updated'])} ago)" if mirror["updated"] else ""
    error = f": {mirror['error']}" if mirror["error"] else ""
    hint = "  (restart it: wb mirror RUN)" if state == "gave up" else ""
    return f"{state}{since}, copied up to remote record {mirror['cursor']}{error}{hint}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def runs_table(st: Store, rows: list[RunRecord]) -> Text:
    """`wb ls`: one aligned line per run, status coloured.

    Laid out here rather than by a rich Table: a Table measures every cell of every
    row, which took over a second for 1,000 runs; this is one pass and one Text."""
    metrics = {key_metric(r.kind) for r in rows}
    header = metrics.pop().rsplit("/", 1)[-1] if len(metrics) == 1 else "metric"
    grouped = any(r.group for r in rows)  # the column only where it says something
    cols = ("id", "name", *(("group",) if grouped else ()), "kind", "status", "host", "step",
            header, "spikes", "age", "eta")
    right = {"step", "spikes", header}
    spikes_of = st.loss_spike_counts()
    metric_of = {kind: key_metric(kind) for kind in {r.kind for r in rows}}
    points = st.latest_values((r.id, metric_of[r.kind]) for r in rows)  # one statement
    cells: list[list[str]] = []
    for row in rows:
        point = points.get(row.id)
        step = row.last_step
        steps = "-" if step is None else (f"{step}/{row.total_steps}" if row.total_steps
                                          else str(step))
        spikes = spikes_of.get(row.id, 0)
        cells.append([row.id, row.name, *((row.group or "",) if grouped else ()),
                      row.kind, row.status, row.host or "", steps,
                      fmt_value(point[1]) if point else "-", str(spikes) if spikes else "",
                      ago(row.created), duration(eta(row))])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    status_at = cols.index("status")
    # The plain text and its spans directly, as Text.append would make them (a third
    # of the time of 10,000 appends).
    parts: list[str] = []
    spans: list[Span] = []
    at = 0

    def line(values: list[str], header_row: bool) -> None:
        nonlocal at
        for i, (value, width) in enumerate(zip(values, widths, strict=True)):
            cell = value.rjust(width) if cols[i] in right else value.ljust(width)
            if i == len(values) - 1:
                cell = cell.rstrip()
            style = "bold" if header_row else (
                STATUS_STYLE.get(value, "") if i == status_at else "")
            cell = strip_control_codes(cell)
            if style and cell:
                spans.append(Span(at, at + len(cell), style))
            parts.append(cell)
            at += len(cell)
            if i < len(values) - 1:
                parts.append("  ")
                at += 2
        parts.append("\n")
        at += 1

    line(list(cols), True)
    for values in cells:
        line(values, False)
    text = Text("".join(parts), no_wrap=True, overflow="ellipsis", spans=spans)
    text.rstrip()
    return text


# What `wb compare` puts side by side (docs/ARCHITECTURE.md metric names), with labels.
COMPARE_KEYS = {"train/loss": "train/loss", "val/loss": "val/loss",
                "attn/max_logit": "max logit", "perf/tokens_per_s": "tokens/s"}
LOWER_IS_BETTER = ("train/loss", "val/loss")


def optimizer_of(row: RunRecord) -> str | None:
    """The optimizer a pretrain run trains with (its config's optim.name), else None."""
    optim = row.config.get("optim")
    name = optim.get("name") if isinstance(optim, dict) else None
    return name if isinstance(name, str) else None


def runtime(row: RunRecord) -> float | None:
    """Seconds the run has trained (not counting time queued)."""
    if not row.started:
        return None
    return (row.ended or time.time()) - row.started


def compare_rows(st: Store, rows: list[RunRecord]) -> list[dict[str, Any]]:
    """One JSON-ready summary per run: the newest value of each compared metric."""
    out = []
    for row in rows:
        metrics = {}
        for key in COMPARE_KEYS:
            point = st.latest_value(row.id, key)
            metrics[key] = None if point is None else {"step": point[0], "value": point[1]}
        out.append({
            "id": row.id, "name": row.name, "group": row.group, "kind": row.kind,
            "optimizer": optimizer_of(row), "status": row.status,
            "last_step": row.last_step, "total_steps": row.total_steps,
            "runtime_s": runtime(row), "after": row.after, "metrics": metrics,
        })
    return strict_json(out)


def compare_table(summaries: list[dict[str, Any]]) -> Table:
    """`compare_rows` as a table; the lowest losses are highlighted."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("name", "id", "optim/kind", "status", "step", *COMPARE_KEYS.values(), "time"):
        numeric = col in ("step", "time", *COMPARE_KEYS.values())
        table.add_column(col, justify="right" if numeric else "left")
    best = {}
    for key in LOWER_IS_BETTER:
        values = [s["metrics"][key]["value"] for s in summaries
                  if s["metrics"][key] and s["metrics"][key]["value"] is not None]
        if len(values) > 1:
            best[key] = min(values)
    for s in summaries:
        cells: list[Text | str] = []
        for key in COMPARE_KEYS:
            point = s["metrics"][key]
            value = None if point is None else point["value"]
            text = "-" if point is None else fmt_value(value)
            cells.append(Text(text, style="bold green" if best.get(key) == value else ""))
        step = s["last_step"]
        steps = "-" if step is None else (f"{step}/{s['total_steps']}" if s["total_steps"]
                                          else str(step))
        what = s["optimizer"] or Text(s["kind"], style="dim")
        table.add_row(s["name"], s["id"], what, status_text(s["status"]), steps, *cells,
                      duration(s["runtime_s"]))
    return table


def run_detail(st: Store, row: RunRecord) -> Group:
    """`wb show RUN`: the run's fields, its latest metrics and its event counts."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    ended = row.ended or time.time()
    fields = [
        ("run", f"{row.name} ({row.id})"),
        ("status", status_text(row.status)),
        ("kind", row.kind),
        ("host", f"{row.host}  pid {row.pid or '-'}  launcher {row.launcher}"),
        ("step", "-" if row.last_step is None else
         f"{row.last_step}" + (f" / {row.total_steps}" if row.total_steps else "")),
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created))),
        ("runtime", duration(ended - row.started) if row.started else "-"),
        ("eta", duration(eta(row))),
        ("exit code", "-" if row.exit_code is None else str(row.exit_code)),
        ("folder", row.dir),
    ]
    if row.is_remote:
        fields.append(("mirror", mirror_text(st.mirror(row.id))))
    if row.resumed_from:
        fields.append(("resumed from", row.resumed_from))
    if row.group:
        fields.append(("group", row.group))
    if row.after:
        fields.append(("queued after", row.after))
    for label, value in fields:
        head.add_row(label, value)
    metrics = Table(title="latest metrics", box=None, header_style="bold", title_justify="left")
    metrics.add_column("key")
    metrics.add_column("step", justify="right")
    metrics.add_column("value", justify="right")
    for key, (step, value) in st.latest(row.id).items():
        metrics.add_row(key, str(step), fmt_value(value))
    counts = st.event_counts(row.id)
    ev = Text("events: " + (", ".join(f"{k} {n}" for k, n in counts.items()) or "none"))
    return Group(head, Text(""), metrics, Text(""), ev)


def payload_text(payload: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v) if isinstance(v, float) else v}"
                    for k, v in payload.items())


def event_line(e: EventRecord) -> Text:
    line = Text(f"event {e.kind}", style=SEVERITY_STYLE.get(e.severity or "", ""))
    line.append(f" step {e.step} {payload_text(e.payload)}")
    return line


def events_table(rows: list[EventRecord]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("id", "time", "step", "kind", "severity", "payload"):
        table.add_column(col, justify="right" if col in ("id", "step") else "left")
    for e in rows:
        severity = e.severity or ""
        table.add_row(str(e.id), time.strftime("%H:%M:%S", time.localtime(e.wall or 0.0)),
                      str(e.step), e.kind, Text(severity, style=SEVERITY_STYLE.get(severity, "")),
                      payload_text(e.payload))
    return table


def recipes_table() -> Table:
    import tomllib

    from workbench.kinds import RECIPES
    from workbench.spec import builtin_specs

    table = Table(title="built-in specs and groups (wb launch NAME)", box=None, header_style="bold",
                  title_justify="left", pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("description")
    for name, text in builtin_specs().items():
        data = tomllib.loads(text)
        table.add_row(name, data.get("kind", "?"), data.get("description", ""))
    from workbench.spec import builtin_groups

    table.add_section()
    for name, group in builtin_groups().items():
        table.add_row(name, "group", f"{group.description} ({', '.join(group.specs)})")
    table.add_section()
    for kind, recipe in RECIPES.items():
        table.add_row(f"kind {kind}", "", recipe.summary, style="dim")
    return table


def bench_table(name: str, result: dict[str, Any]) -> Table:
    table = Table(title=f"wb bench {name}", box=None, header_style="bold", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, list | dict):  # curves stay in --json
            value = f"({len(value)} points, see --json)"
        table.add_row(key, fmt_value(value) if isinstance(value, float) else str(value))
    return table
