"""System metrics: CPU, memory and GPUs of a run's process tree, sampled off the training thread.

Why: a run that slows down, swaps or runs its GPU cold is diagnosed from the machine's
side, next to its loss curve, as in W&B's system panel. A daemon thread samples every
`interval` seconds (default 5; the first sample comes after min(interval, 2 s)) and logs
through `Run.log_system`, which records the values at the run's current step without
moving it: the training loop's step, `last_step` and the ETA stay the training loop's.

Metric names (stable; the dashboard's System tab and tests rely on them):

- `sys/cpu_percent`  CPU of the run's process tree (the process and all its descendants:
  torchrun ranks, a script's subprocesses), percent of ONE core, summed over the tree
  (250 = two and a half cores busy), as `top` shows it.
- `sys/rss_mib`      resident memory of the tree, MiB (sum of RSS: pages shared between
  processes count once per process).
- `sys/mem_percent`  memory in use on the whole machine, percent.
- `sys/gpu{i}/util`     GPU i busy, percent (NVML's utilization rate);
- `sys/gpu{i}/mem_mib`  memory used on GPU i, MiB (the whole device, every process);
- `sys/gpu{i}/temp_c`   GPU i temperature, Celsius.
  `i` is the NVML index, as `nvidia-smi` numbers the GPUs. GPU metrics need NVML
  (`pynvml` from the nvidia-ml-py package, the `gpu` extra); without it, or without a
  GPU, they are left out without a word. A metric a device does not support (MIG
  slices have no utilization) is left out for that device.

Exactly one sampler per run: the process that owns the run's lifetime samples it.
- `workbench.init()` starts one when it CREATES a run (an SDK run), unless the run is
  disabled.
- A launched run's worker (launch/worker.py) starts one over its whole process tree.
  The worker's children attach to its run (WB_RUN_ID), and an attaching `init()`
  never samples: the worker already counts them.
- A run attached from outside any worker is sampled by whoever created it, or not at all.

Opt out with `WB_SYSTEM_METRICS=0` (also `false`, `no`, `off`) in the environment of the
process that would sample (for `wb launch`, the environment it runs in: the worker
inherits it). `WB_SYSTEM_METRICS_INTERVAL=SECONDS` changes the interval.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

try:
    import psutil
except ImportError:  # a declared dependency; a broken install must not break logging
    psutil = None  # type: ignore[assignment]

ENV_SWITCH = "WB_SYSTEM_METRICS"
ENV_INTERVAL = "WB_SYSTEM_METRICS_INTERVAL"
DEFAULT_INTERVAL = 5.0
FIRST_SAMPLE_S = 2.0  # the first sample waits for min(interval, this)
MIB = 1024 * 1024
CREATE_SLACK_S = 2.0  # psutil's create_time can read up to ~1 s early (boot time in seconds)
PREFIX = "sys/"
CPU, RSS, MEM = "sys/cpu_percent", "sys/rss_mib", "sys/mem_percent"
GPU_FIELDS = ("util", "mem_mib", "temp_c")


class SampledRun(Protocol):
    """What the sampler needs of a run: `workbench.tracking.Run` provides it.

    A Protocol here, so that this module never imports tracking.py (which starts the
    sampler: tests/test_layout.py refuses the cycle). A `disabled` attribute, when
    present and true, means nothing is sampled.
    """

    @property
    def id(self) -> str: ...

    @property
    def step(self) -> int: ...

    def log_system(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


def gpu_key(index: int, field: str) -> str:
    """`sys/gpu{index}/{field}`, field one of GPU_FIELDS."""
    return f"sys/gpu{index}/{field}"


def enabled(environ: dict[str, str] | None = None) -> bool:
    """False when WB_SYSTEM_METRICS turns sampling off (0, false, no, off)."""
    value = (environ if environ is not None else os.environ).get(ENV_SWITCH, "")
    return value.strip().lower() not in ("0", "false", "no", "off")


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    """WB_SYSTEM_METRICS_INTERVAL in seconds; `default` when unset or not a positive number."""
    raw = os.environ.get(ENV_INTERVAL)
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 and value == value else default


# -- the process tree ------------------------------------------------------------------


class ProcessTree:
    """CPU and RSS of one process and all its descendants, measured between calls.

    CPU comes from deltas of each process's cumulative CPU time rather than from
    `psutil.Process.cpu_percent()`, which needs each object primed and kept: ranks and
    subprocesses come and go between samples, and a process born since the last
    sample would read 0% for its first interval. Here a process created after the
    previous sample counts all of its CPU time; one seen before counts its increase.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._root = psutil.Process(self.pid)
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, created) -> CPU seconds
        self._last_wall: float | None = None  # time.time() of the previous sample
        self._last_mono = 0.0

    def processes(self) -> list[Any]:
        """The root process and its live descendants (psutil.Process objects)."""
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.Error:  # the root itself is gone
            return []

    def sample(self) -> dict[str, float]:
        """`sys/rss_mib`, and `sys/cpu_percent` over the time since the previous call (not
        on the first call, which only primes). Empty when the root process is gone."""
        now_wall, now_mono = time.time(), time.monotonic()
        cpu_delta, rss, seen = 0.0, 0, {}
        procs = self.processes()
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    resident = proc.memory_info().rss
                    created = proc.create_time()
            except psutil.Error:  # exited (or became a zombie) while we looked
                continue
            used = times.user + times.system
            key = (proc.pid, created)
            before = self._cpu.get(key)
            if before is None:
                # Born since the last sample: all its CPU time is new. Seen for the
                # first time but older (the first call, a reparented process): none is.
                # Linux create times sit on a whole-second boot time: allow the slack.
                new = self._last_wall is not None and created >= self._last_wall - CREATE_SLACK_S
                before = 0.0 if new else used
            cpu_delta += max(0.0, used - before)
            seen[key] = used
            rss += resident
        if not seen:
            return {}
        values = {RSS: rss / MIB}
        if self._last_wall is not None and now_mono > self._last_mono:
            values[CPU] = 100.0 * cpu_delta / (now_mono - self._last_mono)
        self._cpu = seen
        self._last_wall, self._last_mono = now_wall, now_mono
        return values


def machine_memory() -> dict[str, float]:
    """`sys/mem_percent` of the whole machine."""
    try:
        return {MEM: float(psutil.virtual_memory().percent)}
    except (psutil.Error, OSError):
        return {}


# -- GPUs through NVML -----------------------------------------------------------------


def _import_pynvml() -> Any:
    """pynvml, quietly: the deprecated `pynvml` wrapper package warns on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("pynvml")


class Gpus:
    """Per-GPU utilization, memory and temperature through an initialised NVML module.

    `open()` returns None where NVML is missing, fails to initialise or sees no GPU:
    a CPU machine logs no GPU metrics and prints nothing about it.
    """

    def __init__(self, nvml: Any, handles: list[tuple[int, Any]]) -> None:
        self.nvml = nvml
        self.handles = handles

    @classmethod
    def open(cls, module: Any = None) -> Gpus | None:
        """Initialise NVML (`module`: a pynvml-like module; default: import pynvml)."""
        try:
            nvml = module if module is not None else _import_pynvml()
            nvml.nvmlInit()
        except Exception:  # ImportError, NVMLError (no driver), anything else: no GPUs
            return None
        try:
            handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i))
                       for i in range(int(nvml.nvmlDeviceGetCount()))]
        except Exception:
            handles = []
        gpus = cls(nvml, handles)
        if not handles:
            gpus.close()
            return None
        return gpus

    def read(self) -> dict[str, float]:
        """The `sys/gpu{i}/...` values; a metric that fails for a device is left out."""
        nvml, out = self.nvml, {}
        for index, handle in self.handles:
            readers: tuple[tuple[str, Callable[[], float]], ...] = (
                ("util", lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                ("mem_mib", lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h).used / MIB),
                ("temp_c", lambda h=handle: nvml.nvmlDeviceGetTemperature(
                    h, nvml.NVML_TEMPERATURE_GPU)),
            )
            for field, read in readers:
                try:
                    out[gpu_key(index, field)] = float(read())
                except Exception:  # NVMLError_NotSupported (MIG, vGPU), a lost device
                    continue
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


# -- the sampler thread ----------------------------------------------------------------


class SystemSampler(threading.Thread):
    """A daemon thread that logs the `sys/...` metrics of a process tree into a run.

    `step`: where the samples go (default: the run's current step, see
    `Run.log_system`). `nvml`: a pynvml-like module (tests pass a stand-in); default:
    pynvml, imported in the thread, so a slow NVML start never delays `init()`.
    """

    def __init__(self, run: SampledRun, *, interval: float = DEFAULT_INTERVAL,
                 pid: int | None = None, step: Callable[[], int | None] | None = None,
                 nvml: Any = None, first: float | None = None) -> None:
        super().__init__(name=f"wb-sysmetrics-{run.id}", daemon=True)
        self.run_ref = run
        self.interval = float(interval)
        self.first = min(self.interval, FIRST_SAMPLE_S) if first is None else float(first)
        self.pid = os.getpid() if pid is None else pid
        self.samples = 0  # samples logged so far (read by tests)
        self._step = step
        self._nvml = nvml
        self._halt = threading.Event()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling and wait for the thread (bounded). Safe to call more than once,
        and before the thread started."""
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        gpus: Gpus | None = None
        try:
            tree = ProcessTree(self.pid)
            tree.sample()  # primes the CPU deltas
            gpus = Gpus.open(self._nvml)
            wait = self.first
            while not self._halt.wait(wait):
                wait = self.interval
                values = {**tree.sample(), **machine_memory()}
                if gpus is not None:
                    values.update(gpus.read())
                if CPU not in values and RSS not in values:
                    return  # the process tree is gone: nothing of the run left to sample
                step = self._step() if self._step is not None else None
                self.run_ref.log_system(values, step=step)
                self.samples += 1
        except Exception as exc:  # a bug here must not take the run down; say it once
            print(f"workbench: system metrics of run {self.run_ref.id} stopped: {exc!r}",
                  file=sys.stderr)
        finally:
            if gpus is not None:
                gpus.close()
            close = getattr(self._step, "close", None)
            if close is not None:
                close()


