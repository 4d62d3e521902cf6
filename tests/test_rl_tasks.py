"""RL tasks, the format rule and rewards, the verifier pool, and the warm start's cache."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.recipes.rl.tasks import (
    TASKS,
    Problem,
    flawed_solution_text,
    heavy_tail,
    load_jsonl,
    sample_problem,
    solution_text,
)
from workbench.recipes.rl.verifier import (
    VERIFIERS,
    Score,
    VerifierPool,
    get_verifier,
    length_penalty,
    parse_completion,
    score,
)

L_MAX, L_CACHE = 512, 64


def _problem(answer: str = "42", verifier: str = "int") -> Problem:
    return Problem("t-1", "test", "q\n", answer, verifier, {})


def is_even_answer(p: Problem, answer: str) -> bool:  # a "module:function" user verifier
    return int(answer) % 2 == 0


# ----------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", sorted(TASKS))
def test_solutions_score_full_reward(name: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = sample_problem(rng, [name])
        text = solution_text(p)
        assert p.prompt.endswith("\n") and p.task == name and p.id.startswith(name + "-")
        assert text.startswith("<think>") and text.endswith("}")
        s = score(p, text, len(text) + 1, L_MAX, L_CACHE)
        assert s.format_ok and s.correct and s.reward == 1.0, (p, text, s)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_flawed_solutions_keep_the_format_and_miss_the_answer(name: str) -> None:
    """A slip is carried through: well formed, wrong, about as long as the solution."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = sample_problem(rng, [name])
        good, bad = solution_text(p), flawed_solution_text(p, rng)
        s = score(p, bad, len(bad) + 1, L_MAX, L_CACHE)
        assert s.format_ok and not s.correct and s.reward == pytest.approx(0.1), (p, bad)
        assert abs(len(bad) - len(good)) <= 2
    with pytest.raises(ValueError, match="built-in tasks only"):
        flawed_solution_text(Problem("x", "jsonl:x", "q\n", "1", "int"), rng)


def test_solution_with_length_penalty() -> None:
    rng = np.random.default_rng(1)
    p = max((sample_problem(rng, ["sum"]) for _ in range(500)),
            key=lambda q: len(solution_text(q)))
    n = len(solution_text(p)) + 1
    s = score(p, solution_text(p), n, l_max=n + 10, l_cache=40)  # 30 tokens into the zone
    assert s.correct and s.reward == pytest.approx(1.0 - 0.1 * 30 / 40)


def test_task_examples_match_the_documentation() -> None:
    p = TASKS["sum"].sample(np.random.default_rng(0))
    nums = p.meta["nums"]
    assert p.prompt == "sum: " + " ".join(map(str, nums)) + "\n"
    assert p.answer == str(sum(nums))
    steps = "".join(f"+{x}={s}" for x, s in zip(nums[1:], np.cumsum(nums)[1:], strict=True))
    assert solution_text(p) == f"<think>{nums[0]}{steps}</think>\\boxed{{{p.answer}}}"
    c = Problem("c", "count", "count b: abbacb\n", "3", "int", {"text": "abbacb", "target": "b"})
    assert solution_text(c) == "<think>ab1b2acb3</think>\\boxed{3}"
    r = Problem("r", "reverse", "reverse: 3 1 4 1 5\n", "5,1,4,1,3", "list",
                {"digits": [3, 1, 4, 1, 5]})
    assert solution_text(r) == "<think>5 1 4 1 3</think>\\boxed{5,1,4,1,3}"


def test_lengths_are_heavy_tailed() -> None:
    """The skew async RL exists for: p99 of the worked solutions >> p50, per task."""
    rng = np.random.default_rng(0)
    for name in TASKS:
        lengths = np.array([len(solution_text(sample_problem(rng, [name])))
                            for _ in range(4000)])
        p50, p99 = np.percentile(lengths, [50, 99])
        assert p99 >= 4 * p50, (name, p50, p99)
        assert 15 <= p50 <= 150 and lengths.max() <= 420, (name, p50, lengths.max())
    ks = [heavy_tail(rng, 2, 10_000, 1.1) for _ in range(20_000)]
    assert np.percentile(ks, 99) > 20 * np.percentile(ks, 50)
    assert min(ks) >= 1


def test_sampling_is_deterministic_and_picklable() -> None:
    a = [sample_problem(np.random.default_rng(7), list(TASKS)) for _ in range(3)]
    b = [sample_problem(np.random.default_rng(7), list(TASKS)) for _ in range(3)]
    assert a == b
    p = a[0]
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(KeyError, match="built-in tasks"):
        sample_problem(np.random.default_rng(0), ["nope"])


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize(("text", "reason"), [
    ("\\boxed{42}", "expected one <think>...</think> block, found 0"),
    ("<think>a</think><think>b</think>\\boxed{42}", "found 2 <think> and 2 </think>"),
    ("</think>x<think>\\boxed{42}", "</think> before <think>"),
    ("so: <think>a</think>\\boxed{42}", "text before <think>"),
    ("<think>a</think>42", "expected one \\boxed{...} after </think>, found 0"),
    ("<think>a</think>\\boxed{4}\\boxed{2}", "found 2"),
    ("<think>a</think>\\boxed{42", "never closes"),
    ("<think>a</think>\\boxed{ }", "empty \\boxed{}"),
    ("<think>a</think>\\boxed{42} and more", "text after the \\boxed{} answer"),
    ("<think>a \\boxed{1} b", "found 1 <think> and 0 </think>"),  # truncated mid-think
])
def test_format_violations_score_zero_with_reason(text: str, reason: str) -> None:
    s = score(_problem(), text, 10, L_MAX, L_CACHE)
    assert s.reward == 0.0 and not s.format_ok and not s.correct
    assert reason in s.reason and s.reason.startswith("format: ")


def test_format_accepts() -> None:
    assert parse_completion("<think>x</think>\\boxed{42}") == ("42", "ok")
    assert parse_completion("  <think>\\boxed{1}</think>so\\boxed{ 42 }\n ") == ("42", "ok")
    assert parse_completion("<think></think>\\boxed{\\frac{1}{2}}") == ("\\frac{1}{2}", "ok")
    s = score(_problem("41"), "<think>x</think>\\boxed{42}", 10, L_MAX, L_CACHE)
    assert s.format_ok and not s.correct and s.reward == pytest.approx(0.1)
    assert s.reason == "wrong answer" and s.answer == "42"


def test_length_penalty_regimes() -> None:
    """l_max=100, l_cache=20: the soft zone is (80, 100]."""
    assert length_penalty(50, 100, 20) == 0.0
    assert length_penalty(80, 100, 20) == 0.0  # |y| = l_max - l_cache: still free
    assert length_penalty(90, 100, 20) == pytest.approx(-0.05)  # -0.1 * 10 / 20
    assert length_penalty(100, 100, 20) == pytest.approx(-0.1)
    assert length_penalty(101, 100, 20) == -0.1  # beyond l_max
    assert length_penalty(5000, 100, 20) == -0.1
    assert length_penalty(100, 100, 0) == 0.0 and length_penalty(101, 100, 0) == -0.1
    good, bad = "<think>x</think>\\boxed{42}", "<think>x</think>\\boxed{7}"
    p = _problem()
    assert score(p, good, 90, 100, 20).reward == pytest.approx(0.95)
    assert score(p, bad, 90, 100, 20).reward == pytest.approx(0.05)
    assert score(p, bad, 120, 100, 20).reward == pytest.approx(0.0)
    v = score(p, "<think>x", 90, 100, 20)  # format violation: 0, the penalty is not applied
    assert v.reward == 0.0 and v.length_penalty == pytest.approx(-0.05)
    with pytest.raises(ValueError):
        length_penalty(10, 100, 200)


def test_verifiers() -> None:
    assert VERIFIERS["int"](_problem("42"), " +42 ") and not VERIFIERS["int"](_problem(), "4x")
    assert VERIFIERS["exact"](_problem("abc", "exact"), " abc")
    assert not VERIFIERS["exact"](_problem("abc", "exact"), "abd")
    assert VERIFIERS["number"](_problem("0.5", "number"), "5e-1")
    assert VERIFIERS["list"](_problem("5,1,4", "list"), "[5, 1, 04]")
    assert not VERIFIERS["list"](_problem("5,1,4", "list"), "5,1")
    assert not VERIFIERS["list"](_problem("a,b", "list"), "a,c")
    user = get_verifier(f"{__name__}:is_even_answer")
    assert user(_problem(), "8") and not user(_problem(), "7")
    with pytest.raises(KeyError, match="unknown verifier"):
        get_verifier("nope")
    with pytest.raises(KeyError, match="cannot be imported"):
        get_verifier("no_such_module_xyz:f")
    # A checker that raises scores the sample as wrong, with the exception as the reason.
    s = score(_problem("1", f"{__name__}:is_even_answer"), "<think></think>\\boxed{x}", 5,
              L_MAX, L_CACHE)
    assert s.reward == pytest.approx(0.1) and "verifier error: ValueError" in s.reason


