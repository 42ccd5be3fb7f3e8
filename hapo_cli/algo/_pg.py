"""Shared pieces of the baseline losses (baselines-spec.md): input checks, the per-token clipped PPO
term, aggregation with separate numerator / denominator masks, and the common metrics.

Private to the package. Unlike `loss.policy_loss` (hand-written backward, tuned for the DAPO/HAPO
hot path) these losses are plain autograd: they are written to be read next to the spec.

Every baseline loss returns `(loss, metrics)` with the metrics keys of `policy_loss` where they
mean something (`loss`, `clipfrac_left`, `clipfrac_right`, `clipfrac`, `clipfrac_dual`,
`ratio_mean`, `ratio_max`, `ratio_min`, `n_tokens`, `token_clipped_left`, `token_clipped_right`),
so the trainer's diagnostics and its micro-batch weighting work unchanged. `n_tokens` is always
the number of tokens in the DENOMINATOR mask (`m_den` of the spec): under "token-mean" a
micro-batch's loss is weighted by `n_tokens / (sum of n_tokens over the mini-batch)`.
"""

from __future__ import annotations

import torch

from ._common import as_float_mask, check_same_shape, check_tensor, count_ones, float_dtype
from .loss import _aggregate, _check_agg

Tensor = torch.Tensor

MAX_LOG_RATIO = 20.0  # |log r| is clamped here before exp (verl's SAFETY_BOUND): no inf / NaN


def check_inputs(fn: str, agg: str | None, **tensors: Tensor | None) -> None:
    """Every given tensor is a `[B, L]` tensor of one shape; `agg` (if given) is a LOSS_AGG_MODES name."""
    if agg is not None:
        _check_agg(fn, agg)
    given = {k: v for k, v in tensors.items() if v is not None}
    for name, t in given.items():
        check_tensor(fn, name, t)
    check_same_shape(fn, **given)
    first = next(iter(given.values()))
    if first.dim() != 2:
        raise ValueError(f"{fn}: {next(iter(given))} must be [B, L], got shape {tuple(first.shape)}")


def check_eps(fn: str, name: str, eps: float | Tensor | None, allow_none: bool = False) -> None:
    if eps is None:
        if not allow_none:
            raise ValueError(f"{fn}: {name} must be a number >= 0, got None")
        return
    if not isinstance(eps, Tensor) and not float(eps) >= 0.0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {eps!r}")


def limit(eps: float | Tensor, sign: float, ref: Tensor) -> float | Tensor:
    """`1 + sign * eps` as a float, or as a detached tensor on ref's device / dtype."""
    if isinstance(eps, Tensor):
        return eps.detach().to(device=ref.device, dtype=ref.dtype) * sign + 1.0
    return 1.0 + sign * float(eps)


def clamp(x: Tensor, lo: float | Tensor | None, hi: float | Tensor | None) -> Tensor:
    """`min(max(x, lo), hi)` for float / tensor / None limits (autograd-friendly)."""
    if lo is not None:
        x = torch.clamp_min(x, lo) if not isinstance(lo, Tensor) else torch.maximum(x, lo)
    if hi is not None:
        x = torch.clamp_max(x, hi) if not isinstance(hi, Tensor) else torch.minimum(x, hi)
    return x


