"""`hapo analyze`: the paper's token-level diagnostics from a run's saved rollouts.

Every training step saves a sample of its rollouts (`save_rollouts`, on by default) to
`<run>/rollouts/step_NNNNNN.jsonl`: one response a line, with its tokens and, per token, the
entropy (nats), the normalised entropy h, the advantage and the sampling temperature. From them:

- the token entropy distribution (mean, nearest-rank quantiles) and the share of "high-entropy"
  tokens: above their step's pivot (`log H > Q`, i.e. z > 0 in hapo-spec 0, with Q = `stats/q`
  from metrics.jsonl; h > 0 where a step has no `stats/q`, which equals it in paper mode);
- forking tokens: the tokens that most often carry high entropy (the paper's "critical" tokens,
  where reasoning branches), with how often each occurrence is high-entropy and its mean entropy;
- length bias: mean response length of correct vs wrong answers, and the token-weighted sums of
  positive and negative advantages (with a token-mean loss, long wrong answers weigh more unless
  TLGA balances each group);
- the entropy / temperature trade-off of ATS: mean sampling temperature of high-entropy tokens
  vs the others (in paper mode ATS raises the first and lowers the second);
- early vs late: the first and second half of the analysed steps side by side (HAPO keeps the
  token entropy higher than DAPO as training goes on).

Only the saved sample of each step is read (the first 64 responses by default), and at most
`max_files` step files (evenly spaced; long runs of a real model save megabytes a step), so figures
are estimates over that sample, not over every token trained on.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError
from hapo_cli.runs.files import read_jsonl
from hapo_cli.runs.rollouts import read_rollouts, spread, step_files


def parse_steps(spec: str | None) -> tuple[int | None, int | None]:
    """`"A:B"`, `"A:"`, `":B"` or `"N"` -> inclusive (first, last) step bounds (None: open)."""
    if spec is None or spec.strip() == "":
        return None, None
    m = re.fullmatch(r"\s*(\d*)\s*(?::\s*(\d*)\s*)?", spec)
    if not m or (m.group(1) == "" and (m.group(2) or "") == ""):
        raise HapoError(f"--steps must look like 10:50, 10:, :50 or 25 (got {spec!r})")
    first = int(m.group(1)) if m.group(1) else None
    last = first if m.group(2) is None else (int(m.group(2)) if m.group(2) else None)
    if first is not None and last is not None and last < first:
        raise HapoError(f"--steps {spec!r}: the last step is before the first")
    return first, last


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (rank round(q * (n - 1)), as torch "nearest")."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


class _Tokens:
    """Running entropy statistics of a set of responses (entropies kept compactly for the quantiles)."""

    def __init__(self) -> None:
        self.entropy = array("d")
        self.high = 0
        self.marked = 0
        self.responses = 0
        self.correct = 0.0

    def add(self, rec: dict[str, Any], high: list[bool]) -> None:
        self.entropy.extend(rec.get("entropy", []))
        self.high += sum(high)
        self.marked += len(high)
        self.responses += 1
        self.correct += float(rec.get("acc", 0.0))

    def summary(self) -> dict[str, Any]:
        ent = sorted(self.entropy)
        return {
            "responses": self.responses,
            "tokens": len(ent),
            "accuracy": _ratio(self.correct, self.responses),
            "entropy_mean": _mean(ent),
            "entropy_p50": quantile(ent, 0.5) if ent else math.nan,
            "entropy_p80": quantile(ent, 0.8) if ent else math.nan,
            "entropy_p95": quantile(ent, 0.95) if ent else math.nan,
            "entropy_max": ent[-1] if ent else math.nan,
            "high_entropy_share": _ratio(self.high, self.marked),
        }


def _pivots(run_dir: Path) -> dict[int, float]:
    """Step -> the step's entropy pivot Q (`stats/q`, log-entropy) from the run's metrics.jsonl."""
    out: dict[int, float] = {}
    for rec in read_jsonl(Path(run_dir) / "metrics.jsonl").records:
        q = rec.get("stats/q")
        if isinstance(q, (int, float)) and math.isfinite(q) and "step" in rec:
            out[int(rec["step"])] = float(q)
    return out


def _mark_high(rec: dict[str, Any], q: float | None) -> list[bool]:
    """Per token of a response: high-entropy (above its step's pivot q; h > 0 without one)."""
    if q is None:
        return [h > 0 for h in rec.get("h", [])]
    return [math.log(max(e, 1e-8)) > q for e in rec.get("entropy", [])]


def analyze_run(run_dir: Path, first: int | None = None, last: int | None = None, top: int = 15,
                min_count: int = 5, max_files: int | None = None) -> dict[str, Any] | None:
    """The diagnostics of one run's saved rollouts in [first, last] (None if it saved none there).

    `top`: how many forking tokens to list; `min_count`: occurrences a token needs to be listed;
    `max_files`: read at most this many step files, evenly spaced (None: all). Files are read one
    response at a time; only the entropies are kept (for the quantiles).
    """
    available = step_files(run_dir, first, last)
    files = spread(available, max_files)
    if not files:
        return None
    pivots = _pivots(run_dir)
    half = (len(files) + 1) // 2  # files of the first half
    overall, phases = _Tokens(), [_Tokens(), _Tokens()]
    lengths = {True: [0, 0], False: [0, 0]}  # correct? -> [responses, tokens]
    adv_pos = adv_neg = 0.0
    temp = {True: [0.0, 0], False: [0.0, 0]}  # high-entropy? -> [sum, count]
    count: dict[str, int] = defaultdict(int)
    high: dict[str, int] = defaultdict(int)
    ent_sum: dict[str, float] = defaultdict(float)
    for i, (step, path) in enumerate(files):
        for rec in read_rollouts(path):
            marks = _mark_high(rec, pivots.get(step))
            overall.add(rec, marks)
            phases[0 if i < half else 1].add(rec, marks)
            ln = lengths[float(rec.get("acc", 0.0)) > 0]
            ln[0] += 1
            ln[1] += len(rec.get("tokens", []))
            for a in rec.get("adv", []):
                if a > 0:
                    adv_pos += a
                elif a < 0:
                    adv_neg += a
            for t, hi in zip(rec.get("temperature", []), marks):  # ATS: same token positions
                temp[hi][0] += t
                temp[hi][1] += 1
            for tok, e, hi in zip(rec.get("tokens", []), rec.get("entropy", []), marks):  # forking tokens
                count[tok] += 1
                ent_sum[tok] += e
                high[tok] += hi
    out: dict[str, Any] = {"run": str(run_dir), "steps": [files[0][0], files[-1][0]], "step_files": len(files),
                           "step_files_available": len(available)}
    out.update(overall.summary())
    out["length"] = {"correct_mean": _ratio(lengths[True][1], lengths[True][0]),
                     "wrong_mean": _ratio(lengths[False][1], lengths[False][0]),
                     "correct_responses": lengths[True][0], "wrong_responses": lengths[False][0]}
    out["advantage_mass"] = {"positive": adv_pos, "negative": adv_neg}
    out["temperature"] = {"high_mean": _ratio(*temp[True]), "other_mean": _ratio(*temp[False]),
                          "mean": _ratio(temp[True][0] + temp[False][0], temp[True][1] + temp[False][1])}
    ranked = sorted((t for t in count if count[t] >= min_count and high[t] > 0),
                    key=lambda t: (-high[t], -ent_sum[t] / count[t], t))
    out["forking_tokens"] = [
        {"token": t, "count": count[t], "high": high[t], "high_share": high[t] / count[t],
         "entropy_mean": ent_sum[t] / count[t]} for t in ranked[:top]
    ]
    # early vs late: the analysed step files in two halves
    if len(files) >= 2:
        bounds = [[files[0][0], files[half - 1][0]], [files[half][0], files[-1][0]]]
        out["phases"] = [{"steps": b, **p.summary()} for b, p in zip(bounds, phases)]
    else:
        out["phases"] = []
    return out


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _files(a: dict[str, Any]) -> str:
    n, total = a["step_files"], a.get("step_files_available", a["step_files"])
    return f"{n} rollout files" if n == total else f"{n} of {total} rollout files, evenly spaced"


def _token_label(tok: str) -> str:
    return "`" + tok.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def to_markdown(name: str, a: dict[str, Any]) -> str:
    """One run's diagnostics as Markdown."""
    lines = [
        f"## {name}",
        "",
        f"Steps {a['steps'][0]}-{a['steps'][1]} ({_files(a)}): {a['responses']} responses, "
        f"{a['tokens']} tokens, accuracy {_f(a['accuracy'])}.",
        "",
        "| token entropy (nats) | mean | p50 | p80 | p95 | max | high-entropy share (above the pivot) |",
        "|---|---|---|---|---|---|---|",
        f"| all tokens | {_f(a['entropy_mean'])} | {_f(a['entropy_p50'])} | {_f(a['entropy_p80'])} | "
        f"{_f(a['entropy_p95'])} | {_f(a['entropy_max'])} | {_f(a['high_entropy_share'])} |",
    ]
    for ph in a["phases"]:
        lines.append(f"| steps {ph['steps'][0]}-{ph['steps'][1]} | {_f(ph['entropy_mean'])} | {_f(ph['entropy_p50'])} | "
                     f"{_f(ph['entropy_p80'])} | {_f(ph['entropy_p95'])} | {_f(ph['entropy_max'])} | "
                     f"{_f(ph['high_entropy_share'])} |")
    ln, am, tp = a["length"], a["advantage_mass"], a["temperature"]
    lines += [
        "",
        f"Length bias: correct answers {_f(ln['correct_mean'], 1)} tokens on average ({ln['correct_responses']} "
        f"responses), wrong ones {_f(ln['wrong_mean'], 1)} ({ln['wrong_responses']}); advantage mass over tokens "
        f"+{_f(am['positive'], 2)} / {_f(am['negative'], 2)}.",
        f"Sampling temperature: {_f(tp['high_mean'])} on high-entropy tokens, {_f(tp['other_mean'])} on "
        f"the others (equal without ATS).",
    ]
    if a["forking_tokens"]:
        lines += ["", "Forking tokens (most often high-entropy):", "",
                  "| token | occurrences | high-entropy | share | mean entropy |", "|---|---|---|---|---|"]
        for ft in a["forking_tokens"]:
            lines.append(f"| {_token_label(ft['token'])} | {ft['count']} | {ft['high']} | {_f(ft['high_share'], 2)} | "
                         f"{_f(ft['entropy_mean'])} |")
    return "\n".join(lines) + "\n"
