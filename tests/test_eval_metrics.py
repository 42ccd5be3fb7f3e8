"""Evaluation metrics: unbiased pass@k (closed form, brute force), maj@k ties, avg@n, summaries."""

from __future__ import annotations

import itertools
import math

import pytest

from hapo_cli.evaluate.metrics import (
    default_k_list,
    majority_vote,
    pass_at_k,
    pass_at_k_closed_form,
    question_metrics,
    summarize,
)


def test_pass_at_k_hand_values():
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8, abs=1e-15)
    assert pass_at_k(8, 2, 2) == pytest.approx(1 - 15 / 28, abs=1e-15)  # 1 - C(6,2)/C(8,2)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70, abs=1e-15)  # 1 - C(6,4)/C(8,4)
    assert pass_at_k(8, 2, 7) == 1.0  # fewer than k wrong samples: any k-subset holds a correct one
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(16, 1, 1) == pytest.approx(1 / 16, abs=1e-15)


@pytest.mark.parametrize("n", range(1, 17))
def test_pass_at_k_matches_the_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_closed_form(n, c, k), abs=1e-12)


def test_pass_at_k_matches_brute_force_subsets():
    """pass@k = share of k-subsets of the n samples that contain at least one correct sample."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1024, 512) overflows floats; the product form does not
    v = pass_at_k(1024, 3, 512)
    assert v == pytest.approx(1 - (512 * 511 * 510) / (1024 * 1023 * 1022), rel=1e-12)
    assert math.isfinite(pass_at_k(4096, 1, 4096))


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_default_k_list():
    assert default_k_list(8) == [1, 2, 4, 8]
    assert default_k_list(6) == [1, 2, 4, 6]
    assert default_k_list(1) == [1]
    assert default_k_list(16) == [1, 2, 4, 8, 16]


def test_majority_vote_ties_go_to_the_earliest_first_occurrence():
    # "3" and "5" both have two votes; "3" appears first -> "3" wins
    assert majority_vote(["3", "5", "5", "3"], [True, False, False, True]) == ("3", True)
    assert majority_vote(["5", "3", "3", "5"], [False, True, True, False]) == ("5", False)
    # order of the tie partners' later votes does not matter, only the first occurrence
    assert majority_vote(["7", "8", "8", "7", "9"], [False, True, True, False, False]) == ("7", False)
    # a strict majority wins regardless of position
    assert majority_vote(["1", "2", "2", "2"], [False, True, True, True]) == ("2", True)


def test_majority_vote_ignores_missing_answers_and_respects_k():
    assert majority_vote([None, "", "4", None], [False, False, True, False]) == ("4", True)
    assert majority_vote([None, None], [False, False]) == (None, False)
    assert majority_vote(["1", "2", "2", "2"], [True, False, False, False], k=2) == ("1", True)  # tie in the first 2


def test_question_metrics():
    m = question_metrics([True, False, False, True], [1, 2, 4])
    assert m["avg"] == 0.5
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert m["pass@4"] == 1.0


def test_summarize_hand_made_records():
    records = [
        {"correct": [True, True, False, False], "answers": ["5", "5", "6", None], "lengths": [10, 20, 30, 40],
         "truncated": [False, False, False, True]},
        {"correct": [False, False, False, False], "answers": ["1", "2", "2", None], "lengths": [5, 5, 5, 5],
         "truncated": [False, False, False, False], "timeouts": 1},
        {"correct": [False, True, True, True], "answers": ["9", "8", "8", "8"], "lengths": [1, 1, 1, 1],
         "truncated": [True, True, False, False]},
    ]
    s = summarize(records, n=4)
    assert s["n_questions"] == 3 and s["n_samples"] == 12
    assert s["avg@4"] == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    assert s["pass@1"] == pytest.approx(s["avg@4"])
    assert s["pass@2"] == pytest.approx(((1 - 1 / 6) + 0.0 + 1.0) / 3)
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert s["maj@4"] == pytest.approx(2 / 3)  # q1 "5" correct, q2 "2" wrong, q3 "8" correct
    assert s["mean_length"] == pytest.approx((100 + 20 + 4) / 12)
    assert s["truncated_frac"] == pytest.approx(3 / 12)
    assert s["grading_timeouts"] == 1
    assert set(k for k in s if k.startswith("pass@")) == {"pass@1", "pass@2", "pass@4"}
    with pytest.raises(ValueError):
        summarize(records, n=4, k_list=[8])
    assert summarize([], n=8)["avg@8"] == 0.0
