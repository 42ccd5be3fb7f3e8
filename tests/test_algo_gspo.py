"""hapo_cli.algo.gspo: GSPO and GSPO-token (baselines-spec 4, G1-G2)."""

from __future__ import annotations

import math

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, rand_batch

from hapo_cli.algo import gspo_loss


def _g1(adv_rows, log_ratios=((0.1, -0.05, 0.0), (0.3, 0.3))):
    logr = torch.zeros(2, 3, dtype=D)
    mask = torch.zeros(2, 3, dtype=torch.long)
    for i, row in enumerate(log_ratios):
        logr[i, : len(row)] = torch.tensor(row, dtype=D)
        mask[i, : len(row)] = 1
    old = -torch.rand(2, 3, generator=torch.Generator().manual_seed(0), dtype=D)
    logp = (old + logr).requires_grad_(True)
    adv = torch.tensor(adv_rows, dtype=D).unsqueeze(-1).expand(2, 3) * mask
    return logp, old, adv, mask


S = [math.exp(0.05 / 3), math.exp(0.3)]


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_g1_both_clipped_right(variant):
    logp, old, adv, mask = _g1([1.0, 1.0])
    loss, m = gspo_loss(logp, old, adv, mask, 3e-4, 4e-4, variant=variant)
    assert (S[0], S[1]) == pytest.approx((1.0168063, 1.3498588), abs=1e-7)
    torch.testing.assert_close(m["seq_ratio_mean"], torch.tensor(sum(S) / 2, dtype=D), **F64)
    assert loss.item() == pytest.approx(-1.0004, abs=1e-12)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.count_nonzero(g).item() == 0
    assert m["seq_clipfrac_right"].item() == 1.0 and m["token_clipped_right"].sum().item() == 5


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_g1_mixed_signs_values_and_gradients(variant):
    logp, old, adv, mask = _g1([1.0, -1.0])
    loss, m = gspo_loss(logp, old, adv, mask, 3e-4, 4e-4, variant=variant)
    assert loss.item() == pytest.approx(0.1747294, abs=1e-7)
    torch.testing.assert_close(loss, torch.tensor((-1.0004 + S[1]) / 2, dtype=D), **F64)
    (g,) = torch.autograd.grad(loss, logp)
    expect = torch.tensor([[0.0, 0.0, 0.0], [S[1] / 4, S[1] / 4, 0.0]], dtype=D)  # 0.5 * s_2 / 2
    assert expect[1, 0].item() == pytest.approx(0.3374647, abs=1e-7)
    torch.testing.assert_close(g, expect, **F64)
    dapo, _ = gspo_loss(logp, old, adv, mask, 3e-4, 4e-4, variant=variant, agg="token-mean")  # TRL "dapo"
    assert dapo.item() == pytest.approx(-0.0602965, abs=1e-7)
    torch.testing.assert_close(dapo, torch.tensor((3 * -1.0004 + 2 * S[1]) / 5, dtype=D), **F64)


def test_g2_inside_the_zone_is_unclipped_and_token_variant_matches():
    logp, old, adv, mask = _g1([1.0, -1.0], log_ratios=((0.0002, 0.0004), (0.0002, 0.0004)))
    s = math.exp(0.0003)
    assert (
        s == pytest.approx(1.00030005, abs=1e-8) and s < 1.0004
    )  # spec prints 1.00030005 (exact 1.000300045)
    out = {}
    for variant in ("sequence", "token"):
        loss, m = gspo_loss(logp, old, adv, mask, 3e-4, 4e-4, variant=variant)
        out[variant] = (loss, torch.autograd.grad(loss, logp)[0])
        assert m["clipfrac"].item() == 0.0
    torch.testing.assert_close(out["sequence"][0], torch.tensor(0.0, dtype=D), **F64)  # (-s + s) / 2
    torch.testing.assert_close(
        out["sequence"][1], torch.tensor([[-s / 4, -s / 4, 0], [s / 4, s / 4, 0]], dtype=D), **F64
    )
    torch.testing.assert_close(out["token"][0], out["sequence"][0], **F64)
    torch.testing.assert_close(out["token"][1], out["sequence"][1], **F64)


def _loop_gspo(logp, old, adv, mask, lo, hi, variant, agg):
    lp, od, a, mk = logp.tolist(), old.tolist(), adv.tolist(), mask.tolist()
    b, length = len(mk), len(mk[0])
    pt = [[0.0] * length for _ in range(b)]
    for i in range(b):
        n = sum(mk[i])
        if n == 0:
            continue
        s = math.exp(min(sum(lp[i][t] - od[i][t] for t in range(length) if mk[i][t]) / n, 10.0))
        a_i = sum(a[i][t] for t in range(length) if mk[i][t]) / n
        for t in range(length):
            if mk[i][t]:
                at = a_i if variant == "sequence" else a[i][t]
                pt[i][t] = max(-at * s, -at * min(max(s, lo), hi))
    return loop_aggregate(pt, mk, mk, agg)


@pytest.mark.parametrize("variant", ["sequence", "token"])
@pytest.mark.parametrize("agg", AGGS)
def test_gspo_matches_loop_reference_and_composes(variant, agg):
    logp, old, adv, mask, _ = rand_batch(11, b=6, length=8, spread=0.05)
    loss, _ = gspo_loss(logp, old, adv, mask, 0.01, 0.015, variant=variant, agg=agg)
    ref = _loop_gspo(logp, old, adv, mask, 0.99, 1.015, variant, agg)
    assert loss.item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    check_microbatch_composition(
        gspo_loss,
        logp,
        dict(old_logp=old, adv=adv, mask=mask),
        dict(eps_low=0.01, eps_high=0.015, variant=variant),
        agg,
    )


def test_token_variant_equals_sequence_with_constant_advantages_on_random_data():
    logp, old, _, mask, _ = rand_batch(12, b=6, length=8, spread=0.05)
    adv = torch.randn(6, 1, dtype=D).expand(6, 8) * mask
    a, _ = gspo_loss(logp, old, adv, mask, 0.01, 0.015, variant="sequence")
    b, _ = gspo_loss(logp, old, adv, mask, 0.01, 0.015, variant="token")
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp)[0], **F64)


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_gspo_masked_positions_do_not_matter(variant):
    logp, old, adv, mask, _ = rand_batch(13, spread=0.05)
    pad = ~mask.bool()
    logp2 = torch.where(pad, float("-inf"), logp.detach()).requires_grad_(True)
    old2, adv2 = torch.where(pad, 5.0, old), torch.where(pad, 1e4, adv)
    w = torch.rand(logp.shape, dtype=D) + 0.5
    a, _ = gspo_loss(logp, old, adv, mask, 0.01, 0.015, variant=variant, is_weights=w)
    b, _ = gspo_loss(
        logp2, old2, adv2, mask, 0.01, 0.015, variant=variant, is_weights=torch.where(pad, 3.0, w)
    )
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp2)[0], **F64)


def test_log_ratio_clamp_and_validation():
    logp, old, adv, mask = _g1([1.0, -1.0], log_ratios=((12.0, 12.0, 12.0), (0.0, 0.0)))
    _, m = gspo_loss(logp, old, adv, mask, variant="sequence")
    assert m["seq_ratio_max"].item() == pytest.approx(math.exp(10.0))
    with pytest.raises(ValueError, match="variant"):
        gspo_loss(logp, old, adv, mask, variant="x")
    with pytest.raises(ValueError, match="eps_low"):
        gspo_loss(logp, old, adv, mask, eps_low=-1.0)
