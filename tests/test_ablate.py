"""`hapo ablate` (and `hapo report` on the same sweep) through the real CLI on the tiny model.

One module-scoped sweep (`--components A,B`, 4 runs of 3 steps) is killed with SIGKILL in the
middle of its third run and then re-run; the tests check the finished runs were not redone, the
interrupted one resumed, and that the table's numbers are the runs' own metrics. A second small
sweep has a run made to fail. Plan, spec and dry-run checks need no training.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hapo_cli.errors import HapoError
from hapo_cli.sweep import plan as pl
from hapo_cli.sweep.runner import last_error_line

REPO = Path(__file__).resolve().parent.parent
FAST = [
    "experiment=debug",
    "trainer.total_steps=3",
    "trainer.train_batch_size=4",
    "trainer.mini_batch_size=2",
    "trainer.group_size=4",
    "trainer.num_threads=1",
    "trainer.save_every=1",
    "trainer.val_every=2",
    "data.val_size=8",
    "data.val_samples=2",
    "algorithm.max_num_gen_batches=8",
    "logger=none",
]
RUN_IDS = ["DAPO-seed0", "DAPO+A-seed0", "DAPO+B-seed0", "DAPO+A+B-seed0"]
PLOTS = ["val_accuracy", "entropy", "response_length", "reward", "clip_fractions", "training_dynamics",
         "clip_by_entropy", "token_entropy"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def hapo(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hapo_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- plans and specs (no training)


@pytest.mark.parametrize("mode, include, expect", [
    ("grid", False, [[], ["A"], ["B"], ["A", "B"]]),
    ("add-one", False, [[], ["A"], ["B"]]),
    ("leave-one-out", False, [["A", "B"], ["B"], ["A"]]),
    ("single", False, [["A", "B"]]),
    ("single", True, [[], ["A", "B"]]),
])
def test_modes(mode, include, expect):
    vs = pl.mode_variants(pl.parse_components("B,a"), mode, include)  # order and case do not matter
    assert [v.components for v in vs] == expect
    assert [v.name for v in vs] == ["+".join(["DAPO", *c]) for c in expect]


def test_grid_of_four_has_sixteen_variants():
    vs = pl.mode_variants(pl.parse_components("ats,tlga,dar,aac"), "grid")
    assert len(vs) == 16 and len({tuple(v.components) for v in vs}) == 16
    assert vs[0].name == "DAPO" and vs[-1].name == "DAPO+A+B+C+D"


def test_plan_overrides_order():
    runs = pl.plan_runs([pl.Variant("X", ["C"], ["algorithm.adv_beta=2"])], [0, 7], ["trainer.lr=1e-5"], group="g")
    assert [r.id for r in runs] == ["X-seed0", "X-seed7"]
    assert runs[1].overrides == [
        "algorithm=dapo", "algorithm.components.A=false", "algorithm.components.B=false",
        "algorithm.components.C=true", "algorithm.components.D=false",
        "trainer.lr=1e-5", "algorithm.adv_beta=2", "seed=7", "logger.wandb.group=g",
    ]


def test_paper_spec_rows_and_references():
    spec = pl.load_spec(REPO / "ablations" / "paper.yaml")
    rows = [(v.name, "".join(v.components), v.reference) for v in spec.variants]
    assert rows == [("DAPO", "", 46.97), ("DAPO+A", "A", 48.85), ("DAPO+B", "B", 48.56), ("DAPO+C", "C", 48.28),
                    ("DAPO+D", "D", 48.02), ("DAPO+A+B", "AB", 48.74), ("DAPO+A+B+C", "ABC", 49.42),
                    ("HAPO", "ABCD", 50.04)]
    loo = pl.load_spec(REPO / "ablations" / "leave_one_out.yaml")
    assert [(v.name, "".join(v.components)) for v in loo.variants] == [
        ("DAPO", ""), ("HAPO", "ABCD"), ("HAPO-A", "BCD"), ("HAPO-B", "ACD"), ("HAPO-C", "ABD"), ("HAPO-D", "ABC")]


@pytest.mark.parametrize("text, message", [
    ("rows: []", "`rows` must be a non-empty list"),
    ("rowz: [{name: x, components: []}]", "unknown field 'rowz'; valid fields: name, description"),
    ("rows: [{name: x}]", "rows[0] (x): missing `components`"),
    ("rows: [{name: x, components: [E]}]", "rows[0] (x).components: unknown component 'E'"),
    ("rows: [{name: x, components: [], overides: []}]", "rows[0]: unknown field 'overides'; valid fields: name, components"),
    ("rows: [{name: 'a b', components: []}]", "rows[0]: name must be a string of letters"),
    ("rows: [{name: x, components: []}, {name: x, components: [A]}]", "rows[1]: duplicate row name 'x'"),
    ("rows: [{name: x, components: []}, {name: y, components: []}]", "rows[1] (y): same components and overrides as row 'x'"),
    ("rows: [{name: x, components: [], overrides: [trainer.lr]}]", "override 'trainer.lr' is not key=value"),
    ("rows: [{name: x, components: [], overrides: [seed=1]}]", "seed is set by the sweep for every run"),
    ("rows: [{name: x, components: [], overrides: [algorithm=grpo]}]", "'algorithm=grpo' would change the variant"),
    ("rows: [{name: x, components: [], reference: high}]", "reference must be a number"),
    ("rows: [{name: x, components: [}", "not valid YAML"),
])
def test_spec_errors_are_one_line(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(HapoError) as err:
        pl.load_spec(p)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(p) in str(err.value)


def test_last_error_line():
    log = "loading\rhapo train: 50%|###\nerror: model path '/x' does not exist\n"
    assert last_error_line(log, 2) == "error: model path '/x' does not exist"
    assert last_error_line("Traceback...\n  File x\nRuntimeError: boom\nmore\n", 1) == "RuntimeError: boom"
    assert last_error_line("step 3\r", -9) == "killed by signal 9"
    assert last_error_line("step 3\r", 17) == "exit code 17; last output: step 3"


def test_dry_run_prints_the_plan(tmp_path):
    sdir = tmp_path / "sw"
    res = hapo("ablate", "--components", "A,B", "--seeds", "2", "--sweep-dir", str(sdir), "--dry-run", *FAST)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"sweep grid-AB-debug: 8 runs in {sdir} (W&B group grid-AB-debug)"
    assert lines[1] == f"[1/8] DAPO-seed0  variant=DAPO seed=0 run_dir={sdir / 'DAPO-seed0'}  (will run)"
    assert lines[2] == ("    hapo train algorithm=dapo algorithm.components.A=false algorithm.components.B=false "
                        "algorithm.components.C=false algorithm.components.D=false " + " ".join(FAST)
                        + f" seed=0 logger.wandb.group=grid-AB-debug run_dir={sdir.resolve() / 'DAPO-seed0'}")
    assert lines[15] == f"[8/8] DAPO+A+B-seed1  variant=DAPO+A+B seed=1 run_dir={sdir / 'DAPO+A+B-seed1'}  (will run)"
    assert "algorithm.components.A=true algorithm.components.B=true" in lines[16]
    assert len(lines) == 17
    assert not sdir.exists()  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--components", "A", "trainer.lr=abc"], "error: variant DAPO: bad value for trainer.lr"),
    (["--components", "A", "--spec", "ablations/paper.yaml"], "error: give --components (with --mode) or --spec, not both"),
])
def test_bad_input_fails_before_any_run(tmp_path, args, message):
    res = hapo("ablate", "--sweep-dir", str(tmp_path / "sw"), *args)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith(message), res.stderr
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("kw, message", [
    ({"base": ["trainer.nope=1"]}, "variant DAPO: unknown config key 'trainer.nope'"),
    ({"base": ["algorithm=hapo"]}, "command line: 'algorithm=hapo' would change the variant"),
    ({"base": ["algorithm.components.tlga=true"]}, "would change the variant"),
    ({"base": ["run_dir=x"]}, "command line: run_dir is set by the sweep"),
    ({"mode": "all"}, "unknown --mode 'all'; choose one of: grid, add-one, leave-one-out, single"),
    ({"include_baseline": True}, "--include-baseline applies to --mode single"),
    ({"components": None}, "name the components to ablate"),
    ({"components": "A,X"}, "--components: unknown component 'X'"),
    ({"name": "my sweep"}, "--name 'my sweep': use letters, digits"),
    ({"components": None, "spec": "ablations/paper.yaml", "mode": "grid"}, "--mode and --include-baseline apply to --components"),
])
def test_bad_options(kw, message):
    from hapo_cli.sweep.command import _validate_runs, build_plan

    args = {"components": "A", "mode": None, "spec": None, "include_baseline": False, "seeds": [0],
            "base": [], "name": None, **kw}
    with pytest.raises(HapoError) as err:
        _validate_runs(build_plan(**args)[2])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_seeds_option():
    from hapo_cli.sweep.command import _seeds

    assert _seeds("3") == [0, 1, 2] and _seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "x", "1,1"):
        with pytest.raises(HapoError):
            _seeds(bad)


# ---------------------------------------------------------------- a real sweep, killed and resumed


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """grid over A,B, 1 seed, 3 steps: SIGKILL the whole sweep once its third run has checkpointed
    step 1, then run the same command again. Returns what the tests need to compare."""
    sdir = tmp_path_factory.mktemp("ablate") / "grid"
    args = ["ablate", "--components", "A,B", "--seeds", "1", "--sweep-dir", str(sdir), *FAST]
    log1 = open(sdir.parent / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hapo_cli.cli", *args], cwd=REPO, stdout=log1,
                            stderr=subprocess.STDOUT, start_new_session=True)
    third = sdir / RUN_IDS[2]
    deadline = time.time() + 600
    try:
        while not (third / "checkpoints" / "LATEST").exists():
            assert proc.poll() is None, (sdir.parent / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the sweep did not reach its third run"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process, like a lost node
    finally:
        proc.wait()
        log1.close()
    killed = {
        "third_had_summary": (third / "summary.json").exists(),
        "fourth_existed": (sdir / RUN_IDS[3]).exists(),
        "state": json.loads((sdir / "sweep.json").read_text()),
        "finished": {rid: {"mtime": (sdir / rid / "metrics.jsonl").stat().st_mtime_ns,
                           "metrics": (sdir / rid / "metrics.jsonl").read_text(),
                           "summary": (sdir / rid / "summary.json").read_text(),
                           "log": (sdir / rid / "train.log").read_text()}
                     for rid in RUN_IDS[:2]},
    }
    second = hapo(*args)
    return {"dir": sdir, "killed": killed, "second": second, "args": args}


def test_kill_left_two_finished_runs_and_an_interrupted_one(sweep):
    k = sweep["killed"]
    assert not k["third_had_summary"] and not k["fourth_existed"]
    assert [r["status"] for r in k["state"]["runs"]] == ["done", "done", "running", "pending"]


def test_rerun_completes_without_redoing_finished_runs(sweep):
    sdir, res = sweep["dir"], sweep["second"]
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "[1/4] DAPO-seed0: finished earlier, skipped" in err
    assert "[2/4] DAPO+A-seed0: finished earlier, skipped" in err
    assert "[3/4] DAPO+B-seed0: resuming from its last checkpoint" in err
    assert "[4/4] DAPO+A+B-seed0: starting" in err
    for rid, before in sweep["killed"]["finished"].items():  # untouched: same bytes, same mtime
        assert (sdir / rid / "metrics.jsonl").stat().st_mtime_ns == before["mtime"]
        assert (sdir / rid / "metrics.jsonl").read_text() == before["metrics"]
        assert (sdir / rid / "summary.json").read_text() == before["summary"]
        assert (sdir / rid / "train.log").read_text() == before["log"]
    third = sdir / RUN_IDS[2]
    log = (third / "train.log").read_text()
    assert log.count("=== hapo ablate: attempt") == 2 and "resume=true" in log
    resumed = re.search(r"resumed from \S+step_00000(\d) \(step (\d)\)", log)
    assert resumed and resumed.group(1) == resumed.group(2) and int(resumed.group(1)) in (1, 2), log[-2000:]
    for rid in RUN_IDS:
        assert [r["step"] for r in read_metrics(sdir / rid)] == [0, 1, 2, 3], rid
    state = json.loads((sdir / "sweep.json").read_text())
    assert [(r["id"], r["status"], r["attempts"]) for r in state["runs"]] == [
        ("DAPO-seed0", "done", 1), ("DAPO+A-seed0", "done", 1), ("DAPO+B-seed0", "done", 2), ("DAPO+A+B-seed0", "done", 1)]


def test_every_run_is_its_variant(sweep):
    import yaml

    for rid in RUN_IDS:
        cfg = yaml.safe_load((sweep["dir"] / rid / "config.yaml").read_text())
        on = "".join(k for k in "ABCD" if cfg["algorithm"]["components"][k])
        assert cfg["algorithm"]["name"] == "dapo" and rid == "+".join(["DAPO", *on]) + "-seed0"
        assert cfg["seed"] == 0 and cfg["logger"]["wandb"]["group"] == "grid-AB-debug"
        assert cfg["trainer"]["total_steps"] == 3


def expected_rows(sdir: Path) -> dict[str, dict[str, float]]:
    """Each run's last validation values, read straight from metrics.jsonl."""
    out = {}
    for rid in RUN_IDS:
        last = [r for r in read_metrics(sdir / rid) if "val/avg@2" in r][-1]
        assert last["step"] == 3
        out[rid.removesuffix("-seed0")] = {k: last[f"val/{k}"] for k in ("avg@2", "pass@2", "maj@2")}
    return out


