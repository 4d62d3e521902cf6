"""`wb`: the headless command line (Typer).

Exit codes: 0 ok, 1 the run or command failed, 2 bad input (unknown run,
invalid spec, wrong option). A bad-input error is one line on stderr naming
the problem and the fix, and nothing is created.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from workbench import __version__
from workbench.store import Store, StoreError

if TYPE_CHECKING:
    from workbench.launch.local import Launched

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="wb",
    help="The workbench: launch, record and watch LLM training-dynamics experiments.\n\n"
    "Examples:\n\n"
    "  wb recipes\n\n"
    "  wb launch charlm --set config.steps=500 --detach\n\n"
    "  wb ls --status running\n\n"
    "  wb launch optimizers-tiny; wb compare optimizers-tiny-1\n\n"
    "  wb tui  (the dashboard; `wb` alone on a terminal)\n\n"
    "Exit codes: 0 ok, 1 failure, 2 bad input.",
    invoke_without_command=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _consoles() -> tuple[Console, Console]:
    """The stdout and stderr consoles, sized for the current sys.stdout and environment.
    Built once below; tests/helpers.py `wb_inproc` builds fresh ones for its captured
    streams, so a test sees what a piped `wb` prints."""
    # Piped output is not wrapped at 80 columns: one table row stays one line (grep, awk).
    return (Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200),
            Console(stderr=True))


console, err_console = _consoles()

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Run store folder (default: $WB_STORE, then ./runs).",
                 show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RunArg = Annotated[str, typer.Argument(help="Run id, unique id prefix, or name.",
                                       show_default=False)]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ONE line on stderr (the message, never read as markup) and return the exit."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def open_store(store: Path | None, *, create: bool = False) -> Store:
    try:
        return Store(store, create=create)
    except StoreError as exc:
        raise fail(str(exc)) from None


def find_run(st: Store, ref: str) -> dict[str, Any]:
    try:
        return st.resolve(ref)
    except StoreError as exc:
        raise fail(str(exc)) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, allow_nan=False) + "\n")


def _version(value: bool) -> None:
    if value:
        console.print(f"workbench-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    if ctx.invoked_subcommand is None:
        # On a terminal, bare `wb` is the dashboard; piped or scripted it stays the
        # overview (exit 0), so scripts and tests never start a full-screen app.
        if sys.stdin.isatty() and sys.stdout.isatty():
            _run_tui(None)
            raise typer.Exit(EXIT_OK)
        console.print(ctx.get_help())
        raise typer.Exit(EXIT_OK)


def _run_tui(store: Path | None) -> None:
    """Open the dashboard. Textual is imported here, not at the top: `wb ls` and the
    other headless commands must stay light (tests/test_layout.py)."""
    from workbench.app import run_app

    run_app(store)


@app.command()
def tui(store: StoreOpt = None) -> None:
    """Open the dashboard: live runs, run details, compare, launch (`wb` alone on a
    terminal does the same). Keys: ? lists them, ctrl+p finds any action, q quits.

    Example: wb tui --store runs
    """
    # TEXTUAL_DRIVER names a driver that is not the terminal: textual-serve (`wb serve`)
    # sets it and talks to the app over pipes.
    if not (sys.stdin.isatty() and sys.stdout.isatty()) and not os.environ.get("TEXTUAL_DRIVER"):
        raise fail("wb tui needs a terminal (stdin and stdout); for a text view use "
                   "`wb watch RUN` or `wb ls`, for a browser `wb serve`")
    _run_tui(store)


@app.command()
def serve(
    host: Annotated[str, typer.Option(
        help="Address to listen on. The dashboard has no authentication: keep "
        "127.0.0.1 and forward the port over SSH.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    store: StoreOpt = None,
) -> None:
    """Serve the dashboard to a browser (one dashboard per browser tab) until ctrl+c.

    From your laptop: ssh -L 8000:127.0.0.1:8000 HOST, then open http://127.0.0.1:8000

    Example: wb serve --port 8000 --store runs
    """
    from workbench.serve import ServeError, forward_hint, is_loopback
    from workbench.serve import serve as serve_dashboard
    from workbench.store import resolve_root

    # Like `wb tui`: a store that does not exist yet is waited for, not an error.
    root = resolve_root(store).resolve()
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def announce() -> None:
        console.print(f"Serving the dashboard of {root} on {url} (ctrl+c stops); "
                      f"{forward_hint(host, port)}", highlight=False, soft_wrap=True)
        if not is_loopback(host):
            err_console.print(f"[bold yellow]warning:[/] the dashboard has no authentication: "
                              f"anyone who can reach {escape(url)} can stop and launch runs",
                              highlight=False, soft_wrap=True)

    try:
        serve_dashboard(root, host=host, port=port, announce=announce)
    except ServeError as exc:
        raise fail(str(exc)) from None


# -- launch / stop / resume ---------------------------------------------------------------


def _started(st: Store, launched: Launched, detach: bool) -> None:
    """Print the id (--detach) or follow the run; a run that failed or was lost exits 1."""
    if detach:
        print(launched.record.id)
        return
    from workbench.follow import follow_run
    from workbench.launch.backends import backend_for

    # Ctrl-C: a remote run is stopped through its host; a local one gets SIGTERM.
    record = launched.record
    stop = (lambda current: backend_for(current).stop(st, current)) if record.is_remote else None
    status = follow_run(st, launched, console, stop=stop)
    raise typer.Exit(EXIT_OK if status in ("finished", "stopped", "detached") else EXIT_FAILED)


def _started_group(st: Store, runs: list[Launched], group: str, detach: bool) -> None:
    """Print the ids, one a line (--detach), or follow the group; any run that failed or
    was lost exits 1."""
    if detach:
        for launched in runs:
            print(launched.record.id)
        return
    from workbench.follow import follow_group

    statuses = follow_group(st, runs, console, group)
    ok = all(s in ("finished", "stopped", "detached") for s in statuses.values())
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@app.command()
def launch(
    specs: Annotated[list[str], typer.Argument(
        help="Built-in recipe or group names (see `wb recipes`) or spec files; several "
        "specs launch as a group.", show_default=False)],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a spec key: --set section.key=value (repeatable). In "
        "a group it applies to every spec that has the key.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Run name (default: SPEC-N). With several specs, a prefix: runs are named "
        "NAME-SPEC.")] = None,
    group: Annotated[str | None, typer.Option(
        "--group", "-g", help="Group name, new in the store (default: the built-in group's "
        "name or `group`, plus -N).")] = None,
    parallel: Annotated[int | None, typer.Option(
        min=1, help="Runs of the group that train at once; the others wait queued "
        "(default: 1, one after another; a CPU has few cores).")] = None,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Print the run ids, one a line, and return at once.")] = False,
    host: Annotated[str | None, typer.Option(
        "--host", help="Run on this configured host (see `wb hosts ls`), mirrored here; "
        "the same as --set resources.host=HOST.")] = None,
    node_rank: Annotated[int, typer.Option(
        "--node-rank", min=0, hidden=True, help="This node's rank in a multi-node run "
        "(set by node 0's launcher).")] = 0,
    master: Annotated[str | None, typer.Option(
        "--master", hidden=True, help="HOST:PORT of node 0's rendezvous (set by node 0's "
        "launcher).")] = None,
    store: StoreOpt = None,
) -> None:
    """Validate one or more specs and launch them: one run, or a group for comparison.

    Every spec is validated before anything starts. In the foreground it shows live
    progress (one run: its output too; a group: a bar per run, then the `wb compare`
    table). Ctrl-C stops the run or the whole group (runs checkpoint), a second
    Ctrl-C detaches.

    Examples:

      wb launch charlm

      wb launch charlm --set config.steps=500 --name longer --detach

      wb launch my_spec.toml --set resources.procs=2

      wb launch muon-tiny muonclip-tiny adamw-tiny --set train.steps=100

      wb launch optimizers-tiny --group opt-sweep --parallel 2 --detach

      wb launch muon-tiny --host gpu1   (runs on gpu1, shown here live)

      wb launch - --detach < spec.toml   (the spec on stdin)
    """
    from workbench.hosts import LOCAL, HostError
    from workbench.launch import backends, local
    from workbench.spec import SpecError, expand_sources, load_specs
    from workbench.store import validate_name

    overrides = [*(set_ or []), *([f"resources.host={host}"] if host is not None else [])]
    try:
        sources, builtin = expand_sources(specs)
        loaded = load_specs(sources, overrides)
        names: list[str | None] = [name] * len(loaded)
        if name:
            validate_name(name)
            if len(loaded) > 1:
                names = [validate_name(f"{name}-{spec.default_name}") for spec in loaded]
        if group is not None:
            validate_name(group, "group name")
    except (SpecError, StoreError) as exc:
        raise fail(str(exc)) from None
    if group is None and builtin is None and len(loaded) == 1:  # one plain run
        st = open_store(store, create=True)
        try:
            launched = backends.start(st, loaded[0], name=name, node_rank=node_rank,
                                      master=master)
        except StoreError as exc:  # a bad --master
            raise fail(str(exc)) from None
        except HostError as exc:  # the host is down or refused: nothing was recorded
            raise fail(str(exc), code=EXIT_FAILED) from None
        _started(st, launched, detach)
        return
    remote = sorted({backends.host_of(spec) for spec in loaded} - {LOCAL})
    if remote:
        raise fail(f"a group cannot run on a remote host yet (host {remote[0]}) — launch its "
                   "specs one at a time with --host")
    if any(spec.spec.resources.nodes > 1 for spec in loaded):
        raise fail("a group cannot hold multi-node runs yet (resources.nodes > 1) — launch "
                   "those specs one at a time")
    st = open_store(store, create=True)
    if group is not None and st.has_group(group):
        raise fail(f"group {group!r} already exists in {st.root}; pick another --group NAME "
                   "or leave it out for a new one")
    group = group or st.new_group_name(builtin.name if builtin else "group")
    default_parallel = builtin.parallel if builtin else 1
    runs = local.start_group(st, loaded, group=group, parallel=parallel or default_parallel,
                             names=names)
    _started_group(st, runs, group, detach)


@app.command()
def stop(
    run: Annotated[str, typer.Argument(
        help="Run id, unique id prefix, or name; or a group (every active run of it).",
        show_default=False)],
    grace: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.",
                                         min=0)] = 10.0,
    store: StoreOpt = None,
) -> None:
    """Stop a run: SIGTERM (the recipe checkpoints and exits), then SIGKILL after --grace.

    A group name stops the group's queued runs (they never start), then its running
    ones. A name is read as a group first, then as a run.

    Examples: wb stop charlm-3 ; wb stop optimizers-tiny-1
    """
    from workbench.hosts import HostError
    from workbench.launch.backends import backend_for
    from workbench.store import ACTIVE_STATUSES

    st = open_store(store)
    try:
        if not st.has_group(run):
            record = find_run(st, run)
            console.print(backend_for(record).stop(st, record, grace=grace))
            return
        live = [r for r in st.runs(group=run) if st.stored_status(r.id) in ACTIVE_STATUSES]
        # Queued first: one whose predecessor stopped first could otherwise start.
        for row in sorted(live, key=lambda r: r.status != "queued"):
            console.print(backend_for(row).stop(st, row, grace=grace))
    except HostError as exc:
        raise fail(str(exc), code=EXIT_FAILED) from None
    if not live:
        console.print(f"group {run} has no queued or running run")


@app.command()
def resume(
    run: RunArg,
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="Print the new run id and return.")] = False,
    store: StoreOpt = None,
) -> None:
    """Continue a stopped, failed or lost run from its last checkpoint, as a new linked run.

    Example: wb resume charlm-3 --detach
    """
    from workbench.hosts import HostError
    from workbench.launch.backends import backend_for
    from workbench.spec import SpecError

    st = open_store(store)
    try:
        record = find_run(st, run)
        launched = backend_for(record).resume(st, record)
    except (SpecError, StoreError) as exc:
        raise fail(str(exc)) from None
    except HostError as exc:
        raise fail(str(exc), code=EXIT_FAILED) from None
    _started(st, launched, detach)


@app.command()
def mirror(
    run: RunArg,
    store: StoreOpt = None,
) -> None:
    """Start the mirror of a remote run again (after a reboot, or once it gave up on
    an unreachable host); it catches up from where it stopped, then follows the run.

    Example: wb mirror muon-tiny-4
    """
    from workbench.launch import mirror as mirrors

    st = open_store(store)
    row = find_run(st, run)
    if not row.is_remote:
        raise fail(f"run {row.id} ran on this machine; only runs launched with --host have "
                   "a mirror")
    proc = mirrors.ensure(st, row.id)
    console.print(f"mirror of {row.id} " + (f"started (pid {proc.pid}); log in "
                  f"{st.run_dir(row.id) / 'mirror.log'}" if proc else "is already running"))


@app.command()
def rm(
    runs: Annotated[list[str], typer.Argument(help="Runs to delete.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    store: StoreOpt = None,
) -> None:
    """Delete runs: their rows and their folders (checkpoints included).

    Example: wb rm charlm-1 charlm-2 --yes
    """
    st = open_store(store)
    rows = [find_run(st, r) for r in runs]
    for row in rows:
        if row.is_active:
            raise fail(f"run {row.id} ({row.name}) is {row.status}; "
                       f"stop it first: wb stop {row.id}")
    names = ", ".join(f"{r.name} ({r.id})" for r in rows)
    if not yes:
        if not sys.stdin.isatty():
            raise fail("wb rm needs --yes when not run from a terminal")
        if not typer.confirm(f"Delete {names}?"):
            raise typer.Exit(EXIT_FAILED)
    for row in rows:
        st.delete_run(row.id)
    console.print(f"deleted {names}")


# -- reading -----------------------------------------------------------------------------


@app.command("ls")
def ls_(
    status: Annotated[str | None, typer.Option(
        help="Only runs with this status (queued, running, finished, failed, stopped, lost)."
    )] = None,
    group: Annotated[str | None, typer.Option(
        "--group", "-g", help="Only the runs of this group (see `wb launch A B C`).")] = None,
    kind: Annotated[str | None, typer.Option(
        "--kind", "-k", help="Only runs of this kind (pretrain, rl, depth, script, selftest, "
        "...).")] = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """List runs, oldest first.

    Examples: wb ls ; wb ls --status running --json ; wb ls --group optimizers-tiny-1 ;
    wb ls --kind selftest
    """
    from workbench.render import runs_table, summarize_run
    from workbench.store import DB_NAME, RUN_STATUSES, resolve_root

    if status is not None and status not in RUN_STATUSES:
        raise fail(f"unknown status {status!r} — use one of {', '.join(RUN_STATUSES)}")
    if not (resolve_root(store) / DB_NAME).exists():  # nothing launched here yet
        if as_json:
            print_json([])
        else:
            console.print(f"no runs in {resolve_root(store)} (launch one: wb launch charlm)")
        return
    st = open_store(store)
    if group is not None and not st.has_group(group):
        raise fail(_no_group(st, group))
    rows = st.runs(status=status, group=group, kind=kind)
    if as_json:
        print_json([summarize_run(st, r) for r in rows])
    elif not rows:
        console.print(f"no runs in {st.root}" + (f" in group {group}" if group else "")
                      + (f" of kind {kind}" if kind else "")
                      + (f" with status {status}" if status else ""))
    else:
        from rich.cells import cell_len

        table = runs_table(st, rows)
        # Lines that fit print the same without the word-wrapping pass (soft_wrap),
        # which took a fifth of `wb ls` on 1,000 runs.
        fits = max(map(cell_len, table.plain.split("\n"))) <= console.width
        console.print(table, soft_wrap=fits)


def _no_group(st: Store, group: str) -> str:
    known = st.groups()
    return (f"no group {group!r} in {st.root}"
            + (f" — groups: {', '.join(known[-5:])}" if known else " — it has no groups")
            + " (see `wb ls`)")


@app.command()
def compare(
    refs: Annotated[list[str], typer.Argument(
        help="Groups, or runs (id, unique id prefix, or name); several are joined.",
        show_default=False)],
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Runs side by side: optimizer, status, step, and the latest train/loss, val/loss,
    max attention logit and tokens/s (the lowest losses in bold).

    A name is read as a group first, then as a run.

    Examples:

      wb compare optimizers-tiny-1

      wb compare muon-tiny-3 adamw-tiny-2 --json
    """
    from workbench.render import compare_rows, compare_table

    st = open_store(store)
    rows: dict[str, dict[str, Any]] = {}
    for ref in refs:
        if st.has_group(ref):
            found = st.runs(group=ref)
        else:
            try:
                found = [st.resolve(ref)]
            except StoreError as exc:
                message = str(exc)
                if message.startswith("no run "):
                    message = f"no group or run {ref!r} in {st.root} (see `wb ls`)"
                raise fail(message) from None
        rows.update((r.id, r) for r in found)
    summaries = compare_rows(st, list(rows.values()))
    if as_json:
        print_json(summaries)
    else:
        console.print(compare_table(summaries))


