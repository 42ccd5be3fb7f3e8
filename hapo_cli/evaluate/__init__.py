"""The evaluator (`hapo eval` and the trainer's validation) and its metrics.

    from hapo_cli.evaluate import evaluate_rows
    summary = evaluate_rows(engine, tokenizer, rows, task=bench_task("math500"), n=8, out_dir="runs/eval/x")
"""

from hapo_cli.evaluate.evaluator import evaluate_rows
from hapo_cli.evaluate.metrics import default_k_list, majority_vote, pass_at_k, summarize

__all__ = ["default_k_list", "evaluate_rows", "majority_vote", "pass_at_k", "summarize"]
