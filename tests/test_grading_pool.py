"""The grading pool: a pathological answer times out, counts as wrong, is reported; the rest is graded."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hapo_cli.rewards import GradingPool, TaskResult, dapo_rewards

# sympy would evaluate 9^(9^(9^9)) exactly: effectively forever, in C code signal.alarm cannot stop.
PATHOLOGICAL = r"The answer is \boxed{9^{9^{9^{9}}}}"


def sleepy_grader(x: str) -> str:
    """Test-only task function (imported by name in the worker processes)."""
    if x == "hang":
        time.sleep(600)
    if x == "spin":
        while True:
            pass
    if x.startswith("nap"):  # sleeps (no CPU time) for the seconds after "nap"
        time.sleep(float(x[3:]))
    if x == "die":
        os._exit(3)
    if x == "raise":
        raise ValueError("bad input")
    return x.upper()


@pytest.fixture(scope="module")
def pool():
    """One healthy pool shared by the tests that do not kill workers (worker start-up costs seconds)."""
    with GradingPool(num_workers=2, timeout=30) as p:
        yield p


def test_golden_through_the_pool_matches_in_process(pool):
    """The pool path (exact match here, math-verify in workers) gives every golden verdict too."""
    path = Path(__file__).parent / "data" / "golden_grading.jsonl"
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    got = {}
    for prefer in sorted({c["prefer"] for c in cases}):
        sub = [c for c in cases if c["prefer"] == prefer]
        res = pool.grade([c["completion"] for c in sub], [c["gold"] for c in sub], prefer=prefer)
        got.update({c["id"]: r.correct for c, r in zip(sub, res)})
    assert pool.n_timeouts == 0 and pool.n_crashes == 0
    assert len(got) == len(cases) >= 80
    assert [c["id"] for c in cases if got[c["id"]] is not c["expected"]] == []


def test_dapo_rewards_through_workers(pool):
    from test_rewards import COMPLETIONS, EXPECTED, GOLDS

    assert dapo_rewards(COMPLETIONS, GOLDS, pool=pool) == EXPECTED
    assert dapo_rewards(["\\boxed{7}"], ["7"], pool=pool, accept_boxed=True) == [(1.0, 1.0)]


def worker_pid() -> int:
    return os.getpid()


def test_map_timeout_crash_and_error_are_isolated():
    items = [("a",), ("hang",), ("b",), ("die",), ("raise",), ("c",)] + [(f"x{i}",) for i in range(10)]
    with GradingPool(num_workers=2, timeout=1.0, wall_timeout=2.0, warmup=False) as pool:
        t0 = time.monotonic()
        res = pool.map(sleepy_grader, items)
        elapsed = time.monotonic() - t0
        assert [r.value for r in res if r.ok] == ["A", "B", "C"] + [f"X{i}" for i in range(10)]
        hang, die, err = res[1], res[3], res[4]
        assert hang.timed_out and not hang.ok and hang.error == "timeout after 1s"
        assert die.crashed and not die.ok and "worker died" in die.error
        assert not err.ok and not err.timed_out and err.error == "ValueError: bad input"
        assert pool.n_timeouts == 1 and pool.n_crashes == 1 and pool.n_retries == 1
        assert [e["kind"] for e in sorted(pool.events, key=lambda e: e["item"])] == ["retry", "timeout", "crash"]
        assert {e["item"] for e in pool.events} == {1, 3}
        assert pool.n_restarts == 3  # the hang's worker twice (first try and retry), the dead one once
        assert pool.stats() == {"grading/items": 16, "grading/timeouts": 1, "grading/retries": 1,
                                "grading/crashes": 1, "grading/restarts": 3}
        assert elapsed < 120  # the hang did not block the batch for its 600 s
        # the pool keeps working after the kills
        assert [r.value for r in pool.map(sleepy_grader, [("y",), ("z",)])] == ["Y", "Z"]


def test_pathological_answer_times_out_counts_wrong_and_rest_is_graded(caplog):
    completions = [r"\boxed{\frac{2}{4}}", PATHOLOGICAL, r"\boxed{0.5}", r"\boxed{3}", r"\boxed{x^2+2x+1}"]
    golds = [r"\frac12", "1", r"\frac{1}{2}", "4", "(x+1)^2"]
    # mv_timeout far above the pool timeout: only the hard kill can stop the pathological item
    # (no retry here, to keep the test short: retries are tested on map() below)
    with GradingPool(num_workers=2, timeout=1.0, mv_timeout=60, retry_timeouts=False) as pool, \
            caplog.at_level("WARNING", "hapo.grading"):
        res = pool.grade(completions, golds, prefer="boxed")
        assert [r.correct for r in res] == [True, False, True, False, True]
        bad = res[1]
        assert bad.timed_out and bad.verdict == "timeout" and bad.method == "timeout"
        assert bad.pred == "9^{9^{9^{9}}}"
        assert pool.n_timeouts == 1 and pool.n_retries == 0 and pool.events[0]["kind"] == "timeout"
        assert "9^{9^{9^{9}}}" in pool.events[0]["what"]
    assert any("timed out" in rec.getMessage() for rec in caplog.records)


def test_math_verify_internal_timeout_is_retried_and_reported():
    """With math-verify's own (CPU) budget shorter than the pool's, the answer is retried once,
    then reported as a timeout: in the training API too."""
    with GradingPool(num_workers=1, timeout=60, mv_timeout=0.5) as pool:
        out = pool.grade_rewards([PATHOLOGICAL, r"\boxed{2}", "Answer: 3"], ["1", "2", "3"], reward="dapo",
                                 accept_boxed=True)
        assert out == [(-1.0, 0.0, True), (1.0, 1.0, False), (1.0, 1.0, False)]
        assert pool.n_retries == 1 and pool.n_timeouts == 1 and pool.n_restarts == 0  # no kill needed
        assert [e["kind"] for e in pool.events] == ["retry"]


def test_budget_is_cpu_time_not_wall_time():
    """A worker that waits (no CPU used: the machine is busy elsewhere) is not killed at `timeout`;
    one that computes is, after one retry; the wall-time backstop still stops a stuck worker."""
    with GradingPool(num_workers=1, timeout=0.3, wall_timeout=3.0, warmup=False) as pool:
        res = pool.map(sleepy_grader, [("nap1.0",), ("spin",), ("ok",)])
        assert res[0].ok and res[0].value == "NAP1.0" and res[0].seconds >= 1.0  # 3x the budget in wall time
        assert res[1].timed_out and res[2].value == "OK"
        assert pool.n_timeouts == 1 and pool.n_retries == 1


def test_grade_rewards_api(pool):
    comps = ["Answer: 42", "Answer: 41", "\\boxed{7}", "Answer: x^2+2x+1", "Answer: 768√2"]
    golds = ["42", "42", "7", "(x+1)^2", "768"]
    assert pool.grade_rewards(comps, golds) == [(1.0, 1.0, False), (-1.0, 0.0, False), (-1.0, 0.0, False),
                                                (1.0, 1.0, False), (-1.0, 0.0, False)]
    assert [r[0] for r in pool.grade_rewards(comps, golds, accept_boxed=True)] == [1.0, -1.0, 1.0, 1.0, -1.0]
    assert [r[0] for r in pool.grade_rewards(comps, golds, reward="binary")] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert [r[1] for r in pool.grade_rewards(comps, golds, prefer="boxed")] == [1.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="reward must be one of"):
        pool.grade_rewards(comps, golds, reward="nope")


def test_worker_recycling_and_inline_mode():
    with GradingPool(num_workers=1, timeout=30, max_tasks_per_worker=2, warmup=False) as p:
        res = p.map(worker_pid, [()] * 4)
        pids = [r.value for r in res]
        assert pids[0] == pids[1] != pids[2] == pids[3]  # a fresh process after every 2 items
        assert p.n_restarts == 0 and p.n_timeouts == 0
    inline = GradingPool(num_workers=0)
    assert inline.map(sleepy_grader, [("q",), ("raise",)])[0] == TaskResult(True, "Q", seconds=pytest.approx(0, abs=5))
    assert inline.map(sleepy_grader, [("raise",)])[0].error == "ValueError: bad input"
    assert [r.correct for r in inline.grade([r"\boxed{0.5}"], ["1/2"])] == [True]


def test_grade_checks_lengths_and_empty_batches(pool):
    assert pool.grade([], []) == []
    assert pool.map(sleepy_grader, []) == []
    with pytest.raises(ValueError):
        pool.grade(["a"], [])
