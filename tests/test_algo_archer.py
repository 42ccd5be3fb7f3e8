"""hapo_cli.algo.archer: Archer's per-response entropy split, per-class clip and per-class KL (baselines-spec 2, A1-A3)."""

from __future__ import annotations

import math

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, loop_ppo, rand_batch

from hapo_cli.algo import archer_high_entropy, archer_kl_loss, archer_loss, archer_quantiles

NAN = float("nan")


def _a1():
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4, 2.0], [1.0, 1.0, 5.0, NAN, NAN]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    adv = torch.tensor([[1.0] * 5, [-1.0] * 3 + [0.0, 0.0]], dtype=D)
    r = torch.tensor([[1.0, 1.3, 1.0, 1.0, 1.4], [0.6, 1.0, 0.45, 1.0, 1.0]], dtype=D)
    logp_kl = torch.tensor([[-0.5, -1.0, -0.2, -0.3, -2.0], [-0.7, -0.9, -3.0, 0.0, 0.0]], dtype=D)
    ref = torch.tensor([[-0.6, -1.0, -0.1, -0.3, -1.0], [-0.7, -1.2, -2.0, 0.0, 0.0]], dtype=D)
    logp = logp_kl.clone().requires_grad_(True)
    old = logp_kl - r.log()  # r = exp(logp - old)
    return h, mask, adv, logp, old, ref


def test_a1_quantiles_and_split():
    h, mask, *_ = _a1()
    q, n = archer_quantiles(h, mask)
    torch.testing.assert_close(q, torch.tensor([0.72, 3.4], dtype=D), **F64)
    assert n.tolist() == [5, 3]
    high = archer_high_entropy(h, mask)
    assert high.dtype == torch.bool
    assert high.long().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    low = mask.bool() & ~high
    assert low.long().tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]


def test_a1_policy_loss_per_class_bounds():
    h, mask, adv, logp, old, _ = _a1()
    loss, m = archer_loss(logp, old, adv, mask, h, 0.8, (0.2, 0.2), (0.5, 0.5), 10.0)
    # per token [[-1, -1.2, -1, -1, -1.4], [0.8, 1.0, 0.5]]: token-mean over 8 tokens
    torch.testing.assert_close(loss, torch.tensor(-3.3 / 8, dtype=D), **F64)
    assert loss.item() == pytest.approx(-0.4125, abs=1e-12)
    (g,) = torch.autograd.grad(loss, logp)
    # dl/dlogp = -A r where unclipped: (0,1) r=1.3 > 1.2 (low class) clipped; (0,4) 1.4 < 1.5 free; (1,0) 0.6 < 0.8 clipped
    expect = torch.tensor([[-1.0, 0.0, -1.0, -1.0, -1.4], [0.0, 1.0, 0.0, 0.0, 0.0]], dtype=D) / 8
    torch.testing.assert_close(g, expect, **F64)
    assert m["token_clipped_right"].long().tolist() == [[0, 1, 0, 0, 0], [0] * 5]
    assert m["token_clipped_left"].long().tolist() == [[0] * 5, [1, 0, 1, 0, 0]]
    assert m["clipfrac_right_low"].item() == pytest.approx(1 / 6) and m["clipfrac_left_high"].item() == 0.5
    assert m["q_mean"].item() == pytest.approx((0.72 + 3.4) / 2) and m["high_frac"].item() == 0.25
    uniform, _ = archer_loss(logp, old, adv, mask, h, 0.8, (0.2, 0.2), (0.2, 0.2), 10.0)
    assert uniform.item() == pytest.approx(-0.35, abs=1e-12)


