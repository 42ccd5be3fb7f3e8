"""hapo_cli.algo.advantages: the GRPO / Dr.GRPO baseline advantage and the estimator registry."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from hapo_cli.algo import ADVANTAGE_ESTIMATORS, get_advantage_estimator, grpo_advantages, tlga_advantages

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)
EPS = 1e-6


def _mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_grpo_hand_values():
    # group 7 (rows 0, 2, 3, 5): R = (1, 0, 0, 0): mean 0.25, centred (0.75, -0.25, -0.25, -0.25),
    #   Bessel var = (0.5625 + 3 * 0.0625) / 3 = 0.25 -> std 0.5: A = (1.4999970, -0.4999990, ...)
    # group -3 (rows 1, 4): R = (1, -1): mean 0, std = sqrt(2): A = +-1 / (1.4142136 + 1e-6) = +-0.7071063
    # group 42 (row 6): a single response: A = 0
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, 0.0, 5.0], dtype=torch.float64)
    group_ids = torch.tensor([7, -3, 7, 7, -3, 7, 42])
    mask = _mask([2, 3, 1, 3, 0, 2, 3], 3)
    r2 = 1.0 / (math.sqrt(2.0) + EPS)
    seq = torch.tensor(
        [0.75 / (0.5 + EPS), r2, -0.25 / (0.5 + EPS), -0.25 / (0.5 + EPS), -r2, -0.25 / (0.5 + EPS), 0.0],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grpo_advantages(rewards, group_ids, mask), seq[:, None] * mask.double(), **F64)
    # Dr.GRPO (norm_by_std=False): just the centred rewards (0.75, 1, -0.25, -0.25, -1, -0.25, 0)
    dr = torch.tensor([0.75, 1.0, -0.25, -0.25, -1.0, -0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        grpo_advantages(rewards, group_ids, mask, norm_by_std=False), dr[:, None] * mask.double(), **F64
    )
    got32 = grpo_advantages(rewards.float(), group_ids, mask.bool())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, (seq[:, None] * mask.double()).float(), **F32)


def test_grpo_constant_group_is_exactly_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3])
    adv = grpo_advantages(rewards, torch.tensor([1, 1, 1, 2, 2]), torch.ones(5, 4))
    assert torch.count_nonzero(adv).item() == 0


def test_grpo_matches_loop_reference_and_is_permutation_invariant():
    gen = torch.Generator().manual_seed(0)
    b, length = 37, 11
    rewards = torch.randn(b, generator=gen, dtype=torch.float64)
    group_ids = torch.randint(0, 8, (b,), generator=gen) * 5 - 17
    mask = _mask(torch.randint(0, length + 1, (b,), generator=gen).tolist(), length)
    for norm in (True, False):
        want = torch.zeros(b, dtype=torch.float64)
        for g in set(group_ids.tolist()):
            rows = [i for i in range(b) if int(group_ids[i]) == g]
            vals = [float(rewards[i]) for i in rows]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            for i in rows:
                if len(vals) > 1:
                    want[i] = (float(rewards[i]) - mean) / (std + EPS) if norm else float(rewards[i]) - mean
        got = grpo_advantages(rewards, group_ids, mask, norm_by_std=norm)
        torch.testing.assert_close(got, want[:, None] * mask.double(), **F64)
        perm = torch.randperm(b, generator=gen)
        torch.testing.assert_close(
            grpo_advantages(rewards[perm], group_ids[perm] + 1000, mask[perm], norm_by_std=norm),
            got[perm],
            **F64,
        )


def test_registry_has_one_signature():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "tlga"}
    assert ADVANTAGE_ESTIMATORS["grpo"] is grpo_advantages and ADVANTAGE_ESTIMATORS["tlga"] is tlga_advantages
    for fn in ADVANTAGE_ESTIMATORS.values():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["rewards", "group_ids", "mask"]
        assert all(p.default is not inspect.Parameter.empty for p in params[3:])  # options only
    rewards = torch.tensor([1.0, -1.0, 1.0, 1.0])
    group_ids = torch.tensor([0, 0, 1, 1])
    mask = torch.ones(4, 3)
    for name, opts in (("grpo", {"norm_by_std": False}), ("tlga", {"fallback_threshold": None})):
        out = get_advantage_estimator(name)(rewards, group_ids, mask, **opts)
        assert out.shape == (4, 3)
    # equal lengths: TLGA population std vs GRPO Bessel std of (+1, -1): 1 vs sqrt(2)
    tl = get_advantage_estimator("tlga")(rewards, group_ids, mask)
    torch.testing.assert_close(tl[:2, 0], torch.tensor([1.0, -1.0]) / (1 + EPS), **F32)
    with pytest.raises(ValueError, match="valid: grpo, tlga"):
        get_advantage_estimator("ppo")
    with pytest.raises(TypeError):
        ADVANTAGE_ESTIMATORS["grpo"](rewards, group_ids, mask, fallback_threshold=5.0)


def test_grpo_validation():
    with pytest.raises(ValueError, match="shape"):
        grpo_advantages(torch.ones(3), torch.zeros(2, dtype=torch.long), torch.ones(3, 2))
    with pytest.raises(ValueError, match="mask"):
        grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(3))
