"""The `depth` kind and recurrent-depth pretraining: the chain task against a
reference evaluator, spec refusals, the pretrain recipe with model.arch =
recurrent-depth (recurrence logged, QK stats per distinct layer, MuonClip), and a
whole depth run (train, evaluate, every metric under its docs/ARCHITECTURE.md name)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from tests.helpers import wb_inproc
from workbench.recipes import Context
from workbench.recipes.depth.run import run as depth_run
from workbench.recipes.depth.task import ChainTask, Sequence, TaskLoader
from workbench.recipes.pretrain import run as pretrain_run
from workbench.run_record import RunRecord
from workbench.spec import SpecError, dump_toml, load_spec, parse_spec
from workbench.store import Store
from workbench.tracking import Run


def reference_answer(text: str) -> int:
    """'7*~+' evaluated by hand-written rules (not task.apply)."""
    x = int(text[0])
    for op in text[1:]:
        x = {"+": (x + 1) % 10, "*": (x * 3) % 10, "~": 9 - x}[op]
    return x


def test_chain_task_answers_are_the_operations_applied_in_order() -> None:
    task = ChainTask(max_ops=6, seq_len=64)
    seen_ops = set()
    for seq in task.sequences(seed=5, start=0, n=50):
        text = bytes(t for t in seq.ids if t < 256).decode()
        problems = [p for p in text.split(";") if p]
        assert len(problems) == len(seq.answers) == len(seq.ops)
        for prob, p, k in zip(problems, seq.answers, seq.ops, strict=True):
            lhs, ans = prob.split("=")
            assert len(lhs) == k + 1 and 1 <= k <= 6
            assert int(ans) == reference_answer(lhs) == seq.ids[p + 1] - ord("0")
            assert seq.ids[p] == ord("=")
            seen_ops.add(k)
        assert len(seq.ids) == 65
    assert seen_ops == set(range(1, 7))
    x, y = task.batch(task.sequences(5, 0, 4))
    assert x.shape == y.shape == (4, 64)
    assert int((y != -100).sum()) == sum(len(s.answers) for s in task.sequences(5, 0, 4))


def problem_texts(seqs: list[Sequence]) -> set[str]:
    """Every problem of the sequences, as its text up to '=' ("7*~+=")."""
    out = set()
    for seq in seqs:
        text = bytes(t for t in seq.ids if t < 256).decode()
        out |= {p.split("=")[0] + "=" for p in text.split(";") if p}
    return out


def test_evaluated_problems_are_never_trained_on() -> None:
    """With up to 3 operations there are only 390 problems: training draws every one of
    them unless some are held out. The evaluation set (and validation) holds held-out
    problems only, of every length."""
    task = ChainTask(max_ops=3, seq_len=48)
    trained = problem_texts(task.sequences(seed=0, start=0, n=800))
    evaluated = problem_texts(task.eval_set(0, 64))
    assert len(trained) > 300 and len(evaluated) > 20
    assert not trained & evaluated
    assert {len(p) - 2 for p in evaluated} == {1, 2, 3}  # every chain length
    from workbench.recipes.depth.task import split_of

    assert all(split_of(p) == "eval" for p in evaluated)
    assert all(split_of(p) == "train" for p in trained)


def test_task_loader_is_a_pure_function_of_seed_and_index_and_resumes() -> None:
    task = ChainTask(4, 32)
    a, b = TaskLoader(task, 8, seed=1), TaskLoader(task, 8, seed=1)
    first = [next(a) for _ in range(3)]
    b.load_state_dict(a.state_dict())
    assert torch.equal(next(a)[0], next(b)[0])
    assert torch.equal(first[1][0], TaskLoader(task, 8, seed=1).batch(1)[0])
    assert not torch.equal(first[0][0], TaskLoader(task, 8, seed=2).batch(0)[0])
    assert not any(torch.equal(first[0][0], x) for x, _ in
                   [task.batch(task.eval_set(1, 8))])  # eval set is a different stream


@pytest.mark.parametrize(("overrides", "expected"), [
    (["resources.procs=2"], "the depth kind runs in one process"),
    (["resources.nodes=2"], "the depth kind runs on one node"),
    (["eval.draft_steps=32"], "eval.draft_steps (32) must be less than eval.verify_steps"),
    (["task.max_ops=60", "model.seq_len=64"], "too long for model.seq_len"),
    (["eval.recurrences=[0, 4]"], "every recurrence count must be >= 1"),
    (["model.n_kv_head=2"], "n_kv_head applies to arch 'gpt'"),
])
def test_bad_depth_specs_are_refused_in_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec("depth-tiny", overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_recurrent_depth_fields_on_a_gpt_are_refused_by_the_cli() -> None:
    r = wb_inproc("launch", "muon-tiny", "--set", "model.n_core=3")
    assert r.returncode == 2
    assert "n_core applies to arch 'recurrent-depth'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


RD_PRETRAIN = """
kind = "pretrain"
seed = 1
[model]
arch = "recurrent-depth"
d_model = 32
n_head = 2
seq_len = 32
n_prelude = 1
n_core = 2
n_coda = 1
mean_recurrence = 4
backprop_depth = 2
[optim]
name = "muonclip"
lr = 1e-2
tau = {tau}
[train]
steps = 6
batch_size = 4
eval_every = 3
eval_batches = 1
max_logit_every = 3
svd_every = 3
checkpoint_every = 0
cpu_threads = 1
[data]
max_bytes = 100000
"""


def inline(store: Store, text: str, kind: str, entry: Any) -> RunRecord:
    spec = parse_spec(text)
    row = store.create_run(kind=kind, base="t", status="running", spec=dump_toml(spec),
                           config=spec.run_config(), total_steps=spec.total_steps)
    run = Run(store, row, owner=True)
    try:
        entry(spec, Context(run=run, run_dir=store.run_dir(row.id)))
    finally:
        run.finish()
    return row


def test_pretrain_trains_a_recurrent_depth_model_with_muonclip(store: Store) -> None:
    row = inline(store, RD_PRETRAIN.format(tau=0.5), "pretrain", pretrain_run)
    rid = row.id
    draws = [v for *_, v, _ in store.scalars(rid, "train/recurrence")]
    assert len(draws) == 6 and all(v >= 1 and v == int(v) for v in draws)
    assert len(set(draws)) > 1  # drawn per step, not fixed
    matrices = [r for r in store.records(rid, keys=["attn/max_logit_heads"])
                if r.type == "matrix"]
    assert [m.shape for m in matrices] == [(4, 2), (4, 2)]  # prelude + 2 core + coda
    clips = store.events(rid, kind="qk_clip")
    assert clips, "tau 0.5 is below every head's max logit: QK-Clip must act"
    keys = {k for _, _, k, _, _ in store.scalars(rid)}
    assert {"train/loss", "val/loss", "qkclip/clipped_heads", "attn/max_logit",
            "svd/entropy/prelude.0.attn.q_proj.weight",
            "svd/entropy/coda.0.mlp.up_proj.weight"} <= keys


def test_recurrent_depth_draws_are_seeded_by_step_so_ranks_and_resumes_agree() -> None:
    from workbench.recipes.common.step import model_kwargs

    spec = parse_spec(RD_PRETRAIN.format(tau=100))
    a = [model_kwargs(spec, s, 0)["steps"] for s in range(1, 40)]
    assert a == [model_kwargs(spec, s, 0)["steps"] for s in range(1, 40)]
    assert 2 < sum(a) / len(a) < 8  # mean_recurrence 4
    assert model_kwargs(load_spec("muon-tiny").spec, 1, 0) == {}  # a GPT gets nothing


DEPTH_TINY = ["model.d_model=32", "model.n_head=2", "model.seq_len=48", "train.steps=8",
              "optim.warmup_steps=2",
              "train.batch_size=4", "train.eval_every=4", "train.eval_batches=1",
              "train.checkpoint_every=0", "train.cpu_threads=1", "task.max_ops=4",
              "eval.recurrences=[1, 2, 4]", "eval.sequences=4", "eval.adaptive_sequences=2",
              "eval.draft_steps=1", "eval.verify_steps=4", "eval.decode_tokens=12"]


def test_a_depth_run_trains_then_logs_every_depth_metric(store: Store) -> None:
    loaded = load_spec("depth-tiny", DEPTH_TINY)
    row = inline(store, loaded.to_toml(), "depth", depth_run)
    rid = row.id
    summary = store.events(rid, kind="depth_eval")[0].payload
    # perf/tokens_per_s is the training throughput only: the evaluation, logged at the
    # last training step, wrote the decoding speed there too.
    training = [v for _, _, k, v, _ in store.scalars(rid) if k == "perf/tokens_per_s"]
    assert training and summary["adaptive_tok_s"] not in training
    keys = {k for _, _, k, _, _ in store.scalars(rid)}
    expected = {"train/loss", "train/recurrence", "val/loss", "eval/accuracy",
                "eval/accuracy_fixed", "eval/accuracy_fixed_shared", "eval/accuracy_seen",
                "depth/steps_mean",
                "depth/steps_fixed", "depth/steps_ratio", "depth/compute_ratio",
                "depth/readouts_mean", "depth/kv_bytes", "depth/kv_bytes_unshared",
                "depth/spec_accept_rate", "perf/tokens_per_s", "depth/decode_tokens_per_s",
                "depth/decode_tokens_per_s_fixed", "perf/spec_tokens_per_s",
                "perf/plain_tokens_per_s",
                *(f"eval/accuracy/r{r}" for r in (1, 2, 4)),
                *(f"perf/tokens_per_s/r{r}" for r in (1, 2, 4))}
    assert expected <= keys, expected - keys
    value = {k: v for _, _, k, v, _ in store.scalars(rid)}
    assert value["depth/steps_fixed"] == 4 and 1 <= value["depth/steps_mean"] <= 4
    assert value["depth/kv_bytes"] < value["depth/kv_bytes_unshared"]
    dist = [r for r in store.records(rid, keys=["depth/steps_per_token"])
            if r.type == "dist"]
    assert len(dist) == 1 and 1 <= dist[0].min <= dist[0].max <= 4
    sample = store.events(rid, kind="depth_sample")[0].payload
    assert len(sample["tokens"]) == len(sample["depths"]) > 0
    assert "=" in "".join(sample["tokens"]) and all(1 <= d <= 4 for d in sample["depths"])
    assert summary["spec_equal"] is True  # speculative == plain greedy at verify depth
    assert value["depth/decode_tokens_per_s"] == summary["adaptive_tok_s"]
    assert value["depth/compute_ratio"] >= value["depth/steps_ratio"]  # readouts cost too
    stages = [e.payload["stage"] for e in store.events(rid, kind="stage")]
    assert stages[-3:] == ["training", "evaluating", "done"]


def test_adaptive_exit_prefill_on_a_shared_cache_equals_the_parallel_forward() -> None:
    """A block fed into an empty shared cache is the parallel forward (each iteration
    reads the block's own iteration), which is what the depth evaluation relies on."""
    from workbench.engine.depth import DepthDecoder
    from workbench.models.config import RecurrentDepthConfig
    from workbench.models.recurrent_depth import RecurrentDepthGPT

    torch.manual_seed(0)
    model = RecurrentDepthGPT(RecurrentDepthConfig(d_model=32, n_head=2, seq_len=32)).eval()
    ids = [random.Random(0).randrange(256) for _ in range(12)]
    dec = DepthDecoder(model, 12, "shared", 5, seed=3)
    fed = dec.feed(ids, 5)
    states = torch.cat([model.initial_state(torch.empty(1, 1, 32),
                                            torch.Generator().manual_seed(3 * 1_000_003 + i))
                        for i in range(12)], dim=1)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), steps=5, state=states).logits[0]
    torch.testing.assert_close(fed, ref, atol=1e-4, rtol=1e-4)


