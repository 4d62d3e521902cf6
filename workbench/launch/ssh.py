"""The ssh launcher: a run on a configured host, mirrored into the local store.

`start` ships the spec's TOML over ssh to `wb launch - --detach` on the host, so
the run lives in the host's store and survives the connection; the local store
gets a row with the same id, launcher `ssh` and the host's name, and a mirror
process (launch/mirror.py) copies the run's records as they are written. `stop`
and `resume` run `wb stop` / `wb resume` on the host. Every remote command is an
argument list quoted by `Host.ssh_argv`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from workbench.hosts import LOCAL, Host, HostError, get_host
from workbench.launch.local import Launched
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec, SpecBase, dump_toml
from workbench.store import Store, StoreError

REMOTE_TIMEOUT_S = 60.0


def _spec_on(spec: SpecBase, host: str) -> SpecBase:
    """A copy of the spec that runs on `host` ('local' is what the host itself reads)."""
    copy = spec.model_copy(deep=True)
    copy.resources.host = host
    return copy


def _call(host: Host, command: list[str], *, input: str | None = None,
          timeout: float = REMOTE_TIMEOUT_S) -> str:
    """Run a remote `wb` command; its stdout, or HostError with its last error line."""
    try:
        r = host.run(command, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise HostError(f"host {host.name!r} did not answer within {timeout:.0f} s — check "
                        f"`wb hosts check {host.name}`") from None
    if r.returncode != 0:
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        last = lines[-1].removeprefix("error: ") if lines else f"exit code {r.returncode}"
        if r.returncode == 255:  # ssh's own failure: unreachable, key refused, ...
            raise HostError(f"cannot reach host {host.name!r} ({host.dest}): {last} — check "
                            f"`wb hosts check {host.name}`")
        raise HostError(f"on host {host.name!r}: {last}")
    return r.stdout


def start(store: Store, loaded: LoadedSpec, host: Host, *, name: str | None = None,
          group: str | None = None, node_rank: int = 0,
          master: str | None = None) -> Launched:
    """Launch on `host` (detached there), record the run here and start its mirror.

    The spec travels as it was given, not `for_launch()`-resolved: relative paths in
    it mean paths on the host, resolved there. The run is named here (so the name is
    unique in the local store) and keeps that name on the host. `node_rank` /
    `master`: node 0 of a multi-node run (launch/nodes.py).
    """
    from workbench.launch import mirror

    spec = loaded.spec
    name = name or spec.name or store.next_name(loaded.default_name)
    run_id = launch_remote(host, spec, name, node_rank=node_rank, master=master)
    return _record(store, host, run_id, spec, name=name, group=group,
                   after_start=mirror.spawn)


def launch_remote(host: Host, spec: SpecBase, name: str, *, node_rank: int = 0,
                  master: str | None = None) -> str:
    """`wb launch - --detach` on the host with the spec on stdin; the remote run id.

    The host runs the spec as its own ('local'); a node of a multi-node run gets no
    host list either: where it is, and where node 0 is, come with --node-rank/--master.
    """
    remote = _spec_on(spec, LOCAL)
    if remote.resources.hosts:
        remote.resources.hosts = []
    node = ["--node-rank", str(node_rank), "--master", master] if master else []
    out = _call(host, host.wb("launch", "-", "--detach", "--name", name, *node),
                input=dump_toml(remote))
    return out.strip().splitlines()[-1] if out.strip() else ""


def _record(store: Store, host: Host, run_id: str, spec: SpecBase, *, name: str,
            group: str | None = None, resumed_from: str | None = None,
            after_start: Callable[[Store, str], subprocess.Popen[bytes] | None] | None = None,
            ) -> Launched:
    """The local record of a run the host has just started, then its mirror."""
    try:
        row = store.create_run(
            run_id=run_id, host=host.name, kind=spec.kind, name=name, status="queued",
            launcher="ssh", spec=dump_toml(_spec_on(spec, host.name)),
            config=spec.run_config(), total_steps=getattr(spec, "total_steps", None),
            group=group, resumed_from=resumed_from)
    except StoreError as exc:
        raise HostError(f"host {host.name!r} started run {run_id!r} but it cannot be "
                        f"recorded here: {exc}") from None
    process = after_start(store, row.id) if after_start is not None else None
    return Launched(row, process)


def stop(store: Store, row: RunRecord, grace: float = 10.0) -> str:
    """`wb stop` on the host; the mirror copies the final status (one is started if
    none is running, so the local row does not stay `running`)."""
    from workbench.launch import mirror

    host = get_host(row.host)
    out = _call(host, host.wb("stop", row.id, "--grace", f"{grace:g}"),
                timeout=grace + REMOTE_TIMEOUT_S)
    mirror.ensure(store, row.id)
    return f"{out.strip()} (on {host.name})"


def resume(store: Store, row: RunRecord) -> Launched:
    """`wb resume` on the host (it resumes from its own checkpoint, under the same
    name), mirrored as a new local run linked to the old one."""
    from workbench.launch import mirror
    from workbench.spec import parse_spec

    host = get_host(row.host)
    out = _call(host, host.wb("resume", row.id, "--detach"))
    spec = parse_spec(row.spec or "", label=f"run {row.id} spec")
    return _record(store, host, out.strip().splitlines()[-1], spec, name=row.name,
                   group=row.group, resumed_from=row.id, after_start=mirror.spawn)
