"""Small shared helpers of `hapo_cli.algo`: argument checks, masks, dtypes and group indexing.

Private to the package: the public functions validate their arguments with these so every
error message has the same shape ("<function>: <what is wrong>").
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def float_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the maths runs in: float64 if any input is float64, else float32.

    bfloat16 / float16 / integer / bool inputs are computed in float32.
    """
    for t in tensors:
        if isinstance(t, Tensor) and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def as_float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Any mask -> a new tensor of 0/1 floats of `dtype` (1 where the mask is non-zero).

    Masking by multiplication (`x * mask_f`) instead of `torch.where` is several times faster on
    CPU; it requires the values at masked positions to be finite (inf * 0 is NaN).
    """
    if mask.dtype == torch.bool:  # via uint8: much faster than bool -> float on CPU
        return mask.view(torch.uint8).to(dtype, copy=True)
    # written straight as floats: on CPU a comparison into a float tensor is much cheaper than into bool
    return torch.ne(mask, 0, out=torch.empty(mask.shape, dtype=dtype, device=mask.device))


def count_ones(flags: Tensor) -> Tensor:
    """Exact sum of a tensor of 0/1 floats, in its dtype (a float32 sum of ones is exact below 2^24 terms)."""
    if flags.dtype != torch.float64 and flags.numel() >= 1 << 24:
        return flags.sum(dtype=torch.float64).to(flags.dtype)
    return flags.sum()


def check_same_shape(fn: str, **tensors: Tensor) -> None:
    """Raise ValueError unless every named tensor has the same shape."""
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if tuple(t.shape) != tuple(t0.shape):
            raise ValueError(
                f"{fn}: shape mismatch: {name0} has shape {tuple(t0.shape)} but {name} has shape {tuple(t.shape)}"
            )


def check_tensor(fn: str, name: str, value: object) -> Tensor:
    """Raise ValueError unless `value` is a torch.Tensor."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_groups(fn: str, rewards: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> None:
    """Validate `rewards [B]`, `group_ids [B]` (integer) and optionally `mask [B, L]`."""
    check_tensor(fn, "rewards", rewards)
    check_tensor(fn, "group_ids", group_ids)
    if rewards.dim() != 1:
        raise ValueError(f"{fn}: rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_ids.dim() != 1 or group_ids.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"{fn}: group_ids must be 1-D [B] with B = {rewards.shape[0]} (like rewards), "
            f"got shape {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise ValueError(f"{fn}: group_ids must be an integer tensor, got {group_ids.dtype}")
    if mask is not None:
        check_tensor(fn, "mask", mask)
        if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
            raise ValueError(
                f"{fn}: mask must be [B, L] with B = {rewards.shape[0]} (like rewards), got shape {tuple(mask.shape)}"
            )


def group_index(group_ids: Tensor) -> Tensor:
    """Dense group index of every row: `[B]` any integer ids -> `[B]` long in `[0, B)`.

    Rows with equal ids get equal indices; ids may come in any order, need not be contiguous
    and need not be 0..G-1. The result indexes B "slots" (G <= B); slots beyond G stay unused,
    so per-group sums are `zeros(B).index_add_(0, idx, values)` and gathering back is
    `sums[idx]`. Unlike `torch.unique(return_inverse=True)` this never needs the number of
    groups on the host, so it causes no device->host sync on accelerators.
    """
    b = group_ids.shape[0]
    sorted_ids, perm = torch.sort(group_ids, stable=True)  # [B]
    starts = torch.ones(b, dtype=torch.long, device=group_ids.device)  # [B] 1 where a new group starts
    if b > 1:
        starts[1:] = (sorted_ids[1:] != sorted_ids[:-1]).long()
    dense_sorted = torch.cumsum(starts, 0) - 1  # [B] group index in sorted order
    idx = torch.empty_like(dense_sorted)
    idx[perm] = dense_sorted  # back to the original row order
    return idx


def group_sum(values: Tensor, idx: Tensor) -> Tensor:
    """Per-slot sums: `values [B]`, `idx [B]` (from group_index) -> `[B]` (slot g = sum over rows of group g)."""
    return torch.zeros_like(values).index_add_(0, idx, values)


def group_amax_amin(values: Tensor, idx: Tensor, include: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-slot max and min of `values [B]` over the rows where `include [B]` (bool) is True.

    Slots with no included row get -inf (max) and +inf (min).
    """
    vmax = values if include is None else torch.where(include, values, float("-inf"))
    vmin = values if include is None else torch.where(include, values, float("inf"))
    amax = torch.full_like(values, float("-inf")).scatter_reduce_(0, idx, vmax, reduce="amax")
    amin = torch.full_like(values, float("inf")).scatter_reduce_(0, idx, vmin, reduce="amin")
    return amax, amin
