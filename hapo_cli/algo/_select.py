"""Sync-free token selection helpers of the baselines (baselines-spec "Quantile conventions").

Private to the package. Quantiles are computed by sorting (never `torch.quantile`, which refuses
inputs above 2^24 elements, pytorch/pytorch#64947) with exactly torch's linear-interpolation
arithmetic (`rank = q * (n - 1)`, `lerp(v[floor], v[ceil], rank - floor)`), so the results are
bit-identical to `torch.quantile` / `torch.nanquantile` over the valid values. Counts stay on the
device: no `.item()`.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def descending_rank(key: Tensor) -> Tensor:
    """Rank of every element of `key` (any shape, flattened) in descending order: `[...]` long.

    The largest element gets rank 0; ties are broken by position (earlier first, stable sort).
    Put `-inf` at positions that must never be chosen, then select `rank < k` for a top-k.
    """
    flat = key.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices  # [N]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=key.device)
    return rank.view(key.shape)


def linear_quantile(values: Tensor, valid: Tensor, q: float, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Linear-interpolation quantile of `values` over the `valid` (bool) positions.

    `dim=None`: over all valid elements -> `(quantile [], n [])`; `dim=-1`: per row ->
    `(quantile [B], n [B])`. Equals `torch.quantile(values[valid], q)` (resp.
    `torch.nanquantile(values.masked_fill(~valid, nan), q, dim=-1)`) bit for bit. Where there is
    no valid value the quantile is 0 (with n = 0, so callers can mask it out).
    """
    dtype = values.dtype
    key = torch.where(valid, values, torch.full_like(values, float("inf")))  # invalid sort last
    if dim is None:
        key = key.reshape(1, -1)
        valid = valid.reshape(1, -1)
    v = torch.sort(key, dim=-1).values  # [R, N]
    n = valid.sum(-1)  # [R] valid per row
    last = (n - 1).clamp_min(0).to(dtype)  # [R]
    rank = (
        torch.tensor(q, dtype=dtype, device=values.device) * last
    )  # [R] as torch.quantile: q in the input dtype
    below = rank.floor()
    above = rank.ceil()
    weight = rank - below
    lo = v.gather(-1, below.long().unsqueeze(-1)).squeeze(-1)  # [R]
    hi = v.gather(-1, above.long().unsqueeze(-1)).squeeze(-1)  # [R]
    quant = torch.lerp(lo, hi, weight)
    quant = torch.where(n > 0, quant, torch.zeros_like(quant))
    if dim is None:
        return quant.squeeze(0), n.squeeze(0)
    return quant, n
