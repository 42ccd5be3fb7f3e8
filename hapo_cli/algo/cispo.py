"""CISPO: clipped, stop-gradient importance-sampling weight (MiniMax-M1, arXiv 2506.13585): baselines-spec section 5.

REINFORCE with a capped, detached IS weight: `l = -sg(clip(r, 1 - eps_L, 1 + eps_R)) * A * logp`.
Every token keeps a gradient (clipping caps the weight instead of dropping the token, unlike PPO).
"""

from __future__ import annotations

import torch

from . import _pg
from ._common import count_ones

Tensor = torch.Tensor

__all__ = ["cispo_loss"]


def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor | None = None,
    eps_high: float | Tensor = 0.2,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec 5 ([VERL] `compute_policy_loss_cispo`): `w = sg(clip(r, 1 - eps_low, 1 + eps_high))` with
    `r = exp(clamp(logp - old_logp, -20, 20))`, `l = -w * A * logp`, aggregated by `agg` (the paper:
    token-mean); gradient `-w A d logp`. No dual clip. Bounds use verl's convention (offsets from
    1): `eps_low=None` means no lower bound (the paper; verl's example `clip_ratio_low=10` is the
    same in effect), `eps_high` sets the cap `ratio_max = 1 + eps_high` (verl example 0.2 -> cap
    1.2; TRL/ScaleRL's absolute `epsilon_high = 5.0` is `eps_high = 4.0`). Both may be `[B, L]`
    tensors (AAC: `ratio_max[i, t] = 1 + eps_R'[i, t]`). Optional detached rollout IS weights
    `[B, L]` multiply the capped weight (spec 7).

    The loss value contains `logp`, so it is not comparable with PPO's: compare `surrogate`.
    Metrics: `loss`, `n_tokens` (valid tokens), `ratio_*` (of r), `clipfrac_left` / `clipfrac_right`
    (fraction of valid tokens with r below the floor / above the cap, whatever the sign of A: a
    capped token still gets a gradient), `clipfrac`, `clipfrac_dual` (0), the per-token masks
    `token_clipped_left` / `token_clipped_right`, `capfrac_pos` / `capfrac_neg` (r above the cap
    with A > 0 / A < 0, fractions of valid tokens), `weight_mean` (mean w) and `surrogate`
    (token-mean of `-w A`).
    """
    fn = "cispo_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    _pg.check_eps(fn, "eps_low", eps_low, allow_none=True)
    _pg.check_eps(fn, "eps_high", eps_high)
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    with torch.no_grad():
        ratio = _pg.log_ratio(logp.detach(), old_logp, mask_f, dtype).exp()  # [B, L], 1 at padding
        lo = None if eps_low is None else _pg.limit(eps_low, -1.0, ratio)
        hi = _pg.limit(eps_high, 1.0, ratio)
        w = _pg.clamp(ratio, lo, hi)  # [B, L] the capped, detached weight
        if is_weights is not None:
            w = _pg.apply_is_weights(fn, w, is_weights)
        a = adv.detach().to(dtype) * mask_f
    lp = logp.to(dtype)
    pt = -(w * a) * torch.where(mask_f > 0, lp, torch.zeros_like(lp))  # [B, L], 0 at padding
    loss = _pg.aggregate(pt, mask_f, mask_f, agg)
    n = count_ones(mask_f)
    metrics = {"loss": loss.detach(), "n_tokens": n}
    with torch.no_grad():
        valid = mask_f > 0
        d = n.clamp_min(1.0)
        left = valid & (ratio < lo) if lo is not None else torch.zeros_like(valid)
        right = valid & (ratio > hi)
        cl, cr = left.sum().to(dtype) / d, right.sum().to(dtype) / d
        metrics.update(
            {
                "clipfrac_left": cl,
                "clipfrac_right": cr,
                "clipfrac": cl + cr,
                "clipfrac_dual": torch.zeros((), dtype=dtype, device=ratio.device),
                "token_clipped_left": left,
                "token_clipped_right": right,
                "capfrac_pos": (right & (a > 0)).sum().to(dtype) / d,
                "capfrac_neg": (right & (a < 0)).sum().to(dtype) / d,
                "weight_mean": (w * mask_f).sum() / d,
                "surrogate": (-(w * a)).sum() / d,
            }
        )
    metrics.update(_pg.ratio_metrics(ratio, mask_f))
    return loss, metrics
