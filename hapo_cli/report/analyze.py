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

Only the saved sample of each step is read (the first 64 responses by default), so figures are
estimates over that sample, not over every token trained on.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


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


def step_files(run_dir: Path, first: int | None = None, last: int | None = None) -> list[tuple[int, Path]]:
    """(step, file) of the saved rollouts of a run within [first, last], in step order."""
    out = []
    for p in (Path(run_dir) / "rollouts").glob("step_*.jsonl"):
        m = _STEP_FILE.match(p.name)
        if not m:
            continue
        step = int(m.group(1))
        if (first is None or step >= first) and (last is None or step <= last):
            out.append((step, p))
    return sorted(out)


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (rank round(q * (n - 1)), as torch "nearest")."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _read(files: list[tuple[int, Path]]) -> list[tuple[int, dict[str, Any]]]:
    recs = []
    for step, path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise HapoError(f"{path}:{n} is not valid JSON ({err.msg}); the file may be cut short") from None
            recs.append((step, rec))
    return recs


def _pivots(run_dir: Path) -> dict[int, float]:
    """Step -> the step's entropy pivot Q (`stats/q`, log-entropy) from the run's metrics.jsonl."""
    p = Path(run_dir) / "metrics.jsonl"
    out: dict[int, float] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: the others still count
            q = rec.get("stats/q")
            if isinstance(q, (int, float)) and math.isfinite(q) and "step" in rec:
                out[int(rec["step"])] = float(q)
    return out


def _mark_high(step: int, rec: dict[str, Any], pivots: dict[int, float]) -> list[bool]:
    """Per token of a response: high-entropy (above its step's pivot; h > 0 without one)."""
    q = pivots.get(step)
    if q is None:
        return [h > 0 for h in rec.get("h", [])]
    return [math.log(max(e, 1e-8)) > q for e in rec.get("entropy", [])]


def _token_summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Entropy statistics of the tokens of `recs` (responses, each with its "_high" marks)."""
    ent = sorted(x for r in recs for x in r.get("entropy", []))
    hs = [x for r in recs for x in r["_high"]]
    acc = [float(r.get("acc", 0.0)) for r in recs]
    return {
        "responses": len(recs),
        "tokens": len(ent),
        "accuracy": _mean(acc),
        "entropy_mean": _mean(ent),
        "entropy_p50": quantile(ent, 0.5) if ent else math.nan,
        "entropy_p80": quantile(ent, 0.8) if ent else math.nan,
        "entropy_p95": quantile(ent, 0.95) if ent else math.nan,
        "entropy_max": ent[-1] if ent else math.nan,
        "high_entropy_share": sum(hs) / len(hs) if hs else math.nan,
    }


def analyze_run(run_dir: Path, first: int | None = None, last: int | None = None, top: int = 15,
                min_count: int = 5) -> dict[str, Any] | None:
    """The diagnostics of one run's saved rollouts in [first, last] (None if it saved none there).

    `top`: how many forking tokens to list; `min_count`: occurrences a token needs to be listed.
    """
    files = step_files(run_dir, first, last)
    if not files:
        return None
    stepped = _read(files)
    pivots = _pivots(run_dir)
    for step, r in stepped:
        r["_high"] = _mark_high(step, r, pivots)
    recs = [r for _, r in stepped]
    out: dict[str, Any] = {"run": str(run_dir), "steps": [files[0][0], files[-1][0]], "step_files": len(files)}
    out.update(_token_summary(recs))

    # length bias: response lengths by correctness, token-weighted advantage mass
    right = [len(r.get("tokens", [])) for r in recs if float(r.get("acc", 0.0)) > 0]
    wrong = [len(r.get("tokens", [])) for r in recs if float(r.get("acc", 0.0)) <= 0]
    adv = [a for r in recs for a in r.get("adv", [])]
    out["length"] = {"correct_mean": _mean(right), "wrong_mean": _mean(wrong),
                     "correct_responses": len(right), "wrong_responses": len(wrong)}
    out["advantage_mass"] = {"positive": sum(a for a in adv if a > 0), "negative": sum(a for a in adv if a < 0)}

    # ATS: sampling temperature of high-entropy tokens vs the others (same token positions)
    t_hi, t_lo = [], []
    for r in recs:
        for t, hi in zip(r.get("temperature", []), r["_high"]):
            (t_hi if hi else t_lo).append(t)
    out["temperature"] = {"high_mean": _mean(t_hi), "other_mean": _mean(t_lo), "mean": _mean(t_hi + t_lo)}

    # forking tokens: how often each token is high-entropy
    count: dict[str, int] = defaultdict(int)
    high: dict[str, int] = defaultdict(int)
    ent_sum: dict[str, float] = defaultdict(float)
    for r in recs:
        for tok, e, hi in zip(r.get("tokens", []), r.get("entropy", []), r["_high"]):
            count[tok] += 1
            ent_sum[tok] += e
            high[tok] += hi
    ranked = sorted((t for t in count if count[t] >= min_count and high[t] > 0),
                    key=lambda t: (-high[t], -ent_sum[t] / count[t], t))
    out["forking_tokens"] = [
        {"token": t, "count": count[t], "high": high[t], "high_share": high[t] / count[t],
         "entropy_mean": ent_sum[t] / count[t]} for t in ranked[:top]
    ]

    # early vs late: the analysed step files split in two halves (by file count)
    if len(files) >= 2:
        cut = files[(len(files) + 1) // 2 - 1][0]  # last step of the first half
        halves = [[r for s, r in stepped if s <= cut], [r for s, r in stepped if s > cut]]
        bounds = [[files[0][0], cut], [files[(len(files) + 1) // 2][0], files[-1][0]]]
        out["phases"] = [{"steps": b, **_token_summary(h)} for b, h in zip(bounds, halves)]
    else:
        out["phases"] = []
    return out


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _token_label(tok: str) -> str:
    return "`" + tok.replace("`", "'").replace("|", "\\|").replace("\n", "\\n") + "`"


def to_markdown(name: str, a: dict[str, Any]) -> str:
    """One run's diagnostics as Markdown."""
    lines = [
        f"## {name}",
        "",
        f"Steps {a['steps'][0]}-{a['steps'][1]} ({a['step_files']} rollout files): {a['responses']} responses, "
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
