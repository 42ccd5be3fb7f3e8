"""Grading one completion against a gold answer: extraction, exact match, math-verify.

Order (the same for the trainer's reward and for `hapo eval`):
1. extract the final answer (`hapo_cli.rewards.extract`); none -> wrong ("no_answer");
2. `normalize_answer(pred) == normalize_answer(gold)` -> correct ("exact");
3. otherwise math-verify decides ("math_verify" / "mismatch"): `math_verify_equal(gold, pred)`
   parses both (gold first, as math-verify's `verify` is not symmetric) and compares them
   symbolically / numerically.

math-verify's own timeout uses `signal.alarm`, which only works in the main thread. In the main
thread (and when no other SIGALRM timer is pending, which the alarm would cancel) we pass integer
timeouts; anywhere else both timeouts are disabled (`parsing_timeout=None`, `timeout_seconds=None`)
and the caller must bound the time itself: use `hapo_cli.rewards.pool.GradingPool`, whose worker
processes are killed when an item overruns.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass

from hapo_cli.rewards.extract import extract_answer
from hapo_cli.rewards.normalize import normalize_answer

DEFAULT_MV_TIMEOUT = 5.0  # seconds math-verify may spend on one parse / one comparison
_MAX_MV_CHARS = 2000  # longer answers are not handed to sympy at all (counted as mismatches)

log = logging.getLogger("hapo.grading")


class _NoTimeoutDisabledNotice(logging.Filter):
    """Drop math-verify's "Timeout is disabled ..." notice: we bound the time ourselves (GradingPool)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutDisabledNotice())


@dataclass
class GradeResult:
    """The verdict on one completion."""

    correct: bool  # the answer matches the gold answer
    pred: str | None  # extracted answer as written (None: no answer found)
    pred_norm: str  # normalised extracted answer ("" when none); the key for majority voting
    method: str  # exact | math_verify | mismatch | no_answer | timeout | error | verifier
    timed_out: bool = False  # grading hit a time limit (counted as wrong)
    error: str | None = None  # grading failure message (counted as wrong)

    @property
    def verdict(self) -> str:
        """correct / wrong / no_answer / timeout / error: what the per-sample JSONL records."""
        if self.correct:
            return "correct"
        if self.timed_out:
            return "timeout"
        if self.error is not None:
            return "error"
        if self.pred is None:
            return "no_answer"
        return "wrong"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _alarm_free() -> bool:
    """No SIGALRM timer is pending: math-verify's signal.alarm would cancel someone else's
    (pytest-timeout, a job scheduler's watchdog), so it is only used when none is set."""
    try:
        return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    except (AttributeError, OSError, ValueError):  # platforms without itimers
        return True


def _as_latex(s: str) -> str:
    s = s.strip()
    if "$" in s or "\\(" in s or "\\[" in s or "\\boxed" in s:
        return s
    return f"${s}$"


def math_verify_check(gold: str, pred: str, timeout: float | None = DEFAULT_MV_TIMEOUT) -> tuple[bool, bool]:
    """math-verify's verdict on `pred` against `gold` -> (equal, timed_out).

    `timeout` is used only in the main thread (signal.alarm); elsewhere math-verify runs without
    its own timeout and the caller bounds the time (GradingPool). Any exception is "not equal".
    """
    from math_verify import parse, verify

    if not gold or not pred or len(pred) > _MAX_MV_CHARS or len(gold) > _MAX_MV_CHARS:
        return False, False
    secs = max(1, math.ceil(timeout)) if (timeout and _in_main_thread() and _alarm_free()) else None
    t0 = time.monotonic()
    try:
        g = parse(_as_latex(gold), parsing_timeout=secs)
        if not g:
            g = parse(f"\\boxed{{{gold}}}", parsing_timeout=secs)
        p = parse(_as_latex(pred), parsing_timeout=secs)
        if not p:
            p = parse(f"\\boxed{{{pred}}}", parsing_timeout=secs)
        if not g or not p:
            return False, bool(secs and time.monotonic() - t0 >= secs)
        ok = bool(verify(g, p, timeout_seconds=secs))
    except Exception as err:  # math-verify raises on odd input in some versions
        log.debug("math-verify failed on gold=%r pred=%r: %s", gold[:80], pred[:80], err)
        return False, False
    # math-verify swallows its own timeouts and returns False; recognise them by the clock
    timed_out = (not ok) and secs is not None and (time.monotonic() - t0) >= secs
    return ok, timed_out


