"""EDGE-GRPO: Entropy-Driven Advantage and Guided Error Correction (arXiv 2507.21848): baselines-spec section 3.

- EDA (3a), `edge_advantages`: the GRPO advantage (eps 1e-4) of each response divided by its
  group-normalised mean entropy, `A_eda_i = A_i / (P_i / mean_group P)`; `edge_loss` is the
  clipped loss EDGE trains with (no dual clip; differentiable through the advantage, for the
  `reference` mode's gradient through the entropy).
- GEC (3b) is a data step (rewrite some wrong responses before rewarding). Its pure parts live
  here: the branch draw `gec_branches` (explicit generator) and the text rewrite `gec_rewrite`;
  the rollout/reward plumbing (continuing generation for the reflect branch, re-tokenising,
  re-scoring, marking injected tokens) belongs to the trainer.
"""

from __future__ import annotations

import torch

from . import _pg
from ._common import (
    as_float_mask,
    check_groups,
    check_tensor,
    float_dtype,
    group_amax_amin,
    group_index,
    group_sum,
)

Tensor = torch.Tensor

__all__ = [
    "EDGE_ADV_EPS",
    "EDGE_EDA_MODES",
    "GEC_BRANCHES",
    "GEC_REFLECT_TEXT",
    "eda_scale",
    "edge_advantages",
    "edge_loss",
    "gec_answer_text",
    "gec_branches",
    "gec_rewrite",
]

EDGE_ADV_EPS = 1e-4  # [EDGE] grpo_aha_trainer.py L1094-1102: (R - mean) / (std + 1e-4)
EDGE_EDA_MODES = ("paper", "reference")
P_FLOOR = 1e-8  # mean entropies are floored here before dividing (an exactly deterministic response)


def _grpo_eps(r: Tensor, idx: Tensor, eps: float) -> Tensor:
    """`(R_i - mean_g R) / (std_g R + eps)` `[B]`, Bessel std; constant-reward groups get exactly 0."""
    ones = torch.ones_like(r)
    count = group_sum(ones, idx)
    mean = group_sum(r, idx) / count.clamp_min(1.0)
    centred = r - mean[idx]
    var = group_sum(centred * centred, idx) / (count - 1.0).clamp_min(1.0)
    adv = centred / (torch.sqrt(var)[idx] + eps)
    amax, amin = group_amax_amin(r, idx)
    return torch.where((amax == amin)[idx], torch.zeros_like(adv), adv)


def edge_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    entropy: Tensor,
    eps: float = EDGE_ADV_EPS,
    mode: str = "paper",
) -> Tensor:
    """EDA advantage: `rewards [B]`, `group_ids [B]` int, `mask [B, L]`, `entropy [B, L]` -> `[B, L]`.

    Spec 3a: `A_i = (R_i - mean_g R) / (std_g R + eps)` (Bessel std over the group's responses,
    eps 1e-4; zero-variance groups get 0 as in `grpo_advantages`), `P_i` the mean entropy of
    response i, `Phat_i = P_i / mean_{j in group} P_j`, `A_eda_i = A_i / Phat_i`, broadcast to the
    valid tokens (0 at padding). `mode` (one of `EDGE_EDA_MODES`):
    - "paper" (default): `P_i` is the masked mean over valid tokens, the group mean runs over the
      group's responses with a valid token, and everything is detached (no gradient).
    - "reference" ([EDGE] L1215-1232): `P_i = mean(H[i, :])` over ALL L positions (padding
      included), the normalising mean (over every response of the group) is detached but `P_i`
      is NOT: if `entropy` carries gradient, so does the result (`d A_eda / d P_i = -A_i mean / P_i^2`);
      train it with `edge_loss`, which does not detach the advantage. [EDGE] normalises over every
      response gathered in the micro-step (= one group in the released 8-GPU config): pass one
      group id for all rows of that scope to reproduce it.
    `P_i` is floored at 1e-8 before dividing. Computed in float32 (float64 if rewards or entropy are).
    """
    fn = "edge_advantages"
    check_groups(fn, rewards, group_ids, mask)
    check_tensor(fn, "entropy", entropy)
    if tuple(entropy.shape) != tuple(mask.shape):
        raise ValueError(
            f"{fn}: entropy must have the shape of mask {tuple(mask.shape)}, got {tuple(entropy.shape)}"
        )
    if mode not in EDGE_EDA_MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; valid: {', '.join(EDGE_EDA_MODES)}")
    if not float(eps) > 0.0:
        raise ValueError(f"{fn}: eps must be > 0, got {eps!r}")
    dtype = float_dtype(rewards, entropy)
    with torch.no_grad():
        adv = _grpo_eps(rewards.detach().to(dtype), group_index(group_ids), float(eps))  # [B]
    scale = eda_scale(entropy, mask, group_ids, mode)  # [B] 1 / Phat_i
    return as_float_mask(mask, dtype) * (adv * scale).unsqueeze(-1)


