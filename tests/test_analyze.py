"""`hapo analyze`: every figure of a hand-made run's saved rollouts against values worked out by
hand, the step filter, clear errors, and a real training run of the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hapo_cli.errors import HapoError
from hapo_cli.report.analyze import analyze_run, parse_steps, quantile


def _rec(acc, tokens, entropy, h, adv, temperature):
    return {"group": 0, "text": "", "answer": "", "acc": acc, "score": 1.0 if acc else -1.0, "tokens": tokens,
            "entropy": entropy, "h": h, "adv": adv, "temperature": temperature}


def make_run(d: Path) -> Path:
    """Step 1 has a pivot Q = log 0.5 in metrics.jsonl (high entropy: H > 0.5); step 2 has none
    (high entropy: h > 0)."""
    (d / "rollouts").mkdir(parents=True)
    (d / "config.yaml").write_text("seed: 0\n")
    (d / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "val/avg@4": 0.1}) + "\n"
        + json.dumps({"step": 1, "stats/q": math.log(0.5)}) + "\n"
        + json.dumps({"step": 2, "train/reward": 0.0}) + "\n"
    )
    step1 = [
        # h is deliberately inconsistent with the pivot: step 1 must be classified by stats/q
        _rec(1.0, ["a", "b", "c"], [0.1, 0.9, 0.6], [1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.9, 1.1, 1.05]),
        _rec(0.0, ["a", "b"], [0.2, 0.4], [1.0, 1.0], [-2.0, -2.0], [0.95, 0.97]),
    ]
    step2 = [
        _rec(0.0, ["b", "b", "a", "c", "a"], [0.7, 0.3, 0.05, 0.8, 0.01], [0.5, -0.2, -1.0, 1.0, -1.0],
             [-0.5] * 5, [1.02, 0.99, 0.9, 1.05, 0.85]),
    ]
    for step, recs in ((1, step1), (2, step2)):
        (d / "rollouts" / f"step_{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_figures_by_hand(tmp_path):
    a = analyze_run(make_run(tmp_path / "run"), min_count=1)
    assert a["steps"] == [1, 2] and a["step_files"] == 2
    assert a["responses"] == 3 and a["tokens"] == 10
    assert a["accuracy"] == pytest.approx(1 / 3, abs=1e-12)
    # entropies sorted: .01 .05 .1 .2 .3 .4 .6 .7 .8 .9 (sum 4.06); nearest rank round(q * 9)
    assert a["entropy_mean"] == pytest.approx(0.406, abs=1e-12)
    assert (a["entropy_p50"], a["entropy_p80"], a["entropy_p95"], a["entropy_max"]) == (0.3, 0.7, 0.9, 0.9)
    # high: step 1 by H > 0.5 -> b(.9), c(.6); step 2 by h > 0 -> b(.7), c(.8): 4 of 10
    assert a["high_entropy_share"] == pytest.approx(0.4, abs=1e-12)
    assert a["length"] == {"correct_mean": 3.0, "wrong_mean": 3.5, "correct_responses": 1, "wrong_responses": 2}
    assert a["advantage_mass"]["positive"] == pytest.approx(3.0, abs=1e-12)
    assert a["advantage_mass"]["negative"] == pytest.approx(-6.5, abs=1e-12)
    t = a["temperature"]
    assert t["high_mean"] == pytest.approx((1.1 + 1.05 + 1.02 + 1.05) / 4, abs=1e-12)
    assert t["other_mean"] == pytest.approx((0.9 + 0.95 + 0.97 + 0.99 + 0.9 + 0.85) / 6, abs=1e-12)
    # forking tokens: b 2 of 4 high (mean H .575), c 2 of 2 (mean .7), a never: c before b on equal counts
    ft = a["forking_tokens"]
    assert [f["token"] for f in ft] == ["c", "b"]
    assert (ft[0]["count"], ft[0]["high"], ft[0]["high_share"]) == (2, 2, 1.0)
    assert ft[0]["entropy_mean"] == pytest.approx(0.7, abs=1e-12)
    assert (ft[1]["count"], ft[1]["high"], ft[1]["high_share"]) == (4, 2, 0.5)
    assert ft[1]["entropy_mean"] == pytest.approx(0.575, abs=1e-12)
    # halves: step 1 (5 tokens, mean .44, 2 high) and step 2 (5 tokens, mean .372, 2 high)
    p1, p2 = a["phases"]
    assert (p1["steps"], p2["steps"]) == ([1, 1], [2, 2])
    assert p1["entropy_mean"] == pytest.approx(0.44, abs=1e-12) and p1["high_entropy_share"] == 0.4
    assert p2["entropy_mean"] == pytest.approx(0.372, abs=1e-12) and p2["high_entropy_share"] == 0.4
    assert (p1["responses"], p2["responses"], p1["accuracy"], p2["accuracy"]) == (2, 1, 0.5, 0.0)
    # min_count drops c (2 occurrences); top cuts the list
    assert [f["token"] for f in analyze_run(tmp_path / "run", min_count=3)["forking_tokens"]] == ["b"]
    assert len(analyze_run(tmp_path / "run", top=1, min_count=1)["forking_tokens"]) == 1


def test_step_filter_and_parse():
    assert parse_steps(None) == (None, None)
    assert parse_steps("10:50") == (10, 50)
    assert parse_steps("10:") == (10, None)
    assert parse_steps(":50") == (None, 50)
    assert parse_steps("25") == (25, 25)
    for bad in ("a:b", ":", "5:2", "1:2:3"):
        with pytest.raises(HapoError):
            parse_steps(bad)
    # nearest rank with ties to even, exactly as torch.quantile(..., interpolation="nearest")
    import torch

    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4, 5, 6, 11, 40):
        xs = sorted(torch.rand(n, generator=gen, dtype=torch.float64).tolist())
        for q in (0.0, 0.5, 0.8, 0.95, 1.0):
            assert quantile(xs, q) == torch.quantile(torch.tensor(xs, dtype=torch.float64), q,
                                                     interpolation="nearest").item(), (n, q)


def test_only_the_asked_steps(tmp_path):
    run = make_run(tmp_path / "run")
    a = analyze_run(run, 2, 2, min_count=1)
    assert a["steps"] == [2, 2] and a["responses"] == 1 and a["tokens"] == 5 and a["phases"] == []
    assert a["high_entropy_share"] == pytest.approx(0.4, abs=1e-12)
    assert analyze_run(run, 3, None) is None


def test_cli_prints_and_writes_json(cli, tmp_path):
    run = make_run(tmp_path / "run")
    res = cli("analyze", str(run), "--min-count", "1")
    assert res.returncode == 0, res.stderr
    assert "| `c` | 2 | 2 | 1.00 | 0.700 |" in res.stdout
    assert "| all tokens | 0.406 | 0.300 | 0.700 | 0.900 | 0.900 | 0.400 |" in res.stdout
    data = json.loads((run / "analysis.json").read_text())
    assert len(data) == 1 and data[0]["tokens"] == 10 and data[0]["name"] == "run"
    # a step with nothing to average is null in the JSON, not NaN
    res = cli("analyze", str(run), "--steps", "1", "-o", str(tmp_path / "one.json"))
    assert res.returncode == 0, res.stderr
    one = json.loads((tmp_path / "one.json").read_text())[0]
    assert one["length"]["correct_mean"] == 3.0 and one["phases"] == []


@pytest.mark.parametrize("args, expect", [
    ([], "give at least one run folder"),
    (["{run}", "--steps", "7:3"], "the last step is before the first"),
    (["{run}", "--steps", "50:"], "no saved rollouts in steps 50:"),
    (["{missing}"], "is not a folder"),
    (["{run}", "--top", "0"], "--top and --min-count must be >= 1"),
])
def test_bad_input_is_one_line(cli, tmp_path, args, expect):
    run = make_run(tmp_path / "run")
    args = [a.format(run=run, missing=tmp_path / "nope") for a in args]
    res = cli("analyze", *args)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], res.stderr


def test_torn_last_line_is_dropped_and_damage_names_the_line(cli, tmp_path):
    """One torn-line policy (runs/files.py): a cut-short LAST line (a killed writer) is dropped,
    a bad line before the end is damage and names its line."""
    run = make_run(tmp_path / "run")
    clean = analyze_run(run, min_count=1)
    path = run / "rollouts" / "step_000002.jsonl"
    with open(path, "a") as f:
        f.write('{"group": 0, "tokens": ["a"')
    torn = analyze_run(run, min_count=1)
    assert torn["tokens"] == clean["tokens"] == 10 and torn["responses"] == clean["responses"] == 3
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 3, "stats/q"')
    assert analyze_run(run, min_count=1)["tokens"] == 10  # metrics.jsonl read under the same policy
    path.write_text('{"group": 0, "tokens": ["a"\n' + path.read_text().splitlines()[0] + "\n")
    res = cli("analyze", str(run))
    assert res.returncode == 2 and "step_000002.jsonl:1 is not valid JSON" in res.stderr


@pytest.mark.slow
def test_real_training_run(cli, tiny_model_dir, tmp_path):
    from tests.test_train_cli import train_ok

    train_ok(cli, tmp_path / "run", "algorithm=hapo", "trainer.total_steps=2")
    files = sorted((tmp_path / "run" / "rollouts").glob("step_*.jsonl"))
    recs = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    res = cli("analyze", str(tmp_path / "run"), "--min-count", "1")
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "run" / "analysis.json").read_text())[0]
    assert a["steps"] == [1, 2] and a["responses"] == len(recs)
    assert a["tokens"] == sum(len(r["tokens"]) for r in recs) > 0
    assert 0.0 < a["high_entropy_share"] < 0.5  # the pivot is the 0.8 quantile of the whole batch
    assert a["forking_tokens"] and all(f["high"] >= 1 for f in a["forking_tokens"])
    assert a["length"]["correct_responses"] + a["length"]["wrong_responses"] == len(recs)


def test_folder_of_runs(cli, tmp_path):
    """A folder of runs: each run with rollouts is analysed; seeds of one variant are named by run."""
    for name, seed in (("hapo-seed1", 1), ("hapo-seed2", 2)):
        make_run(tmp_path / "runs" / name)
        (tmp_path / "runs" / name / "config.yaml").write_text(f"seed: {seed}\n")
    (tmp_path / "runs" / "empty").mkdir()
    (tmp_path / "runs" / "empty" / "config.yaml").write_text("seed: 9\nother: 1\n")  # a run with no rollouts
    res = cli("analyze", str(tmp_path / "runs"), "-o", str(tmp_path / "all.json"))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "all.json").read_text())
    assert [d["name"] for d in data] == ["hapo / hapo-seed1", "hapo / hapo-seed2"]
    assert all(d["tokens"] == 10 for d in data)


def test_max_files_spreads_evenly(tmp_path):
    from hapo_cli.runs.rollouts import spread

    assert spread(list(range(10)), None) == list(range(10))
    assert spread(list(range(10)), 20) == list(range(10))
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread(list(range(10)), 1) == [9]
    run = make_run(tmp_path / "run")
    a = analyze_run(run, max_files=1, min_count=1)
    assert (a["steps"], a["step_files"], a["step_files_available"], a["tokens"]) == ([2, 2], 1, 2, 5)
