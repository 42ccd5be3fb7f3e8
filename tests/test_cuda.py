"""On a CUDA GPU: device placement, bf16 autocast of the scorer's log-probs vs float32, the chunked scorer.

Every test here is marked `cuda` and skips without a CUDA device; `benchmarks/gpu_check.py` runs
them on the GPU machine (`pytest -m cuda tests`). The float32 reference is the same module on
the CPU (or on CUDA in float32), so each figure is checked against an independent computation.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# bf16 autocast (bf16 matmuls, float32 accumulation, log-probs and entropies in float32) against
# float32, on the small random model below: max |logp diff| measured 0.0016-0.0023 with CPU bf16
# autocast (mean 0.0005), entropy 3e-5-7e-5; bf16 weights 0.0025-0.0032. Stated tolerance ~8x that.
BF16_LOGP_MAX, BF16_LOGP_MEAN, BF16_ENT_MAX = 0.02, 0.005, 0.01


def _model(vocab: int = 512, hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def _batch(vocab: int, B: int = 4, P: int = 8, L: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, P + L), generator=g)
    att = torch.ones_like(ids)
    att[0, :3] = 0  # a left-padded prompt
    return ids, att, ids[:, P:]


def test_model_loads_onto_cuda_and_the_scorer_returns_there(tiny_model_dir):
    from hapo_cli.models import load_model_and_tokenizer
    from hapo_cli.train.scorer import ResponseScorer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir), dtype="bfloat16", device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([tok("12+34=", add_special_tokens=False).input_ids * 2], device="cuda")
    att, resp = torch.ones_like(ids), ids[:, 3:]
    lp, ent = ResponseScorer(model, chunk_size=4)(ids, att, resp)
    assert lp.device.type == ent.device.type == "cuda"
    assert lp.dtype == ent.dtype == torch.float32  # log-probs and entropies in float32 from bf16 logits
    assert lp.shape == resp.shape and bool((lp <= 0).all()) and bool((ent >= 0).all())


def test_cuda_float32_scorer_equals_the_cpu_one():
    from hapo_cli.train.scorer import ResponseScorer

    model = _model()
    ids, att, resp = _batch(512)
    with torch.no_grad():
        lp_cpu, ent_cpu = ResponseScorer(model, chunk_size=32)(ids, att, resp)
        gpu = model.to("cuda")
        lp, ent = ResponseScorer(gpu, chunk_size=32)(ids.cuda(), att.cuda(), resp.cuda())
    torch.testing.assert_close(lp.cpu(), lp_cpu, rtol=0, atol=1e-4)
    torch.testing.assert_close(ent.cpu(), ent_cpu, rtol=0, atol=1e-4)


@pytest.mark.parametrize("how", ["autocast", "bf16 weights + autocast"])
def test_bf16_log_probs_within_tolerance_of_float32(how):
    from hapo_cli.train.scorer import ResponseScorer

    model = _model().to("cuda")
    ids, att, resp = (t.cuda() for t in _batch(512))
    with torch.no_grad():
        lp32, ent32 = ResponseScorer(model, chunk_size=32)(ids, att, resp)
        if how != "autocast":
            model = model.to(torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lp, ent = ResponseScorer(model, chunk_size=32)(ids, att, resp)
    assert lp.dtype == torch.float32
    d = (lp - lp32).abs()
    assert 0 < float(d.max()) <= BF16_LOGP_MAX, float(d.max())  # > 0: bf16 really ran
    assert float(d.mean()) <= BF16_LOGP_MEAN
    assert float((ent - ent32).abs().max()) <= BF16_ENT_MAX


def test_chunked_scorer_on_cuda_equals_unchunked_values_and_gradients():
    from hapo_cli.train.scorer import ResponseScorer

    base = _model(vocab=1000, seed=3).to("cuda").train()
    ids, att, resp = (t.cuda() for t in _batch(1000, L=96, seed=4))
    out = {}
    for name, size in (("chunked", 40), ("unchunked", 10**9)):
        base.zero_grad(set_to_none=True)
        lp, ent = ResponseScorer(base, chunk_size=size)(ids, att, resp)
        (lp.sum() + 0.3 * ent.sum()).backward()
        out[name] = (lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in base.named_parameters()})
    (lp_c, ent_c, g_c), (lp_u, ent_u, g_u) = out["chunked"], out["unchunked"]
    torch.testing.assert_close(lp_c, lp_u, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent_c, ent_u, rtol=0, atol=1e-5)
    for n in g_u:
        torch.testing.assert_close(g_c[n], g_u[n], rtol=1e-4, atol=1e-6, msg=n)


def test_chunked_projection_bounds_peak_cuda_memory():
    from hapo_cli.train.scorer import ResponseScorer

    V, L = 32_000, 2048
    model = _model(vocab=V, hidden=64, layers=1, seed=5).to("cuda").train()
    ids = torch.randint(0, V, (1, L + 8), device="cuda")
    att, resp = torch.ones_like(ids), ids[:, 8:]
    full_mib = L * V * 4 / 2**20  # one float32 copy of the [1, L, V] logits: 250 MiB
    peak = {}
    for name, size in (("chunked", 128), ("unchunked", 10**9)):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        lp, ent = ResponseScorer(model, chunk_size=size)(ids, att, resp)
        (lp.sum() + 0.1 * ent.sum()).backward()
        torch.cuda.synchronize()
        peak[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
        del lp, ent
    print(f"peak CUDA memory over one forward+backward: chunked {peak['chunked']:.0f} MiB, "
          f"unchunked {peak['unchunked']:.0f} MiB (one float32 [L, V] copy: {full_mib:.0f} MiB)")
    assert peak["unchunked"] > full_mib  # it holds the whole float32 logits at least once
    assert peak["chunked"] < 0.5 * full_mib  # 128 tokens x 32k per chunk: 16 MiB a float32 copy