@app.command()
def show(run: RunArg, as_json: JsonOpt = False, store: StoreOpt = None,
         summary: Annotated[bool, typer.Option(
             "--summary", help="Last, min and max of every scalar, and the W&B summary.")]
         = False) -> None:
    """Status, step, latest value of every metric, and event counts of one run.

    Examples: wb show charlm-3 ; wb show charlm-3 --summary --json
    """
    from workbench.render import run_detail, summarize_run, summary_table

    st = open_store(store)
    row = find_run(st, run)
    if summary:
        from workbench.metric_keys import run_summary

        data = run_summary(st, row.id)
        if as_json:
            from workbench.store import strict_json

            print_json(strict_json(data))
        else:
            console.print(summary_table(row, data))
        return
    if as_json:
        print_json(summarize_run(st, row, full=True))
    else:
        console.print(run_detail(st, row))


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id, prefix or name, or a group name.",
                                       show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="The HTML file to write (default: report-NAME.html).")] = None,
    store: StoreOpt = None,
) -> None:
    """One self-contained HTML file of a run (or a group, overlaid): every metric as a
    chart, distributions as quantile bands, the max-logit heatmap, the depth table,
    summary, events and config. It requests nothing when opened.

    Examples: wb report muon-tiny-3 -o muon.html ; wb report optimizers-tiny-1
    """
    import tempfile

    from workbench.report import build_report

    st = open_store(store)
    if st.has_group(run):
        ids, title = [r.id for r in st.runs(group=run)], f"group {run}"
    else:
        row = find_run(st, run)
        ids, title = [row.id], f"{row.name} ({row.id})"
    out = output or Path(f"report-{run}.html")
    if not out.parent.resolve().is_dir():
        raise fail(f"no folder {str(out.parent)!r} for the report — create it or pick "
                   "another --output")
    t0 = time.perf_counter()
    text = build_report(st, ids, title)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    console.print(f"wrote {out} ({len(text.encode()) / 1e3:,.0f} KB, {len(ids)} run"
                  f"{'s' * (len(ids) > 1)}, {time.perf_counter() - t0:.2f} s)",
                  highlight=False, soft_wrap=True)


