"""`wb bench tui`: how fast the dashboard opens and how cheap a live refresh is.

The store: 100 runs, one of them with 1,000,000 scalar points (4 metrics x 250,000
steps), written straight through `Store.write_batch` (the SDK's own commit path,
without its writer thread) into a temporary folder.

- first_frame_s: wall time from starting `wb tui --store DIR` as a subprocess, in a
  pseudo-terminal of 120x40 with TERM=xterm-256color, until the terminal receives the
  runs table with the newest run's name in it. End to end, as a user sees it:
  interpreter start, imports, store open, the first poll and the first paint. Median
  of several starts.
- refresh_ms: median time of one live refresh of the run screen of the 1M-point run,
  measured in-process under `App.run_test` (headless, 120x40): new points are
  committed to the store, then the time is taken from calling
  `RunScreen.refresh_data()` until the end of the repaint it causes (the screen's
  compositor refresh that renders the changed widgets, charts included; the event
  loop's latency in between counts). Only refreshes that found new data count.
  `refresh_data_ms` is the call alone (reads and widget updates, before painting).
- first_paint_s: from pressing enter on the 1M-point run in the runs table until its
  main chart shows points (a big run paints its newest 20,000 first);
  open_run_s: until the chart has been drawn with the whole history (read in a
  thread). Targets (issue 20): first paint <= 0.4 s, open <= 1.0 s.

Targets (issue 4): first frame <= 1.5 s, refresh <= 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from workbench.store import Batch, Store

RUNS = 100
BIG_KEYS = ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s")
BIG_POINTS = 1_000_000
BIG_NAME = "bench-big"  # created last: the newest run, the first row of the table
TARGET_FIRST_FRAME_S = 1.5
TARGET_REFRESH_MS = 100.0
SIZE = (120, 40)


def _say(progress: Console | None, message: str) -> None:
    if progress is not None:
        progress.print(message, highlight=False)


def build_store(root: Path, progress: Console | None = None, *, runs: int = RUNS,
                big_points: int = BIG_POINTS) -> str:
    """Fill `root` with `runs` runs; the last one (BIG_NAME) holds `big_points` scalar
    points. Returns the big run's id."""
    import numpy as np

    st = Store(root)
    rng = np.random.default_rng(0)
    statuses = ("finished", "finished", "finished", "failed", "stopped", "running")
    for i in range(runs - 1):
        status = statuses[i % len(statuses)]
        row = st.create_run(kind="pretrain", name=f"bench-{i:03d}", status=status,
                            launcher="sdk", total_steps=200)
        steps = np.arange(200)
        loss = 3.0 * np.exp(-steps / 80) + 1.0 + 0.02 * rng.standard_normal(200)
        now = time.time()
        scalars = [(int(s), k, float(v), now, 0) for s, lv in zip(steps, loss, strict=True)
                   for k, v in (("train/loss", lv), ("train/lr", 3e-3), ("train/grad_norm", 1.0))]
        events = [(50, "loss_spike", "warning", '{"loss": 9.0}', now)] if i % 7 == 0 else []
        st.write_batch(Batch(row["id"], scalars=scalars, events=events), last_step=199)
        if status != "running":
            st.update_run(row["id"], ended=now)
    steps_total = big_points // len(BIG_KEYS)
    big = st.create_run(kind="pretrain", name=BIG_NAME, status="running", launcher="sdk",
                        total_steps=steps_total + 50_000)
    chunk = min(25_000, steps_total)
    started = time.perf_counter()
    for first in range(0, steps_total, chunk):
        steps = np.arange(first, min(first + chunk, steps_total))
        loss = 4.0 * np.exp(-steps / 50_000) + 1.5 + 0.05 * rng.standard_normal(len(steps))
        now = time.time()
        columns = (loss, np.full(len(steps), 3e-3), 1.0 + 0.1 * rng.random(len(steps)),
                   np.full(len(steps), 5e4))
        scalars = [(int(s), key, float(v), now, 0)
                   for key, values in zip(BIG_KEYS, columns, strict=True)
                   for s, v in zip(steps, values, strict=True)]
        st.write_batch(Batch(big["id"], scalars=scalars), last_step=int(steps[-1]))
        done = min(first + chunk, steps_total) * len(BIG_KEYS)
        _say(progress, f"  {BIG_NAME}: {done:,}/{big_points:,} points "
                       f"({time.perf_counter() - started:.1f}s)")
    st.close()
    return big["id"]


