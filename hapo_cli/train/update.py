"""The update: old-policy pass, statistics, advantages, then the mini/micro-batch loop.

Per mini-batch (train_batch_size / mini_batch_size of them per PPO epoch): every micro-batch's
loss is weighted so the mini-batch's gradient is token-mean over ALL its tokens (every rank),
whatever the micro-batch split; then one clipped AdamW step.
"""

from __future__ import annotations

import contextlib
import math

import torch

from hapo_cli import algo, seeds
from hapo_cli.algo.objective import LossInputs
from hapo_cli.train.batch import StepBatch
from hapo_cli.train.diagnostics import UpdateDiagnostics
from hapo_cli.train.scorer import position_ids_from_mask


class Updater:
    """Owns the scorer (the DDP-wrapped policy), its optimizer and LR schedule."""

    def __init__(self, cfg, scorer, optimizer, scheduler, accelerator, dist, objective: algo.Objective,
                 ref_scorer=None, nan_step: int = -1):
        self.cfg, self.t, self.a = cfg, cfg.trainer, cfg.algorithm
        self.scorer, self.optimizer, self.scheduler = scorer, optimizer, scheduler
        self.accelerator, self.dist, self.obj = accelerator, dist, objective
        self.ref_scorer = ref_scorer
        self.n_micro = 0  # micro-batches run in this step's update (seeds a loss's random draw)
        self.nan_step = nan_step  # test hook (HAPO_TEST_NAN_STEP): poison that step's loss
        self.device = accelerator.device
        rt = cfg.rollout.temperature
        self.T = rt if rt > 0 else 1.0  # log-probs and entropies at the rollout's base temperature

    # ------------------------------------------------------------ before the update

    def onpolicy_rows(self) -> int:
        """Leading rows of this rank's batch whose old-policy pass can be skipped (0: none).

        The first mini-batch of the first epoch is trained before any optimizer step, so its
        "old" log-probs and entropies are exactly the ones its own forward pass computes (TRL
        makes the same shortcut with one update per step). It applies when nothing needs them
        sooner: no batch-scope h (unless the entropies come from the rollout), no KL reference,
        one PPO epoch.
        """
        t = self.t
        h_first = self.obj.needs_h_before_update and self.a.entropy_source != "rollout"
        if not t.onpolicy_shortcut or h_first or self.ref_scorer is not None or t.ppo_epochs != 1:
            return 0
        return (t.mini_batch_size // self.dist.world) * t.group_size

    def prepare(self, b: StepBatch) -> None:
        """Old log-probs and entropies, h and EntropyStats (unless deferred), advantages."""
        self.score_old(b, skip=self.onpolicy_rows())
        if not b.fresh_rows or self.a.entropy_source == "rollout":  # else the update computes them
            self.batch_h(b)  # once the first mini-batch is scored
        b.adv = self.obj.advantages(b.score, b.group_ids, b.mask)

    def _slices(self, n: int, start: int = 0) -> list[slice]:
        size = self.t.micro_batch_size
        return [slice(i, min(n, i + size)) for i in range(start, n, size)]

    @torch.no_grad()
    def score_old(self, b: StepBatch, skip: int = 0) -> None:
        """Old-policy log-probs and entropies (and reference log-probs for KL), micro-batched.

        Rows `[0, skip)` are left at 0 (see `onpolicy_rows`): the first update fills them in.
        With `algorithm.entropy_source=rollout` the entropies are the rollout's (`Rollout.entropy`,
        kept by the engine while generating) and this pass computes log-probs only.
        """
        scorer = self.accelerator.unwrap_model(self.scorer)
        from_rollout = self.a.entropy_source == "rollout"
        if from_rollout and b.roll.entropy is None:
            from hapo_cli.errors import HapoError

            raise HapoError("algorithm.entropy_source=rollout: this rollout engine returns no entropies "
                            "(the hf engine does); use algorithm.entropy_source=old_pass")
        lps, ents, refs = [], [], []
        skip = min(skip, len(b))
        if skip:
            L = b.response_ids.shape[1]
            lps.append(torch.zeros(skip, L, device=b.mask.device))
            ents.append(torch.zeros(skip, L, device=b.mask.device))
        b.fresh_rows = skip
        for sl in self._slices(len(b), start=skip):
            with self.accelerator.autocast():
                lp, ent = scorer(b.input_ids[sl], b.attention_mask[sl], b.response_ids[sl], temperature=self.T,
                                 with_entropy=not from_rollout)
            lps.append(lp)
            ents.append(ent)
            if self.ref_scorer is not None:
                refs.append(self.ref_scorer(b.input_ids[sl], b.attention_mask[sl], b.response_ids[sl],
                                            temperature=self.T, with_entropy=False)[0])
        b.old_logp = torch.cat(lps) * b.mask
        if from_rollout:
            b.entropy = b.roll.entropy.to(b.mask.device) * b.mask
        else:
            b.entropy = torch.cat(ents) * b.mask
        if refs:
            b.ref_logp = torch.cat(refs) * b.mask

    def batch_h(self, b: StepBatch) -> None:
        """`b.h` and `b.stats`: hapo-spec 0 over every valid token of the step (all ranks)."""
        if self.dist.world == 1:
            b.h, b.stats = self.obj.normalize(b.entropy, b.mask)
        else:
            b.stats = self.obj.stats_of(self.dist.cat_1d(b.entropy[b.mask.bool()]))
            b.h = self.obj.apply(b.entropy, b.stats, b.mask)

    # ------------------------------------------------------------ the update

    def update(self, b: StepBatch, step: int) -> dict[str, float]:
        t, G = self.t, self.t.group_size
        n_groups, per_rank_mb = len(b) // G, t.mini_batch_size // self.dist.world
        diag = UpdateDiagnostics(self.device)
        n_updates = skipped = self.n_micro = 0
        grad_norms: list[float] = []
        if self.obj.needs_behaviour_logp and self.obj.behaviour_logp == "recompute":
            self.behaviour_pass(b)
        self.scorer.train()
        for epoch in range(t.ppo_epochs):
            g = torch.Generator().manual_seed(seeds.minibatch_order(self.cfg.seed, step, epoch))
            order = torch.randperm(n_groups, generator=g) if t.ppo_epochs > 1 else torch.arange(n_groups)
            for mb_start in range(0, n_groups, per_rank_mb):
                groups = order[mb_start : mb_start + per_rank_mb]
                rows = (groups.unsqueeze(1) * G + torch.arange(G)).flatten().to(b.input_ids.device)
                fresh = epoch == 0 and mb_start == 0 and b.fresh_rows > 0  # no old-policy pass yet
                finite = self._minibatch(b, rows, fresh, diag, step)
                gn = self._step_optimizer(finite)
                if gn is None:
                    skipped += 1
                else:
                    grad_norms.append(gn)
                n_updates += 1
        return diag.metrics(n_updates, skipped, grad_norms, self.scheduler.get_last_lr()[0])

    def _minibatch(self, b: StepBatch, rows: torch.Tensor, fresh: bool, diag: UpdateDiagnostics, step: int):
        """Forward/backward every micro-batch of one mini-batch; -> whether every loss was finite."""
        micro = self._slices(len(rows))
        mb_mask = b.mask[rows]
        selected = self.obj.denominator_tokens([b.mask[rows[sl]] for sl in micro])  # None: every valid token
        tokens = mb_mask.sum().detach() if selected is None else selected
        denom_tok = self.dist.sum(tokens).clamp(min=1.0)  # global denominator tokens in the mini-batch
        denom_seq = self.dist.sum(_seq_count(mb_mask, self.a.loss_agg)).clamp(min=1.0)  # global sequences the agg counts
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for k, sl in enumerate(micro):
            last = k == len(micro) - 1
            ctx = contextlib.nullcontext() if last else self.accelerator.no_sync(self.scorer)
            with ctx:
                finite = finite & self._micro(b, rows[sl], fresh, denom_tok, denom_seq, diag, step)
        if fresh and b.h is None:  # the first mini-batch filled in the last entropies: h, statistics, deferred splits
            self.batch_h(b)
            diag.split_deferred(lambda r: b.h[r])
        return finite

    def _micro(self, b: StepBatch, r, fresh: bool, denom_tok, denom_seq, diag: UpdateDiagnostics, step: int):
        """One micro-batch: forward, the objective's loss, backward; -> finite flag (a 0-dim bool tensor)."""
        a, world, mask = self.a, self.dist.world, b.mask[r]
        with self.accelerator.autocast():
            logp, ent = self.scorer(b.input_ids[r], b.attention_mask[r], b.response_ids[r], temperature=self.T)
        if fresh:  # the policy has not moved yet: these are the old log-probs
            b.old_logp[r] = logp.detach() * mask
            b.entropy[r] = ent.detach().float() * mask
        old = logp.detach() if fresh else b.old_logp[r]
        if self.obj.h_from_microbatch:  # released code: h from each micro-batch's current entropy
            h, _ = self.obj.normalize(ent.detach(), mask)
        elif fresh and b.h is None:  # b.h needs every row's entropy; C and D are off, h only splits diagnostics
            h = torch.zeros_like(mask)
        else:
            h = b.h[r]
        adv = b.adv[r]
        x = LossInputs(logp, old, adv, mask, h, entropy=ent, old_entropy=b.entropy[r],
                       ref_logp=None if b.ref_logp is None else b.ref_logp[r], group_ids=b.group_ids[r],
                       is_weights=self._is_weights(b, r, old, mask, diag), generator=self._generator(step))
        loss, m = self.obj.loss(x)
        seq_share = _seq_count(mask, a.loss_agg) / denom_seq  # this micro-batch's share of the sequences
        weight = self.obj.micro_weight(mask, m, seq_share, denom_tok)
        total = loss * weight * world
        if self.nan_step == step:
            total = total * float("nan")
        if a.entropy_coef:
            total = total - a.entropy_coef * (ent * mask).sum() / denom_tok * world
        if a.kl_coef and b.ref_logp is not None:
            term, km = self.obj.kl_loss(x, a.kl_coef, denom_tok, seq_share)
            total = total + term * world
            diag.add("kl_sum", km.pop("kl_sum"))
            m.update(km)
        self.accelerator.backward(total)
        diag.micro(r, mask, adv, m, loss.detach() * weight, h=None if fresh and b.h is None and not self.obj.h_from_microbatch else h)
        return torch.isfinite(total.detach())

    def _is_weights(self, b: StepBatch, r, old, mask, diag: UpdateDiagnostics):
        """Rollout IS weights of these rows (baselines-spec 7; None when off) and the mismatch figures."""
        if not self.obj.needs_behaviour_logp:
            return None
        beh, inj = b.beh_logp[r], b.injected[r]
        w = self.obj.is_weights(old, beh, mask, inj)
        diag.mismatch(old, beh, mask * (1.0 - inj), w, b.temperatures[r] / self.T)
        return w

    def _generator(self, step: int) -> torch.Generator | None:
        """The seeded generator of this micro-batch's random draw (Clip-Cov), or None when the loss draws nothing."""
        self.n_micro += 1
        if not self.obj.needs_generator:
            return None
        return torch.Generator().manual_seed(seeds.loss_draw(self.cfg.seed, step, self.dist.rank, self.n_micro))

    @torch.no_grad()
    def behaviour_pass(self, b: StepBatch) -> None:
        """`b.beh_logp` recomputed (`behaviour_logp: recompute`): `log_softmax(z / (T_base m))[y]` within top-p."""
        model = self.accelerator.unwrap_model(self.scorer).model
        L, top_p = b.response_ids.shape[1], self.cfg.rollout.top_p
        temps = torch.where(b.mask > 0, b.temperatures, torch.full_like(b.temperatures, self.T))
        out = []
        for sl in self._slices(len(b)):
            with self.accelerator.autocast():
                hidden = model.get_decoder()(input_ids=b.input_ids[sl], attention_mask=b.attention_mask[sl],
                                             position_ids=position_ids_from_mask(b.attention_mask[sl]),
                                             use_cache=False).last_hidden_state[:, -L - 1 : -1]
                logits = model.get_output_embeddings()(hidden)
            out.append(algo.behaviour_logprobs(logits, b.response_ids[sl], temps[sl], top_p))
        lp = torch.cat(out).to(b.mask.device)
        b.beh_logp = torch.where(b.mask > 0, lp, torch.zeros_like(lp))

    def _step_optimizer(self, finite) -> float | None:
        """Clip and step (or skip a non-finite update); advance the LR schedule. -> grad norm or None."""
        gn = self._grad_norm()
        ok = bool(finite) and math.isfinite(gn)
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return gn if ok else None

    def _grad_norm(self) -> float:
        clip = self.t.grad_clip
        params = [p for p in self.scorer.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if clip and clip > 0:
            return float(self.accelerator.clip_grad_norm_(self.scorer.parameters(), clip))
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def _seq_count(mask: torch.Tensor, agg: str) -> torch.Tensor:
    """How many sequences a seq-mean aggregation divides by: those with a valid token (seq-mean-token-mean,
    seq-mean-token-sum, as algo's aggregate_loss), or every row (seq-mean-token-sum-norm's constant B * L)."""
    if agg == "seq-mean-token-sum-norm":
        return torch.tensor(float(mask.shape[0]), device=mask.device, dtype=mask.dtype)
    return (mask.sum(-1) > 0).sum().to(mask.dtype)
