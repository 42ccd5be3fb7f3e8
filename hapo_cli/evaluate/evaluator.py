"""The evaluator: one code path for `hapo eval` and the trainer's periodic validation.

`evaluate_rows` samples n responses per question from a rollout engine, grades them (math
benchmarks through the grading pool, the synthetic task with its own verifier) and returns the
summary (avg@n, pass@k, maj@n, mean length, truncated share). With `out_dir` it writes, as
questions finish:

    out_dir/samples.jsonl    one line per sample: id, sample, question, prompt (decoded), gold, completion, pred,
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
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hapo_cli import seeds
from hapo_cli.errors import HapoError
from hapo_cli.evaluate.metrics import default_k_list, summarize
from hapo_cli.rewards.pool import GradingPool
from hapo_cli.runs.files import atomic_write_json, atomic_write_text, read_jsonl
from hapo_cli.tasks import Task
from hapo_cli.tasks.prompts import uses_chat_template

log = logging.getLogger("hapo.eval")

CHUNK_SEQUENCES = 256  # responses per engine.generate call (engines may set `eval_chunk_sequences`)
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "eval_config.json"


def _notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


def _load_done(path: Path, n: int) -> dict[str, list[dict]]:
    """Complete questions in samples.jsonl (id -> its n records, in sample order).

    Partial questions and unreadable lines are dropped and the file is rewritten without them.
    """
    if not path.exists():
        return {}
    groups: dict[str, dict[int, dict]] = {}
    read = read_jsonl(path)  # a line cut short by a killed run is dropped
    dirty = read.torn
    for rec in read.records:
        try:
            groups.setdefault(str(rec["id"]), {})[int(rec["sample"])] = rec
        except (KeyError, TypeError, ValueError):
            dirty = True
    done = {qid: [g[i] for i in range(n)] for qid, g in groups.items() if set(g) == set(range(n))}
    if dirty or len(done) != len(groups):
        atomic_write_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for recs in done.values() for rec in recs))
    return done


def eval_settings(task: Task, label: str, n: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int) -> dict:
    """What eval_config.json records (a resumed folder must match it); greedy forces n=1, top_p=1."""
    if temperature <= 0:
        n, temperature = 1, 0.0
    return {"bench": label, "source": task.source, "n": n, "temperature": temperature,
            "top_p": top_p if temperature > 0 else 1.0, "max_new_tokens": max_new_tokens, "seed": seed,
            **task.describe()}


def check_settings(out: Path, cfg: dict) -> None:
    """Refuse a folder that holds results for other settings (one line); writes nothing."""
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


def _check_config(out: Path, cfg: dict) -> None:
    check_settings(out, cfg)
    atomic_write_json(out / CONFIG_FILE, cfg)


def _grading_pool(grader, task: Task) -> tuple[GradingPool | None, GradingPool | None]:
    """(pool to grade with, pool we own and must close) for `grader` (see evaluate_rows)."""
    if not task.needs_pool or grader == "inline":
        return None, None
    if grader is None:
        pool = GradingPool(num_workers=min(2, os.cpu_count() or 1))
        return pool, pool
    if isinstance(grader, GradingPool):
        return grader, None
    raise HapoError(f"grader must be None, 'inline' or a GradingPool, got {grader!r}")


def evaluate_rows(
    engine,
    tokenizer,
    rows: list[dict],
    *,
    task: Task,
    name: str | None = None,
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
        tokenizer: the model's tokenizer (prompts are encoded here, by the task).
        rows: [{"id", "question", "answer"}], ids unique.
        task: the `hapo_cli.tasks.Task` whose prompt and grading apply (`tasks.bench_task(...)` for
            a benchmark; the trainer passes its training task, so validation asks as training does).
        name: the label in summaries (default: the benchmark's name, else the task's).
        n, temperature, top_p, max_new_tokens: sampling (paper's validation: 8, 0.5, 0.7).
            temperature 0 is greedy and forces n = 1.
        k_list: pass@k to report (default: powers of two up to n, and n).
        seed: base seed (chunk i uses seed + i).
        out_dir: where per-sample JSONL and summary.json go; enables resume.
        progress: show a progress bar.
        grader: None (a private GradingPool when the task grades in a pool), a GradingPool to
            reuse, or "inline" (serial, in this process).

    Returns {"avg@n", "pass@k"..., "maj@n", "mean_length", "truncated_frac", "n_questions",
    "n_samples", "grading_timeouts", ...settings}; accuracies are fractions in [0, 1].
    """
    from hapo_cli.rollout.base import SamplingParams

    bench = getattr(task, "bench", None)
    label = name or (bench.name if bench is not None else task.name)
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
        raise HapoError(f"benchmark {label}: question ids are not unique")

    cfg = eval_settings(task, label, n, temperature, top_p, max_new_tokens, seed)
    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, list[dict]] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _check_config(out, cfg)
        done = _load_done(out / SAMPLES_FILE, n)
    pending_ids = {i for i in ids if i not in done}
    resumed = len(ids) - len(pending_ids)
    if resumed and progress:
        _notice(f"{label}: {resumed} of {len(ids)} questions already graded in {out}, skipping them")

    chunk_q = max(1, int(getattr(engine, "eval_chunk_sequences", CHUNK_SEQUENCES)) // n)
    t_gen = t_grade = 0.0
    n_timeouts_new = 0
    pool, own_pool = (None, None) if not pending_ids else _grading_pool(grader, task)
    bar = None
    if progress and pending_ids:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending_ids), desc=f"eval {label}", unit="q", file=sys.stderr)
    n_correct_new = n_samples_new = 0
    samples_f = (out / SAMPLES_FILE).open("a", encoding="utf-8") if (out is not None and pending_ids) else None
    try:
        for ci in range(0, len(rows), chunk_q):
            chunk = [r for r in rows[ci : ci + chunk_q] if str(r["id"]) in pending_ids]
            if not chunk:
                continue
            prompts = [task.prompt_ids(tokenizer, str(r["question"])) for r in chunk]
            prompt_texts = [tokenizer.decode(p) for p in prompts]  # what the model saw, special tokens included
            params = SamplingParams(
                n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                max_new_tokens=max_new_tokens, seed=seeds.eval_chunk(seed, ci // chunk_q),
            )
            t0 = time.monotonic()
            rollout = engine.generate(prompts, params)
            t_gen += time.monotonic() - t0
            if len(rollout.texts) != len(chunk) * n:
                raise HapoError(f"engine returned {len(rollout.texts)} responses for {len(chunk)} prompts x n={n}")
            golds = [str(r["answer"]) for r in chunk for _ in range(n)]
            t0 = time.monotonic()
            results = task.grade(list(rollout.texts), golds, pool)
            t_grade += time.monotonic() - t0
            lengths = [int(x) for x in rollout.response_mask.sum(-1).tolist()]
            for qi, r in enumerate(chunk):
                recs = []
                for s in range(n):
                    j = qi * n + s
                    g = results[j]
                    recs.append({
                        "id": str(r["id"]), "sample": s, "question": str(r["question"]), "prompt": prompt_texts[qi],
                        "gold": str(r["answer"]),
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
    summary = {"bench": label, **summarize(records, n, k_list)}
    if summary["grading_timeouts"]:
        log.warning("%s: %d answers hit the grading timeout and count as wrong", label, summary["grading_timeouts"])
    summary.update({
        "source": task.source, "n": n, "temperature": temperature, "top_p": cfg["top_p"],
        "max_new_tokens": max_new_tokens, "seed": seed, "prompt_style": cfg["prompt_style"],
        "chat_template_used": uses_chat_template(tokenizer, task.prompt.chat_template), "resumed_questions": resumed,
        "seconds_generate": round(t_gen, 3), "seconds_grade": round(t_grade, 3), **task.run_info(),
    })
    if out is not None:
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary

