"""Issue 17 item 7: a kill -9 at any point of a checkpoint write leaves a loadable
checkpoint. The RL trainer writes through the shared module (workbench/recipes/
checkpoint.py, pretrain's writer too); a forked child sets its fault hook to SIGKILL
itself at one named point of the write, and the parent then loads what is on disk."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_model

from workbench.models.gpt import GPT
from workbench.recipes.common import checkpoint as ckpt
from workbench.recipes.rl.spec import RLSpec
from workbench.recipes.rl.trainer import Trainer, policy_config
from workbench.spec import parse_spec

SPEC = """
kind = "rl"
[policy]
init = "random"
n_layer = 1
d_model = 16
n_head = 2
seq_len = 64
[rollout]
l_max = 16
l_cache = 4
"""


def trainer_in(folder: Path) -> Trainer:
    spec: RLSpec = parse_spec(SPEC)  # type: ignore[assignment]
    torch.manual_seed(0)
    ctx = SimpleNamespace(checkpoint_dir=folder, resume_dir=None,
                          run=SimpleNamespace(event=lambda *a, **k: None))
    return Trainer(spec, ctx, GPT(policy_config(spec)))  # type: ignore[arg-type]


def save_at(trainer: Trainer, version: int, fill: float) -> None:
    """Checkpoint `version` with every weight set to `fill` (to tell copies apart)."""
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(fill)
    trainer.version, trainer.saved_version = version, -1
    trainer.save("test")


def killed_save(trainer: Trainer, point: str, version: int, fill: float) -> int:
    """Run save_at in a forked child that SIGKILLs itself at `point`; its exit code."""

    def child() -> None:
        def hook(reached: str) -> None:
            if reached == point:
                os.kill(os.getpid(), signal.SIGKILL)

        ckpt.fault_hook = hook
        save_at(trainer, version, fill)
        os._exit(0)  # the point was not on this write's path

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode is not None
    return proc.exitcode


def weights_fill(model: torch.nn.Module) -> float:
    fills = {float(p.detach().flatten()[0]) for p in model.parameters()}
    assert len(fills) == 1
    return fills.pop()


def load_newest(folder: Path) -> tuple[int, float]:
    """(version, weight fill) of the newest checkpoint checkpoints_in finds, loaded."""
    found = ckpt.checkpoints_in(folder)
    assert found, sorted(p.name for p in folder.iterdir())
    model = trainer_in(folder / "unused").model
    load_model(model, str(found[-1] / "model.safetensors"))
    state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=False)
    assert ckpt.checkpoint_step(found[-1]) == state["version"]
    return int(state["version"]), weights_fill(model)


@pytest.mark.parametrize("point", ckpt.WRITE_POINTS)
def test_kill_9_at_each_point_of_a_new_version_leaves_a_loadable_one(
        point: str, tmp_path: Path, one_thread: Any) -> None:
    folder = tmp_path / "checkpoints"
    trainer = trainer_in(folder)
    save_at(trainer, 1, 1.0)
    save_at(trainer, 2, 2.0)
    code = killed_save(trainer, point, 3, 3.0)
    assert code == (0 if point == "old_moved" else -signal.SIGKILL)
    assert load_newest(folder) in {(2, 2.0), (3, 3.0)}
    ckpt.clean_tmp(folder)  # what a resume does first
    assert load_newest(folder) in {(2, 2.0), (3, 3.0)}
    assert not [p for p in folder.iterdir() if not p.name.startswith(ckpt.STEP_PREFIX)]


@pytest.mark.parametrize("point", ckpt.WRITE_POINTS)
def test_kill_9_while_re_saving_the_only_checkpoint_leaves_it_loadable(
        point: str, tmp_path: Path, one_thread: Any) -> None:
    """The old writer deleted step-N before renaming its replacement into place: a kill
    between the two left nothing. Now the old copy is set aside (.old-) and still found."""
    folder = tmp_path / "checkpoints"
    trainer = trainer_in(folder)
    save_at(trainer, 5, 1.0)
    assert killed_save(trainer, point, 5, 2.0) == -signal.SIGKILL  # every point is reached
    assert load_newest(folder) in {(5, 1.0), (5, 2.0)}
    ckpt.clean_tmp(folder)
    assert load_newest(folder) in {(5, 1.0), (5, 2.0)}
    assert [p.name for p in folder.iterdir()] == ["step-00000005"]


def test_keep_last_and_restore_after_a_kill(tmp_path: Path, one_thread: Any) -> None:
    """RL keeps the newest two, like pretrain's default; restore tidies a killed write."""
    folder = tmp_path / "checkpoints"
    trainer = trainer_in(folder)
    for v in range(1, 5):
        save_at(trainer, v, float(v))
    assert [p.name for p in ckpt.checkpoints_in(folder)] == ["step-00000003", "step-00000004"]
    assert killed_save(trainer, "old_moved", 4, 9.0) == -signal.SIGKILL
    fresh = trainer_in(folder)
    assert fresh.restore() and fresh.version == 4
    assert weights_fill(fresh.model) == 4.0
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003", "step-00000004"]
