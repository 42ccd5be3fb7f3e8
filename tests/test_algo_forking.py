"""hapo_cli.algo.forking: Forking Tokens (baselines-spec 1): selection conventions, both denominators, F1-F4."""

from __future__ import annotations

import math

import pytest
import torch
from _algo_ref import AGGS, F64, D, check_microbatch_composition, loop_aggregate, loop_ppo, rand_batch

from hapo_cli.algo import forking_loss, forking_token_mask, policy_loss

PAD = float("nan")  # masked entropies may be anything, even NaN


def _f1():
    h = torch.tensor([[0.1, 2.0, 0.5, PAD], [1.5, 0.2, 3.0, 0.05]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-0.5] * 4], dtype=D)
    r = torch.ones(2, 4, dtype=D)
    r[0, 1], r[1, 2] = 1.1, 0.9
    old = torch.zeros(2, 4, dtype=D)
    logp = r.log().requires_grad_(True)
    return h, mask, adv, old, logp


SEL_F1 = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize("convention", ["topk_ceil", "linear_ge"])
def test_f1_selection(convention):
    h, mask, *_ = _f1()
    sel = forking_token_mask(h, mask, rho=0.2, convention=convention)
    assert sel.dtype == D
    assert sel.tolist() == SEL_F1


def test_f1_losses_and_gradients_for_both_denominators():
    h, mask, adv, old, logp = _f1()
    sel = forking_token_mask(h, mask, 0.2)
    # per-token l = [[-1, -1.1, -1, 0], [0.5, 0.5, 0.45, 0.5]]; selected (0,1) = -1.1 and (1,2) = 0.45
    loss, m = forking_loss(logp, old, adv, mask, sel, 0.2, 0.28, 10.0, denominator="selected")
    torch.testing.assert_close(loss, torch.tensor(-0.325, dtype=D), **F64)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0, 1].item() == pytest.approx(-0.55, abs=1e-12)
    assert g[1, 2].item() == pytest.approx(0.5 * 0.9 / 2, abs=1e-12)
    assert torch.count_nonzero(g).item() == 2  # unselected tokens get exactly 0
    assert m["n_tokens"].item() == 2 and m["selected_frac"].item() == pytest.approx(2 / 7)
    loss, m = forking_loss(logp, old, adv, mask, sel, 0.2, 0.28, 10.0, denominator="all")
    assert loss.item() == pytest.approx(-0.0928571, abs=1e-7)
    torch.testing.assert_close(loss, torch.tensor(-0.65 / 7, dtype=D), **F64)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0, 1].item() == pytest.approx(-0.157143, abs=1e-6)
    assert m["n_tokens"].item() == 7
    dapo, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28, 10.0)
    assert dapo.item() == pytest.approx(-0.1642857, abs=1e-7)


def test_f2_ties():
    h = torch.full((1, 5), 0.7, dtype=D)
    mask = torch.ones(1, 5)
    assert forking_token_mask(h, mask, 0.2, "topk_ceil").sum().item() == 1
    assert forking_token_mask(h, mask, 0.2, "linear_ge").sum().item() == 5


def test_f3_hapo_h_positive_differs_from_topk():
    h, mask, *_ = _f1()
    hp = forking_token_mask(h, mask, 0.2, "hapo_h_positive")
    assert hp.tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]  # only H = 3.0
    assert forking_token_mask(h, mask, 0.2, "topk_ceil").sum().item() == 2


def test_f4_scope_is_the_tensor_passed():
    mb1 = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=D)
    mb2 = torch.tensor([[2.0, 3.0, 4.0, 5.0, 6.0]], dtype=D)
    ones = torch.ones(1, 5)
    local = [forking_token_mask(x, ones, 0.2) for x in (mb1, mb2)]
    assert (mb1[local[0].bool()].tolist(), mb2[local[1].bool()].tolist()) == ([0.5], [6.0])
    both = torch.cat([mb1, mb2])
    for conv in ("topk_ceil", "linear_ge"):
        sel = forking_token_mask(both, torch.ones(2, 5), 0.2, conv)
        assert sorted(both[sel.bool()].tolist()) == [5.0, 6.0]


def test_topk_count_is_the_literal_expression():
    # int(n * rho + 0.9999): a ceiling except when frac(n * rho) is in (0, 1e-4]
    for n in range(1, 40):
        for rho in (0.2, 0.1, 0.05, 0.5, 1.0, 0.33):
            h = torch.arange(n, dtype=D).unsqueeze(0)
            k = forking_token_mask(h, torch.ones(1, n), rho).sum().item()
            assert k == max(1, int(n * rho + 0.9999)), (n, rho)


