"""`hapo report` on hand-made run folders: grouping of seeds, the table's numbers (mean, std with
n-1, delta) computed by hand, failed and unfinished runs, the band of the curves, the PNGs.
(`tests/test_ablate.py` runs the report on a real sweep of the tiny model.)"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from hapo_cli.errors import HapoError
from hapo_cli.report.collect import collect
from hapo_cli.report.command import report_command
from hapo_cli.report.plots import aggregate
from hapo_cli.report.table import markdown, results_csv


def make_run(d: Path, *, seed: int, algo: str = "dapo", comps: str = "", val: dict[int, float],
             train: dict[int, float] | None = None, finished: bool = True, lr: float = 1e-6) -> Path:
    """A run folder: config.yaml, metrics.jsonl (val/* at the `val` steps; train metrics =
    `train[step]` scaled per key) and summary.json when finished."""
    d.mkdir(parents=True)
    cfg = {"seed": seed, "run_dir": str(d), "logger": {"name": "none"}, "trainer": {"lr": lr},
           "algorithm": {"name": algo, "components": {k: k in comps for k in "ABCD"} | {"ats": None, "tlga": None,
                                                                                        "dar": None, "aac": None}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    steps = sorted(set(val) | set(train or {}))
    with open(d / "metrics.jsonl", "w") as f:
        for s in steps:
            rec: dict = {"step": s}
            if s in val:
                rec.update({"val/avg@4": val[s], "val/pass@1": val[s], "val/pass@2": min(1.0, val[s] + 0.125),
                            "val/pass@4": min(1.0, val[s] + 0.25), "val/maj@4": val[s] / 2, "val/mean_length": 5.0})
            if train and s in train:
                x = train[s]
                rec.update({"train/entropy": x, "train/reward": 2 * x - 1, "rollout/response_length": 10 * x,
                            "actor/clipfrac_left": x / 10, "actor/clipfrac_right": x / 20,
                            "actor/clipfrac_left_hneg": x / 8, "actor/clipfrac_left_hpos": x / 40,
                            "actor/clipfrac_right_hpos": x / 9, "actor/clipfrac_right_hneg": x / 50})
            f.write(json.dumps(rec) + "\n")
    if finished:
        (d / "summary.json").write_text(json.dumps({"val_metric": "val/avg@4", "val_final": val[max(val)],
                                                    "steps": max(steps)}))
    rollouts = d / "rollouts"
    rollouts.mkdir()
    with open(rollouts / "step_000001.jsonl", "w") as f:
        for acc in (1.0, 0.0):
            ent = [0.05 * i * (1 + seed) for i in range(1, 9)] if acc else [0.3 * i for i in range(1, 9)]
            f.write(json.dumps({"acc": acc, "entropy": ent, "tokens": list("12345678")}) + "\n")
    return d


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_run(root / "base-seed0", seed=0, val={0: 0.25, 2: 0.375, 4: 0.5}, train={1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0})
    make_run(root / "base-seed1", seed=1, val={0: 0.25, 4: 0.25}, train={1: 0.25, 2: 0.5, 3: 0.5, 4: 0.5})
    make_run(root / "hapo-seed0", seed=0, algo="hapo", comps="ABCD", val={0: 0.25, 4: 0.75}, train={1: 1.0, 4: 2.0})
    make_run(root / "hapo-seed1", seed=1, algo="hapo", comps="ABCD", val={0: 0.25, 4: 0.5}, train={1: 1.0, 4: 1.5})
    make_run(root / "hapo-seed2", seed=2, algo="hapo", comps="ABCD", val={0: 0.25}, finished=False)
    make_run(root / "hapo-lr", seed=0, algo="hapo", comps="ABCD", val={0: 0.25, 4: 1.0}, lr=1e-5)  # another config
    return root


def test_loose_runs_group_by_config_and_the_table_is_hand_computed(runs):
    col = collect([runs])
    assert [(v.name, v.components, v.is_baseline, [r.id for r in v.runs]) for v in col.variants] == [
        ("dapo", [], True, ["base-seed0", "base-seed1"]),
        ("hapo, trainer.lr=1e-05", ["A", "B", "C", "D"], False, ["hapo-lr"]),
        ("hapo, trainer.lr=1e-06", ["A", "B", "C", "D"], False, ["hapo-seed0", "hapo-seed1", "hapo-seed2"]),
    ]
    md = markdown(col).splitlines()
    sd = math.sqrt(((0.5 - 0.375) ** 2 + (0.25 - 0.375) ** 2) / 1)  # n-1
    assert f"{100 * sd:.2f}" == "17.68"
    assert md[0] == ("| variant | components | seeds | step | avg@4 (%) | pass@2 (%) | pass@4 (%) | maj@4 (%) "
                     "| Δ avg@4 vs dapo |")
    assert md[1] == "|:---|:---|---:|---:|---:|---:|---:|---:|---:|"
    # base: avg@4 of the LAST validation (0.5 and 0.25, not the best or the first)
    assert md[2] == "| dapo | - | 2 | 4 | 37.50 ± 17.68 | 50.00 ± 17.68 | 62.50 ± 17.68 | 18.75 ± 8.84 | (baseline) |"
    assert md[3] == ("| hapo, trainer.lr=1e-05 | A+B+C+D | 1 | 4 | 100.00 ± - | 100.00 ± - | 100.00 ± - | 50.00 ± - "
                     "| +62.50 |")
    assert md[4] == ("| hapo, trainer.lr=1e-06 | A+B+C+D | 2/3 | 4 | 62.50 ± 17.68 | 75.00 ± 17.68 | 87.50 ± 17.68 "
                     "| 31.25 ± 8.84 | +25.00 |")
    assert "warning" not in "\n".join(md)  # every run ends at step 4
    assert md[-2:] == ["Not finished:", "- hapo-seed2 (interrupted)"]
    rows = list(csv.DictReader(results_csv(col).splitlines()))
    assert [(r["variant"], float(r["avg@4_mean"]), r["avg@4_std"], r["delta_avg@4"]) for r in rows] == [
        ("dapo", 0.375, repr(sd), "0.0"), ("hapo, trainer.lr=1e-05", 1.0, "", "0.625"),
        ("hapo, trainer.lr=1e-06", 0.625, repr(sd), "0.25")]


def test_sweep_folder_lists_failed_runs(tmp_path):
    sdir = tmp_path / "sw"
    make_run(sdir / "DAPO-seed0", seed=0, val={0: 0.25, 3: 0.5})
    make_run(sdir / "DAPO+C-seed0", seed=0, comps="C", val={0: 0.25}, finished=False)
    state = {"name": "sw", "reference_label": "paper", "variants": [
        {"name": "DAPO", "components": [], "overrides": [], "reference": 46.97},
        {"name": "DAPO+C", "components": ["C"], "overrides": [], "reference": 48.28},
        {"name": "DAPO+D", "components": ["D"], "overrides": [], "reference": None}],
        "runs": [{"id": "DAPO-seed0", "variant": "DAPO", "seed": 0, "overrides": [], "status": "done"},
                 {"id": "DAPO+C-seed0", "variant": "DAPO+C", "seed": 0, "overrides": [], "status": "failed",
                  "returncode": 17, "error": "exit code 17; last output: step 1"},
                 {"id": "DAPO+D-seed0", "variant": "DAPO+D", "seed": 0, "overrides": [], "status": "pending"}]}
    (sdir / "sweep.json").write_text(json.dumps(state))
    md = markdown(collect([sdir]))
    assert md.splitlines()[2:5] == [
        "| DAPO | - | 1 | 3 | 50.00 ± - | 62.50 ± - | 75.00 ± - | 25.00 ± - | (baseline) | 46.97 |",
        "| DAPO+C | C | 0/1 | - | - | - | - | - | - | 48.28 |",
        "| DAPO+D | D | 0/1 | - | - | - | - | - | - | - |"]
    assert "reference: paper." in md
    assert md.endswith("Failed runs:\n- DAPO+C-seed0 (exit 17): exit code 17; last output: step 1\n\n"
                       "Not finished:\n- DAPO+D-seed0 (pending)\n")


def _sweep(sdir: Path, finals: dict[str, float]) -> Path:
    variants = [{"name": n, "components": [] if n == "DAPO" else ["A"], "overrides": []} for n in finals]
    runs = [{"id": f"{n}-seed0", "variant": n, "seed": 0, "overrides": [], "status": "done"} for n in finals]
    for n, v in finals.items():
        make_run(sdir / f"{n}-seed0", seed=0, comps="" if n == "DAPO" else "A", val={0: 0.125, 2: v})
    (sdir / "sweep.json").write_text(json.dumps({"name": sdir.name, "variants": variants, "runs": runs}))
    return sdir


def test_several_sweeps_compare_each_with_its_own_baseline(tmp_path):
    _sweep(tmp_path / "s1", {"DAPO": 0.25, "DAPO+A": 0.5})
    _sweep(tmp_path / "s2", {"DAPO": 0.75, "DAPO+A": 0.625})
    md = markdown(collect([tmp_path])).splitlines()  # a folder of sweeps
    assert md[0].endswith("| Δ avg@4 vs its sweep's baseline |")
    assert [(line.split(" | ")[0], line.split(" | ")[-1]) for line in md[2:6]] == [
        ("| s1/DAPO", "(baseline) |"), ("| s1/DAPO+A", "+25.00 |"), ("| s2/DAPO", "(baseline) |"), ("| s2/DAPO+A", "-12.50 |")]


def test_curve_band_is_mean_min_max_over_seeds(runs):
    base = collect([runs]).variants[0]
    steps, mean, lo, hi = aggregate(base, "train/entropy")
    assert steps == [1, 2, 3, 4]
    assert mean == [0.375, 0.625, 0.75, 0.75] and lo == [0.25, 0.5, 0.5, 0.5] and hi == [0.5, 0.75, 1.0, 1.0]
    steps, mean, _, _ = aggregate(base, "train/entropy", smooth=2)  # each run smoothed, then averaged
    assert mean == [0.375, 0.5, 0.6875, 0.75]
    assert aggregate(base, "val/avg@4")[:2] == ([0, 2, 4], [0.25, 0.375, 0.375])


def test_report_writes_tables_and_readable_pngs(runs, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    out = tmp_path / "out"
    report_command(dirs=[str(runs)], out=str(out), smooth=1, no_plots=False)
    assert (out / "results.md").read_text() == markdown(collect([runs]))
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["clip_by_entropy.png", "clip_fractions.png", "entropy.png", "response_length.png", "reward.png",
                     "token_entropy.png", "training_dynamics.png", "val_accuracy.png"]
    for name in names:
        img = mpimg.imread(out / name)
        assert img.shape[0] >= 400 and img.shape[1] >= 700, name
        assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20, name
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"], r["step"], r["avg@4"]) for r in rows] == [
        ("base-seed0", "done", "4", "0.5"), ("base-seed1", "done", "4", "0.25"), ("hapo-lr", "done", "4", "1.0"),
        ("hapo-seed0", "done", "4", "0.75"), ("hapo-seed1", "done", "4", "0.5"), ("hapo-seed2", "interrupted", "", "")]


def test_run_without_training_metrics_skips_those_plots(tmp_path):
    from hapo_cli.report import plots

    d = make_run(tmp_path / "r", seed=0, val={0: 0.5, 1: 0.75})
    col = collect([d])
    assert plots.single_curve(col, tmp_path, "entropy") is None
    assert plots.clip_fractions(col, tmp_path) is None and plots.clip_by_entropy(col, tmp_path) is None
    assert list(tmp_path.glob("*.png")) == []


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "is not a folder"),
    (lambda p: p, "holds no run (metrics.jsonl) or sweep (sweep.json)"),
])
def test_bad_folders_are_one_line(tmp_path, make, message):
    with pytest.raises(HapoError) as err:
        collect([make(tmp_path)])
    assert message in str(err.value)
