"""The benchmark registry: specs, local files with column detection, one-line errors, offline Hub."""

from __future__ import annotations

import json
import time

import pytest

from hapo_cli.data.benchmarks import BENCHMARKS, answer_of, load_bench_rows, resolve_bench
from hapo_cli.errors import HapoError


def test_registry_has_every_benchmark_with_its_source():
    expected = {
        "aime24": ("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
        "aime25": ("yentinglin/aime_2025", "train", "problem", "answer"),
        "amc23": ("math-ai/amc23", "test", "question", "answer"),
        "math500": ("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
        "olympiadbench": ("Hothan/OlympiadBench", "train", "question", "final_answer"),
        "minerva": ("math-ai/minervamath", "test", "question", "answer"),
    }
    for name, (hub, split, q, a) in expected.items():
        spec = BENCHMARKS[name]
        assert (spec.hub_id, spec.split, spec.question_keys[0], spec.answer_keys[0]) == (hub, split, q, a)
        assert spec.grader == "math" and spec.prompt_style == "boxed"
    assert BENCHMARKS["olympiadbench"].configs == ("OE_TO_maths_en_COMP",)
    assert BENCHMARKS["synthetic"].grader == "synthetic" and BENCHMARKS["synthetic"].hub_id is None


def test_unknown_and_missing_benchmarks_are_one_line_errors(tmp_path):
    with pytest.raises(HapoError, match=r"unknown benchmark 'aime2024': choose from aime24, aime25"):
        resolve_bench("aime2024")
    with pytest.raises(HapoError, match="benchmark file not found: .*nope.jsonl"):
        resolve_bench(str(tmp_path / "nope.jsonl"))
    with pytest.raises(HapoError, match="benchmark file not found"):
        resolve_bench(f"aime24={tmp_path / 'missing.parquet'}")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(HapoError, match="unsupported benchmark file"):
        resolve_bench(str(tmp_path / "x.csv"))
    for err in [HapoError("x")]:
        assert "\n" not in str(err)


def test_local_jsonl_with_auto_detected_columns(tmp_path):
    p = tmp_path / "mini.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"unique_id": "a/1", "problem": "1+1?", "answer": "$2$"},
        {"unique_id": "a/2", "problem": "Half of 1?", "answer": "\\frac12"},
        {"unique_id": "a/3", "problem": "3*3?", "answer": 9},
    ]) + "\n")
    rows = load_bench_rows(str(p))
    assert rows == [
        {"id": "a/1", "question": "1+1?", "answer": "2"},
        {"id": "a/2", "question": "Half of 1?", "answer": "\\frac12"},
        {"id": "a/3", "question": "3*3?", "answer": "9"},
    ]
    assert [r["id"] for r in load_bench_rows(str(p), limit=2)] == ["a/1", "a/2"]
    with pytest.raises(HapoError, match="no column 'query' for the question; columns are answer, problem, unique_id"):
        load_bench_rows(str(p), question_key="query")


def test_local_parquet_olympiad_style_list_answers_and_context(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": [2231, 2232],
        "question": ["Find all x.", "Compute y."],
        "context": [None, "Let y be 3."],
        "final_answer": [["$3$", "$5$"], ["$\\frac{1}{2}$"]],
    })
    pq.write_table(table, tmp_path / "olympiad.parquet")
    rows = load_bench_rows(f"olympiadbench={tmp_path / 'olympiad.parquet'}")
    assert rows == [
        {"id": "2231", "question": "Find all x.", "answer": "3, 5"},
        {"id": "2232", "question": "Let y be 3.\nCompute y.", "answer": "\\frac{1}{2}"},
    ]


def test_column_overrides_verl_chat_prompts_and_solution_answers(tmp_path):
    p = tmp_path / "verl.json"
    p.write_text(json.dumps([
        {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2+2?"}],
         "reward_model": {"ground_truth": "4", "style": "rule"}, "text": "Q?", "solution": "so \\boxed{7}."},
    ]))
    assert load_bench_rows(str(p)) == [{"id": "verl-0", "question": "What is 2+2?", "answer": "4"}]
    assert load_bench_rows(str(p), question_key="text", answer_key="solution") == [
        {"id": "verl-0", "question": "Q?", "answer": "7"}
    ]
    assert answer_of(["$1$", None, " 2 "], "final_answer") == "1, 2"
    assert answer_of("$5$ and $6$", "answer") == "$5$ and $6$"


def test_unreadable_file_is_one_line(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"question": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(HapoError, match="broken.jsonl:2 is not valid JSON"):
        load_bench_rows(str(p))


def test_synthetic_rows_come_from_the_built_in_task():
    rows = load_bench_rows("synthetic", limit=5, seed=3)
    assert len(rows) == 5 and all(set(r) == {"id", "question", "answer"} for r in rows)
    for r in rows:
        a, b = r["question"].rstrip("=").split("+")
        assert int(r["answer"]) == int(a) + int(b)


def test_hub_benchmark_offline_fails_fast_with_a_local_file_hint(tmp_path, monkeypatch):
    """No network, no cache: one line that says how to use a local file; no retries, no hang."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(HapoError) as info:
        load_bench_rows("aime24", cache_dir=str(tmp_path / "cache"))
    msg = str(info.value)
    assert "\n" not in msg
    assert "HuggingFaceH4/aime_2024" in msg and "--bench aime24=aime24.parquet" in msg
    assert time.monotonic() - t0 < 60
