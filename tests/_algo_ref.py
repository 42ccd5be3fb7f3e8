"""Test helpers for the baseline losses: plain-Python loop references and the micro-batch composition check.

The loops are written independently of `hapo_cli.algo` (element by element, Python floats).
"""

from __future__ import annotations

import torch

D = torch.float64
F64 = dict(rtol=1e-12, atol=1e-12)
AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def loop_ppo(a: float, r: float, lo: float, hi: float, c: float | None) -> float:
    """The spec's PPO(A, r, eL, eR, c) for one token."""
    pt = max(-a * r, -a * min(max(r, lo), hi))
    if c is not None and a < 0:
        pt = min(pt, -a * c)
    return pt


def loop_aggregate(pt, m_num, m_den, agg: str) -> float:
    """`loss_agg` of per-token values `pt[i][t]` (lists) with numerator / denominator 0/1 masks."""
    rows = len(pt)
    length = len(pt[0]) if rows else 0
    if agg == "token-mean":
        num = sum(pt[i][t] for i in range(rows) for t in range(length) if m_num[i][t])
        den = sum(1 for i in range(rows) for t in range(length) if m_den[i][t])
        return num / max(den, 1)
    if agg == "seq-mean-token-sum-norm":
        num = sum(pt[i][t] for i in range(rows) for t in range(length) if m_num[i][t])
        return num / max(rows * length, 1)
    seqs = []
    for i in range(rows):
        n = sum(1 for t in range(length) if m_den[i][t])
        if n == 0:
            continue
        s = sum(pt[i][t] for t in range(length) if m_num[i][t])
        seqs.append(s / n if agg == "seq-mean-token-mean" else s)
    return sum(seqs) / max(len(seqs), 1)


def rand_batch(seed: int, b: int = 5, length: int = 7, spread: float = 0.4, all_rows_valid: bool = True):
    """Random float64 (logp leaf, old_logp, adv, mask, entropy) with garbage-free padding."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, length, generator=g, dtype=D) * 3 - 0.01
    old = logp + (torch.rand(b, length, generator=g, dtype=D) - 0.5) * 2 * spread
    adv = torch.randn(b, length, generator=g, dtype=D)
    lens = torch.randint(1 if all_rows_valid else 0, length + 1, (b,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lens.unsqueeze(1)).long()
    ent = torch.rand(b, length, generator=g, dtype=D) * 3
    return logp.requires_grad_(True), old, adv, mask, ent


def check_microbatch_composition(fn, logp, row_tensors: dict, kwargs: dict, agg: str, splits=(2, 4)):
    """Splitting the rows into micro-batches and weighting each loss as the trainer does (token-mean:
    `n_tokens / total`; seq-mean modes: rows / all rows) gives the full batch's loss and gradient (1e-12)."""
    full, m = fn(logp, **row_tensors, **kwargs, agg=agg)
    (g_full,) = torch.autograd.grad(full, logp)
    b = logp.shape[0]
    bounds = [0, *splits, b]
    total = torch.zeros((), dtype=D)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = slice(lo, hi)
        loss_k, m_k = fn(logp[sl], **{k: v[sl] for k, v in row_tensors.items()}, **kwargs, agg=agg)
        if agg == "token-mean":
            w = m_k["n_tokens"] / m["n_tokens"]
        else:
            w = (hi - lo) / b
        parts.append(loss_k * w)
        total = total + loss_k.detach() * w
    (g_micro,) = torch.autograd.grad(sum(parts), logp)
    torch.testing.assert_close(total, full.detach(), **F64)
    torch.testing.assert_close(g_micro, g_full, **F64)
    return full, g_full
