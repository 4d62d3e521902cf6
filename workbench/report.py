"""`wb report RUN|GROUP -o report.html`: one self-contained HTML file of a run or group.

What a user pastes into a paper draft or a chat: every scalar as an inline SVG chart
(a group overlays its runs), each distribution as a p50 / p90 / p99 band over steps,
the max-logit heatmap of the last logged step against tau, the depth accuracy table,
the summary (last / min / max), events and the config. No script, no font, no image
file and no URL: nothing is requested when the file is opened.

Long series are reduced with `downsample_minmax` (workbench/series.py) to about two
points per pixel column, as the dashboard does, so a one-step spike still shows and a
1,000,000-point run writes a file of a few hundred KB.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.feed import RunFeed
from workbench.metric_keys import ordered, run_summary
from workbench.records import DistRecord
from workbench.series import downsample_minmax
from workbench.store import Store

WIDTH, HEIGHT = 520, 200
PAD_L, PAD_R, PAD_T, PAD_B = 58, 10, 24, 26
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
HEADS_KEY = "attn/max_logit_heads"
LOSS_KEYS = ("train/loss", "loss")  # their charts mark the events below
MARKED = ("loss_spike", "nan", "rollback", "skip")
CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #e4e4e4}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#f6f6f6}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto;max-height:480px}
.muted{color:#777}
"""


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.3g}" if a == 0 or 1e-3 <= a < 1e5 else f"{v:.2e}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


@dataclass
class Frame:
    """The data-to-pixel map of one chart."""

    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, v: np.ndarray) -> np.ndarray:
        span = (self.x1 - self.x0) or 1.0
        return PAD_L + (v - self.x0) / span * (WIDTH - PAD_L - PAD_R)

    def y(self, v: np.ndarray) -> np.ndarray:
        span = (self.y1 - self.y0) or 1.0
        return HEIGHT - PAD_B - (v - self.y0) / span * (HEIGHT - PAD_T - PAD_B)


