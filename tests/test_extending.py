"""Extending hapo by name (README "Development"): a throwaway advantage estimator, registered in
`algo.ADVANTAGE_ESTIMATORS`, is selected with `algorithm.advantage=<name>` and trains two steps."""

from __future__ import annotations

import pytest

from hapo_cli import algo
from hapo_cli.config import compose_config
from hapo_cli.errors import HapoError
from hapo_cli.runs.files import read_jsonl

pytestmark = pytest.mark.slow


def half_everywhere(rewards, group_ids, mask):
    """A deliberately odd estimator: A = 0.5 on every valid token (so its effect is exact to check)."""
    half_everywhere.calls.append((tuple(rewards.shape), tuple(mask.shape)))
    return 0.5 * mask.to(rewards.dtype)


half_everywhere.calls = []


def test_throwaway_estimator_trains_two_steps(tiny_model_dir, tmp_path, monkeypatch):
    from hapo_cli.train.trainer import train

    monkeypatch.setitem(algo.ADVANTAGE_ESTIMATORS, "half_everywhere", half_everywhere)
    overrides = ["algorithm=dapo", "algorithm.advantage=half_everywhere", "experiment=debug", "logger=none",
                 "trainer.total_steps=2", "trainer.train_batch_size=4", "trainer.mini_batch_size=2",
                 "trainer.group_size=4", "trainer.num_threads=1", "trainer.val_at_start=false", "data.val_size=4",
                 "data.val_samples=1", "algorithm.max_num_gen_batches=8", f"run_dir={tmp_path / 'run'}"]
    cfg, raw = compose_config(overrides)
    assert cfg.algorithm.objective().advantage == "half_everywhere"
    summary = train(cfg, raw, argv=["test"])
    assert summary["steps"] == 2
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl").records if "train/reward" in r]
    assert [r["step"] for r in recs] == [1, 2]
    assert len(half_everywhere.calls) == 2 and all(len(b) == 1 and len(m) == 2 for b, m in half_everywhere.calls)
    for r in recs:
        assert r["train/adv_token_mean"] == pytest.approx(0.5, abs=1e-7)  # the estimator's advantages were used
        assert r["actor/adv_neg_sum"] == 0.0 and r["actor/adv_pos_sum"] > 0


def test_unknown_estimator_is_one_line():
    with pytest.raises(HapoError, match="unknown algorithm.advantage 'nope'; registered: grpo, tlga"):
        compose_config(["algorithm.advantage=nope"])
