"""Archer: dual-token constraints (arXiv 2507.15778): baselines-spec section 2.

Per response, the valid tokens are split at that response's entropy quantile (linear, q = 0.8):
low-entropy ("knowledge") tokens `H <= q_i` and high-entropy ("reasoning") tokens `H > q_i`. Both
classes are trained together with their own clip bounds (`archer_loss`) and their own KL weight
to the reference model (`archer_kl_loss`). The split is per response, so micro-batching does not
change it (the entropy source, current vs old, does).

Naming follows the MEANING (the official code's tensor `high_entropy_mask` holds the LOW tokens).
"""

from __future__ import annotations

import torch

from . import _pg
from ._common import check_same_shape, check_tensor, count_ones
from ._select import linear_quantile

Tensor = torch.Tensor

__all__ = ["archer_high_entropy", "archer_kl_loss", "archer_loss", "archer_quantiles"]

KL_LOG_RATIO_MAX = 20.0  # [ARCH] kl_penalty low_var_kl: clamp(ref - logp, -20, 20)
KL_MAX = 10.0  # ... and clamp(k3, -10, 10)


def _check_split_inputs(fn: str, entropy: Tensor, mask: Tensor, quantile: float) -> None:
    check_tensor(fn, "entropy", entropy)
    check_tensor(fn, "mask", mask)
    check_same_shape(fn, entropy=entropy, mask=mask)
    if entropy.dim() != 2:
        raise ValueError(f"{fn}: entropy must be [B, L], got shape {tuple(entropy.shape)}")
    if not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(f"{fn}: quantile must be in [0, 1], got {quantile!r}")


def archer_quantiles(entropy: Tensor, mask: Tensor, quantile: float = 0.8) -> tuple[Tensor, Tensor]:
    """Per-response entropy quantile: `entropy, mask [B, L]` -> `(q [B], n_valid [B])`.

    Spec 2: `q_i = nanquantile(H[i, valid], quantile)` with linear interpolation ([ARCH]
    `dp_actor.py` L403-410; the `linear_le_per_seq` convention), bit-identical to
    `torch.nanquantile`. A response without valid tokens gets q = 0 (and n = 0). No gradient.
    """
    _check_split_inputs("archer_quantiles", entropy, mask, quantile)
    with torch.no_grad():
        h = entropy.detach().to(entropy.dtype if entropy.dtype.is_floating_point else torch.float32)
        return linear_quantile(h, mask != 0, float(quantile), dim=-1)


def archer_high_entropy(entropy: Tensor, mask: Tensor, quantile: float = 0.8) -> Tensor:
    """Archer's high-entropy ("reasoning") tokens: `entropy, mask [B, L]` -> bool `[B, L]`.

    Spec 2: `high = (H > q_i) & mask` with `q_i` the per-response linear quantile
    (`archer_quantiles`); the low-entropy tokens are `mask & ~high`. A response with one valid
    token: q equals its H, so the token is low. Entropy at masked positions never matters (may be
    NaN). No gradient (computed on `entropy.detach()`).
    """
    q, _ = archer_quantiles(entropy, mask, quantile)
    with torch.no_grad():
        h = entropy.detach().to(q.dtype)
        return (h > q.unsqueeze(-1)) & (mask != 0)