@app.command()
def events(
    run: RunArg,
    kind: Annotated[str | None, typer.Option(help="Only events of this kind, e.g. loss_spike.")]
    = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """The events of a run: loss spikes, NaNs, checkpoints, stages, ...

    Example: wb events charlm-3 --kind loss_spike
    """
    from workbench.render import events_table
    from workbench.store import strict_json

    st = open_store(store)
    rows = st.events(find_run(st, run)["id"], kind=kind)
    if as_json:
        print_json(strict_json(rows))
    else:
        console.print(events_table(rows))


@app.command()
def watch(
    run: RunArg,
    key: Annotated[str | None, typer.Option(
        help="Metric to chart (default: the kind's key metric, e.g. train/loss).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1)]
    = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print the view once and exit.")]
    = False,
    store: StoreOpt = None,
) -> None:
    """A compact live view of one run: a chart with spikes marked, key stats, events.

    For terminals where the dashboard is unwanted, and for logs (piped, it prints a
    stats line per new step and the chart at the end). Exits when the run ends:
    0 if it finished or was stopped, 1 if it failed or was lost.

    Example: wb watch muon-tiny-1 --key attn/max_logit
    """
    from workbench.feed import RunFeed
    from workbench.watch import watch as watch_run

    st = open_store(store)
    row = find_run(st, run)
    if key is not None and row.status not in ("queued", "running"):
        known = st.latest(row.id)  # a finished run will never get the key
        if key not in known:
            raise fail(f"run {row.id} has no metric {key!r} — pick one of: "
                       f"{', '.join(sorted(known)[:12]) or 'none logged'}")
    try:
        status = watch_run(RunFeed(st, row.id), console, key=key, interval=interval,
                           once=once)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    raise typer.Exit(EXIT_FAILED if status in ("failed", "lost") else EXIT_OK)


EXPORT_FORMATS = ("jsonl", "csv", "parquet", "tensorboard")


@app.command()
def export(
    run: RunArg,
    dest: Annotated[Path | None, typer.Argument(
        help="Where to write (the same as -o).", show_default=False)] = None,
    format: Annotated[str, typer.Option(
        "--format", "-f", help="jsonl (every record kind), csv (scalars), parquet (a file "
        "per record kind) or tensorboard (event files).")] = "jsonl",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="jsonl/csv: a file instead of stdout. parquet: the scalars "
        "file (default RUNNAME.parquet); dists, matrices and events go to STEM.dists.parquet, "
        "STEM.matrices.parquet, STEM.events.parquet. tensorboard: a folder (default "
        "tb/RUNNAME).", show_default=False)] = None,
    keys: Annotated[list[str] | None, typer.Option(
        "--keys", "-k", help="GLOB on metric keys (event kinds for events); repeatable.")] = None,
    since: Annotated[int, typer.Option(help="Only records with id > SINCE (resume a stream).",
                                       min=0)] = 0,
    follow: Annotated[bool, typer.Option("--follow", help="Keep streaming new records until "
                                         "the run ends (jsonl, csv).")] = False,
    store: StoreOpt = None,
) -> None:
    """Write a run's records to stdout (jsonl, csv) or to files (parquet, tensorboard).

    Record ids are store-wide and increase in commit order, so `--since` the last id
    you saw resumes a stream with no gaps and no duplicates. `wb import jsonl` reads
    a jsonl export back into a store.

    Parquet columns: scalars step, key, value, wall (Unix seconds); dists step, key,
    count, min, max, mean, p50, p90, p99, edges, counts, nonfinite, wall; matrices
    step, key, shape, dtype, values; events step, kind, severity, payload (JSON), wall.
    TensorBoard gets scalars (double precision), dists as histograms and events as
    text; matrices are skipped.

    Examples:

      wb export charlm-3 --format csv --keys 'train/*' > train.csv

      wb export charlm-3 --since 1200 --follow

      wb export charlm-3 -f parquet -o charlm.parquet   (pd.read_parquet("charlm.parquet"))

      wb export charlm-3 -f tensorboard tb/charlm-3   (then: tensorboard --logdir tb)
    """
    from workbench.export import export_run

    if format not in EXPORT_FORMATS:
        raise fail(f"unknown format {format!r} — use {', '.join(EXPORT_FORMATS[:-1])} or "
                   f"{EXPORT_FORMATS[-1]}")
    if dest is not None and output is not None:
        raise fail(f"give the destination once: {dest} or -o {output}")
    output = output or dest
    if follow and format not in ("jsonl", "csv"):
        raise fail(f"--follow streams jsonl or csv; {format} writes a snapshot (leave out "
                   "--follow)")
    st = open_store(store)
    row = find_run(st, run)
    if format in ("parquet", "tensorboard"):
        _export_files(st, row, format, output, keys or [], since)
        return
    try:
        if output is None:
            export_run(st, row, sys.stdout, fmt=format, keys=keys or [], since=since,
                       follow=follow)
            return
        try:
            out = open(output, "w", encoding="utf-8", newline="" if format == "csv" else None)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}") from None
        with out:
            export_run(st, row, out, fmt=format, keys=keys or [], since=since, follow=follow)
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (| head): not an error


