"""`wb ls` parses its own options (workbench/cli/__init__.py `_ls_fast`) and reads the store
without sqlite_utils, so it starts in about half the time (issue 20 item 6). These tests
hold it to what Typer's path prints, byte for byte."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wb_inproc
from workbench import cli
from workbench.render import key_metric
from workbench.store import Batch, Store, flag_of

ARGS = [
    (), ("--json",), ("--status", "finished"), ("--status=running", "--json"),
    ("-k", "rl"), ("--kind=pretrain",), ("-g", "sweep-1"), ("--group", "sweep-1", "--json"),
    ("--status", "lost"), ("--kind", "nothing"), ("--status", "bogus"), ("--group", "nope"),
]


@pytest.fixture
def varied(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Runs of several kinds, statuses and groups, with spikes, NaN and inf values, and a
    running run with an eta; the clock frozen so ages and etas print the same twice."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    for i in range(12):
        kind = ("pretrain", "rl", "script")[i % 3]
        status = ("finished", "failed", "running", "stopped")[i % 4]
        row = store.create_run(kind=kind, status=status, launcher="sdk", total_steps=100,
                               group="sweep-1" if i % 5 == 0 else None,
                               pid=2**22 + 7 if i == 6 else None)  # a dead pid: lost
        value = (1.0 / (i + 1), math.nan, math.inf)[i % 3]
        rows = [(s, key_metric(kind), value, now, flag_of(value)) for s in range(5)]
        events = [(3, "loss_spike", "warning", "{}", now)] * (i % 2)
        store.write_batch(Batch(row.id, scalars=rows, events=events), last_step=4)
    return store


def _typer_path(monkeypatch: pytest.MonkeyPatch, *args: str) -> subprocess.CompletedProcess:
    with monkeypatch.context() as m:
        m.setattr(cli, "_ls_fast", lambda argv: None)
        return wb_inproc("ls", *args)


@pytest.mark.parametrize("args", ARGS, ids=" ".join)
def test_fast_ls_prints_what_typer_prints(varied: Store, monkeypatch: pytest.MonkeyPatch,
                                          args: tuple[str, ...]) -> None:
    fast = wb_inproc("ls", *args)
    slow = _typer_path(monkeypatch, *args)
    assert (fast.returncode, fast.stdout, fast.stderr) == \
        (slow.returncode, slow.stdout, slow.stderr)


def test_fast_ls_is_the_path_taken_and_correct(varied: Store) -> None:
    assert cli._ls_fast(["ls", "--status", "running", "-g", "x", "--kind=rl", "--json",
                         "--store", "s"]) == {
        "status": "running", "group": "x", "kind": "rl", "as_json": True, "store": Path("s")}
    for argv in (["ls", "--help"], ["ls", "-h"], ["ls", "--bogus"], ["ls", "extra"],
                 ["ls", "--status"], ["ls", "--status", "--json"], ["ls", "--store="],
                 ["ls", "--json", "--json"], ["ls", "-k", "a", "--kind", "b"], ["show", "x"],
                 ["ls", "--json=1"], []):
        assert cli._ls_fast(argv) is None, argv
    rows = json.loads(wb_inproc("ls", "--json", check=True).stdout)
    assert [r["id"] for r in rows] == [r.id for r in varied.runs()]
    assert rows[6]["status"] == "lost"
    assert rows[1]["key_metric"] == {"key": key_metric("rl"), "value": None}  # NaN
    assert rows[0]["event_counts"] == {} and rows[1]["event_counts"] == {"loss_spike": 1}
    lines = wb_inproc("ls", check=True).stdout.splitlines()
    assert lines[0].split() == ["id", "name", "group", "kind", "status", "host", "step",
                                "metric", "spikes", "age", "eta"]
    assert len(lines) == 13 and all(r["id"] in line for r, line in zip(rows, lines[1:],
                                                                        strict=True))
    assert "inf" in lines[3] and "nan" in lines[2]
    usage = wb_inproc("ls", "--bogus")  # not the fast path: Typer's one-line usage error
    assert usage.returncode == 2 and "--bogus" in usage.stderr


@pytest.mark.parametrize("width", [40, 90, 200])
@pytest.mark.parametrize("terminal", [False, True])
def test_ls_prints_what_a_plain_print_of_the_table_prints(
        varied: Store, monkeypatch: pytest.MonkeyPatch, width: int, terminal: bool) -> None:
    """`wb ls` skips rich's word wrapping when every line fits (soft_wrap): the same
    characters and colours as printing the table plainly, wide or narrow."""
    import io

    from rich.console import Console

    from workbench.render import runs_table

    def console() -> Console:
        return Console(file=io.StringIO(), width=width, force_terminal=terminal,
                       color_system="truecolor" if terminal else None)

    monkeypatch.setattr(cli.common, "console", console())
    cli.ls_(store=varied.root)
    reference = console()
    reference.print(runs_table(varied, varied.runs()))
    assert cli.common.console.file.getvalue() == reference.file.getvalue()
    if width == 40:  # too narrow: the lines wrapped
        assert len(reference.file.getvalue().splitlines()) > 13


def test_runs_table_styles_the_header_and_each_status_cell(varied: Store) -> None:
    """runs_table builds its Text from the plain string and spans, as the per-cell
    appends it replaced made them: one bold span per header cell, one span per status
    cell (padding included), nothing else styled."""
    from workbench.render import STATUS_STYLE, runs_table

    rows = varied.runs()
    text = runs_table(varied, rows)
    assert (text.no_wrap, text.overflow) == (True, "ellipsis")
    lines = text.plain.split("\n")
    header_end = len(lines[0])
    header = [s for s in text.spans if s.start < header_end]
    assert [text.plain[s.start:s.end].strip() for s in header] == lines[0].split()
    assert all(s.style == "bold" for s in header)
    body = [s for s in text.spans if s.start > header_end]
    assert len(body) == len(rows)
    status_col = lines[0].index("status")
    start = header_end + 1
    for row, line, span in zip(rows, lines[1:], body, strict=True):
        assert span.start == start + status_col
        assert text.plain[span.start:span.end].rstrip() == row.status
        assert span.style == STATUS_STYLE[row.status]
        start += len(line) + 1


def test_ls_imports_no_pydantic_sqlite_utils_or_numpy(varied: Store, tmp_path: Path) -> None:
    """The `wb` entry point for `wb ls`: what it loads, in a fresh interpreter."""
    probe = ("import sys\nfrom workbench.cli import main\nsys.argv = ['wb', 'ls']\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "heavy = [m for m in ('pydantic', 'sqlite_utils', 'numpy', 'textual', 'torch')"
             " if m in sys.modules]\nprint('LOADED', heavy, code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "WB_STORE": str(varied.root)})
    assert "LOADED [] 0" in proc.stderr, proc.stderr
    assert proc.stdout.count("\n") == 13
