"""The clipped policy-gradient objective (DAPO baseline and HAPO) and its loss aggregation modes.

hapo-spec "The clipped objective": per token, with `r = exp(logp - old_logp)`,
`l1 = -A r`, `l2 = -A clip(r, 1 - eps_L, 1 + eps_R)`, `l = max(l1, l2)`, and for A < 0 the dual
clip `l = min(l, -A c)`. It is computed as `l = -g` with the clipped surrogate gain
`g = min(A r, A clip(r, ...))` and the dual clip written `g = max(g, min(A c, 0))`, which is the
same thing (for A >= 0, g >= 0 already) without a branch on the sign of A.

`policy_loss` is the DAPO/GRPO loss; `hapo_policy_loss` is the same loss with HAPO's per-token
components D (AAC, `alpha`) and C (DAR, `beta`) applied inside it, sharing one ratio pass;
it equals calling `adaptive_clip_bounds`, `redistribute_advantages` and `policy_loss` in turn.
"""

from __future__ import annotations

import torch

from ._common import as_bool_mask, as_float_mask, check_same_shape, check_tensor, float_dtype
from .aac import _check_alpha, _check_eps, _clip_limits
from .dar import _check_beta, _redistribute

Tensor = torch.Tensor

__all__ = ["LOSS_AGG_MODES", "aggregate_loss", "hapo_policy_loss", "policy_loss"]

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
"""Valid `agg` names:
- "token-mean" (DAPO): sum of l over valid tokens / number of valid tokens.
- "seq-mean-token-mean" (GRPO): per-sequence mean over its valid tokens, then the mean over the
  sequences that have at least one valid token.
- "seq-mean-token-sum": per-sequence sum, then the mean over sequences with a valid token.
- "seq-mean-token-sum-norm" (Dr.GRPO): sum over all valid tokens / (B * L), i.e. every sequence's
  token sum divided by the CONSTANT padded length L (not its own length), averaged over all B rows.
"""


_MAX_LOG_RATIO = 20.0  # |logp - old_logp| is clamped here before exp (r in [2e-9, 4.9e8]): no inf / NaN


def _check_agg(fn: str, agg: str) -> None:
    if agg not in LOSS_AGG_MODES:
        raise ValueError(f"{fn}: unknown agg {agg!r}; valid modes: {', '.join(LOSS_AGG_MODES)}")


def _aggregate(masked: Tensor, mask_f: Tensor, agg: str) -> Tensor:
    """`masked [B, L]` (already 0 at invalid positions), `mask_f [B, L]` 0/1 floats -> scalar."""
    if agg == "token-mean":
        return masked.sum() / mask_f.sum().clamp_min(1.0)
    if agg == "seq-mean-token-sum-norm":
        return masked.sum() / float(max(masked.numel(), 1))  # / (B * L), a constant
    counts = mask_f.sum(-1)  # [B] valid tokens per sequence
    seq = masked.sum(-1)  # [B]
    if agg == "seq-mean-token-mean":
        seq = seq / counts.clamp_min(1.0)
    return seq.sum() / (counts > 0).sum().clamp_min(1)


def aggregate_loss(per_token: Tensor, mask: Tensor, agg: str = "token-mean") -> Tensor:
    """Aggregate a per-token loss `[B, L]` over the valid tokens of `mask [B, L]` -> scalar (see LOSS_AGG_MODES).

    Values at masked positions are ignored (they must be finite: masking multiplies by 0).
    With no valid token at all the result is 0.
    """
    fn = "aggregate_loss"
    _check_agg(fn, agg)
    check_tensor(fn, "per_token", per_token)
    check_tensor(fn, "mask", mask)
    check_same_shape(fn, per_token=per_token, mask=mask)
    if per_token.dim() != 2:
        raise ValueError(f"{fn}: per_token must be [B, L], got shape {tuple(per_token.shape)}")
    mask_f = as_float_mask(mask, per_token.dtype)
    return _aggregate(per_token * mask_f, mask_f, agg)


