"""Rollout correction: truncated / masked importance sampling (TIS, MIS, IcePop) and rejection
sampling: baselines-spec section 7.

The data were sampled from the behaviour policy mu (the rollout engine, at the ATS temperature,
after top-p), not from pi_old. `rollout_is_weights` gives the detached weight `w ~ pi_old / mu`
that multiplies the per-token policy-gradient loss (every loss of `algo/` takes `is_weights=`);
`rollout_rejection_mask` removes tokens or whole responses from loss and denominator;
`behaviour_logprobs` recomputes `beh_logp` from the trainer's logits (`behaviour_logp: recompute`).
"""

from __future__ import annotations

import math

import torch

from ._common import as_float_mask, check_same_shape, check_tensor, float_dtype

Tensor = torch.Tensor

__all__ = [
    "ROLLOUT_IS_LEVELS",
    "ROLLOUT_IS_MODES",
    "ROLLOUT_RS_STATS",
    "behaviour_logprobs",
    "rollout_is_weights",
    "rollout_rejection_mask",
]

ROLLOUT_IS_LEVELS = ("token", "sequence")
ROLLOUT_IS_MODES = ("truncate", "mask")
ROLLOUT_RS_STATS = ("k1", "k2", "k3")
_RS_LEVELS = ("token", "sum", "mean", "max")
_MAX_DELTA = 20.0  # [VERL] rollout_corr_helper.py L75: SAFETY_BOUND before exp


def _check_logps(fn: str, old_logp: Tensor, beh_logp: Tensor, mask: Tensor) -> None:
    for name, t in (("old_logp", old_logp), ("beh_logp", beh_logp), ("mask", mask)):
        check_tensor(fn, name, t)
    check_same_shape(fn, old_logp=old_logp, beh_logp=beh_logp, mask=mask)
    if old_logp.dim() != 2:
        raise ValueError(f"{fn}: old_logp must be [B, L], got shape {tuple(old_logp.shape)}")


def _delta(old_logp: Tensor, beh_logp: Tensor, mask_f: Tensor) -> Tensor:
    """`clamp((old_logp - beh_logp) * mask, -20, 20)` `[B, L]` (0 at padding, whatever beh_logp holds there)."""
    d = old_logp.detach().to(mask_f.dtype) - beh_logp.detach().to(mask_f.dtype)
    d = torch.where(mask_f > 0, d, torch.zeros_like(d))  # padding may hold -1 / -inf (older verl)
    return d.clamp(-_MAX_DELTA, _MAX_DELTA)


def rollout_is_weights(
    old_logp: Tensor,
    beh_logp: Tensor,
    mask: Tensor,
    level: str = "token",
    mode: str = "truncate",
    c_min: float | None = None,
    c_max: float | None = 2.0,
) -> Tensor:
    """Detached IS weights: `old_logp, beh_logp, mask [B, L]` -> `w [B, L]` (0 at padding).

    Spec 7: `delta = clamp(old_logp - beh_logp, -20, 20)` per valid token;
    `level="token"`: `w = exp(delta)`; `"sequence"`: `w_i = exp(clamp(sum_t delta, -20, 20))` (a
    PRODUCT of token ratios, not a geometric mean; the sum is clamped like verl's), broadcast.
    `mode="truncate"` (TIS): `w = min(w, c_max)`, and `max(w, c_min)` if `c_min` is given (TRL);
    `mode="mask"` (MIS / IcePop): `w` if `c_min <= w <= c_max` else 0 (the kept weight keeps its
    value). `None` bounds are absent. The weight multiplies the method's per-token loss after its
    clipping (`is_weights=` of the losses); masked weights (0) keep the token in the denominator.
    GEC-injected tokens must get 1: `torch.where(injected, 1.0, w)`. No gradient. Float32
    (float64 for float64 inputs). Defaults: token TIS with C = 2 (Flash-RL / verl presets).
    """
    fn = "rollout_is_weights"
    _check_logps(fn, old_logp, beh_logp, mask)
    if level not in ROLLOUT_IS_LEVELS:
        raise ValueError(f"{fn}: unknown level {level!r}; valid: {', '.join(ROLLOUT_IS_LEVELS)}")
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; valid: {', '.join(ROLLOUT_IS_MODES)}")
    if c_max is not None and not float(c_max) > 0.0:
        raise ValueError(f"{fn}: c_max must be > 0 (or None), got {c_max!r}")
    if c_min is not None and c_max is not None and not float(c_min) <= float(c_max):
        raise ValueError(f"{fn}: need c_min <= c_max, got {c_min!r} > {c_max!r}")
    with torch.no_grad():
        mask_f = as_float_mask(mask, float_dtype(old_logp, beh_logp))
        d = _delta(old_logp, beh_logp, mask_f)
        if level == "token":
            w = d.exp()
        else:
            w = d.sum(-1, keepdim=True).clamp(-_MAX_DELTA, _MAX_DELTA).exp().expand_as(d)
        if mode == "truncate":
            if c_max is not None:
                w = w.clamp_max(float(c_max))
            if c_min is not None:
                w = w.clamp_min(float(c_min))
        else:
            keep = torch.ones_like(w, dtype=torch.bool)
            if c_min is not None:
                keep &= w >= float(c_min)
            if c_max is not None:
                keep &= w <= float(c_max)
            w = w * keep
        return w * mask_f