def eda_scale(entropy: Tensor, mask: Tensor, group_ids: Tensor, mode: str = "paper") -> Tensor:
    """EDA's per-response factor `1 / Phat_i = mean_{j in group} P_j / P_i`: `entropy, mask [B, L]`, `group_ids [B]` -> `[B]`.

    Multiply any per-response or per-token advantage by it (`edge_advantages` does it for GRPO;
    HAPO's TLGA composes as `A_TLGA[i, t] * eda_scale[i]`, spec 3a "Composition"). `mode` and the
    gradient as in `edge_advantages` ("paper": masked mean, detached; "reference": mean over all
    L positions, differentiable through `P_i`, the group mean detached). `P_i` floored at 1e-8.
    """
    fn = "eda_scale"
    check_tensor(fn, "entropy", entropy)
    check_tensor(fn, "mask", mask)
    check_tensor(fn, "group_ids", group_ids)
    if (
        entropy.dim() != 2
        or tuple(entropy.shape) != tuple(mask.shape)
        or group_ids.shape != entropy.shape[:1]
    ):
        raise ValueError(
            f"{fn}: need entropy and mask [B, L] and group_ids [B], got {tuple(entropy.shape)}, "
            f"{tuple(mask.shape)}, {tuple(group_ids.shape)}"
        )
    if mode not in EDGE_EDA_MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; valid: {', '.join(EDGE_EDA_MODES)}")
    dtype = float_dtype(entropy)
    idx = group_index(group_ids)  # [B]
    if mode == "paper":
        with torch.no_grad():
            mask_f = as_float_mask(mask, dtype)
            counts = mask_f.sum(-1)  # [B]
            p = (entropy.detach().to(dtype) * mask_f).sum(-1) / counts.clamp_min(1.0)  # [B] masked mean
            has = (counts > 0).to(dtype)  # responses without tokens do not count in the group mean
            p_mean = group_sum(p * has, idx) / group_sum(has, idx).clamp_min(1.0)  # [slots]
            return p_mean[idx] / p.clamp_min(P_FLOOR)
    p = entropy.to(dtype).mean(-1)  # [B] padding included, differentiable
    with torch.no_grad():
        p_mean = group_sum(p.detach(), idx) / group_sum(torch.ones_like(p), idx).clamp_min(1.0)  # [slots]
    return p_mean[idx] / p.clamp_min(P_FLOOR)