def tiny_model(**kw: Any) -> Any:
    from workbench.models.config import RecurrentDepthConfig
    from workbench.models.recurrent_depth import RecurrentDepthGPT

    torch.manual_seed(0)
    args: dict[str, Any] = dict(seq_len=48, d_model=32, n_head=2, n_prelude=1, n_core=2,
                                n_coda=1, mean_recurrence=4, backprop_depth=2, ffn_hidden=64)
    return RecurrentDepthGPT(RecurrentDepthConfig(**(args | kw))).eval()


def by_hand_flops(model: Any, context: int, steps: int, readouts: int) -> int:
    """Decoding FLOPs of one token, written out stage by stage (the model in
    `decode_flops`'s docstring): 2 per matrix weight, 4 * d * context per attention."""
    c = model.config

    def matrices(blocks: Any) -> int:
        return sum(p.numel() for p in blocks.parameters() if p.dim() == 2)

    attn = 4 * c.d_model * context
    prelude = 2 * matrices(model.prelude) + attn * c.n_prelude
    core = 2 * (matrices(model.core) + 2 * c.d_model * c.d_model) + attn * c.n_core
    readout = 2 * (matrices(model.coda) + c.vocab_size * c.d_model) + attn * c.n_coda
    return prelude + steps * core + readouts * readout


