"""`wb selftest`: the workbench's acceptance checks on this machine, in one command.

Why: the GPU half of the project (Triton kernels, bf16 pretraining, NCCL, vLLM,
Huginn checkpoints, NVML) is written on machines without a GPU. A GPU host is
accepted by running every check that applies there and reading one table, and the
answer is kept as a run (kind ``selftest``) like any experiment.

Pieces:

- ``Check``: a named check (``group/what``) with the machine features it needs
  (``needs``: "cuda", "triton", "gpus2", "vllm", "nvml", "no-cuda"). A check whose
  needs are missing here is *skipped* with the reason, never failed.
- The registry ``CHECKS``: each group module (kernels, train, dist, vllm_check, depth,
  system, cpu) registers its checks with the ``@check`` decorator when imported;
  ``load_checks()`` imports them all, in the table's order. Modules import torch only
  inside their check functions, so listing checks stays cheap.
- ``Outcome``: what a check measured (``figures``, numbers that become metrics
  ``selftest/<check>/<figure>``), a one-line ``headline``, and ``failures``: the
  comparisons that did not hold. An exception is a failure too (its first line).
- ``run_checks``: runs the selected checks in order, timing each, and returns a
  ``Result`` per check; ``workbench.selftest.report`` renders and records them.

Test hooks: ``WB_SELFTEST_FAIL`` (comma-separated globs of check names) makes those
checks fail without running, so the exit code and the failure records can be tested
on any machine.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.run_record import HOST_ANSWER_LAUNCHER

FAIL_ENV = "WB_SELFTEST_FAIL"
KIND = "selftest"  # the run kind (registered in workbench.recipes)
LAUNCHER = "selftest"  # runs written by `wb selftest` on this machine
REMOTE_LAUNCHER = HOST_ANSWER_LAUNCHER  # the local copy of a host's `wb selftest` answer
PASS, FAIL, SKIP = "pass", "fail", "skip"
GROUPS = ("kernels", "train", "dist", "vllm_check", "depth", "system", "cpu")
NEEDS = ("cuda", "triton", "gpus2", "vllm", "nvml", "no-cuda")


class Skip(Exception):
    """Raised by a check that finds, once running, that this machine lacks what it needs."""


@dataclass
class Outcome:
    """What one check measured. ``failures`` empty: it passed."""

    figures: dict[str, float] = field(default_factory=dict)
    headline: str = ""
    failures: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-ready extras

    def require(self, ok: bool, message: str) -> bool:
        """Record ``message`` as a failure unless ``ok``; returns ``ok``."""
        if not ok:
            self.failures.append(message)
        return ok

    def merge(self, other: Outcome, prefix: str = "") -> None:
        """Fold another outcome in (figures under ``prefix``), e.g. one per shape."""
        self.figures.update({f"{prefix}{k}": v for k, v in other.figures.items()})
        self.failures += [f"{prefix}{m}" if prefix else m for m in other.failures]
        self.detail.update(other.detail)


@dataclass(frozen=True)
class Facts:
    """What this machine offers the checks; probed once per selftest."""

    torch: str = ""
    cuda: bool = False
    device: str = "cpu"  # the first GPU's name, or "cpu"
    gpus: int = 0
    triton: bool = False
    vllm: str | None = "not probed"  # why vLLM cannot run here, None if it can
    nvml: str | None = "not probed"  # why NVML cannot be read here, None if it can

    @classmethod
    def probe(cls) -> Facts:
        import importlib.util

        import torch

        cuda = torch.cuda.is_available()
        gpus = torch.cuda.device_count() if cuda else 0
        vllm: str | None
        if importlib.util.find_spec("vllm") is None:
            vllm = "needs vLLM: not installed (pip install workbench-lab[gpu])"
        elif not cuda:
            vllm = "needs vLLM on a CUDA GPU: none visible"
        else:
            vllm = None
        return cls(torch=torch.__version__, cuda=cuda,
                   device=torch.cuda.get_device_name(0) if cuda else "cpu", gpus=gpus,
                   triton=importlib.util.find_spec("triton") is not None, vllm=vllm,
                   nvml=_nvml_reason())

    def missing(self, needs: Iterable[str]) -> str | None:
        """The one-line reason a check with ``needs`` cannot run here, or None."""
        for need in needs:
            if need == "cuda" and not self.cuda:
                return f"needs a CUDA GPU: none visible (torch {self.torch})"
            if need == "triton" and not self.triton:
                return "needs Triton: not installed (pip install workbench-lab[gpu])"
            if need == "gpus2" and self.gpus < 2:
                return f"needs 2 GPUs: {self.gpus} visible"
            if need == "vllm" and self.vllm:
                return self.vllm
            if need == "nvml" and self.nvml:
                return self.nvml
            if need == "no-cuda" and self.cuda:
                return "CUDA is present: the compiled kernels are checked by kernels/*"
            if need not in NEEDS:
                raise ValueError(f"unknown need {need!r}: use one of {', '.join(NEEDS)}")
        return None


def _nvml_reason() -> str | None:
    """Why NVML cannot report GPUs here, or None (it initialised and sees one or more)."""
    import importlib.util

    if importlib.util.find_spec("pynvml") is None:
        return "needs NVML: nvidia-ml-py is not installed (pip install workbench-lab[gpu])"
    from workbench.sysmetrics import Gpus

    gpus = Gpus.open()
    if gpus is None:
        return "needs NVML: it did not initialise or sees no GPU (no NVIDIA driver?)"
    gpus.close()
    return None


@dataclass
class Context:
    """What a check gets: the mode, the machine, where to talk and where to write."""

    quick: bool
    facts: Facts
    tmp: Path  # a scratch folder of this check's own (removed afterwards)
    say: Callable[[str], None] = lambda _text: None  # progress, one line at a time


@dataclass(frozen=True)
class Check:
    name: str  # "group/what": the table's row and the metric prefix
    fn: Callable[[Context], Outcome]
    needs: tuple[str, ...] = ()
    summary: str = ""  # what it compares, one line (wb selftest --list)

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass
class Result:
    name: str
    status: str  # pass, fail or skip
    seconds: float = 0.0
    headline: str = ""
    reason: str = ""  # skip: what is missing; fail: the failed comparisons, one line
    figures: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CHECKS: dict[str, Check] = {}


def check(name: str, *, needs: tuple[str, ...] = (), summary: str = "",
          ) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:
    """Register ``fn`` as check ``name`` (decorator; the order of registration is the
    table's order)."""
    for need in needs:
        if need not in NEEDS:
            raise ValueError(f"check {name}: unknown need {need!r}")

    def register(fn: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        CHECKS[name] = Check(name, fn, tuple(needs), summary or (fn.__doc__ or "").split(
            "\n")[0])
        return fn

    return register


def load_checks() -> dict[str, Check]:
    """Import every group module (they register on import) and return the registry."""
    for group in GROUPS:
        importlib.import_module(f"workbench.selftest.{group}")
    return CHECKS


def select(patterns: Iterable[str] = ()) -> list[Check]:
    """The registered checks whose names match any glob in ``patterns`` (all if none).
    A pattern that matches nothing is a ValueError naming the known checks."""
    checks = list(load_checks().values())
    patterns = list(patterns)
    if not patterns:
        return checks
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(c.name, pattern) for c in checks):
            raise ValueError(f"--only {pattern!r} matches no check; known: "
                             f"{', '.join(c.name for c in checks)}")
    return [c for c in checks if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def forced_failure(name: str, environ: dict[str, str] | None = None) -> bool:
    """Whether ``WB_SELFTEST_FAIL`` names this check (a test hook: it fails unrun)."""
    raw = (environ if environ is not None else os.environ).get(FAIL_ENV, "")
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in raw.split(",") if p.strip())


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_one(chk: Check, ctx: Context) -> Result:
    """Run one check (or skip it, or force its failure) and time it."""
    reason = ctx.facts.missing(chk.needs)
    if reason is not None:
        return Result(chk.name, SKIP, reason=reason)
    if forced_failure(chk.name):
        return Result(chk.name, FAIL, reason=f"forced to fail by {FAIL_ENV} (a test hook)")
    started = time.perf_counter()
    try:
        outcome = chk.fn(ctx)
    except Skip as exc:
        return Result(chk.name, SKIP, time.perf_counter() - started, reason=one_line(str(exc)))
    except Exception as exc:  # a crash is a failure of this check, not of the selftest
        tb = traceback.format_exc(limit=-3)
        return Result(chk.name, FAIL, time.perf_counter() - started,
                      reason=one_line(f"{type(exc).__name__}: {exc}"),
                      detail={"traceback": tb[-4000:]})
    seconds = time.perf_counter() - started
    figures = {k: float(v) for k, v in outcome.figures.items()}
    if outcome.failures:
        return Result(chk.name, FAIL, seconds, outcome.headline,
                      one_line("; ".join(outcome.failures)), figures, outcome.detail)
    return Result(chk.name, PASS, seconds, outcome.headline, "", figures, outcome.detail)


def exit_code(results: Iterable[Result]) -> int:
    """1 if any check failed, else 0 (skips do not fail)."""
    return 1 if any(r.status == FAIL for r in results) else 0


def counts(results: Iterable[Result]) -> dict[str, int]:
    out = {PASS: 0, FAIL: 0, SKIP: 0}
    for r in results:
        out[r.status] += 1
    return out
