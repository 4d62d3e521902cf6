"""workbench.compat.wandb: a script written for W&B runs against the workbench when only
its `import wandb` line changes, with W&B's step, config and summary rules."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workbench.compat import wandb
from workbench.records import DistRecord
from workbench.store import Store

# A training script as written for W&B. The tests change its import line, nothing else.
TRAIN = """
import numpy as np
import wandb

config = {"lr": 0.001, "epochs": 3, "batch_size": 16, "model": {"d": 64, "layers": 2}}
run = wandb.init(project="compat-demo", name="sgd baseline", config=config, group="sweep a",
                 tags=["cpu", "smoke"], notes="drop-in test", job_type="train")
wandb.config.update({"warmup": 10})
wandb.config.seed = 7
wandb.define_metric("epoch")
wandb.define_metric("val/*", step_metric="epoch")
wandb.define_metric("train/loss", summary="min,max")

step = 0
for epoch in range(wandb.config.epochs):
    for _ in range(4):
        wandb.log({"train/loss": 1.0 / (1 + step), "train/lr": wandb.config.lr})
        step += 1
    wandb.log({"epoch": epoch}, commit=False)
    wandb.log({"val": {"loss": 0.5 - 0.125 * epoch, "acc": np.float32(0.25 * (epoch + 1))},
               "grads": wandb.Histogram(np.arange(100))})

wandb.log({"samples": wandb.Image(np.zeros((4, 4))), "phase": "done"})
wandb.log({"final/score": 0.875}, step=100)
wandb.log({"final/extra": 1})
wandb.log({"late": 1.0}, step=50)
wandb.summary["best_acc"] = 0.75
print("RUN", run.id, run.step, run.url)
wandb.finish()
assert wandb.run is None
"""

CRASH = """
import wandb