# ----------------------------------------------------------------------------- JSONL


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    rows = [{"q": "What is 2+2?", "a": 4, "id": "two"},
            {"q": "Say hi\n", "a": "hi", "solution": "<think>hi</think>\\boxed{hi}"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_jsonl(path, "exact", prompt_field="q", answer_field="a")
    assert [p.id for p in ps] == ["two", "set:2"]
    assert ps[0].prompt == "What is 2+2?\n" and ps[0].answer == "4"
    assert ps[0].task == "jsonl:set" and ps[0].verifier == "exact"
    assert solution_text(ps[0]) == "<think></think>\\boxed{4}"
    assert solution_text(ps[1]) == rows[1]["solution"]
    for p in ps:
        s = score(p, solution_text(p), 10, L_MAX, L_CACHE)
        assert s.reward == 1.0
    path.write_text('{"prompt": "x", "answer": 1}\nnot json\n')
    with pytest.raises(ValueError, match="set.jsonl:2: not JSON"):
        load_jsonl(path, "int")
    path.write_text('{"prompt": 3, "answer": 1}\n')
    with pytest.raises(ValueError, match="set.jsonl:1: field 'prompt'"):
        load_jsonl(path, "int")
    with pytest.raises(KeyError, match="unknown verifier"):
        load_jsonl(path, "nope")


# ----------------------------------------------------------------------------- pool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_pool_scores_in_separate_processes() -> None:
    rng = np.random.default_rng(3)
    problems = [sample_problem(rng, list(TASKS)) for _ in range(12)]
    with VerifierPool(2, 10.0, L_MAX, L_CACHE) as pool:
        for i, p in enumerate(problems):
            pool.submit(i, p, solution_text(p), 20)
        pool.submit("bad", problems[0], "no format", 5)
        got = dict(pool.drain(timeout=30))
        pids = pool.pids
        assert pool.outstanding() == 0 and pool.results() == []
    assert set(got) == {*range(12), "bad"}
    assert all(got[i].reward == 1.0 and got[i].correct for i in range(12))
    assert got["bad"].reward == 0.0 and got["bad"].reason.startswith("format:")
    used = {s.pid for s in got.values()}
    assert os.getpid() not in used and used <= set(pids)
    assert not any(_alive(pid) for pid in pids)  # close() cleaned up


def test_pool_timeout_kills_and_replaces_the_worker() -> None:
    stuck = _problem("1", "sleep")
    good = _problem("42")
    with VerifierPool(1, 0.5, L_MAX, L_CACHE) as pool:
        pool.submit("warm", good, "<think></think>\\boxed{42}", 5)
        assert pool.drain(timeout=30)[0][1].correct  # the worker is up
        old_pid = pool.pids[0]
        t0 = time.monotonic()
        pool.submit("stuck", stuck, "<think></think>\\boxed{1}", 5)
        out = pool.results(block=True, timeout=20)
        elapsed = time.monotonic() - t0
        assert [k for k, _ in out] == ["stuck"]
        s = out[0][1]
        assert s == Score(0.0, False, False, 0.0, "verifier timeout after 0.5s",
                          pid=old_pid, seconds=s.seconds)
        assert elapsed >= 0.5  # not before the check's timeout (no upper bound: the
        # machine's speed; results()' own 20 s would have returned nothing)
        assert pool.timeouts == 1 and pool.restarts == 1
        assert pool.pids[0] != old_pid and not _alive(old_pid)
        # The pool keeps working on its replacement worker.
        pool.submit("after", good, "<think></think>\\boxed{42}", 5)
        (key, s2), = pool.drain(timeout=30)
        assert key == "after" and s2.correct and s2.pid == pool.pids[0]
        # Blocking on an empty pool returns instead of hanging (pytest's timeout fails
        # a hang; a bound on its duration would measure the machine).
        assert pool.results(block=True) == []


def test_pool_requeues_checks_behind_a_hung_one() -> None:
    """Checks queued in a worker's pipe behind a hung check are scored by its
    replacement, not failed with it."""
    good = _problem("42")
    with VerifierPool(1, 0.5, L_MAX, L_CACHE) as pool:
        pool.submit("warm", good, "<think></think>\\boxed{42}", 5)
        assert pool.drain(timeout=30)[0][1].correct  # the worker is up
        pool.submit("before", good, "<think></think>\\boxed{42}", 5)
        pool.submit("stuck", _problem("1", "sleep"), "<think></think>\\boxed{1}", 5)
        for i in range(3):
            pool.submit(f"after{i}", good, "<think></think>\\boxed{42}", 5)
        # Sent at once behind the hung check, not one per poll ("before" may be done).
        assert len(pool._workers[0].queue) >= 4
        got = dict(pool.drain(timeout=30))
    assert set(got) == {"before", "stuck", "after0", "after1", "after2"}
    assert got["stuck"].reason == "verifier timeout after 0.5s"
    assert all(got[k].correct for k in got if k != "stuck")
    assert pool.timeouts == 1 and pool.restarts == 1


def test_pool_survives_a_killed_worker() -> None:
    with VerifierPool(1, 30.0, L_MAX, L_CACHE) as pool:
        pool.submit("stuck", _problem("1", "sleep"), "<think></think>\\boxed{1}", 5)
        deadline = time.monotonic() + 30
        while pool._workers[0].job is None and time.monotonic() < deadline:
            pool.results(block=True, timeout=0.05)  # wait until the check is running
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        (key, s), = pool.drain(timeout=10)
        assert key == "stuck" and s.reward == 0.0 and s.reason == "verifier process died"
        assert pool.restarts == 1 and pool.pids[0] != victim
        pool.submit("ok", _problem(), "<think></think>\\boxed{42}", 5)
        assert pool.drain(timeout=30)[0][1].correct


# ----------------------------------------------------------------------------- warm start


def test_warm_start_caches_and_is_deterministic(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from workbench.recipes.rl import warmstart as ws
    from workbench.recipes.rl.warmstart import (
        WarmStartConfig,
        cache_path,
        train_warm_start,
        warm_start,
    )

    cfg = WarmStartConfig(n_layer=1, d_model=32, n_head=2, steps=3, batch_size=4, bucket=2)
    first = warm_start(cfg, tmp_path)
    path = cache_path(cfg, tmp_path)
    assert path.is_file() and path.with_suffix(".json").is_file()
    mtime = path.stat().st_mtime_ns

    def no_training(*_: object) -> None:
        raise AssertionError("the cached warm start was trained again")

    with monkeypatch.context() as patch:  # loaded, not retrained (not: loaded faster)
        patch.setattr(ws, "train_warm_start", no_training)
        second = warm_start(cfg, tmp_path)
    assert path.stat().st_mtime_ns == mtime
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    again = train_warm_start(cfg)  # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    other = WarmStartConfig(n_layer=1, d_model=32, n_head=2, steps=3, batch_size=4, bucket=2,
                            seed=1)
    assert cache_path(other, tmp_path) != path


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~100 s alone on 2 cores, several times that on a busy machine
def test_warm_start_defaults_give_format_and_moderate_accuracy(tmp_path: Path) -> None:
    """The measurement behind WarmStartConfig's defaults (minutes on a 2-core CPU): the
    format nearly always, and sampled answers well below greedy ones (the slips)."""
    from workbench.recipes.rl.warmstart import WarmStartConfig, evaluate, warm_start

    cfg = WarmStartConfig()
    model = warm_start(cfg, tmp_path)
    res = evaluate(model, cfg.tasks, n=300)
    greedy = evaluate(model, cfg.tasks, n=300, temperature=0.0)
    assert res.format_rate >= 0.9
    assert 0.1 <= res.accuracy <= 0.7
    assert greedy.accuracy >= res.accuracy + 0.04


def test_sampling_helpers_run_on_an_untrained_model() -> None:
    import torch

    from workbench.data.corpus import BOS, encode
    from workbench.models.gpt import GPT
    from workbench.recipes.rl.warmstart import WarmStartConfig, _sample_simple, evaluate

    cfg = WarmStartConfig(n_layer=1, d_model=32, n_head=2, seq_len=64)
    torch.manual_seed(0)
    model = GPT(cfg.gpt_config()).eval()
    prompts = [[BOS, *encode("sum: 1 2\n").tolist()], [BOS, *encode("count a: ab\n").tolist()]]
    outs = _sample_simple(model, prompts, [5, 3], 1.0, torch.Generator().manual_seed(0))
    assert 1 <= len(outs[0]) <= 5 and 1 <= len(outs[1]) <= 3
    res = evaluate(model, cfg.tasks, n=6, max_new_tokens=8, l_max=8, l_cache=2)
    assert res.n == 6 and res.format_rate == 0.0 and res.accuracy == 0.0
    assert res.lengths["max"] <= 8
