"""The built-in task: two-number addition (hapo_cli.data.synthetic), verified exactly."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hapo_cli.data import synthetic
from hapo_cli.rewards.verify import GradeResult
from hapo_cli.tasks.base import PromptFormat, Task

_ANSWER = re.compile(r"^\s*(-?\d+)")


class SyntheticTask(Task):
    name = "synthetic"
    grader = "synthetic"
    style = "raw"

    def __init__(self, rows: list[dict] | None = None, val_rows: list[dict] | None = None, *,
                 max_train_rows: int | None = None, val_size: int = 256, seed: int = 0,
                 max_prompt_length: int | None = None, source: str = "built in"):
        # the tiny model is warm-started on exactly this plain encoding (no chat template)
        super().__init__(PromptFormat(template=synthetic.PROMPT_TEMPLATE, chat_template="off",
                                      max_length=max_prompt_length), source)
        self._rows, self._val = rows, val_rows
        self.max_train_rows, self.val_size, self.seed = max_train_rows, val_size, seed

    def train_rows(self) -> list[dict]:
        return self._rows if self._rows is not None else synthetic.make_rows("train", self.max_train_rows, seed=self.seed)

    def val_rows(self) -> list[dict]:
        return self._val if self._val is not None else synthetic.make_rows("validation", self.val_size, seed=0)

    def grade(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[GradeResult]:
        out = []
        for t, g in zip(completions, golds):
            m = _ANSWER.match(t or "")
            pred = m.group(1) if m else None
            out.append(GradeResult(bool(synthetic.verify(t or "", g)), pred, pred or "", "verifier"))
        return out