def test_compute_ratio_counts_the_readouts_of_the_kl_rule() -> None:
    """steps_ratio counts core iterations only; the kl rule also runs the coda and LM
    head after every iteration, which compute_ratio counts (latent reads out once)."""
    from types import SimpleNamespace

    from workbench.recipes.depth.evaluate import adaptive_exit

    model = tiny_model()
    seqs = ChainTask(4, 48).eval_set(0, 2)
    positions = [p for s in seqs for p in range(1, s.answers[-1] + 2)]  # context lengths
    ratio = {}
    for rule, readouts in (("kl", 2), ("latent", 1)):
        ev = SimpleNamespace(max_steps=8, exit=rule, threshold=float("inf"))  # exit at 2
        a = adaptive_exit(model, seqs, ev, 0, say=lambda _: None, stop=lambda: False)
        assert a is not None and len(a.steps) == len(positions)
        assert set(a.steps) == {2} and set(a.readouts) == {readouts}
        want = sum(by_hand_flops(model, p, 2, readouts) for p in positions)
        fixed = sum(by_hand_flops(model, p, 8, 1) for p in positions)
        assert (a.flops, a.fixed_flops) == (want, fixed)
        ratio[rule] = a.flops / a.fixed_flops
    assert ratio["kl"] > ratio["latent"] > 2 / 8  # steps_ratio: prelude and readouts cost