def _check_pair(fn: str, name: str, pair: tuple[float, float]) -> tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{fn}: {name} must be a pair (eps_L, eps_R), got {pair!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not (lo >= 0.0 and hi >= 0.0):
        raise ValueError(f"{fn}: {name} bounds must be >= 0, got {pair!r}")
    return lo, hi


def archer_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    entropy: Tensor,
    quantile: float = 0.8,
    low_clip: tuple[float, float] = (0.2, 0.2),
    high_clip: tuple[float, float] = (0.5, 0.5),
    clip_ratio_c: float | None = 10.0,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Archer's policy-gradient term: `logp, old_logp, adv, mask, entropy [B, L]` -> `(loss [], metrics)`.

    Spec 2: `l = PPO(A, r, eL, eR, c)` with `(eL, eR) = low_clip` on the low-entropy tokens and
    `high_clip` on the high-entropy tokens (`archer_high_entropy(entropy, mask, quantile)`; [ARCH]
    `core_algos.py` L597-600), aggregated over `mask` (every token) by `agg`. Defaults are the
    released recipe: low 0.2 / 0.2, high 0.5 / 0.5, dual clip c = 10. `entropy` is the source the
    config names (current: this forward's entropy; old: the old-policy pass), detached. Optional
    detached rollout IS weights `[B, L]` multiply `l`. Composes over micro-batches exactly like
    `policy_loss` (the split is per response). Add `archer_kl_loss` for the per-class KL.

    Metrics: those of `policy_loss` (`n_tokens` = valid tokens) plus `q_mean` (mean q_i over
    responses with tokens), `high_frac` / `low_frac` (of valid tokens), `clipfrac_left_low`,
    `clipfrac_right_low`, `clipfrac_left_high`, `clipfrac_right_high` (fractions of that class's
    tokens) and the bool mask `token_high [B, L]`.
    """
    fn = "archer_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask, entropy=entropy)
    low_l, low_r = _check_pair(fn, "low_clip", low_clip)
    high_l, high_r = _check_pair(fn, "high_clip", high_clip)
    if clip_ratio_c is not None and not float(clip_ratio_c) > 1.0:
        raise ValueError(f"{fn}: clip_ratio_c must be > 1 (or None), got {clip_ratio_c!r}")
    q, n_rows = archer_quantiles(entropy, mask, quantile)
    high = archer_high_entropy(entropy, mask, quantile)
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    high_f = high.to(dtype)
    low_f = mask_f - high_f
    lo = (1.0 - low_l) * low_f + (1.0 - high_l) * high_f + (1.0 - mask_f)  # [B, L] 1 - eL per class
    hi = (1.0 + low_r) * low_f + (1.0 + high_r) * high_f + (1.0 - mask_f)  # [B, L] 1 + eR per class
    ratio = _pg.log_ratio(logp, old_logp, mask_f, dtype).exp()
    a = adv.detach().to(dtype) * mask_f
    c = None if clip_ratio_c is None else float(clip_ratio_c)
    pt, _, _ = _pg.ppo_terms(ratio, a, lo, hi, c)
    pt = _pg.apply_is_weights(fn, pt, is_weights)
    loss, metrics = _pg.finish(pt, ratio, a, mask_f, lo, hi, c, agg)
    n = metrics["n_tokens"]
    with torch.no_grad():
        rows = (n_rows > 0).to(dtype)
        n_high, n_low = count_ones(high_f), count_ones(low_f)
        left, right = metrics["token_clipped_left"].to(dtype), metrics["token_clipped_right"].to(dtype)
        metrics.update(
            {
                "q_mean": (q.to(dtype) * rows).sum() / rows.sum().clamp_min(1.0),
                "high_frac": n_high / n.clamp_min(1.0),
                "low_frac": n_low / n.clamp_min(1.0),
                "clipfrac_left_low": (left * low_f).sum() / n_low.clamp_min(1.0),
                "clipfrac_right_low": (right * low_f).sum() / n_low.clamp_min(1.0),
                "clipfrac_left_high": (left * high_f).sum() / n_high.clamp_min(1.0),
                "clipfrac_right_high": (right * high_f).sum() / n_high.clamp_min(1.0),
                "token_high": high,
            }
        )
    return loss, metrics


def archer_kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    entropy: Tensor,
    quantile: float = 0.8,
    low_kl_coef: float = 1e-3,
    high_kl_coef: float = 0.0,
    agg: str = "token-mean",
    denominators: tuple[float | Tensor, float | Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Archer's per-class KL to the reference model: `logp, ref_logp, mask, entropy [B, L]` -> `(loss [], metrics)`.

    Spec 2 ([ARCH] `kl_penalty` low_var_kl and `dp_actor.py` L441-446): per token
    `d = clamp(ref_logp - logp, -20, 20)`, `k3 = clamp(exp(d) - d - 1, -10, 10)`;
    `loss = low_kl_coef * AGG(k3, low) + high_kl_coef * AGG(k3, high)`: each class aggregated with
    ITS OWN denominator (under token-mean: divided by that class's token count). Gradient flows
    through `logp` only. Defaults: the released recipe (1e-3 on low tokens, 0 on high).

    Micro-batches: with `denominators=None` the class counts are this call's (spec A1 for one
    call, A2 `reference_microbatch` per micro-batch). For the `global` token-mean over a
    mini-batch pass `denominators=(N_low, N_high)` (the class token counts of the whole mini-batch,
    all ranks, e.g. from `archer_high_entropy` on it) and SUM the per-micro-batch results
    unweighted (like the trainer's KL term); only with agg "token-mean".

    Metrics: `loss`, `kl_low`, `kl_high` (per-class aggregated k3, before the coefficients),
    `n_low`, `n_high` (class token counts of this call).
    """
    fn = "archer_kl_loss"
    _pg.check_inputs(fn, agg, logp=logp, ref_logp=ref_logp, mask=mask, entropy=entropy)
    if denominators is not None and agg != "token-mean":
        raise ValueError(f"{fn}: denominators are only meaningful with agg 'token-mean', got {agg!r}")
    high = archer_high_entropy(entropy, mask, quantile)
    dtype = _pg.float_inputs(logp, ref_logp)
    mask_f = _pg.float_mask(mask, dtype)
    high_f = high.to(dtype)
    low_f = mask_f - high_f
    d = ref_logp.detach().to(dtype) - logp.to(dtype)
    d = torch.where(mask_f > 0, d, torch.zeros_like(d)).clamp(-KL_LOG_RATIO_MAX, KL_LOG_RATIO_MAX)
    k3 = (torch.exp(d) - d - 1.0).clamp(-KL_MAX, KL_MAX)  # [B, L], 0 at padding
    if denominators is None:
        kl_low = _pg.aggregate(k3, low_f, low_f, agg)
        kl_high = _pg.aggregate(k3, high_f, high_f, agg)
    else:
        den_low, den_high = (
            torch.as_tensor(x, dtype=dtype, device=k3.device).clamp_min(1.0) for x in denominators
        )
        kl_low = (k3 * low_f).sum() / den_low
        kl_high = (k3 * high_f).sum() / den_high
    loss = float(low_kl_coef) * kl_low + float(high_kl_coef) * kl_high
    metrics = {
        "loss": loss.detach(),
        "kl_low": kl_low.detach(),
        "kl_high": kl_high.detach(),
        "n_low": count_ones(low_f),
        "n_high": count_ones(high_f),
    }
    return loss, metrics
