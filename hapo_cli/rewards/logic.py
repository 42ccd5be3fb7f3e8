"""Knights-and-Knaves answers: parse "A is a knight, B is a knave, ..." and check it exactly.

    parse_assignment(text, names) -> {"A": True, "B": False} | None    # True = knight
    logic_reward(completion, gold) -> (score, acc)                    # (1.0, 1.0) or (-1.0, 0.0)

The gold answer is a sentence naming every person once ("A is a knight, B is a knave" or the
public set's "Zoey is a knave, and Oliver is a knight."); the people are read from it. The
completion's answer section is used when there is one (the last `<answer>...</answer>`, else the
text after the last "### Answer:" / "Answer:" line, else the whole text). Inside it, statements
"X is a knight", "X: knave", "X and Y are knights" are found in any order and casing. The answer
is rejected (None, reward -1) when a person is missing, when one is called both, or when it says
"X is not a knight" (negations are not guessed at).
"""

from __future__ import annotations

import re

from hapo_cli.errors import HapoError

_ROLE = r"(knights?|knaves?)"
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_HEAD_RE = re.compile(r"(?:^|\n)\s*(?:#+\s*)?(?:final\s+)?answer\s*[:：]", re.IGNORECASE)
_GOLD_RE = re.compile(r"\b([A-Za-z][\w'-]*)\s+is\s+an?\s+" + _ROLE + r"\b", re.IGNORECASE)


def answer_section(text: str) -> str:
    """The part of a completion that holds the final answer (see the module docstring)."""
    tags = _ANSWER_TAG_RE.findall(text or "")
    if tags:
        return tags[-1]
    heads = list(_ANSWER_HEAD_RE.finditer(text or ""))
    if heads:
        return text[heads[-1].end():]
    return text or ""


def gold_assignment(gold: str) -> dict[str, bool]:
    """The people and roles of a gold answer; a malformed gold string is a HapoError."""
    found: dict[str, bool] = {}
    for name, role in _GOLD_RE.findall(gold or ""):
        knight = role.lower().startswith("knight")
        if found.get(name, knight) != knight:
            raise HapoError(f"gold answer calls {name} both a knight and a knave: {gold!r}")
        found[name] = knight
    if not found:
        raise HapoError(f"gold answer names nobody (expected 'A is a knight, B is a knave'): {gold!r}")
    return found


def parse_assignment(text: str, names: list[str] | tuple[str, ...]) -> dict[str, bool] | None:
    """Each of `names` -> True (knight) / False (knave) from `text`; None when incomplete or contradictory."""
    if not names:
        raise HapoError("parse_assignment needs the names of the people in the puzzle")
    alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    person = rf"(?<![\w'-])(?:{alt})(?![\w'-])"
    lower = {n.lower(): n for n in names}
    if re.search(rf"{person}\s+(?:is\s+not|isn't|is\s+no)\b", text, re.IGNORECASE):
        return None
    seen: dict[str, set[bool]] = {n: set() for n in names}
    group = rf"({person}(?:\s*,\s*{person})*(?:\s*,?\s*and\s+{person}))\s+are\s+(?:both\s+|all\s+)?{_ROLE}\b"
    for m in re.finditer(group, text, re.IGNORECASE):
        knight = m.group(2).lower().startswith("knight")
        for who in re.findall(person, m.group(1), re.IGNORECASE):
            seen[lower[who.lower()]].add(knight)
    single = rf"({person})\s*(?:is\s+(?:an?\s+)?|:\s*(?:an?\s+)?|=\s*|-\s*|\u2013\s*|\u2014\s*|\(\s*){_ROLE}\b"
    for m in re.finditer(single, text, re.IGNORECASE):
        seen[lower[m.group(1).lower()]].add(m.group(2).lower().startswith("knight"))
    if any(len(v) != 1 for v in seen.values()):
        return None
    return {n: next(iter(v)) for n, v in seen.items()}


def logic_reward(completion: str, gold: str) -> tuple[float, float]:
    """(1.0, 1.0) when the completion's answer assigns every person exactly as the gold does, else (-1.0, 0.0)."""
    want = gold_assignment(gold)
    got = parse_assignment(answer_section(completion), list(want))
    return (1.0, 1.0) if got == want else (-1.0, 0.0)


def verify(completion: str, gold: str) -> bool:
    """True when the completion's answer is exactly right."""
    return logic_reward(completion, gold)[1] == 1.0


__all__ = ["answer_section", "gold_assignment", "logic_reward", "parse_assignment", "verify"]
