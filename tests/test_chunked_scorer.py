"""ResponseScorer: chunked log-probs/entropy equal the unchunked ones, and bound peak memory.

The memory test runs each variant in its own process and reads the peak resident set size
(VmHWM, reset just before) around one forward+backward of a long response with a large vocabulary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from hapo_cli.train.scorer import ResponseScorer
    torch.set_num_threads(1)
    V, L, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=L + 16,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    scorer = ResponseScorer(model, chunk_size=chunk)
    ids = torch.randint(0, V, (1, L + 8))
    att = torch.ones_like(ids)
    resp = ids[:, 8:]
    def status_kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    try:  # reset the peak RSS to the current RSS (Linux >= 4.0): the peak below is this call's alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_kb("VmRSS")
    except OSError:  # else the high-water mark so far (imports may have peaked higher: an underestimate)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    logp, ent = scorer(ids, att, resp)
    (logp.sum() + 0.1 * ent.sum()).backward()
    after = status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_delta_mb": (after - before) / 1024, "logp_sum": float(logp.sum())}))
    """
)


def _peak(vocab: int, length: int, chunk: int) -> dict:
    # Fixed glibc thresholds: large blocks are mmapped and returned on free, so the peak RSS tracks
    # the peak of live tensors (with the dynamic threshold it varied 4x between identical runs).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(vocab), str(length), str(chunk)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_chunked_projection_bounds_peak_memory():
    V, L = 64_000, 1024
    full_logits_mb = V * L * 4 / 2**20  # one float32 copy of the [1, L, V] logits: 250 MB
    chunked = _peak(V, L, chunk=64)  # 64 tokens x 64k vocab per chunk: 15.6 MB a copy
    unchunked = _peak(V, L, chunk=10**9)
    assert unchunked["peak_delta_mb"] > full_logits_mb  # it holds the whole [1, L, V] logits at least once
    assert chunked["peak_delta_mb"] < 0.5 * full_logits_mb  # measured: about 85 MB vs 827 MB unchunked
    print(f"peak RSS increase: chunked {chunked['peak_delta_mb']:.0f} MB, unchunked {unchunked['peak_delta_mb']:.0f} MB")
    assert chunked["logp_sum"] == pytest.approx(unchunked["logp_sum"], rel=1e-5)


def test_chunked_equals_unchunked_values_and_gradients():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hapo_cli.algo import token_entropy
    from hapo_cli.train.scorer import ResponseScorer

    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).double()
    ids = torch.randint(1, 97, (3, 20))
    att = torch.ones_like(ids)
    att[0, :4] = 0  # left padding of a shorter prompt
    resp = ids[:, 8:]

    grads = []
    outs = []
    for chunk in (4, 10**6):
        model.zero_grad()
        lp, ent = ResponseScorer(model, chunk_size=chunk)(ids, att, resp, temperature=0.7)
        (lp.sum() + ent.sum()).backward()
        outs.append((lp.detach(), ent.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)

    # and both equal the plain forward with positions counted from the first attended token
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, 7:-1] / 0.7
    ref_lp = torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(outs[1][0], ref_lp, rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[1][1], token_entropy(logits), rtol=0, atol=1e-12)


@pytest.mark.parametrize("L,chunk", [(12, 4), (13, 4), (5, 4)])
def test_last_chunk_kept_for_backward_same_gradients_fewer_projections(L, chunk):
    """keep_last_chunk (default) projects the last chunk once; every earlier chunk is recomputed in backward.

    Projections counted with a forward hook on the head: with gradients, n chunks cost 2n head
    forwards when every chunk is recomputed and 2n - 1 when the last one keeps its logits (the last
    chunk is the full `chunk` positions, the remainder goes first). Values and gradients agree.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hapo_cli.train.scorer import ResponseScorer

    cfg = Qwen2Config(vocab_size=53, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg).double()
    B, P = 1, 3
    ids = torch.randint(1, 53, (B, P + L))
    att = torch.ones_like(ids)
    resp = ids[:, P:]
    widths: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
    results = {}
    for keep in (True, False):
        widths.clear()
        model.zero_grad()
        lp, ent = ResponseScorer(model, chunk_size=chunk, keep_last_chunk=keep)(ids, att, resp, temperature=0.9)
        (lp.sum() + 0.3 * ent.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[keep] = (lp.detach(), ent.detach(), grads, list(widths))
    hook.remove()
    n = -(-L // chunk)
    forward_kept, forward_all = results[True][3], results[False][3]
    if L <= chunk:  # one chunk: never checkpointed, either way
        assert forward_kept == forward_all == [L]
    else:
        assert len(forward_all) == 2 * n and sum(forward_all) == 2 * L
        assert len(forward_kept) == 2 * n - 1 and sum(forward_kept) == 2 * L - chunk
        assert forward_kept[n - 1] == chunk  # the kept chunk is a full one, projected last in the forward
    for a, b in zip(results[True][:3], results[False][:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
