"""The `math` verifier (math-verify), GSM8K / MATH problem sets, and their spec checks.

All offline: math-verify and sympy are installed dependencies, the problem sets are
written by the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import typing
from pathlib import Path

import pytest

from tests.helpers import wb_inproc
from workbench.recipes.rl.spec import TasksSection
from workbench.recipes.rl.tasks import (
    ANSWER_FORMATS,
    Problem,
    boxed_answer,
    completion_text,
    gsm8k_answer,
    load_jsonl,
    solution_text,
)
from workbench.recipes.rl.verifier import VerifierPool, check_math, score
from workbench.spec import SpecError, builtin_specs, parse_spec
from workbench.store import Store

L_MAX, L_CACHE = 512, 64


def _math(answer: str) -> Problem:
    return Problem("m-1", "test", "q\n", answer, "math", {})


# ----------------------------------------------------------------------------- checker


@pytest.mark.parametrize(("gold", "answer"), [
    ("72", "72"),
    ("72", "72.0"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("1,234,567", "1234567"),
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac12"),
    ("\\dfrac{3}{4}", "3/4"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("$\\sqrt{2}$", "\\sqrt{2}"),
    ("\\sqrt{2}", "$\\sqrt{2}$"),
    ("-3", "- 3"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("[1,2)", "[1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("x^2+1", "1+x^2"),
    ("\\boxed{5}", "5"),  # a reference given as a box
])
def test_math_accepts_equivalent_answers(gold: str, answer: str) -> None:
    assert check_math(_math(gold), answer) is True


@pytest.mark.parametrize(("gold", "answer"), [
    ("72", "73"),
    ("1,000", "1001"),
    ("1,000", "1"),  # a thousands comma is not a list separator
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("2\\sqrt{2}", "\\sqrt{2}"),
    ("(1,2)", "[1,2]"),  # open vs closed interval
    ("\\{1,2\\}", "\\{1,3\\}"),
])
def test_math_rejects_wrong_answers(gold: str, answer: str) -> None:
    assert check_math(_math(gold), answer) is False


@pytest.mark.parametrize("answer", ["", "   ", "\\frac{1}{", "}{", "$", "seventy two",
                                    "the answer is 72", "\\sqrt{", "))))"])
def test_math_scores_malformed_answers_wrong_without_raising(answer: str) -> None:
    assert check_math(_math("72"), answer) is False


def test_math_works_outside_the_main_thread() -> None:
    """math-verify's signal timeouts would raise off the main thread; ours are off."""
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(check_math(_math("\\frac{1}{2}"), "0.5")))
    t.start()
    t.join(30)
    assert got == [True]


