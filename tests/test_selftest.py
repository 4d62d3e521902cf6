"""`wb selftest` (issue 22): the command through the real `wb` subprocess on this CPU
machine, `wb hosts check --selftest` against a real sshd on 127.0.0.1, a selftest spec
through `wb launch`, and the pass/fail logic of every GPU check run on CPU tensors.

This machine has no CUDA, no NVML and no vLLM. The GPU checks' comparisons are
engine-agnostic functions (workbench/selftest/compare.py and the ``*_case`` /
``compare_*`` / ``judge_*`` functions of each group); here they get CPU tensors, and
where a piece needs what this machine lacks a stand-in is named at the test: the
Triton attention and log-prob kernels (CUDA) by their torch references, vLLM by our
torch engine, flex_attention's backward (not implemented on CPU) by SDPA plus the max
scores flex returns, NVML by a stand-in module, CUDA peak memory by given numbers.
The Newton-Schulz kernel itself runs, under the Triton interpreter. Every comparison
is also given a wrong answer that it must report as a failure.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.helpers import assert_nothing_created, wb
from tests.sshd import SSHServer
from workbench.kernels.attention import attention as real_attention
from workbench.run_record import RunRecord
from workbench.selftest import (
    FAIL,
    PASS,
    SKIP,
    Check,
    Context,
    Facts,
    Outcome,
    Skip,
    forced_failure,
    load_checks,
    run_one,
    select,
)
from workbench.selftest.compare import (
    BF16_ROUNDING,
    NS,
    Tolerance,
    add,
    compare,
    curves_agree,
    loss_falls,
    speed,
    time_cpu,
    values_close,
)
from workbench.store import Store

GPU_NEEDS = {"cuda", "gpus2", "vllm", "nvml"}


def cpu_timer(fn: Callable[[], Any], iters: int) -> float:
    """`time_cuda`'s CPU twin, one round (the figures are not judged, only reported)."""
    return time_cpu(fn, 1)


