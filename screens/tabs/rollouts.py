"""Rollouts (async RL): length histogram and tails over steps, truncation, staleness
beside how far the generators' policy is from the trained one (k3 per token: the
train/inference mismatch, `rl/mismatch_kl`, and the drift by staleness,
`rl/drift_kl/s<s>`; recipes/rl/update.py), the policy-version timeline with weight
syncs, and idle fractions per role. Above the panels, a line of each generator's
decode rate with its host (`perf/gen_tokens_per_s/g<rank>`, the hosts from the run's
config `generator_hosts`), shown once such figures exist.

Ten panels in two columns. Each keeps at least PANEL_MIN_ROWS rows (four of plot): on a
short terminal (80x24) they come in pages, `[` / `]` (PageUp / PageDown) to turn."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.events import Resize
from textual.reactive import reactive
from textual.widgets import DataTable, Label

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab
from workbench.screens.widgets import Histogram, LineChart

TAILS = ("rollout/len_p50", "rollout/len_p90", "rollout/len_p99", "rollout/len_max")
IDLE = ("perf/trainer_idle_frac", "perf/generator_idle_frac")
MISMATCH = "rl/mismatch_kl"
DRIFT_PREFIX = "rl/drift_kl/"  # one key per staleness: rl/drift_kl/s0, s1, ...
GEN_RATE_PREFIX = "perf/gen_tokens_per_s/g"  # one key per generator rank
SYNCS_SHOWN = 20
PANEL_MIN_ROWS = 6  # border + title + 4 plot rows
COLUMNS, PANEL_ROWS = 2, 5


class RolloutsTab(RunTab):
    TITLE = "Rollouts"
    ALWAYS = False  # rl declares it (kinds.py)
    PREFIXES = ("rollout/", "staleness", "policy/")
    FOCUS = ""  # the tab takes [ and ] (its panels come in pages on a short terminal)
    can_focus = True

    BINDINGS = [
        Binding("right_square_bracket,pagedown", "page(1)", "Next panels"),
        Binding("left_square_bracket,pageup", "page(-1)", "Prev panels", show=False),
    ]

    page: reactive[int] = reactive(0)
    rows: reactive[int] = reactive(PANEL_ROWS)  # panel rows a page holds

    def compose(self) -> ComposeResult:
        yield Label("", id="rollouts-page")
        yield Label("", id="rollouts-generators")
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
        self.query_one("#rollouts-generators", Label).display = False
        self._paginate()

    def on_resize(self, event: Resize) -> None:
        self.rows = max(1, min(PANEL_ROWS, (event.size.height - 1) // PANEL_MIN_ROWS))

    @property
    def pages(self) -> int:
        return -(-PANEL_ROWS // self.rows)

    def watch_rows(self) -> None:
        self.page = min(self.page, self.pages - 1)
        self._paginate()

    def watch_page(self) -> None:
        self._paginate()

    def _paginate(self) -> None:
        if not self.is_mounted:
            return
        grid = self.query_one("#rollouts-grid", Grid)
        grid.styles.grid_size_rows = self.rows
        first = self.page * self.rows * COLUMNS
        panels = list(grid.children)
        for i, panel in enumerate(panels):
            panel.display = first <= i < first + self.rows * COLUMNS
        label = self.query_one("#rollouts-page", Label)
        label.display = self.pages > 1
        last = min(len(panels), first + self.rows * COLUMNS)
        label.update(f" panels {first + 1}-{last} of {len(panels)} · ] next, [ previous")

    def action_page(self, delta: int) -> None:
        self.page = (self.page + delta) % self.pages

    def update_from(self, feed: RunFeed) -> None:
        if (d := feed.dist("rollout/length")) is not None:
            self.query_one("#len-hist", Histogram).set_histogram(
                d.edges, d.counts, title=f"rollout length, step {d.step}",
                quantiles={"p50": d.p50, "p90": d.p90, "p99": d.p99})
        self._lines("#len-tails", "length tails", TAILS, feed)
        self._lines("#truncated", "truncated fraction", ("rollout/truncated_frac",), feed)
        if (d := feed.dist("staleness")) is not None:
            self.query_one("#stale-hist", Histogram).set_histogram(
                d.edges, d.counts, title=f"staleness (versions), step {d.step}",
                quantiles={"p50": d.p50, "p90": d.p90, "p99": d.p99})
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
            [e.step for e in syncs if e.step is not None], label="sync")
        table = self.query_one("#syncs", DataTable)
        shown = syncs[-SYNCS_SHOWN:]
        if table.row_count != len(shown) or (shown and table.row_count and
                                              str(shown[-1].id) not in table.rows):
            table.clear()
            for e in shown:
                p = e.payload
                seconds = p.get("seconds", p.get("duration_s"))
                table.add_row(str(e.step), str(p.get("version", "-")),
                              "-" if seconds is None else f"{float(seconds):.2f}",
                              key=str(e.id))
            if table.row_count:  # newest last: keep it in view, not the oldest
                table.move_cursor(row=table.row_count - 1)
        self._lines("#idle", "idle fraction per role", IDLE, feed)
        self._generators(feed)

    def _generators(self, feed: RunFeed) -> None:
        """Each generator's decode rate at its latest step, with its host."""
        label = self.query_one("#rollouts-generators", Label)
        hosts = feed.config.get("generator_hosts") or {}
        rates = []
        for key in sorted((k for k in feed.keys() if k.startswith(GEN_RATE_PREFIX)),
                          key=lambda k: int(k.removeprefix(GEN_RATE_PREFIX) or 0)):
            last = feed.series(key).last()
            if last is not None:
                rank = key.removeprefix(GEN_RATE_PREFIX)
                rates.append(f"g{rank} {hosts.get(rank, '?')} {last[1]:,.0f}")
        label.display = bool(rates)
        if rates:
            label.update(" generators, tokens/s at the latest step: " + " · ".join(rates))

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
