"""`hapo eval`: avg@n / pass@k / maj@n of a model on one or more benchmarks.

    hapo eval --bench aime24,math500 --model PATH [--n 8] [--temperature 0.5] [--top-p 0.7]
              [--max-new-tokens N] [--out DIR] [--limit N] [--prompt boxed|answer|raw]
              [--engine hf|vllm] [--wandb] [key=value ...]
    hapo eval --runs runs/sweeps/paper_main --bench aime24,...  [--checkpoint final|best]

Each benchmark gets its own section and folder (DIR/<bench>/samples.jsonl, summary.json);
DIR/results.md and DIR/summary.json hold the table of all of them, which is also printed at
the end. Running again with the same --out resumes: graded questions are not generated again.
With --runs, each run's checkpoint is evaluated into <run>/eval/<checkpoint>/ (resumable the same
way), which `hapo report` reads for the paper's table. Everything that needs no model (settings,
device, engine, data, output folders, resume settings, the Hub) is checked before a model loads.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import typer

from hapo_cli.errors import HapoError

_PCT_KEYS = ("avg@", "pass@", "maj@")


def _fmt(key: str, value) -> str:
    if isinstance(value, float) and key.startswith(_PCT_KEYS + ("truncated",)):
        return f"{100 * value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def results_table(summaries: list[dict]) -> str:
    """Markdown table of per-benchmark summaries (accuracies in percent)."""
    if not summaries:
        return ""
    n = summaries[0]["n"]
    metric_keys = [f"avg@{n}"] + [k for k in summaries[0] if k.startswith("pass@")] + [f"maj@{n}"]
    head = ["bench", "questions", *metric_keys, "mean len", "truncated %", "grading timeouts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s["bench"], str(s["n_questions"])] + [_fmt(k, s.get(k, float("nan"))) for k in metric_keys]
        cells += [f"{s['mean_length']:.1f}", f"{100 * s['truncated_frac']:.2f}", str(s["grading_timeouts"])]
        lines.append("| " + " | ".join(cells) + " |")
    if len(summaries) > 1:
        mean = sum(s[f"avg@{n}"] for s in summaries) / len(summaries)
        lines.append(f"\naverage avg@{n} over {len(summaries)} benchmarks: {100 * mean:.2f}")
    return "\n".join(lines)


def _default_out(model: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model.rstrip("/")).name or model) or "model"
    return Path("runs") / "eval" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _wandb_log(cfg, out: Path, summaries: list[dict], table: str) -> None:
    from hapo_cli.runs.wandb import WandbLogger

    run = WandbLogger(out, {k: v for k, v in vars(cfg).items()}, project=cfg.wandb_project, job_type="eval")
    run.log({f"eval/{s['bench']}/{k}": v for s in summaries for k, v in s.items() if isinstance(v, (int, float))})
    cols = ["bench"] + [k for k, v in summaries[0].items() if isinstance(v, (int, float)) and k != "bench"]
    run.log_table("eval/results", cols, [[s.get(c) for c in cols] for s in summaries])
    run.set_summary("results_markdown", table)
    run.finish()


def _validate(cfg) -> None:
    """Check numbers before anything slow happens (one line per problem)."""
    checks = [
        (cfg.n >= 1, f"n must be >= 1, got {cfg.n}"),
        (cfg.temperature >= 0, f"temperature must be >= 0, got {cfg.temperature}"),
        (0 < cfg.top_p <= 1, f"top_p must be in (0, 1], got {cfg.top_p}"),
        (cfg.max_new_tokens is None or cfg.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}"),
        (cfg.limit is None or cfg.limit >= 1, f"limit must be >= 1, got {cfg.limit}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.grading_workers >= 0, f"grading_workers must be >= 0, got {cfg.grading_workers}"),
        (cfg.grading_timeout > 0, f"grading_timeout must be > 0, got {cfg.grading_timeout}"),
    ]
    n_eff = 1 if cfg.temperature == 0 else cfg.n
    if cfg.k_list:
        checks.append((all(1 <= k <= n_eff for k in cfg.k_list), f"k_list values must be in 1..n={n_eff}, got {cfg.k_list}"))
    for ok, msg in checks:
        if not ok:
            raise HapoError(msg)


def _load_benches(cfg) -> list[tuple[str, object]]:
    """(label, Task) per benchmark, rows loaded: a missing one fails before the model loads."""
    from hapo_cli.tasks import bench_task

    names = [b.strip() for b in str(cfg.bench).split(",") if b.strip()]
    if not names:
        raise HapoError("give at least one benchmark: --bench aime24[,math500,...] or a local file")
    out, seen = [], set()
    for name in names:
        task = bench_task(name, prompt_style=cfg.prompt, chat_template=cfg.chat_template, limit=cfg.limit,
                          seed=cfg.seed, question_key=cfg.question_key, answer_key=cfg.answer_key, id_key=cfg.id_key)
        key = task.bench.name
        while key in seen:
            key = f"{key}_"
        seen.add(key)
        out.append((key, task))
    return out


def _build_engine(cfg, path: str):
    """(engine, tokenizer) for the model: the hf engine on the loaded module, or vllm on its folder."""
    from hapo_cli.models import load_model_and_tokenizer, load_tokenizer, resolve_device
    from hapo_cli.rollout.factory import EngineSettings, build_engine

    settings = EngineSettings(engine=cfg.engine, batch_size=cfg.batch_size, dtype=cfg.dtype, seed=cfg.seed, colocated=False)
    if cfg.engine == "vllm":
        tokenizer = load_tokenizer(path)
        return build_engine(settings, None, tokenizer, model_path=path), tokenizer
    model, tokenizer = load_model_and_tokenizer(path, dtype=cfg.dtype, device=resolve_device(cfg.device))
    model.eval()
    return build_engine(settings, model, tokenizer, model_path=path), tokenizer


def _check_options(cfg) -> None:
    """Settings, engine and device: everything that needs neither data nor a model."""
    from hapo_cli.preflight import check_device, check_engine
    from hapo_cli.rollout.factory import ENGINES
    from hapo_cli.tasks.prompts import CHAT_TEMPLATE_MODES, PROMPT_STYLES

    if cfg.engine not in ENGINES:
        raise HapoError(f"unknown engine {cfg.engine!r}: choose from {', '.join(ENGINES)}")
    if cfg.prompt is not None and cfg.prompt not in PROMPT_STYLES:
        raise HapoError(f"unknown prompt style {cfg.prompt!r}: choose from {', '.join(PROMPT_STYLES)}")
    if cfg.chat_template not in CHAT_TEMPLATE_MODES:
        raise HapoError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {cfg.chat_template!r}")
    _validate(cfg)
    check_device(cfg.device, "--device")
    check_engine(cfg.engine, "--engine")


def _prepare_out(out: Path) -> None:
    """The output folder exists (created) and is a writable folder: one line otherwise."""
    if out.exists() and not out.is_dir():
        raise HapoError(f"--out {str(out)!r} is a file, not a folder: give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hapo-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise HapoError(f"cannot write the output folder {str(out)!r} ({err.strerror or err}): choose another --out") from None


def _check_resume(cfg, out: Path, benches) -> None:
    """A folder that holds results of other settings is refused now, not after the model loads."""
    from hapo_cli.evaluate.evaluator import check_settings, eval_settings

    for key, task in benches:
        mnt = cfg.max_new_tokens or task.bench.max_new_tokens
        check_settings(out / key, eval_settings(task, key, cfg.n, cfg.temperature, cfg.top_p, mnt, cfg.seed))


def _model_source(model: str) -> str:
    """The model's folder (tiny built on first use) or Hub id; a Hub id offline fails here at once."""
    from hapo_cli.models import ensure_reachable
    from hapo_cli.tasks import model_path

    return model_path(model) if model == "tiny" else ensure_reachable(model)