def rollout_rejection_mask(
    old_logp: Tensor,
    beh_logp: Tensor,
    mask: Tensor,
    stat: str = "k1",
    level: str = "sum",
    lo: float | None = None,
    hi: float | None = None,
) -> Tensor:
    """Rejection sampling keep-mask: `old_logp, beh_logp, mask [B, L]` -> float 0/1 `[B, L]`.

    Spec 7 ([VERL] `compute_rollout_rejection_mask`): per token `k1 = -delta = log(mu / pi_old)`,
    `k2 = delta^2 / 2`, `k3 = exp(delta) - 1 - delta` (`stat`); `level="token"` tests each token,
    "sum" / "mean" / "max" test a per-response statistic over its valid tokens and keep or drop the
    whole response. k1 takes RATIO bounds compared in log space (`log lo <= stat <= log hi`; e.g.
    verl's `seq_sum_k1 "0.5_2.0"` is `stat="k1", level="sum", lo=0.5, hi=2.0`); k2 / k3 take an
    upper threshold `hi` only. Multiply BOTH the loss mask and the denominator mask by the
    result (`m_num = m_den = mask * keep`); group statistics for advantages use the original mask.
    No gradient.
    """
    fn = "rollout_rejection_mask"
    _check_logps(fn, old_logp, beh_logp, mask)
    if stat not in ROLLOUT_RS_STATS:
        raise ValueError(f"{fn}: unknown stat {stat!r}; valid: {', '.join(ROLLOUT_RS_STATS)}")
    if level not in _RS_LEVELS:
        raise ValueError(f"{fn}: unknown level {level!r}; valid: {', '.join(_RS_LEVELS)}")
    if stat != "k1" and lo is not None:
        raise ValueError(f"{fn}: {stat} takes an upper threshold only (hi), got lo={lo!r}")
    if stat == "k1" and (
        (lo is not None and not float(lo) > 0.0) or (hi is not None and not float(hi) > 0.0)
    ):
        raise ValueError(f"{fn}: k1 bounds are ratios > 0, got lo={lo!r}, hi={hi!r}")
    with torch.no_grad():
        mask_f = as_float_mask(mask, float_dtype(old_logp, beh_logp))
        valid = mask_f > 0
        d = _delta(old_logp, beh_logp, mask_f)
        x = -d if stat == "k1" else (0.5 * d * d if stat == "k2" else d.exp() - 1.0 - d)  # [B, L]
        if level == "sum":
            x = (x * mask_f).sum(-1, keepdim=True)
        elif level == "mean":
            x = (x * mask_f).sum(-1, keepdim=True) / mask_f.sum(-1, keepdim=True).clamp_min(1.0)
        elif level == "max":
            x = torch.where(valid, x, torch.full_like(x, float("-inf"))).amax(-1, keepdim=True)
        keep = torch.ones_like(x, dtype=torch.bool)
        lo_t = None if lo is None else (math.log(float(lo)) if stat == "k1" else float(lo))
        hi_t = None if hi is None else (math.log(float(hi)) if stat == "k1" else float(hi))
        if lo_t is not None:
            keep &= x >= lo_t
        if hi_t is not None:
            keep &= x <= hi_t
        return mask_f * keep


def behaviour_logprobs(
    logits: Tensor, tokens: Tensor, temperature: float | Tensor, top_p: float = 1.0
) -> Tensor:
    """Log-prob of each sampled token under the distribution the engine sampled from (`behaviour_logp: recompute`).

    `logits [B, L, V]` (the trainer's, at temperature 1), `tokens [B, L]` long, `temperature`: a
    float or `[B, L]` (ATS: `T_base * m[i, t]`, `m = 1 + tau h`) -> `[B, L]`:
    `log_softmax(logits / T)[y]`, restricted to the top-p nucleus and renormalised when `top_p < 1`
    (the Hugging Face `TopPLogitsWarper` convention: drop the smallest tokens whose cumulative
    probability is <= 1 - top_p, always keep the most likely; a token outside the nucleus gets
    -inf). Spec 7 tests T2 (ATS shift) and T3 (truncation is part of mu). No gradient.
    """
    fn = "behaviour_logprobs"
    check_tensor(fn, "logits", logits)
    check_tensor(fn, "tokens", tokens)
    if logits.dim() != 3 or tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"{fn}: need logits [B, L, V] and tokens [B, L], got {tuple(logits.shape)}, {tuple(tokens.shape)}"
        )
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"{fn}: top_p must be in (0, 1], got {top_p!r}")
    with torch.no_grad():
        z = logits.detach().to(float_dtype(logits))
        t = (
            temperature.detach().to(z.dtype).unsqueeze(-1)
            if isinstance(temperature, Tensor)
            else float(temperature)
        )
        z = z / t
        if top_p < 1.0:
            srt, idx = torch.sort(z, dim=-1, descending=False)
            cum = srt.softmax(-1).cumsum(-1)
            drop = cum <= 1.0 - float(top_p)
            drop[..., -1] = False  # keep at least the most likely token
            z = z.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
        return z.log_softmax(-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
