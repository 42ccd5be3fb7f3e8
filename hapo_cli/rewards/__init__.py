"""Answer extraction, verification and DAPO rewards.

    dapo_reward(completion, gold, accept_boxed=False) -> (score, accuracy)   # one completion, in-process
    GradingPool().grade_rewards(completions, golds, reward="dapo", accept_boxed=False)
        -> [(score, accuracy, timed_out)]                       # a training batch, math-verify in workers
    dapo_rewards(completions, golds, pool=GradingPool())        # the same without the timeout flag
    grade_completion(completion, gold, prefer="boxed")          # -> GradeResult (verdict, answer)
    math_verify_equal(gold, pred, timeout=5)                    # gold first

An answer is correct only when all of it was understood: exact match after normalisation, else
math-verify with the answer parsed strictly as a whole (`verify.parse_answer_strict`).
"""

from hapo_cli.rewards.extract import extract_answer, extract_answer_line, extract_boxed
from hapo_cli.rewards.normalize import normalize_answer
from hapo_cli.rewards.pool import REWARDS, GradingPool, TaskResult, dapo_rewards, grade_many
from hapo_cli.rewards.verify import (
    GradeResult,
    dapo_reward,
    gold_parts,
    grade_answer,
    grade_completion,
    math_verify_check,
    math_verify_equal,
    parse_answer_strict,
)

__all__ = [
    "GradeResult",
    "GradingPool",
    "REWARDS",
    "TaskResult",
    "dapo_reward",
    "dapo_rewards",
    "extract_answer",
    "extract_answer_line",
    "extract_boxed",
    "grade_answer",
    "grade_completion",
    "gold_parts",
    "grade_many",
    "math_verify_check",
    "math_verify_equal",
    "normalize_answer",
    "parse_answer_strict",
]
