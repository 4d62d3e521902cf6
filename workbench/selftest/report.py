"""Selftest results as records, as JSON and as a table.

Why records: an acceptance answer is worth keeping next to the runs it vouches for.
Each selftest is a run of kind ``selftest`` (``wb ls --kind selftest``): every
figure a metric ``selftest/<check>/<figure>`` at the check's step (1-based, so the
progress bar moves while it runs), each failure an ``selftest_failure`` event
(severity error), the totals ``selftest/passed|failed|skipped`` at the last step,
and the whole answer (results and the machine's facts) under ``selftest`` in the
run's config, which the Hosts screen reads. The run ends ``finished`` when nothing
failed, ``failed`` (exit code 1) otherwise.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from rich.table import Table
from rich.text import Text

from workbench.export import strict_json
from workbench.selftest import FAIL, KIND, PASS, SKIP, Facts, Result, counts, exit_code

STATUS_STYLE = {PASS: "green", FAIL: "bold red", SKIP: "dim"}


def metric_prefix(check_name: str) -> str:
    return f"selftest/{check_name}/"


class Recorder:
    """Writes one selftest into a run (a ``workbench.tracking.Run``) as it goes."""

    def __init__(self, run: Any, total: int) -> None:
        self.run = run
        self.total = total
        run.set_total_steps(max(total, 1))

    def result(self, index: int, result: Result) -> None:
        """One check's figures and, if it failed, its event; at step index + 1."""
        step = index + 1
        prefix = metric_prefix(result.name)
        metrics = {prefix + k: v for k, v in result.figures.items()}
        if result.status != SKIP:  # a skipped check measured nothing, not even time
            metrics[prefix + "seconds"] = result.seconds
            metrics[prefix + "passed"] = 1.0 if result.status == PASS else 0.0
        self.run.log(metrics, step=step)
        if result.status == FAIL:
            self.run.event("selftest_failure", step=step, severity="error", check=result.name,
                           reason=result.reason, figures=result.figures)

    def finish(self, results: list[Result], data: dict[str, Any], end_run: bool = True) -> int:
        """Totals, the answer ``data`` (see `answer`) in the config and, with ``end_run``,
        the final status (a launched worker records its run's ending itself); returns
        the exit code."""
        n = counts(results)
        self.run.log({"selftest/passed": n[PASS], "selftest/failed": n[FAIL],
                      "selftest/skipped": n[SKIP],
                      "selftest/seconds": sum(r.seconds for r in results)},
                     step=max(self.total, 1))
        self.run.update_config({KIND: strict_json(data)})
        code = exit_code(results)
        if end_run:
            self.run.finish("failed" if code else "finished", exit_code=code)
        return code


def answer(results: list[Result], facts: Facts, quick: bool) -> dict[str, Any]:
    """The JSON answer of `wb selftest --json` (without the run, added by the caller).

    ``ok`` and ``exit_code`` say it all; ``counts`` by status; ``checks`` one object
    per check in the table's order: name, status, seconds, headline, reason (skip or
    failure), figures, detail.
    """
    code = exit_code(results)
    return {
        "ok": code == 0, "exit_code": code, "host": socket.gethostname(),
        "time": time.time(), "quick": quick, "facts": asdict(facts),
        "counts": counts(results), "seconds": sum(r.seconds for r in results),
        "checks": [r.as_dict() for r in results],
    }


def results_of(data: dict[str, Any]) -> list[Result]:
    """``answer(...)["checks"]`` back into Results (a host's JSON, a stored config)."""
    return [Result(**{k: c.get(k) for k in Result.__dataclass_fields__ if k in c})
            for c in data.get("checks", [])]


def facts_of(data: dict[str, Any]) -> Facts:
    """``answer(...)["facts"]`` back into Facts. A stored config lost the null values:
    the store merges config as a JSON merge patch, where null deletes the key, so a
    missing ``vllm`` or ``nvml`` (None: it can run) reads as None, not "not probed"."""
    known = Facts.__dataclass_fields__
    facts = data.get("facts") or {}
    values = {k: v for k, v in facts.items() if k in known}
    if facts:
        for name in ("vllm", "nvml"):
            values.setdefault(name, None)
    return Facts(**values)


def fmt_seconds(s: float) -> str:
    return f"{s:.1f}"


def table(results: Iterable[Result], title: str) -> Table:
    """check | status | seconds | figure (a skip's or failure's reason in that column)."""
    t = Table(title=title, box=None, header_style="bold", title_justify="left", pad_edge=False)
    t.add_column("check", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    t.add_column("figure / reason", overflow="fold")
    for r in results:
        status = {SKIP: "skipped"}.get(r.status, r.status)
        text = r.reason if r.status != PASS else r.headline
        if r.status == FAIL and r.headline:
            text = f"{r.reason} ({r.headline})"
        t.add_row(r.name, Text(status, style=STATUS_STYLE[r.status]),
                  fmt_seconds(r.seconds) if r.status != SKIP else "-",
                  Text(text, style="dim" if r.status == SKIP else ""))
    return t


def result_line(r: Result) -> str:
    """One progress line per finished check (stderr while the selftest runs)."""
    took = f" {r.seconds:.1f} s" if r.status != SKIP else ""
    text = r.headline if r.status == PASS else r.reason
    return f"  {r.status:<4} {r.name}{took}: {text}"


def verdict_line(results: list[Result], seconds: float | None = None) -> str:
    n = counts(results)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    word = "FAILED" if n[FAIL] else "ok"
    return f"selftest {word}: {n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped{took}"


def summary_of_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """A stored selftest answer (run config ``selftest``), or None if there is none."""
    data = config.get(KIND) if isinstance(config, dict) else None
    return data if isinstance(data, dict) and "counts" in data else None
