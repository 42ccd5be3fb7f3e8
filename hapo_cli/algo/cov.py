"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617): baselines-spec section 6.

Both select a small share of tokens by the centred covariance between log-probability and
advantage, `cov = (A - mean A) * (logp - mean sg(logp))` (means over the valid tokens of the
scope), and treat them specially: Clip-Cov zeroes the loss of randomly chosen tokens whose cov
lies in (lb, ub); KL-Cov adds `kl_coef * |logp - old_logp|` on the top-k cov tokens.

Scope: by default each loss selects over its own call's tokens (`microbatch_local`, the [VERL] /
[PRIME] reference). For a wider scope (`minibatch`) compute the selection once with
`clip_cov_select` / `kl_cov_select` over the whole mini-batch and pass the slice of each
micro-batch as `selected=`: the micro-batch losses then compose exactly (token-mean weighting).
"""

from __future__ import annotations

import torch

from . import _pg
from ._common import count_ones
from ._select import descending_rank

Tensor = torch.Tensor

CLIP_COV_DRAWS = ("keys", "randperm")

__all__ = [
    "CLIP_COV_DRAWS",
    "clip_cov_loss",
    "clip_cov_select",
    "kl_cov_loss",
    "kl_cov_select",
    "token_covariance",
]


def token_covariance(logp: Tensor, adv: Tensor, mask: Tensor) -> Tensor:
    """Centred covariance per token: `logp, adv, mask [B, L]` -> `cov [B, L]` (0 at padding), no gradient.

    Spec 6: `cov = (A - mean(A)) * (sg(logp) - mean(sg(logp)))`, means over the valid tokens
    ([VERL] `core_algos.py` L1811-1813). Float32 (float64 for float64 inputs).
    """
    _pg.check_inputs("token_covariance", None, logp=logp, adv=adv, mask=mask)
    with torch.no_grad():
        dtype = _pg.float_inputs(logp, adv)
        mask_f = _pg.float_mask(mask, dtype)
        n = count_ones(mask_f).clamp_min(1.0)
        valid = mask_f > 0
        zero = torch.zeros((), dtype=dtype, device=mask_f.device)
        a = torch.where(valid, adv.detach().to(dtype), zero)
        lp = torch.where(valid, logp.detach().to(dtype), zero)
        return torch.where(valid, (a - a.sum() / n) * (lp - lp.sum() / n), zero)


def _n_select(ratio: float, n: Tensor) -> Tensor:
    """`max(int(ratio * N), 1)` on the device (float64 arithmetic = Python's)."""
    return torch.floor(n.to(torch.float64) * float(ratio)).clamp_min(1.0)


def _ratio_clip(logp, old_logp, adv, mask, eps_low, eps_high):
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    ratio = _pg.log_ratio(logp, old_logp, mask_f, dtype).exp()
    a = adv.detach().to(dtype) * mask_f
    lo, hi = _pg.limit(eps_low, -1.0, ratio), _pg.limit(eps_high, 1.0, ratio)
    pt, l1, l2 = _pg.ppo_terms(ratio, a, lo, hi, None)
    return dtype, mask_f, ratio, a, lo, hi, pt, l1, l2


def _check_cov_args(fn, clip_cov_ratio, lb, ub, eps_low, eps_high):
    _pg.check_eps(fn, "eps_low", eps_low)
    _pg.check_eps(fn, "eps_high", eps_high)
    if not 0.0 < float(clip_cov_ratio) <= 1.0:
        raise ValueError(f"{fn}: clip_cov_ratio must be in (0, 1], got {clip_cov_ratio!r}")
    if not float(lb) < float(ub):
        raise ValueError(f"{fn}: need lb < ub, got lb={lb!r}, ub={ub!r}")


def clip_cov_select(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor,
    eps_high: float | Tensor,
    clip_cov_ratio: float,
    lb: float,
    ub: float,
    generator: torch.Generator,
    draw: str = "keys",
) -> tuple[Tensor, Tensor]:
    """Clip-Cov's detached tokens: all `[B, L]` -> `(selected bool [B, L], candidates bool [B, L])`.

    Spec 6 steps 1-3: `clipped = (l2 > l1) & mask` (the ordinary ratio clip binds); candidates
    `mask & ~clipped & (lb < cov < ub)` (strict); `n_sel = max(int(clip_cov_ratio * N), 1)` with N
    the valid tokens; `min(n_sel, #candidates)` candidates chosen uniformly at random without
    replacement, by `draw` (one of `CLIP_COV_DRAWS`):
    - "keys" (default): one `torch.rand([B, L], generator=generator)` key per token, the
      candidates with the largest keys win: the same distribution as [VERL]'s `randperm` over the
      candidate list, sync-free (but not the same random stream);
    - "randperm" (reference): exactly [VERL]'s draw with the generator injected:
      `idx = nonzero(candidates)` (row-major), `perm = randperm(len(idx), generator)`, the first
      `min(n_sel, len(idx))` of `idx[perm]`. Costs one host sync (the candidate count).
    No gradient.
    """
    fn = "clip_cov_select"
    _pg.check_inputs(fn, None, logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    _check_cov_args(fn, clip_cov_ratio, lb, ub, eps_low, eps_high)
    if draw not in CLIP_COV_DRAWS:
        raise ValueError(f"{fn}: unknown draw {draw!r}; valid: {', '.join(CLIP_COV_DRAWS)}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{fn}: generator must be a torch.Generator (seeded from run seed, step, rank, micro-batch)"
        )
    with torch.no_grad():
        _, mask_f, _, _, _, _, _, l1, l2 = _ratio_clip(logp.detach(), old_logp, adv, mask, eps_low, eps_high)
        valid = mask_f > 0
        cov = token_covariance(logp, adv, mask)
        cand = valid & ~((l2 > l1) & valid) & (cov > float(lb)) & (cov < float(ub))
        k = _n_select(clip_cov_ratio, count_ones(mask_f))
        if draw == "randperm":
            idx = torch.nonzero(cand)  # [n_cand, 2] row-major, like [VERL]
            n_cand = idx.shape[0]  # the host sync of the reference draw
            perm = torch.randperm(n_cand, generator=generator, device=generator.device).to(idx.device)
            chosen = idx[perm[: min(int(k.item()), n_cand)]]
            sel = torch.zeros_like(cand)
            sel[chosen[:, 0], chosen[:, 1]] = True
            return sel, cand
        keys = torch.rand(cand.shape, generator=generator, device=generator.device, dtype=torch.float64)
        keys = torch.where(cand, keys.to(cand.device), torch.full_like(keys, -1.0, device=cand.device))
        sel = (descending_rank(keys) < k) & cand
        return sel, cand


def clip_cov_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float | Tensor = 1.0,
    eps_high: float | Tensor = 1.0,
    clip_cov_ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    generator: torch.Generator | None = None,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
    selected: Tensor | None = None,
    draw: str = "keys",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec 6 ([VERL] L1743-1845): `l = PPO(A, r, eps_L, eps_R)` without dual clip, times
    `corr = 0` on the tokens `clip_cov_select(...)` chose (1 elsewhere): they contribute 0 to the
    loss and the gradient but stay in the denominator (`m_den = mask`), aggregated by `agg`.
    `generator` (required unless `selected` is given) drives the random choice (`draw`: "keys",
    sync-free, or "randperm", [VERL]'s exact draw; see `clip_cov_select`). `selected`: a
    precomputed bool/0-1 `[B, L]` selection (e.g. over the whole mini-batch); None selects over
    this call's tokens (`microbatch_local`, reference). Defaults: the released recipes (ratio 2e-4,
    lb 1, ub 5, PPO clip 1.0 / 1.0). Optional detached rollout IS weights multiply `l`.

    Metrics: those of `policy_loss` (`n_tokens` = valid tokens, `clipfrac_dual` 0), plus
    `n_candidates` (None when `selected` is given: then 0), `n_selected`, `cov_selected_mean`
    and the bool mask `token_selected`.
    """
    fn = "clip_cov_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask, selected=selected)
    _check_cov_args(fn, clip_cov_ratio, lb, ub, eps_low, eps_high)
    if selected is None:
        if generator is None:
            raise ValueError(f"{fn}: pass a torch.Generator (or a precomputed `selected` mask)")
        sel, cand = clip_cov_select(
            logp, old_logp, adv, mask, eps_low, eps_high, clip_cov_ratio, lb, ub, generator, draw
        )
    else:
        sel, cand = (selected.detach() != 0) & (mask != 0), None
    dtype, mask_f, ratio, a, lo, hi, pt, _, _ = _ratio_clip(logp, old_logp, adv, mask, eps_low, eps_high)
    pt = pt * (1.0 - sel.to(dtype))  # corr
    pt = _pg.apply_is_weights(fn, pt, is_weights)
    loss, metrics = _pg.finish(pt, ratio, a, mask_f, lo, hi, None, agg)
    n = metrics["n_tokens"]
    with torch.no_grad():
        sel_f = sel.to(dtype)
        n_sel = sel_f.sum()
        cov = token_covariance(logp, adv, mask)
        metrics.update(
            {
                "n_candidates": cand.sum().to(dtype)
                if cand is not None
                else torch.zeros((), dtype=dtype, device=n.device),
                "n_selected": n_sel,
                "cov_selected_mean": (cov * sel_f).sum() / n_sel.clamp_min(1.0),
                "token_selected": sel,
            }
        )
    return loss, metrics


def kl_cov_select(logp: Tensor, adv: Tensor, mask: Tensor, kl_cov_ratio: float) -> Tensor:
    """KL-Cov's tokens: `logp, adv, mask [B, L]` -> bool `[B, L]`: the `k = max(1, int(N * kl_cov_ratio))`
    valid tokens with the largest `token_covariance` (spec 6; top-k, no randomness; ties: the earlier
    position wins). `kl_cov_ratio` is a FRACTION ([VERL]; [PRIME]'s `k_percent` is 100x it). No gradient.
    """
    fn = "kl_cov_select"
    _pg.check_inputs(fn, None, logp=logp, adv=adv, mask=mask)
    if not 0.0 < float(kl_cov_ratio) <= 1.0:
        raise ValueError(f"{fn}: kl_cov_ratio must be in (0, 1], got {kl_cov_ratio!r}")
    with torch.no_grad():
        cov = token_covariance(logp, adv, mask)
        valid = mask != 0
        key = torch.where(valid, cov, torch.full_like(cov, float("-inf")))
        k = _n_select(kl_cov_ratio, valid.sum())
        return (descending_rank(key) < k) & valid


def kl_cov_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    kl_cov_ratio: float = 2e-3,
    ppo_kl_coef: float = 1.0,
    agg: str = "token-mean",
    is_weights: Tensor | None = None,
    selected: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov loss: `logp, old_logp, adv, mask [B, L]` -> `(loss [], metrics)`.

    Spec 6 ([VERL] L1848-1925): `l = -A r` (NO ratio clip, no dual clip); on the tokens of
    `kl_cov_select` (or the precomputed `selected` mask) `l = -A r + ppo_kl_coef * |logp - old_logp|`;
    aggregated over `mask` by `agg`. Defaults: ratio 2e-3 (7B recipe; 2e-4 for 32B), coef 1.
    Optional detached rollout IS weights multiply the policy-gradient part `-A r` only (not the
    KL, spec 7). Metrics: `loss`, `n_tokens`, `ratio_*`, zero clip fractions and empty clip masks
    (nothing is clipped), `n_selected`, `cov_selected_mean`, `kl_selected_mean` (mean |log r| of
    the selected tokens) and `token_selected`.
    """
    fn = "kl_cov_loss"
    _pg.check_inputs(fn, agg, logp=logp, old_logp=old_logp, adv=adv, mask=mask, selected=selected)
    if not float(ppo_kl_coef) >= 0.0:
        raise ValueError(f"{fn}: ppo_kl_coef must be >= 0, got {ppo_kl_coef!r}")
    if selected is None:
        sel = kl_cov_select(logp, adv, mask, kl_cov_ratio)
    else:
        sel = (selected.detach() != 0) & (mask != 0)
    dtype = _pg.float_inputs(logp, old_logp, adv)
    mask_f = _pg.float_mask(mask, dtype)
    log_r = _pg.log_ratio(logp, old_logp, mask_f, dtype)
    ratio = log_r.exp()
    a = adv.detach().to(dtype) * mask_f
    sel_f = sel.to(dtype)
    pg = _pg.apply_is_weights(fn, -a * ratio, is_weights)
    pt = pg + float(ppo_kl_coef) * log_r.abs() * sel_f
    loss, metrics = _pg.finish(pt, ratio, a, mask_f, None, None, None, agg)
    with torch.no_grad():
        n_sel = sel_f.sum()
        cov = token_covariance(logp, adv, mask)
        metrics.update(
            {
                "n_selected": n_sel,
                "cov_selected_mean": (cov * sel_f).sum() / n_sel.clamp_min(1.0),
                "kl_selected_mean": (log_r.detach().abs() * sel_f).sum() / n_sel.clamp_min(1.0),
                "token_selected": sel,
            }
        )
    return loss, metrics
