"""`wb launch`, `stop`, `resume`, `mirror` and `rm`: a run's life, through the launch
backends (workbench/launch/backends.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from workbench.cli import common
from workbench.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    RunArg,
    StoreOpt,
    app,
    fail,
    find_run,
    open_store,
)
from workbench.store import Store, StoreError

if TYPE_CHECKING:
    from workbench.launch.local import Launched


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
    status = follow_run(st, launched, common.console, stop=stop)
    raise typer.Exit(EXIT_OK if status in ("finished", "stopped", "detached") else EXIT_FAILED)


def _started_group(st: Store, runs: list[Launched], group: str, detach: bool) -> None:
    """Print the ids, one a line (--detach), or follow the group; any run that failed or
    was lost exits 1."""
    if detach:
        for launched in runs:
            print(launched.record.id)
        return
    from workbench.follow import follow_group

    statuses = follow_group(st, runs, common.console, group)
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
            common.console.print(backend_for(record).stop(st, record, grace=grace))
            return
        live = [r for r in st.runs(group=run) if st.stored_status(r.id) in ACTIVE_STATUSES]
        # Queued first: one whose predecessor stopped first could otherwise start.
        for row in sorted(live, key=lambda r: r.status != "queued"):
            common.console.print(backend_for(row).stop(st, row, grace=grace))
    except HostError as exc:
        raise fail(str(exc), code=EXIT_FAILED) from None
    if not live:
        common.console.print(f"group {run} has no queued or running run")


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
    common.console.print(f"mirror of {row.id} " + (f"started (pid {proc.pid}); log in "
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
    common.console.print(f"deleted {names}")