@app.command("export-model")
def export_model(
    run: RunArg,
    out_dir: Annotated[Path, typer.Argument(
        help="Folder to write (created; must be empty or new unless --force).",
        show_default=False)],
    step: Annotated[int | None, typer.Option(
        "--step", min=0, help="Export the checkpoint of this step (default: the latest).",
        show_default=False)] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weights' dtype: float32 or bfloat16.")] = "float32",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
    store: StoreOpt = None,
) -> None:
    """Write a pretrain or RL run's checkpoint as a Hugging Face model folder:
    config.json, model.safetensors and the tokenizer files of the checkpoint it started
    from (a byte-level model has none). transformers' AutoModelForCausalLM (and vLLM)
    load the folder.

    Examples:

      wb export-model muon-tiny-3 exports/muon-tiny-3

      wb export-model cpt-qwen-1 out/qwen-cpt --step 200 --dtype bfloat16 --force
    """
    from workbench.export_model import ExportError
    from workbench.export_model import export_model as write_model

    st = open_store(store)
    row = find_run(st, run)
    try:
        done = write_model(st, row, out_dir, step=step, dtype=dtype, force=force)
    except ExportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or out_dir}: {exc.strerror}",
                   code=EXIT_FAILED) from None
    console.print(done.summary(), highlight=False, markup=False, soft_wrap=True)
    console.print(done.hint(), highlight=False, markup=False, soft_wrap=True)


