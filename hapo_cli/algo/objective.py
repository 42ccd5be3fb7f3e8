"""The objective: the ONE place that maps the switches (HAPO's components A-D, the advantage
estimator, the policy loss by name, the token mask, rollout correction) to the maths of this
package. Trainers hold an `Objective` and ask it; they never test component letters or loss names.

    obj = build_objective(components="ABCD", entropy_mode="paper", stats_scope="batch", ...)
    obj.ats_params(prev_stats)                  # A: sampling temperature parameters, or None
    adv = obj.advantages(score, group_ids, mask)  # B: "tlga" when on, else "grpo" (or a named one)
    h, stats = obj.normalize(entropy, mask)     # spec 0 over the step's tokens
    loss, m = obj.loss(LossInputs(logp, old_logp, adv, mask, h, ...))  # the named loss, C and D, token mask
    w = obj.is_weights(old_logp, beh_logp, mask, injected)  # rollout correction (baselines-spec 7) or None

The loss pipeline (`Objective.loss`), in the order of baselines-spec "Composition":
  EDA (EDGE-GRPO's entropy scale of A) -> token mask (Forking Tokens) -> C / D (for the losses that
  do not fuse them) -> the loss of `POLICY_LOSSES[loss_name]` with the rollout IS weights.

Add a component: a maths module here, its letter in COMPONENTS, and its effect in this file.
Add an advantage estimator: register it in `advantages.ADVANTAGE_ESTIMATORS` and select it by
name (`advantage=`). Add a policy loss: a `LossSpec` in `POLICY_LOSSES` (its function takes
`(LossInputs, options, agg)`), its options in `build_objective`'s `loss_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import _pg
from ._common import count_ones
from .aac import adaptive_clip_bounds
from .advantages import get_advantage_estimator
from .archer import archer_kl_loss, archer_loss
from .cispo import cispo_loss
from .cov import clip_cov_loss, kl_cov_loss
from .dar import redistribute_advantages
from .edge import EDGE_ADV_EPS, EDGE_EDA_MODES, eda_scale, edge_advantages, edge_loss
from .entropy import EntropyStats, entropy_stats, normalize_batch_entropy, normalize_entropy
from .forking import FORKING_CONVENTIONS, FORKING_DENOMINATORS, forking_token_mask
from .gspo import gspo_loss
from .loss import LOSS_AGG_MODES, hapo_policy_loss
from .rollout_is import ROLLOUT_IS_LEVELS, ROLLOUT_IS_MODES, rollout_is_weights

Tensor = torch.Tensor

__all__ = [
    "AGG_SCOPES",
    "COMPONENTS",
    "ENTROPY_SOURCES",
    "POLICY_LOSSES",
    "TOKEN_MASKS",
    "LossInputs",
    "LossSpec",
    "Objective",
    "build_objective",
]

COMPONENTS = {
    "A": "Adaptive Temperature Sampling",
    "B": "Token-Level Group Average",
    "C": "Differential Advantage Redistribution",
    "D": "Asymmetric Adaptive Clipping",
}
"""HAPO's components by the paper's letters."""

AGG_SCOPES = ("global", "reference_microbatch")
"""baselines-spec "Aggregation scope": one normaliser for the whole mini-batch (the toolkit's
loss_agg), or each micro-batch's own normaliser with the micro-batch weighted by its share of
the mini-batch's responses ([FORK] dp_actor L434, [ARCH] L462)."""

ENTROPY_SOURCES = ("current", "old")
"""Entropy a selection reads: the policy being optimised (this forward) or the old-policy pass."""


