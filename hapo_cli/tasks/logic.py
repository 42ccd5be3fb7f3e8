"""Logic: Knights-and-Knaves puzzles (the Logic-RL task), graded exactly by `rewards.logic`.

Rows are the built-in generated puzzles (`hapo_cli.data.knights.make_rows`: the train split for
training, the held-out hash bucket for validation) or any table with a puzzle and a gold
sentence ("A is a knight, B is a knave" or the public set's "Zoey is a knave, and Oliver is a
knight."), such as the K-and-K/knights-and-knaves benchmarks (`kk-2ppl` ... `kk-8ppl`).

The model is asked for one statement per person inside `<answer></answer>` (an "Answer:" line
also counts); an answer naming someone twice, leaving someone out or saying "is not" is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from hapo_cli.data import knights
from hapo_cli.rewards.logic import answer_section, gold_assignment, parse_assignment
from hapo_cli.rewards.verify import GradeResult
from hapo_cli.tasks.base import PromptFormat, Task

INSTRUCTION = knights.INSTRUCTION  # the built-in questions end with it; other questions get it appended
DEFAULT_TRAIN_PUZZLES = 1000  # built-in training puzzles when data.max_train_rows is null


def canonical(assignment: dict[str, bool]) -> str:
    """'A is a knight, B is a knave' in the gold's order: the majority-vote key of an answer."""
    return ", ".join(f"{n} is a {'knight' if k else 'knave'}" for n, k in assignment.items())


class LogicTask(Task):
    name = "logic"
    grader = "logic"
    style = "raw"

    def __init__(self, prompt: PromptFormat | None = None, *, rows: list[dict] | None = None,
                 val_rows: list[dict] | None = None, people: int = 3, depth: int = 2,
                 n_train: int | None = None, val_size: int = 100, seed: int = 0, source: str = "built in",
                 add_instruction: bool = True):
        super().__init__(prompt or PromptFormat(chat_template="auto"), source)
        self.add_instruction = add_instruction  # append INSTRUCTION to a question that does not ask for <answer>
        self._rows, self._val = rows, val_rows
        self.people, self.depth, self.seed = people, depth, seed
        self.n_train, self.val_size = n_train or DEFAULT_TRAIN_PUZZLES, val_size

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        if self.add_instruction and "<answer>" not in question:
            question = f"{question.rstrip()}\n{INSTRUCTION}"
        return self.prompt.ids(tokenizer, question)

    def train_rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = knights.make_rows("train", self.n_train, seed=self.seed, people=self.people, depth=self.depth)
        return self._rows

    def val_rows(self) -> list[dict]:
        if self._val is None:  # the held-out bucket never holds a training puzzle, whatever the seeds
            self._val = knights.make_rows("validation", self.val_size, seed=0, people=self.people, depth=self.depth)
        return self._val

    def grade(self, completions: Sequence[str], golds: Sequence[str], pool=None) -> list[GradeResult]:
        out = []
        for text, gold in zip(completions, golds):
            want = gold_assignment(gold)
            section = answer_section(text or "")
            got = parse_assignment(section, list(want))
            if got is None:
                out.append(GradeResult(False, None, "", "no_answer"))
                continue
            pred = canonical({n: got[n] for n in want})
            out.append(GradeResult(got == want, section.strip()[:200], pred, "exact" if got == want else "mismatch"))
        return out
