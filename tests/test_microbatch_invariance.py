"""The trainer's promise: one mini-batch's gradient does not depend on how it is split into
micro-batches, for every loss aggregation, also with rows that have no valid token (mask_truncated)."""

from __future__ import annotations

import pytest
import torch

from hapo_cli import algo
from hapo_cli.config import Config
from hapo_cli.rollout.base import Rollout
from hapo_cli.train.batch import StepBatch
from hapo_cli.train.dist import Dist
from hapo_cli.train.scorer import ResponseScorer
from hapo_cli.train.update import Updater


def tiny_qwen(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).double()


def make_batch(B: int = 8, P: int = 3, L: int = 5, seed: int = 1) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2, 5, 3])[:B]
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    roll = Rollout(prompt_ids=torch.randint(1, 32, (B, P), generator=g), prompt_mask=torch.ones(B, P, dtype=torch.long),
                   response_ids=torch.randint(1, 32, (B, L), generator=g) * mask, response_mask=mask, logprobs=None,
                   temperatures=torch.ones(B, L), finish_reasons=["stop"] * B, texts=[""] * B)
    score = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0])[:B]
    b = StepBatch(roll, torch.arange(B) // 4, score, (score > 0).float(), [""] * B, "cpu")
    b.mask = b.mask.double()
    b.mask[[2, 5]] = 0.0  # two truncated rows masked out: no valid token
    return b


def gradient(agg: str, micro: int) -> torch.Tensor:
    from accelerate import Accelerator

    cfg = Config()
    cfg.algorithm.loss_agg = agg
    cfg.trainer.micro_batch_size = micro
    cfg.trainer.group_size, cfg.trainer.train_batch_size, cfg.trainer.mini_batch_size = 4, 2, 2
    acc = Accelerator(cpu=True)
    scorer = ResponseScorer(tiny_qwen())
    obj = algo.build_objective("BCD", stats_scope="batch", loss_agg=agg, clip_ratio_high=0.28)
    opt = torch.optim.SGD(scorer.parameters(), lr=0.0)
    up = Updater(cfg, scorer, opt, None, acc, Dist(acc), obj)
    b = make_batch()
    up.prepare(b)
    with torch.no_grad():  # a moved policy: ratios away from 1 so clipping and DAR matter
        b.old_logp = (b.old_logp + 0.3 * torch.sin(torch.arange(b.old_logp.numel(), dtype=torch.float64)).view_as(b.old_logp)) * b.mask
    from hapo_cli.train.diagnostics import UpdateDiagnostics

    scorer.zero_grad()
    up._minibatch(b, torch.arange(len(b)), False, UpdateDiagnostics("cpu"), step=1)
    return torch.cat([p.grad.flatten() for p in scorer.parameters() if p.grad is not None])


@pytest.mark.parametrize("agg", algo.LOSS_AGG_MODES)
def test_gradient_does_not_depend_on_the_micro_batch_split(agg):
    whole = gradient(agg, 8)
    assert whole.abs().max() > 1e-4  # a real gradient
    for micro in (4, 2):
        torch.testing.assert_close(gradient(agg, micro), whole, rtol=1e-6, atol=1e-10)
