"""The training loop: DAPO baselines and HAPO variants (hapo-spec for every formula).

One step:
  prompts -> G responses each (rollout engine; ATS uses the previous step's EntropyStats)
  -> rewards (task verifier) + overlong shaping -> dynamic sampling (drop groups whose accuracies
  are all equal, generate more, bounded) -> old log-probs and token entropy (chunked; the first
  mini-batch's come from its own update pass when nothing needs them sooner: `onpolicy_rows`)
  -> EntropyStats (global over ranks) -> advantages (GRPO or TLGA)
  -> mini-batch updates: h, AAC bounds, DAR, clipped loss; token-mean over the whole mini-batch
     whatever the micro-batch split and the number of ranks -> AdamW -> metrics.

Distributed with accelerate: every rank generates and scores its own whole groups; token counts
for the loss and the entropy statistics are global.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hapo_cli import algo
from hapo_cli.config import Config, describe_components
from hapo_cli.data.train_data import PromptSampler, build_prompt, load_train_rows
from hapo_cli.errors import HapoError
from hapo_cli.rollout.base import ATSParams, Rollout, SamplingParams, concat_rollouts
from hapo_cli.train import run as runlib
from hapo_cli.train.modeling import ResponseScorer, load_model_and_tokenizer

# ---------------------------------------------------------------- rewards


def make_reward_fn(data_cfg):
    """(completion, gold) -> (score, acc): the task's verifier."""
    if data_cfg.reward == "synthetic":
        from hapo_cli.data import synthetic

        def synthetic_reward(completion: str, gold: str) -> tuple[float, float]:
            ok = synthetic.verify(completion, gold)
            return (1.0 if ok else -1.0), (1.0 if ok else 0.0)

        return synthetic_reward
    from hapo_cli.rewards import dapo_reward

    return dapo_reward


def make_engine(cfg: Config, model, tokenizer):
    if cfg.rollout.engine == "hf":
        from hapo_cli.rollout.hf import HFRolloutEngine

        # the trainer recomputes old log-probs itself: skip the [N, L, V] scores of generate
        return HFRolloutEngine(model, tokenizer, batch_size=cfg.rollout.batch_size, return_logprobs=False)
    try:
        from hapo_cli.rollout.vllm_engine import VLLMRolloutEngine
    except ImportError as err:
        raise HapoError(f"rollout=vllm needs vLLM ({err}): pip install 'hapo[vllm]' on a CUDA machine, or use rollout=hf") from None
    return VLLMRolloutEngine.from_trainer_config(cfg, model, tokenizer)


# ---------------------------------------------------------------- distributed helpers


class Dist:
    """The few collectives the loop needs, as no-ops on one process."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.main = accelerator.is_main_process

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(x.clone(), reduction="sum") if self.world > 1 else x

    def min(self, x: int) -> int:
        if self.world == 1:
            return x
        t = torch.tensor([x], device=self.acc.device)
        return int(self.acc.gather(t).min().item())

    def mean_dict(self, d: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not d:
            return d
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], device=self.acc.device, dtype=torch.float64)
        t = self.acc.reduce(t, reduction="mean")
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def cat_1d(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a variable-length 1-D tensor across ranks."""
        if self.world == 1:
            return x
        x = x.to(self.acc.device)
        n = self.acc.gather(torch.tensor([x.numel()], device=x.device))
        padded = self.acc.pad_across_processes(x, dim=0, pad_index=0)
        g = self.acc.gather(padded).view(self.world, -1)
        return torch.cat([g[i, : int(n[i])] for i in range(self.world)])

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()


# ---------------------------------------------------------------- the batch


class StepBatch:
    """One step's training data on this rank (whole groups), on the training device."""

    def __init__(self, roll: Rollout, group_ids: torch.Tensor, score: torch.Tensor, acc: torch.Tensor,
                 answers: list[str], device):
        self.roll = roll
        self.input_ids = torch.cat([roll.prompt_ids, roll.response_ids], 1).to(device)
        self.attention_mask = torch.cat([roll.prompt_mask, roll.response_mask], 1).to(device)
        self.response_ids = roll.response_ids.to(device)
        self.mask = roll.response_mask.to(device).float()
        self.group_ids = group_ids.to(device)
        self.score = score.to(device)
        self.acc = acc.to(device)
        self.answers = answers
        self.old_logp = self.entropy = self.ref_logp = self.adv = self.h = None
        self.stats: algo.EntropyStats | None = None
        # rows [0, fresh_rows) have no old-policy pass: the first update fills old_logp / entropy there
        self.fresh_rows = 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]