@app.command("example-model")
def example_model(
    out_dir: Annotated[Path, typer.Argument(
        help="Folder to write (created; must be empty or new unless --force).",
        show_default=False)],
    family: Annotated[str, typer.Option(
        "--family", help="Architecture: qwen2 (q/k/v biases), qwen3 (QK-norm) or llama.")]
    = "qwen2",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
) -> None:
    """Write a tiny Hugging Face checkpoint to try every hf: path without a download: a
    byte-level BPE tokenizer trained here on local text (ChatML specials and chat
    template) and a randomly initialized model of that family (config.json,
    model.safetensors, generation_config.json). A few seconds.

    Examples:

      wb example-model ckpt/tiny-qwen2

      wb launch muonclip-tiny --set model.init=hf:ckpt/tiny-qwen2 --set model.seq_len=128

      wb example-model ckpt/tiny-qwen3 --family qwen3
    """
    from workbench.models.example import FAMILIES, write_example_model

    if family not in FAMILIES:
        raise fail(f"unknown --family {family!r} — use one of {', '.join(FAMILIES)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise fail(f"{out_dir} exists and is not empty — pick a new folder or pass --force")
    err_console.print(f"training a BPE tokenizer on local text, then writing a {family} model "
                      f"to {out_dir} ...")
    try:
        folder = write_example_model(out_dir, family=family)
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or out_dir}: {exc.strerror}",
                   code=EXIT_FAILED) from None
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    console.print(f"wrote {folder}: {files}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"use it: model.init = \"hf:{folder}\" (pretrain) or policy.init = "
                  f"\"hf:{folder}\" (rl)", highlight=False, markup=False, soft_wrap=True)


def _export_files(st: Store, row: dict[str, Any], format: str, output: Path | None,
                  keys: list[str], since: int) -> None:
    """`wb export -f parquet|tensorboard`: the writers live in workbench/io/."""
    from workbench.io import BadInput

    try:
        if format == "parquet":
            from workbench.io.parquet import export_parquet

            files = export_parquet(st, row, output or Path(f"{row.name}.parquet"),
                                   keys=keys, since=since)
            console.print("wrote " + ", ".join(f"{n} {kind} to {path}"
                                               for kind, (path, n) in files.items()),
                          highlight=False, markup=False, soft_wrap=True)
            return
        from workbench.io.tensorboard import export_tensorboard

        w = export_tensorboard(st, row, output or Path("tb") / row.name, keys=keys,
                               since=since)
    except BadInput as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {exc.filename or output}: {exc.strerror}") from None
    skipped = ("; skipped " + ", ".join(f"{n} {what}" for what, n in w.skipped.items())
               if w.skipped else "")
    console.print(f"wrote {w.scalars} scalars, {w.dists} histograms, {w.events} events to "
                  f"{w.path}{skipped} (view: tensorboard --logdir {w.path})",
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def logs(
    run: RunArg,
    offset: Annotated[int, typer.Option(
        help="Start at this byte of the log (resume a stream: the bytes you have).",
        min=0)] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output "
                                         "until the run ends.")] = False,
    store: StoreOpt = None,
) -> None:
    """Print a run's output (its stdout.log), like `tail -f` with --follow.

    A remote run's output is mirrored too, through this command on its host.

    Examples: wb logs charlm-3 ; wb logs muon-tiny-2 --follow
    """
    from workbench.export import follow_log

    st = open_store(store)
    row = find_run(st, run)
    try:
        follow_log(st, row, sys.stdout.buffer, offset=offset, follow=follow)
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (| head): not an error


@app.command()
def recipes() -> None:
    """List the built-in specs (launch one with `wb launch NAME`) and the experiment kinds.

    Example: wb recipes
    """
    from workbench.render import recipes_table

    console.print(recipes_table())


@app.command()
def bench(
    name: Annotated[str, typer.Argument(
        help="What to measure: store, muon, muon-dist, maxlogit, optimizers, engine, "
        "engine-hf, tui, rl, depth, mirror, kernels, spikes, data.",
        show_default=False)],
    quick: Annotated[bool, typer.Option("--quick", help="Smaller sizes; a few minutes at most.")]
    = False,
    as_json: JsonOpt = False,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="rl only: two generators, both here against one here and one on "
        "this configured host (`wb hosts add`).", show_default=False)] = None,
) -> None:
    """Measure a figure the project promises and print it.

    Example: wb bench store --quick --json
    """
    from workbench.bench import BENCHES

    if name not in BENCHES:
        raise fail(f"unknown bench {name!r} — use one of {', '.join(BENCHES)}")
    if remote is not None and name != "rl":
        raise fail("--remote applies to `wb bench rl` only")
    if remote is not None:
        from workbench.hosts import HostError, get_host

        try:
            get_host(remote)
        except HostError as exc:
            raise fail(str(exc)) from None
    extra = {"remote": remote} if remote is not None else {}
    result = BENCHES[name](quick=quick, progress=None if as_json else err_console, **extra)
    if as_json:
        print_json(result)
    else:
        from workbench.render import bench_table

        console.print(bench_table(name, result))


OnlyOpt = Annotated[list[str] | None, typer.Option(
    "--only", help="Run only the checks matching this glob (repeatable), e.g. 'kernels/*'.",
    show_default=False)]
QuickOpt = Annotated[bool, typer.Option(
    "--quick", help="Smaller sizes and fewer timing rounds: about 3 minutes on one GPU "
    "(the full run: about 8).")]


def _print_selftest(results: list[Any], data: dict[str, Any], title: str,
                    as_json: bool) -> None:
    from workbench.selftest.report import table, verdict_line
    from workbench.store import strict_json

    if as_json:
        print_json(strict_json(data))
        return
    console.print(table(results, title))
    console.print(verdict_line(results, data.get("seconds")), highlight=False)


