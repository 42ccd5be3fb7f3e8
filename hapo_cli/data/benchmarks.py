"""The benchmark registry: where each evaluation set lives and how to read and grade it.

    spec = resolve_bench("aime24")                 # a registry name
    spec = resolve_bench("runs/aime24.parquet")    # any local .parquet/.jsonl/.json file
    spec = resolve_bench("aime24=aime24.parquet")  # a registry benchmark read from a local copy
    rows = load_bench_rows(spec, limit=10)         # [{"id", "question", "answer"}]

Hub ids and columns were checked against the dataset cards / loaders (see the README):

| name          | Hub id (config)                              | split | question  | answer               |
|---------------|----------------------------------------------|-------|-----------|----------------------|
| aime24        | HuggingFaceH4/aime_2024                      | train | problem   | answer               |
| aime25        | yentinglin/aime_2025                         | train | problem   | answer               |
| amc23         | math-ai/amc23                                | test  | question  | answer               |
| math500       | HuggingFaceH4/MATH-500                       | test  | problem   | answer               |
| olympiadbench | Hothan/OlympiadBench (OE_TO_maths_en_COMP)   | train | question  | final_answer (list)  |
| minerva       | math-ai/minervamath                          | test  | question  | answer               |
| synthetic     | built in (hapo_cli.data.synthetic)           | validation | question | answer          |
| logic         | built in (hapo_cli.data.knights)             | validation | question | answer          |

Columns are candidates in order: the first one present in the data is used, so a mirror with
`problem`/`solution` columns also loads (an answer taken from `solution` is its final `\\boxed{}`, or its final boxes joined with ", ").
Without network the Hub is never contacted (a 3-second reachability probe switches `datasets`
to offline mode); a benchmark that is not cached then fails with one line saying how to point
`--bench` at a local file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from hapo_cli.errors import HapoError

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")
QUESTION_KEYS = ("question", "problem", "Problem", "Question", "prompt", "query", "input")
ANSWER_KEYS = (
    "answer", "Answer", "final_answer", "ground_truth", "gt", "expected_answer", "target", "label",
    "reward_model", "solution",
)
ID_KEYS = ("id", "unique_id", "ID", "idx", "problem_id", "question_id", "index")
SYNTHETIC_DEFAULT_LIMIT = 200  # questions of the built-in task evaluated when --limit is not given
LOGIC_DEFAULT_LIMIT = 100  # built-in Knights-and-Knaves puzzles evaluated when --limit is not given


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark: where its rows come from, which columns hold what, how it is prompted and graded."""

    name: str  # registry name (or the file stem for a local file)
    hub_id: str | None = None  # Hugging Face dataset id; None for the built-in task and local files
    configs: tuple[str | None, ...] = (None,)  # dataset configs, concatenated in this order
    split: str = "test"  # split to read
    question_keys: tuple[str, ...] = QUESTION_KEYS  # question column candidates, first present wins
    answer_keys: tuple[str, ...] = ANSWER_KEYS  # answer column candidates, first present wins
    id_keys: tuple[str, ...] = ID_KEYS  # id column candidates (row index when none is present)
    context_key: str | None = None  # column prepended to the question when non-empty (OlympiadBench)
    prompt_style: str = "boxed"  # boxed | answer | raw: instruction added to the question
    chat_template: str = "auto"  # auto | on | off: wrap the prompt in the tokenizer's chat template
    max_new_tokens: int = 1024  # default response length cap when the user gives none
    grader: str = "math"  # math (extraction + math-verify) | synthetic (the built-in verifier)
    local_path: str | None = None  # read rows from this .parquet/.jsonl/.json file instead of the Hub
    expected_rows: int | None = None  # size of the official set (documentation / sanity checks)
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def source(self) -> str:
        if self.local_path:
            return self.local_path
        if self.hub_id:
            cfg = ",".join(c for c in self.configs if c)
            return f"{self.hub_id}{f' ({cfg})' if cfg else ''} [{self.split}]"
        return "built-in"


