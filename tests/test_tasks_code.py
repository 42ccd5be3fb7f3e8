"""The code task: rows of each benchmark layout, programs graded in the sandbox, `hapo eval` end to end.

Known verdicts come from hand-written completions (a right one, a wrong one, hostile ones that
try to fake a pass); a fixed-completion engine drives the real evaluator, and one real CLI run
on the tiny model checks the mechanics (its accuracy is 0).
"""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path

import pytest
import torch

from hapo_cli.data.benchmarks import load_bench_rows, resolve_bench
from hapo_cli.errors import HapoError
from hapo_cli.evaluate import evaluate_rows
from hapo_cli.rewards.code import CodePool, sandbox_kind
from hapo_cli.rollout.base import Rollout, pad_left, pad_right
from hapo_cli.tasks import TASKS, bench_task, build_task
from hapo_cli.tasks.code import CodeCase, CodeTask, code_rows, detect_layout, program_of

HE_ROWS = [
    {"task_id": "HumanEval/0", "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
     "entry_point": "add", "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"},
    {"task_id": "HumanEval/1", "prompt": 'def rev(s: str) -> str:\n    """Reverse s."""\n',
     "entry_point": "rev", "canonical_solution": "    return s[::-1]\n",
     "test": "def check(candidate):\n    assert candidate('abc') == 'cba'\n"},
]
RIGHT = "    return a + b\n\n\ndef unused():\n    raise SystemExit(1)\n"  # cut at "\ndef" (HumanEval's stops)
WRONG = "    return a - b\n"
ALWAYS_EQUAL = "    class Eq:\n        def __eq__(self, other):\n            return True\n    return Eq()\n"
EXIT_ZERO = "    import os\n    os._exit(0)\n"
FENCED = "Here it is:\n```python\ndef add(a, b):\n    return b + a\n```\n"


@pytest.fixture(scope="module")
def he_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("code") / "humaneval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HE_ROWS), encoding="utf-8")
    return path


class FixedEngine:
    """An engine that answers with given completions, in order (prompt tokens are not looked at)."""

    def __init__(self, texts: list[str]):
        self.texts = list(texts)

    def generate(self, prompts, params) -> Rollout:
        k = len(prompts) * params.n
        texts, self.texts = self.texts[:k], self.texts[k:]
        p_ids, p_mask = pad_left([list(p) for p in prompts for _ in range(params.n)], 0)
        r_ids, r_mask = pad_right([[1] * (len(t.split()) + 1) for t in texts], 0)
        return Rollout(p_ids, p_mask, r_ids, r_mask, None, torch.ones(r_ids.shape), ["stop"] * k, texts)


@pytest.fixture(scope="module")
def tokenizer():
    from hapo_cli.data.tiny import build_tokenizer

    return build_tokenizer()


def test_humaneval_rows_carry_tests_and_prefix(he_file):
    task = bench_task(f"humaneval={he_file}")
    rows = task.val_rows()
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert rows[0]["question"] == HE_ROWS[0]["prompt"]  # HumanEval's usual prompt: the code to continue
    case = CodeCase.parse(rows[0]["answer"])
    assert case.prefix == HE_ROWS[0]["prompt"] and case.mode == "functions"
    assert case.tests.endswith("check(add)\n") and case.tests.startswith(HE_ROWS[0]["test"])
    assert task.grader == "code" and task.run_info() == {"sandbox": sandbox_kind()}


def test_program_of_cuts_at_stop_sequences_and_prefers_a_fence():
    prefix = "def f(x):\n"
    assert program_of("    return x\n\ndef g():\n    pass", prefix) == "def f(x):\n    return x\n"
    assert program_of("    return x\nprint(f(1))", prefix) == "def f(x):\n    return x"
    fenced = "text\n```python\ndef f(x):\n    return 2\n```"
    assert program_of(fenced, prefix) == "def f(x):\n    return 2\n"
    assert program_of(fenced, "from typing import List\nimport math\n\n" + prefix) == (
        "from typing import List\nimport math\ndef f(x):\n    return 2\n")
    assert program_of("```python\n    return 3\n```", prefix) == "def f(x):\n    return 3\n"
    assert program_of("x = 1", "") == "x = 1"


