"""hapo_cli.algo.cov: Clip-Cov and KL-Cov (baselines-spec 6, K1-K2)."""

from __future__ import annotations

import math

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, rand_batch

from hapo_cli.algo import clip_cov_loss, clip_cov_select, kl_cov_loss, kl_cov_select, token_covariance

TOL = dict(rtol=0, atol=1e-7)


def _k():
    adv = torch.tensor([[1.0, 1, 1], [-1, -1, -1]], dtype=D)
    logp = torch.tensor([[-0.1, -3.0, -0.5], [-0.2, -4.0, -1.0]], dtype=D, requires_grad=True)
    return logp, logp.detach().clone(), adv, torch.ones(2, 3)


COV = [[1.3666667, -1.5333333, 0.9666667], [-1.2666667, 2.5333333, -0.4666667]]


def test_k1_covariance_and_candidates():
    logp, old, adv, mask = _k()
    torch.testing.assert_close(token_covariance(logp, adv, mask), torch.tensor(COV, dtype=D), **TOL)
    _, cand = clip_cov_select(
        logp, old, adv, mask, 1.0, 1.0, 0.34, 1.0, 5.0, torch.Generator().manual_seed(0)
    )
    assert cand.long().tolist() == [[1, 0, 0], [0, 1, 0]]


def test_k1_selection_counts_and_losses():
    logp, old, adv, mask = _k()
    loss, m = clip_cov_loss(logp, old, adv, mask, 1.0, 1.0, 0.34, 1.0, 5.0, torch.Generator().manual_seed(0))
    assert m["n_selected"].item() == 2 and m["n_candidates"].item() == 2  # int(0.34 * 6) = 2
    torch.testing.assert_close(loss, torch.tensor(0.0, dtype=D), **F64)  # (-2 + 2) / 6
    seen = {}
    for seed in range(40):
        loss, m = clip_cov_loss(
            logp, old, adv, mask, 1.0, 1.0, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(seed)
        )
        sel = m["token_selected"]
        assert sel.sum().item() == 1  # exactly one token has corr = 0
        (g,) = torch.autograd.grad(loss, logp)
        assert g[sel].item() == 0.0 and torch.count_nonzero(g).item() == 5
        seen[tuple(sel.nonzero()[0].tolist())] = loss.item()
    assert seen.keys() == {(0, 0), (1, 1)}  # both candidates get drawn
    assert seen[(0, 0)] == pytest.approx(1 / 6, abs=1e-12) and seen[(1, 1)] == pytest.approx(
        -1 / 6, abs=1e-12
    )
    a, ma = clip_cov_loss(logp, old, adv, mask, 1.0, 1.0, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(5))
    b, mb = clip_cov_loss(logp, old, adv, mask, 1.0, 1.0, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(5))
    assert torch.equal(ma["token_selected"], mb["token_selected"])  # the generator alone decides


def test_k1_clipped_tokens_are_not_candidates():
    logp, old, adv, mask = _k()
    old = old.clone()
    old[1, 1] = logp[1, 1].item() - math.log(0.5)  # r[1,1] = 0.5, A = -1: l2 = 0.8 > l1 = 0.5 with eps 0.2
    for seed in range(10):
        sel, cand = clip_cov_select(
            logp, old, adv, mask, 0.2, 0.2, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(seed)
        )
        assert cand.long().tolist() == [[1, 0, 0], [0, 0, 0]] and sel.long().tolist() == [
            [1, 0, 0],
            [0, 0, 0],
        ]


def test_k2_kl_cov():
    logp, old, adv, mask = _k()
    old = old.clone()
    old[1, 1] -= 0.1  # r[1,1] = 1.1051709
    loss, m = kl_cov_loss(logp, old, adv, mask, 2e-4, 1.0)
    assert m["token_selected"].long().tolist() == [[0, 0, 0], [0, 1, 0]]
    r = math.exp(0.1)
    torch.testing.assert_close(loss, torch.tensor((-3 + 2 + r + 0.1) / 6, dtype=D), **F64)
    assert loss.item() == pytest.approx(0.0341952, abs=1e-7)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[1, 1].item() == pytest.approx((r + 1) / 6, abs=1e-12)
    assert g[1, 1].item() == pytest.approx(0.3508618, abs=1e-7)
    assert m["kl_selected_mean"].item() == pytest.approx(0.1, abs=1e-12)


