"""`wb ls`, `compare`, `show`, `report`, `events`, `watch` and `logs`: reading the store."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli import common
from workbench.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    JsonOpt,
    RunArg,
    StoreOpt,
    app,
    fail,
    find_run,
    open_store,
    print_json,
)
from workbench.store import Store, StoreError


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
            common.console.print(f"no runs in {resolve_root(store)} (launch one: wb launch charlm)")
        return
    st = open_store(store)
    if group is not None and not st.has_group(group):
        raise fail(_no_group(st, group))
    rows = st.runs(status=status, group=group, kind=kind)
    if as_json:
        print_json([summarize_run(st, r) for r in rows])
    elif not rows:
        common.console.print(f"no runs in {st.root}" + (f" in group {group}" if group else "")
                             + (f" of kind {kind}" if kind else "")
                             + (f" with status {status}" if status else ""))
    else:
        from rich.cells import cell_len

        table = runs_table(st, rows)
        # Lines that fit print the same without the word-wrapping pass (soft_wrap),
        # which took a fifth of `wb ls` on 1,000 runs.
        fits = max(map(cell_len, table.plain.split("\n"))) <= common.console.width
        common.console.print(table, soft_wrap=fits)


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
        common.console.print(compare_table(summaries))


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
            from workbench.export import strict_json

            print_json(strict_json(data))
        else:
            common.console.print(summary_table(row, data))
        return
    if as_json:
        print_json(summarize_run(st, row, full=True))
    else:
        common.console.print(run_detail(st, row))


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
    common.console.print(f"wrote {out} ({len(text.encode()) / 1e3:,.0f} KB, {len(ids)} run"
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
    from dataclasses import asdict

    from workbench.export import strict_json
    from workbench.render import events_table

    st = open_store(store)
    rows = st.events(find_run(st, run).id, kind=kind)
    if as_json:
        print_json(strict_json([asdict(e) for e in rows]))
    else:
        common.console.print(events_table(rows))


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
        status = watch_run(RunFeed(st, row.id), common.console, key=key, interval=interval,
                           once=once)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    raise typer.Exit(EXIT_FAILED if status in ("failed", "lost") else EXIT_OK)



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
