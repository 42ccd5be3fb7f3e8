"""Knights-and-Knaves: the generator (unique solutions, seeded, disjoint splits) and the exact verifier."""

from __future__ import annotations

import itertools
import random

import pytest

from hapo_cli.data import knights
from hapo_cli.errors import HapoError
from hapo_cli.rewards.logic import answer_section, gold_assignment, logic_reward, parse_assignment

GOLD = "A is a knight, B is a knave, C is a knight"


# ---- generator


@pytest.mark.parametrize("people,depth", [(2, 2), (3, 2), (4, 3), (6, 4)])
def test_every_puzzle_has_exactly_its_stated_solution(people, depth):
    rng = random.Random(7)
    for _ in range(20):
        p = knights.make_puzzle(rng, people, depth)
        assert len(p.names) == people and len(p.statements) == people
        assert all(1 <= knights.depth_of(s) <= depth for s in p.statements)
        # independent brute force: every assignment checked here, not through solve()
        consistent = [roles for roles in itertools.product((True, False), repeat=people)
                      if all(knights.evaluate(s, roles) == roles[i] for i, s in enumerate(p.statements))]
        assert consistent == [p.solution]


def test_evaluate_by_hand():
    roles = (True, False)  # A knight, B knave
    assert knights.evaluate(("is", 1, False), roles) is True
    assert knights.evaluate(("and", ("is", 0, True), ("is", 1, True)), roles) is False
    assert knights.evaluate(("or", ("is", 0, True), ("is", 1, True)), roles) is True
    assert knights.evaluate(("if", ("is", 1, True), ("is", 0, False)), roles) is True  # false premise
    assert knights.evaluate(("iff", ("is", 0, True), ("is", 1, False)), roles) is True
    assert knights.evaluate(("not", ("is", 0, True)), roles) is False


def test_a_classic_puzzle_solves_by_hand():
    # A: "B is a knave"; B: "A is a knave and B is a knave"  -> A knight, B knave (by hand: B cannot be a knight)
    stmts = (("is", 1, False), ("and", ("is", 0, False), ("is", 1, False)))
    assert knights.solve(stmts) == [(True, False)]


def test_rendering_and_gold_answer():
    p = knights.Puzzle(("A", "B"), (("is", 1, False), ("if", ("is", 0, True), ("is", 1, True))), (True, False))
    q, a = knights.build_prompt(p)
    assert 'A says: "B is a knave."' in q
    assert 'B says: "If A is a knight then B is a knight."' in q
    assert a == "A is a knight, B is a knave"
    assert logic_reward(f"<answer>{a}</answer>", a) == (1.0, 1.0)


def test_make_rows_is_deterministic_and_splits_are_disjoint():
    a = knights.make_rows("train", 300, seed=3, people=3, depth=2)
    b = knights.make_rows("train", 300, seed=3, people=3, depth=2)
    assert a == b
    assert len({r["id"] for r in a}) == 300
    val = knights.make_rows("validation", 100, seed=3, people=3, depth=2)
    val_other_seed = knights.make_rows("validation", 100, seed=4, people=3, depth=2)
    train_other_seed = knights.make_rows("train", 300, seed=99, people=3, depth=2)
    train_q = {r["question"] for r in a + train_other_seed}
    assert not train_q & {r["question"] for r in val + val_other_seed}
    assert knights.make_rows("test", 100, seed=3, people=3, depth=2) == val
    assert knights.make_rows("train", 300, seed=4, people=3, depth=2) != a
    for r in a[:50] + val[:50]:
        assert set(r) >= {"id", "question", "answer"}
        assert logic_reward(f"### Answer: {r['answer']}", r["answer"]) == (1.0, 1.0)


def test_people_and_depth_are_configurable():
    rows = knights.make_rows("train", 5, seed=0, people=5, depth=3)
    assert all(r["question"].count(" says: ") == 5 for r in rows)
    assert all(r["answer"].count(" is a ") == 5 for r in rows)


@pytest.mark.parametrize("kwargs,msg", [
    ({"people": 1}, "people must be"), ({"depth": 1}, "depth must be"), ({"depth": 9}, "depth must be"),
])
def test_bad_generator_arguments_are_one_clear_error(kwargs, msg):
    with pytest.raises(HapoError, match=msg):
        knights.make_rows("train", 3, **kwargs)
    with pytest.raises(HapoError, match="unknown split"):
        knights.make_rows("dev", 3)


# ---- verifier


@pytest.mark.parametrize("completion", [
    "A is a knight, B is a knave, C is a knight",
    "C is a knight, A is a knight, B is a knave.",
    "a is a KNIGHT; b is a Knave; c is a knight",
    "<think>maybe B is a knight?</think>\n<answer>(1) A is a knight\n(2) B is a knave\n(3) C is a knight</answer>",
    "Reasoning: if A were a knave ... \n### Answer: A and C are knights, B is a knave",
    "Answer:\nA: knight\nB: knave\nC: knight",
])
def test_correct_answers_in_any_order_casing_and_section(completion):
    assert logic_reward(completion, GOLD) == (1.0, 1.0)


@pytest.mark.parametrize("completion,why", [
    ("A is a knight, B is a knight, C is a knight", "wrong"),
    ("A is a knight, B is a knave", "incomplete"),
    ("A is a knight, B is a knave, C is a knight, B is a knight", "contradictory"),
    ("A is a knight, B is not a knight, C is a knight", "negation"),
    ("<answer></answer> A is a knight, B is a knave, C is a knight", "empty answer section"),
    ("", "empty"),
    ("knight knave knight", "no names"),
])
def test_wrong_incomplete_or_contradictory_answers_score_minus_one(completion, why):
    assert logic_reward(completion, GOLD) == (-1.0, 0.0), why


def test_public_set_style_gold_with_names():
    gold = "Zoey is a knave, and Oliver is a knight."
    assert gold_assignment(gold) == {"Zoey": False, "Oliver": True}
    assert logic_reward("<answer>oliver is a knight, zoey is a knave</answer>", gold) == (1.0, 1.0)
    assert logic_reward("<answer>Oliver is a knight</answer>", gold) == (-1.0, 0.0)
    # a name inside another word is not that person
    assert parse_assignment("Zoeyland is a knight, Oliver is a knight", ["Zoey", "Oliver"]) is None


def test_answer_section_takes_the_last_tag():
    assert answer_section("<answer>x</answer> then <answer>y</answer>") == "y"
    assert answer_section("no section") == "no section"


def test_bad_gold_is_one_clear_error():
    with pytest.raises(HapoError, match="names nobody"):
        logic_reward("A is a knight", "knight")
    with pytest.raises(HapoError, match="both a knight and a knave"):
        gold_assignment("A is a knight, A is a knave")
