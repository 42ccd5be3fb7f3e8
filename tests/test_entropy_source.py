"""`algorithm.entropy_source=rollout`: the HF engine's `Rollout.entropy` is the old-policy entropy.

On CPU in float64 the entropy the engine keeps while generating (KV-cached decoding) equals the
trainer's old-policy pass (`ResponseScorer`, one full forward) to 1e-6 at every generated
position, at T_base = 1 and 0.7, with and without ATS; keeping it changes nothing about what is
sampled (ATS reuses it, bit for bit, in float32); and a CLI run with it matches `old_pass` while
skipping the old-policy pass of the first mini-batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hapo_cli.rollout.base import ATSParams, SamplingParams
from hapo_cli.rollout.hf import HFRolloutEngine
from hapo_cli.train.scorer import ResponseScorer

STATS = {"q": 0.2, "s": 0.9, "z_max": 2.0, "z_min": -3.0}  # h spans both signs on the tiny model


def _engine(tiny_model_dir, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    return HFRolloutEngine(model, tok), model, tok


def _prompts(tok):
    return [tok("12+7=")["input_ids"], tok("3+45=")["input_ids"], tok("8+8=")["input_ids"]]


@pytest.mark.parametrize("t_base", [1.0, 0.7])
@pytest.mark.parametrize("ats", [False, True])
def test_rollout_entropy_equals_old_pass_in_float64(tiny_model_dir, t_base, ats):
    torch.set_num_threads(1)
    engine, model, tok = _engine(tiny_model_dir, torch.float64)
    params = SamplingParams(n=4, temperature=t_base, max_new_tokens=12, seed=3, return_entropy=True,
                            ats=ATSParams(stats=STATS, tau=0.3) if ats else None)
    roll = engine.generate(_prompts(tok), params)
    assert roll.entropy is not None and roll.entropy.dtype == torch.float64
    assert roll.entropy.shape == roll.response_ids.shape
    ids = torch.cat([roll.prompt_ids, roll.response_ids], 1)
    att = torch.cat([roll.prompt_mask, roll.response_mask], 1)
    with torch.no_grad():
        _, ent = ResponseScorer(model)(ids, att, roll.response_ids, temperature=t_base)
    mask = roll.response_mask.bool()
    assert mask.sum() > 30
    assert torch.equal(roll.entropy[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    err = (roll.entropy[mask] - ent[mask]).abs().max().item()
    assert err < 1e-6, err
    assert ent[mask].std() > 0.05  # real, varying entropies (not a constant that trivially agrees)
    if ats:  # the temperatures did vary: ATS was on
        assert roll.temperatures[mask].std() > 1e-3


def test_keeping_the_entropy_changes_nothing_sampled(tiny_model_dir):
    """float32: with ATS the processor reuses the kept entropy; tokens, factors, log-probs are bit-identical."""
    torch.set_num_threads(1)
    engine, _, tok = _engine(tiny_model_dir, torch.float32)
    engine.return_logprobs = True
    outs = [engine.generate(_prompts(tok), SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=5,
                                                         ats=ATSParams(stats=STATS, tau=0.3), return_entropy=keep))
            for keep in (False, True)]
    off, on = outs
    assert off.entropy is None and on.entropy is not None
    assert torch.equal(off.response_ids, on.response_ids)
    assert torch.equal(off.temperatures, on.temperatures)
    assert torch.equal(off.logprobs, on.logprobs)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_cli_hapo_with_rollout_entropy_matches_old_pass_and_skips_it(cli, tiny_model_dir, tmp_path):
    common = ["train", "experiment=debug", "algorithm=hapo", "trainer.total_steps=2", "trainer.train_batch_size=4",
              "trainer.mini_batch_size=2", "trainer.group_size=4", "trainer.num_threads=1", "data.val_size=8",
              "data.val_samples=2", "algorithm.max_num_gen_batches=8", "trainer.val_every=0",
              "trainer.val_at_start=false"]
    runs = {}
    for src in ("old_pass", "rollout"):
        res = cli(*common, f"algorithm.entropy_source={src}", f"run_dir={tmp_path / src}")
        assert res.returncode == 0, res.stderr[-3000:]
        runs[src] = [r for r in _metrics(tmp_path / src) if "train/entropy" in r]
    old, new = runs["old_pass"], runs["rollout"]
    assert len(old) == len(new) == 2
    # batch-scope C/D need every h before the first update: old_pass scores all 16 rows first,
    # rollout only the second mini-batch's 8
    assert [r["step/old_pass_rows"] for r in old] == [16.0, 16.0]
    assert [r["step/old_pass_rows"] for r in new] == [8.0, 8.0]
    for a, b in zip(old, new):
        assert a["rollout/response_length"] == b["rollout/response_length"]
        for k in ("train/entropy", "train/h_mean", "stats/q", "stats/s", "actor/loss", "actor/adv_pos_sum"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), (a["step"], k, a[k], b[k])


def test_rollout_source_without_entropies_is_one_clear_error():
    from types import SimpleNamespace

    from hapo_cli.errors import HapoError
    from hapo_cli.train.update import Updater

    up = Updater.__new__(Updater)
    up.a = SimpleNamespace(entropy_source="rollout")
    up.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    up.scorer = None
    b = SimpleNamespace(roll=SimpleNamespace(entropy=None))
    with pytest.raises(HapoError, match="entropy_source=old_pass"):
        up.score_old(b)
