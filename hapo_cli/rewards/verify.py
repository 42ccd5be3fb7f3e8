"""Grading one completion against a gold answer: extraction, exact match, math-verify.

Order (the same for the trainer's reward and for `hapo eval`):
1. extract the final answer (`hapo_cli.rewards.extract`); none -> wrong ("no_answer");
2. `normalize_answer(pred) == normalize_answer(gold)` -> correct ("exact");
3. otherwise math-verify decides ("math_verify" / "mismatch" / "unparsed"):
   `math_verify_check(gold, pred)` parses the gold with math-verify as usual (gold first, as its
   `verify` is not symmetric) but the ANSWER STRICTLY: the whole answer (after
   `normalize.prepare_for_parse` and math-verify's own LaTeX normalisation) must be accepted by the
   LaTeX grammar, with no fallback to a number found somewhere inside it. math-verify alone drops
   what it cannot parse (`768√2` == 768, `∞ + 816` == 816); here any character or token the parse
   did not account for makes the answer wrong ("unparsed"). Chained equalities `x = 2+3 = 5`
   count when every part parses (the last one is the answer).

Several boxes: when the gold has several parts (`gold_parts`: top-level commas, "and"/"or", the
elements of a set), the last boxes of the final answer that together have that many parts are
combined (`extract_answer(parts=n)`); a single-part gold is graded against the last box alone.

Time limits are CPU time where the platform allows it (`cpu_time_limit`: ITIMER_PROF, main thread
only), so a busy machine does not turn a slow-but-correct answer into a timeout; otherwise
math-verify's own `signal.alarm` (wall time, main thread, no other SIGALRM pending); in any other
thread no limit, and the caller must bound the time: `hapo_cli.rewards.pool.GradingPool`, whose
worker processes are killed when an item overruns its CPU budget.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

from hapo_cli.rewards.extract import answer_parts, extract_answer
from hapo_cli.rewards.normalize import normalize_answer, prepare_for_parse, unicode_to_latex

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
    method: str  # exact | math_verify | mismatch | unparsed | no_answer | timeout | error | verifier
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


class CPUTimeout(BaseException):
    """Raised inside grading when its CPU-time budget is spent (a BaseException, so that
    math-verify's and sympy's `except Exception` do not swallow it)."""


def _prof_free() -> bool:
    try:
        return signal.getitimer(signal.ITIMER_PROF)[0] == 0.0
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def cpu_time_limit(seconds: float | None):
    """Raise CPUTimeout once this process has spent `seconds` of CPU time in the block.

    Uses ITIMER_PROF (CPU time of the process, user + system), so load on the machine does not
    count. Yields True when the limit is armed; False (no limit) off the main thread, on
    platforms without itimers, or when another ITIMER_PROF timer (a profiler) is pending.
    """
    if not seconds or not _in_main_thread() or not _prof_free():
        yield False
        return

    def _on_prof(signum, frame):
        raise CPUTimeout(f"grading used more than {seconds:g} s of CPU time")

    old = signal.signal(signal.SIGPROF, _on_prof)
    signal.setitimer(signal.ITIMER_PROF, float(seconds))
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0.0)
        signal.signal(signal.SIGPROF, old)


_PRED_NORM_CONFIG = None


def _pred_norm_config():
    """math-verify's LaTeX normalisation for an answer, minus its unit stripping (it drops ANY
    trailing `\\text{...}`, which would accept `816 \\text{(or 815)}`; known units are dropped
    by `prepare_for_parse` instead)."""
    global _PRED_NORM_CONFIG
    if _PRED_NORM_CONFIG is None:
        from latex2sympy2_extended.latex2sympy2 import NormalizationConfig

        _PRED_NORM_CONFIG = NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        )
    return _PRED_NORM_CONFIG


_NUMBER_SUBSCRIPT = re.compile(r"(?<![A-Za-z\\])\d+\s*_")
_EQ_SPLIT = re.compile(r"(?<![\\<!>])=")


class _LRU:
    """A small least-recently-used cache of parse results (a training group grades one gold
    against many answers, and answers repeat); failures and timeouts are never stored."""

    def __init__(self, size: int = 512):
        self.size = size
        self.data: OrderedDict = OrderedDict()

    def get(self, key):
        val = self.data.get(key)
        if val is not None:
            self.data.move_to_end(key)
        return val

    def put(self, key, val) -> None:
        if val:
            self.data[key] = val
            if len(self.data) > self.size:
                self.data.popitem(last=False)


_PRED_CACHE = _LRU()
_GOLD_CACHE = _LRU()


def parse_answer_strict(pred: str) -> list | None:
    """The answer as math-verify's LaTeX grammar reads it ALL, as `[sympy_object, latex]`, or None
    when any part of it is not understood (see the module docstring)."""
    hit = _PRED_CACHE.get(pred)
    if hit is not None:
        return hit
    out = _parse_answer_strict(pred)
    _PRED_CACHE.put(pred, out)
    return out


def _parse_answer_strict(pred: str) -> list | None:
    from latex2sympy2_extended.latex2sympy2 import latex2sympy, normalize_latex
    from math_verify.grader import should_treat_as_complex

    text = normalize_latex(prepare_for_parse(pred), _pred_norm_config()).strip()
    if not text or _NUMBER_SUBSCRIPT.search(text):
        return None  # the grammar ignores a subscript on a number (816_{5} reads as 816): not understood

    def one(latex: str):
        return latex2sympy(latex, is_real=not should_treat_as_complex(latex), convert_degrees=False,
                           normalization_config=None)

    pct = re.search(r"\s*\\?%$", text)  # 50\% is 1/2, as math-verify reads it
    if pct and pct.start() > 0:
        try:
            return [one(text[: pct.start()]) / 100, text]
        except CPUTimeout:
            raise
        except Exception:
            return None
    try:
        return [one(text), text]
    except CPUTimeout:
        raise
    except Exception:
        pass
    parts = _EQ_SPLIT.split(text)
    if len(parts) > 2 and "," not in text and ";" not in text:  # x = 2 + 3 = 5: every part must parse
        try:
            exprs = [one(p) for p in parts]
        except CPUTimeout:
            raise
        except Exception:
            return None
        return [exprs[-1], parts[-1].strip()]
    return None


def _parse_gold(gold: str, secs: int | None) -> list:
    from math_verify import parse

    hit = _GOLD_CACHE.get(gold)
    if hit is not None:
        return hit
    text = unicode_to_latex(gold)
    g = parse(_as_latex(text), parsing_timeout=secs)
    if not g:
        g = parse(f"\\boxed{{{text}}}", parsing_timeout=secs)
    _GOLD_CACHE.put(gold, g)
    return g


def math_verify_check(gold: str, pred: str, timeout: float | None = DEFAULT_MV_TIMEOUT) -> tuple[bool, bool]:
    """math-verify's verdict on `pred` against `gold` -> (equal, timed_out).

    The answer must parse as a whole (`parse_answer_strict`); a partly understood answer is not
    equal. `timeout` is CPU seconds when `cpu_time_limit` can arm (main thread), else wall seconds
    of math-verify's signal.alarm (main thread), else none (the caller bounds the time: GradingPool).
    Any exception is "not equal".
    """
    return _check(gold, pred, timeout)[:2]


def _check(gold: str, pred: str, timeout: float | None) -> tuple[bool, bool, bool]:
    """-> (equal, timed_out, answer_understood)."""
    from math_verify import verify

    if not gold or not pred or len(pred) > _MAX_MV_CHARS or len(gold) > _MAX_MV_CHARS:
        return False, False, True
    with cpu_time_limit(timeout) as cpu_limited:
        wall = (not cpu_limited) and timeout and _in_main_thread() and _alarm_free()
        secs = max(1, math.ceil(timeout)) if wall else None
        t0 = time.monotonic()
        try:
            p = parse_answer_strict(pred)
            if p is None:
                return False, False, False
            g = _parse_gold(gold, secs)
            if not g:
                return False, bool(secs and time.monotonic() - t0 >= secs), True
            ok = bool(verify(g, p, timeout_seconds=secs))
        except CPUTimeout:
            return False, True, True
        except Exception as err:  # math-verify raises on odd input in some versions
            log.debug("math-verify failed on gold=%r pred=%r: %s", gold[:80], pred[:80], err)
            return False, False, True
    # math-verify swallows its own (wall) timeouts and returns False; recognise them by the clock
    timed_out = (not ok) and secs is not None and (time.monotonic() - t0) >= secs
    return ok, timed_out, True


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
    ok, timed_out, understood = _check(str(gold), str(pred), timeout)
    return _mv_result(pred, pred_norm, ok, timed_out, understood)


def _mv_result(pred: str, pred_norm: str, ok: bool, timed_out: bool, understood: bool = True) -> GradeResult:
    if timed_out:
        return GradeResult(False, pred, pred_norm, "timeout", timed_out=True)
    if not understood:
        return GradeResult(False, pred, pred_norm, "unparsed")
    return GradeResult(ok, pred, pred_norm, "math_verify" if ok else "mismatch")


def gold_parts(gold: str) -> tuple[int, str]:
    """How many parts the gold answer has, and its shape: (n, "set" | "tuple" | "list")."""
    return answer_parts(unicode_to_latex(str(gold)))


def _combined_pred(completion: str, gold: str, prefer: str) -> str | None:
    """The extracted answer, the boxes of the final answer combined when the gold has several parts."""
    n, shape = gold_parts(gold) if ("boxed" in completion or "fbox" in completion) else (1, "list")
    return extract_answer(completion, prefer=prefer, parts=n, shape=shape)


def _precheck_parts(completion: str, gold: str, *, prefer: str = "boxed") -> tuple[GradeResult | None, str | None, str]:
    """The cheap part of grading (extraction + exact match), safe in any process and thread.

    Returns (final GradeResult or None when math-verify must decide, extracted answer, its
    normalised form).
    """
    pred = _combined_pred(completion or "", str(gold), prefer)
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
    pred = _combined_pred(completion or "", str(gold), prefer)
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

    The answer is the last `Answer:` line within the last 300 characters (DAPO's rule: a box is NOT
    read by default); with `accept_boxed` (the data config's `data.accept_boxed`) a `\\boxed{}`
    answer is accepted when there is no such line. Exact match after
    normalisation, math-verify as the second chance. Runs in this process: from a worker thread
    math-verify runs without a timeout, so batch rewards should go through `dapo_rewards(...,
    pool=GradingPool())`.
    """
    prefer = "answer" if accept_boxed else "answer_only"
    res = grade_completion(completion, gold, prefer=prefer, use_math_verify=use_math_verify, timeout=timeout)
    return (1.0, 1.0) if res.correct else (-1.0, 0.0)
