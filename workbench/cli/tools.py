"""`wb recipes`, `bench` and `selftest`."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from workbench.cli import common
from workbench.cli.common import EXIT_FAILED, JsonOpt, StoreOpt, app, fail, open_store, print_json


@app.command()
def recipes() -> None:
    """List the built-in specs (launch one with `wb launch NAME`) and the experiment kinds.

    Example: wb recipes
    """
    from workbench.render import recipes_table

    common.console.print(recipes_table())


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
    result = BENCHES[name](quick=quick, progress=None if as_json else common.err_console, **extra)
    if as_json:
        print_json(result)
    else:
        from workbench.render import bench_table

        common.console.print(bench_table(name, result))


OnlyOpt = Annotated[list[str] | None, typer.Option(
    "--only", help="Run only the checks matching this glob (repeatable), e.g. 'kernels/*'.",
    show_default=False)]
QuickOpt = Annotated[bool, typer.Option(
    "--quick", help="Smaller sizes and fewer timing rounds: about 3 minutes on one GPU "
    "(the full run: about 8).")]


def print_selftest(results: list[Any], data: dict[str, Any], title: str,
                    as_json: bool) -> None:
    from workbench.export import strict_json
    from workbench.selftest.report import table, verdict_line

    if as_json:
        print_json(strict_json(data))
        return
    common.console.print(table(results, title))
    common.console.print(verdict_line(results, data.get("seconds")), highlight=False)


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
            common.console.print(f"{chk.name}: {chk.summary}{needs}", highlight=False, markup=False)
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
    print_selftest(results, data, f"wb selftest on {data['host']} ({row.name})", as_json)
    st.close()
    raise typer.Exit(data["exit_code"])
