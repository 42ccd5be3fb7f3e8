"""Answer extraction, verification and DAPO rewards.

    dapo_reward(completion, gold) -> (score, accuracy)          # one completion, in-process
    dapo_rewards(completions, golds, pool=GradingPool())        # a batch, math-verify in workers
    grade_completion(completion, gold, prefer="boxed")          # -> GradeResult (verdict, answer)
    math_verify_equal(gold, pred, timeout=5)                    # gold first
"""

from hapo_cli.rewards.extract import extract_answer, extract_answer_line, extract_boxed
from hapo_cli.rewards.normalize import normalize_answer
from hapo_cli.rewards.pool import GradingPool, TaskResult, dapo_rewards, grade_many
from hapo_cli.rewards.verify import (
    GradeResult,
    dapo_reward,
    grade_answer,
    grade_completion,
    math_verify_check,
    math_verify_equal,
)

__all__ = [
    "GradeResult",
    "GradingPool",
    "TaskResult",
    "dapo_reward",
    "dapo_rewards",
    "extract_answer",
    "extract_answer_line",
    "extract_boxed",
    "grade_answer",
    "grade_completion",
    "grade_many",
    "math_verify_check",
    "math_verify_equal",
    "normalize_answer",
]
