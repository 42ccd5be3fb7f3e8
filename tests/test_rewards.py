"""The DAPO reward used by the trainer: (+1, 1) / (-1, 0), strict Answer: line, batch via the pool."""

from __future__ import annotations

from hapo_cli.rewards import GradingPool, dapo_reward, dapo_rewards


def test_dapo_reward_scores_and_accuracy():
    assert dapo_reward("Let me think.\nAnswer: 42", "42") == (1.0, 1.0)
    assert dapo_reward("Answer: 41", "42") == (-1.0, 0.0)
    assert dapo_reward("Answer: \\frac{2}{4}", "\\frac12") == (1.0, 1.0)  # math-verify second chance
    assert dapo_reward("Answer: 0.5", "1/2") == (1.0, 1.0)
    assert dapo_reward("Answer: 12", "1.2") == (-1.0, 0.0)
    assert dapo_reward("", "1") == (-1.0, 0.0)


def test_dapo_reward_is_strict_about_the_answer_line():
    assert dapo_reward("\\boxed{42}", "42") == (-1.0, 0.0)  # DAPO: no Answer: line, no answer
    assert dapo_reward("\\boxed{42}", "42", accept_boxed=True) == (1.0, 1.0)
    assert dapo_reward("Answer: 42\n" + "y" * 301, "42") == (-1.0, 0.0)  # outside the last 300 characters
    assert dapo_reward("Answer: 1\nAnswer: 42", "42") == (1.0, 1.0)  # the last line counts
    assert dapo_reward("Answer: 42", "42", use_math_verify=False) == (1.0, 1.0)
    assert dapo_reward("Answer: 0.5", "1/2", use_math_verify=False) == (-1.0, 0.0)


COMPLETIONS = ["Answer: 42", "Answer: 0.5", "Answer: 12", "\\boxed{7}", "Answer: x^2+2x+1", "nothing"]
GOLDS = ["42", "1/2", "1.2", "7", "(x+1)^2", "3"]
EXPECTED = [(1.0, 1.0), (1.0, 1.0), (-1.0, 0.0), (-1.0, 0.0), (1.0, 1.0), (-1.0, 0.0)]


def test_dapo_rewards_batch_equals_single_calls():
    completions, golds = COMPLETIONS, GOLDS
    single = [dapo_reward(c, g) for c, g in zip(completions, golds)]
    assert single == EXPECTED
    assert dapo_rewards(completions, golds) == single  # in-process
    assert dapo_rewards(completions, golds, pool=GradingPool(num_workers=0)) == single
    assert dapo_rewards(completions, golds, accept_boxed=True)[3] == (1.0, 1.0)
    inline = GradingPool(num_workers=0)
    assert inline.grade_rewards(completions, golds) == [(s, a, False) for s, a in single]
    assert inline.grade_rewards(completions, golds, accept_boxed=True)[3] == (1.0, 1.0, False)


def test_dapo_reward_rejects_junk_next_to_the_gold():
    assert dapo_reward("Answer: 768√2", "768") == (-1.0, 0.0)
    assert dapo_reward("Answer: 768√2", "768\\sqrt{2}") == (1.0, 1.0)
    assert dapo_reward("Answer: ４２", "42") == (1.0, 1.0)
    assert dapo_reward("\\boxed{4}\nFinal Answer: 5", "5") == (1.0, 1.0)  # the Answer: line itself
    # through worker processes: tests/test_grading_pool.py::test_dapo_rewards_through_workers