BENCHMARKS: dict[str, BenchSpec] = {
    "aime24": BenchSpec(
        "aime24", "HuggingFaceH4/aime_2024", split="train", question_keys=("problem",),
        answer_keys=("answer",), expected_rows=30, description="AIME 2024 I and II (30 problems, integer answers)",
    ),
    "aime25": BenchSpec(
        "aime25", "yentinglin/aime_2025", split="train", question_keys=("problem",),
        answer_keys=("answer",), expected_rows=30, description="AIME 2025 I and II (30 problems, integer answers)",
    ),
    "amc23": BenchSpec(
        "amc23", "math-ai/amc23", split="test", question_keys=("question", "problem"),
        answer_keys=("answer",), expected_rows=40, description="AMC 2023 (40 problems)",
    ),
    "math500": BenchSpec(
        "math500", "HuggingFaceH4/MATH-500", split="test", question_keys=("problem",),
        answer_keys=("answer",), id_keys=("unique_id",), expected_rows=500,
        description="MATH-500 (the PRM800K test subset of MATH)",
    ),
    "olympiadbench": BenchSpec(
        "olympiadbench", "Hothan/OlympiadBench", configs=("OE_TO_maths_en_COMP",), split="train",
        question_keys=("question",), answer_keys=("final_answer",), id_keys=("id",), context_key="context",
        expected_rows=674, description="OlympiadBench, open-ended text-only English maths (674 problems)",
    ),
    "minerva": BenchSpec(
        "minerva", "math-ai/minervamath", split="test", question_keys=("question", "problem"),
        answer_keys=("answer", "solution"), expected_rows=272,
        description="Minerva-Math / OCWCourses (272 university STEM problems)",
    ),
    "synthetic": BenchSpec(
        "synthetic", None, split="validation", question_keys=("question",), answer_keys=("answer",),
        prompt_style="raw", grader="synthetic", max_new_tokens=8,
        description="the built-in two-number addition task (held-out pairs), graded by its own verifier",
    ),
    # ---- code (grader "code": hapo_cli.rewards.code; `extra` names the columns the code grader needs)
    "humaneval": BenchSpec(
        "humaneval", "openai/openai_humaneval", split="test", question_keys=("prompt",), answer_keys=("test",),
        id_keys=("task_id",), prompt_style="raw", grader="code", expected_rows=164,
        description="HumanEval (164 Python functions; tests: humaneval_tests(test, entry_point), program: prompt + completion)",
        extra={"tests_key": "test", "entry_point_key": "entry_point", "program_prefix_key": "prompt", "layout": "humaneval"},
    ),
    "mbpp": BenchSpec(
        "mbpp", "google-research-datasets/mbpp", configs=("sanitized",), split="test", question_keys=("prompt",),
        answer_keys=("test_list",), id_keys=("task_id",), prompt_style="raw", grader="code", expected_rows=257,
        description="MBPP sanitized test split (257 hand-verified problems; tests: mbpp_tests(test_list, test_imports))",
        extra={"tests_key": "test_list", "imports_key": "test_imports", "layout": "mbpp"},
    ),
    "livecodebench": BenchSpec(
        "livecodebench", "livecodebench/code_generation_lite", configs=("release_v5",), split="test",
        question_keys=("question_content",), answer_keys=("public_test_cases",), id_keys=("question_id",),
        prompt_style="raw", grader="code", max_new_tokens=4096,
        description="LiveCodeBench code generation, release_v5 (stdin/stdout and LeetCode-style functional problems)",
        extra={"public_tests_key": "public_test_cases", "private_tests_key": "private_test_cases",
               "starter_code_key": "starter_code", "metadata_key": "metadata", "date_key": "contest_date",
               "layout": "livecodebench"},
    ),
    "logic": BenchSpec(
        "logic", None, split="validation", question_keys=("question",), answer_keys=("answer",), prompt_style="raw",
        grader="logic", description="the built-in Knights-and-Knaves puzzles (held-out split, 3 people, depth 2)",
        extra={"people": 3, "depth": 2},
    ),
    # ---- logic (grader "logic": hapo_cli.rewards.logic.logic_reward; gold like "Zoey is a knave, and Oliver is a knight.")
    **{
        f"kk-{n}ppl": BenchSpec(
            f"kk-{n}ppl", "K-and-K/knights-and-knaves", configs=("test",), split=f"{n}ppl", question_keys=("quiz",),
            answer_keys=("solution_text",), id_keys=("index",), prompt_style="raw", grader="logic",
            expected_rows=100, description=f"Knights and Knaves (Xie et al. 2024), {n} people, 100 test puzzles",
        )
        for n in range(2, 9)
    },
}


def bench_names() -> list[str]:
    return list(BENCHMARKS)


def _looks_like_path(s: str) -> bool:
    return s.endswith(LOCAL_SUFFIXES) or os.sep in s or s.startswith(".")


