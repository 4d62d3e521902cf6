"""The mirror of a remote run: `python -m workbench.launch.mirror RUN_ID`.

It streams `wb export RUN --since CURSOR --follow` from the run's host over ssh
and writes the records into the local store, each batch in one transaction with
the remote id it has reached (`Store.write_batch(mirror_cursor=...)`). A dropped
connection therefore costs nothing: the mirror reconnects with backoff and asks
for the records past its cursor, so the copy has no gap and no duplicate. Run
lines of the stream carry the remote status and step into the local row. The
run's output is mirrored beside it by `wb logs RUN --offset SIZE --follow`: the
local file's size is that stream's cursor.

One mirror per run (an exclusive lock on `RUN/mirror.lock`); it ends when the
remote run has ended and every record is copied, when the host no longer has the
run, or after GIVE_UP_S without a connection (`wb mirror RUN` starts it again).
Its own output goes to `RUN/mirror.log`.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

from workbench.export import batch_of
from workbench.hosts import Host, HostError, get_host
from workbench.store import ACTIVE_STATUSES, Store, StoreError

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
GIVE_UP_S = 600.0  # offline this long: stop retrying
FLUSH_ROWS = 2000  # records per transaction at most
IDLE_S = 0.05  # a batch is written once the stream pauses this long
LOG_JOIN_S = 30.0  # once the records are done, how long the output may take to finish
RUN_FIELDS = ("status", "started", "ended", "exit_code", "last_step", "total_steps", "pid")


class Mirror:
    """Copies one remote run into the local store until it has ended."""

    def __init__(self, store: Store, run_id: str, host: Host | None = None,
                 log: IO[str] | None = None):
        self.store, self.run_id = store, run_id
        self.host = host or get_host(store.get_run(run_id).host)
        self.log = log or sys.stdout
        self.status: str | None = None
        self.connections = 0

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} mirror {self.run_id}: {text}", file=self.log,
              flush=True)

    def run(self, give_up_s: float = GIVE_UP_S, logs: bool = True) -> str:
        """Stream, reconnecting with backoff, until the run has ended; returns why it
        stopped: `done`, `gone` (the host has no such run) or `gave up`."""
        stop = threading.Event()
        copier = threading.Thread(target=self.copy_log, args=(stop,), name="wb-mirror-log",
                                  daemon=True)
        if logs:
            copier.start()
        try:
            outcome, error = self._run_records(give_up_s)
        finally:
            stop.set()
        if logs and outcome == "done":
            copier.join(timeout=LOG_JOIN_S)  # the output's last lines
        # Recorded after the output's copy: a mirror that reads `done` has all of it.
        self.store.set_mirror(self.run_id, state=outcome, error=error)
        self.say(outcome if not error else f"{outcome}: {error}")
        return outcome

    def copy_log(self, stop: threading.Event) -> None:
        """Mirror the run's stdout.log until the run has ended (the remote `wb logs
        --follow` exits 0) or `stop`; reconnects like the records stream."""
        path = self.store.run_dir(self.run_id) / "stdout.log"
        failures = 0
        while not stop.is_set():
            offset = path.stat().st_size if path.exists() else 0
            command = self.host.wb("logs", self.run_id, "--offset", str(offset), "--follow")
            proc = subprocess.Popen(self.host.ssh_argv(command), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                while chunk := proc.stdout.read1(1 << 16):
                    os.write(fd, chunk)
                    failures = 0
            finally:
                os.close(fd)
            if proc.wait() in (0, 2):  # all of it copied, or the host has no such run
                return
            stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    def _run_records(self, give_up_s: float) -> tuple[str, str | None]:
        """Stream the records until the run has ended; (outcome, error) for run()."""
        failures, offline_since = 0, None
        while True:
            outcome, error, got_data = self.stream_once()
            if outcome in ("done", "gone"):
                return outcome, error
            if got_data:
                failures, offline_since = 0, None
            offline_since = offline_since or time.monotonic()
            if time.monotonic() - offline_since > give_up_s:
                return "gave up", f"offline for {give_up_s:.0f} s: {error}"
            wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            self.store.set_mirror(self.run_id, state="reconnecting", error=error)
            self.say(f"connection lost ({error}); retrying in {wait:g} s")
            time.sleep(wait)

    def stream_once(self) -> tuple[str, str | None, bool]:
        """One ssh connection: copy until it ends. Returns (outcome, error, got_data),
        outcome `done`, `gone` or `retry`."""
        cursor = self.store.mirror(self.run_id)["cursor"]
        command = self.host.wb("export", self.run_id, "--since", str(cursor), "--follow")
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(self.host.ssh_argv(command), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            self.connections += 1
            self.store.set_mirror(self.run_id, pid=os.getpid(), state="connected", error=None)
            got_data = self._copy(proc)
            code = proc.wait()
            err.seek(0)
            lines = [x for x in err.read().splitlines() if x.strip()]
        error = lines[-1].removeprefix("error: ") if lines else (f"exit code {code}"
                                                                  if code else None)
        if code == 0 and self.status not in ACTIVE_STATUSES:
            return "done", None, got_data
        if code == 2:  # the remote `wb` refused: the run is not (or no longer) there
            return "gone", error, got_data
        return "retry", error or "stream ended early", got_data

    def _copy(self, proc: subprocess.Popen[str]) -> bool:
        """Read the stream, writing records in batches and run lines as they come."""
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, name="wb-mirror-read", daemon=True).start()
        pending: list[dict[str, Any]] = []
        got_data, ended = False, False
        while not ended:
            try:
                line = lines.get(timeout=IDLE_S if pending else 1.0)
            except queue.Empty:
                self._flush(pending)
                continue
            if line is None:
                ended = True
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the last line of a cut connection
                continue
            got_data = True
            if rec.get("type") == "run":
                self._flush(pending)
                self._apply_run(rec)
            else:
                pending.append(rec)
                if len(pending) >= FLUSH_ROWS:
                    self._flush(pending)
        self._flush(pending)
        return got_data

    def _flush(self, pending: list[dict[str, Any]]) -> None:
        if not pending:
            return
        steps = [r["step"] for r in pending if r.get("step") is not None]
        self.store.write_batch(batch_of(self.run_id, pending),
                               last_step=max(steps) if steps else None,
                               mirror_cursor=pending[-1]["id"])
        pending.clear()

    def _apply_run(self, rec: dict[str, Any]) -> None:
        fields = {k: rec.get(k) for k in RUN_FIELDS if k in rec}
        self.status = fields.get("status", self.status)
        self.store.update_run(self.run_id, heartbeat=time.time(), **fields)


def spawn(store: Store, run_id: str) -> subprocess.Popen[bytes]:
    """Start the mirror of `run_id` as a detached process (its log in the run folder)."""
    env = {**os.environ, "WB_STORE": str(store.root.resolve()), "PYTHONUNBUFFERED": "1"}
    path = store.run_dir(run_id) / "mirror.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "workbench.launch.mirror", run_id],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)


def alive(store: Store, run_id: str) -> bool:
    """Whether the run's mirror process is running (its lock is held)."""
    try:
        fd = os.open(store.run_dir(run_id) / "mirror.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ensure(store: Store, run_id: str) -> subprocess.Popen[bytes] | None:
    """Start the mirror unless one is running; None when one already was."""
    return None if alive(store, run_id) else spawn(store, run_id)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_id = argv[0]
    store = Store(os.environ.get("WB_STORE"), create=False)
    fd = os.open(store.run_dir(run_id) / "mirror.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"mirror {run_id}: another mirror is running", flush=True)
        return 0
    try:
        mirror = Mirror(store, run_id)
    except (HostError, StoreError) as exc:
        print(f"mirror {run_id}: {exc}", flush=True)
        return 2
    mirror.say(f"started (pid {os.getpid()}, host {mirror.host.name})")
    return 0 if mirror.run() == "done" else 1


__all__ = ["Mirror", "spawn", "ensure", "alive"]


if __name__ == "__main__":
    sys.exit(main())