@dataclass
class LossInputs:
    """One micro-batch's tensors for `Objective.loss`: all `[B, L]` except `group_ids [B]`."""

    logp: Tensor  # current log-probs of the sampled tokens (carry gradient)
    old_logp: Tensor  # old-policy log-probs (constants)
    adv: Tensor  # advantages (0 at padding)
    mask: Tensor  # 1 on tokens the loss sees
    h: Tensor | None = None  # normalised entropy (spec 0) for C / D / selections; None: zeros
    entropy: Tensor | None = None  # current-policy entropy (may carry gradient: EDA reference)
    old_entropy: Tensor | None = None  # old-policy entropy
    ref_logp: Tensor | None = None  # frozen reference log-probs (Archer's KL)
    group_ids: Tensor | None = None  # [B] group of each response (EDA)
    is_weights: Tensor | None = None  # detached rollout IS weights (spec 7) or None
    generator: torch.Generator | None = None  # Clip-Cov's random draw

    def entropy_from(self, source: str) -> Tensor:
        """The detached entropy of `source` ("current" or "old")."""
        e = self.entropy if source == "current" else self.old_entropy
        if e is None:
            raise ValueError(f"Objective.loss: this objective reads the {source} entropy; pass it in LossInputs")
        return e.detach()

    def h_or_zeros(self) -> Tensor:
        return self.h if self.h is not None else torch.zeros_like(self.mask)


LossFn = Callable[[LossInputs, Mapping[str, Any], str], tuple[Tensor, dict]]


@dataclass(frozen=True)
class LossSpec:
    """A registered policy loss: `fn(inputs, options, agg) -> (loss, metrics)` and how C / D compose with it."""

    fn: LossFn
    fuses_cd: bool = False  # the function applies C and D itself (options alpha / beta)
    aac: bool = True  # D composes: AAC widens the loss's own eps_low / eps_high (False: refused)
    sequence_ratio: bool = False  # DAR's neutral zone is tested on the sequence ratio s_i (GSPO)
    needs_ref: bool = False  # reads ref_logp (a KL to the reference model)
    needs_generator: bool = False  # draws at random (LossInputs.generator)
    note: str = ""  # why D is refused, for the one-line error


# ------------------------------------------------------------------ the registered losses


def _ppo(x: LossInputs, o: Mapping[str, Any], agg: str):
    """The clipped objective (hapo-spec) with C and D as switched: `hapo_policy_loss`, or with IS weights the same formula."""
    if x.is_weights is None:
        return hapo_policy_loss(x.logp, x.old_logp, x.adv, x.mask, x.h_or_zeros(), o["eps_low"], o["eps_high"],
                                alpha=o["alpha"], beta=o["beta"], clip_ratio_c=o["clip_ratio_c"], agg=agg)
    h = x.h_or_zeros()
    lo, hi = o["eps_low"], o["eps_high"]
    if o["alpha"] is not None:
        lo, hi = adaptive_clip_bounds(h, lo, hi, o["alpha"])
    dtype = _pg.float_inputs(x.logp, x.old_logp, x.adv)
    mask_f = _pg.float_mask(x.mask, dtype)
    ratio = _pg.log_ratio(x.logp, x.old_logp, mask_f, dtype).exp()
    a = x.adv.detach().to(dtype) * mask_f
    if o["beta"] is not None:
        a = redistribute_advantages(a, h, ratio.detach(), lo, hi, o["beta"]) * mask_f
    lo_r, hi_r = _pg.limit(lo, -1.0, ratio), _pg.limit(hi, 1.0, ratio)
    c = o["clip_ratio_c"]
    pt, _, _ = _pg.ppo_terms(ratio, a, lo_r, hi_r, c)
    loss = _pg.aggregate(_pg.apply_is_weights("ppo", pt, x.is_weights), mask_f, mask_f, agg)
    n = count_ones(mask_f)
    m = {"loss": loss.detach(), "n_tokens": n}
    m.update(_pg.clip_metrics(ratio, a, mask_f, lo_r, hi_r, c, n))
    m.update(_pg.ratio_metrics(ratio, mask_f))
    return loss, m


def _archer(x, o, agg):
    ent = x.entropy_from(o["entropy_source"])
    return archer_loss(x.logp, x.old_logp, x.adv, x.mask, ent, o["quantile"], o["low_clip"], o["high_clip"],
                       clip_ratio_c=o["clip_ratio_c"], agg=agg, is_weights=x.is_weights)


def _edge(x, o, agg):
    return edge_loss(x.logp, x.old_logp, x.adv, x.mask, o["eps_low"], o["eps_high"], agg=agg, is_weights=x.is_weights)


