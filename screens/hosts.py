"""The hosts screen: every configured host and this machine, whether each answers,
its GPUs (utilization and memory, where nvidia-smi exists) and the runs on it.

- Hosts come from `hosts.toml` (`workbench.hosts.load_hosts`), re-read on every
  recheck, so a host added with `wb hosts add` in another terminal appears on `r`.
- A check is `Host.check()`: one ssh round trip that runs the probe on the host and
  can block for up to ~20 s. Each runs in its own Textual thread worker and reports
  back with a `HostsScreen.Checked` message, so the table shows "checking…" and stays
  responsive while a host hangs; the "local" row runs the same probe here without ssh
  (`workbench.hosts.local_check`).
- The runs of a host are rows of the local store: a remote run is mirrored there with
  launcher `ssh` and `host` = the configured name, and `wb hosts check NAME --selftest`
  records the host's answer with launcher `ssh-selftest` and the same `host`; every
  other launcher ran here. An rl run is also listed under each host that runs one of
  its generators (`rollout.hosts`; the run's config `generator_hosts`).
- The last selftest of a host (`wb selftest`, issue 22) is its newest run of kind
  `selftest` among those: the table's "last selftest" column and the card show its
  pass/fail counts and when it ended, read from the answer the run keeps in its config
  (`workbench.selftest.report`), so a host's acceptance is visible at a glance.
- The widgets own their rendering: `HostsTable` (one row per host), `HostCard` (the
  highlighted host's reachability, versions and GPUs, one per line) and a `RunTable`
  (its runs; enter opens one), the runs screen's own widget
  (`screens/widgets/run_table.py`) with fewer columns, so its cells, colours and keys
  are the runs screen's. The screen only moves state into them.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import on
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from workbench.hosts import LOCAL, Host, HostError, load_hosts, local_check
from workbench.run_record import ACTIVE_STATUSES, RunRecord
from workbench.runs_view import RunView
from workbench.screens.widgets.run_table import RunTable
from workbench.selftest import FAIL, PASS, SKIP
from workbench.selftest import KIND as SELFTEST_KIND
from workbench.selftest.report import summary_of_config
from workbench.themes import stylesheet

if TYPE_CHECKING:
    from workbench.screens.services import AppServices

RECHECK_S = 30.0  # background recheck period
POLL_S = 2.0  # how often the runs of the hosts are re-read from the store
CANCEL_POLL_S = 0.1  # how soon a cancelled check lets its worker go
ERROR_CELL_CHARS = 40  # the table shows this much of an error; the card shows all of it

HOST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("host", "host"), ("dest", "destination"), ("reach", "reachable"), ("python", "python"),
    ("workbench", "workbench"), ("gpus", "GPUs"), ("disk", "disk free"),
    ("selftest", "last selftest"), ("runs", "runs active/all"),
)
RUN_COLUMNS: tuple[str, ...] = ("name", "id", "status", "step")  # of the host's runs
EMPTY_HINT = ("No remote hosts configured. Add one with `wb hosts add NAME DEST` (DEST: "
              "user@host or an ~/.ssh/config alias), then press r.")


# -- state and pure rendering (no Textual: unit-testable) -----------------------------------


@dataclass
class HostState:
    """What the screen knows of one host: where it is, and its newest check."""

    name: str
    dest: str
    host: Host | None = None  # None for the local machine
    checking: bool = False
    info: dict[str, Any] | None = None  # the probe's answer (Host.check's dict)
    error: str | None = None  # one line, when the newest check failed
    seconds: float | None = None  # duration of the newest check: the round trip
    checked_at: float | None = None  # wall time of the newest answer
    selftest: SelftestSummary | None = None  # its newest selftest run in the store

    @property
    def local(self) -> bool:
        return self.host is None


def gib(mib: float) -> float:
    return mib / 1024


def short_gpu_name(name: str) -> str:
    """`NVIDIA H100 80GB HBM3` -> `H100 80GB HBM3`: the vendor repeats on every GPU."""
    for prefix in ("NVIDIA ", "Tesla "):
        name = name.removeprefix(prefix)
    return name


def gpu_summary(gpus: list[dict[str, Any]]) -> str:
    """One cell for all of a host's GPUs, per model: `2× H100 43% 12.1/80 GiB` (mean
    utilization, memory used / total summed), so a glance compares hosts."""
    if not gpus:
        return "no GPUs"
    groups: dict[str, list[dict[str, Any]]] = {}
    for gpu in gpus:
        groups.setdefault(short_gpu_name(str(gpu["name"])), []).append(gpu)
    parts = []
    for name, same in groups.items():
        util = sum(g["utilization"] for g in same) / len(same)
        used = gib(sum(g["memory_used_mib"] for g in same))
        total = gib(sum(g["memory_total_mib"] for g in same))
        parts.append(f"{len(same)}× {name} {util:.0f}% {used:.1f}/{total:.0f} GiB")
    return ", ".join(parts)


def util_bar(percent: float, width: int = 10) -> str:
    """A fixed-width bar, so the GPUs' lines line up and compare at a glance."""
    filled = max(0, min(width, round(percent / 100 * width)))
    return "█" * filled + "░" * (width - filled)


