"""`make paper-table` end to end on the tiny model (issue 12): sweep, `hapo eval --runs` of each run's
final checkpoint, and `hapo report`'s paper layout; every number in the table is checked against
the runs' own eval summaries (and the step against their checkpoints). The spec is test-local
(DAPO and HAPO rows; the full ablations/paper_main.yaml needs the baseline presets), the benchmarks
are the built-in task plus one local file."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hapo_cli.report.analyze import analyze_run
from hapo_cli.sweep.plan import load_spec

REPO = Path(__file__).resolve().parent.parent
LOCAL_BENCH = REPO / "tests" / "data" / "tiny_addition_bench.jsonl"
FAST = ("experiment=debug trainer.total_steps=2 trainer.train_batch_size=4 trainer.mini_batch_size=2 "
        "trainer.group_size=4 trainer.num_threads=1 trainer.val_every=2 data.val_size=8 data.val_samples=2 "
        "algorithm.max_num_gen_batches=8 logger=none")
SPEC = """name: paper_tiny
reference_label: "made-up references for the test"
rows:
  - name: DAPO
    components: []
    paper:
      tiny: {avg: 10.0, synthetic: 12.5, tiny_addition_bench: 7.5}
  - name: HAPO
    components: [A, B, C, D]
    paper:
      tiny: {avg: 20.0, synthetic: 25.0}
"""


def test_paper_main_spec_rows_and_numbers():
    import yaml

    data = yaml.safe_load((REPO / "ablations" / "paper_main.yaml").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["DAPO", "DAPO+ForkingTokens", "Archer", "EDGE-GRPO", "HAPO"]
    assert [rows[n].get("algorithm", "dapo") for n in rows] == ["dapo", "forking_tokens", "archer", "edge_grpo", "dapo"]
    for row in rows.values():
        for model, nums in row["paper"].items():  # the paper's Avg is the mean of its six benchmarks (to 0.01)
            six = [nums[b] for b in ("aime24", "aime25", "amc23", "math500", "olympiadbench", "minerva")]
            assert abs(sum(six) / 6 - nums["avg"]) <= 0.011, (row["name"], model)
        assert row["reference"] == row["paper"]["Qwen/Qwen2.5-Math-7B"]["avg"]
    spec = load_spec(REPO / "ablations" / "ats_temperature.yaml")
    assert [(v.name, v.components, v.overrides) for v in spec.variants] == [
        ("DAPO-T0.5", [], ["rollout.temperature=0.5"]), ("DAPO-T0.8", [], ["rollout.temperature=0.8"]),
        ("DAPO-T1.0", [], ["rollout.temperature=1.0"]), ("DAPO-T1.1", [], ["rollout.temperature=1.1"]),
        ("DAPO+ATS", ["A"], ["rollout.temperature=1.0"])]


def test_spec_rows_name_an_algorithm_preset(tmp_path):
    from hapo_cli.errors import HapoError

    p = tmp_path / "s.yaml"
    p.write_text("rows:\n  - {name: X, components: [], algorithm: nope}\n")
    with pytest.raises(HapoError, match=r"rows\[0\] \(X\): algorithm must be one of archer, cispo, clip_cov, dapo, "):
        load_spec(p)
    p.write_text("rows:\n  - {name: G, components: [B], algorithm: grpo}\n")
    v = load_spec(p).variants[0]
    assert v.train_overrides()[:2] == ["algorithm=grpo", "algorithm.components.A=false"]
    p.write_text("rows:\n  - {name: X, components: [], paper: {m: {avg: high}}}\n")
    with pytest.raises(HapoError, match=r"paper: expected \{model id: \{benchmark: number"):
        load_spec(p)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_paper_table_on_the_tiny_model(tmp_path, tiny_model_dir):
    spec = tmp_path / "paper_tiny.yaml"
    spec.write_text(SPEC)
    sdir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    res = subprocess.run(
        ["make", "--no-print-directory", "paper-table", f"SPEC={spec}", "MODEL=tiny", "SEEDS=2", f"PAPER_DIR={sdir}",
         f"HAPO={sys.executable} -m hapo_cli.cli", f"BENCHES=synthetic,{LOCAL_BENCH}", f"OVERRIDES={FAST}",
         "EVAL_OVERRIDES=--n 2 --limit 6 grading_workers=0"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert seconds < 600, f"make paper-table took {seconds:.0f} s"
    runs = {v: [sdir / f"{v}-seed{s}" for s in (0, 1)] for v in ("DAPO", "HAPO")}
    # each run's own results, written by hapo eval --runs inside the run folder at its final checkpoint
    own = {}
    for dirs in runs.values():
        for d in dirs:
            ckpt = (d / "checkpoints" / "LATEST").read_text().strip()
            assert ckpt == "step_000002"
            summaries = json.loads((d / "eval" / ckpt / "summary.json").read_text())
            own[d.name] = {s["bench"]: s["avg@2"] for s in summaries}
            assert [s["n_questions"] for s in summaries] == [6, 6]
    benches = ["synthetic", "tiny_addition_bench"]

    def stat(v, bench):
        vals = [statistics.fmean(own[d.name].values()) if bench == "average" else own[d.name][bench] for d in runs[v]]
        return statistics.fmean(vals), statistics.stdev(vals)

    md = (sdir / "report" / "paper.md").read_text().splitlines()
    assert md[0] == ("| method | seeds | step | synthetic | tiny_addition_bench | average | Δ average vs DAPO "
                     "| critical tokens (%) |")
    paper = {"DAPO": {"synthetic": 12.5, "tiny_addition_bench": 7.5, "average": 10.0},
             "HAPO": {"synthetic": 25.0, "average": 20.0}}
    for line, v in zip(md[2:4], ("DAPO", "HAPO")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [v, "2", "2"]
        for cell, bench in zip(cells[3:6], [*benches, "average"]):
            mean, std = stat(v, bench)
            want = f"{100 * mean:.2f} ± {100 * std:.2f}"
            if bench in paper[v]:
                want += f" ({paper[v][bench]:.2f})"
            assert cell == want, (v, bench)
        delta = 100 * (stat(v, "average")[0] - stat("DAPO", "average")[0])
        assert cells[6] == ("(baseline)" if v == "DAPO" else f"{delta:+.2f}")
        shares = [analyze_run(d, None, None, max_files=40)["high_entropy_share"] for d in runs[v]]
        assert cells[7] == f"{100 * statistics.fmean(shares):.2f} ± {100 * statistics.stdev(shares):.2f}"
    assert "(in brackets): the paper's number for tiny." in md
    rows = list(csv.DictReader((sdir / "report" / "paper.csv").read_text().splitlines()))
    for r in rows:
        assert float(r["average_mean"]) == pytest.approx(stat(r["method"], "average")[0], abs=1e-12)
        assert float(r["synthetic_std"]) == pytest.approx(stat(r["method"], "synthetic")[1], abs=1e-12)
    assert (sdir / "report" / "paper.png").stat().st_size > 10_000
    assert "| method | seeds | step |" in res.stdout  # the table is a result: stdout
    print(f"make paper-table (tiny, 2 rows x 2 seeds, 2 steps, 2 benchmarks): {seconds:.0f} s")
