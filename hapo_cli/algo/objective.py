"""The objective: the ONE place that maps the switches (HAPO's components A-D, the advantage
estimator, the loss options) to the maths of this package. Trainers hold an `Objective` and ask
it; they never test component letters themselves.

    obj = build_objective(components="ABCD", entropy_mode="paper", stats_scope="batch", ...)
    obj.ats_params(prev_stats)                  # A: sampling temperature parameters, or None
    adv = obj.advantages(score, group_ids, mask)  # B: "tlga" when on, else "grpo" (or a named one)
    h, stats = obj.normalize(entropy, mask)     # spec 0 over the step's tokens
    loss, m = obj.loss(logp, old_logp, adv, mask, h)   # C and D inside the clipped loss

Add a component: a maths module here, its letter in COMPONENTS, and its effect in this file.
Add an advantage estimator: register it in `advantages.ADVANTAGE_ESTIMATORS` and select it by
name (`advantage=`); its options come from `advantage_options`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .advantages import get_advantage_estimator
from .entropy import EntropyStats, entropy_stats, normalize_batch_entropy, normalize_entropy
from .loss import hapo_policy_loss

Tensor = torch.Tensor

__all__ = ["COMPONENTS", "Objective", "build_objective"]

COMPONENTS = {
    "A": "Adaptive Temperature Sampling",
    "B": "Token-Level Group Average",
    "C": "Differential Advantage Redistribution",
    "D": "Asymmetric Adaptive Clipping",
}
"""HAPO's components by the paper's letters."""


@dataclass(frozen=True)
class Objective:
    """Resolved switches and hyperparameters of one run's policy objective (hapo-spec)."""

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

    def on(self, letter: str) -> bool:
        return letter in self.components

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

    def ats_params(self, stats: EntropyStats | None) -> dict[str, Any] | None:
        """A: {stats, tau, mode} for the sampler from the previous step's stats (None: plain sampling)."""
        if not self.on("A") or stats is None:
            return None
        return {"stats": stats.as_dict(), "tau": self.temperature_tau, "mode": self.entropy_mode}

    def advantages(self, score: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
        """`score [B]`, `group_ids [B]`, `mask [B, L]` -> advantages `[B, L]` (the named estimator)."""
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

    def loss(self, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, h: Tensor) -> tuple[Tensor, dict]:
        """The clipped objective with C (DAR) and D (AAC) as switched: `[B, L]` each -> (loss, metrics)."""
        return hapo_policy_loss(
            logp, old_logp, adv, mask, h, self.clip_ratio_low, self.clip_ratio_high,
            alpha=self.clip_alpha if self.on("D") else None,
            beta=self.adv_beta if self.on("C") else None,
            clip_ratio_c=self.clip_ratio_c, agg=self.loss_agg)


def build_objective(
    components: str | Iterable[str] = "",
    *,
    advantage: str | None = None,
    norm_by_std: bool = True,
    tlga_fallback_threshold: float | None = 5.0,
    tlga_fallback_padded: bool = False,
    **hyper: Any,
) -> Objective:
    """An Objective from enabled letters (e.g. "ABCD") and the spec's hyperparameters.

    `advantage=None` picks "tlga" when B is on, else "grpo"; the estimator's options are
    `norm_by_std` (grpo) or `tlga_fallback_threshold` / `tlga_fallback_padded` (tlga); a custom
    estimator gets none.
    `hyper` are the remaining `Objective` fields (entropy_mode, clip_ratio_low, ...).
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
    return Objective(components=letters, advantage=name, advantage_options=options, **hyper)
