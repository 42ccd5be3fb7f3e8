"""hapo_cli.algo.entropy: token entropy / log-probs (chunked) and spec 0 (EntropyStats, h)."""

from __future__ import annotations

import math

import pytest
import torch

from hapo_cli.algo import (
    EntropyStats,
    entropy_stats,
    normalize_batch_entropy,
    normalize_entropy,
    token_entropy,
    token_logprobs,
)

F32 = dict(rtol=1e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)
LN3 = math.log(3.0)


# ----------------------------------------------------------------------------- token_entropy


def test_token_entropy_hand_values():
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: H = ln 4 = 1.3862943611198906
            [0.0, LN3, float("-inf"), float("-inf")],  # p = (1/4, 3/4): H = 0.25 ln 4 + 0.75 ln(4/3)
            [5.0, float("-inf"), float("-inf"), float("-inf")],  # one-hot: H = 0 (no NaN from 0 * -inf)
            [1.0, 1.0, float("-inf"), float("-inf")],  # two equal: H = ln 2
        ]
    )
    # 0.25 * 1.3862943611 + 0.75 * 0.2876820725 = 0.3465735903 + 0.2157615543 = 0.5623351446
    expected = torch.tensor([math.log(4), 0.5623351446188083, 0.0, math.log(2)], dtype=torch.float64)
    for chunk in (None, 1, 3):
        torch.testing.assert_close(token_entropy(logits, chunk_size=chunk), expected.float(), **F32)
    assert token_entropy(logits).dtype == torch.float32
    logits64 = logits.double()
    logits64[1, 1] = LN3  # exact float64 ln 3
    torch.testing.assert_close(token_entropy(logits64), expected, **F64)


def test_token_entropy_gradient_hand_value():
    # dH/dx_k = -p_k (log p_k + H); p = (1/4, 3/4), log p = (-1.386294, -0.287682), H = 0.562335:
    # dH/dx_0 = -0.25 * (-1.386294 + 0.562335) = 0.205990, dH/dx_1 = -0.75 * (-0.287682 + 0.562335) = -0.205990
    x = torch.tensor([[0.0, LN3]], dtype=torch.float64, requires_grad=True)
    token_entropy(x).sum().backward()
    torch.testing.assert_close(
        x.grad, torch.tensor([[0.20598980412527057, -0.20598980412527054]], dtype=torch.float64), **F64
    )


def test_token_entropy_and_logprobs_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (3, 4))
    assert torch.autograd.gradcheck(lambda t: token_entropy(t, chunk_size=5), (x,))
    assert torch.autograd.gradcheck(lambda t: token_logprobs(t, labels, chunk_size=5), (x,))


def test_token_logprobs_hand_values_and_gradient():
    # p = softmax(0, ln 3) = (1/4, 3/4): log p(1) = ln 0.75 = -0.2876820725, log p(0) = ln 0.25 = -1.3862943611
    x = torch.tensor([[0.0, LN3], [0.0, LN3]], requires_grad=True)
    lp = token_logprobs(x, torch.tensor([1, 0]))
    torch.testing.assert_close(lp, torch.tensor([math.log(0.75), math.log(0.25)]), **F32)
    # d log p(y) / dx = onehot(y) - p: row 0 -> (-0.25, 0.25), row 1 -> (0.75, -0.75)
    lp.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[-0.25, 0.25], [0.75, -0.75]]), **F32)


