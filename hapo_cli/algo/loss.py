"""The clipped policy-gradient objective (DAPO baseline and HAPO) and its loss aggregation modes.

hapo-spec "The clipped objective", per token, with `r = exp(logp - old_logp)`:
`l1 = -A r`, `l2 = -A clip(r, 1 - eps_L, 1 + eps_R)`, `l = max(l1, l2)`, and for A < 0 the dual
clip `l = min(l, -A c)`; then `aggregate_loss` over the valid tokens. The code below is that
formula line by line, and autograd gives the gradient.

`policy_loss` is the DAPO/GRPO loss. `hapo_policy_loss` is `policy_loss` after HAPO's per-token
components: D (AAC, `adaptive_clip_bounds`, `alpha`) widens the bounds, then C (DAR,
`redistribute_advantages`, `beta`) reweights the advantages by the neutral zone of those bounds.
"""

from __future__ import annotations

import torch

from ._common import as_float_mask, check_same_shape, check_tensor, float_dtype
from .aac import _check_alpha, _check_eps, adaptive_clip_bounds
from .dar import _check_beta, redistribute_advantages

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


def _check_loss_args(fn, logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg) -> None:
    """The argument checks shared by `policy_loss` and `hapo_policy_loss` (errors name `fn`)."""
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


def _ratio(logp: Tensor, old_logp: Tensor, valid: Tensor) -> Tensor:
    """`r = exp(logp - old_logp)` `[B, L]`, 1 at padding; the log-ratio clamped to +-20 (never inf)."""
    return torch.exp(torch.where(valid, logp - old_logp, 0.0).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))


def _bound(eps: float | Tensor, like: Tensor) -> Tensor:
    """A clip bound (float, or tensor broadcastable to `[B, L]`) as a constant tensor like `like`.

    `torch.clamp` takes tensor bounds or number bounds, not one of each; `torch.full` makes the
    0-dim tensor on the device itself (no host-to-device copy, so no sync on accelerators).
    """
    if isinstance(eps, Tensor):
        return eps.detach().to(dtype=like.dtype, device=like.device)
    return torch.full((), float(eps), dtype=like.dtype, device=like.device)


