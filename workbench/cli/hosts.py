"""`wb hosts add|ls|rm|check`: the SSH hosts runs can be launched on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from workbench.cli import common
from workbench.cli.common import EXIT_FAILED, JsonOpt, app, fail, open_store, print_json
from workbench.cli.tools import OnlyOpt, QuickOpt, print_selftest

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
    common.console.print(f"added host {name} ({dest}) to {hosts_path()}; "
                                f"try `wb hosts check {name}`")


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
    common.console.print(table if hosts else "no hosts yet — add one with `wb hosts add NAME DEST`")


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
    common.console.print(f"removed host {name}")


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
    common.console.print(f"{name}: Python {info['python']}, workbench "
                         f"{info['workbench'] or 'not installed'}, "
                         f"{info['disk_free_bytes'] / 2**30:.1f} GiB free, "
                         + (", ".join(f"{g['name']} ({g['memory_used_mib']}/"
                                      f"{g['memory_total_mib']} MiB, {g['utilization']}%)"
                                      for g in gpus) if gpus
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
                          say=lambda text: common.err_console.print(text, highlight=False,
                                                                    markup=False))
    except HostError as exc:
        raise fail(str(exc), code=EXIT_FAILED) from None
    st = open_store(None, create=True)
    results, row = record_remote(st, host.name, data)
    data["local_run"] = {"id": row.id, "name": row.name, "store": str(st.root)}
    st.close()
    remote_run = (data.get("run") or {}).get("name", "?")
    print_selftest(results, data, f"wb selftest on {host.name} ({data.get('host', '?')}, "
                    f"run {remote_run} there, {row.name} here)", as_json)
    raise typer.Exit(data.get("exit_code", EXIT_FAILED))
