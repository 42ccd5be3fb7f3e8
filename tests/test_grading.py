"""Answer grading: the golden file (every verdict), extraction and normalisation rules."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from hapo_cli.rewards import (
    extract_answer,
    extract_answer_line,
    extract_boxed,
    grade_completion,
    math_verify_equal,
    normalize_answer,
)

GOLDEN = Path(__file__).parent / "data" / "golden_grading.jsonl"
CASES = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_golden_file_is_big_and_balanced():
    assert len(CASES) >= 80
    assert len({c["id"] for c in CASES}) == len(CASES)
    n_true = sum(c["expected"] for c in CASES)
    assert 30 <= n_true <= len(CASES) - 30  # both verdicts well represented
    cats = {c["category"] for c in CASES}
    for needed in ("integer", "fraction", "decimal", "latex", "interval", "set", "degree", "percent", "unit",
                   "answer_line", "malformed", "empty", "several_boxes"):
        assert needed in cats


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden_verdict(case):
    res = grade_completion(case["completion"], case["gold"], prefer=case["prefer"])
    assert res.correct is case["expected"], (case["note"], res)


# ---- extraction ----

def test_boxed_nested_and_last_wins():
    assert extract_boxed(r"a \boxed{\frac{1}{\sqrt{2}}} b \boxed{x^{2}}") == "x^{2}"
    assert extract_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"  # escaped braces do not close the box
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"$\boxed 42$.") == "42"
    assert extract_boxed(r"\boxed{1} \boxed{2") is None  # malformed final box
    assert extract_boxed(r"\boxed{}") is None
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxedfoo{3}") is None  # another command, not \boxed


def test_answer_line_dapo_rules():
    assert extract_answer_line("work\nAnswer: 12\nmore\nAnswer: 13") == "13"
    assert extract_answer_line("Answer: 5\n" + "x" * 400) is None  # only the last 300 characters
    assert extract_answer_line("x" * 1000 + "\nAnswer: 7") == "7"
    assert extract_answer_line("ANSWER:   -3  ") == "-3"
    assert extract_answer_line("**Answer:** 64") == "64"
    assert extract_answer_line("Final Answer: The final answer is $9$. I hope it is correct.") == "$9$"


def test_extract_preference_order():
    text = "The answer is \\boxed{4}.\nAnswer: 5"
    assert extract_answer(text, "boxed") == "4"
    assert extract_answer(text, "answer") == "5"
    assert extract_answer(text, "answer_only") == "5"
    assert extract_answer("\\boxed{4}", "answer_only") is None
    assert extract_answer("85", "raw") == "85"
    assert extract_answer("thinking...\n 85 \n", "raw") == "85"
    assert extract_answer("", "raw") is None
    with pytest.raises(ValueError):
        extract_answer("x", "nope")


def test_pathological_text_is_linear_time():
    """A megabyte of braces and 'Answer:'s is scanned quickly (no regex backtracking blow-up)."""
    import time

    text = ("\\boxed{" * 50_000) + ("Answer: " * 20_000) + ("{" * 200_000)
    t0 = time.monotonic()
    extract_answer(text, "boxed")
    extract_answer(text, "answer")
    normalize_answer("1" * 4000 + " cm")
    assert time.monotonic() - t0 < 10.0  # generous: a quadratic scan would take minutes


# ---- normalisation ----

@pytest.mark.parametrize(
    "raw, norm",
    [
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
        ("$\\frac12$", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("30^{\\circ}", "30"),
        ("45°", "45"),
        ("25\\%", "25"),
        ("\\$1,234.50", "1234.5"),
        ("5 \\text{ cm}^2", "5"),
        ("12 square units", "12"),
        ("x = 7", "7"),
        ("\\text{(B)}", "B"),
        ("042", "42"),
        ("-0.0", "0"),
        (".5", "0.5"),
        ("+3", "3"),
        ("1,2", "1,2"),  # a list, not a thousands separator
        ("12,34", "12,34"),
        ("2m", "2m"),  # a variable, not metres (no space)
        ("x = 1, y = 2", "x=1,y=2"),  # two equations: nothing dropped
        ("\\text{Evelyn}.", "Evelyn"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_normalize_never_merges_different_numbers():
    pairs = [("1/2", "2"), ("12", "1.2"), ("0.5", "50\\%"), ("15", "5"), ("100", "1000"), ("-7", "7"),
             ("\\frac{1}{2}", "\\frac{1}{3}"), ("2.5", "25")]
    for a, b in pairs:
        assert normalize_answer(a) != normalize_answer(b), (a, b)


# ---- math-verify wrapper ----

def test_math_verify_equal_gold_first_and_values():
    assert math_verify_equal("\\frac{1}{2}", "0.5")
    assert math_verify_equal("(x+1)^2", "x^2+2x+1")
    assert not math_verify_equal("\\frac{1}{2}", "2")
    assert not math_verify_equal("12", "1.2")
    assert not math_verify_equal("", "1")


def test_math_verify_from_a_worker_thread_does_not_raise():
    """signal.alarm only works in the main thread: off it, timeouts are disabled (no ValueError)."""
    out = {}

    def work():
        out["eq"] = math_verify_equal("\\frac{1}{2}", "0.5", timeout=5)
        out["ne"] = math_verify_equal("3", "4", timeout=5)
        out["res"] = grade_completion("\\boxed{2\\sqrt{3}}", "\\sqrt{12}")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert out["eq"] is True and out["ne"] is False
    assert out["res"].correct and out["res"].method == "math_verify"


def test_grade_result_verdicts():
    assert grade_completion("\\boxed{3}", "3").verdict == "correct"
    assert grade_completion("\\boxed{4}", "3").verdict == "wrong"
    assert grade_completion("nothing", "3").verdict == "no_answer"
    r = grade_completion("\\boxed{4}", "3")
    assert r.as_dict()["verdict"] == "wrong" and r.pred == "4" and r.pred_norm == "4"
