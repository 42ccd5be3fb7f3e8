"""hapo_cli.algo.advantages.tlga_advantages: Token-Level Group Average advantage with fallback (spec B)."""

from __future__ import annotations

import math

import pytest
import torch

from hapo_cli.algo import ADVANTAGE_ESTIMATORS, tlga_advantages

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)
EPS = 1e-6


def _mask(lengths, width=None):
    width = width or max(lengths)
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _loop_reference(rewards, group_ids, mask, threshold=5.0):
    """Per-group Python loop straight from the spec."""
    r = [float(v) for v in rewards]
    ids = [int(v) for v in group_ids]
    n = [int(v) for v in mask.ne(0).sum(-1)]
    out = [0.0] * len(r)
    for g in set(ids):
        rows = [i for i in range(len(r)) if ids[i] == g]
        toks = [r[i] for i in rows for _ in range(n[i])]  # the reward broadcast to every valid token
        if len(set(toks)) <= 1:
            continue  # zero variance: A = 0
        mu = sum(toks) / len(toks)
        sigma = math.sqrt(sum((t - mu) ** 2 for t in toks) / len(toks))  # population std
        adv = {i: (r[i] - mu) / (sigma + EPS) for i in rows}
        if threshold is not None and any(abs(adv[i]) >= threshold for i in rows if n[i] > 0):
            m = sum(r[i] for i in rows) / len(rows)
            std = math.sqrt(sum((r[i] - m) ** 2 for i in rows) / (len(rows) - 1))  # Bessel
            adv = {i: (r[i] - m) / (std + EPS) for i in rows}
        for i in rows:
            out[i] = adv[i]
    return torch.tensor(out, dtype=torch.float64)[:, None] * mask.ne(0).double()


def test_tlga_hand_values():
    # group 10: R = (+1, -1), lengths (4, 1): N = 5, mu = (4 - 1) / 5 = 0.6,
    #   sigma^2 = (4 * 0.4^2 + 1 * 1.6^2) / 5 = (0.64 + 2.56) / 5 = 0.64 -> sigma = 0.8
    #   A = 0.4 / 0.800001 = 0.4999994, -1.6 / 0.800001 = -1.9999975  (= +-sqrt(n_other / n_own))
    # group 3: R = (0.5, 0.0, 1.0), lengths (2, 3, 1): N = 6, mu = (1 + 0 + 1) / 6 = 1/3,
    #   sigma^2 = (2 (1/6)^2 + 3 (1/3)^2 + 1 (2/3)^2) / 6 = (1/18 + 1/3 + 4/9) / 6 = 5/36 -> sigma = sqrt(5)/6 = 0.3726780
    #   A = (1/6, -1/3, 2/3) / (0.3726780 + 1e-6) = (0.4472124, -0.8944248, 1.7888497)
    rewards = torch.tensor([1.0, 0.5, -1.0, 0.0, 1.0], dtype=torch.float64)
    group_ids = torch.tensor([10, 3, 10, 3, 3])
    mask = _mask([4, 2, 1, 3, 1])
    s3 = math.sqrt(5) / 6
    seq = torch.tensor(
        [
            0.4 / (0.8 + EPS),
            (1 / 6) / (s3 + EPS),
            -1.6 / (0.8 + EPS),
            (-1 / 3) / (s3 + EPS),
            (2 / 3) / (s3 + EPS),
        ],
        dtype=torch.float64,
    )
    want = seq[:, None] * mask.double()
    torch.testing.assert_close(tlga_advantages(rewards, group_ids, mask), want, **F64)
    got32 = tlga_advantages(rewards.float(), group_ids, mask.bool())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, want.float(), **F32)


