"""Code: write a Python program, graded by running the row's tests in the sandbox (`rewards.code`).

The model's program never runs in this process: every completion goes to a `CodePool` (threads
that each wait on one bubblewrap / rlimit sandbox, see `hapo_cli.rewards.sandbox`), and only the
judge's authenticated verdict counts. `run_info()` names the sandbox kind; the evaluator's
summary and the training run's meta.json record it.

Row layouts (found by their columns; the registry's `BenchSpec.extra` names them):

| layout        | question (the benchmark's usual prompt)                    | tests                              |
|---------------|------------------------------------------------------------|------------------------------------|
| humaneval     | `prompt` as is (the model continues the function)          | `test` + `check(entry_point)`      |
| mbpp          | `prompt` + "Your code should pass these tests:" + asserts  | `test_imports` + `test_list`       |
| livecodebench | LiveCodeBench's "### Question / ### Format / ### Answer"   | public (+ private) cases, stdin/stdout or `Solution().f(...)` |
| plain         | the question column (`data.question_key`)                  | the tests column (`data.answer_key`), asserts |

The gold "answer" of a row is its tests source, or, when the row needs more than that, a JSON
object {"tests", "mode" (functions | stdio), "prefix" (code put before the completion:
HumanEval's prompt)}. The program is the completion's last ```python block (after the
prefix's imports; after the whole prefix when the block is an indented body), else the prefix +
the raw completion cut at the first top-level statement after the function (HumanEval's stop
sequences), else the whole completion.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from hapo_cli.errors import HapoError
from hapo_cli.rewards.code import (
    CodePool,
    extract_code,
    humaneval_tests,
    mbpp_tests,
    sandbox_kind,
    stdio_tests,
)
from hapo_cli.rewards.verify import GradeResult
from hapo_cli.tasks.base import PromptFormat, Task

LAYOUTS = ("humaneval", "mbpp", "livecodebench", "plain")
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")  # HumanEval's (Codex paper, bigcode)
MBPP_TEMPLATE = ("You are an expert Python programmer, and here is your task: {prompt} Your code should pass "
                 "these tests:\n\n{tests}\n\nWrite the function in a ```python code block.")
LCB_HEAD = ("You will be given a question (problem specification) and will generate a correct Python program "
            "that matches the specification and passes all tests.\n\n### Question:\n{question}\n\n")
LCB_STDIN = ("### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
             "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
             "when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT."
             "\n```python\n# YOUR CODE HERE\n```\n\n### Answer: (use the provided format with backticks)\n\n")
LCB_STARTER = ("### Format: You will use the following starter code to write the solution to the problem and "
               "enclose your code within delimiters.\n```python\n{starter}\n```\n\n"
               "### Answer: (use the provided format with backticks)\n\n")
PLAIN_INSTRUCTION = "\n\nWrite the solution in Python, in a ```python code block."


@dataclass(frozen=True)
class CodeCase:
    """What grading one row needs: the tests source, how they call the program, code put before it."""

    tests: str
    mode: str = "functions"  # functions (tests call the program's functions) | stdio (tests call stdio(input))
    prefix: str = ""  # prepended to the completion (HumanEval: the prompt with the signature)

    def gold(self) -> str:
        """The row's "answer": the tests alone when that is all it needs, else a JSON object."""
        if self.mode == "functions" and not self.prefix:
            return self.tests
        return json.dumps({"tests": self.tests, "mode": self.mode, "prefix": self.prefix})

    @classmethod
    def parse(cls, gold: str) -> CodeCase:
        text = gold or ""
        if text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("tests"), str):
                mode = obj.get("mode", "functions")
                if mode not in ("functions", "stdio"):
                    raise HapoError(f"code gold has mode {mode!r}: use functions or stdio")
                return cls(obj["tests"], mode, str(obj.get("prefix") or ""))
        if not text.strip():
            raise HapoError("a code row has empty tests: every row needs its tests (asserts) in the answer column")
        return cls(text)


