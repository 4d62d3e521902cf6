"""The run screen: one run, live, in tabs (Overview, Attention, Rollouts, Depth,
Metrics, Events, Logs, Config, System). Tabs that don't fit the run's kind (its
declaration in `workbench.kinds`) stay hidden until the run logs metrics they show;
the number keys follow the tabs shown (on an rl run, 2 is Rollouts), and there is one
per entry of `TABS` (`tab_bindings`).

Only the Overview's content is composed with the screen. A tab's content is mounted
when the tab is first shown, wrapped in Textual's `Lazy`, so it is composed after the
next paint: the first paint stays the Overview's alone, and a tab a run never shows
(Rollouts of a pretrain run) is never composed.

The screen owns one `RunFeed` and polls it twice a second; only the visible tab
is refreshed (a hidden one catches up when it is shown), which keeps a refresh of
a million-point run to a few milliseconds of reading plus one chart redraw.
"""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from workbench.feed import RunFeed
from workbench.screens.tabs import (
    AttentionTab,
    ConfigTab,
    DepthTab,
    EventsTab,
    LogsTab,
    MetricsTab,
    OverviewTab,
    RolloutsTab,
    SystemTab,
)
from workbench.screens.tabs.base import RunTab
from workbench.screens.tabs.overview import toggle_pin
from workbench.store import SCALAR_CACHE, Store, build_scalar_cache
from workbench.themes import stylesheet

# The number keys follow this order over the tabs a run shows.
TABS: tuple[type[RunTab], ...] = (OverviewTab, AttentionTab, RolloutsTab, DepthTab,
                                  MetricsTab, EventsTab, LogsTab, ConfigTab, SystemTab)
NUMBER_KEYS = "1234567890"  # the n-th shown tab's key; a tab past the tenth has none
POLL_S = 0.5
PROGRESSIVE_ROWS = 100_000  # a run this big paints its newest points, then loads the rest
CACHE_WRITE_DELAY_S = 1.0  # after a big run's history is shown, its scalar cache is written


def tab_id(tab: type[RunTab]) -> str:
    """The tab's pane id; its content is `{tab_id}-body`."""
    return f"tab-{tab.tab_name()}"


def tab_bindings(tabs: tuple[type[RunTab], ...]) -> list[Binding]:
    """A number key per tab position (1 = the first tab shown): made from the tab list,
    so adding a tab adds its key. The keys count shown tabs, not entries of `tabs`."""
    return [Binding(key, f"show_tab({i})", f"tab {i + 1}", show=False)
            for i, key in enumerate(NUMBER_KEYS[:len(tabs)])]


