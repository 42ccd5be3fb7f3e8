"""ATS row logic used by the vLLM logits processors (hapo_cli.rollout.ats_logic), without vLLM.

The factor must be `1 + tau * h` with h from `hapo_cli.algo` (so `factor * T_base` equals
`adaptive_temperature(logits, T_base, ...)` bit for bit), rows without ATS and greedy requests
must be untouched (bit-identical), and the grouping of rows must not change any result.
"""

from __future__ import annotations

import math

import pytest
import torch

from hapo_cli.algo import EntropyStats, adaptive_temperature, entropy_stats, token_entropy
from hapo_cli.rollout.ats_logic import (
    ATS_EXTRA_ARGS_KEY,
    ATSRowParams,
    ATSScaler,
    apply_ats,
    ats_extra_args,
    ats_row_id,
    request_ats_params,
)
from hapo_cli.rollout.base import ATSParams

STATS_A = {"q": 0.1, "s": 0.9, "z_max": 1.7, "z_min": -2.3}
STATS_B = {"q": -0.4, "s": 1.3, "z_max": 0.8, "z_min": -1.1}


def _logits(n: int = 12, v: int = 50, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rows of very different sharpness, so h spans negative and positive values
    scale = torch.linspace(0.2, 6.0, n).unsqueeze(-1)
    return torch.randn(n, v, generator=g) * scale


def _h_by_hand(row: torch.Tensor, st: dict, mode: str) -> float:
    """Spec 0 step 5 in float64 straight from the formula (independent of hapo_cli.algo)."""
    p = torch.softmax(row.double(), -1)
    H = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    z = (math.log(max(H, 1e-8)) - st["q"]) / st["s"]
    if z > 0:
        h = z / st["z_max"]
    else:
        h = z / abs(st["z_min"]) if mode == "paper" else z / st["z_min"]
    return max(-1.0, min(1.0, h))


@pytest.mark.parametrize("mode", ["paper", "reference"])
@pytest.mark.parametrize("t_base", [1.0, 0.7])
def test_factor_times_base_is_adaptive_temperature_exactly(mode, t_base):
    logits = _logits()
    p = ATSRowParams.from_stats(STATS_A, tau=0.05, mode=mode)
    scaled, factor = apply_ats(logits, [p] * logits.shape[0])
    T = adaptive_temperature(logits, t_base, EntropyStats.from_dict(STATS_A), 0.05, mode=mode)
    assert torch.equal(factor * t_base, T)
    assert torch.equal(scaled, logits / factor.unsqueeze(-1))
    # and the numbers are the spec's: h by hand, tight tolerance
    for i in range(logits.shape[0]):
        assert factor[i].item() == pytest.approx(1.0 + 0.05 * _h_by_hand(logits[i], STATS_A, mode), abs=2e-6)


def test_h_spans_both_signs_and_is_clamped():
    logits = _logits(n=40, v=64)
    p = ATSRowParams.from_stats(STATS_A, tau=0.5)
    _, factor = apply_ats(logits, [p] * 40)
    h = (factor - 1.0) / 0.5
    assert h.min() < -0.1 and h.max() > 0.1
    assert h.min() >= -1.0 - 1e-6 and h.max() <= 1.0 + 1e-6
    # uniform row: H = ln V, far above the pivot -> h clamped to 1 -> factor = 1 + tau
    uni = torch.zeros(1, 64)
    stats = {"q": 0.0, "s": 1.0, "z_max": 0.5, "z_min": -2.0}
    _, f = apply_ats(uni, [ATSRowParams.from_stats(stats, tau=0.05)])
    assert f.item() == pytest.approx(1.05, abs=1e-7)


def test_untouched_rows_are_bit_identical_and_mixed_groups_match_algo():
    logits = _logits(n=10)
    pa = ATSRowParams.from_stats(STATS_A, tau=0.05, mode="paper")
    pb = ATSRowParams.from_stats(STATS_B, tau=0.1, mode="reference")
    rows = [pa, None, pb, pa, None, None, pb, pa, None, pb]
    original = logits.clone()
    scaled, factor = apply_ats(logits, rows)
    assert torch.equal(logits, original)  # not in place by default
    TA = adaptive_temperature(logits, 0.6, EntropyStats.from_dict(STATS_A), 0.05, mode="paper")
    TB = adaptive_temperature(logits, 0.6, EntropyStats.from_dict(STATS_B), 0.1, mode="reference")
    for i, p in enumerate(rows):
        if p is None:
            assert torch.equal(scaled[i], original[i])
            assert factor[i].item() == 1.0
        else:
            T = TA if p is pa else TB
            assert torch.equal(factor[i] * 0.6, T[i])
            assert torch.equal(scaled[i], original[i] / factor[i])


def test_grouped_equals_row_by_row_and_order_does_not_matter():
    logits = _logits(n=9, seed=3)
    pa = ATSRowParams.from_stats(STATS_A)
    pb = ATSRowParams.from_stats(STATS_B, tau=0.2)
    rows = [pa, pb, None, pa, pb, pb, None, pa, pa]
    _, factor = apply_ats(logits, rows)
    for i, p in enumerate(rows):
        _, f1 = apply_ats(logits[i : i + 1], [p])
        assert torch.equal(f1[0], factor[i])
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    _, fp = apply_ats(logits[perm], [rows[j] for j in perm.tolist()])
    assert torch.equal(fp, factor[perm])


def test_inplace_and_no_ats_rows():
    logits = _logits(n=4)
    ref = logits.clone()
    out, f = ATSScaler().apply(logits, [None] * 4, inplace=True)
    assert out is logits and torch.equal(out, ref) and torch.equal(f, torch.ones(4))
    p = ATSRowParams.from_stats(STATS_A)
    out, f = ATSScaler().apply(logits, [p, None, p, None], inplace=True)
    assert out is logits
    assert torch.equal(logits[1], ref[1]) and torch.equal(logits[3], ref[3])
    assert not torch.equal(logits[0], ref[0])


def test_greedy_and_missing_entries_are_untouched():
    extra = ats_extra_args(ATSParams(stats=STATS_A, tau=0.05, mode="paper"), row_id="c0:3")
    assert request_ats_params(0.0, extra) is None  # greedy
    assert request_ats_params(1e-6, extra) is None  # below vLLM's sampling epsilon
    assert request_ats_params(0.7, None) is None
    assert request_ats_params(0.7, {"other": 1}) is None
    assert request_ats_params(0.7, {ATS_EXTRA_ARGS_KEY: None}) is None
    p = request_ats_params(0.7, extra)
    assert p == ATSRowParams.from_stats(STATS_A, tau=0.05, mode="paper")
    assert ats_row_id(extra) == "c0:3"
    assert ats_extra_args(None) is None
    # round trip through the plain-dict form (what crosses process boundaries)
    assert ATSRowParams.from_extra_args(p.to_extra_args("x")) == p


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"tau": 0.05}, "needs 'stats'"),
        ({"stats": {"q": 0.0, "s": 1.0, "z_max": 1.0}}, "missing"),
        ({"stats": {**STATS_A, "s": 0.0}}, "s must be > 0"),
        ({"stats": {**STATS_A, "z_min": 0.5}}, "z_min must be < 0"),
        ({"stats": {**STATS_A, "q": float("nan")}}, "finite"),
        ({"stats": STATS_A, "tau": 1.0}, "tau must be in"),
        ({"stats": STATS_A, "mode": "bogus"}, "unknown mode"),
        ({"stats": STATS_A, "temperature": 2}, "unknown keys"),
        ("not a dict", "must be a mapping"),
    ],
)
def test_malformed_entries_raise_one_clear_error(entry, match):
    with pytest.raises(ValueError, match=match):
        request_ats_params(1.0, {ATS_EXTRA_ARGS_KEY: entry})
    with pytest.raises(ValueError, match=match):  # also for greedy requests: never silently accepted
        request_ats_params(0.0, {ATS_EXTRA_ARGS_KEY: entry})