def _loop_topk(h, mask, rho):
    vals = [(h[i][t], i * len(h[0]) + t, i, t) for i in range(len(h)) for t in range(len(h[0])) if mask[i][t]]
    k = max(1, int(len(vals) * rho + 0.9999))
    vals.sort(key=lambda v: (-v[0], v[1]))  # largest first, ties: earlier position
    out = [[0.0] * len(h[0]) for _ in h]
    for _, _, i, t in vals[:k]:
        out[i][t] = 1.0
    return out


def _loop_linear(h, mask, rho):
    vals = sorted(h[i][t] for i in range(len(h)) for t in range(len(h[0])) if mask[i][t])
    if not vals:
        return [[0.0] * len(h[0]) for _ in h]
    thr = torch.quantile(torch.tensor(vals, dtype=D), 1 - rho).item()
    return [[1.0 if mask[i][t] and h[i][t] >= thr else 0.0 for t in range(len(h[0]))] for i in range(len(h))]


def _loop_hapo(h, mask, rho):
    vals = sorted(math.log(max(h[i][t], 1e-8)) for i in range(len(h)) for t in range(len(h[0])) if mask[i][t])
    q = vals[round((1 - rho) * (len(vals) - 1))] if vals else 0.0
    return [
        [1.0 if mask[i][t] and math.log(max(h[i][t], 1e-8)) > q else 0.0 for t in range(len(h[0]))]
        for i in range(len(h))
    ]


@pytest.mark.parametrize("seed", range(8))
def test_selection_matches_loop_reference_and_ignores_masked_values(seed):
    g = torch.Generator().manual_seed(seed)
    h = (torch.rand(4, 9, generator=g, dtype=D) * 4).round(decimals=1)  # with ties
    mask = (torch.rand(4, 9, generator=g) < 0.7).long()
    garbage = torch.where(mask.bool(), h, torch.full_like(h, 1e9))
    for rho in (0.2, 0.35, 1.0):
        for conv, ref in (
            ("topk_ceil", _loop_topk),
            ("linear_ge", _loop_linear),
            ("hapo_h_positive", _loop_hapo),
        ):
            got = forking_token_mask(h, mask, rho, conv)
            assert got.tolist() == ref(h.tolist(), mask.tolist(), rho), (conv, rho)
            assert torch.equal(forking_token_mask(garbage, mask, rho, conv), got)
            if conv == "topk_ceil":  # float32 keeps the order and the ties of these values
                assert torch.equal(forking_token_mask(h.float(), mask, rho, conv).double(), got)


def test_empty_mask_selects_nothing():
    h = torch.rand(2, 3, dtype=D)
    for conv in ("topk_ceil", "linear_ge", "hapo_h_positive"):
        assert forking_token_mask(h, torch.zeros(2, 3), 0.2, conv).sum().item() == 0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("denominator", ["selected", "all"])
def test_forking_loss_matches_loop_and_policy_loss(agg, denominator):
    logp, old, adv, mask, ent = rand_batch(1, b=6, length=8)
    sel = forking_token_mask(ent, mask, 0.3)
    loss, m = forking_loss(logp, old, adv, mask, sel, 0.2, 0.28, 3.0, denominator=denominator, agg=agg)
    r = (logp - old).exp().tolist()
    a, mk, s = adv.tolist(), mask.tolist(), sel.tolist()
    pt = [[loop_ppo(a[i][t], r[i][t], 0.8, 1.28, 3.0) for t in range(8)] for i in range(6)]
    m_num = [[mk[i][t] * s[i][t] for t in range(8)] for i in range(6)]
    m_den = m_num if denominator == "selected" else mk
    assert loss.item() == pytest.approx(loop_aggregate(pt, m_num, m_den, agg), rel=1e-12, abs=1e-12)
    if denominator == "selected":
        ref, _ = policy_loss(logp, old, adv, mask * sel, 0.2, 0.28, 3.0, agg=agg)
    else:
        ref, _ = policy_loss(logp, old, adv * sel, mask, 0.2, 0.28, 3.0, agg=agg)
    torch.testing.assert_close(loss, ref, **F64)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(ref, logp)[0], **F64)


