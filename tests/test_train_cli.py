"""`hapo train` through the real CLI on the tiny model: every preset, each component on DAPO,
metrics and diagnostics, resume equality, non-finite steps, W&B offline files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST = [
    "experiment=debug",
    "trainer.total_steps=2",
    "trainer.train_batch_size=4",
    "trainer.mini_batch_size=2",
    "trainer.group_size=4",
    "trainer.num_threads=1",
    "data.val_size=8",
    "data.val_samples=2",
    "algorithm.max_num_gen_batches=8",
]

DIAGNOSTICS = [
    "rollout/acc", "rollout/response_length", "rollout/temperature_mean", "rollout/groups_used",
    "train/reward", "train/acc", "train/entropy", "train/h_mean",
    "actor/loss", "actor/clipfrac_left", "actor/clipfrac_right",
    "actor/clipfrac_left_hneg", "actor/clipfrac_right_hpos", "actor/absadv_hpos", "actor/absadv_hneg",
    "actor/adv_pos_sum", "actor/adv_neg_sum", "actor/grad_norm", "stats/q", "stats/s",
]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_ok(cli, run_dir: Path, *overrides: str, env: dict | None = None) -> list[dict]:
    res = cli("train", *FAST, f"run_dir={run_dir}", *overrides, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_metrics(run_dir)


VARIANTS = {
    "grpo": ["algorithm=grpo"],
    "dapo": ["algorithm=dapo"],
    "hapo": ["algorithm=hapo"],
    "hapo_reference": ["algorithm=hapo_reference"],
    "dapo+A": ["algorithm=dapo", "algorithm.components.A=true"],
    "dapo+B": ["algorithm=dapo", "algorithm.components.tlga=true"],
    "dapo+C": ["algorithm=dapo", "algorithm.components.C=true"],
    "dapo+D": ["algorithm=dapo", "algorithm.components.aac=true"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_preset_and_single_component_trains(cli, tiny_model_dir, tmp_path, variant):
    recs = train_ok(cli, tmp_path / "run", *VARIANTS[variant], "trainer.total_steps=3")
    steps = [r["step"] for r in recs]
    assert steps == [0, 1, 2, 3]  # validation at 0, then every step once
    assert "val/avg@2" in recs[0] and "val/avg@2" in recs[-1]
    trained = [r for r in recs[1:] if "train/reward" in r]
    assert trained, "no step found an informative group"
    for r in trained:
        for key in DIAGNOSTICS:
            assert key in r, key
        assert r["actor/skipped_updates"] == 0.0
        assert r["actor/updates"] == 2.0  # train_batch 4 / mini_batch 2
        # 16 rows; the first mini-batch (2 prompts x 4) skips the old-policy pass unless batch-scope
        # h (C or D) needs every entropy before the first update
        assert r["step/old_pass_rows"] == (16.0 if variant in ("hapo", "dapo+C", "dapo+D") else 8.0)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert "packages" in meta and "torch" in meta["packages"]
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip() == "step_000003"
    # the saved config resolves to exactly the intended components (letters and aliases)
    from omegaconf import OmegaConf

    from hapo_cli.config import Config

    saved = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                OmegaConf.load(tmp_path / "run" / "config.yaml")))
    on = "".join(k for k, v in saved.algorithm.enabled().items() if v)
    want = {"grpo": "", "dapo": "", "hapo": "ABCD", "hapo_reference": "ABCD"}.get(variant, variant[-1])
    assert on == want
    # ATS: step 1 has no entropy statistics yet (T_base); later steps sample at T_base (1 + tau h)
    temps = {r["step"]: r["rollout/temperature_mean"] for r in recs[1:]}
    assert temps[1] == 1.0
    if "A" in want:
        assert all(abs(temps[k] - 1.0) > 1e-6 for k in (2, 3))
    else:
        assert temps[2] == temps[3] == 1.0


@pytest.mark.parametrize("variant", ["dapo+A", "hapo_reference"])
def test_onpolicy_shortcut_changes_nothing_but_the_work(cli, tiny_model_dir, tmp_path, variant):
    """The first mini-batch's old log-probs / entropies taken from its own forward pass (the policy
    has not moved yet) give exactly the metrics of scoring every row first: ATS statistics (dapo+A,
    from entropies filled in during the update) and microbatch-scope C/D (hapo_reference) included."""
    on = train_ok(cli, tmp_path / "on", *VARIANTS[variant], "trainer.total_steps=3")
    off = train_ok(cli, tmp_path / "off", *VARIANTS[variant], "trainer.total_steps=3",
                   "trainer.onpolicy_shortcut=false")
    assert [r["step"] for r in on] == [r["step"] for r in off] == [0, 1, 2, 3]
    compared = 0
    for a, b in zip(on, off):
        keys = {k for k in a if not k.startswith("time/") and "seconds" not in k and k != "step/old_pass_rows"}
        assert keys == {k for k in b if not k.startswith("time/") and "seconds" not in k and k != "step/old_pass_rows"}
        for k in keys:
            assert a[k] == b[k], (a["step"], k, a[k], b[k])
            compared += 1
    assert compared > 100
    assert [r.get("step/old_pass_rows") for r in on[1:]] == [8.0] * 3
    assert [r.get("step/old_pass_rows") for r in off[1:]] == [16.0] * 3


def test_resume_equals_uninterrupted(cli, tiny_model_dir, tmp_path):
    """Crash after step 3 (checkpoint at 2), resume: steps 3-4 equal the uninterrupted run's."""
    common = ["trainer.total_steps=4", "trainer.save_every=2", "algorithm=hapo"]
    full = train_ok(cli, tmp_path / "full", *common)
    res = cli("train", *FAST, f"run_dir={tmp_path / 'cut'}", *common, env={"HAPO_TEST_CRASH_AFTER_STEP": "3"})
    assert res.returncode == 17, res.stderr[-2000:]
    cut = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == [0, 1, 2, 3]
    res = cli("train", *FAST, f"run_dir={tmp_path / 'cut'}", *common, "resume=true")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    resumed = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]

    def strip(r):
        return {k: v for k, v in r.items() if not k.startswith("time/") and "seconds" not in k}

    for a, b in zip(full, resumed):
        assert strip(a) == strip(b), (a["step"], set(strip(a).items()) ^ set(strip(b).items()))


