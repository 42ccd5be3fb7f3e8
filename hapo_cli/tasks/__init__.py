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


def _logic_task(data_cfg, model_cfg, seed: int) -> Task:
    from hapo_cli.data.train_data import load_train_rows
    from hapo_cli.tasks.logic import LogicTask

    prompt = PromptFormat(template=data_cfg.prompt_template, chat_template="auto" if model_cfg.chat_template else "off",
                          max_length=data_cfg.max_prompt_length)
    return LogicTask(prompt, rows=load_train_rows(data_cfg) if data_cfg.path else None,
                     val_rows=_val_rows(data_cfg) if data_cfg.val_path else None, people=data_cfg.logic_people,
                     depth=data_cfg.logic_depth, n_train=data_cfg.max_train_rows, val_size=data_cfg.val_size, seed=seed,
                     source=data_cfg.path or f"built in ({data_cfg.logic_people} people, depth {data_cfg.logic_depth})")


def _code_task(data_cfg, model_cfg, seed: int) -> Task:
    from hapo_cli.data.benchmarks import read_local_table
    from hapo_cli.data.train_data import read_table
    from hapo_cli.tasks.code import CodeTask, code_rows

    if not data_cfg.path:
        raise HapoError("data=code needs data.path: a local file or Hub id with a prompt and a tests column")
    keys = {"question_key": data_cfg.question_key, "answer_key": data_cfg.answer_key}
    rows = code_rows(read_table(data_cfg.path), **keys)[: data_cfg.max_train_rows]
    val = []
    if data_cfg.val_path:  # a code benchmark (humaneval, mbpp=FILE, ...) or a table of the same layouts
        spec = resolve_bench(data_cfg.val_path)
        if spec.grader == "code":
            val = bench_task(spec, limit=data_cfg.val_size).val_rows()
        else:
            val = code_rows(read_local_table(spec.local_path), **keys)[: data_cfg.val_size]
    prompt = PromptFormat(template=data_cfg.prompt_template, chat_template="auto" if model_cfg.chat_template else "off",
                          max_length=data_cfg.max_prompt_length)
    return CodeTask(prompt, rows=rows, val_rows=val, source=data_cfg.path)


TASKS: dict[str, Callable[..., Task]] = {
    "synthetic": _synthetic_task,  # the built-in addition task (or any file graded by its exact verifier)
    "math": _math_task,  # DAPO-Math-17k or a local table; DAPO's Answer: reward through math-verify
    "logic": _logic_task,  # built-in Knights-and-Knaves puzzles (or a table of them), graded exactly
    "code": _code_task,  # a table with prompt and tests columns; programs run in the sandbox (rewards.code)
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


def _bench_logic(spec: BenchSpec, rows: list[dict], prompt_style: str | None, chat_template: str | None) -> Task:
    from hapo_cli.tasks.logic import LogicTask

    return LogicTask(PromptFormat(chat_template=chat_template or spec.chat_template), rows=[], val_rows=rows,
                     source=spec.source)


def _bench_code(spec: BenchSpec, rows: list[dict], prompt_style: str | None, chat_template: str | None) -> Task:
    from hapo_cli.tasks.code import CodeTask, code_rows

    return CodeTask(PromptFormat(chat_template=chat_template or spec.chat_template), rows=[],
                    val_rows=code_rows(rows, spec.extra.get("layout")), source=spec.source)


BENCH_TASKS: dict[str, Callable[..., Task]] = {"synthetic": _bench_synthetic, "math": _bench_math,
                                               "logic": _bench_logic, "code": _bench_code}
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
    """`tiny` / `tiny-logic` -> the cached built-in models (built on first use); else models.resolve_model_path."""
    if name_or_path == "tiny-logic":  # the logic task's tiny model (hapo_cli.data.tiny_logic)
        from hapo_cli.data.tiny_logic import ensure_tiny_logic_model

        return str(ensure_tiny_logic_model())
    if name_or_path == "tiny":
        from hapo_cli.data.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    from hapo_cli.models import resolve_model_path

    return resolve_model_path(name_or_path)
