"""Rewards for RL: Magistral's format rule, answer checkers, length penalty, verifier pool.

Format rule (`parse_completion`), applied to the decoded completion (specials such as
EOS already dropped by the tokenizer's decode). A completion is well formed when ALL
of these hold, and the first that fails is the reason given:

1. "<think>" occurs exactly once and "</think>" occurs exactly once, in that order.
2. Only whitespace precedes "<think>" (the completion opens with its think block).
3. After "</think>" the text contains "\\boxed{" exactly once (a box inside the think
   block is just reasoning and does not count). Text between "</think>" and the box
   (a summary, as Magistral allows) is permitted.
4. The box closes: from "\\boxed{", braces are matched ("{" opens, "}" closes, so
   "\\boxed{\\frac{1}{2}}" holds "\\frac{1}{2}"); a box that never closes (truncated
   generation) is a violation.
5. The answer (the box contents, stripped) is not empty.
6. Nothing meaningful follows the box: only whitespace after its closing brace.

Reward (`score`, Magistral, arXiv 2506.10910), |y| = n_tokens, the completion's length
in tokens (the engine's generated tokens, EOS included):

- format violated: reward 0 exactly (no length penalty, no correctness bonus);
- else reward = 0.1 (format) + 0.9 * correct + length_penalty, where with
  s = l_max - l_cache (the soft zone starts after s tokens):
    length_penalty = 0                                  if |y| <= s
                   = -0.1 * (|y| - s) / l_cache         if s < |y| <= l_max
                   = -0.1                               if |y| > l_max
  So every reward lies in [0, 1]. `Score.length_penalty` reports the penalty for that
  length even on a format violation, where it is not applied.

Answer checkers (`VERIFIERS`, `get_verifier`) take (problem, extracted answer) and
return a bool:

- "exact": the stripped strings are equal.
- "int": both parse as Python integers (whitespace, a sign, "_" separators allowed) and
  are equal; anything unparsable is wrong, not an error.
- "number": both parse as floats and agree within rel 1e-6 / abs 1e-9.
- "list": comma-separated items, each stripped, same length, itemwise equal (as
  integers when both parse as integers, else as strings); "[...]" brackets optional.
- "math": mathematical equivalence by Hugging Face's math-verify (sympy underneath),
  for GSM8K / MATH style answers. The reference may be plain ("72", "1/2", "1,000")
  or LaTeX ("\\frac{1}{2}", "$\\sqrt{2}$"); both sides are boxed and parsed by
  math-verify's LaTeX and expression extraction, then `verify(gold, answer)` decides:
  "1,000" = "1000", "\\frac{1}{2}" = "0.5" = "1/2", "\\dfrac{3}{4}" = "3/4",
  "2\\sqrt{2}" = "\\sqrt{8}", "\\{1,2\\}" = "\\{2,1\\}", "[1,2)" intervals,
  "x^2+1" = "1+x^2". An answer math-verify cannot parse is wrong, not an error.
  math-verify's own signal-based timeouts are off (they only work in a main thread,
  and the checker may run in any); the pool's per-check `timeout_s` bounds it instead
  (a direct call in-process has no bound). math-verify and sympy load on the first
  "math" check in each process (about a second), not when a worker starts.
- "sleep": TEST ONLY. Sleeps an hour, then says False: the way tests exercise the
  verifier timeout for real. Never use it in a problem set.
- any other name of the form "package.module:function" is imported (in the verifier
  process) and called as function(problem, answer) -> bool: user problem sets bring
  their own checker. A checker that raises scores 0 with the exception as reason.

VerifierPool: verification runs in separate OS processes (multiprocessing "spawn":
no forked torch state, and the same on every OS), so a slow or hung checker never
stalls the trainer or the generators. Each worker owns a private Pipe (messages.py:
`VerifierReady` once, then `Check` -> `Checked`, `Stop` at the end) and runs its
checks one at a time, in order; the parent keeps up to `DEPTH` checks queued in each
worker's pipe, so a burst of completions (the trainer reads them all after a train
step) is scored back to back instead of one per poll of the parent. A check gets
`timeout_s` from the moment it reaches the head of its worker's queue (the parent
sees the previous result a little later, so the bound errs long, never short). A
worker that overruns is killed (SIGTERM, then SIGKILL) and replaced, its sample
scores Score(reward 0, correct False, reason "verifier timeout after Xs"), and the
checks queued behind it go back to the pool's queue, unharmed. Private pipes instead
of one shared result queue because killing a process that holds a shared queue's lock
would wedge every other worker; a dead pipe only loses its own worker. A worker that
dies on its own (kill -9) scores its running sample 0 with reason "verifier process
died" and is replaced likewise; the checks queued behind it are requeued.
This module imports no torch, so workers start in a fraction of a second.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import multiprocessing as mp
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from workbench.recipes.rl.messages import Check, Checked, Stop, UnexpectedMessage, VerifierReady
from workbench.recipes.rl.problem import (
    BOX_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    Problem,
    closing_brace,
)

FORMAT_REWARD = 0.1
CORRECT_REWARD = 0.9
LENGTH_PENALTY = 0.1


@dataclass
class Score:
    """The reward of one completion and why."""

    reward: float
    correct: bool
    format_ok: bool
    length_penalty: float  # <= 0; applied only when format_ok
    reason: str  # "correct", "wrong answer", or what broke the format / the check
    answer: str | None = None  # the extracted box contents (None on a format violation)
    pid: int | None = None  # the process that scored it (None: scored in this process)
    seconds: float = 0.0  # time spent scoring (in the worker)


# ----------------------------------------------------------------------------- format


def parse_completion(text: str) -> tuple[str | None, str]:
    """(answer, "ok") when `text` follows the format rule, else (None, reason)."""
    n_open, n_close = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if n_open != 1 or n_close != 1:
        return None, f"expected one {THINK_OPEN}...{THINK_CLOSE} block, found {n_open} " \
                     f"{THINK_OPEN} and {n_close} {THINK_CLOSE}"
    i_open, i_close = text.index(THINK_OPEN), text.index(THINK_CLOSE)
    if i_close < i_open:
        return None, f"{THINK_CLOSE} before {THINK_OPEN}"
    if text[:i_open].strip():
        return None, f"text before {THINK_OPEN}"
    rest = text[i_close + len(THINK_CLOSE):]
    n_box = rest.count(BOX_OPEN)
    if n_box != 1:
        return None, f"expected one \\boxed{{...}} after {THINK_CLOSE}, found {n_box}"
    start = rest.index(BOX_OPEN) + len(BOX_OPEN)
    end = closing_brace(rest, start)
    if end < 0:
        return None, "\\boxed{ never closes"
    answer = rest[start:end].strip()
    if not answer:
        return None, "empty \\boxed{}"
    if rest[end + 1:].strip():
        return None, "text after the \\boxed{} answer"
    return answer, "ok"


def length_penalty(n_tokens: int, l_max: int, l_cache: int) -> float:
    """Magistral's soft length penalty: 0, then linear down to -0.1 over the last l_cache."""
    if l_max < 1 or not 0 <= l_cache <= l_max:
        raise ValueError(f"need l_max >= 1 and 0 <= l_cache <= l_max (got l_max={l_max}, "
                         f"l_cache={l_cache})")
    soft = l_max - l_cache
    if n_tokens <= soft:
        return 0.0
    if n_tokens > l_max:
        return -LENGTH_PENALTY
    return -LENGTH_PENALTY * (n_tokens - soft) / l_cache