def test_tlga_token_weighted_sum_is_zero_per_group():
    gen = torch.Generator().manual_seed(0)
    b, length = 48, 40
    rewards = torch.where(torch.rand(b, generator=gen) < 0.5, 1.0, -1.0).double()
    rewards += 0.3 * torch.rand(b, generator=gen, dtype=torch.float64)  # shaped, non-binary
    group_ids = torch.randint(0, 6, (b,), generator=gen) * 11 - 20  # 6 groups, ids -20, -9, 2, ...
    mask = _mask(torch.randint(1, length + 1, (b,), generator=gen).tolist(), length)
    adv = tlga_advantages(rewards, group_ids, mask, fallback_threshold=None)
    for g in group_ids.unique():
        rows = group_ids == g
        assert adv[rows].sum().abs().item() < 1e-9 * max(1, int(mask[rows].sum()))
        valid = mask[rows].bool()
        # population variance of the token advantages is ~1 (sigma + 1e-6 in the denominator)
        assert adv[rows][valid].pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_tlga_fallback_triggers_exactly_when_some_abs_advantage_reaches_threshold():
    # With +-1 rewards: A_correct = +sqrt(n_wrong / n_correct), A_wrong = -sqrt(n_correct / n_wrong)
    # (token counts), shrunk slightly by the +1e-6.
    # Group 0: one long correct answer (36 tokens), one short wrong (1 token): mu = 35/37, sigma = 12/37,
    #   A = (2/37) / (12/37 + 1e-6) = 0.1666661, (-72/37) / (12/37 + 1e-6) = -5.9999815  -> |A| >= 5: fallback
    #   GRPO fallback over the 2 responses: mean 0, Bessel std sqrt(2): A = +-1 / (1.4142136 + 1e-6) = +-0.7071063
    # Group 1: 16 correct tokens vs 1 wrong: mu = 15/17, sigma = 8/17,
    #   A = (2/17) / (8/17 + 1e-6) = 0.2499995, (-32/17) / (8/17 + 1e-6) = -3.9999915 -> no fallback.
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    group_ids = torch.tensor([0, 0, 1, 1])
    mask = _mask([36, 1, 16, 1], 36)
    adv = tlga_advantages(rewards, group_ids, mask)  # threshold 5.0
    fb = 1.0 / (math.sqrt(2.0) + EPS)
    assert adv[0, 0].item() == pytest.approx(fb, rel=1e-12) and adv[1, 0].item() == pytest.approx(
        -fb, rel=1e-12
    )
    assert adv[2, 0].item() == pytest.approx(0.25 / (1 + 17 * EPS / 8), rel=1e-12)
    assert adv[3, 0].item() == pytest.approx(-4.0 / (1 + 17 * EPS / 8), rel=1e-12)
    exact = 6.0 / (1 + 37 * EPS / 12)  # |A_wrong| of group 0 without fallback = 5.9999815
    # No fallback: the raw TLGA values.
    raw = tlga_advantages(rewards, group_ids, mask, fallback_threshold=None)
    assert raw[1, 0].item() == pytest.approx(-exact, rel=1e-12)
    assert raw[0, 0].item() == pytest.approx(exact / 36, rel=1e-12)
    # The boundary: |A| = 5.9999815 reaches 5.9999 but not 6.0; group 1 (max |A| = 4) never falls back.
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=5.9999)[0, 0].item() == pytest.approx(
        fb
    )
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=6.0)[0, 0].item() == pytest.approx(
        exact / 36
    )
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=3.99)[2, 0].item() == pytest.approx(
        fb
    )
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=3.9999)[2, 0].item() == pytest.approx(
        fb
    )
    # "reaches": a threshold EQUAL to the largest |A| of the group triggers the fallback
    top = float(raw[:2].abs().max())
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=top)[0, 0].item() == pytest.approx(fb)
    nxt = math.nextafter(top, math.inf)
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=nxt)[0, 0].item() == pytest.approx(
        exact / 36
    )
    assert tlga_advantages(rewards, group_ids, mask, fallback_threshold=4.0)[2, 0].item() == pytest.approx(
        0.25, rel=1e-5
    )


def test_tlga_fallback_tests_valid_tokens_only():
    # Row 2 has no valid token; its reward (-1) would give |A| = 6 on a token it does not have.
    rewards = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    group_ids = torch.tensor([0, 0, 0])
    mask = _mask([1, 1, 0], 3)
    adv = tlga_advantages(rewards, group_ids, mask, fallback_threshold=1.5)
    # valid tokens: (+1, -1): mu 0, sigma 1 -> A = +-1/(1+1e-6); max |A| = 1 < 1.5: no fallback
    torch.testing.assert_close(
        adv[:, 0], torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / (1 + EPS), **F64
    )
    assert adv[2].abs().sum().item() == 0.0


def test_tlga_zero_variance_and_singleton_groups_get_zero():
    # Group 0: all rewards 0.1 with different lengths (mu can differ from 0.1 by rounding: still exactly 0).
    # Group 1: one response. Group 2: rewards differ only on a row without valid tokens.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.7, -1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 2, 2])
    mask = _mask([3, 7, 5, 4, 6, 0], 7)
    adv = tlga_advantages(rewards, group_ids, mask)
    assert torch.count_nonzero(adv).item() == 0


