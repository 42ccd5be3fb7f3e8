"""Code rewards: run a model's program against tests in the sandbox (`hapo_cli.rewards.sandbox`).

    execute(program, tests, timeout=10.0, memory_mb=1024) -> ExecResult   # status pass|fail|timeout|error|limit
    code_reward(completion, tests) -> (score, acc)                       # +1/1 on pass, -1/0 otherwise
    execute(program, stdio_tests([(input, output), ...]), mode="stdio")   # stdin/stdout problems
    with CodePool(workers=2) as pool:
        results = pool.map(programs, tests)                              # same guarantees, in parallel
    sandbox_kind() -> "bubblewrap" | "rlimit+netns" | "rlimit"           # record it in the run's metadata

`tests` is Python source run by the trusted judge, not by the program: the program's top-level
functions and classes are callable from it by name (HumanEval: pass `humaneval_tests(test,
entry_point)`, which appends `check(entry_point)`; MBPP: the `test_list` asserts joined by
newlines, see `mbpp_tests`). Arguments and results cross the boundary as plain data (None,
bool, int, float, complex, str, bytes, tuple, list, set, frozenset, dict); other results are
opaque handles whose methods can be called (`Solution().twoSum(...)`) but that equal nothing.
Known limit of this design: a test that checks an argument the function mutated in place sees
its own copy, unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from hapo_cli.errors import HapoError
from hapo_cli.rewards.sandbox import KINDS, STATUSES, ExecResult, Limits, run_sandboxed, sandbox_kind

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_TAGS = {"", "python", "py", "python3", "py3"}


def execute(program: str, tests: str, *, timeout: float = 10.0, memory_mb: int = 1024,
            kind: str | None = None, mode: str = "functions") -> ExecResult:
    """Run `program` and then `tests` (asserts calling its functions) in the sandbox.

    mode="stdio" (LiveCodeBench stdin/stdout problems): the tests call `stdio(input) -> output`
    instead, see `stdio_tests`. Never raises for anything the program does; bad arguments raise
    HapoError.
    """
    return run_sandboxed(program, tests, limits=Limits(timeout=timeout, memory_mb=memory_mb), kind=kind, mode=mode)


def extract_code(completion: str) -> str:
    """The last fenced Python block of a completion (a ```python or bare ``` fence), else the whole text."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(completion or "")]
    py = [body for tag, body in blocks if tag in _PY_TAGS]
    if py:
        return py[-1]
    return completion or ""


def code_reward(completion: str, tests: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> tuple[float, float]:
    """DAPO-style reward of one completion: (1.0, 1.0) when the extracted program passes, else (-1.0, 0.0)."""
    r = execute(extract_code(completion), tests, timeout=timeout, memory_mb=memory_mb)
    return (1.0, 1.0) if r.passed else (-1.0, 0.0)


def humaneval_tests(test: str, entry_point: str) -> str:
    """HumanEval's `test` column (defines `check(candidate)`) made runnable: `check(<entry_point>)` appended."""
    if not entry_point.isidentifier():
        raise HapoError(f"HumanEval entry_point must be a Python name, got {entry_point!r}")
    return f"{test}\n\ncheck({entry_point})\n"


def mbpp_tests(test_list: Sequence[str], test_imports: Sequence[str] = ()) -> str:
    """MBPP's `test_imports` + `test_list` (one assert per item) as one test source."""
    return "\n".join([*test_imports, *test_list]) + "\n"


def stdio_tests(cases: Sequence[tuple[str, str]]) -> str:
    """Tests for mode="stdio" from (input, expected output) pairs; lines compared with surrounding blanks stripped."""
    lines = [
        "def _lines(text):",
        "    out = [line.strip() for line in text.strip().splitlines()]",
        "    return out",
    ]
    for i, (inp, out) in enumerate(cases):
        if not isinstance(inp, str) or not isinstance(out, str):
            raise HapoError(f"stdio test case {i} must be a pair of strings (input, output)")
        lines.append(f"assert _lines(stdio({inp!r})) == _lines({out!r}), 'case {i}'")
    return "\n".join(lines) + "\n"


class CodePool:
    """Runs many programs in parallel sandboxes (each one `execute`, same guarantees).

    Threads suffice here (a thread only waits on its sandbox process), so this is a plain
    ThreadPoolExecutor, not a process pool: the programs never run in this process either way.

        with CodePool(workers=2, timeout=10) as pool:
            results = pool.map(programs, tests)          # list[ExecResult], in order
            rewards = pool.rewards(completions, tests)   # list[(score, acc)]
    """

    def __init__(self, workers: int = 2, *, timeout: float = 10.0, memory_mb: int = 1024, kind: str | None = None):
        if workers < 1:
            raise HapoError(f"CodePool needs workers >= 1, got {workers}")
        if kind is not None and kind not in KINDS:
            raise HapoError(f"unknown sandbox kind {kind!r}: choose from {', '.join(KINDS)}")
        self.workers, self.timeout, self.memory_mb = workers, timeout, memory_mb
        self.kind = kind or sandbox_kind()
        self._ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hapo-code")

    def submit(self, program: str, tests: str, *, timeout: float | None = None, mode: str = "functions"):
        """A Future of the ExecResult of one program."""
        return self._ex.submit(execute, program, tests, timeout=timeout or self.timeout,
                               memory_mb=self.memory_mb, kind=self.kind, mode=mode)

    def map(self, programs: Sequence[str], tests: Sequence[str] | str, *, timeout: float | None = None,
            mode: str = "functions") -> list[ExecResult]:
        """ExecResults of `programs` (one `tests` string for all, or one per program), in order."""
        tests_list = [tests] * len(programs) if isinstance(tests, str) else list(tests)
        if len(tests_list) != len(programs):
            raise HapoError(f"got {len(programs)} programs but {len(tests_list)} test strings")
        futures = [self.submit(p, t, timeout=timeout, mode=mode) for p, t in zip(programs, tests_list)]
        return [f.result() for f in futures]

    def rewards(self, completions: Sequence[str], tests: Sequence[str] | str) -> list[tuple[float, float]]:
        """`code_reward` of each completion, in parallel."""
        results = self.map([extract_code(c) for c in completions], tests)
        return [(1.0, 1.0) if r.passed else (-1.0, 0.0) for r in results]

    def close(self) -> None:
        self._ex.shutdown(wait=True)

    def __enter__(self) -> CodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["STATUSES", "CodePool", "ExecResult", "code_reward", "execute", "extract_code", "humaneval_tests",
           "mbpp_tests", "sandbox_kind", "stdio_tests"]