# ----------------------------------------------------------------------------- checkers


def _parse_int(s: str) -> int | None:
    try:
        return int(s.strip())
    except ValueError:
        return None


def check_exact(p: Problem, answer: str) -> bool:
    return answer.strip() == p.answer.strip()


def check_int(p: Problem, answer: str) -> bool:
    got, want = _parse_int(answer), _parse_int(p.answer)
    return got is not None and got == want


def check_number(p: Problem, answer: str) -> bool:
    try:
        got, want = float(answer.strip()), float(p.answer.strip())
    except ValueError:
        return False
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


def _items(s: str) -> list[str]:
    s = s.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    return [x.strip() for x in s.split(",")] if s.strip() else []


def check_list(p: Problem, answer: str) -> bool:
    got, want = _items(answer), _items(p.answer)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        gi, wi = _parse_int(g), _parse_int(w)
        if (gi != wi) if gi is not None and wi is not None else g != w:
            return False
    return True


# Math delimiters a reference answer may be wrapped in ("$\\sqrt{2}$"), outermost first.
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


def _unwrap_math(text: str) -> str:
    """`text` without one pair of math delimiters around all of it, stripped."""
    text = text.strip()
    for left, right in _MATH_DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) \
                and text.endswith(right):
            return text[len(left):len(text) - len(right)].strip()
    return text