def gpu_lines(gpus: list[dict[str, Any]]) -> list[str]:
    """One line per GPU: index, model, utilization (number and bar), memory used/total."""
    if not gpus:
        return ["no GPUs (no nvidia-smi)"]
    width = max(len(short_gpu_name(str(g["name"]))) for g in gpus)
    lines = []
    for i, g in enumerate(gpus):
        used, total = gib(g["memory_used_mib"]), gib(g["memory_total_mib"])
        mem_pct = 100 * used / total if total else 0.0
        lines.append(f"{i}  {short_gpu_name(str(g['name'])):<{width}}  "
                     f"util {g['utilization']:>3}% {util_bar(g['utilization'])}  "
                     f"mem {used:5.1f}/{total:.1f} GiB {util_bar(mem_pct)}")
    return lines


def disk_text(free: int | None) -> str:
    return "" if free is None else f"{free / 2**30:.1f} GiB"


def error_detail(state: HostState) -> str:
    """The error without the `host 'NAME' (DEST)` that the row already shows."""
    error = state.error or ""
    dest = state.host.dest if state.host is not None else state.dest
    return error.removeprefix(f"host {state.name!r} ({dest}) ")


def error_reason(state: HostState) -> str:
    """The gist of the error for a table cell: `Connection refused`, `did not answer
    within 20 s`; no `failed:`, no ssh `connect to host H port P:` (the row says where),
    no `— fix` hint (the card shows the whole message)."""
    reason = error_detail(state).split(" — ", 1)[0].removeprefix("failed: ")
    reason = re.sub(r"^ssh: connect to host \S+ port \d+: ", "", reason)
    if len(reason) > ERROR_CELL_CHARS:
        reason = reason[: ERROR_CELL_CHARS - 1] + "…"
    return reason


def reach_text(state: HostState) -> tuple[str, str]:
    """(cell text, kind) for the reachable column; kind is ok, down or checking.

    While a recheck runs the previous answer stays (marked `…`), so the table does
    not flicker every 30 s; only a host never answered yet reads `checking…`."""
    if state.info is None and state.error is None:
        return ("yes · local" if state.local else "checking…"), (
            "ok" if state.local else "checking")
    busy = " …" if state.checking else ""
    if state.error is not None:
        if state.local:  # this machine is reachable; only its probe failed
            return f"yes · local (probe failed){busy}", "ok"
        return f"no — {error_reason(state)}{busy}", "down"
    if state.local:
        return f"yes · local{busy}", "ok"
    ms = (state.seconds or 0.0) * 1e3
    return f"yes · {ms:.0f} ms{busy}", "ok"