def resolve_bench(name_or_path: str | BenchSpec) -> BenchSpec:
    """A registry name, a local file, or `name=file` (registry spec read from a local copy)."""
    if isinstance(name_or_path, BenchSpec):
        return name_or_path
    s = str(name_or_path).strip()
    if "=" in s:
        name, path = s.split("=", 1)
        base = resolve_bench(name)
        return replace(base, local_path=str(_check_file(path)))
    if s in BENCHMARKS:
        return BENCHMARKS[s]
    if Path(s).is_file() or _looks_like_path(s):
        p = _check_file(s)
        return BenchSpec(name=p.stem, local_path=str(p), description=f"local file {p}")
    raise HapoError(
        f"unknown benchmark {s!r}: choose from {', '.join(BENCHMARKS)} or give a local .parquet/.jsonl/.json file"
    )


def _check_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise HapoError(f"benchmark file not found: {path} (give an existing .parquet, .jsonl or .json file)")
    if not p.name.endswith(LOCAL_SUFFIXES):
        raise HapoError(f"unsupported benchmark file {path}: use .parquet, .jsonl or .json")
    return p


# ---------------------------------------------------------------- reading rows


def read_local_table(path: str) -> list[dict]:
    """Rows of a local .parquet / .jsonl / .json file (a list of objects, or {split: [...]}, or columns)."""
    p = Path(path)
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as err:
                        raise HapoError(f"{path}:{n} is not valid JSON ({err}): fix or remove that line") from None
            return rows
        data = json.loads(text)
    except HapoError:
        raise
    except (OSError, ValueError) as err:
        raise HapoError(f"cannot read data file {path}: {err}") from err
    except Exception as err:  # pyarrow errors
        raise HapoError(f"cannot read data file {path}: {type(err).__name__}: {err}") from err
    if isinstance(data, dict):  # {"data": [...]}, {"test": [...]} or column-oriented
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and lists[0] and isinstance(lists[0][0], dict):
            return lists[0]
        if lists and all(isinstance(v, list) and len(v) == len(lists[0]) for v in data.values()):
            keys = list(data)
            return [dict(zip(keys, vals)) for vals in zip(*(data[k] for k in keys))]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise HapoError(f"cannot read data file {path}: expected a list of objects (one per question)")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint is reachable (False when offline mode is set): the one
    probe in `hapo_cli.models.hub_reachable`, plus `datasets`' own offline variable."""
    from hapo_cli.models import hub_reachable as _probe

    if os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    return _probe(timeout)


def _go_offline() -> None:
    """Make `datasets` / `huggingface_hub` use the local cache only (no retries against a dead network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # already-imported libraries read these at import time: update their module constants too
    if "huggingface_hub" in sys.modules:
        try:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        except Exception:
            pass
    if "datasets" in sys.modules:
        try:
            import datasets.config as dc

            dc.HF_HUB_OFFLINE = True
            dc.HF_DATASETS_OFFLINE = True
        except Exception:
            pass


def _local_copy_hint(spec: BenchSpec) -> str:
    cfg = next((c for c in spec.configs if c), None)
    cfg_arg = f", {cfg!r}" if cfg else ""
    return (
        f"save it where there is network (python -c \"import datasets; datasets.load_dataset("
        f"{spec.hub_id!r}{cfg_arg}, split={spec.split!r}).to_parquet('{spec.name}.parquet')\") "
        f"and pass --bench {spec.name}={spec.name}.parquet"
    )


def _read_hub(spec: BenchSpec, cache_dir: str | None = None) -> list[dict]:
    if not hub_reachable():
        _go_offline()
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise HapoError("the `datasets` package is needed to read Hub benchmarks: pip install datasets") from err
    datasets.disable_progress_bars()
    rows: list[dict] = []
    for cfg in spec.configs:
        try:
            ds = datasets.load_dataset(spec.hub_id, cfg, split=spec.split, cache_dir=cache_dir)
        except (ConnectionError, OSError) as err:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            why = "the Hub is unreachable and it is not in the local cache" if offline else f"download failed ({err})"
            raise HapoError(f"benchmark {spec.name} ({spec.hub_id}): {why}; {_local_copy_hint(spec)}") from err
        except Exception as err:
            raise HapoError(
                f"benchmark {spec.name} ({spec.hub_id}): cannot load it ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); {_local_copy_hint(spec)}"
            ) from err
        rows.extend(ds.to_list())
    return rows


def _pick(keys: tuple[str, ...], columns: set[str], what: str, spec: BenchSpec, override: str | None) -> str:
    if override:
        if override not in columns:
            raise HapoError(
                f"benchmark {spec.name}: no column {override!r} for the {what}; columns are {', '.join(sorted(columns))}"
            )
        return override
    for k in keys:
        if k in columns:
            return k
    raise HapoError(
        f"benchmark {spec.name}: cannot find the {what} column (looked for {', '.join(keys)}); columns are "
        f"{', '.join(sorted(columns))}: name it with {what}_key=COLUMN"
    )


def _text_of(value) -> str:
    """A question cell: plain text, or a chat list (verl style) -> the last user message."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        users = [m.get("content", "") for m in value if m.get("role", "user") == "user"]
        return str(users[-1] if users else value[-1].get("content", ""))
    return "" if value is None else str(value)