def test_a1_kl_per_class_and_total():
    h, mask, adv, logp, old, ref = _a1()
    kl, m = archer_kl_loss(logp, ref, mask, h, 0.8, 1e-3, 0.0)
    k3 = [[0.0048374, 0, 0.0051709, 0, 0.7182818], [0, 0.0408182, 0.7182818]]
    d = [[-0.1, 0.0, 0.1, 0.0, 1.0], [0.0, -0.3, 1.0]]
    for i, row in enumerate(d):
        for t, x in enumerate(row):
            assert math.exp(x) - x - 1 == pytest.approx(k3[i][t], abs=1e-7)
    assert m["kl_low"].item() == pytest.approx(0.00847109, abs=1e-8)
    assert m["kl_high"].item() == pytest.approx(0.7182818, abs=1e-7)
    assert kl.item() == pytest.approx(8.4711e-6, abs=1e-10)
    assert (m["n_low"].item(), m["n_high"].item()) == (6, 2)
    pg, _ = archer_loss(logp, old, adv, mask, h)
    assert (pg + kl).item() == pytest.approx(-0.41249153, abs=1e-8)
    (g,) = torch.autograd.grad(kl, logp)  # d k3 / d logp = 1 - exp(d), low tokens only, / 6
    d_t = (ref - logp.detach()) * mask
    low = (mask.bool() & ~archer_high_entropy(h, mask)).to(D)
    torch.testing.assert_close(g, 1e-3 * (1 - d_t.exp()) * low / 6, **F64)


def test_a2_reference_microbatch_aggregation():
    h, mask, adv, logp, old, ref = _a1()
    pg = kl = 0.0
    for i in range(2):  # one response per micro-batch, loss / grad_accum
        sl = slice(i, i + 1)
        p, _ = archer_loss(logp[sl], old[sl], adv[sl], mask[sl], h[sl])
        k, _ = archer_kl_loss(logp[sl], ref[sl], mask[sl], h[sl])
        pg, kl = pg + p / 2, kl + k / 2
    assert pg.item() == pytest.approx(-0.1766667, abs=1e-7)
    assert pg.item() == pytest.approx((-5.6 / 5 + 2.3 / 3) / 2, abs=1e-12)
    assert (pg + kl).item() == pytest.approx(-0.17665521, abs=1e-8)
    # equals seq-mean-token-mean over the whole batch
    full, _ = archer_loss(logp, old, adv, mask, h, agg="seq-mean-token-mean")
    torch.testing.assert_close(pg, full, **F64)


def test_a3_edge_cases():
    h = torch.tensor([[0.7, 9.0, 9.0], [1.0, 2.0, 3.0]], dtype=D)
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    q, n = archer_quantiles(h, mask)
    assert q[0].item() == pytest.approx(0.7) and n.tolist() == [1, 0]
    assert not archer_high_entropy(h, mask).any()  # the single token is low; the empty row has none
    logp = torch.zeros(2, 3, dtype=D, requires_grad=True)
    adv = torch.ones(2, 3, dtype=D)
    for agg in AGGS:
        loss, m = archer_loss(logp, torch.zeros(2, 3, dtype=D), adv, mask, h, agg=agg)
        kl, km = archer_kl_loss(logp, torch.zeros(2, 3, dtype=D), mask, h, agg=agg)
        assert torch.isfinite(loss) and torch.isfinite(kl) and km["kl_high"].item() == 0.0
    empty, _ = archer_loss(logp, logp.detach(), adv, torch.zeros(2, 3), h)
    assert empty.item() == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_split_matches_loop_reference_and_ignores_masked_values(seed):
    logp, old, adv, mask, ent = rand_batch(seed, b=5, length=9, all_rows_valid=False)
    ent = ent.round(decimals=1)  # ties
    for q in (0.8, 0.5, 0.0, 1.0):
        high = archer_high_entropy(ent, mask, q).tolist()
        for i in range(5):
            vals = [ent[i, t].item() for t in range(9) if mask[i, t]]
            qi = torch.quantile(torch.tensor(vals, dtype=D), q).item() if vals else None
            assert high[i] == [bool(mask[i, t]) and ent[i, t].item() > qi for t in range(9)], (i, q)
        garbage = torch.where(mask.bool(), ent, torch.full_like(ent, NAN))
        assert archer_high_entropy(garbage, mask, q).tolist() == high


