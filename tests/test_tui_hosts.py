"""The dashboard's hosts screen, driven through Textual's Pilot: a host behind a real
sshd on 127.0.0.1 (tests/sshd.py) answers with its versions and no GPUs, a closed
port and a silent listener are unreachable without freezing the UI, and a mirrored
remote run is listed under its host. This machine has no GPU: the GPU rendering is
checked on a stand-in probe answer."""

from __future__ import annotations

import asyncio
import platform
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import until
from tests.sshd import SSHServer
from workbench.hosts import LOCAL, Host, add_host
from workbench.store import Store

pytest.importorskip("textual")

from textual.pilot import Pilot  # noqa: E402

from workbench.app import WorkbenchApp, WorkbenchCommands  # noqa: E402
from workbench.screens.hosts import (  # noqa: E402
    HostCard,
    HostsScreen,
    HostState,
    gpu_lines,
    gpu_summary,
)
from workbench.screens.keys import KeysScreen  # noqa: E402
from workbench.screens.runs import RunsScreen  # noqa: E402

SIZE = (140, 36)
CHECK_TIMEOUT_S = 30.0  # a real ssh round trip on a loaded 2-core machine

# What nvidia-smi reports on a two-GPU host, as the probe returns it. A stand-in:
# this machine has no GPU, so no real check can return one.
GPU_PROBE: dict[str, Any] = {
    "python": "3.11.9", "executable": "/opt/venv/bin/python", "workbench": "0.1.0",
    "disk_free_bytes": 512 * 2**30,
    "gpus": [
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
         "memory_used_mib": 12288, "utilization": 43},
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
         "memory_used_mib": 0, "utilization": 0},
    ],
}


async def open_hosts(app: WorkbenchApp, pilot: Pilot[Any]) -> HostsScreen:
    """From the runs screen, `h`: the hosts screen, mounted."""
    await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "the runs screen")
    await pilot.press("h")
    screen = await until(pilot, lambda: isinstance(app.screen, HostsScreen) and app.screen,
                         5, "the hosts screen")
    assert isinstance(screen, HostsScreen)
    return screen


def with_app(store_dir: Path, body: Callable[[WorkbenchApp, Pilot[Any]], Awaitable[None]],
             ) -> WorkbenchApp:
    async def main() -> WorkbenchApp:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=SIZE) as pilot:
            await body(app, pilot)
        return app

    return asyncio.run(main())


def cell(screen: HostsScreen, host: str, column: str) -> str:
    return str(screen.table.get_cell(host, column))


def card_text(screen: HostsScreen) -> str:
    return screen.card.render_state(screen.card.state).plain


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP and never speaks: ssh waits there for the
    server's banner, so a check of it hangs (until ssh's ConnectTimeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


# -- rendering (no app) --------------------------------------------------------------------


def test_gpu_rendering_on_a_stand_in_probe() -> None:
    """No GPU here: the probe answer of a two-H100 host is a stand-in."""
    gpus = GPU_PROBE["gpus"]
    assert gpu_summary(gpus) == "2× H100 80GB HBM3 22% 12.0/159 GiB"
    lines = gpu_lines(gpus)
    assert len(lines) == 2  # one line per GPU
    assert lines[0].startswith("0  H100 80GB HBM3  util  43% ████░░░░░░")
    assert "mem  12.0/79.6 GiB" in lines[0]
    assert lines[1].startswith("1  H100 80GB HBM3  util   0% ░░░░░░░░░░")
    mixed = [*gpus, {"name": "NVIDIA A100-SXM4-40GB", "memory_total_mib": 40960,
                     "memory_used_mib": 20480, "utilization": 100}]
    assert gpu_summary(mixed).endswith(", 1× A100-SXM4-40GB 100% 20.0/40 GiB")
    assert gpu_summary([]) == "no GPUs" and gpu_lines([]) == ["no GPUs (no nvidia-smi)"]
    card = HostCard()
    text = card.render_state(HostState("gpu1", "me@gpu1", Host("gpu1", "me@gpu1"),
                                       info=GPU_PROBE, seconds=0.2, checked_at=time.time()))
    assert "yes · 200 ms" in text.plain and "Python 3.11.9 · workbench 0.1.0" in text.plain
    assert "\n".join(lines) in text.plain


# -- the screen ----------------------------------------------------------------------------


def test_a_host_behind_real_ssh_is_reachable_with_versions_and_no_gpus(
        sshd: SSHServer, tmp_path: Path, store_dir: Path) -> None:
    add_host(Host("box", sshd.alias, python=sys.executable, store=str(tmp_path / "remote")))

    async def body(app: WorkbenchApp, pilot: Pilot[Any]) -> None:
        screen = await open_hosts(app, pilot)
        assert list(screen.table.rows) == [LOCAL, "box"]  # this machine first
        assert cell(screen, "box", "dest") == "wbtest"
        state = screen.states["box"]
        await until(pilot, lambda: state.info is not None or state.error is not None,
                    CHECK_TIMEOUT_S, "the ssh check of box")
        assert state.error is None, state.error
        reach = cell(screen, "box", "reach")
        assert reach.startswith("yes · ") and reach.endswith(" ms"), reach
        assert cell(screen, "box", "python") == platform.python_version()
        assert cell(screen, "box", "workbench") == __import__("workbench").__version__
        assert cell(screen, "box", "gpus") == "no GPUs"
        assert cell(screen, "box", "disk").endswith(" GiB")
        await pilot.press("down")  # highlight box: its card
        await until(pilot, lambda: screen.selected == "box", 5, "box highlighted")
        assert "no GPUs (no nvidia-smi)" in card_text(screen)
        assert f"Python {platform.python_version()}" in card_text(screen)
        # The local row reads the same probe without ssh.
        local = screen.states[LOCAL]
        await until(pilot, lambda: local.info is not None, CHECK_TIMEOUT_S, "the local probe")
        assert cell(screen, LOCAL, "python") == platform.python_version()
        assert cell(screen, LOCAL, "reach") == "yes · local"
        # r: checked again (a second answer from box).
        before = screen.checks_done
        await pilot.press("r")
        await until(pilot, lambda: screen.checks_done >= before + 2, CHECK_TIMEOUT_S,
                    "the recheck")
        assert state.error is None and cell(screen, "box", "reach").startswith("yes · ")

    with_app(store_dir, body)


def test_unreachable_hosts_show_the_error_without_freezing(
        store_dir: Path, silent_listener: int) -> None:
    add_host(Host("dead", "127.0.0.1", port=closed_port()))
    add_host(Host("mute", "127.0.0.1", port=silent_listener))  # hangs until it times out

    async def body(app: WorkbenchApp, pilot: Pilot[Any]) -> None:
        screen = await open_hosts(app, pilot)
        dead = screen.states["dead"]
        await until(pilot, lambda: dead.error is not None, CHECK_TIMEOUT_S,
                    "the check of a closed port")
        assert dead.info is None
        assert cell(screen, "dead", "reach") == "no — Connection refused"
        assert cell(screen, "dead", "gpus") == ""
        # `mute` is still being checked; the UI answers all the same.
        assert screen.states["mute"].checking
        assert cell(screen, "mute", "reach") == "checking…"
        started = time.monotonic()
        await pilot.press("down")
        await until(pilot, lambda: screen.selected == "dead", 2, "the cursor to move")
        card = card_text(screen)
        assert "unreachable: failed: ssh: connect to host 127.0.0.1 port" in card
        assert "Connection refused" in card and "check `ssh` to it works" in card
        await pilot.press("down")
        await until(pilot, lambda: screen.selected == "mute", 2, "the cursor to move")
        assert "mute  127.0.0.1:" in card_text(screen) and "checking…" in card_text(screen)
        assert time.monotonic() - started < 2.0  # keys answered while mute hangs
        assert screen.states["mute"].checking
        assert "1 unreachable" in str(screen.query_one("#hosts-status").render())
        await pilot.press("escape")  # back, while mute's check still hangs
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), 2, "the runs screen")

    started = time.monotonic()
    with_app(store_dir, body)
    # Quitting did not wait for the hanging ssh (ConnectTimeout is 10 s).
    assert time.monotonic() - started < 8.0


def test_runs_are_listed_under_their_host_and_open(store: Store, store_dir: Path) -> None:
    add_host(Host("box", "127.0.0.1", port=closed_port()))
    remote = store.create_run(kind="pretrain", name="remote-one", status="running",
                              launcher="ssh", total_steps=100)
    store.update_run(remote.id, host="box", last_step=7)
    here = store.create_run(kind="pretrain", name="here-one", status="finished")

    async def body(app: WorkbenchApp, pilot: Pilot[Any]) -> None:
        screen = await open_hosts(app, pilot)
        await until(pilot, lambda: cell(screen, "box", "runs") == "1/1", 5, "box's runs")
        assert cell(screen, LOCAL, "runs") == "0/1"
        assert [str(c) for c in screen.runs_table.get_row_at(0)] == [
            "here-one", here.id, "finished", "-"]
        # The runs screen's RunTable, its ids dimmed in the foreground colour (hosts.tcss).
        dim = screen.runs_table.get_cell(here.id, "id").style
        assert dim.dim and dim.color is not None
        await pilot.press("down")
        await until(pilot, lambda: screen.runs_table.row_count == 1 and str(
            screen.runs_table.get_row_at(0)[0]) == "remote-one", 5, "box's runs listed")
        assert [str(c) for c in screen.runs_table.get_row_at(0)] == [
            "remote-one", remote.id, "running", "7/100"]
        await pilot.press("enter")  # on the host: to its runs
        assert app.focused is screen.runs_table
        await pilot.press("enter")  # on the run: its screen
        await until(pilot, lambda: type(app.screen).__name__ == "RunScreen", 5,
                    "the run screen")
        assert app.screen.run_id == remote.id  # type: ignore[attr-defined]
        app.pop_screen()
        await until(pilot, lambda: app.screen is screen, 5, "back to the hosts")

    with_app(store_dir, body)


def test_a_gpu_answer_reaches_the_table_and_card(store_dir: Path) -> None:
    """The stand-in probe answer goes through the screen's own message path."""
    add_host(Host("gpu1", "127.0.0.1", port=closed_port()))

    async def body(app: WorkbenchApp, pilot: Pilot[Any]) -> None:
        screen = await open_hosts(app, pilot)
        await until(pilot, lambda: not screen.states["gpu1"].checking, CHECK_TIMEOUT_S,
                    "the real check to end")
        screen.post_message(HostsScreen.Checked("gpu1", GPU_PROBE, None, 0.05))
        await until(pilot, lambda: cell(screen, "gpu1", "gpus") != "", 5, "the GPU answer")
        assert cell(screen, "gpu1", "gpus") == "2× H100 80GB HBM3 22% 12.0/159 GiB"
        assert cell(screen, "gpu1", "reach") == "yes · 50 ms"
        assert cell(screen, "gpu1", "disk") == "512.0 GiB"
        await pilot.press("down")
        await until(pilot, lambda: screen.selected == "gpu1", 2, "gpu1 highlighted")
        assert "\n".join(gpu_lines(GPU_PROBE["gpus"])) in card_text(screen)

    with_app(store_dir, body)


def test_no_hosts_says_how_to_add_one_and_keys_and_palette_reach_it(store_dir: Path) -> None:
    async def body(app: WorkbenchApp, pilot: Pilot[Any]) -> None:
        runs = app.screen
        await until(pilot, lambda: isinstance(runs, RunsScreen), 5, "the runs screen")
        assert "Show hosts" in {n for n, _, _ in WorkbenchCommands(runs).commands()}
        await pilot.press("question_mark")
        keys = await until(pilot, lambda: isinstance(app.screen, KeysScreen) and app.screen,
                           5, "the keys screen")
        assert ("h", "Hosts") in set(keys.rows())
        await pilot.press("escape")
        screen = await open_hosts(app, pilot)
        assert list(screen.table.rows) == [LOCAL]
        empty = screen.query_one("#hosts-empty")
        assert empty.display and "wb hosts add NAME DEST" in str(empty.render())
        # A host added meanwhile (another terminal) shows up on r.
        add_host(Host("late", "127.0.0.1", port=closed_port()))
        await pilot.press("r")
        await until(pilot, lambda: "late" in screen.table.rows, 5, "the new host")
        assert not empty.display
        await pilot.press("q")  # back, not quit
        await until(pilot, lambda: app.screen is runs, 5, "the runs screen")
        assert app.is_running

    with_app(store_dir, body)
