"""The HF engine's own sampler (`rollout.sampler=inverse_cdf`): the distribution transformers samples
from, one uniform per row.

Expected probabilities are computed here independently (float64 numpy: temperature, top-k, top-p as
transformers defines them); frequencies over many draws must sit within 5 standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hapo_cli.rollout.base import SamplingParams
from hapo_cli.rollout.hf import HFRolloutEngine, InverseCDFSampler, inverse_cdf_sample


def expected_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """[V] float64: softmax(logits / T) restricted to the top-k, then to the nucleus (transformers' rules:
    drop the tokens whose ascending cumulative probability is <= 1 - top_p, keep at least one)."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, dtype=bool)
    if top_k > 0:
        keep &= z >= np.sort(z)[-top_k]
    z = np.where(keep, z, -np.inf)
    if top_p < 1.0:
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(p, kind="stable")  # ascending
        cum = np.cumsum(p[order])
        drop = cum <= 1 - top_p
        drop[-1] = False
        z[order[drop]] = -np.inf
    p = np.exp(z - z.max())
    return p / p.sum()


def test_inverse_cdf_sample_intervals_and_zero_probability_tokens():
    p = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]])
    pick = lambda u: int(inverse_cdf_sample(p, torch.tensor([[u]])))  # noqa: E731
    assert [pick(0.0), pick(0.0999), pick(0.1), pick(0.6999), pick(0.7001), pick(0.9999)] == [0, 0, 2, 2, 3, 3]
    assert pick(1 - 2**-24) == 3  # the largest uniform never lands on the trailing zero-probability token
    # unnormalised rows: the total is the row's sum
    q = torch.tensor([[2.0, 0.0, 6.0], [0.0, 5.0, 0.0]])
    assert inverse_cdf_sample(q, torch.tensor([[0.3], [0.999]])).flatten().tolist() == [2, 1]
    # float64 CDF: a tail probability of 1e-9 after a mass of ~1 keeps its interval (float32 would drop it)
    tiny = torch.tensor([[1.0 - 1e-9, 1e-9]], dtype=torch.float32)
    assert int(inverse_cdf_sample(tiny, torch.tensor([[1 - 1e-10]], dtype=torch.float64))) == 1


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.3, 0, 0.8),
                                                       (0.9, 4, 0.7)])
def test_sampler_draws_the_warped_distribution(temperature, top_k, top_p):
    torch.manual_seed(0)
    V, n = 7, 200_000
    logits = torch.tensor([1.2, -0.3, 0.4, 2.0, -1.5, 0.9, 0.0])
    want = expected_probs(logits.numpy(), temperature, top_k, top_p)
    sampler = InverseCDFSampler(temperature, top_k, top_p, record_logprobs=True)
    scores = logits.expand(n, V).clone()
    out = sampler(torch.zeros(n, 1, dtype=torch.long), scores)
    token = out.argmax(-1)
    # one-hot scores: 0 at the drawn token, -inf elsewhere (generate's greedy step takes it)
    assert torch.equal(out.gather(1, token[:, None]).squeeze(1), torch.zeros(n))
    assert int(torch.isinf(out).sum()) == n * (V - 1)
    freq = np.bincount(token.numpy(), minlength=V) / n
    se = np.sqrt(want * (1 - want) / n)
    assert np.all(freq[want == 0] == 0), (freq, want)
    assert np.all(np.abs(freq - want) <= 5 * se + 1e-12), (freq, want)
    # the recorded log-prob of each drawn token is its log-probability under that distribution
    np.testing.assert_allclose(sampler.logprobs[0].numpy(), np.log(want[token.numpy()]), rtol=0, atol=2e-6)


def _tiny_lm(vocab: int = 11):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(3)
    return Qwen2ForCausalLM(cfg).eval()


class _Tok:
    """The least a tokenizer must do for the engine: ids, pad/eos, batch_decode."""

    pad_token_id, eos_token_id = 0, 1

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in r if int(t) > 1) for r in rows]


@pytest.mark.parametrize("sampler", ["inverse_cdf", "multinomial"])
def test_engine_first_token_distribution(sampler):
    """Through generate (one-hot scores -> greedy step): the first response token follows the model's softmax."""
    model = _tiny_lm()
    prompt = [5, 7, 3]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    T, n = 0.8, 6000
    want = torch.softmax(logits / T, -1).numpy()
    engine = HFRolloutEngine(model, _Tok(), sampler=sampler)
    roll = engine.generate([prompt], SamplingParams(n=n, temperature=T, top_p=1.0, top_k=0, max_new_tokens=1, seed=11))
    freq = np.bincount(roll.response_ids[:, 0].numpy(), minlength=len(want)) / n
    se = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(freq - want) <= 5 * se + 1e-12), (freq, want)


def test_inverse_cdf_engine_is_seeded_and_multinomial_is_transformers_own():
    model = _tiny_lm()
    prompts = [[5, 7, 3], [4, 4]]
    p = SamplingParams(n=4, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6, seed=5)
    own = HFRolloutEngine(model, _Tok(), return_logprobs=True)
    a, b = own.generate(prompts, p), own.generate(prompts, p)
    assert torch.equal(a.response_ids, b.response_ids)
    c = own.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=6))
    assert not torch.equal(a.response_ids, c.response_ids)
    # its engine log-probs equal a recompute from the model (the rollout-correction contract)
    from hapo_cli.rollout.base import pad_left

    ids, att = pad_left([q for q in prompts for _ in range(4)], 0)
    full = torch.cat([ids, a.response_ids], 1)
    fatt = torch.cat([att, a.response_mask], 1)
    with torch.no_grad():
        pos = (fatt.cumsum(-1) - 1).clamp(min=0)
        lg = model(input_ids=full, attention_mask=fatt, position_ids=pos).logits[:, ids.shape[1] - 1 : -1]
    lp = torch.log_softmax(lg.float(), -1).gather(-1, a.response_ids[..., None]).squeeze(-1) * a.response_mask
    torch.testing.assert_close(a.logprobs, lp, rtol=0, atol=2e-5)
    # sampler="multinomial" is transformers' own sampling: the same tokens as generate(do_sample=True)
    mult = HFRolloutEngine(model, _Tok(), sampler="multinomial").generate(prompts[:1], p)
    torch.manual_seed(5)
    ref = model.generate(input_ids=torch.tensor([prompts[0]] * 4), attention_mask=torch.ones(4, 3, dtype=torch.long),
                         do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=6, pad_token_id=0,
                         eos_token_id=1)
    L = mult.response_ids.shape[1]
    got = torch.where(mult.response_mask.bool(), mult.response_ids, torch.zeros_like(mult.response_ids))
    exp = ref[:, 3 : 3 + L]
    exp = torch.where(mult.response_mask.bool(), exp, torch.zeros_like(exp))
    assert torch.equal(got, exp)


def test_unknown_sampler_is_one_line():
    with pytest.raises(ValueError, match=r"^HFRolloutEngine: unknown sampler 'gumbel'; choose one of: inverse_cdf, multinomial$"):
        HFRolloutEngine(_tiny_lm(), _Tok(), sampler="gumbel")
