"""The accelerate tracker and the HF Trainer callback, each driving a real training loop."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from workbench.integrations import run_name
from workbench.integrations.accelerate import WorkbenchTracker
from workbench.store import Store


def _series(store: Store, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(s, v) for _, s, _, v, _ in store.scalars(run_id, key)]


def _accelerate_loop(accelerator: Accelerator, steps: int = 4) -> list[float]:
    """A tiny regression trained the accelerate way; returns the losses it logged."""
    torch.manual_seed(0)
    x = torch.randn(8 * steps, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    losses = []
    for step, (xb, yb) in enumerate(loader):
        loss = F.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        accelerator.log({"train/loss": loss.detach(), "train/lr": 0.1,  # a tensor, a float
                         "phase": "warmup" if step < 2 else "main",  # text, changes once
                         "grad": {"w": step * 1.5},  # nested: grad/w
                         "odd": object()}, step=step)  # skipped, one warning
    return losses


def test_accelerate_loop_logs_into_the_store(store: Store, caplog: pytest.LogCaptureFixture,
                                             ) -> None:
    tracker = WorkbenchTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("toy regression", config={"lr": 0.1, "optimizer": "sgd"})
    with caplog.at_level(logging.WARNING, logger="workbench.integrations"):
        losses = _accelerate_loop(accelerator)
    run_id = tracker.tracker.id
    accelerator.end_training()

    row = store.get_run(run_id)
    assert row.name == "toy-regression"  # the project name, made a valid run name
    assert row.status == "finished" and row.launcher == "sdk"
    assert row.config == {"lr": 0.1, "optimizer": "sgd"}
    got = _series(store, run_id, "train/loss")
    assert [s for s, _ in got] == [0, 1, 2, 3]
    assert [v for _, v in got] == pytest.approx(losses)
    assert _series(store, run_id, "train/lr") == [(s, 0.1) for s in range(4)]
    assert _series(store, run_id, "grad/w") == [(s, s * 1.5) for s in range(4)]
    assert store.scalars(run_id, "odd") == [] and store.scalars(run_id, "phase") == []
    texts = [(e.step, e.payload) for e in store.events(run_id, kind="text")]
    assert texts == [(0, {"key": "phase", "value": "warmup"}),
                     (2, {"key": "phase", "value": "main"})]
    warned = [r.getMessage() for r in caplog.records if "odd" in r.getMessage()]
    assert len(warned) == 1 and "object" in warned[0]


def test_accelerate_by_name_and_inside_a_launched_run(store: Store,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """log_with="workbench" (registered on import) attaches to WB_RUN_ID's run, whose
    status stays the launcher's and whose spec values win over the script's."""
    launched = store.create_run(kind="pretrain", name="launched", status="running",
                                config={"lr": 0.5})
    monkeypatch.setenv("WB_RUN_ID", launched.id)
    accelerator = Accelerator(cpu=True, log_with="workbench")
    accelerator.init_trackers("ignored-here", config={"lr": 0.1, "extra": 1})
    losses = _accelerate_loop(accelerator, steps=2)
    tracker = accelerator.get_tracker("workbench")
    assert isinstance(tracker, WorkbenchTracker) and tracker.run_name == "ignored-here"
    accelerator.end_training()

    row = store.get_run(launched.id)
    assert row.status == "running" and row.name == "launched"
    assert row.config == {"lr": 0.5, "extra": 1}
    assert [v for _, v in _series(store, row.id, "train/loss")] == pytest.approx(losses)
    assert len(store.runs()) == 1


def test_run_name_from_a_project_name() -> None:
    assert run_name("gpt-small_v1.2") == "gpt-small_v1.2"
    assert run_name("my project/v2") == "my-project-v2"
    assert run_name("../..") is None and run_name("") is None and run_name(None) is None
    assert len(run_name("x" * 100) or "") == 64


def test_importing_workbench_integrations_imports_neither_library() -> None:
    code = ("import sys, workbench, workbench.integrations; "
            "print('transformers' in sys.modules, 'accelerate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_trainer_callback_logs_loss_lr_and_grad_norm(store: Store, tmp_path: Path) -> None:
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'workbench-lab[hf]')")
    from workbench.integrations.transformers import WorkbenchCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64,
                                     n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (16, 16))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), run_name="tiny-gpt2", max_steps=6, logging_steps=1,
        report_to=[], use_cpu=True, per_device_train_batch_size=2,
        per_device_eval_batch_size=4, save_strategy="no", learning_rate=1e-3,
        disable_tqdm=True, seed=0)
    callback = WorkbenchCallback()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   eval_dataset=data[:4], callbacks=[callback])
    trainer.train()
    assert callback.run is None  # finished at on_train_end
    (row,) = store.runs()
    run_id = row.id
    row = store.get_run(run_id)
    assert row.status == "finished" and row.name == "tiny-gpt2"
    assert row.total_steps == 6

    steps = list(range(1, 7))
    loss = _series(store, run_id, "train/loss")
    lr = _series(store, run_id, "train/lr")
    grad = _series(store, run_id, "train/grad_norm")
    assert [s for s, _ in loss] == steps and [s for s, _ in lr] == steps
    assert [s for s, _ in grad] == steps
    assert all(0 < v < 10 for _, v in loss) and all(v > 0 for _, v in grad)
    assert lr[0][1] <= 1e-3 and all(a > b for (_, a), (_, b) in zip(lr, lr[1:], strict=False))
    assert store.scalars(run_id, "train/train_loss") == []  # a total, not a point
    cfg = row.config
    assert cfg["trainer"]["max_steps"] == 6 and cfg["model"]["n_embd"] == 32
    assert {"train_runtime", "train_loss"} <= set(cfg["summary"])

    trainer.evaluate()  # after train(): still this run's metrics
    assert callback.run is not None and callback.run.flush()
    assert [s for s, _ in _series(store, run_id, "val/loss")] == [6]
    assert [s for s, _ in _series(store, run_id, "eval/runtime")] == [6]
    callback.run.finish()
    assert store.get_run(run_id).status == "finished"  # the reopened writer owns nothing


def test_trainer_metric_names() -> None:
    mod = pytest.importorskip(
        "workbench.integrations.transformers",
        reason="transformers is not installed (pip install 'workbench-lab[hf]')")
    assert [mod.metric_name(k) for k in ("loss", "learning_rate", "grad_norm", "epoch",
                                         "eval_loss", "eval_accuracy", "test_f1", "perf/mfu")
            ] == ["train/loss", "train/lr", "train/grad_norm", "train/epoch", "val/loss",
                  "eval/accuracy", "test/f1", "perf/mfu"]
