"""`wb tui` and `wb serve`: the dashboard on a terminal or in a browser."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli import common
from workbench.cli.common import StoreOpt, app, fail


def run_tui(store: Path | None) -> None:
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
    run_tui(store)


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
        common.console.print(f"Serving the dashboard of {root} on {url} (ctrl+c stops); "
                             f"{forward_hint(host, port)}", highlight=False, soft_wrap=True)
        if not is_loopback(host):
            common.err_console.print(
                f"[bold yellow]warning:[/] the dashboard has no authentication: anyone who "
                f"can reach {escape(url)} can stop and launch runs",
                highlight=False, soft_wrap=True)

    try:
        serve_dashboard(root, host=host, port=port, announce=announce)
    except ServeError as exc:
        raise fail(str(exc)) from None
