"""Collect one step's batch: generate G responses per prompt, reward them (the task's verifier +
DAPO's overlong shaping), keep informative groups (dynamic sampling), generate more if needed."""

from __future__ import annotations

import sys

import torch

from hapo_cli import algo, seeds
from hapo_cli.errors import HapoError
from hapo_cli.rollout.base import ATSParams, Rollout, SamplingParams, concat_rollouts
from hapo_cli.tasks import Task
from hapo_cli.train.batch import StepBatch
from hapo_cli.train.diagnostics import RolloutTally
from hapo_cli.train.gec import GuidedErrorCorrection


class Collector:
    """Turns prompts into a `StepBatch` of whole, informative groups on this rank."""

    def __init__(self, cfg, task: Task, engine, tokenizer, sampler, objective: algo.Objective, dist, device,
                 pool=None):
        self.cfg, self.task, self.engine, self.tokenizer = cfg, task, engine, tokenizer
        self.sampler, self.objective, self.dist, self.device, self.pool = sampler, objective, dist, device, pool
        self.rows = task.train_rows()
        self.timeouts = 0  # answers whose grading timed out this step (counted wrong)
        self._prompts: dict[int, list[int]] = {}
        self.gec = GuidedErrorCorrection(cfg.algorithm.edge, engine, tokenizer) if cfg.algorithm.edge.gec else None

    def prompt(self, i: int) -> list[int]:
        if i not in self._prompts:
            self._prompts[i] = self.task.prompt_ids(self.tokenizer, self.rows[i]["question"])
        return self._prompts[i]

    def sampling_params(self, stats: algo.EntropyStats | None) -> SamplingParams:
        r = self.cfg.rollout
        ats = self.objective.ats_params(stats)
        return SamplingParams(n=self.cfg.trainer.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=self.cfg.data.max_response_length,
                              ats=ATSParams(**ats) if ats else None,
                              return_entropy=self.cfg.algorithm.entropy_source == "rollout")

    def reward(self, roll: Rollout, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(shaped score [B], accuracy [B]): the task's verifier (in the grading pool), plus the overlong penalty."""
        graded = self.task.grade(roll.texts, answers, self.pool)
        self.timeouts += sum(bool(g.timed_out) for g in graded)
        sa = [self.task.reward_of(g) for g in graded]
        score = torch.tensor([s for s, _ in sa], dtype=torch.float32)
        acc = torch.tensor([c for _, c in sa], dtype=torch.float32)
        ov, lmax = self.cfg.algorithm.overlong, self.cfg.data.max_response_length
        if ov.enable:
            score = score + algo.overlong_penalty(roll.lengths.float(), lmax, min(ov.buffer_len, lmax), ov.penalty_factor)
        return score, acc

    def collect(self, step: int, stats: algo.EntropyStats | None) -> tuple[StepBatch | None, dict[str, float]]:
        """Generate, reward, filter until this rank has `train_batch_size / world` groups (or rounds run out)."""
        a, t = self.cfg.algorithm, self.cfg.trainer
        G, need = t.group_size, t.train_batch_size // self.dist.world
        params = self.sampling_params(stats)
        kept: list[tuple[Rollout, list[int], torch.Tensor, torch.Tensor]] = []
        tally = RolloutTally()
        rounds = n_kept = self.timeouts = 0
        while True:
            rounds += 1
            idx = self.sampler.take(need * self.dist.world)[self.dist.rank :: self.dist.world]
            params.seed = seeds.generation(self.cfg.seed, step, rounds, self.dist.rank)
            roll = self.engine.generate([self.prompt(i) for i in idx], params)
            self._check_logprobs(roll)
            answers = [self.rows[i]["answer"] for i in idx for _ in range(G)]
            score, acc = self.reward(roll, answers)
            injected = torch.zeros(roll.response_mask.shape)
            if self.gec is not None:  # EDGE-GRPO: GEC -> reward -> dynamic sampling (-> EDA in the loss)
                roll, injected, score, acc = self._correct(roll, idx, answers, score, acc, params, step, rounds, tally)
            gids = torch.arange(len(idx)).repeat_interleave(G)
            keep = algo.informative_groups(acc, gids) if a.dynamic_sampling else torch.ones(len(gids), dtype=torch.bool)
            tally.add(roll, acc, n_groups=len(idx))
            rows_keep = keep.nonzero().squeeze(-1).tolist()
            n_kept += len(rows_keep) // G
            if rows_keep:
                kept.append((roll.select(rows_keep), [idx[j // G] for j in rows_keep[::G]], score[rows_keep], acc[rows_keep],
                             injected[rows_keep]))
            if not a.dynamic_sampling or n_kept >= need or (a.max_num_gen_batches and rounds >= a.max_num_gen_batches):
                break
        n_use = self.dist.min(min(n_kept, need))
        metrics = tally.metrics(rounds=rounds, groups_kept=n_kept, groups_used=n_use)
        if self.task.needs_pool:
            metrics["reward/grading_timeouts"] = float(self.timeouts)
        if n_use < need and self.dist.main:
            self._say_short(step, n_use, rounds)
        if n_use == 0:
            return None, metrics
        return self._batch(kept, n_use, G, need), metrics

    def _batch(self, kept, n_use: int, G: int, need: int) -> StepBatch:
        roll = concat_rollouts([k[0] for k in kept], self.tokenizer.pad_token_id).select(list(range(n_use * G)))
        rows = [i for k in kept for i in k[1]][:n_use]
        score = torch.cat([k[2] for k in kept])[: n_use * G]
        acc = torch.cat([k[3] for k in kept])[: n_use * G]
        gids = torch.arange(n_use).repeat_interleave(G) + self.dist.rank * need
        answers = [self.rows[i]["answer"] for i in rows for _ in range(G)]
        batch = StepBatch(roll, gids, score, acc, answers, self.device)
        L = batch.mask.shape[1]
        inj = torch.cat([torch.nn.functional.pad(k[4], (0, L - k[4].shape[1])) for k in kept])[: n_use * G]
        batch.injected = inj.to(self.device)
        if self.cfg.algorithm.mask_truncated:
            batch.mask = batch.mask * (~roll.truncated.to(self.device)).float().unsqueeze(-1)
        return batch

    def _correct(self, roll, idx, answers, score, acc, params, step: int, rounds: int, tally):
        """GEC on this round's rollout, then the rewards of the rewritten responses."""
        G, r = self.cfg.trainer.group_size, self.dist.rank
        rows = [self.rows[i] for i in idx for _ in range(G)]
        new, injected, counts = self.gec.apply(roll, rows, acc, params, seeds.gec(self.cfg.seed, step, rounds, r),
                                               seeds.gec_generation(self.cfg.seed, step, rounds, r))
        self._check_logprobs(new)
        new_score, new_acc = self.reward(new, answers)
        tally.gec(counts, score, new_score, injected, new.response_mask)
        return new, injected, new_score, new_acc

    def _check_logprobs(self, roll: Rollout) -> None:
        if self.objective.needs_behaviour_logp and self.objective.behaviour_logp == "engine" and roll.logprobs is None:
            raise HapoError("algorithm.rollout_is.behaviour_logp=engine: this rollout engine returned no log-probs; "
                            "use behaviour_logp=recompute")

    def _say_short(self, step: int, n_use: int, rounds: int) -> None:
        from tqdm.auto import tqdm

        t, a = self.cfg.trainer, self.cfg.algorithm
        tqdm.write(f"step {step}: dynamic sampling found {n_use * self.dist.world} of {t.train_batch_size} "
                   f"informative groups in {rounds} generation rounds (algorithm.max_num_gen_batches="
                   f"{a.max_num_gen_batches}); " + ("skipping the update" if n_use == 0 else "training on those"),
                   file=sys.stderr)