def _gspo(variant: str) -> LossFn:
    def fn(x, o, agg):
        return gspo_loss(x.logp, x.old_logp, x.adv, x.mask, o["eps_low"], o["eps_high"], variant=variant, agg=agg,
                         log_ratio_max=o["log_ratio_max"], is_weights=x.is_weights)

    return fn


def _cispo(x, o, agg):
    return cispo_loss(x.logp, x.old_logp, x.adv, x.mask, o["eps_low"], o["eps_high"], agg=agg, is_weights=x.is_weights)


def _clip_cov(x, o, agg):
    return clip_cov_loss(x.logp, x.old_logp, x.adv, x.mask, o["eps_low"], o["eps_high"], o["clip_cov_ratio"],
                         o["lb"], o["ub"], generator=x.generator, agg=agg, is_weights=x.is_weights, draw=o["draw"])


def _kl_cov(x, o, agg):
    return kl_cov_loss(x.logp, x.old_logp, x.adv, x.mask, o["kl_cov_ratio"], o["ppo_kl_coef"], agg=agg,
                       is_weights=x.is_weights)


POLICY_LOSSES: dict[str, LossSpec] = {
    "ppo": LossSpec(_ppo, fuses_cd=True),  # the clipped objective of DAPO / HAPO (hapo-spec)
    "archer": LossSpec(_archer, aac=False, needs_ref=True,  # baselines-spec 2
                       note="Archer's per-class bounds replace AAC (both set per-token eps; do not stack them)"),
    "edge": LossSpec(_edge),  # baselines-spec 3a: no dual clip, advantage not detached
    "gspo": LossSpec(_gspo("sequence"), sequence_ratio=True),  # baselines-spec 4
    "gspo_token": LossSpec(_gspo("token"), sequence_ratio=True),
    "cispo": LossSpec(_cispo),  # baselines-spec 5: AAC widens the cap
    "clip_cov": LossSpec(_clip_cov, needs_generator=True),  # baselines-spec 6
    "kl_cov": LossSpec(_kl_cov, aac=False, note="KL-Cov has no ratio clip for AAC to widen"),
}
"""Policy losses by name (`algorithm.loss`): ONE call, `spec.fn(LossInputs, options, agg)`."""


def _forking(x: LossInputs, o: Mapping[str, Any]) -> Tensor:
    return forking_token_mask(x.entropy_from(o["entropy_source"]), x.mask, o["top_ratio"], o["selector"])


TOKEN_MASKS: dict[str, Callable[[LossInputs, Mapping[str, Any]], Tensor]] = {
    "forking": _forking,  # baselines-spec 1: the top-rho high-entropy tokens
}
"""Token selections by name (`algorithm.token_mask`): `fn(LossInputs, options) -> sel [B, L]` (0/1)."""


# ------------------------------------------------------------------ the objective