def run_eval(cfg, benches=None) -> list[dict]:
    """Everything `hapo eval` does, from a composed EvalConfig; returns the per-bench summaries.

    Every check that needs no model runs first (settings, device, engine, data, output folder,
    resume settings, the model's folder or the Hub), so a run that cannot work fails in a second."""
    from hapo_cli.evaluate.evaluator import evaluate_rows
    from hapo_cli.rewards.pool import GradingPool
    from hapo_cli.runs.files import atomic_write_json, atomic_write_text
    from hapo_cli.runs.rundir import write_meta

    _check_options(cfg)
    benches = benches if benches is not None else _load_benches(cfg)
    out = Path(cfg.out) if cfg.out else _default_out(cfg.model)
    if out.exists() and not out.is_dir():
        raise HapoError(f"--out {str(out)!r} is a file, not a folder: give a folder path")
    if out.is_dir():
        _check_resume(cfg, out, benches)
    path = _model_source(cfg.model)
    _prepare_out(out)
    pool = None
    if any(task.needs_pool for _, task in benches):
        pool = GradingPool(num_workers=cfg.grading_workers, timeout=cfg.grading_timeout).start()  # boots while the model loads
    summaries = []
    try:
        engine, tokenizer = _build_engine(cfg, path)
        write_meta(out, sys.argv, **{k: v for _, task in benches for k, v in task.run_info().items()})
        for key, task in benches:
            rows = task.val_rows()
            typer.secho(f"\n== {key}: {len(rows)} questions from {task.source} ==", bold=True, err=True)
            summary = evaluate_rows(
                engine, tokenizer, rows, task=task, name=key, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens or task.bench.max_new_tokens, k_list=cfg.k_list, seed=cfg.seed,
                out_dir=out / key, progress=cfg.progress, grader=pool,
            )
            summary["bench"] = key
            summary["model"] = cfg.model
            n = summary["n"]
            line = ", ".join(f"{k} {100 * summary[k]:.2f}" for k in summary if k.startswith(_PCT_KEYS))
            typer.echo(f"{key}: {line}, mean length {summary['mean_length']:.1f}, "
                       f"truncated {100 * summary['truncated_frac']:.2f}% (n={n}, {out / key})", err=True)
            summaries.append(summary)
    finally:
        if pool is not None:
            pool.close()
    table = results_table(summaries)
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_json(out / "summary.json", summaries)
    typer.echo(f"\nResults ({cfg.model}; accuracies in %, n={summaries[0]['n']}, T={summaries[0]['temperature']:g}, "
               f"top_p={summaries[0]['top_p']:g}); written to {out}\n")
    typer.echo(table)
    if cfg.wandb:
        _wandb_log(cfg, out, summaries, table)
    return summaries