# -- first frame: a real `wb tui` in a pseudo-terminal -----------------------------------


def _wb_command() -> list[str]:
    exe = shutil.which("wb") or str(Path(sys.executable).parent / "wb")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "workbench.cli"]


def first_frame(root: Path, config_home: Path, timeout: float = 30.0) -> float:
    """Seconds from starting `wb tui` in a 120x40 pty until the newest run's name has
    been written to the terminal; then `q`, and the process must exit."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "XDG_CONFIG_HOME": str(config_home),
           "COLUMNS": str(SIZE[0]), "LINES": str(SIZE[1])}
    env.pop("WB_STORE", None)
    needle = BIG_NAME.encode()
    seen = b""
    started = time.perf_counter()
    proc = subprocess.Popen([*_wb_command(), "tui", "--store", str(root)], stdin=slave,
                            stdout=slave, stderr=slave, env=env, start_new_session=True,
                            close_fds=True)
    os.close(slave)
    try:
        elapsed = None
        while elapsed is None:
            left = timeout - (time.perf_counter() - started)
            if left <= 0:
                raise RuntimeError(f"wb tui painted no runs table within {timeout:g}s; "
                                   f"last output: {seen[-300:]!r}")
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    raise RuntimeError(f"wb tui exited with {proc.returncode} before "
                                       f"painting: {seen[-300:]!r}")
                seen = (seen + chunk)[-4096:]
                if needle in seen:
                    elapsed = time.perf_counter() - started
        os.write(master, b"q")
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        if proc.wait(timeout=max(0.1, deadline - time.monotonic())) != 0:
            raise RuntimeError(f"wb tui exited with {proc.returncode} after q")
        return elapsed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(master)


# -- refresh: the run screen of the 1M-point run, in-process -----------------------------


async def _refresh(root: Path, big_id: str, samples: int) -> dict[str, Any]:
    # Through the app, not the screens package: the core never imports the screens.
    from workbench.app import WorkbenchApp

    app = WorkbenchApp(root)
    writer = Store(root)
    async with app.run_test(size=SIZE) as pilot:
        deadline = time.monotonic() + 30
        while app.runs_screen is None or not app.runs_screen.table.row_count:
            if time.monotonic() > deadline:
                raise RuntimeError("the runs screen did not fill within 30 s")
            await pilot.pause(0.05)
        # first_paint_s: enter on the big run (the newest: the first row) until its main
        # chart shows points (the newest ones first); open_run_s: until it has been
        # drawn again with the whole history.
        t0 = time.perf_counter()
        # Not awaited here: pilot.press returns only once the app is idle, which with a
        # loader thread is after the whole history; the loop below watches the screen.
        press = asyncio.ensure_future(pilot.press("enter"))
        screen, painted = None, None
        while time.monotonic() < deadline + 60:
            if getattr(app.screen, "run_id", None) == big_id:
                chart = app.screen.query("#main-chart")
                drawn = chart.first().drawn if chart else {}
                if painted is None and drawn and chart.first().build_count:
                    painted = time.perf_counter() - t0
                xs = [x for x, _ in drawn.values() if len(x)]
                whole = xs and min(x.min() for x in xs) <= 0.01 * max(x.max() for x in xs)
                if whole and not app.screen.loading and not app.screen.feed.partial:
                    screen = app.screen
                    break
            await asyncio.sleep(0.002)
        await press
        if screen is None:
            return {"refresh_error": "the big run's charts were not drawn within the limit"}
        opened = time.perf_counter() - t0
        # When a repaint ends: the screen's compositor refresh renders the widgets a
        # refresh dirtied (the charts). Instrumented here, for the bench only.
        paints: list[float] = []
        compositor_refresh = screen._compositor_refresh

        def timed_compositor_refresh() -> None:
            compositor_refresh()
            paints.append(time.perf_counter())

        screen._compositor_refresh = timed_compositor_refresh  # type: ignore[method-assign]
        step = writer.get_run(big_id)["last_step"] + 1
        calls: list[float] = []
        totals: list[float] = []
        attempts = 0
        while len(totals) < samples and attempts < samples * 3:
            attempts += 1
            now = time.time()
            rows = [(step + i, key, 1.5 + 0.01 * i, now, 0) for i in range(10) for key in BIG_KEYS]
            writer.write_batch(Batch(big_id, scalars=rows), last_step=step + 9)
            step += 10
            # No await between the write and the call: the screen's own timer cannot
            # consume the new points first.
            paints.clear()
            a = time.perf_counter()
            changed = screen.refresh_data()
            b = time.perf_counter()
            await pilot.pause()  # the app processes the updates and repaints
            if changed:
                c = paints[-1] if paints else b  # nothing visible changed: no repaint
                calls.append((b - a) * 1e3)
                totals.append((c - a) * 1e3)
            await pilot.pause()
        await pilot.press("q")
    writer.close()
    if not totals:
        return {"refresh_error": "RunScreen.refresh_data() never reported new data"}
    return {"refresh_ms": statistics.median(totals), "refresh_max_ms": max(totals),
            "refresh_data_ms": statistics.median(calls), "refresh_samples": len(totals),
            "open_run_s": opened, "first_paint_s": painted,
            "open_run_method": "in-process App.run_test (headless 120x40): from pressing "
                               "enter on the 1M-point run until its main chart is drawn"}


def bench_tui(quick: bool = False, progress: Console | None = None,
              tiny: bool = False) -> dict[str, Any]:
    """`tiny`: 10 runs and 20,000 points, one start, three refreshes (tests only: the
    figures then say nothing about the targets)."""
    starts = 1 if tiny else 3 if quick else 5
    samples = 3 if tiny else 10 if quick else 30
    runs, points = (10, 20_000) if tiny else (RUNS, BIG_POINTS)
    with tempfile.TemporaryDirectory(prefix="wb-bench-tui-") as tmp:
        root = Path(tmp) / "store"
        _say(progress, f"building a store of {runs} runs, one with {points:,} points")
        t0 = time.perf_counter()
        big_id = build_store(root, progress, runs=runs, big_points=points)
        built = time.perf_counter() - t0
        frames = []
        for i in range(starts):
            frames.append(first_frame(root, Path(tmp) / "config"))
            _say(progress, f"  wb tui start {i + 1}/{starts}: first frame {frames[-1]:.2f}s")
        _say(progress, f"live refreshes of {BIG_NAME}'s run screen ({samples} samples)")
        refresh = asyncio.run(_refresh(root, big_id, samples))
    result: dict[str, Any] = {
        "runs": runs,
        "big_run_points": points,
        "store_build_s": built,
        "first_frame_s": statistics.median(frames),
        "first_frame_max_s": max(frames),
        "first_frame_starts": len(frames),
        "first_frame_method": "subprocess `wb tui` in a 120x40 pty (TERM=xterm-256color), "
                              "until the newest run's name reaches the terminal",
        **refresh,
        "refresh_method": "in-process App.run_test (headless 120x40): "
                          "from RunScreen.refresh_data() after 40 new points to the end of "
                          "the repaint it causes",
        "target_first_frame_s": TARGET_FIRST_FRAME_S,
        "target_refresh_ms": TARGET_REFRESH_MS,
    }
    result["first_frame_ok"] = result["first_frame_s"] <= TARGET_FIRST_FRAME_S
    if "refresh_ms" in result:
        result["refresh_ok"] = result["refresh_ms"] <= TARGET_REFRESH_MS
    return result
