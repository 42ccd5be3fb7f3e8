"""Every baseline preset (conf/algorithm/, baselines-spec) through the real CLI on the tiny model,
plus two compositions by config; each run must log its method's own figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST = ["experiment=debug", "logger=none", "trainer.total_steps=2", "trainer.train_batch_size=4",
        "trainer.mini_batch_size=2", "trainer.group_size=4", "trainer.num_threads=1", "trainer.val_at_start=false",
        "data.val_size=4", "data.val_samples=1", "algorithm.max_num_gen_batches=8"]

# variant -> (overrides, metrics its method logs)
VARIANTS = {
    "forking_tokens": (["algorithm=forking_tokens"], ["actor/selected_frac"]),
    "archer": (["algorithm=archer"], ["actor/kl", "actor/kl_low", "actor/high_frac", "actor/q_mean"]),
    "edge_grpo": (["algorithm=edge_grpo", "algorithm.edge.gec_reflect_tokens=4"],
                  ["gec/reflect", "gec/answer", "gec/injected_frac", "actor/eda_adv_var_after"]),
    "gspo": (["algorithm=gspo"], ["actor/seq_ratio_mean", "actor/seq_clipfrac_left"]),
    "cispo": (["algorithm=cispo"], ["actor/weight_mean", "actor/surrogate", "actor/capfrac_pos"]),
    "clip_cov": (["algorithm=clip_cov"], ["actor/n_selected", "actor/n_candidates"]),
    "kl_cov": (["algorithm=kl_cov"], ["actor/n_selected", "actor/kl_selected_mean"]),
    "hapo+gspo": (["algorithm=hapo", "algorithm.loss=gspo"], ["actor/seq_ratio_mean", "stats/q"]),
    "dapo+forking": (["algorithm=dapo", "algorithm.token_mask=forking", "trainer.micro_batch_size=3"],
                     ["actor/selected_frac"]),
}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"actor/loss"' in line]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_preset_trains_and_logs_its_figures(cli, tiny_model_dir, tmp_path, variant):
    overrides, keys = VARIANTS[variant]
    run = tmp_path / "run"
    res = cli("train", *FAST, *overrides, f"run_dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        for key in ["actor/loss", "actor/grad_norm", *keys]:
            assert key in r and math.isfinite(r[key]), (key, r.get(key))
        assert r["actor/skipped_updates"] == 0.0 and r["actor/updates"] == 2.0
    last = recs[-1]
    if variant == "forking_tokens":  # topk_ceil keeps ceil(0.2 n) of each micro-batch's n tokens
        assert 0.2 <= last["actor/selected_frac"] < 0.4
    if variant == "edge_grpo":  # GEC rewrote wrong responses (the tiny model is mostly wrong)
        assert last["gec/reflect"] + last["gec/answer"] > 0 and last["gec/injected_frac"] > 0
    if variant == "kl_cov":  # max(int(ratio * N), 1) = 1 token on the tiny batch
        assert last["actor/n_selected"] == pytest.approx(1.0)
    if variant == "clip_cov":  # at most max(int(ratio * N), 1) = 1 token a micro-batch, drawn among the candidates
        assert 0.0 <= last["actor/n_selected"] <= 1.0 and last["actor/n_candidates"] >= last["actor/n_selected"]
    if variant == "archer":
        assert last["actor/high_frac"] + last["actor/low_frac"] == pytest.approx(1.0)