class _ClippedGain(torch.autograd.Function):
    """Per-token clipped surrogate gain `g = -l [B, L]` from the ratio `r`; gradient into `logp` only.

    Backward is the textbook PPO gradient: `dg/dlogp = dg/dr * r = A r` where the clip does not
    bind (g equals A r) and 0 where it binds (left, right or dual clip).
    """

    @staticmethod
    def forward(
        ctx, logp: Tensor, r: Tensor, a: Tensor, lo, hi, c
    ) -> Tensor:  # [B, L]; lo, hi floats or [B, L]
        g1 = a * r  # A r
        g = torch.minimum(g1, a * r.clamp_min(lo).clamp_max_(hi))  # min(A r, A clip(r, 1 - eps_L, 1 + eps_R))
        if c is not None:
            g = torch.maximum(g, (a * c).clamp_max_(0.0))  # dual clip, binds only for A < 0
        ctx.save_for_backward(g1.mul_((g == g1).view(torch.uint8).to(g1.dtype)))  # dg/dlogp
        ctx.logp_dtype = logp.dtype
        return g

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (dg_dlogp,) = ctx.saved_tensors
        return (grad_out * dg_dlogp).to(ctx.logp_dtype), None, None, None, None, None


def _limit(eps: float | Tensor, sign: float, ref: Tensor) -> float | Tensor:
    """1 + sign * eps as a float, or as a tensor on ref's device/dtype."""
    if isinstance(eps, Tensor):
        return (eps.detach().to(device=ref.device, dtype=ref.dtype) * sign).add_(1.0)
    return 1.0 + sign * float(eps)