def test_known_verdicts_through_the_sandbox(he_file):
    task = bench_task(f"humaneval={he_file}")
    gold = task.val_rows()[0]["answer"]
    got = task.grade([RIGHT, WRONG, ALWAYS_EQUAL, EXIT_ZERO, FENCED], [gold] * 5)
    assert [g.correct for g in got] == [True, False, False, False, True]
    assert [g.method for g in got][:3] == ["pass", "fail", "fail"]
    assert got[3].method in ("fail", "error")  # exiting early never reads as a pass
    assert [g.verdict for g in got] == ["correct", "wrong", "wrong", "wrong", "correct"]
    # a caller's CodePool is used (and left open); scores are DAPO's +1 / -1
    with CodePool(workers=1) as pool:
        assert task.rewards([RIGHT, WRONG], [gold, gold], pool) == [(1.0, 1.0), (-1.0, 0.0)]
        assert task.rewards([RIGHT], [gold], pool) == [(1.0, 1.0)]


def test_evaluate_rows_reports_pass_at_k_from_known_verdicts(he_file, tokenizer, tmp_path):
    task = bench_task(f"humaneval={he_file}")
    rows = task.val_rows()
    # question 0: 1 of 3 right; question 1: 0 of 3 (a right program for the other problem is still wrong here)
    engine = FixedEngine([RIGHT, WRONG, ALWAYS_EQUAL, "    return s\n", EXIT_ZERO, RIGHT])
    s = evaluate_rows(engine, tokenizer, rows, task=task, n=3, k_list=[1, 2, 3], out_dir=tmp_path, progress=False)
    assert s["n_questions"] == 2 and s["n_samples"] == 6
    assert s["avg@3"] == pytest.approx(1 / 6)
    assert s["pass@1"] == pytest.approx(1 / 6)
    assert s["pass@2"] == pytest.approx((1 - 1 / 3) / 2)  # 1 - C(2,2)/C(3,2) for question 0, 0 for question 1
    assert s["pass@3"] == pytest.approx(0.5)
    assert s["sandbox"] == sandbox_kind()
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["correct"] for x in samples] == [True, False, False, False, False, False]
    assert json.loads((tmp_path / "summary.json").read_text())["sandbox"] == sandbox_kind()


def test_mbpp_layout_prompt_and_tests(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    row = {"task_id": 11, "prompt": "Write a function to square a number.", "code": "def sq(x): return x*x",
           "test_imports": ["import math"], "test_list": ["assert sq(3) == 9", "assert sq(-2) == math.pow(2, 2)"]}
    path.write_text(json.dumps(row) + "\n")
    task = bench_task(f"mbpp={path}")
    (r,) = task.val_rows()
    assert r["id"] == "11"
    assert "Write a function to square a number. Your code should pass these tests:\n\nassert sq(3) == 9\n" in r["question"]
    assert r["answer"] == "import math\nassert sq(3) == 9\nassert sq(-2) == math.pow(2, 2)\n"
    got = task.grade(["```python\ndef sq(x):\n    return x * x\n```", "```python\ndef sq(x):\n    return x + x\n```"],
                     [r["answer"]] * 2)
    assert [g.correct for g in got] == [True, False]


def _compressed(cases) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_livecodebench_stdin_and_functional_layouts(tmp_path):
    stdin_row = {"question_id": "abc1", "question_content": "Read n, print 2n.", "starter_code": "",
                 "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]),
                 "private_test_cases": _compressed([{"input": "10\n", "output": "20\n", "testtype": "stdin"}]),
                 "metadata": "{}", "contest_date": "2024-09-01T00:00:00"}
    func_row = {"question_id": "lc2", "question_content": "Add two numbers.",
                "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
                "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
                "private_test_cases": "", "metadata": json.dumps({"func_name": "add"}), "contest_date": "2024-09-02"}
    path = tmp_path / "lcb.jsonl"
    path.write_text(json.dumps(stdin_row) + "\n" + json.dumps(func_row) + "\n")
    task = bench_task(f"livecodebench={path}")
    r0, r1 = task.val_rows()
    assert "### Question:\nRead n, print 2n." in r0["question"] and "Read the inputs from stdin" in r0["question"]
    assert "class Solution:" in r1["question"] and "starter code" in r1["question"]
    c0, c1 = CodeCase.parse(r0["answer"]), CodeCase.parse(r1["answer"])
    assert c0.mode == "stdio" and "'10\\n'" in c0.tests  # private cases decoded and included
    assert c1.mode == "functions" and "Solution().add(*[1, 2]) == 3" in c1.tests
    stdin_ok = "```python\nn = int(input())\nprint(2 * n)\n```"
    stdin_bad = "```python\nprint(6)\n```"  # passes the public case only
    func_ok = "```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```"
    got = task.grade([stdin_ok, stdin_bad, func_ok], [r0["answer"], r0["answer"], r1["answer"]])
    assert [g.correct for g in got] == [True, False, True]


def test_pickled_objects_in_test_cases_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    cell = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]", "private_test_cases": cell}
    with pytest.raises(HapoError, match="refusing"):
        code_rows([row])


def test_layouts_are_found_by_columns():
    assert detect_layout({"prompt", "test", "entry_point"}) == "humaneval"
    assert detect_layout({"prompt", "test_list"}) == "mbpp"
    assert detect_layout({"question_content", "public_test_cases"}) == "livecodebench"
    assert detect_layout({"question", "tests"}) == "plain"
    with pytest.raises(HapoError, match="empty tests"):
        CodeCase.parse("  ")


def test_registry_specs_name_their_layout():
    for name, layout in [("humaneval", "humaneval"), ("mbpp", "mbpp"), ("livecodebench", "livecodebench")]:
        spec = resolve_bench(name)
        assert spec.grader == "code" and spec.extra["layout"] == layout


def test_data_code_trains_on_a_plain_table(tmp_path):
    from hapo_cli.config import DataConfig, ModelConfig

    path = tmp_path / "train.jsonl"
    rows = [{"question": "Write double(x).", "tests": "assert double(2) == 4\nassert double(0) == 0\n"},
            {"question": "Write neg(x).", "tests": ["assert neg(1) == -1", "assert neg(-3) == 3"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(name="code", task="code", path=str(path), question_key="question", answer_key="tests")
    task = build_task(cfg, ModelConfig())
    assert isinstance(task, CodeTask) and "code" in TASKS
    train = task.train_rows()
    assert [r["answer"] for r in train] == [rows[0]["tests"], "assert neg(1) == -1\nassert neg(-3) == 3\n"]
    assert train[0]["question"].startswith("Write double(x).") and "```python" in train[0]["question"]
    sa = task.rewards(["```python\ndef double(x):\n    return 2 * x\n```", "def neg(x):\n    return x"],
                      [train[0]["answer"], train[1]["answer"]])
    assert sa == [(1.0, 1.0), (-1.0, 0.0)]
    with pytest.raises(HapoError, match="needs data.path"):
        build_task(DataConfig(task="code"), ModelConfig())


def test_bench_rows_keep_the_columns_the_code_grader_needs(he_file):
    rows = load_bench_rows(f"humaneval={he_file}")
    assert rows[0]["entry_point"] == "add" and rows[0]["test"] == HE_ROWS[0]["test"]


@pytest.mark.slow
def test_hapo_eval_humaneval_file_on_the_tiny_model(he_file, tmp_path, cli, tiny_model_dir):
    out = tmp_path / "eval"
    res = cli("eval", "--bench", f"humaneval={he_file}", "--model", "tiny", "--n", "2", "--max-new-tokens", "4",
              "--out", str(out), "--no-wandb")
    assert res.returncode == 0, res.stderr[-2000:]
    (summary,) = json.loads((out / "summary.json").read_text())
    assert summary["n_questions"] == 2 and summary["n_samples"] == 4
    assert summary["pass@1"] == 0.0 and summary["pass@2"] == 0.0  # digits cannot be a Python function body
    assert summary["sandbox"] == sandbox_kind()
    assert json.loads((out / "meta.json").read_text())["sandbox"] == sandbox_kind()
    assert len((out / "humaneval" / "samples.jsonl").read_text().splitlines()) == 4
