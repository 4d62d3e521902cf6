"""The `pretrain` recipe: spec validation, an end-to-end launch, exact resume after
kill -9, the spike policies (through the test-only fault hooks) and MuonClip."""

from __future__ import annotations

import math
import os
import signal
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import wait_for
from workbench.launch import local
from workbench.launch.local import Launched
from workbench.recipes import Context
from workbench.recipes import pretrain as pt
from workbench.records import EventRecord
from workbench.run_record import RunRecord
from workbench.spec import LoadedSpec, SpecError, dump_toml, load_spec, parse_spec
from workbench.store import Store
from workbench.tracking import Run

TINY = """
kind = "pretrain"
seed = 3
[model]
n_layer = 2
n_head = 4
d_model = 64
seq_len = 32
[optim]
name = "{opt}"
lr = {lr}
tau = {tau}
warmup_steps = 2
[train]
steps = {steps}
batch_size = 4
eval_every = 10
eval_batches = 2
max_logit_every = 5
svd_every = 10
checkpoint_every = {ckpt}
keep_checkpoints = {keep}
cpu_threads = 1
[data]
max_bytes = 200000
[stability]
spike_policy = "{policy}"
window = 20
warmup = 10
threshold = 3.0
min_rel_jump = 0.2
"""


def tiny(opt: str = "muon", lr: float = 1e-2, tau: float = 100.0, steps: int = 30,
         ckpt: int = 10, keep: int = 2, policy: str = "alert") -> str:
    return TINY.format(opt=opt, lr=lr, tau=tau, steps=steps, ckpt=ckpt, keep=keep,
                       policy=policy)


# ----------------------------------------------------------------------------- spec


def test_builtin_specs_parse() -> None:
    for name in ("muon-tiny", "muonclip-tiny", "adamw-tiny", "muon-small"):
        spec = load_spec(name).spec
        assert spec.kind == "pretrain" and spec.description
        assert spec.total_steps == spec.train.steps
    names = {n: load_spec(f"{n}-tiny").spec for n in ("muon", "muonclip", "adamw")}
    assert {n: s.optim.name for n, s in names.items()} == {n: n for n in names}
    dumps = {n: s.model_dump(exclude={"optim": {"name"}, "description": True})
             for n, s in names.items()}
    assert dumps["muon"] == dumps["muonclip"] == dumps["adamw"]  # only the optimizer differs
    small = load_spec("muon-small").spec
    assert (small.model.n_layer, small.model.d_model, small.model.seq_len) == (12, 768, 1024)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["optim.lrr=1"], "unknown key optim.lrr — did you mean optim.lr?"),
    (["optim.lr=-1"], "optim.lr: "),
    (["optim.name=sgd"], "optim.name: "),
    (["model.n_head=6", "model.d_model=256"], "n_head (6) must divide d_model (256)"),
    (["model.n_kv_head=3"], "n_kv_head (3) must divide n_head (4)"),
    (["resources.procs=3"], "resources.procs (3) must divide the micro-batch"),
    (["train.grad_accum=3"], "train.grad_accum (3) must divide train.batch_size (4)"),
    (["optim.warmup_steps=30"], "optim.warmup_steps (30) must be less than train.steps (30)"),
    (["stability.spike_policy=panic"], "stability.spike_policy: "),
    (["stability.spike_policy=rollback", "train.checkpoint_every=0"],
     "stability.spike_policy = rollback needs checkpoints"),
    (["data.path=no/such/corpus.txt"], "data.path: no such file or directory"),
])
def test_bad_specs_are_refused_in_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(tiny(), overrides)
    msg = str(info.value)
    assert expected in msg and "\n" not in msg