def _loss_core(
    fn: str,
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    clip_ratio_c: float | None,
    agg: str,
    h: Tensor | None = None,
    alpha: float | None = None,
    beta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    _check_agg(fn, agg)
    for name, t in (("logp", logp), ("old_logp", old_logp), ("adv", adv), ("mask", mask)):
        check_tensor(fn, name, t)
    check_same_shape(fn, logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    if logp.dim() != 2:
        raise ValueError(f"{fn}: logp must be [B, L], got shape {tuple(logp.shape)}")
    if not logp.dtype.is_floating_point:
        raise ValueError(f"{fn}: logp must be a floating tensor, got {logp.dtype}")
    if clip_ratio_c is not None and not float(clip_ratio_c) > 1.0:
        raise ValueError(
            f"{fn}: clip_ratio_c (dual clip c) must be > 1 (or None to disable), got {clip_ratio_c!r}"
        )
    _check_eps(fn, "eps_low", eps_low)
    _check_eps(fn, "eps_high", eps_high)
    c = None if clip_ratio_c is None else float(clip_ratio_c)

    with torch.no_grad():
        dtype = float_dtype(logp, old_logp, adv)
        valid = as_bool_mask(mask)  # [B, L]
        mask_f = as_float_mask(valid, dtype)  # [B, L] 0/1
        a = adv.detach().to(dtype) * mask_f  # [B, L] A, 0 at padding
        log_ratio = (logp.detach().to(dtype) - old_logp.detach().to(dtype)).mul_(mask_f)  # 0 at padding
        log_ratio.clamp_(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # numerical guard: r never overflows to inf
        r = torch.exp(log_ratio)  # [B, L] r = exp(logp - old_logp), 1 at padding
        hd = None if h is None else h.detach().to(dtype)
        if hd is not None and alpha is not None:  # D: per-token limits 1 - eps_L', 1 + eps_R'
            lo, hi = _clip_limits(hd, eps_low, eps_high, float(alpha))
        else:
            lo, hi = _limit(eps_low, -1.0, r), _limit(eps_high, 1.0, r)
        if hd is not None and beta is not None:  # C: with the same (possibly widened) bounds
            a = _redistribute(a, hd, r, lo, hi, float(beta))

    gain = _ClippedGain.apply(logp, r, a, lo, hi, c)  # [B, L], 0 at padding
    loss = -_aggregate(gain, mask_f, agg)

    with torch.no_grad():
        pos = a > 0
        neg = a < 0  # padding has a = 0, so it is never counted below
        left = (r < lo) & neg  # [B, L] the lower clip binds
        right = (r > hi) & pos  # [B, L] the upper clip binds
        n = mask_f.sum()  # []
        denom = n.clamp_min(1.0)
        metrics: dict[str, Tensor] = {
            "loss": loss.detach(),
            "clipfrac_left": torch.count_nonzero(left) / denom,
            "clipfrac_right": torch.count_nonzero(right) / denom,
        }
        metrics["clipfrac"] = metrics["clipfrac_left"] + metrics["clipfrac_right"]
        if c is not None:
            metrics["clipfrac_dual"] = torch.count_nonzero((r > c) & neg) / denom
        else:
            metrics["clipfrac_dual"] = torch.zeros((), dtype=dtype, device=r.device)
        flat_r, flat_m = r.reshape(-1), mask_f.reshape(-1)
        metrics["ratio_mean"] = torch.dot(flat_r, flat_m) / denom
        # r > 0, so the zeros at padding never win (and it is 0 with no valid token)
        metrics["ratio_max"] = (flat_r * flat_m).amax()
        inv_min = (flat_m / flat_r).amax()  # = 1 / (min valid r); 0 if no token
        metrics["ratio_min"] = torch.where(inv_min > 0, 1.0 / inv_min, 0.0)
        metrics["n_tokens"] = n
        metrics["token_clipped_left"] = left
        metrics["token_clipped_right"] = right
    return loss, metrics


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    clip_ratio_c: float | None = 10.0,
    agg: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec "The clipped objective": `r = exp(logp - old_logp)`, `l = max(-A r, -A clip(r, 1-eps_L, 1+eps_R))`,
    and for A < 0 `l = min(l, -A c)` (dual clip, `c = clip_ratio_c` > 1; None disables it),
    aggregated over valid tokens by `agg` (one of `LOSS_AGG_MODES`, default "token-mean").
    `eps_low` / `eps_high` are floats (DAPO clip-higher: 0.2 / 0.28) or `[B, L]` tensors (AAC).
    Gradient flows into `logp` only (`old_logp`, `adv` and the bounds are constants):
    `dl/dlogp = -A r` where the clip does not bind and 0 where it does.
    Values at masked positions (mask 0) never matter; they must be finite (masking multiplies by 0).
    As a numerical guard `logp - old_logp` is clamped to [-20, 20] before exp (so r cannot
    overflow to inf and A = 0 never meets r = inf); it only matters beyond r = e^20 = 4.9e8, where
    every clip but the disabled dual clip already binds.

    "token-mean" is the mean over THIS call's valid tokens; to weight micro-batches consistently
    under gradient accumulation / data parallelism, scale the loss by
    `metrics["n_tokens"] / total_valid_tokens` of the whole mini-batch.

    Metrics (detached tensors): `loss`; `clipfrac_left` (fraction of valid tokens with A < 0 and
    r < 1 - eps_L: the lower clip binds), `clipfrac_right` (A > 0 and r > 1 + eps_R),
    `clipfrac` (their sum), `clipfrac_dual` (A < 0 and r > c: the dual clip binds);
    `ratio_mean` / `ratio_max` / `ratio_min` over valid tokens; `n_tokens` (float); and the
    per-token bool masks `token_clipped_left` / `token_clipped_right` `[B, L]` (to split the
    clip fractions by the sign of h).
    """
    return _loss_core("policy_loss", logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg)


def hapo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    h: Tensor,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    alpha: float | None = 1.0,
    beta: float | None = 1.0,
    clip_ratio_c: float | None = 10.0,
    agg: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """HAPO's clipped loss with AAC (D) and DAR (C) fused in: all inputs `[B, L]` -> `(loss [], metrics)`.

    Exactly `policy_loss(logp, old_logp, redistribute_advantages(adv, h, r, eL, eH, beta), mask, eL, eH, c, agg)`
    with `(eL, eH) = adaptive_clip_bounds(h, eps_low, eps_high, alpha)` and `r = exp(logp - old_logp)`,
    but computing the ratio once. `alpha=None` switches AAC off (base bounds), `beta=None`
    switches DAR off; with both None it is `policy_loss`. `h` is the normalised entropy
    (`normalize_entropy`, 0 at masked positions). Same metrics as `policy_loss` (clip fractions
    against the widened bounds).
    """
    fn = "hapo_policy_loss"
    check_tensor(fn, "h", h)
    check_same_shape(fn, logp=logp, h=h)
    if alpha is not None:
        _check_alpha(fn, alpha)
    if beta is not None:
        _check_beta(fn, beta)
    return _loss_core(
        fn, logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg, h=h, alpha=alpha, beta=beta
    )
