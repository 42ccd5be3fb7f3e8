"""Forking Tokens ("Beyond the 80/20 rule", arXiv 2506.01939): baselines-spec section 1.

DAPO with the policy-gradient term restricted to the top-rho high-entropy ("forking") tokens.
`forking_token_mask` is the selection; `forking_loss` is the DAPO clipped loss on the selected
tokens with either denominator of the spec (`selected`, the official fork; `all`, TRL / paper).

The scope of the selection is the tensor you pass: the micro-batch of one rank (the fork's
`microbatch_local`), or the whole mini-batch / batch (e.g. from the old-policy entropy).
"""

from __future__ import annotations

import torch

from . import _pg
from ._common import check_same_shape, check_tensor, count_ones
from ._select import descending_rank, linear_quantile
from .entropy import entropy_stats

Tensor = torch.Tensor

__all__ = ["FORKING_CONVENTIONS", "FORKING_DENOMINATORS", "forking_loss", "forking_token_mask"]

FORKING_CONVENTIONS = ("topk_ceil", "linear_ge", "hapo_h_positive")
"""Selection conventions of `forking_token_mask` (baselines-spec "Quantile conventions", section 1):
- "topk_ceil" ([FORK] `get_global_entropy_top_mask`): exactly `k = max(1, int(n * rho + 0.9999))`
  tokens with the largest entropy among the n valid tokens (ties: the earlier position wins).
- "linear_ge" ([TRL] `get_high_entropy_mask`): `H >= torch.quantile(H_valid, 1 - rho)` (linear
  interpolation; every tie at the threshold is kept).
- "hapo_h_positive": HAPO's `h > 0`, i.e. `log max(H, 1e-8) > Q` with Q the nearest-rank
  `1 - rho` quantile of log H (`entropy_stats(pivot=1 - rho)`): tokens STRICTLY above the
  quantile. Not the same set as "topk_ceil" (spec test F3).
"""

FORKING_DENOMINATORS = ("selected", "all")
"""`forking_loss` denominators: "selected" ([FORK], reference: `m_den = mask * sel`) or "all"
([TRL] and the paper: `m_den = mask`)."""


def forking_token_mask(
    entropy: Tensor, mask: Tensor, rho: float = 0.2, convention: str = "topk_ceil"
) -> Tensor:
    """High-entropy token selection: `entropy [B, L]`, `mask [B, L]` -> float 0/1 `[B, L]` (spec 1, `sel`).

    Selects the top-`rho` fraction of the valid tokens of the WHOLE tensor by entropy (nats) under
    `convention` (one of `FORKING_CONVENTIONS`, default "topk_ceil" = the official fork). No
    gradient; the result is 0 at masked positions, whose entropy values never matter (they may
    even be NaN / inf). No valid token -> all zeros. Same dtype as `entropy` (float32 for
    non-float input). Sync-free (sort-based; no `torch.quantile` size limit).

    Use: multiply the loss mask by it (`denominator: selected`) or the advantage (`all`); see
    `forking_loss`.
    """
    fn = "forking_token_mask"
    check_tensor(fn, "entropy", entropy)
    check_tensor(fn, "mask", mask)
    check_same_shape(fn, entropy=entropy, mask=mask)
    if convention not in FORKING_CONVENTIONS:
        raise ValueError(f"{fn}: unknown convention {convention!r}; valid: {', '.join(FORKING_CONVENTIONS)}")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"{fn}: rho (top_ratio) must be in (0, 1], got {rho!r}")
    with torch.no_grad():
        dtype = entropy.dtype if entropy.dtype.is_floating_point else torch.float32
        h = entropy.detach().to(dtype)
        valid = mask != 0
        if convention == "topk_ceil":
            n = valid.sum().to(torch.float64)
            k = torch.floor(n * float(rho) + 0.9999).clamp_min(1.0)  # [] int(n * rho + 0.9999), literally
            key = torch.where(valid, h, torch.full_like(h, float("-inf")))
            sel = (descending_rank(key) < k) & valid
        elif convention == "linear_ge":
            thr, _ = linear_quantile(h, valid, 1.0 - float(rho))
            sel = (h >= thr) & valid
        else:  # hapo_h_positive
            h = torch.where(valid, h, torch.ones_like(h))  # entropy_stats needs finite values everywhere
            q = entropy_stats(h, valid, pivot=1.0 - float(rho)).q
            sel = (h.clamp_min(1e-8).log() > q) & valid
        return sel.to(dtype)