def test_non_finite_step_is_skipped_and_logged(cli, tiny_model_dir, tmp_path):
    recs = train_ok(cli, tmp_path / "run", "algorithm=dapo", "trainer.total_steps=3",
                    env={"HAPO_TEST_NAN_STEP": "2"})
    by_step = {r["step"]: r for r in recs}
    assert by_step[2]["actor/skipped_updates"] == by_step[2]["actor/updates"] == 2.0
    assert by_step[3]["actor/skipped_updates"] == 0.0
    # the weights stayed finite: step 3 trained and the final checkpoint loads
    assert by_step[3]["actor/loss"] == by_step[3]["actor/loss"]  # not NaN
    from safetensors.torch import load_file

    ckpt = tmp_path / "run" / "checkpoints" / "step_000003"
    weights = load_file(str(next(ckpt.glob("*.safetensors"))))
    import torch

    assert all(torch.isfinite(w).all() for w in weights.values())


def test_wandb_offline_files(cli, tiny_model_dir, tmp_path):
    recs = train_ok(cli, tmp_path / "run", "logger=wandb", "logger.name=wandb", "algorithm=dapo", "trainer.total_steps=1",
                    env={"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "no-netrc")})
    assert [r["step"] for r in recs] == [0, 1]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no offline W&B data file"


@pytest.mark.parametrize(
    "args, expect",
    [
        (["algorithm=nope"], "unknown algorithm 'nope'; choose one of: archer, cispo, clip_cov, dapo, edge_grpo, forking_tokens, grpo, gspo, hapo, hapo_reference, kl_cov"),
        (["trainer.nope=1"], "unknown config key 'trainer.nope': trainer has total_steps"),
        (["trainer.lr=fast"], "bad value for trainer.lr"),
        (["algorithm.loss_agg=mean"], "algorithm.loss_agg='mean' is not valid; choose one of: token-mean"),
        (["model.name_or_path=/no/such/model"], "model path '/no/such/model' does not exist"),
        (["model.name_or_path=nobody/no-such-model-xyz"], "model 'nobody/no-such-model-xyz' is not in the local cache and HF_HUB_OFFLINE is set (offline)"),
        (["data=local", "data.path=/no/such/file.parquet"], "data file '/no/such/file.parquet' does not exist"),
        (["data=dapo_math"], "cannot load dataset 'BytedTsinghua-SIA/DAPO-Math-17k' from the Hugging Face Hub"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tiny_model_dir, tmp_path, args, expect):
    res = cli("train", f"run_dir={tmp_path / 'run'}", "logger=none", *args, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and expect in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_two_process_ddp_keeps_ranks_identical(tiny_model_dir, tmp_path):
    """accelerate launch with 2 CPU processes (DDP, gloo): groups stay on a rank, weights stay equal."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "hapo_cli.cli", "train", *FAST,
           "trainer.device=cpu", f"run_dir={run}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["dist_param_max_rank_diff"] == 0.0
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [0, 1, 2]
    trained = [r for r in recs if "train/reward" in r]
    # each rank takes up to 2 of the 4 prompts a step (dynamic sampling may find fewer); one group per
    # rank per mini-batch, so every group used is one update on every rank (the logged counts are means)
    assert trained and all(1.0 <= r["rollout/groups_used"] <= 2.0 for r in trained)
    assert all(r["actor/updates"] == r["rollout/groups_used"] for r in trained)


def test_console_says_what_happened(cli, tiny_model_dir, tmp_path):
    """Start-up lines name the device and dtype; every validation prints one line (step, avg@k, pass@k,
    and entropy and reward once there are steps); the results table goes to stdout, progress to stderr."""
    run = tmp_path / "run"
    res = cli("train", *FAST, f"run_dir={run}", "trainer.total_steps=2", "logger.console_every=1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"run directory: {run}" in res.stderr
    assert "processes: 1, device: cpu, dtype: float32" in res.stderr
    val = [line for line in res.stderr.splitlines() if line.startswith("validation: ")]
    assert len(val) == 2 and val[0].startswith("validation: step 0, avg@2 ") and ", pass@2 " in val[0]
    assert val[1].startswith("validation: step 2, avg@2 ") and ", entropy " in val[1] and ", reward " in val[1]
    recs = read_metrics(run)
    assert f"avg@2 {100 * recs[-1]['val/avg@2']:.2f}" in val[1]
    steps = [line for line in res.stderr.splitlines() if line.startswith("step ")]
    assert [s.split(":")[0].split()[-1] for s in steps] == ["1", "2"]  # logger.console_every=1
    assert "hapo train: hapo (components ABCD)" in res.stdout and "validation avg@2" in res.stdout
    assert "hapo train [hapo]" not in res.stdout  # the progress bar stays on stderr
