"""Rollouts (async RL): length histogram and tails over steps, truncation, staleness
beside how far the generators' policy is from the trained one (k3 per token: the
train/inference mismatch, `rl/mismatch_kl`, and the drift by staleness,
`rl/drift_kl/s<s>`; recipes/rl/update.py), the policy-version timeline with weight
syncs, and idle fractions per role."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import DataTable

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import Histogram, LineChart

TAILS = ("rollout/len_p50", "rollout/len_p90", "rollout/len_p99", "rollout/len_max")
IDLE = ("perf/trainer_idle_frac", "perf/generator_idle_frac")
MISMATCH = "rl/mismatch_kl"
DRIFT_PREFIX = "rl/drift_kl/"  # one key per staleness: rl/drift_kl/s0, s1, ...
SYNCS_SHOWN = 20


class RolloutsTab(RunTab):
    TITLE = "Rollouts"
    KINDS = ("rl",)
    PREFIXES = ("rollout/", "staleness", "policy/")

    def compose(self) -> ComposeResult:
        # Two columns, row by row: staleness beside the KL it costs, syncs beside versions.
        with Grid(id="rollouts-grid"):
            yield Histogram(id="len-hist")
            yield LineChart(id="len-tails")
            yield LineChart(id="truncated")
            yield LineChart(id="idle")
            yield Histogram(id="stale-hist")
            yield LineChart(id="drift")
            yield LineChart(id="stale-lines")
            yield LineChart(id="mismatch")
            yield LineChart(id="version")
            yield DataTable(id="syncs", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#syncs", DataTable).add_columns("step", "version", "seconds")

    def update_from(self, feed: RunFeed) -> None:
        if (d := feed.dist("rollout/length")) is not None:
            self.query_one("#len-hist", Histogram).set_histogram(
                d["edges"], d["counts"], title=f"rollout length, step {d['step']}",
                quantiles={"p50": d["p50"], "p90": d["p90"], "p99": d["p99"]})
        self._lines("#len-tails", "length tails", TAILS, feed)
        self._lines("#truncated", "truncated fraction", ("rollout/truncated_frac",), feed)
        if (d := feed.dist("staleness")) is not None:
            self.query_one("#stale-hist", Histogram).set_histogram(
                d["edges"], d["counts"], title=f"staleness (versions), step {d['step']}",
                quantiles={"p50": d["p50"], "p90": d["p90"], "p99": d["p99"]})
        self._lines("#stale-lines", "staleness mean / max",
                    ("staleness/mean", "staleness/max"), feed)
        self._lines("#mismatch", "train/inference mismatch (k3)",
                    (MISMATCH,), feed)
        drift = tuple(sorted((k for k in feed.keys() if k.startswith(DRIFT_PREFIX)),
                             key=staleness_of))
        self._lines("#drift", "policy KL by staleness (k3)", drift, feed)
        self._lines("#version", "policy version", ("policy/version",), feed)
        syncs = feed.events_of("weight_sync")
        self.query_one("#version", LineChart).set_markers(
            [e["step"] for e in syncs if e.get("step") is not None], label="sync")
        table = self.query_one("#syncs", DataTable)
        shown = syncs[-SYNCS_SHOWN:]
        if table.row_count != len(shown) or (shown and table.row_count and
                                              str(shown[-1]["id"]) not in table.rows):
            table.clear()
            for e in shown:
                p = e["payload"]
                seconds = p.get("seconds", p.get("duration_s"))
                table.add_row(str(e["step"]), str(p.get("version", "-")),
                              "-" if seconds is None else f"{float(seconds):.2f}",
                              key=str(e["id"]))
            if table.row_count:  # newest last: keep it in view, not the oldest
                table.move_cursor(row=table.row_count - 1)
        self._lines("#idle", "idle fraction per role", IDLE, feed)

    def _lines(self, selector: str, title: str, keys: tuple[str, ...], feed: RunFeed) -> None:
        chart = self.query_one(selector, LineChart)
        chart.set_title(title)
        for key in keys:
            if len(s := feed.series(key)):
                chart.set_series(key.rsplit("/", 1)[-1], s.step, s.value)


def staleness_of(key: str) -> int:
    """The staleness of an `rl/drift_kl/s<s>` key (numeric order: s10 after s9)."""
    tail = key.rsplit("/", 1)[-1].removeprefix("s")
    return int(tail) if tail.isdigit() else -1