def math_verify_equal(gold: str, pred: str, timeout: float | None = DEFAULT_MV_TIMEOUT) -> bool:
    """True when math-verify judges `pred` equal to `gold` (gold is parsed first)."""
    return math_verify_check(gold, pred, timeout)[0]


def grade_answer(
    pred: str | None, gold: str, *, use_math_verify: bool = True, timeout: float | None = DEFAULT_MV_TIMEOUT
) -> GradeResult:
    """Grade an already extracted answer (`pred`) against `gold`."""
    if pred is None or not str(pred).strip():
        return GradeResult(False, None, "", "no_answer")
    pred_norm = normalize_answer(pred)
    gold_norm = normalize_answer(gold)
    if pred_norm and pred_norm == gold_norm:
        return GradeResult(True, pred, pred_norm, "exact")
    if not use_math_verify:
        return GradeResult(False, pred, pred_norm, "mismatch")
    ok, timed_out = math_verify_check(str(gold), str(pred), timeout)
    if timed_out:
        return GradeResult(False, pred, pred_norm, "timeout", timed_out=True)
    return GradeResult(ok, pred, pred_norm, "math_verify" if ok else "mismatch")


def _precheck_parts(completion: str, gold: str, *, prefer: str = "boxed") -> tuple[GradeResult | None, str | None, str]:
    """The cheap part of grading (extraction + exact match), safe in any process and thread.

    Returns (final GradeResult or None when math-verify must decide, extracted answer, its
    normalised form).
    """
    pred = extract_answer(completion or "", prefer=prefer)
    if pred is None:
        return GradeResult(False, None, "", "no_answer"), None, ""
    pred_norm = normalize_answer(pred)
    if pred_norm and pred_norm == normalize_answer(gold):
        return GradeResult(True, pred, pred_norm, "exact"), pred, pred_norm
    return None, pred, pred_norm


def grade_completion(
    completion: str,
    gold: str,
    *,
    prefer: str = "boxed",
    use_math_verify: bool = True,
    timeout: float | None = DEFAULT_MV_TIMEOUT,
) -> GradeResult:
    """Extract the final answer from `completion` and grade it against `gold`, in this process."""
    pred = extract_answer(completion or "", prefer=prefer)
    return grade_answer(pred, gold, use_math_verify=use_math_verify, timeout=timeout)


def dapo_reward(
    completion: str,
    gold: str,
    *,
    accept_boxed: bool = False,
    use_math_verify: bool = True,
    timeout: float | None = DEFAULT_MV_TIMEOUT,
) -> tuple[float, float]:
    """DAPO reward -> (score, accuracy): (+1.0, 1.0) when correct, (-1.0, 0.0) otherwise.

    The answer is the last `Answer:` line within the last 300 characters (DAPO); with
    `accept_boxed` a `\\boxed{}` answer is accepted when there is no such line. Exact match after
    normalisation, math-verify as the second chance. Runs in this process: from a worker thread
    math-verify runs without a timeout, so batch rewards should go through `dapo_rewards(...,
    pool=GradingPool())`.
    """
    prefer = "answer" if accept_boxed else "answer_only"
    res = grade_completion(completion, gold, prefer=prefer, use_math_verify=use_math_verify, timeout=timeout)
    return (1.0, 1.0) if res.correct else (-1.0, 0.0)
