"""Advantage estimators: GRPO (the DAPO baseline) and Token-Level Group Average (TLGA, HAPO component "B").

Every estimator has ONE signature, `(rewards [B], group_ids [B], mask [B, L], **options) -> [B, L]`,
and is registered by name in `ADVANTAGE_ESTIMATORS` ("grpo", "tlga"). Group ids may come in any
order, groups need not be contiguous and ids need not be 0..G-1; everything is vectorised over
groups (no Python loop, no device->host sync). The sequence advantage is broadcast to the
response's valid tokens; padded positions get 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import (
    as_float_mask,
    check_groups,
    float_dtype,
    group_amax_amin,
    group_index,
    group_sum,
)

Tensor = torch.Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ADV_EPS",
    "get_advantage_estimator",
    "grpo_advantages",
    "tlga_advantages",
]

ADV_EPS = 1e-6  # the +1e-6 in (R - mu) / (sigma + 1e-6) (spec B)


def _reward_dtype(rewards: Tensor) -> torch.dtype:
    return float_dtype(rewards)


def _grpo_sequence_advantages(r: Tensor, idx: Tensor, norm_by_std: bool) -> Tensor:
    """Per-response GRPO advantage `[B]` from rewards `r [B]` (float) and dense group index `idx [B]`.

    `(R_i - mean_g R) / (std_g R + 1e-6)`, std with Bessel's correction over the group's
    responses; singleton groups and groups whose rewards are all equal get exactly 0.
    """
    ones = torch.ones_like(r)
    count = group_sum(ones, idx)  # [B slots] responses per group
    mean = group_sum(r, idx) / count.clamp_min(1.0)  # [B slots]
    centred = r - mean[idx]  # [B]
    if norm_by_std:
        var = group_sum(centred * centred, idx) / (count - 1.0).clamp_min(1.0)  # [B slots] Bessel
        adv = centred / (torch.sqrt(var)[idx] + ADV_EPS)
    else:
        adv = centred
    amax, amin = group_amax_amin(r, idx)
    constant = (amax == amin)[idx]  # [B] zero reward variance (includes singletons)
    return torch.where(constant, torch.zeros_like(adv), adv)


def grpo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor, norm_by_std: bool = True) -> Tensor:
    """GRPO advantage broadcast to tokens: `rewards [B]`, `group_ids [B]` int, `mask [B, L]` -> `[B, L]`.

    Spec B ("GRPO advantage (baseline)"): `A_i = (R_i - mean_g R) / (std_g R + 1e-6)` over the
    responses of group g (Bessel-corrected std; every response of the group counts, whatever its
    length). `norm_by_std=False` gives Dr.GRPO: `A_i = R_i - mean_g R`. Groups whose rewards are
    all equal (including single-response groups) get A = 0 exactly. Padded tokens get 0.
    Float32 (float64 for float64 rewards); no gradient.
    """
    check_groups("grpo_advantages", rewards, group_ids, mask)
    with torch.no_grad():
        r = rewards.detach().to(_reward_dtype(rewards))  # [B]
        idx = group_index(group_ids)  # [B]
        adv = _grpo_sequence_advantages(r, idx, bool(norm_by_std))  # [B]
        return as_float_mask(mask, adv.dtype).mul_(adv.unsqueeze(-1))  # [B, L]


def tlga_advantages(
    rewards: Tensor, group_ids: Tensor, mask: Tensor, fallback_threshold: float | None = 5.0,
    fallback_counts_padding: bool = False,
) -> Tensor:
    """Token-Level Group Average advantage: `rewards [B]`, `group_ids [B]` int, `mask [B, L]` -> `[B, L]`.

    Spec B. With `n_i` the number of valid tokens of response i and `N_g = sum_{i in g} n_i`:
    `mu_g = sum_i n_i R_i / N_g` (token-weighted mean), `sigma_g = sqrt(sum_i n_i (R_i - mu_g)^2 / N_g)`
    (population std of the rewards broadcast to the group's valid tokens), and
    `A[i, t] = (R_i - mu_g) / (sigma_g + 1e-6)` on every valid token, so `sum_{i, t} A[i, t] = 0`
    within each group (up to the 1e-6). With +-1 rewards this is `+sqrt(n_wrong / n_correct)`
    for correct and `-sqrt(n_correct / n_wrong)` for wrong answers (token counts).

    Fallback (`fallback_threshold`, default 5.0; None disables it): if any valid token of a group
    has `|A| >= fallback_threshold`, the whole group takes the plain GRPO advantage (Bessel std
    over its responses). By default only VALID tokens are tested. `fallback_counts_padding=True`
    reproduces the released code, which also tests the group's padded positions (up to the
    batch's padded length `L = mask.shape[1]`), whose broadcast reward is 0: a group with any
    padding falls back when `|0 - mu_g| / (sigma_g + 1e-6) >= threshold` (with +-1 rewards the two
    agree; with shaped rewards that do not straddle 0 the released code falls back, spec B).
    Groups with zero reward variance over their valid tokens (all valid responses with equal
    rewards, or fewer than two responses with tokens) get A = 0 exactly. Padded tokens get 0.
    Float32 (float64 for float64 rewards); no gradient.
    """
    fn = "tlga_advantages"
    check_groups(fn, rewards, group_ids, mask)
    if fallback_threshold is not None and not float(fallback_threshold) > 0.0:
        raise ValueError(f"{fn}: fallback_threshold must be > 0 or None, got {fallback_threshold!r}")
    with torch.no_grad():
        dtype = _reward_dtype(rewards)
        r = rewards.detach().to(dtype)  # [B]
        mask_f = as_float_mask(mask, dtype)  # [B, L] 0/1
        n = mask_f.sum(-1)  # [B] valid tokens per response (exact: integers far below 2^24)
        idx = group_index(group_ids)  # [B]
        tokens = group_sum(n, idx)  # [B slots] N_g
        mu = group_sum(n * r, idx) / tokens.clamp_min(1.0)  # [B slots] token-weighted mean
        centred = r - mu[idx]  # [B]
        var = group_sum(n * centred * centred, idx) / tokens.clamp_min(1.0)  # [B slots] population var
        adv = centred / (torch.sqrt(var)[idx] + ADV_EPS)  # [B]
        has_tokens = n > 0
        amax, amin = group_amax_amin(r, idx, include=has_tokens)
        constant = ~(amax > amin)[idx]  # [B] no reward variance among the group's valid tokens
        adv = torch.where(constant, torch.zeros_like(adv), adv)
        if fallback_threshold is not None:
            hit = (adv.abs() >= float(fallback_threshold)) & has_tokens  # [B]
            if fallback_counts_padding:  # released code: padded positions (reward 0) are tested too
                pad_adv = (-mu / (torch.sqrt(var) + ADV_EPS))[idx]  # [B] the broadcast A of a padded position
                hit = hit | ((pad_adv.abs() >= float(fallback_threshold)) & (n < mask_f.shape[-1]) & ~constant)
            hit = hit.to(dtype)
            group_hit = (group_sum(hit, idx) > 0)[idx]  # [B] the response's group falls back
            adv = torch.where(group_hit, _grpo_sequence_advantages(r, idx, True), adv)
        return mask_f.mul_(adv.unsqueeze(-1))  # [B, L]


AdvantageEstimator = Callable[..., Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,  # options: norm_by_std=True (False = Dr.GRPO)
    "tlga": tlga_advantages,  # options: fallback_threshold=5.0 (None disables), fallback_counts_padding=False
}
"""Advantage estimators by name, all called as `fn(rewards [B], group_ids [B], mask [B, L], **options) -> [B, L]`."""


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under `name`; ValueError listing the valid names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}"
        ) from None
