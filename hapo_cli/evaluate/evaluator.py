"""The evaluator: one code path for `hapo eval` and the trainer's periodic validation.

`evaluate_rows` samples n responses per question from a rollout engine, grades them (math
benchmarks through the grading pool, the synthetic task with its own verifier) and returns the
summary (avg@n, pass@k, maj@n, mean length, truncated share). With `out_dir` it writes, as
questions finish:

    out_dir/samples.jsonl    one line per sample: id, sample, question, gold, completion, pred,
                             pred_norm, verdict, correct, method, length, finish_reason
    out_dir/eval_config.json the sampling settings (a resumed run must use the same ones)
    out_dir/summary.json     the summary, rewritten atomically at the end

Resume: questions whose n samples are all in samples.jsonl are not generated again; partial or
corrupt trailing lines (a killed run) are dropped first. Questions are generated in fixed chunks
with seed `seed + chunk index`, so a resumed run is statistically equivalent to an uninterrupted
one (bitwise only when the same chunks are pending).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from hapo_cli.data.benchmarks import BenchSpec, resolve_bench
from hapo_cli.errors import HapoError
from hapo_cli.evaluate.metrics import default_k_list, summarize
from hapo_cli.evaluate.prompts import GRADING_PREFER, encode_prompt, prompt_text, uses_chat_template
from hapo_cli.rewards.pool import GradingPool, grade_many
from hapo_cli.rewards.verify import GradeResult

log = logging.getLogger("hapo.eval")

CHUNK_SEQUENCES = 256  # responses per engine.generate call (engines may set `eval_chunk_sequences`)
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "eval_config.json"
_SYNTH_ANSWER = re.compile(r"^\s*(-?\d+)")


def _notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _load_done(path: Path, n: int) -> dict[str, list[dict]]:
    """Complete questions in samples.jsonl (id -> its n records, in sample order).

    Partial questions and unreadable lines are dropped and the file is rewritten without them.
    """
    if not path.exists():
        return {}
    groups: dict[str, dict[int, dict]] = {}
    dirty = False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                groups.setdefault(str(rec["id"]), {})[int(rec["sample"])] = rec
            except (ValueError, KeyError, TypeError):
                dirty = True  # a line cut short by a killed run
    done = {qid: [g[i] for i in range(n)] for qid, g in groups.items() if set(g) == set(range(n))}
    if dirty or len(done) != len(groups):
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for recs in done.values():
                for rec in recs:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return done


def _check_config(out: Path, cfg: dict) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.items() if k in old and old.get(k) != v]
        if diff:
            raise HapoError(
                f"{out} holds results for other settings ({'; '.join(diff)}): use another --out or delete it"
            )
    _atomic_write_json(path, cfg)


def _make_grade_fn(grader, spec: BenchSpec) -> tuple[Callable | None, GradingPool | None]:
    """(grade function(texts, golds, prefer) -> list[GradeResult], pool we own and must close)."""
    if spec.grader == "synthetic":
        return None, None
    if grader is None:
        pool = GradingPool(num_workers=min(2, os.cpu_count() or 1))
        return (lambda t, g, p: pool.grade(t, g, prefer=p)), pool
    if isinstance(grader, GradingPool):
        return (lambda t, g, p: grader.grade(t, g, prefer=p)), None
    if grader == "inline":
        return (lambda t, g, p: grade_many(t, g, prefer=p)), None
    if callable(grader):
        return (lambda t, g, p: grader(t, g, prefer=p)), None
    raise HapoError(f"grader must be None, 'inline', a GradingPool or a callable, got {grader!r}")


def _grade_synthetic(texts: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
    from hapo_cli.data import synthetic

    out = []
    for t, g in zip(texts, golds):
        m = _SYNTH_ANSWER.match(t or "")
        pred = m.group(1) if m else None
        ok = bool(synthetic.verify(t or "", g))
        out.append(GradeResult(ok, pred, pred or "", "verifier"))
    return out


def evaluate_rows(
    engine,
    tokenizer,
    rows: list[dict],
    *,
    bench,
    n: int = 8,
    temperature: float = 0.5,
    top_p: float = 0.7,
    max_new_tokens: int = 1024,
    k_list: Sequence[int] | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    grader=None,
) -> dict:
    """Sample `n` responses per row from `engine`, grade them and return the summary dict.

    Args:
        engine: a `hapo_cli.rollout.base.RolloutEngine`.
        tokenizer: the model's tokenizer (prompts are encoded here).
        rows: [{"id", "question", "answer"}], ids unique.
        bench: a `BenchSpec` or registry name/path: decides prompt style, chat template, grading.
        n, temperature, top_p, max_new_tokens: sampling (paper's validation: 8, 0.5, 0.7).
            temperature 0 is greedy and forces n = 1.
        k_list: pass@k to report (default: powers of two up to n, and n).
        seed: base seed (chunk i uses seed + i).
        out_dir: where per-sample JSONL and summary.json go; enables resume.
        progress: show a progress bar.
        grader: None (a private GradingPool for math benchmarks), a GradingPool to reuse,
            "inline" (serial, in this process) or a callable(texts, golds, prefer=...) returning
            GradeResults.

    Returns {"avg@n", "pass@k"..., "maj@n", "mean_length", "truncated_frac", "n_questions",
    "n_samples", "grading_timeouts", ...settings}; accuracies are fractions in [0, 1].
    """
    from hapo_cli.rollout.base import SamplingParams

    spec = resolve_bench(bench)
    if n < 1:
        raise HapoError(f"n must be >= 1, got {n}")
    if temperature <= 0:
        if n != 1:
            _notice(f"temperature {temperature:g} is greedy decoding: n forced from {n} to 1")
        n, temperature = 1, 0.0
    k_list = sorted(set(k_list)) if k_list else default_k_list(n)
    if any(not 1 <= k <= n for k in k_list):
        raise HapoError(f"pass@k needs 1 <= k <= n={n}; got k_list={list(k_list)}")
    ids = [str(r.get("id")) for r in rows]
    missing = [i for i, r in enumerate(rows) if not {"id", "question", "answer"} <= set(r)]
    if missing:
        raise HapoError(f"rows need id, question and answer keys (row {missing[0]} has {sorted(rows[missing[0]])})")
    if len(set(ids)) != len(ids):
        raise HapoError(f"benchmark {spec.name}: question ids are not unique")

    cfg = {
        "bench": spec.name, "source": spec.source, "n": n, "temperature": temperature,
        "top_p": top_p if temperature > 0 else 1.0, "max_new_tokens": max_new_tokens, "seed": seed,
        "prompt_style": spec.prompt_style, "chat_template": spec.chat_template, "grader": spec.grader,
    }
    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, list[dict]] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_config(out, cfg)
        done = _load_done(out / SAMPLES_FILE, n)
    pending_ids = {i for i in ids if i not in done}
    resumed = len(ids) - len(pending_ids)
    if resumed and progress:
        _notice(f"{spec.name}: {resumed} of {len(ids)} questions already graded in {out}, skipping them")

    synthetic = spec.grader == "synthetic"
    if synthetic:
        from hapo_cli.data import synthetic as synth_task
    chat = False if synthetic else uses_chat_template(tokenizer, spec.chat_template)
    prefer = GRADING_PREFER.get(spec.prompt_style, "boxed")
    chunk_q = max(1, int(getattr(engine, "eval_chunk_sequences", CHUNK_SEQUENCES)) // n)
    t_gen = t_grade = 0.0
    n_timeouts_new = 0
    grade_fn, own_pool = (None, None) if not pending_ids else _make_grade_fn(grader, spec)
    bar = None
    if progress and pending_ids:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending_ids), desc=f"eval {spec.name}", unit="q", file=sys.stderr)
    n_correct_new = n_samples_new = 0
    samples_f = (out / SAMPLES_FILE).open("a", encoding="utf-8") if (out is not None and pending_ids) else None
    try:
        for ci in range(0, len(rows), chunk_q):
            chunk = [r for r in rows[ci : ci + chunk_q] if str(r["id"]) in pending_ids]
            if not chunk:
                continue
            texts_in = [
                synth_task.format_prompt(str(r["question"])) if synthetic else prompt_text(str(r["question"]), spec.prompt_style)
                for r in chunk
            ]
            if synthetic:  # exactly the warm-start encoding of the tiny model: no special tokens
                prompts = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts_in]
            else:
                prompts = [encode_prompt(tokenizer, t, chat=chat) for t in texts_in]
            params = SamplingParams(
                n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                max_new_tokens=max_new_tokens, seed=seed + ci // chunk_q,
            )
            t0 = time.monotonic()
            rollout = engine.generate(prompts, params)
            t_gen += time.monotonic() - t0
            if len(rollout.texts) != len(chunk) * n:
                raise HapoError(f"engine returned {len(rollout.texts)} responses for {len(chunk)} prompts x n={n}")
            golds = [str(r["answer"]) for r in chunk for _ in range(n)]
            t0 = time.monotonic()
            if synthetic:
                results = _grade_synthetic(rollout.texts, golds)
            else:
                results = grade_fn(list(rollout.texts), golds, prefer)
            t_grade += time.monotonic() - t0
            lengths = [int(x) for x in rollout.response_mask.sum(-1).tolist()]
            for qi, r in enumerate(chunk):
                recs = []
                for s in range(n):
                    j = qi * n + s
                    g = results[j]
                    recs.append({
                        "id": str(r["id"]), "sample": s, "question": str(r["question"]), "gold": str(r["answer"]),
                        "completion": rollout.texts[j], "pred": g.pred, "pred_norm": g.pred_norm,
                        "verdict": g.verdict, "correct": bool(g.correct), "method": g.method,
                        "length": lengths[j], "finish_reason": rollout.finish_reasons[j],
                    })
                    n_timeouts_new += int(g.timed_out)
                done[str(r["id"])] = recs
                n_correct_new += sum(x["correct"] for x in recs)
                n_samples_new += n
                if samples_f is not None:
                    samples_f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in recs))
                    samples_f.flush()
                    os.fsync(samples_f.fileno())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{n_correct_new / max(1, n_samples_new):.3f}")
    finally:
        if bar is not None:
            bar.close()
        if samples_f is not None:
            samples_f.close()
        if own_pool is not None:
            own_pool.close()

    records = []
    for qid in ids:
        recs = done[qid]
        records.append({
            "correct": [x["correct"] for x in recs],
            "answers": [x.get("pred_norm") or None for x in recs],
            "lengths": [x["length"] for x in recs],
            "truncated": [x.get("finish_reason") == "length" for x in recs],
            "timeouts": sum(x.get("verdict") == "timeout" for x in recs),
        })
    summary = {"bench": spec.name, **summarize(records, n, k_list)}
    if summary["grading_timeouts"]:
        log.warning("%s: %d answers hit the grading timeout and count as wrong", spec.name, summary["grading_timeouts"])
    summary.update({
        "source": spec.source, "n": n, "temperature": temperature, "top_p": cfg["top_p"],
        "max_new_tokens": max_new_tokens, "seed": seed, "prompt_style": spec.prompt_style,
        "chat_template_used": chat, "resumed_questions": resumed,
        "seconds_generate": round(t_gen, 3), "seconds_grade": round(t_grade, 3),
    })
    if out is not None:
        _atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def with_prompt(spec: BenchSpec | str, *, prompt_style: str | None = None, chat_template: str | None = None) -> BenchSpec:
    """The spec with a different prompt style / chat-template mode (the synthetic task keeps its own)."""
    spec = resolve_bench(spec)
    changes = {}
    if prompt_style is not None and spec.grader != "synthetic":
        changes["prompt_style"] = prompt_style
    if chat_template is not None:
        changes["chat_template"] = chat_template
    return replace(spec, **changes) if changes else spec