def _naive_f64(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-by-row float64 reference (log_softmax), a few rows at a time to keep memory modest."""
    flat = logits.reshape(-1, logits.shape[-1])
    lab = labels.reshape(-1)
    ents, lps = [], []
    for i in range(0, flat.shape[0], 16):
        lsm = torch.log_softmax(flat[i : i + 16].double(), dim=-1)
        ents.append(-(lsm.exp() * lsm).sum(-1))
        lps.append(lsm.gather(-1, lab[i : i + 16, None]).squeeze(-1))
    return torch.cat(ents).view(labels.shape), torch.cat(lps).view(labels.shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_vocabulary_matches_float64(dtype):
    # Qwen-size vocabulary: [2, 64, 151_936]; chunked float32 per chunk vs the naive float64 result.
    torch.manual_seed(1)
    logits = (torch.randn(2, 64, 151_936) * 3.0).to(dtype)
    labels = torch.randint(0, 151_936, (2, 64))
    ref_h, ref_lp = _naive_f64(logits, labels)
    h = token_entropy(logits)
    lp = token_logprobs(logits, labels)
    assert h.shape == (2, 64) and h.dtype == torch.float32 and lp.dtype == torch.float32
    # float32 accumulation over 151,936 terms: relative error ~1e-6 on H ~ 9.4 nats
    torch.testing.assert_close(h.double(), ref_h, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=2e-6, atol=1e-5)


def test_large_vocabulary_backward_bf16_matches_float64():
    torch.manual_seed(2)
    logits = (torch.randn(1, 8, 151_936) * 3.0).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 151_936, (1, 8))
    w = torch.randn(1, 8)
    (token_logprobs(logits, labels) * w).sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = logits.detach().double().requires_grad_(True)
    (torch.log_softmax(ref, -1).gather(-1, labels[..., None]).squeeze(-1) * w.double()).sum().backward()
    # the gradient is written in bf16: unit roundoff 2^-8 = 3.9e-3 relative, so 1e-2 is about 2.5 roundoffs
    torch.testing.assert_close(logits.grad.double(), ref.grad, rtol=1e-2, atol=1e-7)


def test_chunking_and_non_contiguous_input():
    torch.manual_seed(3)
    base = torch.randn(3, 6, 11, dtype=torch.float64)
    sliced = base[:, :-1]  # [3, 5, 11], rows not flattenable as a view
    assert not sliced.is_contiguous()
    labels = torch.randint(0, 11, (3, 5))
    ref_h, ref_lp = _naive_f64(sliced.contiguous(), labels)
    for chunk in (None, 1, 2, 7, 100):
        torch.testing.assert_close(token_entropy(sliced, chunk_size=chunk), ref_h, **F64)
        torch.testing.assert_close(token_logprobs(sliced, labels, chunk_size=chunk), ref_lp, **F64)
    x = sliced.clone().requires_grad_(True)
    y = base[:, :-1].clone().requires_grad_(True)
    token_entropy(x, chunk_size=4).sum().backward()
    (-(torch.softmax(y, -1) * torch.log_softmax(y, -1)).sum(-1)).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, **F64)


def test_token_entropy_validation():
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(torch.zeros(2, 3), chunk_size=0)
    with pytest.raises(ValueError, match="floating"):
        token_entropy(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape mismatch"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- entropy_stats


def _stats_batch(dtype=torch.float32):
    """Valid log-entropies x = 0, 1, 2, 3, 4 (H = e^x) spread over two rows, plus masked garbage."""
    x = torch.tensor([[0.0, 1.0, 2.0, 123.0], [3.0, 4.0, -50.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return x.exp().to(dtype), mask


def test_entropy_stats_hand_values():
    # Valid x = [0, 1, 2, 3, 4], n = 5, pivot 0.8: rank round(0.8 * 4) = round(3.2) = 3 -> Q = 3.
    # d = x - Q = [-3, -2, -1, 0, 1]; mean d^2 = (9 + 4 + 1 + 0 + 1) / 5 = 3 -> s = sqrt(3) = 1.7320508
    # z_max = 1 / sqrt(3) = 0.5773503, z_min = -3 / sqrt(3) = -1.7320508
    for dtype, tol in ((torch.float32, F32), (torch.float64, F64)):
        entropy, mask = _stats_batch(dtype)
        st = entropy_stats(entropy, mask, pivot=0.8)
        assert isinstance(st, EntropyStats) and all(t.dim() == 0 and t.dtype == dtype for t in st)
        expected = (3.0, math.sqrt(3.0), 1.0 / math.sqrt(3.0), -3.0 / math.sqrt(3.0))
        for got, want in zip(st, expected):
            torch.testing.assert_close(got, torch.tensor(want, dtype=dtype), **tol)


def test_entropy_stats_pivot_is_nearest_rank():
    # Sorted valid entropies [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] (n = 6), given shuffled.
    # pivot 0.5 -> rank 0.5 * 5 = 2.5 -> round half to even = 2 -> 0.3 (linear interpolation would give 0.35)
    # pivot 0.8 -> 4.0 -> 0.5; pivot 0.7 -> 3.5 -> 4 -> 0.5; pivot 0.9 -> 4.5 -> 4 -> 0.5; pivot 0.95 -> 4.75 -> 5 -> 0.6
    # pivot 0.0 -> 0.1; pivot 1.0 -> 0.6
    vals = torch.tensor([[0.4, 0.1, 0.6, 9.0], [0.3, 0.5, 0.2, 8.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    for pivot, want in ((0.5, 0.3), (0.8, 0.5), (0.7, 0.5), (0.9, 0.5), (0.95, 0.6), (0.0, 0.1), (1.0, 0.6)):
        q = entropy_stats(vals, mask, pivot=pivot).q
        torch.testing.assert_close(q, torch.tensor(math.log(want), dtype=torch.float64), **F64)


def test_entropy_stats_quantile_equals_torch_quantile_nearest():
    gen = torch.Generator().manual_seed(4)
    for trial in range(60):
        dtype = torch.float64 if trial % 2 else torch.float32
        b, length = (
            int(torch.randint(1, 6, (1,), generator=gen)),
            int(torch.randint(1, 40, (1,), generator=gen)),
        )
        ent = torch.rand(b, length, generator=gen, dtype=dtype) ** 3 * 3
        if trial % 3 == 0:
            ent = torch.round(ent * 4) / 4  # ties and exact zeros (clamped to 1e-8)
        mask = torch.rand(b, length, generator=gen) < 0.7
        if not mask.any():
            continue
        pivot = float(torch.rand(1, generator=gen)) if trial % 4 else 0.8
        x = torch.log(ent.clamp_min(1e-8))[mask]
        want = torch.quantile(x, pivot, interpolation="nearest")
        got = entropy_stats(ent, mask, pivot=pivot).q
        assert got.item() == want.item(), (trial, got, want)


def test_entropy_stats_loop_reference_on_random_input():
    gen = torch.Generator().manual_seed(5)
    ent = torch.rand(7, 33, generator=gen, dtype=torch.float64) ** 2 * 4
    mask = torch.rand(7, 33, generator=gen) < 0.6
    xs = sorted(math.log(max(float(ent[i, t]), 1e-8)) for i in range(7) for t in range(33) if mask[i, t])
    n = len(xs)
    q = xs[round(0.8 * (n - 1))]
    s = math.sqrt(sum((x - q) ** 2 for x in xs) / n)
    z = [(x - q) / s for x in xs]
    st = entropy_stats(ent, mask)
    torch.testing.assert_close(st.q, torch.tensor(q, dtype=torch.float64), **F64)
    torch.testing.assert_close(st.s, torch.tensor(s, dtype=torch.float64), **F64)
    torch.testing.assert_close(st.z_max, torch.tensor(max(z), dtype=torch.float64), **F64)
    torch.testing.assert_close(st.z_min, torch.tensor(min(z), dtype=torch.float64), **F64)


def test_entropy_stats_mask_dtypes_masked_values_and_order_do_not_matter():
    gen = torch.Generator().manual_seed(6)
    ent = torch.rand(4, 16, generator=gen) * 2
    mask = torch.rand(4, 16, generator=gen) < 0.5
    ref = entropy_stats(ent, mask)
    garbage = torch.where(mask, ent, torch.rand(4, 16, generator=gen) * 1e3)
    perm = torch.randperm(64, generator=gen)
    for e, m in (
        (ent, mask.long()),
        (ent, mask.float()),
        (garbage, mask),
        (ent.reshape(-1)[perm].view(4, 16), mask.reshape(-1)[perm].view(4, 16)),
        (ent.reshape(8, 8), mask.reshape(8, 8)),
    ):
        got = entropy_stats(e, m)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **F32)


def test_entropy_stats_clamps_and_degenerate_cases():
    # All valid entropies equal: d = 0 everywhere -> s clamped to 1e-8, z_max = 1e-8, z_min = -1e-8.
    st = entropy_stats(torch.full((2, 3), 0.5), torch.ones(2, 3))
    torch.testing.assert_close(st.q, torch.tensor(math.log(0.5)), **F32)
    assert st.s.item() == pytest.approx(1e-8) and st.z_max.item() == pytest.approx(1e-8)
    assert st.z_min.item() == pytest.approx(-1e-8)
    # Zero entropy is floored at 1e-8 before the log: log(1e-8) = -18.420681
    st = entropy_stats(torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), pivot=0.0)
    torch.testing.assert_close(st.q, torch.tensor(math.log(1e-8)), **F32)
    # No valid token: neutral stats.
    st = entropy_stats(torch.rand(2, 3), torch.zeros(2, 3))
    assert st.as_dict() == pytest.approx({"q": 0.0, "s": 1.0, "z_max": 1e-8, "z_min": -1e-8})


def test_entropy_stats_validation():
    with pytest.raises(ValueError, match="shape mismatch"):
        entropy_stats(torch.rand(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="pivot"):
        entropy_stats(torch.rand(2, 3), torch.ones(2, 3), pivot=1.5)


def test_entropy_stats_round_trip():
    entropy, mask = _stats_batch()
    st = entropy_stats(entropy, mask)
    d = st.as_dict()
    assert set(d) == {"q", "s", "z_max", "z_min"} and all(type(v) is float for v in d.values())
    back = EntropyStats.from_dict(d)
    for a, b in zip(back, st):
        assert a.dtype == torch.float32 and a.dim() == 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    back64 = EntropyStats.from_dict(d, device="cpu", dtype=torch.float64)
    assert back64.q.dtype == torch.float64 and back64.q.item() == d["q"]
    moved = st.to("cpu")
    assert isinstance(moved, EntropyStats) and moved.s.device.type == "cpu"
    with pytest.raises(ValueError, match="missing keys"):
        EntropyStats.from_dict({"q": 0.0, "s": 1.0})
    with pytest.raises(ValueError, match="finite"):
        EntropyStats.from_dict({"q": 0.0, "s": float("nan"), "z_max": 1.0, "z_min": -1.0})


# ----------------------------------------------------------------------------- normalize_entropy


def test_normalize_entropy_hand_values_both_modes():
    # Same batch: Q = 3, z = d / sqrt(3), z_max = 1/sqrt(3), z_min = -3/sqrt(3).
    # paper:     x=0 -> -3/3 = -1, x=1 -> -2/3, x=2 -> -1/3, x=3 -> 0, x=4 -> z/z_max = 1
    # reference: x=0 -> z/z_min = +1, x=1 -> 2/3, x=2 -> 1/3, x=3 -> 0, x=4 -> 1 (V shape)
    entropy, mask = _stats_batch(torch.float64)
    st = entropy_stats(entropy, mask)
    paper = torch.tensor([[-1.0, -2 / 3, -1 / 3, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(normalize_entropy(entropy, st, mask, mode="paper"), paper, **F64)
    torch.testing.assert_close(normalize_entropy(entropy, st, mask, mode="reference"), ref, **F64)
    h32 = normalize_entropy(entropy.float(), st.to("cpu", torch.float32), mask)
    assert h32.dtype == torch.float32
    torch.testing.assert_close(h32, paper.float(), **F32)
    for mode, want in (("paper", paper), ("reference", ref)):
        h, st2 = normalize_batch_entropy(entropy, mask, mode=mode)
        torch.testing.assert_close(h, want, **F64)
        for a, b in zip(st2, st):
            torch.testing.assert_close(a, b, **F64)


def test_normalize_entropy_reference_is_v_shaped_paper_is_signed():
    # A batch of ordinary entropies and one very confident token (H = 1e-6).
    gen = torch.Generator().manual_seed(7)
    ent = 0.5 + torch.rand(1, 200, generator=gen)
    ent[0, 17] = 1e-6
    mask = torch.ones(1, 200)
    st = entropy_stats(ent, mask)
    paper = normalize_entropy(ent, st, mask, mode="paper")
    ref = normalize_entropy(ent, st, mask, mode="reference")
    assert paper[0, 17].item() == pytest.approx(-1.0, abs=1e-6)  # the minimum of z maps to -1
    assert ref[0, 17].item() == pytest.approx(1.0, abs=1e-6)  # ... and to +1 in the released code
    assert ref.min().item() >= 0.0 and paper.min().item() == pytest.approx(-1.0, abs=1e-6)
    high = ent[0] > ent[0].quantile(0.9)
    torch.testing.assert_close(paper[0, high], ref[0, high], **F32)  # identical above the pivot


def test_normalize_entropy_applied_to_new_tokens_is_clamped():
    st = EntropyStats.from_dict({"q": 0.0, "s": 1.0, "z_max": 0.5, "z_min": -2.0})
    # x = log H: H = e^2 -> z = 2 -> 2 / 0.5 = 4 -> clamped 1; H = e^0.25 -> 0.5; H = e^-1 -> -1/2 = -0.5;
    # H = e^-5 -> -2.5 -> clamped -1 (reference: +2.5 -> 1, and -1/-2 = +0.5)
    ent = torch.tensor([2.0, 0.25, -1.0, -5.0], dtype=torch.float64).exp()
    torch.testing.assert_close(
        normalize_entropy(ent, st.to("cpu", torch.float64)),
        torch.tensor([1.0, 0.5, -0.5, -1.0], dtype=torch.float64),
        **F64,
    )
    torch.testing.assert_close(
        normalize_entropy(ent, st.to("cpu", torch.float64), mode="reference"),
        torch.tensor([1.0, 0.5, 0.5, 1.0], dtype=torch.float64),
        **F64,
    )


def test_normalize_entropy_loop_reference_and_masking():
    gen = torch.Generator().manual_seed(8)
    ent = torch.rand(5, 21, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(5, 21, generator=gen) < 0.7
    st = entropy_stats(ent, mask)
    q, s, zmax, zmin = (float(v) for v in st)
    for mode in ("paper", "reference"):
        h = normalize_entropy(ent, st, mask, mode=mode)
        for i in range(5):
            for t in range(21):
                if not mask[i, t]:
                    assert h[i, t].item() == 0.0
                    continue
                z = (math.log(max(float(ent[i, t]), 1e-8)) - q) / s
                want = z / zmax if z > 0 else (z / abs(zmin) if mode == "paper" else z / zmin)
                assert h[i, t].item() == pytest.approx(max(-1.0, min(1.0, want)), rel=1e-12, abs=1e-12)
    garbage = torch.where(mask, ent, 77.0)
    torch.testing.assert_close(normalize_entropy(garbage, st, mask), normalize_entropy(ent, st, mask), **F64)
    torch.testing.assert_close(
        normalize_batch_entropy(garbage, mask)[0], normalize_batch_entropy(ent, mask)[0], **F64
    )


def test_normalize_entropy_validation():
    st = EntropyStats.from_dict({"q": 0.0, "s": 1.0, "z_max": 1.0, "z_min": -1.0})
    with pytest.raises(ValueError, match="unknown mode"):
        normalize_entropy(torch.rand(2, 2), st, mode="signed")
    with pytest.raises(ValueError, match="shape mismatch"):
        normalize_entropy(torch.rand(2, 2), st, torch.ones(2, 3))
    with pytest.raises(ValueError, match="EntropyStats"):
        normalize_entropy(torch.rand(2, 2), (0.0, 1.0, 1.0, -1.0))


def test_histogram_accelerator_path_equals_bincount():
    # _histogram uses bincount on CPU and index_add_ elsewhere (bincount syncs on accelerators);
    # both must count the same, for the strided int16 digits and the int32 / int64 ones.
    from hapo_cli.algo.entropy import _histogram

    gen = torch.Generator().manual_seed(5)
    key = torch.rand(4097, generator=gen) * 7 + 1e-3  # float32 > 0
    top = key.view(torch.int16).view(-1, 2)[:, 1]  # strided int16 view, as the pivot's first pass
    idx32 = torch.randint(0, 65538, (5000,), generator=gen, dtype=torch.int32)
    for idx, nbins in ((top, 1 << 15), (idx32, 65538), (idx32.long(), 65538)):
        a = _histogram(idx, nbins, bincount=True)
        b = _histogram(idx, nbins, bincount=False)
        assert a.dtype == b.dtype == torch.long and a.shape == b.shape == (nbins,)
        assert torch.equal(a, b) and int(a.sum()) == idx.numel()
        assert torch.equal(a, torch.bincount(idx.long(), minlength=nbins))


def _exact_entropy_and_logp(row: list[float], label: int) -> tuple[float, float]:
    """H and log p(label) of softmax(row) in 50-digit arithmetic (float64's log(1 + r) is itself off)."""
    import mpmath

    mpmath.mp.dps = 50
    xs = [mpmath.mpf(v) for v in row]
    z = mpmath.fsum(mpmath.exp(x) for x in xs)
    ps = [mpmath.exp(x) / z for x in xs]
    return float(-mpmath.fsum(p * mpmath.log(p) for p in ps if p > 0)), float(xs[label] - mpmath.log(z))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_near_deterministic_entropy_is_accurate(dtype):
    """Spec 0 step 1: relative error <= 1e-6 against exact values for H >= 1e-9, even from float32 or
    bf16 logits (the naive float32 formula is off by up to a few percent for H in 1e-9..1e-2)."""
    V = 300
    gaps = torch.tensor([4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0])  # the max leads every other logit by this
    g = torch.Generator().manual_seed(0)
    logits = -gaps[:, None] - torch.rand(len(gaps), V, generator=g)  # [8, V]
    logits[:, 7] = 0.0
    logits = logits.to(dtype)  # the reference sees exactly the same (rounded) numbers
    exact = [_exact_entropy_and_logp(row, 7) for row in logits.double().tolist()]
    ref = torch.tensor([h for h, _ in exact], dtype=torch.float64)
    ref_lp = torch.tensor([lp for _, lp in exact], dtype=torch.float64)
    assert ref.min() < 1e-9 < 1e-2 < ref.max()
    got = token_entropy(logits)
    assert got.dtype == torch.float32
    assert ((got.double() - ref) / ref).abs().max() < 1e-6
    # the argmax token's log-prob (-log1p of the off-max mass) is accurate there too
    lp = token_logprobs(logits, torch.full((len(gaps),), 7))
    assert ((lp.double() - ref_lp) / ref_lp).abs().max() < 1e-6
