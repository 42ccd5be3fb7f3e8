"""The decoding-time entropy of the raw next-token logits, fused into one compiled kernel on CPU.

At every decoding step the HF engine needs `H = -sum_v p_v log p_v` of each row of the logits
`[N, V]`: for Adaptive Temperature Sampling (spec A) and for the rollout's entropy
(`entropy_source=rollout`). `hapo_cli.algo.token_entropy` computes it in about seven eager
passes over `[N, V]` with two full-size buffers; at Qwen2.5's 151,936 entries and 32 rows that
is 10-12 ms per step on two CPU cores, with the rest of the ATS processor 6.4% of a decoding step
once sampling is cheap. `torch.compile` fuses the same arithmetic into one max pass and one
exp-and-sum pass with no `[N, V]` intermediates: 3-3.6 ms, and the processor's share falls to
2.1% (`benchmarks/ats_overhead.py`).

The arithmetic is `algo.token_entropy`'s (see its `_chunk_stats`): with `m = max_v x_v`,
`r = sum_{v: x_v < m} exp(x_v - m) + (ties at the maximum - 1)` (the mass off ONE maximum, kept
apart so near-deterministic rows stay exact), `H = log1p(r) - sum_v exp(x_v - m) (x_v - m) / (1 + r)`,
with both sums accumulated in float64. Float32 result (float64 for float64 logits); agrees with
`token_entropy` of the float64 logits to about 1e-7 relative (tested to 1e-6) for any H, including H < 1e-8 and
masked (-inf) entries (`tests/test_entropy_kernel.py`).

`EntropyKernel(mode)`: `eager` is `token_entropy` itself; `compiled` always compiles (one shape-
dynamic graph, so a new batch size does not recompile; the first call compiles, ~5-10 s with a
cold inductor cache) and raises a one-line error when compiling fails; `auto` (the default)
compiles for CPU logits with at least `AUTO_MIN_VOCAB` entries, where it pays, and falls back to
eager with one warning when compiling fails (no C++ compiler, say). CUDA logits stay eager under
`auto`: there the eager passes are a few kernel launches each, a small share of a step.
"""

from __future__ import annotations

import warnings

import torch

from hapo_cli.errors import HapoError

Tensor = torch.Tensor

__all__ = ["AUTO_MIN_VOCAB", "ENTROPY_KERNELS", "EntropyKernel", "fused_entropy"]

ENTROPY_KERNELS = ("auto", "compiled", "eager")
AUTO_MIN_VOCAB = 8192  # below this the eager passes are cheap and a compile would cost more than it saves


def fused_entropy(logits: Tensor) -> Tensor:
    """`logits [N, V]` (any float dtype) -> `H [N]` nats, float32 (float64 for float64 logits); no gradient.

    The eager form of what `torch.compile` fuses; also correct (and tested) uncompiled.
    """
    cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.detach().to(cdtype)
    m = x.amax(dim=-1, keepdim=True)  # [N, 1]
    xm = (x - m).clamp_min(torch.finfo(cdtype).min)  # [N, V] -inf (masked) entries give e * xm = 0, not NaN
    below = xm < 0
    e = torch.where(below, torch.exp(xm), 0.0)  # [N, V] every maximum left out
    ties = (~below).sum(dim=-1).to(torch.float64) - 1.0  # [N] the other maxima, each exp(0) = 1
    r = e.sum(dim=-1, dtype=torch.float64) + ties  # [N] mass off one maximum, relative to it
    d = (e * xm).sum(dim=-1, dtype=torch.float64)  # [N] <= 0
    return (torch.log1p(r) - d / (1.0 + r)).to(cdtype)


_COMPILED = None
_FAILED: str | None = None  # why compiling failed in this process (auto then stays eager, one warning)


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(fused_entropy, dynamic=True)
    return _COMPILED


class EntropyKernel:
    """Callable `logits [N, V] -> H [N]` (see the module docstring for the modes)."""

    def __init__(self, mode: str = "auto", min_vocab: int = AUTO_MIN_VOCAB):
        if mode not in ENTROPY_KERNELS:
            raise ValueError(f"entropy kernel: unknown mode {mode!r}; choose one of: {', '.join(ENTROPY_KERNELS)}")
        self.mode = mode
        self.min_vocab = int(min_vocab)

    def uses_compiled(self, logits: Tensor) -> bool:
        if self.mode == "eager" or (self.mode == "auto" and _FAILED is not None):
            return False
        if self.mode == "compiled":
            return True
        return logits.device.type == "cpu" and logits.shape[-1] >= self.min_vocab

    def __call__(self, logits: Tensor) -> Tensor:
        global _FAILED
        if logits.dim() != 2:
            raise ValueError(f"entropy kernel: logits must be [N, V], got shape {tuple(logits.shape)}")
        if self.uses_compiled(logits):
            try:
                with torch.no_grad():
                    return _compiled()(logits)
            except Exception as exc:  # noqa: BLE001 - any compile failure (compiler missing, inductor error)
                first = (str(exc).strip().splitlines() or [""])[0]
                why = f"{type(exc).__name__}: {first}"
                if self.mode == "compiled":
                    raise HapoError(f"rollout.entropy_kernel=compiled: torch.compile failed ({why}); "
                                       "use rollout.entropy_kernel=auto or eager") from exc
                _FAILED = why
                warnings.warn(f"rollout.entropy_kernel=auto: torch.compile failed ({why}); "
                              "using the eager entropy (slower at large vocabularies)", RuntimeWarning, stacklevel=2)
        from hapo_cli.algo import token_entropy

        return token_entropy(logits.detach())