def test_tlga_matches_loop_reference_and_is_permutation_invariant():
    gen = torch.Generator().manual_seed(1)
    b, length = 40, 25
    for trial in range(4):
        rewards = torch.where(torch.rand(b, generator=gen) < 0.3, 1.0, -1.0).double()
        if trial % 2:
            rewards = rewards - 0.5 * torch.rand(b, generator=gen, dtype=torch.float64)
        group_ids = torch.randint(0, 9, (b,), generator=gen) * 7 + 100
        lengths = torch.randint(0, length + 1, (b,), generator=gen)
        lengths[0] = length  # at least one long answer
        mask = _mask(lengths.tolist(), length)
        for threshold in (5.0, 2.0, None):
            got = tlga_advantages(rewards, group_ids, mask, fallback_threshold=threshold)
            torch.testing.assert_close(got, _loop_reference(rewards, group_ids, mask, threshold), **F64)
        perm = torch.randperm(b, generator=gen)
        relabel = group_ids * 3 - 5  # different id values, same partition
        got = tlga_advantages(rewards, group_ids, mask, fallback_threshold=2.0)
        torch.testing.assert_close(
            tlga_advantages(rewards[perm], relabel[perm], mask[perm], fallback_threshold=2.0),
            got[perm],
            **F64,
        )


def test_tlga_ignores_mask_padding_values_and_dtypes():
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0])
    group_ids = torch.tensor([0, 0, 1, 1])
    mask = _mask([3, 1, 2, 2], 4)
    ref = tlga_advantages(rewards, group_ids, mask)
    torch.testing.assert_close(tlga_advantages(rewards, group_ids, mask.float() * 3.0), ref, **F32)
    torch.testing.assert_close(tlga_advantages(rewards, group_ids, mask.bool()), ref, **F32)
    torch.testing.assert_close(
        ADVANTAGE_ESTIMATORS["tlga"](rewards, group_ids, mask, fallback_threshold=5.0), ref
    )
    assert not tlga_advantages(rewards.requires_grad_(True), group_ids, mask).requires_grad


def test_tlga_validation():
    r, g, m = torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(3, 4)
    with pytest.raises(ValueError, match="group_ids"):
        tlga_advantages(r, torch.zeros(4, dtype=torch.long), m)
    with pytest.raises(ValueError, match="integer"):
        tlga_advantages(r, torch.zeros(3), m)
    with pytest.raises(ValueError, match="mask"):
        tlga_advantages(r, g, torch.ones(2, 4))
    with pytest.raises(ValueError, match="fallback_threshold"):
        tlga_advantages(r, g, m, fallback_threshold=0.0)
    with pytest.raises(ValueError, match="rewards"):
        tlga_advantages(torch.ones(3, 1), g, m)


def test_released_fallback_counts_padded_positions():
    """Spec B, the released quirk: shaped rewards that do not straddle 0 (all wrong, one overlong),
    padded to L = 5. mu = (2(-1) + 4(-1.2)) / 6 = -17/15, sigma = sqrt(0.08/9) = 0.0942809;
    a padded position's A = (0 - mu) / sigma = 12.02 >= 5: the group falls back to GRPO,
    (R - mean) / Bessel std = +-0.1 / 0.1414214 = +-0.7071068. Valid tokens alone: A = 1.4142, -0.7071."""
    rewards = torch.tensor([-1.0, -1.2], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    gid = torch.tensor([0, 0])
    paper = tlga_advantages(rewards, gid, mask)
    released = tlga_advantages(rewards, gid, mask, fallback_counts_padding=True)
    sigma = math.sqrt(0.08 / 9)
    assert paper[0, 0].item() == pytest.approx((-1 + 17 / 15) / (sigma + 1e-6), rel=1e-12)
    assert paper[1, 0].item() == pytest.approx((-1.2 + 17 / 15) / (sigma + 1e-6), rel=1e-12)
    g = 0.1 / (math.sqrt(0.02) + 1e-6)
    torch.testing.assert_close(released, torch.tensor([[g, g, 0, 0, 0], [-g, -g, -g, -g, 0]], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    # no padding in the batch (L = the longest response): the quirk cannot trigger
    full = torch.ones(2, 4, dtype=torch.long)
    torch.testing.assert_close(tlga_advantages(rewards, gid, full, fallback_counts_padding=True),
                               tlga_advantages(rewards, gid, full), rtol=0, atol=0)
    # +-1 rewards: both tests agree
    pm = torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(tlga_advantages(pm, gid, mask, fallback_counts_padding=True),
                               tlga_advantages(pm, gid, mask), rtol=0, atol=0)
