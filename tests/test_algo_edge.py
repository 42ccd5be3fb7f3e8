"""hapo_cli.algo.edge: EDGE-GRPO's entropy-driven advantage (EDA) and GEC's pure parts (baselines-spec 3, E1-E4)."""

from __future__ import annotations

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, loop_ppo, rand_batch

from hapo_cli.algo import (
    GEC_REFLECT_TEXT,
    eda_scale,
    edge_advantages,
    edge_loss,
    gec_answer_text,
    gec_branches,
    gec_rewrite,
    policy_loss,
)

TOL = dict(rtol=0, atol=1e-6)


def _e1(rewards):
    h = torch.tensor([[0.5], [1.0], [2.0], [1.5]], dtype=D)  # one token each: P = H
    return torch.tensor(rewards, dtype=D), torch.zeros(4, dtype=torch.long), torch.ones(4, 1), h


def test_e1_paper_mode():
    r, gid, mask, h = _e1([1.0, 0.0, 0.0, 1.0])
    a_grpo = edge_advantages(r, gid, mask, torch.ones_like(h))  # P all equal: plain GRPO with eps 1e-4
    torch.testing.assert_close(
        a_grpo[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=D) / (0.5773503 + 1e-4), **TOL
    )
    assert a_grpo[0, 0].item() == pytest.approx(0.865875, abs=1e-6)
    torch.testing.assert_close(
        eda_scale(h, mask, gid), 1 / torch.tensor([0.4, 0.8, 1.6, 1.2], dtype=D), **F64
    )
    a = edge_advantages(r, gid, mask, h)
    torch.testing.assert_close(
        a[:, 0], torch.tensor([2.164689, -1.082344, -0.541172, 0.721563], dtype=D), **TOL
    )
    r2, *_ = _e1([2.0, 1.0, 0.0, 2.0])
    a2 = edge_advantages(r2, gid, mask, torch.ones_like(h))[:, 0]
    torch.testing.assert_close(a2, torch.tensor([0.783268, -0.261089, -1.305446, 0.783268], dtype=D), **TOL)
    a2 = edge_advantages(r2, gid, mask, h)[:, 0]
    torch.testing.assert_close(a2, torch.tensor([1.958169, -0.326362, -0.815904, 0.652723], dtype=D), **TOL)


@pytest.mark.parametrize(("mode", "x", "expect"), [("paper", 7.0, [1.5, -0.75]), ("reference", 0.0, [2.5, -0.625]),
                                                   ("reference", 2.0, [0.9, -1.125])])  # fmt: skip