def host_of(row: RunRecord) -> str:
    """The host a run ran on: its configured host for a remote run (a mirror) or an
    `ssh-selftest` run (a host's selftest answer); every other launcher (local, sdk,
    torchrun, selftest) ran here."""
    return (row.host or "?") if row.ran_elsewhere else LOCAL


def generator_hosts(row: RunRecord) -> set[str]:
    """The hosts an rl run's generators ran on (its config's `generator_hosts`)."""
    if row.kind != "rl":
        return set()
    placed = row.config.get("generator_hosts")
    return set(placed.values()) if isinstance(placed, dict) else set()


def runs_of_hosts(rows: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs by host name (`host_of`), and an rl run also under each other host that ran
    one of its generators (`generator_hosts`). Newest first."""
    by_host: dict[str, list[RunRecord]] = {}
    for row in rows:
        home = host_of(row)
        by_host.setdefault(home, []).append(row)
        for host in sorted(generator_hosts(row) - {home, LOCAL}):
            by_host.setdefault(host, []).append(row)
    for runs in by_host.values():
        runs.sort(key=lambda r: -r.num)
    return by_host


@dataclass(frozen=True)
class SelftestSummary:
    """A host's newest selftest run, as the table and the card show it."""

    run_id: str
    name: str
    status: str  # the run's status (running while the checks run)
    when: float  # when it ended; when it started while it runs
    counts: dict[str, int] | None = None  # pass / fail / skip; None: no answer recorded
    failed: tuple[str, ...] = ()  # the checks that failed
    quick: bool = False
    progress: str = ""  # step/total while it runs


def selftest_summary(row: RunRecord) -> SelftestSummary:
    """What a selftest run's record says: the answer in its config (once recorded), else
    only its status."""
    config = dict(row.config)
    data = summary_of_config(config)
    counts = failed = None
    if data is not None:
        counts = {k: int(data["counts"].get(k, 0)) for k in (PASS, FAIL, SKIP)}
        failed = tuple(str(c.get("name")) for c in data.get("checks", [])
                       if c.get("status") == FAIL)
    when = row.ended or row.started or row.created or 0.0
    return SelftestSummary(row.id, row.name, row.status, float(when), counts,
                           failed or (), bool((data or config).get("quick")),
                           f"{row.last_step or 0}/{row.total_steps or '?'}"
                           if row.is_active else "")


def last_selftest(runs: list[RunRecord]) -> SelftestSummary | None:
    """The newest selftest run among a host's runs (newest first), if any."""
    row = next((r for r in runs if r.kind == SELFTEST_KIND), None)
    return selftest_summary(row) if row is not None else None


def stamp(ts: float, now: float | None = None) -> str:
    """`14:03` today, `Dec 02 14:03` before: when a selftest ended, in a cell."""
    now = time.time() if now is None else now
    fmt = "%H:%M" if time.localtime(ts)[:3] == time.localtime(now)[:3] else "%b %d %H:%M"
    return time.strftime(fmt, time.localtime(ts))


def selftest_text(summary: SelftestSummary | None) -> tuple[str, str]:
    """(cell text, kind) for the last selftest column; kind is ok (nothing failed), down
    (a check failed, or the selftest itself did not finish), checking (running) or dim
    (none recorded)."""
    if summary is None:
        return "none", "dim"
    if summary.status in ACTIVE_STATUSES:
        return f"running {summary.progress}", "checking"
    if summary.counts is None:
        return f"{summary.status} · {stamp(summary.when)}", "down"
    n = summary.counts
    kind = "down" if n[FAIL] else "ok"
    return f"{n[PASS]} pass · {n[FAIL]} fail · {stamp(summary.when)}", kind


def runs_cell(runs: list[RunRecord]) -> str:
    """`active/all` runs of a host."""
    active = sum(r.is_active for r in runs)
    return f"{active}/{len(runs)}"


def call_abandonable(fn: Callable[[], dict[str, Any]], cancelled: Callable[[], bool],
                     ) -> tuple[dict[str, Any] | None, str | None]:
    """`(fn(), None)`, or `(None, one-line error)`; `(None, None)` if cancelled first.

    Why a thread inside the worker: Textual's thread workers run on the event loop's
    default executor, which `asyncio.run` joins at exit, so a worker stuck in a 20 s
    ssh would hold up quitting the dashboard. `fn` runs in a daemon thread instead,
    abandoned when the worker is cancelled (its ssh still ends by its own timeout).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["info"] = fn()
        except HostError as exc:
            box["error"] = str(exc)
        except Exception as exc:  # a probe answering garbage must not kill the screen
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name="wb-host-check", daemon=True)
    thread.start()
    while thread.is_alive():
        if cancelled():
            return None, None
        thread.join(CANCEL_POLL_S)
    return box.get("info"), box.get("error")


# -- widgets ----------------------------------------------------------------------------------


class HostsTable(DataTable[Any]):
    """One row per host. Reachability colours are component classes (hosts.tcss), so
    they follow the theme; `show` reconciles rows in place (the cursor stays)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "hosts-table--ok", "hosts-table--down", "hosts-table--checking", "hosts-table--dim",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Runs of host"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._rendered: dict[str, dict[str, Any]] = {}

    def on_mount(self) -> None:
        for key, label in HOST_COLUMNS:
            self.add_column(label, key=key)

    def cells(self, state: HostState, runs: list[RunRecord]) -> dict[str, Any]:
        """The rendered cells of one host (Text where a style applies)."""
        reach, kind = reach_text(state)
        selftest, selftest_kind = selftest_text(state.selftest)
        dim = self.get_component_rich_style("hosts-table--dim", partial=True)
        info = state.info or {}
        if info:
            gpus = gpu_summary(info.get("gpus") or [])
            workbench = info.get("workbench") or "not installed"
        else:
            gpus = workbench = ""
        return {
            "host": state.name,
            "dest": Text(state.dest, style=dim),
            "reach": Text(reach, style=self.get_component_rich_style(
                f"hosts-table--{kind}", partial=True)),
            "python": info.get("python", ""),
            "workbench": workbench,
            "gpus": gpus,
            "disk": Text(disk_text(info.get("disk_free_bytes")), justify="right"),
            "selftest": Text(selftest, style=self.get_component_rich_style(
                f"hosts-table--{selftest_kind}", partial=True)),
            "runs": Text(runs_cell(runs), justify="right"),
        }

    def show(self, states: dict[str, HostState], runs: dict[str, list[RunRecord]],
             restyle: bool = False) -> None:
        """Make the rows match `states` (in their order); only changed cells redraw."""
        for key in list(self.rows):
            if key.value not in states:
                self.remove_row(key)
                self._rendered.pop(str(key.value), None)
        for name, state in states.items():
            cells = self.cells(state, runs.get(name, []))
            old = self._rendered.get(name)
            if name not in self.rows:
                self.add_row(*(cells[k] for k, _ in HOST_COLUMNS), key=name)
            else:
                for key, value in cells.items():
                    if restyle or old is None or old.get(key) != value:
                        self.update_cell(name, key, value, update_width=True)
            self._rendered[name] = cells


class HostCard(Widget):
    """The highlighted host in words: where it is, whether it answered (the whole
    error if not), its versions and free disk, then its GPUs one per line."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "host-card--title", "host-card--ok", "host-card--down", "host-card--muted",
    }
    state: reactive[HostState | None] = reactive(None, always_update=True, layout=True)

    def render(self) -> RenderResult:
        return self.render_state(self.state)

    def _style(self, name: str) -> Style:
        """A component style; plain before the widget is mounted (no styles yet), so
        `render_state` also works on a bare HostCard."""
        try:
            return self.get_component_rich_style(name, partial=True)
        except KeyError:
            return Style.null()

    def render_state(self, state: HostState | None) -> Text:
        """The card's text for `state` (what `render` draws; tests read it too)."""
        style = self._style
        text = Text()
        if state is None:
            text.append("no host selected", style=style("host-card--muted"))
            return text
        text.append(state.name, style=style("host-card--title"))
        text.append(f"  {state.dest}\n", style=style("host-card--muted"))
        reach, kind = reach_text(state)
        if state.error is not None and not state.local:
            text.append("unreachable: ", style=style("host-card--down"))
            text.append(error_detail(state) + "\n")
        elif state.error is not None:
            text.append("probe failed: ", style=style("host-card--down"))
            text.append(state.error + "\n")
        else:
            text.append(reach + "\n", style=style(f"host-card--{kind}")
                        if kind != "checking" else style("host-card--muted"))
        if state.checked_at is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(state.checked_at))
            text.append(f"checked at {stamp}"
                        + (" · rechecking…" if state.checking else "") + "\n",
                        style=style("host-card--muted"))
        self.render_selftest(text, state)
        info = state.info
        if info is None:
            return text
        text.append(f"Python {info.get('python', '?')} · workbench "
                    f"{info.get('workbench') or 'not installed'} · "
                    f"{disk_text(info.get('disk_free_bytes'))} free\n")
        if info.get("executable"):
            text.append(f"{info['executable']}\n", style=style("host-card--muted"))
        text.append("\nGPUs\n", style=style("host-card--title"))
        text.append("\n".join(gpu_lines(info.get("gpus") or [])))
        return text

    def render_selftest(self, text: Text, state: HostState) -> None:
        """The host's last selftest: its run, when, the counts and the failed checks; or
        how to run one."""
        style = self._style
        summary = state.selftest
        if summary is None:
            how = ("wb selftest" if state.local
                   else f"wb hosts check {state.name} --selftest")
            text.append(f"no selftest recorded · {how}\n", style=style("host-card--muted"))
            return
        cell, kind = selftest_text(summary)
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.when))
        text.append("selftest ", style=style("host-card--title"))
        text.append(f"{summary.name} ({summary.run_id})"
                    + (" · quick" if summary.quick else "") + "\n",
                    style=style("host-card--muted"))
        if summary.status in ACTIVE_STATUSES:
            text.append(f"{cell}, started {ended}\n", style=style("host-card--muted"))
            return
        if summary.counts is None:
            text.append(f"{summary.status} at {ended} without an answer\n",
                        style=style("host-card--down"))
            return
        n = summary.counts
        text.append(f"{n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped",
                    style=style(f"host-card--{kind}"))
        text.append(f" · {ended}\n", style=style("host-card--muted"))
        if summary.failed:
            text.append("failed: ", style=style("host-card--down"))
            text.append(", ".join(summary.failed) + "\n")