def test_importing_the_verifier_loads_neither_sympy_nor_torch() -> None:
    """Verifier workers start fast: math-verify loads on the first math check only."""
    code = ("import sys, workbench.recipes.rl.verifier; "
            "print(sorted(m for m in ('sympy', 'math_verify', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- score


def test_score_of_whole_completions() -> None:
    p = _math("\\frac{1}{2}")
    right = score(p, "<think>1 over 2</think>So it is half: \\boxed{0.5}", 20, L_MAX, L_CACHE)
    assert (right.reward, right.correct, right.format_ok, right.answer) == (1.0, True, True,
                                                                            "0.5")
    wrong = score(p, "<think>hmm</think>\\boxed{\\frac{1}{3}}", 20, L_MAX, L_CACHE)
    assert wrong.reward == pytest.approx(0.1) and wrong.reason == "wrong answer"
    garbage = score(p, "<think>hmm</think>\\boxed{\\frac{1}{}}", 20, L_MAX, L_CACHE)
    assert garbage.format_ok and garbage.reward == pytest.approx(0.1)  # unparsable: wrong
    # Format violations score 0 whatever the answer: no think block; a box only inside it.
    for text in ("\\boxed{0.5}", "<think>\\boxed{0.5}</think>", "<think></think>\\boxed{0.5} ok"):
        s = score(p, text, 20, L_MAX, L_CACHE)
        assert (s.reward, s.correct, s.format_ok) == (0.0, False, False), text
    # The soft length penalty: 32 tokens into the 64-token zone costs 0.05.
    late = score(p, "<think></think>\\boxed{1/2}", L_MAX - L_CACHE + 32, L_MAX, L_CACHE)
    assert late.correct and late.length_penalty == pytest.approx(-0.05)
    assert late.reward == pytest.approx(0.95)
    over = score(p, "<think></think>\\boxed{1/2}", L_MAX + 1, L_MAX, L_CACHE)
    assert over.reward == pytest.approx(0.9)


def test_pool_runs_math_in_its_worker_process() -> None:
    with VerifierPool(1, 60.0, L_MAX, L_CACHE) as pool:
        pool.submit("right", _math("1,000"), "<think></think>\\boxed{1000}", 5)
        pool.submit("frac", _math("\\dfrac{3}{4}"), "<think></think>\\boxed{0.75}", 5)
        pool.submit("wrong", _math("72"), "<think></think>\\boxed{71}", 5)
        pool.submit("format", _math("72"), "\\boxed{72}", 5)
        got = dict(pool.drain(timeout=90))
        pids = pool.pids
    assert [got[k].reward for k in ("right", "frac", "wrong", "format")] == \
        pytest.approx([1.0, 1.0, 0.1, 0.0])
    assert got["right"].pid == pids[0] and got["right"].pid is not None


# ----------------------------------------------------------------------------- answers


def test_gsm8k_answer_extraction() -> None:
    assert gsm8k_answer("She pays 2*617=<<2*617=1234>>1234.\n#### 1,234") == "1234"
    assert gsm8k_answer("#### 1,234,567\n") == "1234567"
    assert gsm8k_answer("a #### 1\n#### -5 ") == "-5"  # the last mark
    assert gsm8k_answer("#### 3.5") == "3.5"
    for bad in ("no mark here", "#### ", "5 ####"):
        with pytest.raises(ValueError):
            gsm8k_answer(bad)


def test_boxed_answer_extraction() -> None:
    assert boxed_answer("So $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert boxed_answer("\\boxed{1} then \\boxed{ \\{1, {2}\\} }") == "\\{1, {2}\\}"
    for bad in ("no box", "\\boxed{\\frac{1}{2}", "\\boxed{ }"):
        with pytest.raises(ValueError):
            boxed_answer(bad)


# ----------------------------------------------------------------------------- JSONL


def _write_jsonl(path: Path, rows: list[dict[str, typing.Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _gsm8k_rows(n: int) -> list[dict[str, str]]:
    """GSM8K-shaped records: a question, and a worked answer ending in '#### N'."""
    rows = []
    for i in range(n):
        a, b = 137 * (i + 1), 1000 + 911 * i
        rows.append({
            "question": f"A shop sells {a} pens on Monday and {b} on Tuesday. How many pens "
                        "does it sell in total?",
            "answer": f"Monday and Tuesday: {a}+{b}=<<{a}+{b}={a + b}>>{a + b} pens.\n"
                      f"#### {a + b:,}",
        })
    return rows


def test_load_gsm8k_jsonl(tmp_path: Path) -> None:
    rows = _gsm8k_rows(20)
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    ps = load_jsonl(path, "math", prompt_field="question", answer_field="answer",
                    answer_format="gsm8k")
    assert len(ps) == 20
    for i, (p, row) in enumerate(zip(ps, rows, strict=True)):
        total = 137 * (i + 1) + 1000 + 911 * i
        assert p.answer == str(total) and "," not in p.answer
        assert p.prompt == row["question"] + "\n"
        assert p.id == f"gsm8k:{i + 1}" and p.task == "jsonl:gsm8k" and p.verifier == "math"
        assert p.meta == {}  # question and answer are not copied into meta
        assert score(p, solution_text(p), 10, L_MAX, L_CACHE).reward == 1.0
        with_commas = completion_text("", f"{total:,}")
        assert score(p, with_commas, 10, L_MAX, L_CACHE).correct
    # Commas gone, the "int" verifier reads GSM8K answers too.
    ints = load_jsonl(path, "int", "question", "answer", "gsm8k")
    assert all(score(p, solution_text(p), 10, L_MAX, L_CACHE).correct for p in ints)


def test_load_math_jsonl(tmp_path: Path) -> None:
    rows = [{"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
            {"problem": "Roots of x^2=1?", "solution": "\\boxed{1} or \\boxed{\\{-1, 1\\}}"}]
    path = _write_jsonl(tmp_path / "math.jsonl", rows)
    ps = load_jsonl(path, "math", "problem", "solution", "boxed")
    assert [p.answer for p in ps] == ["\\frac{1}{2}", "\\{-1, 1\\}"]
    assert check_math(ps[0], "0.5") and check_math(ps[1], "\\{1,-1\\}")
    plain = load_jsonl(_write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "answer": 7}]),
                       "math")
    assert plain[0].answer == "7" and check_math(plain[0], "7")


@pytest.mark.parametrize(("record", "answer_format", "error"), [
    ({"question": "q", "answer": "no final answer"}, "gsm8k", "no '####'"),
    ({"question": "q", "answer": "#### "}, "gsm8k", "nothing after"),
    ({"question": "q", "answer": 5}, "gsm8k", "must be a string"),
    ({"question": "q"}, "gsm8k", "must be a string"),
    ({"question": "q", "answer": "no box"}, "boxed", "no \\boxed"),
    ({"question": "q", "answer": "\\boxed{\\frac{1}{2}"}, "boxed", "never closes"),
    ({"question": "q", "answer": "\\boxed{}"}, "boxed", "is empty"),
    ({"question": "q", "answer": None}, "plain", "must be a string or number"),
])
def test_bad_records_name_file_and_line(tmp_path: Path, record: dict[str, typing.Any],
                                        answer_format: str, error: str) -> None:
    good = {"question": "q", "answer": "1 #### 1 \\boxed{1}"}
    path = _write_jsonl(tmp_path / "set.jsonl", [good, record])
    with pytest.raises(ValueError) as info:
        load_jsonl(path, "math", "question", "answer", answer_format)
    assert str(info.value).startswith(f"{path}:2: field 'answer': ")
    assert error in str(info.value)


def test_unknown_answer_format_is_refused(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "set.jsonl", [{"prompt": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="answer_format 'csv': use one of plain, gsm8k, boxed"):
        load_jsonl(path, "math", answer_format="csv")


# ----------------------------------------------------------------------------- spec


def _rl_spec(overrides: list[str]) -> object:
    return parse_spec(builtin_specs()["rl-async-tiny"], overrides)


def test_spec_answer_formats_match_the_loader() -> None:
    annotation = TasksSection.model_fields["answer_format"].annotation
    assert typing.get_args(annotation) == ANSWER_FORMATS


@pytest.mark.parametrize("overrides", [
    ["tasks.verifier=math", "tasks.answer_format=gsm8k"],
    ["tasks.verifier=my_pkg.checks:is_right"],
    ["tasks.answer_format=boxed"],
])
def test_spec_accepts_known_verifiers_and_formats(overrides: list[str]) -> None:
    _rl_spec(overrides)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["tasks.verifier=nope"], "tasks.verifier: unknown verifier 'nope'; use exact, int, "
                              "number, list, math or 'package.module:function'"),
    (["tasks.verifier=pkg:"], "tasks.verifier: unknown verifier 'pkg:'"),
    (["tasks.answer_format=csv"], "tasks.answer_format: Input should be 'plain', 'gsm8k' "
                                  "or 'boxed'"),
])
def test_spec_refuses_bad_tasks_in_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        _rl_spec(overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def _refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a `wb` call that exited 2."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _no_runs(store_dir: Path) -> bool:
    if not store_dir.exists():
        return True
    with Store(store_dir, create=False) as st:
        return st.runs() == []


def test_wb_launch_refuses_bad_tasks_without_a_run(tmp_path: Path, store_dir: Path) -> None:
    line = _refused(wb_inproc("launch", "rl-async-tiny", "--set", "tasks.verifier=nope"))
    assert "tasks.verifier" in line and "'nope'" in line and "math" in line
    problems = _write_jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_rows(2))
    spec = tmp_path / "rl-gsm8k.toml"
    spec.write_text(builtin_specs()["rl-async-tiny"].replace(
        '[tasks]\n', f'[tasks]\npath = "{problems}"\nverifier = "math"\n'
        'answer_format = "gsm9k"\n'))
    line = _refused(wb_inproc("launch", str(spec)))
    assert "tasks.answer_format" in line and "'gsm8k'" in line and "'boxed'" in line
    assert _no_runs(store_dir)
