"""hapo_cli.algo.aac: Asymmetric Adaptive Clipping (spec D)."""

from __future__ import annotations

import pytest
import torch

from hapo_cli.algo import adaptive_clip_bounds

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)


def test_aac_hand_values():
    h = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]], dtype=torch.float64)
    # alpha 1, base 0.2 / 0.28:
    #   eps_low  = 0.2 * (1 - h) for h <= 0: (0.4, 0.3, 0.2), then 0.2 for h > 0
    #   eps_high = 0.28 for h <= 0, then 0.28 * (1 + h): 0.42, 0.56
    lo, hi = adaptive_clip_bounds(h, 0.2, 0.28, alpha=1.0)
    torch.testing.assert_close(lo, torch.tensor([[0.4, 0.3, 0.2, 0.2, 0.2]], dtype=torch.float64), **F64)
    torch.testing.assert_close(hi, torch.tensor([[0.28, 0.28, 0.28, 0.42, 0.56]], dtype=torch.float64), **F64)
    # alpha 0.5: eps_low = 0.2 * (1.5, 1.25, 1) = (0.3, 0.25, 0.2); eps_high = 0.28 * (1.25, 1.5) = (0.35, 0.42)
    lo, hi = adaptive_clip_bounds(h.float(), 0.2, 0.28, alpha=0.5)
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, torch.tensor([[0.3, 0.25, 0.2, 0.2, 0.2]]), **F32)
    torch.testing.assert_close(hi, torch.tensor([[0.28, 0.28, 0.28, 0.35, 0.42]]), **F32)
    # alpha 0: the base bounds everywhere
    lo, hi = adaptive_clip_bounds(h, 0.2, 0.28, alpha=0.0)
    torch.testing.assert_close(lo, torch.full_like(h, 0.2), **F64)
    torch.testing.assert_close(hi, torch.full_like(h, 0.28), **F64)


def test_aac_widens_only_left_for_low_and_only_right_for_high_entropy():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(16, 64, generator=gen) * 2 - 1
    h[0, :3] = torch.tensor([0.0, -1.0, 1.0])
    lo, hi = adaptive_clip_bounds(h, 0.2, 0.2, alpha=1.0)
    low, high = h <= 0, h > 0
    assert torch.all(lo[low] >= 0.2) and torch.all(lo[low & (h < 0)] > 0.2)
    assert torch.all(hi[low] == 0.2)
    assert torch.all(hi[high] > 0.2) and torch.all(lo[high] == 0.2)
    for i in range(16):
        for t in range(0, 64, 7):
            hv = float(h[i, t])
            want_lo = 0.2 * (1 - hv) if hv <= 0 else 0.2
            want_hi = 0.2 * (1 + hv) if hv > 0 else 0.2
            assert lo[i, t].item() == pytest.approx(want_lo, rel=1e-6)
            assert hi[i, t].item() == pytest.approx(want_hi, rel=1e-6)


def test_aac_tensor_base_bounds():
    h = torch.tensor([[-0.5, 0.5]], dtype=torch.float64)
    base_lo = torch.tensor([[0.1, 0.3]], dtype=torch.float64)
    base_hi = torch.tensor([[0.2, 0.4]], dtype=torch.float64)
    lo, hi = adaptive_clip_bounds(h, base_lo, base_hi)
    # lo = (0.1 * 1.5, 0.3), hi = (0.2, 0.4 * 1.5)
    torch.testing.assert_close(lo, torch.tensor([[0.15, 0.3]], dtype=torch.float64), **F64)
    torch.testing.assert_close(hi, torch.tensor([[0.2, 0.6]], dtype=torch.float64), **F64)


def test_aac_no_grad_and_validation():
    h = torch.zeros(2, 2, requires_grad=True)
    lo, hi = adaptive_clip_bounds(h, 0.2, 0.2)
    assert not lo.requires_grad and not hi.requires_grad
    with pytest.raises(ValueError, match="alpha"):
        adaptive_clip_bounds(h, 0.2, 0.2, alpha=-1.0)
    with pytest.raises(ValueError, match="eps_low"):
        adaptive_clip_bounds(h, -0.2, 0.2)