@app.command()
def selftest(
    quick: QuickOpt = False,
    only: OnlyOpt = None,
    list_checks: Annotated[bool, typer.Option(
        "--list", help="List the checks and what each needs, run nothing.")] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Check this machine end to end: the Triton kernels against torch at real shapes,
    bf16 pretraining with each attention backend, NCCL, vLLM with in-flight weight
    updates, a Huginn checkpoint in bf16, NVML; on any machine the kernels under the
    Triton interpreter, a short run of each recipe and the store's round trip.

    A check this machine cannot run (no CUDA, no vLLM, no NVML, one GPU) is skipped with
    the reason. The answer is stored as a run of kind selftest (`wb ls --kind
    selftest`): figures as metrics selftest/CHECK/FIGURE, each failure as an event, the
    checks' output in its stdout.log (`wb logs RUN`). Exit code 1 if any check failed.

    Examples: wb selftest ; wb selftest --quick --json ; wb selftest --only 'kernels/*'
    """
    from workbench.selftest import KIND, LAUNCHER, Facts, select
    from workbench.selftest.runner import execute, progress_stream
    from workbench.tracking import Run

    try:
        checks = select(only or [])
    except ValueError as exc:
        raise fail(str(exc)) from None
    if list_checks:
        for chk in checks:
            needs = f"  [needs {', '.join(chk.needs)}]" if chk.needs else ""
            console.print(f"{chk.name}: {chk.summary}{needs}", highlight=False, markup=False)
        return
    st = open_store(store, create=True)
    facts = Facts.probe()
    row = st.create_run(kind=KIND, status="running", launcher=LAUNCHER, pid=os.getpid(),
                        config={"quick": quick, "only": only or []}, total_steps=len(checks))
    stream = progress_stream()

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    gpus = f"{facts.gpus} x {facts.device}" if facts.cuda else "no CUDA GPU"
    say(f"selftest {row.name} ({row.id}): {len(checks)} checks on {gpus}, torch "
        f"{facts.torch}{' (quick)' if quick else ''}; output in "
        f"{st.run_dir(row.id) / 'stdout.log'}")
    run = Run(st, row, owner=True)
    try:
        results, data = execute(run, checks, quick=quick, facts=facts, say=say,
                                log=st.run_dir(row.id) / "stdout.log")
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        stream.close()
    _print_selftest(results, data, f"wb selftest on {data['host']} ({row.name})", as_json)
    st.close()
    raise typer.Exit(data["exit_code"])


import_app = typer.Typer(
    help="Bring runs into the store: TensorBoard event files, or a `wb export` JSONL "
    "(from another store).\n\n"
    "Examples:\n\n"
    "  wb import tensorboard ./tb_logs\n\n"
    "  wb export charlm-3 > charlm-3.jsonl; wb import jsonl charlm-3.jsonl --store other\n\n"
    "Each imported run is new (new id), with launcher `import`.",
    no_args_is_help=True)
app.add_typer(import_app, name="import")
ImportNameOpt = Annotated[str | None, typer.Option(
    "--name", help="Run name (default: the source's name, NAME-N if taken). A name that is "
    "taken is refused.")]


def _print_imported(results: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            console.print(r.summary(), highlight=False, markup=False, soft_wrap=True)


@import_app.command("tensorboard")
def import_tensorboard(
    path: Annotated[Path, typer.Argument(
        help="A TensorBoard log folder (one run per folder that holds event files), or one "
        "event file.", show_default=False)],
    name: Annotated[str | None, typer.Option(
        "--name", help="Run name for one folder; with several, a prefix: NAME-FOLDER "
        "(default: the folder's path under PATH, NAME-N if taken).")] = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Import TensorBoard event files: scalars (tag = key, with step and wall time) and
    histograms (as distributions; quantiles estimated from the buckets).

    All or nothing: unreadable input creates no run. Images, text and graphs are skipped.

    Examples:

      wb import tensorboard runs_tb   (runs_tb/run_a/events..., runs_tb/run_b/...)

      wb import tensorboard lightning_logs/version_3 --name baseline
    """
    from workbench.io import BadInput
    from workbench.io.tensorboard import import_tensorboard as read_tb

    st = open_store(store, create=True)
    try:
        results = read_tb(st, path, name=name)
    except BadInput as exc:
        raise fail(str(exc)) from None
    _print_imported(results, as_json)


@import_app.command("jsonl")
def import_jsonl(
    file: Annotated[str, typer.Argument(
        help="A `wb export` JSONL file of one run, or - for stdin.", show_default=False)],
    name: ImportNameOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Import a `wb export` JSONL (one run) as a new run: same records, same order; kind,
    config, spec, status, steps and times from its run line.

    Streamed in batches; all or nothing: a bad line leaves no run behind (exit 2).

    Examples:

      wb import jsonl charlm-3.jsonl --name charlm-laptop

      ssh gpu1 wb export muon-tiny-4 | wb import jsonl -
    """
    from workbench.io import BadInput
    from workbench.io.jsonl_import import import_jsonl as read_jsonl
    from workbench.io.progress import ByteProgress

    if file == "-":
        src, total, source = sys.stdin.buffer, None, "stdin"
    else:
        try:
            src, total, source = open(file, "rb"), os.path.getsize(file), file
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}") from None
    st = open_store(store, create=True)
    try:
        with src, ByteProgress(err_console, total, f"importing {source}") as progress:
            result = read_jsonl(st, src, source=source, name=name, progress=progress)
    except BadInput as exc:
        raise fail(str(exc)) from None
    _print_imported([result], as_json)


hosts_app = typer.Typer(
    help="Remote hosts: SSH destinations runs can be launched on (see `wb hosts add`).",
    no_args_is_help=True)
app.add_typer(hosts_app, name="hosts")


@hosts_app.command("add")
def hosts_add(
    name: Annotated[str, typer.Argument(help="Short name for the host.", show_default=False)],
    dest: Annotated[str, typer.Argument(help="ssh destination: user@host or an ~/.ssh/config "
                                        "alias.", show_default=False)],
    port: Annotated[int | None, typer.Option("--port", help="ssh port.")] = None,
    python: Annotated[str, typer.Option("--python", help="Remote Python with workbench "
                                        "installed.")] = "python3",
    store: Annotated[str, typer.Option("--store", help="Remote store folder.")] = "~/runs",
) -> None:
    """Add (or replace) a host. Nothing secret is stored: ssh keeps keys and agents.

    Example: wb hosts add gpu1 me@gpu1.lab --python /opt/venv/bin/python --store /data/runs
    """
    from workbench.hosts import Host, HostError, add_host, hosts_path

    try:
        add_host(Host(name=name, dest=dest, port=port, python=python, store=store))
    except HostError as exc:
        raise fail(str(exc)) from None
    console.print(f"added host {name} ({dest}) to {hosts_path()}; try `wb hosts check {name}`")


@hosts_app.command("ls")
def hosts_ls(as_json: JsonOpt = False) -> None:
    """List the configured hosts.

    Example: wb hosts ls
    """
    from dataclasses import asdict

    from rich.table import Table

    from workbench.hosts import HostError, load_hosts

    try:
        hosts = load_hosts()
    except HostError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print_json([asdict(h) for h in hosts.values()])
        return
    table = Table(box=None, header_style="bold")
    for col in ("name", "dest", "port", "python", "store"):
        table.add_column(col)
    for h in hosts.values():
        table.add_row(h.name, h.dest, str(h.port or 22), h.python, h.store)
    console.print(table if hosts else "no hosts yet — add one with `wb hosts add NAME DEST`")


@hosts_app.command("rm")
def hosts_rm(name: Annotated[str, typer.Argument(help="Host name.", show_default=False)],
             ) -> None:
    """Forget a host (nothing on it is touched).

    Example: wb hosts rm gpu1
    """
    from workbench.hosts import HostError, remove_host

    try:
        remove_host(name)
    except HostError as exc:
        raise fail(str(exc)) from None
    console.print(f"removed host {name}")


@hosts_app.command("check")
def hosts_check(name: Annotated[str, typer.Argument(help="Host name.", show_default=False)],
                run_selftest: Annotated[bool, typer.Option(
                    "--selftest", help="Run `wb selftest --json` on the host and show its "
                    "table here; the answer is also stored here as a selftest run.")] = False,
                quick: QuickOpt = False,
                only: OnlyOpt = None,
                as_json: JsonOpt = False) -> None:
    """Connect and report the host's Python and workbench versions, GPUs and free disk;
    with --selftest, run the acceptance checks there (see `wb selftest`).

    Examples: wb hosts check gpu1 ; wb hosts check gpu1 --selftest --quick
    """
    from workbench.hosts import HostError, get_host

    if (quick or only) and not run_selftest:
        raise fail("--quick and --only go with --selftest (wb hosts check NAME --selftest "
                   "--quick)")
    try:
        host = get_host(name)
    except HostError as exc:
        raise fail(str(exc)) from None
    if run_selftest:
        _remote_selftest(host, quick, only or [], as_json)
        return
    try:
        info = host.check()
    except HostError as exc:  # unreachable or broken: not bad input
        raise fail(str(exc), code=1) from None
    if as_json:
        print_json(info)
        return
    gpus = info["gpus"]
    console.print(f"{name}: Python {info['python']}, workbench "
                  f"{info['workbench'] or 'not installed'}, "
                  f"{info['disk_free_bytes'] / 2**30:.1f} GiB free, "
                  + (", ".join(f"{g['name']} ({g['memory_used_mib']}/{g['memory_total_mib']} "
                               f"MiB, {g['utilization']}%)" for g in gpus) if gpus
                     else "no GPUs (no nvidia-smi)"), highlight=False)


def _remote_selftest(host: Any, quick: bool, only: list[str], as_json: bool) -> None:
    """`wb hosts check NAME --selftest`: the host's answer, recorded and shown here."""
    from workbench.hosts import HostError
    from workbench.selftest import select
    from workbench.selftest.remote import record_remote, run_remote

    try:  # a glob that names no check is bad input here, before ssh starts anything
        select(only)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        data = run_remote(host, quick=quick, only=only,
                          say=lambda text: err_console.print(text, highlight=False,
                                                             markup=False))
    except HostError as exc:
        raise fail(str(exc), code=EXIT_FAILED) from None
    st = open_store(None, create=True)
    results, row = record_remote(st, host.name, data)
    data["local_run"] = {"id": row.id, "name": row.name, "store": str(st.root)}
    st.close()
    remote_run = (data.get("run") or {}).get("name", "?")
    _print_selftest(results, data, f"wb selftest on {host.name} ({data.get('host', '?')}, "
                    f"run {remote_run} there, {row.name} here)", as_json)
    raise typer.Exit(data.get("exit_code", EXIT_FAILED))


# Typer vendors click in recent versions; find its ClickException without a private import.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


# `wb ls` options, parsed by `_ls_fast` (long and short spellings -> ls_ parameters).
_LS_OPTIONS = {"--status": "status", "--group": "group", "-g": "group", "--kind": "kind",
               "-k": "kind", "--store": "store"}


def _ls_fast(argv: list[str]) -> dict[str, Any] | None:
    """`wb ls` with plain options, parsed without Typer: Typer's dispatch imports
    pydantic to coerce the options (about 0.1 s, a third of `wb ls`; issue 20). Returns
    ls_'s arguments, or None for anything else (`--help`, an unknown or repeated option,
    a missing or empty value), which Typer then parses and reports as usual."""
    if not argv or argv[0] != "ls":
        return None
    out: dict[str, Any] = {}
    args = iter(argv[1:])
    for arg in args:
        name, eq, value = arg.partition("=")
        if arg == "--json":
            name, value = "as_json", True
        elif arg in _LS_OPTIONS:
            name, value = _LS_OPTIONS[arg], next(args, "")
        elif eq and name.startswith("--") and name in _LS_OPTIONS:
            name = _LS_OPTIONS[name]
        else:
            return None
        if name in out or not value or (value is not True and value.startswith("-")):
            return None
        out[name] = Path(value) if name == "store" else value
    return out


def main() -> None:
    """The `wb` entry point. A usage error (unknown option, bad value, missing argument)
    is bad input like any other: one line on stderr and exit 2, not a help box."""
    fast = _ls_fast(sys.argv[1:])
    if fast is not None:  # `wb ls`: the same function, called directly
        try:
            ls_(**fast)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(EXIT_OK)
    try:
        # prog_name: `python -m workbench.cli` too says "Usage: wb ...".
        code = app(prog_name="wb", standalone_mode=False)
    except typer.Abort:
        err_console.print("aborted", highlight=False)
        sys.exit(EXIT_FAILED)
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wb`: the help was printed
            sys.exit(EXIT_BAD_INPUT)
        ctx = getattr(exc, "ctx", None)
        hint = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {escape(' '.join(exc.format_message().split()))}"
                          f"{escape(hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
