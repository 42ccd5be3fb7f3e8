"""`evaluate_rows` on the real tiny model (HF engine, CPU): numbers, per-sample files, resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hapo_cli.data import synthetic
from hapo_cli.data.benchmarks import load_bench_rows
from hapo_cli.errors import HapoError
from hapo_cli.evaluate import evaluate_rows
from hapo_cli.evaluate.metrics import majority_vote, pass_at_k
from hapo_cli.rewards import GradeResult, grade_many
from hapo_cli.tasks import MathTask, bench_task

SAMPLE_KEYS = {"id", "sample", "question", "prompt", "gold", "completion", "pred", "pred_norm", "verdict", "correct",
               "method", "length", "finish_reason"}


class CountingEngine:
    """The real HF engine, counting the prompts it is asked to generate for."""

    def __init__(self, engine):
        self.engine = engine
        self.prompts = 0
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        self.prompts += len(prompts)
        return self.engine.generate(prompts, params)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from hapo_cli.models import load_model_and_tokenizer
    from hapo_cli.rollout.factory import EngineSettings, build_engine

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    return build_engine(EngineSettings(batch_size=64), model.eval(), tok), tok


SYNTHETIC = bench_task("synthetic", rows=[])


def read_samples(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def recompute(samples, n, k_list):
    by_q = {}
    for s in samples:
        by_q.setdefault(s["id"], [None] * n)[s["sample"]] = s
    qs = list(by_q.values())
    out = {f"avg@{n}": sum(s["correct"] for q in qs for s in q) / (len(qs) * n)}
    for k in k_list:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"] for s in q), k) for q in qs) / len(qs)
    out[f"maj@{n}"] = sum(
        majority_vote([s["pred_norm"] or None for s in q], [s["correct"] for s in q])[1] for q in qs
    ) / len(qs)
    out["mean_length"] = sum(s["length"] for q in qs for s in q) / (len(qs) * n)
    out["truncated_frac"] = sum(s["finish_reason"] == "length" for q in qs for s in q) / (len(qs) * n)
    return out


def test_synthetic_summary_matches_the_per_sample_file(tiny, tmp_path):
    engine, tok = tiny
    rows = load_bench_rows("synthetic", limit=16, seed=5)
    summary = evaluate_rows(engine, tok, rows, task=SYNTHETIC, n=4, max_new_tokens=8, seed=1,
                            out_dir=tmp_path, progress=False)
    samples = read_samples(tmp_path / "samples.jsonl")
    assert len(samples) == 16 * 4 and all(set(s) == SAMPLE_KEYS for s in samples)
    for s in samples:  # the verdict is the task's own verifier
        assert s["correct"] is synthetic.verify(s["completion"], s["gold"])
        assert s["verdict"] == ("correct" if s["correct"] else ("no_answer" if s["pred"] is None else "wrong"))
        assert 1 <= s["length"] <= 8 and s["finish_reason"] in ("stop", "length")
    expect = recompute(samples, 4, [1, 2, 4])
    for k, v in expect.items():
        assert summary[k] == pytest.approx(v, abs=1e-12), k
    assert summary["n_questions"] == 16 and summary["n_samples"] == 64
    assert summary["pass@1"] == pytest.approx(summary["avg@4"], abs=1e-12)
    assert summary["avg@4"] <= summary["pass@2"] <= summary["pass@4"]
    assert 0.2 < summary["avg@4"] <= 1.0  # the warm-started model does add numbers
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert json.loads((tmp_path / "eval_config.json").read_text())["n"] == 4


def test_resume_generates_only_missing_questions(tiny, tmp_path):
    engine, tok = tiny
    counted = CountingEngine(engine)
    rows = load_bench_rows("synthetic", limit=9, seed=2)
    kw = dict(task=SYNTHETIC, n=4, max_new_tokens=8, seed=3, out_dir=tmp_path, progress=False)
    evaluate_rows(counted, tok, rows[:4], **kw)
    assert counted.prompts == 4
    first = (tmp_path / "samples.jsonl").read_bytes()
    s8 = evaluate_rows(counted, tok, rows[:8], **kw)
    assert counted.prompts == 8  # only the 4 new questions were generated
    assert (tmp_path / "samples.jsonl").read_bytes().startswith(first)  # graded lines untouched
    assert s8["resumed_questions"] == 4 and s8["n_questions"] == 8
    calls = counted.calls
    again = evaluate_rows(counted, tok, rows[:8], **kw)
    assert counted.calls == calls  # nothing left to generate: the engine is not called at all
    assert {k: v for k, v in again.items() if not k.startswith("seconds")} == {
        k: v for k, v in s8.items() if not k.startswith("seconds") and k != "resumed_questions"
    } | {"resumed_questions": 8}
    # a killed run leaves a partial question and a cut line: both are dropped and redone
    lines = (tmp_path / "samples.jsonl").read_text().splitlines(keepends=True)
    partial = [json.loads(x) for x in lines[-4:-2]]
    (tmp_path / "samples.jsonl").write_text("".join(lines[:-4]) + "".join(json.dumps(p) + "\n" for p in partial) + '{"id": "cut')
    s9 = evaluate_rows(counted, tok, rows[:9], **kw)
    assert counted.prompts == 8 + 2  # the partial question and the new 9th question
    samples = read_samples(tmp_path / "samples.jsonl")
    assert Counter(s["id"] for s in samples) == {r["id"]: 4 for r in rows[:9]}
    assert s9["n_questions"] == 9 and s9["resumed_questions"] == 7


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    engine, tok = tiny
    rows = load_bench_rows("synthetic", limit=2)
    evaluate_rows(engine, tok, rows, task=SYNTHETIC, n=2, max_new_tokens=8, out_dir=tmp_path, progress=False)
    with pytest.raises(HapoError, match=r"other settings \(n: 2 -> 3\).*another --out"):
        evaluate_rows(engine, tok, rows, task=SYNTHETIC, n=3, max_new_tokens=8, out_dir=tmp_path, progress=False)


def test_greedy_forces_one_sample(tiny, capsys):
    engine, tok = tiny
    rows = load_bench_rows("synthetic", limit=6)
    s = evaluate_rows(engine, tok, rows, task=SYNTHETIC, n=8, temperature=0.0, max_new_tokens=8, progress=False)
    assert s["n"] == 1 and s["n_samples"] == 6 and "avg@1" in s and "pass@8" not in s
    assert s["pass@1"] == s["avg@1"] == s["maj@1"]
    assert "n forced from 8 to 1" in capsys.readouterr().err
    with pytest.raises(HapoError, match="pass@k needs"):
        evaluate_rows(engine, tok, rows, task=SYNTHETIC, n=2, k_list=[4], progress=False)


def test_math_bench_file_grading_and_reported_timeouts(tiny, tmp_path):
    """A local maths file goes through extraction + exact match / math-verify; timeouts are counted wrong."""
    engine, tok = tiny
    task = bench_task("tests/data/tiny_addition_bench.jsonl", prompt_style="raw", chat_template="off")
    rows = task.val_rows()
    seen = {}

    class FirstTimesOut(MathTask):
        def grade(self, texts, golds, pool=None):
            res = grade_many(texts, golds, prefer=self.prefer)  # in-process: the real grading
            seen["prefer"] = self.prefer
            res[0] = GradeResult(False, res[0].pred, res[0].pred_norm, "timeout", timed_out=True)
            return res

    task.__class__ = FirstTimesOut
    s = evaluate_rows(engine, tok, rows, task=task, n=2, max_new_tokens=8, out_dir=tmp_path, progress=False,
                      grader="inline")
    samples = read_samples(tmp_path / "samples.jsonl")
    assert seen["prefer"] == "raw" and s["grading_timeouts"] == 1
    assert samples[0]["verdict"] == "timeout" and samples[0]["correct"] is False
    for x in samples[1:]:
        assert x["correct"] is (x["pred_norm"] == x["gold"].strip("$"))  # integers: exact match decides
        assert x["method"] in ("exact", "mismatch", "math_verify", "no_answer")
    assert s["avg@2"] == pytest.approx(sum(x["correct"] for x in samples) / len(samples))


def test_bad_rows_are_rejected(tiny):
    engine, tok = tiny
    with pytest.raises(HapoError, match="not unique"):
        evaluate_rows(engine, tok, [{"id": 1, "question": "1+1=", "answer": "2"}] * 2, task=SYNTHETIC, progress=False)
    with pytest.raises(HapoError, match="need id, question and answer"):
        evaluate_rows(engine, tok, [{"id": 1, "question": "1+1="}], task=SYNTHETIC, progress=False)