def test_forking_loss_masked_positions_do_not_matter():
    logp, old, adv, mask, ent = rand_batch(2)
    sel = forking_token_mask(ent, mask, 0.3)
    pad = ~mask.bool()
    logp2 = torch.where(pad, float("-inf"), logp.detach()).requires_grad_(True)
    old2 = torch.where(pad, 7.0, old)
    adv2 = torch.where(pad, 1e6, adv)
    sel2 = torch.where(pad, 1.0, sel)
    w = torch.rand(logp.shape, dtype=D) + 0.5
    for den in ("selected", "all"):
        a, _ = forking_loss(logp, old, adv, mask, sel, denominator=den, is_weights=w)
        b, _ = forking_loss(
            logp2, old2, adv2, mask, sel2, denominator=den, is_weights=torch.where(pad, 9.0, w)
        )
        torch.testing.assert_close(a, b, **F64)
        ga, gb = torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp2)[0]
        torch.testing.assert_close(ga, gb, **F64)


@pytest.mark.parametrize("agg", AGGS)
def test_forking_loss_composes_over_micro_batches(agg):
    logp, old, adv, mask, ent = rand_batch(3, b=6, length=8)
    sel = forking_token_mask(ent, mask, 0.3)  # a fixed selection (e.g. from the old-policy entropy)
    check_microbatch_composition(
        forking_loss, logp, dict(old_logp=old, adv=adv, mask=mask, sel=sel), dict(denominator="all"), agg
    )
    sel_rows = sel.clone()
    sel_rows[:, 0] = 1.0  # every row has a selected token, so the seq-mean row weights hold for "selected"
    check_microbatch_composition(
        forking_loss,
        logp,
        dict(old_logp=old, adv=adv, mask=mask, sel=sel_rows),
        dict(denominator="selected"),
        agg,
    )


def test_is_weights_multiply_the_per_token_loss():
    h, mask, adv, old, logp = _f1()
    sel = forking_token_mask(h, mask, 0.2)
    w = torch.full((2, 4), 0.5, dtype=D)
    a, _ = forking_loss(logp, old, adv, mask, sel, is_weights=w)
    assert a.item() == pytest.approx(-0.325 / 2, abs=1e-12)


def test_forking_validation():
    h, mask, adv, old, logp = _f1()
    with pytest.raises(ValueError, match="convention"):
        forking_token_mask(h, mask, 0.2, "nope")
    with pytest.raises(ValueError, match="rho"):
        forking_token_mask(h, mask, 0.0)
    with pytest.raises(ValueError, match="denominator"):
        forking_loss(logp, old, adv, mask, mask, denominator="x")
    with pytest.raises(ValueError, match="agg"):
        forking_loss(logp, old, adv, mask, mask, agg="x")
    with pytest.raises(ValueError, match="shape"):
        forking_loss(logp, old, adv, mask, mask[:, :2])


def _fork_port(entropy, mask, top_ratio):
    """A line-by-line port of [FORK] get_global_entropy_top_mask (core_algos.py L53-87, fixed version)."""
    flat_entropy, flat_mask = entropy.flatten(), mask.flatten().bool()
    response_entropy = flat_entropy[flat_mask]
    if response_entropy.numel() == 0:
        return torch.zeros_like(entropy)
    top_k = max(1, int(len(response_entropy) * top_ratio + 0.9999))
    _, topk_idx = torch.topk(response_entropy, k=top_k)
    top_positions = flat_mask.nonzero(as_tuple=False).squeeze(1)[topk_idx]
    out = torch.zeros_like(flat_entropy)
    out[top_positions] = 1.0
    return out.view_as(entropy)


def _trl_port(entropies, mask, threshold):
    """A port of [TRL] get_high_entropy_mask on one process (no padding sentinels to drop)."""
    non_pad = entropies[mask.bool()].float()
    thr = torch.quantile(non_pad, threshold)
    return (entropies >= thr) & mask.bool()


@pytest.mark.parametrize("seed", range(5))
def test_reference_conventions_match_ports_of_fork_and_trl(seed):
    _, _, _, mask, ent = rand_batch(60 + seed, b=6, length=12, all_rows_valid=False)  # continuous: no ties
    for rho in (0.2, 0.05, 0.5):
        assert torch.equal(forking_token_mask(ent, mask, rho, "topk_ceil"), _fork_port(ent, mask, rho))
        e32 = ent.float()
        assert torch.equal(
            forking_token_mask(e32, mask, rho, "linear_ge").bool(), _trl_port(e32, mask, 1 - rho)
        )
