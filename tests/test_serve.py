"""`wb serve`: the dashboard in a real headless Chromium, through textual-serve.

The browser test starts the real `wb serve` process, opens the page, waits until the
dashboard's terminal stream has drawn the run, and checks a screenshot is not blank.
Chromium comes from the distribution (.ci/run installs it); playwright drives it, as
its own browser download needs the internet.
"""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for, wb_inproc
from workbench.store import Store
from workbench.tracking import Run

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)
RUN_NAME = "browser-run"
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def served(tmp_path: Path, store: Store, store_dir: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A store with one finished run, served by a real `wb serve` on a free port; the
    server is interrupted (then killed, if it must be) afterwards whatever happens."""
    row = store.create_run(kind="pretrain", name=RUN_NAME, status="finished",
                           launcher="sdk", total_steps=10)
    run = Run(store, row, owner=False)
    for step in range(10):
        run.log({"train/loss": 2.0 - step * 0.1}, step=step)
    run.finish()

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "serve", "--port", str(port),
         "--store", str(store_dir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or port_open(port), 30, "wb serve to listen")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# The browser decodes the screenshot (no imaging library needed here): the share of the
# most common colour and the number of distinct colours, over every 4th pixel.
COLOURS_JS = """async (src) => {
    const img = new Image();
    img.src = src;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.width;
    canvas.height = img.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, img.width, img.height).data;
    const counts = new Map();
    let total = 0;
    for (let i = 0; i < data.length; i += 16) {
        const key = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        counts.set(key, (counts.get(key) || 0) + 1);
        total += 1;
    }
    return [Math.max(...counts.values()) / total, counts.size];
}"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_dashboard_renders_in_a_browser(served: tuple[int, subprocess.Popen],
                                        tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port, proc = served
    url = f"http://127.0.0.1:{port}/"
    received: list[bytes] = []
    shot = tmp_path / "dashboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            # Offline machine: the page's web font would hang the load; only the server.
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url.startswith(url) else route.abort())
            page.on("websocket", lambda ws: ws.on(
                "framereceived",
                lambda p: received.append(p if isinstance(p, bytes) else p.encode())))
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            page.wait_for_selector("body.-first-byte", timeout=30_000)  # the app's 1st byte
            # The terminal stream carries the runs table once the dashboard has drawn it.
            deadline = time.monotonic() + 30
            for _ in range(300):
                if RUN_NAME.encode() in b"".join(received) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(100)  # lets playwright deliver the frames
            assert RUN_NAME.encode() in b"".join(received), (
                f"the dashboard never drew {RUN_NAME!r}; server log:\n"
                + (tmp_path / "serve.log").read_text())
            page.wait_for_timeout(500)  # the canvas paints after the frame arrives
            page.screenshot(path=str(shot))
            src = "data:image/png;base64," + base64.b64encode(shot.read_bytes()).decode()
            top_share, colours = page.evaluate(COLOURS_JS, src)

            # ctrl+c with the dashboard still open in the browser: a prompt, clean stop.
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
        finally:
            browser.close()

    assert png_size(shot) == (VIEWPORT["width"], VIEWPORT["height"])
    assert shot.stat().st_size > 10_000, "the screenshot is suspiciously small"
    assert top_share < 0.99 and colours >= 3, (top_share, colours)  # not blank
    log = (tmp_path / "serve.log").read_text()
    assert "ssh -L" in log and "Traceback" not in log and "rror" not in log, log


def test_cross_origin_websocket_is_refused(served: tuple[int, subprocess.Popen]) -> None:
    """Another web page in the user's browser must not drive the dashboard, nor a DNS
    name rebound to 127.0.0.1 (no authentication: the loopback binding is the guard)."""
    import urllib.error
    import urllib.request

    port, _ = served
    for headers in ({"Origin": "http://evil.example"}, {"Host": f"evil.example:{port}"}):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ws", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 403
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    assert f"ws://127.0.0.1:{port}/ws" in page


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = wb_inproc("serve", "--port", str(port), "--store", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_tui_still_refuses_a_pipe_without_a_web_driver() -> None:
    proc = wb_inproc("tui", env={"TEXTUAL_DRIVER": ""})
    assert proc.returncode == 2 and "needs a terminal" in proc.stderr
