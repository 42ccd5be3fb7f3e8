"""hapo_cli.algo.cispo: CISPO's capped stop-gradient IS weight (baselines-spec 5, C1-C3)."""

from __future__ import annotations

import math

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, rand_batch

from hapo_cli.algo import cispo_loss, policy_loss


def _c(adv):
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.5, 1.0, 1.5]], dtype=D).log()  # r = [0.5, 1, 1.5]
    return logp, old, torch.tensor([adv], dtype=D), torch.ones(1, 3)


def test_c1_values_gradients_and_ppo_contrast():
    logp, old, adv, mask = _c([1.0, 1.0, 1.0])
    loss, m = cispo_loss(logp, old, adv, mask, None, 0.2)  # ratio_max 1.2, no lower bound
    assert loss.item() == pytest.approx((0.5 + 2.0 + 0.6) / 3, abs=1e-12)
    assert loss.item() == pytest.approx(1.0333333, abs=1e-7)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, torch.tensor([[-0.5, -1.0, -1.2]], dtype=D) / 3, **F64)
    assert g[0, 0].item() == pytest.approx(-0.1666667, abs=1e-7) and g[0, 2].item() == pytest.approx(-0.4)
    assert m["weight_mean"].item() == pytest.approx(2.7 / 3) and m["surrogate"].item() == pytest.approx(-0.9)
    assert m["token_clipped_right"].tolist() == [[False, False, True]] and m[
        "capfrac_pos"
    ].item() == pytest.approx(1 / 3)
    ppo, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    (gp,) = torch.autograd.grad(ppo, logp)
    torch.testing.assert_close(gp, torch.tensor([[-0.5, -1.0, 0.0]], dtype=D) / 3, **F64)


def test_c2_negative_advantage_is_capped_too():
    logp, old, adv, mask = _c([1.0, 1.0, -1.0])
    loss, m = cispo_loss(logp, old, adv, mask, None, 0.2)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, torch.tensor([[-0.5, -1.0, 1.2]], dtype=D) / 3, **F64)
    assert g[0, 2].item() == pytest.approx(0.4) and m["capfrac_neg"].item() == pytest.approx(1 / 3)
    ppo, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    (gp,) = torch.autograd.grad(ppo, logp)
    assert gp[0, 2].item() == pytest.approx(0.5)


def test_c3_trl_absolute_cap_is_eps_high_plus_one():
    logp, old, adv, mask = _c([1.0, 1.0, 1.0])
    loss, _ = cispo_loss(logp, old, adv, mask, None, 4.0)  # TRL/ScaleRL epsilon_high = 5.0 (absolute)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(-3 * g, torch.tensor([[0.5, 1.0, 1.5]], dtype=D), **F64)  # w = r, uncapped
    loss, _ = cispo_loss(logp, old, adv, mask, 0.1, 0.2)  # a two-sided verl clamp [0.9, 1.2]
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(-3 * g, torch.tensor([[0.9, 1.0, 1.2]], dtype=D), **F64)
    with pytest.raises(ValueError, match="eps_high"):
        cispo_loss(
            logp, old, adv, mask, None, -0.8
        )  # ratio_max 0.2 < 1 (TRL's unset-epsilon_high trap) is refused


@pytest.mark.parametrize("agg", AGGS)
def test_cispo_matches_loop_reference_and_composes(agg):
    logp, old, adv, mask, _ = rand_batch(21, b=6, length=8, spread=0.6)
    loss, _ = cispo_loss(logp, old, adv, mask, 0.3, 0.2, agg=agg)
    lp, od, a, mk = logp.tolist(), old.tolist(), adv.tolist(), mask.tolist()
    pt = [
        [-min(max(math.exp(lp[i][t] - od[i][t]), 0.7), 1.2) * a[i][t] * lp[i][t] for t in range(8)]
        for i in range(6)
    ]
    assert loss.item() == pytest.approx(loop_aggregate(pt, mk, mk, agg), rel=1e-12, abs=1e-12)
    check_microbatch_composition(
        cispo_loss, logp, dict(old_logp=old, adv=adv, mask=mask), dict(eps_low=0.3, eps_high=0.2), agg
    )


def test_cispo_masked_positions_do_not_matter_and_is_weights_multiply():
    logp, old, adv, mask, _ = rand_batch(22, spread=0.6)
    pad = ~mask.bool()
    logp2 = torch.where(pad, float("-inf"), logp.detach()).requires_grad_(True)
    old2, adv2 = torch.where(pad, 5.0, old), torch.where(pad, 1e4, adv)
    a, _ = cispo_loss(logp, old, adv, mask, None, 0.2)
    b, _ = cispo_loss(logp2, old2, adv2, mask, None, 0.2)
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp2)[0], **F64)
    half, _ = cispo_loss(logp, old, adv, mask, None, 0.2, is_weights=torch.full_like(old, 0.5))
    torch.testing.assert_close(half, a / 2, **F64)