def test_fixed_baseline_on_the_shared_cache_isolates_the_exit_rule() -> None:
    """With the exit rule off, adaptive decoding is the shared-cache baseline token for
    token (gap 0, same compute); the full-cache baseline is a different computation."""
    from types import SimpleNamespace

    from workbench.recipes.depth.evaluate import adaptive_exit

    model = tiny_model()
    seqs = ChainTask(4, 48).eval_set(0, 3)
    ev = SimpleNamespace(max_steps=4, exit="none", threshold=None)
    a = adaptive_exit(model, seqs, ev, 0, say=lambda _: None, stop=lambda: False)
    assert a is not None
    assert a.shared_hits == a.hits and a.flops == a.fixed_flops
    assert len(a.fixed_hits) == len(a.hits) == sum(len(s.answers) for s in seqs)


def test_bench_depth_runs_and_reports_its_fields() -> None:
    """`wb bench depth` end to end on a tiny run (the figures come from the real bench,
    reported in the issue note)."""
    from workbench.bench.depth import bench_depth

    r = bench_depth(quick=True, overrides=DEPTH_TINY)
    for key in ("fixed_steps_mean", "adaptive_steps_mean", "steps_ratio", "compute_ratio",
                "fixed_acc", "fixed_shared_acc", "adaptive_acc", "seen_acc", "kv_bytes_shared",
                "kv_bytes_unshared", "spec_tok_s", "plain_tok_s", "spec_accept_rate",
                "decode_tok_s", "fixed_decode_tok_s"):
        assert isinstance(r[key], int | float) and r[key] >= 0, key
    # compute_ratio >= steps_ratio always; it may pass 1 on a tiny model, where the kl
    # rule's readouts (coda + a 260-row LM head) cost more than the iterations saved.
    assert r["fixed_steps_mean"] == 4 and r["steps_ratio"] <= r["compute_ratio"]
    assert r["acc_gap_shared"] == r["fixed_shared_acc"] - r["adaptive_acc"]
    assert r["acc_gap_full"] == r["fixed_acc"] - r["adaptive_acc"]
    assert "held-out problems" in r["eval_split"]
    assert r["kv_bytes_shared"] < r["kv_bytes_unshared"]
    assert set(r["accuracy_by_r"]) == {"1", "2", "4"} and r["spec_equal"] is True