def answer_of(value, column: str) -> str:
    """Normalise a gold-answer cell to one string.

    Lists (OlympiadBench `final_answer`) become "a, b" with `$` stripped from each item;
    verl-style `reward_model` dicts give their `ground_truth`; a `solution` column gives the content
    of its final `\\boxed{}` (the boxes of a final answer written in several, joined with ", ").
    """
    if isinstance(value, dict):
        value = value.get("ground_truth", value.get("answer", ""))
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip().strip("$").strip() for v in value if v is not None and str(v).strip()]
        return ", ".join(parts)
    text = "" if value is None else str(value).strip()
    if column == "solution":
        from hapo_cli.rewards.extract import extract_final_boxes

        boxes = extract_final_boxes(text)  # a final answer in several boxes keeps all of them: "-2, 1"
        return ", ".join(boxes) if boxes else text
    if text.startswith("$") and text.endswith("$") and text.count("$") == 2:
        text = text.strip("$").strip()
    return text


def load_bench_rows(
    spec: BenchSpec | str,
    *,
    limit: int | None = None,
    seed: int = 0,
    question_key: str | None = None,
    answer_key: str | None = None,
    id_key: str | None = None,
    cache_dir: str | None = None,
) -> list[dict]:
    """Rows `{"id", "question", "answer"}` of a benchmark (first `limit` rows when given)."""
    spec = resolve_bench(spec)
    if limit is not None and limit < 1:
        raise HapoError(f"--limit must be >= 1, got {limit}")
    if spec.grader == "synthetic" and not spec.local_path:
        from hapo_cli.data import synthetic

        return synthetic.make_rows(spec.split, limit if limit is not None else SYNTHETIC_DEFAULT_LIMIT, seed=seed)
    if spec.grader == "logic" and not spec.hub_id and not spec.local_path:
        from hapo_cli.data import knights

        return knights.make_rows(spec.split, limit if limit is not None else LOGIC_DEFAULT_LIMIT, seed=seed,
                                 people=spec.extra.get("people", 3), depth=spec.extra.get("depth", 2))
    raw = read_local_table(spec.local_path) if spec.local_path else _read_hub(spec, cache_dir=cache_dir)
    if not raw:
        raise HapoError(f"benchmark {spec.name} has no rows ({spec.source})")
    columns = set().union(*(r.keys() for r in raw[:50]))
    q_col = _pick(spec.question_keys + tuple(k for k in QUESTION_KEYS if k not in spec.question_keys),
                  columns, "question", spec, question_key)
    a_col = _pick(spec.answer_keys + tuple(k for k in ANSWER_KEYS if k not in spec.answer_keys),
                  columns, "answer", spec, answer_key)
    i_col = None
    if id_key:
        i_col = _pick((id_key,), columns, "id", spec, id_key)
    else:
        i_col = next((k for k in spec.id_keys + ID_KEYS if k in columns), None)
    rows, seen = [], set()
    for idx, r in enumerate(raw):
        q = _text_of(r.get(q_col))
        if spec.context_key and r.get(spec.context_key):
            q = f"{str(r[spec.context_key]).strip()}\n{q}"
        rid = str(r.get(i_col)) if i_col and r.get(i_col) is not None else f"{spec.name}-{idx}"
        if rid in seen:
            rid = f"{rid}#{idx}"
        seen.add(rid)
        row = {"id": rid, "question": q, "answer": answer_of(r.get(a_col), a_col)}
        for key, col in spec.extra.items():  # columns a grader needs besides these (code: entry_point, test_list, ...)
            if key.endswith("_key") and col in r:
                row.setdefault(col, r[col])
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows
