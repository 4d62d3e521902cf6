"""System metrics (`sys/...`, workbench/sysmetrics.py): sampled off the training thread
for SDK runs and launched runs (one sampler per run, over the whole process tree),
never moving the run's step, and shown in the run screen's System tab."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.widgets import Static, TabbedContent

from tests.helpers import until, wait_for, wb
from workbench.app import WorkbenchApp
from workbench.run_record import RunRecord
from workbench.screens.run import RunScreen
from workbench.screens.runs import RunsScreen
from workbench.screens.tabs.system import EMPTY, summary_text
from workbench.screens.widgets import LineChart
from workbench.store import Batch, Store
from workbench.sysmetrics import CPU, MEM, RSS, Gpus, ProcessTree, SystemSampler, gpu_key
from workbench.tracking import Run, init


@pytest.fixture(autouse=True)
def _sampling_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling on (whatever the caller's environment says), every 0.2 s unless a test
    says otherwise, so a test waits a second, not the default 5 s."""
    monkeypatch.delenv("WB_SYSTEM_METRICS", raising=False)
    monkeypatch.setenv("WB_SYSTEM_METRICS_INTERVAL", "0.2")


def values(store: Store, run_id: str, key: str) -> list[tuple[int, float, float]]:
    """(step, value, wall) of one key, in id order."""
    return [(s, v, w) for _, s, _, v, w in store.scalars(run_id, key)]


def burn(seconds: float) -> None:
    """Keep this thread on a core, so that a CPU reading has something to read."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- SDK runs --------------------------------------------------------------------------


def test_an_sdk_run_samples_its_process_without_moving_the_step(store: Store) -> None:
    run = init(name="sampled")
    sampler = run._sampler
    try:
        assert isinstance(sampler, SystemSampler) and sampler.is_alive()
        assert sampler.pid == os.getpid() and sampler.daemon
        run.log({"x": 1.0})  # step 0
        wait_for(lambda: burn(0.05) or len(values(store, run.id, CPU)) >= 3, 30,
                 "three samples")
        run.log({"x": 2.0})  # step 1: samples in between did not advance the step
    finally:
        run.finish()
    assert not sampler.is_alive()  # finish() stopped it
    cpu = values(store, run.id, CPU)
    rss = values(store, run.id, RSS)
    mem = values(store, run.id, MEM)
    assert len(cpu) == len(rss) == len(mem) >= 3
    assert max(v for _, v, _ in cpu) > 0  # the burning showed
    assert min(v for _, v, _ in rss) > 10  # MiB: a Python with numpy is bigger than that
    assert all(0 < v <= 100 for _, v, _ in mem)
    assert {s for s, _, _ in cpu} <= {0, 1}  # at the run's step, wherever it was
    assert [s for _, s, *_ in store.scalars(run.id, "x")] == [0, 1]
    assert store.get_run(run.id).last_step == 1
    rows = len(store.scalars(run.id))
    time.sleep(0.6)  # three intervals: nothing more comes after finish
    assert len(store.scalars(run.id)) == rows


def test_log_system_never_moves_the_step_and_is_quiet_after_finish(store: Store) -> None:
    row = store.create_run(kind="custom", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    run.log({"x": 1.0}, step=10)
    run.log_system({CPU: 50.0, RSS: float("nan")})  # at step 10; the NaN is left out
    run.log_system({CPU: 60.0}, step=3)  # an older step: must not set the run back
    run.log_system({CPU: 70.0}, step=99)  # a later one: must not advance it
    run.log({"x": 2.0})  # so this is step 11
    run.finish()
    run.log_system({CPU: 80.0})  # the sampler may race finish(): no error, no row
    assert [(s, v) for s, v, _ in values(store, run.id, CPU)] == [(10, 50.0), (3, 60.0),
                                                                  (99, 70.0)]
    assert values(store, run.id, RSS) == []
    assert [s for _, s, *_ in store.scalars(run.id, "x")] == [10, 11]
    assert store.get_run(run.id).last_step == 11


def test_who_samples(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the process that creates the run samples it: an attaching init (a launched
    script, a torchrun rank) does not, nor a disabled run, nor anyone under
    system_metrics=False or WB_SYSTEM_METRICS=0."""
    with init(name="owner") as owner:
        assert owner._sampler is not None
    monkeypatch.setenv("WB_RUN_ID", owner.id)
    with init() as attached:
        assert not attached.owner and attached._sampler is None
    with init(disabled=True) as disabled:
        assert disabled._sampler is None
    monkeypatch.delenv("WB_RUN_ID")
    with init(disabled=True) as disabled:
        assert disabled._sampler is None
    with init(name="opted-out", system_metrics=False) as opted_out:
        assert opted_out._sampler is None
    for off in ("0", "off", "false"):
        monkeypatch.setenv("WB_SYSTEM_METRICS", off)
        with init(name=f"quiet-{off}") as quiet:
            assert quiet._sampler is None


def test_the_process_tree_counts_children_born_between_samples() -> None:
    """A process born since the last sample counts all of its CPU time (psutil's
    cpu_percent would read 0 for it until primed), and its memory."""
    import subprocess
    import sys

    tree = ProcessTree()
    start = time.monotonic()
    assert CPU not in tree.sample()  # the first call primes
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nb = b'x' * (128 << 20)\n"
         "while time.process_time() < 0.6: pass\nprint('burnt', flush=True)\n"
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        assert child.pid in [p.pid for p in tree.processes()]
        sample = tree.sample()
        elapsed = time.monotonic() - start
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert sample[CPU] / 100 * elapsed >= 0.55  # CPU seconds: the child's 0.6 s are in
    assert sample[RSS] > 128


# -- launched runs ---------------------------------------------------------------------

SCRIPT = """\
import subprocess, sys, time
import workbench

run = workbench.init()
if run._sampler is not None:
    sys.exit("the attached init started a second sampler")
for step in range(3):
    run.log({"train/loss": 1.0 / (step + 1)}, step=step)
    time.sleep(0.5)
child = subprocess.Popen([sys.executable, "-c",
                          "import time; b = b'x' * (256 << 20); time.sleep(2.5)"])
for step in range(3, 8):
    run.log({"train/loss": 1.0 / (step + 1)}, step=step)
    time.sleep(0.5)
child.wait()
"""


def test_a_launched_run_has_one_sampler_over_its_process_tree(tmp_path: Path,
                                                               store_dir: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    spec = tmp_path / "sampled.toml"
    spec.write_text('kind = "script"\n\n[script]\ncommand = ["python", "train.py"]\n')
    interval = 0.5
    run_id = wb("launch", str(spec), "--detach", check=True, timeout=60,
                env={"WB_SYSTEM_METRICS_INTERVAL": str(interval)}).stdout.strip()

    def ended() -> RunRecord | None:
        with Store(store_dir, create=False) as st:
            row = st.get_run(run_id)
        return row if not row.is_active else None

    row = wait_for(ended, 120, "the launched run to end")
    log = (store_dir / run_id / "stdout.log").read_text()
    assert row.status == "finished", log
    with Store(store_dir, create=False) as st:
        cpu, rss = values(st, run_id, CPU), values(st, run_id, RSS)
        stage = st.events(run_id, kind="stage")
        sys_rows = [r for r in st.scalars(run_id) if r[2].startswith("sys/")]
    assert len(cpu) == len(rss) >= 4, log
    walls = [w for _, _, w in cpu]
    gaps = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    # One sampler: samples an interval apart. A second one would interleave its own,
    # leaving gaps of at most half an interval (and twice the rows).
    assert min(gaps) > interval / 2, gaps
    assert len(cpu) <= (row.ended - row.started) / interval + 2
    pairs = [(r[1], r[2], r[4]) for r in sys_rows]
    assert len(pairs) == len(set(pairs))  # no (step, key, wall) twice
    # The worker's tree includes the script's own subprocess: its 256 MiB show.
    assert max(v for _, v, _ in rss) - min(v for _, v, _ in rss) > 200
    assert max(v for _, v, _ in cpu) > 0
    # At the step the script reached (read from the store), never past the last one.
    steps = [s for s, _, _ in cpu]
    assert steps == sorted(steps) and max(steps) >= 3 and max(steps) <= 7
    assert row.last_step == 7
    assert walls[-1] <= stage[-1].wall  # stopped before the run's ending was written


# -- GPUs ------------------------------------------------------------------------------


class StandInNVMLError(Exception):
    """What pynvml raises (NVMLError_NotSupported and friends)."""


def stand_in_nvml(devices: list[dict[str, float | None]], fail_init: bool = False) -> Any:
    """A stand-in for the pynvml module, with the functions sysmetrics calls: this
    machine has no GPU (and no NVML), so the real module cannot be exercised here."""
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise StandInNVMLError("NVML Shared Library Not Found")

    def temperature(handle: dict[str, float | None], sensor: int) -> float:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        if handle["temp"] is None:
            raise StandInNVMLError("Not Supported")
        return handle["temp"]

    return SimpleNamespace(
        calls=calls,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: devices[i],
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=h["util"], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=h["used"], total=80 << 30,
                                                          free=(80 << 30) - h["used"]),
        nvmlDeviceGetTemperature=temperature,
    )


def test_gpu_metrics_through_nvml(capfd: pytest.CaptureFixture[str]) -> None:
    nvml = stand_in_nvml([{"util": 97, "used": 40 << 30, "temp": 71},
                          {"util": 3, "used": 512 << 20, "temp": None}])  # no sensor
    gpus = Gpus.open(nvml)
    assert gpus is not None
    assert gpus.read() == {
        "sys/gpu0/util": 97.0, "sys/gpu0/mem_mib": 40960.0, "sys/gpu0/temp_c": 71.0,
        "sys/gpu1/util": 3.0, "sys/gpu1/mem_mib": 512.0}  # gpu1's temperature left out
    gpus.close()
    assert nvml.calls == ["init", "shutdown"]
    assert gpu_key(1, "temp_c") == "sys/gpu1/temp_c"
    assert capfd.readouterr() == ("", "")


def test_no_nvml_or_no_gpu_means_no_gpu_metrics_and_no_noise(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    assert Gpus.open(stand_in_nvml([], fail_init=True)) is None  # no driver
    empty = stand_in_nvml([])
    assert Gpus.open(empty) is None and empty.calls == ["init", "shutdown"]  # no GPU
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # not installed
    assert Gpus.open() is None
    assert capfd.readouterr() == ("", "")


def test_the_sampler_logs_gpu_metrics(store: Store) -> None:
    row = store.create_run(kind="custom", status="running", launcher="sdk")
    run = Run(store, row, owner=True)
    nvml = stand_in_nvml([{"util": 55, "used": 1 << 30, "temp": 60}])
    sampler = SystemSampler(run, interval=0.1, first=0.05, nvml=nvml)
    sampler.start()
    try:
        wait_for(lambda: sampler.samples >= 2, 30, "two samples")
    finally:
        sampler.stop()
        run.finish()
    assert not sampler.is_alive() and nvml.calls == ["init", "shutdown"]
    assert {v for _, v, _ in values(store, run.id, "sys/gpu0/util")} == {55.0}
    assert {v for _, v, _ in values(store, run.id, "sys/gpu0/temp_c")} == {60.0}
    assert {v for _, v, _ in values(store, run.id, "sys/gpu0/mem_mib")} == {1024.0}


# -- the System tab --------------------------------------------------------------------

SIZE = (80, 24)  # the size the dashboard must work at


def system_run(store: Store, gpus: int = 2) -> str:
    """A finished run with ten samples 5 s apart, written with fixed walls."""
    row = store.create_run(kind="custom", name="sys", status="finished", launcher="sdk")
    t0 = 1_700_000_000.0
    rows = []
    for n in range(10):
        wall = t0 + 5 * n
        rows += [(n, CPU, 100.0 + 5 * n, wall, 0), (n, RSS, 1000.0 + 20 * n, wall, 0),
                 (n, MEM, 42.0, wall, 0)]
        for i in range(gpus):
            rows += [(n, gpu_key(i, "util"), 97.0 - i, wall, 0),
                     (n, gpu_key(i, "mem_mib"), 40960.0, wall, 0),
                     (n, gpu_key(i, "temp_c"), 71.0, wall, 0)]
    rows.append((9, "train/loss", 1.0, t0, 0))
    store.write_batch(Batch(row.id, scalars=rows), last_step=9)
    return row.id


def open_run(store_dir: Path, run_id: str, body: Any) -> None:
    async def main() -> None:
        app = WorkbenchApp(store_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), 5, "runs screen")
            screen = RunScreen(run_id)
            app.push_screen(screen)
            await until(pilot, lambda: app.screen is screen, 5, "the run screen")
            await pilot.pause(0.3)
            await body(app, pilot, screen)

    asyncio.run(main())


def test_the_system_tab_shows_the_latest_values_and_charts_at_80x24(
        store: Store, store_dir: Path) -> None:
    run_id = system_run(store)

    async def body(app: WorkbenchApp, pilot: Any, screen: RunScreen) -> None:
        tabs = screen.query_one(TabbedContent)
        assert tabs.get_tab("tab-system").display
        await pilot.press("6")  # Overview, Metrics, Events, Logs, Config, System
        await until(pilot, lambda: tabs.active == "tab-system", 5, "the System tab")
        await pilot.pause(0.3)
        summary = screen.query_one("#sys-summary", Static)
        text = str(summary.render())
        for part in ("cpu 145% (1.4 cores)", "rss 1.15 GiB", "machine mem 42%", "step 9",
                     "gpu0 97% 40 GiB 71°C", "gpu1 96% 40 GiB 71°C"):
            assert part in text, text
        cpu = screen.query_one("#sys-cpu", LineChart)
        x, y = cpu.points("cpu %")
        assert x.tolist() == [5.0 * n for n in range(10)] and y[-1] == 145.0
        assert cpu.x_label == "seconds"
        assert screen.query_one("#sys-rss", LineChart).points("rss MiB")[1][-1] == 1180.0
        util = screen.query_one("#sys-gpu-util", LineChart)
        assert util.series_names == ["gpu0", "gpu1"]
        assert screen.query_one("#sys-gpu-mem", LineChart).series_names == ["gpu0", "gpu1"]
        # Everything fits at 80x24: on screen, above the footer, charts tall enough to read.
        for widget in (summary, cpu, util, screen.query_one("#sys-rss", LineChart)):
            region = widget.region
            assert region.height >= (2 if widget is summary else 6), (widget.id, region)
            assert region.right <= SIZE[0] and region.bottom <= SIZE[1] - 1, widget.id
            assert cpu.build_count >= 1

    open_run(store_dir, run_id, body)


def test_the_system_tab_without_gpus_and_a_run_without_system_metrics(
        store: Store, store_dir: Path) -> None:
    cpu_only = system_run(store, gpus=0)
    plain = store.create_run(kind="custom", name="plain", status="finished", launcher="sdk")
    store.write_batch(Batch(plain.id, scalars=[(0, "loss", 1.0, 0.0, 0)]), last_step=0)

    async def no_gpus(app: WorkbenchApp, pilot: Any, screen: RunScreen) -> None:
        await pilot.press("6")  # Overview, Metrics, Events, Logs, Config, System
        await pilot.pause(0.3)
        assert screen.query_one("#sys-charts").display
        assert not screen.query_one("#sys-gpu-charts").display
        assert "gpu" not in str(screen.query_one("#sys-summary", Static).render())
        assert screen.query_one("#sys-cpu", LineChart).region.height >= 12  # the room

    async def none(app: WorkbenchApp, pilot: Any, screen: RunScreen) -> None:
        tabs = screen.query_one(TabbedContent)
        assert not tabs.get_tab("tab-system").display
        said: list[str] = []
        screen.notify = lambda message, **_: said.append(message)  # type: ignore[method-assign]
        await pilot.press("6")  # Overview, Metrics, Events, Logs, Config, System
        await pilot.pause(0.2)
        assert said == ["no tab 6: this custom run shows Overview, Metrics, Events, Logs, "
                        "Config"] and tabs.active == "tab-overview"

    open_run(store_dir, cpu_only, no_gpus)
    open_run(store_dir, plain.id, none)


def test_summary_keeps_eight_gpus_to_a_few_lines() -> None:
    latest = {CPU: 812.0, RSS: 20480.0, MEM: 61.0}
    for i in range(8):
        latest.update({gpu_key(i, "util"): 100.0, gpu_key(i, "mem_mib"): 81000.0,
                       gpu_key(i, "temp_c"): 85.0})
    lines = summary_text(latest, 1200, 78).plain.split("\n")
    assert len(lines) == 4 and all(len(line) <= 78 for line in lines)  # 3 GPUs a line
    assert lines[0] == "cpu 812% (8.1 cores)   rss 20 GiB   machine mem 61%   step 1200"
    assert lines[1].startswith("gpu0 100% 79.1 GiB 85°C")
    assert str(summary_text({}, None, 80)) == EMPTY