@pytest.mark.parametrize("agg", AGGS)
def test_archer_loss_matches_loop_reference(agg):
    logp, old, adv, mask, ent = rand_batch(7, b=6, length=8, spread=0.6)
    loss, _ = archer_loss(logp, old, adv, mask, ent, 0.8, (0.2, 0.25), (0.5, 0.4), 3.0, agg=agg)
    high = archer_high_entropy(ent, mask).tolist()
    r, a, mk = (logp - old).exp().tolist(), adv.tolist(), mask.tolist()
    pt = [
        [
            loop_ppo(a[i][t], r[i][t], 0.5 if high[i][t] else 0.8, 1.4 if high[i][t] else 1.25, 3.0)
            for t in range(8)
        ]
        for i in range(6)
    ]
    assert loss.item() == pytest.approx(loop_aggregate(pt, mk, mk, agg), rel=1e-12, abs=1e-12)
    kl, _ = archer_kl_loss(logp, old, mask, ent, 0.8, 0.3, 0.7, agg=agg)  # old_logp as a stand-in reference
    lp, rf = logp.tolist(), old.tolist()

    def k3(i, t):
        d = min(max(rf[i][t] - lp[i][t], -20), 20)
        return min(max(math.exp(d) - d - 1, -10), 10)

    kk = [[k3(i, t) for t in range(8)] for i in range(6)]
    lo_m = [[mk[i][t] and not high[i][t] for t in range(8)] for i in range(6)]
    hi_m = [[bool(high[i][t]) for t in range(8)] for i in range(6)]
    ref = 0.3 * loop_aggregate(kk, lo_m, lo_m, agg) + 0.7 * loop_aggregate(kk, hi_m, hi_m, agg)
    assert kl.item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_archer_masked_positions_do_not_matter():
    logp, old, adv, mask, ent = rand_batch(8)
    pad = ~mask.bool()
    logp2 = torch.where(pad, float("-inf"), logp.detach()).requires_grad_(True)
    old2, adv2, ent2 = torch.where(pad, 3.0, old), torch.where(pad, -1e5, adv), torch.where(pad, NAN, ent)
    ref, ref2 = old - 0.1, torch.where(pad, 99.0, old - 0.1)
    a, _ = archer_loss(logp, old, adv, mask, ent)
    b, _ = archer_loss(logp2, old2, adv2, mask, ent2)
    ka, _ = archer_kl_loss(logp, ref, mask, ent, low_kl_coef=0.5, high_kl_coef=0.2)
    kb, _ = archer_kl_loss(logp2, ref2, mask, ent2, low_kl_coef=0.5, high_kl_coef=0.2)
    torch.testing.assert_close(a + ka, b + kb, **F64)
    torch.testing.assert_close(
        torch.autograd.grad(a + ka, logp)[0], torch.autograd.grad(b + kb, logp2)[0], **F64
    )


@pytest.mark.parametrize("agg", AGGS)
def test_archer_loss_composes_over_micro_batches(agg):
    logp, old, adv, mask, ent = rand_batch(9, b=6, length=8, spread=0.6)
    check_microbatch_composition(
        archer_loss, logp, dict(old_logp=old, adv=adv, mask=mask, entropy=ent), {}, agg
    )


def test_archer_kl_global_token_mean_composes_with_denominators():
    logp, old, adv, mask, ent = rand_batch(10, b=6, length=8, spread=0.6)
    ref = old
    full, m = archer_kl_loss(logp, ref, mask, ent, 0.8, 0.3, 0.7)
    (g_full,) = torch.autograd.grad(full, logp)
    dens = (m["n_low"], m["n_high"])
    parts = [archer_kl_loss(logp[s], ref[s], mask[s], ent[s], 0.8, 0.3, 0.7, denominators=dens)[0]
             for s in (slice(0, 2), slice(2, 5), slice(5, 6))]  # fmt: skip
    torch.testing.assert_close(sum(parts), full, **F64)
    torch.testing.assert_close(torch.autograd.grad(sum(parts), logp)[0], g_full, **F64)


def test_archer_validation():
    h, mask, adv, logp, old, ref = _a1()
    with pytest.raises(ValueError, match="low_clip"):
        archer_loss(logp, old, adv, mask, h, low_clip=(0.2,))
    with pytest.raises(ValueError, match="quantile"):
        archer_high_entropy(h, mask, 1.5)
    with pytest.raises(ValueError, match="denominators"):
        archer_kl_loss(logp, ref, mask, h, agg="seq-mean-token-mean", denominators=(1, 1))