# ---------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg: Config, raw_cfg, argv: list[str] | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.raw_cfg = raw_cfg
        t = cfg.trainer
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=t.mixed_precision)
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP and cfg.rollout.engine == "hf":
            raise HapoError("FSDP shards the weights and rollout=hf generates with the training module itself: "
                            "use rollout=vllm with FSDP, or DDP (accelerate launch --multi_gpu) for HF rollouts")
        self.dist = Dist(self.accelerator)
        self.device = self.accelerator.device
        if t.train_batch_size % self.dist.world or t.mini_batch_size % self.dist.world:
            raise HapoError(f"trainer.train_batch_size and trainer.mini_batch_size must be multiples of the number of processes ({self.dist.world})")
        self.components = cfg.algorithm.enabled()
        self.run_dir = self._prepare_run_dir(argv or sys.argv)
        self._seed_everything(cfg.seed)

        m = cfg.model
        model, tok = load_model_and_tokenizer(m.name_or_path, dtype=m.dtype, device=self.device,
                                              trust_remote_code=m.trust_remote_code,
                                              attn_implementation=m.attn_implementation)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True
        self.tokenizer = tok
        self.ref_scorer = None  # frozen initial policy, only for the KL penalty
        if cfg.algorithm.kl_coef > 0:
            import copy

            self.ref_scorer = ResponseScorer(copy.deepcopy(model).eval().requires_grad_(False), m.logits_chunk_size)
        scorer = ResponseScorer(model, chunk_size=m.logits_chunk_size)
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.updates_per_step = (t.train_batch_size // t.mini_batch_size) * t.ppo_epochs
        total_updates = max(1, t.total_steps * self.updates_per_step)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda(t, total_updates))
        self.scorer, self.optimizer = self.accelerator.prepare(scorer, opt)
        self.model = self.accelerator.unwrap_model(self.scorer).model
        self.engine = make_engine(cfg, self.model, tok)
        self.reward_fn = make_reward_fn(cfg.data)

        self.rows = load_train_rows(cfg.data, seed=cfg.seed)
        self._prompt_cache: dict[int, list[int]] = {}
        self.sampler = PromptSampler(len(self.rows), cfg.seed)
        self.val_rows, self.val_bench = self._validation_rows()

        self.step = 0
        # Test hooks (fault injection for the test suite): die hard after a step, or poison a step's loss.
        self._crash_step = int(os.environ.get("HAPO_TEST_CRASH_AFTER_STEP", "-1"))
        self._nan_step = int(os.environ.get("HAPO_TEST_NAN_STEP", "-1"))
        self.stats: algo.EntropyStats | None = None  # previous step's EntropyStats (for ATS)
        self.metrics = runlib.MetricsLog(self.run_dir / "metrics.jsonl")
        self.history: dict[str, Any] = {"val": {}}
        resume_id = self._maybe_resume()
        self.wandb = None
        if self.dist.main:
            from omegaconf import OmegaConf

            self.wandb = runlib.WandbLogger(cfg, self.run_dir, OmegaConf.to_container(raw_cfg, resolve=True),
                                            name=self.run_dir.name, resume_id=resume_id)
            self.history["wandb_id"] = self.wandb.run_id

    # ------------------------------------------------------------ setup helpers

    @staticmethod
    def _lr_lambda(t, total_updates: int):
        warm = max(0, t.warmup_steps)

        def f(u: int) -> float:
            if warm and u < warm:
                return (u + 1) / warm
            if t.lr_schedule == "cosine":
                prog = (u - warm) / max(1, total_updates - warm)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
            return 1.0

        return f

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        torch.manual_seed(seed)

    def _prepare_run_dir(self, argv: list[str]) -> Path:
        cfg = self.cfg
        if cfg.run_dir:
            rd = Path(cfg.run_dir)
        else:
            if cfg.resume:
                raise HapoError("resume=true needs run_dir=PATH (the run directory to continue)")
            rd = runlib.default_run_dir(cfg.output_dir, cfg.run_name, cfg.algorithm.name, cfg.data.path or cfg.data.name)
        if self.dist.main:
            if rd.exists() and (rd / "metrics.jsonl").exists() and not cfg.resume:
                raise HapoError(f"run directory {rd} already has a run: add resume=true to continue it, or choose another run_dir")
            rd.mkdir(parents=True, exist_ok=True)
            from omegaconf import OmegaConf

            runlib.atomic_write_text(rd / "config.yaml", OmegaConf.to_yaml(self.raw_cfg))
            runlib.write_meta(rd, argv)
        self.dist.barrier()
        return rd

    def _validation_rows(self):
        d = self.cfg.data
        if d.name == "synthetic" and d.path is None:
            from hapo_cli.data import synthetic

            return synthetic.make_rows("validation", d.val_size, seed=0), "synthetic"
        if d.val_path:
            from hapo_cli.data.benchmarks import load_bench_rows

            return load_bench_rows(d.val_path, limit=d.val_size), d.val_path
        return [], None

    def _maybe_resume(self) -> str | None:
        if not self.cfg.resume:
            return None
        ckpt = runlib.latest_checkpoint(self.run_dir)
        if ckpt is None:
            if self.dist.main:
                print(f"resume: no checkpoint in {self.run_dir}, starting from step 0", file=sys.stderr)
                self.metrics.truncate_after(-1)
            return None
        state = runlib.load_trainer_state(ckpt)
        from safetensors.torch import load_file

        weights = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if real_missing or unexpected:
            raise HapoError(f"checkpoint {ckpt} does not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        runlib.restore_rng(state["rng"])
        self.step = int(state["step"])
        self.stats = algo.EntropyStats.from_dict(state["entropy_stats"]) if state.get("entropy_stats") else None
        self.history = state.get("history", self.history)
        if self.dist.main:
            self.metrics.truncate_after(self.step)
            print(f"resumed from {ckpt} (step {self.step})", file=sys.stderr)
        return self.history.get("wandb_id")

    def _save(self) -> None:
        self.dist.barrier()
        if self.dist.main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": runlib.capture_rng(),
                "entropy_stats": None if self.stats is None else self.stats.as_dict(),
                "history": self.history,
                "config": asdict(self.cfg),
            }
            runlib.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, state,
                                   keep=self.cfg.trainer.keep_checkpoints)
        self.dist.barrier()

    # ------------------------------------------------------------ rollouts

    def _prompt(self, i: int) -> list[int]:
        if i not in self._prompt_cache:
            self._prompt_cache[i] = build_prompt(self.rows[i]["question"], self.cfg.data, self.tokenizer,
                                                 self.cfg.model.chat_template)
        return self._prompt_cache[i]

    def _gen_seed(self, round_idx: int) -> int:
        return (self.cfg.seed * 1_000_003 + self.step * 10_007 + round_idx * 101 + self.dist.rank) % (2**63 - 1)

    def collect(self) -> tuple[StepBatch | None, dict[str, float]]:
        """Generate, reward, shape, filter (dynamic sampling) until this step's groups are ready."""
        cfg, a, t = self.cfg, self.cfg.algorithm, self.cfg.trainer
        G = t.group_size
        need = t.train_batch_size // self.dist.world
        ats = None
        if self.components["A"] and self.stats is not None:
            ats = ATSParams(stats=self.stats.as_dict(), tau=a.temperature_tau, mode=a.entropy_mode)
        params = SamplingParams(n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                top_k=cfg.rollout.top_k, max_new_tokens=cfg.data.max_response_length, ats=ats)
        kept: list[Rollout] = []
        kept_rows: list[int] = []
        kept_score, kept_acc = [], []
        all_acc, all_len, all_trunc, all_temp_sum, all_temp_n = [], [], [], 0.0, 0
        temp_min, temp_max = float("inf"), float("-inf")
        n_groups_seen = n_groups_kept = rounds = 0
        while True:
            rounds += 1
            idx = self.sampler.take(need * self.dist.world)[self.dist.rank :: self.dist.world]
            params.seed = self._gen_seed(rounds)
            roll = self.engine.generate([self._prompt(i) for i in idx], params)
            answers = [self.rows[i]["answer"] for i in idx for _ in range(G)]
            sa = [self.reward_fn(txt, gold) for txt, gold in zip(roll.texts, answers)]
            score = torch.tensor([s for s, _ in sa], dtype=torch.float32)
            acc = torch.tensor([c for _, c in sa], dtype=torch.float32)
            lengths = roll.lengths
            if a.overlong.enable:
                score = score + algo.overlong_penalty(lengths.float(), cfg.data.max_response_length,
                                                      min(a.overlong.buffer_len, cfg.data.max_response_length),
                                                      a.overlong.penalty_factor)
            gids = torch.arange(len(idx)).repeat_interleave(G)
            keep = algo.informative_groups(acc, gids) if a.dynamic_sampling else torch.ones(len(gids), dtype=torch.bool)
            all_acc.append(acc)
            all_len.append(lengths.float())
            all_trunc.append(roll.truncated.float())
            m = roll.response_mask.bool()
            if m.any():
                tv = roll.temperatures[m]
                all_temp_sum += float(tv.sum())
                all_temp_n += int(tv.numel())
                temp_min, temp_max = min(temp_min, float(tv.min())), max(temp_max, float(tv.max()))
            n_groups_seen += len(idx)
            rows_keep = keep.nonzero().squeeze(-1).tolist()
            n_groups_kept += len(rows_keep) // G
            if rows_keep:
                kept.append(roll.select(rows_keep))
                kept_rows.extend(idx[j // G] for j in rows_keep[::G])
                kept_score.append(score[rows_keep])
                kept_acc.append(acc[rows_keep])
            if not a.dynamic_sampling or n_groups_kept >= need:
                break
            if a.max_num_gen_batches and rounds >= a.max_num_gen_batches:
                break
        n_use = self.dist.min(min(n_groups_kept, need))
        acc_all = torch.cat(all_acc)
        len_all = torch.cat(all_len)
        stats = {
            "rollout/acc": float(acc_all.mean()),
            "rollout/response_length": float(len_all.mean()),
            "rollout/length_correct": float(len_all[acc_all > 0].mean()) if (acc_all > 0).any() else float("nan"),
            "rollout/length_wrong": float(len_all[acc_all == 0].mean()) if (acc_all == 0).any() else float("nan"),
            "rollout/truncated_frac": float(torch.cat(all_trunc).mean()),
            "rollout/temperature_mean": all_temp_sum / max(1, all_temp_n),
            "rollout/temperature_min": temp_min if all_temp_n else float("nan"),
            "rollout/temperature_max": temp_max if all_temp_n else float("nan"),
            "rollout/gen_rounds": float(rounds),
            "rollout/groups_seen": float(n_groups_seen),
            "rollout/groups_informative": float(n_groups_kept),
            "rollout/groups_used": float(n_use),
        }
        if n_use < need and self.dist.main:
            from tqdm.auto import tqdm

            tqdm.write(f"step {self.step}: dynamic sampling found {n_use * self.dist.world} of "
                       f"{t.train_batch_size} informative groups in {rounds} generation rounds "
                       f"(algorithm.max_num_gen_batches={a.max_num_gen_batches}); "
                       + ("skipping the update" if n_use == 0 else "training on those"), file=sys.stderr)
        if n_use == 0:
            return None, stats
        roll = concat_rollouts(kept, self.tokenizer.pad_token_id).select(list(range(n_use * G)))
        score = torch.cat(kept_score)[: n_use * G]
        acc = torch.cat(kept_acc)[: n_use * G]
        gids = torch.arange(n_use).repeat_interleave(G) + self.dist.rank * need
        answers = [self.rows[i]["answer"] for i in kept_rows[:n_use] for _ in range(G)]
        batch = StepBatch(roll, gids, score, acc, answers, self.device)
        if a.mask_truncated:
            trunc = roll.truncated.to(self.device)
            batch.mask = batch.mask * (~trunc).float().unsqueeze(-1)
        return batch, stats

    # ------------------------------------------------------------ scoring and advantages

    def _micro_slices(self, n: int, size: int, start: int = 0) -> list[slice]:
        return [slice(i, min(n, i + size)) for i in range(start, n, size)]

    def onpolicy_rows(self) -> int:
        """Leading rows of this rank's batch whose old-policy pass can be skipped (0: none).

        The first mini-batch of the first epoch is trained before any optimizer step, so its
        "old" log-probs and entropies are exactly the ones its own forward pass computes (TRL
        makes the same shortcut when it does one update per step). It applies when nothing needs
        them before that update: no batch-scope h (C or D with stats_scope batch), no KL
        reference, and one PPO epoch (the first mini-batch is then the leading rows).
        """
        t, a = self.cfg.trainer, self.cfg.algorithm
        needs_h = (self.components["C"] or self.components["D"]) and a.stats_scope == "batch"
        if not t.onpolicy_shortcut or needs_h or self.ref_scorer is not None or t.ppo_epochs != 1:
            return 0
        return (t.mini_batch_size // self.dist.world) * t.group_size

    @torch.no_grad()
    def score_old(self, b: StepBatch, skip: int = 0) -> None:
        """Old-policy log-probs and entropies (and reference log-probs for KL), micro-batched.

        Rows `[0, skip)` are left at 0 (see `onpolicy_rows`): the first update fills them in.
        """
        scorer = self.accelerator.unwrap_model(self.scorer)
        T = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        lps, ents, refs = [], [], []
        skip = min(skip, len(b))
        if skip:
            L = b.response_ids.shape[1]
            lps.append(torch.zeros(skip, L, device=b.mask.device))
            ents.append(torch.zeros(skip, L, device=b.mask.device))
        b.fresh_rows = skip
        for sl in self._micro_slices(len(b), self.cfg.trainer.micro_batch_size, start=skip):
            with self.accelerator.autocast():
                lp, ent = scorer(b.input_ids[sl], b.attention_mask[sl], b.response_ids[sl], temperature=T)
            lps.append(lp)
            ents.append(ent)
            if self.ref_scorer is not None:
                refs.append(self.ref_scorer(b.input_ids[sl], b.attention_mask[sl], b.response_ids[sl], temperature=T,
                                with_entropy=False)[0])
        b.old_logp = torch.cat(lps) * b.mask
        b.entropy = torch.cat(ents) * b.mask
        if refs:
            b.ref_logp = torch.cat(refs) * b.mask

    def batch_h(self, b: StepBatch) -> None:
        """`b.h` and `b.stats`: hapo-spec 0 over every valid token of the step (all ranks)."""
        a = self.cfg.algorithm
        if self.dist.world == 1:
            b.h, b.stats = algo.normalize_batch_entropy(b.entropy, b.mask, pivot=a.entropy_pivot, mode=a.entropy_mode)
        else:
            b.stats = self.global_entropy_stats(b.entropy, b.mask)
            b.h = algo.normalize_entropy(b.entropy, b.stats, b.mask, mode=a.entropy_mode)

    def global_entropy_stats(self, entropy: torch.Tensor, mask: torch.Tensor) -> algo.EntropyStats:
        """EntropyStats over every valid token of every rank (hapo-spec 0)."""
        flat = entropy[mask.bool()]
        allv = self.dist.cat_1d(flat)
        return algo.entropy_stats(allv.unsqueeze(0), torch.ones_like(allv).unsqueeze(0), pivot=self.cfg.algorithm.entropy_pivot)

    def advantages(self, b: StepBatch) -> torch.Tensor:
        a = self.cfg.algorithm
        if self.components["B"]:
            return algo.tlga_advantages(b.score, b.group_ids, b.mask, fallback_threshold=a.tlga_fallback_threshold)
        return algo.grpo_advantages(b.score, b.group_ids, b.mask, norm_by_std=a.norm_by_std)

    # ------------------------------------------------------------ the update

    def update(self, b: StepBatch) -> dict[str, float]:
        cfg, a, t = self.cfg, self.cfg.algorithm, self.cfg.trainer
        G = t.group_size
        n_groups = len(b) // G
        per_rank_mb = t.mini_batch_size // self.dist.world  # groups per mini-batch on this rank
        T = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        use_h = any(self.components[k] for k in "CD")
        # diagnostics stay on the device as tensors; one host transfer at the end of the step
        acc_m: dict[str, torch.Tensor] = {}

        def add(k: str, v) -> None:
            v = torch.as_tensor(v, device=self.device).detach().double()
            acc_m[k] = acc_m[k] + v if k in acc_m else v

        def h_split(mask, h, adv, left, right) -> None:  # clip fractions and |A| by the sign of h
            valid = mask.bool()
            hp, hn = valid & (h > 0), valid & (h <= 0)
            add("tok_hpos", hp.sum())
            add("tok_hneg", hn.sum())
            add("clip_left", (left & valid).sum())
            add("clip_right", (right & valid).sum())
            add("clip_left_hpos", (left & hp).sum())
            add("clip_left_hneg", (left & hn).sum())
            add("clip_right_hpos", (right & hp).sum())
            add("clip_right_hneg", (right & hn).sum())
            add("absadv_hpos", (adv.abs() * hp).sum())
            add("absadv_hneg", (adv.abs() * hn).sum())

        deferred: list[tuple] = []
        n_updates = skipped = 0
        grad_norms = []
        self.scorer.train()
        for epoch in range(t.ppo_epochs):
            g = torch.Generator().manual_seed(cfg.seed * 7919 + self.step * 31 + epoch)
            order = torch.randperm(n_groups, generator=g) if t.ppo_epochs > 1 else torch.arange(n_groups)
            for mb_start in range(0, n_groups, per_rank_mb):
                groups = order[mb_start : mb_start + per_rank_mb]
                rows = (groups.unsqueeze(1) * G + torch.arange(G)).flatten().to(b.input_ids.device)
                mb_mask = b.mask[rows]
                denom_tok = self.dist.sum(mb_mask.sum().detach()).clamp(min=1.0)  # global tokens in the mini-batch
                denom_seq = self.dist.sum(torch.tensor(float(len(rows)), device=self.device))
                finite = torch.ones((), dtype=torch.bool, device=self.device)
                micro = self._micro_slices(len(rows), t.micro_batch_size)
                fresh = epoch == 0 and mb_start == 0 and b.fresh_rows > 0  # no old-policy pass yet: see onpolicy_rows
                micro_h = a.stats_scope == "microbatch" and use_h  # h from each micro-batch's current entropy
                for k, sl in enumerate(micro):
                    r = rows[sl]
                    mask = b.mask[r]
                    ctx = self.accelerator.no_sync(self.scorer) if k < len(micro) - 1 else _nullcontext()
                    with ctx:
                        with self.accelerator.autocast():
                            logp, ent = self.scorer(b.input_ids[r], b.attention_mask[r], b.response_ids[r], temperature=T)
                        if fresh:  # the policy has not moved yet: these are the old log-probs
                            old = logp.detach()
                            b.old_logp[r] = old * mask
                            b.entropy[r] = ent.detach().float() * mask
                        else:
                            old = b.old_logp[r]
                        adv = b.adv[r]
                        if micro_h:
                            h, _ = algo.normalize_batch_entropy(ent.detach(), mask, pivot=a.entropy_pivot,
                                                                mode=a.entropy_mode)
                        elif fresh:  # b.h needs every row's entropy: C and D are off, h only splits diagnostics
                            h = torch.zeros_like(mask)
                        else:
                            h = b.h[r]
                        # C and D fused into the clipped loss (alpha/beta None switch them off)
                        loss, m = algo.hapo_policy_loss(
                            logp, old, adv, mask, h, a.clip_ratio_low, a.clip_ratio_high,
                            alpha=a.clip_alpha if self.components["D"] else None,
                            beta=a.adv_beta if self.components["C"] else None,
                            clip_ratio_c=a.clip_ratio_c, agg=a.loss_agg)
                        n_tok = mask.sum()
                        if a.loss_agg == "token-mean":
                            weight = n_tok / denom_tok
                        else:
                            weight = len(r) / denom_seq
                        total = loss * weight * self.dist.world
                        if self._nan_step == self.step:  # test hook: HAPO_TEST_NAN_STEP
                            total = total * float("nan")
                        if a.entropy_coef:
                            total = total - a.entropy_coef * (ent * mask).sum() / denom_tok * self.dist.world
                        if a.kl_coef and b.ref_logp is not None:
                            d = (b.ref_logp[r] - logp).clamp(-20, 20)
                            kl = (torch.exp(d) - d - 1) * mask
                            total = total + a.kl_coef * kl.sum() / denom_tok * self.dist.world
                            add("actor/kl_sum", kl.sum().detach())
                        finite = finite & torch.isfinite(total.detach())
                        self.accelerator.backward(total)
                    # diagnostics (token sums; normalised below)
                    left, right = m["token_clipped_left"], m["token_clipped_right"]
                    if fresh and not micro_h:
                        deferred.append((r, mask, adv, left, right))  # split by h once b.h exists
                    else:
                        h_split(mask, h, adv, left, right)
                    add("tok", n_tok)
                    add("clip_dual", m["clipfrac_dual"] * n_tok)
                    add("ratio_sum", m["ratio_mean"] * n_tok)
                    add("loss_sum", loss.detach() * weight)
                    add("adv_pos_sum", (adv.clamp(min=0) * mask).sum())
                    add("adv_neg_sum", (adv.clamp(max=0) * mask).sum())
                    rmax, rmin = m["ratio_max"].detach().double(), m["ratio_min"].detach().double()
                    acc_m["ratio_max"] = torch.maximum(acc_m["ratio_max"], rmax) if "ratio_max" in acc_m else rmax
                    acc_m["ratio_min"] = torch.minimum(acc_m["ratio_min"], rmin) if "ratio_min" in acc_m else rmin
                if fresh:  # the first mini-batch filled in the last entropies: h, statistics, deferred splits
                    self.batch_h(b)
                    for r, mask, adv, left, right in deferred:
                        h_split(mask, b.h[r], adv, left, right)
                    deferred.clear()
                gn = self._clip_and_check()
                if not bool(finite) or not math.isfinite(gn):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                else:
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    grad_norms.append(gn)
                self.scheduler.step()
                n_updates += 1
        if acc_m:  # one device -> host transfer for all diagnostics
            keys = sorted(acc_m)
            acc_m = dict(zip(keys, torch.stack([acc_m[k] for k in keys]).cpu().tolist()))
        tok = max(1.0, acc_m.get("tok", 0.0))
        hpos, hneg = max(1.0, acc_m.get("tok_hpos", 0.0)), max(1.0, acc_m.get("tok_hneg", 0.0))
        out = {
            "actor/loss": acc_m.get("loss_sum", 0.0) / max(1, n_updates),
            "actor/clipfrac_left": acc_m.get("clip_left", 0.0) / tok,
            "actor/clipfrac_right": acc_m.get("clip_right", 0.0) / tok,
            "actor/clipfrac_left_hpos": acc_m.get("clip_left_hpos", 0.0) / hpos,
            "actor/clipfrac_left_hneg": acc_m.get("clip_left_hneg", 0.0) / hneg,
            "actor/clipfrac_right_hpos": acc_m.get("clip_right_hpos", 0.0) / hpos,
            "actor/clipfrac_right_hneg": acc_m.get("clip_right_hneg", 0.0) / hneg,
            "actor/clipfrac_dual": acc_m.get("clip_dual", 0.0) / tok,
            "actor/ratio_mean": acc_m.get("ratio_sum", 0.0) / tok,
            "actor/ratio_max": acc_m.get("ratio_max", 0.0),
            "actor/ratio_min": acc_m.get("ratio_min", 0.0) if "ratio_min" in acc_m else float("nan"),
            "actor/absadv_hpos": acc_m.get("absadv_hpos", 0.0) / hpos,
            "actor/absadv_hneg": acc_m.get("absadv_hneg", 0.0) / hneg,
            "actor/adv_pos_sum": acc_m.get("adv_pos_sum", 0.0),
            "actor/adv_neg_sum": acc_m.get("adv_neg_sum", 0.0),
            "actor/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            "actor/updates": float(n_updates),
            "actor/skipped_updates": float(skipped),
            "actor/lr": float(self.scheduler.get_last_lr()[0]),
        }
        if "actor/kl_sum" in acc_m:
            out["actor/kl"] = acc_m["actor/kl_sum"] / tok
        return out

    def _clip_and_check(self) -> float:
        clip = self.cfg.trainer.grad_clip
        params = [p for p in self.scorer.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if clip and clip > 0:
            gn = self.accelerator.clip_grad_norm_(self.scorer.parameters(), clip)
        else:
            gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return float(gn)

    # ------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        """avg@k on the held-out set, ATS off, through the evaluator (same code as `hapo eval`)."""
        if not self.val_rows:
            return {}
        d = self.cfg.data
        out: dict[str, float] = {}
        self.engine.sync_weights(self.model)  # on every rank: a vLLM weight sync is collective
        if self.dist.main:
            from hapo_cli.evaluate import evaluate_rows

            summary = evaluate_rows(
                self.engine, self.tokenizer, self.val_rows, bench=self.val_bench, n=d.val_samples,
                temperature=d.val_temperature, top_p=d.val_top_p, max_new_tokens=d.max_response_length,
                seed=self.cfg.seed + 12345, progress=False,
            )
            out = {f"val/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        self.dist.barrier()
        return out

    # ------------------------------------------------------------ the loop

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.scorer.eval()
        self.engine.sync_weights(self.model)  # hf: shares the module; vllm: pushes the new weights (wakes up)
        batch, m = self.collect()
        if hasattr(self.engine, "sleep"):  # vllm colocated: free the engine's GPU memory for the update
            self.engine.sleep()
        t_gen = time.perf_counter() - t0
        if batch is None:
            m["step/skipped_no_informative_groups"] = 1.0
            m["time/gen_s"] = t_gen
            m["time/step_s"] = time.perf_counter() - t0
            return m
        self.score_old(batch, skip=self.onpolicy_rows())
        if not batch.fresh_rows:  # else the update computes them once the first mini-batch is scored
            self.batch_h(batch)
        batch.adv = self.advantages(batch)
        t_score = time.perf_counter() - t0 - t_gen
        um = self.update(batch)
        stats = batch.stats
        m["step/old_pass_rows"] = float(len(batch) - batch.fresh_rows)  # rows the old-policy pass scored (this rank)
        valid = batch.mask.bool()
        tok = max(1.0, float(batch.mask.sum()))
        m.update(um)
        m.update({
            "train/reward": float(batch.score.mean()),
            "train/acc": float(batch.acc.mean()),
            "train/response_length": float(batch.mask.sum(-1).mean()),
            "train/entropy": float(batch.entropy[valid].mean()) if valid.any() else float("nan"),
            "train/h_mean": float(batch.h[valid].mean()) if valid.any() else float("nan"),
            "train/h_pos_frac": float((batch.h[valid] > 0).float().mean()) if valid.any() else float("nan"),
            "train/adv_token_mean": float((batch.adv * batch.mask).sum() / tok),
            "stats/q": float(stats.q), "stats/s": float(stats.s),
            "stats/z_max": float(stats.z_max), "stats/z_min": float(stats.z_min),
            "time/gen_s": t_gen, "time/score_s": t_score,
            "time/update_s": time.perf_counter() - t0 - t_gen - t_score,
        })
        self.stats = stats  # ATS of the next step uses this step's statistics
        if self.cfg.save_rollouts and self.dist.main:
            self._save_rollouts(batch)
        m["time/step_s"] = time.perf_counter() - t0
        return m

    def _save_rollouts(self, b: StepBatch, limit: int = 64) -> None:
        import json

        d = self.run_dir / "rollouts"
        d.mkdir(exist_ok=True)
        n = min(limit, len(b))
        lengths = b.mask[:n].sum(-1).long().tolist()
        cols = {k: [[round(x, 5) for x in row] for row in t[:n].tolist()]
                for k, t in (("entropy", b.entropy), ("h", b.h), ("adv", b.adv), ("temperature", b.roll.temperatures))}
        ids = b.response_ids[:n].tolist()
        groups, acc, score = b.group_ids[:n].tolist(), b.acc[:n].tolist(), b.score[:n].tolist()
        with open(d / f"step_{self.step:06d}.jsonl", "w") as f:
            for i in range(n):
                L = lengths[i]
                f.write(json.dumps({
                    "group": int(groups[i]), "text": b.roll.texts[i], "answer": b.answers[i],
                    "acc": float(acc[i]), "score": float(score[i]),
                    "tokens": self.tokenizer.convert_ids_to_tokens(ids[i][:L]),
                    **{k: v[i][:L] for k, v in cols.items()},
                }) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            self.metrics.append(record)
            if self.wandb is not None:
                self.wandb.log(record, step=record["step"])

    def fit(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.trainer
        start = time.time()
        if self.dist.main:
            comps = describe_components(cfg)
            print(f"run directory: {self.run_dir}", file=sys.stderr)
            print(f"algorithm: {cfg.algorithm.name} (components: {comps}), model: {cfg.model.name_or_path}, "
                  f"data: {cfg.data.path or cfg.data.name}, steps: {t.total_steps}, processes: {self.dist.world}",
                  file=sys.stderr)
        if self.step == 0 and t.val_at_start and self.val_rows:
            v = self.validate()
            self.history["val"]["0"] = v
            self.log({"step": 0, **v})
        bar = None
        if self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.total_steps, initial=self.step, desc=f"hapo train [{cfg.algorithm.name}]",
                       dynamic_ncols=True, file=sys.stderr)
        while self.step < t.total_steps:
            self.step += 1
            m = self.dist.mean_dict(self.train_step())
            last = self.step == t.total_steps
            if (t.val_every and self.step % t.val_every == 0) or last:
                v = self.validate()
                if v:
                    self.history["val"][str(self.step)] = v
                m.update(v)
            m["time/elapsed_s"] = time.time() - start
            self.log({"step": self.step, **m})
            if bar is not None:
                bar.update(1)
                post = {"acc": f"{m.get('rollout/acc', float('nan')):.2f}",
                        "ent": f"{m.get('train/entropy', float('nan')):.3f}"}
                vk = next((k for k in m if k.startswith("val/avg@")), None)
                if vk:
                    post["val"] = f"{m[vk]:.3f}"
                bar.set_postfix(post)
            if (t.save_every and self.step % t.save_every == 0) or last:
                self._save()
            if self.step == self._crash_step:
                os._exit(17)
        if bar is not None:
            bar.close()
        if self.dist.world > 1:
            self.history["dist_param_max_rank_diff"] = self.rank_weight_difference()
        summary = self._summary(time.time() - start)
        if self.dist.main:
            runlib.atomic_write_text(self.run_dir / "summary.json", __import__("json").dumps(summary, indent=2) + "\n")
            if self.wandb is not None:
                self.wandb.finish()
        return summary

    @torch.no_grad()
    def rank_weight_difference(self) -> float:
        """Max |difference| of a per-parameter fingerprint across ranks (0 when DDP keeps them in sync)."""
        fp = torch.stack([p.double().sum() + (p.double() ** 2).sum() for p in self.model.parameters()])
        allfp = self.accelerator.gather(fp.to(self.device).unsqueeze(0))
        return float((allfp - allfp[0:1]).abs().max())

    def _summary(self, seconds: float) -> dict[str, Any]:
        recs = self.metrics.read() if self.dist.main else []
        vals = self.history.get("val", {})
        first = vals.get("0") or (vals[min(vals, key=int)] if vals else {})
        last = vals[max(vals, key=int)] if vals else {}
        train_recs = [r for r in recs if "train/reward" in r]
        key = next((k for k in last if k.startswith("val/avg@")), None)
        return {
            "run_dir": str(self.run_dir),
            "algorithm": self.cfg.algorithm.name,
            "components": describe_components(self.cfg),
            "steps": self.step,
            "seconds": round(seconds, 1),
            "val_metric": key,
            "val_start": first.get(key) if key else None,
            "val_final": last.get(key) if key else None,
            "reward_first": train_recs[0]["train/reward"] if train_recs else None,
            "reward_last": train_recs[-1]["train/reward"] if train_recs else None,
            "entropy_first": train_recs[0]["train/entropy"] if train_recs else None,
            "entropy_last": train_recs[-1]["train/entropy"] if train_recs else None,
            "processes": self.dist.world,
            "dist_param_max_rank_diff": self.history.get("dist_param_max_rank_diff"),
        }


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(cfg: Config, raw_cfg, argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run training; returns the summary on the main process (None on the other ranks)."""
    trainer = Trainer(cfg, raw_cfg, argv)
    summary = trainer.fit()
    return summary if trainer.dist.main else None