def test_schedules() -> None:
    spec = parse_spec(tiny(steps=100), ["optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    lr = spec.optim.lr
    assert pt.lr_at(spec, 5) == pytest.approx(lr / 2)
    assert pt.lr_at(spec, 10) == pytest.approx(lr)
    assert pt.lr_at(spec, 100) == pytest.approx(0.1 * lr)
    assert all(pt.lr_at(spec, s) >= pt.lr_at(spec, s + 1) for s in range(10, 100))
    wsd = parse_spec(tiny(steps=100), ["optim.schedule=wsd", "optim.warmup_steps=10",
                                       "optim.decay_frac=0.2", "optim.min_lr_ratio=0"])
    assert pt.lr_at(wsd, 80) == pytest.approx(lr)
    assert pt.lr_at(wsd, 90) == pytest.approx(lr / 2)
    assert pt.lr_at(wsd, 100) == pytest.approx(0.0)


def test_muon_lr_defaults_per_variant_and_scales_with_the_schedule() -> None:
    spec = parse_spec(tiny(lr=3e-3, steps=100), ["optim.warmup_steps=10"])
    assert spec.muon_lr == 3e-3  # match_rms_adamw shares AdamW's lr
    original = parse_spec(tiny(lr=3e-3, steps=100),
                          ["optim.adjust_lr_fn=original", "optim.warmup_steps=10"])
    assert original.muon_lr == pt.ORIGINAL_MUON_LR == 0.02
    own = parse_spec(tiny(lr=3e-3), ["optim.adjust_lr_fn=original", "optim.muon_lr=0.05"])
    assert own.muon_lr == 0.05

    torch.manual_seed(0)
    model = pt.build_model(original, torch.device("cpu"))
    opts = pt.build_optimizer_list(original, model, torch.device("cpu"), distributed=False)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pt.optimizer_step(opts, pt.lr_at(original, 5))
    muon, adamw = opts
    assert muon.param_groups[0]["adjust_lr_fn"] == "original"
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5)  # half-way up the warm-up
    assert adamw.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.5)


def test_svd_entropy() -> None:
    assert pt.svd_entropy(torch.eye(8)) == pytest.approx(1.0)
    assert pt.svd_entropy(torch.ones(8, 8)) == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- helpers


def launch(store: Store, text: str) -> Launched:
    return local.start(store, LoadedSpec(parse_spec(text), "tiny.toml"))


def wait_done(store: Store, launched: Launched, timeout: float = 90) -> RunRecord:
    row, proc = launched.record, launched.process
    if proc is not None:
        proc.wait(timeout=timeout)
    done = wait_for(lambda: (r := store.get_run(row.id)).status not in
                    ("queued", "running") and r, timeout, "the run to end")
    assert done.status == "finished", (Path(store.run_dir(row.id)) / "stdout.log"
                                       ).read_text()[-3000:]
    return done


def run_inline(store: Store, text: str) -> RunRecord:
    """The recipe in this process (no worker): faster, and the same code path."""
    spec = parse_spec(text)
    row = store.create_run(kind="pretrain", base="tiny", status="running", spec=dump_toml(spec),
                           config=spec.run_config(), total_steps=spec.total_steps)
    run = Run(store, row, owner=True)
    try:
        pt.run(spec, Context(run=run, run_dir=store.run_dir(row.id)))
    finally:
        run.finish()
    return row


def losses(store: Store, run_id: str, key: str = "train/loss") -> dict[int, float]:
    return {step: value for _, step, _, value, _ in store.scalars(run_id, key)}


