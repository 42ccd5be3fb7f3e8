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


def _redistribute_(adv: Tensor, h: Tensor, r: Tensor, lo, hi, beta: float) -> Tensor:
    """In place: `adv *= 1 + beta * h` where `(r in the neutral zone) XOR (h > 0)`; returns adv. All `[B, L]`.

    `lo = 1 - eps_L`, `hi = 1 + eps_R` are the clip limits (floats or `[B, L]`); the zone
    `(1 - eps_L/2, 1 + eps_R/2) = ((1 + lo)/2, (1 + hi)/2)` is tested as `lo < 2r - 1 < hi`.
    With `inside` as 0/1 floats, the h where A_e applies is `max(h, 0) - |h| * inside`
    (`h (1 - inside)` for h > 0, `h * inside` for h <= 0): no bool tensors.
    """
    u, t = torch.empty_like(r), torch.empty_like(r)  # [B, L] work buffers
    torch.mul(r, 2.0, out=u).sub_(1.0)  # [B, L] 2r - 1
    torch.lt(u, hi, out=t)  # [B, L] 2r - 1 < hi
    inside = u.gt_(lo).mul_(t)  # [B, L] 0/1: r in the neutral zone (open interval)
    hin = torch.abs(h, out=t).mul_(inside)  # [B, L] |h| * inside
    h_used = torch.clamp(h, min=0.0, out=inside).sub_(hin)  # [B, L] h where A_e applies, else 0
    return adv.addcmul_(adv, h_used, value=beta)  # adv + beta * adv * h_used = adv * (1 + beta h)


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
        return _redistribute_(
            adv.detach().to(dtype, copy=True),
            h.detach().to(dtype),
            ratio.detach().to(dtype),
            lo,
            hi,
            float(beta),
        )
