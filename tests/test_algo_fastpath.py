"""The lean (in-place, bool-free) implementations of hapo_cli.algo against plain textbook references.

DAR, AAC and the entropy statistics are written for speed (a few reused [B, L] buffers, comparisons
as 0/1 floats); the loss is the spec's formula with autograd. These tests pin them to
straightforward autograd / bool / torch.quantile references on random batches, in every
configuration, and check that no public function writes into its inputs.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from hapo_cli.algo import (
    LOSS_AGG_MODES,
    adaptive_clip_bounds,
    entropy_stats,
    grpo_advantages,
    hapo_policy_loss,
    normalize_batch_entropy,
    normalize_entropy,
    policy_loss,
    redistribute_advantages,
    tlga_advantages,
)

F64 = dict(rtol=1e-12, atol=1e-12)


def _reference_loss(logp, old, adv, mask, h, eps_low, eps_high, alpha, beta, c, agg):
    """HAPO / DAPO loss straight from the spec with bool masks, torch.where and autograd."""
    valid = mask != 0
    dtype = torch.float64 if torch.float64 in (logp.dtype, old.dtype, adv.dtype) else torch.float32
    lp = logp.to(dtype)
    log_ratio = torch.where(valid, lp - old.to(dtype), 0.0).clamp(-20.0, 20.0)
    r = torch.exp(log_ratio)
    a = torch.where(valid, adv.to(dtype), 0.0)
    with torch.no_grad():
        rd = r.detach()
        if alpha is not None:
            hh = h.to(dtype)
            e_lo = torch.where(hh <= 0, eps_low * (1 - alpha * hh), torch.full_like(hh, eps_low))
            e_hi = torch.where(hh > 0, eps_high * (1 + alpha * hh), torch.full_like(hh, eps_high))
        else:
            e_lo = (
                torch.full_like(rd, eps_low) if not isinstance(eps_low, torch.Tensor) else eps_low.to(dtype)
            )
            e_hi = (
                torch.full_like(rd, eps_high)
                if not isinstance(eps_high, torch.Tensor)
                else eps_high.to(dtype)
            )
        lo, hi = 1 - e_lo, 1 + e_hi
        if beta is not None:
            hh = h.to(dtype)
            inside = (rd > 1 - e_lo / 2) & (rd < 1 + e_hi / 2)
            use = (hh > 0) ^ inside
            a = torch.where(use, a * (1 + beta * hh), a)
    l1 = -a * r
    l2 = -a * torch.minimum(torch.maximum(r, lo), hi)
    per = torch.maximum(l1, l2)
    if c is not None:
        per = torch.where(a < 0, torch.minimum(per, -a * c), per)
    per = torch.where(valid, per, 0.0)
    vf = valid.to(dtype)
    if agg == "token-mean":
        loss = per.sum() / vf.sum().clamp_min(1)
    elif agg == "seq-mean-token-sum-norm":
        loss = per.sum() / per.numel()
    else:
        cnt = vf.sum(-1)
        seq = per.sum(-1) / (cnt.clamp_min(1) if agg == "seq-mean-token-mean" else 1)
        loss = seq.sum() / (cnt > 0).sum().clamp_min(1)
    with torch.no_grad():
        n = vf.sum().clamp_min(1)
        left = valid & (a < 0) & (rd < lo)
        right = valid & (a > 0) & (rd > hi)
        dual = valid & (a < 0) & (rd > c) if c is not None else torch.zeros_like(valid)
        rv = rd[valid]
        metrics = {
            "clipfrac_left": left.sum() / n,
            "clipfrac_right": right.sum() / n,
            "clipfrac_dual": dual.sum() / n,
            "ratio_mean": rv.sum() / n if rv.numel() else torch.zeros((), dtype=dtype),
            "ratio_max": rv.max() if rv.numel() else torch.zeros((), dtype=dtype),
            "ratio_min": rv.min() if rv.numel() else torch.zeros((), dtype=dtype),
            "n_tokens": vf.sum(),
            "token_clipped_left": left,
            "token_clipped_right": right,
        }
    return loss, metrics


def _batch(gen, b=7, length=19, dtype=torch.float64, empty_row=True):
    old = -torch.rand(b, length, generator=gen, dtype=torch.float64) * 3
    logp = old + 0.5 * torch.randn(b, length, generator=gen, dtype=torch.float64)
    logp[0, :4] = old[0, :4] + torch.tensor([3.0, -3.0, 0.0, 2.5], dtype=torch.float64)  # dual / far clips
    adv = torch.randn(b, length, generator=gen, dtype=torch.float64) * 2
    adv[1, :3] = 0.0
    mask = torch.rand(b, length, generator=gen) < 0.75
    if empty_row:
        mask[2] = False
    h = ((torch.rand(b, length, generator=gen, dtype=torch.float64) * 2 - 1) * mask).to(dtype)
    junk = torch.randn(b, length, generator=gen, dtype=torch.float64) * 40
    logp = torch.where(mask, logp, junk)  # garbage at padding must not matter
    return logp.to(dtype), old.to(dtype), adv.to(dtype), mask, h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hapo_policy_loss_matches_textbook_reference(dtype):
    gen = torch.Generator().manual_seed(11)
    tol = F64 if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    for alpha, beta, c, agg in itertools.product(
        (1.0, 0.5, None), (1.0, 2.0, None), (3.0, None), LOSS_AGG_MODES
    ):
        logp, old, adv, mask, h = _batch(gen, dtype=dtype)
        x = logp.clone().requires_grad_(True)
        got, gm = hapo_policy_loss(x, old, adv, mask, h, 0.2, 0.28, alpha, beta, clip_ratio_c=c, agg=agg)
        (gg,) = torch.autograd.grad(got, x)
        y = logp.clone().requires_grad_(True)
        want, wm = _reference_loss(y, old, adv, mask, h, 0.2, 0.28, alpha, beta, c, agg)
        (wg,) = torch.autograd.grad(want, y)
        torch.testing.assert_close(got, want.to(got.dtype), **tol)
        torch.testing.assert_close(gg, wg, **tol)
        for k, v in wm.items():
            if v.dtype == torch.bool:
                assert torch.equal(gm[k], v), (k, alpha, beta, c, agg)
            else:
                torch.testing.assert_close(gm[k], v.to(gm[k].dtype), **tol, msg=lambda m, k=k: f"{k}: {m}")
        torch.testing.assert_close(gm["clipfrac"], gm["clipfrac_left"] + gm["clipfrac_right"], rtol=0, atol=0)
        assert gm["loss"].item() == got.item()


def test_policy_loss_dtypes_masks_and_tensor_bounds():
    gen = torch.Generator().manual_seed(12)
    logp, old, adv, mask, _ = _batch(gen)
    want, wm = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    for m in (mask.long(), mask.float(), mask.to(torch.uint8)):
        got, gm = policy_loss(logp, old, adv, m, 0.2, 0.28)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert torch.equal(gm["token_clipped_left"], wm["token_clipped_left"])
    b, length = logp.shape
    for lo, hi in (
        (torch.full((b, length), 0.2, dtype=torch.float64), 0.28),  # mixed tensor / float bounds
        (0.2, torch.full((b, 1), 0.28, dtype=torch.float64)),  # broadcast [B, 1]
        (torch.full((b, 1), 0.2, dtype=torch.float64), torch.full((b, length), 0.28, dtype=torch.float64)),
    ):
        x = logp.clone().requires_grad_(True)
        got, gm = policy_loss(x, old, adv, mask, lo, hi)
        (gg,) = torch.autograd.grad(got, x)
        y = logp.clone().requires_grad_(True)
        ref, rm = policy_loss(y, old, adv, mask, 0.2, 0.28)
        (rg,) = torch.autograd.grad(ref, y)
        torch.testing.assert_close(got, ref, **F64)
        torch.testing.assert_close(gg, rg, **F64)
        assert torch.equal(gm["token_clipped_right"], rm["token_clipped_right"])
    # bf16 log-probs: the maths runs in float32 and the gradient comes back in bf16
    x = logp.to(torch.bfloat16).requires_grad_(True)
    loss, _ = policy_loss(x, old.float(), adv.float(), mask, 0.2, 0.28)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.count_nonzero(x.grad[~mask]).item() == 0


def test_hapo_policy_loss_without_components_is_policy_loss_exactly():
    gen = torch.Generator().manual_seed(13)
    logp, old, adv, mask, h = _batch(gen, dtype=torch.float32)
    for agg in LOSS_AGG_MODES:
        x = logp.clone().requires_grad_(True)
        a, am = policy_loss(x, old, adv, mask, 0.2, 0.28, agg=agg)
        (ga,) = torch.autograd.grad(a, x)
        b, bm = hapo_policy_loss(x, old, adv, mask, h, 0.2, 0.28, alpha=None, beta=None, agg=agg)
        (gb,) = torch.autograd.grad(b, x)
        assert torch.equal(a, b) and torch.equal(ga, gb)
        assert all(torch.equal(am[k], bm[k]) for k in am)


def test_backward_twice_with_retain_graph_and_scaled_grad():
    gen = torch.Generator().manual_seed(14)
    logp, old, adv, mask, h = _batch(gen)
    x = logp.clone().requires_grad_(True)
    loss, _ = hapo_policy_loss(x, old, adv, mask, h, 0.2, 0.2)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3.0, x)  # the incoming gradient scales the result
    torch.testing.assert_close(g2, 3.0 * g1, **F64)
    assert torch.count_nonzero(g1[~mask]).item() == 0


def test_public_functions_do_not_modify_their_inputs():
    gen = torch.Generator().manual_seed(15)
    for dtype in (torch.float32, torch.float64):
        logp, old, adv, mask, h = _batch(gen, dtype=dtype)
        ent = (torch.rand(logp.shape, generator=gen, dtype=torch.float64) ** 2 * 3).to(dtype)
        rewards = torch.randn(logp.shape[0], generator=gen, dtype=dtype)
        gids = torch.arange(logp.shape[0]) // 2
        ratio = torch.exp(logp - old)
        inputs = (logp, old, adv, mask, h, ent, rewards, gids, ratio)
        before = [t.clone() for t in inputs]
        stats = entropy_stats(ent, mask)
        normalize_entropy(ent, stats, mask)
        normalize_entropy(ent, stats)
        normalize_batch_entropy(ent, mask)
        grpo_advantages(rewards, gids, mask)
        tlga_advantages(rewards, gids, mask)
        eps_l, eps_h = adaptive_clip_bounds(h, 0.2, 0.28)
        redistribute_advantages(adv, h, ratio, eps_l, eps_h)
        redistribute_advantages(adv, h, ratio, 0.2, 0.28)
        policy_loss(logp, old, adv, mask, eps_l, eps_h)
        hapo_policy_loss(logp, old, adv, mask, h, 0.2, 0.28)
        for a, b in zip(inputs, before):
            assert torch.equal(a, b)


def test_pivot_equals_torch_quantile_on_large_batches():
    # Large enough that both 16-bit radix digits matter, with heavy ties; float32 and float64.
    gen = torch.Generator().manual_seed(16)
    for dtype, pivot in (
        (torch.float32, 0.8),
        (torch.float64, 0.8),
        (torch.float32, 0.37),
        (torch.float64, 0.999),
    ):
        ent = (torch.rand(64, 1100, generator=gen, dtype=torch.float64) ** 3 * 3).to(dtype)  # N > 2^16
        ent[:, ::7] = torch.round(ent[:, ::7] * 8) / 8  # ties (and exact zeros, floored at 1e-8)
        mask = torch.rand(64, 1100, generator=gen) < 0.6
        x = torch.log(ent.clamp_min(1e-8))[mask]
        want = torch.quantile(x, pivot, interpolation="nearest")
        assert entropy_stats(ent, mask, pivot=pivot).q.item() == want.item()


def test_entropy_statistics_match_float64_reference_and_any_layout():
    gen = torch.Generator().manual_seed(17)
    ent = torch.rand(40, 30, generator=gen) ** 3 * 3
    mask = torch.rand(40, 30, generator=gen) < 0.7
    x = torch.log(ent.double().clamp_min(1e-8))
    xv = x[mask]
    q = torch.quantile(xv, 0.8, interpolation="nearest")
    s = torch.sqrt(((xv - q) ** 2).mean())
    z = (x - q) / s
    zmax, zmin = z[mask].max(), z[mask].min()
    want = torch.where(z > 0, z / zmax, z / zmin.abs()) * mask
    h, st = normalize_batch_entropy(ent, mask)
    torch.testing.assert_close(h.double(), want, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(st.s.double(), s, rtol=1e-6, atol=0)
    # a transposed (non-contiguous) batch gives the transposed result
    ht, stt = normalize_batch_entropy(ent.t(), mask.t())
    torch.testing.assert_close(ht, h.t(), rtol=0, atol=0)
    assert all(a.item() == b.item() for a, b in zip(stt, st))
    # normalize_entropy on the stats' own batch is h too (also without a mask: then invalid tokens count)
    torch.testing.assert_close(normalize_entropy(ent, st, mask), h, rtol=0, atol=0)
    assert normalize_entropy(ent, st).abs().max().item() <= 1.0
