"""The built-in synthetic task: two-number addition with a verifiable answer.

A question is ``"47+38="`` and the correct completion is ``"85"`` followed by EOS. The split
between train and validation is by a hash of the operand pair, so no validation question is ever
seen in training (warm start or RL).

The warm start (`hapo_cli.data.tiny`) imitates *noisy* demonstrations, the way a base model
imitates imperfect web text: some targets drop the carry, some are off by one. The warm-started
model therefore knows the format and usually holds the right answer among its candidates, but
samples a wrong one a good share of the time: the room RL with a verifier needs.
"""

from __future__ import annotations

import random
import re

MAX_OPERAND = 99  # operands are drawn from 0..MAX_OPERAND
VAL_BUCKET = 0  # pairs whose hash bucket (of 10) equals this are validation-only
_ANSWER_RE = re.compile(r"^\s*(-?\d+)")

# Error kinds of the noisy demonstrations and their probabilities (the rest is correct).
NOISE = {"no_carry": 0.30, "off_by_one": 0.25}


def _bucket(a: int, b: int) -> int:
    return ((a * 1000 + b) * 2654435761 % 2**32) % 10


def is_validation_pair(a: int, b: int) -> bool:
    return _bucket(a, b) == VAL_BUCKET


PROMPT_TEMPLATE = "{question}"  # the exact prompt text the tiny model was warm-started on (no chat template)


def format_prompt(question: str) -> str:
    """The exact prompt text the tiny model was warm-started on (no chat template)."""
    return PROMPT_TEMPLATE.format(question=question)


def verify(completion: str, answer: str) -> bool:
    """True when the completion starts with the gold integer (anything after it is ignored)."""
    m = _ANSWER_RE.match(completion)
    return m is not None and m.group(1) == str(answer).strip()


def _pairs(split: str) -> list[tuple[int, int]]:
    if split not in ("train", "validation", "test"):
        raise ValueError(f"unknown split {split!r}: use train, validation or test")
    want_val = split != "train"
    return [
        (a, b)
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        if is_validation_pair(a, b) == want_val
    ]


def make_rows(split: str, n: int | None, seed: int = 0) -> list[dict]:
    """`n` rows (all when None) of {id, question, answer} from `split`, shuffled by `seed`.

    "validation" and "test" are the same held-out pairs (the task has no separate test set).
    """
    pairs = _pairs(split)
    rng = random.Random(seed)
    rng.shuffle(pairs)
    if n is not None:
        pairs = pairs[:n]
    return [{"id": f"{a}+{b}", "question": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]


def no_carry_sum(a: int, b: int) -> int:
    """Digit-wise sum that forgets every carry: 47+38 -> 75."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def noisy_target(a: int, b: int, rng: random.Random) -> str:
    """A demonstration answer: correct, or one of the NOISE errors."""
    u = rng.random()
    if u < NOISE["no_carry"]:
        return str(no_carry_sum(a, b))
    if u < NOISE["no_carry"] + NOISE["off_by_one"]:
        return str(max(0, a + b + rng.choice((-1, 1))))
    return str(a + b)
