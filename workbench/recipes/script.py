"""The `script` kind: run any Python training script as a tracked run.

The script logs through `workbench.init()`, which attaches to the launched run
(WB_RUN_ID is in its environment). `wb stop` reaches it as SIGTERM; a resumed
run finds the old run's folder in WB_RESUME_DIR. With `resources.procs > 1`
the script starts under torchrun, and every rank logs into the same run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from workbench.recipes import Context
from workbench.spec import Section, SpecBase


class ScriptSection(Section):
    command: list[str] = Field(
        min_length=1,
        description='argv of the script; a leading "python" means this interpreter, '
        'e.g. ["python", "train.py", "--lr", "3e-4"].',
    )
    cwd: str | None = Field(None, description="Working directory; default: where wb ran.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")


class ScriptSpec(SpecBase):
    kind: Literal["script"]
    script: ScriptSection
    config: dict[str, Any] = Field(
        default_factory=dict, description="Free-form values the script reads as run.config."
    )
    total_steps: int | None = Field(None, ge=1, description="Expected steps, for progress/ETA.")

    def run_config(self) -> dict[str, Any]:
        return dict(self.config)

    def for_launch(self) -> ScriptSpec:
        """Pin the working directory to where `wb launch` ran (absolute), so relative
        script paths still resolve when the run is resumed from another folder."""
        spec = self.model_copy(deep=True)
        spec.script.cwd = str(Path(self.script.cwd or os.getcwd()).resolve())
        return spec

    @model_validator(mode="after")
    def _one_node(self) -> ScriptSpec:
        if self.resources.nodes > 1:  # refused before MultiNode starts any node
            raise ValueError("a script runs on one node — set resources.nodes = 1 (run a "
                             "multi-node job with kind = \"pretrain\")")
        return self

    @model_validator(mode="after")
    def _torchrun_needs_python(self) -> ScriptSpec:
        if self.resources.procs > 1 and self.script.command[0] != "python":
            raise ValueError(
                f"resources.procs={self.resources.procs} starts the script under torchrun, "
                'so script.command must start with "python" — change script.command or set '
                "resources.procs=1"
            )
        return self


def argv(spec: ScriptSpec) -> list[str]:
    """The command line, under torchrun's elastic launcher when procs > 1."""
    cmd = list(spec.script.command)
    if cmd[0] != "python":
        return cmd
    rest = cmd[1:]
    if spec.resources.procs == 1:
        return [sys.executable, *rest]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={spec.resources.procs}"]
    if rest[:1] == ["-m"]:
        return [*launcher, "--module", *rest[1:]]
    return [*launcher, *rest]


def run(spec: ScriptSpec, ctx: Context) -> None:
    env = {**os.environ, **spec.script.env}
    if ctx.resume_dir is not None:
        env["WB_RESUME_DIR"] = str(ctx.resume_dir)
    # Same process group as the worker. torchrun starts its ranks in sessions of their
    # own; `wb stop`'s final SIGKILL reaches them through the worker's process tree.
    proc = subprocess.Popen(argv(spec), cwd=spec.script.cwd, env=env)
    signalled = False
    while True:
        try:
            proc.wait(timeout=0.2)  # not stop.wait: once set, it would spin
            break
        except subprocess.TimeoutExpired:
            pass
        if ctx.stop.is_set() and not signalled:
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its ranks
            signalled = True
    if signalled:
        # `wb stop`: the run ends as stopped whatever code the script (or torchrun,
        # which exits 1 after forwarding SIGTERM) returned.
        if proc.returncode != 0:
            print(f"workbench: script exited with code {proc.returncode} after SIGTERM",
                  flush=True)
        return
    if proc.returncode != 0:
        raise RuntimeError(f"script exited with code {proc.returncode}: {' '.join(argv(spec))}")
