"""`StepBatch`: one step's training data on this rank (whole groups), handed from collect to update."""

from __future__ import annotations

import torch

from hapo_cli import algo
from hapo_cli.rollout.base import Rollout


class StepBatch:
    """Shapes: B responses (whole groups of G), P prompt and L response positions."""

    def __init__(self, roll: Rollout, group_ids: torch.Tensor, score: torch.Tensor, acc: torch.Tensor,
                 answers: list[str], device):
        self.roll = roll
        self.input_ids = torch.cat([roll.prompt_ids, roll.response_ids], 1).to(device)  # [B, P+L]
        self.attention_mask = torch.cat([roll.prompt_mask, roll.response_mask], 1).to(device)  # [B, P+L]
        self.response_ids = roll.response_ids.to(device)  # [B, L]
        self.mask = roll.response_mask.to(device).float()  # [B, L] 1 on tokens the loss sees
        self.group_ids = group_ids.to(device)  # [B]
        self.score = score.to(device)  # [B] shaped reward
        self.acc = acc.to(device)  # [B] 0/1 accuracy
        self.answers = answers  # [B] gold answers
        self.old_logp: torch.Tensor | None = None  # [B, L] old-policy log-probs
        self.entropy: torch.Tensor | None = None  # [B, L] old-policy entropy at T_base
        self.ref_logp: torch.Tensor | None = None  # [B, L] reference log-probs (KL only)
        self.adv: torch.Tensor | None = None  # [B, L] advantages
        self.h: torch.Tensor | None = None  # [B, L] normalised entropy (spec 0)
        self.stats: algo.EntropyStats | None = None  # the step's EntropyStats
        self.temperatures = roll.temperatures.to(device).float()  # [B, L] sampling temperature of each token
        self.beh_logp = None if roll.logprobs is None else roll.logprobs.to(device).float()  # [B, L] behaviour log-probs
        self.injected = torch.zeros_like(self.mask)  # [B, L] 1 on tokens GEC wrote (not sampled by the policy)
        # rows [0, fresh_rows) have no old-policy pass: the first update fills old_logp / entropy there
        self.fresh_rows = 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]
