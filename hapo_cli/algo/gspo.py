"""GSPO: Group Sequence Policy Optimization (arXiv 2507.18071): baselines-spec section 4.

The PPO clip acts on the sequence-level ratio `s_i = exp(mean_t log r[i, t])` (length-normalised)
instead of the token ratio. Two variants: "sequence" (GSPO, one advantage per response) and
"token" (GSPO-token: token-varying advantages `A[i, t]`, value `s_i` per token, gradient
`s_i * grad logp[i, t]`). Neither has a dual clip or a KL term.
"""

from __future__ import annotations

import torch

from . import _pg

Tensor = torch.Tensor

__all__ = ["GSPO_VARIANTS", "gspo_loss"]

GSPO_VARIANTS = ("sequence", "token")
GSPO_LOG_RATIO_MAX = (
    10.0  # [VERL] compute_policy_loss_gspo L1590: the combined log ratio is clamped at max 10
)


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor = 3e-4,
    eps_high: float | Tensor = 4e-4,
    variant: str = "sequence",
    agg: str = "seq-mean-token-mean",
    log_ratio_max: float | None = GSPO_LOG_RATIO_MAX,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec 4: `s_i = exp((1/|o_i|) sum_t (logp - old_logp)[i, t] mask[i, t])`.
    - `variant="sequence"` (GSPO; [TRL] `importance_sampling_level="sequence"`):
      `L_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_L, 1 + eps_R))` with `A_i` the mean of `adv`
      over the response's valid tokens (= the GRPO advantage when it is constant per response),
      gradient through every token's log-prob (`dL_i/dlogp[i, t] = -A_i s_i / |o_i|` unclipped);
      `L_i` is broadcast to the valid tokens and aggregated by `agg`. The default
      "seq-mean-token-mean" is the paper's `(1/B) sum_i L_i` ([VERL] forces it); "token-mean" is
      TRL's `loss_type="dapo"` length-weighted variant (spec G1).
    - `variant="token"` (GSPO-token; [VERL] `compute_policy_loss_gspo`):
      `s[i, t] = sg(s_i) exp(logp - sg(logp))`, `l = max(-A s, -A clip(s))` per token. With a
      constant advantage per response it equals "sequence" in value and gradient.
    `log_ratio_max` (default 10, [VERL]): the (mean) log ratio is clamped at this maximum before
    `exp` (None: only the +-20 token clamp). Bounds may be `[B, L]` tensors (per-token, e.g. AAC:
    they clip the same `s_i` differently per token). Defaults eps 3e-4 / 4e-4 (paper, [VERL]).
    Optional detached rollout IS weights `[B, L]` (use `level="sequence"`) multiply `l`.

    Metrics: those of `policy_loss` for the clipped ratio (the clip masks mark every valid token
    of a clipped response; `ratio_*` are token-weighted stats of `s`; `clipfrac_dual` is 0; `n_tokens`
    = valid tokens), plus `seq_ratio_mean` / `seq_ratio_max` / `seq_ratio_min` over responses with
    a valid token and `seq_clipfrac_left` / `seq_clipfrac_right` (fraction of those responses whose
    sequence ratio is clipped, with constant bounds per response).
    """
    fn = "gspo_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    if variant not in GSPO_VARIANTS:
        raise ValueError(f"{fn}: unknown variant {variant!r}; valid: {', '.join(GSPO_VARIANTS)}")
    _pg.check_eps(fn, "eps_low", eps_low)
    _pg.check_eps(fn, "eps_high", eps_high)
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    counts = mask_f.sum(-1, keepdim=True)  # [B, 1] |o_i|
    log_r = _pg.log_ratio(logp, old_logp, mask_f, dtype)  # [B, L], 0 at padding
    seq_log = log_r.sum(-1, keepdim=True) / counts.clamp_min(1.0)  # [B, 1] mean log ratio
    a_tok = adv.detach().to(dtype) * mask_f  # [B, L]
    if variant == "sequence":
        if log_ratio_max is not None:
            seq_log = seq_log.clamp_max(float(log_ratio_max))
        s = seq_log.exp()  # [B, 1] differentiable through every token
        a = (a_tok.sum(-1, keepdim=True) / counts.clamp_min(1.0)) * mask_f  # [B, L] A_i on valid tokens
        ratio = s.expand_as(a_tok)  # [B, L]
    else:
        lp = logp.to(dtype)
        lp = torch.where(mask_f > 0, lp, torch.zeros_like(lp))  # padding may hold inf
        comb = seq_log.detach() + lp - lp.detach()  # [B, L] value: log s_i; gradient: d logp[i, t]
        if log_ratio_max is not None:
            comb = comb.clamp_max(float(log_ratio_max))
        ratio = comb.exp() * mask_f + (1.0 - mask_f)  # [B, L] s per token (1 at padding)
        a = a_tok
    lo, hi = _pg.limit(eps_low, -1.0, ratio), _pg.limit(eps_high, 1.0, ratio)
    pt, _, _ = _pg.ppo_terms(ratio, a, lo, hi, None)
    pt = _pg.apply_is_weights(fn, pt, is_weights)
    loss, metrics = _pg.finish(pt, ratio, a, mask_f, lo, hi, None, agg)
    with torch.no_grad():
        s_seq = seq_log.detach().exp().squeeze(-1)  # [B]
        has = counts.squeeze(-1) > 0  # [B]
        rows = has.sum().to(dtype).clamp_min(1.0)
        a_seq = a_tok.sum(-1) / counts.squeeze(-1).clamp_min(1.0)  # [B] mean advantage per response
        lo_s = lo if not isinstance(lo, Tensor) else (lo * mask_f).sum(-1) / counts.squeeze(-1).clamp_min(1.0)
        hi_s = hi if not isinstance(hi, Tensor) else (hi * mask_f).sum(-1) / counts.squeeze(-1).clamp_min(1.0)
        zero = torch.zeros_like(s_seq)
        metrics.update(
            {
                "seq_ratio_mean": torch.where(has, s_seq, zero).sum() / rows,
                "seq_ratio_max": torch.where(has, s_seq, zero).amax() if s_seq.numel() else zero.sum(),
                "seq_ratio_min": torch.where(
                    has.any(), torch.where(has, s_seq, zero + float("inf")).amin(), 0.0
                )
                if s_seq.numel()
                else zero.sum(),
                "seq_clipfrac_left": (has & (a_seq < 0) & (s_seq < lo_s)).sum().to(dtype) / rows,
                "seq_clipfrac_right": (has & (a_seq > 0) & (s_seq > hi_s)).sum().to(dtype) / rows,
            }
        )
    return loss, metrics