def test_stats_of_a_real_batch_feed_the_sampler():
    """EntropyStats from one batch (as the trainer computes them) drive the next batch's factors."""
    prev = _logits(n=64, v=40, seed=5)
    H = token_entropy(prev).reshape(8, 8)
    stats = entropy_stats(H, torch.ones(8, 8), pivot=0.8)
    p = ATSRowParams.from_stats(stats, tau=0.05)  # accepts an EntropyStats directly
    assert p == ATSRowParams.from_stats(stats.as_dict(), tau=0.05)
    new = _logits(n=16, v=40, seed=6)
    _, factor = apply_ats(new, [p] * 16)
    assert torch.equal(factor * 1.0, adaptive_temperature(new, 1.0, stats, 0.05))
    assert ((factor >= 0.95 - 1e-6) & (factor <= 1.05 + 1e-6)).all()


def test_float64_and_bfloat16_logits():
    p = ATSRowParams.from_stats(STATS_A)
    l64 = _logits(n=5).double()
    out, f = apply_ats(l64, [p] * 5)
    assert out.dtype == torch.float64 and f.dtype == torch.float32
    lb = _logits(n=5).bfloat16()
    out, f = apply_ats(lb, [p, None, p, None, p])
    assert out.dtype == torch.bfloat16 and torch.equal(out[1], lb[1])


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        apply_ats(torch.zeros(3), [None, None, None])
    with pytest.raises(ValueError, match="row parameters"):
        apply_ats(torch.zeros(3, 4), [None])


def test_seeded_generate_leaves_the_global_rng_alone(tiny_model_dir):
    """The HF engine seeds a forked RNG: the caller's global torch RNG state is unchanged, and the same
    seed still gives the same samples."""
    from hapo_cli.models import load_model_and_tokenizer
    from hapo_cli.rollout.base import SamplingParams
    from hapo_cli.rollout.hf import HFRolloutEngine

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    engine = HFRolloutEngine(model.eval(), tok)
    prompts = [tok("12+34=", add_special_tokens=False)["input_ids"]]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=4, seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    b = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=4, seed=7))
    assert torch.equal(a.response_ids, b.response_ids)
