"""The scorer's fused log-prob + entropy kernel and its memory discipline.

`token_logprobs_and_entropy(x, y, T)` equals `token_logprobs` / `token_entropy` of
`x.float() / T` bit for bit (values) and to float rounding (gradients, against float64); the
scorer never creates a float32 tensor with the vocabulary as last dimension larger than one
working block (bf16 model) or one chunk (float32 model), in the forward or the backward.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hapo_cli.algo import token_entropy, token_logprobs
from hapo_cli.algo.entropy import token_logprobs_and_entropy
from hapo_cli.train import scorer as scorer_mod
from hapo_cli.train.scorer import ResponseScorer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_fused_equals_the_two_kernels(dtype, T):
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(4, 6, 257, generator=g, dtype=torch.float64)).to(dtype)
    x[0, 0, :5] = float("-inf")  # a masked vocabulary entry must not give NaN
    y = torch.randint(5, 257, (4, 6), generator=g)
    z = x / T if dtype == torch.float64 else x.float() / T
    lp, ent = token_logprobs_and_entropy(x, y, temperature=T, chunk_size=5)
    assert torch.equal(lp, token_logprobs(z, y)) and torch.equal(ent, token_entropy(z))
    assert lp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("T", [1.0, 0.6])
def test_fused_gradient_matches_autograd_in_float64(T):
    g = torch.Generator().manual_seed(2)
    x = (2 * torch.randn(3, 5, 97, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, 97, (3, 5), generator=g)
    w1, w2 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    lp, ent = token_logprobs_and_entropy(x, y, temperature=T, chunk_size=4)
    (lp * w1 + ent * w2).sum().backward()
    got, x.grad = x.grad.clone(), None
    # reference: plain autograd through log_softmax
    logp = torch.log_softmax(x / T, -1)
    ref_lp, ref_ent = logp.gather(-1, y[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    (ref_lp * w1 + ref_ent * w2).sum().backward()
    assert torch.allclose(got, x.grad, rtol=0, atol=1e-12)
    # one output only (the other's gradient is zero)
    x.grad = None
    token_logprobs_and_entropy(x, y, temperature=T)[0].mul(w1).sum().backward()
    only_lp, x.grad = x.grad.clone(), None
    ref_lp2 = torch.log_softmax(x / T, -1).gather(-1, y[..., None]).squeeze(-1)
    (ref_lp2 * w1).sum().backward()
    assert torch.allclose(only_lp, x.grad, rtol=0, atol=1e-12)


class _Float32Vocab(TorchDispatchMode):
    """Largest float32 tensor with last dimension V that any op produces (the head's weight,
    `[H, V]` when transposed, excluded)."""

    def __init__(self, V, H):
        super().__init__()
        self.V, self.H, self.largest = V, H, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() >= 1 and t.shape[-1] == self.V \
                    and tuple(t.shape) != (self.H, self.V):
                self.largest = max(self.largest, t.numel())
        return out


def _model(V, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_no_float32_copy_beyond_one_block_forward_and_backward(monkeypatch, dtype):
    V, B, L, chunk_tokens, block_rows = 1001, 2, 24, 16, 4
    monkeypatch.setattr(scorer_mod, "ROWS_PER_BLOCK", block_rows * V)
    model = _model(V, dtype)
    ids = torch.randint(0, V, (B, 8 + L))
    att = torch.ones_like(ids)
    scorer = ResponseScorer(model, chunk_size=chunk_tokens)
    with _Float32Vocab(V, 32) as probe:
        lp, ent = scorer(ids, att, ids[:, 8:])
        (lp.sum() + 0.5 * ent.sum()).backward()
    assert lp.shape == ent.shape == (B, L) and torch.isfinite(lp).all()
    chunk = chunk_tokens * V  # one chunk's logits
    if dtype == torch.bfloat16:  # float32 only in blocks of block_rows rows
        assert 0 < probe.largest <= block_rows * V
    else:  # the logits themselves are float32: one chunk, never [B, L, V]
        assert chunk // 2 < probe.largest <= chunk < B * L * V


def test_chunk_size_from_the_vocabulary():
    s = ResponseScorer(torch.nn.Linear(1, 1))
    assert s.chunk_tokens(151936) == (1 << 28) // 151936 == 1766
    assert s.chunk_tokens(17) == (1 << 28) // 17  # a tiny vocabulary: the whole batch in one chunk
    assert ResponseScorer(torch.nn.Linear(1, 1), chunk_size=512).chunk_tokens(151936) == 512