# ---- hapo eval --runs: each run's final (or best) checkpoint, results inside the run folder

EVAL_DIR = "eval"  # <run>/eval/<checkpoint name>/ holds that checkpoint's results (summary.json, <bench>/)
CHECKPOINTS = ("final", "best")


def find_runs(paths: str) -> list[Path]:
    """Run folders under comma-separated paths: a sweep (its planned runs), a run, or a folder of them."""
    from hapo_cli.runs import sweep as st

    def is_run(p: Path) -> bool:
        return (p / "config.yaml").is_file() or (p / "checkpoints").is_dir()

    out: list[Path] = []
    for raw in [x.strip() for x in str(paths).split(",") if x.strip()]:
        p = Path(raw)
        if not p.is_dir():
            raise HapoError(f"--runs {raw!r} is not a folder: give run folders, sweep folders or a folder of them")
        if st.is_sweep_dir(p):
            out += [p / r["id"] for r in st.load_state(p)["runs"]]
        elif is_run(p):
            out.append(p)
        else:
            kids = sorted(c for c in p.iterdir() if c.is_dir())
            found = [c for c in kids if is_run(c) or st.is_sweep_dir(c)]
            if not found:
                raise HapoError(f"--runs {raw!r} holds no run (config.yaml) or sweep (sweep.json), nor folders of them")
            out += find_runs(",".join(str(c) for c in found))
    return out


def pick_checkpoint(run_dir: Path, which: str) -> tuple[Path | None, str]:
    """(checkpoint folder, why none) for `final` (LATEST, else the highest step) or `best` (the
    step of the highest validation of the run's val_metric that still has a checkpoint)."""
    import json

    from hapo_cli.runs.files import read_jsonl

    root = run_dir / "checkpoints"
    have = sorted(p for p in root.glob("step_*") if (p / "config.json").is_file()) if root.is_dir() else []
    if not have:
        return None, "no checkpoint (not started, or failed before its first save)"
    if which == "final":
        pointer = root / "LATEST"
        named = root / pointer.read_text().strip() if pointer.is_file() else None
        return (named if named in have else have[-1]), ""
    summary = run_dir / "summary.json"
    key = json.loads(summary.read_text()).get("val_metric") if summary.is_file() else None
    vals = {int(r["step"]): float(r[key]) for r in read_jsonl(run_dir / "metrics.jsonl").records
            if key and key in r and "step" in r}
    by_step = {int(p.name.removeprefix("step_")): p for p in have}
    scored = [(v, s) for s, v in vals.items() if s in by_step]
    if not scored:
        return None, (f"no checkpoint at a validated step (validations at {sorted(vals) or 'none'}, checkpoints at "
                      f"{sorted(by_step)}): keep more (trainer.keep_checkpoints) or use --checkpoint final")
    best_value, best_step = max(scored, key=lambda t: (t[0], t[1]))
    return by_step[best_step], ""


