"""Code rewards through the real sandbox: extraction, execute's statuses, code_reward, the pool, dataset helpers."""

from __future__ import annotations

import time

import pytest

from hapo_cli.errors import HapoError
from hapo_cli.rewards.code import (
    CodePool,
    ExecResult,
    code_reward,
    execute,
    extract_code,
    humaneval_tests,
    mbpp_tests,
    sandbox_kind,
    stdio_tests,
)

# HumanEval/0 in the dataset's own shape (prompt + completion = program; `test` defines check(candidate))
HE_PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than given threshold."""
'''
HE_SOLUTION = '''    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
'''
HE_TEST = '''

METADATA = {'author': 'jt', 'dataset': 'test'}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
'''


def test_extract_code_takes_the_last_python_block():
    text = "First try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\nDone."
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("```\nx = 2\n```") == "x = 2\n"
    # a non-Python block is not taken; with no Python block the whole text is the program
    assert extract_code("```bash\nrm -rf /\n```") == "```bash\nrm -rf /\n```"
    assert extract_code("def f():\n    return 3\n") == "def f():\n    return 3\n"


def test_humaneval_problem_passes_and_a_wrong_one_fails():
    tests = humaneval_tests(HE_TEST, "has_close_elements")
    good = execute(HE_PROMPT + HE_SOLUTION, tests)
    assert isinstance(good, ExecResult)
    assert (good.status, good.passed) == ("pass", True)
    assert good.kind == sandbox_kind()
    bad = execute(HE_PROMPT + "    return True\n", tests)
    assert (bad.status, bad.passed) == ("fail", False)
    assert "assertion failed" in bad.detail


def test_mbpp_style_tests():
    tests = mbpp_tests(["assert remove_Occ('hello','l') == 'heo'", "assert remove_Occ('abcda','a') == 'bcd'"])
    assert execute("def remove_Occ(s, ch):\n    return s.replace(ch, '')\n", tests).status == "pass"
    imports = mbpp_tests(["assert math.isclose(area(1), 3.14159, rel_tol=1e-3)"], ["import math"])
    assert execute("import math\ndef area(r):\n    return math.pi * r * r\n", imports).status == "pass"


def test_statuses_and_their_fields():
    cases = {
        "pass": "def f():\n    return 1\n",
        "fail": "def f():\n    return 2\n",
        "error": "def f(:\n",
        "timeout": "def f():\n    while True:\n        pass\n",
        "limit": "def f():\n    return bytearray(4 << 30)\n",
    }
    for status, program in cases.items():
        t0 = time.monotonic()
        r = execute(program, "assert f() == 1\n", timeout=2, memory_mb=256)
        assert r.status == status, (status, r)
        assert r.passed == (status == "pass")
        assert 0 < r.seconds < 7 and time.monotonic() - t0 < 8
        assert isinstance(r.output_tail, str)


def test_code_reward_scores():
    tests = "assert add(2, 3) == 5\n"
    assert code_reward("Here:\n```python\ndef add(a, b):\n    return a + b\n```", tests) == (1.0, 1.0)
    assert code_reward("```python\ndef add(a, b):\n    return a - b\n```", tests) == (-1.0, 0.0)
    assert code_reward("I cannot do this.", tests) == (-1.0, 0.0)


def test_values_cross_the_boundary_exactly():
    program = (
        "def echo(x):\n    return x\n"
        "def kinds():\n    return [None, True, 2**100, -1.5, float('inf'), 1+2j, 'é', b'\\x00', (1,), {1, 2},"
        " frozenset([3]), {'a': [1]}]\n"
    )
    tests = (
        "assert kinds() == [None, True, 2**100, -1.5, float('inf'), 1+2j, 'é', b'\\x00', (1,), {1, 2}, frozenset([3]),"
        " {'a': [1]}]\n"
        "assert type(echo((1, 2))) is tuple and type(echo([1, 2])) is list\n"
        "assert echo(True) is True and type(echo(1)) is int\n"
        "assert echo(x=3) == 3\n"
    )
    r = execute(program, tests)
    assert r.status == "pass", r.detail


def test_pool_matches_serial_and_keeps_order():
    programs = [f"def f():\n    return {i}\n" for i in range(8)]
    tests = [f"assert f() == {i if i % 3 else -1}\n" for i in range(8)]
    with CodePool(workers=2, timeout=5) as pool:
        results = pool.map(programs, tests)
        rewards = pool.rewards([f"```python\n{p}```" for p in programs], tests)
    serial = [execute(p, t).status for p, t in zip(programs, tests)]
    assert [r.status for r in results] == serial == ["fail" if i % 3 == 0 else "pass" for i in range(8)]
    assert rewards == [(-1.0, 0.0) if i % 3 == 0 else (1.0, 1.0) for i in range(8)]


def test_pool_bad_input_is_one_clear_error():
    with pytest.raises(HapoError, match="workers >= 1"):
        CodePool(workers=0)
    with CodePool(workers=1) as pool:
        with pytest.raises(HapoError, match="2 programs but 1 test"):
            pool.map(["a", "b"], ["t"])


def test_humaneval_entry_point_must_be_a_name():
    with pytest.raises(HapoError, match="entry_point"):
        humaneval_tests(HE_TEST, "f(); import os")


def test_stdio_mode_runs_the_program_as_main_per_input():
    program = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n"
    tests = stdio_tests([("1 2\n", "3\n"), ("10 -4", "6")])
    assert execute(program, tests, mode="stdio").status == "pass"
    assert execute(program.replace("a + b", "a - b"), tests, mode="stdio").status == "fail"
    # sys.exit(0) after printing is a normal end; the output is still judged here, not by the program
    assert execute("print(3)\nraise SystemExit(0)\n", stdio_tests([("", "3")]), mode="stdio").status == "pass"
    assert execute("print('3')\n", stdio_tests([("", "4")]), mode="stdio").status == "fail"
    assert execute("while True:\n    pass\n", stdio_tests([("", "4")]), mode="stdio", timeout=1).status == "timeout"
    with pytest.raises(HapoError, match="unknown execution mode"):
        execute(program, tests, mode="docker")
