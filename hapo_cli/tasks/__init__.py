"""Tasks: rows + the one prompt builder + verifier + validation split (tasks/base.py).

    task = build_task(cfg.data, cfg.model, seed)        # training (data.task=<name>)
    task = bench_task("aime24", prompt_style="boxed")   # evaluation of a benchmark
    path = model_path("tiny")                           # model aliases -> a loadable path

Add a task: a module here with a `Task` subclass, and one entry in TASKS (training) and, if
benchmarks use it, in BENCH_TASKS (keyed by `BenchSpec.grader`).
"""

from __future__ import annotations

from collections.abc import Callable

from hapo_cli.data.benchmarks import BenchSpec, load_bench_rows, resolve_bench
from hapo_cli.errors import HapoError
from hapo_cli.tasks.base import PromptFormat, Task
from hapo_cli.tasks.math import MathTask
from hapo_cli.tasks.synthetic import SyntheticTask

__all__ = ["BENCH_TASKS", "TASKS", "MathTask", "PromptFormat", "SyntheticTask", "Task", "bench_task",
           "build_task", "model_path"]


def _val_rows(data_cfg) -> list[dict]:
    return load_bench_rows(data_cfg.val_path, limit=data_cfg.val_size) if data_cfg.val_path else []


def _synthetic_task(data_cfg, model_cfg, seed: int) -> Task:
    from hapo_cli.data.train_data import load_train_rows

    rows = load_train_rows(data_cfg) if data_cfg.path else None
    val = _val_rows(data_cfg) if data_cfg.val_path else None
    return SyntheticTask(rows, val, max_train_rows=data_cfg.max_train_rows, val_size=data_cfg.val_size,
                         seed=seed, max_prompt_length=data_cfg.max_prompt_length,
                         source=data_cfg.path or "built in")


def _math_task(data_cfg, model_cfg, seed: int) -> Task:
    from hapo_cli.data.train_data import load_train_rows, train_source

    prompt = PromptFormat(template=data_cfg.prompt_template, chat_template="auto" if model_cfg.chat_template else "off",
                          max_length=data_cfg.max_prompt_length)
    # validation asks and grades exactly as training does (the training prompt, DAPO's Answer: rule)
    stats: dict = {}
    task = MathTask(prompt, style="answer", accept_boxed=data_cfg.accept_boxed, rows=load_train_rows(data_cfg, stats),
                    val_rows=_val_rows(data_cfg), source=train_source(data_cfg))
    task.data_stats = stats
    return task


TASKS: dict[str, Callable[..., Task]] = {
    "synthetic": _synthetic_task,  # the built-in addition task (or any file graded by its exact verifier)
    "math": _math_task,  # DAPO-Math-17k or a local table; DAPO's Answer: reward through math-verify
}
"""Training tasks by `data.task`: factory(data_cfg, model_cfg, seed) -> Task."""


def build_task(data_cfg, model_cfg, seed: int = 0) -> Task:
    try:
        factory = TASKS[data_cfg.task]
    except KeyError:
        raise HapoError(f"unknown data.task {data_cfg.task!r}; choose one of: {', '.join(TASKS)}") from None
    return factory(data_cfg, model_cfg, seed)


def _bench_synthetic(spec: BenchSpec, rows: list[dict], prompt_style: str | None, chat_template: str | None) -> Task:
    return SyntheticTask(rows=[], val_rows=rows, source=spec.source)


def _bench_math(spec: BenchSpec, rows: list[dict], prompt_style: str | None, chat_template: str | None) -> Task:
    style = prompt_style or spec.prompt_style
    prompt = PromptFormat(style=style, chat_template=chat_template or spec.chat_template)
    return MathTask(prompt, style=style, val_rows=rows, source=spec.source)


BENCH_TASKS: dict[str, Callable[..., Task]] = {"synthetic": _bench_synthetic, "math": _bench_math}
"""Benchmark tasks by `BenchSpec.grader`: factory(spec, rows, prompt_style, chat_template) -> Task."""


def bench_task(bench: str | BenchSpec, *, prompt_style: str | None = None, chat_template: str | None = None,
               rows: list[dict] | None = None, **load_kwargs) -> Task:
    """The Task of a benchmark; its `val_rows()` are the benchmark's rows (loaded unless given)."""
    spec = resolve_bench(bench)
    if rows is None:
        rows = load_bench_rows(spec, **load_kwargs)
    try:
        factory = BENCH_TASKS[spec.grader]
    except KeyError:
        raise HapoError(f"benchmark {spec.name}: no task grades {spec.grader!r} answers") from None
    task = factory(spec, rows, prompt_style, chat_template)
    task.bench = spec
    return task


def model_path(name_or_path: str) -> str:
    """`tiny` -> the cached built-in model (built on first use); else models.resolve_model_path."""
    if name_or_path == "tiny":
        from hapo_cli.data.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    from hapo_cli.models import resolve_model_path

    return resolve_model_path(name_or_path)