def _boxed(text: str) -> str:
    """`text` as math-verify's LaTeX extraction finds it best: inside \\boxed{}. Boxing
    both sides alike means a reference and an answer written the same way parse the
    same way ("1,2" is the set {1, 2} on both, never 1.2 on one side only). A text
    that already holds a box (a whole solution as reference) goes as it is."""
    return text if BOX_OPEN in text else f"{BOX_OPEN}{_unwrap_math(text)}}}"


class _NoTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning: the pool's timeout is the
    bound we rely on, and every worker would print it once otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@functools.cache
def _math_verify() -> tuple[Callable[[str], list[Any]], Callable[[list[Any], list[Any]], bool]]:
    """(parse, verify) from math-verify with its timeouts off, imported on first use so
    that verifier processes start without sympy."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NoTimeoutNotice())
    targets = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]

    def parse(text: str) -> list[Any]:
        return math_verify.parse(text, extraction_config=targets, parsing_timeout=None)

    def verify(gold: list[Any], answer: list[Any]) -> bool:
        return bool(math_verify.verify(gold, answer, timeout_seconds=None))

    return parse, verify


def check_math(p: Problem, answer: str) -> bool:
    """math-verify equivalence of the answer to the reference (see module doc)."""
    parse, verify = _math_verify()
    gold, got = parse(_boxed(p.answer)), parse(_boxed(answer))
    return bool(gold) and bool(got) and verify(gold, got)


SLEEP_SECONDS = 3600.0


def check_sleep(p: Problem, answer: str) -> bool:
    """TEST ONLY: hangs (an hour), so that tests exercise the pool's timeout for real."""
    time.sleep(SLEEP_SECONDS)
    return False


VERIFIERS: dict[str, Callable[[Problem, str], bool]] = {
    "exact": check_exact,
    "int": check_int,
    "number": check_number,
    "list": check_list,
    "math": check_math,
    "sleep": check_sleep,  # test only
}
TEST_ONLY_VERIFIERS = frozenset({"sleep"})
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def verifier_choices() -> str:
    """The names a spec may use, for error messages."""
    names = [n for n in VERIFIERS if n not in TEST_ONLY_VERIFIERS]
    return f"{', '.join(names)} or 'package.module:function'"


def is_verifier_name(name: str) -> bool:
    """Whether `name` can name a verifier: a VERIFIERS name, or "package.module:function"
    in form. Imports nothing: a spec is checked where `wb launch` runs, and the module
    may exist only where the run does (load_jsonl imports it there)."""
    return name in VERIFIERS or _IMPORT_PATH.fullmatch(name) is not None


def get_verifier(name: str) -> Callable[[Problem, str], bool]:
    """A VERIFIERS name, or "package.module:function" (imported here). KeyError if neither."""
    if name in VERIFIERS:
        return VERIFIERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"verifier {name!r} cannot be imported: {e}") from None
        if not callable(fn):
            raise KeyError(f"verifier {name!r} is not callable")
        return fn
    raise KeyError(f"unknown verifier {name!r}; use {verifier_choices()}")