def test_short_recurrence_draws_are_watched_against_their_own_level(store: Store) -> None:
    """A draw below the mean recurrence has a higher loss by design: against one baseline
    it raised dozens of false loss_spike events, and skipping such draws left them
    unwatched. The detector keeps a level per recurrence bucket (recipes/pretrain
    docstring): a spike at a short draw fires, the normal gap between draws does not."""
    from workbench.recipes.common.builders import spike_detector
    from workbench.recipes.common.faults import Faults
    from workbench.recipes.common.step import StepOut
    from workbench.recipes.common.trainer import Trainer

    spec = parse_spec(RD_PRETRAIN.format(tau=100))
    row = store.create_run(kind="pretrain", base="t", status="running")
    run = Run(store, row, owner=True)
    trainer = Trainer(spec=spec, ctx=Context(run=run, run_dir=store.run_dir(row.id)),
                      par=None, model=None, ddp=None, optimizers=[], loader=None, val=[],
                      detector=spike_detector(spec), groups={}, faults=Faults())  # type: ignore[arg-type]
    m = torch.zeros(4, 2)
    rng = random.Random(0)
    draws = [1.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0, 8.0]  # mean_recurrence is 4: half below
    spike_at = 0
    for step in range(1, 401):
        r = draws[step % len(draws)]
        loss = 2.0 * (1 + 1.5 / r) * (1 + 0.01 * rng.gauss(0, 1))  # r = 1 costs 2.5x
        if step > 300 and r == 1.0 and not spike_at:
            spike_at, loss = step, loss * 1.3
        assert trainer.on_bad_step(step, StepOut(loss, 1.0, m, recurrence=r)) == "apply"
    run.finish()
    events = store.events(row.id, kind="loss_spike")
    assert [e.step for e in events] == [spike_at]
    assert events[0].payload["baseline"] == pytest.approx(5.0, rel=0.03)  # r = 1's level


def test_depth_tab_figures_line_reads_the_evaluation_keys(store: Store) -> None:
    """The Depth tab's figures line shows decoding speed from its own key, next to the
    exit rule's accuracy against both fixed baselines and the two cost ratios."""
    from workbench.feed import RunFeed
    from workbench.screens.tabs.depth import depth_figures

    run = Run(store, store.create_run(kind="depth", status="running"), owner=True)
    feed = RunFeed(store, run.id)
    feed.poll()
    assert depth_figures(feed) == ""
    run.log({"perf/tokens_per_s": 9000.0, "eval/accuracy": 0.75,
             "eval/accuracy_fixed_shared": 0.8, "eval/accuracy_fixed": 0.85,
             "depth/steps_ratio": 0.17, "depth/compute_ratio": 0.31,
             "depth/decode_tokens_per_s": 42.0}, step=5)
    run.finish()
    feed.poll()
    line = depth_figures(feed)
    assert line == ("accuracy adaptive 0.750 · fixed shared 0.800 · fixed full 0.850 · "
                    "steps ratio 0.170 · compute ratio 0.310 · decode tok/s 42")
