"""The Task: what a training or evaluation job asks and how it checks the answers.

A Task owns, for one kind of problem (synthetic addition, maths, ...):
  * its rows: training rows and held-out validation rows, `{"id", "question", "answer"}`;
  * THE prompt: `prompt_ids(tokenizer, question)` (training, validation and eval all call it);
  * its verifier: `rewards(completions, golds)` -> [(score, acc)] for training, and
    `grade(completions, golds)` -> [GradeResult] (the same extraction) for validation and eval.
Tasks are registered by name in `hapo_cli.tasks.TASKS` (`data.task=<name>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hapo_cli.rewards.verify import GradeResult
from hapo_cli.tasks.prompts import encode_prompt, prompt_text, uses_chat_template


@dataclass
class PromptFormat:
    """How a question becomes prompt token ids."""

    template: str = "{question}"  # str.format template with {question} (used when style is None)
    style: str | None = None  # a named instruction style (tasks/prompts.py: boxed, answer, raw) instead
    chat_template: str = "auto"  # auto | on | off (auto: the tokenizer's template when it has one)
    max_length: int | None = None  # left-truncate longer prompts (None: never)

    def text(self, question: str) -> str:
        if self.style is not None:
            return prompt_text(question, self.style)
        return self.template.format(question=question)

    def ids(self, tokenizer, question: str) -> list[int]:
        chat = uses_chat_template(tokenizer, self.chat_template)
        return encode_prompt(tokenizer, self.text(question), chat=chat, max_length=self.max_length)


class Task:
    """Base class: subclasses set `name`, `grader` and implement the row and verifier methods."""

    name = "task"
    grader = "task"  # the verifier's name, recorded in eval configs and summaries
    needs_pool = False  # grading runs in the grading process pool (`pool` argument)

    def __init__(self, prompt: PromptFormat, source: str = ""):
        self.prompt = prompt
        self.source = source
        self.data_stats: dict = {}  # e.g. {"rows_read", "duplicates_dropped", "rows"} of a table (run metadata)

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        return self.prompt.ids(tokenizer, question)

    def train_rows(self) -> list[dict]:
        raise NotImplementedError

    def val_rows(self) -> list[dict]:
        return []

    def grade(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[GradeResult]:
        raise NotImplementedError

    def reward_of(self, result: GradeResult) -> tuple[float, float]:
        """(score, acc) of one graded completion: +1 / -1 and 1 / 0."""
        return (1.0, 1.0) if result.correct else (-1.0, 0.0)

    def rewards(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[tuple[float, float]]:
        """(score, acc) per completion, from `grade`."""
        return [self.reward_of(g) for g in self.grade(completions, golds, pool)]

    def describe(self) -> dict[str, Any]:
        """Settings that decide the results (an eval's resume check compares them)."""
        return {"prompt_style": getattr(self, "style", "raw"), "chat_template": self.prompt.chat_template,
                "grader": self.grader}