class RunScreen(Screen[None]):
    """One run, live."""

    CSS_PATH = str(stylesheet("run"))
    POLL_S = POLL_S  # how often it re-reads the store (the TUI bench paces by it)

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        *tab_bindings(TABS),
        Binding("right,l", "next_tab(1)", "Next tab"),
        Binding("left,h", "next_tab(-1)", "Prev tab", show=False),
        Binding("r", "refresh_now", "Refresh", show=False),
    ]

    def __init__(self, run_id: str, store: Store | None = None) -> None:
        """`store`: defaults to the app's (`WorkbenchApp.store`)."""
        super().__init__()
        self.run_id = run_id
        self._store = store
        self.last_refresh_ms = 0.0
        self._placed: set[type[RunTab]] = {TABS[0]}  # tabs whose content is (being) mounted
        self._body_of: dict[str, RunTab] = {}  # pane id -> its mounted content

    @property
    def store(self) -> Store:
        return self._store if self._store is not None else self.app.store  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="run-tabs"):
            for tab in TABS:
                with TabPane(tab.TITLE, id=tab_id(tab)):
                    if tab is TABS[0]:  # the others': when first shown (_place)
                        yield tab(id=f"{tab_id(tab)}-body")
        yield Footer()

    def _place(self, tab: type[RunTab]) -> None:
        """Mount a tab's content the first time the tab is shown, in a `Lazy`: composing
        all nine before the first paint was most of the time to open a run, so each is
        composed after the paint that follows (a tab chosen before then is brought up
        to date by `on_run_tab_ready`)."""
        if tab in self._placed:
            return
        self._placed.add(tab)
        self.query_one(f"#{tab_id(tab)}", TabPane).mount(Lazy(tab(id=f"{tab_id(tab)}-body")))

    def _visible_body(self) -> RunTab | None:
        """The shown tab's content; None while it is being mounted."""
        active = self.query_one(TabbedContent).active or tab_id(OverviewTab)
        body = self._body_of.get(active)
        if body is None:  # one lookup a tab (a query walks the whole screen)
            try:
                body = self.query_one(f"#{active}-body", RunTab)
            except NoMatches:
                return None
            if not body.is_mounted:
                return None
            self._body_of[active] = body
        return body

    def on_mount(self) -> None:
        self.feed = RunFeed(self.store, self.run_id)
        self.loading = False
        if self.store.scalar_span(self.run_id) > PROGRESSIVE_ROWS and self.feed.preview():
            # A big run: paint its newest points now, read the whole history in a
            # thread (on its own connection), then repaint with it.
            self._show(changed=True)
            self.loading = True
            # After the preview's paint: the loader holds the GIL for most of its read.
            self.call_after_refresh(lambda: self.run_worker(
                self._load_history, thread=True, exclusive=True, group="load"))
        else:
            self.refresh_data()
        self.set_interval(self.POLL_S, self.refresh_data)

    def on_screen_resume(self) -> None:
        """Back on top (a compare view or dialog closed): catch up at once."""
        if hasattr(self, "feed"):
            self.refresh_data()

    def _load_history(self) -> None:
        if not (self.store.run_dir(self.run_id) / SCALAR_CACHE).exists():
            # No cache yet: a helper process reads the store and writes it. In this
            # thread the read shares the GIL with the UI, which releases and takes it
            # back for every row: several times slower than on a core of its own.
            # Whatever it leaves, the read below checks against the store.
            build_scalar_cache(self.store.root, self.run_id)
        reader = Store(self.store.root, create=False)
        try:
            self.feed.poll(store=reader, write_cache=False)
            self.app.call_from_thread(self._history_loaded)
            # The next open reads it; written once this one's charts are drawn, so as
            # not to compete with them.
            time.sleep(CACHE_WRITE_DELAY_S)
            reader.write_scalar_cache()
        finally:
            reader.close()

    def _history_loaded(self) -> None:
        self.loading = False
        self._show(changed=True)

    # -- data -------------------------------------------------------------------------

    def refresh_data(self) -> bool:
        """Poll the feed; on news, update the visible tab and the tab set. Returns
        whether anything changed (the TUI bench times this call)."""
        if self.loading or not self.is_current:  # the loader has the feed, or hidden
            return False
        t0 = time.perf_counter()
        changed = self.feed.poll()
        self._show(changed)
        self.last_refresh_ms = (time.perf_counter() - t0) * 1000
        return changed

    def _show(self, changed: bool) -> None:
        if changed:
            row = self.feed.row
            self.title = f"{row.name} ({row.id})"
            self.sub_title = f"{row.kind} · {row.status}" + (
                " · loading history" if self.feed.partial else "")
            self._show_fitting_tabs()
        tab = self._visible_body()  # None: being mounted, then brought up to date
        if tab is not None and (changed or tab.FOLLOWS_FILES):
            tab.update_from(self.feed)

    def _show_fitting_tabs(self) -> None:
        tabs = self.query_one(TabbedContent)
        for tab in TABS:
            pane = tab_id(tab)
            if tab.wants(self.feed):
                tabs.show_tab(pane)
                self._place(tab)
            else:
                tabs.hide_tab(pane)

    def visible_tab(self) -> RunTab:
        active = self.query_one(TabbedContent).active or tab_id(OverviewTab)
        return self.query_one(f"#{active}-body", RunTab)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = self._visible_body()
        if tab is not None and hasattr(self, "feed"):  # else on_run_tab_ready brings it up
            self._bring_up(tab)

    def on_run_tab_ready(self, message: RunTab.Ready) -> None:
        """A tab's content finished mounting: if it is the tab shown (chosen before its
        content was there), bring it up to date now."""
        if hasattr(self, "feed") and message.tab is self._visible_body():
            self._bring_up(message.tab)

    def _bring_up(self, tab: RunTab) -> None:
        """The tab just shown: refresh it and give it the keys."""
        if not self.loading:  # else the loader's repaint brings it up to date
            tab.update_from(self.feed)  # a hidden tab catches up when shown
        # The heatmap's arrows read a cell, the metrics grid's pick a chart, the events,
        # log and config scroll: they take the focus, or the keys would go to the tab
        # bar (h / l and 1-9 still switch tabs).
        if tab.FOCUS == "":
            tab.focus()
        elif tab.FOCUS:
            for widget in tab.query(tab.FOCUS):
                widget.focus()
                break

    # -- actions ----------------------------------------------------------------------

    def fitting(self) -> list[type[RunTab]]:
        return [t for t in TABS if t.wants(self.feed)]

    def action_show_tab(self, index: int) -> None:
        """The index-th of the tabs this run shows (the number keys)."""
        fitting = self.fitting()
        if 0 <= index < len(fitting):
            self.query_one(TabbedContent).active = tab_id(fitting[index])
        else:
            shown = ", ".join(t.TITLE for t in fitting)
            self.notify(f"no tab {index + 1}: this {self.feed.row.kind} run shows {shown}",
                        severity="warning")

    def on_metrics_tab_open(self, message: MetricsTab.Open) -> None:
        """A chart of the Metrics grid, full size: the compare view of this run, which
        has the x axis choices and smoothing (and can overlay other runs)."""
        from workbench.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen([self.run_id], self.store, metric=message.key))

    def on_metrics_tab_pin(self, message: MetricsTab.Pin) -> None:
        pinned = toggle_pin(self.run_id, message.key)
        self.notify(f"{message.key} {'pinned to' if message.key in pinned else 'unpinned from'}"
                    " the Overview", timeout=2)

    def action_next_tab(self, delta: int) -> None:
        fitting = [tab_id(t) for t in self.fitting()]
        tabs = self.query_one(TabbedContent)
        i = fitting.index(tabs.active) if tabs.active in fitting else 0
        tabs.active = fitting[(i + delta) % len(fitting)]

    def action_refresh_now(self) -> None:
        tab = self._visible_body()
        if tab is not None:
            tab.update_from(self.feed)
