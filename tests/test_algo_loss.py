"""hapo_cli.algo.loss: the clipped objective, dual clip, aggregation modes, metrics, the HAPO loss (AAC + DAR)."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from hapo_cli.algo import (
    LOSS_AGG_MODES,
    adaptive_clip_bounds,
    aggregate_loss,
    hapo_policy_loss,
    policy_loss,
    redistribute_advantages,
)

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)
D = torch.float64


def _hand_batch(dtype=D):
    """Two responses, L = 4; row 1 has two padded tokens full of garbage. old_logp = 0, so r = exp(logp)."""
    ratio = torch.tensor([[1.1, 1.5, 0.5, 1.5], [20.0, 0.5, 3.0, 0.01]], dtype=D)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, 2.0, -5.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, -3.0]], dtype=D)
    logp = (ratio.log() + old).to(dtype).requires_grad_(True)
    return logp, old.to(dtype), adv.to(dtype), mask


# Per token with eps 0.2 / 0.28, c = 10 (l = max(-A r, -A clip(r, 0.8, 1.28)), dual min(l, -A c) for A < 0):
#   (A= 1, r=1.1 ) -> max(-1.1, -1.1)      = -1.1   unclipped   dl/dlogp = -A r = -1.1
#   (A= 1, r=1.5 ) -> max(-1.5, -1.28)     = -1.28  right clip  0
#   (A=-1, r=0.5 ) -> max( 0.5,  0.8)      =  0.8   left clip   0
#   (A=-1, r=1.5 ) -> max( 1.5,  1.28)     =  1.5   unclipped   1.5
#   (A=-1, r=20  ) -> min(max(20, 1.28), 10) = 10   dual clip   0
#   (A= 2, r=0.5 ) -> max(-1.0, -1.6)      = -1.0   unclipped (A > 0 is not clipped below)  -1.0
PER_TOKEN = [[-1.1, -1.28, 0.8, 1.5], [10.0, -1.0, 0.0, 0.0]]
COEF = [[-1.1, 0.0, 0.0, 1.5], [0.0, -1.0, 0.0, 0.0]]


def test_policy_loss_hand_values_gradients_and_metrics():
    logp, old, adv, mask = _hand_batch()
    loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.28, clip_ratio_c=10.0)
    # token-mean: (-1.1 - 1.28 + 0.8 + 1.5 + 10 - 1) / 6 = 8.92 / 6 = 1.4866667
    torch.testing.assert_close(loss, torch.tensor(8.92 / 6, dtype=D), **F64)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor(COEF, dtype=D) / 6, **F64)
    assert m["clipfrac_left"].item() == pytest.approx(1 / 6) and m["clipfrac_right"].item() == pytest.approx(
        1 / 6
    )
    assert m["clipfrac_dual"].item() == pytest.approx(1 / 6) and m["clipfrac"].item() == pytest.approx(2 / 6)
    # ratios over valid tokens: (1.1 + 1.5 + 0.5 + 1.5 + 20 + 0.5) / 6 = 25.1 / 6; max 20, min 0.5
    assert m["ratio_mean"].item() == pytest.approx(25.1 / 6, rel=1e-12)
    assert m["ratio_max"].item() == pytest.approx(20.0, rel=1e-12) and m["ratio_min"].item() == pytest.approx(
        0.5
    )
    assert m["n_tokens"].item() == 6.0 and m["loss"].item() == pytest.approx(8.92 / 6)
    assert m["token_clipped_left"].tolist() == [[False, False, True, False], [False, False, False, False]]
    assert m["token_clipped_right"].tolist() == [[False, True, False, False], [False, False, False, False]]
    assert all(not v.requires_grad for v in m.values())


def test_policy_loss_hand_values_every_aggregation_mode():
    # row sums: -1.1 - 1.28 + 0.8 + 1.5 = -0.08 (4 tokens), 10 - 1 = 9 (2 tokens); B = 2, L = 4
    expected = {
        "token-mean": (8.92 / 6, [1 / 6, 1 / 6]),
        "seq-mean-token-mean": ((-0.08 / 4 + 9 / 2) / 2, [1 / 8, 1 / 4]),  # (-0.02 + 4.5) / 2 = 2.24
        "seq-mean-token-sum": ((-0.08 + 9) / 2, [1 / 2, 1 / 2]),  # 4.46
        "seq-mean-token-sum-norm": (8.92 / 8, [1 / 8, 1 / 8]),  # / (B * L) = 1.115
    }
    assert set(expected) == set(LOSS_AGG_MODES)
    for agg, (value, row_scale) in expected.items():
        logp, old, adv, mask = _hand_batch()
        loss, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28, agg=agg)
        torch.testing.assert_close(loss, torch.tensor(value, dtype=D), **F64)
        (grad,) = torch.autograd.grad(loss, logp)
        want = torch.tensor(COEF, dtype=D) * torch.tensor(row_scale, dtype=D)[:, None]
        torch.testing.assert_close(grad, want, **F64)
        torch.testing.assert_close(
            aggregate_loss(torch.tensor(PER_TOKEN, dtype=D), mask, agg), loss.detach(), **F64
        )


def test_policy_loss_float32_hand_values():
    logp, old, adv, mask = _hand_batch(torch.float32)
    loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(8.92 / 6), **F32)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor(COEF) / 6, **F32)


def test_zero_advantage_gives_zero_loss_and_gradient():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 5, generator=gen).requires_grad_(True)
    old = torch.randn(3, 5, generator=gen)
    mask = torch.rand(3, 5, generator=gen) < 0.7
    for agg in LOSS_AGG_MODES:
        loss, m = policy_loss(logp, old, torch.zeros(3, 5), mask, 0.2, 0.28, agg=agg)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.count_nonzero(grad).item() == 0
        assert m["clipfrac"].item() == 0.0 and m["clipfrac_dual"].item() == 0.0


def test_unit_ratios_give_minus_the_aggregated_advantage():
    # A = [[1, -2, 3, pad], [0.5, pad, pad, pad]] (pads hold garbage), logp = old_logp -> r = 1 (nothing clips)
    #   token-mean:              -(1 - 2 + 3 + 0.5) / 4             = -0.625
    #   seq-mean-token-mean:     -((2 / 3) + 0.5) / 2               = -0.5833333
    #   seq-mean-token-sum:      -(2 + 0.5) / 2                     = -1.25
    #   seq-mean-token-sum-norm: -(2.5) / (2 * 4)                   = -0.3125
    adv = torch.tensor([[1.0, -2.0, 3.0, 40.0], [0.5, -9.0, 8.0, 7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    old = torch.tensor([[-0.5, -1.0, -2.0, 5.0], [-0.1, 3.0, 2.0, 1.0]], dtype=D)
    expected = {
        "token-mean": -0.625,
        "seq-mean-token-mean": -(2 / 3 + 0.5) / 2,
        "seq-mean-token-sum": -1.25,
        "seq-mean-token-sum-norm": -0.3125,
    }
    for agg, value in expected.items():
        logp = old.clone().requires_grad_(True)
        loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.28, agg=agg)
        torch.testing.assert_close(loss, torch.tensor(value, dtype=D), **F64)
        assert m["ratio_mean"].item() == 1.0 and m["ratio_min"].item() == 1.0 and m["ratio_max"].item() == 1.0


def test_dual_clip_value():
    # A = -0.5, r = 12: -A r = 6, -A clip(r, 0.8, 1.28) = 0.64 -> max 6; dual clip c = 3: min(6, -A c = 1.5) = 1.5
    logp = torch.tensor([[math.log(12.0)]], dtype=D, requires_grad=True)
    old = torch.zeros(1, 1, dtype=D)
    adv = torch.tensor([[-0.5]], dtype=D)
    mask = torch.ones(1, 1)
    loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.28, clip_ratio_c=3.0)
    torch.testing.assert_close(loss, torch.tensor(1.5, dtype=D), **F64)
    assert m["clipfrac_dual"].item() == 1.0 and m["clipfrac_left"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == 0.0
    # c = 13 > r: the dual clip does not bind: l = 6, dl/dlogp = -A r = 6; None disables it
    for c in (13.0, None):
        loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.28, clip_ratio_c=c)
        torch.testing.assert_close(loss, torch.tensor(6.0, dtype=D), **F64)
        assert m["clipfrac_dual"].item() == 0.0
        (grad,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(grad, torch.tensor([[6.0]], dtype=D), **F64)
    # the dual clip never touches positive advantages: A = 0.5, r = 12 -> -0.5 * 1.28 = -0.64
    loss, _ = policy_loss(logp, old, -adv, mask, 0.2, 0.28, clip_ratio_c=3.0)
    torch.testing.assert_close(loss, torch.tensor(-0.64, dtype=D), **F64)


def _loop_reference(logp, old, adv, mask, eps_l, eps_h, c, agg):
    """Per-token Python loop: (loss, d loss / d logp) straight from the spec."""
    b, length = logp.shape
    per = [[0.0] * length for _ in range(b)]
    coef = [[0.0] * length for _ in range(b)]
    for i in range(b):
        for t in range(length):
            if not mask[i][t]:
                continue
            a, r = float(adv[i, t]), math.exp(float(logp[i, t]) - float(old[i, t]))
            lo, hi = 1 - float(eps_l[i, t]), 1 + float(eps_h[i, t])
            l1, l2 = -a * r, -a * min(max(r, lo), hi)
            val, grad = (l1, -a * r) if l1 >= l2 else (l2, 0.0)
            if a < 0 and c is not None and -a * c < val:
                val, grad = -a * c, 0.0
            per[i][t], coef[i][t] = val, grad
    counts = [sum(1 for t in range(length) if mask[i][t]) for i in range(b)]
    if agg == "token-mean":
        n = sum(counts)
        scale = [[1 / n] * length for _ in range(b)]
    elif agg == "seq-mean-token-sum-norm":
        scale = [[1 / (b * length)] * length for _ in range(b)]
    else:
        rows = sum(1 for k in counts if k > 0)
        per_row = [
            1 / rows / (counts[i] if agg == "seq-mean-token-mean" else 1) if counts[i] else 0
            for i in range(b)
        ]
        scale = [[per_row[i]] * length for i in range(b)]
    loss = sum(per[i][t] * scale[i][t] for i in range(b) for t in range(length))
    grad = torch.tensor([[coef[i][t] * scale[i][t] for t in range(length)] for i in range(b)], dtype=D)
    return torch.tensor(loss, dtype=D), grad


def test_policy_loss_matches_loop_reference_with_per_token_bounds():
    gen = torch.Generator().manual_seed(1)
    b, length = 6, 13
    old = -torch.rand(b, length, generator=gen, dtype=D) * 3
    logp = (old + 0.4 * torch.randn(b, length, generator=gen, dtype=D)).requires_grad_(True)
    adv = torch.randn(b, length, generator=gen, dtype=D)
    mask = torch.rand(b, length, generator=gen) < 0.75
    mask[2] = False  # an empty row
    h = torch.rand(b, length, generator=gen, dtype=D) * 2 - 1
    eps_l, eps_h = adaptive_clip_bounds(h, 0.2, 0.28)
    for agg in LOSS_AGG_MODES:
        for c in (1.5, None):
            loss, _ = policy_loss(logp, old, adv, mask, eps_l, eps_h, clip_ratio_c=c, agg=agg)
            (grad,) = torch.autograd.grad(loss, logp)
            want_loss, want_grad = _loop_reference(logp.detach(), old, adv, mask, eps_l, eps_h, c, agg)
            torch.testing.assert_close(loss, want_loss, **F64)
            torch.testing.assert_close(grad, want_grad, **F64)


def test_policy_loss_ignores_masked_values():
    gen = torch.Generator().manual_seed(2)
    b, length = 4, 9
    old = torch.randn(b, length, generator=gen, dtype=D)
    logp0 = old + 0.3 * torch.randn(b, length, generator=gen, dtype=D)
    adv = torch.randn(b, length, generator=gen, dtype=D)
    mask = torch.rand(b, length, generator=gen) < 0.6
    junk = lambda: torch.randn(b, length, generator=gen, dtype=D) * 50  # noqa: E731
    results = []
    for variant in range(2):
        if variant:
            logp = torch.where(mask, logp0, junk())
            o, a = torch.where(mask, old, junk()), torch.where(mask, adv, junk())
        else:
            logp, o, a = logp0, old, adv
        logp = logp.clone().requires_grad_(True)
        for agg in LOSS_AGG_MODES:
            loss, m = policy_loss(logp, o, a, mask.float(), 0.2, 0.28, agg=agg)
            (grad,) = torch.autograd.grad(loss, logp)
            results.append((loss, grad, m["ratio_max"], m["ratio_min"], m["clipfrac"]))
            assert torch.count_nonzero(grad[~mask]).item() == 0
    for x, y in zip(results[:4], results[4:]):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, **F64)


def test_policy_loss_tensor_bounds_equal_float_bounds_and_row_permutation():
    gen = torch.Generator().manual_seed(3)
    old = torch.randn(5, 7, generator=gen)
    logp = (old + 0.5 * torch.randn(5, 7, generator=gen)).requires_grad_(True)
    adv = torch.randn(5, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) < 0.8
    a, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    b, _ = policy_loss(logp, old, adv, mask, torch.full((5, 7), 0.2), torch.full((5, 7), 0.28))
    torch.testing.assert_close(a, b, **F32)
    perm = torch.randperm(5, generator=gen)
    for agg in LOSS_AGG_MODES:
        a, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28, agg=agg)
        p, _ = policy_loss(logp[perm], old[perm], adv[perm], mask[perm], 0.2, 0.28, agg=agg)
        torch.testing.assert_close(a, p, **F32)


def test_empty_mask_is_finite_zero():
    logp = torch.randn(2, 3, requires_grad=True)
    for agg in LOSS_AGG_MODES:
        loss, m = policy_loss(
            logp, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), 0.2, 0.28, agg=agg
        )
        assert loss.item() == 0.0
        assert all(torch.isfinite(v).all() for v in m.values() if v.dtype != torch.bool)
        assert m["n_tokens"].item() == 0.0 and m["ratio_min"].item() == 0.0


def test_hapo_policy_loss_equals_composition_of_components():
    gen = torch.Generator().manual_seed(4)
    b, length = 8, 21
    old = -torch.rand(b, length, generator=gen, dtype=D) * 2
    logp = (old + 0.3 * torch.randn(b, length, generator=gen, dtype=D)).requires_grad_(True)
    mask = torch.rand(b, length, generator=gen) < 0.8
    adv = torch.randn(b, 1, generator=gen, dtype=D) * mask
    h = (torch.rand(b, length, generator=gen, dtype=D) * 2 - 1) * mask
    ratio = torch.exp(logp.detach() - old)
    for alpha, beta in ((1.0, 1.0), (0.5, 2.0), (None, 1.0), (1.0, None), (None, None)):
        eps_l, eps_h = adaptive_clip_bounds(h, 0.2, 0.28, alpha) if alpha is not None else (0.2, 0.28)
        a = redistribute_advantages(adv, h, ratio, eps_l, eps_h, beta) if beta is not None else adv
        for agg in LOSS_AGG_MODES:
            want, wm = policy_loss(logp, old, a, mask, eps_l, eps_h, clip_ratio_c=3.0, agg=agg)
            (wg,) = torch.autograd.grad(want, logp)
            got, gm = hapo_policy_loss(
                logp, old, adv, mask, h, 0.2, 0.28, alpha, beta, clip_ratio_c=3.0, agg=agg
            )
            (gg,) = torch.autograd.grad(got, logp)
            torch.testing.assert_close(got, want, **F64)
            torch.testing.assert_close(gg, wg, **F64)
            for k in wm:
                torch.testing.assert_close(gm[k], wm[k], **F64)


# HAPO by hand, eps 0.2 / 0.28, alpha = beta = 1, c = 10; one row of 5 valid tokens and a padded one (garbage).
# AAC: h > 0 -> eps_R' = 0.28 (1 + h); h <= 0 -> eps_L' = 0.2 (1 - h). DAR zone (1 - eps_L'/2, 1 + eps_R'/2):
# A_e = A (1 + h) where (h > 0 and r outside) or (h <= 0 and r inside), else A.
#   t0 h= .5 A= 1   r=1.5: eps_R' .42, zone (.9, 1.21) out -> A_e 1.5:  max(-2.25, -1.5*1.42)  = -2.13 right clip
#   t1 h=-.5 A=-1   r=0.6: eps_L' .3, zone (.85, 1.14) out -> A -1:     max(0.6, 0.7)            =  0.7  left clip
#   t2 h=-.5 A= 2   r=1.0: inside -> A_e 2 * 0.5 = 1:                    max(-1, -1)              = -1    dl/dlogp -1
#   t3 h= .8 A=-1   r=1.1: eps_R' .504, zone (.9, 1.252) in -> A -1:     max(1.1, 1.1)            =  1.1  dl/dlogp 1.1
#   t4 h= .2 A=-.5  r=30:  eps_R' .336, zone (.9, 1.168) out -> A_e -.6: min(max(18, .8016), 6)  =  6    dual clip
# token-mean: (-2.13 + 0.7 - 1 + 1.1 + 6) / 5 = 4.67 / 5. The same tokens with only AAC, only DAR, or neither:
#   AAC only: -1.42 + 0.7 - 2 + 1.1 + 5 = 3.38   DAR only: -1.92 + 0.8 - 1 + 1.1 + 6 = 4.98
#   neither:  -1.28 + 0.8 - 2 + 1.1 + 5 = 3.62   (t2 keeps A = 2: dl/dlogp -2; t4's dual clip is -A c = 5)
HAPO_HAND = {  # (alpha, beta): (loss, d loss / d logp over the 5 valid tokens)
    (1.0, 1.0): (4.67 / 5, [0.0, 0.0, -1.0, 1.1, 0.0]),
    (1.0, None): (3.38 / 5, [0.0, 0.0, -2.0, 1.1, 0.0]),
    (None, 1.0): (4.98 / 5, [0.0, 0.0, -1.0, 1.1, 0.0]),
    (None, None): (3.62 / 5, [0.0, 0.0, -2.0, 1.1, 0.0]),
}


def test_hapo_policy_loss_hand_values_gradients_and_metrics():
    ratio = torch.tensor([[1.5, 0.6, 1.0, 1.1, 30.0, 1.0], [1.0] * 6], dtype=D)
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -4.0, -3.0], [9.0] * 6], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0, -0.5, 7.0], [-8.0] * 6], dtype=D)
    h = torch.tensor([[0.5, -0.5, -0.5, 0.8, 0.2, 0.0], [0.0] * 6], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0] * 6])
    for (alpha, beta), (value, grad5) in HAPO_HAND.items():
        logp = torch.where(mask.bool(), ratio.log() + old, 5.0).requires_grad_(True)  # padding: garbage
        loss, m = hapo_policy_loss(logp, old, adv, mask, h, 0.2, 0.28, alpha, beta, clip_ratio_c=10.0)
        torch.testing.assert_close(loss, torch.tensor(value, dtype=D), **F64)
        (grad,) = torch.autograd.grad(loss, logp)
        want = torch.zeros(2, 6, dtype=D)
        want[0, :5] = torch.tensor(grad5, dtype=D) / 5
        torch.testing.assert_close(grad, want, **F64)
        assert m["n_tokens"].item() == 5.0
        assert m["clipfrac_left"].item() == pytest.approx(1 / 5, rel=1e-12)
        assert m["clipfrac_right"].item() == pytest.approx(1 / 5, rel=1e-12)
        assert m["clipfrac_dual"].item() == pytest.approx(1 / 5, rel=1e-12)
        assert m["ratio_mean"].item() == pytest.approx(34.2 / 5, rel=1e-12)
        assert m["ratio_max"].item() == pytest.approx(30.0, rel=1e-12)
        assert m["ratio_min"].item() == pytest.approx(0.6, rel=1e-12)
        assert m["token_clipped_left"][0].tolist() == [False, True, False, False, False, False]
        assert m["token_clipped_right"][0].tolist() == [True, False, False, False, False, False]
        assert not m["token_clipped_left"][1].any() and not m["token_clipped_right"][1].any()


def test_gradients_match_finite_differences():
    """torch.autograd.gradcheck (central differences, float64) in every mode, with and without C, D and the dual clip."""
    gen = torch.Generator().manual_seed(5)
    b, length = 4, 6
    old = -torch.rand(b, length, generator=gen, dtype=D) * 2
    logp = (old + 0.6 * torch.randn(b, length, generator=gen, dtype=D)).requires_grad_(True)
    logp.data[0, :2] = old[0, :2] + torch.tensor([2.5, -2.0], dtype=D)  # far outside the clip bounds
    adv = torch.randn(b, length, generator=gen, dtype=D)
    mask = torch.rand(b, length, generator=gen) < 0.75
    mask[0, :2] = True
    h = (torch.rand(b, length, generator=gen, dtype=D) * 2 - 1) * mask
    fd = dict(eps=1e-6, atol=1e-8, rtol=1e-6)
    for agg, c in itertools.product(LOSS_AGG_MODES, (3.0, None)):
        dapo = functools.partial(
            policy_loss, old_logp=old, adv=adv, mask=mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=c, agg=agg
        )
        assert torch.autograd.gradcheck(lambda x, f=dapo: f(x)[0], (logp,), **fd)
        for alpha, beta in HAPO_HAND:
            hapo = functools.partial(
                hapo_policy_loss,
                old_logp=old,
                adv=adv,
                mask=mask,
                h=h,
                eps_low=0.2,
                eps_high=0.28,
                alpha=alpha,
                beta=beta,
                clip_ratio_c=c,
                agg=agg,
            )
            assert torch.autograd.gradcheck(lambda x, f=hapo: f(x)[0], (logp,), **fd)


def test_policy_loss_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown agg 'mean'"):
        policy_loss(x, x, x, x, 0.2, 0.28, agg="mean")
    with pytest.raises(ValueError, match="must be > 1"):
        policy_loss(x, x, x, x, 0.2, 0.28, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        policy_loss(x, x, torch.zeros(2, 4), x, 0.2, 0.28)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(3), 0.2, 0.28)
    with pytest.raises(ValueError, match="eps_low"):
        policy_loss(x, x, x, x, -0.1, 0.28)
    with pytest.raises(ValueError, match="alpha"):
        hapo_policy_loss(x, x, x, x, x, 0.2, 0.28, alpha=-1.0)
    with pytest.raises(ValueError, match="unknown agg"):
        aggregate_loss(x, x, "sum")