@dataclass(frozen=True)
class Objective:
    """Resolved switches and hyperparameters of one run's policy objective (hapo-spec, baselines-spec)."""

    components: frozenset[str]  # enabled letters of COMPONENTS
    advantage: str  # name in ADVANTAGE_ESTIMATORS
    advantage_options: Mapping[str, Any] = field(default_factory=dict)  # keyword options of that estimator
    entropy_mode: str = "paper"  # h normalisation: paper or reference
    entropy_pivot: float = 0.8  # rho
    stats_scope: str = "batch"  # batch (old policy, whole step) or microbatch (current policy)
    temperature_tau: float = 0.05  # A
    adv_beta: float = 1.0  # C
    clip_alpha: float = 1.0  # D
    clip_ratio_low: float = 0.2  # eps_L
    clip_ratio_high: float = 0.28  # eps_R
    clip_ratio_c: float | None = 10.0  # dual clip (None: off)
    loss_agg: str = "token-mean"  # LOSS_AGG_MODES
    loss_name: str = "ppo"  # name in POLICY_LOSSES
    loss_options: Mapping[str, Any] = field(default_factory=dict)  # that loss's options (eps_low / eps_high, ...)
    token_mask: str | None = None  # name in TOKEN_MASKS (None: every token)
    token_mask_options: Mapping[str, Any] = field(default_factory=dict)  # its options (+ "denominator")
    eda: str | None = None  # EDGE-GRPO's entropy-driven advantage: None (off), "paper" or "reference"
    eda_eps: float = EDGE_ADV_EPS  # EDA's GRPO eps (1e-4) when the estimator is grpo
    agg_scope: str = "global"  # AGG_SCOPES
    rollout_is: Mapping[str, Any] | None = None  # {level, mode, c_min, c_max} (None: no correction)
    behaviour_logp: str = "engine"  # engine (Rollout.logprobs) or recompute (old-policy pass at the ATS temperature)

    def on(self, letter: str) -> bool:
        return letter in self.components

    @property
    def spec(self) -> LossSpec:
        return POLICY_LOSSES[self.loss_name]

    @property
    def uses_h(self) -> bool:
        """The loss reads h (C or D)."""
        return self.on("C") or self.on("D")

    @property
    def h_from_microbatch(self) -> bool:
        """h comes from each micro-batch's current entropy (released code) instead of the batch."""
        return self.uses_h and self.stats_scope == "microbatch"

    @property
    def needs_h_before_update(self) -> bool:
        """Every token's h must exist before the first update (batch-scope C or D)."""
        return self.uses_h and self.stats_scope == "batch"

    @property
    def needs_ref(self) -> bool:
        """The loss reads the frozen reference model's log-probs."""
        return self.spec.needs_ref

    @property
    def needs_generator(self) -> bool:
        return self.spec.needs_generator

    @property
    def needs_behaviour_logp(self) -> bool:
        """Rollout correction is on (the trainer must supply beh_logp)."""
        return self.rollout_is is not None

    def ats_params(self, stats: EntropyStats | None) -> dict[str, Any] | None:
        """A: {stats, tau, mode} for the sampler from the previous step's stats (None: plain sampling)."""
        if not self.on("A") or stats is None:
            return None
        return {"stats": stats.as_dict(), "tau": self.temperature_tau, "mode": self.entropy_mode}

    def advantages(self, score: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
        """`score [B]`, `group_ids [B]`, `mask [B, L]` -> advantages `[B, L]` (the named estimator).

        With EDA on and the grpo estimator: EDGE's GRPO, `(R - mean) / (std + 1e-4)`; the entropy
        scale itself is applied per micro-batch in `loss` (it reads the current entropy).
        """
        if self.eda is not None and self.advantage == "grpo":
            return edge_advantages(score, group_ids, mask, torch.ones_like(mask, dtype=torch.float32),
                                   eps=self.eda_eps, mode="paper")
        return get_advantage_estimator(self.advantage)(score, group_ids, mask, **self.advantage_options)

    def normalize(self, entropy: Tensor, mask: Tensor) -> tuple[Tensor, EntropyStats]:
        """Spec 0 over these tokens: (h [B, L], EntropyStats)."""
        return normalize_batch_entropy(entropy, mask, pivot=self.entropy_pivot, mode=self.entropy_mode)

    def stats_of(self, values: Tensor) -> EntropyStats:
        """EntropyStats of a flat `[N]` tensor of valid tokens' entropies (e.g. gathered over ranks)."""
        v = values.reshape(1, -1)
        return entropy_stats(v, torch.ones_like(v), pivot=self.entropy_pivot)

    def apply(self, entropy: Tensor, stats: EntropyStats, mask: Tensor) -> Tensor:
        """h of `entropy [B, L]` under given stats."""
        return normalize_entropy(entropy, stats, mask, mode=self.entropy_mode)

    # -------------------------------------------------------------- the loss

    def loss(self, x: LossInputs) -> tuple[Tensor, dict]:
        """EDA -> token mask -> C / D -> `POLICY_LOSSES[loss_name]`: -> (loss, metrics).

        Metrics: the loss's (the keys of `policy_loss`; `n_tokens` = its denominator tokens) plus
        scalar extras of the steps that ran (`eda_*`, `selected_frac`, the loss's own).
        """
        spec, o, extra = self.spec, dict(self.loss_options), {}
        adv, mask = x.adv, x.mask
        if self.eda is not None:
            scale = eda_scale(x.entropy if self.eda == "reference" else x.entropy_from("current"), mask,
                              x.group_ids, self.eda)  # [B] 1 / Phat_i
            extra.update(_eda_metrics(adv, mask, scale))
            adv = adv * scale.unsqueeze(-1).to(adv.dtype)
        if self.token_mask is not None:
            sel = TOKEN_MASKS[self.token_mask](x, self.token_mask_options).to(mask.dtype)
            extra["selected_frac"] = (sel * mask).sum() / mask.sum().clamp_min(1.0)
            if self.token_mask_options.get("denominator", "selected") == "selected":
                mask = mask * sel
            else:
                adv = adv * sel
        if spec.fuses_cd:
            o["alpha"] = self.clip_alpha if self.on("D") else None
            o["beta"] = self.adv_beta if self.on("C") else None
        elif self.uses_h:
            adv, o = self._apply_cd(x, adv, mask, o)
        loss, m = spec.fn(replace(x, adv=adv, mask=mask), o, self.loss_agg)
        m.update(extra)
        return loss, m

    def _apply_cd(self, x: LossInputs, adv: Tensor, mask: Tensor, o: dict) -> tuple[Tensor, dict]:
        """C and D for a loss that does not fuse them: AAC widens its own bounds; DAR scales A.

        DAR's neutral zone always uses the PPO base bounds (clip_ratio_low / high, AAC-widened
        under D) on the ratio the loss clips (s_i for GSPO): for CISPO the spec says so, for the
        others it is this toolkit's choice. DAR enters as a factor, so a differentiable A (EDA
        reference) keeps its gradient.
        """
        h = x.h_or_zeros()
        zone_lo, zone_hi = self.clip_ratio_low, self.clip_ratio_high
        if self.on("D"):
            zone_lo, zone_hi = adaptive_clip_bounds(h, zone_lo, zone_hi, self.clip_alpha)
            if o.get("eps_low") is not None:
                o["eps_low"] = adaptive_clip_bounds(h, o["eps_low"], 0.0, self.clip_alpha)[0]
            o["eps_high"] = adaptive_clip_bounds(h, 0.0, o["eps_high"], self.clip_alpha)[1]
        if self.on("C"):
            with torch.no_grad():
                log_r = (x.logp.detach() - x.old_logp).clamp(-20.0, 20.0) * (mask != 0)
                if self.spec.sequence_ratio:
                    n = (mask != 0).sum(-1, keepdim=True).clamp_min(1)
                    log_r = (log_r.sum(-1, keepdim=True) / n).expand_as(log_r)
                factor = redistribute_advantages(torch.ones_like(h), h, log_r.exp(), zone_lo, zone_hi, self.adv_beta)
            adv = adv * factor.to(adv.dtype)
        return adv, o

    @property
    def selection_denominator(self) -> bool:
        """The loss divides by selected tokens only (Forking Tokens, denominator "selected")."""
        return self.token_mask is not None and self.token_mask_options.get("denominator", "selected") == "selected"

    def denominator_tokens(self, masks: list[Tensor]) -> Tensor | None:
        """Tokens in the denominator of a mini-batch made of these micro-batch masks, when it is not their sum.

        Forking's topk_ceil keeps exactly `max(1, int(n * rho + 0.9999))` of a micro-batch's n valid
        tokens, so the global token-mean denominator is known before the forward passes. None: the
        valid tokens (the caller sums the masks).
        """
        if not self.selection_denominator:
            return None
        rho = float(self.token_mask_options.get("top_ratio", 0.2))
        counts = [torch.floor(m.sum().double() * rho + 0.9999).clamp_min(1.0) * (m.sum() > 0) for m in masks]
        return torch.stack(counts).sum().to(masks[0].dtype)

    def micro_weight(self, mask: Tensor, metrics: Mapping[str, Tensor], seq_share: Tensor, denom_tok: Tensor):
        """Weight of one micro-batch's loss in its mini-batch's gradient (`agg_scope`).

        global token-mean: its denominator tokens over the mini-batch's (every rank); otherwise
        `seq_share`, its share of the mini-batch's sequences.
        """
        if self.agg_scope == "global" and self.loss_agg == "token-mean":
            return (metrics["n_tokens"] if self.selection_denominator else mask.sum()) / denom_tok
        return seq_share

    def kl_loss(self, x: LossInputs, coef: float, denom_tok: Tensor, seq_share: Tensor) -> tuple[Tensor, dict]:
        """The KL penalty to the reference model (k3): over every token, or Archer's per-class term.

        -> (term to add to the micro-batch's loss, metrics with `kl_sum`: the k3 sum of its tokens).
        Archer's classes are aggregated per micro-batch (their counts come from the current
        entropy) and weighted by the micro-batch's share of sequences `seq_share` (spec A2).
        """
        d = (x.ref_logp - x.logp).clamp(-20, 20)
        kl = (torch.exp(d) - d - 1) * x.mask
        m = {"kl_sum": kl.sum().detach()}
        if not self.spec.needs_ref:
            return coef * kl.sum() / denom_tok, m
        o = self.loss_options
        term, km = archer_kl_loss(x.logp, x.ref_logp, x.mask, x.entropy_from(o["entropy_source"]), o["quantile"],
                                  coef, o["high_kl_coef"], agg=self.loss_agg)
        m.update({"kl_low": km["kl_low"], "kl_high": km["kl_high"]})
        return term * seq_share, m

    # -------------------------------------------------------------- rollout correction

    def is_weights(self, old_logp: Tensor, beh_logp: Tensor, mask: Tensor, injected: Tensor | None = None):
        """Detached rollout IS weights `[B, L]` (baselines-spec 7), 1 on GEC-injected tokens; None when off."""
        if self.rollout_is is None:
            return None
        r = self.rollout_is
        w = rollout_is_weights(old_logp, beh_logp, mask, r["level"], r["mode"], r.get("c_min"), r.get("c_max"))
        if injected is not None:
            w = torch.where(injected.bool(), torch.ones_like(w), w) * (mask != 0)
        return w


def _eda_metrics(adv: Tensor, mask: Tensor, scale: Tensor) -> dict[str, Tensor]:
    """EDA's diagnostics: token variance of A before and after the scale, min / max of 1 / Phat."""
    with torch.no_grad():
        m = (mask != 0).to(adv.dtype)
        n = m.sum().clamp_min(1.0)
        a0 = adv.detach()
        a1 = a0 * scale.detach().unsqueeze(-1).to(a0.dtype)

        def var(a):
            mu = (a * m).sum() / n
            return (((a - mu) * m) ** 2).sum() / n

        rows = m.sum(-1) > 0
        s = scale.detach()
        return {"eda_adv_var_before": var(a0), "eda_adv_var_after": var(a1),
                "eda_scale_max": torch.where(rows, s, torch.zeros_like(s)).amax() if s.numel() else s.sum(),
                "eda_scale_min": torch.where(rows, s, torch.full_like(s, float("inf"))).amin() if s.numel() else s.sum()}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_composition(letters: frozenset[str], name: str, token_mask: str | None, tm: Mapping[str, Any],
                       agg_scope: str, loss_agg: str, eda: str | None) -> None:
    """What does not compose is refused here, one line each (baselines-spec "Composition")."""
    _check(name in POLICY_LOSSES, f"unknown loss {name!r}; registered: {', '.join(POLICY_LOSSES)}")
    spec = POLICY_LOSSES[name]
    _check(spec.aac or "D" not in letters, f"loss {name!r} does not compose with AAC (component D): {spec.note}")
    _check(agg_scope in AGG_SCOPES, f"unknown agg_scope {agg_scope!r}; valid: {', '.join(AGG_SCOPES)}")
    _check(loss_agg in LOSS_AGG_MODES, f"unknown loss_agg {loss_agg!r}; valid: {', '.join(LOSS_AGG_MODES)}")
    _check(eda is None or eda in EDGE_EDA_MODES, f"unknown EDA mode {eda!r}; valid: {', '.join(EDGE_EDA_MODES)}")
    if token_mask is None:
        return
    _check(token_mask in TOKEN_MASKS, f"unknown token_mask {token_mask!r}; registered: {', '.join(TOKEN_MASKS)}")
    _check(tm.get("selector", "topk_ceil") in FORKING_CONVENTIONS,
           f"unknown forking selector {tm.get('selector')!r}; valid: {', '.join(FORKING_CONVENTIONS)}")
    den = tm.get("denominator", "selected")
    _check(den in FORKING_DENOMINATORS, f"unknown forking denominator {den!r}; valid: {', '.join(FORKING_DENOMINATORS)}")
    _check(tm.get("entropy_source", "current") in ENTROPY_SOURCES,
           f"unknown entropy_source {tm.get('entropy_source')!r}; valid: {', '.join(ENTROPY_SOURCES)}")
    _check(not (den == "selected" and agg_scope == "global" and loss_agg == "token-mean"
                and tm.get("selector", "topk_ceil") != "topk_ceil"),
           "forking denominator 'selected' under agg_scope 'global' token-mean needs the mini-batch's selected-token "
           "count before its micro-batches run, known only for selector topk_ceil: use agg_scope=reference_microbatch "
           "or denominator=all")


def build_objective(
    components: str | Iterable[str] = "",
    *,
    advantage: str | None = None,
    norm_by_std: bool = True,
    tlga_fallback_threshold: float | None = 5.0,
    tlga_fallback_padded: bool = False,
    loss_name: str = "ppo",
    loss_options: Mapping[str, Any] | None = None,
    token_mask: str | None = None,
    token_mask_options: Mapping[str, Any] | None = None,
    rollout_is: Mapping[str, Any] | None = None,
    **hyper: Any,
) -> Objective:
    """An Objective from enabled letters (e.g. "ABCD") and the spec's hyperparameters.

    `advantage=None` picks "tlga" when B is on, else "grpo"; the estimator's options are
    `norm_by_std` (grpo) or `tlga_fallback_threshold` / `tlga_fallback_padded` (tlga); a custom
    estimator gets none.
    `loss_name` names a `POLICY_LOSSES` entry and `loss_options` its options (for "ppo", "edge":
    eps_low / eps_high default to clip_ratio_low / high, clip_ratio_c to the dual clip).
    `token_mask` names a `TOKEN_MASKS` entry (options: top_ratio, selector, entropy_source,
    denominator). `rollout_is`: {level, mode, c_min, c_max} or None. `hyper` are the remaining
    `Objective` fields (entropy_mode, clip_ratio_low, eda, agg_scope, ...).
    What does not compose (baselines-spec) raises ValueError with one line.
    """
    letters = frozenset(components)
    unknown = sorted(letters - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown components {unknown}; valid: {', '.join(COMPONENTS)}")
    name = advantage or ("tlga" if "B" in letters else "grpo")
    get_advantage_estimator(name)  # unknown names fail here, listing the valid ones
    options: dict[str, Any] = {}
    if name == "grpo":
        options = {"norm_by_std": norm_by_std}
    elif name == "tlga":
        options = {"fallback_threshold": tlga_fallback_threshold, "fallback_counts_padding": tlga_fallback_padded}
    tm = {"top_ratio": 0.2, "selector": "topk_ceil", "denominator": "selected", "entropy_source": "current"}
    tm.update(token_mask_options or {})
    _check_composition(letters, loss_name, token_mask, tm, hyper.get("agg_scope", "global"),
                       hyper.get("loss_agg", "token-mean"), hyper.get("eda"))
    lo = {"eps_low": hyper.get("clip_ratio_low", 0.2), "eps_high": hyper.get("clip_ratio_high", 0.28),
          "clip_ratio_c": hyper.get("clip_ratio_c", 10.0)}
    lo.update(loss_options or {})
    if rollout_is is not None:
        r = dict(rollout_is)
        _check(r.get("level") in ROLLOUT_IS_LEVELS, f"unknown rollout_is level {r.get('level')!r}; valid: {', '.join(ROLLOUT_IS_LEVELS)}")
        _check(r.get("mode") in ROLLOUT_IS_MODES, f"unknown rollout_is mode {r.get('mode')!r}; valid: {', '.join(ROLLOUT_IS_MODES)}")
        rollout_is = r
    return Objective(components=letters, advantage=name, advantage_options=options, loss_name=loss_name,
                     loss_options=lo, token_mask=token_mask, token_mask_options=tm, rollout_is=rollout_is, **hyper)
