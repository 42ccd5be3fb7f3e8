"""hapo_cli.algo.dapo: overlong reward shaping and the dynamic-sampling group filter."""

from __future__ import annotations

import pytest
import torch

from hapo_cli.algo import informative_groups, overlong_penalty

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)


def test_overlong_penalty_hand_values():
    # max_len 20, buffer 8: free up to 20 - 8 = 12 tokens, then -(len - 12) / 8 * factor
    #   len 5 -> 0, 12 -> 0, 13 -> -1/8, 16 -> -4/8 = -0.5, 20 -> -1
    lengths = torch.tensor([5, 12, 13, 16, 20])
    torch.testing.assert_close(
        overlong_penalty(lengths, 20, 8), torch.tensor([0.0, 0.0, -0.125, -0.5, -1.0]), **F32
    )
    # factor 0.5 halves it
    torch.testing.assert_close(
        overlong_penalty(lengths, 20, 8, factor=0.5), torch.tensor([0.0, 0.0, -0.0625, -0.25, -0.5]), **F32
    )
    # released recipe: Lmax 10240, Lb 4096: len 8192 -> -(8192 - 6144) / 4096 = -0.5; 10240 -> -1
    out = overlong_penalty(torch.tensor([6144, 8192, 10240], dtype=torch.float64), 10240, 4096)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, -1.0], dtype=torch.float64), **F64)
    assert overlong_penalty(lengths, 20, 8).dtype == torch.float32
    assert torch.all(overlong_penalty(torch.arange(0, 30), 20, 8) <= 0)


def test_overlong_penalty_validation():
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), 10, 0)
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), 10, 11)
    with pytest.raises(ValueError, match="factor"):
        overlong_penalty(torch.tensor([1]), 10, 5, factor=-1.0)


def test_informative_groups_hand_values():
    # group 5: (1, 0) mixed -> kept; group 9: (1, 1) -> dropped; group 2: (0, 0) -> dropped; group 7: singleton -> dropped
    acc = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    ids = torch.tensor([5, 9, 5, 9, 2, 2, 7])
    assert informative_groups(acc, ids).tolist() == [True, False, True, False, False, False, False]
    assert informative_groups(acc.bool(), ids).tolist() == [True, False, True, False, False, False, False]


def test_informative_groups_loop_reference_and_permutation():
    gen = torch.Generator().manual_seed(0)
    acc = (torch.rand(64, generator=gen) < 0.3).long()
    ids = torch.randint(0, 20, (64,), generator=gen) * 3 - 30
    got = informative_groups(acc, ids)
    want = [len({int(acc[j]) for j in range(64) if ids[j] == ids[i]}) > 1 for i in range(64)]
    assert got.tolist() == want
    perm = torch.randperm(64, generator=gen)
    assert informative_groups(acc[perm], ids[perm] + 7).tolist() == got[perm].tolist()


def test_informative_groups_validation():
    with pytest.raises(ValueError, match="1-D"):
        informative_groups(torch.ones(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        informative_groups(torch.ones(3), torch.zeros(3))