def ckpt(store: Store, run_id: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(store.run_dir(run_id) / "checkpoints" / f"step-{step:08d}" /
                     "model.safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- end to end


def test_launch_end_to_end_logs_every_metric(store: Store) -> None:
    row = wait_done(store, launch(store, tiny(opt="muonclip", steps=20)))
    keys = {k for _, _, k, _, _ in store.scalars(row.id)}
    expected = {"train/loss", "val/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
                "attn/max_logit", "qkclip/clipped_heads", "optim/update_rms/muon",
                "optim/update_rms/adamw", "optim/weight_rms/muon", "optim/weight_rms/adamw",
                "svd/entropy/blocks.0.attn.q_proj.weight",
                "svd/entropy/blocks.1.mlp.up_proj.weight"}
    assert expected <= keys, expected - keys
    assert "perf/mfu" not in keys  # CUDA only
    assert sorted(losses(store, row.id)) == list(range(1, 21))
    matrices = [r for r in store.records(row.id, keys=["attn/max_logit_heads"])
                if r.type == "matrix"]
    assert [m.step for m in matrices] == [5, 10, 15, 20]
    assert all(m.shape == (2, 4) for m in matrices)
    config = store.get_run(row.id).config
    assert config["muon_variant"] == "match_rms_adamw"
    assert {r["optimizer"] for r in config["routing"]} == {"muon", "adamw"}
    assert row.total_steps == 20
    events = store.event_counts(row.id)
    assert events["checkpoint"] == 2 and events["stage"] >= 3
    stdout = (store.run_dir(row.id) / "stdout.log").read_text()
    assert "2-D hidden matrix" in stdout  # the routing table is printed


def test_kill_9_then_resume_matches_an_uninterrupted_run(store: Store,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    text = tiny(opt="muon", steps=40, ckpt=10)
    ref = wait_done(store, launch(store, text))
    monkeypatch.setenv("WB_FAULT_SLEEP_S", "0.15")  # slow enough to kill mid-way
    launched = launch(store, text)
    b = launched.record
    monkeypatch.delenv("WB_FAULT_SLEEP_S")

    def past_checkpoint() -> bool:
        ck = [e.step for e in store.events(b.id, kind="checkpoint")]
        return bool(ck) and max(losses(store, b.id), default=0) > max(ck) + 1

    wait_for(past_checkpoint, 90, "run B to log past a checkpoint", interval=0.02)
    os.killpg(b.pid, signal.SIGKILL)
    launched.process.wait(timeout=30)
    killed = store.get_run(b.id)
    assert killed.status == "lost"
    assert max(losses(store, b.id)) < 40  # it really was interrupted

    c = wait_done(store, local.resume(store, killed))
    resumed = [e for e in store.events(c.id, kind="checkpoint")
               if e.payload.get("action") == "resumed"]
    assert len(resumed) == 1
    start = resumed[0].step
    assert start >= 10
    a_loss, c_loss = losses(store, ref.id), losses(store, c.id)
    assert sorted(c_loss) == list(range(start + 1, 41))
    assert {s: a_loss[s] for s in c_loss} == c_loss  # bit for bit
    b_loss = losses(store, b.id)
    assert {s: a_loss[s] for s in b_loss} == b_loss
    assert losses(store, c.id, "val/loss")[40] == losses(store, ref.id, "val/loss")[40]


def test_stop_checkpoints_and_ends_as_stopped(store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_SLEEP_S", "0.1")
    launched = launch(store, tiny(steps=200, ckpt=0))
    row = launched.record
    wait_for(lambda: max(losses(store, row.id), default=0) >= 3, 60, "a few steps")
    local.stop(store, store.get_run(row.id), grace=30)
    launched.process.wait(timeout=30)
    assert store.get_run(row.id).status == "stopped"
    (event,) = store.events(row.id, kind="checkpoint")
    assert event.payload["reason"] == "stop" and 3 <= event.step < 200
    assert (store.run_dir(row.id) / "checkpoints" / f"step-{event.step:08d}").is_dir()


# ----------------------------------------------------------------------------- spikes

SPIKE_AT = 25


def spike_events(store: Store, run_id: str) -> dict[str, list[EventRecord]]:
    out: dict[str, list[EventRecord]] = {}
    for e in store.events(run_id):
        out.setdefault(e.kind, []).append(e)
    return out


def test_policy_alert_records_the_spike_and_applies_the_update(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_CORRUPT_STEPS", str(SPIKE_AT))
    row = run_inline(store, tiny(steps=30, ckpt=1, keep=100, policy="alert"))
    ev = spike_events(store, row.id)
    assert [e.step for e in ev["loss_spike"]] == [SPIKE_AT]
    assert ev["loss_spike"][0].payload["action"] == "apply"
    assert {"value", "baseline", "score"} <= ev["loss_spike"][0].payload.keys()
    assert "skip" not in ev and "rollback" not in ev
    assert not same_weights(ckpt(store, row.id, SPIKE_AT - 1),
                            ckpt(store, row.id, SPIKE_AT))


def test_policy_skip_drops_the_update(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_CORRUPT_STEPS", str(SPIKE_AT))
    row = run_inline(store, tiny(steps=30, ckpt=1, keep=100, policy="skip"))
    ev = spike_events(store, row.id)
    assert [e.step for e in ev["loss_spike"]] == [SPIKE_AT]
    assert [e.step for e in ev["skip"]] == [SPIKE_AT]
    assert same_weights(ckpt(store, row.id, SPIKE_AT - 1), ckpt(store, row.id, SPIKE_AT))
    assert not same_weights(ckpt(store, row.id, SPIKE_AT),
                            ckpt(store, row.id, SPIKE_AT + 1))


def test_policy_rollback_restores_the_checkpoint_and_skips_the_window(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_CORRUPT_STEPS", str(SPIKE_AT))
    text = tiny(steps=30, ckpt=10, keep=5, policy="rollback")
    row = run_inline(store, text.replace("[stability]", "[stability]\nrollback_skip_batches = 3"))
    ev = spike_events(store, row.id)
    assert [e.step for e in ev["loss_spike"]] == [SPIKE_AT]
    (rb,) = ev["rollback"]
    assert rb.payload["from_step"] == SPIKE_AT and rb.payload["to_step"] == 20
    assert rb.payload["skipped_batches"] == (SPIKE_AT - 20) + 3
    # Steps 21..25 ran twice: once before the rollback, once on fresh data after it.
    points = [(s, v) for _, s, _, v, _ in store.scalars(row.id, "train/loss")]
    steps = [s for s, _ in points]
    assert steps == [*range(1, SPIKE_AT + 1), *range(21, 31)]
    first, second = dict(points[:SPIKE_AT]), dict(points[SPIKE_AT:])
    assert first[21] != second[21]
    state = torch.load(store.run_dir(row.id) / "checkpoints" / "step-00000030" / "state.pt",
                       weights_only=False)
    assert state["loader"]["step"] == 30 + (SPIKE_AT - 20) + 3  # the data window was skipped
    assert state["rollbacks"] == 1


def test_nan_loss_is_never_applied(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_FAULT_NAN_STEPS", "15")
    row = run_inline(store, tiny(steps=20, ckpt=1, keep=100, policy="alert"))
    ev = spike_events(store, row.id)
    assert [e.step for e in ev["nan"]] == [15]
    assert ev["nan"][0].payload["action"] == "skip"
    assert [e.step for e in ev["skip"]] == [15]
    assert same_weights(ckpt(store, row.id, 14), ckpt(store, row.id, 15))
    final = ckpt(store, row.id, 20)
    assert all(torch.isfinite(t).all() for t in final.values())
    assert 15 not in losses(store, row.id)
    assert all(math.isfinite(v) for v in losses(store, row.id).values())


# ----------------------------------------------------------------------------- MuonClip


@pytest.mark.slow
def test_muonclip_holds_the_max_logit_at_tau(store: Store) -> None:
    """A high lr makes Muon's max logit grow past tau; MuonClip holds it near tau.

    QK-Clip rescales after the step with the max logit of that step's forward pass, so
    the next forward can overshoot tau by one step's growth: the curve is held around
    tau (median within 20%) and never runs away (max within 50%), while Muon's passes
    twice tau."""
    tau = 2.0
    curves, first = {}, None
    for opt in ("muon", "muonclip"):
        row = run_inline(store, tiny(opt=opt, lr=0.03, tau=tau, steps=60, ckpt=0))
        curves[opt] = losses(store, row.id, "attn/max_logit")
        if opt == "muonclip":
            clipped = losses(store, row.id, "qkclip/clipped_heads")
            first = min(s for s, v in clipped.items() if v > 0)
            (event, *_) = store.events(row.id, kind="qk_clip")
            payload = event.payload
            assert payload["count"] >= 1 and 0 < payload["min_gamma"] < 1
            assert len(payload["heads"]) == len(payload["gamma"]) == payload["count"]
            assert min(payload["gamma"]) == pytest.approx(payload["min_gamma"])
    assert max(curves["muon"].values()) > 2 * tau
    after = [v for s, v in curves["muonclip"].items() if first is not None and s > first]
    assert after and statistics.median(after) <= tau * 1.2 and max(after) <= tau * 1.5


def test_a_validation_split_too_small_is_reported_not_hidden(store: Store) -> None:
    row = run_inline(store, tiny(steps=3, ckpt=0).replace("max_bytes = 200000",
                                                          "max_bytes = 200000\nval_permille = 0"))
    (event,) = store.events(row.id, kind="data_warning")
    assert event.severity == "warning" and "val/loss is measured on training data" in \
        event.payload["message"]
    assert 3 in losses(store, row.id, "val/loss")
