"""Asymmetric Adaptive Clipping (AAC): hapo-spec section D, HAPO component "D".

The PPO/DAPO clip bounds become per-token functions of the normalised entropy h:
low-entropy tokens (h <= 0) get a wider LEFT bound (they may be pushed down further), high-entropy
tokens (h > 0) a wider RIGHT bound (they may explore up further). The other bound is unchanged.
"""

from __future__ import annotations

import torch

from ._common import check_tensor

Tensor = torch.Tensor

__all__ = ["adaptive_clip_bounds"]


def _check_eps(fn: str, name: str, eps: float | Tensor) -> None:
    if not isinstance(eps, Tensor) and not float(eps) >= 0.0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {eps!r}")


def _check_alpha(fn: str, alpha: float) -> None:
    if not float(alpha) >= 0.0:
        raise ValueError(f"{fn}: alpha must be >= 0, got {alpha!r}")


def _scaled(factor: Tensor, eps: float | Tensor) -> Tensor:
    """factor * eps (in place when eps is a float)."""
    if isinstance(eps, Tensor):
        return factor * eps.detach().to(device=factor.device)
    return factor.mul_(float(eps))


def _widened_bounds(
    h: Tensor, eps_low: float | Tensor, eps_high: float | Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """`eps_low * (1 - alpha * min(h, 0))`, `eps_high * (1 + alpha * max(h, 0))`: both like h."""
    low = h.clamp_max(0.0).mul_(-alpha).add_(1.0)  # [B, L] 1 - alpha*min(h, 0) >= 1
    high = h.clamp_min(0.0).mul_(alpha).add_(1.0)  # [B, L] 1 + alpha*max(h, 0) >= 1
    return _scaled(low, eps_low), _scaled(high, eps_high)


def adaptive_clip_bounds(
    h: Tensor, eps_low: float | Tensor, eps_high: float | Tensor, alpha: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Per-token clip bounds: `h [B, L]` -> `(eps_low' [B, L], eps_high' [B, L])`.

    Spec D:
    - h <= 0: `eps_low' = eps_low * (1 - alpha * h)` (>= eps_low), `eps_high' = eps_high`;
    - h > 0:  `eps_high' = eps_high * (1 + alpha * h)` (>= eps_high), `eps_low' = eps_low`.
    `eps_low` / `eps_high` are floats (base bounds: DAPO 0.2 / 0.28, released HAPO 0.2 / 0.2) or
    tensors broadcastable to h; `alpha` >= 0 (`clip_alpha`, default 1.0). In mode "reference"
    h >= 0, so only the right bound ever widens. Same dtype as h; no gradient.
    """
    fn = "adaptive_clip_bounds"
    check_tensor(fn, "h", h)
    _check_eps(fn, "eps_low", eps_low)
    _check_eps(fn, "eps_high", eps_high)
    _check_alpha(fn, alpha)
    with torch.no_grad():
        eps_l, eps_h = _widened_bounds(h.detach(), eps_low, eps_high, float(alpha))
        return eps_l, eps_h
