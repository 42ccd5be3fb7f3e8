"""The training loop: DAPO baselines and HAPO variants (hapo-spec for every formula).

One step (`train_step`):
  1. collect   prompts -> G responses each (ATS from the previous step's EntropyStats) -> the task's
               rewards + overlong shaping -> dynamic sampling (drop groups whose accuracies are all
               equal, generate more, bounded)                                    [collect.py]
  2. prepare   old log-probs and token entropy (chunked; the first mini-batch's come from its own
               update pass when nothing needs them sooner) -> EntropyStats (global over ranks)
               -> advantages (the objective's estimator)                         [update.py]
  3. update    mini-batches: h, the objective's loss (C and D inside), token-mean over the whole
               mini-batch whatever the micro-batch split and the number of ranks -> AdamW   [update.py]
  4. record    metrics (one host transfer), saved rollouts, the stats for the next step's ATS.

Around it (`fit`): validation through the evaluator (the task's own prompts and grading),
metrics appended to metrics.jsonl as they happen, checkpoints, W&B. Every decision about
components lives in `algo.Objective` (config: `algorithm.objective()`); this file has none.
Distributed with accelerate: every rank generates and scores its own whole groups.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from hapo_cli import algo, seeds
from hapo_cli.config import Config, describe_components
from hapo_cli.data.train_data import PromptSampler
from hapo_cli.errors import HapoError
from hapo_cli.models import load_model_and_tokenizer
from hapo_cli.rollout.factory import EngineSettings, build_engine, engine_factory, vllm_dtype
from hapo_cli.runs import rollouts as rollout_files
from hapo_cli.runs.files import atomic_write_json
from hapo_cli.runs.rundir import MetricsLog
from hapo_cli.runs.wandb import WandbLogger
from hapo_cli.tasks import build_task, model_path
from hapo_cli.train import checkpoint as ckpt
from hapo_cli.train import console
from hapo_cli.train.batch import StepBatch
from hapo_cli.train.collect import Collector
from hapo_cli.train.diagnostics import batch_metrics
from hapo_cli.train.dist import Dist
from hapo_cli.train.interrupt import Interrupted, StopSignals
from hapo_cli.train.rundir import RunDir
from hapo_cli.train.scorer import ResponseScorer
from hapo_cli.train.update import Updater


class Trainer:
    def __init__(self, cfg: Config, raw_cfg, argv: list[str] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.cfg, self.raw_cfg, t = cfg, raw_cfg, cfg.trainer
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, mixed_precision=t.mixed_precision)
        if self.accelerator.distributed_type == DistributedType.FSDP and cfg.rollout.engine == "hf":
            raise HapoError("FSDP shards the weights and rollout=hf generates with the training module itself: "
                            "use rollout=vllm with FSDP, or DDP (accelerate launch --multi_gpu) for HF rollouts")
        self.dist, self.device = Dist(self.accelerator), self.accelerator.device
        if t.train_batch_size % self.dist.world or t.mini_batch_size % self.dist.world:
            raise HapoError(f"trainer.train_batch_size and trainer.mini_batch_size must be multiples of the number of processes ({self.dist.world})")
        self.objective = cfg.algorithm.objective()
        engine_factory(cfg.rollout.engine)  # an unknown engine fails before anything loads
        self.task = build_task(cfg.data, cfg.model, cfg.seed)
        meta = {"task": self.task.name, "data": {"source": self.task.source, **self.task.data_stats},
                **self.task.run_info()}  # code tasks: which sandbox ran the programs
        self.rundir = RunDir(cfg, raw_cfg, argv or sys.argv, self.dist.main, meta=meta)
        self.run_dir = self.rundir.path
        self.dist.barrier()
        try:
            self._setup(cfg, raw_cfg)
        except BaseException:
            self.close(failed=True)
            raise

    def _setup(self, cfg: Config, raw_cfg) -> None:
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self.hooks = {"crash": int(os.environ.get("HAPO_TEST_CRASH_AFTER_STEP", "-1")),  # test hooks, read once
                      "nan": int(os.environ.get("HAPO_TEST_NAN_STEP", "-1"))}
        self.pool = None
        if self.task.needs_pool:  # rewards and validation graded in worker processes (per-answer timeout)
            from hapo_cli.rewards.pool import GradingPool

            self.pool = GradingPool(num_workers=cfg.data.grading_workers, timeout=cfg.data.grading_timeout).start()
        self._build_model_and_engine()
        self.sampler = PromptSampler(len(self.collector.rows), cfg.seed)
        self.collector.sampler = self.sampler
        self.step = 0
        self.stats: algo.EntropyStats | None = None  # previous step's EntropyStats (for ATS)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.history: dict[str, Any] = {"val": {}}
        resume_id = self._maybe_resume()
        self.wandb = None
        if self.dist.main and cfg.logger.name != "none":
            from omegaconf import OmegaConf

            w = cfg.logger.wandb
            self.wandb = WandbLogger(self.run_dir, OmegaConf.to_container(raw_cfg, resolve=True), mode=w.mode,
                                     project=w.project, entity=w.entity, group=w.group, tags=w.tags,
                                     name=self.run_dir.name, resume_id=resume_id)
            self.history["wandb_id"] = self.wandb.run_id

    # ------------------------------------------------------------ setup

    def _build_model_and_engine(self) -> None:
        from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

        cfg, m, t = self.cfg, self.cfg.model, self.cfg.trainer
        path = model_path(m.name_or_path)
        model, tok = load_model_and_tokenizer(path, dtype=m.dtype, device=self.device,
                                              trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True
        self.tokenizer = tok
        ref = None  # frozen initial policy, only for the KL penalty
        if cfg.algorithm.kl_coef > 0:
            ref = ResponseScorer(copy.deepcopy(model).eval().requires_grad_(False), m.logits_chunk_size)
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        total = max(1, t.total_steps * (t.train_batch_size // t.mini_batch_size) * t.ppo_epochs)
        for group in opt.param_groups:  # the schedule is read at update u + 1: the first update trains at lr / warmup
            group.setdefault("initial_lr", group["lr"])
        if t.lr_schedule == "cosine":
            sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, total, last_epoch=0)
        else:
            sched = get_constant_schedule_with_warmup(opt, t.warmup_steps, last_epoch=0)
        scorer, opt = self.accelerator.prepare(ResponseScorer(model, chunk_size=m.logits_chunk_size), opt)
        self.model = self.accelerator.unwrap_model(scorer).model
        self.updater = Updater(cfg, scorer, opt, sched, self.accelerator, self.dist, self.objective,
                               ref_scorer=ref, nan_step=self.hooks["nan"])
        r = cfg.rollout
        settings = EngineSettings(engine=r.engine, batch_size=r.batch_size, dtype=vllm_dtype(m.dtype), seed=cfg.seed,
                                  gpu_memory_utilization=r.gpu_memory_utilization, tensor_parallel_size=r.tensor_parallel_size,
                                  max_model_len=cfg.data.max_prompt_length + cfg.data.max_response_length,
                                  trust_remote_code=m.trust_remote_code, sampler=r.sampler, entropy_kernel=r.entropy_kernel,
                                  # rollout correction reads each sampled token's processed log-prob from the engine
                                  return_logprobs=self.objective.needs_behaviour_logp and self.objective.behaviour_logp == "engine")
        self.engine = build_engine(settings, self.model, tok, model_path=path)
        self.collector = Collector(cfg, self.task, self.engine, tok, None, self.objective, self.dist, self.device,
                                   pool=self.pool)

    def _maybe_resume(self) -> str | None:
        if not self.cfg.resume:
            return None
        if self.dist.main:
            for name in ckpt.clean_leftovers(self.run_dir):
                print(f"resume: removed {name}, left by a save that was cut short", file=sys.stderr)
        found = ckpt.latest_checkpoint(self.run_dir)
        if found is None:
            if self.dist.main:
                print(f"resume: no checkpoint in {self.run_dir}, starting from step 0", file=sys.stderr)
                self.metrics.truncate_after(-1)
            return None
        state = ckpt.load_trainer_state(found)
        ckpt.load_weights(found, self.model)
        u = self.updater
        u.optimizer.load_state_dict(state["optimizer"])
        u.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.restore_rng(state["rng"])
        self.step = int(state["step"])
        self.stats = algo.EntropyStats.from_dict(state["entropy_stats"]) if state.get("entropy_stats") else None
        self.history = state.get("history", self.history)
        if self.dist.main:
            torn = self.metrics.torn()
            self.metrics.truncate_after(self.step)
            if torn:
                print(f"resume: dropped the last line of {self.metrics.path}, cut short when the run stopped", file=sys.stderr)
            print(f"resumed from {found} (step {self.step})", file=sys.stderr)
        return self.history.get("wandb_id")

    def _save(self) -> None:
        self.dist.barrier()
        if self.dist.main:
            u = self.updater
            state = {
                "step": self.step, "optimizer": u.optimizer.state_dict(), "scheduler": u.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": ckpt.capture_rng(),
                "entropy_stats": None if self.stats is None else self.stats.as_dict(),
                "history": self.history, "config": asdict(self.cfg),
            }
            ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, state,
                                 keep=self.cfg.trainer.keep_checkpoints)
        self.dist.barrier()

    # ------------------------------------------------------------ one step

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.updater.scorer.eval()
        self.engine.sync_weights(self.model)  # hf: shares the module; vllm: pushes the new weights (wakes up)
        batch, m = self.collector.collect(self.step, self.stats)
        if hasattr(self.engine, "sleep"):  # vllm colocated: free the engine's GPU memory for the update
            self.engine.sleep()
        t_gen = time.perf_counter() - t0
        if batch is None:
            m.update({"step/skipped_no_informative_groups": 1.0, "time/gen_s": t_gen,
                      "time/step_s": time.perf_counter() - t0})
            return m
        self.updater.prepare(batch)
        t_score = time.perf_counter() - t0 - t_gen
        m.update(self.updater.update(batch, self.step))
        m["step/old_pass_rows"] = float(len(batch) - batch.fresh_rows)  # rows the old-policy pass scored (this rank)
        m.update(batch_metrics(batch))
        m.update({"time/gen_s": t_gen, "time/score_s": t_score,
                  "time/update_s": time.perf_counter() - t0 - t_gen - t_score})
        self.stats = batch.stats  # ATS of the next step uses this step's statistics
        if self.cfg.save_rollouts and self.dist.main:
            self._save_rollouts(batch)
        m["time/step_s"] = time.perf_counter() - t0
        return m

    def _save_rollouts(self, b: StepBatch, limit: int = 64) -> None:
        n = min(limit, len(b))
        ids, lengths = b.response_ids[:n].tolist(), b.mask[:n].sum(-1).long().tolist()
        groups, acc, score = b.group_ids[:n].tolist(), b.acc[:n].tolist(), b.score[:n].tolist()
        prompts = [p[m.bool()].tolist() for p, m in zip(b.roll.prompt_ids[:n:self.cfg.trainer.group_size],
                                                          b.roll.prompt_mask[:n:self.cfg.trainer.group_size])]
        G = self.cfg.trainer.group_size
        rows = [{"group": int(groups[i]), "prompt": self.tokenizer.decode(prompts[i // G]), "text": b.roll.texts[i],
                 "answer": b.answers[i], "acc": float(acc[i]), "score": float(score[i]),
                 "tokens": self.tokenizer.convert_ids_to_tokens(ids[i][: lengths[i]])} for i in range(n)]
        cols = {"entropy": b.entropy, "h": b.h, "adv": b.adv, "temperature": b.roll.temperatures}
        rollout_files.write_step(self.run_dir, self.step, rows, {k: v[:n].tolist() for k, v in cols.items()}, lengths)

    # ------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        """avg@k on the task's held-out rows, ATS off, through the evaluator (same code as `hapo eval`):
        the training task's own prompts and grading; samples in validation/step_NNNNNN/."""
        rows = self.task.val_rows()
        if not rows:
            return {}
        d = self.cfg.data
        out: dict[str, float] = {}
        self.engine.sync_weights(self.model)  # on every rank: a vLLM weight sync is collective
        if self.dist.main:
            import shutil

            from hapo_cli.evaluate import evaluate_rows

            where = self.run_dir / "validation" / f"step_{self.step:06d}"
            shutil.rmtree(where, ignore_errors=True)  # a resumed run validates this step afresh
            summary = evaluate_rows(self.engine, self.tokenizer, rows, task=self.task, n=d.val_samples,
                                    temperature=d.val_temperature, top_p=d.val_top_p, max_new_tokens=d.max_response_length,
                                    seed=seeds.validation(self.cfg.seed), out_dir=where, progress=False,
                                    grader=self.pool if self.pool is not None else "inline")
            out = {f"val/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
            console.validation_line(self.step, out, self.metrics_last)
        self.dist.barrier()
        return out

    # ------------------------------------------------------------ the loop

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            self.metrics.append(record)
            self.rundir.started()
            if self.wandb is not None:
                self.wandb.log(record, step=record["step"])

    def _one_step(self, bar) -> dict[str, float]:
        t = self.cfg.trainer
        self.step += 1
        m = self.dist.mean_dict(self.train_step())
        self.metrics_last = m
        last = self.step == t.total_steps
        if (t.val_every and self.step % t.val_every == 0) or last:
            v = self.validate()
            if v:
                self.history["val"][str(self.step)] = v
            m.update(v)
        self.history["seconds"] = self.history.get("seconds", 0.0) + m.get("time/step_s", 0.0)
        m["time/elapsed_s"] = time.time() - self.t_start
        self.log({"step": self.step, **m})
        console.show_step(bar, self.step, m, self.cfg.logger.console_every)
        self._check_skipped(m)
        if (t.save_every and self.step % t.save_every == 0) or last:
            self._save()
        if self.step == self.hooks["crash"]:
            os._exit(17)
        return m

    def _check_skipped(self, m: dict[str, float]) -> None:
        """Warn at the first skipped update; stop after max_skipped_steps steps with every update skipped."""
        skipped, updates = m.get("actor/skipped_updates", 0.0), m.get("actor/updates", 0.0)
        if skipped and not self.history.get("warned_skip") and self.dist.main:
            from tqdm.auto import tqdm

            tqdm.write(f"warning: step {self.step}: {skipped:.0f} of {updates:.0f} updates skipped (non-finite loss or "
                       f"gradient); training stops after trainer.max_skipped_steps={self.cfg.trainer.max_skipped_steps} "
                       "such steps in a row", file=sys.stderr)
            self.history["warned_skip"] = True
        if "step/skipped_no_informative_groups" not in m:  # a step without a batch neither counts nor resets
            broken = (updates and skipped == updates) or not math.isfinite(m.get("train/entropy", 0.0))
            self.skipped_run = self.skipped_run + 1 if broken else 0
        limit = self.cfg.trainer.max_skipped_steps
        if limit and self.skipped_run >= limit:
            raise HapoError(f"stopped at step {self.step}: the last {limit} steps had only non-finite updates or entropies "
                            f"(the model no longer trains; try a lower trainer.lr); metrics are in {self.run_dir}")

    def fit(self) -> dict[str, Any]:
        t = self.cfg.trainer
        self.t_start, self.skipped_run, self.metrics_last = time.time(), 0, {}
        if self.dist.main:
            console.start_lines(self.cfg, self.run_dir, self.dist.world, self.device)
        if self.step == 0 and t.val_at_start and self.task.val_rows():
            v = self.validate()
            self.history["val"]["0"] = v
            self.log({"step": 0, **v})
        bar = console.progress_bar(self.cfg, self.step) if self.dist.main else None
        try:
            with StopSignals(self._abandon_message) as stop:
                while self.step < t.total_steps:
                    self._one_step(bar)
                    if self._stop_requested(stop):
                        if self.step != t.total_steps and not (t.save_every and self.step % t.save_every == 0):
                            self._save()
                        raise Interrupted(f"interrupted after step {self.step}: checkpoint saved in {self.run_dir}/checkpoints; "
                                          f"resume with: {self.resume_command()}", stop.exit_code)
        finally:
            if bar is not None:
                bar.close()  # before any error line, so that line is the last one
        if self.dist.world > 1:
            self.history["dist_param_max_rank_diff"] = self.dist.weight_difference(self.model)
        summary = self._summary(time.time() - self.t_start)
        if self.dist.main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def _stop_requested(self, stop: StopSignals) -> bool:
        flag = torch.tensor(float(stop.signum is not None), device=self.device)
        return bool(self.dist.sum(flag) > 0)

    def resume_command(self) -> str:
        return f"hapo train run_dir={self.run_dir} resume=true"

    def _abandon_message(self) -> str:
        found = sorted((self.run_dir / "checkpoints").glob("step_*"))
        last = f"the newest checkpoint is {found[-1].name}" if found else "no checkpoint was written yet"
        return f"interrupted during step {self.step} (abandoned); {last}; resume with: {self.resume_command()}"

    def _summary(self, seconds: float) -> dict[str, Any]:
        recs = self.metrics.read() if self.dist.main else []
        vals = self.history.get("val", {})
        first = vals.get("0") or (vals[min(vals, key=int)] if vals else {})
        last = vals[max(vals, key=int)] if vals else {}
        train_recs = [r for r in recs if "train/reward" in r]
        key = next((k for k in last if k.startswith("val/avg@")), None)

        def rec(i: int, k: str):
            return train_recs[i][k] if train_recs else None

        return {
            "run_dir": str(self.run_dir), "algorithm": self.cfg.algorithm.name, "components": describe_components(self.cfg),
            "steps": self.step, "seconds": round(seconds, 1), "train_seconds_total": round(self.history.get("seconds", 0.0), 1),
            "val_metric": key, "val_start": first.get(key) if key else None, "val_final": last.get(key) if key else None,
            "reward_first": rec(0, "train/reward"), "reward_last": rec(-1, "train/reward"),
            "entropy_first": rec(0, "train/entropy"), "entropy_last": rec(-1, "train/entropy"),
            "processes": self.dist.world, "dist_param_max_rank_diff": self.history.get("dist_param_max_rank_diff"),
        }

    def close(self, failed: bool = False) -> None:
        """Release what the run holds: W&B, the grading pool, the run directory's lock (a stub is removed)."""
        if getattr(self, "wandb", None) is not None:
            self.wandb.finish()
            self.wandb = None
        if getattr(self, "pool", None) is not None:
            self.pool.close()
            self.pool = None
        self.rundir.close(failed)


def train(cfg: Config, raw_cfg, argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run training; returns the summary on the main process (None on the other ranks)."""
    trainer = Trainer(cfg, raw_cfg, argv)
    failed = True
    try:
        summary = trainer.fit()
        failed = False
    finally:
        trainer.close(failed=failed)
    return summary if trainer.dist.main else None
