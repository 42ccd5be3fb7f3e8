"""`hapo report` says what the numbers are (issue 17, "Reports that mislead"), on hand-made run
folders: a rerun of a seed is a duplicate (not spread), runs ending at different steps are
flagged, loose runs are labelled by algorithm and components, stubs of failed starts are left
out (and listed), the clip plot's legend sits outside the axes and its title says "one seed"."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hapo_cli.report.collect import collect
from hapo_cli.report.plots import clip_by_entropy_figure, seeds_text
from hapo_cli.report.table import markdown, step_warning
from tests.test_report import make_run


def _set_total_steps(d: Path, total: int) -> None:
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["trainer"]["total_steps"] = total
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def _set_started(d: Path, when: str) -> None:
    (d / "meta.json").write_text(json.dumps({"started": when}))


def test_same_seed_twice_is_a_duplicate_not_spread(tmp_path):
    a = make_run(tmp_path / "dapo-a", seed=0, val={0: 0.25, 4: 0.25})
    b = make_run(tmp_path / "dapo-b", seed=0, val={0: 0.25, 4: 0.5})  # the rerun, newer
    _set_started(a, "2025-01-01T10:00:00")
    _set_started(b, "2025-01-02T10:00:00")
    col = collect([tmp_path])
    assert [(v.name, [r.id for r in v.runs]) for v in col.variants] == [("dapo", ["dapo-b"])]
    md = markdown(col)
    # one seed: the kept run's 50.00, no "± 0.00" from the same seed counted twice
    assert md.splitlines()[2] == "| dapo | - | 1 | 4 | 50.00 ± - | 62.50 ± - | 75.00 ± - | 25.00 ± - | (baseline) |"
    assert (f"- duplicate: {a} repeat(s) seed 0 of {b} with the same config (a rerun, not another seed); "
            f"kept {b} (finished, newer), left out {a}") in md
    assert seeds_text(col) == "one seed"


def test_a_finished_rerun_wins_over_an_unfinished_newer_one(tmp_path):
    a = make_run(tmp_path / "x1", seed=3, val={0: 0.25, 4: 0.75})
    b = make_run(tmp_path / "x2", seed=3, val={0: 0.25}, finished=False)
    _set_started(a, "2025-01-01T10:00:00")
    _set_started(b, "2025-01-03T10:00:00")
    col = collect([tmp_path])
    assert [r.id for r in col.variants[0].runs] == ["x1"]
    assert f"left out {b}" in markdown(col)


def test_runs_ending_at_different_steps_are_flagged(tmp_path):
    d = make_run(tmp_path / "d", seed=0, val={0: 0.25, 4: 0.5})
    h = make_run(tmp_path / "h", seed=0, algo="hapo", comps="ABCD", val={0: 0.25, 2: 0.75})
    _set_total_steps(d, 4)
    _set_total_steps(h, 2)
    col = collect([tmp_path])
    md = markdown(col)
    assert md.splitlines()[2].startswith("| dapo | - | 1 | 4 | 50.00 ± - |")
    assert md.splitlines()[3].startswith("| hapo | A+B+C+D | 1 | 2 | 75.00 ± - |")
    assert step_warning(col) == ("warning: the compared runs end at different steps (trainer.total_steps 2, 4): "
                                 "dapo: 4; hapo: 2. Each number is taken at its run's last validation, so rows "
                                 "are not compared like for like.")
    assert step_warning(col) in md


def test_seeds_ending_at_different_steps_show_the_range(tmp_path):
    make_run(tmp_path / "s0", seed=0, val={0: 0.25, 3: 0.5})
    make_run(tmp_path / "s1", seed=1, val={0: 0.25, 4: 0.5})
    col = collect([tmp_path])
    assert markdown(col).splitlines()[2].startswith("| dapo | - | 2 | 3-4 | 50.00 ± 0.00 |")
    assert "dapo: 3-4" in step_warning(col)


def test_loose_runs_are_labelled_by_algorithm_and_components(tmp_path):
    make_run(tmp_path / "run-20250101", seed=0, val={0: 0.25, 4: 0.5})
    make_run(tmp_path / "run-20250102", seed=0, comps="B", val={0: 0.25, 4: 0.625})
    make_run(tmp_path / "run-20250103", seed=0, algo="hapo", comps="ABCD", val={0: 0.25, 4: 0.75})
    make_run(tmp_path / "run-20250104", seed=0, algo="hapo", comps="ABC", val={0: 0.25, 4: 0.75})
    col = collect([tmp_path])
    assert [(v.name, v.is_baseline) for v in col.variants] == [
        ("dapo", True), ("dapo+B", False), ("hapo", False), ("hapo+A+B+C", False)]


def test_stub_of_a_failed_start_is_skipped_and_listed(tmp_path):
    make_run(tmp_path / "dapo-s0", seed=0, val={0: 0.25, 4: 0.5})
    make_run(tmp_path / "dapo-s1", seed=1, val={0: 0.25, 4: 0.25})
    stub = tmp_path / "dapo-s2"
    stub.mkdir()
    (stub / "config.yaml").write_text((tmp_path / "dapo-s0" / "config.yaml").read_text().replace("seed: 0", "seed: 2"))
    (stub / "metrics.jsonl").write_text("")
    col = collect([tmp_path])
    assert [[r.id for r in v.runs] for v in col.variants] == [["dapo-s0", "dapo-s1"]]
    md = markdown(col)
    assert md.splitlines()[2].startswith("| dapo | - | 2 | 4 |")  # not 2/3, no "(pending)"
    assert "pending" not in md
    assert f"- skipped: {stub} never trained (no step in metrics.jsonl): a stub of a failed start" in md


def test_report_cli_skips_stubs_with_a_note_and_results_go_to_stdout(cli, tmp_path):
    make_run(tmp_path / "r0", seed=0, val={0: 0.25, 4: 0.5})
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "config.yaml").write_text("seed: 1\n")
    res = cli("report", str(tmp_path), "--no-plots", "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("| variant | components | seeds | step |")
    assert "never trained" in res.stdout
    assert "hapo report: 1 variants, 1 runs" in res.stderr and "| variant" not in res.stderr


def test_clip_plot_legend_is_outside_the_axes_and_title_says_one_seed(tmp_path):
    import matplotlib.pyplot as plt

    make_run(tmp_path / "a", seed=0, val={0: 0.25, 4: 0.5}, train={1: 0.5, 2: 1.0})
    make_run(tmp_path / "b", seed=0, algo="hapo", comps="ABCD", val={0: 0.25, 4: 0.5}, train={1: 2.0, 2: 4.0})
    fig = clip_by_entropy_figure(collect([tmp_path]))
    fig.canvas.draw()
    ax = fig.axes[0]
    legend_box = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1  # right of the axes: it covers no bar
    assert ax.get_title().endswith("(mean over steps, one seed)")
    plt.close(fig)
    make_run(tmp_path / "b1", seed=1, algo="hapo", comps="ABCD", val={0: 0.25, 4: 0.5}, train={1: 2.0, 2: 4.0})
    fig = clip_by_entropy_figure(collect([tmp_path]))
    assert fig.axes[0].get_title().endswith("(mean over steps and seeds)")
    plt.close(fig)


def test_default_run_folder_names_carry_the_components(tmp_path):
    from hapo_cli.runs.rundir import default_run_dir

    name = default_run_dir(str(tmp_path), None, "dapo", "synthetic", "B").name
    assert name.startswith("dapo+B-synthetic-") and len(name) == len("dapo+B-synthetic-20250101-120000")
    assert default_run_dir(str(tmp_path), None, "hapo", "data/train.parquet", "ABCD").name.startswith("hapo-train-")
    assert default_run_dir(str(tmp_path), None, "dapo", "synthetic").name.startswith("dapo-synthetic-")
    assert default_run_dir(str(tmp_path), "mine", "dapo", "synthetic", "AB") == tmp_path / "mine"
