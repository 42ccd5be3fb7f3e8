"""Built-in Knights-and-Knaves puzzles (the Logic-RL task): seeded, uniquely solvable, with a held-out split.

    rows = make_rows("train", 1000, seed=0, people=3, depth=2)   # [{"id", "question", "answer", ...}]
    rows = make_rows("validation", 100, seed=0, people=3, depth=2)  # never one of the train puzzles
    puzzle = make_puzzle(random.Random(0), people=3, depth=2)
    question, answer = build_prompt(puzzle)                     # answer: "A is a knight, B is a knave, ..."

Knights always tell the truth and knaves always lie; every person makes one statement about the
others (or themselves). A statement of depth 1 is "B is a knave"; deeper ones combine two
statements of lower depth with and / or / if-then / if-and-only-if, or negate one ("it is not
the case that ..."). Only puzzles with exactly one consistent assignment (checked by brute force
over all 2^people of them) are kept.

The split is by a hash of the puzzle itself (its statements), so "validation" (= "test") and
"train" never share a puzzle whatever the seeds: bucket 0 of 10 is held out. Graded by
`hapo_cli.rewards.logic.logic_reward`.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from hapo_cli.errors import HapoError
from hapo_cli.rewards.logic import logic_reward

NAMES = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # people are called by letters
OPS = ("and", "or", "if", "iff", "not")
MAX_PEOPLE = 12  # brute force checks 2^people assignments per try
VAL_BUCKETS = 10  # one puzzle hash bucket in VAL_BUCKETS is the held-out split
INSTRUCTION = (
    'Answer with one statement per person, e.g. "A is a knight, B is a knave", inside <answer></answer>.'
)

# A statement: ("is", person index, is_knight) | (op, left, right) | ("not", sub)
Statement = tuple


@dataclass(frozen=True)
class Puzzle:
    names: tuple[str, ...]
    statements: tuple[Statement, ...]  # statements[i] is what names[i] says
    solution: tuple[bool, ...]  # True = knight

    @property
    def key(self) -> str:
        return hashlib.sha256(repr((self.names, self.statements)).encode()).hexdigest()


def evaluate(stmt: Statement, roles: tuple[bool, ...]) -> bool:
    op = stmt[0]
    if op == "is":
        return roles[stmt[1]] == stmt[2]
    if op == "not":
        return not evaluate(stmt[1], roles)
    a, b = evaluate(stmt[1], roles), evaluate(stmt[2], roles)
    if op == "and":
        return a and b
    if op == "or":
        return a or b
    if op == "if":
        return (not a) or b
    if op == "iff":
        return a == b
    raise ValueError(f"unknown operator {op!r}")


def solve(statements: tuple[Statement, ...]) -> list[tuple[bool, ...]]:
    """Every assignment in which knights' statements are true and knaves' false (brute force)."""
    n = len(statements)
    return [roles for roles in itertools.product((True, False), repeat=n)
            if all(evaluate(s, roles) == roles[i] for i, s in enumerate(statements))]


def _constant(stmt: Statement, n: int) -> bool:
    values = {evaluate(stmt, roles) for roles in itertools.product((True, False), repeat=n)}
    return len(values) == 1


def depth_of(stmt: Statement) -> int:
    if stmt[0] == "is":
        return 1
    return 1 + max(depth_of(s) for s in stmt[1:])


def _random_statement(rng: random.Random, n: int, depth: int, speaker: int) -> Statement:
    if depth <= 1:
        who = rng.randrange(n)
        if who == speaker and n > 1 and rng.random() < 0.7:  # mostly about others
            who = rng.choice([i for i in range(n) if i != speaker])
        return ("is", who, rng.random() < 0.5)
    op = rng.choice(OPS)
    if op == "not":
        return ("not", _random_statement(rng, n, depth - 1, speaker))
    left = _random_statement(rng, n, depth - 1, speaker)
    right = left
    while right == left:  # "B is a knave or B is a knave" says nothing new
        right = _random_statement(rng, n, rng.randint(1, depth - 1), speaker)
    if rng.random() < 0.5:
        left, right = right, left
    return (op, left, right)


def make_puzzle(rng: random.Random, people: int = 3, depth: int = 2, max_tries: int = 10000) -> Puzzle:
    """A random puzzle with a unique solution; each statement has depth between 1 and `depth`."""
    _check(people, depth)
    names = NAMES[:people]
    for _ in range(max_tries):
        stmts = tuple(_random_statement(rng, people, rng.randint(1, depth), i) for i in range(people))
        if any(_constant(s, people) for s in stmts):  # tautologies and contradictions are not statements
            continue
        sols = solve(stmts)
        if len(sols) == 1:
            return Puzzle(names, stmts, sols[0])
    raise HapoError(f"no uniquely solvable puzzle with people={people}, depth={depth} in {max_tries} tries")


def _check(people: int, depth: int) -> None:
    if not 2 <= people <= MAX_PEOPLE:
        raise HapoError(f"knights-and-knaves people must be 2..{MAX_PEOPLE}, got {people}")
    if not 2 <= depth <= 5:  # with "X is a knight/knave" statements only, flipping everyone is also a solution
        raise HapoError(f"knights-and-knaves depth must be 2..5 (depth 1 puzzles never have a unique solution), got {depth}")


def render(stmt: Statement, names: tuple[str, ...], top: bool = True) -> str:
    op = stmt[0]
    if op == "is":
        return f"{names[stmt[1]]} is a {'knight' if stmt[2] else 'knave'}"
    if op == "not":
        return f"it is not the case that {render(stmt[1], names, False)}"
    a, b = render(stmt[1], names, False), render(stmt[2], names, False)
    text = {"and": f"{a} and {b}", "or": f"{a} or {b}", "if": f"if {a} then {b}",
            "iff": f"{a} if and only if {b}"}[op]
    return text if top else f"({text})"


def answer_text(names: tuple[str, ...], roles: tuple[bool, ...]) -> str:
    return ", ".join(f"{n} is a {'knight' if r else 'knave'}" for n, r in zip(names, roles))


def build_prompt(puzzle: Puzzle, instruction: str = INSTRUCTION) -> tuple[str, str]:
    """(question, gold answer) for a puzzle; the gold is "A is a knight, B is a knave, ..."."""
    names = puzzle.names
    who = ", ".join(names[:-1]) + f" and {names[-1]}"
    lines = [
        "On an island every inhabitant is either a knight, who always tells the truth, or a knave, who always lies.",
        f"You meet {len(names)} inhabitants: {who}.",
    ]
    lines += [f'{n} says: "{_capital(render(s, names))}."' for n, s in zip(names, puzzle.statements)]
    lines.append("Who is a knight and who is a knave?")
    if instruction:
        lines.append(instruction)
    return "\n".join(lines), answer_text(names, puzzle.solution)


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def is_validation(puzzle: Puzzle) -> bool:
    return int(puzzle.key[:8], 16) % VAL_BUCKETS == 0


def make_rows(split: str, n: int, seed: int = 0, *, people: int = 3, depth: int = 2) -> list[dict]:
    """`n` distinct puzzles of `split` ("train", or "validation" = "test": the held-out hash bucket).

    Deterministic in (split, n, seed, people, depth); rows are {"id", "question", "answer", "people",
    "depth"}. Train and validation never share a puzzle.
    """
    if split not in ("train", "validation", "test"):
        raise HapoError(f"unknown split {split!r}: use train, validation or test")
    if n < 1:
        raise HapoError(f"number of puzzles must be >= 1, got {n}")
    _check(people, depth)
    want_val = split != "train"
    rng = random.Random(f"kk|{seed}|{people}|{depth}|{'val' if want_val else 'train'}")
    rows, seen = [], set()
    budget = 200 * n + 1000
    while len(rows) < n:
        budget -= 1
        if budget < 0:
            raise HapoError(f"only {len(rows)} distinct {split} puzzles found for people={people}, depth={depth}; "
                            "ask for fewer or raise people/depth")
        p = make_puzzle(rng, people, depth)
        if is_validation(p) != want_val or p.key in seen:
            continue
        seen.add(p.key)
        q, a = build_prompt(p)
        rows.append({"id": f"kk-{people}p-d{depth}-{p.key[:12]}", "question": q, "answer": a,
                     "people": people, "depth": depth})
    return rows


def verify(completion: str, answer: str) -> bool:
    """True when the completion's answer is exactly the gold assignment."""
    return logic_reward(completion, answer)[1] == 1.0


__all__ = ["Puzzle", "build_prompt", "evaluate", "make_puzzle", "make_rows", "render", "solve", "verify"]
