"""What every `wb` command shares: the root Typer app, the consoles, the common options,
and the one-line error exit (docs/ARCHITECTURE.md, "The CLI")."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from workbench.run_record import RunRecord
from workbench.store import Store, StoreError

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


def find_run(st: Store, ref: str) -> RunRecord:
    try:
        return st.resolve(ref)
    except StoreError as exc:
        raise fail(str(exc)) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, allow_nan=False) + "\n")