def test_e2_reference_vs_paper_p_with_padding(mode, x, expect):
    h = torch.tensor([[0.4, 0.6, x, x], [1.0, 1.0, 1.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    a = torch.tensor([1.0, -1.0], dtype=D) * eda_scale(h, mask, torch.zeros(2, dtype=torch.long), mode)
    torch.testing.assert_close(a, torch.tensor(expect, dtype=D), **F64)


def test_e3_reference_gradient_flows_through_the_entropy():
    r, gid, mask, h = _e1([1.0, 0.0, 0.0, 1.0])
    for mode, expect in (("reference", 0.865875 * 1.25 / 0.25), ("paper", 0.0)):
        ent = h.clone().requires_grad_(True)
        adv = edge_advantages(r, gid, mask, ent, mode=mode)
        logp = torch.zeros(4, 1, dtype=D, requires_grad=True)
        loss, _ = edge_loss(logp, logp.detach(), adv, mask, agg="seq-mean-token-sum")  # mean over 4 of l_i
        if mode == "paper":
            assert not adv.requires_grad
            continue
        (g,) = torch.autograd.grad(loss, ent)
        assert (4 * g[0, 0]).item() == pytest.approx(
            expect, abs=1e-3
        )  # d l_0 / d P_0 = A mean / P^2 = 4.3294
        assert (4 * g[0, 0]).item() == pytest.approx(0.5 / (0.5773503 + 1e-4) * 1.25 / 0.25, rel=1e-6)


def test_e4_gec_rewrites():
    answer, solution = "8", "We compute 3 + 5 = \\boxed{8}."
    wrong = ["The answer is 7", "The answer is 9", "I give up"]
    out = [gec_rewrite(c, b, answer, solution) for c, b in zip(wrong, (1, 2, 3))]
    assert out[0] == "The answer is 7 Wait! Something is wrong here." and out[0].endswith(GEC_REFLECT_TEXT)
    assert out[1] == (
        "The answer is 9\nWait! Something is wrong here. After verification, the correct answer is \\boxed{8}."
    )
    assert out[1].endswith(gec_answer_text("8"))
    assert out[2] == solution
    assert gec_rewrite("correct \\boxed{8}", 0, answer, solution) == "correct \\boxed{8}"
    with pytest.raises(ValueError, match="branch"):
        gec_rewrite("x", 4, answer, solution)


def test_gec_branches_use_the_generator_and_the_probabilities():
    to_correct = torch.ones(40000, dtype=torch.bool)
    to_correct[::4] = False
    a = gec_branches(to_correct, torch.Generator().manual_seed(3))
    b = gec_branches(to_correct, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a[~to_correct] == 0).all()
    counts = torch.bincount(a[to_correct], minlength=4).double() / to_correct.sum()
    assert counts[0].item() == 0
    # 30,000 draws: the std of a frequency is <= 0.003, so 0.01 is a > 3-sigma bound (the exact draw is checked above)
    torch.testing.assert_close(counts[1:], torch.tensor([0.5, 0.25, 0.25], dtype=D), rtol=0, atol=0.01)
    forced = gec_branches(to_correct, torch.Generator().manual_seed(3), force_reflection=True)
    assert (forced[to_correct] == 1).all() and (forced[~to_correct] == 0).all()


def _loop_eda(rewards, gids, mask, ent, eps, mode):
    rewards, gids, mask, ent = rewards.tolist(), gids.tolist(), mask.tolist(), ent.tolist()
    b, length = len(mask), len(mask[0])
    out = [[0.0] * length for _ in range(b)]
    for g in set(gids):
        rows = [i for i in range(b) if gids[i] == g]
        rs = [rewards[i] for i in rows]
        mean = sum(rs) / len(rs)
        if len(rs) < 2 or max(rs) == min(rs):
            adv = {i: 0.0 for i in rows}
        else:
            std = (sum((x - mean) ** 2 for x in rs) / (len(rs) - 1)) ** 0.5
            adv = {i: (rewards[i] - mean) / (std + eps) for i in rows}
        if mode == "paper":
            p = {i: sum(ent[i][t] for t in range(length) if mask[i][t]) / max(1, sum(mask[i])) for i in rows}
            with_tokens = [i for i in rows if sum(mask[i])]
            p_mean = sum(p[i] for i in with_tokens) / max(1, len(with_tokens))
        else:
            p = {i: sum(ent[i]) / length for i in rows}
            p_mean = sum(p.values()) / len(rows)
        for i in rows:
            for t in range(length):
                if mask[i][t]:
                    out[i][t] = adv[i] * p_mean / max(p[i], 1e-8)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("mode", ["paper", "reference"])
@pytest.mark.parametrize("seed", range(4))
def test_edge_advantages_match_loop_and_are_order_and_mask_invariant(mode, seed):
    g = torch.Generator().manual_seed(seed)
    b, length = 12, 6
    rewards = torch.randint(0, 3, (b,), generator=g).to(D)
    gids = torch.randint(0, 4, (b,), generator=g) * 10 + 3
    _, _, _, mask, ent = rand_batch(seed, b=b, length=length, all_rows_valid=False)
    a = edge_advantages(rewards, gids, mask, ent, mode=mode)
    torch.testing.assert_close(a, _loop_eda(rewards, gids, mask, ent, 1e-4, mode), **F64)
    perm = torch.randperm(b, generator=g)
    torch.testing.assert_close(
        edge_advantages(rewards[perm], gids[perm], mask[perm], ent[perm], mode=mode), a[perm], **F64
    )
    if mode == "paper":  # the reference mode reads the padding on purpose
        garbage = torch.where(mask.bool(), ent, torch.full_like(ent, 123.0))
        torch.testing.assert_close(edge_advantages(rewards, gids, mask, garbage), a, **F64)


@pytest.mark.parametrize("agg", AGGS)
def test_edge_loss_is_policy_loss_without_dual_clip(agg):
    logp, old, adv, mask, _ = rand_batch(5, b=6, length=8, spread=0.6)
    loss, m = edge_loss(logp, old, adv, mask, 0.2, 0.2, agg=agg)
    ref, rm = policy_loss(logp, old, adv, mask, 0.2, 0.2, clip_ratio_c=None, agg=agg)
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(ref, logp)[0], **F64)
    for k in ("clipfrac_left", "clipfrac_right", "ratio_mean", "ratio_max", "ratio_min", "n_tokens"):
        torch.testing.assert_close(m[k], rm[k], **F64)
    assert torch.equal(m["token_clipped_left"], rm["token_clipped_left"])
    r, a, mk = (logp - old).exp().tolist(), adv.tolist(), mask.tolist()
    pt = [[loop_ppo(a[i][t], r[i][t], 0.8, 1.2, None) for t in range(8)] for i in range(6)]
    assert loss.item() == pytest.approx(loop_aggregate(pt, mk, mk, agg), rel=1e-12, abs=1e-12)
    check_microbatch_composition(edge_loss, logp, dict(old_logp=old, adv=adv, mask=mask), {}, agg)


def test_edge_validation():
    r, gid, mask, h = _e1([1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mode"):
        edge_advantages(r, gid, mask, h, mode="x")
    with pytest.raises(ValueError, match="eps"):
        edge_advantages(r, gid, mask, h, eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        edge_advantages(r, gid, mask, h[:, :0])