def edge_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """EDGE-GRPO's clipped loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec 3a: `l = max(-A r, -A clip(r, 1 - eps_L, 1 + eps_R))`, NO dual clip, no KL, `agg`
    ([EDGE] `bnpo` = token-mean; eps 0.2 both sides). Unlike `policy_loss` the advantage is NOT
    detached: with `edge_advantages(mode="reference")` the gradient also flows into the entropy
    (spec E3). With a detached advantage it equals `policy_loss(..., clip_ratio_c=None)`.
    Optional detached rollout IS weights multiply `l`. Metrics: those of `policy_loss`.
    """
    fn = "edge_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    _pg.check_eps(fn, "eps_low", eps_low)
    _pg.check_eps(fn, "eps_high", eps_high)
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    ratio = _pg.log_ratio(logp, old_logp, mask_f, dtype).exp()
    a = adv.to(dtype) * mask_f  # NOT detached (reference EDA differentiates through the entropy)
    lo, hi = _pg.limit(eps_low, -1.0, ratio), _pg.limit(eps_high, 1.0, ratio)
    pt, _, _ = _pg.ppo_terms(ratio, a, lo, hi, None)
    pt = _pg.apply_is_weights(fn, pt, is_weights)
    loss, metrics = _pg.finish(pt, ratio, a, mask_f, lo, hi, None, agg)
    return loss, metrics


# ---------------------------------------------------------------- GEC (3b): the pure parts

GEC_BRANCHES = ("keep", "reflect", "answer", "solution")
"""Branch codes of `gec_branches` (index = code): 0 keep (a correct response, or not drawn),
1 reflect (p 1/2: append GEC_REFLECT_TEXT and let the policy continue), 2 answer (p 1/4: append
the ground-truth answer), 3 solution (p 1/4: replace by the reference solution)."""

GEC_REFLECT_TEXT = " Wait! Something is wrong here."  # [EDGE] L989 (leading space)


def gec_answer_text(answer: str) -> str:
    """The text appended by the "answer" branch ([EDGE] L997)."""
    return (
        "\nWait! Something is wrong here. After verification, the correct answer is \\boxed{" + answer + "}."
    )


def gec_branches(to_correct: Tensor, generator: torch.Generator, force_reflection: bool = False) -> Tensor:
    """GEC branch per response: `to_correct [B]` bool -> `[B]` long codes of `GEC_BRANCHES`.

    Spec 3b step 3: each response to correct (total reward != 2: wrong answer or no boxed answer)
    draws reflect / answer / solution with p = 1/2, 1/4, 1/4 ([EDGE] uses Python `random.choice`;
    here one `torch.rand` draw per response from `generator`, so tests can inject it); others get
    0 (keep). `force_reflection=True` always picks reflect (the flag [EDGE] overrides when GEC is
    on: pass False to reproduce the released script). The caller applies the prompt-length gate
    (padded prompt < 256 tokens, else nothing changes) before calling.
    """
    check_tensor("gec_branches", "to_correct", to_correct)
    u = torch.rand(to_correct.shape, generator=generator, device=generator.device, dtype=torch.float64)
    u = u.to(to_correct.device)
    code = torch.where(u < 0.5, 1, torch.where(u < 0.75, 2, 3))
    if force_reflection:
        code = torch.ones_like(code)
    return torch.where(to_correct.bool(), code, torch.zeros_like(code))


def gec_rewrite(completion: str, branch: int, answer: str, solution: str) -> str:
    """The rewritten completion text for one response under GEC branch `branch` (a `GEC_BRANCHES` code).

    keep -> unchanged; reflect -> `completion + GEC_REFLECT_TEXT` (the caller then lets the policy
    continue for at most 256 new tokens and appends the continuation); answer -> `completion +
    gec_answer_text(answer)`; solution -> `solution` exactly. The policy did not sample the
    injected text: mark its tokens (`injected [B, L]`), give them IS weight 1 and exempt them of
    rejection sampling (spec 3b, 7).
    """
    if branch == 0:
        return completion
    if branch == 1:
        return completion + GEC_REFLECT_TEXT
    if branch == 2:
        return completion + gec_answer_text(answer)
    if branch == 3:
        return solution
    raise ValueError(f"gec_rewrite: unknown branch {branch!r}; valid codes 0..3 = {', '.join(GEC_BRANCHES)}")