def _frame(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> Frame | None:
    fx = [x[np.isfinite(y)] for x, y in zip(xs, ys, strict=True)]
    fy = [y[np.isfinite(y)] for y in ys]
    if not any(len(y) for y in fy):
        return None
    x0 = min(float(x.min()) for x in fx if len(x))
    x1 = max(float(x.max()) for x in fx if len(x))
    y0 = min(float(y.min()) for y in fy if len(y))
    y1 = max(float(y.max()) for y in fy if len(y))
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    return Frame(x0, x1, y0, y1)


def _axes(f: Frame, title: str, x_label: str) -> list[str]:
    out = [f'<text x="{PAD_L}" y="15" font-size="13" font-weight="600">'
           f"{html.escape(title)}</text>",
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{WIDTH - PAD_L - PAD_R}" '
           f'height="{HEIGHT - PAD_T - PAD_B}" fill="none" stroke="#ccc"/>']
    for t in _ticks(f.y0, f.y1):
        y = float(f.y(np.array([t]))[0])
        out.append(f'<line x1="{PAD_L - 3}" x2="{WIDTH - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{PAD_L - 5}" y="{y + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(f.x0, f.x1, 5):
        x = float(f.x(np.array([t]))[0])
        out.append(f'<text x="{x:.1f}" y="{HEIGHT - PAD_B + 13}" font-size="10" '
                   f'text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{WIDTH - PAD_R}" y="{HEIGHT - 2}" font-size="10" '
               f'text-anchor="end" fill="#777">{html.escape(x_label)}</text>')
    return out


def _svg(body: list[str], key: str) -> str:
    return (f'<svg class="chart" data-key="{html.escape(key)}" xmlns="http://www.w3.org/2000/'
            f'svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'font-family="system-ui,sans-serif">{"".join(body)}</svg>')


def _points(x: np.ndarray, y: np.ndarray, f: Frame) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(f.x(x), f.y(y), strict=True))


def line_chart(key: str, series: list[tuple[str, np.ndarray, np.ndarray]],
               x_label: str = "step", hline: float | None = None,
               marks: Sequence[float] = ()) -> str:
    """An SVG chart of `series` [(name, x, y)]; a legend when there are several; `marks`
    (steps of spikes, rollbacks, skips) as red ticks on the x axis."""
    cols = WIDTH - PAD_L - PAD_R
    cleaned = []
    for name, x, y in series:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if len(x) > 2 * cols:
            x, y = downsample_minmax(x, y, cols)
        cleaned.append((name, x, y))
    f = _frame([c[1] for c in cleaned], [c[2] for c in cleaned])
    if f is None:
        return _svg([f'<text x="{PAD_L}" y="15" font-size="13" font-weight="600">'
                     f'{html.escape(key)}</text><text x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                     'text-anchor="middle" fill="#777">no finite values</text>'], key)
    body = _axes(f, key, x_label)
    if hline is not None and f.y0 <= hline <= f.y1:
        y = float(f.y(np.array([hline]))[0])
        body.append(f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                    'stroke="#e15759" stroke-dasharray="4 3"/>')
    for m in marks:
        if f.x0 <= m <= f.x1:
            x = float(f.x(np.array([float(m)]))[0])
            body.append(f'<path d="M{x:.1f} {HEIGHT - PAD_B} l-4 6 h8 z" fill="#e15759">'
                        f"<title>event at step {m:g}</title></path>")
    for i, (name, x, y) in enumerate(cleaned):
        keep = np.isfinite(y)
        colour = COLOURS[i % len(COLOURS)]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.3" '
                    f'points="{_points(x[keep], y[keep], f)}"><title>{html.escape(name)}'
                    "</title></polyline>")
        if len(cleaned) > 1:
            body.append(f'<text x="{WIDTH - PAD_R - 4}" y="{PAD_T + 12 + 12 * i}" '
                        f'font-size="10" text-anchor="end" fill="{colour}">'
                        f"{html.escape(name)}</text>")
    return _svg(body, key)


def band_chart(key: str, history: Sequence[DistRecord]) -> str:
    """A distribution over steps: p50 line inside p50-p90 and p90-p99 bands."""
    steps = np.array([h.step for h in history], dtype=float)
    q = {k: np.array([getattr(h, k) for h in history], dtype=float)
         for k in ("p50", "p90", "p99")}
    f = _frame([steps] * 3, list(q.values()))
    if f is None:
        return line_chart(key, [])
    body = _axes(f, f"{key} (p50, p90, p99)", "step")
    for lo, hi, alpha in (("p90", "p99", 0.18), ("p50", "p90", 0.35)):
        upper = _points(steps, q[hi], f)
        lower = _points(steps[::-1], q[lo][::-1], f)
        body.append(f'<polygon fill="{COLOURS[0]}" fill-opacity="{alpha}" stroke="none" '
                    f'points="{upper} {lower}"/>')
    body.append(f'<polyline fill="none" stroke="{COLOURS[0]}" stroke-width="1.4" '
                f'points="{_points(steps, q["p50"], f)}"/>')
    return _svg(body, key)


def heatmap(key: str, step: int, matrix: np.ndarray, tau: float | None) -> str:
    """Layer x head cells, darker for larger; cells at or above tau outlined in red."""
    m = np.atleast_2d(np.asarray(matrix, dtype=float))
    rows, cols = m.shape
    cell = max(6, min(28, (WIDTH - 70) // max(cols, 1), 360 // max(rows, 1)))
    w, h = max(380, 60 + cols * cell), 30 + rows * cell + 14
    lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
    body = [f'<text x="4" y="15" font-size="13" font-weight="600">{html.escape(key)} at step '
            f'{step}' + (f" (tau {_fmt(tau)})" if tau is not None else "") + "</text>"]
    for r in range(rows):
        body.append(f'<text x="54" y="{30 + r * cell + cell * 0.7:.1f}" font-size="9" '
                    f'text-anchor="end">layer {r}</text>')
        for c in range(cols):
            v = m[r, c]
            t = 0.0 if hi == lo or not math.isfinite(v) else (v - lo) / (hi - lo)
            shade = int(245 - 200 * t)
            hot = tau is not None and v >= tau
            body.append(f'<rect x="{60 + c * cell}" y="{30 + r * cell}" width="{cell - 1}" '
                        f'height="{cell - 1}" fill="rgb({shade},{shade},255)"'
                        + (' stroke="#e15759" stroke-width="2"' if hot else "")
                        + f"><title>layer {r} head {c}: {_fmt(v)}</title></rect>")
    body.append(f'<text x="60" y="{h - 2}" font-size="9" fill="#777">heads 0..{cols - 1}, '
                f"{_fmt(lo)} (light) to {_fmt(hi)} (dark)</text>")
    return (f'<svg class="chart" data-key="{html.escape(key)}" xmlns="http://www.w3.org/2000/'
            f'svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="system-ui,sans-serif">{"".join(body)}</svg>')


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def load_feed(st: Store, run_id: str) -> RunFeed:
    """A RunFeed read to the end (a poll reads a bounded page of records)."""
    feed = RunFeed(st, run_id)
    for _ in range(10_000):
        if not feed.poll() and feed.polls > 1:
            break
    return feed


def build_report(st: Store, run_ids: list[str], title: str) -> str:
    """The HTML text of the report of `run_ids` (one run, or a group's runs overlaid)."""
    feeds = [load_feed(st, r) for r in run_ids]
    many = len(feeds) > 1
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{len(feeds)} run{"s" * many}: '
             + ", ".join(html.escape(f"{f.row.name} ({f.row.id}, {f.row.kind}, "
                                     f"{f.row.status})") for f in feeds)
             + f" · written {time.strftime('%Y-%m-%d %H:%M')}</p>"]

    keys = ordered(set().union(*(f.keys() for f in feeds)))
    parts.append(f"<h2>Metrics ({len(keys)})</h2><div class='grid'>")
    for key in keys:
        series = [(f.row.name, f.series(key).step, f.series(key).value) for f in feeds
                  if len(f.series(key))]
        tau = feeds[0].tau if key == "attn/max_logit" else None
        marks = [e.step for f in feeds for e in f.events_of(*MARKED)
                 if e.step is not None] if key in LOSS_KEYS else []
        parts.append(line_chart(key, series, hline=tau, marks=marks))
    parts.append("</div>")

    dists = ordered(set().union(*(f.dist_keys() for f in feeds)))
    if dists:
        parts.append(f"<h2>Distributions ({len(dists)})</h2><div class='grid'>")
        for f in feeds:
            for key in dists:
                if history := f.dist_history(key):
                    parts.append(band_chart(f"{key} · {f.row.name}" if many else key,
                                            history))
        parts.append("</div>")

    heat = [(f, f.matrix(HEADS_KEY)) for f in feeds if f.matrix(HEADS_KEY) is not None]
    if heat:
        parts.append("<h2>Max logit per head</h2><div class='grid'>")
        for f, (step, m) in heat:  # type: ignore[misc]
            parts.append(heatmap(f"{HEADS_KEY} · {f.row.name}" if many else HEADS_KEY,
                                 step, m, f.tau))
        parts.append("</div>")

    depth = [k for k in keys if k.startswith("eval/accuracy/r")]
    if depth:
        parts.append("<h2>Depth: accuracy by recurrences</h2>")
        rows = []
        for f in feeds:
            for k in sorted(depth, key=lambda k: int(k.rsplit("r", 1)[-1])
                            if k.rsplit("r", 1)[-1].isdigit() else 0):
                if last := f.series(k).last():
                    rows.append((f.row.name, k.rsplit("/", 1)[-1], _fmt(last[1])))
        parts.append(_table(("run", "recurrences", "accuracy"), rows))

    for f in feeds:
        summary = run_summary(st, f.row.id)
        name = html.escape(f.row.name)
        parts.append(f"<h2>Summary · {name}</h2>")
        parts.append(_table(("key", "last", "step", "min", "max", "points"), [
            (k, _fmt(m["last"]) if m["last"] is not None else "-", m["step"],
             _fmt(m["min"]) if m["min"] is not None else "-",
             _fmt(m["max"]) if m["max"] is not None else "-", m["count"])
            for k, m in summary["metrics"].items()]))
        if ws := summary.get("wandb_summary"):
            parts.append("<p>wandb.summary</p>" + _table(("key", "value"), [
                (k, json.dumps(v)[:80]) for k, v in ws.items()]))
        events = f.events
        parts.append(f"<h2>Events · {name} ({len(events)})</h2>")
        parts.append(_table(("step", "kind", "severity", "details"), [
            (e.step, e.kind, e.severity, json.dumps({"payload": e.payload}, default=str)[:160])
            for e in events[-500:]]))
        config = f.spec_text or json.dumps(dict(f.config), indent=2, sort_keys=True)
        parts.append(f"<h2>Config · {name}</h2><pre>{html.escape(config)}</pre>")

    return ("<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")