def metric_keys(store_dir: Path, run_id: str) -> set[str]:
    with Store(store_dir, create=False) as st:
        return {k for _, _, k, _, _ in st.scalars(run_id)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the command -----------------------------------------------------------------------------


def test_cpu_mode_passes_skips_every_gpu_check_and_is_stored(store_dir: Path) -> None:
    proc = wb("selftest", "--quick", "--json", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(proc.stdout)  # stdout carries the JSON alone (progress is on stderr)
    assert data["ok"] is True and data["exit_code"] == 0 and data["quick"] is True
    assert "store/roundtrip" in proc.stderr  # the progress lines
    checks = load_checks()
    facts = Facts.probe()
    by_name = {c["name"]: c for c in data["checks"]}
    assert list(by_name) == list(checks)  # every check, in the table's order
    for name, chk in checks.items():
        got = by_name[name]
        missing = facts.missing(chk.needs)
        if missing is not None:
            assert got["status"] == SKIP and got["reason"] == missing, got
        else:
            assert got["status"] == PASS, got
    if not facts.cuda:  # this machine: every GPU check skipped with its reason, none failed
        gpu = [n for n, c in checks.items() if GPU_NEEDS & set(c.needs)]
        assert len(gpu) >= 9
        for name in gpu:
            assert by_name[name]["status"] == SKIP, by_name[name]
            assert by_name[name]["reason"].startswith("needs "), by_name[name]
        for name in ("recipes/pretrain", "recipes/rl", "recipes/depth", "recipes/script",
                     "store/roundtrip"):
            assert by_name[name]["status"] == PASS, by_name[name]
        if facts.triton:
            assert by_name["kernels/interpreter"]["status"] == PASS
    assert data["counts"][FAIL] == 0

    # Stored as a run of kind selftest, figures as metrics selftest/<check>/<figure>.
    run = data["run"]
    with Store(store_dir, create=False) as st:
        row = st.get_run(run["id"])
        config = dict(row.config)
        events = st.events(run["id"], kind="selftest_failure")
    assert row.kind == "selftest" and row.status == "finished"
    assert row.launcher == "selftest" and row.exit_code == 0
    assert row.last_step == row.total_steps == len(checks)
    assert events == []
    assert config["selftest"]["counts"] == data["counts"]
    keys = metric_keys(store_dir, run["id"])
    assert {"selftest/store/roundtrip/records", "selftest/store/roundtrip/seconds",
            "selftest/store/roundtrip/passed", "selftest/recipes/pretrain/train_loss",
            "selftest/passed", "selftest/failed", "selftest/skipped"} <= keys
    assert not any(k.startswith("selftest/kernels/attention/") for k in keys)  # skipped
    listed = json.loads(wb("ls", "--kind", "selftest", "--json", check=True).stdout)
    assert [r["id"] for r in listed] == [run["id"]]
    assert listed[0]["key_metric"] == {"key": "selftest/failed", "value": 0.0}
    assert json.loads(wb("ls", "--kind", "pretrain", "--json", check=True).stdout) == []
    # The recipes' step lines went to the run's log, not to the terminal.
    assert "step " not in proc.stderr
    assert "charlm" in (store_dir / run["id"] / "stdout.log").read_text()


def test_a_failing_check_exits_1_with_an_event_and_the_table_says_fail(
        store_dir: Path) -> None:
    proc = wb("selftest", "--only", "store/*", "--only", "kernels/newton_schulz",
              env={"WB_SELFTEST_FAIL": "store/*", "COLUMNS": "160"}, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    row_line = next(ln for ln in lines if ln.startswith("store/roundtrip"))
    assert row_line.split()[1] == "fail" and "WB_SELFTEST_FAIL" in row_line
    assert any(ln.startswith("kernels/newton_schulz") and ln.split()[1] == "skipped"
               for ln in lines) or Facts.probe().cuda
    assert lines[-1].startswith("selftest FAILED: 0 passed, 1 failed, 1 skipped")
    with Store(store_dir, create=False) as st:
        (row,) = st.runs(kind="selftest")
        events = st.events(row.id, kind="selftest_failure")
        failed = st.scalars(row.id, "selftest/failed")
    assert row.status == "failed" and row.exit_code == 1
    assert len(events) == 1 and events[0].severity == "error"
    assert events[0].payload["check"] == "store/roundtrip"
    assert "WB_SELFTEST_FAIL" in events[0].payload["reason"]
    assert [v for _, _, _, v, _ in failed] == [1.0]
    listed = wb("ls", "--kind", "selftest", check=True).stdout
    assert "failed" in listed and row.name in listed


def test_a_bad_only_glob_is_one_clear_line_exit_2_and_writes_no_run(store_dir: Path) -> None:
    for args in (["selftest", "--list", "--only", "nope"],
                 ["selftest", "--only", "store/*", "--only", "kernel/*"]):
        proc = wb(*args, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --only "), proc.stderr
        assert "matches no check" in lines[0] and "store/roundtrip" in lines[0]
        assert proc.stdout == ""
    assert_nothing_created(store_dir)


def test_list_prints_every_check_with_its_needs(store_dir: Path) -> None:
    proc = wb("selftest", "--list", "--only", "*", check=True, env={"COLUMNS": "400"})
    lines = proc.stdout.strip().splitlines()
    checks = load_checks()
    assert len(lines) == len(checks)
    for line, chk in zip(lines, checks.values(), strict=True):
        assert line.startswith(f"{chk.name}: {chk.summary}"), line
        if chk.needs:
            assert line.endswith(f"[needs {', '.join(chk.needs)}]"), line
        else:
            assert "[needs" not in line, line
    assert "kernels/attention: " in proc.stdout and "[needs cuda, triton]" in proc.stdout
    assert "system/nvml: " in proc.stdout and "[needs nvml]" in proc.stdout
    assert_nothing_created(store_dir)  # listing runs nothing


def test_hosts_check_selftest_over_real_ssh_is_shown_and_recorded_here(
        sshd: SSHServer, tmp_path: Path, store_dir: Path) -> None:
    remote = tmp_path / "remote store"
    wb("hosts", "add", "box", sshd.alias, "--python", sys.executable, "--store", str(remote),
       check=True)
    proc = wb("hosts", "check", "box", "--selftest", "--quick", "--only", "store/*",
              env={"COLUMNS": "160"}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "box:" in proc.stderr and "store/roundtrip" in proc.stderr  # its progress
    (row_line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("store/roundtrip")]
    assert row_line.split()[1] == "pass"
    assert proc.stdout.strip().splitlines()[-1].startswith("selftest ok: 1 passed, 0 failed")
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
        config = dict(row.config)
    assert (row.kind, row.launcher, row.host, row.status) == (
        "selftest", "ssh-selftest", "box", "finished")
    assert config["selftest"]["counts"] == {PASS: 1, FAIL: 0, SKIP: 0}
    assert "selftest/store/roundtrip/records" in metric_keys(store_dir, row.id)
    with Store(remote, create=False) as there:  # recorded on the host too
        (theirs,) = there.runs()
    assert theirs.kind == "selftest" and theirs.launcher == "selftest"
    assert config["remote_run"] == {"id": theirs.id, "name": theirs.name,
                                    "store": str(remote)}
    assert f"{theirs.name} there, {row.name} here" in proc.stdout.replace("\n", " ")
    # A glob that names no check is refused here, in one line, before ssh runs anything.
    bad = wb("hosts", "check", "box", "--selftest", "--only", "nope/*", timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --only 'nope/*' matches")
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    with Store(remote, create=False) as there:
        assert len(there.runs()) == 1


def test_a_selftest_spec_runs_through_wb_launch(store_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "accept.toml"
    spec.write_text('kind = "selftest"\n[selftest]\nquick = true\nonly = ["store/*"]\n')
    proc = wb("launch", str(spec), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pass store/roundtrip" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("finished accept-1 (")
    with Store(store_dir, create=False) as st:
        (row,) = st.runs()
        config = dict(row.config)
    assert row.kind == "selftest" and row.status == "finished"
    assert row.last_step == row.total_steps == 1
    assert config["selftest"]["counts"] == {PASS: 1, FAIL: 0, SKIP: 0}
    assert "selftest/store/roundtrip/passed" in metric_keys(store_dir, row.id)
    # A glob that names no check: refused when the spec loads, in one line, no run.
    bad = wb("launch", str(spec), "--set", 'selftest.only=["nope/*"]', timeout=60)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: selftest.only: 'nope/*' matches no check")
    with Store(store_dir, create=False) as st:
        assert len(st.runs()) == 1


def test_a_launched_selftest_with_a_failing_check_fails_its_run(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind's entry point, in process (as the worker calls it)."""
    from workbench.recipes import Context as RecipeContext
    from workbench.selftest.recipe import SelftestSpec, run
    from workbench.tracking import Run

    monkeypatch.setenv("WB_SELFTEST_FAIL", "store/*")
    spec = SelftestSpec(kind="selftest", selftest={"quick": True, "only": ["store/*"]})
    row = store.create_run(kind="selftest", status="running")
    handle = Run(store, row, owner=True)
    with pytest.raises(RuntimeError, match=r"1 check\(s\) failed: store/roundtrip"):
        run(spec, RecipeContext(run=handle, run_dir=store.run_dir(row.id)))
    handle.flush()
    (event,) = store.events(row.id, kind="selftest_failure")
    assert event.payload["check"] == "store/roundtrip"
    assert dict(store.get_run(row.id).config)["selftest"]["exit_code"] == 1
    handle.finish("failed", exit_code=1)


# -- the registry and running one check -----------------------------------------------------


def test_checks_are_registered_with_known_needs_and_selected_by_glob() -> None:
    checks = load_checks()
    assert {c.group for c in checks.values()} >= {"kernels", "train", "dist", "vllm", "depth",
                                                  "system", "recipes", "store"}
    for chk in checks.values():
        assert chk.summary and "/" in chk.name
    assert [c.name for c in select(["kernels/*"])] == [
        "kernels/interpreter", "kernels/newton_schulz", "kernels/attention", "kernels/logprobs"]
    with pytest.raises(ValueError, match="matches no check"):
        select(["kernels/*", "nope"])
    assert forced_failure("store/roundtrip", {"WB_SELFTEST_FAIL": "x/y, store/*"})
    assert not forced_failure("store/roundtrip", {"WB_SELFTEST_FAIL": "store"})


def test_facts_say_why_a_check_cannot_run() -> None:
    cpu = Facts(torch="2.x", vllm="needs vLLM: not installed", nvml="needs NVML: none")
    assert cpu.missing(["cuda"]) == "needs a CUDA GPU: none visible (torch 2.x)"
    assert cpu.missing(["triton"]).startswith("needs Triton")
    assert cpu.missing(["vllm"]) == "needs vLLM: not installed"
    assert cpu.missing(["nvml"]) == "needs NVML: none"
    assert cpu.missing(["no-cuda"]) is None and cpu.missing([]) is None
    gpu = Facts(torch="2.x", cuda=True, device="H100", gpus=1, triton=True, vllm=None,
                nvml=None)
    assert gpu.missing(["cuda", "triton", "vllm", "nvml"]) is None
    assert gpu.missing(["gpus2"]) == "needs 2 GPUs: 1 visible"
    assert gpu.missing(["no-cuda"]).startswith("CUDA is present")
    with pytest.raises(ValueError, match="unknown need"):
        gpu.missing(["tpu"])


def test_run_one_passes_fails_skips_and_turns_a_crash_into_a_failure(tmp_path: Path) -> None:
    facts = Facts(torch="2.x", vllm="no vllm", nvml="no nvml")
    ctx = Context(quick=True, facts=facts, tmp=tmp_path)

    def good(_ctx: Context) -> Outcome:
        return Outcome(figures={"x": 1}, headline="fine")

    def bad(_ctx: Context) -> Outcome:
        out = Outcome()
        out.require(False, "a != b")
        return out

    def crash(_ctx: Context) -> Outcome:
        raise ZeroDivisionError("division by zero\nsecond line")

    def late_skip(_ctx: Context) -> Outcome:
        raise Skip("no GPU after all")

    r = run_one(Check("a/good", good), ctx)
    assert (r.status, r.headline, r.figures) == (PASS, "fine", {"x": 1.0})
    r = run_one(Check("a/bad", bad), ctx)
    assert (r.status, r.reason) == (FAIL, "a != b")
    r = run_one(Check("a/crash", crash), ctx)
    assert r.status == FAIL and r.reason == "ZeroDivisionError: division by zero second line"
    assert "ZeroDivisionError" in r.detail["traceback"]
    assert run_one(Check("a/skip", late_skip), ctx).reason == "no GPU after all"
    r = run_one(Check("a/gpu", good, ("cuda",)), ctx)
    assert r.status == SKIP and r.reason.startswith("needs a CUDA GPU")


def test_answers_read_back_and_the_host_answer_is_the_last_json_line(tmp_path: Path) -> None:
    from workbench.selftest import Result
    from workbench.selftest.remote import parse_answer
    from workbench.selftest.report import answer, facts_of, results_of, verdict_line

    results = [Result("a/x", PASS, 1.5, "ok", "", {"f": 2.0}), Result("a/y", SKIP, reason="r"),
               Result("a/z", FAIL, 0.1, "", "bad")]
    facts = Facts(torch="2.x", vllm="v", nvml="n")
    data = answer(results, facts, quick=True)
    assert data["exit_code"] == 1 and data["counts"] == {PASS: 1, FAIL: 1, SKIP: 1}
    again = json.loads(json.dumps(data))
    assert results_of(again) == results and facts_of(again) == facts
    assert verdict_line(results) == "selftest FAILED: 1 passed, 1 failed, 1 skipped"
    # Stored in a run's config (a JSON merge patch drops nulls) it reads back the same.
    from workbench.selftest.report import Recorder, summary_of_config
    from workbench.tracking import Run

    gpu = Facts(torch="2.x", cuda=True, device="H100", gpus=1, triton=True, vllm=None,
                nvml=None)
    with Store(tmp_path / "store") as st:
        run = Run(st, st.create_run(kind="selftest", status="running"), owner=True)
        Recorder(run, len(results)).finish(results, answer(results, gpu, quick=False))
        stored = summary_of_config(dict(st.get_run(run.id).config))
    assert stored is not None and facts_of(stored) == gpu and results_of(stored) == results
    text = "banner {not json\n" + json.dumps(data) + "\n{\"other\": 1}\n"
    assert parse_answer(text)["counts"] == data["counts"]
    assert parse_answer("no answer\n{broken") is None


# -- compare.py ------------------------------------------------------------------------------


def test_compare_passes_a_bf16_rounding_and_fails_a_perturbation() -> None:
    want = torch.randn(256, 384, generator=gen())
    rounded = compare("rounded", want.bfloat16(), want, NS)
    assert rounded.ok and 0 < rounded.rel <= BF16_ROUNDING
    noisy = want + 0.05 * torch.randn(256, 384, generator=gen(1))  # 5% error: a bug
    bad = compare("noisy", noisy, want, NS)
    assert not bad.ok and bad.rel == pytest.approx(0.05, rel=0.05)
    assert bad.message().startswith("noisy: rel err 5.")
    assert "(allowed rel 3e-02)" in bad.message()
    wrong_tile = want.clone()
    wrong_tile[:16, :16] = 0  # one tile not written
    assert not compare("tile", wrong_tile, want, NS).ok
    # A max-abs bound fails on its own even when the norm-wise error is small.
    spike = want.clone()
    spike[0, 0] += 1.0
    tol = Tolerance(rel=1e-2, abs=0.5)
    assert compare("spike", spike, want, Tolerance(rel=1e-2)).ok
    assert not compare("spike", spike, want, tol).ok
    # Shapes, NaN and inf are failures, never passes.
    assert compare("shape", want.T, want, NS).message() == "shape: shapes differ"
    nan = want.clone()
    nan[3, 3] = math.nan
    assert not compare("nan", nan, want, NS).ok
    inf = want.clone()
    inf[3, 3] = math.inf
    assert not compare("inf", inf, want, NS).ok
    assert compare("zero", torch.zeros(3), torch.zeros(3), NS).ok
    assert not compare("zero", torch.ones(3), torch.zeros(3), NS).ok
    out = Outcome()
    assert add(out, rounded) and not add(out, bad)
    assert out.failures == [bad.message()]
    assert set(out.figures) == {"rounded_rel_err", "rounded_max_abs_err", "noisy_rel_err",
                                "noisy_max_abs_err"}


def test_loss_and_curve_rules() -> None:
    falling = [5.0 - 0.1 * i for i in range(30)]
    assert loss_falls(falling)[0]
    assert not loss_falls([5.0] * 30)[0]
    assert not loss_falls(falling[:9])[0]  # too short to judge
    assert not loss_falls([*falling[:-1], math.nan])[0]
    assert values_close(10.0, 10.05, rel=1e-2, abs_=0.0)
    assert not values_close(10.0, 10.5, rel=1e-2, abs_=0.0)
    assert not values_close(math.nan, math.nan, rel=1.0, abs_=1.0)
    a = {s: 5.0 - 0.1 * s for s in range(1, 21)}
    failures, figures = curves_agree(a, dict(a), 5e-3, 3e-2)
    assert failures == [] and figures["max_rel_diff"] == 0.0
    drifted = {s: v * (1 + 0.002 * s) for s, v in a.items()}  # 4% by the end
    failures, _ = curves_agree(drifted, a, 5e-3, 3e-2)
    assert len(failures) == 1 and "loss curves differ" in failures[0]
    first = {**a, 1: a[1] * 1.01}
    assert "step 1 loss differs" in curves_agree(first, a, 5e-3, 3e-2)[0][0]
    short = {s: v for s, v in a.items() if s < 10}
    assert "different steps" in curves_agree(short, a, 5e-3, 3e-2)[0][0]
    assert speed("x", 0.001, 0.002) == {"x_ms": 1.0, "x_torch_ms": 2.0,
                                        "x_kernel_over_torch": 0.5}


# -- kernels ---------------------------------------------------------------------------------


def test_interpreter_errors_are_judged_against_their_bounds() -> None:
    from workbench.selftest.kernels import judge_interpreter

    ok = judge_interpreter({"ns 32x48": 4e-3, "attention fwd": 2e-6, "logprobs": 1e-6,
                            "entropy": 3e-6, "ns_s": 1.2})
    assert ok.failures == [] and ok.figures["seconds_ns"] == 1.2
    assert ok.figures["ns_32x48_max_abs_err"] == 4e-3
    bad = judge_interpreter({"attention fwd": 2e-3, "logprobs": math.nan, "mystery": 0.0})
    assert len(bad.failures) == 3
    assert bad.failures[0] == "attention fwd: max abs err 2.00e-03 > 1e-04"
    assert "no bound known" in bad.failures[2]
    assert judge_interpreter({"ns_s": 1.0}).failures == ["the interpreter checks reported "
                                                         "nothing"]


def test_newton_schulz_case_runs_the_kernel_under_the_interpreter(
        monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """The Triton NS kernel itself, interpreted on CPU, against torch.optim.Muon's NS."""
    from workbench.kernels.newton_schulz import triton_available
    from workbench.selftest.kernels import ns_case, torch_muon_ns

    if not triton_available():
        pytest.skip("triton is not installed (pip install 'workbench-lab[dev]')")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel on CPU tensors (no CUDA here)
    twin, name = torch_muon_ns()
    assert "torch" in name
    g = torch.randn(48, 80, generator=gen())
    out = ns_case(g, twin, 1, "48x80", time_fn=cpu_timer)
    assert out.failures == [], out.failures
    assert out.figures["48x80_rel_err"] <= NS.rel
    assert {"48x80_ms", "48x80_torch_ms", "48x80_kernel_over_torch"} <= set(out.figures)

    def wrong_tile(x: torch.Tensor) -> torch.Tensor:  # a twin with one tile missing
        y = twin(x).clone()
        y[:16, :16] = 0
        return y

    bad = ns_case(g, wrong_tile, 1, "48x80", time_fn=cpu_timer)
    assert len(bad.failures) == 1 and bad.failures[0].startswith("48x80: rel err")


def reference_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """Stands in for the Triton attention kernel (CUDA only): the torch reference, same
    contract (GQA, causal, max logits)."""
    return real_attention(q, k, v, backend="reference")


def flex_stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[Any, Any]:
    """Stands in for compiled flex_attention with AuxRequest(max_scores=True), whose
    backward torch does not implement on CPU: SDPA's output and the per-query maximum of
    the scaled causal scores (what flex's max_scores holds)."""
    import torch.nn.functional as F

    groups = q.size(1) // k.size(1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=groups > 1)
    kk = k.repeat_interleave(groups, dim=1)
    T = q.size(-2)
    s = (q.float() @ kk.float().mT) * q.size(-1) ** -0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return o, SimpleNamespace(max_scores=s.amax(-1).detach())


def attention_inputs() -> tuple[torch.Tensor, ...]:
    g = gen()

    def rnd(heads: int) -> torch.Tensor:
        return torch.randn(1, heads, 64, 32, generator=g).bfloat16()

    return rnd(4), rnd(2), rnd(2), rnd(4)  # GQA 2:1, bf16 as on the GPU


def test_attention_case_passes_the_reference_and_fails_wrong_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.kernels.attention as kernel
    from workbench.selftest.kernels import attention_case

    q, k, v, dout = attention_inputs()
    monkeypatch.setattr(kernel, "attention", reference_kernel)
    out = attention_case(q, k, v, dout, flex=flex_stand_in, iters=1, label="d32",
                         time_fn=cpu_timer)
    assert out.failures == [], out.failures
    for name in ("out", "dq", "dk", "dv", "max_logit_vs_fp32", "max_logit_vs_flex"):
        assert f"d32_{name}_rel_err" in out.figures
    assert "d32_fwd_bwd_vs_flex_kernel_over_torch" in out.figures

    def not_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
        """A kernel that forgot the causal mask (its max logits are right)."""
        import torch.nn.functional as F

        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return o, reference_kernel(q, k, v)[1]

    monkeypatch.setattr(kernel, "attention", not_causal)
    bad = attention_case(q, k, v, dout, flex=None, iters=1, label="d32", time_fn=cpu_timer)
    assert any(f.startswith("d32_out: rel err") for f in bad.failures), bad.failures
    assert not any("max_logit" in f for f in bad.failures)

    def unscaled_max(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
        """Right output, max logits without the 1/sqrt(D) scale."""
        o, m = reference_kernel(q, k, v)
        return o, m * q.size(-1) ** 0.5

    monkeypatch.setattr(kernel, "attention", unscaled_max)
    bad = attention_case(q, k, v, dout, flex=flex_stand_in, iters=1, label="d32",
                         time_fn=cpu_timer)
    assert sorted(f.split(":")[0] for f in bad.failures) == [
        "d32_max_logit_vs_flex", "d32_max_logit_vs_fp32"], bad.failures


def test_logprobs_case_judges_values_and_peak_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """token_logprobs' Triton backend needs CUDA here: its chunked torch path stands in
    (a different summation from the fp32 reference), and given peak figures stand in
    for CUDA's memory statistics."""
    import workbench.kernels.logprobs as kernel
    from workbench.selftest.kernels import logprobs_case

    real = kernel.token_logprobs
    g = gen()
    hidden = torch.randn(64, 32, generator=g).bfloat16()
    weight = (torch.randn(1000, 32, generator=g) * 32**-0.5).bfloat16()
    targets = torch.randint(0, 1000, (64,), generator=g)

    def peaks(*values: int) -> Callable[[Callable[[], Any]], int]:
        it = iter(values)

        def peak(fn: Callable[[], Any]) -> int:
            fn()
            return next(it)

        return peak

    def torch_path(h: Any, w: Any, t: Any, backend: str = "triton") -> Any:
        return real(h, w, t, backend="torch", chunk_tokens=16)

    monkeypatch.setattr(kernel, "token_logprobs", torch_path)
    out = logprobs_case(hidden, weight, targets, iters=1, time_fn=cpu_timer,
                        peak_fn=peaks(10 << 20, 100 << 20))
    assert out.failures == [], out.failures
    assert out.figures["peak_over_naive"] == pytest.approx(0.1)
    assert out.figures["logprobs_rel_err"] < 1e-5
    heavy = logprobs_case(hidden, weight, targets, iters=1, time_fn=cpu_timer,
                          peak_fn=peaks(80 << 20, 100 << 20))
    assert heavy.failures == ["peak memory 80 MiB is not below half the naive path's "
                              "100 MiB"]

    def off_by_a_bit(h: Any, w: Any, t: Any, backend: str = "triton") -> Any:
        lp, ent = torch_path(h, w, t)
        return lp + 0.01, ent  # log-probs 0.01 off: beyond fp32 summation order

    monkeypatch.setattr(kernel, "token_logprobs", off_by_a_bit)
    bad = logprobs_case(hidden, weight, targets, iters=1, time_fn=cpu_timer, peak_fn=None)
    assert len(bad.failures) == 1 and bad.failures[0].startswith("logprobs: rel err")


# -- pretraining, distributed ----------------------------------------------------------------


TINY_PAIR = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
             "train.steps=12", "train.batch_size=4", "train.eval_every=12",
             "train.eval_batches=1", "train.max_logit_every=1", "train.svd_every=0",
             "train.checkpoint_every=0", "optim.warmup_steps=1", "data.max_bytes=50000",
             "train.cpu_threads=1"]


def test_pretraining_comparison_on_two_cpu_backends(store: Store) -> None:
    """train/muon-small's logic with the CPU's attention backends (sdpa, naive) standing
    in for flex and the Triton kernel: two real muon-tiny runs, read back from the store."""
    from workbench.selftest.train import compare_backends, gpu_overrides, pretrain_pair

    out, (a, b) = pretrain_pair(store, "muon-tiny", {
        backend: [*TINY_PAIR, f"model.attn_backend={backend}"] for backend in ("sdpa", "naive")})
    assert out.failures == [], out.failures
    assert a.status == b.status == "finished" and sorted(a.losses) == list(range(1, 13))
    assert a.first_heads is not None and a.first_heads.shape == (1, 2)
    assert a.tokens_per_s and out.figures["sdpa_loss_last5"] < out.figures["sdpa_loss_first5"]
    assert out.figures["max_logit_step1_diff"] < 1e-4
    assert "model.attn_backend=triton" in gpu_overrides("triton", quick=True)

    # Wrong answers: a max logit off at step 1, one layer x head entry off, a flat loss.
    moved = {**b.max_logits, 1: b.max_logits[1] + 1.0}
    bad = compare_backends(a, replace(b, max_logits=moved))
    assert len(bad.failures) == 1 and bad.failures[0].startswith("step 1 max logit sdpa")
    heads = b.first_heads.copy()
    heads[0, 1] += 0.5
    bad = compare_backends(a, replace(b, first_heads=heads))
    assert [f.split(":")[0] for f in bad.failures] == ["max_logit_heads_step1"]
    flat = {s: 5.0 for s in b.losses}
    bad = compare_backends(a, replace(b, losses=flat))
    assert any(f.startswith("naive: the loss did not fall") for f in bad.failures)
    crashed = compare_backends(replace(a, status="failed"), b)
    assert "sdpa: the run ended failed" in crashed.failures


def test_rank_curves_must_match_one_rank() -> None:
    from workbench.selftest.dist import compare_ranks

    one = {s: 5.0 - 0.05 * s for s in range(1, 21)}
    two = {s: v * (1 + 1e-4) for s, v in one.items()}  # bf16 rounding of a split batch
    assert compare_ranks(one, two).failures == []
    halved = {s: (v if s < 5 else v * 1.2) for s, v in one.items()}  # a gradient not averaged
    failures = compare_ranks(one, halved).failures
    assert len(failures) == 1 and failures[0].startswith("the loss curves differ by up to")


@pytest.mark.slow
def test_two_launched_ranks_match_one_on_gloo(store: Store) -> None:
    """dist/muon-tiny-2rank's runs and comparison, with gloo on CPU standing in for NCCL
    (no GPU here): muon-tiny launched as real runs (worker; torchrun for 2 ranks)."""
    from workbench.selftest.dist import TINY, compare_ranks, launched

    small = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
             "data.max_bytes=100000"]
    rows = {p: launched(store, "muon-tiny", [*TINY, *small, f"resources.procs={p}"],
                        f"selftest-{p}rank", timeout=240) for p in (1, 2)}
    assert {p: r.status for p, r in rows.items()} == {1: "finished", 2: "finished"}
    curves = {p: {s: v for _, s, _, v, _ in store.scalars(r.id, "train/loss")}
              for p, r in rows.items()}
    out = compare_ranks(curves[1], curves[2])
    assert out.failures == [] and out.figures["steps"] == 20.0
    assert out.figures["max_rel_diff"] < 1e-4  # README: on a CPU they agree to 1e-4


# -- vLLM ------------------------------------------------------------------------------------


class StaleEngine:
    """An engine that tags tokens with the new version but keeps decoding with the old
    weights: the bug the in-flight update check exists for."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def add(self, request: Any) -> None:
        self.engine.add(request)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def step(self) -> list[Any]:
        return self.engine.step()

    def load_weights(self, state: dict[str, Any], version: int) -> None:
        self.engine.version = version


def fused_silu_engine(model: Any, max_len: int, batch: int) -> Any:
    """Our torch engine in bf16 with the MLP computed as vLLM's SiluAndMul does it
    (``silu(gate) * up`` in fp32, rounded to bf16 once): a legitimate difference of
    rounding, which the check must accept."""
    import types

    import torch.nn.functional as F

    from workbench.models.gpt import MLP
    from workbench.selftest.vllm_check import torch_engine

    def fused(self: Any, x: torch.Tensor) -> torch.Tensor:
        act = F.silu(self.gate_proj(x).float()) * self.up_proj(x).float()
        return self.down_proj(act.to(x.dtype))

    engine = torch_engine(model, "cpu", torch.bfloat16, max_len, batch)
    for module in engine.model.modules():
        if isinstance(module, MLP):
            module.forward = types.MethodType(fused, module)
    return engine


def test_vllm_comparison_with_torch_engines_standing_in(one_thread: None) -> None:
    """No vLLM and no CUDA here: our torch engine (fp32, CPU) stands in for vLLM; the
    same contract (add, step, load_weights in flight) is what the check drives."""
    from workbench.selftest.vllm_check import SPLIT, compare_engines, run_all, torch_engine

    def stand_in(model: Any, max_len: int, batch: int) -> Any:
        return torch_engine(model, "cpu", torch.float32, max_len, batch)

    out = run_all(stand_in, quick=True, device="cpu", dtype=torch.float32)
    assert out.failures == [], out.failures
    f = out.figures
    assert f["before_update_agree"] == 1.0 and f["after_update_agree_new"] == 1.0
    assert f["after_update_agree_old"] < 0.5 and f["tokens_new_version"] > 0
    assert f["first_after_update_new"] == 1.0 and f["first_after_update_old"] < 0.5
    stale = run_all(lambda m, n, b: StaleEngine(stand_in(m, n, b)), quick=True, device="cpu",
                    dtype=torch.float32)
    assert stale.failures == ["after the update 0% of the sequences' first new tokens are "
                              "the new weights' and 100% the old ones'"]
    # bf16 on both sides with one of vLLM's real differences (the fused SiluAndMul):
    # near-ties flip some tokens, the log-probs differ by bf16 noise, and it passes.
    fused = run_all(fused_silu_engine, quick=True, device="cpu", dtype=torch.bfloat16)
    assert fused.failures == [], fused.failures
    assert 0 < fused.figures["logprob_max_abs_diff"] < 0.75

    # Log-probs off by more than bf16 tolerance, and version tags that differ.
    def completion(tokens: list[int], logprobs: list[float], versions: list[int]) -> Any:
        return SimpleNamespace(tokens=tokens, logprobs=logprobs, versions=versions)

    n = SPLIT + 4
    ref = [completion(list(range(n)), [-0.1] * n, [0] * SPLIT + [1] * 4)]
    old = [completion(list(range(SPLIT)) + [99] * 4, [-0.1] * n, [0] * n)]
    assert compare_engines(ref, ref, old, SPLIT).failures == []
    shifted = [completion(list(range(n)), [-0.5] * n, [0] * SPLIT + [1] * 4)]
    (failure,) = compare_engines(shifted, ref, old, SPLIT).failures
    assert failure.startswith("log-probs differ by up to 0.400")
    untagged = [completion(list(range(n)), [-0.1] * n, [0] * n)]
    failures = compare_engines(untagged, ref, old, SPLIT).failures
    assert failures[0].startswith("version tags differ") and len(failures) == 2


# -- recurrent depth -------------------------------------------------------------------------


def small_huginn() -> dict[str, Any]:
    """Huginn's layout and head_dim (96) with 2 heads and a 1,024-token vocabulary, so it
    loads and decodes in about a second on a CPU."""
    from workbench.selftest.depth import SCALED

    return {**SCALED, "n_embd": 192, "n_heads": 2, "intermediate_size": 640,
            "vocab_size": 1024, "padded_vocab_size": 1024, "block_size": 64}


def test_huginn_bf16_decode_against_the_fp32_replay(tmp_path: Path, one_thread: None) -> None:
    """A CPU bf16 model stands in for the GPU one (no CUDA here): the same rounding."""
    from workbench.models.recurrent_depth import load_huginn
    from workbench.selftest.depth import SCALED, compare_logits, decode, replay, write_checkpoint

    assert (SCALED["n_embd"], SCALED["n_heads"], SCALED["intermediate_size"]) == (384, 4, 1280)
    cfg = small_huginn()
    folder = write_checkpoint(tmp_path / "huginn", cfg)
    other = write_checkpoint(tmp_path / "other", cfg, seed=1)
    trace = decode(load_huginn(folder).to(torch.bfloat16), [5, 6, 7, 8, 9, 10], 8, 8)
    assert len(trace.tokens) == len(trace.steps) == len(trace.logits) == 8
    out = compare_logits(trace, replay(load_huginn(folder), trace, 8), 8)
    assert out.failures == [], out.failures
    assert out.figures["logits_rel_err"] < 5e-2 and out.figures["worst_tie_gap_std"] <= 0.15
    bad = compare_logits(trace, replay(load_huginn(other), trace, 8), 8)  # wrong weights
    assert len(bad.failures) == 3, bad.failures
    assert bad.failures[0].startswith("logits: rel err")
    assert bad.failures[1].startswith("worst position: pos")
    assert bad.failures[2].startswith("the greedy token differs at positions [")


# -- system metrics, recipes -----------------------------------------------------------------


def test_nvml_sample_judgement_on_a_stand_in() -> None:
    """No GPU and no NVML here: tests/test_sysmetrics.py's stand-in pynvml module."""
    from tests.test_sysmetrics import stand_in_nvml
    from workbench.selftest.system import judge_sample, sample

    nvml = stand_in_nvml([{"util": 97, "used": 40 << 30, "temp": 71},
                          {"util": 0, "used": 1 << 30, "temp": 35}])
    values, indices = sample(nvml)
    assert indices == [0, 1]
    out = judge_sample(values, indices)
    assert out.failures == [] and out.figures["gpus"] == 2.0
    assert out.figures["gpu0_util"] == 97 and out.figures["gpu1_temp_c"] == 35
    no_temp = stand_in_nvml([{"util": 5, "used": 1 << 30, "temp": None}])
    out = judge_sample(*sample(no_temp))
    assert out.failures == ["NVML gave no temp_c for GPU 0"]
    out = judge_sample({**values, "sys/gpu1/temp_c": 300.0}, indices)
    assert out.failures == ["GPU 1 temp_c = 300.0 is outside [5, 120]"]
    with pytest.raises(Skip):
        sample(stand_in_nvml([], fail_init=True))


def test_recipe_runs_are_judged_on_status_and_metrics() -> None:
    from workbench.run_record import RunRecord
    from workbench.selftest.cpu import judge_recipe_run

    def run(status: str) -> RunRecord:
        return RunRecord(id="x", num=1, name="x", kind="pretrain", status=status, host="",
                         launcher="selftest", created=0.0, dir="")

    assert judge_recipe_run(run("finished"), {"train/loss", "val/loss"},
                            ["train/loss"]) == []
    assert judge_recipe_run(run("failed"), set(), ["train/loss", "val/loss"]) == [
        "the run ended failed", "it logged no train/loss, val/loss"]


# -- the hosts screen ------------------------------------------------------------------------


def test_the_hosts_screen_shows_the_last_selftest_per_host(store: Store, store_dir: Path,
                                                           tmp_path: Path) -> None:
    """Through Textual's Pilot: a host's answer recorded by `wb hosts check --selftest`'s
    own function (launcher ssh-selftest) shows under that host, a local `wb selftest`
    run under this machine, and one that starts and ends while the screen is open
    updates it."""
    pytest.importorskip("textual")
    from tests.test_tui_hosts import card_text, cell, closed_port, open_hosts, until, with_app
    from workbench.hosts import LOCAL, Host, add_host
    from workbench.selftest import Result, select
    from workbench.selftest.remote import record_remote
    from workbench.selftest.report import answer
    from workbench.selftest.runner import execute
    from workbench.tracking import Run

    add_host(Host("box", "127.0.0.1", port=closed_port()))  # unreachable: only the store
    facts = Facts(torch="2.x", cuda=True, device="H100", gpus=1, triton=True, vllm=None,
                  nvml=None)
    older = [Result("kernels/attention", PASS, 3.0, "ok")]
    newer = [Result("kernels/attention", FAIL, 3.0, "", "d64_out: rel err 1e-01"),
             Result("system/nvml", PASS, 0.1, "1 GPU"),
             Result("dist/muon-tiny-2rank", SKIP, reason="needs 2 GPUs: 1 visible")]
    record_remote(store, "box", answer(older, facts, quick=False))
    _, box_row = record_remote(store, "box", answer(newer, facts, quick=True))

    def local_selftest() -> RunRecord:
        row = store.create_run(kind="selftest", status="running", launcher="selftest",
                               total_steps=1)
        execute(Run(store, row, owner=True), select(["store/*"]), quick=True,
                facts=Facts.probe(), say=lambda _t: None, log=None)
        return store.get_run(row.id)

    local_row = local_selftest()

    async def body(app: Any, pilot: Any) -> None:
        screen = await open_hosts(app, pilot)
        await until(pilot, lambda: cell(screen, "box", "selftest") != "", 5, "the selftests")
        box = cell(screen, "box", "selftest")
        assert box.startswith("1 pass · 1 fail · "), box  # the newer of box's two
        assert cell(screen, LOCAL, "selftest").startswith("1 pass · 0 fail · ")
        assert cell(screen, "box", "runs") == "0/2"  # box's selftests are box's runs
        table = screen.table
        assert table.get_cell("box", "selftest").style == table.get_component_rich_style(
            "hosts-table--down", partial=True)
        assert table.get_cell(LOCAL, "selftest").style == table.get_component_rich_style(
            "hosts-table--ok", partial=True)
        card = card_text(screen)  # this machine is highlighted first
        assert f"selftest {local_row.name} ({local_row.id})" in card
        assert "1 passed, 0 failed, 0 skipped" in card and "failed:" not in card
        await pilot.press("down")
        await until(pilot, lambda: screen.selected == "box", 5, "box highlighted")
        card = card_text(screen)
        assert f"selftest {box_row.name} ({box_row.id}) · quick" in card
        assert "1 passed, 1 failed, 1 skipped" in card
        assert "failed: kernels/attention\n" in card
        # A selftest that starts here while the screen is open: running, then its answer.
        row = store.create_run(kind="selftest", status="running", launcher="selftest",
                               total_steps=15)
        await until(pilot, lambda: cell(screen, LOCAL, "selftest") == "running 0/15", 10,
                    "the running selftest")
        Run(store, row, owner=True).finish("failed", exit_code=1)  # it died: no answer
        await until(pilot, lambda: cell(screen, LOCAL, "selftest").startswith("failed · "),
                    10, "the selftest's end")
        await pilot.press("up")
        await until(pilot, lambda: screen.selected == LOCAL, 5, "local highlighted")
        assert "failed at " in card_text(screen) and "without an answer" in card_text(screen)

    with_app(store_dir, body)


def test_a_host_without_a_selftest_says_how_to_run_one() -> None:
    pytest.importorskip("textual")
    from workbench.hosts import Host
    from workbench.screens.hosts import HostCard, HostState, selftest_text

    assert selftest_text(None) == ("none", "dim")
    card = HostCard()
    text = card.render_state(HostState("gpu1", "me@gpu1", Host("gpu1", "me@gpu1"))).plain
    assert "no selftest recorded · wb hosts check gpu1 --selftest" in text
    assert "no selftest recorded · wb selftest" in card.render_state(
        HostState("local", "this machine")).plain
