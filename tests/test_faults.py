"""Faults from outside, on the real CLI and the tiny model: torn and damaged files, kill -9, SIGINT
and SIGTERM, a full disk (a real tmpfs), a changed config on resume, two processes on one run, an
exploding learning rate, the umask. Nothing is lost or silently wrong (README "Runs")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hapo_cli.runs.files import read_jsonl

pytestmark = pytest.mark.slow

FAST = ["experiment=debug", "logger=none", "trainer.train_batch_size=4", "trainer.mini_batch_size=2",
        "trainer.group_size=4", "trainer.num_threads=1", "data.val_size=8", "data.val_samples=2",
        "algorithm.max_num_gen_batches=8", "save_rollouts=false"]


def steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl").records]


def same_metrics(a: Path, b: Path) -> None:
    ra, rb = read_jsonl(a / "metrics.jsonl").records, read_jsonl(b / "metrics.jsonl").records
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        keys = {k for k in x if not k.startswith("time/") and "seconds" not in k}
        assert {k: x[k] for k in keys} == {k: y.get(k) for k in keys}, x["step"]


def start(tmp: Path, run: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    log = open(tmp / f"{run.name}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "hapo_cli.cli", "train", *FAST, f"run_dir={run}", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=full)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (run / "metrics.jsonl").exists() and any(s >= step for s in steps(run)):
            return
        assert proc.poll() is None, "the run ended before the step"
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """An uninterrupted 4-step run to compare with (checkpoints at every step, two kept)."""
    from tests.conftest import run_cli

    run = tmp_path_factory.mktemp("ref") / "run"
    res = run_cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=4", "trainer.save_every=1")
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_torn_metrics_line_and_damaged_checkpoints(cli, reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    # a torn last metrics line (the writer was killed mid-line) and a damaged newest checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/rew')
    sft = run / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(sft.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    sft.write_bytes(bytes(data))
    (run / "checkpoints" / ".step_000005.x1y2").mkdir()  # a save cut short
    (run / "checkpoints" / ".step_000005.x1y2" / "model.safetensors").write_bytes(b"\0" * 100)
    res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=4", "trainer.save_every=1", "resume=true")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "removed .step_000005.x1y2" in res.stderr
    assert "checkpoint step_000004 is not usable (model.safetensors does not match its checksum); resuming from step_000003" in res.stderr
    assert "dropped the last line" in res.stderr
    same_metrics(reference, run)  # step 4 redone from step 3's checkpoint: identical
    assert not list((run / "checkpoints").glob(".step_*"))
    # every checkpoint damaged: one line, exit 2
    for name, damage in (("step_000003", "delete"), ("step_000004", "truncate")):
        folder = run / "checkpoints" / name
        if damage == "delete":
            (folder / "trainer_state.pt").unlink()
        else:
            p = folder / "model.safetensors"
            p.write_bytes(p.read_bytes()[:1000])
    res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=5", "resume=true")
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no intact checkpoint in") and "step_000004: model.safetensors has 1000 bytes" in line
    assert "step_000003: trainer_state.pt is missing" in line


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_the_finished_step_and_resume_matches(reference, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start(tmp_path, run, "trainer.total_steps=4", "trainer.save_every=50")
    wait_for_step(run, 1, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == code
    log = (tmp_path / "run.log").read_text()
    done = steps(run)[-1]
    assert f"interrupted after step {done}: checkpoint saved in {run}/checkpoints; resume with: hapo train run_dir={run} resume=true" in log
    assert (run / "checkpoints" / f"step_{done:06d}" / "MANIFEST.json").is_file()
    proc = start(tmp_path, run, "trainer.total_steps=4", "trainer.save_every=50", "resume=true")
    assert proc.wait(timeout=600) == 0
    same_metrics(reference, run)


def test_resume_refuses_a_changed_config_and_records_an_allowed_one(cli, reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config, meta = (run / "config.yaml").read_text(), json.loads((run / "meta.json").read_text())
    res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=4", "algorithm=dapo", "resume=true")
    assert res.returncode == 2
    assert "resume would change what this run computes: algorithm.components.A (True -> False)" in res.stderr
    assert "algorithm.name ('hapo' -> 'dapo')" in res.stderr
    assert (run / "config.yaml").read_text() == config  # provenance untouched
    res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=5", "trainer.save_every=1", "resume=true")
    assert res.returncode == 0, res.stderr[-2000:]
    assert steps(run) == [0, 1, 2, 3, 4, 5]
    after = json.loads((run / "meta.json").read_text())
    assert after["started"] == meta["started"] and after["argv"] == meta["argv"]
    assert after["resumes"][-1]["changed"]["trainer.total_steps"] == [4, 5]
    assert (run / "config.yaml").read_text() == config
    res = cli("train", *FAST, f"run_dir={tmp_path / 'nothing'}", "resume=true")
    assert res.returncode == 2 and "resume=true but" in res.stderr and "holds no run" in res.stderr
    assert not (tmp_path / "nothing").exists()


def test_second_process_on_a_run_refuses_and_a_dead_holder_is_taken_over(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    first = start(tmp_path, run, "trainer.total_steps=50")
    wait_for_step(run, 1, first)
    second = subprocess.run([sys.executable, "-m", "hapo_cli.cli", "train", *FAST, f"run_dir={run}", "resume=true",
                             "trainer.total_steps=50"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert f"is in use by pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = subprocess.run([sys.executable, "-m", "hapo_cli.cli", "train", *FAST, f"run_dir={run}", "resume=true",
                            "trainer.total_steps=2"], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]  # the stale lock of a dead pid is taken over


def test_killed_sweep_takes_its_training_child_with_it(tmp_path, tiny_model_dir):
    sweep = tmp_path / "sw"
    proc = subprocess.Popen([sys.executable, "-m", "hapo_cli.cli", "ablate", "--components", "D", "--mode", "single",
                             "--sweep-dir", str(sweep), *FAST, "trainer.total_steps=200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    lock = None
    while time.monotonic() - t0 < 300:
        locks = list(sweep.glob("*/.lock"))
        if locks and locks[0].read_text().startswith("pid "):
            lock = locks[0]
            break
        time.sleep(0.2)
    assert lock is not None, "no training child started"
    child = int(lock.read_text().split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"training child {child} still alive 10 s after its sweep was killed")


def test_exploding_learning_rate_stops_with_one_line(cli, tiny_model_dir, tmp_path):
    res = cli("train", *FAST, f"run_dir={tmp_path / 'run'}", "trainer.total_steps=40", "trainer.lr=1e4",
              "trainer.max_skipped_steps=3", "trainer.warmup_steps=0",
              "algorithm.dynamic_sampling=false")
    assert res.returncode == 2
    assert "updates skipped (non-finite loss or gradient)" in res.stderr  # warned at the first skip
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped at step") and "non-finite" in last
    assert steps(tmp_path / "run")[-1] < 40


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_one_line_and_resume_works_after(cli, tiny_model_dir, tmp_path):
    from hapo_cli.runs.files import DiskFull, append_jsonl

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        run = mnt / "run"
        res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=2", "trainer.save_every=1")
        assert res.returncode == 2
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: no space left on the device writing checkpoint {run}/checkpoints/step_0000")
        assert " free)" in last and "Traceback" not in res.stderr
        finished = read_jsonl(run / "metrics.jsonl")
        assert not finished.torn and finished.records[-1]["step"] >= 1
        assert not list((run / "checkpoints").glob(".step_*"))  # the cut save left nothing
        # a metrics append on the full disk: refused whole, nothing torn
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        size = (run / "metrics.jsonl").stat().st_size
        with pytest.raises(DiskFull, match="no space left on the device appending to"):
            append_jsonl(run / "metrics.jsonl", {"step": 99, "x": "y" * 100000})
        assert (run / "metrics.jsonl").stat().st_size == size
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=2", "trainer.save_every=1", "resume=true")
        assert res.returncode == 0, res.stderr[-2000:]
        assert steps(run) == [0, 1, 2]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_files_follow_the_umask(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "hapo_cli.cli", "train", *FAST, f"run_dir={run}", "trainer.total_steps=1"],
                         capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o002))
    assert res.returncode == 0, res.stderr[-2000:]
    for p in [run / "metrics.jsonl", run / "config.yaml", run / "meta.json", run / "summary.json",
              *(run / "checkpoints" / "step_000001").iterdir()]:
        assert p.stat().st_mode & 0o777 == 0o664, p
    assert (run / "checkpoints" / "step_000001").stat().st_mode & 0o777 == 0o775