def _loss_metrics(
    loss: Tensor, r: Tensor, a: Tensor, valid: Tensor, lo: Tensor, hi: Tensor, c: float | None
) -> dict[str, Tensor]:
    """What one loss call logs (detached): clip fractions over the valid tokens, ratio statistics."""
    with torch.no_grad():
        r = r.detach()
        n = valid.sum().to(r.dtype)  # [] valid tokens
        denom = n.clamp_min(1.0)
        left = valid & (a < 0) & (r < lo)  # [B, L] the lower clip binds
        right = valid & (a > 0) & (r > hi)  # [B, L] the upper clip binds
        dual = valid & (a < 0) & (r > c) if c is not None else torch.zeros_like(valid)  # the dual clip binds
        clipfrac_left, clipfrac_right = left.sum() / denom, right.sum() / denom
        ratio_min = torch.where(valid, r, torch.inf).amin()
        return {
            "loss": loss.detach(),
            "clipfrac_left": clipfrac_left,
            "clipfrac_right": clipfrac_right,
            "clipfrac": clipfrac_left + clipfrac_right,
            "clipfrac_dual": dual.sum() / denom,
            "ratio_mean": torch.where(valid, r, 0.0).sum() / denom,
            "ratio_max": torch.where(valid, r, 0.0).amax(),  # r > 0: the zeros at padding never win
            "ratio_min": torch.where(n > 0, ratio_min, 0.0),  # 0 without valid tokens
            "n_tokens": n,
            "token_clipped_left": left,
            "token_clipped_right": right,
        }


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
    `eps_low` / `eps_high` are floats (DAPO clip-higher: 0.2 / 0.28) or tensors broadcastable to
    `[B, L]` (AAC). The maths runs in float64 if any of logp / old_logp / adv is float64, else
    float32. Gradient flows into `logp` only (`old_logp`, `adv` and the bounds are constants):
    `dl/dlogp = -A r` where the clip does not bind and 0 where it does.
    Values at masked positions (mask 0) never matter; they must be finite.
    As a numerical guard `logp - old_logp` is clamped to [-20, 20] before exp (so r cannot
    overflow to inf and A = 0 never meets r = inf); it only matters beyond r = e^20 = 4.9e8, where
    every clip but the disabled dual clip already binds (the gradient is 0 beyond it).

    "token-mean" is the mean over THIS call's valid tokens; to weight micro-batches consistently
    under gradient accumulation / data parallelism, scale the loss by
    `metrics["n_tokens"] / total_valid_tokens` of the whole mini-batch.

    Metrics (detached tensors): `loss`; `clipfrac_left` (fraction of valid tokens with A < 0 and
    r < 1 - eps_L: the lower clip binds), `clipfrac_right` (A > 0 and r > 1 + eps_R),
    `clipfrac` (their sum), `clipfrac_dual` (A < 0 and r > c: the dual clip binds);
    `ratio_mean` / `ratio_max` / `ratio_min` over valid tokens (0 without one); `n_tokens`
    (float); and the per-token bool masks `token_clipped_left` / `token_clipped_right` `[B, L]`
    (to split the clip fractions by the sign of h).
    """
    _check_loss_args("policy_loss", logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg)
    dtype = float_dtype(logp, old_logp, adv)
    valid = mask != 0  # [B, L]
    a = torch.where(valid, adv.detach().to(dtype), 0.0)  # [B, L] A, 0 at padding
    lo = 1.0 - _bound(eps_low, a)  # [] or [B, L] 1 - eps_L
    hi = 1.0 + _bound(eps_high, a)  # [] or [B, L] 1 + eps_R
    r = _ratio(logp.to(dtype), old_logp.detach().to(dtype), valid)  # [B, L] the importance ratio
    l1 = -a * r  # [B, L]
    l2 = -a * torch.clamp(r, lo, hi)  # [B, L]
    per_token = torch.maximum(l1, l2)  # [B, L] the pessimistic (clipped) surrogate
    if clip_ratio_c is not None:  # dual clip: for A < 0 the loss is at most -A c
        per_token = torch.where(a < 0, torch.minimum(per_token, -a * float(clip_ratio_c)), per_token)
    loss = aggregate_loss(per_token, valid, agg)  # []
    return loss, _loss_metrics(loss, r, a, valid, lo, hi, clip_ratio_c)


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
    """HAPO's clipped loss with AAC (D) and DAR (C): all inputs `[B, L]` -> `(loss [], metrics)`.

    `policy_loss(logp, old_logp, redistribute_advantages(adv, h, r, eL, eH, beta), mask, eL, eH, c, agg)`
    with `(eL, eH) = adaptive_clip_bounds(h, eps_low, eps_high, alpha)` and `r = exp(logp - old_logp)`.
    `alpha=None` switches AAC off (base bounds), `beta=None` switches DAR off; with both None it
    is `policy_loss`. `h` is the normalised entropy (`normalize_entropy`, 0 at masked positions).
    Same metrics as `policy_loss` (clip fractions against the widened bounds, signs of the
    redistributed advantages).
    """
    fn = "hapo_policy_loss"
    _check_loss_args(fn, logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg)
    check_tensor(fn, "h", h)
    check_same_shape(fn, logp=logp, h=h)
    if alpha is not None:
        _check_alpha(fn, alpha)
    if beta is not None:
        _check_beta(fn, beta)
    with torch.no_grad():  # C and D are constants of the loss
        dtype = float_dtype(logp, old_logp, adv)
        hd = h.detach().to(dtype)  # [B, L]
        if alpha is not None:  # D: per-token bounds eps_L', eps_R'
            eps_low, eps_high = adaptive_clip_bounds(hd, eps_low, eps_high, alpha)
        if beta is not None:  # C: A or A (1 + beta h) by entropy and neutral zone (of the widened bounds)
            r = _ratio(logp.detach().to(dtype), old_logp.detach().to(dtype), mask != 0)  # [B, L]
            adv = redistribute_advantages(adv.detach().to(dtype), hd, r, eps_low, eps_high, beta)
    return policy_loss(logp, old_logp, adv, mask, eps_low, eps_high, clip_ratio_c, agg)
