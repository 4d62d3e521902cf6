"""`wb`: the headless command line (Typer).

Exit codes: 0 ok, 1 the run or command failed, 2 bad input (unknown run,
invalid spec, wrong option). A bad-input error is one line on stderr naming
the problem and the fix, and nothing is created.

One module per group of commands; each registers on `common.app` when imported
below, in the order `wb --help` lists them. Commands import their work inside the
function, so `wb ls` stays light (tests/test_layout.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from workbench import __version__
from workbench.cli import common
from workbench.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, app

# The command modules register on `app` as they are imported: this order is the order
# of `wb --help`.
# isort: off
from workbench.cli import dashboard, lifecycle, reading, files, tools, imports, hosts  # noqa: F401
# isort: on
from workbench.cli.dashboard import run_tui
from workbench.cli.reading import ls_


def _version(value: bool) -> None:
    if value:
        common.console.print(f"workbench-lab {__version__}")
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
            run_tui(None)
            raise typer.Exit(EXIT_OK)
        common.console.print(ctx.get_help())
        raise typer.Exit(EXIT_OK)


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
        common.err_console.print("aborted", highlight=False)
        sys.exit(EXIT_FAILED)
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wb`: the help was printed
            sys.exit(EXIT_BAD_INPUT)
        ctx = getattr(exc, "ctx", None)
        hint = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
        line = " ".join(exc.format_message().split())
        common.err_console.print(f"[bold red]error:[/] {escape(line)}{escape(hint)}",
                                        highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)