def test_table_numbers_are_the_runs_metrics(sweep):
    sdir = sweep["dir"]
    want = expected_rows(sdir)
    md = (sdir / "results.md").read_text()
    assert md in sweep["second"].stdout  # printed too
    lines = md.splitlines()
    assert lines[0] == "| variant | components | seeds | step | avg@2 (%) | pass@2 (%) | maj@2 (%) | Δ avg@2 vs DAPO |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:6]]
    assert [r[0] for r in rows] == ["DAPO", "DAPO+A", "DAPO+B", "DAPO+A+B"]
    base = want["DAPO"]["avg@2"]
    for r in rows:
        w = want[r[0]]
        assert r[1] == ("+".join(r[0].split("+")[1:]) or "-") and r[2] == "1" and r[3] == "3"  # the last step
        assert r[4:7] == [f"{100 * w[k]:.2f} ± -" for k in ("avg@2", "pass@2", "maj@2")]
        assert r[7] == ("(baseline)" if r[0] == "DAPO" else f"{100 * (w['avg@2'] - base):+.2f}")
    assert lines[6] == ""
    with open(sdir / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert [g["variant"] for g in got] == ["DAPO", "DAPO+A", "DAPO+B", "DAPO+A+B"]
    for g in got:
        w = want[g["variant"]]
        assert [float(g[f"{k}_mean"]) for k in ("avg@2", "pass@2", "maj@2")] == [w["avg@2"], w["pass@2"], w["maj@2"]]
        assert g["avg@2_std"] == "" and g["seeds_finished"] == "1"
        assert float(g["delta_avg@2"]) == w["avg@2"] - base
    summaries = {rid: json.loads((sdir / rid / "summary.json").read_text()) for rid in RUN_IDS}
    assert [s["val_final"] for s in summaries.values()] == [want[r.removesuffix("-seed0")]["avg@2"] for r in RUN_IDS]


def test_changed_plan_is_refused(sweep):
    args = [a if a != "trainer.total_steps=3" else "trainer.total_steps=4" for a in sweep["args"]]
    res = hapo(*args)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: the plan differs from the one saved in {sweep['dir'] / 'sweep.json'}: "
                                 "DAPO-seed0: now trainer.total_steps=4, was trainer.total_steps=3; DAPO+A-seed0: now")
    assert "--force" in res.stderr
    dry = hapo(*sweep["args"], "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.count("(finished, will be skipped)") == 4


def _image(path: Path):
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(path)
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    return img.shape, len(colours), float(img[..., :3].std())


def test_report_on_the_sweep(sweep):
    sdir = sweep["dir"]
    res = hapo("report", str(sdir))
    assert res.returncode == 0, res.stderr[-3000:]
    out = sdir / "report"
    for name in PLOTS:
        shape, n_colours, std = _image(out / f"{name}.png")
        assert shape[0] >= 400 and shape[1] >= 700, (name, shape)
        assert n_colours > 20 and std > 0.02, (name, n_colours, std)  # lines and text, not a flat image
    # the same table as ablate's, from the same runs
    assert (out / "results.md").read_text() == (sdir / "results.md").read_text()
    assert (out / "results.csv").read_text() == (sdir / "results.csv").read_text()
    assert (sdir / "results.md").read_text() in res.stdout
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    want = expected_rows(sdir)
    assert [(r["run"], r["status"], r["step"]) for r in runs] == [(rid, "done", "3") for rid in RUN_IDS]
    assert [float(r["avg@2"]) for r in runs] == [want[rid.removesuffix("-seed0")]["avg@2"] for rid in RUN_IDS]


# ---------------------------------------------------------------- a sweep with a failing run


def test_failed_run_is_listed_and_the_exit_code_is_non_zero(tiny_model_dir, tmp_path):
    spec = tmp_path / "fail.yaml"
    spec.write_text("name: fail\nrows:\n"
                    "  - {name: broken, components: [A], overrides: [model.name_or_path=/no/such/model]}\n"
                    "  - {name: DAPO, components: []}\n")
    sdir = tmp_path / "sw"
    args = ["ablate", "--spec", str(spec), "--sweep-dir", str(sdir), *FAST, "trainer.total_steps=1"]
    res = hapo(*args)
    assert res.returncode == 1, res.stderr[-3000:]
    error = "error: model path '/no/such/model' does not exist"
    assert "[1/2] broken-seed0: FAILED (exit 2)" in res.stderr and error in res.stderr
    assert "[2/2] DAPO-seed0: done" in res.stderr  # the sweep went on
    md = (sdir / "results.md").read_text()
    assert md in res.stdout
    assert f"Failed runs:\n- broken-seed0 (exit 2): {error}" in md
    assert "| broken | A | 0/1 | - | - | - | - | - |" in md
    dapo = [r for r in read_metrics(sdir / "DAPO-seed0") if "val/avg@2" in r][-1]["val/avg@2"]
    assert f"| DAPO | - | 1 | 1 | {100 * dapo:.2f} ± - |" in md
    state = json.loads((sdir / "sweep.json").read_text())
    assert [(r["status"], r["returncode"]) for r in state["runs"]] == [("failed", 2), ("done", 0)]
    assert state["runs"][0]["error"].startswith(error) and state["runs"][1]["error"] is None
    # again: the finished run is skipped, the failed one retried (and still failing)
    again = hapo(*args)
    assert again.returncode == 1
    assert "[2/2] DAPO-seed0: finished earlier, skipped" in again.stderr
    assert "[1/2] broken-seed0: retrying" in again.stderr
    state = json.loads((sdir / "sweep.json").read_text())
    assert [r["attempts"] for r in state["runs"]] == [2, 1]


def test_sigterm_stops_the_training_and_records_it(tiny_model_dir, tmp_path):
    """SIGTERM (or Ctrl-C) while a run trains: the child is stopped, the run is marked interrupted,
    the exit code is 130."""
    sdir = tmp_path / "sw"
    err_path = tmp_path / "err.log"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hapo_cli.cli", "ablate", "--components", "D", "--mode", "single",
                                 "--sweep-dir", str(sdir), *FAST], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 300
        while "[1/1] DAPO+D-seed0: starting" not in err_path.read_text():
            assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    assert "interrupted: run the same command again to continue" in err_path.read_text()
    state = json.loads((sdir / "sweep.json").read_text())
    assert [(r["status"], r["attempts"]) for r in state["runs"]] == [("interrupted", 1)]
    assert not (sdir / "DAPO+D-seed0" / "summary.json").exists()
