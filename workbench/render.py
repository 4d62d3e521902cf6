"""Rich renderings and JSON summaries of runs for the headless CLI."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from workbench.store import Store, strict_json

STATUS_STYLE = {
    "queued": "cyan", "running": "bold green", "finished": "blue", "failed": "bold red",
    "stopped": "yellow", "lost": "bold magenta",
}
SEVERITY_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


def key_metric(kind: str) -> str:
    from workbench.recipes import RECIPES

    recipe = RECIPES.get(kind)
    return recipe.key_metric if recipe else "train/loss"


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


def eta(row: dict[str, Any]) -> float | None:
    """Seconds left, from the rate since start; None when unknown."""
    step, total, started = row.get("last_step"), row.get("total_steps"), row.get("started")
    if row["status"] != "running" or not (step and total and started) or step >= total:
        return None
    return (time.time() - started) / step * (total - step)


def summarize_run(st: Store, row: dict[str, Any], full: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("spec", "config")}
    out["eta_s"] = eta(row)
    out["event_counts"] = st.event_counts(row["id"])
    metric = key_metric(row["kind"])
    point = st.latest_value(row["id"], metric)
    out["key_metric"] = {"key": metric, "value": point[1] if point else None}
    if full:
        out["latest"] = {k: {"step": s, "value": v} for k, (s, v) in st.latest(row["id"]).items()}
        out["spec"] = row["spec"]  # TOML text
        out["config"] = _config(row["config"])  # an object, not JSON in a string
    return strict_json(out)


def _config(text: str | None) -> Any:
    import json

    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def runs_table(st: Store, rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    metrics = {key_metric(r["kind"]) for r in rows}
    header = metrics.pop().rsplit("/", 1)[-1] if len(metrics) == 1 else "metric"
    for col in ("id", "name", "kind", "status", "host", "step", header, "spikes", "age", "eta"):
        table.add_column(col, justify="right" if col in ("step", "spikes", header) else "left")
    for row in rows:
        point = st.latest_value(row["id"], key_metric(row["kind"]))
        value = fmt_value(point[1]) if point else "-"
        step = row["last_step"]
        steps = "-" if step is None else (f"{step}/{row['total_steps']}" if row["total_steps"]
                                          else str(step))
        spikes = st.event_counts(row["id"]).get("loss_spike", 0)
        table.add_row(row["id"], row["name"], row["kind"], status_text(row["status"]),
                      row["host"], steps, value, str(spikes) if spikes else "",
                      ago(row["created"]), duration(eta(row)))
    return table


def run_detail(st: Store, row: dict[str, Any]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    ended = row["ended"] or time.time()
    fields = [
        ("run", f"{row['name']} ({row['id']})"),
        ("status", status_text(row["status"])),
        ("kind", row["kind"]),
        ("host", f"{row['host']}  pid {row['pid'] or '-'}  launcher {row['launcher']}"),
        ("step", "-" if row["last_step"] is None else
         f"{row['last_step']}" + (f" / {row['total_steps']}" if row["total_steps"] else "")),
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))),
        ("runtime", duration(ended - row["started"]) if row["started"] else "-"),
        ("eta", duration(eta(row))),
        ("exit code", "-" if row["exit_code"] is None else str(row["exit_code"])),
        ("folder", row["dir"]),
    ]
    if row["resumed_from"]:
        fields.append(("resumed from", row["resumed_from"]))
    for label, value in fields:
        head.add_row(label, value)
    metrics = Table(title="latest metrics", box=None, header_style="bold", title_justify="left")
    metrics.add_column("key")
    metrics.add_column("step", justify="right")
    metrics.add_column("value", justify="right")
    for key, (step, value) in st.latest(row["id"]).items():
        metrics.add_row(key, str(step), fmt_value(value))
    counts = st.event_counts(row["id"])
    ev = Text("events: " + (", ".join(f"{k} {n}" for k, n in counts.items()) or "none"))
    return Group(head, Text(""), metrics, Text(""), ev)


def payload_text(payload: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v) if isinstance(v, float) else v}"
                    for k, v in payload.items())


def event_line(e: dict[str, Any]) -> Text:
    line = Text(f"event {e['kind']}", style=SEVERITY_STYLE.get(e["severity"], ""))
    line.append(f" step {e['step']} {payload_text(e['payload'])}")
    return line


def events_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("id", "time", "step", "kind", "severity", "payload"):
        table.add_column(col, justify="right" if col in ("id", "step") else "left")
    for e in rows:
        payload = payload_text(e["payload"])
        table.add_row(str(e["id"]), time.strftime("%H:%M:%S", time.localtime(e["wall"])),
                      str(e["step"]), e["kind"],
                      Text(e["severity"], style=SEVERITY_STYLE.get(e["severity"], "")), payload)
    return table


def recipes_table() -> Table:
    import tomllib

    from workbench.recipes import RECIPES
    from workbench.spec import builtin_specs

    table = Table(title="built-in specs (wb launch NAME)", box=None, header_style="bold",
                  title_justify="left", pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("description")
    for name, text in builtin_specs().items():
        data = tomllib.loads(text)
        table.add_row(name, data.get("kind", "?"), data.get("description", ""))
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
