"""Evaluation metrics over n sampled responses per question.

- avg@n: mean accuracy over all n samples of all questions (the paper's headline number, n=8).
- pass@k: the unbiased estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)` for a
  question with c correct out of n, averaged over questions; computed in the stable product
  form `1 - prod_{i=n-c+1}^{n} (1 - k / i)` (no huge binomials). Needs k <= n.
- maj@k: majority vote over the normalised extracted answers of the first k samples; the
  question counts as solved when the winning answer's (first) sample is correct. Samples with no
  answer do not vote. Ties go to the answer whose FIRST occurrence comes earliest (deterministic
  and independent of hashing). No votes at all -> not solved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question: c correct among n samples, k <= n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_closed_form(n: int, c: int, k: int) -> float:
    """`1 - C(n-c, k) / C(n, k)` with exact integers (reference for tests; slow for big n)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_k_list(n: int) -> list[int]:
    """Powers of two up to n, and n itself: n=8 -> [1, 2, 4, 8]; n=6 -> [1, 2, 4, 6]."""
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n not in ks:
        ks.append(n)
    return ks


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> tuple[str | None, bool]:
    """(winning answer, whether it is correct) over the first k samples; see module doc for ties."""
    k = len(answers) if k is None else k
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers[:k]):
        if a is None or a == "":
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None, False
    winner = min(counts, key=lambda a: (-counts[a], first[a]))
    return winner, bool(correct[first[winner]])


def question_metrics(correct: Sequence[bool], k_list: Sequence[int]) -> dict[str, float]:
    """Per-question avg and pass@k for the given verdicts."""
    n = len(correct)
    c = int(sum(bool(x) for x in correct))
    out = {"avg": c / n if n else 0.0}
    for k in k_list:
        out[f"pass@{k}"] = pass_at_k(n, c, k)
    return out


def summarize(
    records: Sequence[dict],
    n: int,
    k_list: Sequence[int] | None = None,
) -> dict:
    """Summary over per-question records.

    Each record: {"correct": [bool]*n, "answers": [str|None]*n, "lengths": [int]*n,
    "truncated": [bool]*n, "timeouts": int (optional)}.
    """
    k_list = sorted(set(k_list)) if k_list else default_k_list(n)
    bad = [k for k in k_list if not 1 <= k <= n]
    if bad:
        raise ValueError(f"pass@k needs 1 <= k <= n={n}; got k={bad}")
    q = len(records)
    out: dict = {"n_questions": q, "n_samples": q * n}
    if q == 0:
        out.update({f"avg@{n}": 0.0, f"maj@{n}": 0.0, "mean_length": 0.0, "truncated_frac": 0.0})
        out.update({f"pass@{k}": 0.0 for k in k_list})
        out["grading_timeouts"] = 0
        return out
    per_q = [question_metrics(r["correct"], k_list) for r in records]
    out[f"avg@{n}"] = sum(m["avg"] for m in per_q) / q
    for k in k_list:
        out[f"pass@{k}"] = sum(m[f"pass@{k}"] for m in per_q) / q
    out[f"maj@{n}"] = sum(majority_vote(r["answers"], r["correct"])[1] for r in records) / q
    lengths = [x for r in records for x in r["lengths"]]
    trunc = [bool(x) for r in records for x in r["truncated"]]
    out["mean_length"] = sum(lengths) / len(lengths) if lengths else 0.0
    out["truncated_frac"] = sum(trunc) / len(trunc) if trunc else 0.0
    out["grading_timeouts"] = int(sum(r.get("timeouts", 0) for r in records))
    return out