def log_ratio(logp: Tensor, old_logp: Tensor, mask_f: Tensor, dtype: torch.dtype) -> Tensor:
    """`clamp(logp - sg(old_logp), -20, 20)` `[B, L]` in `dtype`, differentiable in logp; 0 at padding."""
    d = logp.to(dtype) - old_logp.detach().to(dtype)
    d = torch.where(mask_f > 0, d, torch.zeros_like(d))  # padding may even hold inf / NaN
    return d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def ppo_terms(
    ratio: Tensor, a: Tensor, lo: float | Tensor, hi: float | Tensor, c: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The spec's `PPO(A, r, eL, eR, c)` per token: `(l, l1, l2)`, all `[B, L]`.

    `l1 = -A r`, `l2 = -A clip(r, lo, hi)`, `l = max(l1, l2)`, and for A < 0 (`c` not None)
    `l = min(l, -A c)`. `a` must already be 0 at padding (then l = 0 there).
    """
    l1 = -a * ratio
    l2 = -a * clamp(ratio, lo, hi)
    pt = torch.maximum(l1, l2)
    if c is not None:
        pt = torch.where(a < 0, torch.minimum(pt, -a * c), pt)
    return pt, l1, l2


def aggregate(pt: Tensor, m_num: Tensor, m_den: Tensor, agg: str) -> Tensor:
    """`sum(l * m_num) / den(m_den)` with the `loss_agg` normaliser of `agg` over `m_den` -> scalar.

    `m_num`, `m_den` are 0/1 float masks `[B, L]` with `m_num <= m_den`; values of `l` outside
    `m_num` never matter (they must be finite). Same arithmetic as `aggregate_loss`.
    """
    return _aggregate(pt * m_num, m_den, agg)


def finish(pt: Tensor, ratio: Tensor, a: Tensor, mask_f: Tensor, lo, hi, c, agg: str) -> tuple[Tensor, dict]:
    """The shared tail of a clipped loss: `aggregate` over `mask_f`, then the `policy_loss` metrics
    keys (loss, n_tokens, clip fractions and masks, ratio statistics). -> (loss, metrics)."""
    loss = aggregate(pt, mask_f, mask_f, agg)
    n = count_ones(mask_f.detach())
    metrics = {"loss": loss.detach(), "n_tokens": n}
    metrics.update(clip_metrics(ratio, a, mask_f, lo, hi, c, n))
    metrics.update(ratio_metrics(ratio, mask_f))
    return loss, metrics


def apply_is_weights(fn: str, pt: Tensor, is_weights: Tensor | None) -> Tensor:
    """`l * sg(w)` (spec 7: the rollout IS weight multiplies the per-token loss after clipping)."""
    if is_weights is None:
        return pt
    check_same_shape(fn, per_token_loss=pt, is_weights=is_weights)
    return pt * is_weights.detach().to(pt.dtype)


def ratio_metrics(ratio: Tensor, mask_f: Tensor) -> dict[str, Tensor]:
    """`ratio_mean` / `ratio_max` / `ratio_min` of `ratio [B, L]` (> 0) over the valid tokens (0 without any)."""
    with torch.no_grad():
        r = ratio.detach()
        valid = mask_f > 0
        n = count_ones(mask_f)
        any_valid = n > 0
        rmax = torch.where(valid, r, torch.zeros_like(r)).amax() if r.numel() else r.new_zeros(())
        rmin = (
            torch.where(valid, r, torch.full_like(r, float("inf"))).amin() if r.numel() else r.new_zeros(())
        )
        return {
            "ratio_mean": (r * mask_f).sum() / n.clamp_min(1.0),
            "ratio_max": rmax,
            "ratio_min": torch.where(any_valid, rmin, torch.zeros_like(rmin)),
        }


def clip_metrics(
    ratio: Tensor,
    a: Tensor,
    mask_f: Tensor,
    lo: float | Tensor | None,
    hi: float | Tensor | None,
    c: float | None,
    denom: Tensor,
) -> dict[str, Tensor]:
    """The clip metrics of `policy_loss` for the ratio the clip acts on (`ratio`, `a`, `mask_f` `[B, L]`).

    `token_clipped_left = (A < 0) & (r < lo)`, `token_clipped_right = (A > 0) & (r > hi)` on valid
    tokens; the fractions are over `denom` tokens; `clipfrac_dual`: A < 0 and r > c.
    """
    with torch.no_grad():
        r, a = ratio.detach(), a.detach()
        valid = mask_f > 0
        d = denom.clamp_min(1.0)
        false = torch.zeros_like(valid)
        left = valid & (a < 0) & (r < lo) if lo is not None else false
        right = valid & (a > 0) & (r > hi) if hi is not None else false
        dual = valid & (a < 0) & (r > c) if c is not None else false
        cl, cr = left.sum().to(r.dtype) / d, right.sum().to(r.dtype) / d
        return {
            "clipfrac_left": cl,
            "clipfrac_right": cr,
            "clipfrac": cl + cr,
            "clipfrac_dual": dual.sum().to(r.dtype) / d,
            "token_clipped_left": left,
            "token_clipped_right": right,
        }


def float_inputs(*tensors: Tensor | None) -> torch.dtype:
    return float_dtype(*[t for t in tensors if t is not None])


def float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return as_float_mask(mask, dtype)
