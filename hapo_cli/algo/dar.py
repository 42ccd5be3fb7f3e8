"""Differential Advantage Redistribution (DAR): hapo-spec section C, HAPO component "C".

Tokens are treated differently by entropy and by where their importance ratio lies relative to
the "neutral zone" `(1 - eps_low/2, 1 + eps_high/2)` (open interval; eps after AAC if enabled):
- high entropy (h > 0) and r OUTSIDE the zone (a clear update direction): amplify, `A * (1 + beta*h)`;
- low entropy (h <= 0) and r INSIDE the zone (no clear direction): `A * (1 + beta*h)`, which damps
  it in paper mode (h <= 0);
- every other token keeps A.
Applied after the advantage normalisation ("post-norm", the paper's more stable choice).
"""

from __future__ import annotations

import torch

from ._common import check_same_shape, check_tensor, float_dtype

Tensor = torch.Tensor

__all__ = ["redistribute_advantages"]


def _check_beta(fn: str, beta: float) -> None:
    if not float(beta) >= 0.0:
        raise ValueError(f"{fn}: beta must be >= 0, got {beta!r}")


def _redistribute(adv: Tensor, h: Tensor, r: Tensor, lo, hi, beta: float) -> Tensor:
    """`adv * (1 + beta * h)` where `(r in the neutral zone) XOR (h > 0)`, else adv. All `[B, L]`.

    `lo = 1 - eps_L`, `hi = 1 + eps_R` are the clip limits (floats or `[B, L]`); the zone
    `(1 - eps_L/2, 1 + eps_R/2) = ((1 + lo)/2, (1 + hi)/2)` is tested as `lo < 2r - 1 < hi`.
    """
    u = r * 2.0 - 1.0  # [B, L]
    inside = (u > lo).logical_and_(u < hi)  # [B, L] r in the neutral zone
    use = inside.logical_xor_(h > 0)  # [B, L] high entropy outside, or low entropy inside
    h_used = h * use.view(torch.uint8).to(h.dtype)  # [B, L] h where A_e applies, else 0
    return torch.addcmul(adv, adv, h_used, value=beta)  # adv + beta * adv * h_used = adv * (1 + beta h)


def redistribute_advantages(
    adv: Tensor,
    h: Tensor,
    ratio: Tensor,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    beta: float = 1.0,
) -> Tensor:
    """Redistributed advantages: `adv [B, L]`, `h [B, L]`, `ratio [B, L]` -> `[B, L]`.

    Spec C: with `inside = 1 - eps_low/2 < ratio < 1 + eps_high/2` and `A_e = adv * (1 + beta*h)`,
    the result is `A_e` where `(h > 0 and not inside) or (h <= 0 and inside)`, else `adv`
    (i.e. where `inside XOR (h > 0)`). `eps_low` / `eps_high` are floats or `[B, L]` tensors
    (per-token bounds from `adaptive_clip_bounds`); `beta` = `adv_beta` (default 1.0, >= 0).
    `ratio` is the importance ratio `exp(logp - old_logp)`. Computed without gradient (the
    result is a constant of the loss). Padded tokens with adv = 0 stay 0 (values there must be finite).
    """
    fn = "redistribute_advantages"
    for name, t in (("adv", adv), ("h", h), ("ratio", ratio)):
        check_tensor(fn, name, t)
    check_same_shape(fn, adv=adv, h=h, ratio=ratio)
    _check_beta(fn, beta)
    with torch.no_grad():
        dtype = float_dtype(adv, h, ratio)
        dev = adv.device
        lo = 1.0 - (eps_low.detach().to(dev, dtype) if isinstance(eps_low, Tensor) else float(eps_low))
        hi = 1.0 + (eps_high.detach().to(dev, dtype) if isinstance(eps_high, Tensor) else float(eps_high))
        return _redistribute(
            adv.detach().to(dtype), h.detach().to(dtype), ratio.detach().to(dtype), lo, hi, float(beta)
        )