def _loop_cov(logp, adv, mask):
    lp, a, mk = logp.tolist(), adv.tolist(), mask.tolist()
    cells = [(i, t) for i in range(len(mk)) for t in range(len(mk[0])) if mk[i][t]]
    ma = sum(a[i][t] for i, t in cells) / len(cells)
    ml = sum(lp[i][t] for i, t in cells) / len(cells)
    return {(i, t): (a[i][t] - ma) * (lp[i][t] - ml) for i, t in cells}


@pytest.mark.parametrize("seed", range(6))
def test_selections_match_loop_reference(seed):
    logp, old, adv, mask, _ = rand_batch(30 + seed, b=6, length=8, spread=0.3)
    cov = _loop_cov(logp, adv, mask)
    got = token_covariance(logp, adv, mask)
    for (i, t), v in cov.items():
        assert got[i, t].item() == pytest.approx(v, rel=1e-12, abs=1e-12)
    # KL-Cov: top-k by cov, k = max(1, int(N * ratio))
    for ratio in (0.05, 0.2):
        k = max(1, int(len(cov) * ratio))
        top = sorted(cov, key=lambda c: (-cov[c], c))[:k]
        sel = kl_cov_select(logp, adv, mask, ratio)
        assert sorted(map(tuple, sel.nonzero().tolist())) == sorted(top)
    # Clip-Cov: candidates, then the n_sel candidates with the largest generator keys
    lb, ub = -0.05, 0.4
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed), dtype=D).tolist()
    sel, cand = clip_cov_select(logp, old, adv, mask, 0.2, 0.28, 0.1, lb, ub, g)
    r, a = (logp - old).exp().tolist(), adv.tolist()
    ref_cand = []
    for (i, t), v in cov.items():
        l1, l2 = -a[i][t] * r[i][t], -a[i][t] * min(max(r[i][t], 0.8), 1.28)
        if not l2 > l1 and lb < v < ub:
            ref_cand.append((i, t))
    assert sorted(map(tuple, cand.nonzero().tolist())) == sorted(ref_cand)
    n_sel = max(int(0.1 * len(cov)), 1)
    ref_sel = sorted(ref_cand, key=lambda c: -keys[c[0]][c[1]])[:n_sel]
    assert sorted(map(tuple, sel.nonzero().tolist())) == sorted(ref_sel)


@pytest.mark.parametrize("agg", AGGS)
def test_losses_match_loop_reference_given_the_selection_and_compose(agg):
    logp, old, adv, mask, _ = rand_batch(40, b=6, length=8, spread=0.6)
    sel = kl_cov_select(logp, adv, mask, 0.1)
    r, a, mk, lp, od = (logp - old).exp().tolist(), adv.tolist(), mask.tolist(), logp.tolist(), old.tolist()
    s = sel.tolist()
    pt = [
        [-a[i][t] * r[i][t] + (0.7 * abs(lp[i][t] - od[i][t]) if s[i][t] else 0.0) for t in range(8)]
        for i in range(6)
    ]
    loss, _ = kl_cov_loss(logp, old, adv, mask, 0.1, 0.7, agg=agg)
    assert loss.item() == pytest.approx(loop_aggregate(pt, mk, mk, agg), rel=1e-12, abs=1e-12)
    pt = [
        [
            0.0 if s[i][t] else max(-a[i][t] * r[i][t], -a[i][t] * min(max(r[i][t], 0.8), 1.28))
            for t in range(8)
        ]
        for i in range(6)
    ]
    loss, _ = clip_cov_loss(logp, old, adv, mask, 0.2, 0.28, agg=agg, selected=sel)
    assert loss.item() == pytest.approx(loop_aggregate(pt, mk, mk, agg), rel=1e-12, abs=1e-12)
    # a mini-batch-scope selection, sliced per micro-batch, composes exactly
    rows = dict(old_logp=old, adv=adv, mask=mask, selected=sel)
    check_microbatch_composition(kl_cov_loss, logp, rows, dict(kl_cov_ratio=0.1, ppo_kl_coef=0.7), agg)
    check_microbatch_composition(clip_cov_loss, logp, rows, dict(eps_low=0.2, eps_high=0.28), agg)


