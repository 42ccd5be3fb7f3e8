"""Maths: questions from a table (DAPO-Math-17k, any local file) or a benchmark, graded through
answer extraction and math-verify (hapo_cli.rewards) in the grading process pool.

Answer styles (`style`): `answer` (DAPO's "Answer:" line; a `\\boxed{}` only with accept_boxed),
`boxed` (box first, then an "Answer:" line), `raw` (box, "Answer:" line, else the last line).
"""

from __future__ import annotations

from collections.abc import Sequence

from hapo_cli.rewards.pool import grade_many
from hapo_cli.rewards.verify import GradeResult
from hapo_cli.tasks.base import PromptFormat, Task
from hapo_cli.tasks.prompts import GRADING_PREFER


class MathTask(Task):
    name = "math"
    grader = "math"
    needs_pool = True

    def __init__(self, prompt: PromptFormat, *, style: str = "answer", accept_boxed: bool = False,
                 rows: list[dict] | None = None, val_rows: list[dict] | None = None, source: str = ""):
        super().__init__(prompt, source)
        self.style = style
        self.accept_boxed = accept_boxed
        self._rows, self._val = rows, val_rows or []

    @property
    def prefer(self) -> str:
        """The extraction rule handed to the grader (hapo_cli.rewards.extract)."""
        if self.style == "answer":
            return "answer" if self.accept_boxed else "answer_only"
        return GRADING_PREFER.get(self.style, "boxed")

    def train_rows(self) -> list[dict]:
        if self._rows is None:
            raise ValueError("this task has no training rows")
        return self._rows

    def val_rows(self) -> list[dict]:
        return self._val

    def grade(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[GradeResult]:
        return grade_many(list(completions), list(golds), prefer=self.prefer, pool=pool)