# -- the screen -------------------------------------------------------------------------------


class HostsScreen(Screen[None]):
    """Every host: reachability, versions, GPUs and runs; checks never block the UI."""

    CSS_PATH: ClassVar[list[str]] = [str(stylesheet("runs")), str(stylesheet("hosts"))]
    AUTO_FOCUS = "#hosts-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "recheck", "Recheck"),
    ]

    selected: reactive[str | None] = reactive(None)

    class Checked(Message):
        """A check finished (posted from its worker thread: post_message is thread-safe)."""

        def __init__(self, name: str, info: dict[str, Any] | None, error: str | None,
                     seconds: float) -> None:
            super().__init__()
            self.name = name
            self.info = info
            self.error = error
            self.seconds = seconds

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, HostState] = {}
        self.runs: dict[str, list[RunRecord]] = {}
        self.config_error: str | None = None
        self.checks_done = 0  # answers received (tests wait on it)

    @property
    def wb(self) -> AppServices:
        return self.app  # type: ignore[return-value]

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="hosts-bar"):
            yield Static("Hosts", id="hosts-title")
            yield Static("", id="hosts-status")
        yield HostsTable(id="hosts-table")
        yield Static(EMPTY_HINT, id="hosts-empty")
        with Horizontal(id="hosts-detail"):
            with VerticalScroll(id="host-card-box"):
                yield HostCard(id="host-card")
            with Vertical(id="host-runs-box"):
                yield Static("runs", id="host-runs-title")
                yield RunTable(RUN_COLUMNS, id="host-runs")
                yield Static("", id="host-runs-empty")
        yield Footer()

    @property
    def table(self) -> HostsTable:
        return self.query_one("#hosts-table", HostsTable)

    @property
    def card(self) -> HostCard:
        return self.query_one("#host-card", HostCard)

    @property
    def runs_table(self) -> RunTable:
        return self.query_one("#host-runs", RunTable)

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self.reload_hosts()
        self.poll_runs()
        self.check()
        self.set_interval(RECHECK_S, self._timed_recheck)
        self.set_interval(POLL_S, self._timed_poll)

    # -- hosts and checks ----------------------------------------------------------------

    def reload_hosts(self) -> None:
        """Re-read hosts.toml: new hosts appear, removed ones go, changed ones are
        checked anew; this machine is always first."""
        try:
            hosts = load_hosts()
            self.config_error = None
        except HostError as exc:
            hosts = {}
            self.config_error = str(exc)
        states = {LOCAL: self.states.get(LOCAL)
                  or HostState(LOCAL, f"this machine ({socket.gethostname()})")}
        for name, host in hosts.items():
            old = self.states.get(name)
            states[name] = old if old is not None and old.host == host else HostState(
                name, host.dest if host.port is None else f"{host.dest}:{host.port}", host)
        self.states = states
        if self.selected not in states:
            self.selected = LOCAL
        self._render_all()

    def check(self, names: Iterable[str] | None = None) -> None:
        """Start a check of each host (all by default) not already being checked."""
        for name in list(names if names is not None else self.states):
            state = self.states.get(name)
            if state is None or state.checking:
                continue
            state.checking = True
            probe = (partial(local_check, self.wb.store_root) if state.host is None
                     else state.host.check)
            self.run_worker(partial(self._check_worker, name, probe), thread=True,
                            group="host-check", name=f"check {name}", exit_on_error=False)
        self._render_all()

    def _check_worker(self, name: str, probe: Callable[[], dict[str, Any]]) -> None:
        """In a worker thread: run the probe, time it, post the answer."""
        worker = get_current_worker()
        started = time.perf_counter()
        info, error = call_abandonable(probe, lambda: worker.is_cancelled)
        if worker.is_cancelled:
            return
        self.post_message(self.Checked(name, info, error, time.perf_counter() - started))

    @on(Checked)
    def _checked(self, message: Checked) -> None:
        self.checks_done += 1
        state = self.states.get(message.name)
        if state is None:  # removed from hosts.toml while it was being checked
            return
        state.checking = False
        state.info, state.error = message.info, message.error
        state.seconds, state.checked_at = message.seconds, time.time()
        self._render_all()

    def _timed_recheck(self) -> None:
        """Every RECHECK_S, while this screen is the one shown."""
        if self.is_current:
            self.action_recheck(quiet=True)

    def action_recheck(self, quiet: bool = False) -> None:
        """r: re-read hosts.toml and check every host again."""
        self.reload_hosts()
        self.check()
        if not quiet:
            self.notify(f"checking {len(self.states)} hosts…", timeout=1.5)

    # -- runs ----------------------------------------------------------------------------

    def _timed_poll(self) -> None:
        """Every POLL_S while shown (on_screen_resume catches up after a run screen)."""
        if self.is_current:
            self.poll_runs()

    def poll_runs(self) -> None:
        """Re-read the store's runs (one query, as the runs screen does) by host."""
        store = self.wb.store_if_exists()
        runs = runs_of_hosts(store.runs()) if store is not None else {}
        if runs != self.runs:
            self.runs = runs
            self._render_all()

    # -- rendering -----------------------------------------------------------------------

    def _render_all(self, restyle: bool = False) -> None:
        """Move the state into the widgets; each draws itself."""
        if not self.is_mounted:
            return
        for name, state in self.states.items():
            state.selftest = last_selftest(self.runs.get(name, []))
        self.table.show(self.states, self.runs, restyle=restyle)
        empty = self.query_one("#hosts-empty", Static)
        remote = len(self.states) - 1
        empty.display = remote == 0 or self.config_error is not None
        empty.update(self.config_error or EMPTY_HINT)
        checking = sum(s.checking for s in self.states.values())
        down = sum(s.error is not None and not s.local for s in self.states.values())
        parts = [f"{remote} remote host{'s' if remote != 1 else ''}"]
        if down:
            parts.append(f"{down} unreachable")
        if checking:
            parts.append(f"{checking} checking…")
        parts.append(f"rechecked every {RECHECK_S:.0f} s · r now")
        self.query_one("#hosts-status", Static).update(" · ".join(parts))
        self._show_detail(restyle)

    def _show_detail(self, restyle: bool = False) -> None:
        state = self.states.get(self.selected or "")
        self.card.state = state
        runs = self.runs.get(self.selected or "", [])
        self.runs_table.show([RunView(r) for r in runs], restyle=restyle)
        title = f"runs on {state.name}" if state is not None else "runs"
        self.query_one("#host-runs-title", Static).update(
            f"{title} ({runs_cell(runs)} active)" if runs else title)
        hint = self.query_one("#host-runs-empty", Static)
        hint.display = not runs
        hint.update("no runs on this host in this store")

    def watch_selected(self, _name: str | None) -> None:
        """Another host: its runs, from the top."""
        self._show_detail()
        if self.is_mounted and self.runs_table.row_count:
            self.runs_table.move_cursor(row=0, column=0)

    @on(DataTable.RowHighlighted, "#hosts-table")
    def _host_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selected = event.row_key.value

    def _on_theme_changed(self, _theme: object) -> None:
        """Colours are baked into cells as Rich styles: re-render them."""
        self._render_all(restyle=True)

    def on_screen_resume(self) -> None:
        """Back from a run: re-read the runs; recheck if the answers are old."""
        self.poll_runs()
        stale = [n for n, s in self.states.items()
                 if s.checked_at is None or time.time() - s.checked_at > RECHECK_S]
        if stale:
            self.check(stale)

    # -- actions -------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#hosts-table")
    def _host_selected(self, event: DataTable.RowSelected) -> None:
        """enter on a host: to its runs (enter again opens one)."""
        event.stop()
        self.selected = event.row_key.value
        if self.runs_table.row_count:
            self.runs_table.focus()
        else:
            self.notify(f"no runs on {self.selected} in this store", timeout=2)

    @on(DataTable.RowSelected, "#host-runs")
    def _run_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.open_run(event.row_key.value)

    def open_run(self, run_id: str | None) -> None:
        """Push the run screen, as the runs screen does."""
        if run_id is None:
            return
        from workbench.screens.run import RunScreen

        self.app.push_screen(RunScreen(run_id))

    def action_back(self) -> None:
        """escape / q: back to where the screen was opened from."""
        self.dismiss(None)

    def palette_commands(self) -> Iterable[tuple[str, str, Callable[[], Any]]]:
        """Jump to a host by name (the app's palette provider collects these)."""
        for name, state in self.states.items():
            yield (f"Show host {name}", state.dest,
                   lambda n=name: self._select_host(n))

    def _select_host(self, name: str) -> None:
        if name in self.table.rows:
            self.table.move_cursor(row=self.table.get_row_index(name))
            self.table.focus()
