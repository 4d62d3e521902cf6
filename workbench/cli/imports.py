"""`wb import tensorboard|jsonl`: runs from other tools or stores."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli import common
from workbench.cli.common import JsonOpt, StoreOpt, app, fail, open_store, print_json

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
            common.console.print(r.summary(), highlight=False, markup=False, soft_wrap=True)


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
        with src, ByteProgress(common.err_console, total, f"importing {source}") as progress:
            result = read_jsonl(st, src, source=source, name=name, progress=progress)
    except BadInput as exc:
        raise fail(str(exc)) from None
    _print_imported([result], as_json)
