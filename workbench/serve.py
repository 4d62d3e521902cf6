"""`wb serve`: the dashboard in a browser, through textual-serve.

textual-serve is a small aiohttp server: each browser session starts one `wb tui`
process whose Textual app talks to the page over a websocket. The server itself
never imports Textual; only the per-session `wb tui` does.

The dashboard has no authentication, so by default the server listens on
127.0.0.1 only and is meant to be reached through an SSH port forward. On
loopback it also refuses requests whose Host header is not a loopback name (DNS
rebinding), and everywhere it refuses a websocket opened from another origin
(another web page driving the dashboard in the user's browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import shlex
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SESSION_EXIT_S = 5.0  # a dashboard asked to quit gets this long before it is killed


class ServeError(Exception):
    """Bad input for `wb serve` (port in use, unknown host): one line for the user."""


def dashboard_command(store_root: Path) -> str:
    """The shell command textual-serve runs per browser session: this interpreter's
    `wb tui` over the same store (absolute, so the server's cwd does not matter)."""
    # exec: the session's process is the dashboard itself, not a shell around it, so
    # stopping the session reaches the dashboard.
    return "exec " + shlex.join([sys.executable, "-m", "workbench.cli", "tui",
                                 "--store", str(store_root.resolve())])


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: only this machine can connect."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forward_hint(host: str, port: int) -> str:
    """How to reach the server from a laptop: an SSH local forward to the address it
    listens on (loopback when it listens on every address)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    target = f"[{target}]" if ":" in target else target
    return (f"from your laptop: ssh -L {port}:{target}:{port} {socket.gethostname()}, "
            f"then open http://127.0.0.1:{port}")


def check_port(host: str, port: int) -> None:
    """Fail early, in one line, where the server could not listen (aiohttp's own
    error is a traceback). SO_REUSEADDR as aiohttp uses it: a port in TIME_WAIT is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ServeError(bind_message(host, port, exc)) from None


def bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use; pick another with --port "
                "(e.g. --port 8001)")
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def origin_refusal(request: Any, loopback: bool) -> str | None:
    """Why this request must be refused, or None. On loopback the Host header must
    name loopback (a rebound DNS name would not); a browser's websocket must come
    from the page this server served (same host and port)."""
    host = request.host or ""
    if loopback and not is_loopback(urlsplit(f"//{host}").hostname or ""):
        return f"Host {host!r} is not this machine's loopback address"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != host:
        return f"Origin {origin!r} is not this server ({host})"
    return None


def make_server(command: str, host: str, port: int, title: str,
                announce: Callable[[], None]) -> Any:
    """A textual-serve Server that announces itself in one line (no logo), builds the
    page's websocket URL from the address the browser used (so any forwarded local
    port works), refuses cross-origin and rebound requests, and on shutdown closes
    every browser session and waits for its dashboard process (a prompt, quiet exit)."""
    from aiohttp import web
    from textual_serve import app_service as session_mod
    from textual_serve import server as server_mod

    loopback = is_loopback(host)
    log = logging.getLogger("workbench.serve")

    class Session(session_mod.AppService):
        async def stop(self) -> None:
            """textual-serve never reaps the process: wait for it here, so it does not
            outlive the server, nor warn about a closed event loop at exit."""
            await super().stop()
            process = self._process
            if process is not None and process.returncode is None:
                try:
                    await asyncio.wait_for(process.wait(), SESSION_EXIT_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()

    class DashboardServer(server_mod.Server):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sockets: set[web.WebSocketResponse] = set()

        def initialize_logging(self) -> None:
            """Warnings only, on stderr: no access log line per request."""
            logging.basicConfig(level="WARNING", format="%(name)s: %(message)s",
                                stream=sys.stderr)

        async def on_startup(self, app: web.Application) -> None:
            announce()

        async def on_shutdown(self, app: web.Application) -> None:
            """An open websocket would hold the shutdown until the browser leaves."""
            for websocket in list(self.sockets):
                await websocket.close()

        async def handle_index(self, request: web.Request) -> web.StreamResponse:
            if reason := origin_refusal(request, loopback):
                raise web.HTTPForbidden(text=reason)
            # The template's URLs come from public_url; no await happens between this
            # assignment and their use, so concurrent requests cannot mix them up.
            self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

        async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
            """textual-serve's handler, with the checks, the socket kept for shutdown,
            and a Session that reaps its process."""
            if reason := origin_refusal(request, loopback):
                raise web.HTTPForbidden(text=reason)
            websocket = web.WebSocketResponse(heartbeat=15)
            width = server_mod.to_int(request.query.get("width", "80"), 80)
            height = server_mod.to_int(request.query.get("height", "24"), 24)
            session: Session | None = None
            self.sockets.add(websocket)
            try:
                await websocket.prepare(request)
                session = Session(self.command, write_bytes=websocket.send_bytes,
                                  write_str=websocket.send_str, close=websocket.close,
                                  download_manager=self.download_manager, debug=self.debug)
                await session.start(width, height)
                await self._process_messages(websocket, session)
            except asyncio.CancelledError:
                await websocket.close()
            except Exception:
                log.exception("browser session failed")
            finally:
                self.sockets.discard(websocket)
                if session is not None:
                    await session.stop()
            return websocket

    return DashboardServer(command, host=host, port=port, title=title)


def serve(store_root: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          announce: Callable[[], None] = lambda: None) -> None:
    """Serve the dashboard over `store_root` until SIGINT/SIGTERM (then return).
    Raises ServeError where the address cannot be used."""
    check_port(host, port)
    server = make_server(dashboard_command(store_root), host, port,
                         f"wb dashboard ({store_root})", announce)
    try:
        server.serve()
    except OSError as exc:  # lost the race for the port after check_port
        raise ServeError(bind_message(host, port, exc)) from None
    except KeyboardInterrupt:  # before the server's own SIGINT handler was installed
        pass