# ----------------------------------------------------------------------------- score


def score(p: Problem, completion: str, n_tokens: int, l_max: int, l_cache: int) -> Score:
    """Magistral's reward for one decoded completion of `n_tokens` tokens (see module doc)."""
    t0 = time.perf_counter()
    penalty = length_penalty(n_tokens, l_max, l_cache)
    answer, why = parse_completion(completion)
    if answer is None:
        return Score(0.0, False, False, penalty, f"format: {why}",
                     seconds=time.perf_counter() - t0)
    try:
        correct = bool(get_verifier(p.verifier)(p, answer))
        reason = "correct" if correct else "wrong answer"
    except Exception as e:  # a user checker's bug scores the sample, never kills the run
        correct, reason = False, f"verifier error: {type(e).__name__}: {e}"
    reward = FORMAT_REWARD + CORRECT_REWARD * correct + penalty
    return Score(reward, correct, True, penalty, reason, answer=answer,
                 seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- pool

DEPTH = 8  # checks queued per worker: enough to keep it busy between two polls
_Job = tuple[int, Problem, str, int]  # job id, problem, completion, n_tokens


def _worker_main(conn: Connection) -> None:
    """Verifier process: announce readiness, then score `Check`s until a `Stop`."""
    conn.send(VerifierReady(os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        match job:
            case Stop():
                return
            case Check():
                try:
                    s = score(job.problem, job.completion, job.n_tokens, job.l_max,
                              job.l_cache)
                except Exception as e:
                    s = Score(0.0, False, False, 0.0,
                              f"verifier error: {type(e).__name__}: {e}")
                s.pid = os.getpid()
                conn.send(Checked(job.job_id, s))
            case _:
                raise UnexpectedMessage("verifier", job)


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                name="wb-verifier")
        self.proc.start()
        child.close()
        self.ready = False
        self.queue: deque[_Job] = deque()  # sent, not finished; the head is running
        self.deadline = math.inf  # of the head
        self.started = 0.0  # when the head started (as far as the parent knows)

    @property
    def job(self) -> int | None:
        """The check running now (None when idle)."""
        return self.queue[0][0] if self.queue else None

    def kill(self) -> None:
        """Terminate, then kill, and reap; never blocks for long."""
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(0.5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc.join(2.0)
        self.conn.close()


class VerifierPool:
    """`procs` verifier processes; each check bounded by `timeout_s` (see module doc).

    Usage: submit(key, problem, completion, n_tokens) any number of times, then collect
    (key, Score) pairs with results(); keys come back exactly once each, in completion
    order. Not thread-safe: call it from one thread.
    """

    def __init__(self, procs: int, timeout_s: float, l_max: int, l_cache: int) -> None:
        if procs < 1:
            raise ValueError(f"procs ({procs}) must be >= 1")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0")
        length_penalty(0, l_max, l_cache)  # validates l_max / l_cache now
        self.timeout_s, self.l_max, self.l_cache = float(timeout_s), l_max, l_cache
        self._ctx = mp.get_context("spawn")
        self._workers = [_Worker(self._ctx) for _ in range(procs)]
        self._pending: deque[_Job] = deque()
        self._keys: dict[int, Any] = {}
        self._done: list[tuple[Any, Score]] = []
        self._next_id = 0
        self.timeouts = 0  # checks that hit the timeout
        self.restarts = 0  # workers replaced (timeouts and deaths)
        self._closed = False

    # -- public

    def submit(self, key: Any, problem: Problem, completion: str, n_tokens: int) -> None:
        """Queue one check; it starts as soon as a worker is free."""
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        job_id, self._next_id = self._next_id, self._next_id + 1
        self._keys[job_id] = key
        self._pending.append((job_id, problem, completion, n_tokens))
        self._pump(0.0)

    def outstanding(self) -> int:
        """Checks submitted whose results have not been returned yet."""
        return len(self._keys) + len(self._done)

    def results(self, block: bool = False,
                timeout: float | None = None) -> list[tuple[Any, Score]]:
        """Finished (key, Score) pairs. block=True waits until at least one is ready (or
        `timeout` seconds pass, or nothing is outstanding); block=False never waits."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._pump(0.0)
        while block and not self._done and self._keys:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(left)
        out, self._done = self._done, []
        return out

    def drain(self, timeout: float | None = None) -> list[tuple[Any, Score]]:
        """Wait for every outstanding check (bounded anyway by the per-check timeout)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        out: list[tuple[Any, Score]] = []
        while self._keys or self._done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            out += self.results(block=True, timeout=left)
        return out

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def close(self) -> None:
        """Stop every worker (politely, then by force). Unreturned results are lost."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            if w.job is None:
                try:
                    w.conn.send(Stop())
                except (OSError, ValueError):
                    pass
        end = time.monotonic() + 1.0
        for w in self._workers:
            w.proc.join(max(0.0, end - time.monotonic()))
            w.kill()
        self._workers = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals

    def _finish(self, w: _Worker, s: Score) -> None:
        """The head check is done: report it, and the next one starts now."""
        job_id = w.queue.popleft()[0]
        self._done.append((self._keys.pop(job_id), s))
        w.started = time.monotonic()
        w.deadline = w.started + self.timeout_s if w.queue else math.inf

    def _replace(self, i: int) -> None:
        """A fresh worker for slot i; the checks the old one had queued go back first."""
        old = self._workers[i]
        self._pending.extendleft(reversed(old.queue))
        old.queue.clear()
        old.kill()
        self._workers[i] = _Worker(self._ctx)
        self.restarts += 1

    def _dispatch(self) -> None:
        """Fill ready workers' queues up to DEPTH, shortest queue first."""
        while self._pending:
            ready = [w for w in self._workers if w.ready and len(w.queue) < DEPTH]
            if not ready:
                return
            w = min(ready, key=lambda w: len(w.queue))
            job = self._pending.popleft()
            job_id, problem, completion, n_tokens = job
            w.conn.send(Check(job_id, problem, completion, n_tokens, self.l_max, self.l_cache))
            if not w.queue:
                w.started = time.monotonic()
                w.deadline = w.started + self.timeout_s
            w.queue.append(job)

    def _pump(self, wait_s: float) -> None:
        """Dispatch, wait up to wait_s for messages (or the next deadline), handle them,
        enforce deadlines. Returns early once a result arrived."""
        self._dispatch()
        now = time.monotonic()
        next_deadline = min((w.deadline for w in self._workers), default=math.inf)
        wait_s = max(0.0, min(wait_s, next_deadline - now))
        by_conn = {w.conn: i for i, w in enumerate(self._workers)}
        for conn in wait(list(by_conn), timeout=wait_s):
            i = by_conn[conn]  # type: ignore[index]
            w = self._workers[i]
            try:
                while w.conn.poll():
                    match w.conn.recv():
                        case VerifierReady():
                            w.ready = True
                        case Checked(job_id, s) if job_id == w.job:  # the head: in order
                            self._finish(w, s)
                        case Checked():
                            pass  # a check already timed out
                        case msg:
                            raise UnexpectedMessage("verifier pool", msg)
            except (EOFError, OSError):  # the worker died (kill -9, crash)
                if not w.ready:  # died while starting: replacing it would only loop
                    w.proc.join(1.0)
                    raise RuntimeError(
                        f"a verifier process (pid {w.proc.pid}) exited while starting, "
                        f"exit code {w.proc.exitcode}; see its stderr") from None
                if w.job is not None:
                    self._finish(w, Score(0.0, False, False, 0.0, "verifier process died",
                                          pid=w.proc.pid))
                self._replace(i)
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            if w.job is not None and now >= w.deadline:
                self.timeouts += 1
                self._finish(w, Score(0.0, False, False, 0.0,
                                      f"verifier timeout after {self.timeout_s:g}s",
                                      pid=w.proc.pid, seconds=now - w.started))
                self._replace(i)
        self._dispatch()
