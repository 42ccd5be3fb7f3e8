"""hapo_cli.algo.ats: Adaptive Temperature Sampling, T = T_base * (1 + tau * h) (spec A)."""

from __future__ import annotations

import math

import pytest
import torch

from hapo_cli.algo import EntropyStats, adaptive_temperature, normalize_entropy, token_entropy

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)
NEG = float("-inf")
LN2 = math.log(2.0)

# q = log(ln 2), s = 1, z_max = ln 2, z_min = -1:  z = log(H) - log(ln 2)
STATS = {"q": math.log(LN2), "s": 1.0, "z_max": LN2, "z_min": -1.0}


def _logits(dtype=torch.float32):
    return torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # H = ln 4: z = log(2 ln 2) - log(ln 2) = ln 2 -> h = z / z_max = 1
            [0.0, 0.0, NEG, NEG],  # H = ln 2: z = 0 -> h = 0
            # H = 0 -> 1e-8: z = -18.4207 + 0.3665 = -18.0542 -> paper h = -1 (clamped), reference +1
            [5.0, NEG, NEG, NEG],
            [0.0, math.log(3.0), NEG, NEG],  # H = 0.5623351 -> z = log(0.5623351) + 0.3665129 = -0.2091443
        ],
        dtype=dtype,
    )


def test_adaptive_temperature_hand_values_paper_and_reference():
    z3 = math.log(0.5623351446188083) - math.log(LN2)  # -0.20914434351035943
    tau = 0.1
    # paper:     T = 1 + 0.1 * (1, 0, -1, z3 / |z_min| = -0.2091443) = (1.1, 1.0, 0.9, 0.9790856)
    # reference: T = 1 + 0.1 * (1, 0, +1, z3 / z_min = +0.2091443) = (1.1, 1.0, 1.1, 1.0209144)
    paper = torch.tensor([1.1, 1.0, 0.9, 1.0 + tau * z3], dtype=torch.float64)
    ref = torch.tensor([1.1, 1.0, 1.1, 1.0 - tau * z3], dtype=torch.float64)
    st64 = EntropyStats.from_dict(STATS, dtype=torch.float64)
    logits64 = _logits(torch.float64)
    logits64[3, 1] = math.log(3.0)
    torch.testing.assert_close(adaptive_temperature(logits64, 1.0, st64, tau), paper, **F64)
    torch.testing.assert_close(adaptive_temperature(logits64, 1.0, st64, tau, mode="reference"), ref, **F64)
    st32 = EntropyStats.from_dict(STATS)
    t32 = adaptive_temperature(_logits(), 0.7, st32, tau)
    assert t32.dtype == torch.float32 and t32.shape == (4,)
    torch.testing.assert_close(t32, (0.7 * paper).float(), **F32)


def test_adaptive_temperature_per_row_base_and_bf16_logits():
    st = EntropyStats.from_dict(STATS)
    base = torch.tensor([1.0, 0.5, 2.0, 1.0])
    t = adaptive_temperature(_logits().bfloat16(), base, st, 0.05)
    # rows 0-2 are exact in bf16: 1.0 * 1.05, 0.5 * 1.0, 2.0 * 0.95; row 3 has ln 3 rounded to bf16
    torch.testing.assert_close(t[:3], torch.tensor([1.05, 0.5, 1.9]), **F32)
    assert t.dtype == torch.float32


def test_adaptive_temperature_uses_raw_logits_and_matches_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 13, generator=gen, dtype=torch.float64) * 2
    st = EntropyStats.from_dict({"q": 0.5, "s": 0.7, "z_max": 1.5, "z_min": -2.5}, dtype=torch.float64)
    tau, base = 0.05, 0.8
    for mode in ("paper", "reference"):
        t = adaptive_temperature(logits, base, st, tau, mode=mode)
        for i in range(9):
            p = [math.exp(v) for v in logits[i].tolist()]
            total = sum(p)
            ent = -sum(pi / total * math.log(pi / total) for pi in p)  # entropy of softmax(raw logits)
            z = (math.log(max(ent, 1e-8)) - 0.5) / 0.7
            h = z / 1.5 if z > 0 else (z / 2.5 if mode == "paper" else z / -2.5)
            want = base * (1 + tau * max(-1.0, min(1.0, h)))
            assert t[i].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
        # ... i.e. normalize_entropy of token_entropy(logits), not of logits / base
        torch.testing.assert_close(
            t, base * (1 + tau * normalize_entropy(token_entropy(logits), st, mode=mode)), **F64
        )


def test_adaptive_temperature_without_stats_is_base():
    logits = torch.randn(3, 5)
    torch.testing.assert_close(adaptive_temperature(logits, 0.6, None, 0.05), torch.full((3,), 0.6), **F32)
    base = torch.tensor([0.5, 1.0, 1.5])
    out = adaptive_temperature(logits, base, None, 0.05)
    torch.testing.assert_close(out, base, **F32)
    assert out.data_ptr() != base.data_ptr()


def test_adaptive_temperature_tau_zero_and_no_grad():
    logits = torch.randn(4, 6, requires_grad=True)
    st = EntropyStats.from_dict(STATS)
    out = adaptive_temperature(logits, 1.0, st, 0.0)
    torch.testing.assert_close(out, torch.ones(4), **F32)
    assert not adaptive_temperature(logits, 1.0, st, 0.05).requires_grad


def test_adaptive_temperature_validation():
    st = EntropyStats.from_dict(STATS)
    with pytest.raises(ValueError, match="tau"):
        adaptive_temperature(torch.randn(2, 3), 1.0, st, 1.0)
    with pytest.raises(ValueError, match="tau"):
        adaptive_temperature(torch.randn(2, 3), 1.0, st, -0.1)
    with pytest.raises(ValueError, match="unknown mode"):
        adaptive_temperature(torch.randn(2, 3), 1.0, st, 0.05, mode="v")
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        adaptive_temperature(torch.randn(2, 3, 4), 1.0, st, 0.05)
    with pytest.raises(ValueError, match="base_temperature"):
        adaptive_temperature(torch.randn(2, 3), torch.ones(3), st, 0.05)
    with pytest.raises(ValueError, match="base_temperature"):
        adaptive_temperature(torch.randn(2, 3), 0.0, st, 0.05)
