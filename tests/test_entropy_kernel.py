"""The decoding-time entropy kernel (`rollout/entropy_kernel.py`), eager and compiled.

References are computed here independently: float64 numpy `-sum p log p` for general rows, and
closed forms for near-deterministic rows, ties and masked vocabularies.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hapo_cli.rollout.base import ATSParams, SamplingParams
from hapo_cli.rollout.entropy_kernel import AUTO_MIN_VOCAB, EntropyKernel, fused_entropy

V = 9000  # >= AUTO_MIN_VOCAB: `auto` compiles at this width


def numpy_entropy(x: torch.Tensor) -> np.ndarray:
    z = x.double().numpy()
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logp).sum(-1)


def near_deterministic(cs: list[float]) -> tuple[torch.Tensor, list[float]]:
    """Rows with one logit c above V - 1 equal ones; H = log1p(r) + r c / (1 + r), r = (V - 1) e^-c."""
    x = torch.zeros(len(cs), V)
    x[:, 0] = torch.tensor(cs)
    want = []
    for c in cs:
        r = (V - 1) * math.exp(-c)
        want.append(math.log1p(r) + r * c / (1 + r))
    return x, want


def _kernel(compiled: bool):
    return EntropyKernel("compiled") if compiled else fused_entropy


@pytest.mark.parametrize("compiled", [False, True])
def test_general_rows_match_float64(compiled):
    torch.manual_seed(0)
    f = _kernel(compiled)
    x = torch.randn(5, V) * torch.tensor([[0.1], [1.0], [3.0], [6.0], [12.0]])
    want = numpy_entropy(x)
    got = f(x)
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6)
    x64 = x.double() * 1.7
    got64 = f(x64)
    assert got64.dtype == torch.float64
    # 1e-9: the direct -sum p log p itself loses ~1e-9 relative at the last row's H ~ 7e-8 (log of p ~ 1)
    np.testing.assert_allclose(got64.numpy(), numpy_entropy(x64), rtol=1e-9)
    xb = x.bfloat16()  # bf16 logits are read as bf16 values, computed in float32
    np.testing.assert_allclose(f(xb).double().numpy(), numpy_entropy(xb.float()), rtol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_near_deterministic_rows_ties_and_masked_entries(compiled):
    f = _kernel(compiled)
    x, want = near_deterministic([5.0, 15.0, 25.0, 40.0])  # H from ~0.3 down to ~4e-13
    got = f(x).double().tolist()
    for g, w in zip(got, want):
        assert abs(g - w) <= 1e-6 * w, (g, w)
    # two equal maxima and the rest masked: exactly log 2; three maxima over a ~zero tail: log 3
    y = torch.full((2, V), float("-inf"))
    y[0, [3, 700]] = 2.5
    y[1, :] = -80.0
    y[1, [1, 2, 8000]] = 4.0
    got = f(y).double()
    assert abs(got[0].item() - math.log(2)) < 1e-7
    assert abs(got[1].item() - math.log(3)) < 1e-6
    # half the vocabulary masked: the entropy of the other half
    torch.manual_seed(1)
    z = torch.randn(3, V) * 2
    zm = z.clone()
    zm[:, ::2] = float("-inf")
    np.testing.assert_allclose(f(zm).double().numpy(), numpy_entropy(z[:, 1::2]), rtol=1e-6)


def test_compiled_across_batch_sizes_and_strided_views():
    torch.manual_seed(2)
    k = EntropyKernel("compiled")
    for n in (3, 7, 1):
        x = torch.randn(n, V) * 2
        np.testing.assert_allclose(k(x).double().numpy(), numpy_entropy(x), rtol=1e-6)
    full = torch.randn(4, 3, V)  # a head's [N, P, V] output read at the last position: row stride P * V
    last = full[:, -1]
    assert not last.is_contiguous()
    np.testing.assert_allclose(k(last).double().numpy(), numpy_entropy(last), rtol=1e-6)


def test_modes_pick_the_kernel():
    small, big = torch.zeros(2, 17), torch.zeros(2, AUTO_MIN_VOCAB)
    auto = EntropyKernel()
    assert not auto.uses_compiled(small) and auto.uses_compiled(big)
    assert not EntropyKernel("eager").uses_compiled(big)
    assert EntropyKernel("compiled").uses_compiled(small)
    with pytest.raises(ValueError, match="unknown mode 'fast'; choose one of: auto, compiled, eager"):
        EntropyKernel("fast")
    with pytest.raises(ValueError, match=r"must be \[N, V\]"):
        auto(torch.zeros(2, 3, 4))


def test_broken_compiler_auto_falls_back_compiled_says_what_to_do(tmp_path):
    """A machine without a working C++ compiler (CXX points nowhere, empty inductor cache)."""
    code = """
import warnings, torch
from hapo_cli.algo import token_entropy
from hapo_cli.errors import HapoError
from hapo_cli.rollout.entropy_kernel import EntropyKernel
x = torch.randn(3, 9000)
try:
    EntropyKernel("compiled")(x)
    print("compiled: no error")
except HapoError as e:
    print("compiled:", e)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    k = EntropyKernel("auto")
    h1, h2 = k(x), k(x)
ours = [str(m.message) for m in w if "entropy_kernel" in str(m.message)]
print("warnings:", len(ours), ours[0].splitlines()[0] if ours else "")
print("equal:", torch.equal(h1, token_entropy(x)) and torch.equal(h2, h1), "uses_compiled:", k.uses_compiled(x))
"""
    env = dict(os.environ, CXX="/nonexistent/g++", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert lines["compiled"].startswith("rollout.entropy_kernel=compiled: torch.compile failed (")
    assert lines["compiled"].endswith("); use rollout.entropy_kernel=auto or eager")
    assert "\n" not in lines["compiled"]
    assert lines["warnings"].startswith("1 rollout.entropy_kernel=auto: torch.compile failed (")
    assert lines["equal"] == "True uses_compiled: False"


@pytest.mark.parametrize("keep_entropy", [False, True])
def test_engine_compiled_kernel_matches_eager(tiny_model_dir, keep_entropy):
    """The HF engine through the compiled kernel: same tokens, temperatures and rollout entropies as eager."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hapo_cli.rollout.hf import HFRolloutEngine

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [tok("12+7=")["input_ids"], tok("3+45=")["input_ids"]]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=4, return_entropy=keep_entropy,
                            ats=ATSParams(stats={"q": 0.2, "s": 0.9, "z_max": 2.0, "z_min": -3.0}, tau=0.3))
    eager, comp = (HFRolloutEngine(model, tok, entropy_kernel=k).generate(prompts, params) for k in ("eager", "compiled"))
    assert torch.equal(eager.response_ids, comp.response_ids)
    mask = eager.response_mask.bool()
    assert eager.temperatures[mask].std() > 1e-3  # ATS did vary the temperature
    torch.testing.assert_close(comp.temperatures, eager.temperatures, rtol=0, atol=1e-6)
    if keep_entropy:
        torch.testing.assert_close(comp.entropy, eager.entropy, rtol=1e-6, atol=1e-7)
        assert eager.entropy[mask].std() > 0.05
    with pytest.raises(ValueError, match="unknown entropy_kernel 'fast'"):
        HFRolloutEngine(model, tok, entropy_kernel="fast")