def test_masked_positions_do_not_matter():
    logp, old, adv, mask, _ = rand_batch(41, spread=0.6)
    pad = ~mask.bool()
    logp2 = torch.where(pad, float("-inf"), logp.detach()).requires_grad_(True)
    old2, adv2 = torch.where(pad, 5.0, old), torch.where(pad, 1e4, adv)
    a, ma = kl_cov_loss(logp, old, adv, mask, 0.1)
    b, mb = kl_cov_loss(logp2, old2, adv2, mask, 0.1)
    assert torch.equal(ma["token_selected"], mb["token_selected"])
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp2)[0], **F64)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, ma = clip_cov_loss(logp, old, adv, mask, 0.2, 0.28, 0.2, -0.1, 5.0, gen())
    b, mb = clip_cov_loss(logp2, old2, adv2, mask, 0.2, 0.28, 0.2, -0.1, 5.0, gen())
    assert ma["n_selected"].item() >= 1 and torch.equal(ma["token_selected"], mb["token_selected"])
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp2)[0], **F64)


def test_cov_validation():
    logp, old, adv, mask = _k()
    with pytest.raises(ValueError, match="Generator"):
        clip_cov_loss(logp, old, adv, mask)
    with pytest.raises(ValueError, match="lb < ub"):
        clip_cov_loss(logp, old, adv, mask, lb=5.0, ub=1.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="draw"):
        clip_cov_loss(logp, old, adv, mask, generator=torch.Generator(), draw="x")
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        kl_cov_loss(logp, old, adv, mask, kl_cov_ratio=0.0)


def _verl_clip_cov_port(old_logp, logp, adv, mask, lo, hi, ratio_, lb, ub, g):
    """A line-by-line port of [VERL] compute_policy_loss_clip_cov (token-mean), the generator injected into randperm."""
    ratio = torch.exp(logp - old_logp)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clip_by_origin = (pg2 > pg1) & (mask > 0)
    corr = torch.ones_like(adv)
    m = mask.to(adv.dtype)
    cov_all = (adv - (adv * m).sum() / m.sum()) * (logp - (logp.detach() * m).sum() / m.sum())
    cov_all[mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(ratio_ * mask.sum().item()), 1)
    idx = torch.nonzero((cov_all < ub) & (cov_all > lb) & (mask > 0))
    if len(idx) > 0:
        perm = torch.randperm(len(idx), generator=g)
        idx = idx[perm[: min(clip_num, len(idx))]]
    corr[idx[:, 0], idx[:, 1]] = 0
    pg = torch.maximum(pg1, pg2) * corr
    return (pg * m).sum() / m.sum()


def _verl_kl_cov_port(old_logp, logp, adv, mask, ratio_, coef):
    """A line-by-line port of [VERL] compute_policy_loss_kl_cov (token-mean)."""
    nkl = logp - old_logp
    ratio = torch.exp(nkl)
    pg = -adv * ratio
    pg_kl = -adv * ratio + coef * nkl.abs()
    pg = pg.clone()
    valid = mask > 0
    valid_idx = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    va, vl = adv[valid].detach().reshape(-1), logp[valid].detach().reshape(-1)
    cov = (va - va.mean()) * (vl - vl.mean())
    k = max(1, int(len(cov) * ratio_))
    big = valid_idx[torch.topk(cov, k, largest=True).indices]
    pg[big // adv.shape[1], big % adv.shape[1]] = pg_kl[big // adv.shape[1], big % adv.shape[1]]
    m = mask.to(adv.dtype)
    return (pg * m).sum() / m.sum()


@pytest.mark.parametrize("seed", range(5))
def test_reference_mode_matches_a_port_of_verl(seed):
    logp, old, adv, mask, _ = rand_batch(50 + seed, b=6, length=10, spread=0.3)
    adv = adv * 4  # covariances of order 1, so (lb, ub) = (0.2, 5) has candidates
    loss, m = clip_cov_loss(logp, old, adv, mask, 0.2, 0.28, 0.1, 0.2, 5.0, torch.Generator().manual_seed(seed),
                            draw="randperm")  # fmt: skip
    ref = _verl_clip_cov_port(
        old, logp, adv, mask, 0.2, 0.28, 0.1, 0.2, 5.0, torch.Generator().manual_seed(seed)
    )
    assert m["n_candidates"].item() > m["n_selected"].item() >= 1
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(ref, logp)[0], **F64)
    loss, _ = kl_cov_loss(logp, old, adv, mask, 0.1, 0.7)
    ref = _verl_kl_cov_port(old, logp, adv, mask, 0.1, 0.7)
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(ref, logp)[0], **F64)
