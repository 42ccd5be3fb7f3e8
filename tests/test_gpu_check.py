"""benchmarks/gpu_check.py: the sync counter's attribution, and the whole check's dry run on CPU.

The dry run is the GPU machine's command on tiny shapes (every stage, each in its own process):
it must pass here, so the first GPU run fails only for what only a GPU can show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_sync_counter_attributes_each_sync_to_its_phase_and_site():
    import gpu_check

    counter = gpu_check.SyncCounter(use_cuda=False)

    class Step:
        def loss(self, x):
            y = x[x > 0]  # boolean indexing: a data-dependent shape
            return float(y.sum()) + torch.nonzero(x).shape[0]  # a scalar read, nonzero

        def optimizer(self, x):
            return bool(x.sum() > 0)

    counter.wrap(Step, "loss", "loss")
    counter.wrap(Step, "optimizer", "optimizer")
    x = torch.tensor([1.0, -2.0, 3.0])
    Step().loss(x)  # not counted: before start()
    counter.start()
    try:
        assert Step().loss(x) == 4.0 + 3  # sum of the positives, count of the non-zeros
        Step().optimizer(x)
        float(x.max())  # outside any phase: "loop"
        counter._show = lambda *a: None  # the CUDA sync debug mode's warning, as it arrives on CUDA
        with warnings.catch_warnings():
            counter.stack.append("loss")
            counter._on_warning(UserWarning(counter.MESSAGE), UserWarning, "x.py", 1)
            counter.stack.pop()
    finally:
        counter.stop()
    Step().loss(x)  # not counted: after stop()
    assert dict(counter.counts["ops"]) == {"loss": 3, "optimizer": 1, "loop": 1}
    assert dict(counter.counts["cuda"]) == {"loss": 1}
    sites = counter.sites["ops"]
    assert sum(sites.values()) == 3  # the loss path's sites: here, the lines of Step.loss
    assert all(s.startswith("tests/test_gpu_check.py:") and s.endswith("(loss)") for s in sites), dict(sites)


@pytest.mark.slow
def test_dry_run_passes_every_stage_on_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "gpu"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert res.returncode == 0, res.stderr[-4000:] + json.dumps(
        {k: (v["status"], v.get("error"), [c for c in v["checks"] if not c["ok"]]) for k, v in stages.items()})
    assert list(stages) == ["tests", "train", "memory", "ats", "step_time", "vllm"]
    assert {k: v["status"] for k, v in stages.items()} == dict.fromkeys(stages, "pass")
    assert (out / "gpu_check.md").read_text().count("**pass**") == 6
    t = stages["tests"]["figures"]
    assert t["collected"] == t["skipped"] == 6  # tests/test_cuda.py, all skipped without CUDA
    for algo in ("hapo", "dapo"):
        run = stages["train"]["runs"][algo]
        assert run["steps"] == 4 and run["s_per_step"] > 0 and not run["missing_metrics"]
        assert run["syncs_per_step"]["cuda"] == {}  # the CUDA sync debug mode: not applicable on CPU
        assert run["loss_path_own_syncs_per_step"]["ops"] <= 1
        assert run["syncs_per_step"]["ops"]["collect"] > 0  # generation reads the stop flags: counted
    mem = stages["memory"]["figures"]
    assert mem["max_abs_logp_diff"] <= 1e-4 and mem["chunked/old_pass_peak_gib"] is None  # no CUDA peak on CPU
    ats = stages["ats"]["figures"]
    assert ats["tokens_per_s_with_ats"] > 0 and ats["tokens_per_s_without_ats"] > 0
    assert list(stages["step_time"]["figures"]["hapo_over_dapo"].values())[0] > 0
    assert len(stages["vllm"]["figures"]["steps"]) == 2  # gpu_smoke.py with the HF engine on CPU
    assert report["seconds"] < 180
