"""`hapo eval` through the real CLI (subprocess): the tiny model on a local file and the synthetic task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hapo_cli.evaluate.metrics import pass_at_k

BENCH = str(Path(__file__).parent / "data" / "tiny_addition_bench.jsonl")


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_eval_cli_two_benchmarks_outputs_and_resume(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "ev"
    common = ["eval", "--bench", f"{BENCH},synthetic", "--model", str(tiny_model_dir), "--n", "4",
              "--prompt", "raw", "--max-new-tokens", "8", "--out", str(out), "--seed", "1",
              "grading_workers=1", "chat_template=off"]
    first = cli(*common, "--limit", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "tiny_addition_bench" / "samples.jsonl").read_bytes()
    assert len(before.splitlines()) == 3 * 4

    second = cli(*common, "--limit", "6")  # same --out: resume, 3 new questions per benchmark
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 of 6 questions already graded" in second.stderr
    # the printed Markdown table: header and one row per benchmark
    table = [ln for ln in second.stdout.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| bench | questions | avg@4 | pass@1 | pass@2 | pass@4 | maj@4 |")
    assert [ln.split("|")[1].strip() for ln in table[2:]] == ["tiny_addition_bench", "synthetic"]
    assert (out / "results.md").read_text().strip().splitlines()[0] == table[0]

    both = json.loads((out / "summary.json").read_text())
    assert [s["bench"] for s in both] == ["tiny_addition_bench", "synthetic"]
    for s in both:
        folder = out / s["bench"]
        samples = _samples(folder / "samples.jsonl")
        assert len(samples) == 6 * 4 and s["n_questions"] == 6 and s["resumed_questions"] == 3
        assert json.loads((folder / "summary.json").read_text())["avg@4"] == s["avg@4"]
        by_q: dict[str, list[bool]] = {}
        for x in samples:
            by_q.setdefault(x["id"], []).append(x["correct"])
            assert x["verdict"] in ("correct", "wrong", "no_answer") and x["finish_reason"] in ("stop", "length")
        assert s["avg@4"] == pytest.approx(sum(map(sum, by_q.values())) / 24, abs=1e-12)
        for k in (1, 2, 4):
            assert s[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, sum(c), k) for c in by_q.values()) / 6, abs=1e-12)
        # the row printed for this benchmark carries the same numbers (percent, 2 decimals)
        row = next(ln for ln in table if ln.split("|")[1].strip() == s["bench"]).split("|")
        assert float(row[3]) == pytest.approx(100 * s["avg@4"], abs=0.006)
        assert s["grading_timeouts"] == 0
    maths = _samples(out / "tiny_addition_bench" / "samples.jsonl")
    assert (out / "tiny_addition_bench" / "samples.jsonl").read_bytes().startswith(before)  # resumed, not redone
    assert {x["method"] for x in maths} <= {"exact", "mismatch", "math_verify", "no_answer"}
    assert all(x["correct"] is (x["pred_norm"] == x["gold"]) for x in maths)  # gold "$171$" was read as 171
    assert json.loads((out / "meta.json").read_text())["argv"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bench", "aime2030"], "error: unknown benchmark 'aime2030': choose from aime24"),
        (["--bench", "no/such/file.parquet"], "error: benchmark file not found: no/such/file.parquet"),
        (["--bench", "synthetic", "--model", "no/such/model_dir"], "error: model path 'no/such/model_dir' does not exist"),
        (["--bench", "math500"], "error: benchmark math500 (HuggingFaceH4/MATH-500): the Hub is unreachable"),
        (["--bench", "synthetic", "k_list=[16]"], "error: k_list values must be in 1..n=8"),
        (["--bench", "synthetic", "nope=1"], "error: unknown eval setting 'nope': valid keys are bench, model"),
    ],
)
def test_eval_cli_errors_are_one_line(cli, tmp_path, args, message):
    res = cli("eval", *args, "--out", str(tmp_path / "o"), env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are known good


def test_eval_help_lists_every_option(cli):
    res = cli("eval", "--help")
    assert res.returncode == 0
    for opt in ("--bench", "--model", "--n", "--temperature", "--top-p", "--max-new-tokens", "--out", "--limit",
                "--prompt", "--engine", "--wandb"):
        assert opt in res.stdout


# ---- fail fast (issue 17): every check that needs no model runs before one loads


def _fast_one_line(res, message):
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="asserts a machine without CUDA")
def test_eval_device_cuda_without_cuda_is_one_line(cli, tmp_path):
    res = cli("eval", "--bench", "synthetic", "--device", "cuda", "--out", str(tmp_path / "o"), timeout=120)
    _fast_one_line(res, "error: --device=cuda but this machine has no CUDA device (torch sees none): use --device=cpu")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_eval_vllm_missing_is_one_line(cli, tmp_path):
    res = cli("eval", "--bench", "synthetic", "--engine", "vllm", "--out", str(tmp_path / "o"), timeout=120)
    _fast_one_line(res, "error: --engine=vllm but vLLM is not installed: pip install 'hapo[vllm]'")


def test_eval_out_that_is_a_file_is_one_line(cli, tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    res = cli("eval", "--bench", "synthetic", "--out", str(f), timeout=120)
    _fast_one_line(res, f"error: --out '{f}' is a file, not a folder: give a folder path")


def test_eval_other_settings_are_refused_before_the_model_loads(cli, tmp_path):
    out = tmp_path / "o"
    (out / "synthetic").mkdir(parents=True)
    (out / "synthetic" / "eval_config.json").write_text(json.dumps({"bench": "synthetic", "n": 4}))
    res = cli("eval", "--bench", "synthetic", "--out", str(out), "--model", str(tmp_path / "no-model"), timeout=120)
    # the settings are compared first: the missing model folder is never reached
    _fast_one_line(res, f"error: {out / 'synthetic'} holds results for other settings (n: 4 -> 8)")


def test_eval_hub_model_offline_is_one_line_at_once(cli, tmp_path):
    import time

    t0 = time.perf_counter()
    res = cli("eval", "--bench", "synthetic", "--model", "Qwen/Qwen2.5-Math-1.5B", "--out", str(tmp_path / "o"),
              env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}, timeout=120)
    _fast_one_line(res, "error: model 'Qwen/Qwen2.5-Math-1.5B' is not in the local cache and HF_HUB_OFFLINE is set")
    assert time.perf_counter() - t0 < 60  # the interpreter's start-up; no Hub retries
    assert not (tmp_path / "o").exists()


def test_runs_checkpoint_final_and_best_are_picked_from_the_run_files(tmp_path):
    from hapo_cli.evaluate.command import find_runs, pick_checkpoint

    run = tmp_path / "sw" / "DAPO-seed0"
    for step in (2, 4, 6):
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step:06d}" / "config.json").write_text("{}")
    (run / "checkpoints" / "LATEST").write_text("step_000006\n")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "summary.json").write_text(json.dumps({"val_metric": "val/avg@2"}))
    recs = [{"step": 0, "val/avg@2": 0.1}, {"step": 2, "val/avg@2": 0.5}, {"step": 4, "val/avg@2": 0.75},
            {"step": 5, "val/avg@2": 0.9}, {"step": 6, "val/avg@2": 0.25}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert pick_checkpoint(run, "final") == (run / "checkpoints" / "step_000006", "")
    # step 5 validated best but has no checkpoint: the best step that has one
    assert pick_checkpoint(run, "best") == (run / "checkpoints" / "step_000004", "")
    stub = tmp_path / "sw" / "DAPO-seed1"
    stub.mkdir()
    (stub / "config.yaml").write_text("seed: 1\n")
    assert pick_checkpoint(stub, "final")[0] is None
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({"runs": [{"id": "DAPO-seed0"}, {"id": "DAPO-seed1"}],
                                                           "variants": []}))
    assert find_runs(str(tmp_path / "sw")) == [run, stub]
    assert find_runs(str(tmp_path)) == [run, stub]  # a folder of sweeps