def program_of(completion: str, prefix: str = "") -> str:
    """The program a completion stands for (see the module docstring)."""
    text = completion or ""
    if "```" in text:
        body = extract_code(text)
        if not prefix:
            return body
        if body.lstrip("\n")[:1] in (" ", "\t"):  # a fenced function body: it continues the prefix
            return prefix + body.lstrip("\n")
        imports = [ln for ln in prefix.splitlines() if ln.startswith(("import ", "from "))]
        return "\n".join([*imports, body]) if imports else body  # a whole function: keep the prompt's imports
    if prefix:
        cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
        return prefix + text[:cut]
    return text


# ---------------------------------------------------------------- rows of each layout


def detect_layout(columns: set[str]) -> str:
    if {"test", "entry_point"} <= columns:
        return "humaneval"
    if "test_list" in columns:
        return "mbpp"
    if "public_test_cases" in columns:
        return "livecodebench"
    return "plain"


def _cell_list(value) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value] if value.strip() else []
    return list(value or [])


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # plain data only: a pickle that names any class or function is refused
        raise HapoError(f"LiveCodeBench private tests hold a pickled {module}.{name}: refusing to load it")


def _lcb_cases(cell) -> list[dict]:
    """LiveCodeBench test cases: a JSON list, or the lite set's base64(zlib(pickle(JSON))) private cases."""
    if cell is None or cell == "":
        return []
    if isinstance(cell, list):
        return cell
    try:
        return json.loads(cell)
    except ValueError:
        pass
    try:
        raw = _NoGlobals(io.BytesIO(zlib.decompress(base64.b64decode(cell)))).load()
    except HapoError:
        raise
    except Exception as err:
        raise HapoError(f"cannot read LiveCodeBench test cases ({type(err).__name__}): the cell is neither JSON "
                        "nor the lite set's compressed form") from err
    return json.loads(raw) if isinstance(raw, (str, bytes)) else list(raw)


def _lcb_functional_tests(cases: list[dict], func: str) -> str:
    if not func.isidentifier():
        raise HapoError(f"LiveCodeBench functional problem has no usable func_name ({func!r})")
    lines = []
    for i, c in enumerate(cases):
        args = [json.loads(line) for line in str(c["input"]).split("\n") if line.strip()]
        want = json.loads(str(c["output"]))
        lines.append(f"assert Solution().{func}(*{args!r}) == {want!r}, 'case {i}'")
    return "\n".join(lines) + "\n"


def code_row(raw: dict, layout: str, *, idx: int, question_key: str = "question", answer_key: str = "answer",
             private_tests: bool = True) -> dict:
    """One table row -> {"id", "question", "answer"} for `layout` (see the module docstring)."""
    rid = str(next((raw[k] for k in ("task_id", "question_id", "id") if raw.get(k) is not None), f"code-{idx}"))
    if layout == "humaneval":
        prompt = str(raw["prompt"])
        case = CodeCase(humaneval_tests(str(raw["test"]), str(raw["entry_point"])), prefix=prompt)
        return {"id": rid, "question": prompt, "answer": case.gold()}
    if layout == "mbpp":
        tests = [str(t) for t in _cell_list(raw["test_list"])]
        prompt = str(raw.get("prompt") or raw.get("text") or raw.get("question") or "")
        question = MBPP_TEMPLATE.format(prompt=prompt.strip(), tests="\n".join(tests))
        return {"id": rid, "question": question,
                "answer": CodeCase(mbpp_tests(tests, [str(t) for t in _cell_list(raw.get("test_imports"))])).gold()}
    if layout == "livecodebench":
        cases = _lcb_cases(raw.get("public_test_cases")) + (_lcb_cases(raw.get("private_test_cases")) if private_tests else [])
        if not cases:
            raise HapoError(f"LiveCodeBench problem {rid} has no test cases")
        starter = str(raw.get("starter_code") or "")
        question = LCB_HEAD.format(question=str(raw.get("question_content") or raw.get("question") or "").strip())
        question += LCB_STARTER.format(starter=starter) if starter.strip() else LCB_STDIN
        if all(c.get("testtype", "stdin") == "stdin" for c in cases):
            case = CodeCase(stdio_tests([(str(c["input"]), str(c["output"])) for c in cases]), mode="stdio")
        else:
            meta = raw.get("metadata") or {}
            meta = json.loads(meta) if isinstance(meta, str) else meta
            case = CodeCase(_lcb_functional_tests(cases, str(meta.get("func_name", ""))))
        return {"id": rid, "question": question, "answer": case.gold()}
    q, a = raw.get(question_key), raw.get(answer_key)
    if q is None or a is None:
        raise HapoError(f"code row {idx} has no {question_key!r} or {answer_key!r} column; its columns are "
                        f"{', '.join(sorted(raw))} (set data.question_key / data.answer_key)")
    tests = "\n".join(map(str, a)) + "\n" if isinstance(a, (list, tuple)) else str(a)
    return {"id": rid, "question": str(q) + PLAIN_INSTRUCTION, "answer": CodeCase.parse(tests).gold()}


def code_rows(table: list[dict], layout: str | None = None, **kwargs) -> list[dict]:
    """Rows of a whole table (layout found from its columns unless given); ids made unique."""
    if not table:
        return []
    layout = layout or detect_layout(set().union(*(r.keys() for r in table[:50])))
    if layout not in LAYOUTS:
        raise HapoError(f"unknown code layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    rows, seen = [], set()
    for i, raw in enumerate(table):
        row = code_row(raw, layout, idx=i, **kwargs)
        if row["id"] in seen:
            row["id"] = f"{row['id']}#{i}"
        seen.add(row["id"])
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the task


class CodeTask(Task):
    """Rows with tests; grading runs each program in a sandbox through a CodePool.

    `grade(..., pool)` uses `pool` when it is a CodePool (the caller owns it) and otherwise (None, or
    a maths GradingPool from a mixed `hapo eval`) a CodePool of its own for that call, closed after it.
    """

    name = "code"
    grader = "code"
    style = "raw"

    def __init__(self, prompt: PromptFormat | None = None, *, rows: list[dict] | None = None,
                 val_rows: list[dict] | None = None, source: str = "", workers: int = 2,
                 timeout: float = 10.0, memory_mb: int = 1024):
        super().__init__(prompt or PromptFormat(chat_template="auto"), source)
        self._rows, self._val = rows, val_rows or []
        self.workers, self.timeout, self.memory_mb = workers, timeout, memory_mb

    def train_rows(self) -> list[dict]:
        if self._rows is None:
            raise HapoError("this code task has no training rows: set data.path to a table with prompt and tests columns")
        return self._rows

    def val_rows(self) -> list[dict]:
        return self._val

    def grade(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[GradeResult]:
        cases = [CodeCase.parse(g) for g in golds]
        programs = [program_of(c, case.prefix) for c, case in zip(completions, cases)]
        own = not isinstance(pool, CodePool)
        cp = CodePool(self.workers, timeout=self.timeout, memory_mb=self.memory_mb) if own else pool
        try:
            futures = [cp.submit(p, case.tests, mode=case.mode) for p, case in zip(programs, cases)]
            results = [f.result() for f in futures]
        finally:
            if own:
                cp.close()
        out = []
        for prog, r in zip(programs, results):
            key = hashlib.sha1(prog.strip().encode()).hexdigest()[:16] if prog.strip() else ""  # maj@k: the most written program
            pred = r.status + (f": {r.detail[:200]}" if r.detail else "")
            out.append(GradeResult(r.passed, pred, key, r.status))
        return out

    def run_info(self) -> dict:
        return {"sandbox": sandbox_kind()}