wandb.init(project="crash", config={"lr": 0.1})
wandb.log({"loss": 2.0})
wandb.log({"loss": 1.0, "acc": 0.5}, commit=False)
wandb.summary["note"] = "partial"
raise RuntimeError("boom")
"""


def _script(tmp_path: Path, text: str, store_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run a W&B script, its import switched to the workbench, as a real process."""
    assert "import wandb\n" in text
    path = tmp_path / "script.py"
    path.write_text(text.replace("import wandb\n", "import workbench.compat.wandb as wandb\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "WB_RUN_ID"}
    env.update(WB_STORE=str(store_dir), PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def _points(st: Store, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(step, value) for _, step, _, value, _ in st.scalars(run_id, key)]


def _keys(st: Store, run_id: str) -> set[str]:
    return {key for _, _, key, _, _ in st.scalars(run_id)}


@pytest.fixture(autouse=True)
def _finish_runs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The shim keeps module state (wandb.run) like W&B: no test leaves a run open, and
    no WANDB_* variable of the machine fills in init's arguments."""
    for var in [v for v in os.environ if v.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    yield
    wandb.teardown()


def test_wandb_script_runs_with_only_the_import_changed(tmp_path: Path, store_dir: Path) -> None:
    proc = _script(tmp_path, TRAIN, store_dir)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    assert proc.stdout.split()[2:] == ["101", "None"]  # the step after the last commit; no URL

    with Store(store_dir) as st:
        [row] = st.runs()
        assert row.id == run_id
        assert (row.name, row.group, row.status, row.launcher) == (
            "sgd-baseline", "sweep-a", "finished", "sdk")

        # One step per commit; commit=False joined the epoch to the validation row.
        train = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
        assert _points(st, run_id, "train/loss") == [(s, 1.0 / (1 + i))
                                                     for i, s in enumerate(train)]
        assert _points(st, run_id, "train/lr") == [(s, 0.001) for s in train]
        assert _points(st, run_id, "epoch") == [(4, 0.0), (9, 1.0), (14, 2.0)]
        # val/* is defined against the epoch: nested dicts flattened with '/'.
        assert _points(st, run_id, "val/loss") == [(0, 0.5), (1, 0.375), (2, 0.25)]
        assert _points(st, run_id, "val/acc") == [(0, 0.25), (1, 0.5), (2, 0.75)]
        # A larger explicit step commits at that step; a later log without one joins it.
        assert _points(st, run_id, "final/score") == [(100, 0.875)]
        assert _points(st, run_id, "final/extra") == [(100, 1.0)]
        # A smaller step is dropped (as W&B drops it); media and strings are not metrics.
        assert _keys(st, run_id) == {"train/loss", "train/lr", "epoch", "val/loss", "val/acc",
                                     "final/score", "final/extra"}
        dists = [d for d in st.records(run_id, tables=("dists",)) if isinstance(d, DistRecord)]
        assert [(d.key, d.step, d.count, d.min, d.max) for d in dists] == [
            ("grads", s, 100, 0.0, 99.0) for s in (4, 9, 14)]

        config = st.get_run(run_id).config
    assert config == {
        "lr": 0.001, "epochs": 3, "batch_size": 16, "model": {"d": 64, "layers": 2},
        "warmup": 10, "seed": 7,
        "wandb": {
            "project": "compat-demo", "group": "sweep a", "tags": ["cpu", "smoke"],
            "notes": "drop-in test", "job_type": "train",
            "summary": {
                "train/loss": {"min": 1.0 / 12, "max": 1.0}, "train/lr": 0.001,
                "epoch": 2, "val/loss": 0.25, "val/acc": 0.75, "phase": "done",
                "final/score": 0.875, "final/extra": 1, "best_acc": 0.75,
            },
        },
    }
    for notice in ("CompatWarning: wandb.init: run name 'sgd baseline' is stored as "
                   "'sgd-baseline'",
                   "CompatWarning: wandb.init: group 'sweep a' is stored as 'sweep-a'",
                   "'samples' is wandb.Image, which the workbench cannot store",
                   "'phase' is not a number (str); it is kept in the run summary only",
                   "step 50 is less than the current step 101; dropping ['late']"):
        assert notice in proc.stderr, proc.stderr


def test_a_crashing_script_keeps_its_pending_row_and_summary(tmp_path: Path,
                                                             store_dir: Path) -> None:
    proc = _script(tmp_path, CRASH, store_dir)
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr
    with Store(store_dir) as st:
        [row] = st.runs()
        assert (row.name, row.status) == ("crash-1", "failed")
        assert _points(st, row.id, "loss") == [(0, 2.0), (1, 1.0)]
        assert _points(st, row.id, "acc") == [(1, 0.5)]
        config = row.config
    assert config == {"lr": 0.1, "wandb": {"project": "crash", "summary": {
        "loss": 1.0, "acc": 0.5, "note": "partial"}}}


# -- in-process: the rules one by one -------------------------------------------------------


def test_calls_before_init_raise_as_wandb_does() -> None:
    assert wandb.run is None
    with pytest.raises(wandb.Error, match=r"^You must call wandb.init\(\) before wandb.log\(\)$"):
        wandb.log({"loss": 1.0})
    with pytest.raises(wandb.Error, match=r"before wandb.define_metric\(\)"):
        wandb.define_metric("loss", summary="min")
    with pytest.raises(wandb.Error, match=r"^You must call wandb.init\(\) before "
                                          r"wandb.config.lr$"):
        _ = wandb.config.lr
    with pytest.raises(wandb.Error, match=r"before wandb.config.update"):
        wandb.config.update({"lr": 1})
    with pytest.raises(wandb.Error, match=r"before wandb.config\['lr'\]"):
        wandb.config["lr"] = 1
    with pytest.raises(wandb.Error, match=r"before wandb.summary\['x'\]"):
        wandb.summary["x"] = 1
    wandb.finish()  # nothing to finish: no error, as in W&B


@pytest.mark.parametrize("call", [
    lambda: wandb.watch(object()),
    lambda: wandb.save("model.pt"),
    lambda: wandb.Artifact("weights", type="model"),
    lambda: wandb.Api(),
    lambda: wandb.sweep({"method": "grid"}),
    lambda: wandb.agent("sweep-id", function=print),
    lambda: wandb.log_artifact("model.pt"),
])
def test_calls_with_no_counterpart_refuse_in_one_line(call: Any) -> None:
    with pytest.raises(NotImplementedError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert "is not supported by the workbench: " in message


def test_unknown_names_say_what_is_supported(store: Store) -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Telemetry'; it supports init, "
                                             "log, config, summary, define_metric, finish"):
        _ = wandb.Telemetry
    assert not hasattr(wandb, "no_such_thing")
    run = wandb.init(project="p")
    with pytest.raises(NotImplementedError, match=r"^wandb.log_code\(\) is not supported"):
        run.log_code(".")
    with pytest.raises(AttributeError, match="wandb Run has no attribute 'sweep_id'"):
        _ = run.sweep_id


def test_step_rules(store: Store) -> None:
    run = wandb.init(project="steps")
    assert wandb.run is run and run.name == "steps-1" and run.url is None
    wandb.log({"a": 1})  # step 0
    wandb.log({"a": 2}, commit=False)  # pending at step 1
    wandb.log({"b": 3}, commit=False)
    wandb.log({"c": 4})  # commits a, b, c at 1
    wandb.log({"a": 5}, step=3)  # commit defaults to False with a step: pending at 3
    wandb.log({"b": 6}, step=3)
    wandb.log({"a": 7}, step=5)  # a larger step commits step 3 first
    wandb.log({"c": 8}, commit=True)  # commits at 5
    wandb.log({})  # an empty row is no step
    with pytest.warns(wandb.CompatWarning, match="step 2 is less than the current step 6"):
        wandb.log({"a": 9}, step=2)
    wandb.log({"a": np.float64(10.0), "b": np.int32(11), "c": np.array([12.0])})  # step 6
    with pytest.raises(TypeError, match="step must be an integer, not float"):
        wandb.log({"a": 1}, step=1.5)
    with pytest.raises(ValueError, match="wandb.log must be passed a dictionary"):
        wandb.log([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Key values passed to `wandb.log` must be strings"):
        wandb.log({1: 2.0})  # type: ignore[dict-item]
    assert run.step == 7
    wandb.finish()
    with pytest.raises(wandb.UsageError, match=r"is finished. The call to `log` is refused"):
        run.log({"a": 1})
    assert _points(store, run.id, "a") == [(0, 1), (1, 2), (3, 5), (5, 7), (6, 10)]
    assert _points(store, run.id, "b") == [(1, 3), (3, 6), (6, 11)]
    assert _points(store, run.id, "c") == [(1, 4), (5, 8), (6, 12)]
    assert store.get_run(run.id).last_step == 6


def test_values_histograms_and_media(store: Store) -> None:
    run = wandb.init(name="values")
    with pytest.warns(wandb.CompatWarning, match=r"'img' is wandb.Image.*skipped"):
        wandb.log({"img": wandb.Image(np.zeros((2, 2))), "x": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", wandb.CompatWarning)
        wandb.log({"img": wandb.Image(np.zeros((2, 2))), "x": 2.0})  # warned once per key
    table = wandb.Table(columns=["a"])
    table.add_data(1)  # builds, so a script runs on
    with pytest.warns(wandb.CompatWarning) as record:
        wandb.log({"table": table, "chart": wandb.plot.line(table, "a", "a"),
                   "short": np.arange(3), "tag": "warmup", "big": np.arange(64)})
    messages = " | ".join(str(w.message) for w in record)
    assert "'table' is wandb.Table" in messages and "'chart' is wandb.plot.line" in messages
    assert "'short' is not a number (ndarray); it is kept in the run summary only" in messages
    wandb.log({"h": wandb.Histogram(np_histogram=(np.array([1, 3]), np.array([0.0, 1.0, 2.0])))})
    with pytest.raises(ValueError, match="maximum length of a histogram is 512"):
        wandb.Histogram([1, 2], num_bins=1000)
    assert dict(run.summary) == {"x": 2.0, "short": [0, 1, 2], "tag": "warmup"}
    wandb.finish()
    assert _points(store, run.id, "x") == [(0, 1.0), (1, 2.0)]
    assert _keys(store, run.id) == {"x"}
    dists = {d.key: d for d in store.records(run.id, tables=("dists",))
             if isinstance(d, DistRecord)}
    assert (dists["big"].step, dists["big"].count, dists["big"].max) == (2, 64, 63.0)
    # From (counts, edges) each bin's midpoint stands for its samples.
    assert (dists["h"].step, dists["h"].count, dists["h"].mean) == (3, 4, 1.25)


def test_config_follows_wandb(store: Store) -> None:
    args = argparse.Namespace(lr=0.1, opt={"name": "adamw", "betas": [0.9, 0.95]})
    run = wandb.init(name="cfg", config=args, config_exclude_keys=["unused"])
    config = wandb.config
    assert config is run.config
    assert (config.lr, config["opt"]["name"], "lr" in config) == (0.1, "adamw", True)
    config.update({"--batch-size": 8})  # leading dashes stripped, as in W&B
    config.steps = np.int64(100)  # numpy values are stored as plain numbers
    config.setdefaults({"steps": 5, "seed": 1})
    assert dict(config.items()) == {"lr": 0.1, "opt": {"name": "adamw", "betas": [0.9, 0.95]},
                                    "batch-size": 8, "steps": 100, "seed": 1}
    with pytest.raises(wandb.ConfigError, match='Attempted to change value of key "lr" from '
                                                "0.1 to 0.2; if you really want to do this"):
        config.lr = 0.2
    config.lr = 0.1  # the same value is no change
    config.update({"lr": 0.2, "opt": {"name": "muon"}}, allow_val_change=True)
    with pytest.raises(ValueError, match="config key 'wandb' is reserved"):
        config.update({"wandb": 1})
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = config.missing
    wandb.finish()
    stored = store.get_run(run.id).config
    # W&B replaces a key's value wholesale: opt lost its betas.
    assert stored == {"lr": 0.2, "opt": {"name": "muon"}, "batch-size": 8, "steps": 100,
                      "seed": 1}


def test_define_metric_summaries_and_step_axes(store: Store) -> None:
    run = wandb.init(name="metrics")
    wandb.define_metric("loss", summary="min")
    wandb.define_metric("loss", summary="max")  # merged, as W&B merges definitions
    wandb.define_metric("acc", summary="best,mean", goal="maximize")
    wandb.define_metric("first", summary="first,last")
    wandb.define_metric("quiet", summary="none")
    m = wandb.define_metric("eval/*", step_metric="global_step")
    assert (m.name, m.step_metric) == ("eval/*", "global_step")
    with pytest.raises(wandb.Error, match=r"summary op: median"):
        wandb.define_metric("x", summary="median")
    with pytest.raises(wandb.Error, match=r"name \(glob suffixes only\): a\*b"):
        wandb.define_metric("a*b")
    with pytest.raises(wandb.Error, match="goal: up"):
        wandb.define_metric("x", goal="up")

    with pytest.warns(wandb.CompatWarning, match=r"'eval/f1' is defined against step metric "
                                                 r"'global_step', which has no value yet; it "
                                                 r"is recorded at the internal step \(0\)"):
        wandb.log({"eval/f1": 0.1, "loss": 3.0, "acc": 0.25, "first": 5, "quiet": 1})
    wandb.log({"global_step": 1000, "loss": 1.0, "acc": 0.75, "first": 6, "quiet": 2})
    wandb.log({"eval/f1": 0.5, "loss": 2.0, "acc": 0.5})  # step_sync: the last global_step
    with pytest.warns(wandb.CompatWarning, match=r"'eval/em' .* 'global_step', which is 1000.5, "
                                                 r"but workbench steps are integers"):
        wandb.log({"global_step": 1000.5, "eval/em": 1.0})
    assert dict(run.summary) == {
        "eval/f1": 0.5, "loss": {"min": 1.0, "max": 3.0}, "acc": {"best": 0.75, "mean": 0.5},
        "first": {"first": 5, "last": 6}, "global_step": 1000.5, "eval/em": 1.0}
    run.summary["loss"] = 0.5  # an assignment overrides
    wandb.finish()
    assert _points(store, run.id, "eval/f1") == [(0, 0.1), (1000, 0.5)]
    assert _points(store, run.id, "eval/em") == [(3, 1.0)]
    assert _points(store, run.id, "global_step") == [(1, 1000.0), (3, 1000.5)]
    assert store.get_run(run.id).last_step == 3  # progress is the internal step
    summary = store.get_run(run.id).config["wandb"]["summary"]
    assert summary["loss"] == 0.5 and summary["acc"] == {"best": 0.75, "mean": 0.5}


def test_disabled_mode_writes_nothing(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = wandb.init(project="off", config={"lr": 1})
    assert run.disabled
    wandb.config.update({"lr": 2}, allow_val_change=True)
    wandb.log({"loss": 1.0})
    wandb.summary["x"] = 1
    assert (wandb.config.lr, run.step) == (2, 1)
    wandb.finish()
    with Store(store_dir) as st:
        assert st.runs() == []


def test_context_manager_alert_and_reinit(store: Store) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with wandb.init(name="ctx") as run:
            wandb.log({"loss": 1.0})
            wandb.alert("loss", "diverged", level=wandb.AlertLevel.WARN)
            raise RuntimeError("diverged")
    assert wandb.run is None
    row = store.get_run(run.id)
    assert (row.status, row.exit_code) == ("failed", 1)
    [event] = store.events(run.id, kind="alert")
    assert (event.step, event.severity, event.payload) == (
        0, "warning", {"title": "loss", "text": "diverged", "level": "WARN"})

    first = wandb.init(name="first")
    with pytest.warns(wandb.CompatWarning, match="returning that run"):
        assert wandb.init(name="again") is first
    second = wandb.init(name="second", reinit="finish_previous")
    assert store.get_run(first.id).status == "finished" and wandb.run is second
    wandb.finish(exit_code=3)
    assert (store.get_run(second.id).status, store.get_run(second.id).exit_code) == (
        "failed", 3)


def test_non_finite_values_reach_the_store_as_strict_json(store: Store) -> None:
    run = wandb.init(name="nan", config={"eps": float("inf")})
    wandb.log({"loss": float("nan")})
    wandb.finish()
    stored = store.get_run(run.id).config
    assert stored == {"eps": "inf", "wandb": {"summary": {"loss": "nan"}}}
    [(step, value)] = _points(store, run.id, "loss")
    assert step == 0 and value != value  # the point is kept, flagged NaN
    assert [e.kind for e in store.events(run.id)] == ["nan"]


def test_inside_a_launched_worker_it_attaches_and_the_spec_wins(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    row = store.create_run(kind="custom", name="launched", status="running",
                           config={"lr": 0.5, "steps": 10})
    monkeypatch.setenv("WB_RUN_ID", row.id)
    run = wandb.init(project="p", name="other name", group="g", config={"lr": 0.1, "seed": 3})
    assert run.id == row.id and run.name == "launched"
    assert dict(wandb.config.items()) == {"lr": 0.5, "steps": 10, "seed": 3}  # like a sweep's
    wandb.log({"loss": 1.0})
    wandb.finish()
    stored = store.get_run(row.id)
    assert (stored.name, stored.group, stored.status) == ("launched", None, "running")
    assert _points(store, row.id, "loss") == [(0, 1.0)]