def eval_runs(cfg) -> list[tuple[Path, list[dict]]]:
    """`hapo eval --runs`: every run's checkpoint on the benchmarks, into <run>/eval/<checkpoint>/."""
    from dataclasses import replace

    if cfg.checkpoint not in CHECKPOINTS:
        raise HapoError(f"--checkpoint {cfg.checkpoint!r}: choose final or best")
    if cfg.out:
        raise HapoError("--out does not apply to --runs: results go into each run's folder (<run>/eval/<checkpoint>/)")
    if cfg.model not in (None, "tiny"):
        raise HapoError("give --runs or --model, not both (--runs evaluates each run's own checkpoint)")
    _check_options(cfg)
    runs = find_runs(cfg.runs)
    plan, skipped = [], []
    for rd in runs:
        ckpt, why = pick_checkpoint(rd, cfg.checkpoint)
        (plan.append((rd, ckpt)) if ckpt is not None else skipped.append(f"{rd}: {why}"))
    for line in skipped:
        typer.echo(f"skipped {line}", err=True)
    if not plan:
        raise HapoError(f"no run under {cfg.runs} has a checkpoint to evaluate ({len(skipped)} without one)")
    benches = _load_benches(cfg)
    for rd, ckpt in plan:  # every folder checked before the first model loads
        out = rd / EVAL_DIR / ckpt.name
        _prepare_out(out)
        _check_resume(cfg, out, benches)
    results = []
    for i, (rd, ckpt) in enumerate(plan, 1):
        typer.secho(f"\n=== [{i}/{len(plan)}] {rd} ({ckpt.name}, --checkpoint {cfg.checkpoint}) ===", bold=True, err=True)
        sub = replace(cfg, model=str(ckpt), out=str(rd / EVAL_DIR / ckpt.name), runs=None, wandb=False)
        results.append((rd, run_eval(sub, benches)))
    typer.echo(f"\nhapo eval: {len(plan)} run(s) evaluated ({cfg.checkpoint} checkpoint), {len(skipped)} skipped; "
               f"tables: hapo report {cfg.runs.split(',')[0]}", err=True)
    return results


def eval_command(
    ctx: typer.Context,
    bench: str = typer.Option(None, "--bench", "-b", help="Benchmarks, comma-separated: aime24, aime25, amc23, math500, "
                              "olympiadbench, minerva, synthetic, logic, kk-2ppl..kk-8ppl, humaneval, mbpp, livecodebench, a local "
                              ".parquet/.jsonl/.json file, or name=file "
                              "(a registry benchmark read from a local copy). Default: synthetic."),
    model: str = typer.Option(None, "--model", "-m", help="Model folder, Hub id, or 'tiny' (the built-in tiny model; default)."),
    n: int = typer.Option(None, "--n", help="Samples per question (default 8)."),
    temperature: float = typer.Option(None, "--temperature", "-t", help="Sampling temperature (default 0.5); 0 = greedy (n forced to 1)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling mass (default 0.7)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Response length cap (default: 1024 for maths, 8 for synthetic)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default runs/eval/<model>-<time>); the same folder resumes."),
    limit: int = typer.Option(None, "--limit", help="Only the first N questions of each benchmark."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt style: boxed (\\boxed{} instruction), answer (DAPO 'Answer:' line) or raw."),
    engine: str = typer.Option(None, "--engine", help="Generation engine: hf (default) or vllm."),
    wandb: bool = typer.Option(None, "--wandb/--no-wandb", help="Log results to Weights & Biases (offline without credentials)."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:N."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (default 0)."),
    runs: str = typer.Option(None, "--runs", help="Evaluate runs instead of --model: run folders, sweep folders or "
                             "folders of them (comma-separated); results go into <run>/eval/<checkpoint>/."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="With --runs: final (default; the last checkpoint) or "
                                   "best (the checkpoint of the best validation)."),
    help_config: bool = typer.Option(False, "--help-config", help="Print every setting with its default and meaning, and exit."),
) -> None:
    """Evaluate a model on math, logic or code benchmarks: avg@n, pass@k, maj@n, length, truncation.

    Extra KEY=VALUE Hydra overrides set any setting, e.g. k_list=[1,4,8] chat_template=off grading_timeout=20 question_key=problem batch_size=16 dtype=bfloat16 (all of them: --help-config).
    """
    from hapo_cli.evaluate.config import EvalConfig, compose_eval_config

    if help_config:
        from hapo_cli.config import format_field_docs

        typer.echo(format_field_docs(EvalConfig))
        return
    options = dict(bench=bench, model=model, n=n, temperature=temperature, top_p=top_p,
                   max_new_tokens=max_new_tokens, out=out, limit=limit, prompt=prompt, engine=engine,
                   wandb=wandb, device=device, seed=seed, runs=runs, checkpoint=checkpoint)
    cfg = compose_eval_config(options, list(ctx.args))
    if cfg.runs:
        eval_runs(cfg)
    else:
        run_eval(cfg)


def _settings_help() -> str:
    from hapo_cli.evaluate.config import valid_keys

    return "\n\nAll settings (as key=value): " + ", ".join(valid_keys()) + " (documented in hapo_cli/evaluate/config.py)."


eval_command.__doc__ = (eval_command.__doc__ or "") + _settings_help()
