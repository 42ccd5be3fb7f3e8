"""Rollout correction's behaviour log-probs on the real HF engine (baselines-spec 7, "Behaviour log-prob"):
float64 tiny model, top_p 1. `engine` (the sampler's processed log-probs) and `recompute` (the
trainer's logits at T_base (1 + tau h)) agree to 1e-6 with ATS on; with ATS off and no truncation
the IS weights pi_old / mu are 1 to 1e-6. Then a CLI run logs the mismatch figures."""

from __future__ import annotations

import json

import pytest
import torch

from hapo_cli import algo
from hapo_cli.config import compose_config
from hapo_cli.rollout.base import ATSParams, SamplingParams
from hapo_cli.rollout.factory import EngineSettings, build_engine
from hapo_cli.train.batch import StepBatch
from hapo_cli.train.dist import Dist
from hapo_cli.train.scorer import ResponseScorer
from hapo_cli.train.update import Updater

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def f64(tiny_model_dir):
    from hapo_cli.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    return model.double().eval(), tok


def _updater(model, overrides):
    from accelerate import Accelerator

    cfg, _ = compose_config(["algorithm=hapo", "trainer.micro_batch_size=5", *overrides])
    acc = Accelerator(cpu=True)
    return Updater(cfg, ResponseScorer(model), None, None, acc, Dist(acc), cfg.algorithm.objective())


def _rollout(model, tok, ats):
    from hapo_cli.data import synthetic

    engine = build_engine(EngineSettings(engine="hf", return_logprobs=True), model, tok)
    rows = synthetic.make_rows("train", 6, seed=0)
    prompts = [tok.encode(synthetic.PROMPT_TEMPLATE.format(question=r["question"])) for r in rows]
    roll = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=3, ats=ats))
    b = StepBatch(roll, torch.arange(6).repeat_interleave(3), torch.zeros(18), torch.zeros(18), [""] * 18, "cpu")
    return roll, b


def _ats_params():
    """Stats that put h across [-1, 1] for the tiny model's entropies, tau large enough to see the shift."""
    ent = torch.linspace(0.05, 2.5, 101, dtype=torch.float64).unsqueeze(0)
    stats = algo.entropy_stats(ent, torch.ones_like(ent), pivot=0.8)
    return ATSParams(stats=stats.as_dict(), tau=0.3, mode="paper")


def test_engine_and_recompute_agree_with_ats_on(f64):
    model, tok = f64
    roll, b = _rollout(model, tok, _ats_params())
    assert roll.logprobs is not None
    valid = b.mask > 0
    factors = roll.temperatures[valid]
    assert factors.max() > 1.05 and factors.min() < 0.95  # ATS moved the temperature both ways
    u = _updater(model, ["algorithm.rollout_is.enable=true", "algorithm.rollout_is.behaviour_logp=recompute"])
    u.behaviour_pass(b)
    engine_lp = roll.logprobs.double()
    diff = (b.beh_logp - engine_lp)[valid].abs().max().item()
    assert diff < 1e-6, diff
    # the correction is not trivially 1 here: pi_old (T_base) differs from mu (ATS temperature)
    u.score_old(b)
    w = u.obj.is_weights(b.old_logp, b.beh_logp, b.mask)
    assert (w[valid].log().abs().max().item()) > 1e-3


def test_weights_are_one_without_ats_or_truncation(f64):
    model, tok = f64
    roll, b = _rollout(model, tok, None)
    u = _updater(model, ["algorithm.rollout_is.enable=true", "algorithm.rollout_is.c_max=null"])
    u.score_old(b)
    w = u.obj.is_weights(b.old_logp, roll.logprobs.to(b.old_logp.dtype), b.mask)
    valid = b.mask > 0
    assert valid.sum() > 20
    assert (w[valid] - 1).abs().max().item() < 1e-6
    assert (w[~valid] == 0).all()


def test_cli_logs_the_mismatch_figures(cli, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    res = cli("train", "algorithm=hapo", "algorithm.rollout_is.enable=true", "experiment=debug", "logger=none",
              "trainer.total_steps=2", "trainer.train_batch_size=4", "trainer.mini_batch_size=2", "trainer.group_size=4",
              "trainer.num_threads=1", "trainer.val_at_start=false", "data.val_size=4", "data.val_samples=1",
              "algorithm.max_num_gen_batches=8", f"run_dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"actor/loss"' in line]
    assert [r["step"] for r in recs] == [1, 2]
    second = recs[1]  # step 2 samples with ATS (step 1 has no statistics yet)
    assert second["rollout/temperature_max"] > second["rollout/temperature_min"]
    for key in ("rollout_is/w_mean", "rollout_is/w_max", "rollout_is/w_min", "rollout_is/delta_mean",
                "rollout_is/k3_mean", "rollout_is/delta_mean_ats_up", "rollout_is/changed_frac"):
        assert key in second, key
    assert second["rollout_is/w_min"] <= second["rollout_is/w_mean"] <= second["rollout_is/w_max"] <= 2.0
    assert second["rollout_is/w_max"] > 1.0 > second["rollout_is/w_min"]  # ATS shifts mu both ways
    first = recs[0]  # no ATS at step 1 (no statistics): mu = pi_old up to float32 engine numerics
    assert abs(first["rollout_is/w_mean"] - 1.0) < 1e-4 and first["rollout_is/k3_mean"] < 1e-8