def forking_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    sel: Tensor,
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.28,
    clip_ratio_c: float | None = 10.0,
    denominator: str = "selected",
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DAPO's clipped loss on the selected tokens: `logp, old_logp, adv, mask, sel [B, L]` -> `(loss [], metrics)`.

    Spec 1: `l = PPO(A, r, eps_L, eps_R, c)` (the `policy_loss` formula), `m_num = mask * sel`;
    `m_den = mask * sel` (`denominator="selected"`, [FORK] reference) or `mask` ("all", [TRL]);
    `loss = sum(w * l * m_num) / den(m_den)` with the `agg` normaliser (`LOSS_AGG_MODES`).
    `sel` is `forking_token_mask(...)` (any 0/1 mask; no gradient). `is_weights`: optional
    detached rollout IS weights `[B, L]` (spec 7) multiplying `l`. Unselected tokens contribute
    exactly 0 to the loss and the gradient. In the seq-mean modes with "selected", a response with
    no selected token is left out of the sequence mean (spec 1, paper-vs-code 6).

    Equivalent to `policy_loss(logp, old_logp, adv, mask * sel, ...)` ("selected") or
    `policy_loss(logp, old_logp, adv * sel, mask, ...)` ("all"), plus IS weights.

    Metrics: those of `policy_loss` (clip fractions over the DENOMINATOR tokens, clip masks only
    on selected tokens, ratio stats over all valid tokens, `n_tokens` = tokens in `m_den`: weight a micro-batch by
    `n_tokens / total` under token-mean), plus `selected_frac` (selected / valid tokens).
    """
    fn = "forking_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask, sel=sel)
    if denominator not in FORKING_DENOMINATORS:
        raise ValueError(
            f"{fn}: unknown denominator {denominator!r}; valid: {', '.join(FORKING_DENOMINATORS)}"
        )
    _pg.check_eps(fn, "eps_low", eps_low)
    _pg.check_eps(fn, "eps_high", eps_high)
    if clip_ratio_c is not None and not float(clip_ratio_c) > 1.0:
        raise ValueError(f"{fn}: clip_ratio_c must be > 1 (or None), got {clip_ratio_c!r}")
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    m_num = mask_f * _pg.float_mask(sel.detach(), dtype)
    m_den = m_num if denominator == "selected" else mask_f
    ratio = _pg.log_ratio(logp, old_logp, mask_f, dtype).exp()
    a = adv.detach().to(dtype) * m_num
    lo, hi = _pg.limit(eps_low, -1.0, ratio), _pg.limit(eps_high, 1.0, ratio)
    c = None if clip_ratio_c is None else float(clip_ratio_c)
    pt, _, _ = _pg.ppo_terms(ratio, a, lo, hi, c)
    pt = _pg.apply_is_weights(fn, pt, is_weights)
    loss = _pg.aggregate(pt, m_num, m_den, agg)
    n_den = count_ones(m_den)
    metrics = {"loss": loss.detach(), "n_tokens": n_den}
    metrics.update(_pg.clip_metrics(ratio, a, m_num, lo, hi, c, n_den))
    metrics.update(_pg.ratio_metrics(ratio, mask_f))  # over every valid token
    metrics["selected_frac"] = count_ones(m_num) / count_ones(mask_f).clamp_min(1.0)
    return loss, metrics