class StoreStep:
    """The step of a launched run as the store knows it (`last_step`), at least `run.step`.

    A worker whose recipe runs in other processes (a script, torchrun ranks) logs
    nothing itself, so its own `Run.step` stays 0; the ranks' writers move the run's
    `last_step` in the store. Reads through a connection of its own, opened in the
    sampler's thread, so it never shares the worker's.
    """

    def __init__(self, run: SampledRun, root: Path) -> None:
        self.run = run
        self.root = root
        self._store: Any = None

    def __call__(self) -> int:
        step = self.run.step
        try:
            if self._store is None:
                from workbench.store import Store

                self._store = Store(self.root, create=False)
            stored = self._store.last_step(self.run.id)
        except Exception:  # a locked or missing store or run: the run's own step will do
            return step
        return max(step, int(stored)) if stored is not None else step

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def start_sampler(run: SampledRun, *, interval: float | None = None, pid: int | None = None,
                  step: Callable[[], int | None] | None = None,
                  nvml: Any = None) -> SystemSampler | None:
    """Start sampling `pid`'s process tree (default: this process) into `run`.

    Returns the started sampler, or None when sampling is off (WB_SYSTEM_METRICS=0),
    the run is disabled, or psutil is missing. `interval`: default
    WB_SYSTEM_METRICS_INTERVAL, else 5 s. Stop it with `stop()`; `Run.finish()` stops
    the one `init()` started.
    """
    if psutil is None or getattr(run, "disabled", False) or not enabled():
        return None
    sampler = SystemSampler(run, interval=interval or interval_from_env(), pid=pid,
                            step=step, nvml=nvml)
    sampler.start()
    return sampler
