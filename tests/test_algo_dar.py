"""hapo_cli.algo.dar: Differential Advantage Redistribution (spec C)."""

from __future__ import annotations

import pytest
import torch

from hapo_cli.algo import adaptive_clip_bounds, redistribute_advantages

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)


def test_dar_hand_values():
    # eps 0.2 / 0.2 -> neutral zone (1 - 0.1, 1 + 0.1) = (0.9, 1.1), open; beta = 1; A = 2 unless noted.
    #        h,    r,    A  -> result
    cases = [
        (0.5, 1.00, 2.0, 2.0),  # high entropy, inside: unchanged
        (0.5, 1.20, 2.0, 3.0),  # high entropy, outside (above): amplified 2 * (1 + 0.5)
        (0.5, 0.85, 2.0, 3.0),  # high entropy, outside (below): amplified
        (0.5, 1.20, -1.0, -1.5),  # negative advantages are amplified too: -1 * 1.5
        (-0.5, 1.00, 2.0, 1.0),  # low entropy, inside: damped 2 * (1 - 0.5)
        (-0.5, 1.20, 2.0, 2.0),  # low entropy, outside: unchanged
        (-1.0, 1.05, -3.0, 0.0),  # lowest entropy, inside: damped to 0
        (0.0, 1.00, 2.0, 2.0),  # h = 0 counts as low entropy, inside: 2 * (1 + 0) = 2
        (0.5, 0.90, 2.0, 3.0),  # r exactly on the zone's edge is OUTSIDE (open interval): amplified
        (-0.5, 1.10, 2.0, 2.0),  # ... and for low entropy: unchanged
        (1.0, 1.50, 0.0, 0.0),  # A = 0 stays 0 (padding)
    ]
    h = torch.tensor([[c[0] for c in cases]], dtype=torch.float64)
    r = torch.tensor([[c[1] for c in cases]], dtype=torch.float64)
    a = torch.tensor([[c[2] for c in cases]], dtype=torch.float64)
    want = torch.tensor([[c[3] for c in cases]], dtype=torch.float64)
    torch.testing.assert_close(redistribute_advantages(a, h, r, 0.2, 0.2), want, **F64)
    # beta = 2: the amplified / damped entries use 1 + 2h: 2 * 2 = 4, 2 * 0 = 0, -1 * 2 = -2, -3 * (-1) = 3
    want2 = torch.tensor([[2.0, 4.0, 4.0, -2.0, 0.0, 2.0, 3.0, 2.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(redistribute_advantages(a, h, r, 0.2, 0.2, beta=2.0), want2, **F64)
    # beta = 0 is the identity
    torch.testing.assert_close(redistribute_advantages(a, h, r, 0.2, 0.2, beta=0.0), a, **F64)


def test_dar_damps_low_entropy_inside_and_amplifies_high_entropy_outside_only():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(8, 50, generator=gen) * 2 - 1
    r = 0.6 + 0.8 * torch.rand(8, 50, generator=gen)
    a = torch.rand(8, 50, generator=gen) + 0.1  # positive advantages
    out = redistribute_advantages(a, h, r, 0.2, 0.28)
    inside = (r > 0.9) & (r < 1.14)
    low, high = h <= 0, h > 0
    assert torch.all(out[low & inside] <= a[low & inside])  # damped (paper mode h <= 0)
    assert torch.all(out[high & ~inside] > a[high & ~inside])  # amplified
    torch.testing.assert_close(out[low & ~inside], a[low & ~inside], rtol=0, atol=0)  # untouched
    torch.testing.assert_close(out[high & inside], a[high & inside], rtol=0, atol=0)


def test_dar_per_token_bounds_and_loop_reference():
    gen = torch.Generator().manual_seed(1)
    h = torch.rand(6, 30, generator=gen, dtype=torch.float64) * 2 - 1
    r = 0.5 + torch.rand(6, 30, generator=gen, dtype=torch.float64)
    a = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    eps_l, eps_h = adaptive_clip_bounds(h, 0.2, 0.28, alpha=1.0)
    out = redistribute_advantages(a, h, r, eps_l, eps_h, beta=0.7)
    for i in range(6):
        for t in range(30):
            hv, rv, av = float(h[i, t]), float(r[i, t]), float(a[i, t])
            inside = 1 - float(eps_l[i, t]) / 2 < rv < 1 + float(eps_h[i, t]) / 2
            use = (hv > 0 and not inside) or (hv <= 0 and inside)
            want = av * (1 + 0.7 * hv) if use else av
            assert out[i, t].item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_dar_reference_mode_amplifies_both_tails():
    # In "reference" mode h >= 0, so a very low-entropy token (h ~ +1) is AMPLIFIED when r leaves the zone,
    # where paper mode (h ~ -1) would leave it unchanged.
    a = torch.tensor([[1.0]])
    r = torch.tensor([[1.3]])
    assert redistribute_advantages(a, torch.tensor([[0.9]]), r, 0.2, 0.2).item() == pytest.approx(1.9)
    assert redistribute_advantages(a, torch.tensor([[-0.9]]), r, 0.2, 0.2).item() == pytest.approx(1.0)


def test_dar_no_grad_and_dtype():
    a = torch.randn(2, 3, requires_grad=True)
    out = redistribute_advantages(a, torch.zeros(2, 3), torch.ones(2, 3), 0.2, 0.2)
    assert not out.requires_grad and out.dtype == torch.float32
    torch.testing.assert_close(out, a.detach(), **F32)  # h = 0, inside: 1 + 0 = identity


def test_dar_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        redistribute_advantages(x, torch.zeros(2, 4), x, 0.2, 0.2)
    with pytest.raises(ValueError, match="beta"):
        redistribute_advantages(x, x, x, 0.2, 0.2, beta=-1.0)
